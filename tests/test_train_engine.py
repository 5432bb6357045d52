"""The training engine's parts and one exact step of Algorithm 1 with in-place distillation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimmable import USBatchNorm2d, USConv2d, create_model, set_width
from slimmable.checkpoint import load_checkpoint
from slimmable.data import build_datasets
from slimmable.data.loader import EpochSampler, batch_seed, epoch_seed
from slimmable.layers import SwitchableBatchNorm2d
from slimmable.models.kit import make_kit
from slimmable.models.small_cnn import SmallCNN
from slimmable.run import load_model
from slimmable.train import (
    Schedule,
    WidthSampler,
    World,
    config_from_dict,
    param_groups,
    soft_cross_entropy,
    train,
)
from slimmable.train.engine import build_model, cpu_threads


def tiny(mode: str = "universal", **sections) -> object:
    """A config that trains in about a second on digits."""
    data = {
        "model": {"name": "small_cnn"},
        "train": {"mode": mode, "epochs": 1, "progress": False, "threads": 1},
        "calibrate": {"images": 256},
        "eval": {"every": 0},
    }
    if mode == "universal":
        data["model"]["width_range"] = [0.25, 1.0]
        data["eval"]["widths"] = [0.25, 0.6, 1.0]
    else:
        data["model"]["widths"] = [0.25, 0.5, 1.0]
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


# ---- schedules -------------------------------------------------------------------------------
def test_schedules_follow_their_formulas():
    kw = {"base_lr": 1.0, "total_steps": 100, "steps_per_epoch": 10}
    cos = Schedule("cosine", min_lr=0.1, **kw)
    assert cos(0) == pytest.approx(1.0)
    assert cos(50) == pytest.approx(0.55)
    assert cos(100) == pytest.approx(0.1)
    lin = Schedule("linear", **kw)
    assert [lin(s) for s in (0, 25, 100)] == pytest.approx([1.0, 0.75, 0.0])
    step = Schedule("multistep", milestones=(3, 6), gamma=0.1, **kw)
    assert [step(s) for s in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )
    exp = Schedule("exponential", gamma=0.5, **kw)
    assert [exp(s) for s in (0, 10, 15)] == pytest.approx([1.0, 0.5, 0.5**1.5])


def test_warmup_rises_linearly_then_hands_over():
    s = Schedule("cosine", base_lr=0.4, total_steps=100, steps_per_epoch=10, warmup_steps=20)
    assert [s(i) for i in (0, 9, 19)] == pytest.approx([0.02, 0.2, 0.4])
    assert s(20) == pytest.approx(0.4)  # the cosine starts at the peak
    assert s(60) == pytest.approx(0.2)  # half-way through the cosine part
    assert s(99) < s(60)


# ---- parameter groups and losses -------------------------------------------------------------
def test_no_weight_decay_on_depthwise_bn_and_biases():
    kw = {"width_range": (0.25, 1.0)}
    model = nn.Sequential(
        USConv2d(3, 16, 3, padding=1, bias=False, fixed_in=True, **kw),
        USBatchNorm2d(16),
        USConv2d(16, 16, 3, padding=1, bias=False, depthwise=True, **kw),
        nn.Conv2d(16, 8, 1, bias=True),
        nn.Linear(8, 4),
    )
    decay, no_decay = param_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(model[0].weight), id(model[3].weight), id(model[4].weight)}
    assert ids(no_decay) == {
        id(p)
        for p in (model[1].weight, model[1].bias, model[2].weight, model[3].bias, model[4].bias)
    }


def test_soft_cross_entropy_matches_torch_with_probability_targets():
    torch.manual_seed(0)
    logits, teacher = torch.randn(6, 5), torch.randn(6, 5).softmax(1)
    expected = F.cross_entropy(logits, teacher)
    assert torch.allclose(soft_cross_entropy(logits, teacher), expected)
    onehot = F.one_hot(torch.arange(6) % 5, 5).float()
    assert torch.allclose(
        soft_cross_entropy(logits, onehot), F.cross_entropy(logits, torch.arange(6) % 5)
    )


# ---- widths of a step ------------------------------------------------------------------------
class TiedCNN(SmallCNN):
    """A small CNN declaring its first two convs as one channel group (as a residual would)."""

    def channel_groups(self) -> list[list[str]]:
        return [["features.0", "features.3"]]


def test_sandwich_rule_largest_smallest_and_uniform_samples():
    model = create_model("us_small_cnn", width_range=(0.3, 0.9))
    sampler = WidthSampler(model, "universal", num_sample_widths=5, seed=1)
    draws = [sampler() for _ in range(50)]
    for widths in draws:
        assert len(widths) == 5 and widths[:2] == [0.9, 0.3]
        assert all(0.3 <= w <= 0.9 for w in widths[2:])
    middle = [w for widths in draws for w in widths[2:]]
    assert len(set(middle)) == len(middle)  # continuous, never the same twice
    assert 0.5 < sum(middle) / len(middle) < 0.7  # uniform over [0.3, 0.9]: mean 0.6
    again = WidthSampler(model, "universal", num_sample_widths=5, seed=1)
    assert [again() for _ in range(50)] == draws


def test_nonuniform_samples_respect_channel_groups():
    model = TiedCNN(make_kit(width_range=(0.25, 1.0)))
    sampler = WidthSampler(model, "universal", 4, nonuniform=True, seed=0)
    x = torch.randn(2, 1, 8, 8)
    for _ in range(10):
        widths = sampler()
        assert widths[:2] == [1.0, 0.25]
        for per_layer in widths[2:]:
            assert set(per_layer) == {"features.0", "features.3", "features.6"}
            assert per_layer["features.0"] == per_layer["features.3"]
            with set_width(model, per_layer), torch.no_grad():  # ties hold, widths in range
                assert model(x).shape == (2, 10)
    maps = [m for _ in range(10) for m in sampler()[2:]]
    assert any(m["features.0"] != m["features.6"] for m in maps)


def test_slimmable_mode_runs_every_switch_largest_first():
    model = create_model("s_small_cnn", widths=(0.25, 0.5, 0.75, 1.0))
    assert WidthSampler(model, "slimmable")() == [1.0, 0.75, 0.5, 0.25]


def test_mode_and_model_must_match():
    with pytest.raises(ValueError, match="needs a universally slimmable model"):
        WidthSampler(create_model("s_small_cnn"), "universal")
    with pytest.raises(ValueError, match=r"model\.widths"):
        WidthSampler(create_model("us_small_cnn"), "slimmable")
    _, _, info = build_datasets("digits")
    cfg = config_from_dict({"train": {"mode": "individual"}, "model": {"widths": [0.5, 1.0]}})
    with pytest.raises(ValueError, match="one width alone"):
        build_model(cfg, info)
    cfg = config_from_dict({"train": {"mode": "universal"}, "model": {"widths": [0.5, 1.0]}})
    with pytest.raises(ValueError, match="width_range"):
        build_model(cfg, info)
    cfg = config_from_dict({"model": {"name": "small_cnm"}})
    with pytest.raises(ValueError, match="small_cnn"):
        build_model(cfg, info)
    cfg = tiny("slimmable", eval={"widths": [0.3]})
    with pytest.raises(ValueError, match=r"eval\.widths: width 0\.3 is not one of"):
        train(cfg, "/nonexistent/never-written")


def test_models_follow_the_mode_and_the_data():
    _, _, info = build_datasets("digits")
    naive, spec = build_model(tiny("naive"), info)
    assert spec["name"] == "s_small_cnn" and spec["kwargs"]["norm"] == "shared"
    assert not any(isinstance(m, SwitchableBatchNorm2d) for m in naive.modules())
    assert all(
        m.uncalibrated == "running" for m in naive.modules() if isinstance(m, nn.BatchNorm2d)
    )
    slim, spec = build_model(tiny("slimmable"), info)
    assert any(isinstance(m, SwitchableBatchNorm2d) for m in slim.modules())
    assert spec["kwargs"]["num_classes"] == 10 and spec["kwargs"]["in_chans"] == 1
    us, spec = build_model(tiny(model={"num_classes": 7}), info)
    assert spec["name"] == "us_small_cnn" and us(torch.randn(2, 1, 8, 8)).shape == (2, 7)


# ---- one exact step --------------------------------------------------------------------------
def test_one_step_is_algorithm_1_with_inplace_distillation(tmp_path):
    """Reproduce the engine's first step by hand: every width, largest first, one step."""
    cfg = tiny(
        "slimmable",
        train={"inplace_distill": True, "label_smoothing": 0.1, "weight_decay": 0.0, "lr": 0.05},
    )
    train_set, _, info = build_datasets("digits")
    torch.manual_seed(cfg.train.seed)
    model, _ = build_model(cfg, info)
    sampler = EpochSampler(len(train_set), cfg.train.seed, 0)
    idx = list(sampler)[: cfg.train.batch_size]
    train_set.seed_augmentation(batch_seed(cfg.train.seed, 0, 0))  # what the engine's loader does
    x = torch.stack([train_set[i][0] for i in idx])
    y = torch.tensor([train_set[i][1] for i in idx])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    model.train()
    teacher = None
    with cpu_threads(1):
        for w in (1.0, 0.5, 0.25):
            with set_width(model, w):
                logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y, label_smoothing=0.1)
                teacher = logits.detach().softmax(1)
            else:
                loss = F.cross_entropy(logits, teacher)
            loss.backward()
        opt.step()

    result = train(cfg, tmp_path / "run", stop_after_steps=1)
    assert not result.finished
    got = result.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.allclose(got[key].float(), value.float(), atol=1e-6), key


