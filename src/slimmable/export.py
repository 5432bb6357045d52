"""Deployment: a slimmable model at one width, as a stand-alone dense network, and its files.

:func:`extract_subnet` materialises the sub-network a slimmable model runs at one width (uniform or
a per-layer map) as plain torch layers (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear``) holding
copies of exactly the channels that run, with the BN statistics of that width. Nothing slices at
run time. :func:`fold_bn` folds batch norm into the convolution before it. :func:`export_subnet`
writes the result as a file that loads without this package: ``torch.export``'s program
(``pt``), TorchScript or ONNX, each written atomically.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import secrets
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .layers.base import WidthMixin
from .layers.norm import (
    SlimmableGroupNorm,
    SlimmableLayerNorm,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    describe_key,
)
from .layers.sliced import is_sliced, materialize_sliced
from .width import Width, network_key, set_width, width_modules

FORMATS = ("pt", "torchscript", "onnx")
SUFFIXES = {"pt": ".pt2", "torchscript": ".ts", "onnx": ".onnx"}
DEFAULT_IMAGE_SIZE = 224
_SLIMMABLE_LAYER_TYPES = (
    WidthMixin,
    SwitchableBatchNorm2d,
    USBatchNorm2d,
    SlimmableLayerNorm,
    SlimmableGroupNorm,
)


# ---- inputs ------------------------------------------------------------------------------------
def input_channels(model: nn.Module) -> int:
    """Image channels ``model`` takes: the input channels of its first convolution."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError(
        f"{type(model).__name__} has no Conv2d to read its input channels from; "
        "give input_size=(channels, height, width)"
    )


def input_shape(
    model: nn.Module, input_size: int | Sequence[int] | None, batch_size: int = 1
) -> tuple[int, ...]:
    """``(batch, C, H, W)`` from ``input_size``: ``S``, ``(H, W)`` or ``(C, H, W)``.

    ``None`` takes the model's ``default_cfg["input_size"]`` (the zoo's models carry one), else
    224x224; channels not given are read from the model's first convolution.
    """
    if input_size is None:
        input_size = getattr(model, "default_cfg", {}).get("input_size") or DEFAULT_IMAGE_SIZE
    size = (int(input_size),) * 2 if isinstance(input_size, int) else tuple(map(int, input_size))
    if len(size) == 2:
        size = (input_channels(model), *size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(
            f"input_size must be S, (H, W) or (C, H, W) with positive sizes, got {input_size!r}"
        )
    return (int(batch_size), *size)


def example_input(
    model: nn.Module, input_size: int | Sequence[int] | None, batch_size: int = 1
) -> Tensor:
    """A deterministic random input of that size, on the model's device and float dtype."""
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(input_shape(model, input_size, batch_size), generator=gen)
    return x.to(device=device, dtype=dtype)


def output_tensors(out: Any) -> Iterator[Tensor]:
    """Every tensor in a model's output, in order: tensors, sequences, mappings, dataclasses
    and other plain objects (e.g. a library's ``ModelOutput``)."""
    if isinstance(out, Tensor):
        yield out
    elif isinstance(out, Mapping):
        for v in out.values():
            yield from output_tensors(v)
    elif isinstance(out, list | tuple):
        for v in out:
            yield from output_tensors(v)
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        for f in dataclasses.fields(out):
            yield from output_tensors(getattr(out, f.name))
    elif hasattr(out, "__dict__") and not isinstance(out, nn.Module | type):
        for v in vars(out).values():
            yield from output_tensors(v)


_tensors = output_tensors


def max_difference(a: Any, b: Any) -> tuple[float, float]:
    """``(largest absolute difference, largest magnitude)`` over two outputs of one structure
    (``inf`` when their tensors differ in number or shape, or integer tensors differ)."""
    ta, tb = list(output_tensors(a)), list(output_tensors(b))
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb, strict=True)):
        return math.inf, 0.0
    diff, scale = 0.0, 0.0
    for x, y in zip(ta, tb, strict=True):
        if not x.numel():
            continue
        if x.is_floating_point():
            diff = max(diff, (x.double() - y.double()).abs().max().item())
            scale = max(scale, y.double().abs().max().item())
        elif not torch.equal(x, y):
            diff = math.inf
    return diff, scale


