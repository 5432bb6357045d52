"""Each slimmable layer equals its torch counterpart built with the sliced weights."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize, prune

import slimmable
from slimmable import (
    SlimmableConv2d,
    SlimmableLinear,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    USConv2d,
    USLinear,
    make_divisible,
)
from slimmable.layers import SlimmableLayerNorm, freeze, scale_channels

US_WIDTHS = [0.25, 0.33, 0.5, 0.61, 0.8, 1.0]


def test_make_divisible_follows_the_definition():
    for v in [1, 3.5, 7.9, 8, 11.2, 12, 20, 27.9, 36, 100.4, 1000]:
        d = make_divisible(v)
        assert d % 8 == 0 and d >= 8
        assert d >= 0.9 * v
        lower = d - 8
        # never a smaller admissible multiple that is nearer or equally near from below
        assert not (lower >= 8 and lower >= 0.9 * v and abs(lower - v) < abs(d - v))
    assert make_divisible(32 * 0.35) == 16  # 11.2 rounds to 8, which loses >10%, so 16
    assert make_divisible(96 * 0.75) == 72
    assert make_divisible(3, divisor=4, min_value=1) == 4
    assert make_divisible(5, divisor=1) == 5


def test_scale_channels_respects_ratio_and_full_width():
    assert scale_channels(1000, 1.0) == 1000  # full width never rounds
    assert scale_channels(96, 0.5, ratio=6) % 6 == 0
    assert scale_channels(96, 0.5, ratio=6) == make_divisible(96 * 0.5 / 6) * 6
    assert scale_channels(36, 0.99) <= 36


def _dense_conv(layer, cout, cin_per_group, groups):
    ref = nn.Conv2d(
        cin_per_group * groups,
        cout,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        groups,
        layer.bias is not None,
        layer.padding_mode,
    )
    with torch.no_grad():
        ref.weight.copy_(layer.weight[:cout, :cin_per_group])
        if layer.bias is not None:
            ref.bias.copy_(layer.bias[:cout])
    return ref


CONV_CASES = [
    dict(kind="us", bias=True),
    dict(kind="us", bias=False, stride=2),
    dict(kind="us", depthwise=True),
    dict(kind="us", groups=4, divisor=8),
    dict(kind="us", ratio=6),
    dict(kind="us", padding_mode="reflect"),
    dict(kind="s", bias=False),
    dict(kind="s", depthwise=True),
]


def _make_conv(kind, cin=32, cout=48, depthwise=False, **kw):
    stride = kw.pop("stride", 1)
    groups = kw.pop("groups", 1)
    if depthwise:
        cout = cin
    cls, extra = (
        (USConv2d, {"width_range": (0.25, 1.0)})
        if kind == "us"
        else (SlimmableConv2d, {"widths": (0.25, 0.5, 0.75, 1.0)})
    )
    return cls(cin, cout, 3, stride, 1, groups=groups, depthwise=depthwise, **kw, **extra)


@pytest.mark.parametrize(
    "case", CONV_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
def test_conv_matches_dense_conv_outputs_and_grads(case):
    case = dict(case)
    layer = _make_conv(**case)
    widths = US_WIDTHS if case["kind"] == "us" else [0.25, 0.5, 0.75, 1.0]
    for w in widths:
        layer.width = w
        cin = layer.in_channels if layer.depthwise else make_divisible(layer.in_channels * w)
        if layer.groups > 1 and not layer.depthwise:
            cin = cin // layer.groups * layer.groups
        x = torch.randn(2, cin, 9, 9, requires_grad=True)
        cout, cin_pg, groups = layer.active_shape(cin)
        ref = _dense_conv(layer, cout, cin_pg, groups)
        x_ref = x.detach().clone().requires_grad_(True)

        layer.zero_grad()
        y = layer(x)
        y_ref = ref(x_ref)
        assert y.shape == y_ref.shape
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)

        g = torch.randn_like(y)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(layer.weight.grad[:cout, :cin_pg], ref.weight.grad)
        # gradients reach only the active slice
        outside = layer.weight.grad.clone()
        outside[:cout, :cin_pg] = 0
        assert outside.abs().sum() == 0
        if layer.bias is not None:
            torch.testing.assert_close(layer.bias.grad[:cout], ref.bias.grad)
            assert layer.bias.grad[cout:].abs().sum() == 0


def test_conv_channel_counts_follow_width_and_ratio():
    conv = USConv2d(16, 96, 1, width_range=(0.35, 1.0), ratio=6)
    for w in US_WIDTHS[1:]:
        conv.width = w
        out, _, _ = conv.active_shape(16)
        assert out == min(96, make_divisible(96 * w / 6) * 6)
        assert out % 6 == 0


def test_fixed_in_and_fixed_out():
    conv = USConv2d(3, 32, 3, padding=1, fixed_in=True, width_range=(0.25, 1.0))
    conv.width = 0.5
    assert conv(torch.randn(1, 3, 8, 8)).shape[1] == 16
    with pytest.raises(ValueError, match="exactly 3 input channels"):
        conv(torch.randn(1, 2, 8, 8))
    head = USConv2d(64, 10, 1, fixed_out=True, width_range=(0.25, 1.0))
    head.width = 0.25
    assert head(torch.randn(1, 16, 4, 4)).shape[1] == 10


def test_too_many_input_channels_is_a_clear_error():
    conv = USConv2d(16, 16, 3, width_range=(0.25, 1.0))
    with pytest.raises(ValueError, match="at most 16 input channels"):
        conv(torch.randn(1, 24, 4, 4))


@pytest.mark.parametrize(
    "cls,kw",
    [(USLinear, {"width_range": (0.25, 1.0)}), (SlimmableLinear, {"widths": (0.25, 0.5, 1.0)})],
)
@pytest.mark.parametrize("fixed_out", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_dense_linear(cls, kw, fixed_out, bias):
    layer = cls(64, 40, bias, fixed_out=fixed_out, **kw)
    for w in layer.policy.widths if hasattr(layer.policy, "widths") else US_WIDTHS:
        layer.width = w
        layer.zero_grad()
        cin = make_divisible(64 * w)
        x = torch.randn(5, cin, requires_grad=True)
        cout, _ = layer.active_shape(cin)
        assert cout == (40 if fixed_out else scale_channels(40, w))
        ref = nn.Linear(cin, cout, bias)
        with torch.no_grad():
            ref.weight.copy_(layer.weight[:cout, :cin])
            if bias:
                ref.bias.copy_(layer.bias[:cout])
        x_ref = x.detach().clone().requires_grad_(True)
        y, y_ref = layer(x), ref(x_ref)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        y.sum().backward()
        y_ref.sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(layer.weight.grad[:cout, :cin], ref.weight.grad)
        rest = layer.weight.grad.clone()
        rest[:cout, :cin] = 0
        assert rest.abs().sum() == 0


def test_switchable_bn_is_one_private_batchnorm_per_width():
    widths = (0.25, 0.5, 1.0)
    sbn = SwitchableBatchNorm2d(32, widths)
    assert [bn.num_features for bn in sbn.bn] == [8, 16, 32]
    refs = [nn.BatchNorm2d(c) for c in (8, 16, 32)]
    for ref, bn in zip(refs, sbn.bn):
        ref.load_state_dict(bn.state_dict())
    for step in range(3):
        for i, w in enumerate(widths):
            sbn.width = w
            x = torch.randn(4, sbn.channels_list[i], 5, 5)
            sbn.train(step < 2)
            refs[i].train(step < 2)
            torch.testing.assert_close(sbn(x), refs[i](x), rtol=0, atol=0)
    for ref, bn in zip(refs, sbn.bn):
        torch.testing.assert_close(bn.running_mean, ref.running_mean)
        torch.testing.assert_close(bn.running_var, ref.running_var)
    # private statistics: the 0.25 BN never saw the 1.0 batches
    assert not torch.equal(sbn.bn[0].running_mean, sbn.bn[2].running_mean[:8])


def test_switchable_bn_picks_by_channels_in_nonuniform_nets():
    sbn = SwitchableBatchNorm2d(32, (0.25, 0.5, 1.0))
    sbn.width = 1.0
    assert sbn.active_index(16) == 1
    with pytest.raises(ValueError, match="private BNs"):
        sbn(torch.randn(2, 12, 3, 3))


def test_us_bn_train_mode_uses_batch_statistics():
    bn = USBatchNorm2d(32)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(8, 16, 4, 4) * 3 + 1
    y = bn.train()(x)
    ref = F.batch_norm(x, None, None, bn.weight[:16], bn.bias[:16], True, 0.0, bn.eps)
    torch.testing.assert_close(y, ref)


def test_us_bn_eval_needs_calibration_and_calibration_is_the_cumulative_average():
    bn = USBatchNorm2d(32).eval()
    x = torch.randn(2, 16, 4, 4)
    with pytest.raises(RuntimeError, match="calibrat"):
        bn(x)
    bn.uncalibrated = "running"
    torch.testing.assert_close(bn(x), F.batch_norm(x, torch.zeros(16), torch.ones(16)))
    bn.uncalibrated = "error"

    batches = [torch.randn(6, 16, 3, 3) * (i + 1) + i for i in range(4)]
    ref = nn.BatchNorm2d(16, momentum=None).train()
    bn.stats_key = 500_000
    bn.collecting = True
    for b in batches:
        bn(b)
        ref(b)
    bn.collecting = False
    bn.eval()
    ref.eval()
    with torch.no_grad():
        ref.weight.copy_(bn.weight[:16])
        ref.bias.copy_(bn.bias[:16])
    torch.testing.assert_close(bn(x), ref(x))
    assert bn.calibrated_keys() == [500_000]
    bn.stats_key = 250_000
    with pytest.raises(RuntimeError, match="0.25 has no calibrated"):
        bn(x[:, :8])


def test_us_bn_calibration_travels_in_state_dict():
    a = USBatchNorm2d(16)
    a.collecting = True
    for key in (250_000, 1_000_000):
        a.stats_key = key
        a(torch.randn(4, 16 if key == 1_000_000 else 8, 2, 2))
    a.collecting = False
    b = USBatchNorm2d(16)
    b.load_state_dict(a.state_dict())
    assert b.calibrated_keys() == [250_000, 1_000_000]
    for name in ("calib_mean", "calib_var", "calib_batches"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    b.reset_calibration(250_000)
    assert b.calibrated_keys() == [1_000_000]


def test_frozen_memo_spares_the_copy_and_tracks_weight_updates():
    conv = USConv2d(32, 32, 3, padding=1, width_range=(0.25, 1.0)).eval()
    conv.width = 0.5
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        conv(x)
    assert conv._memo is None  # nothing is memoized unless the model is frozen
    with freeze(conv), torch.no_grad():
        y1 = conv(x)
        assert len(conv._memo) == 1
        y2 = conv(x)
        torch.testing.assert_close(y1, y2, rtol=0, atol=0)
        opt = torch.optim.SGD(conv.parameters(), lr=0.1)
        with torch.enable_grad():
            conv(x).sum().backward()
        opt.step()
        y3 = conv(x)
        dense = F.conv2d(x, conv.weight[:16, :16].contiguous(), conv.bias[:16], padding=1)
    torch.testing.assert_close(y3, dense, rtol=0, atol=0)
    assert not torch.allclose(y1, y3)
    assert conv._memo is None and type(conv.weight) is nn.Parameter  # thawed on exit


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_frozen_layer_follows_its_width_however_it_is_set(kind):
    """The memo is keyed on the width: switching it, by ``set_width`` or by assigning
    ``layer.width``, never serves another width's slices."""
    if kind == "conv":
        layer = SlimmableConv2d(16, 16, 3, padding=1, widths=(0.25, 0.5, 1.0)).eval()
    else:
        layer = SlimmableLinear(16, 16, widths=(0.25, 0.5, 1.0), fixed_out=False).eval()
    conv = kind == "conv"

    def dense(c, x):
        w, b = layer.weight[:c, : x.shape[1]], layer.bias[:c]
        return F.conv2d(x, w, b, padding=1) if conv else F.linear(x, w, b)

    with freeze(layer), torch.no_grad():
        for width, c_in in [(0.5, 8), (0.25, 8), (1.0, 16), (0.5, 4), (0.5, 8)]:
            x = torch.randn(1, c_in, 5, 5) if conv else torch.randn(2, c_in)
            if width == 0.25:
                slimmable.set_width(layer, width)
            else:
                layer.width = width
            c = layer.channels_at(width)
            torch.testing.assert_close(layer(x), dense(c, x), rtol=0, atol=0)
        assert len(layer._memo) == 4  # one entry per (width, input channels) seen


