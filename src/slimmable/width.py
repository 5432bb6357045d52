"""Width control: one call sets the width of a whole model, uniform or per layer.

The width lives on the model's own layers (``module.width``), never in module-level state, so
two models at different widths in one process, or in two threads, never interfere.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from types import TracebackType

from torch import nn

from .layers.base import WidthMixin
from .layers.norm import SwitchableBatchNorm2d, USBatchNorm2d, width_key
from .layers.width_policy import WidthList

Width = float | Mapping[str, float]
DEFAULT_KEY = "*"


def width_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every submodule that holds width state: slimmable convs, linears and BNs."""
    for name, module in model.named_modules():
        if isinstance(module, WidthMixin | SwitchableBatchNorm2d | USBatchNorm2d):
            yield name, module


def width_knobs(model: nn.Module) -> dict[str, WidthMixin]:
    """The layers that choose their own output channels: the names a nonuniform map sets."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, WidthMixin) and m.is_width_knob
    }


def _policies(model: nn.Module) -> list:
    found = [m.policy for _, m in width_modules(model) if hasattr(m, "policy")]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no slimmable layers; build it from slimmable.layers"
        )
    return found


def width_bounds(model: nn.Module) -> tuple[float, float]:
    """``(smallest, largest)`` width the model runs at."""
    policies = _policies(model)
    return max(p.lo for p in policies), min(p.hi for p in policies)


def width_choices(model: nn.Module) -> tuple[float, ...] | None:
    """The switches of an S-Net (sorted), or ``None`` for a universally slimmable model."""
    policies = _policies(model)
    if all(isinstance(p, WidthList) for p in policies):
        return policies[0].widths
    return None


def _resolve(model: nn.Module, width: Width) -> dict[str, float]:
    """Width of every width module, validated, for a uniform width or a per-layer map."""
    modules = dict(width_modules(model))
    hi = width_bounds(model)[1]
    if not isinstance(width, Mapping):
        w = float(width)
        return {name: m.policy.check(w) for name, m in modules.items() if hasattr(m, "policy")}
    default = float(width.get(DEFAULT_KEY, hi))
    keys = [k for k in width if k != DEFAULT_KEY]
    for key in keys:
        if not any(n == key or n.startswith(key + ".") for n in modules):
            near = difflib.get_close_matches(key, list(width_knobs(model)), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"width map names {key!r}, which is no slimmable layer{hint}")
    resolved: dict[str, float] = {}
    for name, m in modules.items():
        if not hasattr(m, "policy"):
            continue
        matches = [k for k in keys if name == k or name.startswith(k + ".")]
        w = float(width[max(matches, key=len)]) if matches else default
        try:
            resolved[name] = m.policy.check(w)
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from None
    return resolved


def _check_ties(model: nn.Module, resolved: Mapping[str, float]) -> None:
    groups = getattr(model, "channel_groups", None)
    if groups is None:
        return
    for group in groups():
        widths = {resolved.get(name) for name in group}
        if len(widths) > 1:
            raise ValueError(
                f"layers {', '.join(group)} share their channels (a residual sum or a "
                "depthwise pair) and must have one width; give them the same value"
            )


def network_key(model: nn.Module, width: Width) -> int:
    """Calibration key of a width setting: the width itself, or a hash of a nonuniform map."""
    return _key(model, _resolve(model, width))


def _key(model: nn.Module, resolved: Mapping[str, float]) -> int:
    knobs = width_knobs(model)
    knob_widths = sorted((n, round(w, 6)) for n, w in resolved.items() if n in knobs)
    values = {w for _, w in knob_widths}
    if len(values) <= 1:
        return width_key(values.pop() if values else width_bounds(model)[1])
    digest = hashlib.sha1(json.dumps(knob_widths).encode()).digest()
    return -(int.from_bytes(digest[:7], "big") + 1)


class WidthSetting:
    """Returned by :func:`set_width`; as a context manager it restores the previous widths."""

    def __init__(self, model: nn.Module, previous: dict[str, tuple[float, int | None]]) -> None:
        self._model = model
        self._previous = previous

    def __enter__(self) -> nn.Module:
        return self._model

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        modules = dict(width_modules(self._model))
        for name, (w, key) in self._previous.items():
            m = modules[name]
            if hasattr(m, "policy"):
                m.width = w
            if key is not None:
                m.stats_key = key


def set_width(model: nn.Module, width: Width) -> WidthSetting:
    """Run ``model`` at ``width``: a float (every layer) or ``{layer name: width}``.

    A map sets the named layers (a name may be a container: ``"features.3"`` sets every layer
    inside it); other layers take the map's ``"*"`` entry, else the largest width. Invalid widths
    raise ``ValueError`` naming what is allowed, before anything changes. Use it plainly, or as
    ``with set_width(model, 0.5): ...`` to restore the previous widths afterwards.
    """
    resolved = _resolve(model, width)
    if isinstance(width, Mapping):
        _check_ties(model, resolved)
    key = _key(model, resolved)
    previous: dict[str, tuple[float, int | None]] = {}
    for name, m in width_modules(model):
        previous[name] = (getattr(m, "width", math.nan), getattr(m, "stats_key", None))
        if name in resolved:
            m.width = resolved[name]
        if isinstance(m, USBatchNorm2d):
            m.stats_key = key
    return WidthSetting(model, previous)


def get_width(model: nn.Module) -> Width:
    """The model's width: a float when uniform, else ``{layer name: width}`` of its knobs."""
    knobs = width_knobs(model)
    if not knobs:
        _policies(model)  # raises the "no slimmable layers" error
    widths = {name: m.width for name, m in knobs.items()}
    values = list(widths.values())
    if all(math.isclose(v, values[0], abs_tol=1e-9) for v in values):
        return values[0]
    return widths


def set_uncalibrated(model: nn.Module, policy: str) -> None:
    """What US BN layers do at an uncalibrated width in eval: ``"error"`` or ``"running"``."""
    for _, m in width_modules(model):
        if isinstance(m, USBatchNorm2d):
            m.uncalibrated = policy
