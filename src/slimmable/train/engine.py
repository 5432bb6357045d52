"""The training loop: one network, many widths, one optimizer step per batch.

Read :func:`run_training` top to bottom: set-up, then for every batch the widths of this step,
forward / loss / backward at each width (gradients accumulate), one optimizer step, the log;
at each epoch's end the evaluation (US-Nets: calibrated first), the metrics and the checkpoint.
What is built once sits in a :class:`Setup`; everything the loop changes, besides weights and
optimizer, sits in one :class:`TrainState`, which the checkpoint saves. Talking to other ranks
happens in :mod:`.distributed` through small calls that do nothing in a single process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from ..checkpoint import load_checkpoint, save_checkpoint
from ..compile import compile_slimmable
from ..config import Config, as_config, is_factory, save_config
from ..data import DataInfo
from ..data.loader import eval_loader, steps_per_epoch, train_loader
from ..export import output_tensors
from ..models import create_model, list_models, model_factory
from ..profile import MacsCounter
from ..run import (
    CHECKPOINT,
    RunData,
    build_model_from_spec,
    calibration_data,
    eval_widths,
    example_batch,
    run_datasets,
)
from ..tasks import Classification, Segmentation, task_for
from ..width import Width, set_width, width_choices
from . import distributed as ddp
from .distributed import World
from .incremental import IncrementalStages
from .optim import Schedule, build_optimizer, build_schedule, set_lr
from .sampling import WidthSampler

PLOT = "accuracy_vs_macs.png"
# Keys a resumed run may change: where and how fast it runs, not what it computes (a
# different device or thread count may change the float rounding, not the recipe).
RESUME_FREE = {
    "train.progress",
    "train.device",
    "train.threads",
    "data.workers",
    "data.path",
    "eval.batch_size",
}


@dataclass
class TrainResult:
    """What :func:`train` leaves behind."""

    model: nn.Module
    results: list[dict]  # final per-width evaluation (width, top1 or miou ..., loss, macs)
    out_dir: Path
    checkpoint: Path
    metrics: list[dict] = field(default_factory=list)
    finished: bool = True  # False when stopped early (``stop_after_steps`` or a signal)
    signal: int | None = None  # the signal (SIGTERM, SIGINT) that stopped the run, if any
    main: bool = True  # whether this process is rank 0 (the one that writes and prints)
    task: Classification | Segmentation = field(default_factory=Classification)


# ---- set-up ----------------------------------------------------------------------------------
def resolve_model_name(name: str, mode: str) -> str:
    """A registered name, or a family (``small_cnn``) completed to ``us_``/``s_`` by the mode."""
    known = list_models()
    universal = mode == "universal"
    kind, other = ("us_", "s_") if universal else ("s_", "us_")
    if name in known and name.startswith(other):
        family = name[len(other) :]
        what = "a universally slimmable network" if universal else "an S-Net (model.widths)"
        raise ValueError(
            f"train.mode={mode} trains {what}, but {name} is "
            f"{'an S-Net' if universal else 'universally slimmable'}: set model.name to the "
            f"family name {family} (it becomes {kind}{family}), or change train.mode"
        )
    if name in known:
        return name
    prefix = "us_" if mode == "universal" else "s_"
    if prefix + name in known:
        return prefix + name
    model_factory(name)  # raises, naming the closest models
    return name


def factory_spec(cfg: Config, info: DataInfo, input_size: Sequence[int]) -> dict[str, Any]:
    """The checkpoint spec of a model from a factory, converted as the mode trains it: an S-Net
    (``model.widths``, default the quarters; naive: one shared BN) or a US-Net
    (``model.width_range``, default [0.25, 1])."""
    mode, m = cfg.train.mode, cfg.model
    kwargs: dict[str, Any] = dict(m.kwargs)
    if m.num_classes is not None:
        kwargs["num_classes"] = m.num_classes
    options: dict[str, Any] = {
        "divisor": cfg.convert.divisor,
        "fixed": list(cfg.convert.fixed),
        "input_size": list(cfg.convert.input_size or input_size),
    }
    if mode == "universal":
        options["width_range"] = [float(w) for w in (m.width_range or (0.25, 1.0))]
    else:
        if mode == "individual" and (m.widths is None or len(m.widths) != 1):
            raise ValueError(
                "train.mode=individual trains one width alone: set model.widths to one width, "
                "e.g. --set model.widths=[0.5] (one run per width)"
            )
        options["widths"] = [float(w) for w in (m.widths or (0.25, 0.5, 0.75, 1.0))]
        options["norm"] = "shared" if mode == "naive" else "switchable"
    return {"name": m.name, "kwargs": kwargs, "convert": options}


def _check_classes(model: nn.Module, spec: Mapping[str, Any], info: DataInfo) -> None:
    """A factory's classifier must have the data set's classes (else labels run past it)."""
    with torch.no_grad():
        out = next(output_tensors(model(example_batch(spec["convert"]["input_size"]))), None)
    if out is not None and out.dim() == 2 and out.shape[1] != info.num_classes:
        raise ValueError(
            f"model {spec['name']!r} outputs {out.shape[1]} classes, the data set has "
            f"{info.num_classes}; set model.num_classes={info.num_classes} (passed to the factory "
            "as num_classes) or the factory's own argument in model.kwargs"
        )


def build_model(
    cfg: Config, info: DataInfo, input_size: Sequence[int] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``cfg`` for data set ``info``, and its checkpoint spec ``{name, kwargs}``
    (``input_size``: the data's ``(C, H, W)``, which a factory's model is converted at)."""
    mode, m = cfg.train.mode, cfg.model
    if is_factory(m.name):
        if input_size is None:
            raise ValueError("a model from a factory needs the input size it is converted at")
        spec = factory_spec(cfg, info, input_size)
        model = build_model_from_spec(spec)
        _check_classes(model, spec, info)
        return model, spec
    name = resolve_model_name(m.name, mode)
    kwargs: dict[str, Any] = dict(m.kwargs)
    kwargs["num_classes"] = m.num_classes if m.num_classes is not None else info.num_classes
    kwargs["in_chans"] = m.in_chans if m.in_chans is not None else info.in_chans
    if mode == "universal":
        if m.widths is not None:
            raise ValueError(
                "train.mode=universal takes model.width_range (e.g. [0.25, 1.0]), not model.widths"
            )
        if m.width_range is not None:
            kwargs["width_range"] = [float(w) for w in m.width_range]
    else:
        if m.width_range is not None:
            raise ValueError(
                f"train.mode={mode} trains a list of widths: set model.widths, not "
                "model.width_range (that is for train.mode=universal)"
            )
        if mode == "individual" and (m.widths is None or len(m.widths) != 1):
            raise ValueError(
                "train.mode=individual trains one width alone: set model.widths to one width, "
                "e.g. --set model.widths=[0.5] (one run per width)"
            )
        if m.widths is not None:
            kwargs["widths"] = [float(w) for w in m.widths]
        if mode == "naive":
            kwargs["norm"] = "shared"
    try:
        model = create_model(name, **kwargs)
    except TypeError as err:
        raise ValueError(f"model {name!r} does not accept these arguments: {err}") from None
    return model, {"name": name, "kwargs": kwargs}


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device asks for CUDA, which this machine lacks; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python: model init and any augmentation follow ``train.seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state, in types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _config_diff(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping) and k != "kwargs":
            keys += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _with_defaults(stored: Mapping, defaults: Mapping) -> dict:
    """``stored`` with the keys it lacks taken from ``defaults`` (defaults keep older runs'
    behaviour, so a run saved before a key existed resumes)."""
    out = dict(stored)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, Mapping) and isinstance(out[k], Mapping) and k != "kwargs":
            out[k] = _with_defaults(out[k], v)
    return out


