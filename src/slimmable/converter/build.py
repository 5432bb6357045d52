"""Swap a model's torch layers for slimmable ones, under the same names, sharing their tensors.

Each converted layer is built on the meta device and takes the original's very ``Parameter``
objects (and buffers), so optimizers and user code holding them keep working and the original
``state_dict`` loads as it is. A parameter outside torch's layers that follows channels (layer
scale, the affine of a hand-written LayerNorm2d) keeps its module: the module's class becomes a
generated subclass whose attribute returns the active slice (:mod:`slimmable.layers.sliced`).
Everything is reversible until the conversion is verified (:class:`Swap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from ..layers import (
    ChannelLayout,
    ChannelSegment,
    SlimmableConv2d,
    SlimmableGroupNorm,
    SlimmableLayerNorm,
    SlimmableLinear,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    USConv2d,
    USLinear,
)
from ..layers.base import make_policy
from ..layers.sliced import (
    SliceSpec,
    make_sliced,
    make_sliced_conv,
    unmake_sliced,
    unmake_sliced_conv,
)
from .plan import ConversionError, Plan
from .spaces import Layout
from .trace import LayerCall

HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@dataclass
class Options:
    """How to convert: the width policy, the norm and the rounding (see :func:`~.convert`)."""

    widths: tuple[float, ...] | None
    width_range: tuple[float, float] | None
    norm: str
    divisor: int
    fixed: tuple[str, ...] = ()

    @property
    def width_kwargs(self) -> dict[str, Any]:
        if self.widths is not None:
            return {"widths": self.widths}
        return {"width_range": self.width_range}

    @property
    def bounds(self) -> tuple[float, float]:
        if self.widths is not None:
            return min(self.widths), max(self.widths)
        assert self.width_range is not None
        return self.width_range


@dataclass
class Swap:
    """The modules replaced (to undo a failed conversion) and the classes changed in place."""

    replaced: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    sliced: list[nn.Module] = field(default_factory=list)
    convs: list[nn.Module] = field(default_factory=list)

    def undo(self) -> None:
        for parent, key, old in reversed(self.replaced):
            parent._modules[key] = old
        for module in self.sliced:
            unmake_sliced(module)
        for module in self.convs:
            unmake_sliced_conv(module)


def _check_plain(module: nn.Module, name: str) -> None:
    if parametrize.is_parametrized(module) or any(k.endswith("_orig") for k in module._parameters):
        raise ConversionError(
            f"layer {name!r} is parametrized or pruned; convert the plain model first, then "
            "parametrize or prune the slimmable layers (they support both)"
        )


def _layer_kwargs(plan: Plan, call: LayerCall, opts: Options) -> dict[str, Any]:
    out_cls = plan.of(call.outputs[0].space)
    fixed_in = not plan.slims(call.inputs)
    return {
        "fixed_in": fixed_in,
        "fixed_out": not out_cls.slims,
        "divisor": out_cls.divisor if out_cls.slims else opts.divisor,
        "ratio": out_cls.ratio if out_cls.slims else 1,
        "device": "meta",
        **opts.width_kwargs,
    }


def _conv(plan: Plan, call: LayerCall, opts: Options) -> nn.Module:
    m = call.module
    cls = SlimmableConv2d if opts.widths is not None else USConv2d
    kwargs = _layer_kwargs(plan, call, opts)
    depthwise = call.kind == "depthwise"
    if depthwise:
        kwargs["fixed_out"] = False
    new = cls(
        m.in_channels,
        m.out_channels,
        m.kernel_size,
        m.stride,
        m.padding,
        m.dilation,
        1 if depthwise else m.groups,
        m.bias is not None,
        depthwise=depthwise,
        padding_mode=m.padding_mode,
        **kwargs,
    )
    new.weight, new.bias = m.weight, m.bias
    return new


def _linear(plan: Plan, call: LayerCall, opts: Options) -> nn.Module:
    m = call.module
    cls = SlimmableLinear if opts.widths is not None else USLinear
    new = cls(m.in_features, m.out_features, m.bias is not None, **_layer_kwargs(plan, call, opts))
    new.weight, new.bias = m.weight, m.bias
    return new


def _batch_norm(plan: Plan, call: LayerCall, opts: Options) -> nn.Module:
    m = call.module
    if not m.track_running_stats or m.running_mean is None:
        raise ConversionError(
            f"BatchNorm2d {call.name!r} keeps no running statistics; slimmable BNs need them "
            "(track_running_stats=True)"
        )
    if opts.norm == "switchable":
        assert opts.widths is not None
        counts = [plan.layout_count(call.inputs, w) for w in sorted(opts.widths)]
        device, dtype = m.running_mean.device, m.running_mean.dtype
        return SwitchableBatchNorm2d(
            m.num_features,
            opts.widths,
            channels_list=counts,
            eps=m.eps,
            momentum=m.momentum,
            affine=m.affine,
            device=device,
            dtype=dtype,
        )  # filled by load_dense once its layout is attached
    new = USBatchNorm2d(
        m.num_features,
        m.eps,
        m.momentum,
        m.affine,
        device="meta",
        uncalibrated="running" if opts.norm == "shared" else "error",
    )
    if m.affine:
        new.weight, new.bias = m.weight, m.bias
    new.running_mean, new.running_var = m.running_mean, m.running_var
    new.num_batches_tracked = m.num_batches_tracked
    for name in ("calib_keys", "calib_mean", "calib_var", "calib_batches"):
        buf = getattr(new, name)
        setattr(new, name, buf.new_empty(buf.shape, device=m.running_mean.device))
    new.calib_var.fill_(1)
    new.calibrate_full_width_from_running()
    return new


def _layer_norm(plan: Plan, call: LayerCall, opts: Options) -> nn.Module:
    m = call.module
    new = SlimmableLayerNorm(
        m.normalized_shape, m.eps, m.elementwise_affine, m.bias is not None, device="meta"
    )
    new.weight, new.bias = m.weight, m.bias
    return new


def _group_norm(plan: Plan, call: LayerCall, opts: Options) -> nn.Module:
    m = call.module
    new = SlimmableGroupNorm(m.num_groups, m.num_channels, m.eps, m.affine, device="meta")
    new.weight, new.bias = m.weight, m.bias
    return new


BUILDERS = {
    "conv": _conv,
    "grouped": _conv,
    "depthwise": _conv,
    "linear": _linear,
    "bn": _batch_norm,
    "ln": _layer_norm,
    "gn": _group_norm,
}


def _runtime_layout(plan: Plan, layout: Layout, new: dict[str, nn.Module]) -> ChannelLayout:
    segments, offset = [], 0
    for seg in layout:
        cls = plan.of(seg.space)
        producer = new.get(cls.producers[0]) if cls.slims else None
        size = seg.space.size
        segments.append(ChannelSegment(offset, seg.size, producer, size))
        offset += seg.size
    return ChannelLayout(segments)


def needs_conversion(plan: Plan, call: LayerCall) -> bool:
    if call.kind == "bn":
        return True  # its input statistics change with any width upstream
    if call.kind in ("plain", "unsupported", "in"):  # "in": sliced like a parameter's owner
        return False
    return plan.slims(call.inputs) or plan.slims(call.outputs)


def build(model: nn.Module, plan: Plan, opts: Options, swap: Swap) -> dict[str, nn.Module]:
    """Replace the layers the plan slims and give channel-following parameters their slices,
    recording every change in ``swap`` (so that a failure half-way can be undone). Returns the
    converted layers by name."""
    calls: dict[str, LayerCall] = {}
    for call in plan.trace.calls:
        seen = calls.setdefault(call.name, call)
        if [s.size for s in seen.inputs] != [s.size for s in call.inputs]:
            raise ConversionError(
                f"layer {call.name!r} runs twice on differently laid out channels; one slimmable "
                "layer cannot follow both"
            )
    new: dict[str, nn.Module] = {}
    custom: dict[str, LayerCall] = {}
    for name, call in calls.items():
        if not needs_conversion(plan, call):
            continue
        _check_plain(call.module, name)
        if call.custom:  # made slimmable in place, once every layer it follows exists
            custom[name] = call
            new[name] = call.module
            continue
        layer = BUILDERS[call.kind](plan, call, opts)
        layer.train(call.module.training)
        for attr in HOOK_DICTS:
            if hasattr(call.module, attr) and hasattr(layer, attr):
                getattr(layer, attr).update(getattr(call.module, attr))
        new[name] = layer
    for call in custom.values():
        kw = _layer_kwargs(plan, call, opts)
        spec = _spec_layout(plan, call.inputs, new) if plan.slims(call.inputs) else None
        make_sliced_conv(
            call.module,
            make_policy(opts.widths, opts.width_range),
            depthwise=call.kind == "depthwise",
            transposed=call.kind == "convT",
            fixed_in=kw["fixed_in"],
            fixed_out=kw["fixed_out"] and call.kind != "depthwise",
            divisor=kw["divisor"],
            ratio=kw["ratio"],
            input_channels_spec=spec,
        )
        swap.convs.append(call.module)
    for name, layer in new.items():  # layouts point at the converted producers
        call = calls[name]
        if call.custom:
            continue
        if len(call.inputs) > 1 and plan.slims(call.inputs):
            layer.input_layout = _runtime_layout(plan, call.inputs, new)
        if isinstance(layer, SwitchableBatchNorm2d):
            layer.load_dense(call.module)
    modules = dict(model.named_modules(remove_duplicate=False))
    by_id = {id(calls[n].module): layer for n, layer in new.items() if not calls[n].custom}
    for parent in modules.values():
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in by_id:
                swap.replaced.append((parent, key, child))
                parent._modules[key] = by_id[id(child)]
    _slice_parameters(model, plan, new, swap)
    return new


def _slice_parameters(model: nn.Module, plan: Plan, new: dict[str, nn.Module], swap: Swap) -> None:
    specs: dict[str, dict[str, SliceSpec]] = {}
    for use in plan.trace.params:
        if not plan.slims(use.layout):
            continue
        owner, _, attr = use.name.rpartition(".")
        layout = _spec_layout(plan, use.layout, new)
        spec = SliceSpec(use.dim, layout)
        seen = specs.setdefault(owner, {}).setdefault(attr, spec)
        if (seen.dim, seen.size) != (spec.dim, spec.size):
            raise ConversionError(
                f"{use.name} meets channels along two different dims ({use.where}); slice it "
                "yourself or keep it whole with fixed=[...]"
            )
    for use in plan.trace.attrs:
        if plan.slims(use.layout):
            kind = "size" if use.attr == "num_features" else "shape"
            layout = _spec_layout(plan, use.layout, new)
            specs.setdefault(use.module, {})[use.attr] = SliceSpec(-1, layout, kind)
    modules = dict(model.named_modules())
    for owner, attrs in specs.items():
        module = modules[owner]
        if owner in new:
            raise ConversionError(f"{owner!r} is both converted and sliced; please report")
        make_sliced(module, attrs)
        swap.sliced.append(module)


def _spec_layout(
    plan: Plan, layout: Layout, new: dict[str, nn.Module]
) -> ChannelLayout | ChannelSegment:
    if len(layout) == 1:
        seg = layout[0]
        cls = plan.of(seg.space)
        producer = new.get(cls.producers[0]) if cls.slims else None
        return ChannelSegment(0, seg.size, producer, seg.space.size)
    return _runtime_layout(plan, layout, new)


def converted_layers(new: dict[str, nn.Module]) -> Sequence[str]:
    return sorted(new)
