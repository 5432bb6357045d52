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
