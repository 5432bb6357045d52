"""benchmarks/seg_backbones.py --quick: trains every kind of run once and writes its section."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    path = ROOT / "benchmarks/seg_backbones.py"
    spec = importlib.util.spec_from_file_location("seg_backbones", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_comparison_writes_its_section_and_caches_runs(tmp_path):
    script = _load_script()
    doc = tmp_path / "docs/segmentation.md"
    doc.parent.mkdir()
    doc.write_text("# Segmentation\n\nkept text\n\n<!-- seg_backbones:start -->\nold\n"
                   "<!-- seg_backbones:end -->\n\nkept too\n")  # fmt: skip
    runs, raw = tmp_path / "runs", tmp_path / "r.json"
    args = ["--quick", "--workers", "1", "--runs", str(runs), "--report", str(doc)]
    assert script.main([*args, "--json", str(raw)]) == 0

    text = doc.read_text()
    assert "kept text" in text and "kept too" in text and "\nold\n" not in text
    assert text.count("| width | individual | S-Net backbone | US-Net backbone |") == 1
    assert "claim" in text and "seg_backbones.py --quick" in text
    assert (tmp_path / "docs/img/seg_backbones_quick.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads(raw.read_text())
    # the table's numbers are the runs' own eval.json values
    own = json.loads((runs / "universal_s0/eval.json").read_text())["widths"]
    assert [r["miou"] for r in own] == [
        data["miou"]["universal"][f"{w:g}"][0] for w in data["widths"]
    ]
    assert set(data["miou"]) == {"individual", "slimmable", "universal"}

    mtime = (runs / "slimmable_s0/checkpoint.pt").stat().st_mtime_ns
    assert script.main([*args, "--json", str(raw)]) == 0  # every run cached: nothing trains
    assert (runs / "slimmable_s0/checkpoint.pt").stat().st_mtime_ns == mtime
