"""Weight slices: what a layer computes with at a width, and the memo a frozen model keeps.

A leading slice of a weight along its output channels is a free view; a slice along its input
channels is not contiguous, and a convolution copies it on every call. At batch 1 that copy costs
as much as a small layer, so a model that is about to serve requests can be *frozen*
(:func:`freeze`): its layers then memoize the contiguous slices of each width they run at, keyed
on the layer's width and input channels (:meth:`SliceMemo.layer_slices`, the serving hot path).
The memo is only ever used while frozen and with gradients off, and an entry is only reused
while its sources are the very same tensors, at the same storage and version counter. Freezing also
makes every read or assignment of ``param.data`` bump the parameter's version counter (its class
is swapped for :class:`_WatchedParameter` until the model is thawed), so the one write path that
version counters miss, ``param.data.mul_(...)``, refreshes the memo too, and a watched
parameter's storage never changes without a version bump. The memo reads a watched parameter's
version through a plain alias that shares its counter (a parameter subclass's attributes cost
three times a plain tensor's) and holds detached tensors only (a view of a parameter would stop
``torch.utils.swap_tensors`` from replacing it). Outside a frozen block nothing is memoized: a
layer always computes with its current weights.
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
    the same objects at the same storage and version (see :func:`_stamp`).

    One memo serves one module, through one of its lookups: :meth:`get` (any number of
    sources), :meth:`get_one` or :meth:`layer_slices` (their stamps differ in shape)."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        # key -> (stamp, value); a stamp holds _stamp(t) for each source.
        self._entries: OrderedDict[Hashable, tuple[tuple, object]] = OrderedDict()

    def get(
        self, key: Hashable, sources: tuple[Tensor, ...], build: Callable[..., T], *args: object
    ) -> T:
        """The value memoized for ``key`` if its sources are unchanged, else ``build(*args)``."""
        entries = self._entries
        hit = entries.get(key)
        if hit is not None and _unchanged(hit[0], sources):
            if len(entries) > 1:
                entries.move_to_end(key)
            return hit[1]
        stamps = tuple(_stamp(t) for t in sources)
        return self._store(key, stamps if None not in stamps else None, build(*args))

    def get_one(self, key: Hashable, source: Tensor | None, build: Callable[..., T], *args) -> T:
        """:meth:`get` for at most one source (``None``: none), with the check written out:
        the attributes of sliced user modules (see :mod:`.sliced`) read it on every access."""
        entries = self._entries
        hit = entries.get(key)
        if hit is not None:
            t, counter, version, ptr = hit[0]
            if t is source and (
                source is None
                or (
                    counter._version == version
                    and (type(t) is _WatchedParameter if ptr is None else t.data_ptr() == ptr)
                )
            ):
                if len(entries) > 1:
                    entries.move_to_end(key)
                return hit[1]
        return self._store(key, _NO_STAMP if source is None else _stamp(source), build(*args))

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
        input's) and input channels, plus the active parts of a concatenated input. Only
        watched parameters are memoized (and a missing bias): a parametrized or pruned weight
        or bias is not in ``_parameters`` (it is recomputed on every call), and one assigned
        after :func:`freeze` is not watched.
        """
        params = layer._parameters
        weight, bias = params.get("weight"), params.get("bias", _ABSENT)
        if type(weight) is not _WatchedParameter or not (
            bias is None or type(bias) is _WatchedParameter
        ):
            return build(in_channels)
        layout = layer.input_layout
        key = (width, in_channels, None if layout is None else layout.counts())
        entries = self._entries
        hit = entries.get(key)
        if hit is not None:
            w, b = hit[0]  # (tensor, alias, version, None) of the weight and of the bias
            if (
                w[0] is weight
                and w[1]._version == w[2]
                and b[0] is bias
                and (bias is None or b[1]._version == b[2])
            ):
                if len(entries) > 1:
                    entries.move_to_end(key)
                return hit[1]
        w, b = _stamp(weight), _NO_STAMP if bias is None else _stamp(bias)
        return self._store(key, None if w is None or b is None else (w, b), build(in_channels))

    def _store(self, key: Hashable, stamp: tuple | None, value: T) -> T:
        """Remember ``value`` (detached) under ``key``, unless a source could not be stamped
        (``stamp`` is ``None``: an inference tensor); the value is returned either way."""
        value = _detached(value)
        if stamp is not None:
            entries = self._entries
            entries[key] = (stamp, value)
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


