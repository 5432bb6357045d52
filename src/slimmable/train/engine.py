"""The training loop: one network, many widths, one optimizer step per batch.

Read :func:`train` top to bottom: data, the widths of this step, forward / loss / backward at
each width (gradients accumulate), one step, log, checkpoint. Device placement, the backward,
the sampler and rank-0 output each sit in one small spot (see :class:`World`), where a
data-parallel launcher slots in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..calibrate import calibrate, calibrated_widths
from ..checkpoint import load_checkpoint, save_checkpoint
from ..compile import compile_slimmable
from ..data import DataInfo, build_datasets
from ..evaluate import _macs, default_widths, evaluate, format_table
from ..models import create_model, list_models, model_factory
from ..width import network_key, set_width, width_choices
from . import distributed as ddp
from .config import Config, config_from_dict, save_config
from .loader import World, eval_loader, steps_per_epoch, train_loader
from .losses import cross_entropy, soft_cross_entropy
from .optim import build_optimizer, build_schedule, set_lr
from .sampling import WidthSampler

CHECKPOINT = "checkpoint.pt"
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
    results: list[dict]  # final per-width evaluation (width, top1, top5, loss, macs)
    out_dir: Path
    checkpoint: Path
    metrics: list[dict] = field(default_factory=list)
    finished: bool = True  # False when stopped early (``stop_after_steps`` or a signal)
    signal: int | None = None  # the signal (SIGTERM, SIGINT) that stopped the run, if any
    main: bool = True  # whether this process is rank 0 (the one that writes and prints)


# ---- set-up ----------------------------------------------------------------------------------
def resolve_model_name(name: str, mode: str) -> str:
    """A registered name, or a family (``small_cnn``) completed to ``us_``/``s_`` by the mode."""
    known = list_models()
    if name in known:
        return name
    prefix = "us_" if mode == "universal" else "s_"
    if prefix + name in known:
        return prefix + name
    model_factory(name)  # raises, naming the closest models
    return name


def build_model(cfg: Config, info: DataInfo) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``cfg`` for data set ``info``, and its checkpoint spec ``{name, kwargs}``."""
    mode, m = cfg.train.mode, cfg.model
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


def eval_widths(cfg: Config, model: nn.Module) -> list[float]:
    """``eval.widths``, else the S-Net's switches or 8 widths spread over the US range."""
    if not cfg.eval.widths:
        return default_widths(model)
    widths = sorted({float(w) for w in cfg.eval.widths})
    for w in widths:
        try:
            network_key(model, w)  # validates against the model's widths
        except ValueError as err:
            raise ValueError(f"eval.widths: {err}") from None
    return widths


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


# ---- logging (rank 0 only) -------------------------------------------------------------------
class RunLog:
    """metrics.jsonl, optional TensorBoard and console lines; silent on ranks other than 0."""

    def __init__(self, out_dir: Path, world: World, verbose: bool, history: list[dict]) -> None:
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
                self.tb.add_scalar(f"eval/top1_{r['width']:g}", r["top1"], step)
            self.tb.flush()
        if self.verbose:
            losses = " ".join(f"{k}:{v:.3f}" for k, v in row["train_loss"].items())
            accs = " ".join(f"{r['width']:g}:{100 * r['top1']:.1f}" for r in row.get("eval", []))
            tqdm.write(
                f"epoch {row['epoch']}: loss {losses} | {row['images_per_s']:.0f} img/s"
                + (f" | top-1 {accs}" if accs else "")
            )

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


def calibrate_model(
    model: nn.Module,
    dataset,
    widths: list[float],
    cfg: Config,
    *,
    progress: bool = False,
    world: World | None = None,
) -> None:
    """BN post-statistics of ``widths`` from ``calibrate.images`` shuffled training images.

    With several ranks each calibrates its share of the batches and the statistics are
    combined exactly (see :func:`.distributed.calibrate_sharded`).
    """
    batch = cfg.calibrate.batch_size or cfg.train.batch_size
    if world is not None and world.world_size > 1:
        ddp.calibrate_sharded(
            model, dataset, widths, world, batch_size=batch, images=cfg.calibrate.images,
            seed=cfg.train.seed, workers=cfg.data.workers,
        )  # fmt: skip
        return
    loader = eval_loader(dataset, batch, workers=cfg.data.workers, shuffle_seed=cfg.train.seed)
    calibrate(model, loader, widths, max_images=cfg.calibrate.images, progress=progress)


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
    config: Config,
    out_dir: str | Path,
    resume: bool = False,
    *,
    stop_after_steps: int | None = None,
    world: World | None = None,
) -> TrainResult:
    """Train ``config``'s model, evaluate it per width, and write the run to ``out_dir``.

    ``out_dir`` receives ``checkpoint.pt`` (after every epoch), ``config.yaml``,
    ``metrics.jsonl``, ``eval.json`` and the accuracy-against-MACs plot. ``resume`` continues
    from ``out_dir/checkpoint.pt`` and ends bitwise equal (on CPU) to a run never stopped.
    ``stop_after_steps`` stops after that many optimizer steps (as an interruption would),
    leaving a checkpoint to resume.
    """
    owned = world is None  # joined here (torchrun environment): left here
    with cpu_threads(config.train.threads):
        world = world or ddp.init_world(pick_device(config.train.device))
        finished = False
        try:
            with ddp.StopSignal().installed() as stop:
                result = _train(config, Path(out_dir), resume, stop_after_steps, world, stop)
            finished = True
            return result
        finally:
            if owned:  # a barrier only when every rank got here: after an error it could hang
                ddp.shutdown(world, clean=finished)


