"""The backbone torchvision's detection models take, from any slimmable network.

torchvision's ``FasterRCNN``, ``MaskRCNN``, ``KeypointRCNN`` and ``RetinaNet`` call
``backbone(images)`` and read ``backbone.out_channels``: the backbone returns an ``OrderedDict``
of feature maps that all have ``out_channels`` channels (``"0"``, ``"1"``, ... fine to coarse,
and ``"pool"``, a stride-2 max pool of the coarsest, as torchvision's ``BackboneWithFPN``).
:class:`DetectionBackbone` is that, built the authors' way: the slimmable backbone's maps are
zero-padded back to full width (:class:`PadToFullWidth`) and read by a plain FPN, so the
detection heads stay one fixed network for every width. Nothing here imports torchvision, and
there is no RPN, RoI pooling or NMS of our own: torchvision brings those (see
``docs/segmentation.md``, "Detection").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .features import FeatureExtractor, PadToFullWidth
from .fpn import FPN
from .registry import create_model


class DetectionBackbone(nn.Module):
    """``features`` -> zero padding to full width -> FPN of ``out_channels`` -> OrderedDict."""

    def __init__(
        self, features: FeatureExtractor, out_channels: int = 256, extra_pool: bool = True
    ) -> None:
        super().__init__()
        self.body = PadToFullWidth(features)
        self.fpn = FPN.plain(self.body.channels, out_channels)
        self.out_channels = out_channels
        self.extra_pool = extra_pool
        strides = list(features.feature_info.reduction())
        self.strides = [*strides, 2 * strides[-1]] if extra_pool else strides

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        maps = self.fpn(self.body(x))
        out = OrderedDict((str(i), m) for i, m in enumerate(maps))
        if self.extra_pool:  # torchvision's LastLevelMaxPool
            out["pool"] = F.max_pool2d(maps[-1], 1, 2, 0)
        return out

    def channel_groups(self) -> list[list[str]]:
        return [[f"body.{n}" for n in g] for g in self.body.channel_groups()]

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, strides={self.strides}"


def detection_backbone(
    name: str,
    out_indices: Sequence[int] | None = None,
    out_channels: int = 256,
    extra_pool: bool = True,
    **kwargs: Any,
) -> DetectionBackbone:
    """A :class:`DetectionBackbone` of zoo model ``name`` (``widths=`` / ``width_range=`` as
    for :func:`~slimmable.create_model`); ``out_indices`` default: its last four stages, which
    with ``"pool"`` give the five maps torchvision's default anchor generator expects."""
    model = create_model(name, **kwargs)
    if out_indices is None:
        count = len(model.feature_stages())
        out_indices = list(range(max(0, count - 4), count))
    return DetectionBackbone(FeatureExtractor(model, out_indices), out_channels, extra_pool)


__all__ = ["DetectionBackbone", "detection_backbone"]
