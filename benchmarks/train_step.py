"""Algorithm 1's training step against the sum of the dense networks' steps (CPU).

One S-Net step (S-Nets, ICLR 2019, Algorithm 1): zero the gradients, then for every width,
largest first: switch, forward, loss, backward (gradients accumulate in the shared weights);
then one optimizer step. The reference is what training each width as its own network costs:
for every width, the dense network extracted at that width (``slimmable.extract_subnet``, plain
torch layers, its own SGD) runs one full step (zero, forward, loss, backward, step). The two
run on the same batch, with the trainer's optimizer (``build_optimizer``: SGD, Nesterov, the
papers' parameter groups) and loss; calls alternate (one slimmed step, then the dense steps) for
``--rounds`` rounds, so both see the same load. Reported: the median of the per-round ratios
(slimmed step / dense sum) and their range, by wall clock and by this thread's CPU time (which
a shared machine's other jobs disturb less), and per width the slimmed forward+backward over
the dense one (forward+backward only) and the one optimizer step over the dense networks' steps.
Target: the step level with the dense sum (ratio near 1).

    PYTHONPATH=src python benchmarks/train_step.py [--models s_resnet20,s_mobilenet_v2_cifar] \
        [--batch 64] [--rounds 12] [--threads 1] [--json benchmarks/results/train_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import slimmable
from slimmable.config import TrainConfig
from slimmable.train.losses import cross_entropy
from slimmable.train.optim import build_optimizer

Clock = tuple[float, float]  # (wall, thread CPU) seconds


def now() -> Clock:
    return time.perf_counter(), time.thread_time()


def since(start: Clock) -> Clock:
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


def slimmed_step(
    model: nn.Module, opt: torch.optim.Optimizer, widths: list[float], x: Tensor, y: Tensor
) -> tuple[list[Clock], Clock]:
    """Algorithm 1 as the trainer runs it: each width's zero+forward+backward, then the step."""
    times = []
    for i, w in enumerate(widths):
        start = now()
        if i == 0:
            opt.zero_grad(set_to_none=True)
        with slimmable.set_width(model, w):
            cross_entropy(model(x), y).backward()
        times.append(since(start))
    start = now()
    opt.step()
    return times, since(start)


def dense_step(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> tuple:
    """One plain training step: (zero+forward+backward, optimizer step) times."""
    start = now()
    opt.zero_grad(set_to_none=True)
    cross_entropy(net(x), y).backward()
    middle = since(start)
    start = now()
    opt.step()
    return middle, since(start)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = slimmable.create_model(name, num_classes=10).train()
    widths = sorted(slimmable.width_choices(model) or (), reverse=True)
    if not widths:
        raise SystemExit(f"{name} is no S-Net; Algorithm 1 trains an S-Net's list of widths")
    c, size, _ = model.default_cfg["input_size"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, c, size, size, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    cfg = TrainConfig()
    dense = {}
    for w in widths:  # each width's own network, in training mode, with its own SGD
        net = slimmable.extract_subnet(model, w, input_size=size).train()
        dense[w] = (net, build_optimizer(net, cfg))
    opt = build_optimizer(model, cfg)
    for _ in range(2):  # warm-up: allocator, oneDNN primitives
        slimmed_step(model, opt, widths, x, y)
        for net, dopt in dense.values():
            dense_step(net, dopt, x, y)
    rows: list[dict] = []
    for _ in range(args.rounds):
        passes, step = slimmed_step(model, opt, widths, x, y)
        ref = [dense_step(net, dopt, x, y) for net, dopt in dense.values()]
        rows.append({"passes": passes, "step": step, "dense": ref})

    result: dict = {"model": name, "widths": widths}
    for k, clock in enumerate(("wall", "cpu")):
        slim_total = [sum(t[k] for t in r["passes"]) + r["step"][k] for r in rows]
        dense_total = [sum(a[k] + b[k] for a, b in r["dense"]) for r in rows]
        result[clock] = {
            "step_ms": 1e3 * statistics.median(slim_total),
            "dense_sum_ms": 1e3 * statistics.median(dense_total),
            "ratio": spread([s / d for s, d in zip(slim_total, dense_total, strict=True)]),
            # forward+backward of each width, slimmed over dense (optimizer steps apart)
            "per_width": {
                f"{w:g}": spread([r["passes"][i][k] / r["dense"][i][0][k] for r in rows])
                for i, w in enumerate(widths)
            },
            # one step over the shared weights against one step per dense network
            "optimizer": spread([r["step"][k] / sum(b[k] for _, b in r["dense"]) for r in rows]),
        }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="s_resnet20,s_mobilenet_v2_cifar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="benchmarks/results/train_step.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = [run(name, args) for name in args.models.split(",")]
    print(
        f"Algorithm-1 step / sum of the dense networks' steps: batch {args.batch}, "
        f"{args.rounds} rounds alternating, {args.threads} thread(s), torch {torch.__version__}"
    )
    print(
        f"{'model':<22} {'clock':<5} {'step ms':>8} {'dense ms':>8} {'ratio':>6} "
        f"{'range':>11}  forward+backward per width, optimizer (medians)"
    )
    for r in results:
        for clock in ("wall", "cpu"):
            m = r[clock]
            ratio = m["ratio"]
            widths = " ".join(f"{w}:{v['median']:.2f}" for w, v in m["per_width"].items())
            widths += f"  opt:{m['optimizer']['median']:.2f}"
            print(
                f"{r['model']:<22} {clock:<5} {m['step_ms']:>8.1f} {m['dense_sum_ms']:>8.1f} "
                f"{ratio['median']:>6.3f} {ratio['min']:>5.2f}-{ratio['max']:<5.2f}  {widths}"
            )
    out = {
        "benchmark": "train_step",
        "command": "PYTHONPATH=src python benchmarks/train_step.py",
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
        },
        "config": vars(args),
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
