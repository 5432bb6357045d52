"""One ONNX file that holds every width of a slimmable model once and takes the width as an input.

The file has two inputs, ``input`` (the image batch, ``N x C x H x W`` float) and ``width`` (a
float scalar), and two outputs, ``logits`` and ``width_used`` (the width that ran). How it switches:

- **weights once.** Every tensor is stored at full size, once: each convolution's and linear's
  weight, the private BNs of an S-Net's switches, and a US-Net's calibrated BN statistics of the
  held widths stacked into one table per BN (a row per width).
- **a branch per width.** Each held width has its dense sub-network (the graph of
  :func:`slimmable.extract_subnet`, exported by ``torch.onnx``) as a leaf of a balanced tree of
  ``If`` nodes keyed on the width. A branch computes its weights from the shared tensors of the
  main graph: ``Slice`` (after a ``Gather`` for a statistics row), and for a convolution with
  its BN folded in, ``w * gamma / sqrt(var + eps)``. Those nodes read constants only, so
  onnxruntime folds them into the branch's own tensors once, when the session starts; each width
  then runs as fast as its own one-width export (``benchmarks/switchable.py``), the layout
  optimisations (NCHWc, pre-packed weights) applying to every branch.
- **the width picks a branch.** The file runs the widest held width at or below ``width``
  (``width_used`` says which); below the smallest held width it fails, in the node named
  ``width_below_smallest_held_width``. :func:`load_switchable` is stricter: a width the file does
  not hold is a ``ValueError`` naming the held ones. The held widths are in the metadata
  property ``slimmable.widths`` (JSON).

Why not one graph that slices its weights by per-width channel tables? ONNX's ``Conv`` takes its
``group`` as a static attribute, so a depthwise convolution (groups = active channels) cannot
follow a run-time channel count, and onnxruntime pre-packs only constant weights: a weight
sliced at run time is copied on every call and runs on the slower unpacked path (several times
slower: ``benchmarks/switchable.py``'s run-time-sliced column). Zero-padding to full width
instead costs full-width MACs at every width.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .calibrate import calibrated_widths
from .export import (
    _atomic,
    _conv_bn_pairs,
    _dynamic_batch,
    _fold,
    _quiet,
    example_input,
    extract_subnet,
)
from .layers.base import WidthMixin
from .layers.norm import SwitchableBatchNorm2d, USBatchNorm2d, width_key
from .width import set_width, width_choices, width_modules

WIDTH_TOLERANCE = 1e-6
ERROR_NODE = "width_below_smallest_held_width"


# ---- which widths ------------------------------------------------------------------------------
def held_widths(model: nn.Module) -> list[float]:
    """The widths a switchable export of ``model`` holds by default.

    An S-Net's switches; a US-Net's calibrated uniform widths (an uncalibrated US-Net is an
    error that says how to calibrate it).
    """
    choices = width_choices(model)
    if choices is not None:
        return [float(w) for w in choices]
    norms = [m for _, m in width_modules(model) if isinstance(m, USBatchNorm2d)]
    strict = [bn for bn in norms if bn.uncalibrated == "error"]
    widths = calibrated_widths(model) if strict else []
    if strict and not widths:
        raise ValueError(
            "this universally slimmable model has no calibrated widths to export; calibrate "
            "some first: `slimmable calibrate CKPT --widths 0.25,0.5,0.75,1.0`"
        )
    if not widths:  # no strict US BN: the naive baseline runs at any width of its range
        raise ValueError(
            "this model runs at any width of a range and keeps no per-width statistics; give "
            "the widths to export explicitly (export_switchable(..., widths=[...]))"
        )
    return widths


def _check_widths(model: nn.Module, widths: Sequence[float]) -> list[float]:
    out = sorted({round(float(w), 6) for w in widths})
    if not out:
        raise ValueError("a switchable export needs at least one width")
    choices = width_choices(model)
    calibrated = None if choices is not None else set(calibrated_widths(model))
    for w in out:
        with set_width(model, w):  # validates against the model's list or range
            pass
        strict = any(
            bn.uncalibrated == "error"
            for _, bn in width_modules(model)
            if isinstance(bn, USBatchNorm2d)
        )
        if calibrated is not None and strict and not any(abs(w - c) < 1e-9 for c in calibrated):
            raise ValueError(
                f"width {w:g} has no calibrated BN statistics; calibrate it first: "
                f"`slimmable calibrate CKPT --widths {w:g}`"
            )
    return out


# ---- where each dense tensor comes from --------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """A dense tensor as a piece of a shared one: ``shared[row][:shape[0], :shape[1], ...]``."""

    shared: str
    row: int | None
    shape: tuple[int, ...]


class _SharedTensors:
    """The full-size tensors the file stores once, by name, with how each width reads them."""

    def __init__(self, model: nn.Module, widths: Sequence[float]) -> None:
        self.model = model
        self.widths = list(widths)
        self.tensors: dict[str, Tensor] = {}
        self._params = dict(model.named_parameters())
        self._buffers = dict(model.named_buffers())

    def add(self, name: str, tensor: Tensor) -> str:
        if name not in self.tensors:
            self.tensors[name] = tensor.detach().cpu().contiguous()
        return name

    def _stat_table(self, path: str, bn: USBatchNorm2d, stat: str) -> str:
        """``calib_mean`` / ``calib_var`` of ``bn`` with one row per held width, in order."""
        name = f"{path}.{stat}@held"
        if name not in self.tensors:
            table = getattr(bn, stat)
            rows = []
            for w in self.widths:
                slot = bn._slot(width_key(w))
                assert slot is not None, "checked by _check_widths"
                rows.append(table[slot])
            self.add(name, torch.stack(rows))
        return name

    def source(self, dense_name: str, dense: Tensor, width_index: int) -> _Source:
        """Where the dense network's tensor ``dense_name`` comes from at this width."""
        path, _, attr = dense_name.rpartition(".")
        module = self.model.get_submodule(path) if path else self.model
        shape = tuple(dense.shape)
        if isinstance(module, WidthMixin) and attr in ("weight", "bias"):
            return _Source(self.add(dense_name, getattr(module, attr)), None, shape)
        if isinstance(module, SwitchableBatchNorm2d):
            with set_width(self.model, self.widths[width_index]):
                i = module.active_index(shape[0])
            full = f"{path}.bn.{i}.{attr}"
            return _Source(self.add(full, getattr(module.bn[i], attr)), None, shape)
        if isinstance(module, USBatchNorm2d):
            if attr in ("weight", "bias"):
                return _Source(self.add(dense_name, getattr(module, attr)), None, shape)
            if attr in ("running_mean", "running_var"):
                if module._slot(width_key(self.widths[width_index])) is None:  # "running"
                    return _Source(self.add(dense_name, getattr(module, attr)), None, shape)
                stat = "calib_mean" if attr == "running_mean" else "calib_var"
                return _Source(self._stat_table(path, module, stat), width_index, shape)
        if isinstance(module, WidthMixin | SwitchableBatchNorm2d | USBatchNorm2d):
            raise ValueError(f"a switchable export cannot map {dense_name!r} to a shared tensor")
        # a plain torch module of the model: the same tensor at every width
        own = self._params.get(dense_name, self._buffers.get(dense_name))
        if own is None or tuple(own.shape) != shape:
            raise ValueError(
                f"the dense network's {dense_name!r} is no tensor of the slimmable model; a "
                "custom block that creates tensors in forward cannot be shared across widths"
            )
        return _Source(self.add(dense_name, own), None, shape)

    def read(self, src: _Source) -> Tensor:
        t = self.tensors[src.shared]
        if src.row is not None:
            t = t[src.row]
        return t[tuple(slice(0, n) for n in src.shape)]


