"""AutoSlim: exact channel counts, MACs, the greedy search, its JSON, and searched networks."""

import json
import random

import pytest
import torch
import torch.nn.functional as F
from test_width import _channels as _out_channels
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import slimmable
from slimmable import calibrate, create_model, get_width, set_width
from slimmable.layers import USBatchNorm2d, USConv2d, USLinear
from slimmable.search import (
    autoslim,
    batch_statistics,
    channel_choices,
    channel_groups,
    channels_to_width,
    count_macs,
    get_channels,
    load_search,
    read_search,
    set_channels,
)
from slimmable.search.evaluate import evaluate
from slimmable.units import parse_macs
from slimmable.width import width_knobs


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one thread is fastest, and robust to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _real_macs(model, x):
    """MACs of one forward of the real model on ``x``, per image (FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // (2 * len(x))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class TinyResNet(nn.Module):
    """A stem, one residual block whose output conv adds to the stem, and a classifier."""

    def __init__(self, num_classes=4):
        super().__init__()
        kw = {"width_range": (0.25, 1.0)}
        self.stem = USConv2d(3, 32, 3, padding=1, bias=False, fixed_in=True, **kw)
        self.bn0 = USBatchNorm2d(32)
        self.conv1 = USConv2d(32, 48, 3, padding=1, bias=False, **kw)
        self.bn1 = USBatchNorm2d(48)
        self.conv2 = USConv2d(48, 32, 3, padding=1, bias=False, **kw)
        self.bn2 = USBatchNorm2d(32)
        self.head = USConv2d(32, 64, 1, bias=False, **kw)
        self.bn3 = USBatchNorm2d(64)
        self.fc = USLinear(64, num_classes, **kw)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        x = F.relu(self.bn3(self.head(x)))
        return self.fc(x.mean((2, 3)))

    def channel_groups(self):
        return [["stem", "conv2"]]


def _synthetic_batches(n=3, size=16, num_classes=4, hw=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, 3, hw, hw, generator=g),
            torch.randint(0, num_classes, (size,), generator=g),
        )
        for _ in range(n)
    ]


# ---- channels <-> widths ---------------------------------------------------------------------


def test_every_channel_choice_runs_exactly():
    model = create_model("us_small_cnn", num_classes=10).train()
    x = torch.randn(2, 1, 8, 8)
    for name, layer in width_knobs(model).items():
        choices = channel_choices(layer)
        step = layer.divisor * layer.ratio
        full = layer.channels_at(1.0)
        assert choices == tuple(range(layer.channels_at(0.25), full + 1, step))
        for c in choices:
            set_channels(model, {name: c})
            assert _out_channels(model, x)[name] == c
            assert get_channels(model)[name] == c


def test_channels_below_the_range_use_the_rounding_of_the_smallest_width():
    conv = USConv2d(8, 136, 1, width_range=(0.25, 1.0))  # 0.25 * 136 = 34 rounds to 32
    choices = channel_choices(conv)
    assert choices[0] == conv.channels_at(0.25) == 32
    assert choices[-1] == 136
    assert channels_to_width(nn.Sequential(conv), {"0": 32}) == {"0": 0.25}


def test_set_channels_restores_and_rejects_bad_counts():
    model = create_model("us_small_cnn", num_classes=10)
    set_width(model, 0.5)
    with set_channels(model, {"features.3": 40, "features.6": 72}):
        assert get_channels(model) == {"features.0": 32, "features.3": 40, "features.6": 72}
    assert get_width(model) == 0.5
    with pytest.raises(ValueError, match=r"multiples of 8"):
        set_channels(model, {"features.3": 20})
    with pytest.raises(ValueError, match=r"did you mean 'features.3'"):
        set_channels(model, {"feature.3": 16})
    with pytest.raises(ValueError, match="integer"):
        channels_to_width(model, {"features.3": 16.5})


def test_snet_channels_must_be_switches_and_its_bn_serves_them():
    model = create_model("s_small_cnn", num_classes=10, widths=(0.25, 0.5, 1.0)).eval()
    assert channel_choices(width_knobs(model)["features.3"]) == (16, 32, 64)
    x = torch.randn(2, 1, 8, 8)
    set_channels(model, {"features.0": 8, "features.3": 64, "features.6": 64})
    assert _out_channels(model, x) == {"features.0": 8, "features.3": 64, "features.6": 64}
    with pytest.raises(ValueError, match="universally slimmable"):
        set_channels(model, {"features.3": 24})


def test_tied_layers_form_one_group():
    groups = channel_groups(TinyResNet())
    assert [g.layers for g in groups] == [("stem", "conv2"), ("conv1",), ("head",)]
    assert groups[0].choices == (8, 16, 24, 32)


# ---- MACs and scoring ------------------------------------------------------------------------


def test_macs_match_a_real_forward_and_leave_the_model_alone():
    model = TinyResNet().train()
    state = _state(model)
    widths = channels_to_width(model, {"stem": 16, "conv2": 16, "conv1": 24, "head": 40})
    macs = count_macs(model, (3, 6, 6), widths)
    assert get_width(model) == 1.0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with set_width(model, widths):
        assert macs == _real_macs(model, torch.randn(2, 3, 6, 6))
    # and by hand: 3x3 convs on 6x6, a 1x1 conv, the classifier
    hw = 36
    by_hand = hw * 9 * (3 * 16 + 16 * 24 + 24 * 16) + hw * 16 * 40 + 40 * 4
    assert macs == by_hand


def test_batch_statistics_scores_without_changing_the_model():
    model = TinyResNet()
    model.eval()
    model.fc.train()  # a mixed state, to check that every module's mode comes back
    state = _state(model)
    batches = _synthetic_batches()
    with batch_statistics(model):
        assert all(m.training for m in model.modules() if isinstance(m, USBatchNorm2d))
        assert not model.fc.training
        acc, loss = evaluate(model, batches)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.fc.training and not model.training
    # the score is that of BN with batch statistics
    reference = TinyResNet()
    reference.load_state_dict(state)
    reference.train()
    with torch.no_grad():
        logits = [reference(x) for x, _ in batches]
    ys = torch.cat([y for _, y in batches])
    expected = F.cross_entropy(torch.cat(logits), ys).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert acc == pytest.approx((torch.cat(logits).argmax(1) == ys).double().mean().item())


def test_parse_macs():
    assert parse_macs("150M") == 150_000_000
    assert parse_macs("1.5G") == 1_500_000_000
    assert parse_macs("300k") == 300_000
    assert parse_macs(2e6) == 2_000_000
    assert parse_macs("50%", full_macs=1000) == 500
    for bad in ("fast", "-3M", "0"):
        with pytest.raises(ValueError):
            parse_macs(bad)
    with pytest.raises(ValueError, match="relative"):
        parse_macs("50%")


# ---- the search ------------------------------------------------------------------------------


def _search_tiny(targets=("80%", "50%", "30%"), metric="accuracy"):
    model = TinyResNet()
    batches = _synthetic_batches()
    state = _state(model)
    result = autoslim(model, batches, list(targets), metric=metric)
    # the model comes back as it was
    assert get_width(model) == 1.0 and model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    return model, batches, result


def test_search_meets_targets_greedily_and_keeps_ties():
    model, batches, result = _search_tiny()
    assert [r.target for r in result.results] == ["80%", "50%", "30%"]
    size = tuple(result.input_size)
    assert size == (3, 6, 6)
    for r in result.results:
        assert r.macs <= r.target_macs
        assert r.channels["stem"] == r.channels["conv2"]
        assert count_macs(model, size, r.width_map) == r.macs
        with set_width(model, r.width_map):
            assert _out_channels(model, batches[0][0]) == r.channels
    # each step removes one channel group from one layer group, and MACs only go down
    macs = [s["macs"] for s in result.trace]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)
    assert result.trace[0]["macs"] == result.full_macs
    # replaying the trace: each result is one removal away from the path's configuration
    # before its step, and no trial of an earlier step met its target
    groups = {g.layers: g.choices for g in channel_groups(model)}
    path = [dict(result.trace[0]["channels"])]
    for s in result.trace[1:]:
        channels = dict(path[-1])
        for name in s["layers"]:
            assert s["channels"] < channels[name]
            channels[name] = s["channels"]
        path.append(channels)
    for r in result.results:
        parent = path[r.step - 1]
        changed = [g for g in groups if r.channels[g[0]] != parent[g[0]]]
        assert len(changed) == 1
        choices = groups[changed[0]]
        assert choices.index(r.channels[changed[0][0]]) == choices.index(parent[changed[0][0]]) - 1
        assert result.trace[r.step - 1]["macs"] > r.target_macs


@pytest.mark.parametrize("per_mac", [False, True])
def test_each_step_removes_what_hurts_least(per_mac):
    model = TinyResNet()
    batches = _synthetic_batches()
    result = autoslim(model, batches, ["70%"], metric="loss", per_mac=per_mac)
    start = dict(result.trace[0]["channels"])
    size = tuple(result.input_size)
    full_macs, full_loss = result.trace[0]["macs"], result.trace[0]["val_loss"]
    harm = {}
    for group in channel_groups(model):
        smaller = group.choices[group.choices.index(start[group.layers[0]]) - 1]
        trial = start | dict.fromkeys(group.layers, smaller)
        with set_channels(model, trial), batch_statistics(model):
            loss = evaluate(model, batches)[1]
        saved = full_macs - count_macs(model, size, channels_to_width(model, trial))
        harm[group.layers] = (loss - full_loss) / (saved if per_mac else 1)
    best = min(harm, key=harm.get)
    assert tuple(result.trace[1]["layers"]) == best
    assert result.per_mac is per_mac


def test_targets_at_and_below_the_extremes():
    model = TinyResNet()
    batches = _synthetic_batches(n=1)
    result = autoslim(model, batches, ["100%"])
    assert result.results[0].step == 0
    assert result.results[0].channels == {"stem": 32, "conv2": 32, "conv1": 48, "head": 64}
    with pytest.raises(ValueError, match="fewest MACs this model reaches"):
        autoslim(model, batches, ["1%"])
    with pytest.raises(ValueError, match=r"\(input, target\) pairs"):
        autoslim(model, [torch.randn(4, 3, 6, 6)], ["50%"])
    with pytest.raises(ValueError, match="metric"):
        autoslim(model, batches, ["50%"], metric="speed")


def test_snet_search_moves_between_switches():
    model = create_model("s_small_cnn", num_classes=10, widths=(0.25, 0.5, 0.75, 1.0))
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))]
    result = autoslim(model, batches, ["40%"])
    knobs = width_knobs(model)
    for name, c in result.results[0].channels.items():
        assert c in {knobs[name].channels_at(w) for w in (0.25, 0.5, 0.75, 1.0)}


def test_result_json_round_trip(tmp_path):
    model, _, result = _search_tiny()
    path = result.save(tmp_path / "search.json")
    data = json.loads(path.read_text())
    assert data["format"] == "slimmable-search" and data["divisor"] == 8
    assert {"target_macs", "macs", "channels", "width_map", "val_accuracy", "val_loss"} <= set(
        data["results"][0]
    )
    again = read_search(path)
    assert again == result
    widths = load_search(path, "50%")
    assert widths == result.width_map("50%") == again.width_map(result.result("50%").target_macs)
    set_width(model, widths)  # straight into set_width
    with pytest.raises(ValueError, match="has no result for target 10%.*80%"):
        load_search(path, "10%")
    with pytest.raises(ValueError, match="pick one with target="):
        load_search(path)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an AutoSlim search result"):
        read_search(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="slimmable search"):
        read_search(tmp_path / "missing.json")


# ---- searched networks -----------------------------------------------------------------------


def test_autoslim_small_cnn_builds_the_searched_channels():
    model = create_model("us_small_cnn", num_classes=10)
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,)))]
    result = autoslim(model, batches, ["45%"])
    channels = result.channels()
    net = create_model("autoslim_small_cnn", num_classes=10, channels=channels)
    x = torch.randn(2, 1, 8, 8)
    assert _out_channels(net.eval(), x) == channels
    assert all(layer.out_channels == channels[n] for n, layer in width_knobs(net).items())
    assert count_macs(net, (1, 8, 8)) == result.results[0].macs
    assert slimmable.width_choices(net) == (1.0,)
    # a list in layer order, and a slimmable variant around the searched channels
    as_list = create_model("autoslim_small_cnn", num_classes=10, channels=list(channels.values()))
    assert count_macs(as_list, (1, 8, 8)) == result.results[0].macs
    us = create_model("autoslim_small_cnn", channels=channels, width_range=(0.5, 1.0))
    assert slimmable.width_bounds(us) == (0.5, 1.0)
    with pytest.raises(ValueError, match="no layer of this architecture"):
        create_model("autoslim_small_cnn", channels={"features.1": 8})
    with pytest.raises(ValueError, match="this architecture has 3"):
        create_model("autoslim_small_cnn", channels=[8, 8])


# ---- real data: digits -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_us_cnn():
    """A US small CNN trained on sklearn digits with the sandwich rule (a few seconds)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    g = torch.Generator().manual_seed(0)
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    train, held, test = (x[:1200], y[:1200]), (x[1200:1456], y[1200:1456]), (x[1456:], y[1456:])
    torch.manual_seed(0)
    rng = random.Random(0)
    model = create_model("us_small_cnn", num_classes=10, width_range=(0.25, 1.0))
    epochs, batch = 10, 64
    steps = epochs * (len(train[0]) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(train[0]), generator=g)
        for i in range(len(train[0]) // batch):
            idx = order[i * batch : (i + 1) * batch]
            xb, yb = train[0][idx], train[1][idx]
            opt.zero_grad()
            for w in [1.0, 0.25, rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.0)]:
                set_width(model, w)
                out = model(xb)
                if w == 1.0:
                    loss, soft = F.cross_entropy(out, yb), out.softmax(1).detach()
                else:  # in-place distillation
                    loss = -(soft * out.log_softmax(1)).sum(1).mean()
                loss.backward()
            opt.step()
            sched.step()
    set_width(model, 1.0)
    return model, train, held, test


