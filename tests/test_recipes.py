"""Every recipe in configs/ loads with the strict config and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimmable.data import DataInfo
from slimmable.train import build_model, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_loads_and_builds(path):
    cfg = load_config(path)
    if cfg.data.name != "imagefolder":
        return  # demo: covered by tests/test_demo.py
    assert cfg.train.amp in ("none", "bf16", "fp16")
    info = DataInfo(name="imagefolder", num_classes=10, in_chans=3, image_size=32)
    _, spec = build_model(cfg, info)
    assert spec["name"] == cfg.model.name


def test_recipes_are_documented():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    for path in CONFIGS:
        if path.stem != "demo":
            assert f"configs/{path.name}" in doc, path.name
