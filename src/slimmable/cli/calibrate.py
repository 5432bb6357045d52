"""``slimmable calibrate CKPT --widths ... [--images 2000]``: BN post-statistics, saved back."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="compute BN post-statistics of a US checkpoint at given widths",
        description="Post-statistics BN (cumulative moving average over training images) for "
        "each width, written back into the checkpoint. Each batch is loaded once and run at "
        "every width.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt written by `slimmable train`")
    p.add_argument(
        "--widths", nargs="+", required=True,
        help="widths: 0.25,0.5,1.0 or a grid lo:hi:step such as 0.25:1.0:0.025",
    )  # fmt: skip
    p.add_argument("--images", type=int, help="training images to use (default: the config's)")
    p.add_argument("--batch-size", type=int, help="calibration batch size")
    p.add_argument("--data-path", help="where the data set lives (default: the config's)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..calibrate import calibrated_widths
    from ..checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from ..data import build_datasets
    from ..evaluate import parse_widths
    from ..train.engine import calibrate_model, load_run_config

    widths = parse_widths(args.widths)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = load_run_config(ckpt)
    if args.images is not None:
        cfg.calibrate.images = args.images
    if args.batch_size is not None:
        cfg.calibrate.batch_size = args.batch_size
    if cfg.calibrate.images < 1:
        raise ValueError("--images must be at least 1")
    model = model_from_checkpoint(ckpt)
    train_set, _, _ = build_datasets(
        cfg.data.name, args.data_path or cfg.data.path, image_size=cfg.data.image_size,
        augment=cfg.data.augment, seed=cfg.train.seed,
    )  # fmt: skip
    calibrate_model(model, train_set, widths, cfg, progress=args.progress)
    ckpt["state_dict"] = model.state_dict()
    ckpt["calibrated"] = calibrated_widths(model)
    save_checkpoint(args.checkpoint, ckpt)
    print(
        f"calibrated {len(widths)} widths with up to {cfg.calibrate.images} images; "
        f"{args.checkpoint} now holds {len(ckpt['calibrated'])} calibrated widths",
        file=sys.stderr,
    )
    return 0
