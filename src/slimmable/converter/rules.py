"""What each op does to channels: where its output's channel dimension is, and what it ties.

A rule takes the recorder, the ATen op's name and arguments and its result, and returns the
:class:`~.trace.Info` of each output tensor. Rules are grouped by kind (elementwise, shape, cat
and split, reductions, spatial ops, matrix products, norms written out in custom code, factory
ops); :data:`RULES` maps op names to them. An op touching a channel dimension that no rule
covers becomes a hazard, so a model the converter does not understand fails loudly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from .spaces import Layout, Seg, layout_size, require_multiple, union
from .trace import UNTRACKED, AttrUse, Info, LayerCall, ParamUse, Recorder

Rule = Callable[[Recorder, str, tuple, dict, Any], list[Info]]


# ---- helpers -----------------------------------------------------------------------------------
def _tensors(args: Any, kwargs: dict | None = None) -> list[Tensor]:
    flat = tree_flatten((args, kwargs or {}))[0]
    return [t for t in flat if isinstance(t, Tensor)]


def _outs(out: Any) -> list[Tensor]:
    return [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _same(info: Info, n: int) -> list[Info]:
    return [info] * n


def tie(rec: Recorder, a: Layout, b: Layout, op: str) -> bool:
    """Tie two layouts that must have equal active channels; ``False`` if they cannot be."""
    if len(a) == len(b) and all(x.size == y.size for x, y in zip(a, b, strict=True)):
        for x, y in zip(a, b, strict=True):
            union(x.space, y.space, f"{op} in {rec.where()}")
        return True
    return False


def _use_params(rec: Recorder, info: Info, dim: int, layout: Layout) -> None:
    """Parameters whose ``dim`` meets a channel dimension slice with it."""
    if info.origins is None or dim >= len(info.origins):
        return
    for name, pdim in info.origins[dim]:
        rec.trace.params.append(ParamUse(name, pdim, layout, rec.where()))


def _with_dim(info: Info, dim: int, split_dim: int | None = None) -> Info:
    split = None
    if info.split is not None and split_dim is not None:
        split = (split_dim, info.split[1])
    return Info(dim=dim, layout=info.layout, split=split)


def _map_dims(info: Info, mapping: dict[int, int], ndim_out: int) -> Info:
    """``info`` for an output whose input dim ``i`` became ``mapping[i]`` (absent: gone)."""
    if info.tracked:
        if info.dim not in mapping:
            return UNTRACKED
        split_dim = None if info.split is None else mapping.get(info.split[0])
        return _with_dim(info, mapping[info.dim], split_dim)
    if info.origins is not None:
        origins = [frozenset()] * ndim_out
        for i, o in mapping.items():
            if i < len(info.origins):
                origins[o] = info.origins[i]
        return Info(origins=tuple(origins))
    return UNTRACKED


# ---- elementwise -------------------------------------------------------------------------------
def elementwise(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Broadcasting ops: the tensors' channel dimensions line up (tied); parameters that meet a
    channel dimension slice with it (layer scale, a squeeze-excitation built from parameters)."""
    outs = _outs(out)
    if not outs:
        return []
    nd = outs[0].dim()
    ins = [(t, rec.info(t)) for t in _tensors(args, kwargs)]
    tracked = [(t, i) for t, i in ins if i.tracked]
    if not tracked:
        origins: list[frozenset] = [frozenset()] * nd
        any_origin = False
        for t, i in ins:
            if i.origins is None:
                continue
            for d in range(t.dim()):
                o = nd - t.dim() + d
                if t.shape[d] != 1 and 0 <= o < nd:
                    origins[o] = origins[o] | i.origins[d]
                    any_origin = True
        return _same(Info(origins=tuple(origins)) if any_origin else UNTRACKED, len(outs))
    aligned = {nd - (t.dim() - i.dim) for t, i in tracked}  # type: ignore[operator]
    first_t, base = tracked[0]
    if len(aligned) > 1:
        rec.hazard("combines tensors whose channels lie on different dimensions", [base], name)
        return _same(UNTRACKED, len(outs))
    d = aligned.pop()
    for t, i in tracked[1:]:
        if t.shape[i.dim] == 1 or first_t.shape[base.dim] == 1:  # type: ignore[index]
            continue
        if not tie(rec, base.layout, i.layout, name):
            rec.hazard("adds or multiplies differently concatenated channels", [base, i], name)
    for t, i in ins:
        if i.tracked:
            continue
        a = t.dim() - (nd - d)
        if 0 <= a < t.dim() and t.shape[a] != 1:
            _use_params(rec, i, a, base.layout)
    split_dim = None
    if base.split is not None:
        split_dim = nd - (first_t.dim() - base.split[0])
    return _same(_with_dim(base, d, split_dim), len(outs))


