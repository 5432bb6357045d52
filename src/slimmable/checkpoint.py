"""Checkpoint files: written atomically, read without unpickling code.

The model a checkpoint holds is rebuilt by :mod:`slimmable.run` (``load_model``, ``open_run``).

A checkpoint is a dict of tensors and plain Python values (``weights_only=True`` loads it):

- ``format``: ``"slimmable"``, ``version``: 1
- ``model``: ``{"name": registered name, "kwargs": factory keyword arguments}``
- ``state_dict``: the model's weights and buffers (calibrated BN statistics included)
- optional: ``optimizer``, ``scheduler``, ``step``, ``epoch``, ``rng``, ``config``, ``metrics``,
  ``eval``, ``calibrated`` (widths), anything else the trainer records
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "slimmable"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically: a crash leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; check the path or train one first")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        # torch's own message may advise weights_only=False: never do that for a file you doubt.
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: truncated, damaged, or "
            "holding objects other than tensors and plain values); re-save it or pick another file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a slimmable checkpoint; for the authors' released weights use "
            "slimmable.load_official(model, path)"
        )
    return ckpt
