"""What both ends of ``shoal bench`` share: the run description, the body layout, the
pacing schedule, the histogram, and the receiver's tally.

Body layout (every pattern, both stacks): 8 bytes little-endian ``perf_counter_ns``
stamp, 1 flag byte (``TIMED``, ``WARMUP`` or ``PROBE``), then filler up to the body
size. The stamp is the time the message was *due* under ``--rate`` (so a sender that
falls behind charges the delay to the latency: coordinated omission corrected), and
the time it was sent otherwise. One-way latency is ``receive time - stamp``, which
means something only when both ends read the same monotonic clock (the same
machine); the client checks that before it reports one-way latency.

CPU time per message (per round trip for rr) comes from process CPU time (every
thread, libzmq's I/O thread included). Reading it is a system call (about 0.6 us),
so nobody reads it per message: a receiver (``Tally``, and the rr server) reads it at
its first timed message and then every ``CPU_EVERY`` timed messages, and divides the
CPU time between its first and last reading by the messages between them; a sender
reads it at its first send and once the receiver has everything (libzmq may still be
writing its last messages when the last send returns), and divides by all it sent.
Pacing (``--rate``) ends in a short spin: the waits return the CPU they burnt, and
the senders leave it out.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, TypeVarTuple

import anyio
import sniffio
import zmq

import shoal

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

# Receivers read the CPU clock at their first timed message and every CPU_EVERY after.
CPU_EVERY = 64
BUSY_POLL_MAX = 1.0  # seconds

PATTERNS = ("rr", "pp", "ps")
PATTERN_NAMES = {"rr": "request/reply", "pp": "push/pull", "ps": "pub/sub"}
# The sides of the CPU figures, and which of them the serving end is.
CPU_SIDES = {"rr": ("client", "server"), "pp": ("send", "receive"),
             "ps": ("send", "receive")}
SERVER_SIDE = {"rr": "server", "pp": "receive", "ps": "send"}

cpu_ns: Callable[[], int] = time.process_time_ns


def cpu_us_per(ns: int, n: int) -> float | None:
    """Microseconds of CPU time per event, or None without events."""
    return ns / n / 1e3 if n > 0 and ns >= 0 else None


T = TypeVar("T")

OPENERS = ("open_requester", "open_replier", "open_pusher", "open_puller",
           "open_publisher", "open_subscriber")


def interleaved(variants: Sequence[T], round_index: int) -> list[T]:
    """The order of ``variants`` in round ``round_index``: A B C, then B C A, then
    C A B..., so that a slow spell of a shared machine does not land on one variant
    only."""
    k = round_index % len(variants)
    return [*variants[k:], *variants[:k]]


BACKENDS = ("trio", "asyncio", "uvloop")
"""The event loops ``shoal bench --backend`` runs shoal's side on."""

PosArgs = TypeVarTuple("PosArgs")


def run_on(backend: str, func: Callable[[*PosArgs], Awaitable[T]],
           *args: *PosArgs) -> T:
    """``func(*args)`` on ``backend``'s event loop (``BACKENDS``); a BenchError if it
    is uvloop and uvloop is not installed."""
    if backend == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise BenchError("--backend uvloop needs uvloop: pip install uvloop") from None
        return anyio.run(func, *args, backend="asyncio",
                         backend_options={"use_uvloop": True})
    return anyio.run(func, *args, backend=backend)


def loop_name() -> str:
    """The event loop running now, as ``--backend`` names it: trio, asyncio or uvloop."""
    if sniffio.current_async_library() == "trio":
        return "trio"
    return ("uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            else "asyncio")


def busy_poll_missing(openers: Sequence[str] = OPENERS) -> str | None:
    """Which of shoal's ``openers`` take no ``busy_poll=`` (None: all of them do)."""
    missing = [name for name in openers
               if "busy_poll" not in inspect.signature(getattr(shoal, name)).parameters]
    return ", ".join(missing) or None


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
    busy_poll: float = 0.0  # shoal resources' busy_poll= (seconds); 0: not passed

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
        if not isinstance(spec.busy_poll, int | float) or not (
                0 <= spec.busy_poll <= BUSY_POLL_MAX):
            raise BenchError("malformed spec: busy_poll out of range")
        return spec

    def shoal_options(self) -> dict[str, Any]:
        """Keyword arguments every shoal resource of this measurement gets."""
        return {"busy_poll": self.busy_poll} if self.busy_poll else {}

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


def wait_until_blocking(due: int) -> int:
    """Block until ``perf_counter_ns() >= due``: sleep while more than ``SLEEP_NS``
    remain (the OS may oversleep by a millisecond), then short naps (Linux high
    resolution timers wake within tens of microseconds) and a final spin. Return the
    CPU time it took (ns), for the sender to leave out of its figure."""
    k0 = cpu_ns()
    now = time.perf_counter_ns()
    if due - now > SLEEP_NS:
        time.sleep((due - now - SLEEP_NS + NAP_SLACK_NS) / 1e9)
    while (left := due - time.perf_counter_ns()) > 0:
        if left > 2 * NAP_SLACK_NS:
            time.sleep((left - NAP_SLACK_NS) / 1e9)
    return cpu_ns() - k0


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
    """A receiver's count: timed messages, first/last arrival, latency samples, and
    the CPU time over the timed messages (see the module doc).

    ``latency`` is False when the stamps are not comparable with this clock; samples
    are then not kept.
    """

    __slots__ = ("cpu_first", "cpu_last", "cpu_last_n", "first", "last", "latency",
                 "received", "samples", "timed", "warm")

    def __init__(self, *, latency: bool) -> None:
        self.received = 0     # every message but probes
        self.timed = 0
        self.warm = 0
        self.first = 0
        self.last = 0
        self.latency = latency
        self.samples = array("q")
        self.cpu_first = 0    # CPU clock at the first timed message
        self.cpu_last = 0     # ... and at the last reading, the ``cpu_last_n``-th
        self.cpu_last_n = 0

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
        timed = self.timed = self.timed + 1
        self.last = now
        if timed % CPU_EVERY == 1:
            self._read_cpu(timed)
        if self.latency and len(self.samples) < MAX_SAMPLES:
            self.samples.append(now - int.from_bytes(body[:8], "little"))

    def _read_cpu(self, timed: int) -> None:
        if timed == 1:
            self.cpu_first = cpu_ns()
        else:
            self.cpu_last, self.cpu_last_n = cpu_ns(), timed

    def cpu_us(self) -> float | None:
        """CPU microseconds per timed message; None before ``CPU_EVERY + 1`` of them."""
        return cpu_us_per(self.cpu_last - self.cpu_first, self.cpu_last_n - 1)

    def result(self) -> dict[str, Any]:
        hist = histogram_of(self.samples) if self.latency else None
        elapsed = (self.last - self.first) / 1e9
        rate = (self.timed - 1) / elapsed if self.timed > 1 and elapsed > 0 else 0.0
        return {"received": self.received, "timed": self.timed, "warm": self.warm,
                "elapsed": elapsed, "rate": rate, "hist": hist, "cpu_us": self.cpu_us()}
