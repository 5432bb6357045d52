"""Measured latency: wall-clock time of a forward pass per width, on this machine.

MACs predict latency poorly (depthwise convolutions are memory-bound, small layers pay fixed
overheads), so a deployment budget in milliseconds needs measurements. Each figure is the median
of ``repeats`` timed forwards after ``warmup`` untimed ones, with the number of CPU threads stated.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .export import example_input
from .layers.norm import USBatchNorm2d
from .layers.slicing import freeze
from .width import Width, set_width, width_modules


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of handing it back to the OS.

    By default glibc serves blocks over its ``mmap`` threshold (at most 32 MB), such as large
    activations, with ``mmap`` and unmaps them when freed, so every forward pass faults them in
    again and the kernel zeroes each page: S-MobileNet v1 at width 1.0 and batch 16 took 110k
    page faults and 423 ms per forward on a 2-core CPU, against none and 227 ms with this
    (``benchmarks/latency.py``, ``--malloc system`` against the default). This sets
    ``M_MMAP_MAX=0`` and a maximal ``M_TRIM_THRESHOLD`` for the whole process, as the environment
    variables ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647`` do at start-up; memory
    then stays at its peak. Returns whether it applied (``False`` off Linux or without glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


@contextlib.contextmanager
def threads_set(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` intra-op CPU threads (``None``: as is); yields the count."""
    previous = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def any_width_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Let US BN layers run at uncalibrated widths (running statistics) inside the block.

    Timing does not depend on which statistics a BN uses, so latency can be measured at widths
    that were never calibrated; the layers' policy is restored afterwards.
    """
    norms = [m for _, m in width_modules(model) if isinstance(m, USBatchNorm2d)]
    before = [bn.uncalibrated for bn in norms]
    try:
        for bn in norms:
            bn.uncalibrated = "running"
        yield model
    finally:
        for bn, policy in zip(norms, before, strict=True):
            bn.uncalibrated = policy


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_timings(
    fns: Mapping[str, Callable[[], Any]],
    warmup: int = 3,
    repeats: int = 20,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each function, measured in interleaved rounds.

    Each round calls every function once, so slow drifts of a noisy machine (other processes,
    clock changes) hit all of them alike. Rounds go through every order of the functions in
    turn, so that each one follows each other one equally often: a call can pay for what the
    previous one left behind (caches, allocator state), and a fixed rotation would always bill
    the same function for the same predecessor.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    device = torch.device(device)
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(warmup):
        for n in names:
            fns[n]()
    _sync(device)
    orders = list(itertools.permutations(names)) if len(names) <= 5 else [tuple(names)]
    for r in range(repeats):
        for n in orders[r % len(orders)]:
            start = time.perf_counter()
            fns[n]()
            _sync(device)
            times[n].append(time.perf_counter() - start)
    return times


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and minimum of timings, in milliseconds."""
    ms = sorted(1e3 * s for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "latency_ms": statistics.median(ms),
        "p25_ms": q[0],
        "p75_ms": q[2],
        "min_ms": ms[0],
    }


def measure_latency(
    model: nn.Module,
    input_size: int | Sequence[int] | None,
    widths: Sequence[Width] | None = None,
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> list[dict]:
    """Median forward latency of ``model`` at each width, one row per width.

    ``input_size`` is ``S``, ``(H, W)`` or ``(C, H, W)`` (``None``: 224); ``widths`` are floats
    or per-layer maps (``None``: the model as it is, e.g. an extracted dense network). Runs in
    eval mode under ``no_grad`` on the model's device, frozen (:func:`slimmable.freeze`, as a
    server runs it), with ``threads`` CPU threads (``None``: torch's current setting). The
    model's widths and mode are restored afterwards.

    Each row: ``width``, ``batch_size``, ``latency_ms`` (median), ``p25_ms``, ``p75_ms``,
    ``min_ms``, ``repeats``, ``warmup``, ``threads``, ``device``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    x = example_input(model, input_size, batch_size)
    slimmable = widths is not None
    rows = []
    was_training = model.training
    model.eval()
    try:
        with threads_set(threads) as n_threads, torch.no_grad(), freeze(model):
            stats = any_width_statistics(model) if slimmable else contextlib.nullcontext()
            with stats:
                for w in widths if slimmable else [None]:
                    setting = set_width(model, w) if w is not None else contextlib.nullcontext()
                    with setting:
                        times = interleaved_timings(
                            {"model": lambda: model(x)}, warmup, repeats, x.device
                        )["model"]
                    rows.append(
                        {
                            "width": _plain(w),
                            "batch_size": batch_size,
                            **summarize(times),
                            "repeats": repeats,
                            "warmup": warmup,
                            "threads": n_threads,
                            "device": str(x.device),
                        }
                    )
    finally:
        model.train(was_training)
    return rows


def _plain(width: Width | None) -> float | dict[str, float] | None:
    if width is None:
        return None
    return dict(width) if isinstance(width, Mapping) else float(width)


def format_latency_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of :func:`measure_latency` as an aligned text table."""
    lines = [f"{'width':>7}  {'batch':>5}  {'median ms':>10}  {'p25-p75 ms':>15}  threads"]
    for r in rows:
        w = r["width"]
        shown = "-" if w is None else ("map" if isinstance(w, Mapping) else f"{w:.3f}")
        spread = f"{r['p25_ms']:.2f}-{r['p75_ms']:.2f}"
        lines.append(
            f"{shown:>7}  {r['batch_size']:>5}  {r['latency_ms']:>10.2f}  {spread:>15}  "
            f"{r['threads']}"
        )
    return "\n".join(lines)


def latency_measure(
    input_size: int | Sequence[int] | None = None,
    batch_size: int = 1,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> Callable[[nn.Module, Width], dict[str, float]]:
    """A ``measure(model, width) -> {"latency_ms": ...}`` for ``slimmable.profile``'s table.

    What ``slimmable profile --latency`` adds: the median forward latency at each profiled width
    (see :func:`measure_latency` for the arguments). ``input_size=None`` takes the model's own.
    """

    def measure(model: nn.Module, width: Width) -> dict[str, float]:
        (row,) = measure_latency(
            model, input_size, [width], batch_size, warmup, repeats, threads=threads
        )
        return {"latency_ms": row["latency_ms"]}

    return measure
