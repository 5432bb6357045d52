"""The width policy of ``slimmable serve``: per batch, the widest width that meets the SLO.

Pure functions over a table of measured latencies, so the choice is testable without a server.
For a batch of ``n`` images whose oldest request has waited ``q`` ms, the adaptive policy picks

    width = max { w : q + latency(w, n) <= slo }     (the smallest width if no w qualifies)

where ``latency(w, n)`` is the compute time of a batch of ``n`` images at width ``w``: measured
at start-up for batch sizes 1, 2, 4, ... up to ``--max-batch``, interpolated linearly between
them (extrapolated from the last two beyond), and updated as the server runs by an exponential
moving average of each batch's measured time.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence


class LatencyTable:
    """Milliseconds per batch, per width and batch size, learnt from measurements."""

    def __init__(self, points: Mapping[float, Mapping[int, float]], alpha: float = 0.2) -> None:
        if not points or any(not sizes for sizes in points.values()):
            raise ValueError("a latency table needs at least one measured batch size per width")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.points: dict[float, dict[int, float]] = {
            float(w): {int(b): float(ms) for b, ms in sorted(sizes.items())}
            for w, sizes in points.items()
        }

    @property
    def widths(self) -> list[float]:
        return sorted(self.points)

    def predict(self, width: float, batch: int) -> float:
        """Predicted milliseconds for a batch of ``batch`` images at ``width``."""
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
        """Move the entry of ``(width, batch)`` towards a measured ``ms`` (it starts at the
        prediction when that batch size was not measured yet)."""
        sizes = self.points[float(width)]
        old = self.predict(width, batch)
        sizes[batch] = (1.0 - self.alpha) * old + self.alpha * float(ms)
        self.points[float(width)] = dict(sorted(sizes.items()))

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
) -> float:
    """The widest of ``widths`` whose predicted latency plus the time waited meets ``slo_ms``.

    ``waited_ms`` is how long the oldest request of the batch has been in the server. When no
    width meets the SLO, the smallest runs: it finishes soonest, so the queue behind it drains.
    """
    if not widths:
        raise ValueError("choose_width needs at least one width")
    ordered = sorted(widths, reverse=True)
    for w in ordered:
        if waited_ms + table.predict(w, batch) <= slo_ms:
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
