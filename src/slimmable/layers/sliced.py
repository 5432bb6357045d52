"""Modules of a user's model whose own parameters follow the channels (layer scale, a
hand-written LayerNorm2d): the module keeps its class and code, and reads active slices.

:func:`make_sliced` gives the module a generated subclass of its own class in which each named
attribute is a property: a parameter or buffer returns the slice of the channels that run (a
view for leading channels), a shape attribute (``normalized_shape``) the active size. The
tensors themselves stay where they were (``state_dict`` keys and optimizers are unchanged).
:func:`materialize_sliced` turns such a module back into its own class with copies of the
slices, as an extracted sub-network needs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import WidthMixin
from .layout import ChannelLayout, ChannelSegment, gather
from .slicing import _ABSENT
from .width_policy import WidthPolicy

_SLICES = "_slimmable_slices"
_ORIGINAL = "_slimmable_original_class"


@dataclass(frozen=True)
class SliceSpec:
    """Attribute ``dim`` follows ``channels`` (one part, or a concatenation's layout).

    ``kind``: ``"tensor"`` (a parameter or buffer, sliced along ``dim``), ``"shape"`` (a size
    tuple, ``(active channels,)``: ``normalized_shape``) or ``"size"`` (an int: ``num_features``).
    """

    dim: int
    channels: ChannelSegment | ChannelLayout
    kind: str = "tensor"

    @property
    def size(self) -> int:
        return self.channels.size

    def count(self) -> int:
        if isinstance(self.channels, ChannelSegment):
            return self.channels.count()
        return sum(self.channels.counts())

    def state(self) -> Hashable:
        """What decides the active channels now (a memo key): the producer's width, or the
        active counts of a concatenation's parts."""
        if isinstance(self.channels, ChannelSegment):
            producer = self.channels.producer
            return None if producer is None else producer.width
        return self.channels.counts()

    def apply(self, t: Tensor) -> Tensor:
        """``t`` restricted to the active channels along ``dim``."""
        n = self.count()
        if isinstance(self.channels, ChannelSegment):
            return t.narrow(self.dim, 0, n)
        return gather(t, self.dim, n, self.channels.indices(n, t.device))


def _attribute(name: str) -> property:
    def get(self: nn.Module):
        state = self.__dict__
        spec, memo = state[_SLICES][name], state["_memo"]
        if memo is not None and torch.is_grad_enabled():
            memo = None  # the memo serves a frozen model with gradients off only (see freeze)
        if spec.kind == "tensor":
            raw = self._parameters.get(name, _ABSENT)
            if raw is _ABSENT:
                raw = self._buffers[name]
            if raw is None:
                return None
            if memo is not None:
                return memo.get_one((name, spec.state()), raw, spec.apply, raw)
            return spec.apply(raw)
        if memo is not None:
            n = memo.get_one((name, spec.state()), None, spec.count)
        else:
            n = spec.count()
        return (n,) if spec.kind == "shape" else n

    def set_(self: nn.Module, value) -> None:  # only plain values reach here (see nn.Module)
        self.__dict__[name] = value

    return property(get, set_, doc=f"the active slice of {name}")


_CLASSES: dict[tuple[type, frozenset[str]], type] = {}


def _sliced_class(cls: type, names: frozenset[str]) -> type:
    key = (cls, names)
    if key not in _CLASSES:
        attrs = {name: _attribute(name) for name in names}
        attrs["__module__"] = __name__
        _CLASSES[key] = type(cls.__name__, (cls,), attrs)
    return _CLASSES[key]


def make_sliced(module: nn.Module, specs: Mapping[str, SliceSpec]) -> None:
    """Make ``module``'s attributes in ``specs`` return their active slices (in place)."""
    if _SLICES in module.__dict__:
        raise ValueError(f"{type(module).__name__} is already sliced")
    for name, spec in specs.items():
        if spec.kind != "tensor":
            continue
        t = module._parameters.get(name, module._buffers.get(name))
        if not isinstance(t, Tensor) or t.shape[spec.dim] != spec.size:
            raise ValueError(f"{type(module).__name__}.{name} has no dim {spec.dim} of {spec.size}")
    module.__dict__[_ORIGINAL] = type(module)
    module.__dict__[_SLICES] = dict(specs)
    module.__dict__["_memo"] = None  # a SliceMemo while frozen (slimmable.freeze)
    module.__class__ = _sliced_class(type(module), frozenset(specs))


def is_sliced(module: nn.Module) -> bool:
    return _SLICES in module.__dict__


def unmake_sliced(module: nn.Module) -> None:
    """Give ``module`` back its own class (its full tensors were never touched)."""
    module.__class__ = module.__dict__.pop(_ORIGINAL)
    del module.__dict__[_SLICES]
    module.__dict__.pop("_memo", None)


def materialize_sliced(module: nn.Module) -> None:
    """Replace each sliced attribute by a copy of its current slice; restore the own class."""
    specs: dict[str, SliceSpec] = module.__dict__[_SLICES]
    values = {name: getattr(module, name) for name in specs}
    unmake_sliced(module)
    for name, value in values.items():
        if specs[name].kind != "tensor":
            module.__dict__[name] = value
        elif name in module._parameters:
            old = module._parameters[name]
            data = value.detach().clone(memory_format=torch.contiguous_format)
            module._parameters[name] = nn.Parameter(data, old.requires_grad)
        else:
            module._buffers[name] = value.detach().clone()


# ---- a user's Conv2d subclass with its own forward -----------------------------------------------
class SlicedConv2d(WidthMixin):
    """Mixed before a user's ``nn.Conv2d`` subclass whose own forward calls
    ``F.conv2d(x, self.weight, self.bias, ..., self.groups)`` (e.g. 'same' padding), or before
    ``nn.ConvTranspose2d``: ``weight``, ``bias`` and ``groups`` read the active slices, so the
    module's own forward runs at any width. Its output channels follow its width like any
    slimmable conv; its inputs follow ``input_channels_spec`` (the part or concatenation the input
    is made of; ``None``: the input never slims)."""

    depthwise: bool
    fixed_in: bool
    transposed: bool  # a ConvTranspose2d: its weight is (in, out, kh, kw)
    input_channels_spec: ChannelSegment | ChannelLayout | None

    def input_channels(self, x: Tensor) -> int:
        return x.shape[1]

    def _input_count(self) -> tuple[int, Tensor | None]:
        spec = self.input_channels_spec
        if spec is None:
            return self.in_channels, None
        if isinstance(spec, ChannelSegment):
            return spec.count(), None
        n = sum(spec.counts())
        return n, spec.indices(n, self._parameters["weight"].device)

    def active_shape(self, in_channels: int) -> tuple[int, int, int]:
        groups = self.__dict__["_full_groups"]
        if self.depthwise:
            return in_channels * (self.out_channels // self.in_channels), 1, in_channels
        out = self.active_channels()
        return out, in_channels // groups, groups

    @property
    def groups(self) -> int:  # type: ignore[override]
        return self.active_shape(self._input_count()[0])[2]

    @groups.setter
    def groups(self, value: int) -> None:
        self.__dict__["_full_groups"] = value

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        w = self._parameters["weight"]
        n, index = self._input_count()
        out, in_per_group, _ = self.active_shape(n)
        memo = self.__dict__.get("_memo")
        if memo is not None and not torch.is_grad_enabled():  # frozen: see slimmable.freeze
            key = (out, n, None if index is None else id(index))
            return memo.get_one(key, w, self._slice, w, out, in_per_group, index)
        return self._slice(w, out, in_per_group, index)

    def _slice(self, w: Tensor, out: int, in_per_group: int, index: Tensor | None) -> Tensor:
        if self.transposed:
            return gather(w, 0, in_per_group, index)[:, :out]
        if self.depthwise:
            return gather(w, 0, out, index)
        return gather(w[:out], 1, in_per_group, index)

    @property
    def bias(self) -> Tensor | None:  # type: ignore[override]
        b = self._parameters["bias"]
        if b is None:
            return None
        n, index = self._input_count()
        out = self.active_shape(n)[0]
        return gather(b, 0, out, index if self.depthwise else None)

    def to_dense(self, in_channels: int) -> nn.Conv2d:
        """A copy in the user's own class holding the active slices (for extraction)."""
        import copy

        weight, bias, groups = self.weight, self.bias, self.groups
        spec, self.input_channels_spec = self.input_channels_spec, None
        try:  # (the spec refers to upstream layers, which the copy must not take along)
            dense = copy.deepcopy(self)
        finally:
            self.input_channels_spec = spec
        unmake_sliced_conv(dense)
        dense.weight = nn.Parameter(
            weight.detach().clone(), self._parameters["weight"].requires_grad
        )
        if bias is not None:
            dense.bias = nn.Parameter(bias.detach().clone(), self._parameters["bias"].requires_grad)
        out = weight.shape[1] if self.transposed else weight.shape[0]
        dense.groups, dense.in_channels, dense.out_channels = groups, in_channels, out
        return dense


_CONV_CLASSES: dict[type, type] = {}
_CONV_STATE = (  # what make_sliced_conv adds to the instance
    "depthwise", "fixed_in", "transposed", "input_channels_spec", "policy", "width", "divisor",
    "ratio", "fixed_out", "_full_channels", "out_channels_list", "active_out", "_memo",
)  # fmt: skip


def make_sliced_conv(
    module: nn.Conv2d | nn.ConvTranspose2d,
    policy: WidthPolicy,
    *,
    depthwise: bool,
    transposed: bool,
    fixed_in: bool,
    fixed_out: bool,
    divisor: int,
    ratio: int,
    input_channels_spec: ChannelSegment | ChannelLayout | None,
) -> None:
    """Make a Conv2d subclass with its own forward (or a ConvTranspose2d) slimmable in place."""
    cls = type(module)
    if cls not in _CONV_CLASSES:
        _CONV_CLASSES[cls] = type(cls.__name__, (SlicedConv2d, cls), {"__module__": __name__})
    groups = module.groups
    module.__dict__[_ORIGINAL] = cls
    module.__class__ = _CONV_CLASSES[cls]
    module.__dict__.pop("groups", None)
    module.__dict__["_full_groups"] = groups
    module.depthwise, module.fixed_in, module.transposed = depthwise, fixed_in, transposed
    module._memo = None
    module.input_channels_spec = input_channels_spec
    module._init_width(
        policy, module.out_channels, divisor=divisor, ratio=ratio, fixed_out=fixed_out,
        out_channels_list=None,
    )  # fmt: skip


def unmake_sliced_conv(module: nn.Module) -> None:
    """Give a sliced conv back its own class and plain attributes."""
    groups = module.__dict__.pop("_full_groups")
    module.__class__ = module.__dict__.pop(_ORIGINAL)
    for name in _CONV_STATE:
        module.__dict__.pop(name, None)
    module.groups = groups


__all__ = [
    "SliceSpec",
    "SlicedConv2d",
    "is_sliced",
    "make_sliced",
    "make_sliced_conv",
    "materialize_sliced",
    "unmake_sliced",
    "unmake_sliced_conv",
]
