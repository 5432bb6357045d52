"""Channel arithmetic shared by every slimmable layer and model."""

from __future__ import annotations


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never below ``min_value``.

    The rounding of MobileNet v2 and the slimmable papers: round half up to a multiple of
    ``divisor`` (at least ``min_value``, which defaults to ``divisor``) and add one more
    ``divisor`` if rounding down lost more than 10% of ``v``.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def scale_channels(channels: int, width: float, divisor: int = 8, ratio: int = 1) -> int:
    """Active channels of a layer that has ``channels`` at full width, run at ``width``.

    ``ratio`` keeps the result a multiple of an inverted-residual expansion ratio:
    ``make_divisible(channels * width / ratio) * ratio``. Never more than ``channels``.
    """
    if width == 1.0 and ratio == 1:
        return channels
    return min(channels, make_divisible(channels * width / ratio, divisor) * ratio)
