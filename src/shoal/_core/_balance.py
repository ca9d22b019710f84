"""Where a requester sends each request: the replier with the fewest of its requests
in flight, and its own running latency for hedging.

``Balancer`` keeps, per replier (route), the requests sent there and not yet
answered, with their send times. ``order(now)`` lists the routes to try, best first:
repliers that look silent last (one holds a request for longer than ``SILENT_FACTOR``
times its usual latency, and at least ``SILENT_FLOOR`` seconds), then fewest in
flight, ties taken in turn. A silent replier is thus avoided as soon as it falls
behind, long before a peer timeout says it is gone; it is still tried when nobody
else takes the request. A request counts as in flight at its replier until its
answer comes (even after its caller gave up: the replier may still be working on
it), the route goes, or the route holds ``MAX_TRACKED`` of them (the oldest is
forgotten).

``LatencyEstimator`` keeps the last ``WINDOW`` round-trip times and answers a
percentile of them (``hedge_after="p95"``), re-sorting only every
``RESORT_EVERY`` samples so that asking costs nothing per request.

Contract: sans-I/O. No event loop (trio, asyncio, anyio), zmq, time or random: the caller
passes ``now``.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["MAX_TRACKED", "SILENT_FACTOR", "SILENT_FLOOR", "Balancer", "LatencyEstimator"]

SILENT_FACTOR: Final = 8.0
"""A replier holding a request this many times its usual latency looks silent."""
SILENT_FLOOR: Final = 0.05
"""... and at least this many seconds (no verdict on noise at microsecond scale)."""
UNKNOWN_LATENCY: Final = 0.1
"""The usual latency assumed of a replier that has not answered yet, in seconds."""
MAX_TRACKED: Final = 4096
"""Requests remembered in flight per replier, at most."""
_ALPHA: Final = 0.2  # weight of a new sample in the latency average


class Balancer:
    """Picks repliers by load; see the module docstring."""

    __slots__ = ("_latency", "_out", "_turn")

    def __init__(self) -> None:
        self._out: dict[bytes, dict[int, float]] = {}  # route -> {request id: sent at}
        self._latency: dict[bytes, float] = {}  # route -> running average, seconds
        self._turn = 0

    @property
    def routes(self) -> list[bytes]:
        return list(self._out)

    def add(self, route: bytes) -> None:
        self._out.setdefault(route, {})

    def remove(self, route: bytes) -> None:
        self._out.pop(route, None)
        self._latency.pop(route, None)

    def in_flight(self, route: bytes) -> int:
        return len(self._out.get(route, ()))

    def silent(self, route: bytes, now: float) -> bool:
        """Whether ``route`` holds a request far longer than it usually takes."""
        out = self._out.get(route)
        if not out:
            return False
        oldest = next(iter(out.values()))
        usual = self._latency.get(route, UNKNOWN_LATENCY)
        return now - oldest > max(SILENT_FLOOR, SILENT_FACTOR * usual)

    def order(self, now: float, avoid: tuple[bytes, ...] = ()) -> list[bytes]:
        """The routes to try for a request, best first; ``avoid`` (where a copy of
        it went already) go last."""
        routes = list(self._out)
        n = len(routes)
        if not n:
            return []
        start = self._turn % n
        self._turn += 1
        rotated = routes[start:] + routes[:start]
        out = self._out
        return sorted(rotated, key=lambda r: (r in avoid, self.silent(r, now), len(out[r])))

    def sent(self, route: bytes, rid: int, now: float) -> None:
        out = self._out.get(route)
        if out is None:
            return
        out.pop(rid, None)  # a retry to the same replier: its clock starts again
        out[rid] = now
        if len(out) > MAX_TRACKED:
            del out[next(iter(out))]

    def answered(self, route: bytes, rid: int, now: float) -> float | None:
        """An answer to ``rid`` came from ``route``: no longer in flight there. Returns
        its round-trip time (None if it was not tracked)."""
        out = self._out.get(route)
        if out is None:
            return None
        sent = out.pop(rid, None)
        if sent is None:
            return None
        rtt = now - sent
        old = self._latency.get(route)
        self._latency[route] = rtt if old is None else old + _ALPHA * (rtt - old)
        return rtt


WINDOW: Final = 512
RESORT_EVERY: Final = 32


class LatencyEstimator:
    """A percentile of the last ``WINDOW`` round-trip times (bounded memory)."""

    __slots__ = ("_fresh", "_samples", "_sorted")

    def __init__(self) -> None:
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self._sorted: list[float] = []
        self._fresh = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._fresh += 1
        if self._fresh >= RESORT_EVERY or len(self._sorted) < RESORT_EVERY:
            self._sorted = sorted(self._samples)
            self._fresh = 0

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1) of the samples as of the last re-sort; None before
        any sample."""
        s = self._sorted
        if not s:
            return None
        return s[min(len(s) - 1, int(q * len(s)))]
