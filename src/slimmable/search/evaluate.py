"""Scoring a width setting on a fixed set of held-out batches, without changing the model.

AutoSlim compares many channel configurations of one trained network. None of them has
calibrated BN statistics, so BN normalizes with batch statistics (what the sandwich-rule
training saw); everything else (dropout) runs in eval mode. Batch-statistics BN also updates
its running statistics, which :func:`batch_statistics` restores on exit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

Batch = tuple[Tensor, Tensor]


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode except BN layers, which normalize with batch statistics; state restored after.

    Restores every module's train/eval mode and the BN running statistics (and batch counters)
    that the forwards inside the block updated.
    """
    modes = [(m, m.training) for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [
        (buf, buf.clone())
        for m in norms
        for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buf is not None
    ]
    model.eval()
    for m in norms:
        m.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)
        for m, mode in modes:
            m.training = mode


def held_out_batches(
    batches: Iterable[Sequence[Tensor]], num_batches: int | None, device: torch.device
) -> list[Batch]:
    """The first ``num_batches`` ``(input, target)`` batches, on ``device``, kept for reuse.

    Batches of fewer than 2 images (a loader's last batch) are skipped: BN needs batch statistics.
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")
    kept: list[Batch] = []
    for batch in itertools.islice(batches, num_batches):
        if isinstance(batch, Tensor) or len(batch) < 2:
            raise ValueError(
                "AutoSlim scores configurations by accuracy: batches must be (input, target) pairs"
            )
        x, y = batch[0], batch[1]
        if len(x) < 2:
            continue
        kept.append((x.to(device, non_blocking=True), y.to(device, non_blocking=True)))
    if not kept:
        raise ValueError(
            "AutoSlim got no held-out batches (of 2 images or more): the data loader is empty"
        )
    return kept


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Batch]) -> tuple[float, float]:
    """``(top-1 accuracy, mean cross-entropy)`` of ``model`` as it is set, over ``batches``."""
    correct = torch.zeros((), dtype=torch.long, device=batches[0][0].device)
    loss = torch.zeros((), dtype=torch.float64, device=batches[0][0].device)
    total = 0
    for x, y in batches:
        logits = model(x)
        loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        total += len(y)
    return correct.item() / total, loss.item() / total
