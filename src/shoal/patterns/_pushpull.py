"""Push/pull: work distribution, each message to exactly one puller.

Best effort over ZeroMQ PUSH/PULL. ``send()`` waits at the high-water mark and while
no puller is connected (backpressure, never a silent drop: the pusher sets
``ZMQ_IMMEDIATE`` so nothing queues for a peer that is not there yet). Messages are
spread round-robin over connected pullers.

What best effort cannot promise: a message already handed to a puller that then dies
is lost with it. At-least-once delivery is a separate, opt-in layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import Any

import zmq

from shoal._core import SPLIT_AT, Identity, Kind, Message, fast_decoder, pack_tail
from shoal._io import WouldBlock
from shoal._zmq._monitor import DISCONNECTED, HANDSHAKE_SUCCEEDED, Monitor
from shoal._zmq._socket import Socket
from shoal.errors import ClosedError, MessageTooLarge
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    SocketResource,
    endpoint_list,
    open_socket,
    require_endpoints,
    stream_encoder,
)

_PUSH = (Kind.PUSH,)
_ROOM = 64  # more than a push frame's bytes besides its body (NUL + 52-byte header)

__all__ = [
    "Puller",
    "PullerStatistics",
    "Pusher",
    "PusherStatistics",
    "open_best_effort_puller",
    "open_best_effort_pusher",
]


@dataclass(frozen=True, slots=True)
class PusherStatistics:
    """Counters of a pusher at one moment."""

    sent: int
    """Messages handed to ZeroMQ."""


@dataclass(frozen=True, slots=True)
class PullerStatistics:
    """Counters of a puller at one moment."""

    received: int
    """Valid work items delivered into the receive buffer."""
    malformed: int
    """Messages dropped because they were not valid shoal work items."""
    malformed_by_reason: Mapping[str, int]


class Pusher(SocketResource):
    """Sends work items; each goes to one puller. Make one with ``open_pusher``."""

    def __init__(self, sock: Socket, identity: Identity | None) -> None:
        self._sock = sock
        self._io = sock.loop
        self._enc = stream_encoder(identity, sock)
        self._seq = 0
        # The fixed bytes in front of every raw-bytes item: no topic, then the header
        # fields fixed for this stream. The hot path adds the tail and the body.
        self._head = b"\0" + self._enc.raw_prefix[Kind.PUSH]
        self._max = sock.max_message_size
        # Connections with a completed handshake, per endpoint, from libzmq's monitor
        # (started before any connect; read only when asked: ``pullers``).
        self._monitor = Monitor(sock, HANDSHAKE_SUCCEEDED | DISCONNECTED)
        self._links: dict[str, int] = {}
        self._inproc = 0  # inproc endpoints connected to (libzmq reports no handshake)

    def connect(self, endpoint: str) -> None:
        """Connect to a puller at ``endpoint`` (``open_pusher(connect=...)`` does)."""
        self._sock.connect(endpoint)
        if endpoint.startswith("inproc://"):
            self._inproc += 1

    def _read_links(self) -> None:
        links = self._links
        while events := self._monitor.events_nowait(64):
            for ev in events:
                if ev.event == HANDSHAKE_SUCCEEDED:
                    links[ev.endpoint] = links.get(ev.endpoint, 0) + 1
                elif ev.event == DISCONNECTED and links.get(ev.endpoint):
                    links[ev.endpoint] -= 1

    @property
    def pullers(self) -> int:
        """How many pullers are connected with their handshake complete (tcp, ipc),
        plus the inproc endpoints this pusher connected to (libzmq reports no
        handshake on inproc; pullers connecting to an inproc endpoint it binds are
        not counted)."""
        if not self._sock.closed:
            self._read_links()
        return sum(self._links.values()) + self._inproc

    async def wait_for_pullers(self, n: int = 1) -> None:
        """Wait until at least ``n`` pullers are connected (see ``pullers``): what is
        sent from then on is spread over them. Discovery finding a node does not
        mean the connection to it is up; this does. The caller owns the timeout
        (``trio.fail_after``, ``anyio.fail_after``,
        ``asyncio.timeout``). Raises ``ClosedError`` if the pusher is closed."""
        while True:
            self._sock.check_open("wait for pullers")
            if self.pullers >= n:
                await self._io.checkpoint()
                return
            try:
                await self._monitor.wait()
            except ClosedError:
                self._sock.check_open("wait for pullers")
                raise

    async def aclose(self) -> None:
        """Close; unsent messages get the socket's LINGER time to leave. Always closes."""
        self._monitor.close()
        await super().aclose()

    def _encode(self, body: Any, seq: int,
                headers: Mapping[str, Any] | None) -> bytes | tuple[bytes, bytes]:
        if type(body) is bytes and headers is None and len(body) < SPLIT_AT:
            frame = b"".join((self._head, pack_tail(seq, time_ns(), 0), body))
            if len(frame) > self._max:
                raise MessageTooLarge(len(frame), self._max)
            return frame
        head, big = self._enc.encode_parts(Kind.PUSH, b"\0", body, seq, time_ns(), 0,
                                           headers)
        return head if big is None else (head, big)

    def _encode_many(self, bodies: Iterable[Any]) -> list[bytes | tuple[bytes, bytes]]:
        """Encode a batch, numbered from the next sequence number. The items of a batch
        share one timestamp: they leave together."""
        seq = self._seq
        if self._max < SPLIT_AT + _ROOM:  # a small size bound: check every frame
            return [self._encode(b, seq + i, None) for i, b in enumerate(bodies)]
        now = time_ns()
        head = self._head
        join = b"".join
        return [join((head, pack_tail(seq + i, now, 0), b))
                if type(b) is bytes and len(b) < SPLIT_AT else self._encode(b, seq + i, None)
                for i, b in enumerate(bodies)]

    def send_nowait(self, body: Any, *, headers: Mapping[str, Any] | None = None) -> None:
        """Send if ZeroMQ can take the message now, else raise ``WouldBlock``
        (high-water mark reached, or no puller connected).

        Raises ``EncodeError`` for a body msgpack cannot encode, ``ClosedError`` once closed.
        """
        frame = self._encode(body, self._seq, headers)
        if type(frame) is bytes:
            self._sock.send_nowait(frame)
        else:
            self._sock.send_split_nowait(None, *frame)
        self._seq += 1

    async def send(self, body: Any, *, headers: Mapping[str, Any] | None = None) -> None:
        """Send one work item, waiting while no puller can take it.

        Cancel-safe: if cancelled, the item was not sent. Raises ``EncodeError`` for a
        body msgpack cannot encode (nothing is sent), ``ClosedError`` once closed.
        """
        frame = self._encode(body, self._seq, headers)
        sock = self._sock
        await self._io.checkpoint_if_cancelled()
        if type(frame) is not bytes:
            await self._send_frames([frame])
            return
        # The common case inlined (this is the throughput path): the socket takes the
        # message at once, and we yield to the scheduler only every few dozen sends.
        try:
            sock.send_nowait(frame)
        except WouldBlock:
            await sock.send(frame)
            self._seq += 1
            return
        self._seq += 1
        if sock.due_to_yield():
            await self._io.cancel_shielded_checkpoint()

    def send_many_nowait(self, bodies: Iterable[Any]) -> int:
        """Send as many of ``bodies``, in order, as ZeroMQ takes now; return how many
        went (the first ones; the rest were not sent). Never blocks.

        Every body is encoded first: ``EncodeError`` means nothing was sent.
        """
        frames = self._encode_many(bodies)
        sent = self._sock.send_batch_nowait(frames) if frames else 0
        self._seq += sent
        return sent

    async def send_many(self, bodies: Iterable[Any]) -> None:
        """Send every body, in order, waiting while no puller can take more: the batch
        form of ``send``, with one scheduling point for the whole batch instead of
        one every few dozen messages.

        Every body is encoded first: ``EncodeError`` means nothing was sent. If
        cancelled (or closed) while waiting, the first items were sent and the rest
        were not: ``statistics().sent`` counts exactly the items sent.
        """
        await self._io.checkpoint_if_cancelled()
        await self._send_frames(self._encode_many(bodies))

    async def _send_frames(self, frames: list[bytes | tuple[bytes, bytes]]) -> None:
        sock = self._sock
        done = 0
        waited = False
        while True:
            sent = sock.send_batch_nowait(frames, done)
            self._seq += sent
            done += sent
            if done == len(frames):
                break
            await sock.wait_sendable()
            waited = True
        if not waited:
            await self._io.cancel_shielded_checkpoint()

    def statistics(self) -> PusherStatistics:
        """An immutable snapshot of this resource's counters."""
        return PusherStatistics(sent=self._seq)



