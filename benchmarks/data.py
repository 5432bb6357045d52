"""Images per second of the class-per-folder loader with the papers' training augmentation.

Generates photo-like JPEGs (default 256 of 500x375, about ImageNet's typical size) in a temporary
folder, then times full epochs through ``make_loader`` at each worker count, at a 224 crop:

- ``reference``: the same training transform decoding every JPEG at full size (``draft=False``),
  in the main process; the other rows are ratios against it, measured in the same process;
- ``train``: random resized crop + flip + colour jitter + PCA lighting + normalise, JPEGs decoded
  at reduced scale where the crop allows (``Image.draft``), for each worker count;
- ``eval``: resize + centre crop, main process;
- ``large``: photos at 4x that size, with and without reduced-scale JPEG decoding.

It also splits one image's cost into decoding (open + draft + crop-resize) and tensor work, and
prints how many workers a GPU consuming ``--target`` images per second would need.

    PYTHONPATH=src python benchmarks/data.py [--workers 0,1,2] [--images 256] [--target 2500]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image

from slimmable.data import build_datasets, make_loader
from slimmable.data.folder import load_crop, random_resized_crop_box


def photo(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour field plus fine texture: compresses like a photo (not like white noise)."""
    field = torch.from_numpy(rng.random((1, 3, 12, 16), dtype=np.float32))
    img = F.interpolate(field, size=(height, width), mode="bicubic", align_corners=False)[0]
    img = img.permute(1, 2, 0).numpy() * 255 + rng.normal(0, 10, (height, width, 3))
    return img.clip(0, 255).astype(np.uint8)


def make_tree(root: Path, images: int, size: tuple[int, int], classes: int = 8) -> float:
    """Write ``images`` training JPEGs (and a few val ones); returns the mean file size in KB."""
    rng = np.random.default_rng(0)
    sizes = []
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            folder = root / split / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            file = folder / f"{i:05d}.jpg"
            Image.fromarray(photo(*size, rng)).save(file, quality=90)
            sizes.append(file.stat().st_size)
    return float(np.mean(sizes)) / 1024


def time_epochs(dataset, workers: int, batch_size: int, epochs: int) -> float:
    """Images per second over ``epochs`` full epochs, after one warm-up epoch."""
    loader = make_loader(dataset, batch_size, shuffle=True, seed=0, num_workers=workers)
    for _ in loader:  # warm-up: starts the (persistent) workers, fills the page cache
        pass
    start = time.perf_counter()
    seen = 0
    for _ in range(epochs):
        for x, _ in loader:
            seen += len(x)
    elapsed = time.perf_counter() - start
    del loader
    return seen / elapsed


