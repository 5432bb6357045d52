"""Class-per-folder images (the ImageNet layout) with the S-Nets / US-Nets augmentations.

Training: random resized crop (area fraction in ``[min_scale, 1]``, aspect ratio in [3/4, 4/3]),
horizontal flip, colour jitter (brightness, contrast, saturation; random order), AlexNet PCA
lighting noise, ImageNet normalisation. Evaluation: resize the shorter side to
``image_size / crop_pct`` and take the centre ``image_size`` square.

Decoding is the cost that matters, so each image is decoded once, as small as the crop allows:
the crop box is chosen from the file header's size, a JPEG is then decoded at 1/2, 1/4 or 1/8
scale by libjpeg when the crop is that much larger than the output (``Image.draft``), and the
box is resampled straight to the output size (one PIL resize, no full-size intermediate). The
colour work after that runs in numpy on the small crop, channels last, and ends in one fused
normalise-and-transpose into the contiguous CHW output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .base import IMAGENET_MEAN, IMAGENET_STD, AugmentedDataset, DataInfo

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
TEST_SPLITS = ("val", "validation", "test")
LAYOUT_HELP = "the ImageNet layout: train/<class>/*.jpg and val/<class>/*.jpg"

# AlexNet-style PCA lighting: eigen-decomposition of ImageNet's RGB pixel covariance, as
# published with fb.resnet.torch and used by the S-Nets / US-Nets training code.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert("L")

Box = tuple[float, float, float, float]  # left, top, width, height in source pixels


# ---------------------------------------------------------------------------- crop geometry


def random_resized_crop_box(
    width: int,
    height: int,
    min_scale: float,
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """The Inception crop: area fraction ~ U[min_scale, 1], log aspect ratio ~ U[log ratio].

    Up to 10 tries for a box that fits; otherwise the largest centred box whose aspect ratio is
    within ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target = area * (min_scale + (1.0 - min_scale) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = min(int(u[2] * (width - w + 1)), width - w)
            top = min(int(u[3] * (height - h + 1)), height - h)
            return float(left), float(top), float(w), float(h)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return float((width - w) // 2), float((height - h) // 2), float(w), float(h)


def center_crop_box(width: int, height: int, size: int, crop_pct: float) -> Box:
    """Source box equal to: resize shorter side to ``size / crop_pct``, centre crop ``size``."""
    resized_short = round(size / crop_pct)
    side = size * min(width, height) / resized_short
    return (width - side) / 2, (height - side) / 2, side, side


# ---------------------------------------------------------------------------- decoding


def load_crop(path: str | os.PathLike, box_fn, size: int, draft: bool = True) -> Image.Image:
    """Decode ``path`` and resample the box ``box_fn(width, height)`` to an RGB ``size`` square.

    A JPEG is decoded at the smallest 1/2^k scale that keeps the box at least ``size`` pixels on
    each side (``draft``), which skips most of the decoding work for large photos.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            left, top, w, h = box_fn(width, height)
            if draft and img.format == "JPEG":
                factor = min(w, h) / size  # how much larger than needed the box is
                if factor >= 2:
                    img.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
                    sx, sy = img.size[0] / width, img.size[1] / height
                    left, top, w, h = left * sx, top * sy, w * sx, h * sy
            if img.mode == "P":  # palette (maybe with transparency): via RGBA, as PIL advises
                img = img.convert("RGBA")
            if img.mode != "RGB":
                img = img.convert("RGB")
            return img.resize(
                (size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
            )
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path} ({err}); delete or replace it") from err


# ---------------------------------------------------------------------------- colour augmentations
# These act in place on float32 HxWx3 numpy images in 0..255 units (channels last, as decoded).
# numpy, not torch: these small single-image operations then never wait on a busy thread pool.

_GRAY = np.asarray(GRAY_WEIGHTS, dtype=np.float32)


def adjust_brightness(x: np.ndarray, factor: float) -> np.ndarray:
    """Scale intensities by ``factor``, clipped to 0..255."""
    x *= np.float32(factor)
    return np.clip(x, 0.0, 255.0, out=x)


def adjust_contrast(x: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean grey level: 0 gives flat grey, 1 the image."""
    mean = float((x @ _GRAY).mean())
    x *= np.float32(factor)
    x += np.float32((1.0 - factor) * mean)
    return np.clip(x, 0.0, 255.0, out=x)


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """Blend with each pixel's grey level: 0 gives greyscale, 1 the image."""
    gray = (x @ _GRAY)[..., None]
    gray *= np.float32(1.0 - factor)
    x *= np.float32(factor)
    x += gray
    return np.clip(x, 0.0, 255.0, out=x)


def color_jitter(x: np.ndarray, strength: float, generator: torch.Generator) -> np.ndarray:
    """Brightness, contrast and saturation factors ~ U[1-s, 1+s], applied in random order."""
    u = torch.rand(3, generator=generator)
    factors = (1.0 + strength * (2.0 * u - 1.0)).clamp_(min=0.0).tolist()
    ops = (adjust_brightness, adjust_contrast, adjust_saturation)
    for i in torch.randperm(3, generator=generator).tolist():
        x = ops[i](x, factors[i])
    return x


def lighting_shift(std: float, generator: torch.Generator) -> np.ndarray:
    """AlexNet PCA lighting: RGB offset ``eigvec @ (alpha * eigval)``, alpha ~ N(0, std)."""
    alpha = (torch.randn(3, generator=generator) * std).numpy()
    return np.asarray(IMAGENET_EIGVEC) @ (alpha * np.asarray(IMAGENET_EIGVAL))


# ---------------------------------------------------------------------------- data set


class ImageFolderDataset(AugmentedDataset):
    """Images under ``root/<class>/``, yielding ``(float32 3xSxS normalised, int label)``.

    ``files`` are paths relative to ``root`` (kept as one bytes array, so forked workers do
    not copy a million Python strings on touch).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        files: Sequence[str],
        labels: Sequence[int],
        classes: Sequence[str],
        *,
        image_size: int = 224,
        augment: bool = False,
        min_scale: float = 0.08,
        flip: bool = True,
        jitter: float = 0.4,
        lighting: float = 0.1,
        crop_pct: float = 0.875,
        draft: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(augment, seed)
        self.root = os.fspath(root)
        self.files = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = tuple(classes)
        self.image_size = int(image_size)
        self.min_scale = float(min_scale)
        self.flip = bool(flip)
        self.jitter = float(jitter)
        self.lighting = float(lighting)
        self.crop_pct = float(crop_pct)
        self.draft = bool(draft)
        # normalise: x_norm = x_255 * mul + add, per channel
        self._mul = (1.0 / (255.0 * np.asarray(IMAGENET_STD))).astype(np.float32)
        self._add = (-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.files[index]))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        size = self.image_size
        if not self.augment:
            img = load_crop(
                self.path(index),
                lambda w, h: center_crop_box(w, h, size, self.crop_pct),
                size,
                self.draft,
            )
            return self._to_tensor(img, None), int(self.labels[index])
        g = self.generator()
        img = load_crop(
            self.path(index),
            lambda w, h: random_resized_crop_box(w, h, self.min_scale, g),
            size,
            self.draft,
        )
        if self.flip and torch.rand(1, generator=g).item() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self._to_tensor(img, g), int(self.labels[index])

    def _to_tensor(self, img: Image.Image, g: torch.Generator | None) -> Tensor:
        x = np.asarray(img, dtype=np.float32)  # HxWx3, 0..255: the one copy out of PIL
        add = self._add
        if g is not None:
            if self.jitter > 0:
                x = color_jitter(x, self.jitter, g)
            if self.lighting > 0:
                add = add + (lighting_shift(self.lighting, g) * 255.0 * self._mul).astype(
                    np.float32
                )
        out = np.empty((3, *x.shape[:2]), dtype=np.float32)  # normalise into contiguous CHW
        np.multiply(x.transpose(2, 0, 1), self._mul[:, None, None], out=out)
        out += add[:, None, None]
        return torch.from_numpy(out)


# ---------------------------------------------------------------------------- scanning


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def scan_split(
    folder: Path, classes: Sequence[str] | None = None
) -> tuple[list[str], list[int], list[str]]:
    """``(files relative to folder, labels, classes)`` of one class-per-folder split.

    ``classes`` (from the training split) fixes the label of each class name.
    """
    found = _subdirs(folder)
    if not found:
        with os.scandir(folder) as it:
            loose = any(e.is_file() and _is_image(e.name) for e in it)
        hint = " (its images are not sorted into class folders)" if loose else ""
        raise ValueError(f"imagefolder needs {LAYOUT_HELP}; {folder} has no class folders{hint}")
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(
                f"imagefolder: {folder} has classes that train lacks "
                f"({', '.join(unknown[:5])}); both splits need the same class folders"
            )
    training = classes is None
    if classes is None:
        classes = found
    index = {c: i for i, c in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for cls in found:
        with os.scandir(folder / cls) as it:
            names = sorted(e.name for e in it if _is_image(e.name) and e.is_file())
        files += [f"{cls}/{n}" for n in names]
        labels += [index[cls]] * len(names)
        if not names:
            empty.append(cls)
    if not files:
        raise ValueError(
            f"imagefolder needs {LAYOUT_HELP}; {folder} has class folders but no images "
            f"({', '.join(IMAGE_EXTENSIONS)})"
        )
    if training and empty:  # a class nothing teaches: its label would never be predicted
        raise ValueError(
            f"imagefolder: class folder {folder / empty[0]} has no images"
            + (f" (nor {len(empty) - 1} more)" if len(empty) > 1 else "")
            + "; add its images or remove the folder"
        )
    return files, labels, list(classes)


def load_imagefolder_sets(
    path: str | None,
    *,
    augment: bool,
    image_size: int | None,
    seed: int,
    min_scale: float,
    flip: bool | None,
    jitter: float,
    lighting: float,
    crop_pct: float,
) -> tuple[ImageFolderDataset, ImageFolderDataset, DataInfo]:
    """Train and validation splits of a class-per-folder tree (train/ and val/)."""
    if not path:
        raise ValueError(f"imagefolder needs data.path pointing at {LAYOUT_HELP}; none was given")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"imagefolder needs data.path pointing at {LAYOUT_HELP}; {root} does not exist"
        )
    if not (root / "train").is_dir():
        raise FileNotFoundError(
            f"imagefolder needs data.path pointing at {LAYOUT_HELP}; {root} has no train folder"
        )
    test_dir = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
    if test_dir is None:
        raise FileNotFoundError(
            f"imagefolder needs data.path pointing at {LAYOUT_HELP}; {root} has no val folder"
        )
    train_files, train_labels, classes = scan_split(root / "train")
    test_files, test_labels, _ = scan_split(test_dir, classes)
    size = 224 if image_size is None else image_size
    common = dict(image_size=size, crop_pct=crop_pct, seed=seed, classes=classes)
    train = ImageFolderDataset(
        root / "train",
        train_files,
        train_labels,
        augment=augment,
        min_scale=min_scale,
        flip=True if flip is None else flip,
        jitter=jitter,
        lighting=lighting,
        **common,
    )
    test = ImageFolderDataset(test_dir, test_files, test_labels, augment=False, **common)
    info = DataInfo(
        num_classes=len(classes),
        in_chans=3,
        image_size=size,
        name="imagefolder",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        classes=tuple(classes),
    )
    return train, test, info
