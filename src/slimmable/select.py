"""Budget selector: the most accurate width whose cost fits a deployment budget.

Accuracy per width comes from an evaluation (``slimmable eval``: ``eval.json`` or the
checkpoint's ``"eval"`` entry, rows ``{"width", "top1", "top5", "macs"}``); cost is the MACs of
that table (or of :func:`slimmable.profile`) and/or latency measured by
:func:`slimmable.measure_latency`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .units import format_count, parse_count


def eval_rows(source: Any) -> list[dict]:
    """Accuracy rows from what ``slimmable eval`` / the trainer write.

    ``source``: a path (an ``eval.json``, or a checkpoint holding ``"eval"``), a checkpoint dict,
    ``{"widths": [rows]}``, a list of rows, or a list of such reports (the last one is used).
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no evaluation at {path}; run `slimmable eval CKPT` first")
        if path.suffix == ".json":
            try:
                source = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not valid JSON ({err})") from None
        else:
            from .checkpoint import load_checkpoint

            source = load_checkpoint(path)
    if isinstance(source, Mapping) and "format" in source and "state_dict" in source:
        if not source.get("eval"):
            raise ValueError(
                "the checkpoint has no evaluation; run `slimmable eval CKPT` first or give --eval"
            )
        source = source["eval"]
    if isinstance(source, Mapping) and "widths" in source:
        source = source["widths"]
    if isinstance(source, Sequence) and source and all(isinstance(r, Mapping) for r in source):
        if all("widths" in r for r in source):  # a history of reports: the latest counts
            return eval_rows(source[-1])
        if all("width" in r for r in source):
            return [_checked(r) for r in cost_rows(source)]
    raise ValueError(
        'an evaluation table is {"widths": [{"width", "top1", "top5", "macs"}, ...]}; '
        "this one is empty or has another shape"
    )


def _checked(row: dict) -> dict:
    """A row whose accuracies are fractions in [0, 1], as every table of the package has them."""
    for key in ("top1", "top5"):
        value = row.get(key)
        if value is not None and not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"width {describe(row['width'])}: {key} {value!r} is not a fraction in [0, 1]; "
                "accuracies are fractions (0.71 for 71%), as `slimmable eval --json` writes them"
            )
    return row


def same_width(a: Any, b: Any) -> bool:
    """Whether two widths (numbers, or per-layer maps) are the same setting."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            return False
        return all(math.isclose(float(a[k]), float(b[k]), abs_tol=1e-6) for k in a)
    return math.isclose(float(a), float(b), abs_tol=1e-6)


def _cost_of(width: Any, table: Sequence[Mapping], key: str, what: str) -> float:
    for row in table:
        if same_width(row["width"], width) and row.get(key) is not None:
            return float(row[key])
    raise ValueError(f"no {what} for width {describe(width)}; measure every evaluated width")


def describe(width: Any) -> str:
    """A width for messages: ``0.5``, or ``{features.3: 0.25, *: 0.75}`` (first entries)."""
    if isinstance(width, Mapping):
        items = [f"{k}: {float(v):g}" for k, v in width.items()]
        return "{" + ", ".join(items[:4]) + (", ...}" if len(items) > 4 else "}")
    return f"{float(width):g}"


def cost_rows(table: Any) -> list[dict]:
    """Rows ``{"width", <cost>...}`` from a list of rows or a :func:`slimmable.profile` result.

    A profile's nonuniform row (``"width": None`` beside a ``"width_map"``) gets its map as
    its width, so it matches the same map in the accuracy table.
    """
    if hasattr(table, "widths") and not isinstance(table, Mapping):  # a profile.Profile
        table = [row.to_dict() for row in table.widths]
    elif isinstance(table, Mapping) and "widths" in table:  # its JSON form
        table = table["widths"]
    rows = []
    for row in table:
        row = dict(row)
        if row.get("width") is None and row.get("width_map") is not None:
            row["width"] = row["width_map"]
        rows.append(row)
    return rows


def select_width(
    accuracy: Any,
    *,
    max_macs: str | float | None = None,
    max_latency_ms: float | None = None,
    macs: Any = None,
    latency: Sequence[Mapping] | None = None,
    metric: str = "top1",
) -> dict:
    """The most accurate width whose cost fits the budget, as its row with its costs.

    - ``accuracy``: the evaluated table (see :func:`eval_rows`), rows with ``width`` and
      ``metric`` (``top1`` by default; higher is better);
    - ``max_macs`` (``150M``, ``1.2G`` or a number): compared with each width's MACs, from
      ``macs`` (rows, or what :func:`slimmable.profile` returns) or else from the table's own
      ``macs`` entries;
    - ``max_latency_ms``: compared with ``latency_ms`` of ``latency`` rows
      (:func:`slimmable.measure_latency`).

    Both budgets may be given (a width must fit both). Accuracy ties go to the cheaper width.
    A budget that nothing fits raises ``ValueError`` naming the cheapest cost available.
    """
    if max_macs is None and max_latency_ms is None:
        raise ValueError("give a budget: max_macs (e.g. '150M') and/or max_latency_ms")
    rows = eval_rows(accuracy)
    if any(metric not in r for r in rows):
        raise ValueError(f"the evaluation table has no {metric!r} for every width")
    budgets: list[tuple[str, str, float, Sequence[Mapping], str]] = []
    if max_macs is not None:
        if macs is None and any(r.get("macs") is None for r in rows):
            raise ValueError(
                "the evaluation table has no MACs; pass macs= rows from slimmable.profile"
            )
        table = rows if macs is None else cost_rows(macs)
        budgets.append(("macs", "MACs", parse_count(max_macs), table, "max_macs"))
    if max_latency_ms is not None:
        limit = float(max_latency_ms)
        if not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"max_latency_ms must be a positive number, got {max_latency_ms!r}")
        if latency is None:
            raise ValueError("a latency budget needs latency= rows from slimmable.measure_latency")
        budgets.append(("latency_ms", "ms", limit, cost_rows(latency), "max_latency_ms"))

    candidates = []
    for row in rows:
        costs = {
            key: _cost_of(row["width"], table, key, "MACs" if key == "macs" else "latency")
            for key, _, _, table, _ in budgets
        }
        candidates.append({**row, **costs})
    fitting = [c for c in candidates if all(c[key] <= limit for key, _, limit, _, _ in budgets)]
    if not fitting:
        for key, unit, limit, _, name in budgets:
            cheapest = min(candidates, key=lambda c, key=key: c[key])
            if cheapest[key] > limit:
                shown = format_count if key == "macs" else (lambda v: f"{v:.3g}")
                raise ValueError(
                    f"no width fits {name}={shown(limit)}: the cheapest, width "
                    f"{describe(cheapest['width'])}, costs {shown(cheapest[key])} {unit}"
                )
        raise ValueError("no width fits all budgets at once; loosen one of them")
    first = budgets[0][0]
    return max(fitting, key=lambda c: (float(c[metric]), -float(c[first])))
