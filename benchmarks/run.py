"""shoal benchmarks: shoal against raw pyzmq, sender and receiver in separate processes.

Usage (from the repository root, with shoal installed in the active environment)::

    python benchmarks/run.py                  # full run, about 2 minutes on 2 cores
    python benchmarks/run.py --quick          # short run, under a minute
    python benchmarks/run.py --json out.json  # also write every round's figures as JSON
    python benchmarks/run.py --only rr,pp --sizes 64 --rounds 7

Options: ``--rounds N`` (default 5, ``--quick`` 3), ``--sizes 64,4096`` (body sizes in
bytes), ``--rr-count N`` (timed round trips per round, default 5000) and
``--rr-warmup N``, ``--tp-count N`` (timed messages per throughput round, default
200000) and ``--tp-bytes N`` (cap on count x size per round, default 192 MiB, so large
bodies send fewer messages), ``--tp-warmup N``, ``--pp-hwm N`` (push/pull high-water
mark, default 1000, the libzmq default), ``--ps-hwm N`` (pub/sub high-water mark,
default 100000), ``--only rr,pp,ps`` (which benchmarks), ``--json FILE``.

What is measured. Everything runs over TCP on 127.0.0.1 only. Two worker processes
(``multiprocessing`` with the spawn start method) are started once and reused; for each
measurement one of them binds and the other connects, so the two sides always run in
different processes. Every body is ``bytes`` of exactly the given size: raw pyzmq sends
it as the whole frame; shoal sends it raw too (no msgpack), inside its one-frame
envelope (topic + NUL + 52-byte header + body). Variants are interleaved (A, B, C, then
B, C, A...) over the rounds, and the tables show the median over rounds.

* ``rr`` -- request/reply round-trip latency, one request in flight. Each stack talks
  to itself: shoal requester -> shoal replier, blocking pyzmq REQ -> REP, and
  pyzmq.asyncio REQ -> REP under asyncio. The replier echoes the body. After a warmup,
  every round trip is timed on its own (``perf_counter_ns`` around ``request()`` /
  ``send()+recv()``); a round reports p50, p99 and p99.9 (nearest rank). The replier
  closes only after the client has said (over a pipe) that it has every reply.
* ``pp`` -- push/pull throughput. The puller binds and the pusher sends warmup + count
  messages as fast as it can (``await push.send()`` / ``sock.send()``, with
  backpressure, so nothing is lost). The *receiver* measures: it notes the time and
  its message count once the warmup has arrived (t0, c0) and when the last message
  arrives (t1, c1); the rate is (c1 - c0) / (t1 - t0). shoal's receiver uses
  ``receive_batch()`` ("shoal batch") and, as a second variant, plain ``async for``.
  A third shoal variant, "shoal nowait-send", keeps the batch receiver but sends with
  ``push.send_nowait()`` (falling back to ``await push.send()`` on ``trio.WouldBlock``)
  and one ``trio.lowlevel.checkpoint()`` per 256 messages: it shows what the sender
  gains by yielding less often than ``await send()`` does (once per 32 messages).
* ``ps`` -- pub/sub throughput, measured like ``pp``. The publisher binds and keeps
  publishing probe messages (shoal topic ``bench.probe``; raw: empty frames) until the
  subscriber reports over a pipe that one arrived, so the subscription is in place
  before the timed messages start (no slow joiner). PUB drops at its high-water mark,
  so both sides use a large one, and the table reports any loss (sent - received).
  If messages were lost the subscriber stops after 0.5 s without traffic. "shoal
  nowait-send" publishes with ``pub.publish_nowait()`` plus one checkpoint per 256.

Reliable variants ("shoal reliable"), same method: ``rr`` with ``request(body,
retries=3)`` (a retry timer per request; the replier's duplicate cache is always on);
``pp`` with ``open_pusher/open_puller(reliable=True)`` (windowed, acknowledged when the
application asks for the next item); ``ps`` with ``open_publisher/open_subscriber(
reliable=True)``, where the publisher waits for the subscriber's hello instead of
probing, and nothing can be lost.

Targets printed as information (pass/fail, not assertions): shoal's request/reply p50
no higher than pyzmq.asyncio's; shoal's push/pull and pub/sub throughput at least 0.3x
blocking pyzmq's; reliable request/reply p50 at most 1.1x best effort's; reliable
push/pull at least 0.5x best effort's ("shoal batch").
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
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

LOOPBACK = "tcp://127.0.0.1:*"
PROBE_TIMEOUT_S = 10.0
PEER_TIMEOUT_S = 120.0
IDLE_S = 0.25  # pub/sub: stop after two checks this far apart saw no new message
MEASURE_TIMEOUT_S = 60.0  # per measurement; a stuck worker dumps its stack after 45 s
STACK_DUMP_S = 45.0
NOWAIT_EVERY_MASK = 255  # "nowait-send" senders yield to trio once per 256 messages

now = time.perf_counter_ns

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


def latency_result(samples: list[int], bad: int) -> Result:
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
    }


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


def shoal_rr_server(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    async def main() -> None:
        async with shoal.open_replier(bind=LOOPBACK, high_water_mark=spec.hwm) as rep:
            ctrl.send(("endpoint", rep.endpoints[0]))
            remaining = spec.warmup + spec.count
            async for req in rep:
                await req.reply(req.body)
                remaining -= 1
                if remaining == 0:
                    break
            # Close only once the client has its last reply: a reply still in flight
            # when the replier closes can be lost (see the report on ZMQ_IMMEDIATE).
            wait_peer(peer, "done")

    trio.run(main)
    return {}


def shoal_rr_client(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)

    retries = 3 if spec.variant == "shoal reliable" else 0

    async def main() -> Result:
        async with shoal.open_requester(connect=spec.endpoint, high_water_mark=spec.hwm) as c:
            def request(body: bytes) -> Any:
                return c.request(body, retries=retries)
            bad = 0
            for _ in range(spec.warmup):
                if await request(body) != body:
                    bad += 1
            samples: list[int] = []
            append = samples.append
            for _ in range(spec.count):
                t0 = now()
                reply = await request(body)
                append(now() - t0)
                if reply != body:
                    bad += 1
            peer.send("done")
            return latency_result(samples, bad)

    return trio.run(main)


def raw_rr_server(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    sock = raw_socket(zmq.REP, spec.hwm)
    try:
        raw_bind(sock, ctrl)
        recv, send = sock.recv, sock.send
        for _ in range(spec.warmup + spec.count):
            send(recv())
        wait_peer(peer, "done")
    finally:
        sock.close()
    return {}


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
        for _ in range(spec.count):
            t0 = now()
            send(body)
            reply = recv()
            append(now() - t0)
            if reply != body:
                bad += 1
        peer.send("done")
    finally:
        sock.close()
    return latency_result(samples, bad)


def aio_socket(ctx: zmq.asyncio.Context, kind: int, hwm: int) -> zmq.asyncio.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


def aio_rr_server(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        sock = aio_socket(ctx, zmq.REP, spec.hwm)
        try:
            sock.bind(LOOPBACK)
            ctrl.send(("endpoint", sock.getsockopt_string(zmq.LAST_ENDPOINT)))
            for _ in range(spec.warmup + spec.count):
                msg = await sock.recv()
                await sock.send(msg)
            wait_peer(peer, "done")
        finally:
            sock.close()
            ctx.term()

    asyncio.run(main())
    return {}


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
            for _ in range(spec.count):
                t0 = now()
                await send(body)
                reply = await recv()
                append(now() - t0)
                if reply != body:
                    bad += 1
            peer.send("done")
            return latency_result(samples, bad)
        finally:
            sock.close()
            ctx.term()

    return asyncio.run(main())


# ---------------------------------------------------------------------------------
# push/pull throughput (the puller binds, measures, and tells the pusher when done)


def _puller(spec: Spec) -> AbstractAsyncContextManager[Any]:
    if spec.variant == "shoal reliable":
        return shoal.open_puller(bind=LOOPBACK, high_water_mark=spec.hwm, reliable=True)
    return shoal.open_puller(bind=LOOPBACK, high_water_mark=spec.hwm)


def _pusher(spec: Spec) -> AbstractAsyncContextManager[Any]:
    if spec.variant == "shoal reliable":
        return shoal.open_pusher(connect=spec.endpoint, high_water_mark=spec.hwm, reliable=True)
    return shoal.open_pusher(connect=spec.endpoint, high_water_mark=spec.hwm)


def shoal_pp_recv(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    batched = spec.variant != "shoal async-for"
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with _puller(spec) as pull:
            ctrl.send(("endpoint", pull.endpoints[0]))
            got = 0
            t0 = c0 = t1 = -1
            last_len = -1
            if batched:
                receive_batch = pull.receive_batch
                while got < target:
                    batch = await receive_batch()
                    got += len(batch)
                    if c0 < 0 and got >= spec.warmup:
                        t0, c0 = now(), got
                t1 = now()
                last_len = len(batch[-1].body)
            else:
                async for msg in pull:
                    got += 1
                    if got == spec.warmup:
                        t0, c0 = now(), got
                    if got == target:
                        t1 = now()
                        last_len = len(msg.body)
                        break
            peer.send("done")
            stats = pull.statistics()
            return rate_result(t0, c0, t1, got, got, body_ok=last_len == spec.size,
                               malformed=stats.malformed)

    return trio.run(main)


def shoal_pp_send(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with _pusher(spec) as push:
            send = push.send
            t0 = now()
            if spec.variant == "shoal nowait-send":
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
            wait_peer(peer, "done")
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9)}

    return trio.run(main)


def raw_pp_recv(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    sock = raw_socket(zmq.PULL, spec.hwm)
    try:
        raw_bind(sock, ctrl)
        recv = sock.recv
        first_len = len(recv())
        for _ in range(spec.warmup - 1):
            recv()
        t0 = now()
        for _ in range(spec.count):
            recv()
        t1 = now()
        peer.send("done")
    finally:
        sock.close()
    target = spec.warmup + spec.count
    return rate_result(t0, spec.warmup, t1, target, target, body_ok=first_len == spec.size)


def raw_pp_send(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    body = make_body(spec.size)
    target = spec.warmup + spec.count
    sock = raw_socket(zmq.PUSH, spec.hwm)
    try:
        sock.connect(spec.endpoint)
        send = sock.send
        t0 = now()
        for _ in range(target):
            send(body)
        t1 = now()
        wait_peer(peer, "done")
    finally:
        sock.close()
    return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9)}


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
            t0 = now()
            if spec.variant == "shoal nowait-send":
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
            wait_peer(peer, "done")
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9), "probes": probes}

    return trio.run(main)


def shoal_ps_sub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with shoal.open_subscriber(connect=spec.endpoint, topics=["bench"],
                                         high_water_mark=spec.hwm) as sub:
            with trio.fail_after(PROBE_TIMEOUT_S):
                await sub.receive()  # a probe: the subscription is in place
            peer.send("ready")
            while True:  # skip the probes still in flight
                msg = await sub.receive()
                if msg.topic == "bench":
                    break
            got = 1
            t0 = c0 = -1
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
                        t0, c0 = t1, got
                    last_len = len(batch[-1].body)
                nursery.cancel_scope.cancel()
            peer.send("done")
            stats = sub.statistics()
            return rate_result(t0, c0, t1, got, got, body_ok=last_len == spec.size,
                               gaps=stats.gaps, malformed=stats.malformed)

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
            t0 = now()
            for _ in range(target):
                await publish("bench", body)
            t1 = now()
            wait_peer(peer, "done")
            stats = pub.statistics()
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9),
                    "retransmitted": stats.retransmitted}

    return trio.run(main)


def shoal_rps_sub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with shoal.open_subscriber(connect=spec.endpoint, topics=["bench"],
                                         high_water_mark=spec.hwm, reliable=True) as sub:
            got = 0
            t0 = c0 = t1 = -1
            last_len = -1
            receive_batch = sub.receive_batch
            while got < target:
                batch = await receive_batch()
                got += len(batch)
                if c0 < 0 and got >= spec.warmup:
                    t0, c0 = now(), got
            t1 = now()
            last_len = len(batch[-1].body)
            peer.send("done")
            stats = sub.statistics()
            return rate_result(t0, c0, t1, got, got, body_ok=last_len == spec.size,
                               gaps=stats.resyncs, malformed=stats.malformed)

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
        t0 = now()
        for _ in range(target):
            send(body)
        t1 = now()
        wait_peer(peer, "done")
    finally:
        sock.close()
    return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9), "probes": probes}


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
        t0 = c0 = -1
        i = 0
        try:
            for _ in range(spec.warmup - 1):
                recv()
            t0, c0 = now(), spec.warmup
            for i in range(spec.count):  # noqa: B007 -- i tells how far we got on loss
                recv()
            t1, got = now(), target
        except zmq.Again:  # messages were lost: the last one came idle_ms ago
            t1 = now() - idle_ms * 1_000_000
            got = c0 + i if c0 >= 0 else -1
        peer.send("done")
    finally:
        sock.close()
    return rate_result(t0, c0, t1, got, got, body_ok=first_len == spec.size,
                       approx_end=got != target)


# ---------------------------------------------------------------------------------
# the worker processes

Role = Callable[[Spec, Connection, Connection], Result]

ROLES: dict[tuple[str, str], tuple[Role, Role]] = {
    # (bench, variant): (binding side, connecting side)
    ("rr", "shoal"): (shoal_rr_server, shoal_rr_client),
    ("rr", "shoal reliable"): (shoal_rr_server, shoal_rr_client),
    ("rr", "pyzmq"): (raw_rr_server, raw_rr_client),
    ("rr", "pyzmq.asyncio"): (aio_rr_server, aio_rr_client),
    ("pp", "shoal batch"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal async-for"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal nowait-send"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "shoal reliable"): (shoal_pp_recv, shoal_pp_send),
    ("pp", "pyzmq"): (raw_pp_recv, raw_pp_send),
    ("ps", "shoal batch"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal nowait-send"): (shoal_ps_pub, shoal_ps_sub),
    ("ps", "shoal reliable"): (shoal_rps_pub, shoal_rps_sub),
    ("ps", "pyzmq"): (raw_ps_pub, raw_ps_sub),
}

VARIANTS: dict[str, list[str]] = {
    "rr": ["shoal", "shoal reliable", "pyzmq", "pyzmq.asyncio"],
    "pp": ["shoal batch", "shoal async-for", "shoal nowait-send", "shoal reliable", "pyzmq"],
    "ps": ["shoal batch", "shoal nowait-send", "shoal reliable", "pyzmq"],
}

TITLES = {
    "rr": "request/reply round-trip latency (one request in flight)",
    "pp": "push/pull throughput",
    "ps": "pub/sub throughput",
}


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
            ctrl.send(("result", role(spec, ctrl, peer)))
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
    rr_hwm: int = 1000

    def spec(self, bench: str, variant: str, size: int) -> Spec:
        if bench == "rr":
            return Spec(bench, variant, size, self.rr_count, self.rr_warmup, self.rr_hwm)
        count = max(1000, min(self.tp_count, self.tp_bytes // size))
        warmup = max(1, min(self.tp_warmup, count // 4))
        hwm = self.pp_hwm if bench == "pp" else self.ps_hwm
        return Spec(bench, variant, size, count, warmup, hwm)


def one_round_result(spec: Spec, res_bind: Result, res_connect: Result) -> Result:
    """Merge both sides' figures into the one row a round contributes."""
    if spec.bench == "rr":
        return {**res_connect}
    if spec.bench == "pp":
        recv, send = res_bind, res_connect
    else:
        send, recv = res_bind, res_connect
    out = {**recv, "sent": send["sent"], "send_rate": send["send_rate"]}
    out["lost"] = send["sent"] - recv["received"] if recv["received"] >= 0 else None
    return out


