"""A whole ``shoal bench`` run: which measurements, in what order, and what they add
up to.

Variants of one pattern (raw pyzmq, shoal, shoal reliable) are interleaved over the
rounds (round 1: A B C, round 2: B C A, ...) so that a slow spell of a shared machine
does not land on one variant only. A variant's latency histograms are added up over
its rounds; its throughput and its CPU time per message (each side) are the medians
of its rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

import shoal
from shoal.cli._bench._client import CurveContexts, Measured, hello, measure, open_server
from shoal.cli._bench._common import (
    CPU_SIDES,
    PATTERNS,
    BenchError,
    Spec,
    histogram_class,
    interleaved,
    new_histogram,
)

DEFAULT_COUNT = {"rr": 5_000, "pp": 100_000, "ps": 100_000}
DEFAULT_WARMUP = {"rr": 500, "pp": 5_000, "ps": 5_000}
# PUB drops at its high-water mark: a large one lets best-effort pub/sub run at full
# speed without loss; the others keep libzmq's default.
DEFAULT_HWM = {"rr": 1_000, "pp": 1_000, "ps": 100_000}
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


@dataclass(frozen=True)
class Options:
    patterns: tuple[str, ...] = PATTERNS
    modes: tuple[str, ...] = ("best-effort", "reliable")
    compare_raw: bool = True
    transport: str = "tcp"
    size: int = 64
    count: int | None = None
    seconds: float = 0.0
    warmup: int | None = None
    rate: float = 0.0
    rounds: int = 3
    hwm: int | None = None
    interface: str = "127.0.0.1"
    peer: str | None = None
    timeout: float = 300.0
    curve: bool = False
    busy_poll: float = 0.0  # seconds; shoal resources only (0: not passed)
    backend: str = "trio"  # the event loop of shoal's side, both ends (``BACKENDS``)

    def specs(self, pattern: str) -> list[Spec]:
        base = dict(pattern=pattern, size=self.size,
                    count=0 if self.seconds else (self.count or DEFAULT_COUNT[pattern]),
                    seconds=self.seconds,
                    warmup=DEFAULT_WARMUP[pattern] if self.warmup is None else self.warmup,
                    rate=self.rate,
                    hwm=DEFAULT_HWM[pattern] if self.hwm is None else self.hwm,
                    curve=self.curve)
        out = []
        if self.compare_raw:
            out.append(Spec(stack="raw", reliable=False, **base))  # type: ignore[arg-type]
        for mode in self.modes:
            out.append(Spec(stack="shoal", reliable=mode == "reliable",
                            busy_poll=self.busy_poll, **base))  # type: ignore[arg-type]
        return out


@dataclass
class Variant:
    """A variant's figures over every round."""

    spec: Spec
    transport: str
    latency_kind: str | None           # "round-trip", "one-way" or None
    rates: list[float] = field(default_factory=list)
    sent: int = 0
    received: int = 0
    timed: int = 0
    hist: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_rounds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, m: Measured) -> None:
        self.rates.append(m.rate)
        self.sent += m.sent
        self.received += m.received
        self.timed += m.timed
        if m.hist is not None:
            if self.hist is None:
                self.hist = new_histogram()
            self.hist.decode_and_add(m.hist)
        for k, v in m.extra.items():
            if isinstance(v, int | float):
                self.extra[k] = self.extra.get(k, 0) + v
        for side, us in m.cpu.items():
            if us is not None:
                self.cpu_rounds.setdefault(side, []).append(us)

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else 0.0

    def cpu_us(self) -> dict[str, float | None]:
        """CPU microseconds per message (per round trip for rr) of each side, the
        median round; None for a side never measured (inproc, or too few messages)."""
        return {side: statistics.median(self.cpu_rounds[side])
                if self.cpu_rounds.get(side) else None
                for side in CPU_SIDES[self.spec.pattern]}

    @property
    def lost(self) -> int:
        return max(0, self.sent - self.received)

    def latency_us(self) -> dict[str, float] | None:
        """Percentiles, min, max and mean in microseconds; None without a histogram."""
        h = self.hist
        if h is None or not h.get_total_count():
            return None
        out = {f"p{p:g}": h.get_value_at_percentile(p) / 1e3 for p in PERCENTILES}
        out["max"] = h.get_max_value() / 1e3
        out["min"] = h.get_min_value() / 1e3
        out["mean"] = h.get_mean_value() / 1e3
        return out


Progress = Callable[[str, int, int], None]


async def run(opts: Options, progress: Progress | None = None) -> tuple[list[Variant], str]:
    """Run every measurement; return the variants (in display order) and the
    server's shoal version."""
    histogram_class()  # fail before starting anything if the extra is missing
    plan: list[tuple[Variant, Spec]] = []
    variants: list[Variant] = []
    for pattern in opts.patterns:
        specs = opts.specs(pattern)
        row = [Variant(s, opts.transport, None) for s in specs]
        variants += row
        for r in range(opts.rounds):
            plan += [(v, v.spec) for v in interleaved(row, r)]
    peer_host = None
    if opts.peer and opts.peer.startswith("tcp://"):
        peer_host = opts.peer[len("tcp://"):].rsplit(":", 1)[0]
    curve = CurveContexts()
    try:
        async with open_server(opts.transport, interface=opts.interface,
                               peer=opts.peer, backend=opts.backend) as control, \
                shoal.open_requester(connect=control) as ctl:
            with anyio.move_on_after(min(30.0, opts.timeout)) as cs:
                same_clock, version = await hello(ctl)
            if cs.cancelled_caught:
                raise BenchError(f"no bench server answers at {control} (start one there "
                                 "with: shoal bench --serve ENDPOINT)")
            for n, (variant, spec) in enumerate(plan):
                if progress is not None:
                    progress(f"{spec.pattern} {spec.label}", n, len(plan))
                with anyio.move_on_after(opts.timeout) as cs:
                    m = await measure(ctl, spec, same_clock=same_clock, peer_host=peer_host,
                                      curve=curve)
                if cs.cancelled_caught:
                    raise BenchError(f"{spec.pattern} {spec.label} did not finish within "
                                     f"{opts.timeout:g} s (--timeout)")
                if spec.pattern == "rr":
                    variant.latency_kind = "round-trip"
                elif m.hist is not None:
                    variant.latency_kind = "one-way"
                variant.add(m)
            if progress is not None:
                progress("done", len(plan), len(plan))
    finally:
        curve.close()
    return variants, version
