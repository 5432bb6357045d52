"""features_only backbones: the stage maps of the network itself, channels and strides at every
width, extraction and export, and the two ways a head reads them (zero padding, slimmable FPN)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import slimmable
from slimmable.export import export_subnet, extract_subnet, load_exported, slimmable_leftovers
from slimmable.models import FPN, FeatureExtractor, PadToFullWidth, make_kit
from slimmable.width import width_bounds, width_choices

pytestmark = pytest.mark.usefixtures("one_thread")


# The deep ResNets (101, 152) repeat ResNet-50's code; building them costs seconds, not coverage.
ZOO = [n for n in slimmable.list_models() if not n.endswith(("resnet101", "resnet152", "seg_fpn"))]


def _small_input(model: nn.Module) -> tuple[int, int, int]:
    c, h, _ = model.default_cfg["input_size"]
    return (c, 64, 64) if h > 64 else (c, h, h)


def _narrow(model: nn.Module) -> float:
    choices = width_choices(model)
    return choices[0] if choices is not None else width_bounds(model)[0]


@pytest.mark.parametrize("name", ZOO)
def test_features_are_the_networks_own_stage_outputs(name: str) -> None:
    model = slimmable.create_model(name).eval()
    stages = model.feature_stages()
    w = _narrow(model)
    x = torch.randn(2, *_small_input(model))
    if width_choices(model) is None:
        slimmable.calibrate(model, [x], widths=[w])
    seen: dict[str, Tensor] = {}
    hooks = [
        model.get_submodule(s).register_forward_hook(
            lambda m, a, o, s=s: seen.__setitem__(s, o.clone())
        )
        for s in stages
    ]
    with torch.no_grad(), slimmable.set_width(model, w):
        model(x)
    for h in hooks:
        h.remove()

    backbone = FeatureExtractor(model)  # the same weights, wrapped
    info = backbone.feature_info
    assert info.module_name() == stages
    reductions = info.reduction()
    assert reductions == sorted(reductions) and len(set(reductions)) == len(reductions)
    assert all(r & (r - 1) == 0 for r in reductions)  # powers of two
    slimmable.set_width(backbone, w)
    with torch.no_grad():
        maps = backbone(x)
    assert len(maps) == len(stages)
    for f, s, c, r in zip(maps, stages, info.channels(), reductions, strict=True):
        torch.testing.assert_close(f, seen[s], rtol=0, atol=0)
        assert f.shape[1] == c
        assert f.shape[-1] == -(-x.shape[-1] // r)  # ceil: odd sizes round up
    slimmable.set_width(backbone, width_bounds(backbone)[1])
    assert info.channels() == info.full_channels()
    if len(stages) > 1 and name != "autoslim_small_cnn":  # its searched channels may not shrink
        assert info.channels(0) <= info.full_channels(0)


@pytest.mark.parametrize("name", ["s_mobilenet_v2", "us_resnet50", "s_shufflenet", "s_resnet20"])
def test_create_model_features_only_as_in_timm(name: str) -> None:
    model = slimmable.create_model(name, features_only=True, out_indices=(1, 2))
    assert isinstance(model, FeatureExtractor)
    full = slimmable.create_model(name, features_only=True)
    assert model.feature_info.module_name() == full.feature_info.module_name()[1:3]
    assert model.feature_info.reduction() == full.feature_info.reduction()[1:3]
    assert model.feature_info.out_indices == (1, 2)
    # everything after the last stage is gone: no classifier weights, fewer parameters
    assert not any("classifier" in k for k in model.state_dict())
    classifier = slimmable.create_model(name)
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in classifier.parameters()
    )
    last = slimmable.create_model(name, features_only=True, out_indices=(-1,))
    assert last.feature_info.reduction() == full.feature_info.reduction()[-1:]


def test_channels_follow_uniform_and_nonuniform_widths() -> None:
    model = slimmable.create_model("us_mobilenet_v2", features_only=True, out_indices=(1, 2, 4))
    info = model.feature_info
    assert info.full_channels() == [24, 32, 320]
    slimmable.set_width(model, 0.5)
    assert info.channels() == [16, 16, 160]
    # a per-layer width: the stage-2 blocks (and the stage-1 blocks they add to) at 0.35
    stage2 = {"body.features.2": 0.35, "body.features.3": 0.35, "*": 1.0}
    slimmable.set_width(model, stage2)
    assert info.channels() == [8, 32, 320]
    with torch.no_grad():
        maps = model.train()(torch.randn(2, 3, 64, 64))
    assert [f.shape[1] for f in maps] == info.channels()


@pytest.mark.parametrize("name", ["s_mobilenet_v2", "us_resnet20"])
def test_extracted_and_exported_backbones_equal_the_slimmable_one(name, tmp_path) -> None:
    model = slimmable.create_model(name, features_only=True, out_indices=(0, 2)).eval()
    x = torch.randn(2, *_small_input(model))
    w = 0.5
    if width_choices(model) is None:
        slimmable.calibrate(model, [x], widths=[w])
    slimmable.set_width(model, w)
    with torch.no_grad():
        ref = model(x)
    net = extract_subnet(model, w, input_size=x.shape[1:])
    assert slimmable_leftovers(net) == []
    assert net.feature_info.channels() == [f.shape[1] for f in ref]
    formats = (("onnx", ".onnx"), ("pt", ".pt2"), ("torchscript", ".ts"))
    for fmt, suffix in formats if name == "us_resnet20" else formats[:1]:
        path = export_subnet(net, tmp_path / f"net{suffix}", fmt, input_size=x.shape[1:])
        got = load_exported(path, fmt)(x)
        assert len(got) == len(ref)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---- any model, by module names (a slimmable.convert result keeps the user's names) -----------


class UserNet(nn.Module):
    """A network with its own names and no feature_stages, as a converted model would be."""

    def __init__(self) -> None:
        super().__init__()
        kit = make_kit(widths=[0.5, 1.0])
        self.stem = nn.Sequential(kit.conv(3, 16, 3, fixed_in=True), kit.bn(16), nn.ReLU())
        self.down = nn.Sequential(kit.conv(16, 32, 3, 2), kit.bn(32))
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(32, 5)  # a plain torch head, dropped by the extractor

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.down(self.stem(x)))
        assert y.shape[1] <= 32  # the kind of check real code carries
        return self.head(y.mean((2, 3)))


def test_any_model_by_stage_names() -> None:
    backbone = FeatureExtractor(UserNet(), stages=["stem", "act"], input_size=(3, 32, 32))
    assert backbone.feature_info.reduction() == [1, 2]
    assert isinstance(backbone.body.head, nn.Identity)
    slimmable.set_width(backbone, 0.5)
    assert backbone.feature_info.channels() == [8, 16]
    maps = backbone(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape) for f in maps] == [(2, 8, 32, 32), (2, 16, 16, 16)]


def test_bad_stages_and_indices_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="declares no feature stages; pass stages="):
        FeatureExtractor(UserNet(), input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="did you mean 'stem'"):
        FeatureExtractor(UserNet(), stages=["stemm"], input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="has 2 stages"):
        FeatureExtractor(UserNet(), [2], stages=["stem", "act"], input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="increasing order"):
        FeatureExtractor(UserNet(), [1, 0], stages=["stem", "act"], input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="features_only=True"):
        slimmable.create_model("s_small_cnn", out_indices=(0,))


def test_a_stage_changed_in_place_later_is_refused() -> None:
    """down's BN output is what the inplace ReLU after it overwrites: never return stale maps."""
    backbone = FeatureExtractor(UserNet(), stages=["down", "act"], input_size=(3, 32, 32))
    with pytest.raises(RuntimeError, match="changed in place"):
        backbone(torch.randn(2, 3, 32, 32))


