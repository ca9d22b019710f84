"""A seeded lossy datagram link under a virtual clock, for the sans-I/O simulations.

``Clock`` is virtual time with a heap of timed events: a simulation runs the next
event, or jumps to a state machine's ``get_timer()`` when that comes first.
``Link`` is one direction of a link that drops, duplicates and delays each packet
with parameters drawn per seed (``LinkParams.draw``); the delay has an exponential
tail, so packets overtake each other (reorder). Everything is deterministic in the
``random.Random`` it is given.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Clock", "Link", "LinkParams"]


class Clock:
    """Virtual time and the event heap."""

    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at virtual time ``when`` (events at one instant keep order)."""
        heapq.heappush(self._events, (when, next(self._order), action))

    def next_time(self) -> float:
        """When the next event is due; ``math.inf`` when there is none."""
        return self._events[0][0] if self._events else math.inf

    def run_next(self) -> None:
        """Move the clock to the next event and run it."""
        when, _, action = heapq.heappop(self._events)
        self.now = when
        action()

    def __len__(self) -> int:
        return len(self._events)


@dataclass(frozen=True, slots=True)
class LinkParams:
    drop: float
    duplicate: float
    latency: float
    jitter: float
    """Mean of the exponential extra delay: a long tail, so packets overtake each other."""

    @classmethod
    def draw(cls, rng: random.Random, *, max_latency: float = 0.05,
             jitter: Callable[[random.Random], float] | None = None) -> LinkParams:
        """Up to 30 % loss and 20 % duplication; latency from 1 ms to ``max_latency``;
        ``jitter`` draws the mean extra delay (default: uniform up to 0.3 s)."""
        return cls(drop=rng.uniform(0.0, 0.3), duplicate=rng.uniform(0.0, 0.2),
                   latency=rng.uniform(0.001, max_latency),
                   jitter=rng.uniform(0.0, 0.3) if jitter is None else jitter(rng))


class Link:
    """One direction of a lossy datagram link; ``deliver`` gets what survives."""

    def __init__(self, clock: Clock, rng: random.Random, params: LinkParams,
                 deliver: Callable[[Any], None]) -> None:
        self._clock = clock
        self._rng = rng
        self._p = params
        self._deliver = deliver
        self.dropped = 0
        self.duplicated = 0

    def carry(self, packet: Any) -> None:
        rng, p = self._rng, self._p
        if rng.random() < p.drop:
            self.dropped += 1
            return
        copies = 1
        if rng.random() < p.duplicate:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            delay = p.latency + (rng.expovariate(1.0 / p.jitter) if p.jitter else 0.0)
            self._clock.at(self._clock.now + delay, lambda: self._deliver(packet))
