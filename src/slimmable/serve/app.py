"""The HTTP service of ``slimmable serve``: Starlette routes over a dynamic batcher.

Requests are queued; one worker thread takes, whenever it is free, every queued image that can
share a batch (up to ``max_batch``: requests that pin the same width, or all that do not), picks
the batch's width (the policy of :mod:`slimmable.serve.policy`), runs it and answers each request.

Endpoints: ``POST /v1/predict``, ``GET /v1/health``, ``GET /v1/widths``, ``GET /metrics``
(Prometheus text). A client's mistake is a 4xx with ``{"error": "one line"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import json
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..latency import interleaved_timings, summarize
from .model import Backend, decode_image
from .policy import ArrivalRate, LatencyTable, batch_sizes, choose_width

POLICIES = ("adaptive", "fixed")
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_TOP_K = 100


class ClientError(Exception):
    """A request the client must fix: answered with ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServeConfig:
    """How the server batches and chooses widths (the ``slimmable serve`` options)."""

    policy: str = "adaptive"
    slo_ms: float = 100.0
    width: float | None = None  # the fixed policy's width (default: the widest)
    max_batch: int = 16
    headroom: float = 0.8  # share of the SLO the server's own view of a request may use
    utilisation: float = 0.6  # most of a width's capacity the arrivals may use
    max_body_bytes: int = MAX_BODY_BYTES
    warmup: int = 1
    repeats: int = 3

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"--policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if not (math.isfinite(self.slo_ms) and self.slo_ms > 0):
            raise ValueError(f"--slo-ms must be a positive number, got {self.slo_ms}")
        if not 0.0 < self.headroom <= 1.0:
            raise ValueError(f"--headroom must be in (0, 1], got {self.headroom}")
        if not 0.0 < self.utilisation <= 1.0:
            raise ValueError(f"--utilisation must be in (0, 1], got {self.utilisation}")
        if self.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.width is not None and self.policy == "adaptive":
            raise ValueError("--width sets the fixed policy's width; add --policy fixed")


