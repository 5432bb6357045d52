"""Convolutions that run on the first channels of a shared weight."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import WidthMixin, is_compiling, make_policy
from .layout import ChannelLayout, gather
from .opaque import sliced_conv2d
from .slicing import SliceMemo, owned_copy


class _WidthConv2d(WidthMixin, nn.Conv2d):
    """``nn.Conv2d`` at full width; at a smaller width, its first input and output channels.

    - input channels come from the input tensor (``fixed_in`` asserts they are all there, as for
      image channels);
    - output channels follow ``width`` (``fixed_out`` keeps them all, e.g. for logits);
    - ``depthwise``: groups = active channels, output channels follow the input;
    - other grouped convolutions keep their ``groups``; active channels must divide by it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        widths: Sequence[float] | None = None,
        width_range: Sequence[float] | None = None,
        depthwise: bool = False,
        fixed_in: bool = False,
        fixed_out: bool = False,
        divisor: int = 8,
        ratio: int = 1,
        out_channels_list: Sequence[int] | None = None,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        if depthwise:
            if out_channels % in_channels:
                raise ValueError("a depthwise conv needs out_channels a multiple of in_channels")
            groups = in_channels
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        self.depthwise = depthwise
        self.fixed_in = fixed_in
        self._init_width(
            make_policy(widths, width_range),
            out_channels,
            divisor=divisor,
            ratio=ratio,
            fixed_out=fixed_out,
            out_channels_list=out_channels_list,
        )
        self.input_layout: ChannelLayout | None = None
        self._memo: SliceMemo | None = None

    def active_shape(self, in_channels: int) -> tuple[int, int, int]:
        """``(out_channels, in_channels_per_group, groups)`` that run for this many inputs."""
        if in_channels > self.in_channels or (self.fixed_in and in_channels != self.in_channels):
            need = "exactly" if self.fixed_in else "at most"
            raise ValueError(
                f"{type(self).__name__} expects {need} {self.in_channels} input channels, "
                f"got {in_channels}; the previous layer's width does not match this one"
            )
        if self.depthwise:
            return in_channels * (self.out_channels // self.in_channels), 1, in_channels
        out = self.active_channels()
        if in_channels % self.groups or out % self.groups:
            raise ValueError(
                f"grouped conv (groups={self.groups}) got {in_channels} inputs and {out} outputs; "
                "both must divide by groups (use divisor= a multiple of groups)"
            )
        return out, in_channels // self.groups, self.groups

    def input_channels(self, x: Tensor) -> int:
        """How many of this layer's input channels ``x`` carries."""
        return x.shape[1]

    def active_weights(self, in_channels: int) -> tuple[Tensor, Tensor | None, int]:
        """``(weight, bias, groups)`` for this many input channels at this width.

        Slices of the layer's current ``weight`` and ``bias`` (read through any parametrization
        or pruning hook): views when they are leading slices along the output channels, else
        gathered copies. While the model is frozen (:func:`slimmable.freeze`) and gradients are
        off, they are memoized per width.
        """
        memo = self._memo
        if memo is not None and not torch.is_grad_enabled():
            return memo.layer_slices(self, in_channels, self._active_weights, self.width)
        return self._active_weights(in_channels)

    def _active_weights(self, in_channels: int) -> tuple[Tensor, Tensor | None, int]:
        out, in_per_group, groups = self.active_shape(in_channels)
        weight, bias = self.weight, self.bias
        layout = self.input_layout
        index = None if layout is None else layout.indices(in_channels, weight.device)
        w, b = self._slices(weight, bias, out, in_per_group, index)
        return w, b, groups

    def _slices(
        self, weight: Tensor, bias: Tensor | None, out: int, in_per_group: int, index: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        if self.depthwise:  # output channels follow the input: gather along the outputs
            w = gather(weight, 0, out, index)
        else:
            w = gather(weight[:out], 1, in_per_group, index)
        b = None if bias is None else gather(bias, 0, out, index if self.depthwise else None)
        return w.contiguous(), b

    def forward(self, x: Tensor) -> Tensor:
        memo = self._memo
        if (
            memo is not None
            and self.padding_mode == "zeros"
            and not torch.is_grad_enabled()
            and not is_compiling()
        ):  # a frozen model serving requests: the shortest path (see slimmable.freeze)
            weight, bias, groups = memo.layer_slices(
                self, x.shape[1], self._active_weights, self.width
            )
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        if is_compiling() and not isinstance(padding, str) and self.input_layout is None:
            out, _, groups = self.active_shape(x.shape[1])  # one graph for every width
            w, b = self.weight, self.bias
            return sliced_conv2d(x, w, b, out, self.stride, padding, self.dilation, groups)
        weight, bias, groups = self.active_weights(x.shape[1])
        return F.conv2d(x, weight, bias, self.stride, padding, self.dilation, groups)

    def to_dense(self, in_channels: int) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` that computes what this layer computes now, for this many inputs.

        Weights are copied (the dense layer shares no storage with this one), so the result
        stays valid when this layer is trained further or switched to another width.
        """
        weight, bias, groups = self.active_weights(in_channels)
        dense = nn.Conv2d(
            in_channels,
            weight.shape[0],
            self.kernel_size,  # type: ignore[arg-type]
            self.stride,  # type: ignore[arg-type]
            self.padding,  # type: ignore[arg-type]
            self.dilation,  # type: ignore[arg-type]
            groups,
            self.bias is not None,
            self.padding_mode,
            device="meta",
        )
        dense.weight = owned_copy(weight, self.weight.requires_grad)
        if bias is not None:
            dense.bias = owned_copy(bias, self.bias.requires_grad)
        return dense

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.depthwise:
            s += ", depthwise=True"
        if self.fixed_in:
            s += ", fixed_in=True"
        if self.input_layout is not None:
            s += f", input_layout={self.input_layout!r}"
        return f"{s}, {self._width_repr()}"


class SlimmableConv2d(_WidthConv2d):
    """Conv2d of a slimmable network (S-Net): runs at each width of a fixed list."""

    def __init__(self, *args, widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0), **kwargs) -> None:
        super().__init__(*args, widths=widths, **kwargs)


class USConv2d(_WidthConv2d):
    """Conv2d of a universally slimmable network (US-Net): runs at any width in a range."""

    def __init__(self, *args, width_range: Sequence[float] = (0.25, 1.0), **kwargs) -> None:
        super().__init__(*args, width_range=width_range, **kwargs)
