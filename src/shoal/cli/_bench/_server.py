"""The serving end of ``shoal bench``: it binds, the client connects.

One server answers control requests (shoal request/reply, msgpack dicts) on its
control endpoint and, per measurement ("session"), binds the other end of the
pattern under test on a data endpoint next to the control one:

    rr  replier (echo)         the client times round trips
    pp  puller (receiver)      the server counts and times arrivals; ``result`` returns them
    ps  publisher (sender)     ``run`` publishes; the client counts and times arrivals

Raw pyzmq sessions run blocking sockets in a worker thread (REP, PULL, PUB); shoal
sessions run on the server's event loop (trio, asyncio or uvloop: ``--backend``; the
structure here is AnyIO's). A session lives until ``close``; a client that vanishes leaves
its sessions open until the server stops (``--serve`` is meant for a benchmark run,
not as a service).

Control requests: ``hello`` (the server's clock, version and event loop), ``open`` (a Spec ->
session id and data endpoint), ``run`` (ps: publish the run, return how many were
sent), ``result`` (pp: wait until ``sent`` have arrived or arrivals stop, return the
tally), ``close`` (returns ``cpu_us``, this end's CPU microseconds per round trip or
message, or None: see ``_common``).

The server's CPU figure: rr, over the timed requests (a Tally without latency);
pp, the receiving tally's; ps, from the first publication until ``close`` (the client
closes once it has every message), over every message published.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import zmq

import shoal
from shoal.cli._bench._common import (
    NAP_SLACK_NS,
    PROBE,
    SLEEP_NS,
    BenchError,
    Context,
    Schedule,
    Spec,
    Tally,
    cpu_ns,
    cpu_us_per,
    curve_server_context,
    loop_name,
    make_body,
    wait_until_blocking,
)

IDLE_S = 1.0          # a receiver that got nothing for this long has everything it will get
POLL_MS = 100         # raw threads look at their stop flag this often
PROBE_EVERY_S = 0.001


def data_endpoint(control: str, n: int) -> str:
    """Where session ``n`` binds, next to the control endpoint."""
    if control.startswith("tcp://"):
        host = control[len("tcp://"):].rsplit(":", 1)[0]
        return f"tcp://{host}:*"
    return f"{control}-data-{n}"


async def wait_until(due: int) -> int:
    """Pace an async sender: sleep on the loop while more than ``SLEEP_NS`` remain, then
    alternate a checkpoint (other tasks of this process run: with ``inproc://`` the
    receiving end is one of them) with short blocking naps, without burning a core.
    Return the CPU time it took (ns), for the sender to leave out of its figure."""
    k0 = cpu_ns()
    now = time.perf_counter_ns()
    if due - now > SLEEP_NS:
        await anyio.sleep((due - now - SLEEP_NS + NAP_SLACK_NS) / 1e9)
    while (left := due - time.perf_counter_ns()) > 0:
        await anyio.lowlevel.checkpoint()
        if left > 2 * NAP_SLACK_NS:
            # Deliberately blocking: at most a millisecond, after the checkpoint.
            time.sleep((left - NAP_SLACK_NS) / 1e9)  # noqa: ASYNC251
    return cpu_ns() - k0


class _Session:
    def __init__(self, sid: int, spec: Spec) -> None:
        self.sid = sid
        self.spec = spec
        self.endpoint = ""
        self.scope = anyio.CancelScope()
        self.ready = anyio.Event()
        self.done = anyio.Event()
        self.error: BaseException | None = None
        # rr: counts the timed requests for the CPU figure; the stamps mean nothing here.
        self.tally = Tally(latency=spec.pattern != "rr")
        self.stop = threading.Event()
        self.go = threading.Event()      # raw threads wait on this one
        self.go_async = anyio.Event()    # shoal tasks on this one
        self.sent: dict[str, Any] | None = None
        self.sent_done = anyio.Event()
        self.cpu_start = -1     # ps: CPU clock at the first publication
        self.cpu_paced = 0      # ps: CPU time pacing took since then
        self.publisher: Any = None
        self.context: Context | None = None   # None: the process-wide default


class BenchServer:
    """Serves bench sessions on ``control`` until cancelled."""

    def __init__(self, control: str) -> None:
        self.control = control
        self.endpoint = ""
        self._sessions: dict[int, _Session] = {}
        self._ids = itertools.count(1)
        self._curve: tuple[Context, bytes] | None = None

    def _curve_context(self) -> tuple[Context, bytes]:
        """The CURVE server context (made once) and its public key."""
        if self._curve is None:
            public, secret = zmq.curve_keypair()
            self._curve = (curve_server_context(secret), public)
        return self._curve

    async def serve(self, *,
                    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        async with shoal.open_replier(bind=self.control) as rep, \
                anyio.create_task_group() as tasks:
            self.endpoint = rep.endpoints[0]
            self._tasks = tasks
            task_status.started(self.endpoint)
            try:
                async for req in rep:
                    tasks.start_soon(self._answer, req)
            finally:
                for s in self._sessions.values():
                    s.stop.set()
                    s.go.set()
                if self._curve is not None:
                    self._curve[0].destroy(linger=0)

    async def _answer(self, req: shoal.Request) -> None:
        body = req.body
        try:
            if not isinstance(body, dict) or not isinstance(body.get("op"), str):
                raise BenchError("malformed control request")
            reply = await self._handle(body["op"], body)
        except BenchError as exc:
            await req.fail(f"{exc}")
            return
        await req.reply(reply)

    async def _handle(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        if op == "hello":
            return {"clock": time.perf_counter_ns(), "version": shoal.__version__,
                    "pid": os.getpid(), "loop": loop_name()}
        if op == "open":
            return await self._open(Spec.from_wire(body.get("spec")))
        session = self._sessions.get(body.get("session", -1))
        if session is None:
            raise BenchError("unknown session")
        if op == "run":
            session.go.set()
            session.go_async.set()
            await session.sent_done.wait()
            if session.error is not None:
                raise BenchError(f"publishing failed: {session.error!r}")
            assert session.sent is not None
            return session.sent
        if op == "result":
            sent = body.get("sent")
            if not isinstance(sent, int):
                raise BenchError("result needs sent")
            return await self._result(session, sent)
        if op == "close":
            cpu_us = self._cpu_us(session)
            await self._close(session)
            return {"cpu_us": cpu_us}
        raise BenchError(f"unknown op {op!r}")

    async def _open(self, spec: Spec) -> dict[str, Any]:
        sid = next(self._ids)
        session = _Session(sid, spec)
        extra: dict[str, Any] = {}
        if spec.curve:
            if self.endpoint.startswith("inproc://"):
                raise BenchError("CURVE needs tcp or ipc (inproc does not encrypt)")
            session.context, extra["server_key"] = self._curve_context()
        self._sessions[sid] = session
        self._tasks.start_soon(self._run_session, session,
                                 data_endpoint(self.endpoint, sid))
        await session.ready.wait()
        if session.error is not None:
            del self._sessions[sid]
            raise BenchError(f"could not open {spec.label} {spec.pattern}: "
                             f"{session.error!r}")
        return {"session": sid, "endpoint": session.endpoint, **extra}

    def _cpu_us(self, session: _Session) -> float | None:
        """This end's CPU microseconds per round trip or message (see the module doc)."""
        if session.spec.pattern != "ps":
            return session.tally.cpu_us()
        if session.cpu_start < 0 or not session.sent:
            return None
        spent = cpu_ns() - session.cpu_start - session.cpu_paced
        return cpu_us_per(spent, int(session.sent["sent"]))

    async def _close(self, session: _Session) -> None:
        session.stop.set()
        session.go.set()
        session.go_async.set()
        session.scope.cancel()
        await session.done.wait()
        self._sessions.pop(session.sid, None)

    async def _result(self, session: _Session, sent: int) -> dict[str, Any]:
        tally = session.tally
        last, since = -1, anyio.current_time()
        while tally.received < sent:
            if tally.received != last:
                last, since = tally.received, anyio.current_time()
            elif anyio.current_time() - since > IDLE_S or session.done.is_set():
                break
            await anyio.sleep(0.01)
        out = tally.result()
        out["stats"] = session.sent or {}
        return out

    async def _run_session(self, session: _Session, endpoint: str) -> None:
        spec = session.spec
        try:
            with session.scope:
                if spec.stack == "raw":
                    await _RAW[spec.pattern](session, endpoint)
                else:
                    await _SHOAL[spec.pattern](session, endpoint)
        except Exception as exc:
            session.error = exc
        finally:
            session.ready.set()
            session.sent_done.set()
            session.done.set()


