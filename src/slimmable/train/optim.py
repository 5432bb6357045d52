"""SGD with the papers' parameter groups, and per-iteration learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config import SCHEDULES, TrainConfig


def _is_depthwise(module: nn.Module) -> bool:
    if getattr(module, "depthwise", False):
        return True
    groups = getattr(module, "groups", 1)
    return isinstance(module, nn.Conv2d) and groups > 1 and groups == module.in_channels


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with ``weight_decay``; depthwise convs, BN and biases without.

    The slimmable papers exclude these from weight decay: they hold few parameters, and decaying
    them mainly hurts the narrow widths.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            exempt = isinstance(module, _BatchNorm | nn.LayerNorm | nn.GroupNorm)
            exempt = exempt or _is_depthwise(module) or name == "bias" or p.ndim <= 1
            (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov by default) over :func:`param_groups`; or AdamW
    (``train.optimizer: adamw``, beta1 = ``train.momentum``), which the dense tasks' tiny
    recipes train with: their rare foreground classes leave SGD on a background plateau."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.momentum, 0.999)
        )
    return torch.optim.SGD(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


@dataclass(frozen=True)
class Schedule:
    """Learning rate as a function of the iteration: warm-up, then one of :data:`SCHEDULES`.

    Stateless (a pure function of ``step``), so resuming needs only the step counter.
    ``milestones`` and ``warmup_epochs`` are in epochs; ``gamma`` is per milestone (multistep)
    or per epoch (exponential).
    """

    kind: str
    base_lr: float
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int = 0
    milestones: Sequence[float] = ()
    gamma: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        if self.warmup_steps >= self.total_steps and self.warmup_steps > 0:
            raise ValueError("train.warmup_epochs must be shorter than train.epochs")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "multistep":
            epoch = step / self.steps_per_epoch
            return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.kind == "exponential":
            return self.base_lr * self.gamma ** (step / self.steps_per_epoch)
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        shape = 1.0 - t if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
        return self.min_lr + (self.base_lr - self.min_lr) * shape


def build_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Schedule:
    return Schedule(
        kind=cfg.schedule,
        base_lr=cfg.lr,
        total_steps=cfg.epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        milestones=tuple(cfg.milestones),
        gamma=cfg.gamma,
        min_lr=cfg.min_lr,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
