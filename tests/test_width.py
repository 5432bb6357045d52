"""Width control: uniform and per-layer widths, restoring, validation, no shared state."""

import threading

import pytest
import torch
from torch import nn

import slimmable
from slimmable import create_model, get_width, set_width
from slimmable.layers import USConv2d
from slimmable.width import network_key, width_bounds, width_choices, width_knobs


def _channels(model, x):
    """Output channels of every knob layer for input x, recorded with hooks."""
    seen = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.shape[1]))
        for n, m in width_knobs(model).items()
    ]
    model(x)
    for h in hooks:
        h.remove()
    return seen


def test_uniform_width_sets_every_layer():
    model = create_model("us_small_cnn", num_classes=10).train()
    x = torch.randn(4, 1, 8, 8)
    set_width(model, 0.5)
    assert get_width(model) == 0.5
    assert _channels(model, x) == {"features.0": 16, "features.3": 32, "features.6": 64}
    assert model(x).shape == (4, 10)


def test_map_sets_named_layers_and_prefixes_with_default():
    model = create_model("us_small_cnn", num_classes=10).train()
    x = torch.randn(2, 1, 8, 8)
    set_width(model, {"features.3": 0.25, "*": 0.5})
    assert _channels(model, x) == {"features.0": 16, "features.3": 16, "features.6": 64}
    set_width(model, {"features": 0.25, "features.6": 0.75})
    assert _channels(model, x) == {"features.0": 8, "features.3": 16, "features.6": 96}
    assert get_width(model) == {"features.0": 0.25, "features.3": 0.25, "features.6": 0.75}


def test_context_manager_restores_previous_width():
    model = create_model("us_small_cnn", num_classes=10)
    set_width(model, 0.75)
    key = model.features[1].stats_key
    with set_width(model, {"features.0": 0.25}) as m:
        assert m is model
        assert get_width(model) != 0.75
        assert model.features[1].stats_key != key
    assert get_width(model) == 0.75
    assert model.features[1].stats_key == key


def test_active_channels_follow_every_width_change():
    """``active_out`` (what compiled code reads) always equals the channels at ``width``."""
    from slimmable.layers.base import WidthMixin

    model = create_model("us_mobilenet_v2_cifar", num_classes=10)

    def in_sync() -> bool:
        layers = [m for m in model.modules() if isinstance(m, WidthMixin)]
        return all(m.active_out == m.channels_at(m.width) for m in layers)

    assert in_sync()
    for width in (0.5, {"features.3.body.0": 0.4, "*": 0.7}, 0.35, 0.5):  # 0.5 again: cached
        set_width(model, width)
        assert in_sync()
        with set_width(model, 1.0):
            assert in_sync()
        assert in_sync()


def test_invalid_widths_name_what_is_allowed():
    us = create_model("us_small_cnn", num_classes=10)
    with pytest.raises(ValueError, match=r"outside .* range \[0.25, 1\]"):
        set_width(us, 1.2)
    with pytest.raises(ValueError, match=r"range \[0.25, 1\]"):
        set_width(us, 0.1)
    s = create_model("s_small_cnn", num_classes=10, widths=[0.25, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"not one of .* \[0.25, 0.5, 1\]"):
        set_width(s, 0.75)
    with pytest.raises(ValueError, match="did you mean 'features.3'"):
        set_width(us, {"features.33": 0.5})
    with pytest.raises(ValueError, match="layer 'features.0'"):
        set_width(us, {"features.0": 0.1})
    # nothing changed after a failed call
    assert get_width(us) == 1.0
    with pytest.raises(ValueError, match="no slimmable layers"):
        set_width(nn.Linear(2, 2), 0.5)


def test_bounds_and_choices():
    assert width_bounds(create_model("us_small_cnn", width_range=(0.3, 0.9))) == (0.3, 0.9)
    s = create_model("s_small_cnn", widths=[1.0, 0.5])
    assert width_choices(s) == (0.5, 1.0)
    assert width_choices(create_model("us_small_cnn")) is None


def test_network_key_identifies_settings():
    model = create_model("us_small_cnn")
    assert network_key(model, 0.5) == 500_000
    assert network_key(model, {"*": 0.5}) == 500_000  # a uniform map is the uniform width
    nonuniform = network_key(model, {"features.0": 0.5})
    assert nonuniform < 0
    assert nonuniform == network_key(model, {"features.0": 0.5, "*": 1.0})
    assert nonuniform != network_key(model, {"features.3": 0.5})


def test_tied_layers_must_share_a_width():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = USConv2d(3, 16, 1, fixed_in=True, width_range=(0.25, 1.0))
            self.b = USConv2d(3, 16, 1, fixed_in=True, width_range=(0.25, 1.0))

        def forward(self, x):
            return self.a(x) + self.b(x)

        def channel_groups(self):
            return [["a", "b"]]

    model = Tied()
    set_width(model, {"a": 0.5, "b": 0.5})
    assert model(torch.randn(1, 3, 2, 2)).shape[1] == 8
    with pytest.raises(ValueError, match="share their channels"):
        set_width(model, {"a": 0.5})


def test_two_models_in_one_process_do_not_interfere():
    a = create_model("us_small_cnn", num_classes=10).train()
    b = create_model("us_small_cnn", num_classes=10).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 1, 8, 8)
    set_width(a, 0.25)
    set_width(b, 1.0)
    assert _channels(a, x)["features.6"] == 32
    assert _channels(b, x)["features.6"] == 128
    assert get_width(a) == 0.25 and get_width(b) == 1.0


def test_two_threads_each_with_its_own_model():
    torch.manual_seed(0)
    proto = create_model("s_small_cnn", num_classes=10).eval()
    x = torch.randn(2, 1, 8, 8)
    expected = {}
    for w in (0.25, 1.0):
        with torch.no_grad(), set_width(proto, w):
            expected[w] = proto(x)
    errors = []

    def worker(width):
        model = create_model("s_small_cnn", num_classes=10).eval()
        model.load_state_dict(proto.state_dict())
        set_width(model, width)
        try:
            for _ in range(200):
                with torch.no_grad():
                    torch.testing.assert_close(model(x), expected[width], rtol=0, atol=0)
                assert get_width(model) == width
        except AssertionError as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(w,)) for w in (0.25, 1.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_calibration_per_width_and_uncalibrated_error():
    model = create_model("us_small_cnn", num_classes=10)
    data = [torch.randn(16, 1, 8, 8) for _ in range(3)]
    slimmable.calibrate(model, data, widths=[0.25, 1.0, {"features.0": 0.5}])
    assert slimmable.calibrated_widths(model) == [0.25, 1.0]
    model.eval()
    with torch.no_grad():
        set_width(model, 0.25)
        model(data[0])
        set_width(model, {"features.0": 0.5})
        model(data[0])
        set_width(model, 0.5)
        with pytest.raises(RuntimeError, match="0.5 has no calibrated BN statistics"):
            model(data[0])
