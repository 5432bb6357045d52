"""slimmable.convert: any CNN made slimmable, exactly, or refused by name."""

import copy

import pytest
import torch
import torch.nn.functional as F
from byom import ARCHITECTURES, INPUT, build
from torch import nn
from torch.nn.utils import prune

import slimmable
from slimmable.converter import ConversionError, convert, register_rule
from slimmable.converter.trace import outputs_of
from slimmable.export import export_subnet, load_exported, slimmable_leftovers

S_WIDTHS = [0.25, 0.5, 0.75, 1.0]
US_RANGE = (0.25, 1.0)


def first(out):
    return next(iter(outputs_of(out)))


def close(a, b, tol=1e-5):
    a, b = first(a), first(b)
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def kwargs(kind):
    return {"widths": S_WIDTHS} if kind == "s" else {"width_range": US_RANGE}


def example(batch=2, seed=0):
    return torch.randn(batch, *INPUT, generator=torch.Generator().manual_seed(seed))


def assert_torch_layers_only(net):
    assert slimmable_leftovers(net) == []
    for m in net.modules():
        assert not type(m).__module__.startswith("slimmable"), type(m)


@pytest.mark.parametrize("kind", ["s", "us"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_converts_exactly(name, kind):
    model, x = build(name), example()
    with torch.no_grad():
        reference = first(model(x))
    names = {n for n, _ in model.named_modules()}
    convert(model, x, **kwargs(kind))
    # the same modules under the same names, and the original's outputs at full width
    assert names <= {n for n, _ in model.named_modules()}
    assert slimmable.list_models  # (the converted model is a plain nn.Module of the user's class)
    with torch.no_grad():
        assert close(model(x), reference)
    # the state dict of another copy of the original network loads, and computes what it does
    other = build(name, seed=1)
    model.load_state_dict(other.state_dict())
    with torch.no_grad(), slimmable.set_width(model, 1.0):
        assert close(model(x), other(x))
    # every width: the extracted network equals the slimmable one and is torch's layers only
    widths = S_WIDTHS if kind == "s" else [0.25, 0.6, 1.0]
    if kind == "us":
        slimmable.calibrate(model, [example(8, seed=2)], widths=widths)
    macs = []
    for w in widths:
        net = slimmable.extract_subnet(model, w, input_size=INPUT)
        assert_torch_layers_only(net)
        with torch.no_grad(), slimmable.set_width(model, w):
            assert close(net(x), model(x))
        macs.append(slimmable.profile(model, INPUT, [w]).widths[0].macs)
    assert macs == sorted(macs) and macs[0] < macs[-1] / 3  # narrower widths cost less


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_exports_to_onnx_at_a_small_width(name, tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = build(name), example()
    convert(model, x, widths=S_WIDTHS)
    net = slimmable.extract_subnet(model, 0.5, input_size=INPUT)
    path = export_subnet(net, tmp_path / f"{name}.onnx", "onnx", input_size=INPUT)
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        assert close(load_exported(path)(x), model(x), 1e-4)


def test_concatenated_parts_keep_their_own_first_channels():
    """The consumer of ``cat([a, b])`` reads the first channels of each part at a width."""

    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 32, 1)
            self.c = nn.Conv2d(48, 8, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3))

    torch.manual_seed(0)
    model, x = TwoBranch().eval(), torch.randn(2, 3, 4, 4)
    convert(model, x, width_range=US_RANGE)
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        got = model(x)
        a = F.conv2d(x, model.a.weight[:8], model.a.bias[:8])
        b = F.conv2d(x, model.b.weight[:16], model.b.bias[:16])
        index = torch.cat([torch.arange(0, 8), torch.arange(16, 32)])
        expected = F.conv2d(torch.cat([a, b], 1), model.c.weight[:, index], model.c.bias)
    torch.testing.assert_close(got, expected.mean((2, 3)), rtol=0, atol=1e-6)


def test_residual_sums_squeeze_excitation_and_depthwise_pairs_move_together():
    model = build("mobilenet_v3")
    convert(model, example(), width_range=US_RANGE)
    groups = model.channel_groups()
    se = [g for g in groups if any(n.endswith("fc2") for n in g)]
    assert se and all(len(g) >= 2 for g in se)  # each SE gate tied to what it scales
    slimmable.set_width(model, 0.5)  # uniform: fine
    knob = next(g for g in groups if len(g) == 2)
    with pytest.raises(ValueError, match="share their channels"):
        slimmable.set_width(model, {knob[0]: 0.5, knob[1]: 0.75})


def test_expansion_layers_keep_a_multiple_of_their_ratio():
    model = build("mobilenet_v2")
    convert(model, example(), width_range=(0.35, 1.0))
    expand = model.features[2].conv[0]  # 16 -> 96 (t = 6), read by a depthwise conv
    assert expand.ratio == 6
    assert all(expand.channels_at(w) % 6 == 0 for w in (0.35, 0.5, 0.75))


def test_grouped_convolutions_keep_channels_divisible_by_their_groups():
    model = build("resnext")
    convert(model, example(), width_range=US_RANGE)
    for m in model.modules():
        if isinstance(m, slimmable.USConv2d) and m.groups > 1:
            for w in (0.25, 0.4, 0.6, 0.8):
                assert m.channels_at(w) % m.groups == 0


def test_zoo_families_converted_from_dense_have_the_zoo_macs():
    """The dense counterpart of a zoo model, converted, slims to the same channels."""
    cases = [
        ("us_small_cnn", {}, 8),
        ("s_resnet20", {"divisor": 4}, 32),
        ("s_mobilenet_v1", {}, 64),
        ("us_mobilenet_v2", {"fixed": ["features.18"]}, 64),  # its last conv never slims
    ]
    for name, kw, size in cases:
        zoo = slimmable.create_model(name).eval()
        switches = slimmable.width_choices(zoo)
        lo, hi = slimmable.width_bounds(zoo)
        c = zoo.default_cfg["input_size"][0]
        if switches is None:
            slimmable.calibrate(zoo, [torch.randn(2, c, size, size)], [1.0])
        dense = slimmable.extract_subnet(zoo, hi, input_size=size)
        width = {"widths": switches} if switches else {"width_range": (lo, hi)}
        converted = convert(dense, torch.randn(1, c, size, size), **width, **kw)
        grid = list(switches) if switches else [lo, 0.42, 0.5, 0.61, 0.75, 0.9, 1.0]
        ours = [r.macs for r in slimmable.profile(converted, (c, size, size), grid).widths]
        zoos = [r.macs for r in slimmable.profile(zoo, (c, size, size), grid).widths]
        assert ours == zoos, name


def test_a_model_without_batch_norm_runs_every_width_without_calibration():
    model, x = build("convnext"), example()
    convert(model, x, width_range=US_RANGE)
    assert slimmable.calibrate(model, [x], widths=[0.3, 0.5]) == []  # nothing to calibrate
    for w in (0.27, 0.5, 0.83):
        with torch.no_grad(), slimmable.set_width(model, w):
            y = model(x)
        assert torch.isfinite(y).all()
        net = slimmable.extract_subnet(model, w, input_size=INPUT)
        assert_torch_layers_only(net)  # LayerNorm2d comes back in the user's own class
        with torch.no_grad(), slimmable.set_width(model, w):
            assert close(net(x), model(x))


def test_custom_modules_keep_their_code_and_classes():
    """A LayerNorm2d subclass with its own forward and the layer-scale parameter of a block
    keep their classes (isinstance holds) and their state_dict keys."""
    model, x = build("convnext"), example()
    keys = set(model.state_dict())
    convert(model, x, widths=S_WIDTHS)
    from byom import CNBlock, LayerNorm2d

    assert isinstance(model.features[0][1], LayerNorm2d)
    assert isinstance(model.features[1][0], CNBlock)
    assert set(model.state_dict()) == keys  # no BN in ConvNeXt: the keys are the original's
    with slimmable.set_width(model, 0.5):
        assert model.features[1][0].layer_scale.shape == (8, 1, 1)
        assert model.features[0][1].normalized_shape == (8,)
    assert model.features[1][0].layer_scale.shape == (16, 1, 1)
    net = slimmable.extract_subnet(model, 0.5, input_size=INPUT)
    assert type(net.features[0][1]) is LayerNorm2d and type(net.features[1][0]) is CNBlock


def test_training_steps_and_state_dict_round_trip():
    model, x = build("densenet"), example(8)
    convert(model, x, width_range=US_RANGE)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    y = torch.randint(0, 10, (8,))
    for w in (1.0, 0.25, 0.6):  # the sandwich rule's widths
        with slimmable.set_width(model, w):
            F.cross_entropy(model(x), y).backward()
    opt.step()
    again = convert(build("densenet"), x, width_range=US_RANGE)
    again.load_state_dict(model.state_dict())
    slimmable.calibrate(model, [x], [0.5])
    slimmable.calibrate(again, [x], [0.5])
    model.eval(), again.eval()
    with torch.no_grad(), slimmable.set_width(model, 0.5), slimmable.set_width(again, 0.5):
        torch.testing.assert_close(model(x), again(x))


def test_search_runs_on_a_converted_model():
    model, x = build("resnet_basic"), example(16)
    convert(model, x, width_range=US_RANGE)
    groups = slimmable.search.channels.channel_groups(model)
    assert any(len(g.layers) > 1 for g in groups)  # the residual stream moves as one
    labels = torch.randint(0, 10, (16,))
    full = slimmable.profile(model, INPUT, [1.0]).widths[0].macs
    result = slimmable.autoslim(model, [(x, labels)], targets=["85%"], input_size=INPUT)
    width = result.width_map()
    slimmable.calibrate(model, [x], [width])
    assert slimmable.profile(model, INPUT, [width]).widths[0].macs <= 0.85 * full


# ---- loud on the unknown -------------------------------------------------------------------------
class Stem(nn.Module):
    """A slimmable stem before ``conv``, whose outputs the subclasses misuse."""

    def __init__(self, out: int = 16, stride: int = 1):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1, stride=stride)
        self.head = nn.Conv2d(out, 4, 1)

    def features(self, x):
        return self.conv(F.relu(self.stem(x)))