@dataclass
class Setup:
    """What a run is built from, once: data, model, optimizer, schedule, widths, evaluation."""

    cfg: Config
    world: World
    data: RunData
    model: nn.Module  # widths are set, and calibration / evaluation / checkpoints run, on it
    net: nn.Module  # what the steps run: ``model``, in DDP and/or compiled
    spec: dict[str, Any]  # how to rebuild the model (the checkpoint's "model" entry)
    task: Classification | Segmentation  # the loss, distillation target and evaluation
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    sampler: WidthSampler
    steps_per_epoch: int
    epochs: int  # in all (incremental: train.epochs per width)
    total_steps: int
    incremental: IncrementalStages | None  # train.mode=incremental: one width per stage
    distill_from: int  # the first step of in-place distillation (train.distill_warmup_epochs)
    input_size: tuple[int, ...]
    eval_widths: list[Width]
    macs: dict[float, int]  # of each eval width
    test: Any  # this rank's loader of the test set
    test_size: int  # images in this rank's share of the test set


def build(cfg: Config, world: World) -> Setup:
    """Seed, then build the data sets, the model and everything that trains it."""
    tc = cfg.train
    seed_everything(tc.seed)
    data = run_datasets(cfg)
    model, spec = build_model(cfg, data.info, tuple(data.train[0][0].shape))
    num_classes = spec["kwargs"].get("num_classes", data.info.num_classes)
    task = task_for(data.info, num_classes)
    check_labels(data, num_classes)
    model.to(world.device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    n_steps = steps_per_epoch(data.train, tc.batch_size, world.world_size)
    widths = eval_widths(cfg, model)
    input_size = tuple(data.train[0][0].shape)
    count = MacsCounter(model, input_size)
    test_shard = ddp.eval_shard(data.test, world)  # each rank evaluates its share
    stages = None
    if tc.mode == "incremental":
        stages = IncrementalStages(model, width_choices(model) or (), tc.epochs * n_steps)
    total = stages.total_steps if stages is not None else tc.epochs * n_steps
    net = ddp.wrap(model, world)  # DDP: one gradient all-reduce per step
    if tc.compile:  # one graph for all widths of a US-Net (one per switch of an S-Net)
        net = compile_slimmable(net)
    return Setup(
        cfg=cfg,
        world=world,
        data=data,
        model=model,
        net=net,
        spec=spec,
        task=task,
        optimizer=build_optimizer(model, tc),
        scaler=torch.amp.GradScaler(world.device.type, enabled=tc.amp == "fp16"),
        schedule=build_schedule(tc, n_steps),
        sampler=WidthSampler(model, tc.mode, tc.num_sample_widths, tc.nonuniform, seed=tc.seed),
        steps_per_epoch=n_steps,
        epochs=total // n_steps,
        total_steps=total,
        incremental=stages,
        distill_from=math.ceil(tc.distill_warmup_epochs * n_steps),
        input_size=input_size,
        eval_widths=widths,
        macs={w: count(w) for w in widths},
        test=eval_loader(test_shard, cfg.eval.batch_size, workers=cfg.data.workers),
        test_size=len(test_shard),  # type: ignore[arg-type]
    )


def check_labels(data: RunData, num_classes: int) -> None:
    """Every label (or label mask) of the training and test sets is a class of the model."""
    info = data.info
    if info.task == "segmentation" and info.num_classes > num_classes:  # e.g. a VOC folder's
        raise ValueError(
            f"the masks hold class {info.num_classes - 1}, but the model has {num_classes} "
            f"classes (0..{num_classes - 1}, {info.ignore_index} ignored); fix the masks or "
            "set model.num_classes"
        )
    for name, dataset in (("training", data.train), ("test", data.test)):
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        masks = getattr(dataset, "masks", None)
        if isinstance(masks, Tensor) and masks.numel():
            classes = masks.unique()
            bad = classes[(classes >= num_classes) & (classes != data.info.ignore_index)]
            if len(bad):
                raise ValueError(
                    f"the {name} masks hold class {int(bad[0])}, but the model has "
                    f"{num_classes} classes (0..{num_classes - 1}, {data.info.ignore_index} "
                    "ignored); fix the masks or set model.num_classes"
                )
            continue
        labels = getattr(dataset, "labels", None)
        if labels is None or len(labels) == 0:
            continue
        low, high = int(min(labels)), int(max(labels))
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"the {name} set has label {bad}, but the model has {num_classes} classes "
                f"(labels 0..{num_classes - 1}); fix the labels or set model.num_classes"
            )


