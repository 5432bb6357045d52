"""What ``slimmable.convert`` costs: conversion time, MACs per width, and the converted model's
speed at batch 1 against the sub-network ``extract_subnet`` gives (eval, CPU, frozen).

Architectures: the thirteen written for the converter's tests (``tests/byom.py``), at 224x224,
and ResNet-50 (the dense counterpart of the zoo's S-ResNet-50) for the "ResNet-50-sized model in
under 10 s" target. Each architecture runs in a fresh process: conversion is timed there once
cold (its first conversion pays torch's one-time import of its tracing machinery) and then as
the median of ``--repeats`` conversions of freshly built copies; latency is the median over
interleaved rounds of in-place / extracted time ratios at each width (target <= 1.05, as for
the zoo), with a second extracted copy as the control.

    PYTHONPATH=src python benchmarks/convert.py [--archs vgg,densenet,...] [--size 224]
        [--rounds 100] [--repeats 3] [--threads 1] [--json benchmarks/results/convert.json]
        [--markdown docs/convert.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from latency import environment, in_fresh_process, paired_ratio, replace_block

import slimmable
from slimmable.export import example_input
from slimmable.latency import interleaved_timings, keep_freed_memory
from slimmable.units import format_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test architectures
import byom

WIDTHS = [0.25, 0.5, 0.75, 1.0]
TARGET = 1.05


def build(name: str) -> torch.nn.Module:
    if name == "resnet50":
        zoo = slimmable.create_model("s_resnet50").eval()
        return slimmable.extract_subnet(zoo, 1.0)
    return byom.build(name)


def trial(name: str, size: int, rounds: int, repeats: int, threads: int) -> dict:
    """One fresh process: conversion times, MACs and latency ratios of one architecture."""
    torch.set_num_threads(threads)
    keep_freed_memory()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(1 + repeats):
        model = build(name)
        start = time.perf_counter()
        slimmable.convert(model, x, widths=WIDTHS)
        times.append(time.perf_counter() - start)
    info = model.slimmable_conversion
    macs = [r.macs for r in slimmable.profile(model, (3, size, size), WIDTHS).widths]
    row = {
        "arch": name,
        "layers": len(info.layers),
        "tied_groups": len(info.groups),
        "convert_cold_s": times[0],
        "convert_s": statistics.median(times[1:]),
        "macs": dict(zip(WIDTHS, macs, strict=True)),
        "inplace_ratio": {},
        "control_ratio": {},
    }
    if name == "resnet50":  # conversion time only: the zoo's latency benchmark covers it
        return row
    x = example_input(model, (3, size, size), 1)
    for w in WIDTHS:
        slimmable.set_width(model, w)
        extracted = slimmable.extract_subnet(model, w, input_size=size)
        control = slimmable.extract_subnet(model, w, input_size=size)
        nets = {"in-place": model, "extracted": extracted, "copy": control}
        with torch.no_grad(), slimmable.freeze(model):  # as a server runs it
            t = interleaved_timings({k: (lambda f=f: f(x)) for k, f in nets.items()}, 3, rounds)
        row["inplace_ratio"][w] = paired_ratio(t["in-place"], t["extracted"])
        row["control_ratio"][w] = paired_ratio(t["copy"], t["extracted"])
    return row


def markdown(rows: list[dict], env: dict, command: str) -> str:
    lines = [
        f"`{command}` (torch {env['torch']}, {env['threads']} thread, load average at start "
        f"{env['load_average'][0]:.1f}):",
        "",
        "| architecture | layers converted | tied groups | convert (s) | first in process (s) "
        "| MACs at 0.25 / 0.5 / 0.75 / 1.0 "
        "| in-place / extracted, batch 1 (0.25 / 0.5 / 0.75 / 1.0) | control |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        macs = " / ".join(format_count(r["macs"][w]) for w in WIDTHS)
        ratios = " / ".join(f"{r['inplace_ratio'][w]:.3f}" for w in r["inplace_ratio"]) or "-"
        control = (
            f"{min(r['control_ratio'].values()):.3f}-{max(r['control_ratio'].values()):.3f}"
            if r["control_ratio"]
            else "-"
        )
        lines.append(
            f"| {r['arch']} | {r['layers']} | {r['tied_groups']} | {r['convert_s']:.2f} "
            f"| {r['convert_cold_s']:.2f} | {macs} | {ratios} | {control} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join([*byom.ARCHITECTURES, "resnet50"]))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="benchmarks/results/convert.json")
    parser.add_argument("--markdown", default="docs/convert.md")
    args = parser.parse_args()
    env = environment(args.threads, "keep")
    rows = []
    for name in args.archs.split(","):
        row = in_fresh_process(trial, name, args.size, args.rounds, args.repeats, args.threads)
        rows.append(row)
        worst = max(row["inplace_ratio"].values(), default=float("nan"))
        print(
            f"{name:<18} convert {row['convert_s']:6.2f} s (cold {row['convert_cold_s']:5.2f} s)"
            f"  worst in-place/extracted {worst:.3f}",
            flush=True,
        )
    command = "PYTHONPATH=src python benchmarks/convert.py " + " ".join(sys.argv[1:])
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "convert", "command": command.strip(), "env": env, "rows": rows}
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    if args.markdown:
        replace_block(Path(args.markdown), "convert", markdown(rows, env, command.strip()))
        print(f"table written to {args.markdown}")
    misses = [r["arch"] for r in rows if any(v > TARGET for v in r["inplace_ratio"].values())]
    if misses:
        print(f"in-place / extracted above {TARGET} for: {', '.join(misses)}")


if __name__ == "__main__":
    main()
