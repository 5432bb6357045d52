"""``slimmable serve``: an HTTP server that holds a latency target by switching width per batch.

Starlette + uvicorn, Prometheus metrics, dynamic batching; the adaptive policy runs each batch at
the widest width whose predicted latency, plus the time its oldest request has waited, meets
``--slo-ms`` (:mod:`slimmable.serve.policy`). See ``docs/serving.md``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from .app import ServeConfig, SlimmableService
from .model import Backend, ModelCard, load_backend, zoo_backend
from .policy import LatencyTable, choose_width

DRAIN_SECONDS = 30


def make_server(service: SlimmableService, host: str = "127.0.0.1", port: int = 8000):
    """A ``uvicorn.Server`` for ``service`` that drains on SIGTERM / SIGINT and then returns.

    Uvicorn stops accepting connections, lets the requests in flight finish (at most
    ``DRAIN_SECONDS``), then the batcher finishes its queue and stops. Unlike plain uvicorn,
    the signal is not raised again afterwards, so a drained server exits with status 0.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = (signal.SIGINT, signal.SIGTERM)
            previous = {s: signal.signal(s, self.handle_exit) for s in sigs}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    config = uvicorn.Config(
        service.app(),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=DRAIN_SECONDS,
        lifespan="on",
    )
    return _Server(config)


__all__ = [
    "Backend",
    "LatencyTable",
    "ModelCard",
    "ServeConfig",
    "SlimmableService",
    "choose_width",
    "load_backend",
    "make_server",
    "zoo_backend",
]
