"""Typed, strict training configuration: YAML file + ``--set key=value`` overrides.

Every key is a dataclass field with a type; an unknown key or a value of the wrong type is an
error that names the closest valid key, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
MODES = ("slimmable", "universal", "naive", "individual", "incremental")
SCHEDULES = ("multistep", "exponential", "linear", "cosine")
AMP = ("none", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class ModelConfig:
    """The network. ``widths`` for S-Nets (slimmable / naive / individual / incremental),
    ``width_range`` for US."""

    # a registered name, a family ("small_cnn" -> s_/us_ by the mode), or any importable factory
    # of a plain torch model, "package.module:function", made slimmable by the convert section
    name: str = "small_cnn"
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
    holdout: int = 0  # training images set aside, never trained on (AutoSlim scores on them)


@dataclass
class TrainConfig:
    mode: str = "universal"
    num_sample_widths: int = 4  # n of the sandwich rule: largest, smallest and n-2 random
    inplace_distill: bool = True
    distill_temperature: float = 1.0  # teacher and students at softmax(logits / T), loss x T^2
    distill_warmup_epochs: float = 0.0  # before this, every width learns from the labels
    nonuniform: bool = False  # random widths of the sandwich get a random width per layer
    epochs: int = 10  # incremental: epochs per width
    batch_size: int = 64
    lr: float = 0.1
    optimizer: str = "sgd"  # "sgd" (the papers'), or "adamw" (momentum is its beta1)
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
    # NHWC memory format: faster convs on recent GPUs, and on a CPU 0.79x the NCHW step time
    # (docs/recipes.md); torch 2.13 on CPU aborts on small ResNets this way (same page)
    channels_last: bool = False
    # compile_slimmable: one graph for every width; on a CPU no faster than eager (0.96-1.08x,
    # docs/recipes.md): use channels_last there. Unmeasured on GPUs
    compile: bool = False


@dataclass
class CalibrateConfig:
    images: int = 2000
    batch_size: int | None = None  # None: train.batch_size


@dataclass
class ConvertConfig:
    """How a model from a factory (``model.name: package.module:function``) is made slimmable
    (see :func:`slimmable.convert`); its widths come from ``model``, its norm from the mode."""

    divisor: int = 8  # channel counts round to multiples of this
    fixed: list[str] = field(default_factory=list)  # module-name patterns that never slim
    input_size: list[int] | None = None  # C, H, W of the example input (None: the data's)


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
    convert: ConvertConfig = field(default_factory=ConvertConfig)

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
    if tp is float and isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)  # 1e-3: a float in YAML 1.2, a string to PyYAML (YAML 1.1)
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


def _finite_floats(node: Any, prefix: str = "") -> None:
    """Every float of the config, lists included, is a finite number (no nan, no inf)."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _finite_floats(value, key + ".")
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{key} must be a finite number, got {value}")


def _check_widths(m: ModelConfig, e: EvalConfig) -> None:
    if m.widths is not None:
        if not m.widths or any(w <= 0 for w in m.widths):
            raise ValueError(
                f"model.widths must be positive widths, e.g. [0.5, 1.0]; got {m.widths}"
            )
        twice = sorted({w for w in m.widths if m.widths.count(w) > 1})
        if twice:
            raise ValueError(
                f"model.widths lists {twice[0]:g} more than once; give each width once, "
                f"e.g. {sorted(set(m.widths))}"
            )
    if m.width_range is not None:
        if len(m.width_range) != 2:
            raise ValueError("model.width_range must be [lo, hi], e.g. [0.25, 1.0]")
        lo, hi = m.width_range
        if not 0 < lo <= hi:
            raise ValueError(
                f"model.width_range must be [lo, hi] with 0 < lo <= hi, got {[lo, hi]}"
            )
    if e.widths is not None and any(w <= 0 for w in e.widths):
        raise ValueError(f"eval.widths must be positive, got {e.widths}")