def _train(
    cfg: Config,
    out_dir: Path,
    resume: bool,
    stop_after_steps: int | None,
    world: World,
    signals: ddp.StopSignal,
) -> TrainResult:
    tc = cfg.train
    verbose = tc.progress and world.is_main

    # -- data, model, optimizer, schedule, width sampler
    seed_everything(tc.seed)
    train_set, test_set, info = build_datasets(
        cfg.data.name, cfg.data.path, image_size=cfg.data.image_size,
        augment=cfg.data.augment, seed=tc.seed,
    )  # fmt: skip
    model, spec = build_model(cfg, info)
    model.to(world.device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tc)
    scaler = torch.amp.GradScaler(world.device.type, enabled=tc.amp == "fp16")
    n_steps = steps_per_epoch(train_set, tc.batch_size, world)
    schedule = build_schedule(tc, n_steps)
    sampler = WidthSampler(model, tc.mode, tc.num_sample_widths, tc.nonuniform, seed=tc.seed)
    widths_eval = eval_widths(cfg, model)
    universal = width_choices(model) is None
    input_size = tuple(train_set[0][0].shape)
    macs = {w: _macs(model, input_size, w) for w in widths_eval}
    test_shard = ddp.eval_shard(test_set, world)  # each rank evaluates its share
    test = eval_loader(test_shard, cfg.eval.batch_size, workers=cfg.data.workers)

    def evaluate_all() -> list[dict]:
        ddp.average_buffers(model, world)  # BN running statistics: the ranks' mean
        if universal and tc.mode == "universal":
            calibrate_model(model, train_set, widths_eval, cfg, world=world)
        rows = ddp.reduce_eval(
            evaluate(model, test, widths_eval, macs=False), len(test_shard), world
        )
        return [{**r, "macs": macs[r["width"]]} for r in rows]

    step, metrics, results = 0, [], []
    epoch_loss: dict[str, list[float]] = {}  # width label -> [sum, count] of this epoch
    ckpt_path = out_dir / CHECKPOINT
    if resume:
        ckpt = load_checkpoint(ckpt_path)  # on the CPU: RNG states must stay there
        changed = [k for k in _config_diff(ckpt["config"], cfg.to_dict()) if k not in RESUME_FREE]
        if changed:
            raise ValueError(
                f"the config differs from the checkpoint's in {', '.join(changed)}; resume with "
                f"the run's own config ({out_dir / 'config.yaml'})"
            )
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        sampler.load_state_dict(ckpt["rng"]["widths"])
        set_rng_state(ckpt["rng"])
        step, metrics = ckpt["step"], list(ckpt["metrics"])
        epoch_loss = {k: list(v) for k, v in ckpt["epoch_loss"].items()}
        results = list(ckpt.get("eval") or [])
        if "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    log = RunLog(out_dir, world, verbose, metrics)

    def checkpoint(finished: bool) -> None:
        if not world.is_main:
            return
        save_checkpoint(
            ckpt_path,
            {
                "model": spec,
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": dataclasses.asdict(schedule),
                "step": step,
                "epoch": step // n_steps,
                "rng": {
                    **rng_state(),
                    "widths": sampler.state_dict(),
                    "loader": {"seed": tc.seed, "epoch": step // n_steps, "batch": step % n_steps},
                },
                "epoch_loss": epoch_loss,
                "config": cfg.to_dict(),
                "data": dataclasses.asdict(info),
                "input_size": list(input_size),
                "calibrated": calibrated_widths(model),
                "metrics": metrics,
                "eval": results,
                "finished": finished,
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
            },
        )

    total = tc.epochs * n_steps
    # The network the steps run: DDP (one gradient all-reduce per step) and/or compiled.
    # Widths are set, and calibration / evaluation / checkpoints run, on ``model`` itself.
    net = ddp.wrap(model, world)
    if tc.compile:  # one graph for all widths of a US-Net (one per switch of an S-Net)
        net = compile_slimmable(net)

    def stopped(signum: int | None) -> TrainResult:
        checkpoint(finished=False)
        log.close()
        if signum is not None and world.is_main:
            name = signal.Signals(signum).name
            tqdm.write(
                f"stopped by {name} after step {step}: checkpoint written to {ckpt_path}; "
                "continue with --resume"
            )
        return TrainResult(
            model, results, out_dir, ckpt_path, metrics, finished=False, signal=signum,
            main=world.is_main,
        )  # fmt: skip

    def stopping(step: int) -> bool:
        return stop_after_steps is not None and stop_after_steps <= step < total

    while step < total:
        epoch, skip = divmod(step, n_steps)
        loader = train_loader(
            train_set, tc.batch_size, world, seed=tc.seed, epoch=epoch,
            skip_batches=skip, workers=cfg.data.workers,
        )  # fmt: skip
        bar = tqdm(
            total=n_steps, initial=skip, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="step",
            disable=not verbose, leave=False, dynamic_ncols=True,
        )  # fmt: skip
        model.train()
        t0, images = time.perf_counter(), 0
        for batch in loader:
            # -- one step: the widths of this step, largest first; gradients accumulate
            x, y = _to(batch, world, tc.channels_last)
            lr = schedule(step)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            teacher = None
            step_losses = []
            widths = sampler()
            for i, w in enumerate(widths):
                # one gradient all-reduce per step: the widths before the last run in no_sync
                with ddp.width_sync(net, last=i == len(widths) - 1), set_width(model, w):
                    with autocast(tc.amp, world.device):
                        logits = net(x)
                    logits = logits.float()
                    if teacher is None:  # the largest width learns from the labels
                        loss = cross_entropy(logits, y, tc.label_smoothing)
                        if tc.inplace_distill:
                            teacher = logits.detach().softmax(dim=1)
                    else:  # in-place distillation: the others learn from the largest
                        loss = soft_cross_entropy(logits, teacher)
                    scaler.scale(loss).backward()
                fixed = sampler.switches is not None or i < 2  # largest, smallest, S switches
                step_losses.append((f"{w:g}" if fixed else "random", loss.detach()))
            scaler.step(optimizer)  # optimizer.step(), unless fp16 gradients overflowed
            scaler.update()
            step += 1

            # -- log (losses averaged over ranks; all ranks agree whether to stop)
            losses, stop = ddp.reduce_step(
                torch.stack([v for _, v in step_losses]), signals.signum is not None, world
            )
            values = losses.tolist()
            for (key, _), value in zip(step_losses, values, strict=True):
                acc = epoch_loss.setdefault(key, [0.0, 0])
                acc[0] += value
                acc[1] += 1
            images += len(y) * world.world_size
            bar.update(1)
            bar.set_postfix(
                loss=f"{values[0]:.3f}", img_s=f"{images / (time.perf_counter() - t0):.0f}"
            )
            if stop:  # SIGTERM / SIGINT: finish this step, save, leave
                bar.close()
                return stopped(signals.signum or signal.SIGTERM)
            if stopping(step) and step % n_steps:  # at an epoch's end, stop after its eval
                bar.close()
                return stopped(None)
        bar.close()
        seconds = time.perf_counter() - t0

        # -- end of epoch: per-width evaluation (US: calibrate first), metrics, checkpoint
        done = epoch + 1
        row: dict[str, Any] = {
            "epoch": done,
            "step": step,
            "lr": lr,
            "train_loss": {k: s / max(1, c) for k, (s, c) in epoch_loss.items()},
            "seconds": seconds,
            "images_per_s": images / max(seconds, 1e-9),
        }
        epoch_loss = {}
        if done == tc.epochs or (cfg.eval.every and done % cfg.eval.every == 0):
            results = evaluate_all()
            row["eval"] = [{k: r[k] for k in ("width", "top1", "top5", "loss")} for r in results]
        metrics.append(row)
        log.epoch(row)
        checkpoint(finished=done == tc.epochs)
        if stopping(step):
            return stopped(None)
    log.close()

    if not results:  # resumed a finished run without its evaluation
        results = evaluate_all()
    if world.is_main:
        from ..evaluate import json_report
        from ..plot import plot_accuracy

        with open(out_dir / "eval.json", "w") as f:
            json.dump(json_report(results), f, indent=2)
        plot_accuracy({tc.mode: results}, out_dir / PLOT, title=f"{spec['name']} ({tc.mode})")
    return TrainResult(model, results, out_dir, ckpt_path, metrics, main=world.is_main)


def load_run_config(ckpt: Mapping[str, Any]) -> Config:
    """The :class:`Config` stored in a checkpoint written by :func:`train`."""
    if "config" not in ckpt:
        raise ValueError("this checkpoint has no training config; pass the data set explicitly")
    return config_from_dict(ckpt["config"])


def summary(result: TrainResult) -> str:
    """The final table of a run, with where its files are."""
    best = max(result.results, key=lambda r: r["width"]) if result.results else None
    tail = f"\nlargest width top-1 {100 * best['top1']:.2f}%" if best else ""
    if best and not math.isfinite(best["loss"]):
        tail += " (loss is not finite: lower train.lr)"
    return f"{format_table(result.results)}{tail}\nrun written to {result.out_dir}"
