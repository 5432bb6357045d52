"""Typed, strict training configuration: YAML file + ``--set key=value`` overrides.

Every key is a dataclass field with a type; an unknown key or a value of the wrong type is an
error that names the closest valid key, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODES = ("slimmable", "universal", "naive", "individual")
SCHEDULES = ("multistep", "exponential", "linear", "cosine")
AMP = ("none", "bf16", "fp16")


@dataclass
class ModelConfig:
    """The network. ``widths`` for S-Nets (slimmable/naive/individual), ``width_range`` for US."""

    name: str = "small_cnn"  # registered name, or a family ("small_cnn" -> s_/us_ by mode)
    widths: list[float] | None = None
    width_range: list[float] | None = None
    num_classes: int | None = None  # None: follow the data set
    in_chans: int | None = None  # None: follow the data set
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra factory keyword arguments


@dataclass
class DataConfig:
    name: str = "digits"
    path: str | None = None
    image_size: int | None = None
    augment: str = "standard"
    workers: int = 0


@dataclass
class TrainConfig:
    mode: str = "universal"
    num_sample_widths: int = 4  # n of the sandwich rule: largest, smallest and n-2 random
    inplace_distill: bool = True
    nonuniform: bool = False  # random widths of the sandwich get a random width per layer
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # not applied to depthwise convs, BN and biases
    label_smoothing: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: list[float] = field(default_factory=list)  # multistep: epochs
    gamma: float = 0.1  # multistep: factor per milestone; exponential: factor per epoch
    min_lr: float = 0.0  # linear / cosine end at this learning rate
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    progress: bool = True  # tqdm bar per epoch
    threads: int | None = None  # CPU threads while training (None: torch's default)
    amp: str = "none"  # autocast: "none", "bf16" or "fp16" (fp16 adds a GradScaler)
    # NHWC memory format: faster convs on recent GPUs, and on a CPU 0.81x the NCHW step time
    # (docs/recipes.md); torch 2.13 on CPU aborts on small ResNets this way (same page)
    channels_last: bool = False
    # compile_slimmable: one graph for every width; on a CPU no faster than eager (1.01x,
    # docs/recipes.md): use channels_last there. Unmeasured on GPUs
    compile: bool = False


@dataclass
class CalibrateConfig:
    images: int = 2000
    batch_size: int | None = None  # None: train.batch_size


@dataclass
class EvalConfig:
    widths: list[float] | None = None  # None: the S-Net's switches, or 8 widths over the range
    batch_size: int = 256
    every: int = 1  # evaluate every N epochs (and after the last); 0: only after the last


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- parsing ---------------------------------------------------------------------------------
def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        keys.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _all_keys(hints[f.name], key + ".")
    return keys


def _unknown(key: str) -> ValueError:
    near = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.6)
    if not near:  # a typo in the section name, or the key given without its section
        tail = key.rsplit(".", 1)[-1]
        near = [k for k in _all_keys(Config) if k.rsplit(".", 1)[-1] == tail][:1]
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ValueError(f"unknown config key {key!r}{hint}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against type ``tp`` (ints widen to floats; nothing else converts)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ValueError(f"{key} must be a list, got {value!r}; e.g. --set {key}=[1, 2]")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ValueError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise ValueError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown(prefix + str(key))
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def _validate(cfg: Config) -> Config:
    t = cfg.train
    choices = {
        "train.mode": (t.mode, MODES),
        "train.schedule": (t.schedule, SCHEDULES),
        "train.amp": (t.amp, AMP),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            near = difflib.get_close_matches(value, allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}{hint}")
    positive = {
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "calibrate.images": cfg.calibrate.images,
        "eval.batch_size": cfg.eval.batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key} must be at least 1, got {value}")
    if t.num_sample_widths < 2:
        raise ValueError("train.num_sample_widths must be at least 2 (the largest and smallest)")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ValueError("train.label_smoothing must be in [0, 1)")
    if t.lr <= 0:
        raise ValueError(f"train.lr must be positive, got {t.lr}")
    if cfg.model.width_range is not None and len(cfg.model.width_range) != 2:
        raise ValueError("model.width_range must be [lo, hi], e.g. [0.25, 1.0]")
    if t.threads is not None and t.threads < 1:
        raise ValueError("train.threads must be at least 1, or null for torch's default")
    if cfg.eval.every < 0:
        raise ValueError("eval.every must be 0 (only after training) or a number of epochs")
    return cfg


def config_from_dict(data: Mapping[str, Any] | None) -> Config:
    """A validated :class:`Config` from nested dicts (missing keys take their defaults)."""
    return _validate(_build(Config, data or {}))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings to nested ``data`` in place; values parse as YAML."""
    known = set(_all_keys(Config))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, e.g. --set train.epochs=5; got {item!r}")
        parts = key.split(".")
        if key not in known and not (
            len(parts) > 2 and ".".join(parts[:2]) in known and parts[1] == "kwargs"
        ):
            raise _unknown(key)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply ``--set``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}; see configs/demo.yaml")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a YAML mapping of sections (model:, train:, ...)")
    return config_from_dict(apply_overrides(data, overrides))


def save_config(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False, default_flow_style=None)
    return path
