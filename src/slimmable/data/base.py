"""What every data set of this package shares: its description and its augmentation randomness.

Augmentation never touches the global RNGs. A data set draws from its own ``torch.Generator``:

- in the main process (``num_workers=0``) the generator starts from the data set's seed, and
  :func:`slimmable.data.make_loader` restarts it from the loader's seed at every epoch, so a run
  is bitwise reproducible even when the same data set object serves several runs;
- in a ``DataLoader`` worker it starts from ``get_worker_info().seed``, which the loader derives
  from its own generator and the worker id, so workers never repeat each other's draws.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataInfo:
    """What a model needs to know about a data set.

    ``mean``/``std`` are the per-channel normalisation applied to the inputs (in [0, 1] pixel
    units), ``classes`` the class names in label order (empty where the data carries none).
    ``task`` is ``"classification"`` (an int label per image) or ``"segmentation"`` (an
    ``HxW`` label mask per image, ``ignore_index`` marking pixels that score nothing).
    """

    num_classes: int
    in_chans: int
    image_size: int
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()
    task: str = "classification"
    ignore_index: int = -100


class AugmentedDataset(Dataset):
    """Map-style data set whose training augmentation draws from its own seeded generator."""

    def __init__(self, augment: bool, seed: int) -> None:
        self.augment = augment
        self._seed = int(seed)
        self._gen: torch.Generator | None = None
        self._gen_key: tuple[str, int] | None = None

    def seed_augmentation(self, seed: int) -> None:
        """Restart the main-process augmentation stream from ``seed`` (workers are unaffected)."""
        self._seed = int(seed)
        self._gen = None

    def generator(self) -> torch.Generator:
        """The generator augmentation draws from in the current process (see module docstring)."""
        info = get_worker_info()
        key = ("main", self._seed) if info is None else ("worker", int(info.seed))
        if self._gen is None or self._gen_key != key:
            self._gen = torch.Generator().manual_seed(key[1])
            self._gen_key = key
        return self._gen

    def eval_view(self) -> AugmentedDataset:
        """A shallow copy that applies the eval-style transform (no augmentation)."""
        view = copy.copy(self)
        view.augment = False
        view._gen, view._gen_key = None, None
        return view

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_gen"], state["_gen_key"] = None, None
        return state
