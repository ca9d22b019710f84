"""What both worker processes of the benchmark suite share: the measurement's
description (``Spec``), the variants, the CPU clock, the body, percentiles, and the
figures a side reports.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import trio
import zmq

LOOPBACK = "tcp://127.0.0.1:*"
PROBE_TIMEOUT_S = 10.0
PEER_TIMEOUT_S = 120.0
IDLE_S = 0.25  # pub/sub: stop after two checks this far apart saw no new message
MEASURE_TIMEOUT_S = 60.0  # per measurement; a stuck worker dumps its stack after 45 s
STACK_DUMP_S = 45.0
NOWAIT_EVERY_MASK = 255  # "nowait-send" senders yield to the loop once per 256 messages
SEND_MANY_BATCH = 256  # "send_many" senders hand over this many bodies per call
MIN_TP_COUNT = 200  # timed messages per throughput round at least (large bodies)
MIN_RR_COUNT = 200  # timed round trips per round at least (large bodies)
SMALL_ROUND = 4096  # fewer timed messages than this: shoal receivers get a smaller batch
QUIET_LOAD = 0.5  # a run is "quiet" if the 1-minute load average starts below this

now = time.perf_counter_ns
# Process CPU time: every thread of the worker, libzmq's I/O thread included. Reading
# it is a system call (about 0.6 us here), so each side reads it twice per
# measurement, at the edges of the timed part, never per message.
_main_at: dict[int, int] = {}


def cpu() -> int:
    """Process CPU ns now; the main thread's CPU time at the same moment is noted, so
    ``cpu_us`` can report both (the main thread is what runs Python: shoal's own
    cost, without libzmq's I/O thread)."""
    k = time.process_time_ns()
    _main_at[k] = time.thread_time_ns()
    return k


class CpuFigure(float):
    """A process CPU figure (us per event) carrying the main thread's as ``main``."""

    main: float
# SENDER_CPU: a sender cannot tell which of its messages libzmq's I/O thread is still
# writing (up to a high-water mark of them, all of a round of large bodies), so its
# clock runs from its first send (warmup included) until the receiver has the last
# message, waiting blocked meanwhile (no CPU), and divides by every message sent.

Result = dict[str, Any]


@dataclass(frozen=True)
class Spec:
    """One measurement, as sent to both worker processes."""

    bench: str  # "rr" | "pp" | "ps"
    variant: str
    size: int
    count: int
    warmup: int
    hwm: int
    endpoint: str = ""
    busy_poll: float = 0.0  # seconds, for the "shoal busy-poll" variant
    backend: str = "trio"  # the event loop a shoal variant runs on (``BACKENDS``)


# ---------------------------------------------------------------------------------
# helpers shared by the workers

T = TypeVar("T")


def run_on(backend: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on ``backend``'s event loop, the way an application would:
    ``trio.run(main)``, ``asyncio.run(main())`` or ``uvloop.run(main())``."""
    if backend == "trio":
        return trio.run(main)
    if backend == "asyncio":
        return asyncio.run(main())
    if backend == "uvloop":
        import uvloop

        return uvloop.run(main())
    raise ValueError(f"unknown backend {backend!r}")


def backend_missing(backend: str) -> str | None:
    """Why ``backend`` cannot run here (uvloop not importable), or None."""
    if backend != "uvloop":
        return None
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        return f"not available: uvloop cannot be imported ({exc})"
    return None



def make_body(size: int) -> bytes:
    return os.urandom(size)


def wait_peer(peer: Connection, expected: str, timeout: float = PEER_TIMEOUT_S) -> None:
    if not peer.poll(timeout):
        raise TimeoutError(f"peer did not say {expected!r} within {timeout} s")
    got = peer.recv()
    if got != expected:
        raise RuntimeError(f"peer said {got!r}, expected {expected!r}")


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of an already sorted list, ``q`` in [0, 100]."""
    n = len(sorted_values)
    rank = max(1, math.ceil(q / 100.0 * n))
    return sorted_values[min(n, rank) - 1]


def latency_result(samples: list[int], bad: int, **extra: Any) -> Result:
    s = sorted(samples)
    return {
        "n": len(s),
        "p50_us": percentile(s, 50) / 1e3,
        "p99_us": percentile(s, 99) / 1e3,
        "p999_us": percentile(s, 99.9) / 1e3,
        "min_us": s[0] / 1e3,
        "max_us": s[-1] / 1e3,
        "mean_us": statistics.fmean(s) / 1e3,
        "bad_replies": bad,
        **extra,
    }


def cpu_us(k0: int, k1: int, n: int) -> float:
    """CPU microseconds per event: process CPU time from ``k0`` to ``k1`` over ``n``
    (and, as ``.main``, the main thread's: see ``main_figures``)."""
    ok = n > 0 and k0 >= 0 and k1 >= k0 and k0 in _main_at and k1 in _main_at
    fig = CpuFigure((k1 - k0) / n / 1e3 if ok else float("nan"))
    fig.main = (_main_at[k1] - _main_at[k0]) / n / 1e3 if ok else float("nan")
    return fig


def main_figures(result: Result) -> Result:
    """Plain floats for the pipe: each ``cpu_X_us`` keeps the process figure and a
    ``main_X_us`` beside it holds the main thread's."""
    out = dict(result)
    for key, value in result.items():
        if isinstance(value, CpuFigure):
            out[key] = float(value)
            out["main_" + key[len("cpu_"):]] = value.main
    _main_at.clear()
    return out


def rate_result(t0: int, c0: int, t1: int, c1: int, received: int, **extra: Any) -> Result:
    dt = (t1 - t0) / 1e9
    rate = (c1 - c0) / dt if dt > 0 and c1 > c0 else float("nan")
    return {"rate": rate, "window_msgs": c1 - c0, "window_s": dt, "received": received,
            **extra}


def raw_socket(kind: int, hwm: int) -> zmq.Socket[bytes]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock: zmq.Socket[bytes] = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


def raw_bind(sock: zmq.Socket[bytes], ctrl: Connection) -> None:
    sock.bind(LOOPBACK)
    ctrl.send(("endpoint", sock.getsockopt_string(zmq.LAST_ENDPOINT)))


VARIANTS: dict[str, list[str]] = {
    "rr": ["shoal", "shoal busy-poll", "shoal reliable", "trio FD", "pyzmq", "pyzmq.asyncio"],
    "pp": ["shoal batch", "shoal send_many", "shoal async-for", "shoal nowait-send",
           "shoal reliable", "shoal reliable many", "pyzmq"],
    "ps": ["shoal batch", "shoal wildcard", "shoal send_many", "shoal nowait-send",
           "shoal reliable", "shoal reliable many", "pyzmq"],
}
# Best-effort shoal variants: the best of them is compared with raw pyzmq.
BEST_EFFORT = ("shoal batch", "shoal send_many")
# Reliable variants: the best of them is compared with the best best-effort one.
RELIABLE = ("shoal reliable", "shoal reliable many")
BACKENDS = ("trio", "asyncio", "uvloop")
"""The event loops a shoal variant can run on (``--backend``). trio's variants keep
their plain names; the others' carry the loop: "shoal batch [uvloop]"."""


def is_shoal(variant: str) -> bool:
    """Whether ``variant`` is one of shoal's (it runs once per chosen backend)."""
    return variant.startswith("shoal")


def variant_name(variant: str, backend: str) -> str:
    """The name a variant is shown under: ``variant`` on trio, else ``"variant [loop]"``."""
    return variant if backend == "trio" else f"{variant} [{backend}]"


def split_name(name: str) -> tuple[str, str]:
    """The variant and the backend behind a shown name (``variant_name``'s inverse)."""
    variant, sep, rest = name.partition(" [")
    return (variant, rest.removesuffix("]")) if sep else (name, "trio")


def names(bench: str, backends: list[str]) -> list[str]:
    """Every variant of ``bench`` as shown, shoal's once per backend (each next to its
    other loops), then the baselines."""
    return [variant_name(v, b) for v in VARIANTS[bench]
            for b in (backends if is_shoal(v) else ["trio"])]


WILDCARD_TOPICS = ["bench/**", "bench.probe"]
""""shoal wildcard": "shoal batch" subscribed with a pattern that takes every timed
message (topic ``bench``), and the probes' prefix."""
WILDCARD_TARGET = 0.9
"""pub/sub 64 B: "shoal wildcard" msgs/s >= this x "shoal batch"."""

TITLES = {
    "rr": "request/reply round-trip latency (one request in flight)",
    "pp": "push/pull throughput",
    "ps": "pub/sub throughput",
}
