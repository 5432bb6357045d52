"""A trained run, opened: its model (calibrated widths included), config, data and widths.

This module sits below both the trainer and the commands. ``slimmable train`` writes a run
folder (``checkpoint.pt``, ``config.yaml``, ...); every command that reads a run (eval,
calibrate, export, select, search, profile) opens it here, so they agree on what a run is:

- :func:`load_model` returns the trained model of a run, in eval mode;
- :func:`open_run` returns a :class:`Run`: the model plus what commands need (config, data sets,
  eval widths, input size, calibration), from a checkpoint, a run folder or the authors'
  released weights (``official=``, ``model=``, with the data set given explicitly);
- :func:`build_model_from_spec` rebuilds a model from a checkpoint's ``model`` entry, the one
  place that does.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .calibrate import calibrate, calibrated_widths
from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, config_from_dict
from .data import DataInfo, build_datasets
from .data.loader import CalibrationBatches, calibration_batches, holdout_split
from .models import create_model
from .tasks import Classification, Segmentation, task_for
from .width import Width, network_key, width_bounds, width_choices
from .widthspec import WidthSpec, parse_widths

CHECKPOINT = "checkpoint.pt"
HOLDOUT_SEED = 0  # which training images data.holdout sets aside: the same for every run
_SHOWN = 3


# ---- models from checkpoints -----------------------------------------------------------------
def import_factory(path: str) -> Callable[..., nn.Module]:
    """The function (or class, or ``Class.method``) that ``package.module:function`` names."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a model factory is package.module:function, got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"cannot import {module_name!r} for model {path!r} ({err}); is its package "
            "installed, or its folder on PYTHONPATH?"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{module_name!r} has no {attr!r}, which model {path!r} names")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model {path!r} is not callable")
    return target


def example_batch(input_size: Sequence[int], batch: int = 2) -> torch.Tensor:
    """The deterministic input a factory's model is converted on (its values do not matter)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *(int(s) for s in input_size), generator=generator)


def build_model_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """The (untrained) model a checkpoint's ``model`` entry describes.

    ``spec`` is ``{"name": registered model name, "kwargs": factory keyword arguments}``, or
    for a user's model ``{"name": "package.module:function", "kwargs": ..., "convert": the
    keyword arguments of :func:`slimmable.convert` and ``input_size``}``: the plain model is
    built and converted again, which gives the same slimmable model every time.
    """
    name = spec.get("name")
    if not isinstance(name, str):
        raise ValueError("the checkpoint's model entry names no model ({'name': ..., 'kwargs'})")
    kwargs = dict(spec.get("kwargs") or {})
    if "convert" not in spec:
        return create_model(name, **kwargs)
    from .converter import convert

    options = dict(spec["convert"])
    example = example_batch(options.pop("input_size"))
    try:
        model = import_factory(name)(**kwargs)
    except TypeError as err:
        raise ValueError(f"model {name!r} does not take these arguments: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {name!r} returned a {type(model).__name__}, not an nn.Module")
    return convert(model, example, **options)


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def load_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state_dict)``, strictly; a mismatch is one line naming the first
    missing, unexpected and mis-shaped keys (calibration buffers may change shape)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [
        f"{k} {list(v.shape)} (model: {list(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and ".calib_" not in k and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped {_listing(misshaped)}")
    if problems:
        raise ValueError(
            f"{what} does not fit the model {type(model).__name__}: {'; '.join(problems)}; "
            "rebuild the model as it was trained (name, widths, num_classes)"
        )
    model.load_state_dict(state_dict)


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> nn.Module:
    """The model a checkpoint describes, with its weights (calibrated statistics included)."""
    if "model" not in ckpt or "state_dict" not in ckpt:
        raise ValueError("the checkpoint holds no model (it needs 'model' and 'state_dict')")
    model = build_model_from_spec(ckpt["model"])
    load_state(model, ckpt["state_dict"], f"the checkpoint of {ckpt['model'].get('name')}")
    return model


def checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint of ``path``: the file itself, or ``checkpoint.pt`` in a run folder."""
    path = Path(path)
    if path.is_dir():
        inner = path / CHECKPOINT
        if not inner.is_file():
            raise FileNotFoundError(f"{path} is a folder without {CHECKPOINT}; is it a run?")
        return inner
    return path


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a run (a checkpoint or a run folder), in eval mode.

    Every width the run calibrated is ready: its BN statistics travel in the checkpoint.
    """
    ckpt = load_checkpoint(checkpoint_path(path), map_location)
    return model_from_checkpoint(ckpt).eval()


# ---- data and widths of a run ----------------------------------------------------------------
@dataclass
class RunData:
    """The data sets of a run: what training draws from, the held-out images, the test set."""

    train: Dataset  # the training images training sees (the held-out ones removed)
    holdout: Dataset  # held-out training images, eval-style (empty without data.holdout)
    test: Dataset
    info: DataInfo
    holdout_indices: list[int] = field(default_factory=list)  # into the full training set


def run_datasets(cfg: Config, *, seed: int | None = None) -> RunData:
    """The data sets of ``cfg``: train / held-out / test (see ``data.holdout``)."""
    d = cfg.data
    full, test, info = build_datasets(
        d.name, d.path, image_size=d.image_size, augment=d.augment,
        seed=cfg.train.seed if seed is None else seed,
    )  # fmt: skip
    train, holdout, indices = holdout_split(full, d.holdout, seed=HOLDOUT_SEED)
    return RunData(train, holdout, test, info, indices)


def default_widths(model: nn.Module, count: int = 8) -> list[float]:
    """The switches of an S-Net, or ``count`` evenly spaced widths over a US model's range."""
    choices = width_choices(model)
    if choices is not None:
        return list(choices)
    lo, hi = width_bounds(model)
    if count < 2 or hi == lo:
        return [hi]
    return sorted({round(lo + (hi - lo) * i / (count - 1), 6) for i in range(count)})


