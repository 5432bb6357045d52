"""``slimmable eval RUN [--widths SPEC ...] [--json] [--plot FILE]``: accuracy, MACs per width."""

from __future__ import annotations

import argparse
import json
import sys

from .args import (
    add_debug_argument,
    add_progress_argument,
    add_run_arguments,
    add_widths_argument,
    open_run,
    positive_int,
    progress_enabled,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="top-1 / top-5 and MACs of a run at each width",
        description="Evaluate a run (or the authors' weights) on its test set at each width. "
        "Widths of a US model that were never calibrated are calibrated first, in memory, on "
        "the run's calibration images (`slimmable calibrate` stores them).",
    )
    add_run_arguments(p)
    add_widths_argument(p, default="the run's eval widths")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE", help="also write accuracy against MACs as a PNG")
    p.add_argument(
        "--uncalibrated", choices=("calibrate", "running", "error"), default="calibrate",
        help="US widths without statistics: calibrate them (default), use the shared running "
        "statistics (what goes wrong without calibration), or fail",
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, help="evaluation batch size")
    add_progress_argument(p)
    add_debug_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..calibrate import is_calibrated
    from ..data.loader import eval_loader
    from ..plot import plot_accuracy
    from ..width import set_uncalibrated, width_choices

    run_ = open_run(args)
    model, cfg = run_.model, run_.config
    widths = run_.widths(args.widths)
    progress = progress_enabled(args)
    if width_choices(model) is None:  # a US model: calibrated statistics per width
        missing = [w for w in widths if not is_calibrated(model, w)]
        if missing and args.uncalibrated == "calibrate":
            print(f"calibrating {len(missing)} widths first", file=sys.stderr)
            run_.calibrate(missing, progress=progress)
        elif args.uncalibrated == "running":
            set_uncalibrated(model, "running")
    test = run_.data.test
    loader = eval_loader(test, args.batch_size or cfg.eval.batch_size, workers=cfg.data.workers)
    task = run_.task  # classification (top-1 / top-5) or segmentation (mIoU, pixel accuracy)
    results = task.evaluate(model, loader, widths, input_size=run_.input_size, progress=progress)
    if args.json:
        print(json.dumps(task.report(results), indent=2))
    else:
        print(task.table(results))
    if args.plot:
        label = "official" if run_.path is None else cfg.train.mode
        title = f"{run_.name} ({label})"
        plot_accuracy({label: results}, args.plot, metric=task.metric, title=title)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
