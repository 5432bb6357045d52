"""Opening runs: one module below the trainer and the commands, one rebuild of a model, one MAC
counter and one number formatter for everyone."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

import slimmable
from slimmable.checkpoint import load_checkpoint, save_checkpoint
from slimmable.cli import main
from slimmable.run import build_model_from_spec, load_model, model_from_checkpoint, open_run
from slimmable.units import format_count

SRC = Path(__file__).resolve().parents[1] / "src" / "slimmable"
TINY = [
    "--set", "train.epochs=1",
    "--set", "train.batch_size=128",
    "--set", "train.progress=false",
    "--set", "train.threads=1",
    "--set", "calibrate.images=256",
    "--set", "eval.every=0",
]  # fmt: skip


@pytest.fixture(scope="module")
def us_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    cfg = root / "us.yaml"
    cfg.write_text(
        "model: {name: us_small_cnn, width_range: [0.25, 1.0]}\n"
        "data: {holdout: 200}\n"
        "train: {mode: universal}\n"
        "eval: {widths: [0.25, 0.6, 1.0]}\n"
    )
    assert main(["train", str(cfg), "--out", str(root / "us"), *TINY]) == 0
    return root / "us"


def _imports(path: Path) -> set[str]:
    """Absolute names of the slimmable modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            names.add(name)
            names.update(f"{name}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("slimmable")}


def test_load_model_returns_the_trained_calibrated_model(us_run):
    for path in (us_run, us_run / "checkpoint.pt"):  # a run folder or its checkpoint
        model = slimmable.load_model(path)
        assert not model.training
        assert slimmable.calibrated_widths(model) == [0.25, 0.6, 1.0]
    ckpt = load_checkpoint(us_run / "checkpoint.pt")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad(), slimmable.set_width(model, 0.6):
        expected = model(x)
    rebuilt = build_model_from_spec(ckpt["model"])
    rebuilt.load_state_dict(ckpt["state_dict"])
    with torch.no_grad(), slimmable.set_width(rebuilt.eval(), 0.6):
        assert torch.equal(rebuilt(x), expected)


def test_open_run_gives_what_commands_need(us_run):
    run = open_run(us_run)
    assert run.name == "us_small_cnn" and run.path == us_run / "checkpoint.pt"
    assert run.eval_widths() == [0.25, 0.6, 1.0]
    assert run.input_size == (1, 8, 8)
    assert run.config.data.holdout == 200
    assert len(run.data.holdout) == 200 and len(run.data.train) == 1438 - 200
    assert run.calibration_batches().num_images == 256
    assert run.widths("0.3,0.5") == [0.3, 0.5]


def test_evaluation_and_commands_never_import_the_trainer():
    """Below the trainer: the run module, evaluation, calibration, profile, export, search and
    every command but ``train``."""
    below = [p for p in SRC.rglob("*.py") if "train" not in p.relative_to(SRC).parts[0]]
    below = [p for p in below if p.name != "__init__.py" or p.parent != SRC]
    assert SRC / "run.py" in below and SRC / "cli" / "eval.py" in below
    for path in below:
        if path.name == "train.py" and path.parent.name == "cli":
            continue
        bad = {n for n in _imports(path) if n.startswith("slimmable.train")}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_one_mac_counter_one_formatter_one_width_parser():
    """FlopCounterMode, the count formatter and the width grammar each live in one module."""
    uses = {
        "FlopCounterMode": {"profile.py"},
        "def format_count": {"units.py"},
        "def parse_widths": {"widthspec.py"},
        "def _grid": {"widthspec.py"},
    }
    for needle, homes in uses.items():
        found = {p.name for p in SRC.rglob("*.py") if needle in p.read_text()}
        assert found == homes, (needle, found)
    assert not (SRC / "train" / "loader.py").exists()  # one loader module: slimmable.data.loader
    assert not (SRC / "search" / "macs.py").exists()


def test_every_table_prints_the_same_count(us_run, capsys):
    assert main(["eval", str(us_run), "--json"]) == 0
    macs = json.loads(capsys.readouterr().out)["widths"][-1]["macs"]
    printed = format_count(macs)
    assert main(["eval", str(us_run)]) == 0
    assert printed in capsys.readouterr().out.splitlines()[-1]
    assert main(["profile", str(us_run), "--widths", "1.0"]) == 0
    assert printed in capsys.readouterr().out.splitlines()[-1]
    model = load_model(us_run)
    assert slimmable.count_macs(model, (1, 8, 8), 1.0) == macs
    assert slimmable.profile(model, 8, [1.0]).widths[0].macs == macs


def test_a_state_dict_mismatch_names_the_keys(tmp_path, capsys):
    model = slimmable.create_model("us_small_cnn", num_classes=10, in_chans=1)
    state = model.state_dict()
    state.pop("features.0.weight")
    state["extra.weight"] = torch.zeros(1)
    state["classifier.weight"] = torch.zeros(3, 3)
    spec = {"name": "us_small_cnn", "kwargs": {"num_classes": 10, "in_chans": 1}}
    with pytest.raises(ValueError) as err:
        model_from_checkpoint({"model": spec, "state_dict": state})
    message = str(err.value)
    assert "missing features.0.weight" in message and "unexpected extra.weight" in message
    assert "mis-shaped classifier.weight [3, 3]" in message
    path = save_checkpoint(tmp_path / "bad.pt", {"model": spec, "state_dict": state})
    assert main(["eval", str(path)]) == 2
    err_text = capsys.readouterr().err
    assert "missing features.0.weight" in err_text and len(err_text.splitlines()) == 1


def test_trainer_eval_and_calibrate_share_one_calibration_path(us_run, tmp_path, capsys):
    """The run trained with augmentation; its stored statistics are those of the run's
    calibration batches (eval-style images), which `slimmable calibrate` recomputes."""
    from slimmable.layers import USBatchNorm2d

    def statistics(model):  # (layer, width key) -> calibrated mean and variance
        return {
            (name, key): (bn.calib_mean[i], bn.calib_var[i])
            for name, bn in model.named_modules()
            if isinstance(bn, USBatchNorm2d)
            for i, key in enumerate(bn.calibrated_keys())
        }

    run = open_run(us_run)
    assert run.config.data.augment == "standard"
    stored = statistics(run.model)
    assert {key for _, key in stored} == {250000, 600000, 1000000}
    fresh = load_model(us_run)
    slimmable.calibrate(fresh, run.calibration_batches(), [0.25, 0.6, 1.0])
    copy = tmp_path / "copy.pt"
    copy.write_bytes((us_run / "checkpoint.pt").read_bytes())
    assert main(["calibrate", str(copy), "--widths", "0.6", "--no-progress"]) == 0
    assert "256 training images" in capsys.readouterr().err
    for model in (fresh, load_model(copy)):
        again = statistics(model)
        assert again.keys() == stored.keys()
        for key, (mean, var) in again.items():
            torch.testing.assert_close(mean, stored[key][0], rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(var, stored[key][1], rtol=1e-6, atol=1e-7)


def test_the_authors_weights_in_eval_calibrate_export_and_select(tmp_path, capsys):
    """--official PATH --model NAME with the data set on the command line."""
    import numpy as np
    from official_data import load_fixture, synthetic_state_dict

    theirs = synthetic_state_dict(load_fixture("us_mobilenet_v2")["keys"])
    weights = tmp_path / "us_mobilenet_v2.pt"
    torch.save({"model": {f"module.{k}": v for k, v in theirs.items()}}, weights)
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 255, (48, 3, 32, 32), dtype=np.uint8),
        "y_train": np.arange(48) % 10,
        "x_test": rng.integers(0, 255, (20, 3, 32, 32), dtype=np.uint8),
        "y_test": np.arange(20) % 10,
    }
    np.savez(tmp_path / "data.npz", **arrays)
    official = ["--official", str(weights), "--model", "us_mobilenet_v2"]
    data = ["--data", "npz", "--data-path", str(tmp_path / "data.npz")]
    # eval: 0.5 is one of their calibrated widths, 0.42 is calibrated here on the npz images
    assert main(["eval", *official, *data, "--widths", "0.5,0.42", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["widths"]
    assert [r["width"] for r in rows] == [0.5, 0.42] and "calibrating 1 widths" in captured.err
    assert all(0.0 <= r["top1"] <= r["top5"] <= 1.0 and r["macs"] > 0 for r in rows)
    (tmp_path / "eval.json").write_text(json.dumps({"widths": rows}))
    # calibrate: a slimmable checkpoint of their weights, with 0.42's statistics stored
    out = tmp_path / "theirs.pt"
    args = ["calibrate", *official, *data, "--widths", "0.42", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    again = ["eval", str(out), "--widths", "0.42", "--uncalibrated", "error", "--json"]
    assert main(again) == 0
    assert json.loads(capsys.readouterr().out)["widths"][0]["top1"] == rows[1]["top1"]
    # export and select need no data set (the classes then come from --num-classes)
    official += ["--num-classes", "10"]
    onnx = tmp_path / "half.pt2"
    export = ["export", *official, "--width", "0.5", "--input-size", "3,32,32"]
    assert main([*export, "--out", str(onnx)]) == 0 and onnx.is_file()
    assert "verified" in capsys.readouterr().out
    select = ["select", *official, "--eval", str(tmp_path / "eval.json")]
    assert main([*select, "--max-macs", str(rows[1]["macs"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["width"] == 0.42
    # without --model, or without a data set to evaluate on: one line naming the fix
    assert main(["eval", "--official", str(weights)]) == 2
    assert "--official needs --model NAME" in capsys.readouterr().err
    assert main(["eval", *official, "--widths", "0.5"]) == 2
    assert "--data NAME" in capsys.readouterr().err


def test_autoslim_scores_on_images_training_never_saw(us_run, tmp_path, capsys):
    ckpt = load_checkpoint(us_run / "checkpoint.pt")
    held = ckpt["holdout"].tolist()
    assert len(held) == 200 == len(set(held))
    assert ckpt["step"] == (1438 - 200) // 128  # the trainer's epoch is the rest
    run = open_run(us_run)
    assert run.data.holdout_indices == held
    assert not set(run.data.train.indices) & set(held)
    search = ["search", str(us_run), "--targets", "50%", "--batches", "1", "--batch-size", "64"]
    out = tmp_path / "s.json"
    assert main([*search, "--out", str(out), "--no-progress"]) == 0
    assert "scored on 64 held-out training images" in capsys.readouterr().out
    assert slimmable.read_search(out).scored_on == {"split": "holdout", "images": 64, "seed": 0}
    # a run that held nothing out is refused, unless told to score on training images
    ckpt["config"]["data"]["holdout"] = 0
    bare = save_checkpoint(tmp_path / "bare.pt", ckpt)
    search[1] = str(bare)
    assert main([*search, "--out", str(tmp_path / "b.json")]) == 2
    assert "data.holdout" in capsys.readouterr().err
    assert main([*search, "--out", str(tmp_path / "b.json"), "--split", "train"]) == 0
    assert "training images the run trained on" in capsys.readouterr().out
    assert main([*search, "--out", str(tmp_path / "b.json"), "--split", "train"]) == 2
    assert "exists; give --overwrite" in capsys.readouterr().err  # never overwrites a result