def _change_bias_in_place(layer):
    with torch.no_grad():
        layer.bias.add_(1.0)


def _assign_bias_data(layer):
    layer.bias.data = torch.randn_like(layer.bias)


def _assign_data(layer):
    layer.weight.data = torch.randn_like(layer.weight)  # no version bump: a new storage


def _write_through_data(layer):
    layer.weight.data.mul_(0.5)  # no version bump on the parameter, same storage
    layer.bias.data.zero_()


def _write_through_detach(layer):
    layer.weight.detach().mul_(-1.0)


def _load_state_dict(layer):
    state = {k: torch.randn_like(v) for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)


def _load_state_dict_swapping(layer):  # torch's opt-in path: swap_tensors, no copy_
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        _load_state_dict(layer)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


def _swap_tensors(layer):
    torch.utils.swap_tensors(layer.weight, nn.Parameter(torch.randn_like(layer.weight)))


def _new_parameter(layer):
    layer.weight = nn.Parameter(torch.randn_like(layer.weight))


def _new_parameter_then_data(layer):  # a parameter the freeze never saw, then written
    _new_parameter(layer)
    layer(torch.randn(1, 8, 5, 5) if layer.weight.dim() == 4 else torch.randn(2, 8))
    layer.weight.data = torch.randn_like(layer.weight)


