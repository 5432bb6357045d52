"""Exact channel counts per layer, expressed as the width maps the rest of the package speaks.

A knob layer runs at ``channels_at(width)`` output channels. AutoSlim thinks in channels, so
here a channel count becomes the width that reproduces it exactly (``channels / full`` when the
count is a multiple of the layer's divisor, checked with ``channels_at``), and the counts a
layer can run at are listed: any multiple of ``divisor * ratio`` inside a universally slimmable
layer's range, or the counts of an S-Net's switches.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ..layers.base import WidthMixin
from ..layers.width_policy import WidthList
from ..width import WidthSetting, set_width, width_knobs
from ..width import channel_groups as tied_layers


def width_for_channels(layer: WidthMixin, channels: int) -> float | None:
    """A width at which ``layer`` runs exactly ``channels`` output channels, or ``None``."""
    policy = layer.policy
    if isinstance(policy, WidthList):
        hits = [w for w in policy.widths if layer.channels_at(w) == channels]
        return hits[-1] if hits else None
    if not 0 < channels <= layer.channels_at(policy.hi):
        return None
    # channels / full reproduces a multiple of the divisor; below the range the rounding of
    # the smallest width may still land on the count (e.g. 40 channels at 0.25 -> 8).
    for w in (channels / layer._full_channels, policy.lo):
        w = min(max(w, policy.lo), policy.hi)
        if layer.channels_at(w) == channels:
            return w
    return None


def channel_choices(layer: WidthMixin) -> tuple[int, ...]:
    """Every output channel count ``layer`` can run at, ascending."""
    policy = layer.policy
    if isinstance(policy, WidthList):
        return tuple(sorted({layer.channels_at(w) for w in policy.widths}))
    lo, hi = layer.channels_at(policy.lo), layer.channels_at(policy.hi)
    step = layer.divisor * layer.ratio
    counts = {lo, hi, *range(math.ceil(lo / step) * step, hi + 1, step)}
    return tuple(sorted(c for c in counts if width_for_channels(layer, c) is not None))


def _describe_choices(choices: tuple[int, ...]) -> str:
    if len(choices) <= 6:
        return "[" + ", ".join(map(str, choices)) + "]"
    return f"[{choices[0]}, {choices[1]}, ..., {choices[-1]}]"


def _knob(knobs: Mapping[str, WidthMixin], name: str) -> WidthMixin:
    try:
        return knobs[name]
    except KeyError:
        near = difflib.get_close_matches(name, list(knobs), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(
            f"{name!r} is no layer that chooses its channels (a width knob){hint}"
        ) from None


def channels_to_width(model: nn.Module, channels: Mapping[str, int]) -> dict[str, float]:
    """The width map that runs each named knob layer at exactly its channel count.

    Raises ``ValueError`` naming the counts a layer can run at when one is not reachable (an
    S-Net runs only at its switches: search a universally slimmable model for any count).
    """
    knobs = width_knobs(model)
    widths: dict[str, float] = {}
    for name, count in channels.items():
        layer = _knob(knobs, name)
        if isinstance(count, bool) or int(count) != count:
            raise ValueError(f"layer {name!r}: channels must be an integer, got {count!r}")
        w = width_for_channels(layer, int(count))
        if w is None:
            choices = _describe_choices(channel_choices(layer))
            if isinstance(layer.policy, WidthList):
                raise ValueError(
                    f"layer {name!r} of this slimmable network (S-Net) runs at {choices} "
                    f"channels, not {count}: its switchable BN has statistics only for its "
                    "switches; use a universally slimmable (US) model for any channel count"
                )
            step = layer.divisor * layer.ratio
            raise ValueError(
                f"layer {name!r} runs at {choices} channels (multiples of {step} within its "
                f"width range), not {count}; pick one of those"
            )
        widths[name] = w
    return widths


def set_channels(model: nn.Module, channels: Mapping[str, int]) -> WidthSetting:
    """Run each named knob layer at exactly ``channels[name]`` output channels.

    Other layers run at full width. Like :func:`slimmable.set_width` (which it calls), it
    returns a context manager that restores the previous widths.
    """
    return set_width(model, channels_to_width(model, channels))


def get_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every knob layer at the model's current width."""
    return {name: m.channels_at(m.width) for name, m in width_knobs(model).items()}


@dataclass(frozen=True)
class ChannelGroup:
    """Knob layers whose output channels are tied, and the counts they can run at together."""

    layers: tuple[str, ...]
    choices: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.layers[0] if len(self.layers) == 1 else "+".join(self.layers)


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The model's knob layers grouped by tied channels, in module order.

    Ties come from ``model.channel_groups()`` when the model defines it (residual sums,
    depthwise pairs, the groups of a shuffle); every other knob is a group of its own.
    """
    knobs = width_knobs(model)
    if not knobs:
        raise ValueError(
            f"{type(model).__name__} has no layers that choose their channels; "
            "build it from slimmable layers (slimmable.models.make_kit)"
        )
    tied = tied_layers(model)
    owner: dict[str, int] = {}
    for i, group in enumerate(tied):
        for name in group:
            _knob(knobs, name)
            if name in owner:
                raise ValueError(f"channel_groups() lists {name!r} in two groups; merge them")
            owner[name] = i
    order = list(knobs)
    groups: list[ChannelGroup] = []
    done: set[int] = set()
    for name in order:
        i = owner.get(name)
        if i is None:
            members = [name]
        elif i in done:
            continue
        else:
            done.add(i)
            members = sorted(tied[i], key=order.index)
        choice_sets = {channel_choices(knobs[m]) for m in members}
        if len(choice_sets) > 1:
            raise ValueError(
                f"tied layers {', '.join(members)} run at different channel counts; "
                "tied layers need the same full channels and divisor"
            )
        groups.append(ChannelGroup(tuple(members), choice_sets.pop()))
    return groups
