"""shoal benchmarks: shoal against raw pyzmq, sender and receiver in separate processes.

Usage (from the repository root, with shoal installed in the active environment)::

    python benchmarks/run.py                  # full run, 3 to 4 minutes on 2 cores
    python benchmarks/run.py --quick          # short run, under a minute
    python benchmarks/run.py --json out.json  # also write every round's figures as JSON
    python benchmarks/run.py --only rr,pp --sizes 64 --rounds 7
    python benchmarks/run.py --sizes 64,4096,1048576   # 64 B, 4 KiB and 1 MiB bodies

Options: ``--rounds N`` (default 5, ``--quick`` 3), ``--sizes 64,4096`` (body sizes in
bytes; 1048576 is 1 MiB), ``--rr-count N`` (timed round trips per round, default 5000)
and ``--rr-warmup N``, ``--tp-count N`` (timed messages per throughput round, default
200000) and ``--tp-bytes N`` (cap on count x size per round, default 192 MiB, so large
bodies send fewer messages, but never fewer than 200 unless the counts say so; it
caps round trips too, at count x 2 x size), ``--tp-warmup N``, ``--pp-hwm N``
(push/pull high-water mark, default 1000, the libzmq default), ``--ps-hwm N`` (pub/sub
high-water mark, default 100000), ``--busy-poll SECONDS`` (for "shoal busy-poll",
default 0.001), ``--only rr,pp,ps`` (which benchmarks), ``--json FILE``.

What is measured. Everything runs over TCP on 127.0.0.1 only. Two worker processes
(``multiprocessing`` with the spawn start method) are started once and reused; for each
measurement one of them binds and the other connects, so the two sides always run in
different processes. Every body is ``bytes`` of exactly the given size: raw pyzmq sends
it as the whole frame; shoal sends it raw too (no msgpack), inside its one-frame
envelope (topic + NUL + 52-byte header + body). Variants are interleaved (A, B, C, then
B, C, A...) over the rounds, and the tables show the median over rounds. A variant
that needs an API this shoal does not have yet is shown as "not available" and not run.

CPU time. Beside every figure, each worker reports the CPU time it spent per message
(per round trip for ``rr``), from process CPU time (``time.process_time_ns``: every
thread, libzmq's I/O thread included), read at the edges of its timed part only (the
clock is a system call, about 0.6 us). Beside it, the main thread's CPU time over the
same span (``time.thread_time_ns``: the thread that runs Python, so shoal's own cost
without libzmq's I/O thread; the CPU targets are per main thread). The tables show
the median over rounds of each side; it is steadier than wall time on a shared
machine.

* ``rr``: the client over its timed round trips; the server from its reply to the last
  warmup request to its last reply (the same round trips).
* ``pp``/``ps`` receiver: over its timed window (below), divided by the messages in it.
* ``pp``/``ps`` sender: a sender cannot tell which of its messages libzmq's I/O thread
  is still writing (up to a high-water mark of them; a whole round of 1 MiB bodies),
  so its clock runs from its first send until the receiver reports the last arrival
  (waiting blocked on a pipe meanwhile, which costs no CPU), divided by every message
  sent, warmup included.

* ``rr`` -- request/reply round-trip latency, one request in flight. Each stack talks
  to itself: shoal requester -> shoal replier ("shoal"), the same with
  ``busy_poll=--busy-poll`` on both ends ("shoal busy-poll": a receiver polls that
  long before parking on the socket's FD), blocking pyzmq REQ -> REP ("pyzmq"),
  pyzmq.asyncio REQ -> REP under asyncio, and "trio FD": a pyzmq DEALER -> ROUTER (the
  sockets shoal uses) driven by bare trio, no shoal -- send NOBLOCK, then read
  ``EVENTS`` and recv NOBLOCK if POLLIN, else ``trio.lowlevel.wait_readable(FD)`` and
  look again. It is the floor a trio library over pyzmq starts from. The replier
  echoes the body. After a warmup, every round trip is timed on its own
  (``perf_counter_ns`` around ``request()`` / ``send()+recv()``); a round reports p50,
  p99 and p99.9 (nearest rank). The replier closes only after the client has said
  (over a pipe) that it has every reply.
* ``pp`` -- push/pull throughput. The puller binds and the pusher sends warmup + count
  messages as fast as it can (``await push.send()`` / ``sock.send()``, with
  backpressure, so nothing is lost). The *receiver* measures: it notes the time and
  its message count once the warmup has arrived (t0, c0) and when the last message
  arrives (t1, c1); the rate is (c1 - c0) / (t1 - t0). shoal's receiver uses
  ``receive_batch()`` ("shoal batch") and, as another variant, plain ``async for``.
  "shoal send_many" keeps the batch receiver and sends with ``await
  push.send_many(bodies)``, 256 bodies a call. "shoal nowait-send" sends with
  ``push.send_nowait()`` (falling back to ``await push.send()`` on ``trio.WouldBlock``)
  and one ``trio.lowlevel.checkpoint()`` per 256 messages: it shows what the sender
  gains by yielding less often than ``await send()`` does. A round of fewer than 4096
  timed messages (large bodies) opens shoal's receivers with ``batch=count/8``, so
  that a backlog drained in one batch cannot swallow the whole timed window.
* ``ps`` -- pub/sub throughput, measured like ``pp``. The publisher binds and keeps
  publishing probe messages (shoal topic ``bench.probe``; raw: empty frames) until the
  subscriber reports over a pipe that one arrived, so the subscription is in place
  before the timed messages start (no slow joiner). PUB drops at its high-water mark
  (counted in messages, so 1 MiB bodies queue up to count x 1 MiB, well within it), so
  both sides use a large one, and the table reports any loss (sent - received). If
  messages were lost the subscriber stops after 0.5 s without traffic. "shoal
  send_many" publishes with ``await pub.publish_many(items)``, 256 ``(topic, body)``
  items a call; "shoal nowait-send" with ``pub.publish_nowait()`` plus one checkpoint
  per 256.

Reliable variants ("shoal reliable"), same method: ``rr`` with ``request(body,
retries=3)`` (a retry timer per request; the replier's duplicate cache is always on);
``pp`` with ``open_pusher/open_puller(reliable=True)`` (windowed, acknowledged when the
application asks for the next item); ``ps`` with ``open_publisher/open_subscriber(
reliable=True)``, where the publisher waits for the subscriber's hello instead of
probing, and nothing can be lost. "shoal reliable many" is the same with batches of
256 (``send_many`` / ``publish_many``); the reliable target takes the faster of the
two.

Targets, printed as information (pass/fail, never assertions), after the tables and
in the JSON (``targets``). "Best effort" is the faster (median msgs/s) of "shoal
batch" and "shoal send_many", named in each line; every other variant's ratio to
raw pyzmq is printed too.

* push/pull throughput, best effort / raw pyzmq PUSH/PULL: >= 0.6x at 64 B, >= 0.85x
  at 4 KiB, >= 0.9x at 1 MiB (no target at other sizes);
* pub/sub throughput, best effort / raw PUB/SUB: >= 0.5x at 64 B, >= 0.85x at 4 KiB,
  >= 0.9x at 1 MiB;
* request/reply p50: "shoal" <= 1.15x "trio FD" (same run); "shoal busy-poll" <= 1.2x
  blocking pyzmq;
* CPU per message, push/pull 64 B, best effort: sending <= 0.7 us, receiving <= 1.0 us;
* reliable push/pull and pub/sub throughput >= 0.6x best effort.

The output starts with the machine's load average before and after the run, and calls
the run "quiet" if the 1-minute average was below 0.5 at the start, else "loaded".
``--json`` writes ``environment``, ``load`` (``before``, ``after``, ``label``),
``config``, ``summary`` (per bench, size and variant: the medians, CPU included, and
the ``ratios``), ``targets`` (``target``, ``value``, ``op``, ``limit``, ``unit``,
``verdict`` and the best-effort ``variant``) and ``rounds`` (every round's figures:
``cpu_client_us``/``cpu_server_us`` for ``rr``, ``cpu_send_us``/``cpu_recv_us``
otherwise, each with its ``main_...`` twin for the main thread).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import inspect
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import trio
import zmq
import zmq.asyncio

import shoal
from shoal.patterns import Publisher, Pusher

LOOPBACK = "tcp://127.0.0.1:*"
PROBE_TIMEOUT_S = 10.0
PEER_TIMEOUT_S = 120.0
IDLE_S = 0.25  # pub/sub: stop after two checks this far apart saw no new message
MEASURE_TIMEOUT_S = 60.0  # per measurement; a stuck worker dumps its stack after 45 s
STACK_DUMP_S = 45.0
NOWAIT_EVERY_MASK = 255  # "nowait-send" senders yield to trio once per 256 messages
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


# ---------------------------------------------------------------------------------
# helpers shared by the workers


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


# ---------------------------------------------------------------------------------
# request/reply latency


def rr_options(spec: Spec) -> dict[str, Any]:
    """Keyword arguments of both ends of a shoal request/reply variant."""
    return {"busy_poll": spec.busy_poll} if spec.variant == "shoal busy-poll" else {}


def shoal_rr_server(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    total = spec.warmup + spec.count

    async def main() -> Result:
        async with shoal.open_replier(bind=LOOPBACK, high_water_mark=spec.hwm,
                                      **rr_options(spec)) as rep:
            ctrl.send(("endpoint", rep.endpoints[0]))
            # The CPU clock covers the client's timed round trips: from the last
            # warmup reply to the last reply.
            k0 = k1 = cpu()
            served = 0
            async for req in rep:
                await req.reply(req.body)
                served += 1
                if served == spec.warmup:
                    k0 = cpu()
                if served == total:
                    k1 = cpu()
                    break
            # Close only once the client has its last reply: a reply still in flight
            # when the replier closes can be lost (see the report on ZMQ_IMMEDIATE).
            wait_peer(peer, "done")
            return {"cpu_server_us": cpu_us(k0, k1, spec.count)}

    return trio.run(main)


def shoal_rr_client(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)

    retries = 3 if spec.variant == "shoal reliable" else 0

    async def main() -> Result:
        async with shoal.open_requester(connect=spec.endpoint, high_water_mark=spec.hwm,
                                        **rr_options(spec)) as c:
            def request(body: bytes) -> Any:
                return c.request(body, retries=retries)
            bad = 0
            for _ in range(spec.warmup):
                if await request(body) != body:
                    bad += 1
            samples: list[int] = []
            append = samples.append
            k0 = cpu()
            for _ in range(spec.count):
                t0 = now()
                reply = await request(body)
                append(now() - t0)
                if reply != body:
                    bad += 1
            k1 = cpu()
            peer.send("done")
            return latency_result(samples, bad, cpu_client_us=cpu_us(k0, k1, spec.count))

    return trio.run(main)


def raw_rr_server(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    sock = raw_socket(zmq.REP, spec.hwm)
    try:
        raw_bind(sock, ctrl)
        recv, send = sock.recv, sock.send
        k0 = cpu()
        for _ in range(spec.warmup):
            send(recv())
        if spec.warmup:
            k0 = cpu()
        for _ in range(spec.count):
            send(recv())
        k1 = cpu()
        wait_peer(peer, "done")
    finally:
        sock.close()
    return {"cpu_server_us": cpu_us(k0, k1, spec.count)}


def raw_rr_client(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)
    sock = raw_socket(zmq.REQ, spec.hwm)
    try:
        sock.connect(spec.endpoint)
        recv, send = sock.recv, sock.send
        bad = 0
        for _ in range(spec.warmup):
            send(body)
            if recv() != body:
                bad += 1
        samples: list[int] = []
        append = samples.append
        k0 = cpu()
        for _ in range(spec.count):
            t0 = now()
            send(body)
            reply = recv()
            append(now() - t0)
            if reply != body:
                bad += 1
        k1 = cpu()
        peer.send("done")
    finally:
        sock.close()
    return latency_result(samples, bad, cpu_client_us=cpu_us(k0, k1, spec.count))


def aio_socket(ctx: zmq.asyncio.Context, kind: int, hwm: int) -> zmq.asyncio.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


def aio_rr_server(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    async def main() -> Result:
        ctx = zmq.asyncio.Context()
        sock = aio_socket(ctx, zmq.REP, spec.hwm)
        try:
            sock.bind(LOOPBACK)
            ctrl.send(("endpoint", sock.getsockopt_string(zmq.LAST_ENDPOINT)))
            k0 = cpu()
            for _ in range(spec.warmup):
                await sock.send(await sock.recv())
            if spec.warmup:
                k0 = cpu()
            for _ in range(spec.count):
                await sock.send(await sock.recv())
            k1 = cpu()
            wait_peer(peer, "done")
            return {"cpu_server_us": cpu_us(k0, k1, spec.count)}
        finally:
            sock.close()
            ctx.term()

    return asyncio.run(main())


def aio_rr_client(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)

    async def main() -> Result:
        ctx = zmq.asyncio.Context()
        sock = aio_socket(ctx, zmq.REQ, spec.hwm)
        try:
            sock.connect(spec.endpoint)
            recv, send = sock.recv, sock.send
            bad = 0
            for _ in range(spec.warmup):
                await send(body)
                if await recv() != body:
                    bad += 1
            samples: list[int] = []
            append = samples.append
            k0 = cpu()
            for _ in range(spec.count):
                t0 = now()
                await send(body)
                reply = await recv()
                append(now() - t0)
                if reply != body:
                    bad += 1
            k1 = cpu()
            peer.send("done")
            return latency_result(samples, bad, cpu_client_us=cpu_us(k0, k1, spec.count))
        finally:
            sock.close()
            ctx.term()

    return asyncio.run(main())


# The floor: pyzmq DEALER -> ROUTER (the sockets shoal's request/reply uses) driven by
# bare trio, no shoal. Every send is NOBLOCK; a wait reads EVENTS first and parks on
# the FD only when nothing is there (the FD is edge-triggered, and the send before it
# may have consumed the edge).


async def fd_wait(sock: zmq.Socket[bytes], fd: int, flag: int) -> None:
    while not sock.getsockopt(zmq.EVENTS) & flag:  # type: ignore[operator]
        await trio.lowlevel.wait_readable(fd)


def fd_socket(kind: int, hwm: int) -> tuple[zmq.Socket[bytes], int]:
    sock = raw_socket(kind, hwm)
    fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
    return sock, fd


def fd_close(sock: zmq.Socket[bytes], fd: int) -> None:
    trio.lowlevel.notify_closing(fd)
    sock.close()


def fd_rr_server(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    total = spec.warmup + spec.count

    async def main() -> Result:
        sock, fd = fd_socket(zmq.ROUTER, spec.hwm)
        try:
            raw_bind(sock, ctrl)
            recv, send = sock.recv_multipart, sock.send_multipart
            k0 = k1 = cpu()
            for served in range(1, total + 1):
                await fd_wait(sock, fd, zmq.POLLIN)
                send(recv(zmq.NOBLOCK), zmq.NOBLOCK)  # [client id, body] back
                if served == spec.warmup:
                    k0 = cpu()
            k1 = cpu()
            wait_peer(peer, "done")
        finally:
            fd_close(sock, fd)
        return {"cpu_server_us": cpu_us(k0, k1, spec.count)}

    return trio.run(main)


def fd_rr_client(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)

    async def main() -> Result:
        sock, fd = fd_socket(zmq.DEALER, spec.hwm)
        try:
            sock.connect(spec.endpoint)
            recv, send = sock.recv, sock.send

            async def request() -> bytes:
                while True:
                    try:
                        send(body, zmq.NOBLOCK)
                        break
                    except zmq.Again:  # not connected yet
                        await fd_wait(sock, fd, zmq.POLLOUT)
                await fd_wait(sock, fd, zmq.POLLIN)
                return recv(zmq.NOBLOCK)

            bad = 0
            for _ in range(spec.warmup):
                if await request() != body:
                    bad += 1
            samples: list[int] = []
            append = samples.append
            k0 = cpu()
            for _ in range(spec.count):
                t0 = now()
                reply = await request()
                append(now() - t0)
                if reply != body:
                    bad += 1
            k1 = cpu()
            peer.send("done")
        finally:
            fd_close(sock, fd)
        return latency_result(samples, bad, cpu_client_us=cpu_us(k0, k1, spec.count))

    return trio.run(main)


# ---------------------------------------------------------------------------------
# push/pull throughput (the puller binds, measures, and tells the pusher when done)


def receiver_options(spec: Spec) -> dict[str, Any]:
    """Keyword arguments of a shoal receiver. A round of few messages (large bodies)
    caps the batch: a backlog drained in one batch would leave no timed window after
    the warmup. Per-batch costs do not matter next to such bodies."""
    return {"batch": max(16, spec.count // 8)} if spec.count < SMALL_ROUND else {}


def _puller(spec: Spec) -> AbstractAsyncContextManager[Any]:
    if spec.variant in RELIABLE:
        return shoal.open_puller(bind=LOOPBACK, high_water_mark=spec.hwm, reliable=True,
                                 **receiver_options(spec))
    return shoal.open_puller(bind=LOOPBACK, high_water_mark=spec.hwm,
                             **receiver_options(spec))


def _pusher(spec: Spec) -> AbstractAsyncContextManager[Any]:
    if spec.variant in RELIABLE:
        return shoal.open_pusher(connect=spec.endpoint, high_water_mark=spec.hwm, reliable=True)
    return shoal.open_pusher(connect=spec.endpoint, high_water_mark=spec.hwm)


def shoal_pp_recv(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    batched = spec.variant != "shoal async-for"
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with _puller(spec) as pull:
            ctrl.send(("endpoint", pull.endpoints[0]))
            got = 0
            t0 = c0 = t1 = k0 = k1 = -1
            last_len = -1
            if batched:
                receive_batch = pull.receive_batch
                while got < target:
                    batch = await receive_batch()
                    got += len(batch)
                    if c0 < 0 and got >= spec.warmup:
                        t0, c0, k0 = now(), got, cpu()
                t1, k1 = now(), cpu()
                last_len = len(batch[-1].body)
            else:
                async for msg in pull:
                    got += 1
                    if got == spec.warmup:
                        t0, c0, k0 = now(), got, cpu()
                    if got == target:
                        t1, k1 = now(), cpu()
                        last_len = len(msg.body)
                        break
            peer.send("done")
            stats = pull.statistics()
            return rate_result(t0, c0, t1, got, got, body_ok=last_len == spec.size,
                               malformed=stats.malformed,
                               cpu_recv_us=cpu_us(k0, k1, got - c0))

    return trio.run(main)


def batches(body: Any, n: int) -> list[list[Any]]:
    """``n`` copies of ``body`` in lists of at most ``SEND_MANY_BATCH``."""
    full, rest = divmod(n, SEND_MANY_BATCH)
    out = [[body] * SEND_MANY_BATCH] * full  # the same list again: send_many only reads it
    return [*out, [body] * rest] if rest else out


def shoal_pp_send(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with _pusher(spec) as push:
            send = push.send
            t0, k0 = now(), cpu()
            if spec.variant in ("shoal send_many", "shoal reliable many"):
                send_many = push.send_many
                for batch in batches(body, target):
                    await send_many(batch)
            elif spec.variant == "shoal nowait-send":
                send_nowait = push.send_nowait
                checkpoint = trio.lowlevel.checkpoint
                for i in range(target):
                    try:
                        send_nowait(body)
                    except trio.WouldBlock:
                        await send(body)
                    if not i & NOWAIT_EVERY_MASK:
                        await checkpoint()
            else:
                for _ in range(target):
                    await send(body)
            t1 = now()
            # in a thread: the library keeps running meanwhile (a reliable sender still
            # has items to put on the wire, acknowledgements to read)
            await trio.to_thread.run_sync(wait_peer, peer, "done")
            k1 = cpu()  # see SENDER_CPU
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9),
                    "cpu_send_us": cpu_us(k0, k1, target)}

    return trio.run(main)


def raw_pp_recv(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    sock = raw_socket(zmq.PULL, spec.hwm)
    try:
        raw_bind(sock, ctrl)
        recv = sock.recv
        first_len = len(recv())
        for _ in range(spec.warmup - 1):
            recv()
        t0, k0 = now(), cpu()
        for _ in range(spec.count):
            recv()
        t1, k1 = now(), cpu()
        peer.send("done")
    finally:
        sock.close()
    target = spec.warmup + spec.count
    return rate_result(t0, spec.warmup, t1, target, target, body_ok=first_len == spec.size,
                       cpu_recv_us=cpu_us(k0, k1, spec.count))


def raw_pp_send(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)
    target = spec.warmup + spec.count
    sock = raw_socket(zmq.PUSH, spec.hwm)
    try:
        sock.connect(spec.endpoint)
        send = sock.send
        t0, k0 = now(), cpu()
        for _ in range(target):
            send(body)
        t1 = now()
        wait_peer(peer, "done")
        k1 = cpu()  # see SENDER_CPU
    finally:
        sock.close()
    return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9),
            "cpu_send_us": cpu_us(k0, k1, target)}


# ---------------------------------------------------------------------------------
# pub/sub throughput (the publisher binds and probes until the subscriber is ready)


def shoal_ps_pub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with shoal.open_publisher(bind=LOOPBACK, high_water_mark=spec.hwm) as pub:
            ctrl.send(("endpoint", pub.endpoints[0]))
            probes = 0
            with trio.fail_after(PROBE_TIMEOUT_S):
                while not peer.poll():
                    pub.publish_nowait("bench.probe", b"")
                    probes += 1
                    await trio.sleep(0.001)
            wait_peer(peer, "ready")
            publish = pub.publish
            t0, k0 = now(), cpu()
            if spec.variant == "shoal send_many":
                publish_many = pub.publish_many
                for batch in batches(("bench", body), target):
                    await publish_many(batch)
            elif spec.variant == "shoal nowait-send":
                publish_nowait = pub.publish_nowait
                checkpoint = trio.lowlevel.checkpoint
                for i in range(target):
                    publish_nowait("bench", body)
                    if not i & NOWAIT_EVERY_MASK:
                        await checkpoint()
            else:
                for _ in range(target):
                    await publish("bench", body)
            t1 = now()
            # in a thread: the library keeps running meanwhile (a reliable sender still
            # has items to put on the wire, acknowledgements to read)
            await trio.to_thread.run_sync(wait_peer, peer, "done")
            k1 = cpu()  # see SENDER_CPU
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9), "probes": probes,
                    "cpu_send_us": cpu_us(k0, k1, target)}

    return trio.run(main)


def shoal_ps_sub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with shoal.open_subscriber(connect=spec.endpoint, topics=["bench"],
                                         high_water_mark=spec.hwm,
                                         **receiver_options(spec)) as sub:
            with trio.fail_after(PROBE_TIMEOUT_S):
                await sub.receive()  # a probe: the subscription is in place
            peer.send("ready")
            while True:  # skip the probes still in flight
                msg = await sub.receive()
                if msg.topic == "bench":
                    break
            got = 1
            t0 = c0 = k0 = -1
            t1 = now()
            last_len = len(msg.body)

            async def watchdog(scope: trio.CancelScope) -> None:
                seen = -1
                while True:
                    await trio.sleep(IDLE_S)
                    if got == seen:
                        scope.cancel()
                        return
                    seen = got

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watchdog, nursery.cancel_scope)
                receive_batch = sub.receive_batch
                while got < target:
                    batch = await receive_batch()
                    t1 = now()
                    got += len(batch)
                    if c0 < 0 and got >= spec.warmup:
                        t0, c0, k0 = t1, got, cpu()
                    last_len = len(batch[-1].body)
                nursery.cancel_scope.cancel()
            # On loss this includes the idle watchdog period: sleeping costs no CPU.
            k1 = cpu()
            peer.send("done")
            stats = sub.statistics()
            return rate_result(t0, c0, t1, got, got, body_ok=last_len == spec.size,
                               gaps=stats.gaps, malformed=stats.malformed,
                               cpu_recv_us=cpu_us(k0, k1, got - c0))

    return trio.run(main)


def shoal_rps_pub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    """Reliable pub/sub: no probes, the publisher waits for the subscriber's hello."""
    body = make_body(spec.size)
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with shoal.open_publisher(bind=LOOPBACK, high_water_mark=spec.hwm,
                                        reliable=True) as pub:
            ctrl.send(("endpoint", pub.endpoints[0]))
            with trio.fail_after(PROBE_TIMEOUT_S):
                await pub.wait_for_subscribers(1)
            publish = pub.publish
            t0, k0 = now(), cpu()
            if spec.variant == "shoal reliable many":
                for batch in batches(body, target):
                    await pub.publish_many([("bench", b) for b in batch])
            else:
                for _ in range(target):
                    await publish("bench", body)
            t1 = now()
            # in a thread: the library keeps running meanwhile (a reliable sender still
            # has items to put on the wire, acknowledgements to read)
            await trio.to_thread.run_sync(wait_peer, peer, "done")
            k1 = cpu()  # see SENDER_CPU
            stats = pub.statistics()
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9),
                    "retransmitted": stats.retransmitted,
                    "cpu_send_us": cpu_us(k0, k1, target)}

    return trio.run(main)


