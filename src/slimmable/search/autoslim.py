"""AutoSlim (Yu & Huang, 2019): one-shot greedy search for per-layer channel numbers.

Start from a trained slimmable network at full width. At every step, try removing one channel
group (the layer's divisor, e.g. 8 channels) from each layer group in turn, score each trial on
a fixed set of held-out training batches (BN with batch statistics), and keep the removal that
hurts least. Every time the network's MACs fall to a target, record that configuration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn
from tqdm.auto import tqdm

from ..width import set_width, width_knobs
from .channels import ChannelGroup, channel_groups, channels_to_width
from .evaluate import batch_statistics, evaluate, held_out_batches
from .macs import MacsCounter
from .result import SearchResult, TargetResult, format_macs, parse_macs

METRICS = ("accuracy", "loss")


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
        a :class:`SearchResult`: per target, the channels and the width map of the first
        configuration at or below it, with its held-out accuracy and loss; ``.save(path)``
        writes the JSON that ``slimmable.load_search`` reads.
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
            f"{format_macs(min_macs)} (every layer at its smallest width); raise the target"
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
            while True:
                while pending and macs <= pending[0][1]:
                    label, target = pending.pop(0)
                    results.append(
                        TargetResult(label, target, macs, channels, widths, acc, loss, step)
                    )
                if not pending:
                    break
                best: tuple | None = None
                for i in range(len(groups)):
                    if levels[i] == 0:
                        continue
                    trial = list(levels)
                    trial[i] -= 1
                    t_channels, t_widths, t_macs = macs_of(trial)
                    set_width(model, t_widths)
                    t_acc, t_loss = evaluate(model, held)
                    harm = (acc - t_acc, t_loss - loss)
                    if per_mac:
                        harm = (harm[0] / max(macs - t_macs, 1), harm[1] / max(macs - t_macs, 1))
                    key = harm if metric == "accuracy" else harm[::-1]  # smaller is better
                    if best is None or key < best[0]:
                        best = (key, i, trial, t_channels, t_widths, t_macs, t_acc, t_loss)
                if best is None:  # every layer at its smallest width: cannot happen after the check
                    raise RuntimeError("AutoSlim ran out of channels to remove")
                _, i, levels, channels, widths, new_macs, acc, loss = best
                step += 1
                bar.update(macs - new_macs)
                macs = new_macs
                bar.set_postfix_str(f"MACs {format_macs(macs)} acc {acc:.2%}")
                trace.append(
                    {"step": step, "layers": list(groups[i].layers)}
                    | {"channels": groups[i].choices[levels[i]], "macs": macs}
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
