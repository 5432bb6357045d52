"""benchmarks/reproduce.py --quick: trains every kind of run once and writes the whole report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLOTS = (
    "snet",
    "universal",
    "calibration",
    "lower_bound",
    "nonuniform",
    "long_snet",
    "long_distill",
    "deep",
)


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks/reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _top1(run: Path) -> dict[float, float]:
    rows = json.loads((run / "eval.json").read_text())["widths"]
    return {r["width"]: r["top1"] for r in rows}


def test_quick_reproduction_writes_report_tables_and_plots(tmp_path):
    script = _load_script()
    report, raw, runs = tmp_path / "docs/reproduction.md", tmp_path / "r.json", tmp_path / "runs"
    args = ["--quick", "--workers", "1", "--runs", str(runs), "--report", str(report)]
    assert script.main([*args, "--json", str(raw)]) == 0

    text = report.read_text()
    titles = ("Summary", "naive", "sandwich rule", "calibration images", "lower bound",
              "Nonuniform", "individual networks", "in-place distillation and its remedies",
              "AutoSlim on ResNet-20")  # fmt: skip
    for title in titles:
        assert title in text
    assert text.count("\n|---|") == 9  # a table per section
    assert "benchmarks/reproduce.py --quick" in text
    for name in PLOTS:
        png = tmp_path / "docs/img" / f"repro_{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert f"img/repro_{name}.png" in text

    data = json.loads(raw.read_text())
    top1 = data["snet"]["individual"]["1.0"]
    assert len(top1) == 1 and 0.0 <= top1[0] <= 1.0
    # the accuracies in the tables are those of the runs' own eval.json files
    naive = _top1(runs / "naive_s0")
    assert list(naive.values()) == [data["snet"]["naive"][str(w)][0] for w in naive]
    incremental = _top1(runs / "incremental_s0")
    assert list(incremental.values()) == [data["snet"]["incremental"][str(w)][0] for w in naive]
    assert data["long_snet"]["S-Net (S-BN)"]["0.25"] == [_top1(runs / "long_slimmable_s0")[0.25]]
    assert data["long_distill"]["kd_t3"]["top1"]["1.0"] == [_top1(runs / "long_us_kd_t3_s0")[1.0]]
    deep = data["deep"]["0.75"]
    assert deep["searched_scratch"] == [_top1(runs / "long_r20_searched_0.75_s0")[1.0]]
    assert deep["uniform_scratch"] == [_top1(runs / "long_r20_uniform_0.75_s0")[0.75]]
    # the searched network trained from scratch has the channels the search found
    cfg = (runs / "long_r20_searched_0.75_s0" / "config.yaml").read_text()
    assert "autoslim_resnet20" in cfg and "channels" in cfg
    assert deep["macs"][0] <= data["deep"]["targets"]["0.75"]
    warm = (runs / "long_us_kd_warmup_s0" / "config.yaml").read_text()
    assert "distill_warmup_epochs: 0.5" in warm

    # a second call trains nothing: every run is cached
    mtime = (runs / "naive_s0/checkpoint.pt").stat().st_mtime_ns
    assert script.main([*args, "--train-only"]) == 0
    assert (runs / "naive_s0/checkpoint.pt").stat().st_mtime_ns == mtime
    # a finished run of another config is never overwritten
    with pytest.raises(SystemExit, match="holds a finished run of another config"):
        script.main([*args, "--train-only", "--long-epochs", "2"])
    assert (runs / "naive_s0/checkpoint.pt").stat().st_mtime_ns == mtime
