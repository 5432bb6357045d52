"""What every layer with a width has in common."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .channels import scale_channels
from .width_policy import WidthList, WidthPolicy, WidthRange


def make_policy(widths: Sequence[float] | None, width_range: Sequence[float] | None) -> WidthPolicy:
    """``WidthList`` for S-Nets (``widths``) or ``WidthRange`` for US-Nets (``width_range``)."""
    if (widths is None) == (width_range is None):
        raise ValueError("give exactly one of widths=[...] (S-Nets) or width_range=(lo, hi) (US)")
    if widths is not None:
        return WidthList(widths)
    lo, hi = width_range  # type: ignore[misc]
    return WidthRange(lo, hi)


def _never() -> bool:
    return False


# Whether torch.compile is tracing the caller (a constant in compiled code). Bound once: it is
# called on every layer's forward. torch < 2.3 has no torch.compiler.is_compiling.
is_compiling = getattr(torch.compiler, "is_compiling", _never)


class WidthMixin:
    """A layer whose active output channels follow its ``width``.

    ``width`` is plain per-module state, set by :func:`slimmable.set_width`; there is no global
    switch. Input channels are never stored: a layer reads them from its input, so a nonuniform
    network (each layer at its own width) needs nothing more.

    ``active_out`` holds the output channels at ``width``, set with it by ``set_width``:
    compiled code reads this int (which ``torch.compile`` keeps symbolic) instead of deriving
    it from the float ``width`` (which it would specialize on, one graph per width).
    """

    policy: WidthPolicy
    width: float
    divisor: int
    ratio: int
    fixed_out: bool
    out_channels_list: tuple[int, ...] | None
    active_out: int

    def _init_width(
        self,
        policy: WidthPolicy,
        full_channels: int,
        *,
        divisor: int,
        ratio: int,
        fixed_out: bool,
        out_channels_list: Sequence[int] | None,
    ) -> None:
        self.policy = policy
        self.width = policy.hi
        self.divisor = divisor
        self.ratio = ratio
        self.fixed_out = fixed_out
        self._full_channels = full_channels
        if out_channels_list is not None:
            if not isinstance(policy, WidthList) or len(out_channels_list) != len(policy.widths):
                raise ValueError("out_channels_list needs widths=[...] of the same length")
            if max(out_channels_list) > full_channels:
                raise ValueError(f"out_channels_list exceeds the layer's {full_channels} channels")
            self.out_channels_list = tuple(int(c) for c in out_channels_list)
        else:
            self.out_channels_list = None
        self.active_out = self.channels_at(self.width)

    @property
    def is_width_knob(self) -> bool:
        """Whether this layer chooses its own output channels (what nonuniform maps set)."""
        return not self.fixed_out and not getattr(self, "depthwise", False)

    def check_width(self, width: float) -> float:
        """The width, validated against this layer's list or range (``ValueError`` otherwise)."""
        return self.policy.check(width)

    def channels_at(self, width: float) -> int:
        """Output channels at ``width`` (full channels when the output is fixed)."""
        if self.fixed_out:
            return self._full_channels
        if self.out_channels_list is not None:
            assert isinstance(self.policy, WidthList)
            return self.out_channels_list[self.policy.index(width)]
        return scale_channels(self._full_channels, width, self.divisor, self.ratio)

    def active_channels(self) -> int:
        """Output channels at the current width."""
        if is_compiling():
            return self.active_out
        return self.channels_at(self.width)

    def _width_repr(self) -> str:
        parts = [repr(self.policy)]
        if self.fixed_out:
            parts.append("fixed_out=True")
        if self.ratio != 1:
            parts.append(f"ratio={self.ratio}")
        if self.divisor != 8:
            parts.append(f"divisor={self.divisor}")
        return ", ".join(parts)


__all__ = ["WidthList", "WidthMixin", "WidthRange", "make_policy"]