def test_two_threads_keep_their_own_maps() -> None:
    backbone = slimmable.create_model("s_small_cnn", features_only=True).eval()
    xs = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    with torch.no_grad():
        expected = [backbone(x) for x in xs]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for _ in range(50):
                with torch.no_grad():
                    got = backbone(xs[i])
                for a, b in zip(got, expected[i], strict=True):
                    torch.testing.assert_close(a, b)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# ---- feeding a head ---------------------------------------------------------------------------


def test_zero_padded_features_feed_one_fixed_head_at_every_width() -> None:
    """(a) The authors' recipe: a plain head of full width reads every width, and computes what
    the head sliced to the active channels computes; one step sums every width's gradients."""
    backbone = slimmable.create_model("s_resnet20", features_only=True, out_indices=(1, 2))
    padded = PadToFullWidth(backbone)
    head = FPN.plain(padded.channels, 16)
    x = torch.randn(2, 3, 32, 32)
    for w in slimmable.width_choices(backbone):
        slimmable.set_width(backbone, w)
        maps = padded(x)
        assert [f.shape[1] for f in maps] == [32, 64]
        active = backbone.feature_info.channels()
        for f, c in zip(maps, active, strict=True):
            assert f[:, c:].abs().sum() == 0
        # the head's first convs on padded maps == the same convs sliced to the active inputs
        for lateral, f, c in zip(head.laterals, maps, active, strict=True):
            conv = lateral[0]
            sliced = F.conv2d(f[:, :c], conv.weight[:, :c], conv.bias)
            torch.testing.assert_close(conv(f), sliced, rtol=1e-5, atol=1e-5)
        assert [o.shape[1] for o in head(maps)] == [16, 16]
    head.zero_grad()
    for w in slimmable.width_choices(backbone):
        with slimmable.set_width(backbone, w):
            sum(o.square().mean() for o in head(padded(x))).backward()
    assert head.laterals[0][0].weight.grad.abs().sum() > 0


