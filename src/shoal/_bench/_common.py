"""What both ends of ``shoal bench`` share: the run description, the body layout, the
pacing schedule, the histogram, and the receiver's tally.

Body layout (every pattern, both stacks): 8 bytes little-endian ``perf_counter_ns``
stamp, 1 flag byte (``TIMED``, ``WARMUP`` or ``PROBE``), then filler up to the body
size. The stamp is the time the message was *due* under ``--rate`` (so a sender that
falls behind charges the delay to the latency: coordinated omission corrected), and
the time it was sent otherwise. One-way latency is ``receive time - stamp``, which
means something only when both ends read the same monotonic clock (the same
machine); the client checks that before it reports one-way latency.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import asdict, dataclass
from typing import Any

import zmq

BODY_MIN = 16
TIMED, WARMUP, PROBE = 0, 1, 2
# HDR histogram range: 1 ns to one hour, three significant digits.
HIST_LOWEST_NS, HIST_HIGHEST_NS, HIST_DIGITS = 1, 3_600 * 10**9, 3
# Stop keeping individual latency samples past this many (memory); count the rest.
MAX_SAMPLES = 20_000_000
# Pacing: a plain sleep until this close to the due time, then naps that aim
# NAP_SLACK_NS early, then a spin.
SLEEP_NS = 1_500_000
NAP_SLACK_NS = 100_000

PATTERNS = ("rr", "pp", "ps")
PATTERN_NAMES = {"rr": "request/reply", "pp": "push/pull", "ps": "pub/sub"}


class BenchError(Exception):
    """A benchmark could not run (the message says why and what to do)."""


def histogram_class() -> Any:
    """``hdrh.histogram.HdrHistogram``, or a BenchError naming the extra to install."""
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        raise BenchError("shoal bench needs the 'cli' extra: pip install 'shoal[cli]'") from None
    return HdrHistogram


def new_histogram() -> Any:
    return histogram_class()(HIST_LOWEST_NS, HIST_HIGHEST_NS, HIST_DIGITS)


@dataclass(frozen=True, slots=True)
class Spec:
    """One measurement: what the client asks the server to set up."""

    pattern: str          # rr | pp | ps
    stack: str            # raw | shoal
    reliable: bool
    size: int
    count: int            # timed messages; 0 with ``seconds``
    seconds: float        # timed duration; 0 with ``count``
    warmup: int
    rate: float           # messages per second, 0 = as fast as possible
    hwm: int
    curve: bool = False   # CURVE encryption on the data connection

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, raw: Any) -> Spec:
        if not isinstance(raw, dict):
            raise BenchError("malformed spec")
        try:
            spec = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        except (KeyError, TypeError) as exc:
            raise BenchError(f"malformed spec: {exc}") from None
        if spec.pattern not in PATTERNS or spec.stack not in ("raw", "shoal"):
            raise BenchError("malformed spec: unknown pattern or stack")
        if spec.size < BODY_MIN or spec.hwm < 1 or spec.warmup < 0:
            raise BenchError("malformed spec: size, hwm or warmup out of range")
        return spec

    @property
    def label(self) -> str:
        name = ("raw pyzmq" if self.stack == "raw"
                else "shoal reliable" if self.reliable else "shoal")
        return f"{name} +curve" if self.curve else name


Context = zmq.Context[zmq.Socket[bytes]]


def curve_server_context(secret: bytes) -> Context:
    """A ZeroMQ context whose sockets are CURVE servers with ``secret``: every socket
    of the serving end (they all bind). No ZAP handler runs, so any client key is
    admitted: the benchmark measures encryption, not authentication."""
    ctx: Context = zmq.Context()
    ctx.setsockopt(zmq.CURVE_SERVER, 1)
    ctx.setsockopt(zmq.CURVE_SECRETKEY, secret)
    return ctx


def curve_client_context(server_key: bytes) -> Context:
    """A ZeroMQ context whose sockets are CURVE clients of ``server_key`` (every
    socket of the measuring end connects), with a key pair of their own."""
    public, secret = zmq.curve_keypair()
    ctx: Context = zmq.Context()
    ctx.setsockopt(zmq.CURVE_PUBLICKEY, public)
    ctx.setsockopt(zmq.CURVE_SECRETKEY, secret)
    ctx.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    return ctx


def make_body(size: int, stamp: int, flag: int) -> bytes:
    """A body of ``size`` bytes carrying ``stamp`` and ``flag`` (see the module doc)."""
    return stamp.to_bytes(8, "little") + bytes((flag,)) + bytes(size - 9)


class Schedule:
    """When each message is due. ``due(i)`` is the stamp of message ``i`` (warmup
    included); ``None`` once the run is over (count reached, or time up)."""

    __slots__ = ("_count", "_end", "_interval", "_start", "warmup")

    def __init__(self, spec: Spec, start_ns: int) -> None:
        self.warmup = spec.warmup
        self._start = start_ns
        self._interval = 1e9 / spec.rate if spec.rate > 0 else 0.0
        self._count = spec.warmup + spec.count if spec.count else 0
        self._end = 0
        if spec.seconds:
            # Duration mode: the warmup runs first, then ``seconds`` of timed messages.
            warm = spec.warmup * self._interval if self._interval else 0.0
            self._end = start_ns + int(warm + spec.seconds * 1e9)

    def due(self, i: int, now: int) -> int | None:
        """The stamp for message ``i`` if it may be sent, given the time ``now``."""
        if self._count and i >= self._count:
            return None
        due = self._start + int(i * self._interval) if self._interval else now
        if self._end and i >= self.warmup and due >= self._end:
            return None
        return due

    def flag(self, i: int) -> int:
        return WARMUP if i < self.warmup else TIMED


def wait_until_blocking(due: int) -> None:
    """Block until ``perf_counter_ns() >= due``: sleep while more than ``SLEEP_NS``
    remain (the OS may oversleep by a millisecond), then short naps (Linux high
    resolution timers wake within tens of microseconds) and a final spin."""
    now = time.perf_counter_ns()
    if due - now > SLEEP_NS:
        time.sleep((due - now - SLEEP_NS + NAP_SLACK_NS) / 1e9)
    while (left := due - time.perf_counter_ns()) > 0:
        if left > 2 * NAP_SLACK_NS:
            time.sleep((left - NAP_SLACK_NS) / 1e9)


def histogram_of(samples: array[int]) -> bytes | None:
    """The encoded HDR histogram of latency samples in ns (None without samples);
    values outside the histogram's range are clamped to it."""
    if not samples:
        return None
    h = new_histogram()
    record = h.record_value
    for v in samples:
        record(max(HIST_LOWEST_NS, min(v, HIST_HIGHEST_NS)))
    encoded: bytes = h.encode()
    return encoded


