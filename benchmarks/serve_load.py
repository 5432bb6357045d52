"""Load test of ``slimmable serve``: does the adaptive policy hold the SLO where full width fails?

Starts ``slimmable serve`` on 127.0.0.1 (S-MobileNet v2, random weights: top-1 per width is the
paper's ImageNet figure from the model's config), once per policy: adaptive, fixed full width,
fixed smallest width. It drives open-loop Poisson arrivals (each request a JPEG, sent at its
scheduled time whatever the server does) at 0.5x, 1x, 2x and 4x the request rate that full
width sustains, measured first by a closed-loop saturation run of a fixed-full server; each load
runs the three policies in turn (the servers wait idle meanwhile), so a change in the machine's
other load hits them alike.
Every run is bounded in time (``--seconds``) and count (``--max-requests``); latency is measured
by the client from each request's scheduled time to its answer. Writes

    {"slo_ms", "runs": [{"policy", "width", "load", "p50_ms", "p99_ms", "throughput",
                          "slo_violations", "accuracy", ...}]}

to ``benchmarks/results/serve_load.json`` (``slo_violations``: the fraction of requests answered
later than the SLO or not at all; ``accuracy``: top-1 of the widths actually served, weighted
by requests) and a plot to ``docs/img/serve_load.png``.

    nice -n 10 PYTHONPATH=src python benchmarks/serve_load.py [--model s_mobilenet_v2] \
        [--size 224] [--slo-ms auto] [--seconds 15] [--max-requests 2000] [--threads 1] \
        [--markdown README.md,docs/serving.md] [--from-json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

HOST = "127.0.0.1"  # load tests send traffic to this machine only
LOADS = (0.5, 1.0, 2.0, 4.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def jpeg(size: int) -> bytes:
    """A smooth test picture (compresses like a photo, unlike noise)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([xx, yy, 0.5 + 0.5 * np.sin(6 * xx * yy)], -1)
    buf = io.BytesIO()
    Image.fromarray((255 * rgb).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def post(port: int, body: bytes, timeout: float) -> tuple[int, dict]:
    """One ``POST /v1/predict`` on its own connection; ``(status, JSON answer)``."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    header, _, payload = data.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, json.loads(payload or b"{}")


async def open_loop(port: int, body: bytes, rate: float, seconds: float, max_requests: int,
                    seed: int) -> list[dict]:  # fmt: skip
    """Poisson arrivals at ``rate`` per second for ``seconds`` (at most ``max_requests``)."""
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=max_requests)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]
    results: list[dict] = []
    start = time.perf_counter()

    async def one(at: float) -> None:
        try:
            status, answer = await post(port, body, timeout=30.0)
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            status, answer = 0, {}
        done = time.perf_counter() - start
        results.append({"status": status, "latency_ms": 1e3 * (done - at), "done": done,
                        "width": answer.get("width")})  # fmt: skip

    tasks = []
    for at in arrivals:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(float(at))))
    await asyncio.gather(*tasks)
    return results


async def closed_loop(port: int, body: bytes, clients: int, seconds: float) -> float:
    """Requests per second that ``clients`` back-to-back clients get answered."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            status, _ = await post(port, body, timeout=30.0)
            done += status == 200

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - start)


