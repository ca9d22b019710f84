"""Push/pull: work distribution, each message to exactly one puller.

Best effort over ZeroMQ PUSH/PULL. ``send()`` waits at the high-water mark and while
no puller is connected (backpressure, never a silent drop: the pusher sets
``ZMQ_IMMEDIATE`` so nothing queues for a peer that is not there yet). Messages are
spread round-robin over connected pullers.

What best effort cannot promise: a message already handed to a puller that then dies
is lost with it. At-least-once delivery is a separate, opt-in layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import Any

import trio
import zmq

from shoal._core import Identity, Kind, Message
from shoal._zmq import DEFAULT_LINGER_MS, Socket
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    SocketResource,
    open_socket,
    stream_encoder,
)

_PUSH = (Kind.PUSH,)

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
        self._enc = stream_encoder(identity)
        self._seq = 0


    def send_nowait(self, body: Any, *, headers: Mapping[str, Any] | None = None) -> None:
        """Send if ZeroMQ can take the message now, else raise ``trio.WouldBlock``
        (high-water mark reached, or no puller connected).

        Raises ``EncodeError`` for a body msgpack cannot encode, ``ClosedError`` once closed.
        """
        frame = self._enc.encode(Kind.PUSH, b"\0", body, self._seq, time_ns(), 0, headers)
        self._sock.send_nowait(frame)
        self._seq += 1

    async def send(self, body: Any, *, headers: Mapping[str, Any] | None = None) -> None:
        """Send one work item, waiting while no puller can take it.

        Cancel-safe: if cancelled, the item was not sent. Raises ``EncodeError`` for a
        body msgpack cannot encode (nothing is sent), ``ClosedError`` once closed.
        """
        frame = self._enc.encode(Kind.PUSH, b"\0", body, self._seq, time_ns(), 0, headers)
        sock = self._sock
        await trio.lowlevel.checkpoint_if_cancelled()
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

    def statistics(self) -> PusherStatistics:
        """An immutable snapshot of this resource's counters."""
        return PusherStatistics(sent=self._seq)



class Puller(BufferedReceiver[Message]):
    """Receives work items. A ``trio.abc.ReceiveChannel[Message]``."""

    def _accept(self, frames: list[bytes]) -> None:
        msg = self._malformed.check(frames, _PUSH, "puller")
        if msg is None:
            return
        self._received += 1
        self._buffer.append(msg)

    def statistics(self) -> PullerStatistics:
        """An immutable snapshot of this resource's counters."""
        return PullerStatistics(
            received=self._received,
            malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason),
        )


@asynccontextmanager
async def open_pusher(
    *,
    bind: Endpoints = None,
    connect: Endpoints = None,
    identity: Identity | None = None,
    high_water_mark: int = 1000,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS,
) -> AsyncIterator[Pusher]:
    """Open a pusher. ``send()`` waits until a puller is connected and can take work."""
    sock = open_socket("open_pusher", zmq.PUSH, bind=bind, connect=connect,
                       high_water_mark=high_water_mark, context=context,
                       linger_ms=linger_ms, options=pusher_options(high_water_mark))
    async with Pusher(sock, identity) as push:
        yield push


@asynccontextmanager
async def open_puller(
    *,
    bind: Endpoints = None,
    connect: Endpoints = None,
    high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
) -> AsyncIterator[Puller]:
    """Open a puller: ``async for msg in pull`` yields each work item sent to it."""
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
