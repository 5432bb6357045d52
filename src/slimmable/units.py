"""Counts in human units, read and written one way everywhere: ``150M``, ``1.2G``, ``41.79K``.

MACs, parameters and budgets use decimal suffixes (K = 1e3, M = 1e6, G = 1e9, T = 1e12). Every
table, message and command of the package prints counts with :func:`format_count` and reads
them with :func:`parse_count`.
"""

from __future__ import annotations

import math
import re

_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_COUNT = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt%]?)\s*(?:macs?|flops?|params?)?\s*$"
)


def format_count(value: float) -> str:
    """A count in four significant digits and a decimal suffix: ``41.79K``, ``568.7M``, ``512``."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:.4g}"


def parse_count(value: str | float, full: float | None = None) -> float:
    """A positive count from ``150M``, ``1.2G``, ``300k``, ``5e8``, ``150 MMACs`` or ``50%``.

    Suffixes are decimal and case-insensitive (a MAC count is never in milli-units, so ``m`` is
    mega). ``50%`` is a share of ``full`` (e.g. the full model's MACs), which it then needs.
    """
    if isinstance(value, bool):
        raise ValueError(f"cannot read {value!r} as a count; write e.g. 150M, 1.2G or 3e8")
    if isinstance(value, int | float):
        number = float(value)
    else:
        match = _COUNT.match(str(value).lower())
        if match is None:
            raise ValueError(
                f"cannot read {value!r} as a count; write e.g. 150M, 1.2G, 300k, 3e8 or 50%"
            )
        number, unit = float(match.group(1)), match.group(2)
        if unit == "%":
            if full is None:
                raise ValueError(f"{value!r} is relative; it needs the full model's count")
            number = full * number / 100
        else:
            number *= _UNITS[unit]
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"a count must be a positive number, got {value!r}")
    return number


def parse_macs(value: str | float, full_macs: float | None = None) -> int:
    """:func:`parse_count` rounded to a whole number of MACs."""
    macs = round(parse_count(value, full_macs))
    if macs <= 0:
        raise ValueError(f"MACs target {value!r} must be positive")
    return macs
