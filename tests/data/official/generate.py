"""Write the fixtures of tests/test_official.py by running the authors' model code.

Usage: python tests/data/official/generate.py PATH/TO/slimmable_networks

PATH is a checkout of github.com/JiahuiYu/slimmable_networks whose ``utils/config.py`` has been
replaced by ``from types import SimpleNamespace; FLAGS = SimpleNamespace()`` (the original parses
sys.argv at import). Their code is only run here, never copied. For each released family this
records every state-dict key with its shape, and their model's logits (eval mode, 10 classes,
64x64 input) at several widths with :func:`official_data.synthetic_state_dict` loaded.
"""

from __future__ import annotations

import gzip
import importlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from official_data import (
    FIXTURES,
    IMAGE_SIZE,
    NUM_CLASSES,
    sample_input,
    synthetic_state_dict,
)

US_V1 = [round(0.25 + 0.025 * i, 3) for i in range(31)]
US_V2 = [round(0.35 + 0.025 * i, 3) for i in range(27)]

# our name: (their module, their FLAGS, widths to record logits at)
FAMILIES = {
    "s_mobilenet_v1": ("s_mobilenet_v1", {"width_mult_list": [0.25, 0.5, 0.75, 1.0]}, None),
    "s_mobilenet_v2": ("s_mobilenet_v2", {"width_mult_list": [0.35, 0.5, 0.75, 1.0]}, None),
    "s_shufflenet": (
        "s_shufflenet",
        {"width_mult_list": [0.5, 1.0, 2.0], "groups": 3, "width_compress": 4},
        None,
    ),
    "s_resnet50": ("s_resnet", {"width_mult_list": [0.25, 0.5, 0.75, 1.0], "depth": 50}, None),
    "us_mobilenet_v1": (
        "us_mobilenet_v1",
        {"width_mult_list": US_V1, "width_mult_range": [0.25, 1.0]},
        [0.25, 0.4, 0.625, 1.0],
    ),
    "us_mobilenet_v2": (
        "us_mobilenet_v2",
        {"width_mult_list": US_V2, "width_mult_range": [0.35, 1.0], "dataset": "imagenet1k"},
        [0.35, 0.55, 0.775, 1.0],
    ),
}


def main(repo: str) -> None:
    sys.path.insert(0, repo)
    flags = importlib.import_module("utils.config").FLAGS
    for name, (module, settings, record) in FAMILIES.items():
        for key, value in settings.items():
            setattr(flags, key, value)
        flags.reset_parameters = False
        model = importlib.import_module(f"models.{module}").Model(NUM_CLASSES, IMAGE_SIZE)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(synthetic_state_dict(shapes))
        model.eval()
        outputs = {}
        for width in record or settings["width_mult_list"]:
            model.apply(lambda m, w=width: setattr(m, "width_mult", w))
            with torch.no_grad():
                outputs[str(width)] = model(sample_input()).tolist()
        FIXTURES.mkdir(parents=True, exist_ok=True)
        with gzip.open(FIXTURES / f"{name}.json.gz", "wt") as f:
            json.dump({"keys": shapes, "outputs": outputs}, f)
        print(f"{name}: {len(shapes)} keys, logits at {list(outputs)}")


if __name__ == "__main__":
    main(sys.argv[1])
