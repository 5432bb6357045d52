"""AutoSlim networks (Yu & Huang, 2019): an architecture at searched per-layer channel numbers.

``slimmable search`` finds, per MACs target, the output channels of every layer of a trained
slimmable network. The ``autoslim_*`` factories build the same architecture with exactly those
channels, to train from scratch as the authors did. ``channels=`` takes the channels of a search
result (``{layer name: channels}``, the names of the searched model) or a list in layer order.
By default the network is plain (one width, ``widths=(1.0,)``); pass ``width_range=`` or
``widths=`` to make it slimmable around the searched channels.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ..layers import SwitchableBatchNorm2d, USBatchNorm2d, WidthList
from ..layers.base import WidthMixin
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


_NORMS = (SwitchableBatchNorm2d, USBatchNorm2d, nn.modules.batchnorm._BatchNorm)


def _trace_channels(reference: nn.Module, channels: Mapping[str, int], input_size) -> dict:
    """``{module name: (in, out)}`` of every width layer and BN when the named layers output
    ``channels`` (any count up to their size), propagated by a forward on the meta device."""
    memo: dict[int, object] = {}
    for t in (*reference.parameters(), *reference.buffers()):
        memo[id(t)] = torch.empty_like(t, device="meta")
    shadow = copy.deepcopy(reference, memo).train()
    modules = dict(shadow.named_modules())
    for name, module in list(modules.items()):
        if isinstance(module, _NORMS):  # BN keeps its channels; it only has to let them through
            parent, _, leaf = name.rpartition(".")
            setattr(modules[parent] if parent else shadow, leaf, nn.Identity())
    modules = dict(shadow.named_modules())
    for name, count in channels.items():
        layer = modules.get(name)
        if not isinstance(layer, WidthMixin):
            raise ValueError(f"channels names {name!r}, which is no slimmable layer of the model")
        full = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if count > full:
            raise ValueError(f"layer {name!r} has {full} channels; it cannot build {count}")
        layer.channels_at = lambda width, c=int(count): c  # this shadow copy only
    seen: dict[str, tuple[int, int]] = {}
    hooks = [
        m.register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, (i[0].shape[1], o.shape[1]))
        )
        for n, m in modules.items()
        if isinstance(m, WidthMixin | nn.Identity) and n
    ]
    try:
        with torch.no_grad():
            shadow(torch.zeros(2, *input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _rebuilt(module: nn.Module, inp: int, out: int) -> nn.Module:
    """A fresh layer like ``module`` (same class and options) with ``inp`` -> ``out`` channels."""
    if isinstance(module, WidthMixin):
        policy = module.policy
        if isinstance(policy, WidthList):
            if len(policy.widths) > 1:
                raise ValueError("build searched networks plain (widths=(1.0,)) or US")
            width = {"widths": policy.widths}
        else:
            width = {"width_range": (policy.lo, policy.hi)}
        options = {"fixed_in": module.fixed_in, "divisor": module.divisor, "ratio": module.ratio}
        options |= {"fixed_out": module.fixed_out, **width}
        if isinstance(module, nn.Linear):
            return type(module)(inp, out, module.bias is not None, **options)
        conv = module
        return type(conv)(
            inp,
            out,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            1 if conv.depthwise else conv.groups,
            conv.bias is not None,
            depthwise=conv.depthwise,
            padding_mode=conv.padding_mode,
            **options,
        )
    if isinstance(module, SwitchableBatchNorm2d):
        if len(module.channels_list) > 1:
            raise ValueError("build searched networks plain (widths=(1.0,)) or US")
        bn = module.bn[0]
        return SwitchableBatchNorm2d(
            out, module.policy.widths, eps=bn.eps, momentum=bn.momentum, affine=bn.affine
        )
    if isinstance(module, USBatchNorm2d):
        return USBatchNorm2d(
            out, module.eps, module.momentum, module.affine, uncalibrated=module.uncalibrated
        )
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(out, module.eps, module.momentum, module.affine)
    raise TypeError(f"cannot rebuild {type(module).__name__}")


def build_at_channels(
    reference: nn.Module, channels: Mapping[str, int], input_size: Sequence[int]
) -> nn.Module:
    """``reference`` with its named layers at exactly ``channels`` output channels, in place.

    Every slimmable layer and BN is rebuilt at the channels it then sees (depthwise convs follow
    their input, tied layers must agree), with fresh weights, initialized as the model family
    initializes them (its module's ``init_weights``) or as torch does. ``reference`` must be
    plain (``widths=(1.0,)``) or universally slimmable, with layers at least that wide;
    ``input_size`` ``(C, H, W)`` is one input the network accepts (shapes only).
    """
    sizes = _trace_channels(reference, channels, tuple(input_size))
    modules = dict(reference.named_modules())
    for name, (inp, out) in sizes.items():
        module = modules[name]
        if not isinstance(module, (WidthMixin, *_NORMS)):
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent] if parent else reference, leaf, _rebuilt(module, inp, out))
    init = getattr(sys.modules.get(type(reference).__module__), "init_weights", None)
    if callable(init):
        init(reference)
    if hasattr(reference, "is_official_layout"):
        reference.is_official_layout = False  # the authors' weights no longer fit
    return reference


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
