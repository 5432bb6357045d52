"""``torch.compile`` for slimmable models: one graph for every width a US-Net samples.

Plain ``torch.compile`` specializes on every channel count, so training with the sandwich rule
recompiles at each new width until the recompile limit sends it back to eager mode. Three
things keep the graph general:

- layers read their active output channels from an int attribute (``active_out``, set by
  :func:`slimmable.set_width`), which dynamo treats as symbolic when
  ``allow_unspec_int_on_nn_module`` is on (the wrapper below turns it on for its calls only);
- weight slicing and the convolution / linear product are opaque custom operators under
  compilation (:mod:`slimmable.layers.opaque`), so neither Inductor's convolution lowering nor
  the contiguity of a slice pins a channel count;
- ``dynamic=True``.

S-Nets still compile one graph per switch (each width has its own BN); a US-Net compiles one
graph for all of its widths (uniform or per layer).

Speed: on a CPU this is no faster than eager mode (``benchmarks/compile.py``, docs/recipes.md).
The opaque convolutions keep the layout they are given, so Inductor cannot run them in
channels-last, which is what makes compiled convolutional networks faster there; putting the
model and its inputs in channels-last memory format gets that gain without compiling.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledSlimmable", "compile_slimmable"]

_UNSPEC_INTS = "allow_unspec_int_on_nn_module"


class CompiledSlimmable(nn.Module):
    """A compiled slimmable model; set widths on the original model, call this one."""

    def __init__(self, model: nn.Module, **options: Any) -> None:
        super().__init__()
        self.compiled = torch.compile(model, dynamic=True, **options)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        config = torch._dynamo.config
        patch = config.patch(**{_UNSPEC_INTS: True}) if hasattr(config, _UNSPEC_INTS) else None
        with patch or nullcontext():
            return self.compiled(*args, **kwargs)


def compile_slimmable(model: nn.Module, **options: Any) -> CompiledSlimmable:
    """``torch.compile(model, dynamic=True, **options)`` that does not recompile per width.

    Widths are still set with ``slimmable.set_width(model, w)`` on ``model`` itself (or a DDP
    module wrapping it); the returned module runs it compiled.
    """
    return CompiledSlimmable(model, **options)
