"""Accuracy and cost of one network at many widths.

:func:`evaluate` loads each test batch once and runs it at every width; it returns one dict per
width: ``{"width", "top1", "top5", "loss", "macs"}`` (accuracies as fractions in [0, 1]).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .width import Width, set_width, width_bounds, width_choices


def _macs(model: nn.Module, input_size: Sequence[int], width: Width) -> int:
    """Multiply-accumulates of one ``input_size`` (C, H, W) image at ``width``.

    Counted by ``torch.utils.flop_counter`` (convolutions and matrix products, 1 MAC = 2 FLOPs),
    the papers' convention. Kept behind this one function so ``slimmable.profile`` can replace it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    x = torch.zeros(1, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), set_width(model, width), FlopCounterMode(display=False) as counter:
            _forward_any(model, x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def _forward_any(model: nn.Module, x: Tensor) -> Tensor:
    """Forward that does not need calibrated BN statistics (only the cost matters)."""
    from .layers.norm import USBatchNorm2d

    norms = [m for m in model.modules() if isinstance(m, USBatchNorm2d)]
    saved = [m.uncalibrated for m in norms]
    for m in norms:
        m.uncalibrated = "running"
    try:
        return model(x)
    finally:
        for m, policy in zip(norms, saved, strict=True):
            m.uncalibrated = policy


def parse_widths(spec: str | Sequence[str]) -> list[float]:
    """Widths from text: ``"0.25,0.5,1"``, a grid ``"0.25:1.0:0.025"`` (inclusive), or both.

    Duplicates are dropped; the result is sorted.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    widths: set[float] = set()
    for item in items:
        for part in item.replace(" ", ",").split(","):
            if not part:
                continue
            try:
                if ":" in part:
                    lo, hi, step = (float(v) for v in part.split(":"))
                    if step <= 0 or hi < lo:
                        raise ValueError
                    count = math.floor((hi - lo) / step + 1e-6)
                    widths.update(round(lo + i * step, 6) for i in range(count + 1))
                else:
                    widths.add(round(float(part), 6))
            except ValueError:
                raise ValueError(
                    f"cannot read widths {part!r}; give numbers like 0.25,0.5,1.0 or a grid "
                    "lo:hi:step such as 0.25:1.0:0.025"
                ) from None
    if not widths:
        raise ValueError("no widths given; e.g. --widths 0.25,0.5,1.0")
    return sorted(widths)


def default_widths(model: nn.Module, count: int = 8) -> list[float]:
    """The switches of an S-Net, or ``count`` evenly spaced widths over a US model's range."""
    choices = width_choices(model)
    if choices is not None:
        return list(choices)
    lo, hi = width_bounds(model)
    if count < 2 or hi == lo:
        return [hi]
    return sorted({round(lo + (hi - lo) * i / (count - 1), 6) for i in range(count)})


def evaluate(
    model: nn.Module,
    loader: Iterable,
    widths: Sequence[Width],
    *,
    macs: bool = True,
    input_size: Sequence[int] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Top-1, top-5, mean loss and (with ``macs``) MACs of ``model`` at every width.

    ``loader`` yields ``(images, labels)``; each batch is loaded once and run at every width.
    A width may be a nonuniform ``{layer: width}`` map: its row has ``"width": None`` and the
    map under ``"width_map"``. ``input_size`` (C, H, W) for the MAC count defaults to the first
    batch's image size.
    """
    if not widths:
        raise ValueError("evaluate needs at least one width")
    device = next(model.parameters()).device
    totals = [[0, 0, 0.0] for _ in widths]  # per width: top-1 hits, top-5 hits, summed loss
    seen = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, labels in tqdm(loader, desc="eval", disable=not progress, leave=False):
                if input_size is None:
                    input_size = tuple(images.shape[1:])
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                for i, w in enumerate(widths):
                    with set_width(model, w):
                        logits = model(images)
                    k = min(5, logits.shape[1])
                    top = logits.topk(k, dim=1).indices
                    hits = top == labels[:, None]
                    totals[i][0] += int(hits[:, 0].sum())
                    totals[i][1] += int(hits.any(dim=1).sum())
                    totals[i][2] += float(F.cross_entropy(logits, labels, reduction="sum"))
                seen += len(labels)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluation got no images: the test set is empty")
    results = []
    for w, (top1, top5, loss) in zip(widths, totals, strict=True):
        row: dict = {"width": None if isinstance(w, Mapping) else float(w)}
        if isinstance(w, Mapping):
            row["width_map"] = dict(w)
        row.update(top1=top1 / seen, top5=top5 / seen)
        if macs:
            assert input_size is not None
            row["macs"] = int(_macs(model, input_size, w))
        row["loss"] = loss / seen
        results.append(row)
    return results


def format_macs(macs: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.2f}{unit}"
    return f"{macs:.0f}"


def format_table(results: Sequence[dict]) -> str:
    """The per-width results as an aligned text table (accuracies in percent)."""
    lines = [f"{'width':>7}  {'MACs':>9}  {'top-1':>7}  {'top-5':>7}"]
    for r in results:
        macs = format_macs(r["macs"]) if "macs" in r else "-"
        width = "map" if r["width"] is None else f"{r['width']:.3f}"
        lines.append(f"{width:>7}  {macs:>9}  {100 * r['top1']:>6.2f}%  {100 * r['top5']:>6.2f}%")
    return "\n".join(lines)


def json_report(results: Sequence[dict]) -> dict:
    """The ``slimmable eval --json`` schema: ``{"widths": [{width, top1, top5, macs}]}``."""
    keys = ("width", "width_map", "top1", "top5", "macs")
    return {"widths": [{k: r[k] for k in keys if k in r} for r in results]}
