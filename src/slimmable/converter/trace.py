"""One real forward pass, recorded op by op, with the channel dimension of every tensor followed.

The model runs once on the example inputs (eval mode, no gradients) under a
``TorchDispatchMode``: every ATen op that actually runs is seen, whatever Python control flow,
shape checks or output types the model's code has. Torch's own layers (``nn.Conv2d``,
``nn.Linear``, the norms) are recorded as one step each, through module hooks; every other op
goes through a rule (:mod:`.rules`) that says where the channel dimension of its output is and
which channel spaces it ties. What no rule covers is recorded as a *hazard*: an error, unless
every channel it touches turns out fixed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..export import output_tensors as outputs_of
from .spaces import Layout, Seg, Space


@dataclass
class Info:
    """What the converter knows about one tensor.

    ``dim``/``layout``: the dimension that holds channels and what they are made of (``None``:
    no channel dimension). ``split``: a dimension that indexes equal groups of the channels
    (``view(N, g, C // g, ...)``), ``(dim, parts)`` with the segments it indexes, or ``()``
    when it cut one segment. ``origins``: for tensors derived from parameters or buffers that
    are not a torch layer's, which ``(qualified name, dim)`` each dimension comes from.
    """

    dim: int | None = None
    layout: Layout = ()
    split: tuple[int, Layout] | None = None
    origins: tuple[frozenset, ...] | None = None

    @property
    def tracked(self) -> bool:
        return self.dim is not None


UNTRACKED = Info()


@dataclass
class LayerCall:
    """One call of a torch layer: its input's and output's channel layouts."""

    name: str
    module: nn.Module
    kind: str  # "conv", "depthwise", "grouped", "linear", "bn", "ln", "gn", "plain", "unsupported"
    inputs: Layout
    outputs: Layout
    input_tracked: bool = True
    custom: bool = False  # a Conv2d subclass with its own forward (sliced in place)


@dataclass
class ParamUse:
    """A parameter or buffer (not a torch layer's) whose ``dim`` follows a channel layout."""

    name: str  # qualified name in the model
    dim: int
    layout: Layout
    where: str


@dataclass
class AttrUse:
    """A module attribute (``normalized_shape``) that must follow the active channels."""

    module: str
    attr: str
    layout: Layout


@dataclass
class Hazard:
    """An op that is only valid while these spaces stay whole."""

    message: str  # "<op> in module 'a.b' (Class) <what>"
    spaces: list[Space]


@dataclass
class Trace:
    model: nn.Module
    spaces: list[Space] = field(default_factory=list)
    calls: list[LayerCall] = field(default_factory=list)
    params: list[ParamUse] = field(default_factory=list)
    attrs: list[AttrUse] = field(default_factory=list)
    hazards: list[Hazard] = field(default_factory=list)
    outputs: list[Info] = field(default_factory=list)
    # every module call, in order: (name, [(output shape, info), ...])
    module_outputs: list[tuple[str, list[tuple[tuple[int, ...], Info]]]] = field(
        default_factory=list
    )
    result: Any = None


# Torch layers recorded as one step. Other layer types that hold channel weights are refused
# (a hazard) unless the channels they touch stay whole.
SUPPORTED = {
    nn.Conv2d: "conv",
    nn.ConvTranspose2d: "convT",
    nn.Linear: "linear",
    nn.BatchNorm2d: "bn",
    nn.LayerNorm: "ln",
    nn.GroupNorm: "gn",
    nn.InstanceNorm2d: "in",
}
UNSUPPORTED = (
    nn.Conv1d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose3d,
    nn.BatchNorm1d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.Bilinear,
)


def layer_kind(module: nn.Module) -> str | None:
    """``SUPPORTED``'s kind when ``module`` runs a torch layer's own forward, ``"unsupported"``
    for other torch layers with channel weights, ``None`` for modules traced op by op."""
    for cls, kind in SUPPORTED.items():
        if isinstance(module, cls) and type(module).forward is cls.forward:
            return kind
    if isinstance(module, UNSUPPORTED) and not isinstance(module, LazyModuleMixin):
        return "unsupported"
    return None


def op_name(func: Any) -> str:
    return str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)


class Recorder(TorchDispatchMode):
    """Records one forward pass of ``model`` into a :class:`Trace`."""

    def __init__(self, model: nn.Module, rules: dict[str, Callable], layer_rule: Callable) -> None:
        super().__init__()
        self.trace = Trace(model)
        self.rules = rules
        self.layer_rule = layer_rule
        self.infos: dict[int, tuple[weakref.ref, Info]] = {}
        self.names: dict[int, str] = {}
        for n, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), n)
        self.owned: dict[int, str] = {}  # id(parameter or buffer) -> qualified name
        for name, p in model.named_parameters(remove_duplicate=False):
            self.owned.setdefault(id(p), name)
        for name, b in model.named_buffers(remove_duplicate=False):
            self.owned.setdefault(id(b), name)
        self.stack: list[nn.Module] = []
        self.quiet = 0  # inside a torch layer: its ops are its own
        self.layer_spaces: dict[int, Space] = {}

    # ---- tensor information ----------------------------------------------------------------
    def info(self, t: Tensor) -> Info:
        hit = self.infos.get(id(t))
        if hit is not None and hit[0]() is t:
            return hit[1]
        name = self.owned.get(id(t))
        if name is not None:  # a parameter or buffer used outside a torch layer
            return Info(origins=tuple(frozenset({(name, d)}) for d in range(t.dim())))
        return UNTRACKED

    def set_info(self, t: Tensor, info: Info) -> None:
        if id(t) in self.owned:
            return
        key = id(t)
        self.infos[key] = (weakref.ref(t, lambda _, k=key: self.infos.pop(k, None)), info)

    def new_space(self, size: int, origin: str, *, fixed: str | None = None) -> Space:
        space = Space(size, origin)
        if fixed is not None:
            space.fixed.append(fixed)
        self.trace.spaces.append(space)
        return space

    def fixed_layout(self, size: int, origin: str, why: str) -> Layout:
        return (Seg(self.new_space(size, origin, fixed=why), size),)

    # ---- where we are ----------------------------------------------------------------------
    def where(self) -> str:
        if not self.stack:
            return "the model's forward"
        m = self.stack[-1]
        name = self.names.get(id(m), "?")
        return (
            f"module {name!r} ({type(m).__name__})"
            if name
            else f"the forward of {type(m).__name__}"
        )

    def module_name(self) -> str:
        return self.names.get(id(self.stack[-1]), "") if self.stack else ""

    def hazard(
        self, what: str, infos: list[Info], op: str, *, layer: nn.Module | None = None
    ) -> None:
        """``op`` (in the current module, or the torch ``layer`` itself) ``what``: an error
        unless every channel space of ``infos`` turns out fixed."""
        spaces = [seg.space for i in infos if i.tracked for seg in i.layout]
        if not spaces:
            return
        if layer is not None:
            message = f"{type(layer).__name__} {self.names.get(id(layer), '')!r} {what}"
        else:
            message = f"{op} in {self.where()} {what}"
        self.trace.hazards.append(Hazard(message, spaces))

    # ---- the dispatch hook -----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.quiet:
            return out
        name = op_name(func)
        rule = self.rules.get(name.rstrip("_")) or self.rules.get(name)
        if rule is None:
            rule = self.rules["<unknown>"]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        infos = rule(self, name, args, kwargs, out)
        for t, info in zip(outs, infos, strict=False):
            self.set_info(t, info)
        return out

    # ---- module hooks ----------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.stack.append(module)
        if layer_kind(module) is not None:
            self.quiet += 1

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        kind = layer_kind(module)
        if kind is not None:
            self.quiet -= 1
            x = args[0] if args else next(iter(kwargs.values()))
            if isinstance(out, Tensor) and isinstance(x, Tensor):
                self.set_info(out, self.layer_rule(self, module, kind, x, out))
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]
        shapes = [(tuple(t.shape), self.info(t)) for t in outs]
        self.trace.module_outputs.append((self.names.get(id(module), ""), shapes))
        self.stack.pop()


def record(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    rules: dict[str, Callable],
    layer_rule: Callable,
) -> Trace:
    """Run ``model(*inputs)`` once in eval mode without gradients and record it."""
    rec = Recorder(model, rules, layer_rule)
    for i, x in enumerate(inputs):
        if x.dim() >= 2:
            layout = rec.fixed_layout(x.shape[1], f"input {i}", f"input {i} of the model")
            rec.set_info(x, Info(dim=1, layout=layout))
    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
        handles.append(m.register_forward_hook(rec.post_hook, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), rec:
            result = model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    trace = rec.trace
    trace.result = result
    for t in outputs_of(result):
        info = rec.info(t)
        trace.outputs.append(info)
        for seg in info.layout:
            seg.space.fixed.append("it reaches the model's output")
    return trace
