"""In-place slimmed model vs extracted sub-network vs extracted with BN folded (eval, CPU).

For each model and each of its widths: the slimmable model switched to that width, the dense
sub-network ``extract_subnet`` returns, and the same with batch norm folded into the convs, run
on one input in interleaved rounds (each round times every variant once; the rounds cycle
through every order). A ratio is the median over rounds of the ratio of the two variants' times
in that round, so load from other processes cancels out. A fourth variant, a second extracted
copy of the same sub-network, is the control: copy / extracted shows how far from 1.0 two
identical networks measure (the noise floor the targets are read against).

Each model is measured in ``--trials`` fresh processes and a reported ratio is the median of
the trials' ratios (their range is in the JSON and the table): where a process's tensors land in
memory shifts one variant against another by 1-2 % for that process's whole life, which more
rounds in one process do not average out. Each process first makes glibc keep freed memory
(``slimmable.latency.keep_freed_memory``; ``--malloc system`` leaves the default), otherwise
page faults on freshly mapped activations take nearly half the time at batch 16 and width 1.0.
Targets: in-place / extracted <= 1.05 at batch 1 and <= 1.02 at batch 16; folded faster than
extracted.

    PYTHONPATH=src python benchmarks/latency.py \
        [--models s_mobilenet_v1,s_mobilenet_v2] [--batches 1,16] [--size 224] \
        [--trials 5] [--rounds 30,16] [--malloc keep|system] \
        [--json benchmarks/results/latency.json] [--markdown docs/deployment.md]

The markdown table replaces the block between ``<!-- latency:begin -->`` and
``<!-- latency:end -->`` in the given file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

import slimmable
from slimmable.export import example_input
from slimmable.latency import interleaved_timings, keep_freed_memory

T = TypeVar("T")
TARGETS = {1: 1.05, 16: 1.02}  # in-place / extracted, by batch size
VARIANTS = ("in-place", "extracted", "folded", "copy")
RATIOS = {"inplace": "in-place", "folded": "folded", "control": "copy"}  # each over extracted


def environment(threads: int, malloc: str = "system") -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "malloc": malloc,
        "load_average": list(os.getloadavg()),
    }


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[i] / b[i]`` (times of two variants in the same round)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def page_faults(fn, calls: int = 3) -> float:
    """Median minor page faults per call of ``fn`` (pages the kernel mapped and zeroed)."""
    counts = []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(counts)


def in_fresh_process(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` run in a new (spawned) Python process: fresh heap, fresh memory layout."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def trial(
    name: str, batches: list[int], size: int, rounds: dict[int, int], threads: int, malloc: str
) -> list[dict]:
    """One fresh process's measurements of every width of ``name``: times and paired ratios."""
    torch.set_num_threads(threads)
    if malloc == "keep" and not keep_freed_memory():
        raise SystemExit("--malloc keep needs glibc (Linux); use --malloc system")
    torch.manual_seed(0)
    model = slimmable.create_model(name).eval()
    widths = slimmable.width_choices(model)
    if widths is None:
        raise SystemExit(f"{name} is not an S-Net; this benchmark runs the fixed widths")
    rows = []
    for w in sorted(widths, reverse=True):
        slimmable.set_width(model, w)
        nets = {
            "in-place": model,
            "extracted": slimmable.extract_subnet(model, w, input_size=size),
            "folded": slimmable.extract_subnet(model, w, fold_bn=True, input_size=size),
            "copy": slimmable.extract_subnet(model, w, input_size=size),  # the control
        }
        for batch in batches:
            x = example_input(model, size, batch)
            with torch.no_grad(), slimmable.freeze(model):  # as a server runs it
                ref = model(x)
                for net in list(nets.values())[1:]:  # the same function before timing it
                    torch.testing.assert_close(net(x), ref, rtol=1e-3, atol=1e-3)
                times = interleaved_timings(
                    {k: (lambda f=f, x=x: f(x)) for k, f in nets.items()},
                    warmup=2,
                    repeats=rounds[batch],
                )
                faults = page_faults(lambda x=x: model(x))
            rows.append(
                {
                    "model": name,
                    "width": w,
                    "batch": batch,
                    "params": sum(p.numel() for p in nets["extracted"].parameters()),
                    "inplace_page_faults": faults,
                    **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()},
                    **{
                        f"{r}_ratio": paired_ratio(times[v], times["extracted"])
                        for r, v in RATIOS.items()
                    },
                }
            )
    return rows


