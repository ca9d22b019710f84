"""Request/reply round-trip latency, one request in flight: shoal, shoal with
``busy_poll=``, shoal reliable, blocking pyzmq REQ/REP, pyzmq.asyncio REQ/REP, and
"trio FD" (a pyzmq DEALER/ROUTER driven by bare trio: the floor under shoal).
Each function is one side of one variant, run in a worker process; shoal's sides run
on the event loop the spec names (``run_on``) and call nothing loop-specific.
"""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection
from typing import Any

import trio
import zmq
import zmq.asyncio

import shoal
from shoal.cli._bench._suite._common import (
    LOOPBACK,
    Result,
    Spec,
    cpu,
    cpu_us,
    latency_result,
    make_body,
    now,
    raw_bind,
    raw_socket,
    run_on,
    wait_peer,
)


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

    return run_on(spec.backend, main)


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

    return run_on(spec.backend, main)


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
