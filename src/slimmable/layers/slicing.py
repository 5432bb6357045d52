"""Slices of shared weights, with a cache that spares inference the copy.

A prefix slice along the first dimension of a weight is a free view; a slice along the input
dimension is not contiguous, and convolution kernels copy it on every call. Under ``no_grad``
(inference, calibration) we keep the contiguous copy, keyed by its shape and invalidated by the
parameter's version counter, so that a forward at a width costs what the dense layer costs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn


class SliceCache:
    """A small LRU of contiguous prefix slices of one parameter, valid while it is unchanged."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[tuple, Tensor]] = OrderedDict()

    def get(self, param: Tensor, sizes: tuple[int, ...]) -> Tensor:
        """``param[:sizes[0], :sizes[1], ...]``, contiguous, cached when grad is off."""
        index = tuple(slice(0, s) for s in sizes)
        view = param[index]
        if view.is_contiguous() or torch.is_grad_enabled():
            return view
        stamp = (param._version, param.data_ptr(), param.device, param.dtype)
        hit = self._entries.get(sizes)
        if hit is not None and hit[0] == stamp:
            self._entries.move_to_end(sizes)
            return hit[1]
        copy = view.contiguous()
        self._entries[sizes] = (stamp, copy)
        self._entries.move_to_end(sizes)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return copy

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
