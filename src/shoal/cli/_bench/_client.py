"""The measuring end of ``shoal bench``: it connects to a bench server and runs each
measurement (a Spec) against it, raw pyzmq and shoal with the same settings.

Who measures what (see ``_server`` for the other end):

    rr  the client times every round trip (HDR histogram of round-trip latency)
    pp  the client pushes; the server counts arrivals and one-way latency
    ps  the server publishes; the client counts arrivals and one-way latency

Throughput is counted by the receiver, from the first to the last timed message.
One-way latency is kept only when the server reads the same monotonic clock as the
client (``same_clock``, checked with ``hello``), which holds on one machine.

CPU time per message or round trip (see ``_common``): the client's own, and the
server's from its ``close`` reply. With ``inproc://`` both ends share this process,
so neither figure is kept.

Raw pyzmq clients run blocking sockets in a worker thread, so that the event loop of
this process stays idle while they measure. shoal's side runs on the loop ``shoal
bench --backend`` names (the structure here is AnyIO's); the child server started here
is given the same one. Both stacks use ZeroMQ's process-wide
context (needed for ``inproc://``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import zmq

import shoal
from shoal.cli._bench._common import (
    PROBE,
    SERVER_SIDE,
    BenchError,
    Context,
    Schedule,
    Spec,
    Tally,
    cpu_ns,
    cpu_us_per,
    curve_client_context,
    histogram_of,
    make_body,
    wait_until_blocking,
)
from shoal.cli._bench._server import IDLE_S, POLL_MS, BenchServer, wait_until

SERVER_START_S = 30.0
PROBE_WAIT_S = 10.0


@dataclass
class Measured:
    """One measurement's figures."""

    sent: int
    received: int
    timed: int
    rate: float                    # timed messages per second at the receiver
    hist: bytes | None             # encoded HDR histogram (ns) or None
    extra: dict[str, Any] = field(default_factory=dict)
    # CPU microseconds per message (per round trip for rr) by side (``CPU_SIDES``).
    cpu: dict[str, float | None] = field(default_factory=dict)


@dataclass
class _Sent:
    """What a sender did: how many it sent, its CPU clock at the first send, and the
    CPU time pacing took since (left out of its figure)."""

    count: int
    cpu_start: int
    cpu_paced: int = 0

    def cpu_us(self) -> float | None:
        return cpu_us_per(cpu_ns() - self.cpu_start - self.cpu_paced, self.count)


# --- request/reply: the client times round trips ------------------------------------


async def _shoal_rr(spec: Spec, endpoint: str, ctx: Context | None) -> Measured:
    retries = 3 if spec.reliable else 0
    samples: array[int] = array("q")
    now = time.perf_counter_ns
    async with shoal.open_requester(connect=endpoint, high_water_mark=spec.hwm,
                                    context=ctx, **spec.shoal_options()) as client:
        request = client.request
        sched = Schedule(spec, now())
        i = first = last = 0
        clock = _Sent(0, cpu_ns())
        while (due := sched.due(i, now())) is not None:
            if i == spec.warmup:
                clock.cpu_start, clock.cpu_paced = cpu_ns(), 0
            if due > now():
                clock.cpu_paced += await wait_until(due)
            await request(make_body(spec.size, due, sched.flag(i)), retries=retries)
            if i >= spec.warmup:
                last = now()
                first = first or due
                samples.append(last - due)
            i += 1
        clock.count = len(samples)
        return _rr_measured(i, samples, first, last, clock.cpu_us())


