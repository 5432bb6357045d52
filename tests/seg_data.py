"""A tiny VOC-style segmentation folder for the tests (images, palette PNG masks, splits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_voc(root: Path, ids: list[str], size=(40, 30), rgb_mask: bool = False) -> None:
    """A VOC-style folder: JPEG images whose red / green boxes are classes 1 / 2 in palette PNG
    masks (255 on a boundary row); the last id is the val split, the others train."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 253)
    palette[3 * 255 : 3 * 256] = [224, 224, 192]
    for k, i in enumerate(ids):
        w, h = size
        label = np.zeros((h, w), dtype=np.uint8)
        label[5:20, 5 + k % 10 : 25 + k % 10] = 1 + k % 2
        label[4, 5:25] = 255  # a boundary
        pixels = np.zeros((h, w, 3), dtype=np.uint8)
        pixels[label == 1] = (250, 10, 10)
        pixels[label == 2] = (10, 250, 10)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{i}.jpg", quality=95)
        mask = Image.fromarray(label, mode="P")
        mask.putpalette(palette)
        (mask.convert("RGB") if rgb_mask else mask).save(root / "SegmentationClass" / f"{i}.png")
    listing = root / "ImageSets" / "Segmentation"
    (listing / "train.txt").write_text("\n".join(ids[:-1]) + "\n")
    (listing / "val.txt").write_text(ids[-1] + "\n")