_NO_STAMP = (None, None, None, None)  # an absent bias in a layer's stamp


def _stamp(t: Tensor) -> tuple | None:
    """What a memo entry remembers of a source: ``(tensor, counter, version, data_ptr)``, or
    ``None`` for an inference tensor (made under ``torch.inference_mode``), which has no
    version counter: writes to it cannot be seen, so nothing derived from it is memoized.

    A watched parameter (see :func:`freeze`) is read through ``counter``, a plain detached
    alias that shares its version counter: reading ``_version`` or ``data_ptr()`` of a
    parameter subclass costs three times what it costs on a plain tensor, on every layer of
    every call. Its storage cannot change without a version bump (its ``.data`` setter bumps
    it), so ``data_ptr`` is ``None``; ``torch.utils.swap_tensors`` with any other tensor changes
    its class. Any other tensor is its own counter and its data pointer is checked.
    """
    if t.is_inference():
        return None
    if type(t) is _WatchedParameter:
        alias = t.detach()
        return (t, alias, alias._version, None)
    return (t, t, t._version, t.data_ptr())


def _detached(value: T) -> T:
    """``value`` with its tensors detached: a memoized view of a parameter must not count as a
    reference to it, or ``torch.utils.swap_tensors`` (``load_state_dict`` and ``.to()`` under
    torch's swap flag) refuses to replace the parameter."""
    if isinstance(value, Tensor):
        return value.detach()  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)  # type: ignore[return-value]
    return value


def _unchanged(stamp: tuple, sources: tuple[Tensor, ...]) -> bool:
    # The memo holds each source, so no other tensor can take its address meanwhile.
    if len(stamp) != len(sources):
        return False
    for s, (t, counter, version, ptr) in zip(sources, stamp, strict=True):
        if s is not t or counter._version != version:
            return False
        if ptr is None:  # a watched parameter: still watched (not swapped for another tensor)
            if type(s) is not _WatchedParameter:
                return False
        elif s.data_ptr() != ptr:
            return False
    return True


def owned_copy(t: Tensor, requires_grad: bool) -> nn.Parameter:
    """A parameter holding a contiguous copy of ``t`` (sharing no storage with it)."""
    data = t.detach().clone(memory_format=torch.contiguous_format)
    return nn.Parameter(data, requires_grad=requires_grad)


# ---- freezing ----------------------------------------------------------------------------------
class _WatchedParameter(nn.Parameter):
    """A parameter of a frozen model: reading or setting ``.data`` counts as a write (bumps
    the version)."""

    @property
    def data(self) -> Tensor:  # type: ignore[override]
        torch.autograd.graph.increment_version(self)
        return _DATA.__get__(self)

    @data.setter
    def data(self, value: Tensor) -> None:  # new storage: memos of the old one are stale
        _DATA.__set__(self, value)
        torch.autograd.graph.increment_version(self)

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
    version (an optimizer step, ``load_state_dict``, ``.to()``, an in-place op, ``.data =``, any
    read of ``.data``, ``torch.utils.swap_tensors`` and removing a bias all refresh them). A
    parameter assigned after freezing is not memoized (it is sliced on every call) until the
    model is thawed and frozen again, and neither is an inference tensor (a model built under
    ``torch.inference_mode``: no version counter). Use it plainly (``freeze(model)``, later
    ``.thaw()``) or as ``with slimmable.freeze(model): ...``. Two changes a frozen model cannot
    see: a write that bypasses torch entirely (through a NumPy view of a weight), and
    ``torch.utils.swap_tensors`` between two parameters of the frozen model itself.
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