RUN_FILES = (CHECKPOINT, "config.yaml", "metrics.jsonl", "eval.json", PLOT)


def refuse_existing_run(out_dir: Path, overwrite: bool, world: World) -> None:
    """Stop before writing into a folder that holds a run, unless told to overwrite it."""
    held = [name for name in (CHECKPOINT, "metrics.jsonl") if (out_dir / name).exists()]
    if ddp.any_rank(bool(held) and not overwrite, world):
        raise ValueError(
            f"{out_dir} holds a run ({', '.join(held) or 'on another rank'}); continue it with "
            "--resume, replace it with --overwrite, or give another --out"
        )
    if held and world.is_main:  # --overwrite: the old run's files go, none is left stale
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)


# ---- the state the loop changes, and its checkpoint ------------------------------------------
@dataclass
class TrainState:
    """Everything the loop changes besides weights and optimizer; saved in the checkpoint."""

    step: int = 0  # optimizer steps taken
    metrics: list[dict] = field(default_factory=list)  # a row per finished epoch
    epoch_loss: dict[str, list[float]] = field(default_factory=dict)  # width -> [sum, count]
    results: list[dict] = field(default_factory=list)  # the latest per-width evaluation
    results_step: int = -1  # the step ``results`` were evaluated at

    def add_losses(self, labels: list[str], values: list[float]) -> None:
        for key, value in zip(labels, values, strict=True):
            acc = self.epoch_loss.setdefault(key, [0.0, 0])
            acc[0] += value
            acc[1] += 1


