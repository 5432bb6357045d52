"""Data sets (temporary: digits only; the full loaders land from the ``data`` branch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

SPLIT_SEED = 0  # fixed, so every run sees the same test set


@dataclass
class DataInfo:
    num_classes: int
    in_chans: int
    image_size: int
    name: str


class _Arrays(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def build_datasets(
    name: str,
    path: str | None = None,
    *,
    image_size: int | None = None,
    augment: str = "standard",
    seed: int = 0,
) -> tuple[Dataset, Dataset, DataInfo]:
    """``(train_set, test_set, info)`` of data set ``name`` (here: ``"digits"`` only)."""
    if name != "digits":
        raise ValueError(f"data set {name!r} is not available yet; use 'digits'")
    if image_size not in (None, 8):
        raise ValueError("digits images are 8x8; leave data.image_size unset")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(SPLIT_SEED).permutation(len(y)))
    x, y = x[order], y[order]
    n_train = len(y) - len(y) // 5
    mean, std = x[:n_train].mean(), x[:n_train].std()
    x = (x - mean) / std
    info = DataInfo(num_classes=10, in_chans=1, image_size=8, name="digits")
    return _Arrays(x[:n_train], y[:n_train]), _Arrays(x[n_train:], y[n_train:]), info


__all__ = ["DataInfo", "build_datasets"]
