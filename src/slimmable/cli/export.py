"""``slimmable export RUN --width W --out PATH``: a stand-alone dense network at one width."""

from __future__ import annotations

import argparse
import importlib
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..units import format_count
from .args import add_debug_argument, add_run_arguments, open_run

FORMAT_BY_SUFFIX = {".pt2": "pt", ".ts": "torchscript", ".torchscript": "torchscript"}
FORMAT_BY_SUFFIX[".onnx"] = "onnx"
SUFFIX_BY_FORMAT = {"pt": ".pt2", "torchscript": ".ts", "onnx": ".onnx"}
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
    add_run_arguments(p, data=False)
    p.add_argument(
        "--width",
        required=True,
        help="one width: 0.5, a nonuniform map (a JSON file or inline JSON "
        '{"layer.name": 0.5, "*": 1.0}), or a search result FILE@TARGET',
    )
    p.add_argument(
        "--format",
        choices=sorted(set(FORMAT_BY_SUFFIX.values())),
        help="file format (default: from --out's suffix: .pt2, .ts, .onnx)",
    )
    p.add_argument("--out", required=True, help="output file (.pt2 for pt)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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
    add_debug_argument(p)
    p.set_defaults(func=run)


def parse_input_size(
    text: str | None, default: Sequence[int] | None = None
) -> tuple[int, ...] | None:
    """``--input-size`` (``C,H,W``, ``H,W`` or ``S``), else ``default`` (the run's)."""
    if text is None:
        return tuple(int(v) for v in default) if default else None
    try:
        sizes = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        sizes = ()
    if len(sizes) not in (1, 2, 3) or min(sizes) < 1:
        raise ValueError(f"--input-size must be C,H,W or H,W or S (e.g. 3,224,224), got {text!r}")
    return (sizes[0], sizes[0]) if len(sizes) == 1 else sizes


def describe_width(width: float | Mapping[str, float]) -> float | dict[str, float]:
    return float(width) if not isinstance(width, Mapping) else dict(width)


def check_writable(out: Path, overwrite: bool) -> None:
    """Stop before any work if ``out`` cannot or must not be written."""
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; give --overwrite to replace it, or another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write {out}: {err.strerror or err}; pick another --out") from None


def require_onnx(verify: bool) -> None:
    """The onnx extra, or a one-line error that says how to install it."""
    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if verify else [])
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ValueError(
                f"--format onnx needs {name}, which is not installed: pip install "
                "'slimmable[onnx]' (onnx, onnxscript, onnxruntime)"
            ) from None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import example_input, export_subnet, extract_subnet, load_exported
    from ..widthspec import parse_width

    out = Path(args.out)
    by_suffix = FORMAT_BY_SUFFIX.get(out.suffix)
    fmt = args.format or by_suffix
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
    if by_suffix is not None and by_suffix != fmt:
        raise ValueError(
            f"--format {fmt} into {out.name!r}, whose suffix says {by_suffix}; name it "
            f"{out.with_suffix(SUFFIX_BY_FORMAT[fmt]).name} or drop --format"
        )
    if fmt == "onnx":
        require_onnx(verify=not args.no_verify)
    check_writable(out, args.overwrite)
    width = parse_width(args.width)
    run_ = open_run(args)
    input_size = parse_input_size(args.input_size, run_.input_size)
    net = extract_subnet(run_.model, width, fold_bn=args.fold_bn, input_size=input_size)
    metadata = {
        "model": run_.name,
        "width": describe_width(width),
        "fold_bn": bool(args.fold_bn),
        "input_size": list(example_input(net, input_size).shape[1:]),
        "checkpoint": (run_.path or Path(args.official)).name,
    }
    path = export_subnet(net, out, fmt, input_size=input_size, metadata=metadata)
    params = sum(p.numel() for p in net.parameters())
    print(
        f"wrote {path} ({fmt}, {format_count(params)} parameters, input {metadata['input_size']})"
    )
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
