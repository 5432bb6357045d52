"""Channel spaces: which channel dimensions must keep the same number of active channels.

Every convolution or linear layer makes a new *space*: its output channels. Ops that need two
channel dimensions to stay the same size (a residual sum, a squeeze-excitation gate, a depthwise
convolution) join their spaces into one class (union-find); a class slims as one. A tensor's
channel dimension is a *layout*: the segments it is made of (one, or the parts of a
concatenation), each a number of channels of some space. At a width, a segment of ``size``
channels of a space whose class runs ``c`` of its ``R`` full channels has ``size * c / R``
active channels: the parts of a concatenation each keep their own first channels.

A class is *fixed* (never slims) when it holds the image input, a model output, a layer the
user fixed, or something only a fixed width makes valid. Its other constraints: a multiple its
active count must keep (grouped convolutions, group norms, splits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(eq=False)
class Space:
    """The channels of one layer's output (or of the input, or of a tensor made in forward)."""

    size: int
    origin: str  # what made it: a module path, "input", "tensor made by aten.zeros", ...
    parent: Space | None = None
    producers: list[str] = field(default_factory=list)  # layers whose outputs are these channels
    fixed: list[str] = field(default_factory=list)  # why these channels never slim
    multiples: list[tuple[int, int, str]] = field(default_factory=list)  # (seg size, k, why)
    mixed: list[str] = field(default_factory=list)  # ties with spaces of another size

    def root(self) -> Space:
        node = self
        while node.parent is not None:
            node = node.parent
        if node is not self:  # path compression
            s = self
            while s.parent is not node and s.parent is not None:
                s.parent, s = node, s.parent
        return node

    def __repr__(self) -> str:
        return f"Space({self.size}, {self.origin!r})"


@dataclass(frozen=True)
class Seg:
    """``size`` channels (at full width) of ``space``, side by side with the other segments."""

    space: Space
    size: int


Layout = tuple[Seg, ...]


def members(root: Space, spaces: list[Space]) -> list[Space]:
    """The spaces of ``root``'s class."""
    return [s for s in spaces if s.root() is root]


def union(a: Space, b: Space, why: str) -> None:
    """Make ``a`` and ``b`` one class: their active counts stay in proportion at every width.

    Classes only slim together when their full sizes agree; a tie of different sizes is kept
    in ``mixed`` and makes the class fixed, or an error (see :mod:`.solve`).
    """
    ra, rb = a.root(), b.root()
    if ra is rb:
        return
    if ra.size != rb.size:
        ra.mixed.append(f"{why} ties {rb.size} channels ({rb.origin}) to {ra.size} ({ra.origin})")
    rb.parent = ra


def require_multiple(seg: Seg, k: int, why: str) -> None:
    """The active count of ``seg`` must be a multiple of ``k`` (``k = 1``: an integer)."""
    seg.space.multiples.append((seg.size, k, why))


def needed_multiple(space: Space) -> int:
    """What the class's count must be a multiple of for ``space``'s constraints to hold.

    A segment of ``size`` channels of a space of ``S`` has ``size * c / S`` active channels
    when its class runs ``c`` (spaces of one class share their size when they slim).
    """
    m = 1
    for size, k, _ in space.multiples:
        need = Fraction(k * space.size, size).numerator
        m = m * need // math.gcd(m, need)
    return m


def layout_size(layout: Layout) -> int:
    return sum(s.size for s in layout)


def describe(layout: Layout) -> str:
    return " + ".join(f"{s.size} of {s.space.root().origin}" for s in layout)
