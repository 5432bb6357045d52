"""MACs and parameters of the network that actually runs at each width.

MACs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the convolutions
and matrix products that run (MACs = FLOPs / 2), so nothing here re-derives a layer's cost. By
default the count runs on a copy of the model on the ``meta`` device: shapes only, no arithmetic,
so profiling ResNet-50 at 224x224 costs milliseconds. The parameters of a width are those of the
dense sub-network that runs: the weight slices its layers read and that width's BN.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .layers.base import WidthMixin
from .layers.norm import USBatchNorm2d
from .width import Width, get_width, set_width, width_bounds, width_choices
from .widthspec import WidthSpec, parse_widths

InputSize = int | Sequence[int]
# A measurement beside MACs and parameters (e.g. latency), taken on the real model at a width.
Measure = Callable[[nn.Module, Width], Mapping[str, float]]


@dataclass
class WidthProfile:
    """Cost of one width: a uniform ``width``, or a nonuniform ``width_map`` (``width`` None)."""

    width: float | None
    macs: int
    params: int
    width_map: dict[str, float] | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"width": self.width, "macs": self.macs, "params": self.params}
        if self.width_map is not None:
            row["width_map"] = dict(self.width_map)
        row.update(self.extra)
        return row


@dataclass
class Profile:
    """What :func:`profile` measured: one row per width, plus the stored parameter count."""

    input_shape: tuple[int, int, int]
    total_params: int
    widths: list[WidthProfile]

    @property
    def image_size(self) -> int:
        """The input's side (the height, for a non-square input)."""
        return self.input_shape[1]

    def to_dict(self, model: str) -> dict[str, Any]:
        """The JSON form: ``{"model", "image_size", "total_params", "widths": [...]}``."""
        return {
            "model": model,
            "image_size": self.image_size,
            "total_params": self.total_params,
            "widths": [row.to_dict() for row in self.widths],
        }


def default_widths(model: nn.Module) -> list[float]:
    """The widths worth a table, largest first: an S-Net's switches; for a US-Net its bounds and
    the quarter widths between them."""
    choices = width_choices(model)
    if choices is not None:
        return sorted(choices, reverse=True)
    lo, hi = width_bounds(model)
    quarters = [q / 4 for q in range(1, 4) if lo < q / 4 < hi]
    return sorted({lo, hi, *quarters}, reverse=True)


def input_shape(model: nn.Module, input_size: InputSize | None = None) -> tuple[int, int, int]:
    """``(channels, height, width)`` of one input: ``input_size`` is a side, ``(H, W)`` or
    ``(C, H, W)``; the size defaults to the model's ``default_cfg``, the channels to its first
    layer's inputs."""
    if input_size is None:
        cfg_shape = tuple(getattr(model, "default_cfg", {}).get("input_size", ()))
        if not cfg_shape:
            raise ValueError(
                f"{type(model).__name__} has no default input size; give one "
                "(input_size=224, or --image-size 224)"
            )
        input_size = cfg_shape[1:]
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (_first_in_channels(model), size[0], size[1])
    if len(size) == 3:
        return (size[0], size[1], size[2])
    raise ValueError(f"input_size must be a side, (H, W) or (C, H, W); got {input_size!r}")


def _first_in_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError(f"{type(model).__name__} has no conv or linear layer to profile")


# Modules that keep their input's shape and cost no multiply-accumulates.
_SHAPE_ONLY = (
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.Hardtanh,  # ReLU6
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.Sigmoid,
    nn.GELU,
    nn.Dropout,
    nn.Identity,
)


def meta_copy(model: nn.Module, device: str | torch.device = "meta") -> nn.Module:
    """A copy of ``model`` that runs on shapes alone (on ``device``, ``meta`` by default).

    Its batch norms and activations pass their input through (hooks on them still fire): they
    keep shapes and cost no MACs; so a US-Net runs at any width uncalibrated, and the slow
    meta decompositions of batch norm and ReLU6 are skipped. The copy is in training mode.
    """
    # Pre-seeding deepcopy's memo with zero stand-ins copies the modules, never the weights.
    memo: dict[int, Tensor] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.zeros_like(p, device=device), p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.zeros_like(b, device=device)
    runner = copy.deepcopy(model, memo).train()
    for m in runner.modules():
        if isinstance(m, _SHAPE_ONLY):
            m.forward = _pass_through  # type: ignore[method-assign]
    return runner


def _pass_through(x: Tensor) -> Tensor:
    return x


def _active_params(module: nn.Module, inputs: tuple) -> int:
    """Parameters ``module`` reads when it runs on ``inputs``."""
    x = inputs[0] if inputs else None
    if isinstance(module, WidthMixin) and isinstance(x, Tensor):
        if isinstance(module, nn.Conv2d):
            out, in_per_group, _ = module.active_shape(x.shape[1])
            k = module.kernel_size[0] * module.kernel_size[1]
            return out * in_per_group * k + (out if module.bias is not None else 0)
        if isinstance(module, nn.Linear):
            out, inp = module.active_shape(x.shape[-1])
            return out * inp + (out if module.bias is not None else 0)
    if isinstance(module, USBatchNorm2d) and isinstance(x, Tensor):
        return 2 * x.shape[1] if module.affine else 0
    return sum(p.numel() for p in module.parameters(recurse=False))


