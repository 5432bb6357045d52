"""What widths a layer accepts: a fixed list (S-Nets) or a closed range (US-Nets)."""

from __future__ import annotations

from collections.abc import Sequence

_TOL = 1e-6


def _fmt(widths: Sequence[float]) -> str:
    return "[" + ", ".join(f"{w:g}" for w in widths) + "]"


class WidthList:
    """The switches of a slimmable network, e.g. ``[0.25, 0.5, 0.75, 1.0]``."""

    def __init__(self, widths: Sequence[float]) -> None:
        if not widths:
            raise ValueError("widths must list at least one width, e.g. widths=[0.25, 0.5, 1.0]")
        for w in widths:
            if not 0.0 < float(w) <= 1.0:
                raise ValueError(f"width {w} is outside (0, 1]; widths are fractions of full width")
        self.widths = tuple(sorted(float(w) for w in widths))

    @property
    def lo(self) -> float:
        return self.widths[0]

    @property
    def hi(self) -> float:
        return self.widths[-1]

    def index(self, width: float) -> int:
        """Position of ``width`` in the sorted list; ``ValueError`` naming the list if absent."""
        for i, w in enumerate(self.widths):
            if abs(w - width) <= _TOL:  # (not math.isclose: torch.compile traces this)
                return i
        raise ValueError(
            f"width {width:g} is not one of this slimmable model's widths {_fmt(self.widths)}; "
            "pick one of them (S-Nets run only at their trained switches)"
        )

    def check(self, width: float) -> float:
        return self.widths[self.index(width)]

    def __repr__(self) -> str:
        return f"widths={_fmt(self.widths)}"


class WidthRange:
    """The closed range ``[lo, hi]`` of a universally slimmable network."""

    def __init__(self, lo: float, hi: float = 1.0) -> None:
        lo, hi = float(lo), float(hi)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"width_range must satisfy 0 < lo <= hi <= 1, got ({lo:g}, {hi:g})")
        self.lo, self.hi = lo, hi

    def check(self, width: float) -> float:
        width = float(width)
        if not self.lo - _TOL <= width <= self.hi + _TOL:
            raise ValueError(
                f"width {width:g} is outside this universally slimmable model's range "
                f"[{self.lo:g}, {self.hi:g}]; pick a width inside it"
            )
        return min(max(width, self.lo), self.hi)

    def __repr__(self) -> str:
        return f"width_range=({self.lo:g}, {self.hi:g})"


WidthPolicy = WidthList | WidthRange
