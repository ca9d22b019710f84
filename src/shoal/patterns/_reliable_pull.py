"""Reliable pull: a puller that gets each work item at least once over the wire and
hands it to its application once, acknowledging it received when it arrives and done
when the application is finished with it.

The wire rules (``docs/PROTOCOL.md``, "Reliable push/pull") are in the core:
``shoal._core.PullReceiver`` recognises copies (``(sender, epoch, stream, seq)``,
forgetting what lies below the floor an item carries), remembers what the
application holds, and batches the ``PullAck``s owed to each pusher route, with the
timer that says when they must go; this module moves bytes and decides when the
application is done (the next ``receive``, or ``Delivery.ack``).

A puller either binds (pushers connect to it) or connects to pushers that bind: then
it sets a routing id of its own for its life and says hello after each handshake,
and ignores the empty frames those pushers send to check that it is still there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import Any, Literal, TypeVar, cast, overload

import anyio.lowlevel
import zmq

from shoal._core import Identity, Kind, Message, PullReceiver, fast_decode, local_route
from shoal._io import WouldBlock
from shoal._zmq._socket import DEFAULT_LINGER_MS, PeerUnreachable, Socket
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import ClosedError, LocalProtocolError
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    check_limits,
    endpoint_list,
    open_socket,
    require_endpoints,
    stream_encoder,
)
from shoal.patterns._links import LinkMonitor
from shoal.patterns._routes import Routes, reliable_options

__all__ = ["Delivery", "ManualAckPuller", "ReliablePuller", "ReliablePullerStatistics",
           "open_reliable_puller"]

T = TypeVar("T")
R = TypeVar("R", "ReliablePuller", "ManualAckPuller")

_PUSH = (Kind.PUSH,)


@dataclass(frozen=True, slots=True)
class ReliablePullerStatistics:
    """Counters of a reliable puller at one moment."""

    received: int
    """Items delivered to the application (each once)."""
    duplicates: int
    """Copies recognised and dropped (and acknowledged again)."""
    held: int
    """Items received and not yet done (buffered, in the application's hands)."""
    acks_sent: int
    malformed: int
    malformed_by_reason: Mapping[str, int]


class _ReliableReceiver(BufferedReceiver[T]):
    """The receiving end of reliable push/pull; ``_wrap`` makes what the buffer holds."""

    def __init__(self, sock: Socket, identity: Identity | None, *, batch: int,
                 max_streams: int) -> None:
        super().__init__(sock, batch=batch)
        self._enc = stream_encoder(identity, sock)
        self._core = PullReceiver(max_streams=max_streams)
        self._acks_sent = 0
        self._ack_seq = 0
        self._decode_fast = fast_decode(Kind.PUSH)
        self._pushers = Routes(sock)  # pushers that bind: the connections to them
        self._links: LinkMonitor | None = None

    # -- pushers that bind --------------------------------------------------------------------

    def _connect(self, endpoint: str) -> None:
        """Connect to a pusher bound at ``endpoint``; say hello once connected."""
        pushers = self._pushers
        if pushers.add(local_route(b"u", len(pushers.by_endpoint)), endpoint):
            pushers.hello(endpoint)  # inproc has no handshake for the monitor to report

    def _wrap(self, msg: Message) -> T:
        raise NotImplementedError

    def _finish_current(self) -> None:
        """Mark done what the application finished by asking for more."""

    _routed = True  # drained with Socket.drain_routed: plain receives, no frame lists

    def _accept_routed(self, route: bytes, frame: bytes, more: bool) -> None:
        msg = None if more else self._decode_fast(frame)
        if msg is None:
            if not frame and not more and route in self._pushers.by_endpoint.values():
                return  # a pusher we connected to checks that we are still there
            msg = self._malformed.check_frame(self._sock, frame, _PUSH, "reliable puller",
                                              more)
            if msg is None:
                return
        if self._core.accept(route, msg.sender, msg.epoch, msg.stream, msg.seq,
                             msg.correlation):
            self._received += 1
            self._buffer.append(self._wrap(msg))

    def _fill(self) -> int:
        n = super()._fill()
        if self._core.received_due:
            self._flush(done=False)
        return n

    def _before_wait(self) -> None:
        # What arrived was only copies (or garbage): their acknowledgements go now,
        # or the pusher would wait for them while we wait for it.
        if self._core.pending():
            self._flush(done=True)

    def _mark_done(self, msg: Message) -> bool:
        """The application is done with ``msg``; False if it was not held (done already)."""
        core = self._core
        if not core.finish(msg.sender, msg.epoch, msg.stream, msg.seq):
            return False
        if core.done_due:
            self._flush(done=True)
        return True

    def receive_nowait(self) -> T:
        """The next item if one is here, else ``WouldBlock``."""
        self._finish_current()
        try:
            return super().receive_nowait()
        except WouldBlock:
            self._flush(done=True)
            raise

    async def receive(self) -> T:
        """Wait for the next item. Cancel-safe."""
        self._finish_current()
        if not self._buffer and not self._fill():
            deadline = self._core.get_timer()
            if deadline is not None:
                # About to wait with acknowledgements pending: send them by the
                # deadline, batching whatever else arrives meanwhile.
                io = self._io
                left = deadline - io.current_time()
                if left > 0:
                    with io.move_on_after(left):
                        await self._sock.wait_receivable()
                    self._fill()
                if not self._buffer:
                    self._flush(done=True)
        return await super().receive()

    async def receive_batch(self) -> list[T]:
        """Wait for at least one item, then return every item already here."""
        first = await self.receive()
        rest = list(self._buffer)
        self._buffer.clear()
        return [first, *rest]

    def flush_acks(self) -> None:
        """Send the pending acknowledgements now (they are otherwise batched for up to
        ``ACK_DELAY`` seconds or ``ACK_BATCH`` items). Never blocks."""
        if not self._sock.closed:
            self._flush(done=True)

    def _flush(self, *, done: bool) -> None:
        """Send what is owed (``done``: the done ones too). An acknowledgement the
        pusher's queue refuses keeps its done part for later (the pusher probes for
        the rest); one to a pusher gone is dropped (it sends the items elsewhere)."""
        core = self._core
        for route, ack in core.acks_to_send(self._io.current_time(), done=done):
            frame = ack.encode(self._enc, self._ack_seq, time_ns())
            self._ack_seq += 1
            try:
                self._sock.send_to_nowait(cast(bytes, route), frame)
                self._acks_sent += 1
            except WouldBlock:
                core.refused(route, ack)
            except (PeerUnreachable, ClosedError):
                pass

    def statistics(self) -> ReliablePullerStatistics:
        """An immutable snapshot of this resource's counters."""
        return ReliablePullerStatistics(
            received=self._received, duplicates=self._core.dedup.duplicates,
            held=self._core.held, acks_sent=self._acks_sent,
            malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason))

    async def aclose(self) -> None:
        """Close. What the application finished is acknowledged (the socket lingers
        to send it); items not finished are not: their pushers send them to another
        puller."""
        if not self._sock.closed:
            self._flush(done=True)
        if self._links is not None:
            self._links.close()
        self._sock.close()
        await anyio.lowlevel.checkpoint()