class Rolls(Stem):
    """Reorders channels with torch.roll: no rule can make that slim."""

    def forward(self, x):
        return self.head(torch.roll(self.features(x), 1, dims=1))


class Slices(Stem):
    """Keeps a fixed number of channels, the way GhostNet trims its concatenation."""

    def __init__(self):
        super().__init__(out=8)

    def forward(self, x):
        return self.head(self.features(x)[:, :8])


class HandBatchNorm(Stem):
    """A batch norm written out by hand: its statistics would fit no width."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(16))
        self.register_buffer("var", torch.ones(16))

    def forward(self, x):
        return self.head(F.batch_norm(self.features(x), self.mean, self.var))


class HardCodedView(Stem):
    """Flattens with a hard-coded channel count: at a smaller width the batch would change."""

    def __init__(self):
        super().__init__(stride=4)
        self.fc = nn.Linear(16 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(self.features(x).view(-1, 16 * 4 * 4))


@pytest.mark.parametrize(
    ("cls", "says"),
    [
        (Rolls, "aten.roll in the forward of Rolls reorders or picks channels"),
        (Slices, "aten.slice in the forward of Slices slices the channels with fixed bounds"),
        (HandBatchNorm, "batch norm written in the model's own code"),
        (HardCodedView, "at width 0.25 module 'fc' gives [1, 4] where [2, 4] was expected"),
    ],
)
def test_what_the_converter_cannot_follow_is_an_error_naming_it(cls, says):
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(2, 3, 16, 16)
    before = copy.deepcopy(model.state_dict())
    types = [type(m) for m in model.modules()]
    with pytest.raises(ConversionError) as err:
        convert(model, x, width_range=US_RANGE)
    message = str(err.value)
    assert says in message and "fixed=" in message and "\n" not in message
    # the model is left exactly as it was
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not hasattr(model, "slimmable_conversion")
    # the fix the message names works: keep the conv's channels whole; the stem still slims
    convert(model, x, width_range=US_RANGE, fixed=["conv"])
    assert model.stem.is_width_knob and not model.conv.is_width_knob


def test_an_unknown_operator_can_be_taught():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.head(torch.special.i0(self.conv(x)))

    model, x = Custom().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(ConversionError, match="operator aten.i0 in the forward of Custom"):
        convert(model, x, width_range=US_RANGE)
    register_rule("aten.i0", "elementwise")
    try:
        convert(model, x, width_range=US_RANGE)
    finally:
        from slimmable.converter import _USER_RULES

        _USER_RULES.pop("i0")
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        assert model(x).shape == (2, 4, 8, 8)


def test_unsupported_layers_are_refused_unless_their_channels_stay_whole():
    class WithConv1d(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.seq = nn.Conv1d(16, 4, 3)

        def forward(self, x):
            return self.seq(self.conv(x).mean(3))

    model, x = WithConv1d().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(ConversionError, match="Conv1d 'seq' has no slimmable counterpart"):
        convert(model, x, widths=S_WIDTHS)
    with pytest.raises(ConversionError, match="nothing in this model slims"):
        convert(model, x, widths=S_WIDTHS, fixed=["conv"])
    assert type(model.conv) is nn.Conv2d


def test_bad_arguments_are_one_line_errors():
    model, x = build("vgg"), example()
    cases = [
        ({}, "exactly one of widths"),
        ({"widths": [0.5, 0.5, 1.0]}, "lists a width twice"),
        ({"widths": [0.5, 1.5]}, r"outside \(0, 1\]"),
        ({"width_range": (0.0, 1.0)}, "0 < lo <= hi <= 1"),
        ({"width_range": US_RANGE, "norm": "switchable"}, "needs widths"),
        ({"width_range": US_RANGE, "norm": "batch"}, "norm must be one of"),
        ({"width_range": US_RANGE, "divisor": 0}, "divisor must be a positive integer"),
        ({"width_range": US_RANGE, "fixed": ["clasifier"]}, "did you mean 'classifier'"),
    ]
    for kw, says in cases:
        with pytest.raises((ConversionError, ValueError), match=says):
            convert(model, x, **kw)
    with pytest.raises(ConversionError, match="already slimmable"):
        convert(slimmable.create_model("us_small_cnn"), torch.randn(1, 1, 8, 8), widths=[1.0])
    with pytest.raises(ConversionError, match="forward failed on example_inputs"):
        convert(model, torch.randn(2, 1, 16, 16), width_range=US_RANGE)


def test_fixed_patterns_keep_heads_whole_and_naive_norm_shares_statistics():
    model, x = build("unet"), example()
    convert(model, x, width_range=US_RANGE, norm="shared", fixed=["up2"])
    assert not model.up2.conv[0].is_width_knob  # reads slimmed channels, writes them whole
    assert type(model.up2.conv[3]) is nn.Conv2d  # whole in, whole out: left as it was
    assert model.inc[0].is_width_knob
    assert all(
        bn.uncalibrated == "running"
        for bn in model.modules()
        if isinstance(bn, slimmable.USBatchNorm2d)
    )
    with torch.no_grad(), slimmable.set_width(model, 0.3):  # the naive baseline runs uncalibrated
        assert model(x)["out"].shape == (2, 3, 16, 16)


def test_parametrizations_and_pruning_work_on_converted_layers():
    model, x = build("resnet_basic"), example()
    convert(model, x, widths=S_WIDTHS)
    torch.nn.utils.parametrizations.weight_norm(model.conv1, "weight")
    prune.l1_unstructured(model.layers[0][0].conv1, "weight", amount=0.3)
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        y = model(x)
        with slimmable.freeze(model):
            torch.testing.assert_close(model(x), y)
    assert torch.isfinite(y).all()


def test_a_frozen_converted_model_follows_its_width_and_every_write():
    """ConvNeXt's layer scale and hand-written LayerNorm2d are sliced user modules: frozen, their
    slices are memoized too, and still follow the width and each write to their parameters."""
    model, x = build("convnext"), example()
    convert(model, x, widths=S_WIDTHS)
    model.eval()
    block, norm = model.features[1][0], model.features[2][0]  # layer scale; LayerNorm2d

    def reference():  # with gradients on, no layer reads its memo
        with torch.enable_grad():
            return model(x).detach()

    scale = block._parameters["layer_scale"]  # (block.layer_scale reads the active slice)
    writes = [
        lambda: block.layer_scale.data.mul_(3.0),
        lambda: setattr(scale, "data", torch.randn_like(scale)),  # new storage, same parameter
        lambda: setattr(norm, "weight", nn.Parameter(torch.randn(16))),  # a new parameter
        lambda: model.load_state_dict({**model.state_dict(), "features.2.0.bias": norm.bias + 1}),
    ]
    with slimmable.freeze(model), torch.no_grad():
        for write in writes:
            for width in S_WIDTHS:
                slimmable.set_width(model, width)
                torch.testing.assert_close(model(x), reference(), rtol=0, atol=0)
            before = model(x)
            write()
            after = model(x)
            assert not torch.equal(after, before)
            torch.testing.assert_close(after, reference(), rtol=0, atol=0)
        assert len(block._memo) > 0  # the sliced module did memoize
