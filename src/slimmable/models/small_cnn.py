"""A small CNN for 8x8 to 32x32 inputs (digits, MNIST) that trains in seconds on a CPU."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .helpers import stage_ends, with_cfg
from .kit import LayerKit, make_kit
from .registry import register_model

# (out_channels, stride) of each 3x3 conv-BN-ReLU; a global pool and a linear follow.
SMALL_CNN_SETTING = [(32, 1), (64, 2), (128, 2)]


class SmallCNN(nn.Module):
    def __init__(
        self,
        kit: LayerKit,
        num_classes: int = 10,
        in_chans: int = 1,
        setting: Sequence[tuple[int, int]] = SMALL_CNN_SETTING,
    ) -> None:
        super().__init__()
        self.strides = [stride for _, stride in setting]
        layers: list[nn.Module] = []
        channels = in_chans
        for i, (out, stride) in enumerate(setting):
            layers += [
                kit.conv(channels, out, 3, stride, fixed_in=(i == 0)),
                kit.bn(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = kit.linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def channel_groups(self) -> list[list[str]]:
        """No residual sums: every conv chooses its width freely."""
        return []

    def feature_stages(self) -> list[str]:
        """The activation ending each resolution (one per stride of the setting)."""
        return stage_ends((f"features.{3 * i + 2}", s) for i, s in enumerate(self.strides))


@register_model
def s_small_cnn(
    num_classes: int = 10,
    in_chans: int = 1,
    widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    norm: str = "switchable",
    setting: Sequence[tuple[int, int]] = SMALL_CNN_SETTING,
) -> SmallCNN:
    """Slimmable CNN for digits-sized images (S-Net, switchable BN).

    ``setting`` lists ``(out_channels, stride)`` per conv layer, for deeper or wider variants.
    """
    model = SmallCNN(make_kit(widths=widths, norm=norm), num_classes, in_chans, setting)
    return with_cfg(model, input_size=(in_chans, 8, 8))


@register_model
def us_small_cnn(
    num_classes: int = 10,
    in_chans: int = 1,
    width_range: Sequence[float] = (0.25, 1.0),
    setting: Sequence[tuple[int, int]] = SMALL_CNN_SETTING,
) -> SmallCNN:
    """Universally slimmable CNN for digits-sized images (``setting`` as above)."""
    model = SmallCNN(make_kit(width_range=width_range), num_classes, in_chans, setting)
    return with_cfg(model, input_size=(in_chans, 8, 8))