def restore(s: Setup, path: Path) -> TrainState:
    """Load ``path`` into the set-up (weights, optimizer, RNGs) and return its state."""
    ckpt = load_checkpoint(path)  # on the CPU: RNG states must stay there
    stored = _with_defaults(ckpt["config"], Config().to_dict())  # keys added since it was saved
    changed = [k for k in _config_diff(stored, s.cfg.to_dict()) if k not in RESUME_FREE]
    if changed:
        raise ValueError(
            f"the config differs from the checkpoint's in {', '.join(changed)}; resume with "
            f"the run's own config ({path.parent / 'config.yaml'})"
        )
    s.model.load_state_dict(ckpt["state_dict"])
    s.optimizer.load_state_dict(ckpt["optimizer"])
    s.sampler.load_state_dict(ckpt["rng"]["widths"])
    set_rng_state(ckpt["rng"])
    if "scaler" in ckpt:
        s.scaler.load_state_dict(ckpt["scaler"])
    results = list(ckpt.get("eval") or [])
    return TrainState(
        step=ckpt["step"],
        metrics=list(ckpt["metrics"]),
        epoch_loss={k: list(v) for k, v in ckpt["epoch_loss"].items()},
        results=results,
        results_step=ckpt.get("eval_step", ckpt["step"] if results else -1),
    )


def save(s: Setup, state: TrainState, path: Path) -> None:
    """Write the checkpoint (rank 0 only): weights, optimizer, RNGs, the state, the run."""
    if not s.world.is_main:
        return
    from ..calibrate import calibrated_widths

    epoch, batch = divmod(state.step, s.steps_per_epoch)
    save_checkpoint(
        path,
        {
            "model": s.spec,
            "state_dict": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "schedule": dataclasses.asdict(s.schedule),
            "step": state.step,
            "epoch": epoch,
            "rng": {
                **rng_state(),
                "widths": s.sampler.state_dict(),
                "loader": {"seed": s.cfg.train.seed, "epoch": epoch, "batch": batch},
            },
            "epoch_loss": state.epoch_loss,
            "config": s.cfg.to_dict(),
            "data": dataclasses.asdict(s.data.info),
            "holdout": torch.tensor(s.data.holdout_indices, dtype=torch.long),
            "input_size": list(s.input_size),
            "calibrated": calibrated_widths(s.model),
            "metrics": state.metrics,
            "eval": state.results,
            "eval_step": state.results_step,
            "finished": state.step == s.total_steps and state.results_step == state.step,
            **({"scaler": s.scaler.state_dict()} if s.scaler.is_enabled() else {}),
        },
    )


