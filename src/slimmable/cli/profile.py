"""``slimmable profile``: MACs and parameters per width of a zoo model or a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from torch import nn

from ..models import model_factory
from ..models.official import load_official
from ..profile import Measure, Profile, profile
from ..run import open_run
from ..units import format_count
from ..widthspec import parse_widths
from .args import add_debug_argument, add_widths_argument, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "profile",
        help="MACs and parameters of the network that runs at each width",
        description="Print the MACs (multiply-accumulates) and parameters of the dense "
        "sub-network at each width, counted with torch's FlopCounterMode on shapes alone.",
    )
    parser.add_argument(
        "model", metavar="MODEL", help="a registered model name, a checkpoint or a run folder"
    )
    add_widths_argument(parser, default="an S-Net's widths; a US-Net's bounds and quarter widths")
    parser.add_argument(
        "--image-size", type=positive_int, help="input side in pixels (default: the model's)"
    )
    parser.add_argument(
        "--num-classes", type=positive_int, help="classes of a registered model (its own)"
    )
    parser.add_argument(
        "--official",
        metavar="PATH",
        help="first load the authors' released weights (their .pt or .pt.zip) into MODEL",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    latency = parser.add_argument_group("measured latency")
    latency.add_argument(
        "--latency",
        action="store_true",
        help="also time a forward at each width on this machine (latency_ms: median of repeats)",
    )
    latency.add_argument(
        "--batch-size", type=positive_int, default=1, help="batch for --latency (1)"
    )
    latency.add_argument("--threads", type=positive_int, help="CPU threads for --latency")
    latency.add_argument("--repeats", type=positive_int, default=30, help="timed forwards (30)")
    add_debug_argument(parser)
    parser.set_defaults(func=run)
    return parser


def extra_measures(args: argparse.Namespace) -> list[Measure]:
    """Measurements beside MACs and parameters, chosen by flags.

    The hook for measured latency: a ``--latency`` flag (``slimmable.latency``) adds its measure
    here; each measure's entries become columns of the table and keys of each JSON row.
    """
    measures: list[Measure] = []
    if getattr(args, "latency", False):
        from ..latency import latency_measure

        measures.append(
            latency_measure(
                args.image_size, args.batch_size, repeats=args.repeats, threads=args.threads
            )
        )
    return measures


def build_model(args: argparse.Namespace) -> tuple[str, nn.Module, tuple[int, ...] | None]:
    """``(name, model, input size)`` for MODEL: a run, or a registered name (+ ``--official``)."""
    if Path(args.model).exists():  # a checkpoint or a run folder
        if args.official:
            raise ValueError("--official loads the authors' weights into a registered model name")
        run = open_run(args.model)
        return run.name, run.model, run.input_size
    factory = model_factory(args.model)  # ValueError naming close names
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = factory(**kwargs)
    if args.official:
        load_official(model, args.official)
    return args.model, model, None


def format_table(name: str, result: Profile) -> str:
    """The profile as an aligned text table, one row per width."""
    c, h, w = result.input_shape
    extra = list(dict.fromkeys(k for row in result.widths for k in row.extra))
    header = ["width", "MACs", "params", *extra]
    rows = []
    for row in result.widths:
        width = "nonuniform" if row.width is None else f"{row.width:g}"
        cells = [width, format_count(row.macs), format_count(row.params)]
        cells += [f"{row.extra[k]:.4g}" if k in row.extra else "-" for k in extra]
        rows.append(cells)
    sizes = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"{name}: input {c}x{h}x{w}, {result.total_params:,} parameters stored",
        "  ".join(cell.rjust(size) for cell, size in zip(header, sizes, strict=True)),
    ]
    lines += ["  ".join(cell.rjust(s) for cell, s in zip(r, sizes, strict=True)) for r in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    widths = None if args.widths is None else parse_widths(args.widths)
    name, model, size = build_model(args)
    result = profile(model, args.image_size or size, widths, measures=extra_measures(args))
    if args.json:
        print(json.dumps(result.to_dict(name)))
    else:
        print(format_table(name, result))
    return 0