# --- shoal sessions -------------------------------------------------------------


async def _shoal_rr(session: _Session, endpoint: str) -> None:
    add = session.tally.add
    async with shoal.open_replier(bind=endpoint, high_water_mark=session.spec.hwm,
                                  context=session.context,
                                  **session.spec.shoal_options()) as rep:
        session.endpoint = rep.endpoints[0]
        session.ready.set()
        async for req in rep:
            await req.reply(req.body)
            add(req.body, 0)


async def _shoal_pp(session: _Session, endpoint: str) -> None:
    spec = session.spec
    add = session.tally.add
    now = time.perf_counter_ns
    ctx = session.context
    opts = spec.shoal_options()
    puller: Any = (shoal.open_puller(bind=endpoint, high_water_mark=spec.hwm, reliable=True,
                                     context=ctx, **opts)
                   if spec.reliable else
                   shoal.open_puller(bind=endpoint, high_water_mark=spec.hwm, context=ctx,
                                     **opts))
    async with puller as pull:
        session.endpoint = pull.endpoints[0]
        session.ready.set()
        receive_batch = pull.receive_batch
        while True:
            for msg in await receive_batch():
                add(msg.body, now())


async def _shoal_ps(session: _Session, endpoint: str) -> None:
    spec = session.spec
    ctx = session.context
    opts = spec.shoal_options()
    publisher: Any = (shoal.open_publisher(bind=endpoint, high_water_mark=spec.hwm,
                                           reliable=True, context=ctx, **opts)
                      if spec.reliable else
                      shoal.open_publisher(bind=endpoint, high_water_mark=spec.hwm,
                                           context=ctx, **opts))
    async with publisher as pub:
        session.endpoint = pub.endpoints[0]
        session.ready.set()
        await session.go_async.wait()
        try:
            await pub.wait_for_subscribers(1)
            publish = pub.publish
            size = spec.size
            sched = Schedule(spec, time.perf_counter_ns())
            t0 = time.perf_counter_ns()
            session.cpu_start = cpu_ns()
            i = 0
            while (due := sched.due(i, time.perf_counter_ns())) is not None:
                if due > time.perf_counter_ns():
                    session.cpu_paced += await wait_until(due)
                await publish("bench", make_body(size, due, sched.flag(i)))
                i += 1
            elapsed = (time.perf_counter_ns() - t0) / 1e9
            session.sent = {"sent": i, "send_rate": i / elapsed if elapsed else 0.0}
            stats = pub.statistics()
            if spec.reliable:
                session.sent["retransmitted"] = stats.retransmitted
        finally:
            session.sent_done.set()
        await anyio.sleep_forever()


