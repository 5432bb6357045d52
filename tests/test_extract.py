"""extract_subnet / fold_bn: dense sub-networks equal the slimmable model at that width."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import slimmable
from slimmable.export import fold_bn, slimmable_leftovers
from slimmable.models import LayerKit, make_kit

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- test networks built from the layers: every pattern the zoo uses ---------------------------


class InvertedResidual(nn.Module):
    """MobileNet v2 block: 1x1 expand (ratio t), 3x3 depthwise, 1x1 project, residual if it fits."""

    def __init__(self, kit: LayerKit, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = []
        if t != 1:
            layers += [kit.conv(cin, hidden, 1, ratio=t), kit.bn(hidden, ratio=t), nn.ReLU6()]
        layers += [
            kit.conv(hidden, hidden, 3, stride, depthwise=True),
            kit.bn(hidden, ratio=t),
            nn.ReLU6(inplace=True),
            kit.conv(hidden, cout, 1),
            kit.bn(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class TinyMobileNetV2(nn.Module):
    # t, c, n, s
    SETTING = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2))

    def __init__(self, kit: LayerKit, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            kit.conv(in_chans, 16, 3, 2, fixed_in=True),
            kit.bn(16),
            nn.ReLU6(inplace=True),
        ]
        cin = 16
        for t, c, n, s in self.SETTING:
            for i in range(n):
                layers.append(InvertedResidual(kit, cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [kit.conv(cin, 64, 1), kit.bn(64), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), kit.linear(64, num_classes))

    def channel_groups(self) -> list[list[str]]:
        """Layers whose outputs are summed by a residual share one width."""
        groups: list[list[str]] = []
        names = [n for n, m in self.features.named_children() if isinstance(m, InvertedResidual)]
        blocks = [self.features.get_submodule(n) for n in names]
        prev_out = "features.0"
        current: list[str] = [prev_out]
        for name, block in zip(names, blocks, strict=True):
            last = len(block.conv) - 2
            proj = f"features.{name}.conv.{last}"
            if block.residual:
                current.append(proj)
            else:
                groups.append(current)
                current = [proj]
        groups.append(current)
        return [g for g in groups if len(g) > 1]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, kit: LayerKit, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = kit.conv(cin, cout, 3, stride)
        self.bn1 = kit.bn(cout)
        self.conv2 = kit.conv(cout, cout, 3)
        self.bn2 = kit.bn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(kit.conv(cin, cout, 1, stride), kit.bn(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, kit: LayerKit, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            kit.conv(in_chans, 16, 3, fixed_in=True), kit.bn(16), nn.ReLU(inplace=True)
        )
        self.layer1 = BasicBlock(kit, 16, 16, 1)
        self.layer2 = BasicBlock(kit, 16, 32, 2)
        self.fc = kit.linear(32, num_classes)

    def channel_groups(self) -> list[list[str]]:
        return [["stem.0", "layer1.conv2"], ["layer2.conv2", "layer2.shortcut.0"]]

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1 unit (stride 1): grouped 1x1, shuffle, depthwise 3x3, grouped 1x1, add."""

    def __init__(self, kit: LayerKit, channels: int, groups: int) -> None:
        super().__init__()
        mid = channels // 2
        self.groups = groups
        self.gconv1 = kit.conv(channels, mid, 1, groups=groups)
        self.bn1 = kit.bn(mid)
        self.dw = kit.conv(mid, mid, 3, depthwise=True)
        self.bn2 = kit.bn(mid)
        self.gconv2 = kit.conv(mid, channels, 1, groups=groups)
        self.bn3 = kit.bn(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.gconv1(x)))
        out = self.bn2(self.dw(channel_shuffle(out, self.groups)))
        return torch.relu(x + self.bn3(self.gconv2(out)))


class TinyShuffleNet(nn.Module):
    def __init__(self, kit: LayerKit, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            kit.conv(in_chans, 48, 3, 2, fixed_in=True), kit.bn(48), nn.ReLU(inplace=True)
        )
        self.units = nn.Sequential(ShuffleUnit(kit, 48, 2), ShuffleUnit(kit, 48, 2))
        self.fc = kit.linear(48, num_classes)

    def channel_groups(self) -> list[list[str]]:
        return [["stem.0", "units.0.gconv2", "units.1.gconv2"]]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


S_WIDTHS = (0.35, 0.5, 0.75, 1.0)
US_RANGE = (0.25, 1.0)


