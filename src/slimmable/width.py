"""Width control: one call sets the width of a whole model, uniform or per layer.

The width lives on the model's own layers (``module.width``), never in module-level state, so
two models at different widths in one process, or in two threads, never interfere.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import numbers
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from types import TracebackType

from torch import nn

from .layers.base import WidthMixin
from .layers.norm import SwitchableBatchNorm2d, USBatchNorm2d, width_key
from .layers.width_policy import WidthList

Width = float | Mapping[str, float]
DEFAULT_KEY = "*"


_INDEX_ATTR = "_slimmable_width_index"
_PLANS_KEPT = 32


class _WidthIndex:
    """Where a model's width state lives, kept on the model itself (no global registry).

    ``set_width`` runs between forwards at deployment, so it must not walk all modules each
    time. The index remembers the width modules (in ``named_modules`` order) and the resolved
    assignment of recent uniform widths; it is valid while every module has the very children
    it saw (checked on each use: a dict comparison per module, far cheaper than a walk that
    builds names). Copies and pickles of a model start without an index.
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self.snapshot: list[tuple[nn.Module, dict]] | None = None
        self.modules: list[tuple[str, nn.Module]] = []
        self.plain: list[dict | None] = []  # per width module: its __dict__ if attrs are plain
        self.has_policy: list[bool] = []
        self.plans: OrderedDict[float, tuple[list, list, list]] = OrderedDict()
        if model is not None:
            named = list(model.named_modules())
            self.snapshot = [(m, dict(m._modules)) for _, m in named]
            self.modules = [(n, m) for n, m in named if isinstance(m, _WIDTH_TYPES)]
            self.plain = [_plain_attrs(m) for _, m in self.modules]
            self.has_policy = [hasattr(m, "policy") for _, m in self.modules]

    def valid(self) -> bool:
        if self.snapshot is None:
            return False
        # dict equality compares the child modules by identity
        return all(m._modules == children for m, children in self.snapshot)

    def __deepcopy__(self, memo: dict) -> _WidthIndex:
        return _WidthIndex()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


def _plain_attrs(m: nn.Module) -> dict | None:
    """``m.__dict__`` when ``width``, ``stats_key`` and ``active_out`` are plain (or absent).

    Such attributes can be read and written in the instance dict directly, which is what
    ``nn.Module.__setattr__`` / ``__getattr__`` end up doing for them, minus their checks.
    """
    for name in ("width", "stats_key", "active_out"):
        if hasattr(type(m), name):
            return None
        if name in m._parameters or name in m._buffers or name in m._modules:
            return None
    return m.__dict__


_WIDTH_TYPES = (WidthMixin, SwitchableBatchNorm2d, USBatchNorm2d)


def _index(model: nn.Module) -> _WidthIndex:
    index = model.__dict__.get(_INDEX_ATTR)
    if index is None or not index.valid():
        index = _WidthIndex(model)
        model.__dict__[_INDEX_ATTR] = index
    return index


