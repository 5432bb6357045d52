"""Every loader of the package: training, evaluation, calibration, hold-out, general purpose.

- :func:`train_loader`: one training epoch whose order is a function of ``(seed, epoch)``, split
  between data-parallel ranks as ``DistributedSampler`` does, and whose augmentation restarts at
  each batch, so a run resumes mid-epoch bitwise equal (the checkpoint records epoch and batch);
- :func:`eval_loader`: a whole data set in order;
- :func:`calibration_batches`: the one source of BN-calibration images (US-Nets post-statistics):
  ``images`` training images chosen by a seed, eval-style (no augmentation), in fixed batches
  that data-parallel ranks share out with :meth:`CalibrationBatches.shard`;
- :func:`holdout_split`: training images set aside that training never sees (AutoSlim scores
  channel configurations on them);
- :func:`make_loader`: a general loader for your own loop, reproducible from one seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from .base import AugmentedDataset

_EPOCH_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs give distinct generator seeds
_SEED_MIX = 0x9E3779B97F4A7C15  # decorrelates the augmentation stream from the shuffle stream


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * _EPOCH_STRIDE + epoch) % (2**63)


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """Augmentation seed of one training batch: a function of ``(seed, epoch, batch)``."""
    return epoch_seed(seed, epoch) * _EPOCH_STRIDE + batch


def augmented(dataset: Dataset) -> AugmentedDataset | None:
    """The augmenting data set under ``dataset`` (through Subsets), if any."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, AugmentedDataset) else None


def eval_view(dataset: Dataset) -> Dataset:
    """``dataset`` with its eval-style transform (no augmentation); Subsets are kept."""
    if isinstance(dataset, Subset):
        return Subset(eval_view(dataset.dataset), dataset.indices)
    if isinstance(dataset, AugmentedDataset):
        return dataset.eval_view()
    return dataset


# ---- training --------------------------------------------------------------------------------
class EpochSampler(Sampler[int]):
    """This rank's share of a permutation drawn from ``(seed, epoch)``, skipping ``start`` items.

    Like ``DistributedSampler`` (``drop_last=True``): every rank gets ``len(dataset) //
    world_size`` indices.
    """

    def __init__(
        self,
        num_items: int,
        seed: int,
        epoch: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start: int = 0,
    ) -> None:
        self.num_items, self.seed, self.epoch = num_items, seed, epoch
        self.rank, self.world_size, self.shuffle, self.start = rank, world_size, shuffle, start
        self.per_rank = num_items // world_size

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_items, generator=g).tolist()
        else:
            order = list(range(self.num_items))
        return order[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


def steps_per_epoch(dataset: Dataset, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch (the last, incomplete batch is dropped)."""
    steps = len(dataset) // world_size // batch_size  # type: ignore[arg-type]
    if steps < 1:
        raise ValueError(
            f"the training set has {len(dataset)} images, fewer than one batch of "  # type: ignore[arg-type]
            f"{batch_size} per process; lower train.batch_size"
        )
    return steps


def train_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    skip_batches: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader | BatchSeededLoader:
    """The loader of one training epoch (this rank's share), starting after ``skip_batches``."""
    sampler = EpochSampler(
        len(dataset),  # type: ignore[arg-type]
        seed,
        epoch,
        rank=rank,
        world_size=world_size,
        start=skip_batches * batch_size,
    )
    # Worker seeds come from this generator: augmentation is a function of (seed, epoch) too.
    worker_gen = torch.Generator().manual_seed(epoch_seed(seed, epoch) ^ 0x5EED)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        generator=worker_gen,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
    target = augmented(dataset)
    if workers == 0 and target is not None:
        return BatchSeededLoader(loader, target, seed, epoch, skip_batches)
    return loader


class BatchSeededLoader:
    """A single-process training loader whose augmentation restarts at every batch.

    Each batch's augmentation draws from ``batch_seed(seed, epoch, batch)``, so a run resumed in
    the middle of an epoch draws exactly what the uninterrupted run drew.
    """

    def __init__(
        self, loader: DataLoader, target: AugmentedDataset, seed: int, epoch: int, first: int
    ) -> None:
        self.loader, self.target = loader, target
        self.seed, self.epoch, self.first_batch = seed, epoch, first
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        batches = iter(self.loader)
        for batch in range(self.first_batch, self.first_batch + len(self.loader)):
            self.target.seed_augmentation(batch_seed(self.seed, self.epoch, batch))
            yield next(batches)


# ---- evaluation, hold-out, calibration -------------------------------------------------------
def eval_loader(dataset: Dataset, batch_size: int, *, workers: int = 0) -> DataLoader:
    """A loader over the whole ``dataset``, in order."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def holdout_split(
    dataset: Dataset, count: int, seed: int = 0
) -> tuple[Dataset, Dataset, list[int]]:
    """``(train, held_out, held_out_indices)``: ``count`` images set aside, chosen by ``seed``.

    ``train`` keeps its augmentation and never yields a held-out image; ``held_out`` is
    eval-style. The indices (into ``dataset``, sorted) say which images were held out.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if count <= 0:
        return dataset, Subset(eval_view(dataset), []), []
    if count >= n:
        raise ValueError(
            f"data.holdout={count} leaves no training images (the set has {n}); hold out fewer"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held = sorted(order[:count].tolist())
    kept = sorted(order[count:].tolist())
    return Subset(dataset, kept), Subset(eval_view(dataset), held), held


class CalibrationBatches:
    """A fixed, re-iterable list of input batches (images only) for BN calibration."""

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 0) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)  # type: ignore[arg-type]

    @property
    def num_images(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Tensor]:
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers
        )
        for batch in loader:
            yield batch[0] if isinstance(batch, list | tuple) else batch

    def shard(self, rank: int, world_size: int) -> CalibrationBatches:
        """Batches ``rank, rank + world_size, ...`` of these, as they are here (the short last
        batch stays short): the ranks' shards together are exactly these batches. A rank past
        the last batch gets none."""
        n, size = self.num_images, self.batch_size
        mine: list[int] = []
        for b in range(rank, len(self), world_size):
            mine += range(b * size, min(n, (b + 1) * size))
        return CalibrationBatches(Subset(self.dataset, mine), size, self.num_workers)


def calibration_batches(
    dataset: Dataset, images: int, batch_size: int, seed: int, num_workers: int = 0
) -> CalibrationBatches:
    """``images`` training images chosen by ``seed``, eval-style transformed, in batches.

    The one calibration data path: the trainer, ``slimmable calibrate`` and ``slimmable eval``
    all calibrate on these. The US-Nets paper computes BN post-statistics on training images
    (1-2k suffice); without augmentation they are distributed as the test images are. The
    choice and order are a fixed function of ``seed``. Iterating yields input tensors; the
    object can be iterated again (images are loaded lazily each time).
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


# ---- a general loader ------------------------------------------------------------------------
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
        target = augmented(self.dataset)
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
    sampler: Sampler | Sequence[int] | None = None,
    *,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """A DataLoader for your own loop whose order and augmentation depend on ``seed`` only.

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
