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
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..layers import SwitchableBatchNorm2d, USBatchNorm2d, WidthList
from ..layers.base import WidthMixin
from ..width import width_knobs
from .helpers import with_cfg
from .kit import make_kit
from .mnasnet import MNasNet, table_channels
from .mobilenet_v1 import MOBILENET_V1_SETTING, MobileNetV1
from .mobilenet_v2 import MobileNetV2
from .registry import register_model
from .resnet import CIFAR_STAGE_CHANNELS, RESNET_SETTINGS, ResNet
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
    model = SmallCNN(kit, num_classes, in_chans, searched)
    return with_cfg(model, input_size=(in_chans, 8, 8))


# ---- the authors' searched networks ----------------------------------------------------------
# Channel numbers of the AutoSlim networks the authors trained, from their configuration files
# (github.com/JiahuiYu/slimmable_networks, apps/autoslim_*_train_val.yml, `channel_num_list`),
# keyed by their MACs label, without the trailing classifier output (1000).

# MobileNet v1: the stem conv, then the 13 pointwise convs (depthwise convs follow their input).
AUTOSLIM_MOBILENET_V1 = {
    "150M": [16, 32, 48, 48, 88, 88, 224, 176, 224, 368, 320, 224, 744, 744],
    "325M": [16, 32, 48, 64, 112, 184, 320, 368, 320, 416, 464, 560, 1128, 1128],
    "572M": [24, 64, 128, 144, 232, 232, 560, 464, 512, 464, 560, 560, 1128, 1128],
}

# ResNet-50: the stem conv; then per bottleneck the 1x1 and 3x3 convs and the output conv, the
# first block of each stage preceded by its projection shortcut (equal to the stage's outputs).
AUTOSLIM_RESNET50 = {
    "570M": [
        24,
        *(72, 8, 16, 72, 16, 16, 72, 8, 8, 72),
        *(240, 16, 24, 240, 16, 24, 240, 16, 16, 240, 16, 24, 240),
        *(704, 72, 72, 704, 48, 72, 704, 48, 72, 704, 72, 72, 704, 48, 48, 704, 48, 48, 704),
        *(1680, 280, 240, 1680, 120, 200, 1680, 280, 280, 1680),
    ],
    "1G": [
        32,
        *(72, 16, 16, 72, 16, 16, 72, 8, 8, 72),
        *(280, 24, 40, 280, 16, 24, 280, 16, 24, 280, 24, 40, 280),
        *(880, 72, 72, 880, 72, 96, 880, 72, 72, 880, 72, 72, 880, 48, 72, 880, 168, 96, 880),
        *(2016, 360, 280, 2016, 320, 360, 2016, 480, 440, 2016),
    ],
    "2G": [
        40,
        *(120, 16, 16, 120, 24, 24, 120, 16, 24, 120),
        *(440, 48, 72, 440, 32, 48, 440, 40, 56, 440, 64, 72, 440),
        *(1024, 168, 168, 1024, 96, 144, 1024, 120, 168, 1024, 120, 144, 1024, 120, 144, 1024),
        *(256, 256, 1024),
        *(2016, 512, 512, 2016, 480, 480, 2016, 512, 512, 2016),
    ],
    "3G": [
        48,
        *(192, 16, 16, 192, 56, 56, 192, 24, 40, 192),
        *(512, 88, 112, 512, 64, 104, 512, 104, 112, 512, 80, 128, 512),
        *(1024, 240, 216, 1024, 144, 216, 1024, 192, 192, 1024, 144, 240, 1024, 240, 256, 1024),
        *(256, 256, 1024),
        *(2016, 512, 512, 2016, 480, 512, 2016, 512, 512, 2016),
    ],
}

