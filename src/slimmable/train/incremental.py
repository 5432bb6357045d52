"""The incremental baseline of the S-Nets paper (``train.mode=incremental``).

Train the narrowest width alone; freeze it; add the next width's channels and train only those;
and so on up to the widest. Each stage runs ``train.epochs`` epochs with its own learning-rate
schedule. "Frozen" is exact: after every optimizer step the weights a narrower width reads (the
first output and input channels of every layer, the classifier's bias) are put back, so
momentum and weight decay cannot move them either, and every narrower width computes what it
computed when its stage ended (its private BN is never run again). The new connections from
the added channels into the old ones (B -> A) train; those from old to old do not, which is
what keeps the narrow network from adapting jointly and makes the baseline weak.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import SwitchableBatchNorm2d
from ..layers.base import WidthMixin
from ..width import set_width


def used_slices(model: nn.Module, width: float, x: Tensor) -> dict[str, tuple[int, ...]]:
    """Per parameter name, the leading block of it that ``model`` reads at ``width`` on ``x``.

    Found by running ``x`` through the model with a hook on each slimmable conv / linear, which
    reports the channels it runs (its weight slice is the first ``out`` x ``in`` block).
    """
    blocks: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, WidthMixin):
            continue

        if not isinstance(module, nn.Conv2d | nn.Linear):
            raise ValueError(f"incremental training cannot freeze {type(module).__name__} {name}")

        def hook(m: nn.Module, inputs: tuple, name: str = name) -> None:
            if isinstance(m, nn.Conv2d):
                out, per_group, _ = m.active_shape(inputs[0].shape[1])
                blocks[f"{name}.weight"] = (out, per_group)
            else:
                out, features = m.active_shape(inputs[0].shape[-1])
                blocks[f"{name}.weight"] = (out, features)
            if m.bias is not None:
                blocks[f"{name}.bias"] = (out,)

        handles.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), set_width(model, width):
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return blocks


class IncrementalStages:
    """Which width trains at a step, and the frozen channels of the widths before it."""

    def __init__(self, model: nn.Module, widths: Sequence[float], steps_per_stage: int) -> None:
        if len(widths) < 2:
            raise ValueError(
                "train.mode=incremental grows a network width by width: give model.widths at "
                "least two widths, e.g. [0.25, 0.5, 0.75, 1.0]"
            )
        private = {
            id(bn) for m in model.modules() if isinstance(m, SwitchableBatchNorm2d) for bn in m.bn
        }
        shared = [
            name
            for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and id(m) not in private
        ]
        if shared:
            raise ValueError(
                f"train.mode=incremental needs a private BN per width (an S-Net with switchable "
                f"BN); {shared[0]} is shared by every width, so training a wider one would "
                "change the narrower ones"
            )
        self.model = model
        self.widths = sorted(float(w) for w in widths)
        self.steps_per_stage = steps_per_stage
        self._stage = -1
        self._frozen: list[tuple[Tensor, tuple[slice, ...], Tensor]] = []

    @property
    def total_steps(self) -> int:
        return self.steps_per_stage * len(self.widths)

    def stage(self, step: int) -> int:
        return min(step // self.steps_per_stage, len(self.widths) - 1)

    def step_in_stage(self, step: int) -> int:
        """The step within its stage: each stage follows the learning-rate schedule anew."""
        return step - self.stage(step) * self.steps_per_stage

    def begin(self, step: int, x: Tensor) -> float:
        """The width that trains at ``step``; entering a stage freezes the width before it."""
        stage = self.stage(step)
        if stage != self._stage:
            self._stage = stage
            self._frozen = []
            if stage > 0:  # what the previous (narrower) width reads stays as it is now
                params = dict(self.model.named_parameters())
                for name, block in used_slices(self.model, self.widths[stage - 1], x).items():
                    index = tuple(slice(0, n) for n in block)
                    param = params[name]
                    self._frozen.append((param, index, param.detach()[index].clone()))
        return self.widths[stage]

    @torch.no_grad()
    def keep_frozen(self) -> None:
        """After the optimizer step: frozen channels back to their values."""
        for param, index, value in self._frozen:
            param[index] = value
