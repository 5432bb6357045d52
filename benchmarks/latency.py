"""In-place slimmed model vs extracted sub-network vs extracted with BN folded (eval, CPU).

For each model and each of its widths: the slimmable model switched to that width, the dense
sub-network ``extract_subnet`` returns, and the same with batch norm folded into the convs, run
on one input in interleaved rounds (each round times every variant once; the rounds cycle
through every order). A ratio is the median over rounds of the ratio of the two variants' times
in that round, so load from other processes cancels out. A fourth variant, a second extracted
copy of the same sub-network, is the control: copy / extracted shows how far from 1.0 two
identical networks measure in this process (the noise floor the targets are read against).
Targets: in-place / extracted <= 1.05 at batch 1 and <= 1.02 at batch 16; folded faster than
extracted.

    PYTHONPATH=src python benchmarks/latency.py \
        [--models s_mobilenet_v1,s_mobilenet_v2] [--batches 1,16] [--size 224] \
        [--json benchmarks/results/latency.json] [--markdown docs/deployment.md]

The markdown table replaces the block between ``<!-- latency:begin -->`` and
``<!-- latency:end -->`` in the given file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import slimmable
from slimmable.export import example_input
from slimmable.latency import interleaved_timings

TARGETS = {1: 1.05, 16: 1.02}  # in-place / extracted, by batch size
VARIANTS = ("in-place", "extracted", "folded", "copy")


def environment(threads: int) -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average": list(os.getloadavg()),
    }


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[i] / b[i]`` (times of two variants in the same round)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def measure_model(name: str, batches: list[int], size: int, rounds: dict[int, int]) -> list:
    torch.manual_seed(0)
    model = slimmable.create_model(name).eval()
    widths = slimmable.width_choices(model)
    if widths is None:
        raise SystemExit(f"{name} is not an S-Net; this benchmark runs the fixed widths")
    rows = []
    for w in sorted(widths, reverse=True):
        slimmable.set_width(model, w)
        extracted = slimmable.extract_subnet(model, w, input_size=size)
        folded = slimmable.extract_subnet(model, w, fold_bn=True, input_size=size)
        copy = slimmable.extract_subnet(model, w, input_size=size)  # the control
        params = sum(p.numel() for p in extracted.parameters())
        for batch in batches:
            x = example_input(model, size, batch)
            fns = {"in-place": model, "extracted": extracted, "folded": folded, "copy": copy}
            with torch.no_grad():
                ref = model(x)
                for net in (extracted, folded, copy):  # same function before timing it
                    torch.testing.assert_close(net(x), ref, rtol=1e-3, atol=1e-3)
                times = interleaved_timings(
                    {k: (lambda f=f, x=x: f(x)) for k, f in fns.items()},
                    warmup=2,
                    repeats=rounds[batch],
                )
            ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
            row = {
                "model": name,
                "width": w,
                "batch": batch,
                "params": params,
                **{f"{k}_ms": v for k, v in ms.items()},
                # median over rounds of the ratio of two adjacent runs: load that changes from
                # round to round (other processes on a shared machine) cancels out
                "inplace_ratio": paired_ratio(times["in-place"], times["extracted"]),
                "folded_ratio": paired_ratio(times["folded"], times["extracted"]),
                "control_ratio": paired_ratio(times["copy"], times["extracted"]),
                "ratio_of_medians": ms["in-place"] / ms["extracted"],
                "rounds": rounds[batch],
            }
            row["meets_target"] = (
                row["inplace_ratio"] <= TARGETS.get(batch, 1.02) and row["folded_ratio"] < 1.0
            )
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = (
    f"{'model':<16} {'width':>5} {'batch':>5} {'in-place ms':>11} {'extracted ms':>12} "
    f"{'folded ms':>9} {'in-place/ext':>12} {'folded/ext':>10} {'copy/ext':>8}"
)


def format_row(r: dict) -> str:
    return (
        f"{r['model']:<16} {r['width']:>5.2f} {r['batch']:>5} {r['in-place_ms']:>11.2f} "
        f"{r['extracted_ms']:>12.2f} {r['folded_ms']:>9.2f} {r['inplace_ratio']:>12.3f} "
        f"{r['folded_ratio']:>10.3f} {r['control_ratio']:>8.3f}"
    )


def markdown(rows: list[dict], env: dict, command: str) -> str:
    lines = [
        f"Measured with `{command}` (torch {env['torch']}, {env['threads']} intra-op thread(s), "
        f"{env['cpu_count']} cores shared with other work, load average "
        f"{env['load_average'][0]:.1f} at start and {env['load_average_end'][0]:.1f} at the end; "
        "times: medians of interleaved rounds; ratios: medians of the per-round ratios; "
        "control: a second extracted copy against the first, the noise floor).",
        "",
        "| model | width | batch | in-place ms | extracted ms | folded ms | in-place / extracted "
        "| folded / extracted | control |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['width']:g} | {r['batch']} | {r['in-place_ms']:.2f} | "
            f"{r['extracted_ms']:.2f} | {r['folded_ms']:.2f} | {r['inplace_ratio']:.3f} | "
            f"{r['folded_ratio']:.3f} | {r['control_ratio']:.3f} |"
        )
    return "\n".join(lines)


def replace_block(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the ``<!-- name:begin -->`` and ``<!-- name:end -->`` markers."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else ""
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{text}\n{end}{tail}"
    else:
        doc = f"{doc.rstrip()}\n\n{begin}\n{text}\n{end}\n"
    path.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="s_mobilenet_v1,s_mobilenet_v2")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", default="40,12", help="interleaved rounds per batch size")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op CPU threads (1: robust on a shared box)"
    )
    parser.add_argument("--json", default="benchmarks/results/latency.json")
    parser.add_argument("--markdown", default="docs/deployment.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    counts = [int(r) for r in args.rounds.split(",")]
    rounds = {b: counts[min(i, len(counts) - 1)] for i, b in enumerate(batches)}
    env = environment(torch.get_num_threads())
    print(f"{env['threads']} threads, {args.size}px, median of interleaved rounds {rounds}")
    print(HEADER)
    start = time.time()
    rows = []
    for name in args.models.split(","):
        rows += measure_model(name, batches, args.size, rounds)
    env["load_average_end"] = list(os.getloadavg())
    env["seconds"] = round(time.time() - start, 1)
    command = "PYTHONPATH=src python benchmarks/latency.py " + " ".join(sys.argv[1:])
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "latency",
        "command": command.strip(),
        "targets": {"inplace_over_extracted": TARGETS, "folded_over_extracted": "< 1"},
        "environment": env,
        "config": vars(args),
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    if args.markdown:
        replace_block(Path(args.markdown), "latency", markdown(rows, env, command.strip()))
    missed = [r for r in rows if not r["meets_target"]]
    worst = {b: max(r["inplace_ratio"] for r in rows if r["batch"] == b) for b in batches}
    print(
        "worst in-place/extracted: "
        + ", ".join(f"batch {b}: {v:.3f} (target {TARGETS.get(b, 1.02)})" for b, v in worst.items())
        + f"; folded faster in {sum(r['folded_ratio'] < 1 for r in rows)}/{len(rows)} rows"
    )
    wrote = f"{out} and {args.markdown}" if args.markdown else f"{out}"
    print(f"{len(missed)} rows miss a target; wrote {wrote}")


if __name__ == "__main__":
    main()