# --- raw pyzmq sessions (a blocking socket in a worker thread) ----------------------


def _raw_socket(kind: int, endpoint: str, hwm: int,
                context: Context | None) -> tuple[zmq.Socket[bytes], str]:
    sock: zmq.Socket[bytes] = (context or zmq.Context.instance()).socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.RCVTIMEO, POLL_MS)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close()
        raise
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


async def _in_thread(session: _Session, endpoint: str, kind: int, loop: Any) -> None:
    sock, session.endpoint = _raw_socket(kind, endpoint, session.spec.hwm, session.context)
    session.ready.set()
    try:
        with anyio.CancelScope(shield=True):  # the thread ends once ``stop`` is set
            await anyio.to_thread.run_sync(loop, session, sock)
    finally:
        sock.close()


def _raw_rr_loop(session: _Session, sock: zmq.Socket[bytes]) -> None:
    recv, send, stop, add = sock.recv, sock.send, session.stop, session.tally.add
    while not stop.is_set():
        try:
            msg = recv()
        except zmq.Again:
            continue
        send(msg)
        add(msg, 0)


def _raw_pp_loop(session: _Session, sock: zmq.Socket[bytes]) -> None:
    recv, stop, add, now = sock.recv, session.stop, session.tally.add, time.perf_counter_ns
    while not stop.is_set():
        try:
            add(recv(), now())
        except zmq.Again:
            continue


def _raw_ps_loop(session: _Session, sock: zmq.Socket[bytes]) -> None:
    spec = session.spec
    probe = make_body(spec.size, 0, PROBE)
    try:
        # No subscription notice on a PUB: probe until the client has seen one.
        while not session.go.wait(PROBE_EVERY_S):
            try:
                sock.send(probe, zmq.NOBLOCK)
            except zmq.Again:
                pass
        if session.stop.is_set():
            return
        send, size = sock.send, spec.size
        sched = Schedule(spec, time.perf_counter_ns())
        t0 = time.perf_counter_ns()
        session.cpu_start = cpu_ns()
        i = 0
        while (due := sched.due(i, time.perf_counter_ns())) is not None:
            if due > time.perf_counter_ns():
                session.cpu_paced += wait_until_blocking(due)
            send(make_body(size, due, sched.flag(i)))
            i += 1
        elapsed = (time.perf_counter_ns() - t0) / 1e9
        session.sent = {"sent": i, "send_rate": i / elapsed if elapsed else 0.0}
    finally:
        anyio.from_thread.run_sync(session.sent_done.set)
    session.stop.wait()


async def _raw_rr(session: _Session, endpoint: str) -> None:
    await _in_thread(session, endpoint, zmq.REP, _raw_rr_loop)


async def _raw_pp(session: _Session, endpoint: str) -> None:
    await _in_thread(session, endpoint, zmq.PULL, _raw_pp_loop)


async def _raw_ps(session: _Session, endpoint: str) -> None:
    await _in_thread(session, endpoint, zmq.PUB, _raw_ps_loop)


_SHOAL = {"rr": _shoal_rr, "pp": _shoal_pp, "ps": _shoal_ps}
_RAW = {"rr": _raw_rr, "pp": _raw_pp, "ps": _raw_ps}