def evaluate_widths(s: Setup, log: RunLog) -> list[dict]:
    """Every eval width on the test set (US-Nets: calibrated first), metrics of all ranks."""
    ddp.merge_bn_statistics(s.model, s.world)  # BN running statistics: the ranks' mean
    if s.cfg.train.mode == "universal":
        batches = calibration_data(s.cfg, s.data.train)
        log.note(f"calibrating {len(s.eval_widths)} widths on {batches.num_images} images")
        try:
            ddp.calibrate_sharded(s.model, batches, s.eval_widths, s.world)
        except ddp.Stopped:  # half-calibrated statistics must not be saved as if complete
            forget_calibration(s.model, s.eval_widths)
            raise
    rows = s.task.evaluate(s.model, s.test, s.eval_widths, macs=False)
    rows = ddp.reduce_eval(rows, s.test_size, s.world)
    return [{**r, "macs": s.macs[r["width"]]} for r in rows]


# ---- logging (rank 0 only) -------------------------------------------------------------------
class RunLog:
    """metrics.jsonl, optional TensorBoard and console lines; silent on ranks other than 0."""

    def __init__(
        self,
        out_dir: Path,
        world: World,
        verbose: bool,
        history: list[dict],
        metric: tuple[str, str] = ("top1", "top-1"),
    ) -> None:
        self.metric, self.metric_label = metric  # a row's headline key and its name
        self.active = world.is_main
        self.verbose = verbose and self.active
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if self.active:
            with open(self.path, "w") as f:  # rewritten from the checkpoint on resume
                f.writelines(json.dumps(row) + "\n" for row in history)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # TensorBoard is optional
                pass
            else:
                self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def epoch(self, row: dict) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            step = row["step"]
            self.tb.add_scalar("train/lr", row["lr"], step)
            for key, value in row["train_loss"].items():
                self.tb.add_scalar(f"train/loss_{key}", value, step)
            for r in row.get("eval", []):
                self.tb.add_scalar(f"eval/{self.metric}_{r['width']:g}", r[self.metric], step)
            self.tb.flush()
        if self.verbose:
            losses = " ".join(f"{k}:{v:.3f}" for k, v in row["train_loss"].items())
            accs = " ".join(
                f"{r['width']:g}:{100 * r[self.metric]:.1f}" for r in row.get("eval", [])
            )
            tqdm.write(
                f"epoch {row['epoch']}: loss {losses} | {row['images_per_s']:.0f} img/s"
                + (f" | {self.metric_label} {accs}" if accs else "")
            )

    def message(self, text: str) -> None:
        if self.active:
            tqdm.write(text, file=sys.stderr)

    def note(self, text: str) -> None:
        """A progress line, when progress is shown."""
        if self.verbose:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---- the engine ------------------------------------------------------------------------------