def _test_accuracy(model, width, train, test):
    calibrate(model, [train[0][:512]], [width])
    model.eval()
    with torch.no_grad(), set_width(model, width):
        return (model(test[0]).argmax(1) == test[1]).float().mean().item()


def test_searched_network_keeps_its_accuracy_on_digits(digits_us_cnn):
    model, train, held, test = digits_us_cnn
    uniform = 0.5
    target = count_macs(model, (1, 8, 8), uniform)
    result = autoslim(model, [held], [target])
    found = result.results[0]
    assert found.macs <= target
    # what the search recorded is what the network scores on the held-out images
    with set_width(model, found.width_map), batch_statistics(model):
        assert evaluate(model, [held]) == pytest.approx((found.val_accuracy, found.val_loss))
    # on the test images, with calibrated BN, it is about as accurate as the uniform width
    # with at least its MACs (one digit is 0.3% of 341: the multi-seed comparison lives in
    # benchmarks/autoslim_digits.py and docs/autoslim.md)
    searched_acc = _test_accuracy(model, found.width_map, train, test)
    uniform_acc = _test_accuracy(model, uniform, train, test)
    smallest_acc = _test_accuracy(model, 0.25, train, test)
    assert searched_acc >= uniform_acc - 0.02, (searched_acc, uniform_acc)
    assert searched_acc >= smallest_acc - 0.01, (searched_acc, smallest_acc)