def build(arch: type[nn.Module], kind: str, seed: int = 0) -> nn.Module:
    """A randomly initialised test net: S-Net (switchable BN) or US-Net, BN stats randomised."""
    torch.manual_seed(seed)
    divisor = 16 if arch is TinyShuffleNet else 8  # grouped convs: channels divide by groups
    if kind == "s":
        kit = make_kit(widths=S_WIDTHS, divisor=divisor)
    else:
        kit = make_kit(width_range=US_RANGE, divisor=divisor)
    model = arch(kit)
    with torch.no_grad():  # non-trivial BN affine and statistics: folding must use them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def calibrated(model: nn.Module, widths: list, size: int = 16) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(8, 3, size, size, generator=gen) for _ in range(2)]
    slimmable.calibrate(model, batches, widths=widths)
    return model


ARCHS = [TinyMobileNetV2, TinyResNet, TinyShuffleNet]


def dense_types_only(net: nn.Module) -> None:
    assert slimmable_leftovers(net) == []
    for m in net.modules():
        assert not type(m).__module__.startswith("slimmable"), type(m)
        assert not isinstance(m, slimmable.layers.WidthMixin)


def max_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


# ---- uniform widths ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("kind", ["s", "us"])
def test_extracted_equals_slimmable_at_every_width(arch, kind):
    model = build(arch, kind)
    widths = list(S_WIDTHS) if kind == "s" else [0.25, 0.4, 0.63, 1.0]
    if kind == "us":
        calibrated(model, widths)
    x = torch.randn(3, 3, 16, 16)
    before = copy.deepcopy(model.state_dict())
    sizes = []
    for w in widths:
        net = slimmable.extract_subnet(model, w, input_size=16)
        for m in net.modules():
            assert not type(m).__module__.startswith("slimmable.layers")
        assert not net.training
        with torch.no_grad(), slimmable.set_width(model, w):
            ref = model(x)
            out = net(x)
        assert max_diff(out, ref) <= 1e-5
        sizes.append(sum(p.numel() for p in net.parameters()))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # narrower is smaller
    # the slimmable model is untouched: same weights, same width
    assert slimmable.get_width(model) == 1.0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_dense_layers_have_the_active_channels():
    model = build(TinyMobileNetV2, "s")
    net = slimmable.extract_subnet(model, 0.5, input_size=16)
    stem, stem_bn = net.features[0], net.features[1]
    assert type(stem) is nn.Conv2d and type(stem_bn) is nn.BatchNorm2d
    assert (stem.in_channels, stem.out_channels) == (3, 8)
    assert stem_bn.num_features == 8
    # the switchable BN of width 0.5 is the one that was copied
    torch.testing.assert_close(stem_bn.running_mean, model.features[1].bn[1].running_mean)
    block = net.features[4].conv  # t=4 block: 1x1 expand, depthwise, project
    assert block[0].out_channels % 4 == 0
    assert block[3].groups == block[3].in_channels == block[0].out_channels
    assert type(net.classifier[1]) is nn.Linear and net.classifier[1].out_features == 10
    # copies, not views: training the dense net leaves the slimmable weights alone
    assert stem.weight.data_ptr() != model.features[0].weight.data_ptr()


