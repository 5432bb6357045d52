"""Accuracy against MACs, one line per run or training mode (matplotlib, no display needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml


def plot_accuracy(
    runs: Mapping[str, Sequence[dict]],
    path: str | Path,
    *,
    metric: str = "top1",
    title: str | None = None,
) -> Path:
    """Write a PNG of ``metric`` (percent) against MACs; ``runs`` maps a label to result rows.

    Rows are dicts with ``width``, ``macs`` and the metric, as :func:`slimmable.evaluate` returns.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in ("top1", "top5"):
        raise ValueError(f"metric must be 'top1' or 'top5', got {metric!r}")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        for label, rows in runs.items():
            rows = sorted((r for r in rows if "macs" in r), key=lambda r: r["macs"])
            if not rows:
                raise ValueError(f"run {label!r} has no MAC counts to plot")
            x = [r["macs"] / 1e6 for r in rows]
            y = [100 * r[metric] for r in rows]
            marker = "o" if len(rows) <= 12 else "."
            ax.plot(x, y, marker=marker, label=label)
            if len(rows) <= 12:
                for r, xi, yi in zip(rows, x, y, strict=True):
                    ax.annotate(
                        "map" if r["width"] is None else f"{r['width']:g}",
                        (xi, yi),
                        textcoords="offset points",
                        xytext=(3, -10),
                        fontsize=7,
                    )
        ax.set_xlabel("MACs (millions)")
        ax.set_ylabel(f"{'top-1' if metric == 'top1' else 'top-5'} accuracy (%)")
        ax.set_title(title or "accuracy against cost, per width")
        ax.grid(True, alpha=0.3)
        if len(runs) > 1:
            ax.legend()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


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
    runs: Sequence[str | Path], path: str | Path, *, metric: str = "top1", by: str = "mode"
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
    return plot_accuracy(lines, path, metric=metric)
