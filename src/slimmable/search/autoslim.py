"""AutoSlim (Yu & Huang, 2019): one-shot greedy search for per-layer channel numbers.

Start from a trained slimmable network at full width. At every step, try removing one channel
group (the layer's divisor, e.g. 8 channels) from each layer group in turn, score each trial on
a fixed set of held-out training batches (BN with batch statistics), and keep the removal that
hurts least. At the first step where some trial meets a MACs target, record the least harmful
trial that meets it (usually the greedy move itself; otherwise a sibling of it, one removal from
the same path, which wastes less of the budget than waiting for the path to cross the target).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from ..profile import MacsCounter
from ..units import format_count, parse_macs
from ..width import set_width, width_knobs
from .channels import ChannelGroup, channel_groups, channels_to_width
from .evaluate import batch_statistics, evaluate, held_out_batches
from .result import SearchResult, TargetResult

METRICS = ("accuracy", "loss")


@dataclass
class Trial:
    """One candidate configuration: a layer group one channel group slimmer than the path's."""

    key: tuple[float, ...]  # harm, smaller is better
    group: int
    levels: list[int]
    channels: dict[str, int]
    widths: dict[str, float]
    macs: int
    acc: float
    loss: float


def record(
    pending: list[tuple[str, int]], results: list[TargetResult], trials: list[Trial], step: int
) -> None:
    """For each target some trial meets, keep the least harmful trial that meets it."""
    while pending:
        label, target = pending[0]
        feasible = [t for t in trials if t.macs <= target]
        if not feasible:
            return
        pending.pop(0)
        t = min(feasible, key=lambda t: t.key)
        results.append(
            TargetResult(label, target, t.macs, t.channels, t.widths, t.acc, t.loss, step)
        )


def _channels(groups: Sequence[ChannelGroup], levels: Sequence[int]) -> dict[str, int]:
    return {name: g.choices[i] for g, i in zip(groups, levels, strict=True) for name in g.layers}


def _targets(targets: Sequence[str | int | float], full: int) -> list[tuple[str, int]]:
    if isinstance(targets, str | int | float):
        targets = [targets]
    if not targets:
        raise ValueError("give at least one MACs target, e.g. targets=['150M'] or ['50%']")
    parsed = {parse_macs(t, full): str(t) for t in targets}
    return sorted(((label, macs) for macs, label in parsed.items()), key=lambda t: -t[1])