# ---- extraction --------------------------------------------------------------------------------
def check_calibrated(model: nn.Module, width: Width) -> None:
    """Raise ``RuntimeError`` (saying how to calibrate) if a US BN layer lacks stats for ``width``.

    Layers set to ``uncalibrated="running"`` (the naive shared-BN baseline) are fine.
    """
    norms = [m for _, m in width_modules(model) if isinstance(m, USBatchNorm2d)]
    strict = [bn for bn in norms if bn.uncalibrated == "error"]
    if not strict:
        return
    key = network_key(model, width)
    if all(key in bn.calibrated_keys() for bn in strict):
        return
    done = sorted(set.intersection(*(set(bn.calibrated_keys()) for bn in strict)))
    shown = ", ".join(describe_key(k) for k in done) or "none"
    uniform = not isinstance(width, Mapping)
    what = f"width {float(width):g}" if uniform else "this nonuniform width map"
    hint = f"--widths {float(width):g}" if uniform else "--widths MAP.json"
    raise RuntimeError(
        f"{what} has no calibrated BN statistics (calibrated: {shown}); calibrate it "
        f"first: slimmable.calibrate(model, batches, widths=[...]) or "
        f"`slimmable calibrate CKPT {hint}`"
    )


def _record_input_channels(model: nn.Module, x: Tensor) -> tuple[dict[int, int], Any]:
    """Run ``model`` once; return ``{id(layer): input channels}`` of every slimmable layer."""
    seen: dict[int, int] = {}
    names: dict[int, str] = {}

    def hook(module: nn.Module, args: tuple) -> None:
        c = int(module.input_channels(args[0]))
        if seen.setdefault(id(module), c) != c:
            raise ValueError(
                f"layer {names[id(module)]!r} runs twice with different input channels "
                f"({seen[id(module)]} and {c}); one dense layer cannot stand for both"
            )

    handles = []
    for name, m in model.named_modules():
        if isinstance(m, _SLIMMABLE_LAYER_TYPES):
            names[id(m)] = name
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return seen, out


