"""``slimmable eval CKPT [--widths ...] [--json] [--plot FILE]``: accuracy and MACs per width."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="top-1 / top-5 and MACs of a checkpoint at each width",
        description="Evaluate a checkpoint on its test set at each width. Widths of a US model "
        "that were never calibrated are calibrated first (in memory; `slimmable calibrate` "
        "stores them).",
    )
    p.add_argument("checkpoint", help="checkpoint.pt written by `slimmable train`")
    p.add_argument(
        "--widths", nargs="+",
        help="widths: 0.25,0.5,1.0 or a grid lo:hi:step (default: the run's eval widths)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", metavar="FILE", help="also write accuracy against MACs as a PNG")
    p.add_argument(
        "--uncalibrated", choices=("calibrate", "running", "error"), default="calibrate",
        help="US widths without statistics: calibrate them (default), use the shared running "
        "statistics (what goes wrong without calibration), or fail",
    )  # fmt: skip
    p.add_argument(
        "--width-map",
        action="append",
        default=[],
        metavar="MAP",
        help="also a nonuniform width: a JSON {layer: width} map or a file of one (repeatable)",
    )
    p.add_argument(
        "--search",
        metavar="FILE",
        help="also the configurations of an AutoSlim result (`slimmable search` output)",
    )
    p.add_argument("--target", help="with --search: only this target (default: all of them)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--data-path", help="where the data set lives (default: the config's)")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..calibrate import is_calibrated
    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from ..data import build_datasets
    from ..evaluate import evaluate, format_table, json_report, parse_widths
    from ..plot import plot_accuracy
    from ..search import read_search
    from ..train.engine import calibrate_model, eval_widths, load_run_config
    from ..train.loader import eval_loader
    from ..width import set_uncalibrated, width_choices
    from .export import parse_width

    ckpt = load_checkpoint(args.checkpoint)
    cfg = load_run_config(ckpt)
    model = model_from_checkpoint(ckpt).eval()
    maps = [parse_width(text) for text in args.width_map]
    if args.search:
        found = read_search(args.search)
        targets = [args.target] if args.target else [r.target for r in found.results]
        maps += [found.width_map(t) for t in targets]
    widths: list
    if args.widths:
        widths = parse_widths(args.widths)
    elif maps:
        widths = []
    else:
        widths = eval_widths(cfg, model)
    widths += maps
    train_set, test_set, _ = build_datasets(
        cfg.data.name, args.data_path or cfg.data.path, image_size=cfg.data.image_size,
        augment=cfg.data.augment, seed=cfg.train.seed,
    )  # fmt: skip
    if width_choices(model) is None:  # a US model: calibrated statistics per width
        missing = [w for w in widths if not is_calibrated(model, w)]
        if missing and args.uncalibrated == "calibrate":
            print(f"calibrating {len(missing)} widths first", file=sys.stderr)
            calibrate_model(model, train_set, missing, cfg, progress=args.progress)
        elif args.uncalibrated == "running":
            set_uncalibrated(model, "running")
    loader = eval_loader(test_set, args.batch_size or cfg.eval.batch_size, workers=cfg.data.workers)
    input_size = ckpt.get("input_size")
    results = evaluate(model, loader, widths, input_size=input_size, progress=args.progress)
    if args.json:
        print(json.dumps(json_report(results), indent=2))
    else:
        print(format_table(results))
    if args.plot:
        label = cfg.train.mode
        plot_accuracy({label: results}, args.plot, title=f"{ckpt['model']['name']} ({label})")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