# ---- the per-width graphs ----------------------------------------------------------------------
def _dense_onnx(net: nn.Module, x: Tensor) -> Any:
    """The ONNX model of a dense network (BN folded already): initializers keep module names."""
    with _quiet("torch.onnx", "torch.export", "onnxscript"):
        program = torch.onnx.export(
            net,
            (x,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=_dynamic_batch(),
            external_data=False,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    if proto.functions:
        raise ValueError("the exported graph uses ONNX functions, which a switchable file lacks")
    return proto


class _Branch:
    """The nodes and constants of one width's branch that read its weights from shared ones.

    Every weight is a ``Slice`` (after a ``Gather`` for a statistics row) of a tensor of the
    main graph, and a folded convolution computes its weight and bias from those: constants
    only, so onnxruntime folds them into the branch's own tensors when the session starts,
    where its layout optimisations (NCHWc, pre-packing) see them. (Slices in the main graph
    fold too, but the branch then reads outer-scope tensors, which those optimisations skip:
    2.6x slower, measured on S-MobileNet v2.)
    """

    def __init__(self, prefix: str, shared: _SharedTensors) -> None:
        self.prefix = prefix
        self.shared = shared
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}/{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self._name(hint)
        self.inits.append(_tensor(name, value))
        return name

    def node(
        self, op: str, inputs: Sequence[str], hint: str, out: str | None = None, **attrs: Any
    ) -> str:
        from onnx import helper

        out = out or self._name(hint)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def read(self, src: _Source, hint: str) -> str:
        """The value ``src`` describes, read from its shared tensor."""
        name = src.shared
        full = tuple(self.shared.tensors[name].shape)
        if src.row is not None:
            row = self.const("row", np.asarray(src.row, dtype=np.int64))
            name = self.node("Gather", [name, row], hint, axis=0)
            full = full[1:]
        if full == src.shape:
            return name
        r = len(src.shape)
        starts = self.const("starts", np.zeros(r, dtype=np.int64))
        ends = self.const("ends", np.asarray(src.shape, dtype=np.int64))
        axes = self.const("axes", np.arange(r, dtype=np.int64))
        return self.node("Slice", [name, starts, ends, axes], hint)

    def fold(
        self,
        weight: str,
        bias: str | None,
        bn: Mapping[str, str],
        eps: float,
        out: tuple[str, str],
    ) -> None:
        """The conv's weight and bias with its BN folded in, as :func:`export.fold_bn` does."""
        eps_c = self.const("eps", np.asarray(eps, dtype=np.float32))
        std = self.node("Sqrt", [self.node("Add", [bn["running_var"], eps_c], "var_eps")], "std")
        scale = self.node("Div", [bn["weight"], std], "scale")
        shape = self.const("shape", np.asarray([-1, 1, 1, 1], dtype=np.int64))
        column = self.node("Reshape", [scale, shape], "scale_column")
        self.node("Mul", [weight, column], "", out=out[0])
        shift = (
            self.node("Sub", [bias, bn["running_mean"]], "shift")
            if bias is not None
            else self.node("Neg", [bn["running_mean"]], "shift")
        )
        scaled = self.node("Mul", [shift, scale], "shift_scaled")
        self.node("Add", [scaled, bn["bias"]], "", out=out[1])


def _folded_value(w: Tensor, b: Tensor | None, bn: Mapping[str, Tensor], eps: float) -> tuple:
    """What :meth:`_Branch.fold` computes, in float32 as onnxruntime will."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + eps)
    shift = (b - bn["running_mean"]) if b is not None else -bn["running_mean"]
    return w * scale.view(-1, 1, 1, 1), shift * scale + bn["bias"]


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= 1e-5 * max(1.0, b.abs().max()))


def _width_branch(model: nn.Module, shared: _SharedTensors, k: int, x: Tensor) -> tuple:
    """``(If branch that runs held width k, its exported ONNX model, bytes it keeps itself)``.

    The branch is the graph ``torch.onnx`` exports for the dense sub-network with BN folded,
    its names prefixed, each weight computed from the shared tensors and checked against what
    the exporter wrote.
    """
    import onnx
    from onnx import numpy_helper

    width = shared.widths[k]
    dense = extract_subnet(model, width, input_size=tuple(x.shape[1:]))
    names = {id(m): n for n, m in dense.named_modules()}
    folded_into = {names[id(c)]: names[id(bn)] for c, bn in _conv_bn_pairs(dense, x)}
    proto = _dense_onnx(_fold(dense, x), x)  # _fold finds the same pairs on its copy
    graph = proto.graph
    prefix = f"b{k}/"
    branch = _Branch(prefix, shared)
    dense_sd = {n: t.detach().cpu() for n, t in dense.state_dict().items()}
    stored = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    used = {n for node in graph.node for n in node.input}

    def source(name: str) -> _Source:
        return shared.source(name, dense_sd[name], k)

    def check(name: str, expect: Tensor, exact: bool) -> None:
        got = stored.get(name)
        ok = got is not None and (torch.equal(got, expect) if exact else _close(got, expect))
        if not ok:
            raise RuntimeError(
                f"the exported {name!r} at width {width:g} is not what its shared tensors "
                "give; please report"
            )

    mapped: set[str] = set()
    for conv, bn in folded_into.items():
        w_name, b_name = f"{conv}.weight", f"{conv}.bias"
        if w_name not in used:
            continue
        srcs = {a: source(f"{bn}.{a}") for a in ("weight", "bias", "running_mean", "running_var")}
        w_src = source(w_name)
        b_src = source(b_name) if b_name in dense_sd else None
        eps = float(dense.get_submodule(bn).eps)
        expect_w, expect_b = _folded_value(
            shared.read(w_src),
            None if b_src is None else shared.read(b_src),
            {a: shared.read(s) for a, s in srcs.items()},
            eps,
        )
        check(w_name, expect_w, exact=False)
        if b_name in used or expect_b.abs().max() > 0:
            check(b_name, expect_b, exact=False)
        branch.fold(
            branch.read(w_src, "w"),
            None if b_src is None else branch.read(b_src, "b"),
            {a: branch.read(s, a) for a, s in srcs.items()},
            eps,
            (prefix + w_name, prefix + b_name),
        )
        mapped |= {w_name, b_name}
    for name in stored:
        if name in mapped or name not in used or name not in dense_sd:
            continue
        src = source(name)
        check(name, shared.read(src), exact=True)
        branch.node("Identity", [branch.read(src, name)], "", out=prefix + name)
        mapped.add(name)

    def rename(n: str) -> str:
        return n if not n or n == "input" else prefix + n

    local_bytes = 0
    for init in graph.initializer:
        if init.name in mapped or init.name not in used:
            continue
        local = onnx.TensorProto()
        local.CopyFrom(init)
        local.name = rename(init.name)
        local_bytes += stored[init.name].numel() * stored[init.name].element_size()
        branch.inits.append(local)
    for i, node in enumerate(graph.node):
        kinds = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        if any(a.type in kinds for a in node.attribute):
            raise ValueError(
                f"the exported graph has control flow ({node.op_type}); a switchable file "
                "covers feed-forward networks"
            )
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = rename(node.name or f"node_{i}")
        del copy.input[:]
        copy.input.extend(rename(n) for n in node.input)
        del copy.output[:]
        copy.output.extend(rename(n) for n in node.output)
        del copy.metadata_props[:]
        branch.nodes.append(copy)
    (out,) = graph.output
    output = onnx.ValueInfoProto()
    output.CopyFrom(out)
    output.name = rename(out.name)
    leaf = onnx.helper.make_graph(branch.nodes, f"width_{width:g}", [], [output], branch.inits)
    return leaf, proto, local_bytes


def _tensor(name: str, value: Tensor | np.ndarray) -> Any:
    from onnx import numpy_helper

    arr = value.numpy() if isinstance(value, Tensor) else value
    return numpy_helper.from_array(np.array(arr, order="C"), name)  # (keeps 0-d arrays 0-d)


# ---- the file ----------------------------------------------------------------------------------
def build_switchable(
    model: nn.Module,
    widths: Sequence[float] | None = None,
    *,
    input_size: int | Sequence[int] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """The switchable ONNX model (an ``onnx.ModelProto``) of ``model`` at ``widths``.

    ``widths`` defaults to :func:`held_widths`. ``input_size`` as for :func:`extract_subnet`.
    ``metadata`` is stored as ``slimmable.*`` properties, with ``widths`` and ``input_size``.
    """
    import onnx
    from onnx import TensorProto, helper

    model = model.eval()
    held = _check_widths(model, held_widths(model) if widths is None else widths)
    x = example_input(model, input_size, batch_size=2)
    shared = _SharedTensors(model, held)
    leaves: list[Any] = []
    local_bytes = 0
    proto = None
    for k in range(len(held)):
        leaf, proto, nbytes = _width_branch(model, shared, k, x)
        leaves.append(leaf)
        local_bytes += nbytes
    assert proto is not None
    opset, ir_version = proto.opset_import, proto.ir_version
    logits_type = proto.graph.output[0].type
    shared_bytes = sum(t.numel() * t.element_size() for t in shared.tensors.values())
    if local_bytes > 0.01 * shared_bytes + 65536:
        raise RuntimeError(
            f"the per-width graphs keep {local_bytes} bytes of constants of their own; a "
            "layer's weights were not traced to the shared tensors (please report)"
        )
    main_nodes: list[Any] = []
    main_inits = [_tensor(n, t.numpy()) for n, t in shared.tensors.items()]

    # width -> leaf: leaf 0 fails (below the smallest held width), leaf k + 1 runs width k
    held_lo = np.asarray([w - WIDTH_TOLERANCE for w in held], dtype=np.float32)
    main_inits += [
        _tensor("held_widths", np.asarray(held, dtype=np.float32)),
        _tensor("held_widths_lo", held_lo),
        _tensor("one", np.asarray(1, dtype=np.int64)),
        _tensor("zero", np.asarray(0, dtype=np.int64)),
        _tensor("last", np.asarray(len(held) - 1, dtype=np.int64)),
    ]
    main_nodes += [
        helper.make_node("LessOrEqual", ["held_widths_lo", "width"], ["at_or_below"]),
        helper.make_node("Cast", ["at_or_below"], ["at_or_below_i"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["at_or_below_i"], ["leaf"], keepdims=0),
        helper.make_node("Sub", ["leaf", "one"], ["index_raw"]),
        helper.make_node("Clip", ["index_raw", "zero", "last"], ["index"]),
        helper.make_node("Gather", ["held_widths", "index"], ["width_used"], axis=0),
    ]
    error_leaf = _error_branch(logits_type)
    logits_out = _if_tree([error_leaf, *leaves], 0, len(held) + 1, main_nodes, main_inits)
    main_nodes.append(helper.make_node("Identity", [logits_out], ["logits"]))

    c, h, wd = (int(v) for v in x.shape[1:])
    graph = helper.make_graph(
        main_nodes,
        "switchable",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c, h, wd]),
            helper.make_tensor_value_info("width", TensorProto.FLOAT, []),
        ],
        [
            helper.make_value_info("logits", logits_type),
            helper.make_tensor_value_info("width_used", TensorProto.FLOAT, []),
        ],
        main_inits,
    )
    graph.output[1].name = "width_used"
    out = helper.make_model(graph, opset_imports=list(opset), producer_name="slimmable")
    out.ir_version = ir_version
    meta = {
        **dict(metadata or {}),
        "format": "switchable",
        "widths": held,
        "input_size": [c, h, wd],
    }
    for key, value in meta.items():
        entry = out.metadata_props.add()
        entry.key = f"slimmable.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(out)
    return out


def _error_branch(logits_type: Any) -> Any:
    """A branch that fails when run: ``Gather`` out of bounds, in a node that says why."""
    from onnx import helper

    classes = logits_type.tensor_type.shape.dim[-1].dim_value or 1
    nodes = [  # the index derives from the width (leaf 0 here), so no one folds it
        helper.make_node("Add", ["leaf", "one"], ["no_width_scalar"]),
        helper.make_node("Unsqueeze", ["no_width_scalar", "no_width_axes"], ["no_width_index"]),
        helper.make_node(
            "Gather", ["no_width_data", "no_width_index"], ["no_width"], name=ERROR_NODE, axis=0
        ),
    ]
    inits = [
        _tensor("no_width_data", np.zeros((1, classes), dtype=np.float32)),
        _tensor("no_width_axes", np.asarray([0], dtype=np.int64)),
    ]
    output = helper.make_value_info("no_width", logits_type)
    return helper.make_graph(nodes, "below_smallest_width", [], [output], inits)


def _if_tree(leaves: list, lo: int, hi: int, nodes: list, inits: list) -> str:
    """Add ``If`` nodes choosing leaf ``leaf`` among ``leaves[lo:hi]``; returns the output name.

    A balanced tree: ``ceil(log2(len))`` ``If`` nodes run per call, whatever the width.
    """
    from onnx import helper

    if hi - lo == 1:
        raise AssertionError("a single leaf is inlined by its parent")
    mid = (lo + hi) // 2
    cond, bound = f"leaf_lt_{mid}", f"leaf_bound_{mid}"
    inits.append(_tensor(bound, np.asarray(mid, dtype=np.int64)))
    nodes.append(helper.make_node("Less", ["leaf", bound], [cond]))
    branches = []
    for a, b in ((lo, mid), (mid, hi)):
        if b - a == 1:
            branches.append(leaves[a])
            continue
        sub_nodes: list = []
        sub_inits: list = []
        out = _if_tree(leaves, a, b, sub_nodes, sub_inits)
        (leaf_out,) = leaves[a].output  # every leaf returns the same type
        value = helper.make_value_info(f"tree_{a}_{b}", leaf_out.type)
        sub_nodes.append(helper.make_node("Identity", [out], [value.name]))
        branches.append(helper.make_graph(sub_nodes, f"tree_{a}_{b}", [], [value], sub_inits))
    out = f"tree_{lo}_{hi}_out"
    nodes.append(
        helper.make_node(
            "If",
            [cond],
            [out],
            name=f"if_{lo}_{hi}",
            then_branch=branches[0],
            else_branch=branches[1],
        )
    )
    return out


def export_switchable(
    model: nn.Module,
    path: str | os.PathLike,
    widths: Sequence[float] | None = None,
    *,
    input_size: int | Sequence[int] | None = None,
    metadata: Mapping[str, Any] | None = None,
    verify: bool = True,
) -> Path:
    """Write the switchable ONNX file of ``model`` (see the module docstring) atomically.

    With ``verify``, the written file is loaded in onnxruntime and compared at every held width
    with ``set_width`` + forward in PyTorch (to 1e-4 times the outputs' magnitude).
    """
    import onnx

    path = Path(path)
    proto = build_switchable(model, widths, input_size=input_size, metadata=metadata)
    _atomic(path, lambda tmp: onnx.save(proto, str(tmp)))
    if verify:
        verify_switchable(model, path)
    return path


def verify_switchable(model: nn.Module, path: str | os.PathLike, batch_size: int = 3) -> float:
    """Largest difference between the file and the model over every held width.

    Raises ``RuntimeError`` when one exceeds 1e-4 times the outputs' magnitude.
    """
    session = load_switchable(path)
    x = example_input(model, session.input_size, batch_size)
    worst = 0.0
    was_training = model.training
    model.eval()
    try:
        for w in session.widths:
            with torch.no_grad(), set_width(model, w):
                ref = model(x)
            got = session(x, w)
            diff = (got - ref).abs().max().item()
            if not diff <= 1e-4 * max(1.0, ref.abs().max().item()):
                raise RuntimeError(
                    f"{path} differs from the model at width {w:g} by {diff:.3g}; please report"
                )
            worst = max(worst, diff)
    finally:
        model.train(was_training)
    return worst


class SwitchableSession:
    """A switchable ONNX file in onnxruntime: ``session(x, width) -> logits``.

    ``widths`` lists the widths the file holds; a width it does not hold is a ``ValueError``
    (the file itself would run the widest held width below it). ``metadata`` holds every
    ``slimmable.*`` property, JSON-decoded.
    """

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, providers: Sequence[str] = ()
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.path), options, providers=list(providers) or ["CPUExecutionProvider"]
        )
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, Any] = {}
        for key, value in props.items():
            if key.startswith("slimmable."):
                try:
                    self.metadata[key[len("slimmable.") :]] = json.loads(value)
                except json.JSONDecodeError:
                    self.metadata[key[len("slimmable.") :]] = value
        if self.metadata.get("format") != "switchable":
            raise ValueError(
                f"{self.path} is not a switchable export (no slimmable.format=switchable "
                "metadata); write one with `slimmable export CKPT --all-widths --out FILE.onnx`"
            )
        self.widths: list[float] = [float(w) for w in self.metadata["widths"]]
        self.input_size: tuple[int, ...] = tuple(int(v) for v in self.metadata["input_size"])

    def check_width(self, width: float) -> float:
        """The held width equal to ``width`` (within 1e-6), else a ``ValueError`` naming them."""
        for w in self.widths:
            if abs(w - float(width)) <= WIDTH_TOLERANCE:
                return w
        held = ", ".join(f"{w:g}" for w in self.widths)
        raise ValueError(
            f"width {float(width):g} is not held by {self.path.name} (it holds {held}); "
            "pick one of them, or export the checkpoint again after calibrating that width"
        )

    def run(self, x: np.ndarray, width: float) -> tuple[np.ndarray, float]:
        """``(logits, width that ran)`` for a float32 ``N x C x H x W`` array."""
        w = self.check_width(width)
        logits, used = self.session.run(
            None,
            {
                "input": np.ascontiguousarray(x, dtype=np.float32),
                "width": np.asarray(w, dtype=np.float32),
            },
        )
        return logits, float(used)

    def __call__(self, x: Tensor, width: float) -> Tensor:
        logits, _ = self.run(x.detach().cpu().numpy(), width)
        return torch.from_numpy(logits)


def load_switchable(path: str | os.PathLike, threads: int | None = None) -> SwitchableSession:
    """Open a switchable ONNX file in onnxruntime (see :class:`SwitchableSession`)."""
    return SwitchableSession(path, threads)


def is_switchable(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ONNX file written by :func:`export_switchable`."""
    path = Path(path)
    if path.suffix != ".onnx" or not path.is_file():
        return False
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return any(
        p.key == "slimmable.format" and p.value == "switchable" for p in proto.metadata_props
    )


__all__ = [
    "SwitchableSession",
    "build_switchable",
    "export_switchable",
    "held_widths",
    "is_switchable",
    "load_switchable",
    "verify_switchable",
]