# MNasNet (B1): the stem, the first block's projection, per later block its expansion and
# projection, and the last 1x1 conv (``mnasnet.table_channels`` order), from a wider network
# than MnasNet-B1 (expansions up to 1728 channels, a 1920-channel last conv). Labelled as in
# their README's table (217M, 315M, 532M); the configuration file's comment on the last list
# says 539M, which its channels do not give (531.8M counted).
AUTOSLIM_MNASNET = {
    "217M": [
        *(16, 8, 24, 16, 48, 16, 24, 16, 48, 32, 48, 32, 48, 32, 192, 56, 400, 56, 400, 56),
        *(400, 80, 432, 80, 648, 192, 864, 192, 864, 192, 864, 192, 1728, 280, 1280),
    ],
    "315M": [
        *(16, 8, 40, 24, 48, 24, 40, 24, 48, 40, 80, 40, 48, 40, 352, 64, 400, 64, 400, 64),
        *(464, 80, 432, 80, 792, 288, 864, 288, 864, 288, 1008, 288, 1728, 360, 1920),
    ],
    "532M": [
        *(16, 8, 64, 32, 56, 32, 72, 32, 104, 64, 128, 64, 96, 64, 384, 104, 528, 104, 464, 104),
        *(720, 128, 576, 128, 864, 288, 1584, 288, 1728, 288, 1728, 288, 1728, 480, 1920),
    ],
}


def _named(channels: Channels | str | None, published: Mapping[str, list[int]], names: list[str]):
    """``{layer: channels}`` from a published label, a name map or a list in ``names`` order."""
    if isinstance(channels, str):
        if channels not in published:
            raise ValueError(
                f"no published AutoSlim configuration {channels!r}; "
                f"choose one of {', '.join(published)} or pass channels={{layer: count}}"
            )
        channels = published[channels]
    if channels is None:
        return {}
    if isinstance(channels, Mapping):
        return dict(channels)
    values = list(channels)
    if len(values) != len(names):
        raise ValueError(
            f"channels lists {len(values)} layers; this architecture has {len(names)} "
            f"({names[0]}, ..., {names[-1]})"
        )
    return dict(zip(names, values, strict=True))


def _check(channels: Mapping[str, int], names: Iterable[str]) -> None:
    """Every named layer is one of ``names`` and gets a positive integer."""
    unknown = [n for n in channels if n not in set(names)]
    if unknown:
        raise ValueError(
            f"channels names {unknown[0]!r}, which is no layer of this architecture; pass the "
            "channels of a search of the same model family"
        )
    for name, value in channels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"layer {name!r}: channels must be a positive integer, not {value!r}")


def _searched(
    reference: nn.Module, channels: Mapping[str, int], input_size: tuple[int, int, int]
) -> nn.Module:
    _check(channels, width_knobs(reference))
    model = build_at_channels(reference, channels, input_size)
    return with_cfg(model, input_size=input_size, paper="AutoSlim, Yu & Huang 2019")


@register_model
def autoslim_mobilenet_v1(
    num_classes: int = 1000,
    in_chans: int = 3,
    channels: Channels | str = "325M",
    widths: Sequence[float] | None = None,
    width_range: Sequence[float] | None = None,
    norm: str | None = None,
) -> nn.Module:
    """AutoSlim-MobileNet v1 (Yu & Huang, 2019): MobileNet v1 at searched channels.

    ``channels``: ``"150M"``, ``"325M"`` or ``"572M"`` (the authors' networks), the channels of a
    search of ``us_mobilenet_v1`` (``{layer: channels}``), or 14 counts: stem and pointwise convs.
    """
    kit = make_kit(**_kit_kwargs(widths, width_range, norm))
    full = [c for c, n, _ in MOBILENET_V1_SETTING for _ in range(n)]
    strides = [s if i == 0 else 1 for _, n, s in MOBILENET_V1_SETTING for i in range(n)]
    with torch.device("meta"):
        names = list(width_knobs(MobileNetV1(kit, num_classes, in_chans)))
    named = _named(channels, AUTOSLIM_MOBILENET_V1, names)
    # the authors searched a wider network: make room for counts above the standard widths
    blocks = [max(c, named.get(n, 0)) for c, n in zip(full, names[1:], strict=True)]
    setting = [(c, 1, s) for c, s in zip(blocks, strides, strict=True)]
    reference = MobileNetV1(kit, num_classes, in_chans, setting)
    return _searched(reference, named, (in_chans, 224, 224))