def test_build_at_channels_rebuilds_any_architecture():
    from slimmable.models.autoslim import build_at_channels
    from slimmable.models.kit import make_kit
    from slimmable.models.small_cnn import SmallCNN

    model = TinyResNet()
    result = autoslim(model, _synthetic_batches(n=1), ["40%"])
    channels = result.channels()
    net = build_at_channels(TinyResNet(), channels, (3, 6, 6))
    assert all(m.out_channels == channels[n] for n, m in width_knobs(net).items())
    assert net.bn0.num_features == channels["stem"] and net.fc.in_features == channels["head"]
    assert count_macs(net, (3, 6, 6)) == result.results[0].macs
    net.train()(torch.randn(2, 3, 6, 6)).sum().backward()
    # a plain reference gives the same network as the setting-based autoslim_small_cnn
    wanted = {"features.0": 16, "features.3": 40, "features.6": 72}
    plain = build_at_channels(SmallCNN(make_kit(widths=(1.0,)), 10, 1), wanted, (1, 8, 8))
    direct = create_model("autoslim_small_cnn", num_classes=10, channels=wanted)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in direct.state_dict().items()
    }
    with pytest.raises(ValueError, match="has 32 channels; it cannot build 40"):
        build_at_channels(TinyResNet(), {"stem": 40, "conv2": 40}, (3, 6, 6))


