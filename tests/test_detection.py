"""The torchvision detection backbone contract, checked without torchvision.

torchvision's GeneralizedRCNN (FasterRCNN, MaskRCNN, KeypointRCNN) and RetinaNet do, with the
backbone they are given: read ``backbone.out_channels`` (an int) to build their heads, call
``backbone(images.tensors)``, and treat the result as an ``OrderedDict[str, Tensor]`` of maps
with ``out_channels`` channels each, fine to coarse; the RoI heads pool the maps named
``"0".."3"``, the anchor generator wants one size tuple per map. The tests below do the same.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import slimmable
from slimmable.export import extract_subnet, slimmable_leftovers
from slimmable.models import DetectionBackbone, detection_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


class HeadLikeTorchvision(nn.Module):
    """What an RPN / RetinaNet head is: one plain conv stack shared by every map, built from
    ``backbone.out_channels`` before any width is chosen."""

    def __init__(self, in_channels: int, anchors: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, anchors, 1)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.cls_logits(torch.relu(self.conv(f))) for f in features]


@pytest.mark.parametrize("name", ["s_resnet18", "us_mobilenet_v2"])
def test_backbone_contract_at_every_width(name: str) -> None:
    backbone = detection_backbone(name, out_channels=32)
    assert isinstance(backbone.out_channels, int) and backbone.out_channels == 32
    head = HeadLikeTorchvision(backbone.out_channels)
    images = torch.randn(2, 3, 96, 128)
    lo, hi = slimmable.width_bounds(backbone)
    shapes = None
    for w in (lo, 0.5, hi):
        slimmable.set_width(backbone, w)
        features = backbone(images)
        assert isinstance(features, OrderedDict)
        assert list(features) == ["0", "1", "2", "3", "pool"]  # MultiScaleRoIAlign's names
        assert all(f.shape[1] == 32 for f in features.values())
        strides = [images.shape[-1] // f.shape[-1] for f in features.values()]
        assert strides == backbone.strides == [4, 8, 16, 32, 64]
        now = [tuple(f.shape) for f in features.values()]
        assert shapes in (None, now)  # the heads see the same maps at every width
        shapes = now
        outputs = head(list(features.values()))
        assert [o.shape[1] for o in outputs] == [3] * 5


def test_one_step_sums_every_width_and_the_heads_stay_shared() -> None:
    """The authors' detection recipe: each step runs every width through the same heads."""
    backbone = detection_backbone("s_resnet18", out_channels=16)
    head = HeadLikeTorchvision(backbone.out_channels)
    images = torch.randn(2, 3, 64, 64)
    for w in slimmable.width_choices(backbone):
        with slimmable.set_width(backbone, w):
            sum(o.square().mean() for o in head(list(backbone(images).values()))).backward()
    assert head.conv.weight.grad is not None and head.conv.weight.grad.abs().sum() > 0
    lateral = backbone.fpn.laterals[0][0]  # reads the padded maps: full width always
    assert lateral.weight.grad[:, :64].abs().sum() > 0
    narrow = backbone.body.features.body.get_submodule("features.0.0")
    assert narrow.weight.grad[: narrow.channels_at(0.25)].abs().sum() > 0


def test_extracted_detection_backbone_is_plain_torch() -> None:
    backbone = detection_backbone("s_resnet18", out_indices=(2, 3, 4), out_channels=16).eval()
    x = torch.randn(1, 3, 64, 64)
    with slimmable.set_width(backbone, 0.5), torch.no_grad():
        ref = backbone(x)
    net = extract_subnet(backbone, 0.5, input_size=(3, 64, 64))
    assert slimmable_leftovers(net) == []
    assert isinstance(net, DetectionBackbone) and net.out_channels == 16
    with torch.no_grad():
        got = net(x)
    assert list(got) == ["0", "1", "2", "pool"]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-5)
