"""Which widths one training step runs: every switch (S-Nets) or the sandwich rule (US-Nets)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..width import Width, channel_groups, width_bounds, width_choices, width_knobs


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


class WidthSampler:
    """The widths of each step, largest first (it is the in-place distillation teacher).

    - ``"slimmable"`` / ``"naive"`` / ``"individual"``: every switch of the S-Net (Algorithm 1);
    - ``"universal"``: the sandwich rule, i.e. the largest, the smallest and ``n - 2`` widths
      drawn uniformly from the range; with ``nonuniform``, each drawn width is a per-layer map in
      which every channel group (``model.channel_groups()``) or free knob gets its own width.

    Random draws come from the sampler's own ``generator`` (saved with the checkpoint).
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str,
        num_sample_widths: int = 4,
        nonuniform: bool = False,
        seed: int = 0,
    ) -> None:
        self.mode = mode
        self.n = num_sample_widths
        self.nonuniform = nonuniform
        self.lo, self.hi = width_bounds(model)
        self.switches = width_choices(model)
        self.generator = torch.Generator().manual_seed(seed)
        self.groups = self._knob_groups(model)
        if mode == "universal" and self.switches is not None:
            raise ValueError(
                "train.mode=universal needs a universally slimmable model (model.width_range), "
                "e.g. us_small_cnn; S-Nets train with train.mode=slimmable"
            )
        if mode != "universal" and self.switches is None:
            raise ValueError(
                f"train.mode={mode} needs a slimmable model with a list of widths "
                "(model.widths), e.g. s_small_cnn; US models train with train.mode=universal"
            )

    @staticmethod
    def _knob_groups(model: nn.Module) -> list[list[str]]:
        """Knob names grouped so that tied layers always share one width."""
        knobs = list(width_knobs(model))
        groups: list[list[str]] = []
        tied: set[str] = set()
        for group in channel_groups(model):
            members = [name for name in group if name in knobs]
            if members:
                groups.append(members)
                tied.update(members)
        groups += [[name] for name in knobs if name not in tied]
        return groups

    def __call__(self) -> list[Width]:
        if self.switches is not None:
            return sorted(self.switches, reverse=True)
        widths: list[Width] = [self.hi, self.lo]
        for _ in range(self.n - 2):
            widths.append(self._random())
        return widths

    def _random(self) -> Width:
        if not self.nonuniform:
            return _uniform(self.lo, self.hi, self.generator)
        per_layer: dict[str, float] = {}
        for group in self.groups:
            w = _uniform(self.lo, self.hi, self.generator)
            per_layer.update(dict.fromkeys(group, w))
        return per_layer

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def describe(widths: Sequence[Width]) -> str:
    """Short text of a step's widths (for logs)."""
    return ", ".join("nonuniform" if isinstance(w, dict) else f"{w:g}" for w in widths)
