"""The width policy of ``slimmable serve``: per batch, the widest width that meets the SLO.

Pure functions over a table of measured latencies, so the choice is testable without a server.
For a batch of ``n`` images whose oldest request has waited ``q`` ms, the adaptive policy picks

    width = max { w : q + s L(w, n) <= h slo  and  lambda s L(w, n) <= u n }
                                                        (the smallest width if no w qualifies)

where ``L(w, n)`` is the compute time of a batch of ``n`` images at width ``w`` measured at
start-up for batch sizes 1, 2, 4, ... up to ``--max-batch`` (interpolated linearly between them,
extrapolated from the last two beyond), ``s`` a slowdown factor learnt as the server runs (an
exponential moving average of measured / start-up time over every batch: a machine that gets
busier slows every width alike), and ``h`` the headroom (``--headroom``, default 0.8): the share
of the SLO the server's own view of a request may use; the rest covers what it cannot see
(connection set-up, HTTP parsing, the answer's trip back). The second condition keeps the
queue short: the width's utilisation (``lambda``, the images per ms that arrived over the last
two seconds, times its compute time per image) must stay at most ``u`` (``--utilisation``,
default 0.6). Waits in a queue grow like ``rho / (1 - rho)`` with the utilisation ``rho``, and
with a batch taking a quarter of the SLO, a width run at 0.8 of its capacity makes the requests
queued behind a burst late. Without the condition a server at twice its full-width capacity
kept starting wide batches whenever the queue was short.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping, Sequence


class LatencyTable:
    """Milliseconds per batch, per width and batch size, learnt from measurements."""

    def __init__(self, points: Mapping[float, Mapping[int, float]], alpha: float = 0.2) -> None:
        if not points or any(not sizes for sizes in points.values()):
            raise ValueError("a latency table needs at least one measured batch size per width")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.scale = 1.0  # measured / start-up time, learnt as the server runs
        self.points: dict[float, dict[int, float]] = {
            float(w): {int(b): float(ms) for b, ms in sorted(sizes.items())}
            for w, sizes in points.items()
        }

    @property
    def widths(self) -> list[float]:
        return sorted(self.points)

    def predict(self, width: float, batch: int) -> float:
        """Predicted milliseconds for a batch of ``batch`` images at ``width``."""
        return self.scale * self.measured(width, batch)

    def measured(self, width: float, batch: int) -> float:
        """The start-up measurement of ``(width, batch)``, interpolated."""
        sizes = self.points[float(width)]
        ns = list(sizes)
        if batch in sizes:
            return sizes[batch]
        if len(ns) == 1:
            return sizes[ns[0]] * batch / ns[0]  # one point: proportional to the batch
        i = bisect.bisect_left(ns, batch)
        a, b = (
            (ns[0], ns[1]) if i == 0 else (ns[-2], ns[-1]) if i >= len(ns) else (ns[i - 1], ns[i])
        )
        slope = (sizes[b] - sizes[a]) / (b - a)
        return max(0.0, sizes[a] + slope * (batch - a))

    def update(self, width: float, batch: int, ms: float) -> None:
        """Learn from a batch that took ``ms``: the slowdown moves towards measured / start-up."""
        ratio = float(ms) / max(self.measured(width, batch), 1e-9)
        self.scale = (1.0 - self.alpha) * self.scale + self.alpha * ratio

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{width: {batch: ms}}`` with string keys (JSON)."""
        return {
            f"{w:g}": {str(b): round(ms, 3) for b, ms in s.items()} for w, s in self.points.items()
        }


def choose_width(
    table: LatencyTable,
    widths: Sequence[float],
    batch: int,
    waited_ms: float,
    slo_ms: float,
    headroom: float = 1.0,
    arrival_rate: float = 0.0,
    utilisation: float = 1.0,
) -> float:
    """The widest of ``widths`` that answers this batch within ``headroom * slo_ms`` and keeps
    the queue short: ``arrival_rate * time <= utilisation * batch``.

    ``waited_ms`` is how long the oldest request of the batch has been in the server;
    ``arrival_rate`` is the recent rate of arriving images per ms (0: ignore the queue's
    growth). When no width qualifies, the smallest runs: it finishes soonest, so the queue
    behind it drains.
    """
    if not widths:
        raise ValueError("choose_width needs at least one width")
    ordered = sorted(widths, reverse=True)
    for w in ordered:
        run = table.predict(w, batch)
        if waited_ms + run <= headroom * slo_ms and arrival_rate * run <= utilisation * batch:
            return w
    return ordered[-1]


def batch_sizes(max_batch: int) -> list[int]:
    """Batch sizes measured at start-up: powers of two below ``max_batch``, and ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {max_batch}")
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return [*sizes, max_batch]


class ArrivalRate:
    """Images per millisecond that arrived over the last ``window_ms`` (thread-safe enough for
    one writer and one reader: appends and pops of a deque)."""

    def __init__(self, window_ms: float = 2000.0) -> None:
        self.window_ms = window_ms
        self._events: deque[tuple[float, int]] = deque()
        self._start: float | None = None

    def add(self, now_ms: float, images: int) -> None:
        if self._start is None:
            self._start = now_ms
        self._events.append((now_ms, images))

    def rate(self, now_ms: float) -> float:
        while self._events and self._events[0][0] < now_ms - self.window_ms:
            self._events.popleft()
        if self._start is None:
            return 0.0
        span = min(self.window_ms, max(now_ms - self._start, 1.0))
        return sum(n for _, n in list(self._events)) / span
