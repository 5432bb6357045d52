"""From a recorded forward to a plan: which channel classes slim, with which rule, and why not.

Every class of tied channel spaces either slims as one, with a divisor (the constraints of
grouped convolutions, group norms and splits folded into the user's ``divisor``) and sometimes
an expansion ratio, or stays fixed for a stated reason. A hazard (an op the converter cannot
follow) whose channels do not all stay fixed is an error that names the op, the module and the
fix.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..layers.channels import scale_channels
from .spaces import Layout, Seg, Space, needed_multiple
from .trace import LayerCall, Trace


class ConversionError(ValueError):
    """A model the converter cannot make slimmable as asked; the message names the fix."""


@dataclass
class ChannelClass:
    """Tied channel spaces that slim as one (or stay fixed)."""

    root: Space
    spaces: list[Space]
    producers: list[str]
    fixed: list[str]
    divisor: int = 8
    ratio: int = 1

    @property
    def size(self) -> int:
        return self.root.size

    @property
    def slims(self) -> bool:
        return not self.fixed

    def count(self, width: float) -> int:
        """Active channels of the class at a uniform ``width``."""
        if self.fixed:
            return self.size
        return scale_channels(self.size, width, self.divisor, self.ratio)


@dataclass
class Plan:
    trace: Trace
    classes: dict[int, ChannelClass] = field(default_factory=dict)  # id(root) -> class

    def of(self, space: Space) -> ChannelClass:
        return self.classes[id(space.root())]

    def seg_count(self, seg: Seg, width: float) -> int:
        cls = self.of(seg.space)
        if not cls.slims:
            return seg.size
        return seg.size * cls.count(width) // seg.space.size

    def layout_count(self, layout: Layout, width: float) -> int:
        return sum(self.seg_count(s, width) for s in layout)

    def slims(self, layout: Layout) -> bool:
        return any(self.of(s.space).slims for s in layout)

    def groups(self) -> list[list[str]]:
        """Layers whose output channels are tied, for ``model.channel_groups()``."""
        return [
            list(c.producers) for c in self.classes.values() if c.slims and len(c.producers) > 1
        ]


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def mark_fixed(trace: Trace, patterns: Sequence[str]) -> None:
    """The output channels of every module matching a ``fixed`` pattern never slim."""
    names = {name for name, _ in trace.module_outputs if name}
    for pattern in patterns:
        hit = [n for n in names if _matches(n, pattern)]
        if not hit:
            near = difflib.get_close_matches(pattern, sorted(names), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConversionError(f"fixed pattern {pattern!r} matches no module{hint}")
        for name, outputs in trace.module_outputs:
            if name in hit:
                for _, info in outputs:
                    for seg in info.layout:
                        seg.space.fixed.append(f"fixed={pattern!r}")


def _expansion_ratio(cls: ChannelClass, trace: Trace, calls: dict[str, LayerCall]) -> int:
    """``t`` for an inverted residual's expansion (one 1x1-style conv with ``t`` times its
    inputs, read by a depthwise conv): its channels stay a multiple of ``t``, as the US-Nets
    paper keeps them."""
    if len(cls.producers) != 1:
        return 1
    call = calls.get(cls.producers[0])
    if call is None or call.kind != "conv" or call.module.groups != 1:
        return 1
    t, rest = divmod(call.module.out_channels, call.module.in_channels)
    if t < 2 or rest or (cls.size // t) % cls.divisor:
        return 1
    read_by_depthwise = any(
        c.kind == "depthwise" and any(s.space.root() is cls.root for s in c.inputs)
        for c in trace.calls
    )
    return t if read_by_depthwise else 1


def _who(cls: ChannelClass) -> str:
    if cls.producers:
        return ", ".join(repr(p) for p in cls.producers[:3]) + (
            " ..." if len(cls.producers) > 3 else ""
        )
    return cls.root.origin


def make_plan(trace: Trace, divisor: int) -> Plan:
    """Group the spaces into classes, check hazards and give each slimming class its rule."""
    plan = Plan(trace)
    for space in trace.spaces:
        root = space.root()
        cls = plan.classes.get(id(root))
        if cls is None:
            cls = plan.classes[id(root)] = ChannelClass(root, [], [], [])
        cls.spaces.append(space)
        cls.producers += space.producers
        cls.fixed += space.fixed
    for cls in plan.classes.values():
        if not cls.producers and not cls.fixed:
            cls.fixed.append("no layer makes these channels")
        if cls.root.mixed and cls.slims:
            raise ConversionError(
                f"{cls.root.mixed[0]}: tied channels of different sizes cannot slim together; "
                f"keep them whole with fixed=[{_who(cls)}]"
            )
    for hazard in trace.hazards:
        open_ = [plan.of(s) for s in hazard.spaces if plan.of(s).slims]
        if open_:
            who = ", ".join(dict.fromkeys(_who(c) for c in open_))
            raise ConversionError(
                f"{hazard.message}; keep those channels whole with fixed=[{who}], or teach the "
                "converter with slimmable.converter.register_rule"
            )
    calls = {c.name: c for c in trace.calls}
    for cls in plan.classes.values():
        if not cls.slims:
            continue
        m = divisor
        for space in cls.spaces:
            need = needed_multiple(space)
            m = m * need // math.gcd(m, need)
        cls.divisor = m
        cls.ratio = _expansion_ratio(cls, trace, calls)
    return plan
