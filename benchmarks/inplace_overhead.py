"""Where the in-place model's batch-1 overhead comes from: the Python steps before each conv.

Three networks at one width, timed in interleaved rounds in fresh processes (as
``benchmarks/latency.py`` does): the slimmable model switched in place, the extracted dense
sub-network, and the in-place model whose slimmable convolutions were given a bare ``forward``
(``F.conv2d`` on the weights the layer had cached for that width: no compile check, no autograd
check, no cache lookup). If the bare variant matches the extracted network, the overhead is in
those steps, not in the kernels or the batch norms.

    PYTHONPATH=src python benchmarks/inplace_overhead.py \
        [--cases s_mobilenet_v1:0.25,s_mobilenet_v2:0.35] [--batch 1] [--trials 3] [--rounds 150]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from latency import in_fresh_process
from torch import nn

import slimmable
from slimmable.export import example_input
from slimmable.latency import interleaved_timings, keep_freed_memory
from slimmable.layers.conv import _WidthConv2d


def with_bare_convs(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose width convolutions run ``F.conv2d`` on fixed weight slices."""
    bare = copy.deepcopy(model)
    inputs: dict[nn.Module, int] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].shape[1]))
        for m in bare.modules()
        if isinstance(m, _WidthConv2d)
    ]
    with torch.no_grad():
        bare(x)
    for h in hooks:
        h.remove()
    for conv, in_channels in inputs.items():
        with torch.no_grad():
            weight, bias, groups = conv.active_weights(in_channels)

        def forward(t, conv=conv, weight=weight, bias=bias, groups=groups):
            return F.conv2d(t, weight, bias, conv.stride, conv.padding, conv.dilation, groups)

        conv.forward = forward
    return bare


def trial(name: str, width: float, batch: int, rounds: int) -> dict[str, float]:
    torch.set_num_threads(1)
    keep_freed_memory()
    torch.manual_seed(0)
    model = slimmable.create_model(name).eval()
    slimmable.set_width(model, width)
    x = example_input(model, 224, batch)
    nets = {
        "in-place": model,
        "extracted": slimmable.extract_subnet(model, width),
        "bare convs": with_bare_convs(model, x),
    }
    with torch.no_grad(), slimmable.freeze(model):  # as a server runs it
        for net in nets.values():
            torch.testing.assert_close(net(x), model(x))
        times = interleaved_timings({k: (lambda f=f: f(x)) for k, f in nets.items()}, 3, rounds)
    ext = times["extracted"]
    return {
        k: statistics.median(a / b for a, b in zip(v, ext, strict=True)) for k, v in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="s_mobilenet_v1:0.25,s_mobilenet_v2:0.35")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--json", default="benchmarks/results/inplace_overhead.json")
    args = parser.parse_args()
    rows = []
    print(f"{'model':<16} {'width':>5} {'in-place / extracted':>21} {'bare convs / extracted':>23}")
    for case in args.cases.split(","):
        name, width = case.split(":")
        trials = [
            in_fresh_process(trial, name, float(width), args.batch, args.rounds)
            for _ in range(args.trials)
        ]
        row = {
            "model": name,
            "width": float(width),
            "batch": args.batch,
            "inplace_ratio": statistics.median(t["in-place"] for t in trials),
            "bare_convs_ratio": statistics.median(t["bare convs"] for t in trials),
            "trials": trials,
        }
        rows.append(row)
        print(
            f"{name:<16} {float(width):>5.2f} {row['inplace_ratio']:>21.3f} "
            f"{row['bare_convs_ratio']:>23.3f}",
            flush=True,
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "PYTHONPATH=src python benchmarks/inplace_overhead.py " + " ".join(sys.argv[1:])
    payload = {"benchmark": "inplace_overhead", "command": command.strip(), "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