def autoslim(
    model: nn.Module,
    batches: Iterable[Sequence[Tensor]],
    targets: Sequence[str | int | float],
    *,
    num_batches: int | None = None,
    input_size: Sequence[int] | None = None,
    metric: str = "accuracy",
    per_mac: bool = False,
    progress: bool = False,
    model_name: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> SearchResult:
    """Search per-layer channel numbers of a trained slimmable ``model`` for MACs ``targets``.

    Args:
        model: a trained universally slimmable (US) model (any channel count per layer), or an
            S-Net (each layer then moves between its switches). Tied layers (residual sums,
            from ``model.channel_groups()``) move together. Left unchanged.
        batches: ``(input, target)`` batches held out from training; the first ``num_batches``
            are kept on the model's device and every trial is scored on all of them.
        targets: MACs per image, e.g. ``["150M", "300M"]``, ``[1.5e8]`` or ``["50%"]`` (of the
            full model's MACs).
        input_size: ``(C, H, W)`` the MACs are counted at; defaults to the batches' images.
        metric: ``"accuracy"`` (the paper's; ties broken by loss) or ``"loss"``: what a
            removal must hurt least.
        per_mac: divide each removal's harm by the MACs it saves (not in the paper): prefer
            layers whose channels are expensive, when layers differ much in cost per channel.
        progress: show a progress bar with the current MACs and accuracy.
        model_name, model_kwargs: recorded in the result (how to rebuild the model).

    Returns:
        a :class:`SearchResult`: per target, the channels and the width map of the least
        harmful trial at or below it, at the first step that has one, with its held-out
        accuracy and loss; ``.trace`` is the greedy path; ``.save(path)`` writes the JSON that
        ``slimmable.load_search`` reads.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    groups = channel_groups(model)
    device = next(model.parameters()).device
    held = held_out_batches(batches, num_batches, device)
    size = tuple(input_size) if input_size is not None else tuple(held[0][0].shape[1:])
    count = MacsCounter(model, size)

    def macs_of(levels: Sequence[int]) -> tuple[dict[str, int], dict[str, float], int]:
        channels = _channels(groups, levels)
        widths = channels_to_width(model, channels)
        return channels, widths, count(widths)

    levels = [len(g.choices) - 1 for g in groups]
    channels, widths, macs = macs_of(levels)
    full_macs, min_macs = macs, macs_of([0] * len(groups))[2]
    pending = _targets(targets, full_macs)
    too_low = [label for label, t in pending if t < min_macs]
    if too_low:
        raise ValueError(
            f"target {too_low[0]} is below the fewest MACs this model reaches, "
            f"{format_count(min_macs)} (every layer at its smallest width); raise the target"
        )
    knobs = width_knobs(model)
    divisor = math.gcd(*(m.divisor for m in knobs.values()))
    num_images = sum(len(y) for _, y in held)

    results: list[TargetResult] = []
    trace: list[dict[str, Any]] = []
    with set_width(model, widths), batch_statistics(model):
        acc, loss = evaluate(model, held)
        trace.append(
            {"step": 0, "layers": [], "channels": channels, "macs": macs}
            | {"val_accuracy": acc, "val_loss": loss}
        )
        bar = tqdm(
            total=full_macs - pending[-1][1],
            desc="autoslim",
            unit="MAC",
            unit_scale=True,
            disable=not progress,
            leave=False,
        )
        step = 0
        with bar:
            record(pending, results, [Trial((), -1, levels, channels, widths, macs, acc, loss)], 0)
            while pending:
                trials = []
                for i in range(len(groups)):
                    if levels[i] == 0:
                        continue
                    t_levels = list(levels)
                    t_levels[i] -= 1
                    t_channels, t_widths, t_macs = macs_of(t_levels)
                    set_width(model, t_widths)
                    t_acc, t_loss = evaluate(model, held)
                    harm = (acc - t_acc, t_loss - loss)
                    if per_mac:
                        saved = max(macs - t_macs, 1)
                        harm = (harm[0] / saved, harm[1] / saved)
                    key = harm if metric == "accuracy" else harm[::-1]
                    trials.append(
                        Trial(key, i, t_levels, t_channels, t_widths, t_macs, t_acc, t_loss)
                    )
                if not trials:  # every layer at its smallest width: cannot happen after the check
                    raise RuntimeError("AutoSlim ran out of channels to remove")
                step += 1
                record(pending, results, trials, step)
                best = min(trials, key=lambda t: t.key)
                levels, channels, widths = best.levels, best.channels, best.widths
                acc, loss = best.acc, best.loss
                bar.update(macs - best.macs)
                macs = best.macs
                bar.set_postfix_str(f"MACs {format_count(macs)} acc {acc:.2%}")
                group = groups[best.group]
                trace.append(
                    {"step": step, "layers": list(group.layers)}
                    | {"channels": group.choices[levels[best.group]], "macs": macs}
                    | {"val_accuracy": acc, "val_loss": loss}
                )
    return SearchResult(
        model=model_name,
        model_kwargs=dict(model_kwargs or {}),
        input_size=list(count.input_size),
        divisor=divisor,
        metric=metric,
        per_mac=per_mac,
        num_images=num_images,
        full_macs=full_macs,
        min_macs=min_macs,
        groups=[list(g.layers) for g in groups],
        results=results,
        trace=trace,
    )