def run_all(cfg: Config, log: Callable[[str], None]) -> dict[tuple[str, int, str], list[Result]]:
    results: dict[tuple[str, int, str], list[Result]] = {}
    workers = Workers()
    try:
        for rnd in range(cfg.rounds):
            t_round = time.monotonic()
            for bench in cfg.only:
                variants = VARIANTS[bench]
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


def med(rows: list[Result], field: str) -> float:
    values = [r[field] for r in rows if "failed" not in r and r.get(field) is not None]
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")


def fmt_rate(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:,.0f}"


def fmt_ratio(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.2f}x"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def summarize(
    cfg: Config, results: dict[tuple[str, int, str], list[Result]], out: Callable[[str], None]
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for bench in cfg.only:
        variants = VARIANTS[bench]
        example = cfg.spec(bench, variants[0], cfg.sizes[0])
        out("")
        out(f"== {TITLES[bench]}")
        if bench == "rr":
            out(f"   {example.count} timed round trips per round after {example.warmup} "
                f"warmup, {cfg.rounds} rounds; microseconds, median over rounds")
            out(f"   {'body':>7}  {'variant':<18} {'p50':>8} {'p99':>8} {'p99.9':>8} "
                f"{'p50 min..max over rounds':>26}")
        else:
            hwm = example.hwm
            out(f"   messages/s counted by the receiver after warmup, {cfg.rounds} rounds, "
                f"median over rounds; high-water mark {hwm}")
            out(f"   {'body':>7}  {'variant':<18} {'msgs':>8} {'msgs/s':>11} {'MB/s':>8} "
                f"{'min..max msgs/s':>23} {'sender msgs/s':>13} {'lost':>6}")
        for size in cfg.sizes:
            rows_by_variant: dict[str, Result] = {}
            for variant in variants:
                rows = results.get((bench, size, variant), [])
                ok_rows = [r for r in rows if "failed" not in r]
                failed = len(rows) - len(ok_rows)
                note = f"  ({failed} failed)" if failed else ""
                if bench == "rr":
                    p50s = [r["p50_us"] for r in ok_rows]
                    row = {"p50_us": med(rows, "p50_us"), "p99_us": med(rows, "p99_us"),
                           "p999_us": med(rows, "p999_us"), "rounds": len(ok_rows)}
                    spread = f"{min(p50s):.1f}..{max(p50s):.1f}" if p50s else "n/a"
                    out(f"   {size:>5} B  {variant:<18} {row['p50_us']:>8.1f} "
                        f"{row['p99_us']:>8.1f} {row['p999_us']:>8.1f} {spread:>26}{note}")
                else:
                    rates = [r["rate"] for r in ok_rows if not math.isnan(r["rate"])]
                    lost = sum(r["lost"] or 0 for r in ok_rows)
                    row = {"rate": med(rows, "rate"), "send_rate": med(rows, "send_rate"),
                           "lost_total": lost, "rounds": len(ok_rows),
                           "body_ok": all(r.get("body_ok", False) for r in ok_rows)}
                    if any(r.get("approx_end") for r in ok_rows):
                        note += "  (end time approximate: loss)"
                    if not row["body_ok"]:
                        note += "  (WRONG BODY SIZE)"
                    spread = (f"{min(rates):,.0f}..{max(rates):,.0f}" if rates else "n/a")
                    count = cfg.spec(bench, variant, size).count
                    out(f"   {size:>5} B  {variant:<18} {count:>8} {fmt_rate(row['rate']):>11} "
                        f"{row['rate'] * size / 1e6:>8.1f} {spread:>23} "
                        f"{fmt_rate(row['send_rate']):>13} {lost:>6}{note}")
                rows_by_variant[variant] = row
                summary.setdefault(bench, {}).setdefault(str(size), {})[variant] = row
            ratios = summary[bench][str(size)].setdefault("ratios", {})
            if bench == "rr":
                shoal_p50 = rows_by_variant["shoal"]["p50_us"]
                vs_raw = shoal_p50 / rows_by_variant["pyzmq"]["p50_us"]
                vs_aio = shoal_p50 / rows_by_variant["pyzmq.asyncio"]["p50_us"]
                ok = None if math.isnan(vs_aio) else vs_aio <= 1.0
                ratios.update({"shoal/pyzmq p50": vs_raw, "shoal/pyzmq.asyncio p50": vs_aio,
                               "target shoal p50 <= pyzmq.asyncio p50": verdict(ok)})
                out(f"   {size:>5} B  ratio p50 shoal/pyzmq {fmt_ratio(vs_raw)}, "
                    f"shoal/pyzmq.asyncio {fmt_ratio(vs_aio)}; "
                    f"target shoal <= pyzmq.asyncio: {verdict(ok)}")
                if "shoal reliable" in rows_by_variant:
                    rel = rows_by_variant["shoal reliable"]["p50_us"] / shoal_p50
                    ok = None if math.isnan(rel) else rel <= 1.1
                    ratios["shoal reliable/shoal p50"] = rel
                    out(f"   {size:>5} B  ratio p50 shoal reliable/shoal {fmt_ratio(rel)}; "
                        f"target <= 1.1x: {verdict(ok)}")
            else:
                raw = rows_by_variant["pyzmq"]["rate"]
                parts = []
                for variant in variants[:-1]:
                    r = rows_by_variant[variant]["rate"] / raw
                    ratios[f"{variant}/pyzmq"] = r
                    parts.append(f"{variant}/pyzmq {fmt_ratio(r)}")
                main_ratio = ratios["shoal batch/pyzmq"]
                ok = None if math.isnan(main_ratio) else main_ratio >= 0.3
                ratios["target shoal batch >= 0.3x pyzmq"] = verdict(ok)
                out(f"   {size:>5} B  ratio {', '.join(parts)}; "
                    f"target shoal batch >= 0.3x pyzmq: {verdict(ok)}")
                if "shoal reliable" in rows_by_variant:
                    rel = (rows_by_variant["shoal reliable"]["rate"]
                           / rows_by_variant["shoal batch"]["rate"])
                    ratios["shoal reliable/shoal batch"] = rel
                    if bench == "pp":
                        ok = None if math.isnan(rel) else rel >= 0.5
                        out(f"   {size:>5} B  ratio shoal reliable/shoal batch "
                            f"{fmt_ratio(rel)}; target >= 0.5x: {verdict(ok)}")
                    else:
                        out(f"   {size:>5} B  ratio shoal reliable/shoal batch "
                            f"{fmt_ratio(rel)} (no target)")
    return summary


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
    p.add_argument("--sizes", default="64,4096", help="body sizes in bytes (default 64,4096)")
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
    )
    if cfg.rounds < 1 or cfg.rr_count < 1 or cfg.rr_warmup < 0 or cfg.tp_count < 1:
        p.error("rounds and counts must be positive")
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    env = environment()
    print("shoal benchmarks: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("transport tcp://127.0.0.1, sender and receiver in separate processes; bodies are "
          f"bytes of exactly {', '.join(map(str, cfg.sizes))} bytes (shoal sends bytes raw, "
          "no msgpack, inside its envelope: topic + NUL + 52-byte header)")
    t_start = time.monotonic()
    results = run_all(cfg, log)
    summary = summarize(cfg, results, print)
    elapsed = time.monotonic() - t_start
    print(f"\ntotal {elapsed:.0f} s")
    if args.json:
        doc = {
            "environment": env,
            "config": asdict(cfg),
            "elapsed_s": elapsed,
            "summary": summary,
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