def width_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every submodule that holds width state: slimmable convs, linears and BNs."""
    yield from _index(model).modules


def width_knobs(model: nn.Module) -> dict[str, WidthMixin]:
    """The layers that choose their own output channels: the names a nonuniform map sets."""
    return {
        name: m
        for name, m in _index(model).modules
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
    for key, value in width.items():
        if not isinstance(value, float):
            _layer_number(key, value)
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


def channel_groups(model: nn.Module) -> list[list[str]]:
    """Layers whose output channels move together (residual sums, squeeze-excitation gates,
    the parts of a channel shuffle): they always run at one width.

    Zoo models declare them (``model.channel_groups()``); :func:`slimmable.convert` works them
    out from the graph. AutoSlim and nonuniform training move each group as one.
    """
    declared = getattr(model, "channel_groups", None)
    return [list(g) for g in declared()] if callable(declared) else []


def _check_ties(model: nn.Module, resolved: Mapping[str, float]) -> None:
    for group in channel_groups(model):
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

    def __init__(
        self,
        model: nn.Module,
        previous: dict[str, tuple[float, int | None, int | None]],
        index: _WidthIndex | None = None,
    ) -> None:
        self._model = model
        self._previous = previous
        self._index = index

    def __enter__(self) -> nn.Module:
        return self._model

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        index = _index(self._model)
        if index is self._index:  # same modules: restore through the index's fast path
            entries = zip(index.modules, index.plain, index.has_policy, strict=True)
            for (name, m), d, has_policy in entries:
                w, key, active = self._previous[name]
                _assign(m, d, w if has_policy else None, key, active)
            return
        modules = dict(index.modules)
        for name, (w, key, active) in self._previous.items():
            m = modules[name]
            _assign(m, None, w if hasattr(m, "policy") else None, key, active)


def _assign(
    m: nn.Module, d: dict | None, width: float | None, key: int | None, active: int | None
) -> None:
    """Set ``m.width``, ``m.stats_key`` and ``m.active_out``, each unless ``None``."""
    if d is not None:  # plain attributes: the instance dict, without nn.Module's checks
        if width is not None:
            d["width"] = width
        if key is not None:
            d["stats_key"] = key
        if active is not None:
            d["active_out"] = active
        return
    if width is not None:
        m.width = width
    if key is not None:
        m.stats_key = key
    if active is not None:
        m.active_out = active


def set_width(model: nn.Module, width: Width) -> WidthSetting:
    """Run ``model`` at ``width``: a float (every layer) or ``{layer name: width}``.

    A map sets the named layers (a name may be a container: ``"features.3"`` sets every layer
    inside it); other layers take the map's ``"*"`` entry, else the largest width. Invalid widths
    raise ``ValueError`` naming what is allowed, before anything changes. Use it plainly, or as
    ``with set_width(model, 0.5): ...`` to restore the previous widths afterwards.
    """
    if not isinstance(width, float | Mapping):  # not text or True: float() would accept them
        width = _number(width)
    index = _index(model)
    plan = None if isinstance(width, Mapping) else index.plans.get(float(width))
    if plan is None:
        resolved = _resolve(model, width)
        if isinstance(width, Mapping):
            _check_ties(model, resolved)
        key = _key(model, resolved)
        widths = [resolved.get(name) for name, _ in index.modules]
        stats_keys = [key if isinstance(m, USBatchNorm2d) else None for _, m in index.modules]
        actives = [  # output channels, for code that must not compute them (torch.compile)
            m.channels_at(w) if w is not None and isinstance(m, WidthMixin) else None
            for w, (_, m) in zip(widths, index.modules, strict=True)
        ]
        plan = (widths, stats_keys, actives)
        if not isinstance(width, Mapping):
            index.plans[float(width)] = plan
            if len(index.plans) > _PLANS_KEPT:
                index.plans.popitem(last=False)
    else:
        index.plans.move_to_end(float(width))
    previous: dict[str, tuple[float, int | None, int | None]] = {}
    for (name, m), d, w, key, active in zip(index.modules, index.plain, *plan, strict=True):
        if d is not None:
            previous[name] = (d.get("width", math.nan), d.get("stats_key"), d.get("active_out"))
        else:
            previous[name] = (
                getattr(m, "width", math.nan),
                getattr(m, "stats_key", None),
                getattr(m, "active_out", None),
            )
        _assign(m, d, w, key, active)
    return WidthSetting(model, previous, index)


def _layer_number(key: str, value: object) -> float:
    try:
        return _number(value)
    except ValueError:
        raise ValueError(f"width map: {key!r} has width {value!r}, not a number") from None


def _number(width: object) -> float:
    if isinstance(width, numbers.Real) and not isinstance(width, bool):
        return float(width)
    raise ValueError(
        f"a width is a number (0.5) or a {{layer: width}} map, not {width!r}; "
        "read text with slimmable.parse_widths"
    )


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
