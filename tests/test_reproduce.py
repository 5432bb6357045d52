"""benchmarks/reproduce.py --quick: trains every kind of run once and writes the whole report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "benchmarks/reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_reproduction_writes_report_tables_and_plots(tmp_path):
    script = _load_script()
    report, raw, runs = tmp_path / "docs/reproduction.md", tmp_path / "r.json", tmp_path / "runs"
    args = ["--quick", "--workers", "1", "--runs", str(runs), "--report", str(report)]
    assert script.main([*args, "--json", str(raw)]) == 0

    text = report.read_text()
    for title in ("naive", "sandwich rule", "calibration images", "lower bound", "Nonuniform"):
        assert title in text
    assert text.count("\n|---|") == 5  # one table per finding
    assert "benchmarks/reproduce.py --quick" in text
    for name in ("snet", "universal", "calibration", "lower_bound", "nonuniform"):
        png = tmp_path / "docs/img" / f"repro_{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert f"img/repro_{name}.png" in text

    data = json.loads(raw.read_text())
    top1 = data["snet"]["individual"]["1.0"]
    assert len(top1) == 1 and 0.0 <= top1[0] <= 1.0
    # the accuracies in the tables are those of the runs' own eval.json files
    naive = json.loads((runs / "naive_s0/eval.json").read_text())["widths"]
    assert [r["top1"] for r in naive] == [
        data["snet"]["naive"][str(w)][0] for w in (0.25, 0.5, 0.75, 1.0)
    ]

    # a second call trains nothing: every run is cached
    mtime = (runs / "naive_s0/checkpoint.pt").stat().st_mtime_ns
    assert script.main([*args, "--json", str(raw)]) == 0
    assert (runs / "naive_s0/checkpoint.pt").stat().st_mtime_ns == mtime
