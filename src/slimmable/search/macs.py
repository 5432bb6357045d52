"""Multiply-accumulates of a model at any width, cheaply and exactly.

MACs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix
products; one MAC is two FLOPs) during a forward of a weightless copy of the model on the
``meta`` device: shapes propagate, nothing is computed, so a count costs only the Python
overhead of one forward. Counts are cached per width setting.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..width import Width, get_width, set_width
from .evaluate import batch_statistics

_BATCH = 2  # batch-statistics BN needs more than one value per channel


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on ``meta`` (no memory, no data)."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo).train()


def _input_shape(input_size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(int(s) for s in input_size)
    if len(size) == 4:
        size = size[1:]
    if len(size) != 3 or min(size) < 1:
        raise ValueError(
            f"input_size must be (channels, height, width), e.g. (3, 224, 224); got {input_size}"
        )
    return size


class MacsCounter:
    """MACs of ``model`` for one input of ``input_size`` = ``(C, H, W)``, at any width.

    Counted on a meta copy of the model taken at construction (later weight updates do not
    matter: MACs depend on shapes only). Models whose forward cannot run on ``meta`` are counted
    on the model itself, with BN in batch-statistics mode and running statistics restored.
    """

    def __init__(self, model: nn.Module, input_size: Sequence[int]) -> None:
        self.input_size = _input_shape(input_size)
        self._model = model
        self._cache: dict[str, int] = {}
        try:
            self._counted: nn.Module | None = _meta_copy(model)
            self._count(self._counted, torch.device("meta"))
        except (NotImplementedError, RuntimeError, TypeError, ValueError):
            self._counted = None

    def _count(self, model: nn.Module, device: torch.device) -> int:
        x = torch.zeros(_BATCH, *self.input_size, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return counter.get_total_flops() // (2 * _BATCH)

    def __call__(self, width: Width) -> int:
        """MACs of one forward at ``width`` (a float or a ``{layer: width}`` map)."""
        key = json.dumps(sorted(width.items()) if isinstance(width, Mapping) else float(width))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if self._counted is not None:
            with set_width(self._counted, width):
                macs = self._count(self._counted, torch.device("meta"))
        else:
            device = next(self._model.parameters()).device
            with set_width(self._model, width), batch_statistics(self._model):
                macs = self._count(self._model, device)
        self._cache[key] = macs
        return macs


def count_macs(model: nn.Module, input_size: Sequence[int], width: Width | None = None) -> int:
    """MACs of one forward of ``model`` on a ``(C, H, W)`` input, at ``width`` (default: current).

    The model itself is not changed.
    """
    return MacsCounter(model, input_size)(get_width(model) if width is None else width)
