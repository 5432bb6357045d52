"""Graphs compiled and step time of sandwich-rule training: eager vs torch.compile variants.

Each variant trains the same US-Net for ``--steps`` steps of the sandwich rule (largest,
smallest and two random widths per step, forward and backward), on random inputs:

- ``eager``: no compilation (the reference the ratios are taken against);
- ``torch.compile``: ``torch.compile(model, dynamic=True)``: it specializes on channel counts,
  recompiles at every new width until dynamo's recompile limit, then runs the rest eagerly;
- ``compile_slimmable``: :func:`slimmable.compile_slimmable`, one graph for every width.

Reported per variant: graphs compiled, seconds spent in the first steps (compilation included),
and the median step time once nothing new compiles, as a ratio to eager.

    PYTHONPATH=src python benchmarks/compile.py [--model us_small_cnn] [--steps 30] \
        [--batch 64] [--size 28] [--json benchmarks/results/compile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import slimmable


def sandwich(rng: random.Random, lo: float, hi: float) -> list[float]:
    return [hi, lo] + [round(rng.uniform(lo, hi), 4) for _ in range(2)]


def run(variant: str, args: argparse.Namespace) -> dict:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = slimmable.create_model(args.model, num_classes=10, in_chans=args.in_chans).train()
    net = {
        "eager": lambda m: m,
        "torch.compile": lambda m: torch.compile(m, dynamic=True),
        "compile_slimmable": slimmable.compile_slimmable,
    }[variant](model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    lo, hi = slimmable.width_bounds(model)
    rng = random.Random(0)
    x = torch.randn(args.batch, args.in_chans, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    times, graphs = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for w in sandwich(rng, lo, hi):
            slimmable.set_width(model, w)
            torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        graphs.append(counters["stats"]["unique_graphs"])
    settled = next(i for i, g in enumerate(graphs) if g == graphs[-1]) + 1  # first steady step
    steady = times[max(settled, args.steps // 2) :]
    return {
        "variant": variant,
        "graphs": graphs[-1],
        "graphs_per_step": graphs,
        "warmup_s": sum(times[: max(settled, 1)]),
        "step_ms": 1e3 * statistics.median(steady),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="us_small_cnn")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmarks/results/compile.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(v, args) for v in ("eager", "torch.compile", "compile_slimmable")]
    eager = rows[0]["step_ms"]
    print(f"{args.model}, batch {args.batch}, {args.size}px, {args.steps} sandwich steps "
          f"(4 widths each), {args.threads} thread(s), torch {torch.__version__}")  # fmt: skip
    print(f"{'variant':<18} {'graphs':>6} {'warm-up s':>9} {'step ms':>8} {'vs eager':>8}")
    for r in rows:
        r["vs_eager"] = r["step_ms"] / eager
        print(f"{r['variant']:<18} {r['graphs']:>6} {r['warmup_s']:>9.1f} {r['step_ms']:>8.1f} "
              f"{r['vs_eager']:>8.2f}")  # fmt: skip
    result = {
        "benchmark": "compile",
        "command": "PYTHONPATH=src python benchmarks/compile.py",
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
        },
        "config": vars(args),
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