class MacsCounter:
    """MACs and parameters of ``model`` at any width, for one input of ``input_size``.

    The one counter of the package (``profile``, ``evaluate``, AutoSlim and the trainer use it).
    It counts on a :func:`meta_copy` taken at construction, so later weight updates do not
    matter (costs depend on shapes alone) and the model itself never runs; counts are cached
    per width. Models with operators that lack meta kernels are counted on a zero-weight copy
    on ``fallback`` instead.
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: InputSize | None = None,
        *,
        device: str | torch.device = "meta",
        fallback: str | torch.device | None = "cpu",
    ) -> None:
        self.input_size = input_shape(model, input_size)
        self._cache: dict[str, tuple[int, int]] = {}
        try:
            self._runner, self._device = meta_copy(model, device), torch.device(device)
            self._count(get_width(model))
        except (NotImplementedError, RuntimeError) as err:
            if fallback is None or torch.device(fallback) == torch.device(device):
                raise ValueError(f"cannot count MACs of {type(model).__name__} ({err})") from None
            self._runner, self._device = meta_copy(model, fallback), torch.device(fallback)
            self._cache.clear()

    def _count(self, width: Width) -> tuple[int, int]:
        key = json.dumps(sorted(width.items()) if isinstance(width, Mapping) else float(width))
        hit = self._cache.get(key)
        if hit is None:
            x = torch.zeros((1, *self.input_size), device=self._device)
            hit = self._cache[key] = _count(self._runner, x, width)
        return hit

    def __call__(self, width: Width) -> int:
        """MACs of one image at ``width`` (a float or a ``{layer: width}`` map)."""
        return self._count(width)[0]

    def params(self, width: Width) -> int:
        """Parameters the network reads at ``width`` (its dense sub-network's)."""
        return self._count(width)[1]


def count_macs(model: nn.Module, input_size: InputSize, width: Width | None = None) -> int:
    """MACs of one forward of ``model`` on one image, at ``width`` (default: its current one)."""
    return MacsCounter(model, input_size)(get_width(model) if width is None else width)


def _count(model: nn.Module, x: Tensor, width: Width) -> tuple[int, int]:
    """``(MACs, parameters)`` of one forward of ``model`` on ``x`` at ``width``.

    MACs are for the whole batch ``x``; ``model`` runs as it is (mode and device untouched), so
    pass a :func:`meta_copy` to count without computing.
    """
    used: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is None:
            continue

        def hook(m: nn.Module, inputs: tuple, name: str = name) -> None:
            used[name] = max(used.get(name, 0), _active_params(m, inputs))

        handles.append(module.register_forward_pre_hook(hook))
    counter = FlopCounterMode(display=False)
    try:
        with set_width(model, width), counter, torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counter.get_total_flops() // 2, sum(used.values())


def profile(
    model: nn.Module,
    input_size: InputSize | None = None,
    widths: WidthSpec | None = None,
    *,
    device: str | torch.device = "meta",
    measures: Sequence[Measure] = (),
) -> Profile:
    """MACs and parameters of ``model`` at each width, for one input of ``input_size``.

    ``widths`` lists uniform widths and/or nonuniform maps ``{layer: width}``, or is a width
    specification (``"0.25:1:0.025"``, a search result file; see :func:`slimmable.parse_widths`);
    default: the switches of an S-Net, the bounds and quarter widths of a US-Net. The model
    itself is not run or changed: a copy on ``device`` is (``"meta"``: shapes only; a real
    device, with zero weights, for operators that lack meta kernels). Each of ``measures`` is
    called as ``measure(model, width)`` with the real model set to that width, and its entries
    are added to the row (the hook through which measured latency joins the table).
    """
    shape = input_shape(model, input_size)
    widths = default_widths(model) if widths is None else parse_widths(widths)
    if not widths:
        raise ValueError("profile needs at least one width, e.g. widths=[0.5, 1.0]")
    counter = MacsCounter(model, shape, device=device, fallback=None)
    rows = []
    for width in widths:
        macs, params = counter(width), counter.params(width)
        if isinstance(width, Mapping):
            row = WidthProfile(None, macs, params, {str(k): float(v) for k, v in width.items()})
        else:
            row = WidthProfile(float(width), macs, params)
        for measure in measures:
            with set_width(model, width):
                row.extra.update(measure(model, width))
        rows.append(row)
    total = sum(p.numel() for p in model.parameters())
    return Profile(shape, total, rows)


__all__ = [
    "MacsCounter",
    "Measure",
    "Profile",
    "WidthProfile",
    "count_macs",
    "default_widths",
    "input_shape",
    "meta_copy",
    "profile",
]
