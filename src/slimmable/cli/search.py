"""``slimmable search RUN --targets 150M,300M``: AutoSlim channel search on a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from ..data.loader import eval_view
from .args import (
    add_debug_argument,
    add_progress_argument,
    add_run_arguments,
    open_run,
    positive_int,
    progress_enabled,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="AutoSlim: per-layer channel numbers for MACs targets",
        description="Greedily slim a trained slimmable network, one channel group at a time, "
        "removing where it hurts validation accuracy least; record the per-layer channels at "
        "each MACs target. Trials are scored on the training images the run held out "
        "(data.holdout), which training never saw. The JSON feeds eval / profile / calibrate "
        "--widths, export --width, extract_subnet and the autoslim_* models.",
    )
    add_run_arguments(p)
    p.add_argument(
        "--targets", required=True,
        help="MACs per image, comma-separated: 150M,300M (k, M, G) or 50%%,75%% of full",
    )  # fmt: skip
    p.add_argument(
        "--split", choices=("holdout", "train"), default="holdout",
        help="images that score the trials: the run's held-out training images (default), or "
        "training images it trained on (biased: only when the run held none out)",
    )  # fmt: skip
    p.add_argument(
        "--batches", type=positive_int, default=10,
        help="K: batches of those images that score every trial (default 10)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument(
        "--metric", choices=("accuracy", "loss"), default="accuracy",
        help="what a removal must hurt least (default accuracy, ties broken by loss)",
    )  # fmt: skip
    p.add_argument(
        "--per-mac", action="store_true",
        help="divide each removal's harm by the MACs it saves (not in the paper)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="which of those images are drawn")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--out", help="JSON file to write (default: autoslim.json beside RUN)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_progress_argument(p)
    add_debug_argument(p)
    p.set_defaults(func=run)


def scoring_images(run_, split: str, count: int, seed: int) -> tuple[Subset, str]:
    """``count`` images of ``split`` drawn with ``seed``, eval-style, and what they are."""
    data = run_.data
    if split == "holdout":
        pool = data.holdout
        if len(pool) == 0:
            raise ValueError(
                "this run held no training images out (data.holdout=0), so AutoSlim would "
                "score on images it trained on; retrain with --set data.holdout=500 (or more), "
                "or pass --split train to score on training images anyway"
            )
        what = "held-out training images (data.holdout: never trained on)"
    else:
        pool, what = eval_view(data.train), "training images the run trained on (--split train)"
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(pool), generator=g)[: min(len(pool), count)].tolist()
    return Subset(pool, chosen), what


def run(args: argparse.Namespace) -> int:
    from ..search import autoslim
    from ..units import format_count, parse_macs

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        parse_macs(t, full_macs=10**12)  # fail on a typo before loading anything
    if args.batch_size < 2:
        raise ValueError("--batch-size must be at least 2 (BN scores with batch statistics)")
    if args.checkpoint is None and args.official is None:
        raise ValueError("give a checkpoint (or a run folder), or --official PATH --model NAME")
    where = Path(args.checkpoint or args.official)
    out = Path(args.out) if args.out else where.with_name("autoslim.json")
    if where.is_dir() and not args.out:
        out = where / "autoslim.json"
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; give --overwrite to replace it, or another --out")
    run_ = open_run(args)
    if run_.has_data and run_.task.name != "classification":
        raise ValueError(
            f"slimmable search scores classification accuracy; this run is {run_.task.name} "
            "(search a classification run of the backbone, then train the found channels)"
        )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = run_.model.to(device)
    images, what = scoring_images(run_, args.split, args.batches * args.batch_size, args.seed)
    loader = DataLoader(images, batch_size=args.batch_size, shuffle=False)
    spec = run_.checkpoint["model"]
    result = autoslim(
        model,
        loader,
        targets,
        input_size=run_.input_size,
        metric=args.metric,
        per_mac=args.per_mac,
        progress=progress_enabled(args),
        model_name=spec["name"],
        model_kwargs=spec.get("kwargs", {}),
    )
    result.scored_on = {"split": args.split, "images": len(images), "seed": args.seed}
    result.save(out)
    full = result.trace[0]
    print(
        f"scored on {result.num_images} {what}; full width: {format_count(result.full_macs)} "
        f"MACs, accuracy {full['val_accuracy']:.2%} ({args.metric})"
    )
    print(f"{'target':>8} {'MACs':>9} {'acc':>7} {'loss':>7}  channels")
    for r in result.results:
        channels = ",".join(str(c) for c in r.channels.values())
        print(
            f"{r.target:>8} {format_count(r.macs):>9} {r.val_accuracy:>7.2%} "
            f"{r.val_loss:>7.4f}  {channels}"
        )
    print(f"written to {out}", file=sys.stderr)
    return 0
