"""What ``slimmable serve`` runs: a model at any of its widths, and what it knows about it.

``CKPT`` is one of

- a run's checkpoint (``slimmable train``): the model in PyTorch, with the data set's
  preprocessing and the run's per-width top-1;
- a switchable ONNX file (``slimmable export CKPT --all-widths``): onnxruntime, with the same
  facts read from the file's metadata;
- a zoo name (``s_mobilenet_v2``): random weights, for timing; top-1 is then the paper's
  ImageNet figure from the model's config, labelled as such.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.base import IMAGENET_MEAN, IMAGENET_STD

CENTER_CROP_DATA = ("imagefolder",)  # data sets evaluated with a resize + centre crop
CROP_PCT = 0.875
MAX_PIXELS = 40_000_000  # a larger image is refused before it is decoded


@dataclass
class WidthInfo:
    """One width a served model runs at: its MACs and top-1 (``None`` when unknown)."""

    width: float
    macs: int | None = None
    top1: float | None = None


@dataclass
class ModelCard:
    """What a served model is: its widths, input and how images are turned into inputs.

    ``top1_source`` says where the top-1 figures come from (``"checkpoint"``: the run's own
    evaluation; ``"paper (ImageNet)"``: the model config's published figure, for random weights).
    Images are decoded, converted to ``in_chans`` channels, resized (``"resize"``, as the array
    data sets are) or resized and centre-cropped (``"center_crop"``, ImageNet-style), scaled to
    [0, 1] and normalised with ``mean`` / ``std``.
    """

    name: str
    widths: list[WidthInfo]
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: str = "resize"
    crop_pct: float = CROP_PCT
    classes: tuple[str, ...] = ()
    top1_source: str | None = None
    source: str = ""

    @property
    def width_values(self) -> list[float]:
        return [w.width for w in self.widths]

    def to_metadata(self) -> dict[str, Any]:
        """The card as JSON-able metadata (what a switchable export stores)."""
        d = dataclasses.asdict(self)
        d["widths"] = [dataclasses.asdict(w) for w in self.widths]
        return d

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> ModelCard:
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in meta.items() if k in fields}
        d["widths"] = [WidthInfo(**w) for w in meta["widths"]]
        d["input_size"] = tuple(meta["input_size"])
        for key in ("mean", "std", "classes"):
            d[key] = tuple(d.get(key, ()))
        return cls(**d)


def _macs(model: nn.Module, input_size: Sequence[int], widths: Sequence[float]) -> list[int]:
    from ..profile import profile

    return [row.macs for row in profile(model, tuple(input_size), list(widths)).widths]


def card_for(
    model: nn.Module,
    name: str,
    widths: Sequence[float],
    input_size: Sequence[int],
    ckpt: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The card of ``model`` (from a checkpoint ``ckpt``, or a zoo model when ``None``)."""
    c, h, w = (int(v) for v in input_size)
    macs = _macs(model, (c, h, w), widths)
    infos = [WidthInfo(float(x), m) for x, m in zip(widths, macs, strict=True)]
    if ckpt is not None:
        for row in ckpt.get("eval") or []:
            if isinstance(row.get("width"), int | float):
                for info in infos:
                    if abs(info.width - float(row["width"])) < 1e-6:
                        info.top1 = float(row["top1"])
        data = ckpt.get("data") or {}
        mean = tuple(data.get("mean") or ())
        std = tuple(data.get("std") or ())
        kind = "center_crop" if data.get("name") in CENTER_CROP_DATA else "resize"
        classes = tuple(data.get("classes") or ())
        source = "checkpoint" if any(i.top1 is not None for i in infos) else None
    else:  # a zoo model with random weights: the paper's figures, ImageNet preprocessing
        errors = getattr(model, "default_cfg", {}).get("top1_err", {})
        for info in infos:
            err = next((e for k, e in errors.items() if abs(float(k) - info.width) < 1e-6), None)
            info.top1 = None if err is None else (100.0 - float(err)) / 100.0
        mean, std, kind, classes = IMAGENET_MEAN, IMAGENET_STD, "center_crop", ()
        source = "paper (ImageNet)" if errors else None
    if len(mean) != c:
        mean, std = (0.5,) * c, (0.5,) * c
    return ModelCard(
        name=name,
        widths=infos,
        input_size=(c, h, w),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        preprocess=kind,
        classes=classes,
        top1_source=source,
    )


# ---- images -----------------------------------------------------------------------------------
def decode_image(data: bytes, card: ModelCard) -> np.ndarray:
    """A PNG / JPEG (any format PIL reads) as the model's ``C x H x W`` float32 input.

    ``ValueError`` (a client's mistake) when the bytes are no decodable image.
    """
    from ..data.folder import center_crop_box

    c, h, w = card.input_size
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ValueError(f"the image has over {MAX_PIXELS} pixels; send a smaller one")
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA")
            img = img.convert("L" if c == 1 else "RGB")
            if card.preprocess == "center_crop":
                left, top, bw, bh = center_crop_box(img.width, img.height, h, card.crop_pct)
                box = (left, top, left + bw, top + bh)
                img = img.resize((w, h), Image.Resampling.BILINEAR, box=box)
            elif img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            x = np.asarray(img, dtype=np.float32) / 255.0
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(
            f"the image cannot be decoded ({type(err).__name__}); send a PNG or JPEG"
        ) from None
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    if x.shape[0] != c:
        raise ValueError(f"the image has {x.shape[0]} channels, the model takes {c}")
    mean = np.asarray(card.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(card.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


# ---- backends ---------------------------------------------------------------------------------
class Backend(Protocol):
    """Runs a batch at a width: ``run(x, width) -> logits`` (numpy float32 arrays)."""

    card: ModelCard

    def run(self, x: np.ndarray, width: float) -> np.ndarray: ...

    def check_width(self, width: float) -> float: ...


@dataclass
class TorchBackend:
    """A slimmable PyTorch model, switched with ``set_width`` per batch."""

    model: nn.Module
    card: ModelCard
    widths: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        from ..layers.slicing import freeze

        self.model.eval()
        freeze(self.model)  # a served model's weights stay: each width's slices are kept
        self.widths = self.card.width_values

    def check_width(self, width: float) -> float:
        """The served width equal to ``width`` (within 1e-6), else ``ValueError`` naming them."""
        for w in self.widths:
            if abs(w - float(width)) <= 1e-6:
                return w
        held = ", ".join(f"{w:g}" for w in self.widths)
        raise ValueError(f"width {float(width):g} is not served; this server runs {held}")

    def run(self, x: np.ndarray, width: float) -> np.ndarray:
        from ..width import set_width

        with torch.no_grad(), set_width(self.model, width):
            return self.model(torch.from_numpy(x)).float().numpy()


@dataclass
class OnnxBackend:
    """A switchable ONNX file in onnxruntime."""

    session: Any  # slimmable.switchable.SwitchableSession
    card: ModelCard

    def check_width(self, width: float) -> float:
        return self.session.check_width(width)

    def run(self, x: np.ndarray, width: float) -> np.ndarray:
        return self.session.run(x, width)[0]


def load_backend(spec: str, threads: int | None = None) -> Backend:
    """The backend for ``CKPT``: a run (checkpoint or run folder, opened by
    :func:`slimmable.run.open_run`), a switchable ``.onnx`` file or a zoo name."""
    from ..models import list_models

    path = Path(spec)
    if path.suffix == ".onnx":
        from ..switchable import load_switchable

        if not path.is_file():
            raise FileNotFoundError(f"no file at {path}")
        session = load_switchable(path, threads=threads)
        meta = dict(session.metadata.get("card") or {})
        if not meta:
            raise ValueError(f"{path} carries no model card; export it again with this version")
        card = ModelCard.from_metadata(meta)
        card.source = str(path)
        return OnnxBackend(session, card)
    if path.exists():
        from ..run import open_run
        from ..switchable import held_widths

        run = open_run(path)
        size = run.input_size or run.model.default_cfg["input_size"]
        card = card_for(run.model, run.name, held_widths(run.model), size, run.checkpoint)
        card.source = str(run.path)
        return TorchBackend(run.model, card)
    if spec in list_models():
        return zoo_backend(spec)
    raise FileNotFoundError(
        f"{spec!r} is neither a file nor a registered model; give a checkpoint (or run "
        "folder), a switchable ONNX file or a zoo name (slimmable.list_models())"
    )


def zoo_backend(name: str, input_size: Sequence[int] | None = None, seed: int = 0) -> TorchBackend:
    """A zoo model with random weights (for timing): its switches, or quarter widths of a US
    range, each running on its shared statistics."""
    from ..models import create_model
    from ..profile import default_widths
    from ..width import set_uncalibrated

    torch.manual_seed(seed)
    model = create_model(name).eval()
    set_uncalibrated(model, "running")  # random weights: no calibrated statistics to use
    size = tuple(input_size or model.default_cfg["input_size"])
    if len(size) == 2:
        size = (model.default_cfg["input_size"][0], *size)
    widths = sorted(default_widths(model))
    card = card_for(model, name, widths, size)
    card.source = f"{name} (random weights)"
    return TorchBackend(model, card)
