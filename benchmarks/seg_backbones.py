"""The S-Nets paper's backbone claim, on segmentation: slimmable and US backbones at each width
against backbones trained individually at that width.

The paper (Section 4.2) reports that slimmable networks used as backbones do better at every
width than individually trained ones. Here every network is trained on the segmentation recipe
(``configs/seg_digits.yaml``: digit canvases, a small-CNN backbone and a light FPN head), over
several seeds:

- ``slimmable``: one S-Net at ``WIDTHS`` (switchable BN, every width each step, distillation
  as the recipe sets it: off);
- ``universal``: the recipe itself (US-Net over the same range, sandwich rule, calibrated BN);
- ``individual_<w>``: one network per width, trained alone.

It writes the mean and spread (sample std over seeds) of mIoU per width as a table and a plot
into ``docs/segmentation.md`` (between the ``seg_backbones`` markers), with a verdict computed
from the numbers, and the raw numbers to ``benchmarks/results/seg_backbones.json``. Every run
is cached (a run folder holding ``eval.json`` is not trained again). Not part of CI::

    nice -n 10 python benchmarks/seg_backbones.py            # 3 seeds (see the docs for time)
    python benchmarks/seg_backbones.py --quick               # a smoke check: 1 seed, 1 epoch
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/seg_digits.yaml"
START, END = "<!-- seg_backbones:start -->", "<!-- seg_backbones:end -->"
QUICK_HOLDOUT = 5600  # --quick trains on 400 of the 6,000 training canvases
WIDTHS = [0.6, 0.8, 1.0]  # the recipe's range: its ends and a width between


def plan(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """``({run name: config dict}, widths)`` of every run the report needs."""
    from slimmable.config import load_config

    base = load_config(RECIPE).to_dict()
    widths = list(WIDTHS)
    base["train"].update(progress=False, threads=1)
    if args.epochs is not None:
        base["train"]["epochs"] = args.epochs
    if args.quick:
        base["data"]["holdout"] = QUICK_HOLDOUT
        base["calibrate"]["images"] = 256
    base["eval"].update(every=0, widths=widths)
    runs: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:

        def add(name: str, mode: str, model: dict[str, Any], seed: int = seed) -> None:
            cfg = json.loads(json.dumps(base))
            cfg["train"].update(mode=mode, seed=seed)
            cfg["model"].update({"widths": None, "width_range": None, **model})
            if mode == "individual":
                cfg["eval"]["widths"] = model["widths"]
            runs[f"{name}_s{seed}"] = cfg

        add("universal", "universal", {"width_range": [widths[0], widths[-1]]})
        add("slimmable", "slimmable", {"widths": widths})
        for w in widths:
            add(f"individual_{w:g}", "individual", {"widths": [w]})
    return runs, widths


def cost(cfg: dict[str, Any]) -> float:
    """Relative training cost (about quadratic in width), to start the longest runs first."""
    t, m = cfg["train"], cfg["model"]
    if t["mode"] == "universal":
        lo, hi = m["width_range"]
        return hi**2 + lo**2 + (t["num_sample_widths"] - 2) * (lo**2 + lo * hi + hi**2) / 3
    return sum(w * w for w in m["widths"])


def train_one(job: tuple[str, dict[str, Any], str]) -> tuple[str, float]:
    import slimmable

    name, cfg, out = job
    t0 = time.perf_counter()
    slimmable.train(cfg, out, overwrite=True)  # an interrupted run restarts from scratch
    seconds = time.perf_counter() - t0
    (Path(out) / "seconds.json").write_text(json.dumps({"train_seconds": seconds}))
    return name, seconds


def run_all(runs: dict[str, dict[str, Any]], runs_dir: Path, workers: int) -> None:
    todo = [
        (name, cfg, str(runs_dir / name))
        for name, cfg in sorted(runs.items(), key=lambda kv: -cost(kv[1]))
        if not (runs_dir / name / "eval.json").is_file()
    ]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} cached, {len(todo)} to train", flush=True)
    t0 = time.perf_counter()
    if workers <= 1 or len(todo) <= 1:
        done = map(train_one, todo)
    else:
        pool = mp.get_context("spawn").Pool(workers)
        done = pool.imap_unordered(train_one, todo)
    for i, (name, seconds) in enumerate(done, 1):
        elapsed = time.perf_counter() - t0
        print(f"[{i}/{len(todo)}] {name}: {seconds:.0f} s ({elapsed:.0f} s elapsed)", flush=True)
    if workers > 1 and len(todo) > 1:
        pool.close()
        pool.join()


# ---- analysis --------------------------------------------------------------------------------
def miou(runs_dir: Path, name: str) -> dict[float, float]:
    with open(runs_dir / name / "eval.json") as f:
        return {round(r["width"], 6): r["miou"] for r in json.load(f)["widths"]}


def collect(runs_dir: Path, seeds: Sequence[int], widths: Sequence[float]) -> dict:
    """``{kind: {width: [mIoU per seed]}}`` and the training seconds of each kind."""
    data: dict[str, dict[float, list[float]]] = {
        k: {w: [] for w in widths} for k in ("individual", "slimmable", "universal")
    }
    seconds: dict[str, list[float]] = {k: [] for k in data}
    for seed in seeds:
        for kind in ("slimmable", "universal"):
            res = miou(runs_dir, f"{kind}_s{seed}")
            for w in widths:
                data[kind][w].append(res[w])
            seconds[kind].append(_seconds(runs_dir / f"{kind}_s{seed}"))
        total = 0.0
        for w in widths:
            data["individual"][w].append(miou(runs_dir, f"individual_{w:g}_s{seed}")[w])
            total += _seconds(runs_dir / f"individual_{w:g}_s{seed}")
        seconds["individual"].append(total)
    return {"miou": data, "seconds": seconds}


def _seconds(run: Path) -> float:
    path = run / "seconds.json"
    return json.loads(path.read_text())["train_seconds"] if path.is_file() else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float) * 100
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def pm(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.1f} ± {s:.1f}"


def verdict(data: dict, widths: Sequence[float], kind: str) -> tuple[list, list, list]:
    """Widths where ``kind`` beats / trails / ties the individual networks: a difference of
    means larger than the larger of the two spreads counts, anything else is a tie."""
    better, worse, tied = [], [], []
    for w in widths:
        (m, s), (mi, si) = mean_std(data[kind][w]), mean_std(data["individual"][w])
        margin = max(s, si)
        (better if m - mi > margin else worse if mi - m > margin else tied).append(w)
    return better, worse, tied


def _widths(ws: Sequence[float]) -> str:
    names = [f"{w:.1f}" for w in ws]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def comparison(label: str, better: list, worse: list, tied: list) -> str:
    """One sentence: where a shared backbone beats, trails or ties the individual networks."""
    if not better and not worse:
        return f"{label} is within the seeds' spread of the individual networks at every width."
    parts = [
        f"{what} at {_widths(ws)}"
        for what, ws in (
            ("beats the individual networks", better),
            ("trails them" if better else "trails the individual networks", worse),
            ("is within the seeds' spread", tied),
        )
        if ws
    ]
    return (
        f"{label} {', '.join(parts[:-1])} and {parts[-1]}."
        if len(parts) > 1
        else (f"{label} {parts[0]}.")
    )


def report(args, runs_dir: Path, widths: list[float], result: dict, image: Path) -> str:
    data, seconds = result["miou"], result["seconds"]
    rows = []
    for w in widths:
        ind = mean_std(data["individual"][w])[0]
        rows.append(
            f"| {w:.1f} | {pm(data['individual'][w])} | {pm(data['slimmable'][w])} "
            f"({mean_std(data['slimmable'][w])[0] - ind:+.1f}) | {pm(data['universal'][w])} "
            f"({mean_std(data['universal'][w])[0] - ind:+.1f}) |"
        )
    lines = [
        f"mIoU (%) on the test canvases, mean ± std over seeds "
        f"{', '.join(map(str, args.seeds))}; in brackets, the difference of the means to the "
        "individual networks':",
        "",
        "| width | individual | S-Net backbone | US-Net backbone |",
        "|---|---|---|---|",
        *rows,
        "",
        f"![mIoU per width]({os.path.relpath(image, args.report.parent)})",
        "",
    ]
    if len(args.seeds) < 2:
        lines += [
            "One seed gives no spread to judge a difference by: this is a smoke check, not a "
            "verdict on the paper's claim.",
            "",
        ]
        return "\n".join([*lines, _footer(args, widths, seconds)])
    said, better_somewhere, worse_somewhere = [], False, False
    for kind, label in (("slimmable", "The S-Net"), ("universal", "The US-Net")):
        better, worse, tied = verdict(data, widths, kind)
        said.append(comparison(label, better, worse, tied))
        better_somewhere |= bool(better)
        worse_somewhere |= bool(worse)
    if better_somewhere and not worse_somewhere:
        claim = (
            "**The paper's claim reproduces here**: no width of either shared backbone is "
            "worse than the individual networks, and some are better"
        )
    elif better_somewhere:
        claim = "**The paper's claim reproduces in part**: some widths are better, some worse"
    else:
        claim = (
            "**The paper's claim does not reproduce here**: no width of either shared backbone "
            "is better than the individual networks"
        )
    lines += [
        f"{claim}. {' '.join(said)} A difference counts when the means differ by more than "
        "the larger of the two standard deviations.",
        "",
        _footer(args, widths, seconds),
    ]
    return "\n".join(lines)


def _footer(args, widths: Sequence[float], seconds: dict) -> str:
    return (
        f"Training time per seed (one thread per run, {args.workers} at a time, on the shared "
        f"machine): S-Net {np.nanmean(seconds['slimmable']):.0f} s, US-Net "
        f"{np.nanmean(seconds['universal']):.0f} s, the {len(widths)} individual networks "
        f"{np.nanmean(seconds['individual']):.0f} s together. Made by `{args.command}` "
        f"({time.strftime('%Y-%m-%d')}; runs in `{args.runs_label}`)."
    )


def plot(widths: list[float], data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    try:
        for kind, label in (
            ("individual", "individual"),
            ("slimmable", "S-Net"),
            ("universal", "US-Net"),
        ):
            a = np.asarray([data[kind][w] for w in widths], dtype=float).T * 100
            mean = a.mean(0)
            ax.plot(widths, mean, marker="o", label=label)
            if len(a) > 1:
                std = a.std(0, ddof=1)
                ax.fill_between(widths, mean - std, mean + std, alpha=0.15)
        ax.set_xlabel("width")
        ax.set_ylabel("mIoU (%)")
        ax.set_title("segmentation backbones: shared vs individually trained")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_section(doc: Path, section: str) -> None:
    """Put ``section`` between the markers of ``doc`` (appended, with them, if absent)."""
    text = doc.read_text() if doc.is_file() else "# Segmentation\n"
    block = f"{START}\n{section}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke check: 1 seed, 1 epoch, 400 images")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick 0)")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per run (default: the recipe's)"
    )
    p.add_argument("--workers", type=int, default=2, help="runs trained at once (default 2)")
    p.add_argument("--runs", default=None, help="run folders (default runs/seg_backbones[_quick])")
    p.add_argument("--report", default=None, help="markdown file (default docs/segmentation.md)")
    p.add_argument("--json", default=None, help="raw numbers (default benchmarks/results/...)")
    args = p.parse_args(argv)
    args.command = "python benchmarks/seg_backbones.py " + shlex.join(list(argv or sys.argv[1:]))
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    if args.quick and args.epochs is None:
        args.epochs = 1
    suffix = "_quick" if args.quick else ""
    runs_dir = Path(args.runs or ROOT / f"runs/seg_backbones{suffix}")
    args.runs_label = os.path.relpath(runs_dir, ROOT) if runs_dir.is_relative_to(ROOT) else runs_dir
    args.report = Path(args.report or ROOT / "docs/segmentation.md")
    raw = Path(args.json or ROOT / f"benchmarks/results/seg_backbones{suffix}.json")
    image = args.report.parent / "img" / f"seg_backbones{suffix}.png"

    runs, widths = plan(args)
    t0 = time.perf_counter()
    run_all(runs, runs_dir, args.workers)
    result = collect(runs_dir, args.seeds, widths)
    plot(widths, result["miou"], image)
    write_section(args.report, report(args, runs_dir, widths, result, image))
    raw.parent.mkdir(parents=True, exist_ok=True)
    serial = {
        "widths": widths,
        "seeds": args.seeds,
        "miou": {k: {f"{w:g}": v for w, v in d.items()} for k, d in result["miou"].items()},
        "train_seconds": result["seconds"],
        "command": args.command,
    }
    raw.write_text(json.dumps(serial, indent=2))
    print(
        f"report: {args.report}, plot: {image}, numbers: {raw} ({time.perf_counter() - t0:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
