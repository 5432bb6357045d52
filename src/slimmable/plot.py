"""Accuracy against MACs, one line per run or training mode (matplotlib, no display needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

MIN_SPAN = 5.0  # accuracy points the y axis always shows: a 1-point spread stays small
METRICS = {  # a result row's key: its axis label
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "miou": "mIoU",
    "pixel_acc": "pixel accuracy",
}


def plot_accuracy(
    runs: Mapping[str, Sequence[dict]],
    path: str | Path,
    *,
    metric: str = "top1",
    title: str | None = None,
) -> Path:
    """Write a PNG of ``metric`` (percent) against MACs; ``runs`` maps a label to result rows.

    Rows are dicts with ``width``, ``macs`` and the metric, as :func:`slimmable.evaluate` returns.
    The y axis spans at least :data:`MIN_SPAN` points, so that near-equal accuracies look near
    equal; width labels that would overlap another label are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        draw_accuracy(ax, runs, metric=metric, title=title)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def draw_accuracy(
    ax, runs: Mapping[str, Sequence[dict]], *, metric: str = "top1", title: str | None = None
) -> list:
    """Draw the accuracy-against-MACs lines on ``ax``; returns the width labels drawn."""
    values: list[float] = []
    labelled: list[tuple[str, tuple[float, float]]] = []
    for label, rows in runs.items():
        rows = sorted((r for r in rows if "macs" in r), key=lambda r: r["macs"])
        if not rows:
            raise ValueError(f"run {label!r} has no MAC counts to plot")
        x = [r["macs"] / 1e6 for r in rows]
        y = [100 * r[metric] for r in rows]
        values += y
        ax.plot(x, y, marker="o" if len(rows) <= 12 else ".", label=label)
        for r, xi, yi in zip(rows, x, y, strict=True):
            labelled.append(("map" if r["width"] is None else f"{r['width']:g}", (xi, yi)))
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel(f"{METRICS[metric]} (%)")
    ax.set_title(title or "accuracy against cost, per width")
    ax.grid(True, alpha=0.3)
    if len(runs) > 1:
        ax.legend()
    pad = max(MIN_SPAN - (max(values) - min(values)), 0.0) / 2 + 0.5
    bottom, top = min(values) - pad, max(values) + pad
    shift = max(0.0, top - 100.0) - max(0.0, -bottom)  # keep the span inside [0, 100]
    ax.set_ylim(max(0.0, bottom - shift), min(100.0, top - shift))
    ax.figure.tight_layout()
    return _label_points(ax, labelled)


def _label_points(ax, points: list) -> list:
    """Annotate points with their widths, skipping any label that would overlap one drawn."""
    renderer = ax.figure.canvas.get_renderer()
    drawn, boxes = [], []
    for text, xy in points:
        note = ax.annotate(text, xy, textcoords="offset points", xytext=(3, -10), fontsize=7)
        box = note.get_window_extent(renderer).expanded(1.05, 1.1)
        if any(box.overlaps(other) for other in boxes):
            note.remove()
            continue
        drawn.append(note)
        boxes.append(box)
    return drawn


def load_run(run: str | Path) -> tuple[str, list[dict]]:
    """``(label, rows)`` of a run folder (its ``eval.json``; label from ``config.yaml``).

    ``run`` may also be an ``eval.json`` file, labelled by its folder's name.
    """
    run = Path(run)
    path = run / "eval.json" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"no eval.json in {run}; train or `slimmable eval --json` first")
    with open(path) as f:
        rows = json.load(f).get("widths")
    if not isinstance(rows, list):
        raise ValueError(f"{path} has no 'widths' list; is it a `slimmable eval --json` file?")
    label = path.parent.name
    config = path.parent / "config.yaml"
    if config.is_file():
        with open(config) as f:
            mode = ((yaml.safe_load(f) or {}).get("train") or {}).get("mode")
        label = mode or label
    return label, rows


def plot_runs(
    runs: Sequence[str | Path], path: str | Path, *, metric: str | None = None, by: str = "mode"
) -> Path:
    """Plot several runs; with ``by="mode"`` runs of one training mode join into one line.

    Four ``individual`` runs (one per width) then draw one baseline line next to the
    ``slimmable`` one, as in the papers' figures; ``by="run"`` draws a line per folder.
    """
    lines: dict[str, list[dict]] = {}
    for run in runs:
        label, rows = load_run(run)
        if by == "run":
            label = Path(run).name if Path(run).is_dir() else Path(run).parent.name
        lines.setdefault(label, []).extend(rows)
    if metric is None:  # segmentation runs report mIoU, classification runs top-1
        every = [r for rows in lines.values() for r in rows]
        metric = "miou" if every and all("miou" in r for r in every) else "top1"
    return plot_accuracy(lines, path, metric=metric)
