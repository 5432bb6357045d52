"""``slimmable select RUN --max-macs 150M | --max-latency-ms 12``: the width to deploy."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import add_debug_argument, add_run_arguments, open_run, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "select",
        help="the most accurate width that fits a MACs or latency budget",
        description="Pick the most accurate evaluated width whose cost fits the budget. "
        "Accuracy comes from the checkpoint's evaluation (or --eval / eval.json beside it); "
        "MACs from that table (or counted from the checkpoint when it has none); latency is "
        "measured here, on this machine. CKPT may also be an eval.json when only --max-macs is "
        "given.",
    )
    add_run_arguments(p, data=False)
    p.add_argument("--max-macs", metavar="M", help="MACs budget per image: 150M, 1.2G, 3e8")
    p.add_argument(
        "--max-latency-ms", metavar="T", type=float, help="latency budget per batch, measured"
    )
    p.add_argument("--eval", metavar="JSON", help="evaluation table (default: the checkpoint's)")
    p.add_argument(
        "--input-size", help="C,H,W or S for latency (default: the checkpoint's, else 224)"
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch for latency (1)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for latency (torch's)")
    p.add_argument("--repeats", type=positive_int, default=30, help="timed forwards (30)")
    p.add_argument("--json", action="store_true", help="print the choice as JSON")
    add_debug_argument(p)
    p.set_defaults(func=run)


def _accuracy_source(args: argparse.Namespace, run_) -> object:
    if args.eval:
        return args.eval
    if run_ is None:
        return args.checkpoint
    if run_.checkpoint.get("eval"):
        return run_.checkpoint
    beside = None if run_.path is None else run_.path.parent / "eval.json"
    if beside is not None and beside.is_file():
        return beside
    where = "the authors' weights" if run_.path is None else str(run_.path)
    raise ValueError(
        f"{where}: no evaluation to choose from and no eval.json beside it; run "
        "`slimmable eval ... --json > eval.json` first and give --eval eval.json"
    )


def run(args: argparse.Namespace) -> int:
    from ..latency import format_latency_table, measure_latency
    from ..profile import profile
    from ..select import describe, eval_rows, select_width
    from ..units import format_count
    from .export import parse_input_size

    if args.max_macs is None and args.max_latency_ms is None:
        raise ValueError("give a budget: --max-macs 150M and/or --max-latency-ms 12")
    is_table = args.checkpoint is not None and Path(args.checkpoint).suffix == ".json"
    run_ = None if is_table else open_run(args)
    rows = eval_rows(_accuracy_source(args, run_))
    widths = [r["width"] for r in rows]  # uniform widths and per-layer maps
    model = None if run_ is None else run_.model
    input_size = None if run_ is None else parse_input_size(args.input_size, run_.input_size)
    macs = None
    if args.max_macs is not None and any(r.get("macs") is None for r in rows):
        if model is None:
            raise ValueError("the evaluation table has no MACs; give the checkpoint to count them")
        macs = profile(model, input_size, widths)  # counted on shapes alone
    latency = None
    if args.max_latency_ms is not None:
        if model is None:
            raise ValueError("a latency budget needs the checkpoint, to measure; give CKPT")
        latency = measure_latency(
            model,
            input_size,
            widths,
            batch_size=args.batch_size,
            repeats=args.repeats,
            threads=args.threads,
        )
        if not args.json:
            print(format_latency_table(latency))
    metric = "miou" if rows and all("miou" in r for r in rows) else "top1"  # a segmentation run
    choice = select_width(
        rows,
        metric=metric,
        max_macs=args.max_macs,
        max_latency_ms=args.max_latency_ms,
        macs=macs,
        latency=latency,
    )
    if args.json:
        print(json.dumps(choice, indent=2))
        return 0
    shown = "mIoU" if metric == "miou" else "top-1"
    parts = [f"width {describe(choice['width'])}", f"{shown} {100 * float(choice[metric]):.2f}%"]
    if choice.get("macs") is not None:
        parts.append(f"{format_count(float(choice['macs']))} MACs")
    if choice.get("latency_ms") is not None:
        parts.append(f"{choice['latency_ms']:.2f} ms (batch {args.batch_size})")
    print("selected: " + ", ".join(parts))
    return 0
