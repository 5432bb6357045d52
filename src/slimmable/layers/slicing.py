"""Weight slices: what a layer computes with at a width, and the memo a frozen model keeps.

A leading slice of a weight along its output channels is a free view; a slice along its input
channels is not contiguous, and a convolution copies it on every call. At batch 1 that copy costs
as much as a small layer, so a model that is about to serve requests can be *frozen*
(:func:`freeze`): its layers then memoize the contiguous slices of each width they run at, keyed
on the layer's width and input channels (:meth:`SliceMemo.layer_slices`, the serving hot path).
The memo is only ever used while frozen and with gradients off, and an entry is only reused
while its sources are the very same tensors, at the same storage and version counter. Freezing also
makes every read of ``param.data`` bump the parameter's version counter (its class is swapped
for :class:`_WatchedParameter` until the model is thawed), so the one write path that version
counters miss, ``param.data.mul_(...)``, refreshes the memo too. Outside a frozen block nothing
is memoized: a layer always computes with its current weights.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from types import TracebackType
from typing import TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")
_ABSENT = object()  # a parameter that is not in a module's _parameters


class SliceMemo:
    """A small LRU of tensors derived from source tensors, each valid while its sources are
    the same objects at the same storage and version."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        # key -> (stamp, value); a stamp is (tensor, version, data_ptr) for each source, flat.
        self._entries: OrderedDict[Hashable, tuple[tuple, object]] = OrderedDict()

    def get(
        self, key: Hashable, sources: tuple[Tensor, ...], build: Callable[..., T], *args: object
    ) -> T:
        """The value memoized for ``key`` if its sources are unchanged, else ``build(*args)``."""
        hit = self._entries.get(key)
        if hit is not None and _unchanged(hit[0], sources):
            return self._reuse(key, hit[1])
        return self._store(key, sources, build(*args))

    def layer_slices(
        self,
        layer: nn.Module,
        in_channels: int,
        build: Callable[[int], T],
        width: float | None = None,
    ) -> T:
        """``build(in_channels)`` memoized for a layer with a ``weight`` and a ``bias``.

        The serving hot path, so the checks are written out: the layer's weight and bias are
        read straight from its ``_parameters``, and the key is the layer's ``width`` (which
        decides its active output channels; ``None`` for a norm, whose channels are its
        input's) and input channels, plus the active parts of a concatenated input. A
        parametrized or pruned weight or bias is not in ``_parameters`` (it is recomputed on
        every call), so it is never memoized.
        """
        params = layer._parameters
        weight, bias = params.get("weight", _ABSENT), params.get("bias", _ABSENT)
        if weight is _ABSENT or weight is None or bias is _ABSENT:  # (None: a norm without affine)
            return build(in_channels)
        layout = layer.input_layout
        key = (width, in_channels, None if layout is None else layout.counts())
        hit = self._entries.get(key)
        if hit is not None:
            stamp = hit[0]
            if (
                stamp[0] is weight
                and stamp[1] == weight._version
                and stamp[2] == weight.data_ptr()
                and (
                    bias is None
                    or (
                        stamp[3] is bias
                        and stamp[4] == bias._version
                        and stamp[5] == bias.data_ptr()
                    )
                )
            ):
                return self._reuse(key, hit[1])
        sources = (weight,) if bias is None else (weight, bias)
        return self._store(key, sources, build(in_channels))

    def _reuse(self, key: Hashable, value: T) -> T:
        if len(self._entries) > 1:
            self._entries.move_to_end(key)
        return value

    def _store(self, key: Hashable, sources: tuple[Tensor, ...], value: T) -> T:
        entries = self._entries
        entries[key] = (tuple(x for t in sources for x in (t, t._version, t.data_ptr())), value)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # A memo is derived state: copies of a module start empty instead of cloning tensors.
    def __deepcopy__(self, memo: dict) -> SliceMemo:
        return SliceMemo(self.max_entries)

    def __getstate__(self) -> dict:
        return {"max_entries": self.max_entries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_entries"])


def _unchanged(stamp: tuple, sources: tuple[Tensor, ...]) -> bool:
    # The memo holds each source, so no other tensor can take its address meanwhile.
    if len(stamp) != 3 * len(sources):
        return False
    for i, s in enumerate(sources):
        if (
            s is not stamp[3 * i]
            or s._version != stamp[3 * i + 1]
            or s.data_ptr() != stamp[3 * i + 2]
        ):
            return False
    return True


def owned_copy(t: Tensor, requires_grad: bool) -> nn.Parameter:
    """A parameter holding a contiguous copy of ``t`` (sharing no storage with it)."""
    data = t.detach().clone(memory_format=torch.contiguous_format)
    return nn.Parameter(data, requires_grad=requires_grad)


# ---- freezing ----------------------------------------------------------------------------------
class _WatchedParameter(nn.Parameter):
    """A parameter of a frozen model: reading ``.data`` counts as a write (bumps the version)."""

    @property
    def data(self) -> Tensor:  # type: ignore[override]
        torch.autograd.graph.increment_version(self)
        return _DATA.__get__(self)

    @data.setter
    def data(self, value: Tensor) -> None:
        _DATA.__set__(self, value)

    def _plain(self) -> nn.Parameter:
        return nn.Parameter(_DATA.__get__(self), self.requires_grad)

    def __deepcopy__(self, memo: dict) -> nn.Parameter:
        copy = self._plain()
        copy.data = copy.data.clone()
        memo[id(self)] = copy
        return copy

    def __reduce_ex__(self, proto):  # pickles (and copies) as a plain parameter
        return self._plain().__reduce_ex__(proto)


_DATA = nn.Parameter.data  # torch's own descriptor of Tensor.data


def _memo_layers(model: nn.Module) -> Iterator[nn.Module]:
    for m in model.modules():
        if hasattr(m, "_memo"):
            yield m


class Frozen:
    """Returned by :func:`freeze`; as a context manager it thaws the model on exit."""

    def __init__(self, model: nn.Module, layers: list[nn.Module], watched: list[nn.Parameter]):
        self._model, self._layers, self._watched = model, layers, watched

    def thaw(self) -> None:
        """Drop the memos and give the parameters back their own class."""
        for m in self._layers:
            m._memo = None
        for p in self._watched:
            if type(p) is _WatchedParameter:
                p.__class__ = nn.Parameter
        self._layers, self._watched = [], []

    def __enter__(self) -> nn.Module:
        return self._model

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.thaw()


def freeze(model: nn.Module) -> Frozen:
    """Let ``model``'s layers memoize their weight slices at each width (inference speed).

    For serving and latency measurement: with gradients off, a width's contiguous weight
    slices are computed once and reused while the weights stay the same tensors at the same
    version (an optimizer step, ``load_state_dict``, ``.to()``, an in-place op, ``.data =`` and
    any read of ``.data`` all refresh them). Use it plainly (``freeze(model)``, later
    ``.thaw()``) or as ``with slimmable.freeze(model): ...``. A write that bypasses torch
    entirely (through a NumPy view of a weight) is the one change a frozen model cannot see.
    """
    layers = [m for m in _memo_layers(model) if m._memo is None]
    watched = []
    for m in layers:
        m._memo = SliceMemo()
        for p in m.parameters(recurse=False):
            if type(p) is nn.Parameter:
                p.__class__ = _WatchedParameter
                watched.append(p)
    return Frozen(model, layers, watched)


def is_frozen(model: nn.Module) -> bool:
    """Whether every memoizing layer of ``model`` is frozen (see :func:`freeze`)."""
    layers = list(_memo_layers(model))
    return bool(layers) and all(m._memo is not None for m in layers)


__all__ = ["Frozen", "SliceMemo", "freeze", "is_frozen", "owned_copy"]
