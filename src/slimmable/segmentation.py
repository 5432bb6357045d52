"""Semantic segmentation quality of one network at many widths: mIoU and pixel accuracy.

:func:`evaluate_segmentation` loads each test batch once and runs it at every width, adding
each width's predictions to its own confusion matrix (pixels labelled ``ignore_index`` are
left out). From a confusion matrix ``C`` (rows: true class, columns: predicted):

- IoU of class ``c``: ``C[c, c] / (row c + column c - C[c, c])``, for the classes that occur
  in the labels or the predictions; mIoU is their mean (as VOC and Cityscapes score);
- pixel accuracy: ``trace(C) / sum(C)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .evaluate import forward_at_widths, width_rows, width_table
from .widthspec import WidthSpec, parse_widths


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = -100
) -> Tensor:
    """``(num_classes, num_classes)`` int64 counts of (true class, predicted class) pixels."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        bad = int(t[(t < 0) | (t >= num_classes)][0])
        raise ValueError(
            f"a label mask holds class {bad}, outside 0..{num_classes - 1} (and not the ignore "
            f"label {ignore_index}); set model.num_classes to the data's classes"
        )
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes).cpu()


def iou_per_class(confusion: Tensor) -> list[float | None]:
    """IoU of each class; ``None`` for a class absent from both labels and predictions."""
    c = confusion.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    return [None if u == 0 else float(t / u) for t, u in zip(tp, union, strict=True)]


def mean_iou(confusion: Tensor) -> float:
    """Mean IoU over the classes present in the labels or the predictions."""
    ious = [v for v in iou_per_class(confusion) if v is not None]
    return sum(ious) / len(ious) if ious else 0.0


def pixel_accuracy(confusion: Tensor) -> float:
    total = int(confusion.sum())
    return float(confusion.diag().sum()) / total if total else 0.0


def scores(confusion: Tensor) -> dict:
    """``{"miou", "pixel_acc", "iou"}`` of one confusion matrix."""
    return {
        "miou": mean_iou(confusion),
        "pixel_acc": pixel_accuracy(confusion),
        "iou": iou_per_class(confusion),
    }


def evaluate_segmentation(
    model: nn.Module,
    loader: Iterable,
    widths: WidthSpec,
    num_classes: int,
    *,
    ignore_index: int = -100,
    macs: bool = True,
    input_size: Sequence[int] | None = None,
    progress: bool = False,
) -> list[dict]:
    """mIoU, pixel accuracy, per-class IoU, mean per-pixel loss and MACs at every width.

    ``loader`` yields ``(images, masks)``; ``model`` returns ``(N, num_classes, H, W)`` logits
    at the masks' size. Rows: ``{"width", "miou", "pixel_acc", "iou", "confusion", "loss",
    "macs"}``
    (``"width": None`` and ``"width_map"`` for a nonuniform map, as :func:`slimmable.evaluate`);
    ``widths`` is a list or a specification (see :func:`slimmable.parse_widths`).
    """
    widths = parse_widths(widths)
    confusions = [torch.zeros(num_classes, num_classes, dtype=torch.long) for _ in widths]
    losses = [0.0 for _ in widths]
    pixels = 0
    for i, images, masks, logits in forward_at_widths(model, loader, widths, progress):
        if input_size is None:
            input_size = tuple(images.shape[1:])
        if logits.shape[1] != num_classes or logits.shape[-2:] != masks.shape[-2:]:
            raise ValueError(
                f"the model gives logits {tuple(logits.shape)} for masks "
                f"{tuple(masks.shape)}; it needs (N, {num_classes}, H, W)"
            )
        confusions[i] += confusion_matrix(logits.argmax(1), masks, num_classes, ignore_index)
        losses[i] += float(
            F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="sum")
        )
        pixels += int((masks != ignore_index).sum()) if i == 0 else 0
    if pixels == 0:
        raise ValueError("evaluation got no labelled pixels: the test set is empty")
    rows = width_rows(model, widths, input_size if macs else None)
    for row, confusion, loss in zip(rows, confusions, losses, strict=True):
        row.update(scores(confusion), confusion=confusion.tolist(), loss=loss / pixels)
    return rows


def format_segmentation_table(results: Sequence[dict]) -> str:
    """The per-width results as an aligned text table (percent)."""
    return width_table(results, (("mIoU", "miou", 7), ("pixel acc", "pixel_acc", 9)))


def segmentation_report(results: Sequence[dict]) -> dict:
    """The ``eval.json`` schema: ``{"widths": [{width, miou, pixel_acc, macs}]}`` (+ ``iou``)."""
    keys = ("width", "width_map", "miou", "pixel_acc", "macs", "iou")
    return {"widths": [{k: r[k] for k in keys if k in r} for r in results]}


__all__ = [
    "confusion_matrix",
    "evaluate_segmentation",
    "format_segmentation_table",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "scores",
    "segmentation_report",
]