class Tally:
    """A receiver's count: timed messages, first/last arrival, latency samples.

    ``latency`` is False when the stamps are not comparable with this clock; samples
    are then not kept.
    """

    __slots__ = ("first", "last", "latency", "received", "samples", "timed", "warm")

    def __init__(self, *, latency: bool) -> None:
        self.received = 0     # every message but probes
        self.timed = 0
        self.warm = 0
        self.first = 0
        self.last = 0
        self.latency = latency
        self.samples = array("q")

    def add(self, body: bytes, now: int) -> None:
        flag = body[8]
        if flag == PROBE:
            return
        self.received += 1
        if flag == WARMUP:
            self.warm += 1
            return
        if not self.timed:
            self.first = now
        self.timed += 1
        self.last = now
        if self.latency and len(self.samples) < MAX_SAMPLES:
            self.samples.append(now - int.from_bytes(body[:8], "little"))

    def result(self) -> dict[str, Any]:
        hist = histogram_of(self.samples) if self.latency else None
        elapsed = (self.last - self.first) / 1e9
        rate = (self.timed - 1) / elapsed if self.timed > 1 and elapsed > 0 else 0.0
        return {"received": self.received, "timed": self.timed, "warm": self.warm,
                "elapsed": elapsed, "rate": rate, "hist": hist}