def _check_distillation(t: TrainConfig) -> None:
    """The distillation options are valid, and only given where in-place distillation runs."""
    if t.distill_temperature <= 0:
        raise ValueError(
            f"train.distill_temperature must be positive (1: the plain softmax), got "
            f"{t.distill_temperature}"
        )
    if t.distill_warmup_epochs < 0:
        raise ValueError("train.distill_warmup_epochs must be 0 or more epochs")
    changed = [
        key
        for key, value, default in (
            ("distill_temperature", t.distill_temperature, 1.0),
            ("distill_warmup_epochs", t.distill_warmup_epochs, 0.0),
        )
        if value != default
    ]
    if not changed:
        return
    if not t.inplace_distill:
        raise ValueError(
            f"train.{changed[0]} shapes in-place distillation, which is off: set "
            f"train.inplace_distill=true, or remove train.{changed[0]}"
        )
    if t.mode in ("individual", "incremental"):
        raise ValueError(
            f"train.{changed[0]} shapes in-place distillation, but train.mode={t.mode} trains "
            "one width per step (nothing to distill from): remove it, or train universally"
        )


def _validate(cfg: Config) -> Config:
    t = cfg.train
    _finite_floats(cfg)
    choices = {
        "train.mode": (t.mode, MODES),
        "train.schedule": (t.schedule, SCHEDULES),
        "train.amp": (t.amp, AMP),
        "train.optimizer": (t.optimizer, OPTIMIZERS),
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
    _check_distillation(t)
    if t.mode != "universal" and (t.nonuniform or t.num_sample_widths != 4):
        key = "train.nonuniform" if t.nonuniform else "train.num_sample_widths"
        raise ValueError(
            f"{key} belongs to train.mode=universal (the sandwich rule); train.mode={t.mode} "
            "trains the widths of model.widths, so remove it (or train universally)"
        )
    _check_widths(cfg.model, cfg.eval)
    if t.threads is not None and t.threads < 1:
        raise ValueError("train.threads must be at least 1, or null for torch's default")
    if cfg.data.holdout < 0 or cfg.data.workers < 0:
        raise ValueError("data.holdout and data.workers must be 0 or more")
    if cfg.eval.every < 0:
        raise ValueError("eval.every must be 0 (only after training) or a number of epochs")
    _check_convert(cfg)
    return cfg


def is_factory(name: str) -> bool:
    """Whether ``model.name`` names an importable factory (``package.module:function``)."""
    return ":" in name


def _check_convert(cfg: Config) -> None:
    c, name = cfg.convert, cfg.model.name
    if not is_factory(name):
        if c != ConvertConfig():
            raise ValueError(
                f"convert: applies to models from a factory (model.name: package.module:function); "
                f"{name!r} is from the zoo, which is slimmable already"
            )
        if "." in name:
            module, _, fn = name.rpartition(".")
            raise ValueError(
                f"model.name {name!r} is no registered model; for a factory write {module}:{fn}"
            )
        return
    if c.divisor < 1:
        raise ValueError(f"convert.divisor must be at least 1, got {c.divisor}")
    if c.input_size is not None and (len(c.input_size) != 3 or min(c.input_size) < 1):
        raise ValueError(f"convert.input_size must be [C, H, W], got {c.input_size}")
    if cfg.model.in_chans is not None:
        raise ValueError(
            "model.in_chans is for zoo models; give a factory's input channels in model.kwargs "
            "under its own name (and convert.input_size if they differ from the data's)"
        )


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
        value = _yaml(raw, f"--set {item}") if raw.strip() else None
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            node = child
        node[parts[-1]] = value
    return data


def _yaml(text: str, where: str) -> Any:
    """``text`` parsed as YAML; a syntax error is one line saying where (file:line:column)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = where
        if mark is not None and not where.startswith("--set"):
            at = f"{where}:{mark.line + 1}:{mark.column + 1}"
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ValueError(f"{at}: YAML syntax error: {problem}") from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply ``--set``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}; see configs/demo.yaml")
        data = _yaml(path.read_text(), str(path)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a YAML mapping of sections (model:, train:, ...)")
    return config_from_dict(apply_overrides(data, overrides))


def as_config(config: Config | Mapping[str, Any] | str | Path) -> Config:
    """A :class:`Config` from a Config, nested dicts (``{"train": {"epochs": 5}}``) or a YAML
    file's path."""
    if isinstance(config, Config):
        return _validate(config)
    if isinstance(config, Mapping):
        return config_from_dict(config)
    if isinstance(config, str | Path):
        return load_config(config)
    raise TypeError(f"a config is a Config, a dict or a YAML path, not {type(config).__name__}")


def save_config(cfg: Config, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False, default_flow_style=None)
    return path
