"""Where the in-place model's batch-1 time goes: each module of a frozen slimmable model against
the same module of its extracted sub-network, on the very inputs the forward gives them.

Every leaf module of the extracted network is timed (best of several rounds) beside the module
of the same name in the slimmable model, both fed the input they see in a real forward; the
differences are summed per module type of the slimmable model. Runs on any commit that has
``extract_subnet`` (``freeze`` is used where it exists), so two commits can be compared::

    PYTHONPATH=src python benchmarks/permodule.py [--model s_mobilenet_v1] [--width 0.25]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import timeit
from pathlib import Path

import torch

import slimmable


def leaf_inputs(net: torch.nn.Module, names: set[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named module of ``net`` gets in one forward of ``x``."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(net.named_modules())
    hooks = [
        modules[n].register_forward_pre_hook(
            lambda _m, args, n=n: seen.__setitem__(n, args[0].detach().clone())
        )
        for n in names
        if n in modules
    ]
    net(x)
    for h in hooks:
        h.remove()
    return seen


def best_us(fn, rounds: int, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=rounds)) / number * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="s_mobilenet_v1")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--number", type=int, default=100)
    p.add_argument("--json", default="benchmarks/results/permodule.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = slimmable.create_model(args.model).eval()
    slimmable.set_width(model, args.width)
    sub = slimmable.extract_subnet(model, args.width, input_size=args.size).eval()
    freeze = getattr(slimmable, "freeze", None)
    x = torch.randn(1, 3, args.size, args.size)
    leaves = {n for n, m in sub.named_modules() if not list(m.children())}
    slim_modules, sub_modules = dict(model.named_modules()), dict(sub.named_modules())
    extra: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    with torch.no_grad(), freeze(model) if freeze else contextlib.nullcontext():
        slim_in, sub_in = leaf_inputs(model, leaves, x), leaf_inputs(sub, leaves, x)
        for name in sorted(set(slim_in) & set(sub_in)):
            a, b = slim_modules[name], sub_modules[name]
            ta = best_us(lambda a=a, name=name: a(slim_in[name]), args.rounds, args.number)
            tb = best_us(lambda b=b, name=name: b(sub_in[name]), args.rounds, args.number)
            extra[type(a).__name__] += ta - tb
            count[type(a).__name__] += 1
    print(f"{args.model} at {args.width:g}, batch 1, {args.size}px, one thread")
    print(f"{'module type':24s} {'modules':>7s} {'extra us (sum)':>15s} {'per call':>9s}")
    rows = []
    for kind in sorted(extra, key=lambda k: -extra[k]):
        per = extra[kind] / count[kind]
        print(f"{kind:24s} {count[kind]:7d} {extra[kind]:15.1f} {per:9.2f}")
        rows.append({"type": kind, "modules": count[kind], "extra_us": extra[kind]})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"model": args.model, "width": args.width, "rows": rows}))


if __name__ == "__main__":
    main()