def test_extracted_net_trains_and_exports_as_plain_torch():
    model = build(TinyResNet, "s")
    net = slimmable.extract_subnet(model, 0.75, input_size=16)
    net.train()
    loss = net(torch.randn(4, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    restored = type(net)  # the container class itself may come from the model code
    assert restored is TinyResNet


def test_us_width_between_calibrated_points_needs_calibration():
    model = calibrated(build(TinyMobileNetV2, "us"), [0.25, 1.0])
    with pytest.raises(RuntimeError, match="calibrat"):
        slimmable.extract_subnet(model, 0.5, input_size=16)
    slimmable.set_uncalibrated(model, "running")  # naive shared statistics: allowed
    net = slimmable.extract_subnet(model, 0.5, input_size=16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        assert max_diff(net(x), model(x)) <= 1e-5


def test_invalid_width_is_an_error():
    model = build(TinyResNet, "s")
    with pytest.raises(ValueError, match="not one of"):
        slimmable.extract_subnet(model, 0.6, input_size=16)


# ---- nonuniform widths ------------------------------------------------------------------------


def test_nonuniform_map_s_net():
    model = build(TinyResNet, "s")
    width = {"stem.0": 0.5, "layer1.conv2": 0.5, "layer1.conv1": 1.0, "*": 0.75}
    net = slimmable.extract_subnet(model, width, input_size=16)
    assert net.layer1.conv1.out_channels == 16 and net.layer1.conv2.out_channels == 8
    assert net.layer2.conv1.out_channels == 24
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), slimmable.set_width(model, width):
        assert max_diff(net(x), model(x)) <= 1e-5


def test_nonuniform_map_us_net_uses_its_calibrated_statistics():
    model = build(TinyMobileNetV2, "us")
    width = {"features.4.conv.0": 0.4, "features.5.conv.0": 0.9, "*": 0.6}
    calibrated(model, [width, 0.6])
    net = slimmable.extract_subnet(model, width, input_size=16)
    assert net.features[4].conv[0].out_channels != net.features[5].conv[0].out_channels
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), slimmable.set_width(model, width):
        assert max_diff(net(x), model(x)) <= 1e-5
    with torch.no_grad(), slimmable.set_width(model, 0.6):  # a different network
        assert max_diff(net(x), model(x)) > 1e-4


# ---- batch norm folding -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.__name__)
def test_fold_bn_removes_every_conv_bn_pair(arch):
    model = build(arch, "s")
    x = torch.randn(3, 3, 16, 16)
    for w in (0.35, 1.0):
        net = slimmable.extract_subnet(model, w, fold_bn=True, input_size=16)
        dense_types_only(net)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
        with torch.no_grad(), slimmable.set_width(model, w):
            ref = model(x)
            assert max_diff(net(x), ref) <= 1e-4 * max(1.0, ref.abs().max().item())


class ReadsConvOutputTwice(nn.Module):
    """A conv whose output feeds a BN and a second branch: folding would change the branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.bn3 = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        z = self.conv2(y)
        z = torch.relu_(z)  # modified in place before its BN: not foldable
        return self.bn(y) + y.mean() + self.bn2(z) + self.bn3(z * 2)


def test_fold_bn_only_folds_what_is_safe():
    model = ReadsConvOutputTwice().eval()
    with torch.no_grad():
        for bn in (model.bn, model.bn2, model.bn3):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    folded = fold_bn(model, x)
    assert type(folded.bn) is nn.BatchNorm2d and type(folded.bn2) is nn.BatchNorm2d
    with torch.no_grad():
        assert max_diff(folded(x), model(x)) <= 1e-5


def test_fold_bn_folds_sequential_pair_and_keeps_the_original():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].weight.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    folded = fold_bn(model, x)
    assert type(folded[1]) is nn.Identity and folded[0].bias is not None
    assert type(model[1]) is nn.BatchNorm2d
    with torch.no_grad():
        assert max_diff(folded(x), model(x)) <= 1e-5


# ---- every registered model ------------------------------------------------------------------


def zoo_widths(model: nn.Module) -> list[float]:
    """Every switch of an S-Net (bounds and middle of a US-Net); bounds only for big models."""
    lo, hi = slimmable.width_bounds(model)
    choices = slimmable.width_choices(model)
    widths = list(choices) if choices is not None else [lo, round((lo + hi) / 2, 3), hi]
    if sum(p.numel() for p in model.parameters()) > 20e6:  # ResNet-50 and up: test time
        widths = [lo, hi]
    return widths


@pytest.mark.parametrize("name", slimmable.list_models())
def test_every_registered_model_extracts_exactly(name):
    model = slimmable.create_model(name, num_classes=10).eval()
    widths = zoo_widths(model)
    size = 32
    in_chans = slimmable.export.input_channels(model)
    gen = torch.Generator().manual_seed(0)
    if slimmable.width_choices(model) is None:
        batches = [torch.randn(4, in_chans, size, size, generator=gen)]
        slimmable.calibrate(model, batches, widths=widths)
    x = torch.randn(2, in_chans, size, size, generator=gen)
    for w in widths:
        net = slimmable.extract_subnet(model, w, input_size=size)
        for m in net.modules():
            assert not type(m).__module__.startswith("slimmable.layers")
            if not list(m.children()):  # every leaf is torch's own: the file needs nothing else
                assert type(m).__module__.startswith("torch.nn."), type(m)
        with torch.no_grad(), slimmable.set_width(model, w):
            ref = model(x)
            assert max_diff(net(x), ref) <= 1e-5