def _raw_rr_blocking(spec: Spec, endpoint: str, ctx: Context | None) -> Measured:
    sock: zmq.Socket[bytes] = (ctx or zmq.Context.instance()).socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    samples: array[int] = array("q")
    now = time.perf_counter_ns
    try:
        sock.connect(endpoint)
        send, recv = sock.send, sock.recv
        sched = Schedule(spec, now())
        i = first = last = 0
        clock = _Sent(0, cpu_ns())
        while (due := sched.due(i, now())) is not None:
            if i == spec.warmup:
                clock.cpu_start, clock.cpu_paced = cpu_ns(), 0
            if due > now():
                clock.cpu_paced += wait_until_blocking(due)
            send(make_body(spec.size, due, sched.flag(i)))
            recv()
            if i >= spec.warmup:
                last = now()
                first = first or due
                samples.append(last - due)
            i += 1
        clock.count = len(samples)
        cpu_us = clock.cpu_us()
    finally:
        sock.close()
    return _rr_measured(i, samples, first, last, cpu_us)


def _rr_measured(sent: int, samples: array[int], first: int, last: int,
                 cpu_us: float | None) -> Measured:
    elapsed = (last - first) / 1e9
    return Measured(sent=sent, received=sent, timed=len(samples),
                    rate=len(samples) / elapsed if elapsed > 0 else 0.0,
                    hist=histogram_of(samples), cpu={"client": cpu_us})


# --- push/pull: the client pushes, the server counts ---------------------------------


async def _shoal_pp_send(spec: Spec, endpoint: str, ctx: Context | None) -> _Sent:
    now = time.perf_counter_ns
    opts = spec.shoal_options()
    pusher: Any = (shoal.open_pusher(connect=endpoint, high_water_mark=spec.hwm,
                                     reliable=True, context=ctx, **opts)
                   if spec.reliable else
                   shoal.open_pusher(connect=endpoint, high_water_mark=spec.hwm, context=ctx,
                                     **opts))
    async with pusher as push:
        send, size = push.send, spec.size
        sched = Schedule(spec, now())
        sent = _Sent(0, cpu_ns())
        i = 0
        while (due := sched.due(i, now())) is not None:
            if due > now():
                sent.cpu_paced += await wait_until(due)
            await send(make_body(size, due, sched.flag(i)))
            i += 1
        if spec.reliable:
            await push.wait_acked()
    sent.count = i
    return sent


def _raw_pp_send_blocking(spec: Spec, endpoint: str, ctx: Context | None) -> _Sent:
    sock: zmq.Socket[bytes] = (ctx or zmq.Context.instance()).socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, spec.hwm)
    sock.setsockopt(zmq.LINGER, 10_000)   # deliver what is queued before closing
    now = time.perf_counter_ns
    try:
        sock.connect(endpoint)
        send, size = sock.send, spec.size
        sched = Schedule(spec, now())
        sent = _Sent(0, cpu_ns())
        i = 0
        while (due := sched.due(i, now())) is not None:
            if due > now():
                sent.cpu_paced += wait_until_blocking(due)
            send(make_body(size, due, sched.flag(i)))
            i += 1
    finally:
        sock.close()
    sent.count = i
    return sent


# --- pub/sub: the server publishes, the client counts --------------------------------