def _remove_bias(layer):
    layer.bias = None


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


def _parametrize(layer):
    parametrize.register_parametrization(layer, "weight", _Double())


def _prune(layer):
    prune.l1_unstructured(layer, "weight", amount=0.5)


def _prune_bias(layer):
    prune.l1_unstructured(layer, "bias", amount=0.5)  # the bias leaves _parameters


def _dense(kind, layer, x):
    if kind == "layernorm":
        bias = None if layer.bias is None else layer.bias[:8]
        return F.layer_norm(x, (8,), layer.weight[:8], bias, layer.eps)
    weight, bias = layer.weight[:8, :8], None if layer.bias is None else layer.bias[:8]
    return F.conv2d(x, weight, bias, padding=1) if kind == "conv" else F.linear(x, weight, bias)


CHANGES = [
    _change_bias_in_place,
    _assign_bias_data,
    _assign_data,
    _write_through_data,
    _write_through_detach,
    _load_state_dict,
    _load_state_dict_swapping,
    _swap_tensors,
    _new_parameter,
    _new_parameter_then_data,
    _remove_bias,
    _parametrize,
    _prune,
    _prune_bias,
]


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("kind", ["conv", "linear", "layernorm"])
def test_layers_compute_with_their_current_weights_however_they_change(kind, change, frozen):
    if kind == "conv":
        layer = USConv2d(16, 16, 3, padding=1, width_range=(0.25, 1.0)).eval()
        x = torch.randn(1, 8, 5, 5)
    elif kind == "layernorm":
        layer = SlimmableLayerNorm(16).eval()
        with torch.no_grad():
            layer.weight.normal_(), layer.bias.normal_()
        x = torch.randn(2, 3, 8)
    else:
        layer = USLinear(16, 16, width_range=(0.25, 1.0), fixed_out=False).eval()
        x = torch.randn(2, 8)
    layer.width = 0.5
    with freeze(layer) if frozen else contextlib.nullcontext(), torch.no_grad():
        before = layer(x)  # fills the memo when frozen
        change(layer)
        got = layer(x)
        twice = layer(x)
        expected = _dense(kind, layer, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(twice, expected, rtol=0, atol=0)
    assert not torch.equal(got, before)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("kind", ["conv", "linear", "layernorm", "us_bn"])
def test_layers_made_under_inference_mode_run_and_see_every_write(kind, frozen):
    """Inference tensors have no version counter: nothing derived from them is memoized (a
    model built under ``torch.inference_mode`` crashed in eval, and a write inside inference
    mode could not be seen)."""
    with torch.inference_mode():
        if kind == "us_bn":
            layer = USBatchNorm2d(16, uncalibrated="running").eval()
            layer.running_var.uniform_(0.5, 2.0)
            x = torch.randn(2, 8, 3, 3)
        else:
            layer = {
                "conv": lambda: USConv2d(16, 16, 3, padding=1, width_range=(0.25, 1.0)),
                "linear": lambda: USLinear(16, 16, width_range=(0.25, 1.0), fixed_out=False),
                "layernorm": lambda: SlimmableLayerNorm(16),
            }[kind]().eval()
            x = {"conv": torch.randn(1, 8, 5, 5), "linear": torch.randn(2, 8)}.get(
                kind, torch.randn(2, 3, 8)
            )
        layer.weight.normal_()
    assert layer.weight.is_inference()
    layer.width = 0.5
    with freeze(layer) if frozen else contextlib.nullcontext(), torch.inference_mode():
        before = layer(x)
        layer.bias.add_(1.0)  # no version counter records this
        got = layer(x)
        if kind == "us_bn":
            mean, var = layer.running_mean[:8], layer.running_var[:8]
            w, b = layer.weight[:8], layer.bias[:8]
            expected = F.batch_norm(x, mean, var, w, b, False, 0.0, layer.eps)
        else:
            expected = _dense(kind, layer, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, before)


MECHANISMS = [
    (kind, mechanism)
    for kind in ("conv", "linear", "us_bn")
    for mechanism in ("parametrize", "weight_norm", "prune")
    if not (kind == "us_bn" and mechanism == "weight_norm")  # weight_norm needs a 2-D weight
]


@pytest.mark.parametrize(("kind", "mechanism"), MECHANISMS)
def test_torch_mechanisms_work_on_slimmable_layers(kind, mechanism):
    """A slimmable layer under a parametrization or pruning equals the torch layer under it."""
    torch.manual_seed(0)
    if kind == "conv":
        layer, c = USConv2d(16, 16, 3, padding=1, width_range=(0.25, 1.0)), 8
        ref = nn.Conv2d(8, 8, 3, padding=1)
        x = torch.randn(2, 8, 5, 5)
    elif kind == "linear":
        layer, c = USLinear(16, 16, width_range=(0.25, 1.0), fixed_out=False), 8
        ref = nn.Linear(8, 8)
        x = torch.randn(2, 8)
    else:
        layer, c = USBatchNorm2d(16, uncalibrated="running"), 8
        ref = nn.BatchNorm2d(8)
        x = torch.randn(4, 8, 3, 3)
    layer.width = 0.5
    with torch.no_grad():
        layer.weight.normal_()
        ref.weight.copy_(layer.weight[:c, :c] if layer.weight.dim() > 1 else layer.weight[:c])
        ref.bias.copy_(layer.bias[:c])
    for m in (layer, ref):
        if mechanism == "parametrize":
            parametrize.register_parametrization(m, "weight", _Double())
        elif mechanism == "weight_norm":
            torch.nn.utils.parametrizations.weight_norm(m, "weight", dim=0)
        else:
            prune.l1_unstructured(m, "weight", amount=0.4)
    if mechanism == "prune":  # the same mask: prune the reference where the layer's slice is
        mask = layer.weight_mask[:c, :c] if kind != "us_bn" else layer.weight_mask[:c]
        ref.weight_mask.copy_(mask)
    layer.eval(), ref.eval()
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            if kind == "us_bn":
                ref.running_mean.copy_(layer.running_mean[:c])
                ref.running_var.copy_(layer.running_var[:c])
            got, expected = layer(x), ref(x)
            if mechanism == "weight_norm":  # the norm is over the full rows: slice the result
                w, b = layer.weight[:c, :c], layer.bias[:c]
                f = F.conv2d if kind == "conv" else F.linear
                expected = f(x, w, b, padding=1) if kind == "conv" else f(x, w, b)
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    with freeze(layer), torch.no_grad():
        torch.testing.assert_close(layer(x), got.detach(), rtol=1e-6, atol=1e-6)


def test_constructor_errors_are_clear():
    with pytest.raises(ValueError, match="exactly one of"):
        USConv2d(3, 8, 3, width_range=(0.25, 1.0), widths=(0.5, 1.0))
    with pytest.raises(ValueError, match="0 < lo <= hi <= 1"):
        USConv2d(3, 8, 3, width_range=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SlimmableConv2d(3, 8, 3, widths=(0.5, 1.5))
