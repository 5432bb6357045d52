"""``slimmable train CONFIG.yaml [--set key=value ...] [--out DIR] [--resume]``.

Data parallel: ``torchrun --nproc_per_node=N -m slimmable train CONFIG.yaml``. SIGTERM or
SIGINT finishes the current step, writes the checkpoint and exits with 128 + the signal number
(143 for SIGTERM, 130 for SIGINT); ``--resume`` continues.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a slimmable or universally slimmable network from a YAML config",
        description="Train one network at many widths, calibrate it (US-Nets), evaluate every "
        "width and write checkpoint.pt, config.yaml, metrics.jsonl, eval.json and a plot.",
    )
    p.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key; the value parses as YAML (--set model.widths=[0.25,1.0])",
    )
    p.add_argument("--out", help="output folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the run OUT holds (default: refuse)"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import load_config, train
    from ..train.distributed import STOP_EXIT_BASE
    from ..train.engine import summary

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in OUT, --overwrite replaces it: pick one")
    result = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if result.signal is not None:  # preempted: checkpoint written, resume later
        return STOP_EXIT_BASE + result.signal
    if result.main:  # under torchrun only rank 0 prints
        print(summary(result))
    return 0
