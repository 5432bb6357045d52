"""MnasNet (Tan et al., CVPR 2019) as a slimmable (S-Net) or universally slimmable network.

The MnasNet-B1 of the authors' AutoSlim code (``models/autoslim_mnasnet.py``; torchvision's
``MNASNet``): inverted residuals with 3x3 and 5x5 depthwise kernels, the first block a separable
conv without expansion. ReLU6 as in the authors' code. As in MobileNet v2, expansion layers stay
a multiple of their ratio at every width, and the last 1x1 conv (1280) and the classifier never
slim, so ``s_mnasnet`` at width 0.5 / 0.75 / 1.0 is torchvision's ``mnasnet0_5`` / ``0_75`` /
``1_0`` (4,383,312 parameters at 1.0, 315M MACs). The authors trained the MNasNet family only as
AutoSlim networks (``autoslim_mnasnet`` builds their three at the channels they published); the
S and US variants are ours. Modules are named as in their code (``features.N.body.M``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .helpers import init_weights, residual_groups, stage_ends, with_cfg
from .kit import LayerKit, make_kit
from .registry import register_model

# t, c, n, s, k: expansion ratio, output channels, repeats, stride of the first repeat, kernel.
MNASNET_SETTING = [
    (1, 16, 1, 1, 3),
    (3, 24, 3, 2, 3),
    (3, 40, 3, 2, 5),
    (6, 80, 3, 2, 5),
    (6, 96, 2, 1, 3),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280

PAPER = "MnasNet (Tan et al., CVPR 2019), B1; slimmable training of Yu et al."
default_cfgs = {
    "s_mnasnet": {"paper": PAPER},
    "us_mnasnet": {"paper": PAPER},
}

Setting = Sequence[tuple[int, int, int, int, int]]


def table_channels(
    setting: Setting = MNASNET_SETTING,
    stem: int = STEM_CHANNELS,
    last: int = LAST_CHANNELS,
) -> list[int]:
    """Output channels of the table's layers in the authors' ``channel_num_list`` order: the
    stem, each block's expansion (``t > 1``) and projection, the last 1x1 conv."""
    counts = [stem]
    inp = stem
    for t, c, n, _, _ in setting:
        for _ in range(n):
            counts += [inp * t, c] if t != 1 else [c]
            inp = c
    return [*counts, last]


class InvertedResidual(nn.Module):
    """1x1 expansion to ``hidden`` (none when ``t == 1``), ``k``x``k`` depthwise, linear 1x1
    projection; identity shortcut when the shapes allow.

    The expansion stays a multiple of ``t`` at every width when it is the table's ``inp * t``;
    searched channels (AutoSlim) are not, and slim freely.
    """

    def __init__(
        self, kit: LayerKit, inp: int, hidden: int, outp: int, stride: int, k: int, t: int
    ) -> None:
        super().__init__()
        self.stride = stride
        self.use_residual = stride == 1 and inp == outp
        ratio = t if hidden == inp * t else 1
        layers: list[nn.Module] = []
        if t != 1:
            layers += [
                kit.conv(inp, hidden, 1, ratio=ratio),
                kit.bn(hidden, ratio=ratio),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            kit.conv(hidden, hidden, k, stride, depthwise=True, ratio=ratio),
            kit.bn(hidden, ratio=ratio),
            nn.ReLU6(inplace=True),
            kit.conv(hidden, outp, 1),
            kit.bn(outp),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.use_residual else self.body(x)


class MNasNet(nn.Module):
    """MnasNet from its table; ``channels`` (``table_channels`` order) overrides the table's
    channel numbers, as the AutoSlim networks do."""

    def __init__(
        self,
        kit: LayerKit,
        num_classes: int = 1000,
        in_chans: int = 3,
        setting: Setting = MNASNET_SETTING,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.kit = kit
        expected = table_channels(setting)
        counts = list(expected if channels is None else channels)
        if len(counts) != len(expected):
            raise ValueError(
                f"MNasNet channels lists {len(counts)} layers; this table has {len(expected)} "
                "(the stem, each block's expansion and projection, the last conv)"
            )
        stem, *body, last = counts
        features: list[nn.Module] = [
            nn.Sequential(
                kit.conv(in_chans, stem, 3, 2, fixed_in=True),
                kit.bn(stem),
                nn.ReLU6(inplace=True),
            )
        ]
        inp, rest = stem, iter(body)
        for t, _, n, s, k in setting:
            for i in range(n):
                hidden = next(rest) if t != 1 else inp
                outp = next(rest)
                features.append(InvertedResidual(kit, inp, hidden, outp, s if i == 0 else 1, k, t))
                inp = outp
        features.append(
            nn.Sequential(
                kit.conv(inp, last, 1, fixed_out=True),
                kit.bn(last, fixed=True),
                nn.ReLU6(inplace=True),
            )
        )
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(kit.linear(last, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def channel_groups(self) -> list[list[str]]:
        """The projection convs of each stage's residual blocks, with the one whose output they
        add to (the stage's first projection)."""
        stream = [("features.0.0", True)]
        for i, block in enumerate(self.features):
            if isinstance(block, InvertedResidual):
                stream.append((f"features.{i}.body.{len(block.body) - 2}", not block.use_residual))
        return residual_groups(stream)

    def feature_stages(self) -> list[str]:
        """The block ending each resolution (timm's stages; the last 1x1 conv, which never
        slims, is left to classification)."""
        blocks = [("features.0", 2)]
        blocks += [
            (f"features.{i}", b.stride)
            for i, b in enumerate(self.features)
            if isinstance(b, InvertedResidual)
        ]
        return stage_ends(blocks)


@register_model
def s_mnasnet(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = (0.35, 0.5, 0.75, 1.0),
    norm: str = "switchable",
) -> MNasNet:
    """S-MNasNet: slimmable MnasNet-B1 with switchable BN (the S-Net recipe of Yu et al.)."""
    model = MNasNet(make_kit(widths=widths, norm=norm), num_classes, in_chans)
    return with_cfg(model, **default_cfgs["s_mnasnet"])


@register_model
def us_mnasnet(
    num_classes: int = 1000,
    in_chans: int = 3,
    width_range: Sequence[float] = (0.35, 1.0),
) -> MNasNet:
    """US-MNasNet: universally slimmable MnasNet-B1 (the US-Net recipe of Yu & Huang)."""
    model = MNasNet(make_kit(width_range=width_range), num_classes, in_chans)
    return with_cfg(model, **default_cfgs["us_mnasnet"])