def eval_widths(cfg: Config, model: nn.Module) -> list[Width]:
    """``eval.widths``, else the S-Net's switches or 8 widths spread over the US range."""
    if not cfg.eval.widths:
        return list(default_widths(model))
    widths = sorted({float(w) for w in cfg.eval.widths})
    for w in widths:
        try:
            network_key(model, w)  # validates against the model's widths
        except ValueError as err:
            raise ValueError(
                f"eval.widths: {err}; set eval.widths to widths the model runs at "
                "(--set eval.widths=null for the default ones)"
            ) from None
    return list(widths)


def calibration_data(cfg: Config, train_set: Dataset) -> CalibrationBatches:
    """The calibration batches of a run (see :func:`slimmable.data.calibration_batches`):
    ``calibrate.images`` training images chosen by ``train.seed``, eval-style."""
    return calibration_batches(
        train_set,
        images=cfg.calibrate.images,
        batch_size=cfg.calibrate.batch_size or cfg.train.batch_size,
        seed=cfg.train.seed,
        num_workers=cfg.data.workers,
    )


# ---- a run -----------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained network and what the commands need of its run."""

    model: nn.Module  # in eval mode, calibrated widths included
    config: Config
    name: str  # the model's registered name
    checkpoint: dict[str, Any]  # what the file holds (the authors' weights: a model entry)
    path: Path | None = None  # the checkpoint file (None for the authors' weights)
    has_data: bool = True  # whether the config names the data set (else: pass --data)
    _data: RunData | None = field(default=None, repr=False)

    @property
    def data(self) -> RunData:
        """The run's data sets (loaded on first use)."""
        if not self.has_data:
            raise ValueError(
                "this run does not say which data set it used; give it (--data NAME "
                "[--data-path PATH]), e.g. --data imagefolder --data-path /data/imagenet"
            )
        if self._data is None:
            self._data = run_datasets(self.config)
        return self._data

    @property
    def input_size(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` of one input: the checkpoint's, else the data's, else unknown."""
        stored = self.checkpoint.get("input_size")
        if stored:
            return tuple(int(v) for v in stored)
        if self.has_data:
            info = self.data.info
            return (info.in_chans, info.image_size, info.image_size)
        return None

    @property
    def task(self) -> Classification | Segmentation:
        """What the run learned (classification or segmentation): how it is evaluated."""
        kwargs = (self.checkpoint.get("model") or {}).get("kwargs") or {}
        return task_for(self.data.info, kwargs.get("num_classes"))

    def eval_widths(self) -> list[Width]:
        return eval_widths(self.config, self.model)

    def widths(self, spec: WidthSpec | None) -> list[Width]:
        """The widths of ``spec`` (see :func:`slimmable.parse_widths`), else the eval widths."""
        return self.eval_widths() if spec is None else parse_widths(spec)

    def calibration_batches(self) -> CalibrationBatches:
        return calibration_data(self.config, self.data.train)

    def calibrate(self, widths: Sequence[Width], *, progress: bool = False) -> None:
        """BN post-statistics of ``widths`` on the run's calibration batches (in memory)."""
        batches = self.calibration_batches()
        calibrate(self.model, batches, widths, progress=progress)
        self.model.eval()

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the model (calibrated statistics included) into a checkpoint: this run's own
        file by default. A run of the authors' weights becomes a slimmable checkpoint."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("this run came from the authors' weights; give --out FILE.pt")
        payload = dict(self.checkpoint)
        payload.setdefault("model", {"name": self.name, "kwargs": {}})
        payload.setdefault("config", self.config.to_dict())
        payload["state_dict"] = self.model.state_dict()
        payload["calibrated"] = calibrated_widths(self.model)
        return save_checkpoint(target, payload)


def _with_data(
    cfg: dict[str, Any], data: str | None, data_path: str | None, image_size: int | None
) -> dict[str, Any]:
    section = dict(cfg.get("data") or {})
    if data is not None and data != section.get("name"):
        section = {"name": data}  # another data set: its own path and size
    if data_path is not None:
        section["path"] = data_path
    if image_size is not None:
        section["image_size"] = image_size
    return {**cfg, "data": section}


def open_run(
    path: str | os.PathLike | None = None,
    *,
    official: str | os.PathLike | None = None,
    model: str | None = None,
    num_classes: int | None = None,
    data: str | None = None,
    data_path: str | None = None,
    image_size: int | None = None,
) -> Run:
    """Open a run: a checkpoint or run folder (``path``), or the authors' released weights
    (``official`` = their file, ``model`` = our zoo name, e.g. ``us_mobilenet_v2``).

    ``data``, ``data_path`` and ``image_size`` replace the run's data section (the authors'
    weights carry none: evaluating or calibrating them needs ``data``). ``num_classes`` for
    the authors' weights defaults to the data set's, else 1000.
    """
    if official is not None:
        if path is not None:
            raise ValueError("give a checkpoint or --official PATH --model NAME, not both")
        if model is None:
            raise ValueError("--official needs --model NAME, e.g. --model us_mobilenet_v2")
        return _open_official(Path(official), model, num_classes, data, data_path, image_size)
    if path is None:
        raise ValueError("give a checkpoint (or a run folder), or --official PATH --model NAME")
    if model is not None:
        raise ValueError("--model names the network of --official weights; a checkpoint has one")
    file = checkpoint_path(path)
    ckpt = load_checkpoint(file)
    net = model_from_checkpoint(ckpt).eval()
    if image_size is not None and ckpt.get("input_size"):  # another input size than trained at
        ckpt["input_size"] = [ckpt["input_size"][0], image_size, image_size]
    stored = ckpt.get("config")
    has_data = isinstance(stored, Mapping) or data is not None
    cfg = _with_data(
        dict(stored) if isinstance(stored, Mapping) else {}, data, data_path, image_size
    )
    if not isinstance(stored, Mapping) and data is None:
        cfg.pop("data")
    return Run(net, config_from_dict(cfg), str(ckpt["model"]["name"]), ckpt, file, has_data)


def _open_official(
    file: Path,
    name: str,
    num_classes: int | None,
    data: str | None,
    data_path: str | None,
    image_size: int | None,
) -> Run:
    from .models.official import load_official

    cfg = config_from_dict(_with_data({}, data, data_path, image_size) if data else {})
    sets = run_datasets(cfg) if data is not None else None
    classes = num_classes or (sets.info.num_classes if sets is not None else 1000)
    net = create_model(name, num_classes=classes)
    load_official(net, file)
    spec = {"name": name, "kwargs": {"num_classes": classes}}
    checkpoint: dict[str, Any] = {"model": spec, "official": file.name}
    if sets is not None:
        checkpoint["input_size"] = [sets.info.in_chans, sets.info.image_size, sets.info.image_size]
    elif image_size is not None:
        checkpoint["input_size"] = [3, image_size, image_size]
    return Run(net.eval(), cfg, name, checkpoint, None, sets is not None, sets)


__all__ = [
    "CHECKPOINT",
    "Run",
    "RunData",
    "build_model_from_spec",
    "calibration_data",
    "checkpoint_path",
    "default_widths",
    "eval_widths",
    "load_model",
    "load_state",
    "model_from_checkpoint",
    "open_run",
    "run_datasets",
]