# ---- command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def us_checkpoint(tmp_path_factory):
    """A US small CNN trained on digits for one epoch by `slimmable train`."""
    from slimmable.cli import main

    root = tmp_path_factory.mktemp("search_cli")
    cfg = root / "us.yaml"
    cfg.write_text(
        "model: {name: us_small_cnn, width_range: [0.25, 1.0]}\n"
        "data: {holdout: 200}\n"
        "train: {mode: universal, epochs: 1, batch_size: 128, progress: false, threads: 1}\n"
        "calibrate: {images: 256}\neval: {widths: [1.0], every: 0}\n"
    )
    assert main(["train", str(cfg), "--out", str(root / "run")]) == 0
    return root / "run" / "checkpoint.pt"


def test_search_command_writes_json_for_the_other_tools(us_checkpoint, tmp_path, capsys):
    from slimmable.cli import main
    from slimmable.run import load_model

    out = tmp_path / "search.json"
    args = ["search", str(us_checkpoint), "--targets", "300k,50%", "--batches", "2"]
    assert main([*args, "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "300k" in printed and "50%" in printed
    result = read_search(out)
    assert result.model == "us_small_cnn" and result.input_size == [1, 8, 8]
    assert result.num_images == 128
    assert [r.target for r in result.results] == ["50%", "300k"]  # 50% is 304.8k
    model = load_model(us_checkpoint)
    for r in result.results:
        assert r.macs <= r.target_macs
        assert slimmable.profile(model, (1, 8, 8), [r.width_map]).widths[0].macs == r.macs
    calibrate(model, [torch.randn(64, 1, 8, 8)], [load_search(out, "50%")])
    with set_width(model, load_search(out, "50%")):
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    net = create_model("autoslim_small_cnn", num_classes=10, channels=result.channels("300k"))
    assert count_macs(net, (1, 8, 8)) == result.result("300k").macs


def test_search_result_feeds_eval_extract_and_export(us_checkpoint, tmp_path, capsys):
    import json

    from slimmable.cli import main
    from slimmable.run import load_model

    out = tmp_path / "search.json"
    args = ["search", str(us_checkpoint), "--targets", "50%", "--batches", "1"]
    assert main([*args, "--batch-size", "64", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    # eval: the searched configuration as a nonuniform width, calibrated first
    assert main(["eval", str(us_checkpoint), "--widths", "1.0", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["widths"]
    assert rows[0]["width"] == 1.0 and rows[1]["width"] is None
    assert rows[1]["width_map"] == load_search(out)
    assert rows[1]["macs"] == read_search(out).result().macs < rows[0]["macs"]
    assert 0.0 <= rows[1]["top1"] <= rows[1]["top5"] <= 1.0
    # extract_subnet: the same outputs as the slimmable model at that configuration
    model = load_model(us_checkpoint)
    widths = load_search(out)
    x = torch.randn(4, 1, 8, 8)
    calibrate(model, [torch.randn(64, 1, 8, 8)], [widths])
    net = slimmable.extract_subnet(model, widths, input_size=(1, 8, 8))
    with torch.no_grad(), set_width(model.eval(), widths):
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-5)
    # export accepts the map as a JSON file, once `slimmable calibrate` stored its statistics
    (tmp_path / "map.json").write_text(json.dumps(widths))
    onnx_out = tmp_path / "net.onnx"
    export = ["export", str(tmp_path / "run.pt"), "--width", str(tmp_path / "map.json")]
    (tmp_path / "run.pt").write_bytes(us_checkpoint.read_bytes())
    assert main([*export, "--out", str(onnx_out)]) == 2  # no statistics for this map yet
    assert "calibrat" in capsys.readouterr().err
    calibrate_cli = ["calibrate", str(tmp_path / "run.pt"), "--widths", str(tmp_path / "map.json")]
    assert main([*calibrate_cli, "--images", "64"]) == 0  # what export's error says to run
    assert main([*calibrate_cli[:3], f"{out}@50%", "--images", "64"]) == 0  # the same map
    assert main([*export, "--out", str(onnx_out)]) == 0
    assert "verified" in capsys.readouterr().out


def test_search_command_errors_are_one_line(us_checkpoint, tmp_path, capsys):
    from slimmable.cli import main

    assert main(["search", str(us_checkpoint), "--targets", "fast"]) == 2
    assert "cannot read 'fast' as a count" in capsys.readouterr().err
    assert main(["search", str(us_checkpoint), "--targets", "1k", "--batches", "1"]) == 2
    assert "below the fewest MACs" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "none.pt"), "--targets", "1M"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("autoslim_mobilenet_v1", {"150M": 150e6, "325M": 325e6, "572M": 572e6}),
        ("autoslim_resnet50", {"570M": 570e6, "1G": 1000e6, "2G": 2006e6, "3G": 3005e6}),
    ],
)
def test_published_autoslim_networks_have_the_authors_macs(name, labels):
    # the authors label each channel list with its MACs (2006M and 3005M in their comments)
    for key, macs in labels.items():
        with torch.device("meta"):
            net = create_model(name, channels=key)
        assert abs(count_macs(net, (3, 224, 224)) - macs) <= 0.002 * macs, key


def test_autoslim_mobilenet_v2_and_resnet50_build_searched_channels():
    for searched_name, name, size, kwargs in [
        ("us_mobilenet_v2_cifar", "autoslim_mobilenet_v2", (3, 32, 32), {"cifar": True}),
        ("us_resnet50", "autoslim_resnet50", (3, 224, 224), {}),
    ]:
        with torch.device("meta"):
            searched = create_model(searched_name, num_classes=10)
            groups = channel_groups(searched)
            # a nonuniform configuration: every other layer group one step below full
            channels = {
                layer: g.choices[-1 - (i % 2)] for i, g in enumerate(groups) for layer in g.layers
            }
            net = create_model(name, num_classes=10, channels=channels, **kwargs)
        assert {n: m.out_channels for n, m in width_knobs(net).items()} == channels
        widths = channels_to_width(searched, channels)
        assert count_macs(net, size) == count_macs(searched, size, widths)