@dataclass
class _Job:
    images: np.ndarray  # N x C x H x W
    width: float | None  # pinned by the request
    top_k: int
    arrived: float  # time.perf_counter() when the request came in
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: bool = False  # the client went away: nobody waits for the answer


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (no global state)."""

    def __init__(self, widths: Sequence[float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slimmable_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "slimmable_request_latency_seconds",
            "Time from a prediction request's arrival to its answer",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.images = Counter(
            "slimmable_images", "Images predicted, by the width that served them", ["width"],
            registry=r,
        )  # fmt: skip
        self.batch = Histogram(
            "slimmable_batch_size", "Images per batch", buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )  # fmt: skip
        self.violations = Counter(
            "slimmable_slo_violations", "Predictions answered later than --slo-ms", registry=r
        )
        self.queue = Gauge("slimmable_queue_images", "Images waiting for a batch", registry=r)
        for w in widths:  # every width appears, at zero, from the start
            self.images.labels(width=f"{w:g}")


class Batcher:
    """The worker thread: forms batches from the queue, picks their width, runs them."""

    def __init__(
        self, backend: Backend, config: ServeConfig, table: LatencyTable, metrics: Metrics
    ):
        self.backend = backend
        self.config = config
        self.table = table
        self.metrics = metrics
        self.widths = backend.card.width_values
        self.fixed_width = (
            backend.check_width(config.width) if config.width is not None else max(self.widths)
        )
        self._queue: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="slimmable-batcher", daemon=True)
        self.arrivals = ArrivalRate()
        self.batches = 0
        self.dropped = 0  # jobs skipped because their client went away
        self.running = 0  # images in the batch being computed

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then stop the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def queued_images(self) -> int:
        with self._cond:
            return sum(len(j.images) for j in self._queue)

    def submit(self, job: _Job) -> None:
        with self._cond:
            if self._stop:
                raise ClientError(503, "the server is shutting down; retry on another replica")
            self._queue.append(job)
            self.arrivals.add(1e3 * job.arrived, len(job.images))
            self.metrics.queue.inc(len(job.images))
            self._cond.notify()

    def choose(self, width: float | None, batch: int, waited_ms: float) -> float:
        """The width a batch runs at: pinned, fixed, or the adaptive policy's choice."""
        if width is not None:
            return width
        if self.config.policy == "fixed":
            return self.fixed_width
        config = self.config
        rate = self.arrivals.rate(1e3 * time.perf_counter())  # images per ms, recently
        return choose_width(
            self.table,
            self.widths,
            batch,
            waited_ms,
            config.slo_ms,
            config.headroom,
            arrival_rate=rate,
            utilisation=config.utilisation,
        )

    def _take(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._stop:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            while first.cancelled and self._queue:  # drop what nobody waits for any more
                self._drop(first)
                first = self._queue.popleft()
            if first.cancelled:
                self._drop(first)
                return []
            jobs, n = [first], len(first.images)
            rest: collections.deque[_Job] = collections.deque()
            while self._queue:
                job = self._queue.popleft()
                if job.cancelled:
                    self._drop(job)
                elif job.width == first.width and n + len(job.images) <= self.config.max_batch:
                    jobs.append(job)
                    n += len(job.images)
                else:
                    rest.append(job)
            self._queue = rest
            self.metrics.queue.dec(n)
            return jobs

    def _drop(self, job: _Job) -> None:
        self.dropped += 1
        self.metrics.queue.dec(len(job.images))

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            if jobs:
                self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        x = np.concatenate([j.images for j in jobs]) if len(jobs) > 1 else jobs[0].images
        self.running = len(x)
        try:
            self._compute(jobs, x)
        finally:
            self.running = 0

    def _compute(self, jobs: list[_Job], x: np.ndarray) -> None:
        start = time.perf_counter()
        waited_ms = 1e3 * (start - min(j.arrived for j in jobs))
        width = self.choose(jobs[0].width, len(x), waited_ms)
        try:
            logits = self.backend.run(x, width)
        except Exception as err:  # a server fault: answer 500 to every request of the batch
            for job in jobs:
                job.loop.call_soon_threadsafe(_set, job.future, err)
            return
        ms = 1e3 * (time.perf_counter() - start)
        self.table.update(width, len(x), ms)
        self.batches += 1
        self.metrics.batch.observe(len(x))
        self.metrics.images.labels(width=f"{width:g}").inc(len(x))
        probs = _softmax(logits)
        i = 0
        for job in jobs:
            p = probs[i : i + len(job.images)]
            i += len(job.images)
            job.result = {"width": width, "predictions": _predictions(p, job.top_k)}
            job.loop.call_soon_threadsafe(_set, job.future, job.result)


def _set(future: asyncio.Future, value: Any) -> None:
    if future.done():  # the client went away
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _predictions(probs: np.ndarray, top_k: int) -> list[dict]:
    out = []
    for p in probs:
        order = np.argsort(-p, kind="stable")[: max(1, top_k)]
        best = {"label": int(order[0]), "score": float(p[order[0]])}
        if top_k > 1:
            best["top_k"] = [{"label": int(c), "score": float(p[c])} for c in order]
        out.append(best)
    return out


def measure_table(backend: Backend, config: ServeConfig) -> LatencyTable:
    """Compute time of each width at batch sizes 1, 2, 4, ... ``max_batch`` (median ms)."""
    rng = np.random.default_rng(0)
    points: dict[float, dict[int, float]] = {}
    for w in backend.card.width_values:
        points[w] = {}
        for n in batch_sizes(config.max_batch):
            x = rng.standard_normal((n, *backend.card.input_size), dtype=np.float32)
            times = interleaved_timings(
                {"run": lambda x=x, w=w: backend.run(x, w)}, config.warmup, config.repeats
            )["run"]
            points[w][n] = summarize(times)["latency_ms"]
    return LatencyTable(points)


# ---- requests ---------------------------------------------------------------------------------
def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ClientError(422, f'"{name}" must be a finite number')
    return float(value)


def parse_request(
    body: bytes, backend: Backend, max_batch: int
) -> tuple[np.ndarray, float | None, int]:
    """``(images N x C x H x W, pinned width or None, top_k)`` from a ``/v1/predict`` body."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise ClientError(400, "the body's JSON is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClientError(
            400, f"the body is not valid JSON ({err.msg if hasattr(err, 'msg') else err})"
        ) from None
    if not isinstance(payload, dict):
        raise ClientError(400, 'the body must be a JSON object: {"image": ...} or {"inputs": ...}')
    unknown = sorted(set(payload) - {"image", "inputs", "width", "top_k"})
    if unknown:
        raise ClientError(400, f"unknown field {unknown[0]!r}; use image, inputs, width, top_k")
    if ("image" in payload) == ("inputs" in payload):
        raise ClientError(400, 'give exactly one of "image" (base64 PNG/JPEG) or "inputs"')
    card = backend.card
    if "image" in payload:
        images = payload["image"]
        images = [images] if isinstance(images, str) else images
        if (
            not isinstance(images, list)
            or not images
            or not all(isinstance(s, str) for s in images)
        ):
            raise ClientError(400, '"image" must be a base64 string or a list of them')
        if len(images) > max_batch:
            raise ClientError(413, f"a request holds at most {max_batch} images (--max-batch)")
        arrays = []
        for s in images:
            try:
                data = base64.b64decode(s, validate=True)
            except (binascii.Error, ValueError):
                raise ClientError(400, '"image" is not valid base64') from None
            try:
                arrays.append(decode_image(data, card))
            except ValueError as err:
                raise ClientError(415, str(err)) from None
        x = np.stack(arrays)
    else:
        try:
            x = np.asarray(payload["inputs"], dtype=np.float32)
        except (ValueError, TypeError):
            raise ClientError(
                422, '"inputs" must be a nested list N x C x H x W of numbers'
            ) from None
        if x.ndim != 4 or x.shape[0] < 1:
            raise ClientError(422, f'"inputs" must be N x C x H x W, got shape {list(x.shape)}')
        if tuple(x.shape[1:]) != tuple(card.input_size):
            c, h, w = card.input_size
            raise ClientError(
                422, f'"inputs" must be N x {c} x {h} x {w} (got {list(x.shape)}); '
                "preprocess as the model's data set does, or send an \"image\"",
            )  # fmt: skip
        if len(x) > max_batch:
            raise ClientError(413, f"a request holds at most {max_batch} images (--max-batch)")
        if not np.isfinite(x).all():
            raise ClientError(422, '"inputs" must be finite numbers')
    width = None
    if payload.get("width") is not None:
        try:
            width = backend.check_width(_number(payload["width"], "width"))
        except ValueError as err:
            raise ClientError(422, str(err)) from None
    top_k = payload.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ClientError(422, f'"top_k" must be an integer from 1 to {MAX_TOP_K}')
    return np.ascontiguousarray(x), width, top_k


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 past ``limit`` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ClientError(413, f"the body is over the {limit}-byte limit")
        except ValueError:
            raise ClientError(400, "Content-Length is not a number") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"the body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _answered_before_disconnect(request: Request, future: asyncio.Future) -> bool:
    """Wait for ``future``; ``False`` if the client disconnects first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    return future.done()


# ---- the application --------------------------------------------------------------------------
class SlimmableService:
    """The server's state: backend, latency table, batcher and metrics."""

    def __init__(self, backend: Backend, config: ServeConfig, table: LatencyTable | None = None):
        self.backend = backend
        self.config = config
        self.table = table or measure_table(backend, config)
        self.metrics = Metrics(backend.card.width_values)
        self.batcher = Batcher(backend, config, self.table, self.metrics)
        self.draining = False

    def answer(self, endpoint: str, status: int, body: Any) -> JSONResponse:
        self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
        return JSONResponse(body, status_code=status)

    async def predict(self, request: Request) -> JSONResponse:
        arrived = time.perf_counter()
        try:
            if self.draining:
                raise ClientError(503, "the server is shutting down; retry on another replica")
            body = await read_body(request, self.config.max_body_bytes)
            images, width, top_k = parse_request(body, self.backend, self.config.max_batch)
            loop = asyncio.get_running_loop()
            job = _Job(images, width, top_k, arrived, loop, loop.create_future())
            self.batcher.submit(job)
            if not await _answered_before_disconnect(request, job.future):
                job.cancelled = True  # the batcher skips it; nobody reads an answer
                job.future.cancel()
                return self.answer("predict", 499, {"error": "the client went away"})
            result = job.future.result()
        except ClientError as err:
            return self.answer("predict", err.status, {"error": err.message})
        except Exception as err:  # the server's fault, never the client's: still one JSON line
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return self.answer("predict", 500, {"error": f"{type(err).__name__}: {message}"})
        seconds = time.perf_counter() - arrived
        self.metrics.latency.observe(seconds)
        if 1e3 * seconds > self.config.slo_ms:
            self.metrics.violations.inc()
        return self.answer("predict", 200, {**result, "latency_ms": round(1e3 * seconds, 3)})

    async def health(self, request: Request) -> JSONResponse:
        card = self.backend.card
        return self.answer("health", 503 if self.draining else 200, {
            "status": "draining" if self.draining else "ok",
            "model": card.name,
            "policy": self.config.policy,
            "slo_ms": self.config.slo_ms,
            "widths": card.width_values,
            "queued_images": self.batcher.queued_images(),
            "running_images": self.batcher.running,
        })  # fmt: skip

    async def widths(self, request: Request) -> JSONResponse:
        card = self.backend.card
        rows = [
            {
                "width": w.width,
                "top1": w.top1,
                "macs": w.macs,
                "latency_ms": self.table.predict(w.width, 1),
                "latency_ms_by_batch": self.table.as_dict()[f"{w.width:g}"],
            }
            for w in card.widths
        ]
        return self.answer("widths", 200, {
            "model": card.name,
            "top1_source": card.top1_source,
            "input_size": list(card.input_size),
            "policy": self.config.policy,
            "slo_ms": self.config.slo_ms,
            "headroom": self.config.headroom,
            "utilisation": self.config.utilisation,
            "slowdown": round(self.table.scale, 3),
            "max_batch": self.config.max_batch,
            "widths": rows,
        })  # fmt: skip

    async def metrics_text(self, request: Request) -> Response:
        self.metrics.requests.labels(endpoint="metrics", status="200").inc()
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        message = {404: "no such endpoint; see /v1/predict, /v1/health, /v1/widths, /metrics"}
        text = message.get(exc.status_code, str(exc.detail))
        return self.answer("other", exc.status_code, {"error": text})

    def app(self) -> Starlette:
        """The Starlette application; the batcher runs between its start-up and shut-down."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self.batcher.start()
            try:
                yield
            finally:
                self.draining = True
                await asyncio.get_running_loop().run_in_executor(None, self.batcher.stop)

        return Starlette(
            routes=[
                Route("/v1/predict", self.predict, methods=["POST"]),
                Route("/v1/health", self.health, methods=["GET"]),
                Route("/v1/widths", self.widths, methods=["GET"]),
                Route("/metrics", self.metrics_text, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self.http_error},
            lifespan=lifespan,
        )
