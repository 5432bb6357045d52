"""MobileNet v1 (Howard et al., 2017) as a slimmable (S-Net) or universally slimmable network.

S-MobileNet v1 (Yu et al., ICLR 2019) runs at 1.0, 0.75, 0.5, 0.25 (569M, 325M, 150M, 41M MACs);
US-MobileNet v1 (Yu & Huang, ICCV 2019) at any width in [0.25, 1.0]. Modules are named as in the
authors' code, so their released weights load with :func:`slimmable.load_official`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .helpers import init_weights, stage_ends, with_cfg
from .kit import LayerKit, make_kit
from .official import StateDict, convert_state_dict
from .registry import register_model

# c, n, s: output channels, repeats, stride of the first repeat (the paper's Table 1).
MOBILENET_V1_SETTING = [
    (64, 1, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 6, 2),
    (1024, 2, 2),
]
STEM_CHANNELS = 32

RELEASES = "https://github.com/JiahuiYu/slimmable_networks/files"
default_cfgs = {
    "s_mobilenet_v1": {
        "paper": "Slimmable Neural Networks, ICLR 2019, Table 3",
        "official_url": f"{RELEASES}/2709079/s_mobilenet_v1_0.25_0.5_0.75_1.0.pt.zip",
        "top1_err": {1.0: 28.5, 0.75: 30.5, 0.5: 35.2, 0.25: 46.9},
    },
    "us_mobilenet_v1": {
        "paper": "Universally Slimmable Networks, ICCV 2019",
        "official_url": f"{RELEASES}/2979952/us_mobilenet_v1_calibrated.pt.zip",
        # The width_mult_list their calibrated BN statistics were computed for.
        "official_widths": tuple(round(0.25 + 0.025 * i, 3) for i in range(31)),
    },
}


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv-BN-ReLU6, then 1x1 pointwise conv-BN-ReLU6."""

    def __init__(self, kit: LayerKit, inp: int, outp: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.body = nn.Sequential(
            kit.conv(inp, inp, 3, stride, depthwise=True),
            kit.bn(inp),
            nn.ReLU6(inplace=True),
            kit.conv(inp, outp, 1),
            kit.bn(outp),
            nn.ReLU6(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class MobileNetV1(nn.Module):
    def __init__(
        self,
        kit: LayerKit,
        num_classes: int = 1000,
        in_chans: int = 3,
        setting: Sequence[tuple[int, int, int]] = MOBILENET_V1_SETTING,
    ) -> None:
        super().__init__()
        self.kit = kit
        features: list[nn.Module] = [
            nn.Sequential(
                kit.conv(in_chans, STEM_CHANNELS, 3, 2, fixed_in=True),
                kit.bn(STEM_CHANNELS),
                nn.ReLU6(inplace=True),
            )
        ]
        channels = STEM_CHANNELS
        for c, n, s in setting:
            for i in range(n):
                features.append(DepthwiseSeparable(kit, channels, c, s if i == 0 else 1))
                channels = c
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(kit.linear(channels, num_classes))
        init_weights(self)
        self.is_official_layout = tuple(setting) == tuple(MOBILENET_V1_SETTING) and in_chans == 3

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def channel_groups(self) -> list[list[str]]:
        """No residual sums: every pointwise conv chooses its width freely."""
        return []

    def feature_stages(self) -> list[str]:
        """The block ending each resolution (strides 2 to 32): timm's ``features_only`` stages."""
        blocks = [("features.0", 2)]  # the stem
        blocks += [
            (f"features.{i}", b.stride)
            for i, b in enumerate(self.features)
            if isinstance(b, DepthwiseSeparable)
        ]
        return stage_ends(blocks)

    def official_state_dict(
        self, state_dict: StateDict, widths: Sequence[float] | None = None
    ) -> StateDict:
        return checkpoint_filter_fn(state_dict, self, widths)


def checkpoint_filter_fn(
    state_dict: StateDict, model: MobileNetV1, widths: Sequence[float] | None = None
) -> StateDict:
    """The authors' S-/US-MobileNet v1 state dict as ours: same keys (their ``features.N.body``
    layout), US BN statistics per calibrated width."""
    if not model.is_official_layout:
        raise ValueError("the authors' checkpoints fit only the ImageNet MobileNet v1 (3 channels)")
    us = model.kit.width_range is not None
    return convert_state_dict(
        state_dict,
        model,
        model_name="us_mobilenet_v1" if us else "s_mobilenet_v1",
        us_widths=widths,
        us_cfg_widths=default_cfgs["us_mobilenet_v1"]["official_widths"] if us else (),
    )


@register_model
def s_mobilenet_v1(
    num_classes: int = 1000,
    in_chans: int = 3,
    widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    norm: str = "switchable",
) -> MobileNetV1:
    """S-MobileNet v1: slimmable MobileNet v1 with switchable BN (Yu et al., ICLR 2019)."""
    model = MobileNetV1(make_kit(widths=widths, norm=norm), num_classes, in_chans)
    return with_cfg(model, **default_cfgs["s_mobilenet_v1"])


@register_model
def us_mobilenet_v1(
    num_classes: int = 1000,
    in_chans: int = 3,
    width_range: Sequence[float] = (0.25, 1.0),
) -> MobileNetV1:
    """US-MobileNet v1: universally slimmable MobileNet v1 (Yu & Huang, ICCV 2019)."""
    model = MobileNetV1(make_kit(width_range=width_range), num_classes, in_chans)
    return with_cfg(model, **default_cfgs["us_mobilenet_v1"])