class Puller(BufferedReceiver[Message]):
    """Receives work items: a receive channel of ``Message``s (``BufferedReceiver``)."""

    def __init__(self, sock: Socket, *, batch: int = DEFAULT_BATCH) -> None:
        super().__init__(sock, batch=batch)
        check = self._malformed.check_frame
        append = self._buffer.append

        def slow(frame: bytes) -> None:
            msg = check(sock, frame, _PUSH, "puller")
            if msg is not None:
                append(msg)
        accept = fast_decoder(Kind.PUSH, topic=False, deliver=append, fallback=slow)
        self._accept_frame = accept

    def statistics(self) -> PullerStatistics:
        """An immutable snapshot of this resource's counters."""
        return PullerStatistics(
            received=self._received,
            malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason),
        )


@asynccontextmanager
async def open_best_effort_pusher(
    *, bind: Endpoints, connect: Endpoints, identity: Identity | None, high_water_mark: int,
    context: zmq.Context[zmq.Socket[bytes]] | None, linger_ms: int,
) -> AsyncIterator[Pusher]:
    b, c = endpoint_list(bind, "bind"), endpoint_list(connect, "connect")
    require_endpoints(b, c, "open_pusher")
    sock = open_socket("open_pusher", zmq.PUSH, bind=b, connect=None,
                       high_water_mark=high_water_mark, context=context,
                       linger_ms=linger_ms, options=pusher_options(high_water_mark),
                       endpoints_checked=True)
    async with Pusher(sock, identity) as push:
        for ep in c:  # after the monitor started: no handshake goes uncounted
            push.connect(ep)
        yield push


@asynccontextmanager
async def open_best_effort_puller(
    *, bind: Endpoints, connect: Endpoints, high_water_mark: int, batch: int,
    context: zmq.Context[zmq.Socket[bytes]] | None,
) -> AsyncIterator[Puller]:
    sock = open_socket("open_puller", zmq.PULL, bind=bind, connect=connect,
                       high_water_mark=high_water_mark, batch=batch, context=context,
                       linger_ms=0, options=puller_options(high_water_mark))
    async with Puller(sock, batch=batch) as pull:
        yield pull


def pusher_options(high_water_mark: int) -> list[tuple[int, int | bytes]]:
    """Socket options of a pusher: IMMEDIATE, so nothing queues for absent pullers."""
    return [(zmq.SNDHWM, high_water_mark), (zmq.IMMEDIATE, 1)]


def puller_options(high_water_mark: int) -> list[tuple[int, int | bytes]]:
    """Socket options of a puller."""
    return [(zmq.RCVHWM, high_water_mark)]
