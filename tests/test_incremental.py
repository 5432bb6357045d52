"""train.mode=incremental: the narrowest width first, then each wider one with the narrower
ones' channels frozen (the S-Nets paper's incremental baseline)."""

from __future__ import annotations

import pytest
import torch

import slimmable
from slimmable.data import build_datasets
from slimmable.run import load_model
from slimmable.train.incremental import used_slices

CONFIG = {
    "model": {"name": "small_cnn", "widths": [0.5, 1.0]},
    "data": {"augment": "none"},
    "train": {"mode": "incremental", "epochs": 1, "batch_size": 128, "lr": 0.1},
    "eval": {"every": 1},
}
CONFIG["train"].update(progress=False, threads=1)
STEPS = 1438 // 128  # one epoch per width


def test_frozen_channels_do_not_change_while_later_widths_train(tmp_path):
    first = slimmable.train(CONFIG, tmp_path / "run", stop_after_steps=STEPS)  # width 0.5 done
    assert not first.finished
    narrow = {k: v.clone() for k, v in first.model.state_dict().items()}
    _, test, _ = build_datasets("digits")
    x = torch.stack([test[i][0] for i in range(64)])
    model = load_model(tmp_path / "run")
    with torch.no_grad(), slimmable.set_width(model, 0.5):
        before = model(x)
    blocks = used_slices(model, 0.5, x)
    assert blocks["features.0.weight"] == (16, 1) and blocks["classifier.weight"] == (10, 64)

    done = slimmable.train(CONFIG, tmp_path / "run", resume=True)  # width 1.0, 0.5 frozen
    assert done.finished
    after = done.model.state_dict()
    moved = 0
    for name, block in blocks.items():
        index = tuple(slice(0, n) for n in block)
        assert torch.equal(after[name][index], narrow[name][index]), name  # frozen
        moved += not torch.equal(after[name], narrow[name])  # its new channels trained
    assert moved >= len(blocks) - 1  # every layer grew (the classifier's bias is all frozen)
    for name in narrow:  # the narrow width's private BN is never run again
        if ".bn.0." in name:
            assert torch.equal(after[name], narrow[name]), name
    final = load_model(tmp_path / "run")
    with torch.no_grad(), slimmable.set_width(final, 0.5):
        assert torch.equal(final(x), before)  # the narrow network computes what it did
    losses = [set(row["train_loss"]) for row in done.metrics]
    assert losses == [{"0.5"}, {"1"}]  # one width per stage, narrowest first
    accuracy = {r["width"]: r["top1"] for r in done.results}
    assert accuracy[1.0] > 0.5 and accuracy[0.5] == first.results[0]["top1"]


def test_incremental_needs_two_widths_and_private_bn(tmp_path):
    one = {**CONFIG, "model": {"name": "small_cnn", "widths": [1.0]}}
    with pytest.raises(ValueError, match="at least two widths"):
        slimmable.train(one, tmp_path / "one")
    shared = {**CONFIG, "model": {"name": "small_cnn", "widths": [0.5, 1.0], "kwargs": {}}}
    shared["model"]["kwargs"]["norm"] = "shared"
    with pytest.raises(ValueError, match="private BN per width"):
        slimmable.train(shared, tmp_path / "shared")
