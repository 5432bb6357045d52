"""Linear layers that run on the first features of a shared weight."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import WidthMixin, is_compiling, make_policy
from .layout import ChannelLayout, gather
from .opaque import sliced_linear
from .slicing import SliceMemo, owned_copy


class _WidthLinear(WidthMixin, nn.Linear):
    """``nn.Linear`` at full width; at a smaller width, its first input and output features.

    Input features come from the input tensor; the output follows ``width`` unless
    ``fixed_out`` (the classifier's logits never slim, so it defaults to ``True``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        widths: Sequence[float] | None = None,
        width_range: Sequence[float] | None = None,
        fixed_in: bool = False,
        fixed_out: bool = True,
        divisor: int = 8,
        ratio: int = 1,
        out_channels_list: Sequence[int] | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self.fixed_in = fixed_in
        self._init_width(
            make_policy(widths, width_range),
            out_features,
            divisor=divisor,
            ratio=ratio,
            fixed_out=fixed_out,
            out_channels_list=out_channels_list,
        )
        self.input_layout: ChannelLayout | None = None
        self._memo: SliceMemo | None = None

    def active_shape(self, in_features: int) -> tuple[int, int]:
        """``(out_features, in_features)`` that run for this many inputs."""
        if in_features > self.in_features or (self.fixed_in and in_features != self.in_features):
            need = "exactly" if self.fixed_in else "at most"
            raise ValueError(
                f"{type(self).__name__} expects {need} {self.in_features} input features, "
                f"got {in_features}; the previous layer's width does not match this one"
            )
        return self.active_channels(), in_features

    def input_channels(self, x: Tensor) -> int:
        """How many of this layer's input features ``x`` carries."""
        return x.shape[-1]

    def active_weights(self, in_features: int) -> tuple[Tensor, Tensor | None]:
        """``(weight, bias)`` for this many input features at this width.

        Slices of the current ``weight`` and ``bias`` (read through any parametrization or pruning
        hook), memoized per width while the model is frozen (:func:`slimmable.freeze`) and
        gradients are off.
        """
        memo = self._memo
        if memo is not None and not torch.is_grad_enabled():
            return memo.layer_slices(self, in_features, self._active_weights, self.width)
        return self._active_weights(in_features)

    def _active_weights(self, in_features: int) -> tuple[Tensor, Tensor | None]:
        out, inp = self.active_shape(in_features)
        weight, bias = self.weight, self.bias
        layout = self.input_layout
        index = None if layout is None else layout.indices(inp, weight.device)
        return _slices(weight, bias, out, inp, index)

    def forward(self, x: Tensor) -> Tensor:
        memo = self._memo
        if memo is not None and not torch.is_grad_enabled() and not is_compiling():
            weight, bias = memo.layer_slices(self, x.shape[-1], self._active_weights, self.width)
            return F.linear(x, weight, bias)  # a frozen model serving: see slimmable.freeze
        if is_compiling() and self.input_layout is None:  # one graph for every width
            out, _ = self.active_shape(x.shape[-1])
            return sliced_linear(x, self.weight, self.bias, out)
        weight, bias = self.active_weights(x.shape[-1])
        return F.linear(x, weight, bias)

    def to_dense(self, in_features: int) -> nn.Linear:
        """A plain ``nn.Linear`` that computes what this layer computes now, for this many inputs.

        Weights are copied: the dense layer shares no storage with this one.
        """
        weight, bias = self.active_weights(in_features)
        dense = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device="meta")
        dense.weight = owned_copy(weight, self.weight.requires_grad)
        if bias is not None:
            dense.bias = owned_copy(bias, self.bias.requires_grad)
        return dense

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.fixed_in:
            s += ", fixed_in=True"
        if self.input_layout is not None:
            s += f", input_layout={self.input_layout!r}"
        return f"{s}, {self._width_repr()}"


def _slices(
    weight: Tensor, bias: Tensor | None, out: int, inp: int, index: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    w = gather(weight[:out], 1, inp, index).contiguous()
    return w, None if bias is None else bias[:out]


class SlimmableLinear(_WidthLinear):
    """Linear layer of a slimmable network (S-Net): runs at each width of a fixed list."""

    def __init__(self, *args, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), **kwargs) -> None:
        super().__init__(*args, widths=widths, **kwargs)


class USLinear(_WidthLinear):
    """Linear layer of a universally slimmable network: runs at any width in a range."""

    def __init__(self, *args, width_range: Sequence[float] = (0.25, 1.0), **kwargs) -> None:
        super().__init__(*args, width_range=width_range, **kwargs)
