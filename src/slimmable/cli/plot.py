"""``slimmable plot RUN_DIR... --out FILE``: accuracy against MACs of several runs."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="plot accuracy against MACs of several runs (one line per training mode)",
        description="Read each run's eval.json (or an eval --json file) and draw accuracy "
        "against MACs; runs of one training mode (e.g. several `individual` runs) join into "
        "one line.",
    )
    p.add_argument("runs", nargs="+", help="run folders (or eval.json files)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--metric", choices=("top1", "top5", "miou", "pixel_acc"),
        help="what to plot (default: top1, or miou for segmentation runs)",
    )  # fmt: skip
    p.add_argument(
        "--by", choices=("mode", "run"), default="mode", help="one line per mode or per run"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..plot import plot_runs

    path = plot_runs(args.runs, args.out, metric=args.metric, by=args.by)
    print(f"plot written to {path}", file=sys.stderr)
    return 0
