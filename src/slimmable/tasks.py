"""What a task decides for the one training loop: the loss, the distillation target, the
evaluation and how its results are reported.

The loop (``slimmable.train``) is the same for every task: the widths of a step, forward, loss,
backward, one optimizer step. It asks the task of its data set (``task_for(info)``):

- :class:`Classification`: cross-entropy with the labels (label-smoothed if asked); in-place
  distillation from the largest width's softmax; top-1 / top-5 per width;
- :class:`Segmentation`: the same per pixel, pixels labelled ``ignore_index`` left out of both
  losses; mIoU and pixel accuracy per width.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch.nn.functional as F
from torch import Tensor, nn

from .data import DataInfo
from .evaluate import evaluate, format_table, json_report
from .segmentation import evaluate_segmentation, format_segmentation_table, segmentation_report
from .widthspec import WidthSpec


class Task(Protocol):
    name: str
    metric: str  # the headline metric of a row (a fraction in [0, 1])
    metric_label: str
    row_keys: tuple[str, ...]  # what the per-epoch metrics keep of a row

    def loss(self, logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor: ...
    def soft_target(self, logits: Tensor, temperature: float = 1.0) -> Tensor: ...
    def distill_loss(
        self, logits: Tensor, soft_target: Tensor, target: Tensor, temperature: float = 1.0
    ) -> Tensor: ...
    def evaluate(
        self, model: nn.Module, loader: Iterable, widths: WidthSpec, **kw: Any
    ) -> list[dict]: ...
    def report(self, rows: Sequence[dict]) -> dict: ...
    def table(self, rows: Sequence[dict]) -> str: ...


def cross_entropy(
    logits: Tensor, target: Tensor, label_smoothing: float = 0.0, ignore_index: int = -100
) -> Tensor:
    """Cross-entropy with the hard labels (optionally label-smoothed), averaged over the batch
    (over the labelled pixels for ``(N, C, H, W)`` logits and ``(N, H, W)`` masks)."""
    return F.cross_entropy(
        logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing
    )


def soft_target(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The teacher's distribution ``softmax(logits / T)`` over dim 1, detached: no gradient
    flows back into the largest width."""
    logits = logits.detach()
    return (logits if temperature == 1.0 else logits / temperature).softmax(dim=1)


def soft_cross_entropy(
    logits: Tensor, soft_target: Tensor, keep: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """``-sum(p * log_softmax(logits / T))`` over dim 1, averaged over the batch (and pixels),
    times ``T**2``; ``keep`` (a boolean mask of those positions) averages over the kept ones.

    In-place distillation (US-Nets): ``p`` is the largest width's :func:`soft_target`, so the
    narrow widths learn from the wide one without sending gradients back into it. A temperature
    ``T > 1`` softens both sides (Hinton et al., 2015); the ``T**2`` keeps the gradients' scale
    independent of ``T``.
    """
    scaled = logits if temperature == 1.0 else logits / temperature
    per_item = -(soft_target * F.log_softmax(scaled, dim=1)).sum(dim=1)
    if keep is None:
        loss = per_item.mean()
    else:
        weight = keep.to(per_item.dtype)
        loss = (per_item * weight).sum() / weight.sum().clamp(min=1.0)
    return loss if temperature == 1.0 else loss * temperature**2


@dataclass(frozen=True)
class Classification:
    """One label per image."""

    name: str = "classification"
    metric: str = "top1"
    metric_label: str = "top-1"
    row_keys: tuple[str, ...] = ("width", "top1", "top5", "loss")

    def loss(self, logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return cross_entropy(logits, target, label_smoothing)

    def soft_target(self, logits: Tensor, temperature: float = 1.0) -> Tensor:
        """In-place distillation's target: the largest width's distribution, detached."""
        return soft_target(logits, temperature)

    def distill_loss(
        self, logits: Tensor, soft_target: Tensor, target: Tensor, temperature: float = 1.0
    ) -> Tensor:
        return soft_cross_entropy(logits, soft_target, temperature=temperature)

    def evaluate(self, model: nn.Module, loader: Iterable, widths: WidthSpec, **kw: Any):
        return evaluate(model, loader, widths, **kw)

    def report(self, rows: Sequence[dict]) -> dict:
        return json_report(rows)

    def table(self, rows: Sequence[dict]) -> str:
        return format_table(rows)


@dataclass(frozen=True)
class Segmentation:
    """An ``HxW`` label mask per image; ``ignore_index`` marks pixels that count for nothing."""

    num_classes: int
    ignore_index: int = 255
    name: str = "segmentation"
    metric: str = "miou"
    metric_label: str = "mIoU"
    row_keys: tuple[str, ...] = ("width", "miou", "pixel_acc", "loss")

    def loss(self, logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return cross_entropy(logits, target, label_smoothing, self.ignore_index)

    def soft_target(self, logits: Tensor, temperature: float = 1.0) -> Tensor:
        """Per-pixel in-place distillation: the largest width's per-pixel distribution."""
        return soft_target(logits, temperature)

    def distill_loss(
        self, logits: Tensor, soft_target: Tensor, target: Tensor, temperature: float = 1.0
    ) -> Tensor:
        """Soft cross-entropy averaged over the labelled pixels (as the hard loss is)."""
        return soft_cross_entropy(logits, soft_target, target != self.ignore_index, temperature)

    def evaluate(self, model: nn.Module, loader: Iterable, widths: WidthSpec, **kw: Any):
        return evaluate_segmentation(
            model, loader, widths, self.num_classes, ignore_index=self.ignore_index, **kw
        )

    def report(self, rows: Sequence[dict]) -> dict:
        return segmentation_report(rows)

    def table(self, rows: Sequence[dict]) -> str:
        return format_segmentation_table(rows)


def task_for(info: DataInfo, num_classes: int | None = None) -> Classification | Segmentation:
    """The task of a data set (``info.task``), for a model of ``num_classes`` outputs."""
    if info.task == "segmentation":
        return Segmentation(num_classes or info.num_classes, info.ignore_index)
    if info.task == "classification":
        return Classification()
    raise ValueError(f"unknown task {info.task!r}; data sets are classification or segmentation")


__all__ = [
    "Classification",
    "Segmentation",
    "Task",
    "cross_entropy",
    "soft_cross_entropy",
    "task_for",
]
