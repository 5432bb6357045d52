"""Every command trustworthy: what it refuses, what it says, what it never overwrites.

Each test here reproduces a defect found on review (issue 14, items 8 and 11-14) and checks the
fix: a one-line error naming the fix, no silent result, no lost run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import slimmable
from slimmable.checkpoint import load_checkpoint, save_checkpoint
from slimmable.cli import build_parser, main
from slimmable.config import config_from_dict, load_config
from slimmable.data import build_datasets

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = [
    "--set", "train.epochs=1",
    "--set", "train.batch_size=128",
    "--set", "train.progress=false",
    "--set", "train.threads=1",
    "--set", "calibrate.images=128",
    "--set", "eval.every=0",
]  # fmt: skip
S_CONFIG = "model: {name: small_cnn, widths: [0.5, 1.0]}\ntrain: {mode: slimmable}\n"


def one_line_error(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.fixture
def s_config(tmp_path) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(S_CONFIG)
    return str(path)


@pytest.fixture(scope="module")
def s_checkpoint(tmp_path_factory) -> Path:
    model = slimmable.create_model("s_small_cnn", num_classes=10, in_chans=1)
    spec = {"name": "s_small_cnn", "kwargs": {"num_classes": 10, "in_chans": 1}}
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    return save_checkpoint(path, {"model": spec, "state_dict": model.state_dict()})


# ---- item 8: modes, accuracies, model names --------------------------------------------------
@pytest.mark.parametrize("key", ["train.nonuniform=true", "train.num_sample_widths=3"])
@pytest.mark.parametrize("mode", ["slimmable", "naive", "individual"])
def test_snet_modes_refuse_what_belongs_to_universal(mode, key):
    with pytest.raises(ValueError, match=r"belongs to train\.mode=universal"):
        load_config(None, [f"train.mode={mode}", key])


def test_naive_with_a_us_model_names_the_family(tmp_path):
    from slimmable.train import build_model

    _, _, info = build_datasets("digits")
    cfg = config_from_dict({"train": {"mode": "naive"}, "model": {"name": "us_small_cnn"}})
    with pytest.raises(ValueError, match="family name small_cnn"):
        build_model(cfg, info)
    cfg = config_from_dict({"model": {"name": "s_small_cnn"}})  # universal
    with pytest.raises(ValueError, match="family name small_cnn"):
        build_model(cfg, info)


def test_select_reads_accuracies_as_fractions(tmp_path, capsys):
    percent = {"widths": [{"width": 0.5, "top1": 1.0, "macs": 10}, {"width": 1.0, "top1": 71.0}]}
    (tmp_path / "percent.json").write_text(json.dumps(percent))
    one_line_error(
        capsys,
        ["select", str(tmp_path / "percent.json"), "--max-macs", "1k"],
        "is not a fraction in [0, 1]",
    )
    perfect = {"widths": [{"width": 0.5, "top1": 1.0, "top5": 1.0, "macs": 10}]}
    (tmp_path / "eval.json").write_text(json.dumps(perfect))
    assert main(["select", str(tmp_path / "eval.json"), "--max-macs", "1k"]) == 0
    assert "top-1 100.00%" in capsys.readouterr().out


# ---- item 11: logs, progress flags, plots ----------------------------------------------------
def test_training_into_a_log_prints_a_line_per_epoch(s_config, tmp_path, capsys):
    argv = ["train", s_config, "--out", str(tmp_path / "run"), *TINY]
    assert main([*argv, "--set", "train.progress=true", "--set", "train.epochs=3"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out + err  # no progress-bar redraws outside a terminal
    epochs = [line for line in (out + err).splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1", "epoch 2", "epoch 3"]


@pytest.mark.parametrize("command", ["eval", "calibrate", "search"])
def test_one_spelling_of_the_progress_flag(command):
    parser = build_parser()
    extra = {"calibrate": ["--widths", "0.5"], "search": ["--targets", "1M"]}.get(command, [])
    for flag, value in (("--progress", True), ("--no-progress", False)):
        args = parser.parse_args([command, "run.pt", *extra, flag])
        assert args.progress is value
    assert parser.parse_args([command, "run.pt", *extra]).progress is None  # a terminal decides


def test_plot_labels_never_overlap_and_small_spreads_stay_small():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimmable.plot import draw_accuracy

    rows = [  # 0.33 / 0.4 and 0.85 / 0.9 sit on each other; accuracies span one point
        {"width": w, "macs": m, "top1": a}
        for w, m, a in [
            (0.25, 41e3, 0.9694), (0.33, 99e3, 0.9777), (0.4, 106e3, 0.9749),
            (0.5, 157e3, 0.9805), (0.85, 503e3, 0.9805), (0.9, 503e3, 0.9805),
            (1.0, 609e3, 0.9889),
        ]
    ]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        drawn = draw_accuracy(ax, {"universal": rows})
        renderer = fig.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in drawn]
        for i, a in enumerate(boxes):
            assert not any(a.overlaps(b) for b in boxes[i + 1 :]), [t.get_text() for t in drawn]
        texts = {t.get_text() for t in drawn}
        assert {"0.25", "1"} <= texts and not {"0.85", "0.9"} <= texts
        lo, hi = ax.get_ylim()
        assert hi - lo >= 5.0 and lo <= 96.94 and hi >= 98.89
    finally:
        plt.close(fig)


# ---- item 12: runs are never lost -------------------------------------------------------------
def test_training_into_a_run_needs_resume_or_overwrite(s_config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", s_config, "--out", str(out), *TINY]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    one_line_error(
        capsys,
        ["train", s_config, "--out", str(out), *TINY, "--set", "train.seed=3"],
        "holds a run (checkpoint.pt, metrics.jsonl); continue it with --resume, replace it "
        "with --overwrite",
    )
    assert (out / "checkpoint.pt").read_bytes() == before
    argv = ["train", s_config, "--out", str(out), *TINY, "--set", "train.seed=3", "--overwrite"]
    assert main(argv) == 0
    assert load_checkpoint(out / "checkpoint.pt")["config"]["train"]["seed"] == 3


def test_interrupted_checkpoint_writes_are_cleaned_up(tmp_path):
    stale = tmp_path / ".checkpoint.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.abcd.tmp"
    other.write_bytes(b"not ours")
    save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    assert not stale.exists() and other.exists()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1


def test_sigterm_during_the_final_calibration_stops_the_run(tmp_path):
    """Calibration of 16 widths on every training image, one image per batch: long enough to
    be interrupted. The run stops at once (exit 143), keeps no half-made statistics, and
    --resume finishes it."""
    cfg = tmp_path / "us.yaml"
    cfg.write_text(
        "model: {name: us_small_cnn, width_range: [0.25, 1.0]}\n"
        "data: {augment: none}\n"
        "train: {mode: universal, epochs: 1, batch_size: 128, progress: true, threads: 1}\n"
        "calibrate: {images: 1438, batch_size: 1}\n"
        "eval: {every: 0, widths: [0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7,"
        " 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]}\n"
    )
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "slimmable", "train", str(cfg), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("calibrating 16 widths"):
                break
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "stopped by SIGTERM" in text and waited < 30
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert not ckpt["finished"] and ckpt["calibrated"] == [] and ckpt["step"] == 11
    resumed = subprocess.run(
        [*cmd, "--resume", "--set", "calibrate.batch_size=256"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert resumed.returncode != 0 and "differs from the checkpoint's" in resumed.stderr
    resumed = subprocess.run(
        [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=240
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["finished"] and len(ckpt["calibrated"]) == 16 and len(ckpt["eval"]) == 16


# ---- item 13: nothing silent -----------------------------------------------------------------
def test_a_nan_learning_rate_is_refused(s_config, capsys):
    one_line_error(
        capsys, ["train", s_config, *TINY, "--set", "train.lr=.nan"], "train.lr must be a finite"
    )
    with pytest.raises(ValueError, match="finite"):
        config_from_dict({"train": {"weight_decay": float("inf")}})
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3  # PyYAML reads a string


def test_a_diverging_run_stops_with_an_error(s_config, tmp_path, capsys):
    argv = ["train", s_config, "--out", str(tmp_path / "run"), *TINY, "--set", "train.lr=1e12"]
    one_line_error(capsys, argv, "training diverged")


def test_labels_are_checked_against_the_classes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 1, 8, 8), dtype=np.uint8)
    y = np.arange(40) % 10
    y_bad = y.copy()
    y_bad[7] = 10  # a stray label among classes 0-9
    names = np.array([str(i) for i in range(10)])
    np.savez(tmp_path / "named.npz", x_train=x, y_train=y_bad, x_test=x, y_test=y, classes=names)
    with pytest.raises(ValueError, match="y_train has label 10, but classes names 10"):
        build_datasets("npz", str(tmp_path / "named.npz"))
    np.savez(tmp_path / "gap.npz", x_train=x, y_train=y, x_test=x, y_test=y_bad)
    with pytest.raises(ValueError, match="no training image has label 10"):
        build_datasets("npz", str(tmp_path / "gap.npz"))
    np.savez(tmp_path / "ok.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    cfg = tmp_path / "npz.yaml"
    cfg.write_text(
        f"model: {{name: small_cnn, widths: [1.0], num_classes: 5}}\n"
        f"data: {{name: npz, path: {tmp_path / 'ok.npz'}}}\ntrain: {{mode: individual}}\n"
    )
    argv = ["train", str(cfg), "--out", str(tmp_path / "r"), *TINY, "--set", "train.batch_size=8"]
    one_line_error(capsys, argv, "has label 9, but the model has 5 classes")


def test_repeated_widths_are_refused(s_config, capsys):
    one_line_error(
        capsys,
        ["train", s_config, *TINY, "--set", "model.widths=[0.5,0.5,1.0]"],
        "model.widths lists 0.5 more than once",
    )


def test_an_empty_class_folder_is_an_error(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "a.png")
    (tmp_path / "train" / "eel").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*train/eel has no images"):
        build_datasets("imagefolder", str(tmp_path))


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "run.pt", "--batch-size", "0"],
        ["calibrate", "run.pt", "--widths", "0.5", "--batch-size", "0"],
        ["calibrate", "run.pt", "--widths", "0.5", "--images", "-1"],
        ["profile", "s_small_cnn", "--image-size", "0"],
        ["select", "run.pt", "--max-macs", "1M", "--repeats", "0"],
    ],
)
def test_zero_and_negative_counts_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_export_format_must_match_the_file_name(s_checkpoint, tmp_path, capsys):
    out = tmp_path / "x.onnx"
    argv = ["export", str(s_checkpoint), "--width", "0.5", "--format", "torchscript"]
    one_line_error(capsys, [*argv, "--out", str(out)], "whose suffix says onnx; name it x.ts")
    assert not out.exists()


def test_export_never_overwrites_unasked(s_checkpoint, tmp_path, capsys):
    out = tmp_path / "net.ts"
    out.write_bytes(b"an earlier export")
    argv = ["export", str(s_checkpoint), "--width", "0.5", "--out", str(out)]
    one_line_error(capsys, argv, "exists; give --overwrite")
    assert out.read_bytes() == b"an earlier export"
    assert main([*argv, "--overwrite"]) == 0 and out.read_bytes() != b"an earlier export"


def test_calibrating_on_nan_images_stores_nothing():
    model = slimmable.create_model("us_small_cnn", num_classes=10, in_chans=1)
    slimmable.calibrate(model, [torch.randn(8, 1, 8, 8)], [0.5])
    x = torch.randn(8, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        slimmable.calibrate(model, [x], [0.25, 0.5])
    assert slimmable.calibrated_widths(model) == []  # 0.5's good statistics were replaced


@pytest.mark.parametrize("width", [True, "abc", "0.5", None, {"features.0": True}])
def test_set_width_takes_numbers_and_maps_only(width):
    model = slimmable.create_model("us_small_cnn", num_classes=10)
    with pytest.raises(ValueError, match="not a number|is a number"):
        slimmable.set_width(model, width)
    assert slimmable.get_width(model) == 1.0
    slimmable.set_width(model, np.float32(0.5))  # numbers of any kind are numbers
    assert slimmable.get_width(model) == 0.5


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"num_classes": True}, {"in_chans": 0}])
def test_create_model_refuses_empty_outputs(kwargs):
    with pytest.raises(ValueError, match="at least 1"):
        slimmable.create_model("us_small_cnn", **kwargs)


# ---- item 14: errors that say file:line:col, which extra, which key --------------------------
def test_yaml_syntax_errors_say_where(tmp_path, s_config, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: small_cnn\ntrain: {epochs: 3, lr: [0.1}\n")
    one_line_error(capsys, ["train", str(bad)], f"{bad}:3:")
    with pytest.raises(ValueError, match="YAML syntax error"):
        load_config(bad)
    argv = ["train", s_config, "--set", "train.lr=[1,"]
    one_line_error(capsys, argv, "--set train.lr=[1,: YAML syntax error")


def test_onnx_without_its_extra_names_the_install(s_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    argv = ["export", str(s_checkpoint), "--width", "0.5", "--out", str(tmp_path / "x.onnx")]
    one_line_error(capsys, argv, "pip install 'slimmable[onnx]'")


def test_export_into_an_unwritable_place_is_one_line(s_checkpoint, capsys):
    argv = ["export", str(s_checkpoint), "--width", "0.5", "--out", "/proc/x.pt2"]
    one_line_error(capsys, argv, "cannot write /proc/x.pt2")


def test_arguments_are_positive_ints_everywhere():
    """Every count option of every command goes through one type (positive_int)."""
    from slimmable.cli.args import positive_int

    counts = {"--batch-size", "--images", "--image-size", "--repeats", "--threads", "--batches"}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if set(action.option_strings) & counts and name != "search":
                assert action.type is positive_int, (name, action.option_strings)
