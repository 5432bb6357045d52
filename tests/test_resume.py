"""A stopped run, resumed, ends bitwise equal to the run that never stopped (CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from slimmable.checkpoint import load_checkpoint, save_checkpoint
from slimmable.train import config_from_dict, train


def config(**train_overrides):
    return config_from_dict(
        {
            "model": {"name": "us_small_cnn", "width_range": [0.25, 1.0]},
            "train": {
                "mode": "universal",
                "epochs": 2,
                "batch_size": 128,  # 11 steps per epoch
                "nonuniform": True,
                "label_smoothing": 0.1,
                "warmup_epochs": 0.5,
                "progress": False,
                "threads": 1,
                **train_overrides,
            },
            "calibrate": {"images": 256},
            "eval": {"widths": [0.25, 0.5, 1.0], "every": 1},
        }
    )


def _metrics(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # wall-clock fields differ between runs
        del row["seconds"], row["images_per_s"]
    return rows


def _assert_same_run(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    ca, cb = load_checkpoint(a.checkpoint), load_checkpoint(b.checkpoint)
    for sa_, sb_ in zip(
        ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(sa_["momentum_buffer"], sb_["momentum_buffer"])
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    assert torch.equal(ca["rng"]["widths"]["generator"], cb["rng"]["widths"]["generator"])
    assert ca["step"] == cb["step"] == 22
    assert a.results == b.results
    assert _metrics(a.out_dir) == _metrics(b.out_dir)
    assert json.loads((a.out_dir / "eval.json").read_text()) == json.loads(
        (b.out_dir / "eval.json").read_text()
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return train(config(), tmp_path_factory.mktemp("straight"))


@pytest.mark.parametrize("stop", [11, 15], ids=["epoch-boundary", "mid-epoch"])
def test_resume_is_bitwise_equal(tmp_path, straight, stop):
    first = train(config(), tmp_path, stop_after_steps=stop)
    assert not first.finished
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == stop and not ckpt["finished"]
    assert ckpt["rng"]["loader"] == {"seed": 0, "epoch": stop // 11, "batch": stop % 11}
    assert len(ckpt["metrics"]) == stop // 11  # the first epoch's row when it completed
    resumed = train(config(), tmp_path, resume=True)
    assert resumed.finished
    _assert_same_run(straight, resumed)


def test_a_different_seed_gives_a_different_run(tmp_path, straight):
    other = train(config(seed=1), tmp_path)
    sa, sb = straight.model.state_dict(), other.model.state_dict()
    assert not all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_refuses_a_changed_config(tmp_path):
    train(config(), tmp_path, stop_after_steps=3)
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in train\.lr"):
        train(config(lr=0.5), tmp_path, resume=True)


def test_resume_of_a_run_saved_before_a_config_key_existed(tmp_path):
    """A key added later (here the distillation options) takes its default on resume."""
    train(config(), tmp_path, stop_after_steps=3)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    for key in ("distill_temperature", "distill_warmup_epochs"):
        del ckpt["config"]["train"][key]
    save_checkpoint(tmp_path / "checkpoint.pt", ckpt)
    assert train(config(), tmp_path, resume=True).finished
    with pytest.raises(ValueError, match=r"differs from the checkpoint's in train\.distill_temp"):
        train(config(distill_temperature=2.0), tmp_path, resume=True)


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(config(), tmp_path / "empty", resume=True)
