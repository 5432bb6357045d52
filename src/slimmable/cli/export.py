"""``slimmable export CKPT --width W --out PATH``: a stand-alone dense network at one width."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path

FORMAT_BY_SUFFIX = {".pt2": "pt", ".ts": "torchscript", ".torchscript": "torchscript"}
FORMAT_BY_SUFFIX[".onnx"] = "onnx"
LOAD_HINT = {
    "pt": "torch.export.load({path!r}).module()",
    "torchscript": "torch.jit.load({path!r})",
    "onnx": "onnxruntime.InferenceSession({path!r}).run(None, {{'input': x}})",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write the dense sub-network of one width (torch.export, TorchScript, ONNX)",
        description="Extract the sub-network a checkpoint runs at one width as plain torch "
        "layers and write it as a file that loads without slimmable: `pt` (a torch.export "
        "program, load with torch.export.load(PATH).module()), `torchscript` (torch.jit.load) "
        "or `onnx` (onnxruntime). The batch size stays dynamic; the image size is fixed.",
    )
    p.add_argument("checkpoint", help="checkpoint written by `slimmable train`")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--width",
        help="a width (0.5), or a nonuniform map: a JSON file or inline JSON "
        '{"layer.name": 0.5, "*": 1.0}',
    )
    which.add_argument(
        "--all-widths",
        action="store_true",
        help="one switchable ONNX file holding every width of the checkpoint (S-Net switches, "
        "US calibrated widths) once, with the width as a second input",
    )
    p.add_argument(
        "--format",
        choices=sorted(set(FORMAT_BY_SUFFIX.values())),
        help="file format (default: from --out's suffix: .pt2, .ts, .onnx)",
    )
    p.add_argument("--out", required=True, help="output file (.pt2 for pt)")
    p.add_argument("--fold-bn", action="store_true", help="fold batch norm into the convs")
    p.add_argument(
        "--input-size",
        help="C,H,W or S of the exported input (default: the checkpoint's, else 224)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip loading the written file back and comparing its outputs",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def parse_width(text: str) -> float | dict[str, float]:
    """A width from the command line: a number, a JSON file or inline JSON.

    JSON may be a number, a ``{layer: width}`` map, or an object whose ``"width"`` entry is one
    of those (e.g. a record written by a search).
    """
    try:
        value: object = float(text)
    except ValueError:
        path = Path(text)
        if path.is_file():
            try:
                value = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON ({err}); give a width map") from None
        elif text.lstrip().startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"--width is not valid JSON ({err})") from None
        else:
            raise ValueError(
                f"--width {text!r} is neither a number nor a JSON file; give e.g. --width 0.5 "
                "or --width map.json"
            ) from None
    if isinstance(value, Mapping) and "width" in value:
        value = value["width"]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise ValueError(f"--width must be finite, got {value}")
        return float(value)
    if isinstance(value, Mapping) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        return {str(k): float(v) for k, v in value.items()}
    raise ValueError('a width map must be a JSON object of numbers, e.g. {"features.3": 0.5}')


def parse_input_size(text: str | None, ckpt: Mapping) -> tuple[int, ...] | None:
    """``--input-size`` (``C,H,W``, ``H,W`` or ``S``), else the checkpoint's ``input_size``."""
    if text is None:
        stored = ckpt.get("input_size")
        return tuple(int(v) for v in stored) if stored else None
    try:
        sizes = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        sizes = ()
    if len(sizes) not in (1, 2, 3) or min(sizes) < 1:
        raise ValueError(f"--input-size must be C,H,W or H,W or S (e.g. 3,224,224), got {text!r}")
    return (sizes[0], sizes[0]) if len(sizes) == 1 else sizes


def describe_width(width: float | Mapping[str, float]) -> float | dict[str, float]:
    return float(width) if not isinstance(width, Mapping) else dict(width)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from ..export import example_input, export_subnet, extract_subnet, load_exported

    out = Path(args.out)
    fmt = args.format or FORMAT_BY_SUFFIX.get(out.suffix)
    if fmt is None:
        raise ValueError(
            f"cannot tell the format from {out.name!r}; give --format pt|torchscript|onnx "
            "or name the file .pt2, .ts or .onnx"
        )
    if fmt == "pt" and out.suffix != ".pt2":
        raise ValueError(
            f"--format pt writes a torch.export archive, which torch.export.load reads only "
            f"from a .pt2 file; use --out {out.with_suffix('.pt2')}"
        )
    if args.all_widths:
        return _run_switchable(args, out, fmt)
    width = parse_width(args.width)
    ckpt = load_checkpoint(args.checkpoint)
    input_size = parse_input_size(args.input_size, ckpt)
    model = model_from_checkpoint(ckpt).eval()
    net = extract_subnet(model, width, fold_bn=args.fold_bn, input_size=input_size)
    metadata = {
        "model": ckpt["model"]["name"],
        "width": describe_width(width),
        "fold_bn": bool(args.fold_bn),
        "input_size": list(example_input(net, input_size).shape[1:]),
        "checkpoint": Path(args.checkpoint).name,
    }
    path = export_subnet(net, out, fmt, input_size=input_size, metadata=metadata)
    params = sum(p.numel() for p in net.parameters())
    print(f"wrote {path} ({fmt}, {params / 1e6:.3f}M parameters, input {metadata['input_size']})")
    if not args.no_verify:
        x = example_input(net, input_size, batch_size=3)
        with torch.no_grad():
            ref = net(x)
            got = load_exported(path, fmt)(x)
        diff = (got - ref).abs().max().item()
        tol = 1e-4 * max(1.0, ref.abs().max().item())
        if not diff <= tol:
            raise RuntimeError(f"{path} does not reproduce the network (max difference {diff:.3g})")
        print(f"verified: the file reproduces the network (max difference {diff:.2g})")
    print("load it with: " + LOAD_HINT[fmt].format(path=str(path)))
    return 0


def _run_switchable(args: argparse.Namespace, out: Path, fmt: str) -> int:
    """``--all-widths``: the switchable ONNX file (``slimmable.switchable``)."""
    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from ..serve.model import card_for
    from ..switchable import export_switchable, held_widths, verify_switchable

    if fmt != "onnx":
        raise ValueError(
            "--all-widths writes ONNX only (--format onnx, or name the file .onnx); for one "
            "width in another format use --width W"
        )
    ckpt = load_checkpoint(args.checkpoint)
    input_size = parse_input_size(args.input_size, ckpt)
    model = model_from_checkpoint(ckpt).eval()
    widths = held_widths(model)
    size = input_size or ckpt.get("input_size") or model.default_cfg["input_size"]
    size = (*model.default_cfg["input_size"][:1], *size) if len(size) == 2 else tuple(size)
    card = card_for(model, str(ckpt["model"]["name"]), widths, size, ckpt)
    metadata = {
        "model": ckpt["model"]["name"],
        "checkpoint": Path(args.checkpoint).name,
        "card": card.to_metadata(),
    }
    path = export_switchable(model, out, widths, input_size=size, metadata=metadata, verify=False)
    shown = ", ".join(f"{w:g}" for w in widths)
    print(f"wrote {path} (switchable onnx, widths {shown}, input {list(size)})")
    if not args.no_verify:
        diff = verify_switchable(model, path)
        print(f"verified at every width: the file reproduces the model (max difference {diff:.2g})")
    print(
        f"load it with: onnxruntime.InferenceSession({str(path)!r}).run(None, "
        "{'input': x, 'width': numpy.array(w, dtype=numpy.float32)})"
    )
    return 0
