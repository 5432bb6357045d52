"""Cost of switching a model's width at run time, and of the first forward after a switch.

For each model: ``set_width`` timed over many switches between its deployed widths (plain call,
and as a ``with`` block that restores), then at batch 1 the first and the second forward after
each switch, in rounds over the widths (every width visited before: the steady state of a
deployment that moves between a few widths), and on a fresh copy of the model (the first visit
of each width, which builds the contiguous weight slices it keeps). US models are calibrated on
random inputs first (timing does not depend on the statistics). Target: a switch well under a
millisecond; the first forward after a switch no slower than the second.

    PYTHONPATH=src python benchmarks/switch.py [--models s_mobilenet_v2,us_mobilenet_v2] \
        [--json benchmarks/results/switch.json] [--markdown docs/deployment.md]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from latency import environment, replace_block

import slimmable
from slimmable.export import example_input


def deployed_widths(model: torch.nn.Module) -> list[float]:
    choices = slimmable.width_choices(model)
    if choices is not None:
        return list(choices)
    lo, hi = slimmable.width_bounds(model)
    return [round(lo + (hi - lo) * i / 3, 4) for i in range(4)]


def time_switches(model: torch.nn.Module, widths: list[float], n: int) -> dict:
    plain, scoped = [], []
    for i in range(n):
        w = widths[i % len(widths)]
        t0 = time.perf_counter()
        slimmable.set_width(model, w)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with slimmable.set_width(model, widths[(i + 1) % len(widths)]):
            pass
        scoped.append(time.perf_counter() - t0)
    return {
        "switch_us": 1e6 * statistics.median(plain),
        "switch_with_restore_us": 1e6 * statistics.median(scoped),
    }


def first_and_second(model: torch.nn.Module, widths: list[float], x, rounds: int) -> dict:
    """Median forward ms, first and second after each switch, and the median of their ratio."""
    first, second = [], []
    with torch.no_grad(), slimmable.freeze(model):  # as a server runs it
        for r in range(rounds):
            for w in widths[r % 2 :] + widths[: r % 2]:  # alternate the order
                slimmable.set_width(model, w)
                t0 = time.perf_counter()
                model(x)
                t1 = time.perf_counter()
                model(x)
                t2 = time.perf_counter()
                first.append(t1 - t0)
                second.append(t2 - t1)
    return {
        "first_ms": 1e3 * statistics.median(first),
        "second_ms": 1e3 * statistics.median(second),
        "first_over_second": statistics.median(a / b for a, b in zip(first, second, strict=True)),
    }


def measure(name: str, size: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = slimmable.create_model(name).eval()
    widths = deployed_widths(model)
    x = example_input(model, size, 1)
    if slimmable.width_choices(model) is None:
        slimmable.calibrate(model, [example_input(model, size, 8)], widths)
    fresh = copy.deepcopy(model)  # memos start empty: the cold first visits
    cold = first_and_second(fresh, widths, x, 1)
    with torch.no_grad(), slimmable.freeze(model):
        for w in widths:  # warm-up: every width visited once
            slimmable.set_width(model, w)
            model(x)
    warm = first_and_second(model, widths, x, rounds)
    row = {"model": name, "widths": widths, **time_switches(model, widths, 2000)}
    row.update({f"warm_{k}": v for k, v in warm.items()})
    row.update({f"cold_{k}": v for k, v in cold.items()})
    return row


def markdown(rows: list[dict], env: dict, command: str) -> str:
    lines = [
        f"Measured with `{command}` (torch {env['torch']}, {env['threads']} intra-op thread(s), "
        f"batch 1, load average {env['load_average'][0]:.1f} at start and "
        f"{env['load_average_end'][0]:.1f} at the end).",
        "",
        "| model | set_width µs | with-block µs | 1st / 2nd forward after a switch | "
        "1st / 2nd, first visit of a width |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['switch_us']:.0f} | {r['switch_with_restore_us']:.0f} | "
            f"{r['warm_first_over_second']:.3f} ({r['warm_first_ms']:.2f} / "
            f"{r['warm_second_ms']:.2f} ms) | {r['cold_first_over_second']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="s_mobilenet_v2,us_mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15, help="rounds over the widths")
    parser.add_argument("--threads", type=int, default=1, help="intra-op CPU threads")
    parser.add_argument("--json", default="benchmarks/results/switch.json")
    parser.add_argument("--markdown", default="docs/deployment.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = environment(torch.get_num_threads())
    rows = []
    for name in args.models.split(","):
        row = measure(name, args.size, args.rounds)
        rows.append(row)
        print(
            f"{name}: set_width {row['switch_us']:.0f} us (with restore "
            f"{row['switch_with_restore_us']:.0f} us); first/second forward after a switch "
            f"{row['warm_first_over_second']:.3f} ({row['warm_first_ms']:.2f} / "
            f"{row['warm_second_ms']:.2f} ms); first visit {row['cold_first_over_second']:.2f}",
            flush=True,
        )
    command = "PYTHONPATH=src python benchmarks/switch.py " + " ".join(sys.argv[1:])
    env["load_average_end"] = list(os.getloadavg())
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "switch", "command": command.strip(), "environment": env}
    payload.update({"config": vars(args), "rows": rows})
    out.write_text(json.dumps(payload, indent=2) + "\n")
    if args.markdown:
        replace_block(Path(args.markdown), "switch", markdown(rows, env, command.strip()))
    print(f"wrote {out}" + (f" and {args.markdown}" if args.markdown else ""))


if __name__ == "__main__":
    main()
