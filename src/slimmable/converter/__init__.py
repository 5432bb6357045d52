"""Bring your own model: make any PyTorch CNN slimmable.

``slimmable.convert(model, example_inputs, widths=[...])`` records one real forward of the model
(every ATen op that runs, whatever its Python does), works out from it which channels must move
together (residual sums, squeeze-excitation gates, depthwise pairs, concatenations, splits,
shuffles, channels-last norms, layer scale), and swaps torch's layers for slimmable ones under
their own names. What it cannot reason about it refuses by name. The result is then verified:
at full width it computes what the original computed, and at the other widths every module's
output has the channels the plan predicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..layers.base import WidthMixin
from ..layers.norm import SwitchableBatchNorm2d, USBatchNorm2d
from ..layers.width_policy import WidthList, WidthRange
from ..models.kit import NORMS
from .build import Options, Swap, build
from .plan import ConversionError, Plan, make_plan, mark_fixed
from .rules import RULES, Rule, elementwise, fresh, layer_rule, per_channel
from .trace import record
from .verify import check_full_width, check_width, module_outputs

__all__ = ["Conversion", "ConversionError", "convert", "register_rule"]

# The rules this process has been taught (see register_rule), on top of the built-in ones.
_USER_RULES: dict[str, Rule] = {}
_KINDS = {"elementwise": elementwise, "passthrough": per_channel, "no_channels": fresh}


def register_rule(op: str, rule: str | Rule) -> None:
    """Teach the converter an ATen op it refuses (``op`` as in the error, e.g. ``"my_op"``).

    ``rule`` is ``"elementwise"`` (its tensor arguments broadcast and their channels tie),
    ``"passthrough"`` (the output is laid out like its first argument), ``"no_channels"`` (its
    output has no channel dimension of the model's), or a function with the signature of the
    built-in rules in :mod:`slimmable.converter.rules`.
    """
    name = op.removeprefix("aten.").split(".")[0]
    _USER_RULES[name] = _KINDS[rule] if isinstance(rule, str) else rule


@dataclass
class Conversion:
    """What :func:`convert` did, kept on the model as ``model.slimmable_conversion``."""

    widths: tuple[float, ...] | None
    width_range: tuple[float, float] | None
    norm: str
    divisor: int
    fixed: tuple[str, ...]
    input_shapes: list[tuple[int, ...]]
    groups: list[list[str]]  # layers whose output channels are tied
    layers: dict[str, str] = field(default_factory=dict)  # name -> what it became
    fixed_reasons: dict[str, str] = field(default_factory=dict)  # layer -> why it never slims

    def options(self) -> dict:
        """The keyword arguments of :func:`convert` that rebuild this conversion."""
        return {
            "widths": None if self.widths is None else list(self.widths),
            "width_range": None if self.width_range is None else list(self.width_range),
            "norm": self.norm,
            "divisor": self.divisor,
            "fixed": list(self.fixed),
        }

    def __call__(self) -> list[list[str]]:  # model.channel_groups()
        return [list(g) for g in self.groups]

    def summary(self) -> str:
        lines = [f"{len(self.layers)} layers converted; {len(self.groups)} tied groups"]
        lines += [f"  tied: {', '.join(g)}" for g in self.groups]
        lines += [f"  fixed: {n} ({why})" for n, why in self.fixed_reasons.items()]
        return "\n".join(lines)


def _options(
    widths: Sequence[float] | None,
    width_range: Sequence[float] | None,
    norm: str | None,
    divisor: int,
    fixed: Sequence[str] | str,
) -> Options:
    if (widths is None) == (width_range is None):
        raise ConversionError(
            "give exactly one of widths=[...] (a slimmable network) or width_range=(lo, hi) "
            "(a universally slimmable one)"
        )
    if widths is not None:
        ws = [float(w) for w in widths]
        WidthList(ws)  # validates
        if len(set(ws)) != len(ws):
            raise ConversionError(f"widths {ws} lists a width twice; give each once")
        kind_widths, kind_range = tuple(sorted(ws)), None
    else:
        lo, hi = (float(w) for w in width_range)  # type: ignore[union-attr]
        WidthRange(lo, hi)
        kind_widths, kind_range = None, (lo, hi)
    norm = norm or ("switchable" if widths is not None else "us")
    if norm not in NORMS:
        raise ConversionError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if norm == "switchable" and widths is None:
        raise ConversionError(
            "norm='switchable' needs widths=[...]; use norm='us' with width_range"
        )
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1:
        raise ConversionError(f"divisor must be a positive integer, got {divisor!r}")
    patterns = (fixed,) if isinstance(fixed, str) else tuple(fixed)
    return Options(kind_widths, kind_range, norm, divisor, patterns)


def _inputs(example_inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(x, Tensor) for x in inputs):
        raise ConversionError("example_inputs must be a tensor or a tuple of tensors")
    return inputs


def _refuse_slimmable(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, WidthMixin | SwitchableBatchNorm2d | USBatchNorm2d):
            raise ConversionError(
                f"{name or type(model).__name__} is already slimmable; convert a plain model"
            )


def _check_widths(opts: Options) -> list[float]:
    """The widths the plan is verified at (besides full width): every switch of an S-Net, the
    bounds and middle of a US range."""
    lo, hi = opts.bounds
    checks = sorted(opts.widths) if opts.widths is not None else sorted({lo, (lo + hi) / 2})
    return [w for w in checks if w != hi] if hi == 1.0 else checks


def convert(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    widths: Sequence[float] | None = None,
    width_range: Sequence[float] | None = None,
    norm: str | None = None,
    divisor: int = 8,
    fixed: Sequence[str] | str = (),
    atol: float = 1e-5,
) -> nn.Module:
    """Make ``model`` slimmable in place and return it.

    ``widths=[...]`` gives a slimmable network (switchable BN: a private BN per width),
    ``width_range=(lo, hi)`` a universally slimmable one (shared BN, statistics calibrated per
    width; the original statistics serve the full width), ``norm="shared"`` the naive baseline.
    ``example_inputs`` (a tensor or a tuple) run once through the model, in eval mode. Module
    names stay (the original ``state_dict`` loads into the result); ``fixed`` lists module-name
    patterns (``"head"``, ``"layer4.*"``) whose output channels never slim; the model's inputs
    and outputs never do. Channel counts round to multiples of ``divisor``.

    Raises :class:`ConversionError` naming the operator, the module and the fix when the model
    does something to its channels the converter cannot follow, and leaves ``model`` as it was.
    """
    opts = _options(widths, width_range, norm, divisor, fixed)
    inputs = _inputs(example_inputs)
    if not isinstance(model, nn.Module):
        raise ConversionError(f"convert takes an nn.Module, got {type(model).__name__}")
    _refuse_slimmable(model)
    rules = {**RULES, **_USER_RULES}
    try:
        with module_outputs(model) as original_calls:
            trace = record(model, inputs, rules, layer_rule)
    except ConversionError:
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(f"the model's forward failed on example_inputs: {first}") from None
    mark_fixed(trace, opts.fixed)
    plan = make_plan(trace, opts.divisor)
    if not any(c.slims for c in plan.classes.values()):
        reasons = sorted({c.fixed[0] for c in plan.classes.values()})
        raise ConversionError(
            f"nothing in this model slims: every channel stays whole ({'; '.join(reasons)})"
        )
    swap = Swap()
    added = ["channel_groups", "slimmable_conversion"]
    try:
        new = build(model, plan, opts, swap)
        conversion = _describe(plan, opts, inputs, new)
        model.channel_groups = conversion  # type: ignore[assignment]  # what set_width ties
        model.slimmable_conversion = conversion  # type: ignore[assignment]
        if not hasattr(model, "default_cfg") and inputs[0].dim() == 4:
            model.default_cfg = {"input_size": tuple(inputs[0].shape[1:])}  # type: ignore[assignment]
            added.append("default_cfg")
        was_training = model.training
        model.eval()
        try:
            hi = opts.bounds[1]
            if hi == 1.0:
                check_full_width(model, inputs, trace.result, hi, atol, original_calls)
            for w in _check_widths(opts):
                check_width(model, inputs, plan, w)
        finally:
            model.train(was_training)
    except BaseException:  # leave the model as it was
        swap.undo()
        for attr in added:
            model.__dict__.pop(attr, None)
        raise
    return model


def _describe(
    plan: Plan, opts: Options, inputs: tuple[Tensor, ...], new: dict[str, nn.Module]
) -> Conversion:
    reasons = {}
    for call in plan.trace.calls:
        cls = plan.of(call.outputs[0].space)
        if call.kind in ("conv", "linear") and not cls.slims:
            reasons[call.name] = cls.fixed[0]
    return Conversion(
        widths=opts.widths,
        width_range=opts.width_range,
        norm=opts.norm,
        divisor=opts.divisor,
        fixed=opts.fixed,
        input_shapes=[tuple(x.shape) for x in inputs],
        groups=plan.groups(),
        layers={name: type(layer).__name__ for name, layer in new.items()},
        fixed_reasons=reasons,
    )

