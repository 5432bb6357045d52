"""ResNets (He et al., 2016) as slimmable (S-Net) or universally slimmable networks.

S-ResNet-50 (Yu et al., ICLR 2019) runs at 1.0, 0.75, 0.5, 0.25 (4.1G, 2.3G, 1.1G, 278M MACs).
Depths 18/34 (basic blocks) and 50/101/152 (bottlenecks, stride on the 3x3 conv as in the
authors' code) for ImageNet, and ResNet-20 for 32x32 inputs (three stages of 16/32/64 channels,
projection shortcuts). All residual sums tie the widths of the convs they add
(:meth:`ResNet.channel_groups`). Modules are named as in the authors' code, so their released
S-ResNet-50 weights load with :func:`slimmable.load_official`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .helpers import init_weights, residual_groups, stage_ends, with_cfg
from .kit import LayerKit, make_kit
from .official import StateDict, convert_state_dict
from .registry import register_model

# depth: (block, blocks per stage); stage widths are 64/128/256/512 (x4 out for bottlenecks).
RESNET_SETTINGS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_CHANNELS = (64, 128, 256, 512)
CIFAR_STAGE_CHANNELS = (16, 32, 64)  # ResNet-20: 3 basic blocks per stage

RELEASES = "https://github.com/JiahuiYu/slimmable_networks/files"
default_cfgs: dict[str, dict] = {
    f"{kind}_resnet{depth}": {} for kind in ("s", "us") for depth in RESNET_SETTINGS
}
default_cfgs["s_resnet50"] = {
    "paper": "Slimmable Neural Networks, ICLR 2019, Table 3",
    "official_url": "https://drive.google.com/open?id=1f6q37OkZaz_0GoOAwllHlXNWuKwor2fC",
    "top1_err": {1.0: 24.0, 0.75: 25.1, 0.5: 27.9, 0.25: 35.0},
}
default_cfgs["s_resnet20"] = {"input_size": (3, 32, 32)}
default_cfgs["us_resnet20"] = {"input_size": (3, 32, 32)}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN; identity or 1x1 projection shortcut; ReLU after the sum."""

    expansion = 1

    def __init__(self, kit: LayerKit, inp: int, width: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        outp = width
        self.body = nn.Sequential(
            kit.conv(inp, width, 3, stride),
            kit.bn(width),
            nn.ReLU(inplace=True),
            kit.conv(width, outp, 3),
            kit.bn(outp),
        )
        self.shortcut = _shortcut(kit, inp, outp, stride)
        self.post_relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.post_relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each conv-BN; ReLU after the sum."""

    expansion = 4

    def __init__(self, kit: LayerKit, inp: int, width: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        outp = width * self.expansion
        self.body = nn.Sequential(
            kit.conv(inp, width, 1),
            kit.bn(width),
            nn.ReLU(inplace=True),
            kit.conv(width, width, 3, stride),
            kit.bn(width),
            nn.ReLU(inplace=True),
            kit.conv(width, outp, 1),
            kit.bn(outp),
        )
        self.shortcut = _shortcut(kit, inp, outp, stride)
        self.post_relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.post_relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


def _shortcut(kit: LayerKit, inp: int, outp: int, stride: int) -> nn.Module | None:
    if stride == 1 and inp == outp:
        return None
    return nn.Sequential(kit.conv(inp, outp, 1, stride), kit.bn(outp))


class ResNet(nn.Module):
    def __init__(
        self,
        kit: LayerKit,
        block: str,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        stage_channels: Sequence[int] = STAGE_CHANNELS,
        cifar: bool = False,
    ) -> None:
        super().__init__()
        self.kit = kit
        block_cls = Bottleneck if block == "bottleneck" else BasicBlock
        stem = stage_channels[0]
        if cifar:  # 3x3 stride-1 stem, no max pool
            stem_layers = [
                kit.conv(in_chans, stem, 3, 1, fixed_in=True),
                kit.bn(stem),
                nn.ReLU(inplace=True),
            ]
        else:
            stem_layers = [
                kit.conv(in_chans, stem, 7, 2, 3, fixed_in=True),
                kit.bn(stem),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            ]
        features: list[nn.Module] = [nn.Sequential(*stem_layers)]
        channels = stem
        for stage, (width, n) in enumerate(zip(stage_channels, layers, strict=True)):
            for i in range(n):
                stride = 2 if i == 0 and stage > 0 else 1
                features.append(block_cls(kit, channels, width, stride))
                channels = width * block_cls.expansion
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(kit.linear(channels, num_classes))
        init_weights(self)
        self.cifar = cifar
        self.official_depth = (
            sum(layers) * 3 + 2
            if block == "bottleneck"
            and not cifar
            and in_chans == 3
            and tuple(stage_channels) == STAGE_CHANNELS
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def channel_groups(self) -> list[list[str]]:
        """Per stage: the block output convs and projection shortcuts added together (with the
        stem, when the first stage keeps its input's channels)."""
        stream = [("features.0.0", True)]
        for i, block in enumerate(self.features):
            if isinstance(block, BasicBlock | Bottleneck):
                if block.shortcut is not None:
                    stream.append((f"features.{i}.shortcut.0", True))
                stream.append((f"features.{i}.body.{len(block.body) - 2}", False))
        return residual_groups(stream)

    def feature_stages(self) -> list[str]:
        """The stem's activation (stride 2; ImageNet layout only) and the last block of each
        stage: timm's ``features_only`` stages."""
        blocks = [
            (f"features.{i}", b.stride)
            for i, b in enumerate(self.features)
            if isinstance(b, BasicBlock | Bottleneck)
        ]
        return stage_ends(blocks) if self.cifar else ["features.0.2", *stage_ends(blocks)]

    def official_state_dict(
        self, state_dict: StateDict, widths: Sequence[float] | None = None
    ) -> StateDict:
        return checkpoint_filter_fn(state_dict, self, widths)


def checkpoint_filter_fn(
    state_dict: StateDict, model: ResNet, widths: Sequence[float] | None = None
) -> StateDict:
    """The authors' S-ResNet state dict (depth 50, 101 or 152) as ours: the same keys."""
    if model.official_depth is None or model.kit.width_range is not None:
        raise ValueError(
            "the authors' ResNet checkpoints fit only S-ResNet-50/101/152 for ImageNet "
            "(their code has no basic-block, CIFAR or universally slimmable ResNet)"
        )
    return convert_state_dict(state_dict, model, model_name=f"s_resnet{model.official_depth}")


def _imagenet(kind: str, depth: int, num_classes: int, in_chans: int, **width: Any) -> ResNet:
    block, layers = RESNET_SETTINGS[depth]
    model = ResNet(make_kit(**width), block, layers, num_classes, in_chans)
    return with_cfg(model, **default_cfgs[f"{kind}_resnet{depth}"])


def _cifar(kind: str, num_classes: int, in_chans: int, **width: Any) -> ResNet:
    # Channels round to multiples of 4, not 8: with 16 channels, 8 would leave two widths.
    kit = make_kit(divisor=4, **width)
    model = ResNet(kit, "basic", (3, 3, 3), num_classes, in_chans, CIFAR_STAGE_CHANNELS, True)
    return with_cfg(model, **default_cfgs[f"{kind}_resnet20"])


S_WIDTHS = (0.25, 0.5, 0.75, 1.0)
US_RANGE = (0.25, 1.0)


@register_model
def s_resnet18(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = S_WIDTHS,
    norm: str = "switchable",
) -> ResNet:
    """Slimmable ResNet-18 (basic blocks) with switchable BN."""
    return _imagenet("s", 18, num_classes, in_chans, widths=widths, norm=norm)


@register_model
def s_resnet34(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = S_WIDTHS,
    norm: str = "switchable",
) -> ResNet:
    """Slimmable ResNet-34 (basic blocks) with switchable BN."""
    return _imagenet("s", 34, num_classes, in_chans, widths=widths, norm=norm)


@register_model
def s_resnet50(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = S_WIDTHS,
    norm: str = "switchable",
) -> ResNet:
    """S-ResNet-50: slimmable ResNet-50 with switchable BN (Yu et al., ICLR 2019)."""
    return _imagenet("s", 50, num_classes, in_chans, widths=widths, norm=norm)


@register_model
def s_resnet101(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = S_WIDTHS,
    norm: str = "switchable",
) -> ResNet:
    """Slimmable ResNet-101 with switchable BN."""
    return _imagenet("s", 101, num_classes, in_chans, widths=widths, norm=norm)


@register_model
def s_resnet152(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = S_WIDTHS,
    norm: str = "switchable",
) -> ResNet:
    """Slimmable ResNet-152 with switchable BN."""
    return _imagenet("s", 152, num_classes, in_chans, widths=widths, norm=norm)


@register_model
def us_resnet18(
    num_classes: int = 1000, in_chans: int = 3, width_range: Sequence[float] = US_RANGE
) -> ResNet:
    """Universally slimmable ResNet-18."""
    return _imagenet("us", 18, num_classes, in_chans, width_range=width_range)


@register_model
def us_resnet34(
    num_classes: int = 1000, in_chans: int = 3, width_range: Sequence[float] = US_RANGE
) -> ResNet:
    """Universally slimmable ResNet-34."""
    return _imagenet("us", 34, num_classes, in_chans, width_range=width_range)


@register_model
def us_resnet50(
    num_classes: int = 1000, in_chans: int = 3, width_range: Sequence[float] = US_RANGE
) -> ResNet:
    """Universally slimmable ResNet-50."""
    return _imagenet("us", 50, num_classes, in_chans, width_range=width_range)


@register_model
def us_resnet101(
    num_classes: int = 1000, in_chans: int = 3, width_range: Sequence[float] = US_RANGE
) -> ResNet:
    """Universally slimmable ResNet-101."""
    return _imagenet("us", 101, num_classes, in_chans, width_range=width_range)


@register_model
def us_resnet152(
    num_classes: int = 1000, in_chans: int = 3, width_range: Sequence[float] = US_RANGE
) -> ResNet:
    """Universally slimmable ResNet-152."""
    return _imagenet("us", 152, num_classes, in_chans, width_range=width_range)


@register_model
def s_resnet20(
    num_classes: int = 10,
    in_chans: int = 3,
    widths: Sequence[float] = S_WIDTHS,
    norm: str = "switchable",
) -> ResNet:
    """Slimmable ResNet-20 for 32x32 inputs (CIFAR), projection shortcuts."""
    return _cifar("s", num_classes, in_chans, widths=widths, norm=norm)


@register_model
def us_resnet20(
    num_classes: int = 10, in_chans: int = 3, width_range: Sequence[float] = US_RANGE
) -> ResNet:
    """Universally slimmable ResNet-20 for 32x32 inputs (CIFAR), projection shortcuts."""
    return _cifar("us", num_classes, in_chans, width_range=width_range)