def _to(batch: tuple[Tensor, Tensor], world: World, channels_last: bool) -> tuple[Tensor, Tensor]:
    x, y = batch
    x = x.to(world.device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(world.device, non_blocking=True)


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """The forward's autocast context for ``train.amp`` (disabled for ``none``)."""
    dtype = AMP_DTYPES.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op CPU threads inside the block (``None``: leave them alone).

    Small models train fastest on one thread, and one thread never stalls when the cores are
    shared with other jobs; the previous setting comes back afterwards.
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train(
    config: Config | Mapping[str, Any] | str | Path,
    out_dir: str | Path,
    resume: bool = False,
    *,
    overwrite: bool = False,
    stop_after_steps: int | None = None,
    world: World | None = None,
) -> TrainResult:
    """Train ``config``'s model, evaluate it per width, and write the run to ``out_dir``.

    ``config`` is a :class:`~slimmable.config.Config`, nested dicts (``{"model": {"name":
    "small_cnn"}, "train": {"epochs": 5}}``, defaults for the rest) or a YAML file's path.
    ``out_dir`` receives ``checkpoint.pt`` (after every epoch), ``config.yaml``,
    ``metrics.jsonl``, ``eval.json`` and the accuracy-against-MACs plot; a folder that holds a
    run is refused unless ``resume`` (continue it: ends bitwise equal, on CPU, to a run never
    stopped) or ``overwrite`` (replace it). ``stop_after_steps`` stops after that many
    optimizer steps (as an interruption would), leaving a checkpoint to resume.
    """
    config = as_config(config)
    owned = world is None  # joined here (torchrun environment): left here
    with cpu_threads(config.train.threads):
        world = world or ddp.init_world(pick_device(config.train.device))
        finished = False
        try:
            with ddp.StopSignal().installed() as signals:
                result = run_training(
                    config, Path(out_dir), resume, overwrite, stop_after_steps, world, signals
                )
            finished = True
            return result
        finally:
            if owned:  # a barrier only when every rank got here: after an error it could hang
                ddp.shutdown(world, clean=finished)


def run_training(
    cfg: Config,
    out_dir: Path,
    resume: bool,
    overwrite: bool,
    stop_after_steps: int | None,
    world: World,
    signals: ddp.StopSignal,
) -> TrainResult:
    """The loop. ``signals`` turns SIGTERM / SIGINT into a stop after the current step."""
    tc = cfg.train
    s = build(cfg, world)
    ckpt_path = out_dir / CHECKPOINT
    if not resume:
        refuse_existing_run(out_dir, overwrite, world)
    state = restore(s, ckpt_path) if resume else TrainState()
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    log = RunLog(out_dir, world, tc.progress, state.metrics, (s.task.metric, s.task.metric_label))

    last_step = s.total_steps if stop_after_steps is None else min(stop_after_steps, s.total_steps)
    while state.step < s.total_steps:
        epoch, skip = divmod(state.step, s.steps_per_epoch)
        loader = train_loader(
            s.data.train, tc.batch_size, seed=tc.seed, epoch=epoch, rank=world.rank,
            world_size=world.world_size, skip_batches=skip, workers=cfg.data.workers,
            pin_memory=world.device.type == "cuda",
        )  # fmt: skip
        bar = tqdm(  # in a terminal; logs and pipes get the epoch's line alone
            total=s.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{s.epochs}",
            unit="step", disable=not (log.verbose and sys.stderr.isatty()), leave=False,
            dynamic_ncols=True,
        )  # fmt: skip
        s.model.train()
        t0, images = time.perf_counter(), 0
        for batch in loader:
            # -- one step: the widths of this step, largest first; gradients accumulate
            x, y = _to(batch, world, tc.channels_last)
            if s.incremental is None:
                widths, lr = s.sampler(), s.schedule(state.step)
            else:  # the incremental baseline: one width per stage, each stage its own schedule
                widths = [s.incremental.begin(state.step, x)]
                lr = s.schedule(s.incremental.step_in_stage(state.step))
            set_lr(s.optimizer, lr)
            s.optimizer.zero_grad(set_to_none=True)
            distill = tc.inplace_distill and state.step >= s.distill_from
            teacher = None
            labels, losses = [], []
            for i, w in enumerate(widths):
                # one gradient all-reduce per step: the widths before the last run in no_sync
                with ddp.width_sync(s.net, last=i == len(widths) - 1), set_width(s.model, w):
                    with autocast(tc.amp, world.device):
                        logits = s.net(x)
                    logits = logits.float()
                    if teacher is None:  # from the labels: the largest width (no teacher: all)
                        loss = s.task.loss(logits, y, tc.label_smoothing)
                        if distill:
                            teacher = s.task.soft_target(logits, tc.distill_temperature)
                    else:  # in-place distillation: the others learn from the largest
                        loss = s.task.distill_loss(logits, teacher, y, tc.distill_temperature)
                    s.scaler.scale(loss).backward()
                fixed = s.sampler.switches is not None or i < 2  # largest, smallest, S switches
                labels.append(f"{w:g}" if fixed else "random")
                losses.append(loss.detach())
            s.scaler.step(s.optimizer)  # optimizer.step(), unless fp16 gradients overflowed
            s.scaler.update()
            if s.incremental is not None:
                s.incremental.keep_frozen()  # the narrower widths' channels do not move
            state.step += 1

            # -- log (losses averaged over ranks; all ranks agree whether to stop)
            reduced, stop = ddp.reduce_step(torch.stack(losses), signals.signum is not None, world)
            values = reduced.tolist()
            check_finite(values, labels, state.step, lr)
            state.add_losses(labels, values)
            images += len(y) * world.world_size
            bar.update(1)
            bar.set_postfix(
                loss=f"{values[0]:.3f}", img_s=f"{images / (time.perf_counter() - t0):.0f}"
            )
            if stop or (state.step == last_step < s.total_steps and state.step % s.steps_per_epoch):
                bar.close()  # a signal, or stop_after_steps mid-epoch: save and leave
                signum = (signals.signum or signal.SIGTERM) if stop else None
                return _stopped(s, state, log, ckpt_path, signum)
        bar.close()
        seconds = time.perf_counter() - t0

        # -- end of epoch: per-width evaluation (US: calibrate first), metrics, checkpoint
        done = epoch + 1
        row: dict[str, Any] = {
            "epoch": done,
            "step": state.step,
            "lr": lr,
            "train_loss": {k: total / max(1, n) for k, (total, n) in state.epoch_loss.items()},
            "seconds": seconds,
            "images_per_s": images / max(seconds, 1e-9),
        }
        state.epoch_loss = {}
        if done == s.epochs or (cfg.eval.every and done % cfg.eval.every == 0):
            try:
                with signals.raising():  # calibration and evaluation stop at once on a signal
                    state.results, state.results_step = evaluate_widths(s, log), state.step
            except ddp.Stopped as stopped:
                state.metrics.append(row)
                return _stopped(s, state, log, ckpt_path, stopped.signum)
            row["eval"] = [{k: r[k] for k in s.task.row_keys} for r in state.results]
        state.metrics.append(row)
        log.epoch(row)
        save(s, state, ckpt_path)
        if state.step == last_step < s.total_steps:
            return _stopped(s, state, log, ckpt_path, None)
    log.close()

    if state.results_step != state.step:  # resumed a finished run before its evaluation
        try:
            with signals.raising():
                state.results, state.results_step = evaluate_widths(s, log), state.step
        except ddp.Stopped as stopped:
            return _stopped(s, state, log, ckpt_path, stopped.signum)
        save(s, state, ckpt_path)
    if world.is_main:
        from ..plot import plot_accuracy

        with open(out_dir / "eval.json", "w") as f:
            json.dump(s.task.report(state.results), f, indent=2)
        title = f"{s.spec['name']} ({tc.mode})"
        plot_accuracy({tc.mode: state.results}, out_dir / PLOT, metric=s.task.metric, title=title)
    return TrainResult(
        s.model, state.results, out_dir, ckpt_path, state.metrics, main=world.is_main,
        task=s.task,
    )  # fmt: skip


def check_finite(values: list[float], labels: list[str], step: int, lr: float) -> None:
    """Stop a run whose loss is no longer a number: nothing after it would be."""
    for label, value in zip(labels, values, strict=True):
        if not math.isfinite(value):
            raise ValueError(
                f"the loss at width {label} is {value} at step {step} (lr {lr:.3g}); training "
                "diverged: lower train.lr or add train.warmup_epochs (the last checkpoint is kept)"
            )


def forget_calibration(model: nn.Module, widths: list[Width]) -> None:
    from ..layers import USBatchNorm2d
    from ..width import network_key

    keys = [network_key(model, w) for w in widths]
    for bn in (m for m in model.modules() if isinstance(m, USBatchNorm2d)):
        for key in keys:
            bn.reset_calibration(key)


def _stopped(
    s: Setup, state: TrainState, log: RunLog, path: Path, signum: int | None
) -> TrainResult:
    """Write the checkpoint of an interrupted run and say how to continue it."""
    save(s, state, path)
    log.close()
    if signum is not None:
        log.message(
            f"stopped by {signal.Signals(signum).name} after step {state.step}: checkpoint "
            f"written to {path}; continue with --resume"
        )
    return TrainResult(
        s.model, state.results, path.parent, path, state.metrics, finished=False,
        signal=signum, main=s.world.is_main, task=s.task,
    )  # fmt: skip


def summary(result: TrainResult) -> str:
    """The final table of a run, with where its files are."""
    task = result.task
    best = max(result.results, key=lambda r: r["width"]) if result.results else None
    tail = f"\nlargest width {task.metric_label} {100 * best[task.metric]:.2f}%" if best else ""
    if best and not math.isfinite(best["loss"]):
        tail += " (loss is not finite: lower train.lr)"
    return f"{task.table(result.results)}{tail}\nrun written to {result.out_dir}"
