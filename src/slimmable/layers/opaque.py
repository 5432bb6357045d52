"""Sliced convolution and linear that ``torch.compile`` keeps width-agnostic.

Compiled code would otherwise specialize on the active channel counts in two places: Inductor
lowers ``aten.convolution`` (and its backward) with the weight's channel counts as fixed
integers, and tracing records whether each weight slice is contiguous, which depends on
whether the layer's input runs at full width. Either way a graph compiled at one width is
recompiled for the next width a US-Net samples. Here the slice and the product are one custom
operator each: the compiler sees an opaque call with symbolic channel counts (its fake
implementation only computes the output shape) and the eager kernels run inside. The weight
gradient comes back at full size, zero outside the slice, as eager slicing gives it. Only
compiled code calls these; eager layers slice and call ``F.conv2d`` / ``F.linear`` directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

__all__ = ["HAS_OPAQUE_OPS", "sliced_conv2d", "sliced_linear"]

HAS_OPAQUE_OPS = hasattr(torch.library, "custom_op")  # torch >= 2.4


def _conv_out_size(size, kernel: int, stride: int, padding: int, dilation: int):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _empty(x: Tensor, shape) -> Tensor:
    """An empty tensor like ``x`` (dtype, device, memory format) of another shape."""
    fmt = suggest_memory_format(x)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


def _full_grad(weight: Tensor, part: Tensor) -> Tensor:
    """``part`` (the gradient of a leading slice of ``weight``) placed in a zero tensor."""
    full = torch.zeros_like(weight)
    full[tuple(slice(0, s) for s in part.shape)] = part
    return full


if HAS_OPAQUE_OPS:

    @torch.library.custom_op("slimmable::sliced_conv2d", mutates_args=())
    def _conv(
        x: Tensor,
        weight: Tensor,
        out_channels: int,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int,
    ) -> Tensor:
        w = weight[:out_channels, : x.shape[1] // groups]
        y = F.conv2d(x, w, None, stride, padding, dilation, groups)
        return y.contiguous(memory_format=suggest_memory_format(x))

    @_conv.register_fake
    def _conv_fake(x, weight, out_channels, stride, padding, dilation, groups):
        kh, kw = weight.shape[2:]
        h = _conv_out_size(x.shape[2], kh, stride[0], padding[0], dilation[0])
        w = _conv_out_size(x.shape[3], kw, stride[1], padding[1], dilation[1])
        shape = (x.shape[0], out_channels, h, w)
        return _empty(x, shape)

    @torch.library.custom_op("slimmable::sliced_conv2d_backward", mutates_args=())
    def _conv_backward(
        grad: Tensor,
        x: Tensor,
        weight: Tensor,
        out_channels: int,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int,
        input_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        w = weight[:out_channels, : x.shape[1] // groups]
        dx, dw, _ = torch.ops.aten.convolution_backward(
            grad, x, w, None, stride, padding, dilation, False, [0, 0], groups,
            [input_grad, True, False],
        )  # fmt: skip
        dx = dx.contiguous(memory_format=suggest_memory_format(x)) if input_grad else x.new_empty(0)
        return dx, _full_grad(weight, dw)

    @_conv_backward.register_fake
    def _conv_backward_fake(grad, x, weight, out_channels, stride, padding, dilation, groups,
                            input_grad):  # fmt: skip
        if not input_grad:
            return x.new_empty(0), torch.empty_like(weight)
        return _empty(x, x.shape), torch.empty_like(weight)

    def _conv_setup(ctx, inputs, output) -> None:
        x, weight, out_channels, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.conv_args = (out_channels, stride, padding, dilation, groups)
        ctx.input_grad = ctx.needs_input_grad[0]

    def _conv_grad(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        dx, dw = _conv_backward(grad, x, weight, *ctx.conv_args, ctx.input_grad)
        return (dx if ctx.input_grad else None), dw, None, None, None, None, None

    _conv.register_autograd(_conv_grad, setup_context=_conv_setup)

    @torch.library.custom_op("slimmable::sliced_linear", mutates_args=())
    def _linear(x: Tensor, weight: Tensor, out_features: int) -> Tensor:
        return F.linear(x, weight[:out_features, : x.shape[-1]])

    @_linear.register_fake
    def _linear_fake(x, weight, out_features):
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.custom_op("slimmable::sliced_linear_backward", mutates_args=())
    def _linear_backward(
        grad: Tensor, x: Tensor, weight: Tensor, out_features: int
    ) -> tuple[Tensor, Tensor]:
        w = weight[:out_features, : x.shape[-1]]
        dx = grad.matmul(w)
        dw = grad.reshape(-1, out_features).t().matmul(x.reshape(-1, x.shape[-1]))
        return dx, _full_grad(weight, dw)

    @_linear_backward.register_fake
    def _linear_backward_fake(grad, x, weight, out_features):
        return x.new_empty(x.shape), torch.empty_like(weight)

    def _linear_setup(ctx, inputs, output) -> None:
        x, weight, out_features = inputs
        ctx.save_for_backward(x, weight)
        ctx.out_features = out_features

    def _linear_grad(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        dx, dw = _linear_backward(grad, x, weight, ctx.out_features)
        return dx, dw, None

    _linear.register_autograd(_linear_grad, setup_context=_linear_setup)


def sliced_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    out_channels: int,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
) -> Tensor:
    """``F.conv2d(x, weight[:out_channels, :in_per_group], bias[:out_channels], ...)``."""
    if not HAS_OPAQUE_OPS:
        w = weight[:out_channels, : x.shape[1] // groups]
        b = None if bias is None else bias[:out_channels]
        return F.conv2d(x, w, b, stride, padding, dilation, groups)
    y = torch.ops.slimmable.sliced_conv2d(
        x, weight, out_channels, list(stride), list(padding), list(dilation), groups
    )
    return y if bias is None else y + bias[:out_channels].view(1, -1, 1, 1)


def sliced_linear(x: Tensor, weight: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """``F.linear(x, weight[:out_features, :in_features], bias[:out_features])``."""
    if not HAS_OPAQUE_OPS:
        b = None if bias is None else bias[:out_features]
        return F.linear(x, weight[:out_features, : x.shape[-1]], b)
    y = torch.ops.slimmable.sliced_linear(x, weight, out_features)
    return y if bias is None else y + bias[:out_features]