def test_slimmable_neck_slims_with_the_backbone() -> None:
    """(b) A slimmable FPN: its channels follow the width; its summed laterals share one."""
    backbone = slimmable.create_model("us_resnet20", features_only=True)
    kit = make_kit(width_range=(0.25, 1.0))
    neck = FPN.slimmable(kit, backbone.feature_info.full_channels(), 32)
    x = torch.randn(2, 3, 32, 32)
    for w, channels in ((1.0, 32), (0.5, 16), (0.25, 8)):
        slimmable.set_width(backbone, w)
        slimmable.set_width(neck, w)
        outs = neck(backbone(x))
        assert [o.shape[1] for o in outs] == [channels] * 3
        assert [o.shape[-1] for o in outs] == [32, 16, 8]
    assert neck.channel_groups() == [["laterals.0.0", "laterals.1.0", "laterals.2.0"]]
    fixed = FPN.slimmable(kit, backbone.feature_info.full_channels(), 32, fixed_out=True)
    slimmable.set_width(fixed, 0.25)
    assert [o.shape[1] for o in fixed(backbone(x))] == [32] * 3


class PlainResNet(nn.Module):
    """A user's plain torch network: what slimmable.convert takes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.layer1(x))
        return self.fc(self.down(x).mean((2, 3)))


def test_a_converted_model_is_a_backbone_by_its_own_names() -> None:
    x = torch.randn(2, 3, 32, 32)
    model = slimmable.convert(PlainResNet(), x, widths=[0.5, 1.0])
    backbone = FeatureExtractor(model, stages=["stem", "down"], input_size=(3, 32, 32))
    assert ["body.stem.0", "body.layer1.0"] in backbone.channel_groups()  # the residual sum
    slimmable.set_width(backbone, 0.5)
    assert backbone.feature_info.channels() == [8, 16]
    backbone.eval()
    with torch.no_grad():
        ref = backbone(x)
    assert [f.shape[1] for f in ref] == [8, 16]
    net = extract_subnet(backbone, 0.5, input_size=(3, 32, 32))
    assert slimmable_leftovers(net) == []
    with torch.no_grad():
        for a, b in zip(net(x), ref, strict=True):
            torch.testing.assert_close(a, b)