def shoal_rps_sub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with shoal.open_subscriber(connect=spec.endpoint, topics=["bench"],
                                         high_water_mark=spec.hwm, reliable=True,
                                         **receiver_options(spec)) as sub:
            got = 0
            t0 = c0 = t1 = k0 = -1
            last_len = -1
            receive_batch = sub.receive_batch
            while got < target:
                batch = await receive_batch()
                got += len(batch)
                if c0 < 0 and got >= spec.warmup:
                    t0, c0, k0 = now(), got, cpu()
            t1, k1 = now(), cpu()
            last_len = len(batch[-1].body)
            peer.send("done")
            stats = sub.statistics()
            return rate_result(t0, c0, t1, got, got, body_ok=last_len == spec.size,
                               gaps=stats.resyncs, malformed=stats.malformed,
                               cpu_recv_us=cpu_us(k0, k1, got - c0))

    return trio.run(main)


def raw_ps_pub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)
    target = spec.warmup + spec.count
    sock = raw_socket(zmq.PUB, spec.hwm)
    try:
        raw_bind(sock, ctrl)
        probes = 0
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while not peer.poll(0.001):
            if time.monotonic() > deadline:
                raise TimeoutError("subscriber never saw a probe")
            sock.send(b"")
            probes += 1
        wait_peer(peer, "ready")
        send = sock.send
        t0, k0 = now(), cpu()
        for _ in range(target):
            send(body)
        t1 = now()
        wait_peer(peer, "done")
        k1 = cpu()  # see SENDER_CPU
    finally:
        sock.close()
    return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9), "probes": probes,
            "cpu_send_us": cpu_us(k0, k1, target)}