def like(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Ops whose output is shaped like their first tensor argument (``zeros_like``, ...)."""
    ts = _tensors(args, kwargs)
    return _same(rec.info(ts[0]) if ts else UNTRACKED, len(_outs(out)))


def fresh(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Tensors made from sizes: no channel dimension of the model's."""
    return _same(UNTRACKED, len(_outs(out)))


def unknown(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    infos = [rec.info(t) for t in _tensors(args, kwargs)]
    rec.hazard(
        "takes a channel dimension and the converter has no rule for what it does to it",
        infos,
        f"operator aten.{name}",
    )
    return _same(UNTRACKED, len(_outs(out)))


# ---- shapes ------------------------------------------------------------------------------------
def _view_groups(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dims of shape ``a`` with runs of dims of ``b`` that hold the same elements."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj, pa, pb = [], [], 1, 1
        if i < len(a):
            gi.append(i)
            pa, i = pa * a[i], i + 1
        if j < len(b):
            gj.append(j)
            pb, j = pb * b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb, j = pb * b[j], j + 1
            else:
                break
        groups.append((gi, gj))
    return groups


def view(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """``view`` / ``reshape``: follow the channel dimension through merges and splits."""
    x, y = args[0], _outs(out)[0]
    info = rec.info(x)
    a, b = list(x.shape), list(y.shape)
    groups = _view_groups(a, b)
    if not info.tracked:
        if info.origins is None:
            return [UNTRACKED]
        mapping = {}
        for gi, gj in groups:
            si = [d for d in gi if a[d] != 1]
            sj = [d for d in gj if b[d] != 1]
            if len(si) == 1 and len(sj) == 1:
                mapping[si[0]] = sj[0]
        return [_map_dims(info, mapping, len(b))]
    c = info.dim
    mapping: dict[int, int] = {}
    result: Info | None = None
    for gi, gj in groups:
        si = [d for d in gi if a[d] != 1]
        sj = [d for d in gj if b[d] != 1]
        if len(si) == 1 and len(sj) == 1:
            mapping[si[0]] = sj[0]
        if c not in gi:
            continue
        if si == [c] and len(sj) == 1:
            result = Info(dim=sj[0], layout=info.layout)
        elif si == [c] and len(sj) == 2:
            result = _split_channels(rec, info, sj, b, name)
        elif len(si) >= 2 and len(sj) == 1:
            result = _merge_channels(rec, info, si, a, sj[0], name)
        if result is None:
            rec.hazard(
                f"reshapes the channels {a} -> {b} in a way the converter cannot follow",
                [info],
                f"aten.{name}",
            )
            return [UNTRACKED]
    assert result is not None
    if info.split is not None and result.split is None and info.split[0] in mapping:
        result = Info(
            dim=result.dim, layout=result.layout, split=(mapping[info.split[0]], info.split[1])
        )
    return [result]


def _split_channels(
    rec: Recorder, info: Info, sj: list[int], b: list[int], name: str
) -> Info | None:
    """``(..., C, ...) -> (..., g, C // g, ...)``: ``g`` equal groups of the channels."""
    g, within = b[sj[0]], b[sj[1]]
    layout = info.layout
    if len(layout) == g and all(s.size == within for s in layout):  # one group per part
        for s in layout[1:]:
            union(layout[0].space, s.space, f"aten.{name} (a channel shuffle) in {rec.where()}")
        return Info(dim=sj[1], layout=(layout[0],), split=(sj[0], layout))
    if len(layout) == 1:
        seg = layout[0]
        require_multiple(seg, g, f"aten.{name} into {g} groups in {rec.where()}")
        return Info(dim=sj[1], layout=(Seg(seg.space, seg.size // g),), split=(sj[0], ()))
    return None


def _merge_channels(
    rec: Recorder, info: Info, si: list[int], a: list[int], to: int, name: str
) -> Info | None:
    """``(..., C, k, ...) -> (..., C * k, ...)`` with the channels outermost, or a split undone."""
    c, split = info.dim, info.split
    if split is not None and si == [split[0], c]:  # (g, C // g) -> C: the split undone
        parts = split[1]
        if parts:
            return Info(dim=to, layout=parts)
        (seg,) = info.layout
        return Info(dim=to, layout=(Seg(seg.space, seg.size * a[split[0]]),))
    if si[0] != c:
        return None  # channels inner to another dimension: a strided, not a prefix, layout
    inner = math.prod(a[d] for d in si[1:])
    return Info(dim=to, layout=tuple(Seg(s.space, s.size * inner) for s in info.layout))


def permute(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x = args[0]
    nd = x.dim()
    if name == "permute":
        order = [_norm_dim(d, nd) for d in args[1]]
    elif name in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = _norm_dim(args[1], nd), _norm_dim(args[2], nd)
        order = list(range(nd))
        order[d0], order[d1] = order[d1], order[d0]
    else:  # t
        order = list(range(nd))[::-1]
    mapping = {src: dst for dst, src in enumerate(order)}
    return [_map_dims(rec.info(x), mapping, nd)]


def unsqueeze(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x, y = args[0], _outs(out)[0]
    d = _norm_dim(args[1], y.dim())
    mapping = {i: (i if i < d else i + 1) for i in range(x.dim())}
    return [_map_dims(rec.info(x), mapping, y.dim())]


def squeeze(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x, y = args[0], _outs(out)[0]
    if len(args) > 1:
        dims = args[1] if isinstance(args[1], list | tuple) else [args[1]]
        dims = {_norm_dim(d, x.dim()) for d in dims}
    else:
        dims = set(range(x.dim()))
    gone = {d for d in dims if x.shape[d] == 1}
    mapping, j = {}, 0
    for i in range(x.dim()):
        if i in gone:
            continue
        mapping[i] = j
        j += 1
    return [_map_dims(rec.info(x), mapping, y.dim())]


def expand(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x, y = args[0], _outs(out)[0]
    shift = y.dim() - x.dim()
    return [_map_dims(rec.info(x), {i: i + shift for i in range(x.dim())}, y.dim())]


def slice_(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x = args[0]
    info = rec.info(x)
    d = _norm_dim(_arg(args, kwargs, 1, "dim", 0), x.dim())
    if info.tracked and d == info.dim:
        start = _arg(args, kwargs, 2, "start", None) or 0
        end = _arg(args, kwargs, 3, "end", None)
        step = _arg(args, kwargs, 4, "step", 1)
        if start != 0 or step != 1 or (end is not None and end < x.shape[d]):
            rec.hazard("slices the channels with fixed bounds", [info], f"aten.{name}")
            return [UNTRACKED]
    if info.tracked:
        return [info]
    kept = x.shape[d] == _outs(out)[0].shape[d]  # a parameter's dim keeps its origin if whole
    return [_map_dims(info, {i: i for i in range(x.dim()) if i != d or kept}, x.dim())]


def as_strided(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Restriding to the same shape (what some kernels do to their outputs) changes nothing."""
    x = args[0]
    info = rec.info(x)
    if tuple(args[1]) == tuple(x.shape):
        return [info]
    rec.hazard("views its memory with explicit strides", [info], f"aten.{name}")
    return [UNTRACKED]


def select(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x = args[0]
    info = rec.info(x)
    d = _norm_dim(args[1], x.dim())
    if info.tracked and d == info.dim:
        rec.hazard("picks single channels by number", [info], f"aten.{name}")
        return [UNTRACKED]
    mapping = {i: (i if i < d else i - 1) for i in range(x.dim()) if i != d}
    return [_map_dims(info, mapping, x.dim() - 1)]


def along(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Ops along one dim that keep the shape (index_select, gather, flip, roll, sort, cumsum):
    fine along any dim but the channels, where they would pick channels by number."""
    x = args[0]
    info = rec.info(x)
    dims = _arg(args, kwargs, 1, "dim", None)
    if name in ("flip", "roll"):
        dims = _arg(args, kwargs, 1 if name == "flip" else 2, "dims", [])
    if name in ("sort", "argsort", "topk", "kthvalue"):
        dims = _arg(args, kwargs, 2 if name in ("topk", "kthvalue") else 1, "dim", -1)
    dims = dims if isinstance(dims, list | tuple) else [dims]
    dims = [_norm_dim(d, x.dim()) for d in dims if d is not None]
    n = len(_outs(out))
    if info.tracked and info.dim in dims and name not in ("cumsum", "cumprod"):
        rec.hazard("reorders or picks channels by number", [info], f"aten.{name}")
        return _same(UNTRACKED, n)
    return _same(info, n)


def repeat(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x, reps = args[0], list(args[1])
    info = rec.info(x)
    shift = len(reps) - x.dim()
    if info.tracked and reps[info.dim + shift] != 1:
        rec.hazard("repeats the channels", [info], f"aten.{name}")
        return [UNTRACKED]
    return [_map_dims(info, {i: i + shift for i in range(x.dim())}, len(reps))]


# ---- cat and split -----------------------------------------------------------------------------
def cat(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Concatenation along the channels is a layout (each part keeps its first channels);
    along another dim it ties the parts' channels."""
    parts = [t for t in args[0] if not (t.dim() == 1 and t.numel() == 0)]
    y = _outs(out)[0]
    d = _norm_dim(_arg(args, kwargs, 1, "dim", 0), y.dim())
    infos = [rec.info(t) for t in parts]
    tracked = [(t, i) for t, i in zip(parts, infos, strict=True) if i.tracked]
    if not tracked:
        return [UNTRACKED]
    if any(i.dim == d for _, i in tracked):
        layout: Layout = ()
        for t, i in zip(parts, infos, strict=True):
            if i.tracked and i.dim == d:
                layout += i.layout
            elif i.tracked:
                rec.hazard(
                    "concatenates channels with a tensor whose channels lie elsewhere",
                    [i],
                    f"aten.{name}",
                )
                return [UNTRACKED]
            else:  # a tensor made in forward, or a parameter: its channels never slim
                here = rec.where()
                why = f"it is concatenated in {here} at a fixed size"
                layout += rec.fixed_layout(t.shape[d], f"a tensor concatenated in {here}", why)
        return [Info(dim=d, layout=layout)]
    base = tracked[0][1]
    for _, i in tracked[1:]:
        if i.dim != base.dim or not tie(rec, base.layout, i.layout, f"aten.{name}"):
            rec.hazard(
                "concatenates tensors whose channels do not line up", [base, i], f"aten.{name}"
            )
    return [Info(dim=base.dim, layout=base.layout)]


def stack(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    parts = args[0]
    y = _outs(out)[0]
    d = _norm_dim(_arg(args, kwargs, 1, "dim", 0), y.dim())
    infos = [rec.info(t) for t in parts]
    tracked = [i for i in infos if i.tracked]
    if not tracked:
        return [UNTRACKED]
    base = tracked[0]
    for i in tracked[1:]:
        if i.dim != base.dim or not tie(rec, base.layout, i.layout, f"aten.{name}"):
            rec.hazard("stacks tensors whose channels do not line up", [base, i], f"aten.{name}")
    assert base.dim is not None
    return [Info(dim=base.dim + (1 if d <= base.dim else 0), layout=base.layout)]


def split(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """``split`` / ``chunk`` along the channels: parts of one segment slim in proportion; a
    concatenation splits where its parts meet."""
    x = args[0]
    outs = _outs(out)
    info = rec.info(x)
    d = _norm_dim(_arg(args, kwargs, 2, "dim", 0), x.dim())
    if not info.tracked or d != info.dim:
        if info.tracked and name == "unbind" and d < info.dim:  # type: ignore[operator]
            return _same(_with_dim(info, info.dim - 1), len(outs))  # type: ignore[operator]
        if info.tracked and name == "unbind":
            return _same(info, len(outs))
        return _same(info if info.tracked else UNTRACKED, len(outs))
    if name == "unbind":
        rec.hazard("unbinds the channels", [info], f"aten.{name}")
        return _same(UNTRACKED, len(outs))
    sizes = [t.shape[d] for t in outs]
    layout, where = info.layout, f"aten.{name} in {rec.where()}"
    if len(layout) == 1:
        seg = layout[0]
        parts = []
        for n in sizes:
            part = Seg(seg.space, n)
            require_multiple(part, 1, where)
            parts.append(Info(dim=d, layout=(part,)))
        return parts
    result, i = [], 0
    for n in sizes:  # whole parts of the concatenation
        taken: Layout = ()
        while i < len(layout) and layout_size(taken) < n:
            taken += (layout[i],)
            i += 1
        if layout_size(taken) != n:
            rec.hazard("splits a concatenation across its parts", [info], f"aten.{name}")
            return _same(UNTRACKED, len(outs))
        result.append(Info(dim=d, layout=taken))
    return result


# ---- reductions and spatial ops ----------------------------------------------------------------
# op -> (index of its dims argument, index of its keepdim argument)
REDUCTIONS = {
    "mean": (1, 2),
    "sum": (1, 2),
    "nansum": (1, 2),
    "nanmean": (1, 2),
    "amax": (1, 2),
    "amin": (1, 2),
    "max": (1, 2),
    "min": (1, 2),
    "argmax": (1, 2),
    "argmin": (1, 2),
    "logsumexp": (1, 2),
    "prod": (1, 2),
    "all": (1, 2),
    "any": (1, 2),
    "median": (1, 2),
    "var": (1, 3),
    "std": (1, 3),
    "var_mean": (1, 3),
    "std_mean": (1, 3),
    "linalg_vector_norm": (2, 3),
    "norm": (2, 3),
}


def reduce(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Reductions: over the channels, the result has none (a statistic of the active
    channels); over other dims, the channels move up when dims go."""
    x = args[0]
    info = rec.info(x)
    outs = _outs(out)
    di, ki = REDUCTIONS[name]
    dims = _arg(args, kwargs, di, "dim", None)
    keepdim = bool(_arg(args, kwargs, ki, "keepdim", False))
    if dims is None or (isinstance(dims, list | tuple) and len(dims) == 0):
        dims = list(range(x.dim()))
    dims = {_norm_dim(d, x.dim()) for d in (dims if isinstance(dims, list | tuple) else [dims])}
    if not info.tracked or info.dim in dims:
        return _same(UNTRACKED, len(outs))
    if keepdim:
        return _same(info, len(outs))
    mapping, j = {}, 0
    for i in range(x.dim()):
        if i in dims:
            continue
        mapping[i] = j
        j += 1
    return _same(_map_dims(info, mapping, j), len(outs))


def per_channel(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Softmax and friends along any dim: the result is laid out like the input."""
    return _same(rec.info(args[0]), len(_outs(out)))


def spatial(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """Pooling, upsampling, padding of the spatial dims: channels stay where they are."""
    x = args[0]
    info = rec.info(x)
    n = len(_outs(out))
    if not info.tracked:
        return _same(UNTRACKED, n)
    spatial_dims = 3 if "3d" in name else 1 if "1d" in name else 2
    if name == "constant_pad_nd":
        pad = list(args[1])
        padded = {x.dim() - 1 - i // 2 for i, p in enumerate(pad) if p}
        if info.dim in padded:
            rec.hazard("pads the channels", [info], f"aten.{name}")
            return _same(UNTRACKED, n)
        return _same(info, n)
    if info.dim >= x.dim() - spatial_dims:  # type: ignore[operator]
        rec.hazard("pools or resizes along the channels", [info], f"aten.{name}")
        return _same(UNTRACKED, n)
    return _same(info, n)


def pixel_shuffle(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x, r = args[0], args[1]
    info = rec.info(x)
    if not info.tracked:
        return [UNTRACKED]
    if info.dim != x.dim() - 3:
        rec.hazard(
            "shuffles pixels across a dimension that is not the channels", [info], f"aten.{name}"
        )
        return [UNTRACKED]
    k = r * r
    if name == "pixel_unshuffle":
        return [Info(dim=info.dim, layout=tuple(Seg(s.space, s.size * k) for s in info.layout))]
    if len(info.layout) != 1:
        rec.hazard("shuffles the pixels of concatenated channels", [info], f"aten.{name}")
        return [UNTRACKED]
    (seg,) = info.layout
    require_multiple(seg, k, f"aten.{name} in {rec.where()}")
    return [Info(dim=info.dim, layout=(Seg(seg.space, seg.size // k),))]


def channel_shuffle(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x, g = args[0], args[1]
    info = rec.info(x)
    if not info.tracked:
        return [UNTRACKED]
    layout = info.layout
    if len(layout) == g and len({s.size for s in layout}) == 1:
        for s in layout[1:]:
            union(layout[0].space, s.space, f"aten.{name} in {rec.where()}")
        return [Info(dim=info.dim, layout=(Seg(layout[0].space, layout_size(layout)),))]
    if len(layout) == 1:
        require_multiple(layout[0], g, f"aten.{name} into {g} groups in {rec.where()}")
        return [info]
    rec.hazard("shuffles concatenated channels of unequal parts", [info], f"aten.{name}")
    return [UNTRACKED]


# ---- matrix products ---------------------------------------------------------------------------
def _contract(
    rec: Recorder, a: Tensor, ia: Info, da: int, b: Tensor, ib: Info, db: int, name: str
) -> None:
    """``a``'s dim ``da`` is summed against ``b``'s dim ``db``: channels there must match."""
    if ia.tracked and ia.dim == da:
        if ib.tracked and ib.dim == db:
            if not tie(rec, ia.layout, ib.layout, f"aten.{name}"):
                rec.hazard("multiplies differently concatenated channels", [ia, ib], f"aten.{name}")
        elif ib.origins is not None:
            _use_params(rec, ib, db, ia.layout)
        else:
            rec.hazard("multiplies the channels by a tensor of fixed size", [ia], f"aten.{name}")


def matmul(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """``mm``/``bmm``/``addmm``/``baddbmm``: contracted channels tie (or slice a parameter);
    a channel dimension not contracted carries over to the product."""
    bias = None
    if name in ("addmm", "baddbmm"):
        bias, a, b = args[0], args[1], args[2]
    else:
        a, b = args[0], args[1]
    ia, ib = rec.info(a), rec.info(b)
    y = _outs(out)[0]
    nd = y.dim()
    _contract(rec, a, ia, a.dim() - 1, b, ib, b.dim() - 2, name)
    _contract(rec, b, ib, b.dim() - 2, a, ia, a.dim() - 1, name)
    result = UNTRACKED
    if ia.tracked and ia.dim < a.dim() - 1:  # rows or batch
        result = Info(dim=ia.dim + nd - a.dim(), layout=ia.layout)
    if ib.tracked and ib.dim == b.dim() - 1:  # columns
        if result.tracked:
            rec.hazard("makes a product with channels on two dimensions", [ia, ib], f"aten.{name}")
            return [UNTRACKED]
        result = Info(dim=nd - 1, layout=ib.layout)
    if bias is not None and result.tracked:
        ibias = rec.info(bias)
        d = bias.dim() - (nd - result.dim)  # type: ignore[operator]
        if 0 <= d < bias.dim() and bias.shape[d] != 1 and ibias.origins is not None:
            _use_params(rec, ibias, d, result.layout)
    return [result]


# ---- functional layers in a model's own code ---------------------------------------------------
def _module_attr(rec: Recorder, value: tuple) -> str | None:
    """The attribute of the innermost module that holds ``value`` (e.g. normalized_shape)."""
    if not rec.stack:
        return None
    module = rec.stack[-1]
    for attr in ("normalized_shape",):
        if tuple(getattr(module, attr, ()) or ()) == tuple(value):
            return attr
    return None


def layer_norm(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """``F.layer_norm`` in a model's own code (e.g. a LayerNorm2d that permutes around it)."""
    x, shape, weight, bias = (
        args[0],
        list(args[1]),
        _arg(args, kwargs, 2, "weight"),
        _arg(args, kwargs, 3, "bias"),
    )
    info = rec.info(x)
    n = len(_outs(out))
    if not info.tracked or info.dim < x.dim() - len(shape):  # type: ignore[operator]
        return [info, UNTRACKED, UNTRACKED][:n]
    if len(shape) != 1:
        rec.hazard("normalizes the channels together with other dims", [info], f"aten.{name}")
        return _same(UNTRACKED, n)
    attr = _module_attr(rec, tuple(shape))
    if attr is None:
        rec.hazard("normalizes the channels with a fixed normalized_shape", [info], f"aten.{name}")
        return _same(UNTRACKED, n)
    rec.trace.attrs.append(AttrUse(rec.module_name(), attr, info.layout))
    for p in (weight, bias):
        if isinstance(p, Tensor):
            _use_params(rec, rec.info(p), 0, info.layout)
    return [info, UNTRACKED, UNTRACKED][:n]


def group_norm(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x, weight, bias, groups = args[0], args[1], args[2], args[6]
    info = rec.info(x)
    n = len(_outs(out))
    if not info.tracked:
        return _same(UNTRACKED, n)
    if info.dim != 1 or len(info.layout) != 1:
        rec.hazard("group-normalizes channels the converter cannot follow", [info], f"aten.{name}")
        return _same(UNTRACKED, n)
    require_multiple(info.layout[0], groups, f"aten.{name} in {rec.where()} ({groups} groups)")
    for p in (weight, bias):
        if isinstance(p, Tensor):
            _use_params(rec, rec.info(p), 0, info.layout)
    return [info, UNTRACKED, UNTRACKED][:n]


def batch_norm(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x = args[0]
    info = rec.info(x)
    rec.hazard(
        "is a batch norm written in the model's own code: its running statistics would fit no "
        "width; use nn.BatchNorm2d",
        [info],
        f"aten.{name}",
    )
    return [info] + [UNTRACKED] * (len(_outs(out)) - 1)


def convolution(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    """A convolution in a model's own code. In the forward of a Conv2d subclass (padding 'same',
    weight standardization) on its own weight, it is that layer's call; elsewhere it may read
    slimmed channels (its weight slices along its inputs), but its outputs never slim."""
    x, w = args[0], args[1]
    transposed, groups = args[6], args[8]
    info, iw = rec.info(x), rec.info(w)
    y = _outs(out)[0]
    module = rec.stack[-1] if rec.stack else None
    if (
        isinstance(module, nn.Conv2d)
        and w is module._parameters.get("weight")
        and not transposed
        and groups == module.groups
        and (not info.tracked or info.dim == 1)
    ):
        layer = rec.module_name()
        inputs = (
            info.layout
            if info.tracked
            else rec.fixed_layout(
                x.shape[1],
                f"the input of {layer!r}",
                f"it is the input of {layer!r}, made in forward",
            )
        )
        return [_conv_call(rec, module, layer, info, inputs, y.shape[1], info.tracked, True)]
    if info.tracked:
        if info.dim != 1 or transposed or groups != 1 or iw.origins is None:
            rec.hazard("is a convolution in the model's own code", [info], f"aten.{name}")
        else:
            _use_params(rec, iw, 1, info.layout)
    here = rec.where()
    why = f"it comes out of a convolution in the code of {here}"
    layout = rec.fixed_layout(y.shape[1], f"a convolution in {here}", why)
    return [Info(dim=1, layout=layout)]


def prelu(rec: Recorder, name: str, args: tuple, kwargs: dict, out: Any) -> list[Info]:
    x, w = args[0], args[1]
    info = rec.info(x)
    if info.tracked and w.numel() > 1:
        if info.dim != 1:
            rec.hazard("applies PReLU along a dim that is not the channels", [info], f"aten.{name}")
        _use_params(rec, rec.info(w), 0, info.layout)
    return [info]


# ---- torch layers (module hooks) ---------------------------------------------------------------
def layer_rule(rec: Recorder, module: nn.Module, kind: str, x: Tensor, out: Tensor) -> Info:
    """The channel layout after one call of a torch layer, recorded as a :class:`LayerCall`."""
    name = rec.names.get(id(module), "")
    info = rec.info(x)
    where = f"{type(module).__name__} {name!r}"
    if kind == "unsupported":
        rec.hazard("has no slimmable counterpart yet", [info], "", layer=module)
        return UNTRACKED
    channel_dim = x.dim() - 1 if kind in ("linear", "ln") else 1
    tracked = info.tracked
    if tracked and info.dim != channel_dim:
        if kind in ("linear", "ln"):  # works on another dimension: the channels pass through
            rec.trace.calls.append(LayerCall(name, module, "plain", info.layout, info.layout))
            return info if out.dim() == x.dim() else UNTRACKED
        rec.hazard(
            f"reads its channels from dim {channel_dim}, but they lie on dim {info.dim}",
            [info],
            "",
            layer=module,
        )
        return UNTRACKED
    why = f"it is the input of {where}, made in forward"
    inputs = info.layout if tracked else rec.fixed_layout(x.shape[channel_dim], where, why)
    if kind == "in":
        if module.track_running_stats:
            rec.hazard(
                "keeps running statistics, which would fit no width", [info], "", layer=module
            )
        elif tracked:
            for p in ("weight", "bias") if module.affine else ():
                rec.trace.params.append(ParamUse(f"{name}.{p}", 0, inputs, where))
            rec.trace.attrs.append(AttrUse(name, "num_features", inputs))
        rec.trace.calls.append(LayerCall(name, module, kind, inputs, inputs, tracked))
        return Info(dim=channel_dim, layout=inputs)
    if kind in ("bn", "ln", "gn"):
        if kind == "gn" and module.num_groups > 1:
            if len(inputs) != 1:
                rec.hazard("group-normalizes a concatenation", [info], "", layer=module)
            else:
                per = module.num_channels // module.num_groups
                require_multiple(inputs[0], per, f"{where} ({per} channels per group)")
        rec.trace.calls.append(LayerCall(name, module, kind, inputs, inputs, tracked))
        return Info(dim=channel_dim, layout=inputs)
    if kind == "conv":
        return _conv_call(rec, module, name, info, inputs, out.shape[1], tracked, custom=False)
    if kind == "convT" and module.groups != 1:
        rec.hazard("is a grouped transposed convolution", [info], "", layer=module)
    space = rec.layer_spaces.get(id(module))
    if space is None:
        space = rec.layer_spaces[id(module)] = rec.new_space(out.shape[channel_dim], name)
        space.producers.append(name)
    outputs = (Seg(space, out.shape[channel_dim]),)
    custom = kind == "convT"  # made slimmable in place, like a Conv2d with its own forward
    rec.trace.calls.append(LayerCall(name, module, kind, inputs, outputs, tracked, custom))
    return Info(dim=channel_dim, layout=outputs)


def _conv_call(
    rec: Recorder,
    module: nn.Conv2d,
    name: str,
    info: Info,
    inputs: Layout,
    out_size: int,
    tracked: bool,
    custom: bool,
) -> Info:
    """A call of a Conv2d (``custom``: a subclass whose own forward calls ``F.conv2d``)."""
    where = f"{type(module).__name__} {name!r}"
    groups = module.groups
    if groups > 1:
        depthwise = groups == module.in_channels
        if depthwise and (out_size == module.in_channels or len(inputs) == 1):
            k = out_size // module.in_channels  # a channel multiplier: outputs follow inputs
            outputs = inputs if k == 1 else (Seg(inputs[0].space, inputs[0].size * k),)
            rec.trace.calls.append(
                LayerCall(name, module, "depthwise", inputs, outputs, tracked, custom)
            )
            return Info(dim=1, layout=outputs)
        if len(inputs) != 1:
            rec.hazard("is a grouped convolution over a concatenation", [info], "", layer=module)
        else:
            require_multiple(inputs[0], groups, f"{where} ({groups} groups)")
    space = rec.layer_spaces.get(id(module))
    if space is None:
        space = rec.layer_spaces[id(module)] = rec.new_space(out_size, name)
        space.producers.append(name)
    outputs = (Seg(space, out_size),)
    if groups > 1:
        require_multiple(outputs[0], groups, f"{where} ({groups} groups)")
    rec.trace.calls.append(LayerCall(name, module, "conv", inputs, outputs, tracked, custom))
    return Info(dim=1, layout=outputs)


# ---- the table ---------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return text.split()


ELEMENTWISE = _words(
    """
add sub rsub mul div true_divide floor_divide pow maximum minimum fmax fmin where clamp
clamp_min clamp_max clip hardtanh relu relu6 leaky_relu elu selu celu gelu silu mish hardswish
hardsigmoid sigmoid tanh softplus softsign exp expm1 log log1p log2 log10 sqrt rsqrt abs neg
reciprocal sign erf erfc erfinv sin cos floor ceil round trunc frac square threshold eq ne lt le
gt ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or bitwise_not
bitwise_xor masked_fill addcmul addcdiv lerp fmod remainder nan_to_num clone _to_copy alias
detach lift_fresh copy fill zero native_dropout dropout isnan isinf isfinite logit hypot atan2
xlogy sigmoid_backward _conj resolve_conj resolve_neg positive sgn exp2 rrelu_with_noise glu
"""
)
LIKE = _words(
    """
zeros_like ones_like empty_like full_like rand_like randn_like randint_like bernoulli uniform
normal exponential random cauchy geometric log_normal
"""
)
FRESH = _words(
    """
zeros ones empty full arange rand randn randint scalar_tensor empty_strided new_zeros new_ones
new_empty new_full new_empty_strided eye linspace logspace lift_fresh_copy _local_scalar_dense
sym_size sym_stride sym_numel embedding _assert_async _assert_tensor_metadata
"""
)
SPATIAL = _words(
    """
max_pool2d_with_indices max_pool2d max_pool1d max_pool3d max_pool3d_with_indices avg_pool2d
avg_pool1d avg_pool3d adaptive_avg_pool2d _adaptive_avg_pool2d adaptive_max_pool2d
adaptive_avg_pool1d adaptive_max_pool1d adaptive_avg_pool3d _adaptive_avg_pool3d
upsample_nearest2d upsample_bilinear2d upsample_bicubic2d _upsample_nearest_exact2d
_upsample_bilinear2d_aa upsample_nearest1d upsample_linear1d upsample_nearest3d
upsample_trilinear3d grid_sampler_2d constant_pad_nd reflection_pad1d reflection_pad2d
reflection_pad3d replication_pad1d replication_pad2d replication_pad3d fractional_max_pool2d
lp_pool2d
"""
)

RULES: dict[str, Rule] = {"<unknown>": unknown}
RULES.update({n: elementwise for n in ELEMENTWISE})
RULES.update({n: like for n in LIKE})
RULES.update({n: fresh for n in FRESH})
RULES.update({n: spatial for n in SPATIAL})
RULES.update({n: reduce for n in REDUCTIONS})
RULES.update({n: view for n in ("view", "_unsafe_view", "reshape", "_reshape_alias")})
RULES.update({n: permute for n in ("permute", "transpose", "t", "swapaxes", "swapdims")})
RULES.update(
    {
        n: split
        for n in (
            "split",
            "split_with_sizes",
            "unsafe_split",
            "unsafe_split_with_sizes",
            "unbind",
            "chunk",
        )
    }
)
RULES.update(
    {
        n: along
        for n in (
            "index_select",
            "gather",
            "scatter",
            "flip",
            "roll",
            "sort",
            "argsort",
            "topk",
            "kthvalue",
            "cumsum",
            "cumprod",
        )
    }
)
RULES.update({n: matmul for n in ("mm", "bmm", "addmm", "baddbmm")})
RULES.update({n: per_channel for n in ("_softmax", "_log_softmax", "softmax", "log_softmax")})
RULES.update(
    {
        n: batch_norm
        for n in (
            "native_batch_norm",
            "_native_batch_norm_legit",
            "_native_batch_norm_legit_no_training",
            "_native_batch_norm_legit_functional",
        )
    }
)
RULES.update(
    {
        "unsqueeze": unsqueeze,
        "squeeze": squeeze,
        "expand": expand,
        "slice": slice_,
        "select": select,
        "as_strided": as_strided,
        "repeat": repeat,
        "cat": cat,
        "stack": stack,
        "pixel_shuffle": pixel_shuffle,
        "pixel_unshuffle": pixel_shuffle,
        "channel_shuffle": channel_shuffle,
        "native_channel_shuffle": channel_shuffle,
        "native_layer_norm": layer_norm,
        "native_group_norm": group_norm,
        "convolution": convolution,
        "_prelu_kernel": prelu,
        "prelu": prelu,
    }
)
