"""Verify, do not trust: the converted model against the original, and against the plan.

At full width the converted model must compute what the original computed (the first module
whose output differs is named otherwise). At the other widths there is nothing to compare
values with, but every module's output shape is predicted by the plan: a module whose output
has other sizes, a forward that raises, or a forward that takes another path (control flow on
channel counts) is an error naming the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..export import max_difference
from ..width import set_width
from .plan import ConversionError, Plan


@contextmanager
def module_outputs(
    model: nn.Module, names: set[str] | None = None
) -> Iterator[list[tuple[str, list[Tensor]]]]:
    """Record the outputs of every call of the modules named ``names`` (default: all)."""
    calls: list[tuple[str, list[Tensor]]] = []
    handles = []
    for name, m in model.named_modules():
        if names is not None and name not in names:
            continue

        def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            calls.append((name, [t for t in tree_flatten(out)[0] if isinstance(t, Tensor)]))

        handles.append(m.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def first_difference(
    before: list[tuple[str, list[Tensor]]], after: list[tuple[str, list[Tensor]]], atol: float
) -> str:
    for (name, xs), (_, ys) in zip(before, after, strict=False):
        diff, scale = max_difference(xs, ys)
        if not diff <= atol * max(1.0, scale):
            return f"module {name!r} is the first whose output differs (by {diff:.3g})"
    return "no single module's output differs"


def check_full_width(
    model: nn.Module, inputs: tuple[Tensor, ...], reference: Any, width: float, atol: float,
    original_calls: list[tuple[str, list[Tensor]]] | None,
) -> None:  # fmt: skip
    """The converted model at ``width`` (its widest) computes the original's outputs."""
    names = {name for name, _ in original_calls or []}
    with torch.no_grad(), set_width(model, width), module_outputs(model, names) as calls:
        got = model(*inputs)
    diff, scale = max_difference(got, reference)
    if not diff <= atol * max(1.0, scale):
        where = first_difference(original_calls or [], calls, atol) if original_calls else ""
        raise ConversionError(
            f"the converted model differs from the original at full width by {diff:.3g}"
            + (f" ({where})" if where else "")
            + "; please report this model"
        )


def check_width(model: nn.Module, inputs: tuple[Tensor, ...], plan: Plan, width: float) -> None:
    """At ``width`` every module's output has the channels the plan predicts."""
    from ..latency import any_width_statistics

    expected = plan.trace.module_outputs
    names = {name for name, _ in expected}
    calls: list[tuple[str, list[Tensor]]] = []
    try:
        with (
            torch.no_grad(),
            any_width_statistics(model),
            set_width(model, width),
            module_outputs(model, names) as calls,
        ):
            model(*inputs)
    except Exception as err:  # a shape error inside the user's code at this width
        where = calls[-1][0] if calls else "the first module"
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(
            f"at width {width:g} the converted model fails after module {where!r}: {message}; "
            "its code assumes the full channel count (keep those channels whole with "
            "fixed=[...])"
        ) from None
    for i, ((name, outs), (ename, eouts)) in enumerate(zip(calls, expected, strict=False)):
        if name != ename or len(outs) != len(eouts):
            raise ConversionError(
                f"at width {width:g} the forward takes another path at module {name!r} (call {i}, "
                f"expected {ename!r}): its control flow depends on channel counts"
            )
        for t, (shape, info) in zip(outs, eouts, strict=True):
            want = list(shape)
            if info.tracked:
                want[info.dim] = plan.layout_count(info.layout, width)  # type: ignore[index]
            if list(t.shape) != want:
                raise ConversionError(
                    f"at width {width:g} module {name!r} gives {list(t.shape)} where {want} was "
                    "expected: code up to it reshapes the channels with fixed sizes (e.g. "
                    "view(-1, C * H * W)); compute sizes from the tensor (x.flatten(1)) or keep "
                    "those channels whole with fixed=[...]"
                )
    if len(calls) != len(expected):
        raise ConversionError(
            f"at width {width:g} the forward calls {len(calls)} modules instead of "
            f"{len(expected)}: its control flow depends on channel counts"
        )
