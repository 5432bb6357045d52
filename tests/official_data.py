"""Synthetic checkpoints in the authors' key layout, shared by the tests and the fixture script.

``tests/data/official/<model>.json.gz`` holds, for one model of the authors' code
(github.com/JiahuiYu/slimmable_networks) built with 10 classes: every state-dict key with its
shape, and the logits their code computes at several widths for :func:`sample_input` once
:func:`synthetic_state_dict` is loaded into it. ``generate.py`` beside the fixtures wrote them by
running their code (not part of this repository).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path

import torch
from torch import Tensor

FIXTURES = Path(__file__).parent / "data" / "official"
NUM_CLASSES = 10
IMAGE_SIZE = 64


def synthetic_state_dict(shapes: dict[str, list[int]]) -> dict[str, Tensor]:
    """Deterministic tensors of the given shapes, each seeded by its key; BN statistics valid."""
    out: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.randint(1, 1000, (), generator=g)
        elif leaf == "running_var":
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif leaf == "running_mean":
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and leaf == "weight":  # BN scale
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BN or linear bias
            out[key] = 0.1 * torch.randn(shape, generator=g)
        else:  # conv or linear weight, variance-preserving
            fan_in = math.prod(shape[1:])
            out[key] = torch.randn(shape, generator=g) * math.sqrt(1.0 / fan_in)
    return out


def sample_input() -> Tensor:
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def load_fixture(name: str) -> dict:
    """``{"keys": {key: shape}, "outputs": {width: logits}}`` of one of the authors' models."""
    with gzip.open(FIXTURES / f"{name}.json.gz", "rt") as f:
        return json.load(f)