def raw_ps_sub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    target = spec.warmup + spec.count
    sock = raw_socket(zmq.SUB, spec.hwm)
    try:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVTIMEO, int(PROBE_TIMEOUT_S * 1000))
        sock.connect(spec.endpoint)
        sock.recv()  # a probe: the subscription is in place
        peer.send("ready")
        recv = sock.recv
        while not (msg := recv()):  # skip the probes still in flight (empty frames)
            pass
        first_len = len(msg)
        idle_ms = int(2 * IDLE_S * 1000)
        sock.setsockopt(zmq.RCVTIMEO, idle_ms)
        t0 = c0 = k0 = -1
        i = 0
        try:
            for _ in range(spec.warmup - 1):
                recv()
            t0, c0, k0 = now(), spec.warmup, cpu()
            for i in range(spec.count):  # noqa: B007 -- i tells how far we got on loss
                recv()
            t1, got = now(), target
        except zmq.Again:  # messages were lost: the last one came idle_ms ago
            t1 = now() - idle_ms * 1_000_000
            got = c0 + i if c0 >= 0 else -1
        k1 = cpu()  # on loss: after idle_ms blocked in recv, which costs no CPU
        peer.send("done")
    finally:
        sock.close()
    return rate_result(t0, c0, t1, got, got, body_ok=first_len == spec.size,
                       approx_end=got != target, cpu_recv_us=cpu_us(k0, k1, got - c0))