class ReliablePuller(_ReliableReceiver[Message]):
    """Receives work items at least once over the wire, once to the application.
    A receive channel of ``Message`` (``async for msg in pull``); an item is done when
    the next is asked for (``receive`` or ``async for`` moving on).
    ``open_puller(reliable=True)``."""

    def __init__(self, sock: Socket, identity: Identity | None, *, batch: int,
                 max_streams: int) -> None:
        super().__init__(sock, identity, batch=batch, max_streams=max_streams)
        self._current: list[Message] = []  # handed to the application, not yet done

    def _wrap(self, msg: Message) -> Message:
        return msg

    def _finish_current(self) -> None:
        for msg in self._current:
            self._mark_done(msg)
        self._current.clear()

    def receive_nowait(self) -> Message:
        """The next item if one is here, else ``WouldBlock``. Marks the previous
        item done."""
        msg = super().receive_nowait()
        self._current.append(msg)
        return msg

    async def receive(self) -> Message:
        """Wait for the next item; marks the previous one done. Cancel-safe."""
        msg = await super().receive()
        self._current.append(msg)
        return msg

    def mark_done(self) -> None:
        """The items handed out so far are done (as asking for the next one would
        say), and that is sent now: for an application that stops taking items."""
        self._finish_current()
        self.flush_acks()

    async def receive_batch(self) -> list[Message]:
        """Wait for at least one item, then return every item already here. They are
        done when the next receive is asked for."""
        batch = await super().receive_batch()
        self._current.extend(batch[1:])
        return batch