def get(port: int, path: str) -> dict:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class Server:
    """``slimmable serve`` in a subprocess, stopped with SIGTERM (which drains it)."""

    def __init__(self, args: argparse.Namespace, policy: str, width: float | None, slo: float):
        self.port = free_port()
        cmd = [sys.executable, "-m", "slimmable", "serve", args.model]
        cmd += ["--input-size", str(args.size), "--port", str(self.port), "--policy", policy]
        cmd += ["--slo-ms", str(slo), "--max-batch", str(args.max_batch)]
        cmd += ["--threads", str(args.threads)]
        if width is not None:
            cmd += ["--width", str(width)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if get(self.port, "/v1/health").get("status") == "ok":
                    return
            except OSError:
                time.sleep(0.5)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
        raise RuntimeError("the server did not start in 300 s")

    def idle(self, timeout: float = 120.0) -> None:
        """Wait until the server has nothing queued or running (requests whose client gave up
        are dropped, not computed), so the next run has the machine to itself."""

        def busy() -> bool:
            health = get(self.port, "/v1/health")
            return bool(health["queued_images"] or health["running_images"])

        deadline = time.time() + timeout
        while time.time() < deadline and busy():
            time.sleep(0.2)
        time.sleep(1.0)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def summarize(results: list[dict], slo: float, top1: dict[float, float | None]) -> dict:
    ok = [r for r in results if r["status"] == 200]
    lat = sorted(r["latency_ms"] for r in ok)
    served = Counter(r["width"] for r in ok)
    known = {w: n for w, n in served.items() if top1.get(w) is not None}
    accuracy = (sum(top1[w] * n for w, n in known.items()) / sum(known.values())) if known else None
    span = max((r["done"] for r in ok), default=0.0)
    late = sum(1 for r in results if r["status"] != 200 or r["latency_ms"] > slo)
    return {
        "requests": len(results),
        "answered": len(ok),
        "p50_ms": statistics.median(lat) if lat else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat else None,
        "throughput": len(ok) / span if span else 0.0,
        "slo_violations": late / len(results) if results else None,
        "accuracy": accuracy,
        "widths_served": {f"{w:g}": n for w, n in sorted(served.items())},
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for label in dict.fromkeys(_label(r) for r in result["runs"]):
        runs = [r for r in result["runs"] if _label(r) == label]
        loads = [r["load"] for r in runs]
        a.plot(loads, [r["p99_ms"] for r in runs], marker="o", label=label)
        b.plot(loads, [100 * (r["accuracy"] or 0) for r in runs], marker="o", label=label)
    a.axhline(result["slo_ms"], color="gray", linestyle="--", label="SLO")
    a.set(xlabel="load (x full-width sustainable rate)", ylabel="p99 latency (ms)", yscale="log")
    b.set(xlabel="load (x full-width sustainable rate)", ylabel="served top-1 (%, paper ImageNet)")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(LOADS, [f"{x:g}x" for x in LOADS])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"slimmable serve: {result['model']} at {result['input_size']}px")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(result: dict) -> str:
    """The runs as a markdown table (what ``--markdown`` writes between the markers)."""
    lines = [
        f"SLO {result['slo_ms']:.0f} ms; full width sustains {result['full_width_rate']:.1f} "
        f"req/s ({result['full_width_batch1_ms']:.1f} ms at batch 1).",
        "",
        "| policy | load | p50 ms | p99 ms | req/s | late | top-1 served | widths served |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        served = ", ".join(f"{w}: {n}" for w, n in r["widths_served"].items())
        lines.append(
            f"| {_label(r)} | {r['load']:g}x | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['throughput']:.1f} | {100 * r['slo_violations']:.1f}% | "
            f"{100 * r['accuracy']:.1f}% | {served} |"
        )
    return "\n".join(lines)


def write_markdown(result: dict, files: str) -> None:
    begin, end = "<!-- serve_load:begin -->", "<!-- serve_load:end -->"
    for name in filter(None, files.split(",")):
        text = Path(name).read_text()
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        Path(name).write_text(f"{head}{begin}\n{markdown(result)}\n{end}{tail}")


def _label(run: dict) -> str:
    return "adaptive" if run["policy"] == "adaptive" else f"fixed {run['width']:g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="s_mobilenet_v2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--slo-ms", default="auto", help="ms, or auto: 4x full width at batch 1")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each open-loop run")
    p.add_argument("--max-requests", type=int, default=2000, help="cap on requests per run")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="the server's compute threads")
    p.add_argument("--json", default="benchmarks/results/serve_load.json")
    p.add_argument("--plot", default="docs/img/serve_load.png")
    p.add_argument("--markdown", default="", help="files whose serve_load table to rewrite")
    p.add_argument("--from-json", action="store_true", help="only redraw from --json")
    args = p.parse_args()
    if args.from_json:
        result = json.loads(Path(args.json).read_text())
        plot(result, Path(args.plot))
        write_markdown(result, args.markdown)
        print(markdown(result))
        return
    body = json.dumps({"image": __import__("base64").b64encode(jpeg(args.size)).decode()}).encode()
    began = time.time()

    # full width: its latency sets the SLO, its saturated throughput the unit of load
    full = Server(args, "fixed", None, 1e6)
    try:
        card = get(full.port, "/v1/widths")
        widths = sorted(r["width"] for r in card["widths"])
        top1 = {r["width"]: r["top1"] for r in card["widths"]}
        full_ms = next(r["latency_ms"] for r in card["widths"] if r["width"] == widths[-1])
        slo = 4.0 * full_ms if args.slo_ms == "auto" else float(args.slo_ms)
        asyncio.run(closed_loop(full.port, body, 2 * args.max_batch, 3.0))  # warm up
        rate = asyncio.run(closed_loop(full.port, body, 2 * args.max_batch, 10.0))
    finally:
        full.stop()
    print(f"full width: {full_ms:.1f} ms at batch 1, sustains {rate:.1f} req/s; SLO {slo:.0f} ms",
          flush=True)  # fmt: skip

    # one server per policy, all started first; then each load runs every policy in turn, so a
    # change in what else the machine runs hits the three alike
    policies = (("adaptive", None), ("fixed", widths[-1]), ("fixed", widths[0]))
    servers = []
    try:
        for policy, width in policies:
            servers.append(Server(args, policy, width, slo))
        rows: dict[tuple, dict] = {}
        for i, load in enumerate(LOADS):
            for (policy, width), server in zip(policies, servers, strict=True):
                results = asyncio.run(
                    open_loop(server.port, body, load * rate, args.seconds, args.max_requests, i)
                )
                row = {"policy": policy, "width": width, "load": load}
                row.update(summarize(results, slo, top1))
                rows[(policy, width, load)] = row
                print(
                    f"{_label(row):>12}  load {load:>3}x  p50 {row['p50_ms'] or 0:7.1f} ms  p99 "
                    f"{row['p99_ms'] or 0:7.1f} ms  {row['throughput']:6.1f} req/s  late "
                    f"{100 * (row['slo_violations'] or 0):5.1f}%  top-1 "
                    f"{100 * (row['accuracy'] or 0):.1f}%  {row['widths_served']}",
                    flush=True,
                )
                server.idle()
    finally:
        for server in servers:
            server.stop()
    runs = [rows[(p, w, load)] for p, w in policies for load in LOADS]
    result = {
        "slo_ms": slo,
        "model": args.model,
        "input_size": args.size,
        "full_width_rate": rate,
        "full_width_batch1_ms": full_ms,
        "accuracy_source": card["top1_source"],
        "seconds_per_run": args.seconds,
        "server_threads": args.threads,
        "max_batch": args.max_batch,
        "cpus": os.cpu_count(),
        "wall_s": time.time() - began,
        "runs": runs,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(args.plot))
    write_markdown(result, args.markdown)
    print(markdown(result))
    print(f"wrote {args.json} and {args.plot} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