# ---------------------------------------------------------------------------------
# the worker processes

Role = Callable[[Spec, Connection, Connection], Result]

ROLES: dict[tuple[str, str], tuple[Role, Role]] = {
    # (bench, variant): (binding side, connecting side)
    ("rr", "shoal"): (shoal_rr_server, shoal_rr_client),
    ("rr", "shoal busy-poll"): (shoal_rr_server, shoal_rr_client),
    ("rr", "shoal reliable"): (shoal_rr_server, shoal_rr_client),
    ("rr", "trio FD"): (fd_rr_server, fd_rr_client),
    ("rr", "pyzmq"): (raw_rr_server, raw_rr_client),
    ("rr", "pyzmq.asyncio"): (aio_rr_server, aio_rr_client),
    ("pp", "shoal batch"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal send_many"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal async-for"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal nowait-send"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal reliable"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal reliable many"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "pyzmq"): (raw_pp_recv, raw_pp_send),
    ("ps", "shoal batch"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal send_many"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal nowait-send"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal reliable"): (shoal_rps_pub, shoal_rps_sub),
    ("ps", "shoal reliable many"): (shoal_rps_pub, shoal_rps_sub),
    ("ps", "pyzmq"): (raw_ps_pub, raw_ps_sub),
}

VARIANTS: dict[str, list[str]] = {
    "rr": ["shoal", "shoal busy-poll", "shoal reliable", "trio FD", "pyzmq", "pyzmq.asyncio"],
    "pp": ["shoal batch", "shoal send_many", "shoal async-for", "shoal nowait-send",
           "shoal reliable", "shoal reliable many", "pyzmq"],
    "ps": ["shoal batch", "shoal send_many", "shoal nowait-send", "shoal reliable",
           "shoal reliable many", "pyzmq"],
}
# Best-effort shoal variants: the best of them is compared with raw pyzmq.
BEST_EFFORT = ("shoal batch", "shoal send_many")
# Reliable variants: the best of them is compared with the best best-effort one.
RELIABLE = ("shoal reliable", "shoal reliable many")

TITLES = {
    "rr": "request/reply round-trip latency (one request in flight)",
    "pp": "push/pull throughput",
    "ps": "pub/sub throughput",
}


def takes_busy_poll(opener: Callable[..., Any]) -> bool:
    return "busy_poll" in inspect.signature(opener).parameters


def unavailable(bench: str, variant: str) -> str | None:
    """Why this shoal cannot run ``variant`` (an API it does not have), or None."""
    if variant == "shoal busy-poll" and not (takes_busy_poll(shoal.open_requester)
                                             and takes_busy_poll(shoal.open_replier)):
        return "not available: open_requester/open_replier take no busy_poll="
    if variant == "shoal reliable many":
        from shoal.patterns._reliable_pubsub import ReliablePublisher
        from shoal.patterns._reliable_pushpull import ReliablePusher
        if bench == "pp" and not hasattr(ReliablePusher, "send_many"):
            return "not available: the reliable pusher has no send_many()"
        if bench == "ps" and not hasattr(ReliablePublisher, "publish_many"):
            return "not available: the reliable publisher has no publish_many()"
    if variant == "shoal send_many":
        if bench == "pp" and not hasattr(Pusher, "send_many"):
            return "not available: Pusher has no send_many()"
        if bench == "ps" and not hasattr(Publisher, "publish_many"):
            return "not available: Publisher has no publish_many()"
    return None


def worker_main(ctrl: Connection, peer: Connection) -> None:
    """Run measurements sent over ``ctrl`` until told to stop (``None``)."""
    while True:
        try:
            cmd = ctrl.recv()
        except EOFError:
            return
        if cmd is None:
            return
        side, spec = cmd
        # If this side gets stuck, its Python stack goes to stderr before the driver
        # gives up on it (the driver then kills both workers and starts new ones).
        faulthandler.dump_traceback_later(STACK_DUMP_S)
        try:
            role = ROLES[spec.bench, spec.variant][side]
            ctrl.send(("result", main_figures(role(spec, ctrl, peer))))
        except BaseException:
            ctrl.send(("error", traceback.format_exc()))
        finally:
            faulthandler.cancel_dump_traceback_later()


class MeasurementFailed(Exception):
    pass


class Workers:
    """Two spawned worker processes joined by a pipe; restarted after any failure."""

    def __init__(self) -> None:
        self._mp = multiprocessing.get_context("spawn")
        self._procs: list[BaseProcess] = []
        self._ctrls: list[Connection] = []
        self.start()

    def start(self) -> None:
        peer_a, peer_b = self._mp.Pipe()
        for peer in (peer_a, peer_b):
            mine, theirs = self._mp.Pipe()
            proc = self._mp.Process(target=worker_main, args=(theirs, peer), daemon=True)
            proc.start()
            theirs.close()
            self._procs.append(proc)
            self._ctrls.append(mine)
        peer_a.close()
        peer_b.close()

    def stop(self) -> None:
        for ctrl in self._ctrls:
            try:
                ctrl.send(None)
            except OSError:
                pass
        for proc in self._procs:
            proc.join(timeout=3)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=3)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=3)
        for ctrl in self._ctrls:
            ctrl.close()
        self._procs.clear()
        self._ctrls.clear()

    def restart(self) -> None:
        for proc in self._procs:
            proc.kill()  # a failed measurement may have left a worker stuck
        self.stop()
        self.start()

    @staticmethod
    def _expect(ctrl: Connection, what: str, deadline: float, side: str) -> Any:
        if not ctrl.poll(max(0.0, deadline - time.monotonic())):
            raise MeasurementFailed(
                f"timed out after {MEASURE_TIMEOUT_S:.0f} s waiting for the {side} "
                f"side's {what} (its stack was dumped to stderr)")
        try:
            kind, value = ctrl.recv()
        except EOFError:
            raise MeasurementFailed("a worker died") from None
        if kind == "error":
            raise MeasurementFailed(str(value))
        if kind != what:
            raise MeasurementFailed(f"worker sent {kind!r}, expected {what!r}")
        return value

    def measure(self, spec: Spec) -> tuple[Result, Result]:
        """Run one measurement; return (binding side's result, connecting side's)."""
        deadline = time.monotonic() + MEASURE_TIMEOUT_S
        bind_ctrl, connect_ctrl = self._ctrls
        try:
            bind_ctrl.send((0, spec))
            endpoint = self._expect(bind_ctrl, "endpoint", deadline, "binding")
            if not str(endpoint).startswith("tcp://127.0.0.1:"):
                raise MeasurementFailed(f"unexpected endpoint {endpoint!r}")
            connect_ctrl.send((1, replace(spec, endpoint=endpoint)))
            res_connect = self._expect(connect_ctrl, "result", deadline, "connecting")
            res_bind = self._expect(bind_ctrl, "result", deadline, "binding")
        except MeasurementFailed:
            self.restart()
            raise
        return res_bind, res_connect


