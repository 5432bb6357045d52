"""Checkpoints are written atomically and read without unpickling code."""

import pickle

import pytest
import torch

import slimmable
from slimmable.checkpoint import load_checkpoint, save_checkpoint
from slimmable.cli import main
from slimmable.run import load_model


def _payload(model):
    return {
        "model": {"name": "us_small_cnn", "kwargs": {"num_classes": 10}},
        "state_dict": model.state_dict(),
    }


def test_round_trip_keeps_calibrated_statistics(tmp_path):
    model = slimmable.create_model("us_small_cnn", num_classes=10)
    slimmable.calibrate(model, [torch.randn(8, 1, 8, 8)], widths=[0.25, 1.0])
    path = save_checkpoint(tmp_path / "ckpt.pt", _payload(model))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    reloaded = load_model(path)
    assert slimmable.calibrated_widths(reloaded) == [0.25, 1.0]
    x = torch.randn(2, 1, 8, 8)
    with (
        torch.no_grad(),
        slimmable.set_width(model.eval(), 0.25),
        slimmable.set_width(reloaded, 0.25),
    ):
        assert torch.equal(model(x), reloaded(x))


def test_failed_save_keeps_the_previous_file(tmp_path):
    model = slimmable.create_model("us_small_cnn", num_classes=10)
    path = save_checkpoint(tmp_path / "ckpt.pt", _payload(model))
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a lambda cannot be saved
        save_checkpoint(path, {"unpicklable": lambda: None})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_corrupt_and_foreign_files_are_one_line_errors(tmp_path, capsys):
    good = save_checkpoint(tmp_path / "good.pt", _payload(slimmable.create_model("us_small_cnn")))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(truncated)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "slimmable", "x": Evil()}))
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(evil)
    assert "code ran" not in capsys.readouterr().out  # weights_only: nothing executed

    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="load_official"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")

    assert main(["eval", str(truncated)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a readable checkpoint" in err
