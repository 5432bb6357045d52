"""``slimmable profile``: MACs and parameters per width of a zoo model or a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml
from torch import nn

from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..models import model_factory
from ..models.official import load_official
from ..profile import Measure, Profile, profile
from ..width import Width

WIDTHS_HELP = (
    "widths to profile: comma-separated (0.25,0.5,1.0), or JSON (a list of widths and "
    "{layer: width} maps; one map is one nonuniform width), or a .json/.yaml file of the same "
    "(default: an S-Net's widths; a US-Net's bounds and quarter widths)"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "profile",
        help="MACs and parameters of the network that runs at each width",
        description="Print the MACs (multiply-accumulates) and parameters of the dense "
        "sub-network at each width, counted with torch's FlopCounterMode on shapes alone.",
    )
    parser.add_argument("model", metavar="MODEL", help="a registered model name or a checkpoint")
    parser.add_argument("--widths", help=WIDTHS_HELP)
    parser.add_argument(
        "--image-size", type=int, help="input side in pixels (default: the model's, e.g. 224)"
    )
    parser.add_argument(
        "--num-classes", type=int, help="classes of a registered model (default: its own)"
    )
    parser.add_argument(
        "--official",
        metavar="PATH",
        help="first load the authors' released weights (their .pt or .pt.zip) into MODEL",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)
    return parser


def extra_measures(args: argparse.Namespace) -> list[Measure]:
    """Measurements beside MACs and parameters, chosen by flags.

    The hook for measured latency: a ``--latency`` flag (``slimmable.latency``) adds its measure
    here; each measure's entries become columns of the table and keys of each JSON row.
    """
    return []


def parse_widths(text: str) -> list[Width]:
    """Widths from ``--widths``: ``0.25,0.5``, JSON, or a .json/.yaml file of them."""
    text = text.strip()
    data: object
    if text.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--widths is not valid JSON ({err.msg}); quote it in the shell"
            ) from None
    elif text.endswith((".json", ".yaml", ".yml")) or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"--widths file {path} does not exist")
        data = yaml.safe_load(path.read_text())  # JSON is YAML
    else:
        try:
            data = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ValueError(
                f"--widths {text!r} is not a comma-separated list of numbers, e.g. 0.25,0.5,1.0"
            ) from None
    items = data if isinstance(data, list) else [data]
    widths: list[Width] = []
    for item in items:
        if isinstance(item, dict) and all(isinstance(v, int | float) for v in item.values()):
            widths.append({str(k): float(v) for k, v in item.items()})
        elif isinstance(item, int | float) and not isinstance(item, bool):
            widths.append(float(item))
        else:
            raise ValueError(
                f"--widths entry {item!r} is neither a width nor a {{layer: width}} map"
            )
    if not widths:
        raise ValueError("--widths lists no width; e.g. --widths 0.25,0.5,1.0")
    return widths


def build_model(args: argparse.Namespace) -> tuple[str, nn.Module]:
    """``(name, model)`` for MODEL: a checkpoint file, or a registered name (+ ``--official``)."""
    if Path(args.model).is_file():
        if args.official:
            raise ValueError("--official loads the authors' weights into a registered model name")
        ckpt = load_checkpoint(args.model)
        return str(ckpt["model"]["name"]), model_from_checkpoint(ckpt)
    factory = model_factory(args.model)  # ValueError naming close names
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = factory(**kwargs)
    if args.official:
        load_official(model, args.official)
    return args.model, model


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def format_table(name: str, result: Profile) -> str:
    """The profile as an aligned text table, one row per width."""
    c, h, w = result.input_shape
    extra = list(dict.fromkeys(k for row in result.widths for k in row.extra))
    header = ["width", "MACs", "params", *extra]
    rows = []
    for row in result.widths:
        width = "nonuniform" if row.width is None else f"{row.width:g}"
        cells = [width, _si(row.macs), _si(row.params)]
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
    name, model = build_model(args)
    widths = None if args.widths is None else parse_widths(args.widths)
    result = profile(model, args.image_size, widths, measures=extra_measures(args))
    if args.json:
        print(json.dumps(result.to_dict(name)))
    else:
        print(format_table(name, result))
    return 0
