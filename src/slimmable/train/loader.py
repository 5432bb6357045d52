"""Data loaders whose order is a pure function of (seed, epoch): resumable mid-epoch.

The training sampler shuffles with a generator seeded from ``(seed, epoch)`` and splits the
permutation between ranks as ``DistributedSampler`` does, so its whole state is the epoch and
the number of batches already consumed, which the checkpoint records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_EPOCH_STRIDE = 1_000_003  # a prime: (seed, epoch) pairs give distinct generator seeds


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * _EPOCH_STRIDE + epoch) % (2**63)


@dataclass
class World:
    """Where this process sits in a (future) data-parallel job; one process by default."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable default)

    @property
    def is_main(self) -> bool:
        """Whether this process logs, plots and writes files."""
        return self.rank == 0


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


def steps_per_epoch(dataset: Dataset, batch_size: int, world: World) -> int:
    """Optimizer steps in one epoch (the last, incomplete batch is dropped)."""
    steps = len(dataset) // world.world_size // batch_size  # type: ignore[arg-type]
    if steps < 1:
        raise ValueError(
            f"the training set has {len(dataset)} images, fewer than one batch of "  # type: ignore[arg-type]
            f"{batch_size} per process; lower train.batch_size"
        )
    return steps


def train_loader(
    dataset: Dataset,
    batch_size: int,
    world: World,
    *,
    seed: int,
    epoch: int,
    skip_batches: int = 0,
    workers: int = 0,
) -> DataLoader:
    """The loader of one training epoch, starting after ``skip_batches`` batches."""
    sampler = EpochSampler(
        len(dataset),  # type: ignore[arg-type]
        seed,
        epoch,
        rank=world.rank,
        world_size=world.world_size,
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
        pin_memory=world.device.type == "cuda",
        persistent_workers=False,
    )
    if workers == 0 and hasattr(dataset, "seed_augmentation"):
        return BatchSeededLoader(loader, seed, epoch, skip_batches)  # type: ignore[return-value]
    return loader


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """Augmentation seed of one training batch: a function of ``(seed, epoch, batch)``."""
    return epoch_seed(seed, epoch) * _EPOCH_STRIDE + batch


class BatchSeededLoader:
    """A single-process training loader whose augmentation restarts at every batch.

    Each batch's augmentation draws from ``batch_seed(seed, epoch, batch)``, so a run resumed in
    the middle of an epoch draws exactly what the uninterrupted run drew.
    """

    def __init__(self, loader: DataLoader, seed: int, epoch: int, first_batch: int) -> None:
        self.loader, self.seed, self.epoch, self.first_batch = loader, seed, epoch, first_batch
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        batches = iter(self.loader)
        for batch in range(self.first_batch, self.first_batch + len(self.loader)):
            self.dataset.seed_augmentation(batch_seed(self.seed, self.epoch, batch))
            yield next(batches)


def eval_loader(
    dataset: Dataset, batch_size: int, *, workers: int = 0, shuffle_seed: int | None = None
) -> DataLoader:
    """A loader over the whole ``dataset``: in order, or shuffled once with ``shuffle_seed``.

    Calibration uses a shuffled one, so that its first images cover every class.
    """
    # An own generator also keeps the loader from drawing its base seed from the global RNG.
    generator = torch.Generator().manual_seed(0 if shuffle_seed is None else shuffle_seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=generator,
        num_workers=workers,
    )
