"""Semantic segmentation: a slimmable backbone, a light FPN, per-pixel logits at input size.

``s_seg_fpn`` / ``us_seg_fpn`` take any zoo family as ``backbone`` (``"mobilenet_v2"``,
``"resnet50"``, ``"small_cnn"``, ...), completed to its S or US model, and read its
``features_only`` maps with an FPN (Lin et al., 2017) whose channels slim with the backbone
(the S-Nets paper's "slimmable neck and head"). The merged finest level goes through one 3x3
conv and a 1x1 classifier, whose classes never slim; the logits are upsampled (bilinear) to the
input's size. One width setting runs backbone, neck and head together, so training, BN
calibration, ``extract_subnet`` and export treat the network like any zoo model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureExtractor
from .fpn import FPN
from .helpers import with_cfg
from .kit import LayerKit, make_kit
from .registry import model_factory, register_model

default_cfgs = {
    "seg_fpn": {"paper": "Slimmable Neural Networks, ICLR 2019, Section 4.2 (as backbones)"},
}


class SegmentationNet(nn.Module):
    """``backbone`` (a :class:`FeatureExtractor`) -> FPN -> 3x3 conv -> classifier -> upsample."""

    def __init__(
        self, backbone: FeatureExtractor, kit: LayerKit, num_classes: int, channels: int = 64
    ) -> None:
        super().__init__()
        self.backbone = backbone
        full = backbone.feature_info.full_channels()
        self.neck = FPN.slimmable(kit, full, channels, outputs=[0])  # the finest level only
        self.classifier = kit.conv(channels, num_classes, 1, bias=True, fixed_out=True)
        self.num_classes = num_classes
        self.output_stride = backbone.feature_info.reduction(0)

    def forward(self, x: Tensor) -> Tensor:
        (finest,) = self.neck(self.backbone(x))
        logits = self.classifier(finest)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def channel_groups(self) -> list[list[str]]:
        """Tied layers of the backbone and of the neck's summed laterals."""
        return [
            *([f"backbone.{n}" for n in g] for g in self.backbone.channel_groups()),
            *([f"neck.{n}" for n in g] for g in self.neck.channel_groups()),
        ]


def _build(
    kind: str,
    backbone: str,
    num_classes: int,
    in_chans: int,
    backbone_indices: Sequence[int] | None,
    channels: int,
    image_size: int | None,
    backbone_kwargs: Mapping[str, Any] | None,
    **width: Any,
) -> SegmentationNet:
    name = backbone if backbone.startswith(f"{kind}_") else f"{kind}_{backbone}"
    try:
        factory = model_factory(name)
    except ValueError:
        raise ValueError(
            f"seg_fpn backbone {backbone!r}: there is no model {name!r}; give a zoo family "
            "such as mobilenet_v2, resnet50 or small_cnn"
        ) from None
    net = factory(in_chans=in_chans, **dict(backbone_kwargs or {}), **width)
    if image_size is not None:
        net.default_cfg = {
            **getattr(net, "default_cfg", {}),
            "input_size": (in_chans,) + (image_size,) * 2,
        }
    features = FeatureExtractor(net, backbone_indices)
    kit = make_kit(**width)
    model = SegmentationNet(features, kit, num_classes, channels)
    input_size = features.default_cfg.get("input_size", (in_chans, 224, 224))
    return with_cfg(model, **default_cfgs["seg_fpn"], input_size=tuple(input_size), backbone=name)


@register_model
def s_seg_fpn(
    num_classes: int = 21,
    in_chans: int = 3,
    widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
    norm: str = "switchable",
    backbone: str = "mobilenet_v2",
    backbone_indices: Sequence[int] | None = None,
    channels: int = 64,
    image_size: int | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> SegmentationNet:
    """Slimmable segmentation network: S-Net ``backbone`` features, slimmable FPN, classifier.

    ``backbone_indices`` picks the backbone stages the FPN reads (the backbone's
    ``out_indices``; default: all); ``channels`` is the FPN's width at full width;
    ``image_size`` the input side the model is profiled and exported at (default: the
    backbone's); ``backbone_kwargs`` go to the backbone's factory.
    """
    return _build(
        "s", backbone, num_classes, in_chans, backbone_indices, channels, image_size,
        backbone_kwargs, widths=widths, norm=norm,
    )  # fmt: skip


@register_model
def us_seg_fpn(
    num_classes: int = 21,
    in_chans: int = 3,
    width_range: Sequence[float] = (0.25, 1.0),
    backbone: str = "mobilenet_v2",
    backbone_indices: Sequence[int] | None = None,
    channels: int = 64,
    image_size: int | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
) -> SegmentationNet:
    """Universally slimmable segmentation network (arguments as :func:`s_seg_fpn`)."""
    return _build(
        "us", backbone, num_classes, in_chans, backbone_indices, channels, image_size,
        backbone_kwargs, width_range=width_range,
    )  # fmt: skip