@register_model
def autoslim_mobilenet_v2(
    num_classes: int = 1000,
    in_chans: int = 3,
    channels: Channels | None = None,
    cifar: bool = False,
    widths: Sequence[float] | None = None,
    width_range: Sequence[float] | None = None,
    norm: str | None = None,
) -> nn.Module:
    """AutoSlim-MobileNet v2 (Yu & Huang, 2019): MobileNet v2 at searched channels.

    ``channels``: the channels of a search of ``us_mobilenet_v2`` (``cifar=True``: of
    ``us_mobilenet_v2_cifar``, stride-1 stem), as ``{layer: channels}`` or 34 counts in layer
    order. The authors' published lists need a 1.5x MobileNet v2 (a 1920-channel last conv), which
    the zoo's MobileNet v2 does not build.
    """
    kit = make_kit(**_kit_kwargs(widths, width_range, norm))
    reference = MobileNetV2(kit, num_classes, in_chans, stem_stride=1 if cifar else 2)
    named = _named(channels, {}, list(width_knobs(reference)))
    return _searched(reference, named, (in_chans, 32, 32) if cifar else (in_chans, 224, 224))


@register_model
def autoslim_resnet50(
    num_classes: int = 1000,
    in_chans: int = 3,
    channels: Channels | str = "1G",
    widths: Sequence[float] | None = None,
    width_range: Sequence[float] | None = None,
    norm: str | None = None,
) -> nn.Module:
    """AutoSlim-ResNet-50 (Yu & Huang, 2019): ResNet-50 at searched channels.

    ``channels``: ``"570M"``, ``"1G"``, ``"2G"`` or ``"3G"`` (the authors' networks), the
    channels of a search of ``us_resnet50`` (``{layer: channels}``), or 53 counts in the authors'
    order (the stem; per block the 1x1, 3x3 and output convs, a stage's first block preceded by
    its projection shortcut).
    """
    kit = make_kit(**_kit_kwargs(widths, width_range, norm))
    block, layers = RESNET_SETTINGS[50]
    reference = ResNet(kit, block, layers, num_classes, in_chans)
    # the authors' order: a stage's first block lists its shortcut before its body
    names = list(width_knobs(reference))
    order = [names[0]]
    for name in names[1:]:
        if name.endswith(".shortcut.0"):
            order.insert(len(order) - 3, name)
        else:
            order.append(name)
    named = _named(channels, AUTOSLIM_RESNET50, order)
    return _searched(reference, named, (in_chans, 224, 224))


@register_model
def autoslim_mnasnet(
    num_classes: int = 1000,
    in_chans: int = 3,
    channels: Channels | str = "315M",
    widths: Sequence[float] | None = None,
    width_range: Sequence[float] | None = None,
    norm: str | None = None,
) -> nn.Module:
    """AutoSlim-MNasNet (Yu & Huang, 2019): MnasNet-B1 at searched channels.

    ``channels``: ``"217M"``, ``"315M"`` or ``"532M"`` (the authors' networks), the channels of a
    search of ``us_mnasnet`` (``{layer: channels}``; the last conv keeps its 1280), or 35 counts in
    the authors' order: the stem, each block's expansion and projection, the last 1x1 conv.
    """
    kit = make_kit(**_kit_kwargs(widths, width_range, norm))
    with torch.device("meta"):
        reference = MNasNet(make_kit(widths=(1.0,)), num_classes, in_chans)
    last = f"features.{len(reference.features) - 1}.0"  # fixed: no width knob, but searched
    names = [*width_knobs(reference), last]
    named = _named(channels, AUTOSLIM_MNASNET, names)
    _check(named, names)
    counts = [named.get(n, c) for n, c in zip(names, table_channels(), strict=True)]
    model = MNasNet(kit, num_classes, in_chans, channels=counts)
    return with_cfg(model, paper="AutoSlim, Yu & Huang 2019")


@register_model
def autoslim_resnet20(
    num_classes: int = 10,
    in_chans: int = 3,
    channels: Channels | None = None,
    widths: Sequence[float] | None = None,
    width_range: Sequence[float] | None = None,
    norm: str | None = None,
) -> nn.Module:
    """ResNet-20 for 32x32 inputs (``us_resnet20``'s architecture) at searched channels.

    ``channels``: the channels of a search of ``us_resnet20`` / ``s_resnet20`` (``{layer:
    channels}``; a stage's residual sums share one count), or 21 counts in layer order.
    """
    kit = make_kit(divisor=4, **_kit_kwargs(widths, width_range, norm))
    reference = ResNet(kit, "basic", (3, 3, 3), num_classes, in_chans, CIFAR_STAGE_CHANNELS, True)
    named = _named(channels, {}, list(width_knobs(reference)))
    return _searched(reference, named, (in_chans, 32, 32))