class Delivery:
    """A work item from a puller opened with ``manual_ack=True``: it is done (and
    leaves its pusher's window) only when ``ack()`` is called. Not acknowledged when
    the puller closes or dies: it goes to another puller."""

    __slots__ = ("_acked", "_puller", "message")

    def __init__(self, puller: ManualAckPuller, message: Message) -> None:
        self._puller = puller
        self._acked = False
        self.message = message
        """The item's full envelope (sender, seq, timestamp...)."""

    @property
    def body(self) -> Any:
        """The item's body, as the pusher sent it."""
        return self.message.body

    @property
    def headers(self) -> Mapping[str, Any]:
        """The item's user headers."""
        return self.message.headers

    @property
    def id(self) -> str:
        """The item's unique id (``sender:epoch:stream:seq``)."""
        return self.message.id

    @property
    def acked(self) -> bool:
        """Whether ``ack()`` has been called."""
        return self._acked

    def ack_nowait(self) -> None:
        """Acknowledge: the application is done with this item. Idempotent.
        Raises ``ClosedError`` if the puller is closed (the item will be redelivered)."""
        if self._acked:
            return
        self._puller._ack(self.message)
        self._acked = True

    async def ack(self) -> None:
        """Acknowledge: the application is done with this item (sent at once)."""
        self.ack_nowait()
        await self._puller._io.checkpoint()

    def __repr__(self) -> str:
        return f"<Delivery {self.id} acked={self._acked}>"


class ManualAckPuller(_ReliableReceiver[Delivery]):
    """A reliable puller whose items are done when ``await item.ack()`` says so
    (``open_puller(reliable=True, manual_ack=True)``); they may be acknowledged in
    any order, from any task of the same event loop."""

    def _wrap(self, msg: Message) -> Delivery:
        return Delivery(self, msg)

    def _ack(self, msg: Message) -> None:
        self._sock.check_open("acknowledge (the item goes to another puller)")
        self._mark_done(msg)
        self._flush(done=True)


@overload
def open_reliable_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, max_streams: int = 4096, manual_ack: Literal[False] = False,
    context: zmq.Context[zmq.Socket[bytes]] | None = None, socket: Socket | None = None,
) -> AbstractAsyncContextManager[ReliablePuller]: ...


@overload
def open_reliable_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, max_streams: int = 4096, manual_ack: Literal[True],
    context: zmq.Context[zmq.Socket[bytes]] | None = None, socket: Socket | None = None,
) -> AbstractAsyncContextManager[ManualAckPuller]: ...


def open_reliable_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, max_streams: int = 4096, manual_ack: bool = False,
    context: zmq.Context[zmq.Socket[bytes]] | None = None, socket: Socket | None = None,
) -> AbstractAsyncContextManager[ReliablePuller] | AbstractAsyncContextManager[ManualAckPuller]:
    """A reliable puller bound to ``bind`` (reliable pushers connect to it) and/or
    connected to the reliable pushers bound at ``connect``, or over a node's bound
    ``socket``. ``manual_ack=True``: items are done when ``ack()``ed."""
    binds, eps = endpoint_list(bind, "bind"), endpoint_list(connect, "connect")
    if socket is None:
        check_limits(high_water_mark=high_water_mark, batch=batch)
        require_endpoints(binds, eps, "open_puller(reliable=True)")
    if max_streams < 1:
        raise LocalProtocolError("max_streams must be >= 1")
    kw: dict[str, Any] = dict(bind=binds, connect=eps, identity=identity,
                              high_water_mark=high_water_mark, batch=batch,
                              max_streams=max_streams, context=context, socket=socket)
    if manual_ack:
        return _open_receiver(ManualAckPuller, **kw)
    return _open_receiver(ReliablePuller, **kw)


@asynccontextmanager
async def _open_receiver(
    cls: type[R], *, bind: list[str], connect: list[str], identity: Identity | None,
    high_water_mark: int, batch: int, max_streams: int,
    context: zmq.Context[zmq.Socket[bytes]] | None, socket: Socket | None,
) -> AsyncIterator[R]:
    if socket is None:
        # A puller that connects is known to the pushers by its own routing id, the
        # same for its life: a reconnect takes its route over (ROUTER_HANDOVER).
        options = reliable_options(high_water_mark)
        if connect:
            options.append((zmq.ROUTING_ID, b"Q" + os.urandom(15)))
        socket = open_socket("open_puller(reliable=True)", zmq.ROUTER, bind=bind, connect=None,
                             high_water_mark=high_water_mark, batch=batch, context=context,
                             linger_ms=DEFAULT_LINGER_MS, options=options,
                             endpoints_checked=True)
    async with cls(socket, identity, batch=batch, max_streams=max_streams) as pull:
        if not connect:
            yield pull
            return
        pull._links = LinkMonitor(socket, pull._pushers.hello, lambda _ep: None)
        pull._links.start()  # before any connect: no handshake goes unseen
        async with open_service_nursery() as nursery:
            for ep in connect:
                pull._connect(ep)
            nursery.start_soon(pull._links.run)
            try:
                yield pull
            finally:
                nursery.cancel_scope.cancel()
