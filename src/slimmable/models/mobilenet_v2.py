"""MobileNet v2 (Sandler et al., 2018) as a slimmable (S-Net) or universally slimmable network.

S-MobileNet v2 (Yu et al., ICLR 2019) runs at 1.0, 0.75, 0.5, 0.35 (301M, 209M, 97M, 59M MACs);
US-MobileNet v2 (Yu & Huang, ICCV 2019) at any width in [0.35, 1.0]. An expansion layer keeps
its channels a multiple of the expansion ratio at every width; the last 1x1 conv (1280) and the
classifier never slim. Modules are named as in the authors' code, so their released weights load
with :func:`slimmable.load_official`. A CIFAR variant (stride-1 stem) serves 32x32 inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .helpers import init_weights, residual_groups, stage_ends, with_cfg
from .kit import LayerKit, make_kit
from .official import StateDict, convert_state_dict
from .registry import register_model

# t, c, n, s: expansion ratio, output channels, repeats, stride of the first repeat (Table 2).
MOBILENET_V2_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
STEM_CHANNELS = 32
LAST_CHANNELS = 1280

RELEASES = "https://github.com/JiahuiYu/slimmable_networks/files"
default_cfgs = {
    "s_mobilenet_v2": {
        "paper": "Slimmable Neural Networks, ICLR 2019, Table 3",
        "official_url": f"{RELEASES}/2709080/s_mobilenet_v2_0.35_0.5_0.75_1.0.pt.zip",
        "top1_err": {1.0: 29.5, 0.75: 31.1, 0.5: 35.6, 0.35: 40.3},
    },
    "us_mobilenet_v2": {
        "paper": "Universally Slimmable Networks, ICCV 2019",
        "official_url": f"{RELEASES}/2979953/us_mobilenet_v2_calibrated.pt.zip",
        # The width_mult_list their calibrated BN statistics were computed for.
        "official_widths": tuple(round(0.35 + 0.025 * i, 3) for i in range(27)),
    },
    "s_mobilenet_v2_cifar": {"input_size": (3, 32, 32)},
    "us_mobilenet_v2_cifar": {"input_size": (3, 32, 32)},
}


class InvertedResidual(nn.Module):
    """1x1 expansion (ratio ``t``), 3x3 depthwise, linear 1x1 projection; identity shortcut
    when the shapes allow."""

    def __init__(self, kit: LayerKit, inp: int, outp: int, stride: int, t: int) -> None:
        super().__init__()
        self.stride = stride
        self.use_residual = stride == 1 and inp == outp
        hidden = inp * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [
                kit.conv(inp, hidden, 1, ratio=t),
                kit.bn(hidden, ratio=t),
                nn.ReLU6(inplace=True),
            ]
        layers += [
            kit.conv(hidden, hidden, 3, stride, depthwise=True, ratio=t),
            kit.bn(hidden, ratio=t),
            nn.ReLU6(inplace=True),
            kit.conv(hidden, outp, 1),
            kit.bn(outp),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.use_residual else self.body(x)


class MobileNetV2(nn.Module):
    def __init__(
        self,
        kit: LayerKit,
        num_classes: int = 1000,
        in_chans: int = 3,
        setting: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTING,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        self.kit = kit
        features: list[nn.Module] = [
            nn.Sequential(
                kit.conv(in_chans, STEM_CHANNELS, 3, stem_stride, fixed_in=True),
                kit.bn(STEM_CHANNELS),
                nn.ReLU6(inplace=True),
            )
        ]
        channels = STEM_CHANNELS
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidual(kit, channels, c, s if i == 0 else 1, t))
                channels = c
        features.append(
            nn.Sequential(
                kit.conv(channels, LAST_CHANNELS, 1, fixed_out=True),
                kit.bn(LAST_CHANNELS, fixed=True),
                nn.ReLU6(inplace=True),
            )
        )
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(kit.linear(LAST_CHANNELS, num_classes))
        init_weights(self)
        self.stem_stride = stem_stride
        self.is_official_layout = (
            tuple(setting) == tuple(MOBILENET_V2_SETTING) and stem_stride == 2 and in_chans == 3
        )

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
        """The inverted-residual block ending each resolution (timm's stages; the last 1x1
        conv, which never slims, is left to classification)."""
        blocks = [("features.0", self.stem_stride)]
        blocks += [
            (f"features.{i}", b.stride)
            for i, b in enumerate(self.features)
            if isinstance(b, InvertedResidual)
        ]
        return stage_ends(blocks)

    def official_state_dict(
        self, state_dict: StateDict, widths: Sequence[float] | None = None
    ) -> StateDict:
        return checkpoint_filter_fn(state_dict, self, widths)


def checkpoint_filter_fn(
    state_dict: StateDict, model: MobileNetV2, widths: Sequence[float] | None = None
) -> StateDict:
    """The authors' S-/US-MobileNet v2 state dict as ours: same keys; their last BN (after the
    1280-channel conv) is one plain BN shared by every width, which fills each of our private
    BNs (S) or every calibrated width (US)."""
    if not model.is_official_layout:
        raise ValueError("the authors' checkpoints fit only the ImageNet MobileNet v2 (3 channels)")
    us = model.kit.width_range is not None
    return convert_state_dict(
        state_dict,
        model,
        model_name="us_mobilenet_v2" if us else "s_mobilenet_v2",
        shared_bn={f"features.{len(model.features) - 1}.1"},
        us_widths=widths,
        us_cfg_widths=default_cfgs["us_mobilenet_v2"]["official_widths"] if us else (),
    )


@register_model
def s_mobilenet_v2(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = (0.35, 0.5, 0.75, 1.0),
    norm: str = "switchable",
) -> MobileNetV2:
    """S-MobileNet v2: slimmable MobileNet v2 with switchable BN (Yu et al., ICLR 2019)."""
    model = MobileNetV2(make_kit(widths=widths, norm=norm), num_classes, in_chans)
    return with_cfg(model, **default_cfgs["s_mobilenet_v2"])


@register_model
def us_mobilenet_v2(
    num_classes: int = 1000,
    in_chans: int = 3,
    width_range: Sequence[float] = (0.35, 1.0),
) -> MobileNetV2:
    """US-MobileNet v2: universally slimmable MobileNet v2 (Yu & Huang, ICCV 2019)."""
    model = MobileNetV2(make_kit(width_range=width_range), num_classes, in_chans)
    return with_cfg(model, **default_cfgs["us_mobilenet_v2"])


@register_model
def s_mobilenet_v2_cifar(
    num_classes: int = 10,
    in_chans: int = 3,
    widths: Sequence[float] = (0.35, 0.5, 0.75, 1.0),
    norm: str = "switchable",
) -> MobileNetV2:
    """S-MobileNet v2 for 32x32 inputs: the ImageNet table with a stride-1 stem (16x down)."""
    model = MobileNetV2(make_kit(widths=widths, norm=norm), num_classes, in_chans, stem_stride=1)
    return with_cfg(model, **default_cfgs["s_mobilenet_v2_cifar"])


@register_model
def us_mobilenet_v2_cifar(
    num_classes: int = 10,
    in_chans: int = 3,
    width_range: Sequence[float] = (0.35, 1.0),
) -> MobileNetV2:
    """US-MobileNet v2 for 32x32 inputs: the ImageNet table with a stride-1 stem (16x down)."""
    model = MobileNetV2(make_kit(width_range=width_range), num_classes, in_chans, stem_stride=1)
    return with_cfg(model, **default_cfgs["us_mobilenet_v2_cifar"])
