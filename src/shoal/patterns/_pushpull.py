"""Push/pull: work distribution, each message to exactly one puller.

Best effort over ZeroMQ PUSH/PULL. ``send()`` waits at the high-water mark and while
no puller is connected (backpressure, never a silent drop: the pusher sets
``ZMQ_IMMEDIATE`` so nothing queues for a peer that is not there yet). Messages are
spread round-robin over connected pullers.

What best effort cannot promise: a message already handed to a puller that then dies
is lost with it. At-least-once delivery is a separate, opt-in layer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import Any, Literal, overload

import trio
import zmq

from shoal._core import SPLIT_AT, Identity, Kind, Message, fast_decoder, pack_tail
from shoal._zmq._monitor import DISCONNECTED, HANDSHAKE_SUCCEEDED, Monitor
from shoal._zmq._socket import DEFAULT_LINGER_MS, Socket
from shoal.errors import ClosedError, LocalProtocolError, MessageTooLarge
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    SocketResource,
    endpoint_list,
    open_socket,
    require_endpoints,
    stream_encoder,
    with_busy_poll,
)
from shoal.patterns._reliable_pushpull import (
    ManualAckPuller,
    ReliablePuller,
    ReliablePusher,
    open_reliable_puller,
    open_reliable_pusher,
)

_PUSH = (Kind.PUSH,)
_ROOM = 64  # more than a push frame's bytes besides its body (NUL + 52-byte header)

__all__ = [
    "Puller",
    "PullerStatistics",
    "Pusher",
    "PusherStatistics",
    "open_puller",
    "open_pusher",
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
        (``trio.fail_after``). Raises ``ClosedError`` if the pusher is closed."""
        while True:
            self._sock.check_open("wait for pullers")
            if self.pullers >= n:
                await trio.lowlevel.checkpoint()
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
        """Send if ZeroMQ can take the message now, else raise ``trio.WouldBlock``
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
        await trio.lowlevel.checkpoint_if_cancelled()
        if type(frame) is not bytes:
            await self._send_frames([frame])
            return
        # The common case inlined (this is the throughput path): the socket takes the
        # message at once, and we yield to the scheduler only every few dozen sends.
        try:
            sock.send_nowait(frame)
        except trio.WouldBlock:
            await sock.send(frame)
            self._seq += 1
            return
        self._seq += 1
        if sock.due_to_yield():
            await trio.lowlevel.cancel_shielded_checkpoint()

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
        await trio.lowlevel.checkpoint_if_cancelled()
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
            await trio.lowlevel.cancel_shielded_checkpoint()

    def statistics(self) -> PusherStatistics:
        """An immutable snapshot of this resource's counters."""
        return PusherStatistics(sent=self._seq)



class Puller(BufferedReceiver[Message]):
    """Receives work items. A ``trio.abc.ReceiveChannel[Message]``."""

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


@overload
def open_pusher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: Literal[False] = False, busy_poll: float = 0.0,
) -> AbstractAsyncContextManager[Pusher]: ...


@overload
def open_pusher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: Literal[True], busy_poll: float = 0.0,
    window: int = 1024,
    rto: float = 0.5, max_attempts: int = 10, give_up_after: float | None = None,
    outbox: str | os.PathLike[str] | None = None,
) -> AbstractAsyncContextManager[ReliablePusher]: ...


