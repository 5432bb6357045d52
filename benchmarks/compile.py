"""Sandwich-rule training step, eager vs compiled, NCHW vs channels-last (CPU).

Each variant trains its own copy of the same US-Net with the sandwich rule (largest, smallest
and two random widths per step, forward and backward, one SGD step) on the same random batch:

- ``eager``: no compilation (the reference the ratios are taken against);
- ``eager + channels_last``: the model and the batch in channels-last memory format;
- ``torch.compile``: ``torch.compile(model, dynamic=True)``: it specializes on channel counts,
  recompiles at every new width until dynamo's recompile limit, then runs new widths eagerly;
- ``compile_slimmable`` (``train.compile``): one graph for every width; its convolutions are
  opaque custom operators (``slimmable.layers.opaque``);
- ``compile_slimmable + channels_last``: both.

Every variant first runs ``--warmup`` steps (compilation happens there: graphs and seconds are
reported); then the timed steps alternate between variants, ``--rounds`` rounds with the same
widths for every variant within a round. Reported: the median step, and the median and range of
the per-round ratios to eager, by wall clock and by this thread's CPU time. Controls at full
width (forward+backward, against the extracted dense network run eagerly) show what Inductor
gains when it sees the convolutions (the dense network compiled, static or dynamic shapes) and
what it gains when it does not (the slimmable model compiled at one width, static shapes).
"convs": the share of a profiled step's CPU time spent in oneDNN convolutions.

    PYTHONPATH=src python benchmarks/compile.py [--model us_small_cnn] [--batch 64] [--size 32] \
        [--in-chans 3] [--rounds 12] [--json benchmarks/results/compile.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch._dynamo.utils import counters

import slimmable

VARIANTS = (
    "eager",
    "eager + channels_last",
    "torch.compile",
    "compile_slimmable",
    "compile_slimmable + channels_last",
)


def sandwich(rng: random.Random, lo: float, hi: float) -> list[float]:
    return [hi, lo] + [round(rng.uniform(lo, hi), 4) for _ in range(2)]


class Variant:
    """One copy of the model, how it is called, and its optimizer."""

    def __init__(self, name: str, model: nn.Module, x: Tensor) -> None:
        self.name = name
        self.model = copy.deepcopy(model)
        self.x = x
        if "channels_last" in name:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = x.contiguous(memory_format=torch.channels_last)
        net: Callable[[Tensor], Tensor] = self.model
        if name.startswith("torch.compile"):
            net = torch.compile(self.model, dynamic=True)
        elif name.startswith("compile_slimmable"):
            net = slimmable.compile_slimmable(self.model)
        self.net = net
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)

    def step(self, widths: list[float], y: Tensor) -> tuple[float, float]:
        """One sandwich step; (wall, thread CPU) seconds."""
        t0, c0 = time.perf_counter(), time.thread_time()
        self.opt.zero_grad(set_to_none=True)
        for w in widths:
            slimmable.set_width(self.model, w)
            nn.functional.cross_entropy(self.net(self.x), y).backward()
        self.opt.step()
        return time.perf_counter() - t0, time.thread_time() - c0


def conv_share(v: Variant, widths: list[float], y: Tensor) -> float:
    """Share of one step's CPU time (profiler, self time) spent in oneDNN convolutions."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        v.step(widths, y)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    convs = ("aten::convolution_backward", "aten::mkldnn_convolution")
    return sum(e.self_cpu_time_total for e in events if e.key in convs) / total


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def controls(model: nn.Module, x: Tensor, y: Tensor, rounds: int) -> dict:
    """Forward+backward at full width, against the dense network there run eagerly: the dense
    network compiled (Inductor sees its convolutions), with static and with dynamic shapes, and
    the slimmable model compiled with static shapes (opaque convolutions, one width)."""
    hi = slimmable.width_bounds(model)[1]
    slimmable.calibrate(model, [x], widths=[hi])  # US-Nets extract calibrated widths only
    model.train()
    dense = slimmable.extract_subnet(model, hi, input_size=x.shape[-1]).train()
    torch._dynamo.reset()
    nets: dict[str, Callable[[Tensor], Tensor]] = {
        "dense, eager": dense,
        "dense, torch.compile": torch.compile(copy.deepcopy(dense)),
        "dense, torch.compile(dynamic=True)": torch.compile(copy.deepcopy(dense), dynamic=True),
        "slimmable, eager": model,
        "slimmable, torch.compile(dynamic=False)": torch.compile(model, dynamic=False),
    }

    def run(net: Callable[[Tensor], Tensor]) -> float:
        t0 = time.perf_counter()
        for m in (dense, model):
            m.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        return time.perf_counter() - t0

    slimmable.set_width(model, hi)
    for net in nets.values():
        for _ in range(3):
            run(net)
    times: dict[str, list[float]] = {k: [] for k in nets}
    for _ in range(rounds):
        for k, net in nets.items():
            times[k].append(run(net))
    ref = times["dense, eager"]
    return {
        k: {
            "ms": 1e3 * statistics.median(t),
            "vs_dense_eager": spread([a / b for a, b in zip(t, ref, strict=True)]),
        }
        for k, t in times.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="us_small_cnn")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", default="benchmarks/results/compile.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = slimmable.create_model(args.model, num_classes=10, in_chans=args.in_chans).train()
    x = torch.randn(args.batch, args.in_chans, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    lo, hi = slimmable.width_bounds(model)
    names = args.variants.split(",")
    if names[0] != "eager" or any(n not in VARIANTS for n in names):
        raise SystemExit(f"--variants: 'eager' first, then any of {', '.join(VARIANTS[1:])}")

    variants, rows = [], {}
    for name in names:
        torch._dynamo.reset()  # each variant compiles on its own and counts its own graphs
        counters.clear()
        v = Variant(name, model, x)
        rng = random.Random(0)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            v.step(sandwich(rng, lo, hi), y)
        rows[name] = {"variant": name, "graphs": counters["stats"]["unique_graphs"],
                      "warmup_s": time.perf_counter() - t0}  # fmt: skip
        variants.append(v)

    times: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
    rng = random.Random(1)
    for _ in range(args.rounds):  # alternate: every variant once per round, same widths
        widths = sandwich(rng, lo, hi)
        for v in variants:
            times[v.name].append(v.step(widths, y))
    for v in variants:
        rows[v.name]["conv_share"] = conv_share(v, widths, y)
    for name, row in rows.items():
        for k, clock in enumerate(("wall", "cpu")):
            ratios = [t[k] / e[k] for t, e in zip(times[name], times["eager"], strict=True)]
            row[f"step_ms_{clock}"] = 1e3 * statistics.median(t[k] for t in times[name])
            row[f"vs_eager_{clock}"] = spread(ratios)
    control = controls(model, x, y, args.rounds)

    print(
        f"{args.model}, batch {args.batch}, {args.in_chans}x{args.size}x{args.size}, sandwich "
        f"steps (4 widths), {args.rounds} rounds alternating, {args.threads} thread(s), "
        f"torch {torch.__version__}"
    )
    print(f"{'variant':<33} {'graphs':>6} {'warm-up s':>9} {'step ms':>8} {'vs eager (range)':>17} "
          f"{'cpu time':>8} {'convs':>5}")  # fmt: skip
    for r in rows.values():
        wall, cpu = r["vs_eager_wall"], r["vs_eager_cpu"]
        span = f"({wall['min']:.2f}-{wall['max']:.2f})"
        print(f"{r['variant']:<33} {r['graphs']:>6} {r['warmup_s']:>9.1f} "
              f"{r['step_ms_wall']:>8.1f} {wall['median']:>5.2f} {span:>11} "
              f"{cpu['median']:>8.2f} {r['conv_share']:>5.0%}")  # fmt: skip
    print(f"controls at width {hi:g}, forward+backward, vs the dense network run eagerly:")
    for k, c in control.items():
        r = c["vs_dense_eager"]
        print(f"  {k:<40} {c['ms']:>8.1f} ms {r['median']:>5.2f} ({r['min']:.2f}-{r['max']:.2f})")
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
        "rows": list(rows.values()),
        "controls": control,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