# ---- a whole run -----------------------------------------------------------------------------
def test_universal_run_writes_everything(tmp_path):
    cfg = tiny("universal", train={"epochs": 2}, eval={"every": 1})
    result = train(cfg, tmp_path / "run")
    out = tmp_path / "run"
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl", "eval.json"):
        assert (out / name).is_file(), name
    assert (out / "accuracy_vs_macs.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"1", "0.25", "random"} <= set(rows[0]["train_loss"])
    assert [e["width"] for e in rows[1]["eval"]] == [0.25, 0.6, 1.0]
    report = json.loads((out / "eval.json").read_text())
    assert [r["width"] for r in report["widths"]] == [0.25, 0.6, 1.0]
    macs = [r["macs"] for r in report["widths"]]
    assert macs == sorted(macs) and all(isinstance(m, int) for m in macs)
    assert all(0.0 <= r["top1"] <= r["top5"] <= 1.0 for r in report["widths"])
    assert result.results[-1]["top1"] > 0.8  # two epochs on digits: clearly learning
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["calibrated"] == [0.25, 0.6, 1.0]  # the trainer calibrated eval.widths
    assert ckpt["finished"] and ckpt["step"] == ckpt["epoch"] * 22 and ckpt["epoch"] == 2
    reloaded, trained = load_model(out / "checkpoint.pt"), result.model.eval()
    x = torch.stack([build_datasets("digits")[1][i][0] for i in range(4)])
    with torch.no_grad(), set_width(reloaded, 0.6), set_width(trained, 0.6):
        assert torch.equal(reloaded(x), trained(x))  # calibrated statistics travel along


@pytest.mark.parametrize("mode", ["slimmable", "naive", "individual"])
def test_s_modes_train(tmp_path, mode):
    overrides = {"model": {"widths": [0.5]}} if mode == "individual" else {}
    cfg = tiny(mode, train={"inplace_distill": mode == "slimmable"}, **overrides)
    result = train(cfg, tmp_path / mode)
    widths = [r["width"] for r in result.results]
    assert widths == ([0.5] if mode == "individual" else [0.25, 0.5, 1.0])
    assert all(math.isfinite(r["loss"]) for r in result.results)
    assert result.results[-1]["top1"] > 0.5  # one epoch: well above chance (0.1)


def test_cpu_threads_restores_the_setting():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before


def test_world_default_is_one_process():
    world = World()
    assert world.is_main and world.world_size == 1
    assert World(rank=1, world_size=2).is_main is False
    a = list(EpochSampler(10, 0, 3, rank=0, world_size=2))
    b = list(EpochSampler(10, 0, 3, rank=1, world_size=2))
    assert sorted(a + b) == list(range(10)) and len(a) == len(b) == 5
    assert list(EpochSampler(10, 0, 3, start=4)) == list(EpochSampler(10, 0, 3))[4:]
    assert epoch_seed(0, 1) != epoch_seed(1, 0)