def split_cost(dataset, repeats: int = 2) -> dict[str, float]:
    """Milliseconds per image of decoding (with and without draft) and of the tensor work."""
    g = torch.Generator().manual_seed(0)
    n = len(dataset)
    out = {}
    for name, draft in (("decode_crop_ms", True), ("decode_crop_full_ms", False)):
        start = time.perf_counter()
        for _ in range(repeats):
            for i in range(n):
                load_crop(
                    dataset.path(i),
                    lambda w, h: random_resized_crop_box(w, h, dataset.min_scale, g),
                    dataset.image_size,
                    draft,
                )
        out[name] = (time.perf_counter() - start) / (repeats * n) * 1e3
    img = Image.fromarray(np.zeros((dataset.image_size, dataset.image_size, 3), np.uint8))
    start = time.perf_counter()
    for _ in range(repeats * n):
        dataset._to_tensor(img, g)
    out["tensor_ms"] = (time.perf_counter() - start) / (repeats * n) * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--min-scale", type=float, default=0.08)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per configuration")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument(
        "--target",
        type=float,
        default=2500.0,
        help="images/s a GPU consumes, for the worker estimate (assumption: 1x A100, AMP, "
        "EfficientNet-B0 ~2.5k img/s per NVIDIA DeepLearningExamples; MobileNet v2 is similar)",
    )
    parser.add_argument("--large", type=int, default=32, help="photos at 4x the size")
    parser.add_argument("--out", default="benchmarks/results/data.json")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    # Per-core figures: the main process works single-threaded, like a DataLoader worker (other
    # processes on a shared machine otherwise stall torch's thread pool on every batch).
    torch.set_num_threads(1)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="slimmable-bench-") as tmp:
        root = Path(tmp)
        kb = make_tree(root, args.images, (args.width, args.height))
        kw = dict(image_size=args.crop, min_scale=args.min_scale, seed=0)
        train, test, _ = build_datasets("imagefolder", str(root), **kw)
        reference = train.eval_view()
        reference.augment, reference.draft = True, False  # same transform, full-size decoding

        rows = []
        ref_rate = time_epochs(reference, 0, args.batch_size, args.epochs)
        rows.append({"config": "reference (no draft)", "workers": 0, "img_s": ref_rate})
        for w in worker_counts:
            rate = time_epochs(train, w, args.batch_size, args.epochs)
            rows.append({"config": "train", "workers": w, "img_s": rate})
        eval_rate = time_epochs(test.eval_view(), 0, args.batch_size, args.epochs * 8)
        rows.append({"config": "eval (val images)", "workers": 0, "img_s": eval_rate})
        costs = split_cost(train)

        # where draft decoding pays: photos much larger than the crop (e.g. camera images)
        big_root = root / "large"
        make_tree(big_root, args.large, (4 * args.width, 4 * args.height), classes=2)
        big, _, _ = build_datasets("imagefolder", str(big_root), **kw)
        big_full = big.eval_view()
        big_full.augment, big_full.draft = True, False
        big_ref = time_epochs(big_full, 0, args.batch_size, args.epochs)
        big_rate = time_epochs(big, 0, args.batch_size, args.epochs)
        large = {"size": [4 * args.width, 4 * args.height], "images": args.large}
        large |= {"no_draft_img_s": big_ref, "draft_img_s": big_rate, "speedup": big_rate / big_ref}

    for row in rows:
        row["ms_per_img"] = 1e3 / row["img_s"]
        row["vs_reference"] = row["img_s"] / ref_rate
    # one worker does the work the main process does at 0 workers (decode, augment, collate)
    per_worker = next(r["img_s"] for r in rows if r["config"] == "train" and r["workers"] == 0)
    needed = math.ceil(args.target / per_worker)

    print(
        f"class-per-folder loader, {args.images} JPEGs {args.width}x{args.height} "
        f"(~{kb:.0f} KB), crop {args.crop}, min_scale {args.min_scale}, batch {args.batch_size}, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"{'config':<22}{'workers':>8}{'img/s':>10}{'ms/img':>9}{'x ref':>8}")
    for r in rows:
        print(
            f"{r['config']:<22}{r['workers']:>8}{r['img_s']:>10.1f}{r['ms_per_img']:>9.2f}"
            f"{r['vs_reference']:>8.2f}"
        )
    print(
        f"per image (main process): decode+crop {costs['decode_crop_ms']:.2f} ms with draft, "
        f"{costs['decode_crop_full_ms']:.2f} ms without; tensor augment+normalise "
        f"{costs['tensor_ms']:.2f} ms"
    )
    print(
        f"{large['images']} photos {large['size'][0]}x{large['size'][1]}, train, 0 workers: "
        f"{large['no_draft_img_s']:.1f} img/s full decode, {large['draft_img_s']:.1f} img/s "
        f"with draft ({large['speedup']:.2f}x)"
    )
    print(
        f"one core sustains ~{per_worker:.0f} img/s: a GPU consuming {args.target:.0f} img/s "
        f"needs ~{needed} workers (one CPU core each)"
    )

    result = {
        "benchmark": "data",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pillow": PIL.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        },
        "config": {k.replace("-", "_"): v for k, v in vars(args).items()},
        "mean_jpeg_kb": kb,
        "rows": rows,
        "per_image_ms": costs,
        "large_photos": large,
        "per_core_img_s": per_worker,
        "workers_for_target": needed,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
