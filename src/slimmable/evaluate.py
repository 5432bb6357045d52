"""Accuracy and cost of one network at many widths.

:func:`evaluate` loads each test batch once and runs it at every width; it returns one dict per
width: ``{"width", "top1", "top5", "loss", "macs"}`` (accuracies as fractions in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .profile import MacsCounter
from .units import format_count
from .width import Width, set_width
from .widthspec import WidthSpec, parse_widths


def evaluate(
    model: nn.Module,
    loader: Iterable,
    widths: WidthSpec,
    *,
    macs: bool = True,
    input_size: Sequence[int] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Top-1, top-5, mean loss and (with ``macs``) MACs of ``model`` at every width.

    ``loader`` yields ``(images, labels)``; each batch is loaded once and run at every width.
    ``widths`` is a list or a specification (see :func:`slimmable.parse_widths`).
    A width may be a nonuniform ``{layer: width}`` map: its row has ``"width": None`` and the
    map under ``"width_map"``. ``input_size`` (C, H, W) for the MAC count defaults to the first
    batch's image size.
    """
    widths = parse_widths(widths)
    totals = [[0, 0, 0.0] for _ in widths]  # per width: top-1 hits, top-5 hits, summed loss
    seen = 0
    for i, images, labels, logits in forward_at_widths(model, loader, widths, progress):
        if input_size is None:
            input_size = tuple(images.shape[1:])
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == labels[:, None]
        totals[i][0] += int(hits[:, 0].sum())
        totals[i][1] += int(hits.any(dim=1).sum())
        totals[i][2] += float(F.cross_entropy(logits, labels, reduction="sum"))
        seen += len(labels) if i == 0 else 0
    if seen == 0:
        raise ValueError("evaluation got no images: the test set is empty")
    rows = width_rows(model, widths, input_size if macs else None)
    for row, (top1, top5, loss) in zip(rows, totals, strict=True):
        row.update(top1=top1 / seen, top5=top5 / seen, loss=loss / seen)
    return rows


def forward_at_widths(
    model: nn.Module, loader: Iterable, widths: Sequence[Width], progress: bool = False
) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
    """``(width index, inputs, targets, outputs)`` for every batch of ``loader`` at every width.

    Each batch is loaded (and moved to the model's device) once and run at every width, in
    eval mode under ``no_grad``; the model's mode is restored afterwards. The evaluations of
    every task are this loop and what they add up from its outputs.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                for i, w in enumerate(widths):
                    with set_width(model, w):
                        outputs = model(inputs)
                    yield i, inputs, targets, outputs
    finally:
        model.train(was_training)


def width_rows(
    model: nn.Module, widths: Sequence[Width], input_size: Sequence[int] | None
) -> list[dict]:
    """One result row per width: ``{"width"}`` (``None`` and ``"width_map"`` for a nonuniform
    map), and ``"macs"`` at ``input_size`` (C, H, W) unless it is ``None``."""
    counter = None if input_size is None else MacsCounter(model, input_size)
    rows = []
    for w in widths:
        row: dict = {"width": None if isinstance(w, Mapping) else float(w)}
        if isinstance(w, Mapping):
            row["width_map"] = dict(w)
        if counter is not None:
            row["macs"] = counter(w)
        rows.append(row)
    return rows


def format_table(results: Sequence[dict]) -> str:
    """The per-width results as an aligned text table (accuracies in percent)."""
    return width_table(results, (("top-1", "top1", 7), ("top-5", "top5", 7)))


def width_table(results: Sequence[dict], columns: Sequence[tuple[str, str, int]]) -> str:
    """Rows of width and MACs, then each ``(header, key, column width)`` metric in percent."""
    head = "  ".join(f"{label:>{size}}" for label, _, size in columns)
    lines = [f"{'width':>7}  {'MACs':>9}  {head}"]
    for r in results:
        macs = format_count(r["macs"]) if "macs" in r else "-"
        width = "map" if r["width"] is None else f"{r['width']:.3f}"
        cells = "  ".join(f"{100 * r[key]:>{size - 1}.2f}%" for _, key, size in columns)
        lines.append(f"{width:>7}  {macs:>9}  {cells}")
    return "\n".join(lines)


def json_report(results: Sequence[dict]) -> dict:
    """The ``slimmable eval --json`` schema: ``{"widths": [{width, top1, top5, macs}]}``."""
    keys = ("width", "width_map", "top1", "top5", "macs")
    return {"widths": [{k: r[k] for k in keys if k in r} for r in results]}