class _Expect:
    """What the receiving side learns from ``run``: how many were sent."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.reply: dict[str, Any] = {}
        self.scope: anyio.CancelScope | None = None


async def _ask_run(ctl: shoal.Requester, sid: int, expect: _Expect) -> None:
    reply = await ctl.request({"op": "run", "session": sid})
    expect.reply = reply
    expect.total = reply["sent"]
    if expect.scope is not None:
        expect.scope.deadline = anyio.current_time() + IDLE_S


async def _shoal_ps(spec: Spec, endpoint: str, ctl: shoal.Requester, sid: int,
                    tally: Tally, ctx: Context | None) -> _Expect:
    now = time.perf_counter_ns
    opts = spec.shoal_options()
    subscriber: Any = (shoal.open_subscriber(connect=endpoint, topics=["bench"],
                                             high_water_mark=spec.hwm, reliable=True,
                                             context=ctx, **opts)
                       if spec.reliable else
                       shoal.open_subscriber(connect=endpoint, topics=["bench"],
                                             high_water_mark=spec.hwm, context=ctx, **opts))
    expect = _Expect()
    async with subscriber as sub, anyio.create_task_group() as tasks:
        tasks.start_soon(_ask_run, ctl, sid, expect)
        receive_batch, add = sub.receive_batch, tally.add
        while expect.total is None or tally.received < expect.total:
            with anyio.CancelScope() as scope:
                expect.scope = scope
                if expect.total is not None:
                    scope.deadline = anyio.current_time() + IDLE_S
                batch = await receive_batch()
            expect.scope = None
            if scope.cancelled_caught:
                if expect.total is not None:
                    break
                continue
            for msg in batch:
                add(msg.body, now())
    return expect


def _raw_sub_socket(spec: Spec, endpoint: str, ctx: Context | None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = (ctx or zmq.Context.instance()).socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, spec.hwm)
    sock.setsockopt(zmq.RCVTIMEO, POLL_MS)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


def _raw_wait_probe(sock: zmq.Socket[bytes]) -> None:
    deadline = time.monotonic() + PROBE_WAIT_S
    while time.monotonic() < deadline:
        try:
            if sock.recv()[8] == PROBE:
                return
        except zmq.Again:
            continue
    raise BenchError("the raw publisher's probes never arrived")


def _raw_ps_receive(sock: zmq.Socket[bytes], tally: Tally, expect: _Expect) -> None:
    recv, add, now = sock.recv, tally.add, time.perf_counter_ns
    quiet = 0
    while expect.total is None or tally.received < expect.total:
        try:
            body = recv()
        except zmq.Again:
            quiet += 1
            if expect.total is not None and quiet * POLL_MS >= IDLE_S * 1000:
                break
            continue
        quiet = 0
        add(body, now())


async def _raw_ps(spec: Spec, endpoint: str, ctl: shoal.Requester, sid: int,
                  tally: Tally, ctx: Context | None) -> _Expect:
    sock = _raw_sub_socket(spec, endpoint, ctx)
    expect = _Expect()
    try:
        await anyio.to_thread.run_sync(_raw_wait_probe, sock)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_ask_run, ctl, sid, expect)
            await anyio.to_thread.run_sync(_raw_ps_receive, sock, tally, expect)
    finally:
        sock.close()
    return expect


# --- one measurement ----------------------------------------------------------------


def _reachable(endpoint: str, peer_host: str | None) -> str:
    """The server's data endpoint as this client can reach it."""
    if peer_host and endpoint.startswith("tcp://"):
        host, port = endpoint[len("tcp://"):].rsplit(":", 1)
        if host in ("0.0.0.0", "*", "[::]", "::"):
            return f"tcp://{peer_host}:{port}"
    return endpoint


