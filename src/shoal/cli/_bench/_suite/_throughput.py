"""Push/pull and pub/sub throughput: the receiver counts messages over its timed
window (after the warmup); shoal's variants (batch receiver, ``send_many``, ``async
for``, ``send_nowait``, reliable) beside blocking pyzmq PUSH/PULL and PUB/SUB. Each
function is one side of one variant, run in a worker process. shoal's sides run on
the event loop the spec names (``run_on``): their structure (sleeps, deadlines, task
groups, threads) is AnyIO's, the rest shoal's own API; only "nowait-send" picks its
checkpoint by loop (``yield_to_loop``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from multiprocessing.connection import Connection
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import trio
import zmq

import shoal
from shoal.cli._bench._suite._common import (
    IDLE_S,
    LOOPBACK,
    NOWAIT_EVERY_MASK,
    PROBE_TIMEOUT_S,
    RELIABLE,
    SEND_MANY_BATCH,
    SMALL_ROUND,
    WILDCARD_TOPICS,
    Result,
    Spec,
    cpu,
    cpu_us,
    make_body,
    now,
    rate_result,
    raw_bind,
    raw_socket,
    run_on,
    wait_peer,
)
from shoal.errors import WouldBlock


def receiver_options(spec: Spec) -> dict[str, Any]:
    """Keyword arguments of a shoal receiver. A round of few messages (large bodies)
    caps the batch: a backlog drained in one batch would leave no timed window after
    the warmup. Per-batch costs do not matter next to such bodies."""
    return {"batch": max(16, spec.count // 8)} if spec.count < SMALL_ROUND else {}


def yield_to_loop(spec: Spec) -> Callable[[], Awaitable[None]]:
    """The checkpoint a "nowait-send" sender yields with once per 256 messages: trio's
    own under trio (no AnyIO dispatch per call), AnyIO's under asyncio."""
    return (trio.lowlevel.checkpoint if spec.backend == "trio"
            else anyio.lowlevel.checkpoint)


def _puller(spec: Spec) -> AbstractAsyncContextManager[Any]:
    opened: AbstractAsyncContextManager[Any]
    if spec.variant in RELIABLE:
        opened = shoal.open_puller(bind=LOOPBACK, high_water_mark=spec.hwm, reliable=True,
                                   **receiver_options(spec))
    else:
        opened = shoal.open_puller(bind=LOOPBACK, high_water_mark=spec.hwm,
                                   **receiver_options(spec))
    return opened


def _pusher(spec: Spec) -> AbstractAsyncContextManager[Any]:
    opened: AbstractAsyncContextManager[Any]
    if spec.variant in RELIABLE:
        opened = shoal.open_pusher(connect=spec.endpoint, high_water_mark=spec.hwm,
                                   reliable=True)
    else:
        opened = shoal.open_pusher(connect=spec.endpoint, high_water_mark=spec.hwm)
    return opened


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

    return run_on(spec.backend, main)


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
                checkpoint = yield_to_loop(spec)
                for i in range(target):
                    try:
                        send_nowait(body)
                    except WouldBlock:
                        await send(body)
                    if not i & NOWAIT_EVERY_MASK:
                        await checkpoint()
            else:
                for _ in range(target):
                    await send(body)
            t1 = now()
            # in a thread: the library keeps running meanwhile (a reliable sender still
            # has items to put on the wire, acknowledgements to read)
            await anyio.to_thread.run_sync(wait_peer, peer, "done")
            k1 = cpu()  # see SENDER_CPU
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9),
                    "cpu_send_us": cpu_us(k0, k1, target)}

    return run_on(spec.backend, main)


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
            with anyio.fail_after(PROBE_TIMEOUT_S):
                while not peer.poll():
                    pub.publish_nowait("bench.probe", b"")
                    probes += 1
                    await anyio.sleep(0.001)
            wait_peer(peer, "ready")
            publish = pub.publish
            t0, k0 = now(), cpu()
            if spec.variant == "shoal send_many":
                publish_many = pub.publish_many
                for batch in batches(("bench", body), target):
                    await publish_many(batch)
            elif spec.variant == "shoal nowait-send":
                publish_nowait = pub.publish_nowait
                checkpoint = yield_to_loop(spec)
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
            await anyio.to_thread.run_sync(wait_peer, peer, "done")
            k1 = cpu()  # see SENDER_CPU
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9), "probes": probes,
                    "cpu_send_us": cpu_us(k0, k1, target)}

    return run_on(spec.backend, main)


def shoal_ps_sub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    target = spec.warmup + spec.count

    async def main() -> Result:
        topics = WILDCARD_TOPICS if spec.variant == "shoal wildcard" else ["bench"]
        async with shoal.open_subscriber(connect=spec.endpoint, topics=topics,
                                         high_water_mark=spec.hwm,
                                         **receiver_options(spec)) as sub:
            with anyio.fail_after(PROBE_TIMEOUT_S):
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

            async def watchdog(scope: anyio.CancelScope) -> None:
                seen = -1
                while True:
                    await anyio.sleep(IDLE_S)
                    if got == seen:
                        scope.cancel()
                        return
                    seen = got

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(watchdog, tasks.cancel_scope)
                receive_batch = sub.receive_batch
                while got < target:
                    batch = await receive_batch()
                    t1 = now()
                    got += len(batch)
                    if c0 < 0 and got >= spec.warmup:
                        t0, c0, k0 = t1, got, cpu()
                    last_len = len(batch[-1].body)
                tasks.cancel_scope.cancel()
            # On loss this includes the idle watchdog period: sleeping costs no CPU.
            k1 = cpu()
            peer.send("done")
            stats = sub.statistics()
            return rate_result(t0, c0, t1, got, got, body_ok=last_len == spec.size,
                               gaps=stats.gaps, malformed=stats.malformed,
                               cpu_recv_us=cpu_us(k0, k1, got - c0))

    return run_on(spec.backend, main)


def shoal_rps_pub(spec: Spec, ctrl: Connection, peer: Connection) -> Result:
    """Reliable pub/sub: no probes, the publisher waits for the subscriber's hello."""
    body = make_body(spec.size)
    target = spec.warmup + spec.count

    async def main() -> Result:
        async with shoal.open_publisher(bind=LOOPBACK, high_water_mark=spec.hwm,
                                        reliable=True) as pub:
            ctrl.send(("endpoint", pub.endpoints[0]))
            with anyio.fail_after(PROBE_TIMEOUT_S):
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
            await anyio.to_thread.run_sync(wait_peer, peer, "done")
            k1 = cpu()  # see SENDER_CPU
            stats = pub.statistics()
            return {"sent": target, "send_rate": target / ((t1 - t0) / 1e9),
                    "retransmitted": stats.retransmitted,
                    "cpu_send_us": cpu_us(k0, k1, target)}

    return run_on(spec.backend, main)


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

    return run_on(spec.backend, main)


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
