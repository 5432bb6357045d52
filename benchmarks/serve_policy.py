"""The adaptive serving policy in simulation: p99 and accuracy per load and utilisation bound.

A discrete-event model of ``slimmable serve``'s batcher, for choosing ``--utilisation`` (and
``--headroom``) without an hour of load tests: Poisson arrivals at multiples of the rate full
width sustains (``--full-rate``; default: what the last load test measured through HTTP,
``full_width_rate`` in ``benchmarks/results/serve_load.json``, so that the loads mean the same
in both); whenever the worker is free it takes every queued image (up to
``--max-batch``), asks :func:`slimmable.serve.policy.choose_width` for a width with the recent
arrival rate, and "runs" the batch for the time measured at start-up for that width and batch
size, times log-normal noise. The latency table is the server's own start-up measurement
(``slimmable.serve.app.measure_table`` on the zoo model with random weights, one thread);
HTTP is modelled as a constant per request (``--overhead-ms``). The policy code is the
server's own (``choose_width``, ``LatencyTable``, ``ArrivalRate``); what it cannot show is
the machine's own stalls, which the load test (``benchmarks/serve_load.py``) measures.

    PYTHONPATH=src python benchmarks/serve_policy.py [--model s_mobilenet_v2] [--size 224] \
        [--utilisation 1.0,0.8,0.6,0.5] [--loads 0.5,1,2,3] [--seeds 5] [--noise 0.12] \
        [--full-rate REQ_PER_S] [--json benchmarks/results/serve_policy.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch

from slimmable.latency import keep_freed_memory
from slimmable.serve import ServeConfig, zoo_backend
from slimmable.serve.app import measure_table
from slimmable.serve.policy import ArrivalRate, LatencyTable, choose_width


def simulate(
    table: dict[float, dict[int, float]],
    rate_per_s: float,
    slo_ms: float,
    *,
    headroom: float,
    utilisation: float,
    max_batch: int,
    seconds: float,
    noise: float,
    overhead_ms: float,
    seed: int,
) -> tuple[list[float], list[float]]:
    """Latencies (ms) of every request and the width each was served at."""
    rnd = random.Random(seed)
    arrivals, t = [], 0.0
    while t < 1e3 * seconds:
        t += rnd.expovariate(rate_per_s / 1e3)
        arrivals.append(t)
    learnt = LatencyTable(table)
    widths = sorted(table)
    recent = ArrivalRate()
    latencies: list[float] = []
    served: list[float] = []
    now, i, seen = 0.0, 0, 0
    while i < len(arrivals):
        now = max(now, arrivals[i])
        while seen < len(arrivals) and arrivals[seen] <= now:
            recent.add(arrivals[seen], 1)
            seen += 1
        n = min(seen - i, max_batch)
        w = choose_width(
            learnt, widths, n, now - arrivals[i], slo_ms, headroom,
            arrival_rate=recent.rate(now), utilisation=utilisation,
        )  # fmt: skip
        run = learnt.measured(w, n) * rnd.lognormvariate(0.0, noise)
        learnt.update(w, n, run)
        now += run
        for a in arrivals[i : i + n]:
            latencies.append(now - a + overhead_ms)
            served.append(w)
        i += n
    return latencies, served


def load_test_rate(path: str = "benchmarks/results/serve_load.json") -> float | None:
    """The full-width request rate the last load test measured, if there is one."""
    try:
        return float(json.loads(Path(path).read_text())["full_width_rate"])
    except (OSError, KeyError, ValueError):
        return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="s_mobilenet_v2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--headroom", type=float, default=0.8)
    p.add_argument("--utilisation", default="1.0,0.8,0.6,0.5")
    p.add_argument("--loads", default="0.5,1,2,3")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--noise", type=float, default=0.12, help="log-normal sigma of batch times")
    p.add_argument("--overhead-ms", type=float, default=6.0, help="HTTP time per request")
    p.add_argument("--full-rate", type=float, help="req/s that define 1x load (see above)")
    p.add_argument("--json", default="benchmarks/results/serve_policy.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    backend = zoo_backend(args.model, (args.size, args.size))
    table = measure_table(backend, ServeConfig(max_batch=args.max_batch)).points
    top1 = {info.width: info.top1 for info in backend.card.widths}
    full = max(table)
    slo = 4.0 * table[full][1]  # as the load test's --slo-ms auto
    sustain = args.full_rate or load_test_rate() or 1e3 / table[full][1]
    print(
        f"{args.model}: full width {table[full][1]:.1f} ms at batch 1, SLO {slo:.0f} ms, "
        f"1x load = {sustain:.1f} req/s"
    )
    print(f"{'load':>5} {'u':>5} {'p99 ms':>7} {'late':>6} {'top-1 served':>12}")
    rows = []
    for load in (float(v) for v in args.loads.split(",")):
        for u in (float(v) for v in args.utilisation.split(",")):
            p99s, lates, accuracies = [], [], []
            for seed in range(args.seeds):
                lat, served = simulate(
                    table, load * sustain, slo, headroom=args.headroom, utilisation=u,
                    max_batch=args.max_batch, seconds=args.seconds, noise=args.noise,
                    overhead_ms=args.overhead_ms, seed=seed,
                )  # fmt: skip
                lat.sort()
                p99s.append(lat[int(0.99 * (len(lat) - 1))])
                lates.append(sum(x > slo for x in lat) / len(lat))
                accuracies.append(statistics.mean(top1[w] or 0.0 for w in served))
            row = {
                "load": load,
                "utilisation": u,
                "p99_ms": statistics.median(p99s),
                "slo_violations": statistics.mean(lates),
                "accuracy": statistics.mean(accuracies),
            }
            rows.append(row)
            print(
                f"{load:>4g}x {u:>5.2f} {row['p99_ms']:>7.1f} {100 * row['slo_violations']:>5.1f}% "
                f"{100 * row['accuracy']:>11.1f}%"
            )
    out = {
        "model": args.model,
        "slo_ms": slo,
        "full_rate": sustain,
        "table_ms": {f"{w:g}": {str(n): ms for n, ms in s.items()} for w, s in table.items()},
        "top1": {f"{w:g}": a for w, a in top1.items()},
        "accuracy_source": backend.card.top1_source,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "runs": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