class CurveContexts:
    """The CURVE client contexts of one run, one per server key; destroyed at the end."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, Context] = {}

    def get(self, server_key: bytes) -> Context:
        if server_key not in self._by_key:
            self._by_key[server_key] = curve_client_context(server_key)
        return self._by_key[server_key]

    def close(self) -> None:
        for ctx in self._by_key.values():
            ctx.destroy(linger=0)
        self._by_key.clear()


async def measure(ctl: shoal.Requester, spec: Spec, *, same_clock: bool,
                  peer_host: str | None = None,
                  curve: CurveContexts | None = None) -> Measured:
    """Run ``spec`` once against the server behind ``ctl``."""
    opened = await ctl.request({"op": "open", "spec": spec.to_wire()})
    sid = opened["session"]
    endpoint = _reachable(opened["endpoint"], peer_host)
    ctx = None
    if spec.curve:
        if curve is None or not isinstance(opened.get("server_key"), bytes):
            raise BenchError("the bench server did not give a CURVE key")
        ctx = curve.get(opened["server_key"])
    closed: dict[str, Any] = {}
    try:
        m = await _measure(ctl, spec, sid, endpoint, ctx, same_clock=same_clock)
    finally:
        with anyio.move_on_after(10):
            closed = await ctl.request({"op": "close", "session": sid})
    m.cpu[SERVER_SIDE[spec.pattern]] = closed.get("cpu_us")
    if endpoint.startswith("inproc://"):
        m.cpu = dict.fromkeys(m.cpu)  # one process: each figure would be both ends'
    return m


async def _measure(ctl: shoal.Requester, spec: Spec, sid: int, endpoint: str,
                   ctx: Context | None, *, same_clock: bool) -> Measured:
    if spec.pattern == "rr":
        if spec.stack == "raw":
            return await anyio.to_thread.run_sync(_raw_rr_blocking, spec, endpoint, ctx)
        return await _shoal_rr(spec, endpoint, ctx)
    if spec.pattern == "pp":
        if spec.stack == "raw":
            sent = await anyio.to_thread.run_sync(_raw_pp_send_blocking, spec, endpoint,
                                                  ctx)
        else:
            sent = await _shoal_pp_send(spec, endpoint, ctx)
        got = await ctl.request({"op": "result", "session": sid, "sent": sent.count})
        return Measured(sent=sent.count, received=got["received"], timed=got["timed"],
                        rate=got["rate"], hist=got["hist"] if same_clock else None,
                        cpu={"send": sent.cpu_us()})
    tally = Tally(latency=same_clock)
    runner = _raw_ps if spec.stack == "raw" else _shoal_ps
    expect = await runner(spec, endpoint, ctl, sid, tally, ctx)
    out = tally.result()
    return Measured(sent=expect.total or 0, received=out["received"],
                    timed=out["timed"], rate=out["rate"], hist=out["hist"],
                    extra={k: v for k, v in expect.reply.items() if k != "sent"},
                    cpu={"receive": out["cpu_us"]})


# --- the server this run talks to ---------------------------------------------------


async def hello(ctl: shoal.Requester) -> tuple[bool, str]:
    """Ask the server for its clock; return (same monotonic clock?, its version)."""
    t0 = time.perf_counter_ns()
    reply = await ctl.request({"op": "hello"})
    t1 = time.perf_counter_ns()
    offset = reply["clock"] - (t0 + t1) // 2
    # Two machines' monotonic clocks differ by their uptimes: seconds at least.
    return abs(offset) <= max(t1 - t0, 1_000_000) + 5_000_000, str(reply["version"])


@contextlib.asynccontextmanager
async def open_server(transport: str, *, interface: str = "127.0.0.1",
                      peer: str | None = None, backend: str = "trio") -> AsyncIterator[str]:
    """The control endpoint of a bench server: ``peer`` as given; for inproc a server
    in this process; otherwise a server in a child process on this machine, on the
    event loop ``backend``."""
    if peer is not None:
        yield peer
        return
    if transport == "inproc":
        async with anyio.create_task_group() as tasks:
            server = BenchServer(f"inproc://shoal-bench-{os.getpid()}")
            endpoint: str = await tasks.start(server.serve)
            yield endpoint
            tasks.cancel_scope.cancel()
        return
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        control = (f"tcp://{interface}:*" if transport == "tcp"
                   else f"ipc://{tmp}/control")
        async with _child_server(control, backend) as endpoint:
            yield endpoint


@contextlib.asynccontextmanager
async def _child_server(control: str, backend: str) -> AsyncIterator[str]:
    proc = await anyio.open_process(
        [sys.executable, "-m", "shoal", "bench", "--serve", control, "--backend", backend],
        stdin=None, stdout=subprocess.PIPE, stderr=None,
    )
    try:
        assert proc.stdout is not None
        line = b""
        with anyio.move_on_after(SERVER_START_S):
            while not line.endswith(b"\n"):
                try:
                    line += await proc.stdout.receive(1)
                except anyio.EndOfStream:
                    break
        words = line.decode(errors="replace").split()
        if not words or "://" not in words[-1]:
            raise BenchError("the bench server did not start "
                             f"(it said {line.decode(errors='replace')!r})")
        yield words[-1]
    finally:
        with anyio.CancelScope(shield=True):
            proc.terminate()
            with anyio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()  # its pipe too; waits for the exit

