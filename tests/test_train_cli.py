"""The command line: train, calibrate, eval (table and JSON), plot."""

from __future__ import annotations

import json

import pytest
import torch

from slimmable.checkpoint import load_checkpoint
from slimmable.cli import main

TINY = [
    "--set", "train.epochs=1",
    "--set", "train.batch_size=128",
    "--set", "train.progress=false",
    "--set", "train.threads=1",
    "--set", "calibrate.images=256",
    "--set", "eval.every=0",
]  # fmt: skip


def write_config(path, text: str):
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def us_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = write_config(
        root / "us.yaml",
        "model: {name: us_small_cnn, width_range: [0.25, 1.0]}\n"
        "train: {mode: universal}\n"
        "eval: {widths: [0.25, 0.5, 1.0]}\n",
    )
    assert main(["train", cfg, "--out", str(root / "us"), *TINY]) == 0
    return root / "us"


def test_train_writes_the_run_and_prints_the_table(us_run, capsys):
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl", "eval.json"):
        assert (us_run / name).is_file()
    assert (us_run / "accuracy_vs_macs.png").is_file()
    assert "train:\n" in (us_run / "config.yaml").read_text()


def test_train_default_out_is_runs_slash_config_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(
        tmp_path / "tiny.yaml",
        "model: {name: small_cnn, widths: [0.5, 1.0]}\ntrain: {mode: slimmable}\n",
    )
    assert main(["train", cfg, *TINY]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "runs/tiny" in out
    assert (tmp_path / "runs" / "tiny" / "checkpoint.pt").is_file()


def test_eval_json_schema(us_run, capsys):
    assert main(["eval", str(us_run / "checkpoint.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"widths"}
    assert [r["width"] for r in report["widths"]] == [0.25, 0.5, 1.0]
    for row in report["widths"]:
        assert set(row) == {"width", "top1", "top5", "macs"}
        assert 0.0 <= row["top1"] <= row["top5"] <= 1.0
        assert isinstance(row["macs"], int) and row["macs"] > 0
    assert report == json.loads((us_run / "eval.json").read_text())  # same as the trainer's


def test_eval_sweeps_a_fine_grid_calibrating_it_first(us_run, tmp_path, capsys):
    plot = tmp_path / "sweep.png"
    ckpt = us_run / "checkpoint.pt"
    before = ckpt.read_bytes()
    code = main(["eval", str(ckpt), "--widths", "0.25:1.0:0.05", "--plot", str(plot)])
    captured = capsys.readouterr()
    assert code == 0
    assert "calibrating 13 widths first" in captured.err  # 16 widths, 3 calibrated by training
    table = captured.out.splitlines()
    assert table[0].split() == ["width", "MACs", "top-1", "top-5"]
    assert len(table) == 1 + 16
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert ckpt.read_bytes() == before  # eval never writes the checkpoint


def test_calibrate_writes_widths_back(us_run, tmp_path, capsys):
    ckpt_path = tmp_path / "copy.pt"
    ckpt_path.write_bytes((us_run / "checkpoint.pt").read_bytes())
    assert main(["calibrate", str(ckpt_path), "--widths", "0.33,0.61", "--images", "128"]) == 0
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["calibrated"] == [0.25, 0.33, 0.5, 0.61, 1.0]
    keys = ckpt["state_dict"]["features.1.calib_keys"].tolist()
    assert sorted(keys) == [250000, 330000, 500000, 610000, 1000000]
    # other widths are untouched
    old = load_checkpoint(us_run / "checkpoint.pt")["state_dict"]
    slot = keys.index(500000)
    assert torch.equal(
        ckpt["state_dict"]["features.1.calib_mean"][slot], old["features.1.calib_mean"][1]
    )


def test_eval_without_calibration_uses_shared_statistics_on_request(us_run, capsys):
    ckpt = str(us_run / "checkpoint.pt")
    assert main(["eval", ckpt, "--widths", "0.4", "--uncalibrated", "error"]) == 2
    assert "no calibrated BN statistics" in capsys.readouterr().err
    assert main(["eval", ckpt, "--widths", "0.4", "--uncalibrated", "running", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["widths"]) == 1


def test_plot_joins_runs_of_one_mode(us_run, tmp_path, capsys):
    runs = []
    for w in (0.5, 1.0):
        out = tmp_path / f"individual_{w}"
        cfg = write_config(
            tmp_path / "ind.yaml", "model: {name: small_cnn}\ntrain: {mode: individual}\n"
        )
        assert main(["train", cfg, "--out", str(out), "--set", f"model.widths=[{w}]", *TINY]) == 0
        runs.append(str(out))
    plot = tmp_path / "modes.png"
    assert main(["plot", str(us_run), *runs, "--out", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    from slimmable.plot import load_run

    assert load_run(runs[0])[0] == "individual" and load_run(us_run)[0] == "universal"


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint" in err
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no eval.json" in capsys.readouterr().err