def open_pusher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: bool = False, busy_poll: float = 0.0,
    window: int = 1024,
    rto: float = 0.5, max_attempts: int = 10, give_up_after: float | None = None,
    outbox: str | os.PathLike[str] | None = None,
) -> AbstractAsyncContextManager[Pusher] | AbstractAsyncContextManager[ReliablePusher]:
    """Open a pusher. ``send()`` waits until a puller is connected and can take work.

    ``reliable=True``: at least once, to pullers opened with ``reliable=True`` (it
    connects to them, or they to it: either side may bind). An item stays in a window of ``window``
    until a puller's application is done with it, is retransmitted after ``rto``
    seconds (doubling) until a puller has it, goes to another puller if the one
    holding it disconnects, and is given up after ``max_attempts`` transmissions or
    ``give_up_after`` seconds (``wait_acked()`` raises ``DeliveryFailed``; they are
    also on ``push.dead_letters``).

    ``outbox="path.sqlite"`` (reliable only) keeps every accepted item on disk until
    it is done; a pusher reopened on the same file after a crash sends them again
    under their original ids, and pullers drop the copies they already had. Without
    an outbox, a pusher that crashes loses the items it had not yet seen done.
    """
    if outbox is not None and not reliable:
        raise LocalProtocolError("outbox= needs reliable=True (a best-effort pusher "
                                 "keeps nothing)")
    if reliable:
        cm1 = open_reliable_pusher(
            bind=bind, connect=connect, identity=identity, high_water_mark=high_water_mark,
            window=window, rto=rto, max_attempts=max_attempts, give_up_after=give_up_after,
            context=context, linger_ms=linger_ms, outbox=outbox)
        return with_busy_poll(cm1, busy_poll)
    cm2 = _open_pusher(bind=bind, connect=connect, identity=identity,
                       high_water_mark=high_water_mark, context=context, linger_ms=linger_ms)
    return with_busy_poll(cm2, busy_poll)


@asynccontextmanager
async def _open_pusher(
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


@overload
def open_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    reliable: Literal[False] = False, busy_poll: float = 0.0,
) -> AbstractAsyncContextManager[Puller]: ...


@overload
def open_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    reliable: Literal[True], busy_poll: float = 0.0, manual_ack: Literal[False] = False,
    identity: Identity | None = None, max_streams: int = 4096,
) -> AbstractAsyncContextManager[ReliablePuller]: ...


@overload
def open_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    reliable: Literal[True], busy_poll: float = 0.0, manual_ack: Literal[True],
    identity: Identity | None = None, max_streams: int = 4096,
) -> AbstractAsyncContextManager[ManualAckPuller]: ...


def open_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    reliable: bool = False, busy_poll: float = 0.0, manual_ack: bool = False,
    identity: Identity | None = None, max_streams: int = 4096,
) -> (AbstractAsyncContextManager[Puller] | AbstractAsyncContextManager[ReliablePuller]
      | AbstractAsyncContextManager[ManualAckPuller]):
    """Open a puller: ``async for msg in pull`` yields each work item sent to it.

    ``reliable=True``: from reliable pushers (either side may bind; a puller that
    connects introduces itself to each pusher, which then sends it work). Each item
    reaches the application once; it is done (acknowledged) when the next one is
    asked for, or, with ``manual_ack=True``, when ``await item.ack()`` is called on
    the ``Delivery`` handed out. ``identity`` names this puller's
    acknowledgements; ``max_streams`` bounds how many senders it remembers.
    """
    if reliable:
        if manual_ack:
            cm3 = open_reliable_puller(bind=bind, connect=connect, identity=identity,
                                       high_water_mark=high_water_mark, batch=batch,
                                       max_streams=max_streams, manual_ack=True,
                                       context=context)
            return with_busy_poll(cm3, busy_poll)
        cm4 = open_reliable_puller(bind=bind, connect=connect, identity=identity,
                                   high_water_mark=high_water_mark, batch=batch,
                                   max_streams=max_streams, context=context)
        return with_busy_poll(cm4, busy_poll)
    if manual_ack:
        raise LocalProtocolError("manual_ack=True needs reliable=True (a best-effort "
                                 "puller acknowledges nothing)")
    cm5 = _open_puller(bind=bind, connect=connect, high_water_mark=high_water_mark,
                       batch=batch, context=context)
    return with_busy_poll(cm5, busy_poll)


@asynccontextmanager
async def _open_puller(
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