# ---------------------------------------------------------------------------------
# the driver


@dataclass
class Config:
    rounds: int
    sizes: list[int]
    only: list[str]
    rr_count: int
    rr_warmup: int
    tp_count: int
    tp_bytes: int
    tp_warmup: int
    pp_hwm: int
    ps_hwm: int
    busy_poll: float = 0.001
    rr_hwm: int = 1000

    def spec(self, bench: str, variant: str, size: int) -> Spec:
        if bench == "rr":
            # Large bodies: fewer round trips (each carries the body both ways), and a
            # warmup in proportion.
            count = min(self.rr_count, max(MIN_RR_COUNT, self.tp_bytes // (2 * size)))
            warmup = (self.rr_warmup if count == self.rr_count
                      else min(self.rr_warmup, count // 4))
            busy = self.busy_poll if variant == "shoal busy-poll" else 0.0
            return Spec(bench, variant, size, count, warmup, self.rr_hwm, busy_poll=busy)
        count = min(self.tp_count, max(MIN_TP_COUNT, self.tp_bytes // size))
        warmup = max(1, min(self.tp_warmup, count // 4))
        hwm = self.pp_hwm if bench == "pp" else self.ps_hwm
        return Spec(bench, variant, size, count, warmup, hwm)


def one_round_result(spec: Spec, res_bind: Result, res_connect: Result) -> Result:
    """Merge both sides' figures into the one row a round contributes."""
    if spec.bench == "rr":
        return {**res_connect, "cpu_server_us": res_bind.get("cpu_server_us", math.nan),
                "main_server_us": res_bind.get("main_server_us", math.nan)}
    if spec.bench == "pp":
        recv, send = res_bind, res_connect
    else:
        send, recv = res_bind, res_connect
    out = {**recv, "sent": send["sent"], "send_rate": send["send_rate"],
           "cpu_send_us": send.get("cpu_send_us", math.nan),
           "main_send_us": send.get("main_send_us", math.nan)}
    out["lost"] = send["sent"] - recv["received"] if recv["received"] >= 0 else None
    return out


Results = dict[tuple[str, int, str], list[Result]]


def run_all(cfg: Config, log: Callable[[str], None]) -> Results:
    results: Results = {}
    runnable: dict[str, list[str]] = {}
    for bench in cfg.only:
        runnable[bench] = []
        for variant in VARIANTS[bench]:
            why = unavailable(bench, variant)
            if why is None:
                runnable[bench].append(variant)
                continue
            log(f"  {bench} {variant}: {why}")
            for size in cfg.sizes:
                results[bench, size, variant] = [{"unavailable": why}]
    workers = Workers()
    try:
        for rnd in range(cfg.rounds):
            t_round = time.monotonic()
            for bench in cfg.only:
                variants = runnable[bench]
                k = rnd % len(variants)
                order = variants[k:] + variants[:k]  # A B C, B C A, C A B, ...
                for size in cfg.sizes:
                    for variant in order:
                        spec = cfg.spec(bench, variant, size)
                        key = (bench, size, variant)
                        try:
                            res_bind, res_connect = workers.measure(spec)
                        except MeasurementFailed as exc:
                            log(f"  ! {bench} {variant} {size} B failed: {exc}")
                            results.setdefault(key, []).append({"failed": str(exc)})
                            continue
                        results.setdefault(key, []).append(
                            one_round_result(spec, res_bind, res_connect))
            log(f"round {rnd + 1}/{cfg.rounds} done in {time.monotonic() - t_round:.1f} s")
    finally:
        workers.stop()
    return results


def measured(rows: list[Result]) -> list[Result]:
    return [r for r in rows if "failed" not in r and "unavailable" not in r]


def med(rows: list[Result], field: str) -> float:
    values = [r[field] for r in measured(rows) if r.get(field) is not None]
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")


def fmt_rate(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.0f}"


def fmt_ratio(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}x"


def fmt_cpu(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}"


def fmt_size(size: int) -> str:
    if size >= 2**20 and not size % 2**20:
        return f"{size // 2**20} MiB"
    if size >= 2**10 and not size % 2**10:
        return f"{size // 2**10} KiB"
    return f"{size} B"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# The targets, printed as information (pass/fail), never asserted. Throughput of the
# best shoal best-effort variant over raw pyzmq's, by bench and body size:
TP_TARGETS = {("pp", 64): 0.6, ("ps", 64): 0.5, ("pp", 4096): 0.85, ("ps", 4096): 0.85,
              ("pp", 2**20): 0.9, ("ps", 2**20): 0.9}
RR_FD_TARGET = 1.15  # shoal p50 / trio FD p50, at most
RR_BUSY_TARGET = 1.2  # shoal busy-poll p50 / blocking pyzmq p50, at most
CPU_TARGETS = {("pp", 64): (0.7, 1.0)}  # CPU us per message, send and receive, at most
RELIABLE_TARGET = 0.6  # shoal reliable / best shoal best effort throughput, at least


class Targets:
    """The targets met so far in a summary: each a JSON-ready record."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def check(self, where: str, what: str, value: float, op: str, limit: float,
              unit: str = "x", **extra: Any) -> str:
        """Record ``value op limit`` as target ``where what`` (``where``: bench and
        size); return a table line that says how it went."""
        ok = (None if math.isnan(value)
              else value >= limit if op == ">=" else value <= limit)
        record = {"target": f"{where} {what}", "value": value, "op": op, "limit": limit,
                  "unit": unit, "verdict": verdict(ok), **extra}
        self.records.append(record)
        return f"{what} {self.shown(record)}: {verdict(ok)}"

    @staticmethod
    def shown(record: dict[str, Any]) -> str:
        """``0.62x (target >= 0.6x)`` or ``0.85 us (target <= 0.7 us)``."""
        if record["unit"] == "x":
            value, limit = fmt_ratio(record["value"]), f"{record['limit']:g}x"
        else:
            value = f"{fmt_cpu(record['value'])} {record['unit']}"
            limit = f"{record['limit']:g} {record['unit']}"
        return f"{value} (target {record['op']} {limit})"


def variant_row(bench: str, rows: list[Result]) -> Result:
    """A variant's medians over its rounds."""
    ok_rows = measured(rows)
    if bench == "rr":
        return {"p50_us": med(rows, "p50_us"), "p99_us": med(rows, "p99_us"),
                "p999_us": med(rows, "p999_us"), "rounds": len(ok_rows),
                "cpu_client_us": med(rows, "cpu_client_us"),
                "cpu_server_us": med(rows, "cpu_server_us"),
                "main_client_us": med(rows, "main_client_us"),
                "main_server_us": med(rows, "main_server_us")}
    return {"rate": med(rows, "rate"), "send_rate": med(rows, "send_rate"),
            "lost_total": sum(r["lost"] or 0 for r in ok_rows), "rounds": len(ok_rows),
            "body_ok": all(r.get("body_ok", False) for r in ok_rows),
            "cpu_send_us": med(rows, "cpu_send_us"), "cpu_recv_us": med(rows, "cpu_recv_us"),
            "main_send_us": med(rows, "main_send_us"),
            "main_recv_us": med(rows, "main_recv_us")}


def rr_line(size: int, variant: str, rows: list[Result], row: Result) -> str:
    p50s = [r["p50_us"] for r in measured(rows)]
    spread = f"{min(p50s):.1f}..{max(p50s):.1f}" if p50s else "n/a"
    return (f"   {fmt_size(size):>7}  {variant:<17} {row['p50_us']:>8.1f} "
            f"{row['p99_us']:>8.1f} {row['p999_us']:>8.1f} {spread:>15} "
            f"{fmt_cpu(row['cpu_client_us']):>9} {fmt_cpu(row['cpu_server_us']):>7}"
            f"   main {fmt_cpu(row['main_client_us']):>6} {fmt_cpu(row['main_server_us']):>6}")


def tp_line(size: int, variant: str, count: int, rows: list[Result], row: Result) -> str:
    rates = [r["rate"] for r in measured(rows) if not math.isnan(r["rate"])]
    spread = f"{min(rates):,.0f}..{max(rates):,.0f}" if rates else "n/a"
    note = ""
    if any(r.get("approx_end") for r in measured(rows)):
        note += "  (end time approximate: loss)"
    if not row["body_ok"]:
        note += "  (WRONG BODY SIZE)"
    return (f"   {fmt_size(size):>7}  {variant:<17} {count:>7} {fmt_rate(row['rate']):>10} "
            f"{row['rate'] * size / 1e6:>7.1f} {spread:>21} {fmt_rate(row['send_rate']):>10} "
            f"{row['lost_total']:>5} {fmt_cpu(row['cpu_send_us']):>6} "
            f"{fmt_cpu(row['cpu_recv_us']):>6}   main {fmt_cpu(row['main_send_us']):>5} "
            f"{fmt_cpu(row['main_recv_us']):>5}{note}")


def rr_ratios(size: int, by: dict[str, Result], ratios: dict[str, Any], targets: Targets,
              out: Callable[[str], None]) -> None:
    def p50(variant: str) -> float:
        return float(by.get(variant, {}).get("p50_us", math.nan))

    label = fmt_size(size)
    info = {"shoal/pyzmq p50": p50("shoal") / p50("pyzmq"),
            "shoal/pyzmq.asyncio p50": p50("shoal") / p50("pyzmq.asyncio"),
            "trio FD/pyzmq p50": p50("trio FD") / p50("pyzmq"),
            "shoal reliable/shoal p50": p50("shoal reliable") / p50("shoal")}
    ratios.update(info)
    out(f"   {label:>7}  ratio p50 " + ", ".join(
        f"{k.removesuffix(' p50')} {fmt_ratio(v)}" for k, v in info.items()))
    for name, value, limit in (
            ("shoal/trio FD p50", p50("shoal") / p50("trio FD"), RR_FD_TARGET),
            ("shoal busy-poll/pyzmq p50", p50("shoal busy-poll") / p50("pyzmq"),
             RR_BUSY_TARGET)):
        ratios[name] = value
        out(f"   {label:>7}  " + targets.check(f"request/reply {label}", name, value, "<=",
                                              limit))


def tp_ratios(bench: str, size: int, by: dict[str, Result], ratios: dict[str, Any],
              targets: Targets, out: Callable[[str], None]) -> None:
    def rate(variant: str) -> float:
        return float(by.get(variant, {}).get("rate", math.nan))

    label = fmt_size(size)
    raw = rate("pyzmq")
    parts = []
    for variant in VARIANTS[bench][:-1]:
        ratios[f"{variant}/pyzmq"] = r = rate(variant) / raw
        parts.append(f"{variant}/pyzmq {fmt_ratio(r)}")
    out(f"   {label:>7}  ratio " + ", ".join(parts))
    candidates = [v for v in BEST_EFFORT if not math.isnan(rate(v))]
    if not candidates:
        out(f"   {label:>7}  no shoal best-effort figure: no target checked")
        return
    best = max(candidates, key=rate)
    ratios["best shoal best effort"] = best
    where = f"{'push/pull' if bench == 'pp' else 'pub/sub'} {label}"
    if (bench, size) in TP_TARGETS:
        out(f"   {label:>7}  " + targets.check(
            where, f"msgs/s {best}/pyzmq", rate(best) / raw, ">=", TP_TARGETS[bench, size],
            variant=best))
    else:
        out(f"   {label:>7}  best shoal best effort: {best} (no throughput target at "
            f"{label})")
    reliable = [v for v in RELIABLE if not math.isnan(rate(v))]
    best_reliable = max(reliable, key=rate) if reliable else "shoal reliable"
    out(f"   {label:>7}  " + targets.check(
        where, f"msgs/s {best_reliable}/{best}", rate(best_reliable) / rate(best), ">=",
        RELIABLE_TARGET, variant=best))
    if (bench, size) in CPU_TARGETS:
        send_max, recv_max = CPU_TARGETS[bench, size]
        out(f"   {label:>7}  " + targets.check(
            where, f"main-thread CPU per message {best} sending", by[best]["main_send_us"],
            "<=",
            send_max, unit="us", variant=best))
        out(f"   {label:>7}  " + targets.check(
            where, f"main-thread CPU per message {best} receiving",
            by[best]["main_recv_us"], "<=",
            recv_max, unit="us", variant=best))


def summarize(cfg: Config, results: Results, out: Callable[[str], None]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Print the tables; return the medians and ratios, and the targets' records."""
    summary: dict[str, Any] = {}
    targets = Targets()
    for bench in cfg.only:
        variants = VARIANTS[bench]
        example = cfg.spec(bench, variants[0], cfg.sizes[0])
        out("")
        out(f"== {TITLES[bench]}")
        if bench == "rr":
            out(f"   {example.count} timed round trips per round after {example.warmup} "
                f"warmup, {cfg.rounds} rounds; microseconds, median over rounds;")
            for size in cfg.sizes[1:]:
                other = cfg.spec(bench, variants[0], size)
                if (other.count, other.warmup) != (example.count, example.warmup):
                    out(f"   {fmt_size(size)} bodies: {other.count} timed round trips "
                        f"after {other.warmup} warmup")
            out("   CPU us per round trip in each process (cpu: every thread, libzmq's "
                "I/O thread included; main: the thread that runs Python);")
            out(f"   shoal busy-poll: busy_poll={cfg.busy_poll:g} s on both ends")
            out(f"   {'body':>7}  {'variant':<17} {'p50':>8} {'p99':>8} {'p99.9':>8} "
                f"{'p50 min..max':>15} {'cpu:client':>9} {'server':>7}")
        else:
            out(f"   messages/s counted by the receiver after warmup, {cfg.rounds} rounds, "
                f"median over rounds; high-water mark {example.hwm};")
            out("   CPU us per message in the sending and the receiving process (cpu: every "
                "thread, libzmq's I/O thread included; main: the thread that runs Python)")
            out(f"   {'body':>7}  {'variant':<17} {'msgs':>7} {'msgs/s':>10} {'MB/s':>7} "
                f"{'min..max msgs/s':>21} {'sender/s':>10} {'lost':>5} {'cpu:send':>6} "
                f"{'recv':>6}")
        for size in cfg.sizes:
            by: dict[str, Result] = {}
            for variant in variants:
                rows = results.get((bench, size, variant), [])
                why = next((r["unavailable"] for r in rows if "unavailable" in r), None)
                if why is not None:
                    out(f"   {fmt_size(size):>7}  {variant:<17} {why}")
                    summary.setdefault(bench, {}).setdefault(str(size), {})[variant] = {
                        "unavailable": why}
                    continue
                failed = len(rows) - len(measured(rows))
                note = f"  ({failed} failed)" if failed else ""
                row = variant_row(bench, rows)
                if bench == "rr":
                    out(rr_line(size, variant, rows, row) + note)
                else:
                    count = cfg.spec(bench, variant, size).count
                    out(tp_line(size, variant, count, rows, row) + note)
                by[variant] = row
                summary.setdefault(bench, {}).setdefault(str(size), {})[variant] = row
            ratios = summary.setdefault(bench, {}).setdefault(str(size), {}).setdefault(
                "ratios", {})
            if bench == "rr":
                rr_ratios(size, by, ratios, targets, out)
            else:
                tp_ratios(bench, size, by, ratios, targets, out)
    out("")
    out("== targets (information, not assertions)")
    for t in targets.records:
        out(f"   {t['verdict']:<4}  {t['target']}: {Targets.shown(t)}")
    return summary, targets.records


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "trio": trio.__version__,
        "shoal": shoal.__version__,
    }


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="shoal vs raw pyzmq over tcp://127.0.0.1, sender and receiver in "
                    "separate processes. See the module docstring for the method.")
    p.add_argument("--quick", action="store_true",
                   help="short run (under a minute): 3 rounds, smaller counts")
    p.add_argument("--rounds", type=int, help="rounds per variant (default 5, quick 3)")
    p.add_argument("--sizes", default="64,4096",
                   help="body sizes in bytes (default 64,4096; 1048576 is 1 MiB)")
    p.add_argument("--only", default="rr,pp,ps",
                   help="benchmarks to run: rr (req/rep latency), pp (push/pull), ps (pub/sub)")
    p.add_argument("--rr-count", type=int, help="timed round trips per round (5000; quick 3000)")
    p.add_argument("--rr-warmup", type=int, help="untimed round trips first (500; quick 200)")
    p.add_argument("--tp-count", type=int,
                   help="timed messages per throughput round (200000; quick 100000)")
    p.add_argument("--tp-bytes", type=int,
                   help="cap on count x body size per throughput round "
                        "(192 MiB; quick 64 MiB)")
    p.add_argument("--tp-warmup", type=int,
                   help="messages before the throughput clock starts (10000; quick 5000)")
    p.add_argument("--pp-hwm", type=int, default=1000, help="push/pull high-water mark")
    p.add_argument("--ps-hwm", type=int, default=100_000, help="pub/sub high-water mark")
    p.add_argument("--busy-poll", type=float, default=0.001, metavar="SECONDS",
                   help="busy_poll= of the 'shoal busy-poll' request/reply variant "
                        "(default 0.001)")
    p.add_argument("--json", metavar="FILE", help="also write all results to FILE as JSON")
    a = p.parse_args(argv)
    q = a.quick

    def pick(value: int | None, full: int, quick: int) -> int:
        return value if value is not None else (quick if q else full)

    only = [b.strip() for b in a.only.split(",") if b.strip()]
    for b in only:
        if b not in VARIANTS:
            p.error(f"--only: unknown benchmark {b!r}; use rr, pp, ps")
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    if not sizes or any(s < 1 for s in sizes):
        p.error("--sizes: give positive byte counts, e.g. 64,4096")
    cfg = Config(
        rounds=pick(a.rounds, 5, 3),
        sizes=sizes,
        only=only,
        rr_count=pick(a.rr_count, 5000, 3000),
        rr_warmup=pick(a.rr_warmup, 500, 200),
        tp_count=pick(a.tp_count, 200_000, 100_000),
        tp_bytes=pick(a.tp_bytes, 192 * 2**20, 64 * 2**20),
        tp_warmup=pick(a.tp_warmup, 10_000, 5_000),
        pp_hwm=a.pp_hwm,
        ps_hwm=a.ps_hwm,
        busy_poll=a.busy_poll,
    )
    if cfg.rounds < 1 or cfg.rr_count < 1 or cfg.rr_warmup < 0 or cfg.tp_count < 1:
        p.error("rounds and counts must be positive")
    if not 0 < cfg.busy_poll <= 1:
        p.error("--busy-poll: give seconds, more than 0 and at most 1")
    return cfg, a


def load_report(before: tuple[float, float, float], after: tuple[float, float, float]
                ) -> dict[str, Any]:
    """The machine's load around the run, and whether it started quiet."""
    return {"before": list(before), "after": list(after),
            "label": "quiet" if before[0] < QUIET_LOAD else "loaded",
            "quiet_below": QUIET_LOAD}


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    env = environment()
    load_before = os.getloadavg()
    t_start = time.monotonic()
    results = run_all(cfg, log)
    elapsed = time.monotonic() - t_start
    load = load_report(load_before, os.getloadavg())
    # Everything goes to stdout after the run, so that the load at its end can lead.
    print(f"{load['label']} run: load average (1, 5, 15 min) "
          f"{' '.join(f'{x:.2f}' for x in load['before'])} at the start, "
          f"{' '.join(f'{x:.2f}' for x in load['after'])} at the end "
          f"(quiet: 1-minute average below {QUIET_LOAD:g} at the start)")
    print("shoal benchmarks: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("transport tcp://127.0.0.1, sender and receiver in separate processes; bodies are "
          f"bytes of exactly {', '.join(map(str, cfg.sizes))} bytes (shoal sends bytes raw, "
          "no msgpack, inside its envelope: topic + NUL + 52-byte header); CPU time is "
          "the process's (libzmq's I/O thread included) over the timed part")
    summary, targets = summarize(cfg, results, print)
    print(f"\ntotal {elapsed:.0f} s")
    if args.json:
        doc = {
            "environment": env,
            "load": load,
            "config": asdict(cfg),
            "elapsed_s": elapsed,
            "summary": summary,
            "targets": targets,
            "rounds": [
                {"bench": b, "size": s, "variant": v, "results": rows}
                for (b, s, v), rows in results.items()
            ],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
