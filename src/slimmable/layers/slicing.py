"""Inference-time memo of the tensors a layer derives from its shared weights.

A prefix slice along the first dimension of a weight is a free view; a slice along the input
dimension is not contiguous, and convolution kernels copy it on every call. Under ``no_grad``
(inference, calibration) a layer keeps what it derived for a width -- contiguous weight slices,
the BN statistics of that width -- keyed by the width and the input channels, and valid while
the source tensors are unchanged (same storage, same version counter: an optimizer step, a
``load_state_dict`` or ``.to()`` invalidates it). A forward at a width then costs what the dense
layer costs, and switching back to a width already used is free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
from torch import Tensor, nn

T = TypeVar("T")


def stamp(*sources: Tensor | None) -> tuple:
    """What identifies the state of ``sources``: each one's version counter and storage address.

    An in-place update bumps the version; ``.to()``, ``.data =`` or a new parameter changes the
    address. ``None`` (e.g. no bias) stamps as ``None``.
    """
    return tuple(None if t is None else (t._version, t.data_ptr()) for t in sources)


class SliceCache:
    """A small LRU of derived tensors, each valid while its source tensors are unchanged.

    The caller passes the sources' :func:`stamp` (hot layers build it inline, which is cheaper
    than the generic helper) and how to build the value on a miss; a hit costs a dict lookup and
    a tuple comparison.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[tuple, object]] = OrderedDict()

    def get(self, key: Hashable, source_stamp: tuple, build: Callable[..., T], *args: object) -> T:
        """The value cached for ``key`` if its sources' stamp is unchanged, else a new one."""
        entries = self._entries
        hit = entries.get(key)
        if hit is not None and hit[0] == source_stamp:
            if len(entries) > 1:
                entries.move_to_end(key)
            return hit[1]  # type: ignore[return-value]
        value = build(*args)
        entries[key] = (source_stamp, value)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # A cache is derived state: copies of a module start empty instead of cloning tensors.
    def __deepcopy__(self, memo: dict) -> SliceCache:
        return SliceCache(self.max_entries)

    def __getstate__(self) -> dict:
        return {"max_entries": self.max_entries}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_entries"])


def copied_prefix(param: Tensor, sizes: tuple[int, ...]) -> nn.Parameter:
    """A new parameter holding a contiguous copy of ``param[:sizes[0], :sizes[1], ...]``.

    What a dense layer extracted from a slimmable one owns: no storage is shared with ``param``.
    """
    data = param.detach()[tuple(slice(0, s) for s in sizes)].clone(
        memory_format=torch.contiguous_format
    )
    return nn.Parameter(data, requires_grad=param.requires_grad)
