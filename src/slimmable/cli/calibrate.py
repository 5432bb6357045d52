"""``slimmable calibrate RUN --widths SPEC [--images 2000] [--out FILE]``: BN post-statistics."""

from __future__ import annotations

import argparse
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
        "calibrate",
        help="compute BN post-statistics of a US run at given widths, saved in its checkpoint",
        description="Post-statistics BN (cumulative moving average over training images, "
        "without augmentation) for each width, uniform or per-layer (a search result), written "
        "back into the checkpoint (or --out). Each batch is loaded once and run at every width.",
    )
    add_run_arguments(p)
    add_widths_argument(p, default="none: required", required=True)
    p.add_argument("--images", type=positive_int, help="training images (default: the run's)")
    p.add_argument("--batch-size", type=positive_int, help="calibration batch size")
    p.add_argument(
        "--out", metavar="FILE", help="write the calibrated checkpoint here (default: RUN itself)"
    )
    add_progress_argument(p)
    add_debug_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..layers import USBatchNorm2d
    from ..widthspec import parse_widths

    widths = parse_widths(args.widths)  # a typo fails before anything loads
    run_ = open_run(args)
    if args.images is not None:
        run_.config.calibrate.images = args.images
    if args.batch_size is not None:
        run_.config.calibrate.batch_size = args.batch_size
    run_.calibrate(widths, progress=progress_enabled(args))
    path = run_.save(args.out)
    norm = next(m for m in run_.model.modules() if isinstance(m, USBatchNorm2d))
    print(
        f"calibrated {len(widths)} widths on {run_.calibration_batches().num_images} training "
        f"images; {path} now holds statistics for {len(norm.calibrated_keys())} widths",
        file=sys.stderr,
    )
    return 0
