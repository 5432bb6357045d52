"""Slimmed layers vs the same dense torch layers built at that width (eval, CPU).

A MobileNet-like stack (pointwise conv, BN, ReLU, depthwise conv, BN, ReLU) x depth, run in
place at each width against ``nn.Conv2d``/``nn.BatchNorm2d`` modules built with that width's
channels and weights. Runs are interleaved and the median of repeats is compared, so the ratio
is measured in one process under the same load. Target: slimmed / dense <= 1.05 at batch 1.

    python benchmarks/layers.py [--json benchmarks/results/layers.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import slimmable
from slimmable.layers import USBatchNorm2d, USConv2d, make_divisible


def slim_stack(channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = [USConv2d(3, channels, 3, 2, 1, bias=False, fixed_in=True)]
    layers += [USBatchNorm2d(channels), nn.ReLU()]
    for _ in range(depth):
        layers += [USConv2d(channels, channels, 1, bias=False), USBatchNorm2d(channels), nn.ReLU()]
        layers += [USConv2d(channels, channels, 3, 1, 1, bias=False, depthwise=True)]
        layers += [USBatchNorm2d(channels), nn.ReLU()]
    return nn.Sequential(*layers)


def dense_copy(slim: nn.Sequential, width: float) -> nn.Sequential:
    """The same stack as plain torch layers at ``width`` (weights and calibrated BN copied)."""
    layers: list[nn.Module] = []
    cin = 3
    for m in slim:
        if isinstance(m, USConv2d):
            cout, cin_pg, groups = m.active_shape(cin)
            conv = nn.Conv2d(
                cin, cout, m.kernel_size, m.stride, m.padding, groups=groups, bias=False
            )
            conv.weight.data.copy_(m.weight[:cout, :cin_pg])
            layers.append(conv)
            cin = cout
        elif isinstance(m, USBatchNorm2d):
            bn = nn.BatchNorm2d(cin)
            slot = m.calibrated_keys().index(m.stats_key)
            bn.weight.data.copy_(m.weight[:cin])
            bn.bias.data.copy_(m.bias[:cin])
            bn.running_mean.copy_(m.calib_mean[slot, :cin])
            bn.running_var.copy_(m.calib_var[slot, :cin])
            layers.append(bn)
        else:
            layers.append(m)
    return nn.Sequential(*layers).eval()


def paired_times(a, b, x: torch.Tensor, calls: int) -> tuple[list[float], list[float]]:
    """Milliseconds of ``calls`` calls each of ``a`` and ``b``, alternating call by call, so
    that both see the same machine load."""
    ta, tb = [], []
    for i in range(2 * calls):
        fn, out = (a, ta) if i % 2 == 0 else (b, tb)
        t0 = time.perf_counter()
        fn(x)
        out.append((time.perf_counter() - t0) * 1e3)
    return ta, tb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--widths", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--calls", type=int, default=60, help="timed calls per variant (batch 1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", default="benchmarks/results/layers.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = [float(w) for w in args.widths.split(",")]
    slim = slim_stack(args.channels, args.depth)
    calib = [torch.randn(16, 3, args.image_size, args.image_size) for _ in range(2)]
    slimmable.calibrate(slim, calib, widths)
    slim.eval()
    rows = []
    threads = torch.get_num_threads()
    print(
        f"{args.depth}x(pw+dw) stack, {args.channels} channels, {args.image_size}px, "
        f"{threads} threads; calls alternate slimmed/dense; ratio of medians and of minimums"
    )
    print(
        f"{'batch':>5} {'width':>6} {'chan':>5} {'slimmed ms':>11} {'dense ms':>9} "
        f"{'ratio':>6} {'min ratio':>9}"
    )
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, 3, args.image_size, args.image_size)
        calls = args.calls if batch == 1 else max(3, args.calls // 10)
        for w in widths:
            slimmable.set_width(slim, w)
            dense = dense_copy(slim, w)
            with torch.no_grad(), slimmable.freeze(slim):  # as a server runs it
                torch.testing.assert_close(slim(x), dense(x), rtol=1e-4, atol=1e-4)
                slim_ms, dense_ms = paired_times(slim, dense, x, calls)
            s, d = statistics.median(slim_ms), statistics.median(dense_ms)
            min_ratio = min(slim_ms) / min(dense_ms)
            row = {
                "batch": batch,
                "width": w,
                "channels": make_divisible(args.channels * w),
                "slimmed_ms": s,
                "dense_ms": d,
                "ratio": s / d,
                "min_ratio": min_ratio,
            }
            rows.append(row)
            print(
                f"{batch:>5} {w:>6.2f} {row['channels']:>5} {s:>11.3f} {d:>9.3f} "
                f"{s / d:>6.3f} {min_ratio:>9.3f}"
            )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"benchmark": "layers", "threads": threads, "config": vars(args), "rows": rows},
            indent=2,
        )
    )
    worst = max(r["ratio"] for r in rows if r["batch"] == 1)
    worst_min = max(r["min_ratio"] for r in rows if r["batch"] == 1)
    print(
        f"worst batch-1 ratio {worst:.3f}, of minimums {worst_min:.3f} (target <= 1.05); "
        f"wrote {out}"
    )


if __name__ == "__main__":
    main()
