"""``slimmable search CKPT --targets 150M,300M``: AutoSlim channel search on a trained model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="AutoSlim: per-layer channel numbers for MACs targets",
        description="Greedily slim a trained slimmable network, one channel group at a time, "
        "removing where it hurts held-out accuracy least; record the per-layer channels at each "
        "MACs target. The JSON feeds set_width / eval --widths / extract_subnet / autoslim_* "
        "models.",
    )
    p.add_argument("checkpoint", help="checkpoint.pt of a trained US model (or an S-Net)")
    p.add_argument(
        "--targets", required=True,
        help="MACs per image, comma-separated: 150M,300M (k, M, G) or 50%%,75%% of full",
    )  # fmt: skip
    p.add_argument("--data", help="data set (default: the one the checkpoint was trained on)")
    p.add_argument("--data-path", help="where the data set lives (default: the checkpoint's)")
    p.add_argument("--image-size", type=int, help="input side (default: the checkpoint's)")
    p.add_argument(
        "--batches", type=int, default=10,
        help="K: held-out training batches that score every trial (default 10)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    p.add_argument(
        "--metric", choices=("accuracy", "loss"), default="accuracy",
        help="what a removal must hurt least (default accuracy, ties broken by loss)",
    )  # fmt: skip
    p.add_argument(
        "--per-mac", action="store_true",
        help="divide each removal's harm by the MACs it saves (not in the paper)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="which training images are held out")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--out", help="JSON file to write (default: autoslim.json beside CKPT)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run)


def _data_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The data section the checkpoint's run recorded (name, path, image_size), if any."""
    config = ckpt.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, dict) else {}


def held_out_loader(args: argparse.Namespace, ckpt: dict[str, Any]):
    """``K x batch-size`` training images, drawn with ``--seed``, without augmentation."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..data import build_datasets

    recorded = _data_config(ckpt)
    name = args.data or recorded.get("name")
    if not name:
        raise ValueError("the checkpoint records no data set; pass --data (e.g. --data digits)")
    path = args.data_path or (recorded.get("path") if name == recorded.get("name") else None)
    image_size = args.image_size or recorded.get("image_size")
    train_set, _, info = build_datasets(
        name, path, image_size=image_size, augment="none", seed=args.seed
    )
    count = min(len(train_set), args.batches * args.batch_size)
    g = torch.Generator().manual_seed(args.seed)
    chosen = torch.randperm(len(train_set), generator=g)[:count].tolist()
    loader = DataLoader(Subset(train_set, chosen), batch_size=args.batch_size, shuffle=False)
    return loader, info


def _input_size(info: Any) -> tuple[int, int, int]:
    side = info.image_size
    h, w = (side, side) if isinstance(side, int) else tuple(side)[-2:]
    return (int(info.in_chans), int(h), int(w))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from ..search import autoslim, format_macs, parse_macs

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        parse_macs(t, full_macs=10**12)  # fail on a typo before loading anything
    if args.batches < 1 or args.batch_size < 2:
        raise ValueError("--batches must be at least 1 and --batch-size at least 2")
    ckpt = load_checkpoint(args.checkpoint)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model_from_checkpoint(ckpt).to(device)
    loader, info = held_out_loader(args, ckpt)
    input_size = ckpt.get("input_size") or _input_size(info)
    spec = ckpt["model"]
    result = autoslim(
        model,
        loader,
        targets,
        input_size=input_size,
        metric=args.metric,
        per_mac=args.per_mac,
        progress=not args.no_progress,
        model_name=spec["name"],
        model_kwargs=spec.get("kwargs", {}),
    )
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name("autoslim.json")
    result.save(out)
    full = result.trace[0]
    print(
        f"full: {format_macs(result.full_macs)} MACs, held-out accuracy "
        f"{full['val_accuracy']:.2%} on {result.num_images} images ({args.metric})"
    )
    print(f"{'target':>8} {'MACs':>9} {'acc':>7} {'loss':>7}  channels")
    for r in result.results:
        channels = ",".join(str(c) for c in r.channels.values())
        print(
            f"{r.target:>8} {format_macs(r.macs):>9} {r.val_accuracy:>7.2%} "
            f"{r.val_loss:>7.4f}  {channels}"
        )
    print(f"written to {out}", file=sys.stderr)
    return 0
