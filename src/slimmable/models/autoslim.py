"""AutoSlim networks (Yu & Huang, 2019): an architecture at searched per-layer channel numbers.

``slimmable search`` finds, per MACs target, the output channels of every layer of a trained
slimmable network. The ``autoslim_*`` factories build the same architecture with exactly those
channels, to train from scratch as the authors did. ``channels=`` takes the channels of a search
result (``{layer name: channels}``, the names of the searched model) or a list in layer order.
By default the network is plain (one width, ``widths=(1.0,)``); pass ``width_range=`` or
``widths=`` to make it slimmable around the searched channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..width import width_knobs
from .kit import make_kit
from .registry import register_model
from .small_cnn import SMALL_CNN_SETTING, SmallCNN

Channels = Mapping[str, int] | Sequence[int]


def resolve_channels(
    channels: Channels | None, build_reference: Callable[[], nn.Module]
) -> list[int]:
    """Per-knob channels in module order, from a name map or a list.

    ``build_reference()`` builds the searched architecture at its full channels (on the meta
    device, so it costs nothing): its knob layers give the names and order, and the channels of
    layers a map leaves out.
    """
    with torch.device("meta"):
        reference = build_reference()
    knobs = width_knobs(reference)
    names = list(knobs)
    full = [m.channels_at(m.policy.hi) for m in knobs.values()]
    if channels is None:
        return full
    if isinstance(channels, Mapping):
        unknown = [n for n in channels if n not in knobs]
        if unknown:
            raise ValueError(
                f"channels names {unknown[0]!r}, which is no layer of this architecture "
                f"(its layers: {', '.join(names)}); pass the channels of a search of the same model"
            )
        values = [channels.get(n, c) for n, c in zip(names, full, strict=True)]
    else:
        values = list(channels)
        if len(values) != len(names):
            raise ValueError(
                f"channels lists {len(values)} layers; this architecture has {len(names)} "
                f"({', '.join(names)})"
            )
    for name, value in zip(names, values, strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"layer {name!r}: channels must be a positive integer, not {value!r}")
    return values


def _kit_kwargs(
    widths: Sequence[float] | None, width_range: Sequence[float] | None, norm: str | None
) -> dict:
    if widths is None and width_range is None:
        widths = (1.0,)
    return {"widths": widths, "width_range": width_range, "norm": norm}


@register_model
def autoslim_small_cnn(
    num_classes: int = 10,
    in_chans: int = 1,
    channels: Channels | None = None,
    setting: Sequence[tuple[int, int]] = SMALL_CNN_SETTING,
    widths: Sequence[float] | None = None,
    width_range: Sequence[float] | None = None,
    norm: str | None = None,
) -> SmallCNN:
    """The small CNN at searched channels (AutoSlim, Yu & Huang 2019).

    ``channels``: a search result's channels of ``us_small_cnn`` / ``s_small_cnn`` (built with
    the same ``setting``), e.g. ``slimmable.read_search(path).channels("50%")``, or one count
    per conv layer. Plain by default; ``width_range=``/``widths=`` make it slimmable.
    """

    def reference() -> nn.Module:
        return SmallCNN(make_kit(widths=(1.0,)), num_classes, in_chans, setting)

    counts = resolve_channels(channels, reference)
    searched = [(c, stride) for c, (_, stride) in zip(counts, setting, strict=True)]
    kit = make_kit(**_kit_kwargs(widths, width_range, norm))
    return SmallCNN(kit, num_classes, in_chans, searched)