def _copy_sharing_slimmable_tensors(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose slimmable layers share (not copy) their tensors.

    Those layers are replaced by dense copies of their active slices right after, so copying
    their full weights first would only cost time and memory; everything else is copied.
    """
    memo: dict[int, Any] = {}
    for m in model.modules():
        if isinstance(m, _SLIMMABLE_LAYER_TYPES):
            for t in (*m.parameters(), *m.buffers()):
                memo[id(t)] = t
    return copy.deepcopy(model, memo)


def _replace_modules(root: nn.Module, replacements: Mapping[int, nn.Module]) -> None:
    """Swap every child whose ``id`` is in ``replacements`` (shared children stay shared)."""
    for parent in list(root.modules()):
        for key, child in parent._modules.items():
            if child is not None and id(child) in replacements:
                parent._modules[key] = replacements[id(child)]


def slimmable_leftovers(model: nn.Module) -> list[str]:
    """Names of submodules whose class comes from ``slimmable.layers`` (should be none)."""
    return [
        name or type(model).__name__
        for name, m in model.named_modules()
        if type(m).__module__.startswith("slimmable.layers")
    ]


def extract_subnet(
    model: nn.Module,
    width: Width,
    fold_bn: bool = False,
    *,
    input_size: int | Sequence[int] | None = None,
    atol: float = 1e-5,
) -> nn.Module:
    """The sub-network ``model`` runs at ``width``, as a stand-alone dense model in eval mode.

    ``width`` is a float or a per-layer map (as for :func:`slimmable.set_width`). Every slimmable
    layer becomes torch's own (``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.Linear``) with copies of
    the channels that run and the BN statistics of that width (calibrated ones for US-Nets: an
    uncalibrated width is an error); other modules (activations, custom blocks) are deep copies.
    ``fold_bn`` folds each BN into the convolution before it (:func:`fold_bn`).

    Input channels are recorded in one forward pass on a random input of ``input_size`` (see
    :func:`input_shape`: by default the model's own; any size it accepts gives the same
    channels); the extracted network is then checked against the slimmable model on that input,
    in float32 to within ``atol`` (times the output's magnitude when it exceeds 1). ``model``
    is not changed.
    """
    check_calibrated(model, width)
    net = _copy_sharing_slimmable_tensors(model).eval()
    set_width(net, width)
    x = example_input(net, input_size)
    channels, reference = _record_input_channels(net, x)
    for m in net.modules():  # a user module's own parameters that follow the channels
        if is_sliced(m):
            materialize_sliced(m)
    replacements: dict[int, nn.Module] = {}
    for name, m in net.named_modules():
        if not isinstance(m, _SLIMMABLE_LAYER_TYPES) or id(m) in replacements:
            continue
        if id(m) not in channels:
            raise ValueError(
                f"layer {name!r} did not run in the forward pass at this width, so its input "
                "channels are unknown; extract_subnet materialises the layers that run"
            )
        replacements[id(m)] = m.to_dense(channels[id(m)])
    _replace_modules(net, replacements)
    net.eval()
    left = slimmable_leftovers(net)
    if left:
        raise RuntimeError(
            f"extracted network still holds slimmable layers ({', '.join(left[:3])}); they are "
            "not reachable as child modules (kept in a plain list?): register them as modules"
        )
    with torch.no_grad():
        diff, scale = max_difference(net(x), reference)
    if not diff <= atol * max(1.0, scale):
        raise RuntimeError(
            f"the extracted network differs from the slimmable model by {diff:.3g}; a custom "
            "block's forward depends on slimmable layer state (e.g. reads .width), which a "
            "dense network cannot reproduce"
        )
    return _fold(net, x) if fold_bn else net


# ---- batch-norm folding ------------------------------------------------------------------------
def _conv_bn_pairs(model: nn.Module, x: Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """``(conv, bn)`` pairs where the BN reads the conv's output and nothing else reads it.

    Found from one forward pass: the BN's input must be the very tensor the conv returned,
    unmodified (no in-place op between), and the conv's autograd node must have exactly one
    consumer in the graph of the output (the BN), so folding changes no other reader.
    """
    conv_calls: dict[int, list] = {}
    bn_inputs: dict[int, list] = {}
    convs: dict[int, nn.Conv2d] = {}
    bns: dict[int, nn.BatchNorm2d] = {}

    def conv_hook(module: nn.Module, args: tuple, out: Any) -> None:
        conv_calls.setdefault(id(module), []).append((out, out._version))

    def bn_hook(module: nn.Module, args: tuple) -> None:
        bn_inputs.setdefault(id(module), []).append((args[0], args[0]._version))

    handles = []
    for m in model.modules():
        if type(m) is nn.Conv2d:
            convs[id(m)] = m
            handles.append(m.register_forward_hook(conv_hook))
        elif type(m) is nn.BatchNorm2d and m.running_mean is not None:
            bns[id(m)] = m
            handles.append(m.register_forward_pre_hook(bn_hook))
    try:
        with torch.enable_grad():
            out = model(x.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()

    consumers: dict[Any, int] = {}
    stack = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
    visited = set()
    while stack:
        node = stack.pop()
        if node in visited:
            continue
        visited.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                consumers[nxt] = consumers.get(nxt, 0) + 1
                stack.append(nxt)

    producer = {
        id(calls[0][0]): (cid, calls[0]) for cid, calls in conv_calls.items() if len(calls) == 1
    }
    pairs = []
    for bid, calls in bn_inputs.items():
        if len(calls) != 1:
            continue
        inp, version = calls[0]
        hit = producer.get(id(inp))
        if hit is None:
            continue
        cid, (conv_out, conv_version) = hit
        conv, bn = convs[cid], bns[bid]
        if (
            conv_out is inp
            and version == conv_version
            and conv_out.grad_fn is not None
            and consumers.get(conv_out.grad_fn, 0) == 1
            and conv.out_channels == bn.num_features
        ):
            pairs.append((conv, bn))
    return pairs


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``conv`` followed by ``bn`` (eval mode) as one convolution, computed in float64."""
    assert bn.running_mean is not None and bn.running_var is not None
    w = conv.weight.detach().double()
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        True,
        conv.padding_mode,
        device="meta",
    )
    dtype = conv.weight.dtype
    folded.weight = nn.Parameter(
        (w * scale.view(-1, 1, 1, 1)).to(dtype), requires_grad=conv.weight.requires_grad
    )
    folded.bias = nn.Parameter(((b - mean) * scale + beta).to(dtype))
    return folded


def fold_bn(model: nn.Module, example_input: Tensor) -> nn.Module:
    """A copy of a plain torch ``model`` (eval mode) with each BN folded into its convolution.

    Every ``nn.BatchNorm2d`` whose input is the output of an ``nn.Conv2d`` that nothing else
    reads (found by running ``example_input`` through the model) is folded into that convolution
    (which gains a bias) and replaced by ``nn.Identity``; other BNs stay. The folded copy is
    checked against ``model`` on ``example_input``.
    """
    return _fold(model, example_input)


def _fold(model: nn.Module, example: Tensor) -> nn.Module:
    net = copy.deepcopy(model).eval()
    with torch.no_grad():
        reference = net(example)
    pairs = _conv_bn_pairs(net, example)
    replacements: dict[int, nn.Module] = {}
    for conv, bn in pairs:
        replacements[id(conv)] = _folded_conv(conv, bn)
        replacements[id(bn)] = nn.Identity()
    _replace_modules(net, replacements)
    with torch.no_grad():
        diff, scale = max_difference(net(example), reference)
    if not diff <= 1e-3 * max(1.0, scale):
        raise RuntimeError(f"folding batch norm changed the outputs by {diff:.3g}; please report")
    return net


# ---- files -------------------------------------------------------------------------------------
def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it into place.

    The temporary file keeps ``path``'s suffix (torch.export insists on ``.pt2``) and is created
    by the writer, so the result gets the usual permissions.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Silence warnings and the named loggers below ERROR (exporters are chatty)."""
    previous = [(log, log.level) for log in map(logging.getLogger, loggers)]
    try:
        for log, _ in previous:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in previous:
            log.setLevel(level)


def _dynamic_batch() -> tuple[dict[int, Any], ...]:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def export_subnet(
    net: nn.Module,
    path: str | os.PathLike,
    format: str = "pt",
    *,
    input_size: int | Sequence[int] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write the dense network ``net`` (from :func:`extract_subnet`) to ``path``, atomically.

    - ``pt``: a ``torch.export`` program (``torch.export.save``); load it with
      ``torch.export.load(path).module()``;
    - ``torchscript``: ``torch.jit.trace`` of ``net``; load with ``torch.jit.load(path)``;
    - ``onnx``: an ONNX model (input ``input``, output ``logits``), for onnxruntime & co.

    A network whose output is a dataclass, dict or list exports the tuple of its tensors (in
    field / key order; ONNX outputs ``output0``, ``output1``, ...).

    The batch size stays free; the image size is fixed to ``input_size``. ``metadata`` (e.g.
    the width) is stored in the file: ``slimmable.json`` extra file (``pt``, TorchScript) or
    ONNX ``metadata_props``. None of the formats needs this package to load.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    path = Path(path)
    if format == "pt" and path.suffix != ".pt2":
        raise ValueError(
            f"format pt writes a torch.export archive, which torch.export.load reads only from "
            f"a .pt2 file; name it {path.with_suffix('.pt2').name}"
        )
    left = slimmable_leftovers(net)
    if left:
        raise ValueError(
            f"{left[0]} is a slimmable layer; export the dense network from extract_subnet"
        )
    was_training = net.training
    try:
        return _export(net.eval(), path, format, input_size, metadata)
    finally:
        net.train(was_training)


def _export(
    net: nn.Module,
    path: Path,
    format: str,
    input_size: int | Sequence[int] | None,
    metadata: Mapping[str, Any] | None,
) -> Path:
    x = example_input(net, input_size, batch_size=2)  # batch 2: a size-1 dim would specialise
    with torch.no_grad():
        if not isinstance(net(x), Tensor):  # a dataclass, dict or list: its tensors, in order
            net = _TensorOutputs(net)
    meta = json.dumps(dict(metadata or {}), sort_keys=True)
    if format == "pt":
        with _quiet("torch.export"):
            program = torch.export.export(net, (x,), dynamic_shapes=_dynamic_batch())

        def write(tmp: Path) -> None:
            torch.export.save(program, tmp, extra_files={"slimmable.json": meta})

    elif format == "torchscript":
        with torch.no_grad(), _quiet("torch.jit"):  # torch.jit's deprecation notice
            traced = torch.jit.trace(net, x)

        def write(tmp: Path) -> None:
            with _quiet("torch.jit"):
                torch.jit.save(traced, str(tmp), _extra_files={"slimmable.json": meta})

    else:

        def write(tmp: Path) -> None:
            _write_onnx(net, x, tmp, dict(metadata or {}))

    return _atomic(path, write)


class _TensorOutputs(nn.Module):
    """``net`` with its outputs (a dataclass, a dict, a list) flattened to a tuple of tensors,
    in the order :func:`_tensors` walks them: what an exported file can return."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(_tensors(self.net(x)))


def _write_onnx(net: nn.Module, x: Tensor, tmp: Path, metadata: Mapping[str, Any]) -> None:
    import onnx  # optional dependency: pip install slimmable[onnx]

    with torch.no_grad():
        n = len(list(_tensors(net(x))))
    with _quiet("torch.onnx", "torch.export", "onnxscript"):
        program = torch.onnx.export(
            net,
            (x,),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"] if n == 1 else [f"output{i}" for i in range(n)],
            dynamic_shapes=_dynamic_batch(),
            external_data=False,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = f"slimmable.{key}"
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(tmp))


def load_exported(path: str | os.PathLike, format: str | None = None) -> Callable[[Tensor], Any]:
    """Load an exported file back as a callable (for checks; users need only torch/onnxruntime)."""
    path = Path(path)
    format = format or next((f for f, s in SUFFIXES.items() if path.suffix == s), None)
    if format == "pt":
        return torch.export.load(path).module()
    if format == "torchscript":
        with _quiet("torch.jit"):
            return torch.jit.load(str(path))
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(x: Tensor) -> Tensor | tuple[Tensor, ...]:
            ys = [
                torch.from_numpy(y) for y in session.run(None, {"input": x.detach().cpu().numpy()})
            ]
            return ys[0] if len(ys) == 1 else tuple(ys)

        return run
    raise ValueError(f"cannot tell the format of {path}; give format= one of {FORMATS}")