def combine(trials: list[list[dict]], rounds: dict[int, int]) -> list[dict]:
    """One row per (width, batch): medians over the trials, with the range of each ratio."""
    rows = []
    for same in zip(*trials, strict=True):
        first = same[0]
        row = {k: first[k] for k in ("model", "width", "batch", "params")}
        for v in VARIANTS:
            row[f"{v}_ms"] = statistics.median(t[f"{v}_ms"] for t in same)
        row["inplace_page_faults"] = statistics.median(t["inplace_page_faults"] for t in same)
        for r in RATIOS:
            values = [t[f"{r}_ratio"] for t in same]
            row[f"{r}_ratio"] = statistics.median(values)
            row[f"{r}_ratio_trials"] = values
        row["rounds"] = rounds[row["batch"]]
        row["trials"] = len(same)
        row["meets_target"] = (
            row["inplace_ratio"] <= TARGETS.get(row["batch"], 1.02) and row["folded_ratio"] < 1.0
        )
        rows.append(row)
    return rows


def measure_model(name: str, args: argparse.Namespace, rounds: dict[int, int]) -> list[dict]:
    """``args.trials`` trials of ``name``, each in a fresh process."""
    trials = []
    batches = [int(b) for b in args.batches.split(",")]
    for i in range(args.trials):
        start = time.time()
        trials.append(
            in_fresh_process(trial, name, batches, args.size, rounds, args.threads, args.malloc)
        )
        print(f"  {name}: trial {i + 1}/{args.trials} took {time.time() - start:.0f} s", flush=True)
    rows = combine(trials, rounds)
    for row in rows:
        print(format_row(row), flush=True)
    return rows


HEADER = (
    f"{'model':<16} {'width':>5} {'batch':>5} {'in-place ms':>11} {'extracted ms':>12} "
    f"{'folded ms':>9} {'in-place/ext (trials)':>22} {'folded/ext':>10} {'copy/ext':>8} "
    f"{'faults':>6}"
)


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def format_row(r: dict) -> str:
    inplace = f"{r['inplace_ratio']:.3f} ({spread(r['inplace_ratio_trials'])})"
    return (
        f"{r['model']:<16} {r['width']:>5.2f} {r['batch']:>5} {r['in-place_ms']:>11.2f} "
        f"{r['extracted_ms']:>12.2f} {r['folded_ms']:>9.2f} {inplace:>22} "
        f"{r['folded_ratio']:>10.3f} {r['control_ratio']:>8.3f} {r['inplace_page_faults']:>6.0f}"
    )


def markdown(rows: list[dict], env: dict, command: str) -> str:
    malloc = (
        "glibc keeping freed memory (`keep_freed_memory`)"
        if env["malloc"] == "keep"
        else "the system's malloc settings"
    )
    lines = [
        f"Measured with `{command}` (torch {env['torch']}, {env['threads']} intra-op thread(s), "
        f"{malloc}, {env['cpu_count']} cores shared with other work, load average "
        f"{env['load_average'][0]:.1f} at start and {env['load_average_end'][0]:.1f} at the end; "
        f"{rows[0]['trials']} fresh processes per model; times: medians; ratios: medians over "
        "the processes of each one's median per-round ratio, with their range; control: a "
        "second extracted copy against the first, the noise floor; faults: page faults per "
        "in-place forward).",
        "",
        "| model | width | batch | in-place ms | extracted ms | folded ms | in-place / extracted "
        "| (range over processes) | folded / extracted | control | faults |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['width']:g} | {r['batch']} | {r['in-place_ms']:.2f} | "
            f"{r['extracted_ms']:.2f} | {r['folded_ms']:.2f} | {r['inplace_ratio']:.3f} | "
            f"{spread(r['inplace_ratio_trials'])} | {r['folded_ratio']:.3f} | "
            f"{r['control_ratio']:.3f} | {r['inplace_page_faults']:.0f} |"
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
    parser.add_argument(
        "--rounds", default="30,16", help="interleaved rounds per batch size, in each trial"
    )
    parser.add_argument("--trials", type=int, default=5, help="fresh processes per model")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op CPU threads (1: robust on a shared box)"
    )
    parser.add_argument(
        "--malloc",
        choices=("keep", "system"),
        default="keep",
        help="keep: glibc keeps freed memory (no page faults per forward); system: as configured",
    )
    parser.add_argument("--json", default="benchmarks/results/latency.json")
    parser.add_argument("--markdown", default="docs/deployment.md")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    batches = [int(b) for b in args.batches.split(",")]
    counts = [int(r) for r in args.rounds.split(",")]
    rounds = {b: counts[min(i, len(counts) - 1)] for i, b in enumerate(batches)}
    env = environment(args.threads, args.malloc)
    print(
        f"{args.threads} thread(s), {args.size}px, malloc {args.malloc}, {args.trials} trials "
        f"per model of {rounds} interleaved rounds per batch size"
    )
    print(HEADER)
    start = time.time()
    rows = []
    for name in args.models.split(","):
        rows += measure_model(name, args, rounds)
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
