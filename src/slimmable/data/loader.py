"""Deterministic data loaders and BN-calibration batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .base import AugmentedDataset

_SEED_MIX = 0x9E3779B97F4A7C15  # decorrelates the augmentation stream from the shuffle stream


def _augmented(dataset: Dataset) -> AugmentedDataset | None:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, AugmentedDataset) else None


class SeededLoader(DataLoader):
    """DataLoader whose single-process augmentation restarts from its own seed every epoch.

    With ``num_workers=0`` the data set's generator is reseeded at each ``iter()`` from a stream
    seeded by the loader's seed, so epoch ``k`` of a run is the same whichever data set object
    (or earlier run in the same process) served it. With workers, the DataLoader already seeds
    each worker from the loader's generator.
    """

    def __init__(self, *args, augment_seed: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._augment_gen = torch.Generator().manual_seed(augment_seed)

    def __iter__(self):  # type: ignore[override]
        target = _augmented(self.dataset)
        if self.num_workers == 0 and target is not None:
            target.seed_augmentation(int(torch.randint(0, 2**62, (), generator=self._augment_gen)))
        return super().__iter__()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    *,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """A DataLoader whose order and augmentation depend on ``seed`` only.

    The loader's generator (seeded from ``seed``) drives shuffling and the per-worker seeds;
    with ``num_workers=0`` the augmentation stream is restarted from ``seed`` too (see
    :class:`SeededLoader`), so CPU runs are bitwise reproducible. A ``sampler`` (e.g. a
    ``DistributedSampler``) replaces ``shuffle``. Workers persist across epochs by default.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, not {num_workers}")
    generator = torch.Generator().manual_seed(seed)
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return SeededLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        augment_seed=(seed + _SEED_MIX) % 2**64,
    )


def eval_view(dataset: Dataset) -> Dataset:
    """``dataset`` with its eval-style transform (no augmentation); Subsets are kept."""
    if isinstance(dataset, Subset):
        return Subset(eval_view(dataset.dataset), dataset.indices)
    if isinstance(dataset, AugmentedDataset):
        return dataset.eval_view()
    return dataset


class CalibrationBatches:
    """A fixed, re-iterable list of input batches (images only) for BN calibration."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers
        )
        for batch in loader:
            yield batch[0] if isinstance(batch, (list, tuple)) else batch


def calibration_batches(
    dataset: Dataset, images: int, batch_size: int, seed: int, num_workers: int = 0
) -> CalibrationBatches:
    """``images`` training images chosen by ``seed``, eval-style transformed, in batches.

    The US-Nets paper computes BN post-statistics on training images (1-2k suffice); the choice
    and order are a fixed function of ``seed``, so calibration is reproducible. Iterating yields
    input tensors; the object can be iterated again (images are decoded lazily each time).
    """
    if images < 1 or batch_size < 1:
        raise ValueError(
            f"calibration needs images >= 1 and batch_size >= 1 (got {images}, {batch_size})"
        )
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("calibration got an empty data set")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:images]
    return CalibrationBatches(Subset(eval_view(dataset), order.tolist()), batch_size, num_workers)
