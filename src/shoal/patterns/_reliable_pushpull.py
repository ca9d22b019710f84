"""Reliable push/pull: at-least-once across the wire, each item processed once per live
worker, redelivered to another worker if the one holding it dies or vanishes.

Sockets: both ends are ROUTERs, and either may bind (or both bind some endpoints and
connect to others). The pusher picks the puller for every item itself and sends it to
that puller's routing id (a *route*); the puller answers on the connection each item
came in on. The state machines are ``shoal._core.ReliableSender`` and
``Deduplicator``; this module moves bytes.

* A pusher that connects names each puller's connection itself (``CONNECT_ROUTING_ID``)
  and starts using it when libzmq's monitor reports the handshake.
* A pusher that binds cannot address a puller before hearing from it: a puller that
  connects sets a routing id of its own for its life (``ROUTING_ID``, so a reconnect
  takes the same route over: ``ROUTER_HANDOVER``) and sends a *hello*, an empty frame,
  to the pusher after each handshake (at once on inproc, which has none). The pusher
  starts routing items to whoever says hello on a connection it accepted. libzmq's
  monitor names only the listening endpoint when an accepted connection drops, not
  the peer: the pusher then sends an empty frame to each puller it learned that way,
  at once and a few times over the next second (libzmq may take a moment to retire
  the connection), and ``ROUTER_MANDATORY`` refuses the one that is gone, whose items
  go to the others; any send refused that way retires it too. The puller ignores
  those empty frames from the pushers it connected to (elsewhere an empty frame is
  malformed, as before); a pusher that does not bind counts a hello as malformed.

An item travels as a PUSH envelope whose ``seq`` is its sequence number and whose
``correlation`` carries the pusher's *floor* (lowest sequence number not yet done), so
the puller forgets what lies below. The puller answers with ACK envelopes whose body
is ``[received, done]`` (two lists of sequence numbers), batched:

* *received* when an item reaches the puller's buffer (sent once per drained batch):
  the pusher stops retransmitting it on a timer, so a slow handler is never
  duplicated by a timeout;
* *done* when the application asks for the next item (``async for`` moving on, or
  ``receive()`` called again): only then does the item leave the pusher's window.
  Sent when 64 have gathered or before the puller waits for more.

An ACK's ``correlation`` names the pusher stream it acknowledges (``ack_tag``: the
stream's epoch and number); a pusher ignores an acknowledgement tagged for another
stream. A puller that connects keeps its route to a bound endpoint when the pusher
there is restarted, so an acknowledgement still queued for the pusher that died would
otherwise mark the new pusher's items of the same numbers done. A tag of 0 (pullers
that predate it) is taken as the pusher's own.

If the puller holding an item goes away before *done* (its node leaves, is killed, or
its link stays down past the peer timeout: ``drop_route``), the item goes to another
puller. Duplicates (retransmissions) are recognised by ``(sender, epoch, stream,
seq)`` and never reach the application twice; they are re-acknowledged.

Given up (no puller received it after ``max_attempts`` transmissions, or older than
``give_up_after`` seconds): ``wait_acked()`` raises ``DeliveryFailed`` naming them.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from time import time_ns
from typing import Any, Literal, TypeVar, overload

import trio
import zmq

from shoal._core import (
    Deduplicator,
    Identity,
    Kind,
    Message,
    ReliableSender,
    StreamEncoder,
    decode,
    fast_decode,
)
from shoal._process import next_stream, process_identity
from shoal._zmq._socket import DEFAULT_LINGER_MS, PeerUnreachable, Socket
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import ClosedError, DecodeError, DeliveryFailed, LocalProtocolError
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    SocketResource,
    check_limits,
    endpoint_list,
    open_socket,
    require_endpoints,
    stream_encoder,
)
from shoal.patterns._links import LinkMonitor
from shoal.patterns._outbox import Outbox

__all__ = ["DeadLetter", "Delivery", "ManualAckPuller", "ReliablePuller",
           "ReliablePullerStatistics", "ReliablePusher", "ReliablePusherStatistics",
           "open_reliable_puller", "open_reliable_pusher", "reliable_options"]

log = logging.getLogger("shoal")
T = TypeVar("T")
R = TypeVar("R", "ReliablePuller", "ManualAckPuller")

_PUSH = (Kind.PUSH,)
_ACK = (Kind.ACK,)
_TOPIC = b"\0"
_FLOOR_AT = len(_TOPIC) + 52 - 8  # the correlation field: last u64 of the header
_U64 = struct.Struct("<Q")
_DEAD_LETTERS = 1024
_ACK_BATCH = 64
_ACK_DELAY = 0.002
"""Seconds a puller may sit on acknowledgements before sending them (batching)."""
_READ_EVERY_MASK = 31
PROBE_AFTER = 2.0
"""Seconds (at least; 4 rto if more) before a pusher asks a puller holding an item
about it again: the repair of a lost done acknowledgement."""
RESTORE_WAIT = 3.0
"""Seconds a pusher reopened on its outbox waits for the puller an unfinished item
went to before (which recognises it) before sending it to another."""
BATCH_BYTES = 1 << 20
"""A batch send (``send_many``, ``publish_many``) encodes about this many bytes at a
time at most: large bodies do not pile up in memory before the first one leaves."""
HELLO = b""
"""The control frame of a peer that connects to a bound ROUTER: here I am (the bound
side learns the route to it). A bound pusher sends it to check a connection."""
CHECKS = (0.0, 0.01, 0.1, 1.0)
"""Seconds after an accepted connection drops at which a bound pusher checks the
pullers it learned (libzmq retires a dropped connection's pipe a moment after its
monitor reports the drop)."""


def ack_tag(epoch: int, stream: int) -> int:
    """The ``correlation`` of an acknowledgement of stream ``(epoch, stream)``."""
    return (epoch << 32) | stream


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An item a reliable pusher gave up on, as ``DeliveryFailed.failed`` and the
    pusher's ``dead_letters`` channel report it."""

    id: str
    """The item's id (``sender:epoch:stream:seq``), as pullers would have seen it."""
    seq: int
    body: Any
    headers: Mapping[str, Any]
    attempts: int
    """How many times it went on the wire."""
    last_peer: str | None
    """The route (hex) of the puller it was sent to last; None if it never went out."""
    reason: str
    """``attempts`` (``max_attempts`` transmissions, none received) or ``deadline``
    (older than ``give_up_after``)."""


@dataclass(frozen=True, slots=True)
class ReliablePusherStatistics:
    """Counters of a reliable pusher at one moment."""

    sent: int
    """Items put on the wire for the first time."""
    acked: int
    """Items a puller's application is done with."""
    in_flight: int
    """Items in the window (queued, sent, or held by a puller), not yet done."""
    retransmitted: int
    """Transmissions after the first (timeouts, or the holding puller vanished)."""
    redelivered: int
    """Items sent again because the puller holding them went away."""
    given_up: int
    disconnects: int
    """Connections to pullers that dropped (what they held went to other pullers)."""
    restored: int
    """Items taken back from the outbox when the pusher opened (sent again)."""
    dead_letters_dropped: int
    """Dead letters dropped unread from the full ``dead_letters`` channel."""
    malformed: int
    held: Mapping[str, int] = field(default_factory=dict)
    """Per connected puller (its routing id, hex): the items sent to it and not yet
    done. Each holds at most ``window // pullers`` (a puller that stops acknowledging
    stalls only that share); a count stuck at that bound is a stuck worker."""


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


def reliable_options(high_water_mark: int) -> list[tuple[int, int | bytes]]:
    """Socket options of both ends: ROUTER, MANDATORY so an absent route raises,
    HANDOVER so a peer reconnecting under its routing id takes it over at once, ZMTP
    heartbeats so a silent link (pulled cable) is seen as disconnected in seconds."""
    return [(zmq.SNDHWM, high_water_mark), (zmq.RCVHWM, high_water_mark),
            (zmq.ROUTER_MANDATORY, 1), (zmq.ROUTER_HANDOVER, 1),
            (zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 3000)]


class ReliablePusher(SocketResource):
    """Sends work items at least once, each to one puller. ``open_pusher(reliable=True)``."""

    def __init__(
        self, sock: Socket, identity: Identity | None, *, window: int, rto: float,
        max_attempts: int, give_up_after: float | None, outbox: Outbox | None = None,
    ) -> None:
        self._sock = sock
        # A puller holding an item is asked again (probed) PROBE_AFTER s after it said
        # so, then doubling: a done acknowledgement lost on the way costs that long.
        self._core = ReliableSender(window=window, rto=rto, max_rto=max(rto, 5.0),
                                    max_attempts=max_attempts, give_up_after=give_up_after,
                                    probe_after=max(4 * rto, PROBE_AFTER))
        self._outbox = outbox
        self._prior: dict[int, bytes] = {}  # restored item -> the puller it went to
        self._restore_until = 0.0
        self._restored = 0
        if outbox is None:
            self._enc = stream_encoder(identity, sock)
        else:
            self._enc = self._open_outbox(outbox, identity)
        self._routes: list[bytes] = []  # connected (handshake done), in turn order
        self._route_of: dict[str, bytes] = {}  # endpoint -> route, connected or not
        # Pullers that connected to an endpoint this pusher binds: routes learned from
        # their hellos, in ``_routes`` too (see the module docstring).
        self._binds = False
        self._connected: set[bytes] = set()  # routes of add_route, once it binds too
        self._learned: set[bytes] = set()
        self._gone: list[bytes] = []  # learned routes a send found gone, to retire
        self._checks: list[float] = []  # when to check the learned routes
        self._tag = ack_tag(self._enc.epoch, self._enc.stream)
        self._turn = 0
        self._disconnects = 0
        # One routing id for the pusher's life: a puller answering after a reconnect
        # still reaches it.
        sock.setsockopt(zmq.ROUTING_ID, b"P" + os.urandom(15))
        self._links = LinkMonitor(sock, self._link_up, self._link_lost)
        self._arm = trio.Event()  # wakes the timer task (work, a puller connecting)
        self._waiters = 0  # tasks in _wait_for
        self._failed: list[DeadLetter] = []  # for wait_acked
        self._dead_in, self._dead_out = trio.open_memory_channel[DeadLetter](_DEAD_LETTERS)
        self._dead_dropped = 0
        self._redelivered = 0
        self._malformed = 0

    def _open_outbox(self, outbox: Outbox, identity: Identity | None) -> StreamEncoder:
        """Continue the stream the outbox holds (its unfinished items first), or start
        a new one recorded there."""
        known = outbox.stream()
        if known is None:
            ident = identity if identity is not None else process_identity()
            stream = next_stream()
            outbox.start(ident.sender, ident.epoch, stream)
            return StreamEncoder(sender=ident.sender, epoch=ident.epoch, stream=stream,
                                 max_size=self._sock.max_message_size)
        sender, epoch, stream, next_seq = known
        pending = outbox.pending()
        for seq, frame, _route in pending:
            try:
                decode(frame)
            except DecodeError:
                raise LocalProtocolError(
                    f"the outbox {outbox.path!r} is damaged (item {seq} does not decode); "
                    "move it away to start a new stream") from None
            if seq >= next_seq:
                raise LocalProtocolError(
                    f"the outbox {outbox.path!r} is damaged (item {seq} is past the "
                    "stream's next number); move it away to start a new stream")
        # -1: not the current floor, so the first transmission writes the floor in
        self._core.restore([(seq, (frame, -1)) for seq, frame, _route in pending], next_seq,
                           trio.current_time())
        self._restored = len(pending)
        # Each goes first to the puller it went to before, if that one is there within
        # RESTORE_WAIT: it recognises what it already did (and acknowledges it again)
        # where another puller would do it a second time.
        self._prior = {seq: route for seq, _frame, route in pending if route is not None}
        self._restore_until = trio.current_time() + RESTORE_WAIT
        if pending:
            log.info("reliable pusher: %d item(s) from the outbox %s are sent again",
                     len(pending), outbox.path)
        return StreamEncoder(sender=sender, epoch=epoch, stream=stream,
                             max_size=self._sock.max_message_size)

    # -- the application side -------------------------------------------------------------

    def send_nowait(self, body: Any, *, headers: Mapping[str, Any] | None = None) -> None:
        """Take the item into the window and send it, or raise ``trio.WouldBlock`` when
        the window is full. Raises ``EncodeError`` for a body msgpack cannot encode."""
        self._sock.check_open("send")
        core = self._core
        floor = core.room()
        if floor is None:
            self._read_acks()
            floor = core.room()
            if floor is None:
                raise trio.WouldBlock
        was_empty = not core.in_flight
        frame = self._enc.encode(Kind.PUSH, _TOPIC, body, core.next_seq, time_ns(), floor,
                                 headers)
        now = trio.current_time()
        routes = self._routes
        route = None
        if routes and not core.queued():
            # the next in turn, unless it holds its share (then ``_pick`` looks on)
            route = routes[self._turn % len(routes)]
            self._turn += 1
            if core.held_by(route) >= core.window // len(routes):
                route = self._pick()
        if self._outbox is not None:
            self._outbox.add(core.next_seq, frame, route)  # on disk before it is accepted
        if route is not None:
            # The common case: straight onto the wire, to the next puller in turn.
            seq = core.send_now((frame, floor), now)
            try:
                self._sock.send_to_nowait(route, frame)
            except (PeerUnreachable, trio.WouldBlock) as exc:
                if isinstance(exc, PeerUnreachable) and route in self._learned:
                    self._gone.append(route)
                core.unsent(seq)
                self._transmit(now)
            else:
                core.sent(seq, route, now)
        else:
            seq = core.send((frame, floor), now)
            self._transmit(now)
        if not seq & _READ_EVERY_MASK:
            self._read_acks()  # nobody waits on the socket while we send: read now and then
        if was_empty:
            self._arm.set()  # the timer task has a deadline again

    async def send(self, body: Any, *, headers: Mapping[str, Any] | None = None) -> None:
        """Send one item; returns once it is in the window (not when it is processed:
        see ``wait_acked``). Waits while the window is full (backpressure).
        Cancel-safe: if cancelled, the item was not taken."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.send_nowait(body, headers=headers)
        except trio.WouldBlock:
            await self._wait_for(self._core.has_room)
            self.send_nowait(body, headers=headers)
        await self._sock.pace()

    def send_many_nowait(self, bodies: Iterable[Any]) -> int:
        """Take as many of ``bodies``, in order, as the window has room for; return how
        many were taken (the first ones). Never blocks. ``EncodeError`` for a body
        msgpack cannot encode: the ones before it were taken, it and the rest not."""
        taken = 0
        for body in bodies:
            try:
                self.send_nowait(body)
            except trio.WouldBlock:
                break
            taken += 1
        return taken

    async def send_many(self, bodies: Iterable[Any]) -> None:
        """Send every body, in order, as ``send`` would, with one scheduling point for
        the batch; waits while the window is full. If cancelled while waiting (or on
        ``EncodeError``), the items before that point were taken and the rest were not."""
        await trio.lowlevel.checkpoint_if_cancelled()
        items = bodies if isinstance(bodies, list) else list(bodies)
        waited = False
        i = 0
        while i < len(items):
            i += self._take_batch(items, i)
            if i == len(items):
                break
            try:
                self.send_nowait(items[i])
                i += 1
            except trio.WouldBlock:
                await self._wait_for(self._core.has_room)
                waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _take_batch(self, items: list[Any], start: int) -> int:
        """Take as many of ``items[start:]`` as the window has room for (up to about
        ``BATCH_BYTES``), in one go: encoded under one timestamp and floor, sent
        round-robin with one EVENTS read for the batch. Returns how many were taken;
        0 when the batch path does not apply (an outbox, no puller connected, a
        queue to send first: ``send_nowait`` handles those one by one)."""
        core = self._core
        if self._outbox is not None or not self._routes or core.queued():
            return 0
        k = min(core.room_for(), len(items) - start)
        if k <= 0:
            return 0
        floor = core.floor()
        ts = time_ns()
        seq0 = core.next_seq
        encode = self._enc.encode
        frames: list[bytes] = []
        size = 0
        for j in range(k):
            frame = encode(Kind.PUSH, _TOPIC, items[start + j], seq0 + j, ts, floor)
            frames.append(frame)
            size += len(frame)
            if size >= BATCH_BYTES:
                break  # large bodies: the rest in the next batch
        dests = self._deal(len(frames))
        if not dests:
            return 0  # every puller holds its share: send_nowait queues
        k = len(dests)
        del frames[k:]
        was_empty = not core.in_flight
        now = trio.current_time()
        first = core.send_now_many([(f, floor) for f in frames], now)
        sent = self._sock.send_routed_batch_nowait(dests, frames)
        core.sent_many(first, dests[:sent], now)
        if sent < k:
            for seq in range(first + k - 1, first + sent - 1, -1):
                core.unsent(seq)  # in reverse: the queue keeps their order
            self._transmit(now)
        self._read_acks()
        if was_empty:
            self._arm.set()  # the timer task has a deadline again
        return k

    async def wait_acked(self) -> None:
        """Wait until every item sent so far is done at some puller.

        Raises ``DeliveryFailed`` for items given up (listed with their attempts and
        last puller); they are then forgotten. The caller owns the timeout.
        """
        await self._wait_for(lambda: not self._core.in_flight)
        await trio.lowlevel.checkpoint()
        self._raise_failures()

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        """Read acknowledgements (and retransmit what falls due) until ``condition``.

        Parked on the socket; woken by acknowledgements arriving, and (``_wake``) by
        another task of this pusher reading them, or a puller connecting."""
        sock = self._sock
        core = self._core
        self._waiters += 1
        try:
            while True:
                sock.check_open("wait for acknowledgements")
                self._read_acks()
                sent_all = self._transmit()
                if core.gave_up_pending():
                    self._collect_failures()
                if condition():
                    return
                # What is queued and found no puller waits for one (``_wake``), or
                # for a full queue to drain: on the socket when every puller's queue is
                # full, else (its own puller's queue is full) looked at again soon.
                timer = core.get_timer(queued=sent_all)
                full = not sent_all and bool(self._routes) and not self._capped()
                if full and sock.sendable():
                    soon = trio.current_time() + 0.005
                    timer = soon if timer is None else min(timer, soon)
                    full = False
                with trio.move_on_at(math.inf if timer is None else max(timer, 0.0)):
                    if full:
                        await sock.wait_either()
                    else:
                        await sock.wait_receivable()
        finally:
            self._waiters -= 1

    def _wake(self) -> None:
        """Something changed that tasks of this pusher may wait for: the timer task
        looks again, and so does whoever waits in ``_wait_for``."""
        self._arm.set()
        if self._waiters:
            self._sock.interrupt()

    @property
    def dead_letters(self) -> trio.MemoryReceiveChannel[DeadLetter]:
        """Items given up, as they are given up (``async for letter in
        push.dead_letters``). Holds the latest 1024 unread; older unread ones are
        dropped and counted in ``statistics().dead_letters_dropped`` (each was logged
        when given up). ``wait_acked`` reports the same items through
        ``DeliveryFailed``."""
        return self._dead_out

    def _collect_failures(self) -> None:
        """Turn what the core gave up into dead letters (logged, queued, kept for
        ``wait_acked``)."""
        given_up = self._core.gave_up()
        if self._outbox is not None:
            self._outbox.remove(g.seq for g in given_up)
        for g in given_up:
            frame, _floor = g.payload
            msg = decode(frame)
            route = g.destination
            letter = DeadLetter(
                id=msg.id, seq=g.seq, body=msg.body, headers=msg.headers,
                attempts=g.attempts,
                last_peer=route.hex() if isinstance(route, bytes) else None,
                reason=g.reason)
            log.warning("reliable pusher gave up item %s (%s, %d attempts)", letter.id,
                        g.reason, g.attempts)
            self._failed.append(letter)
            try:
                self._dead_in.send_nowait(letter)
            except trio.WouldBlock:
                self._dead_dropped += 1
                try:  # keep the latest: drop the oldest unread
                    self._dead_out.receive_nowait()
                    self._dead_in.send_nowait(letter)
                except (trio.WouldBlock, trio.EndOfChannel):
                    pass
            except trio.BrokenResourceError:
                pass

    def _raise_failures(self) -> None:
        self._collect_failures()
        if self._failed:
            failed, self._failed = self._failed, []
            raise DeliveryFailed(failed)

    def statistics(self) -> ReliablePusherStatistics:
        """An immutable snapshot of this resource's counters."""
        c = self._core
        return ReliablePusherStatistics(
            sent=c.sent_count, acked=c.acked, in_flight=c.in_flight,
            retransmitted=c.retransmitted, redelivered=self._redelivered,
            given_up=c.given_up, disconnects=self._disconnects, restored=self._restored,
            dead_letters_dropped=self._dead_dropped, malformed=self._malformed,
            held={r.hex(): c.held_by(r) for r in self._routes})

    # -- routes (explicit endpoints, or a node's wiring) ---------------------------------------

    def _bind(self, endpoint: str) -> None:
        """Listen at ``endpoint``: pullers that connect there say hello and get items."""
        self._binds = True
        self._connected.update(self._route_of.values())
        self._sock.bind(endpoint)

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None:
        """Connect to a puller at ``endpoint``, known as ``route``.
        ``server_key``: the CURVE public key (Z85) of the listener there, for a socket
        made with ``shoal.security.client_options`` (libzmq reads it at ``connect``)."""
        if self._binds:  # a hello on this route is not one of a puller connecting to us
            self._connected.add(route)
        self._sock.setsockopt(zmq.CONNECT_ROUTING_ID, route)
        if server_key is not None:
            self._sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        self._route_of[endpoint] = route
        self._sock.connect(endpoint)  # used once the monitor reports the handshake
        if endpoint.startswith("inproc://"):
            # inproc has no handshake and libzmq's monitor reports none: the pipe
            # exists once both ends do, and a send before that fails as unreachable.
            self._link_up(endpoint)

    def _link_up(self, endpoint: str) -> None:
        route = self._route_of.get(endpoint)
        if route is not None and route not in self._routes:
            self._routes.append(route)
            self._wake()

    def drop_route(self, route: bytes, endpoint: str, why: str) -> None:
        """Disconnect from a puller; what it held goes to the others."""
        if self._route_of.get(endpoint) == route:
            del self._route_of[endpoint]
        self._holder_gone(route, endpoint, why)
        if not self._sock.closed:
            self._sock.disconnect(endpoint)

    def _link_lost(self, endpoint: str) -> None:
        """The connection to a puller dropped (killed, or its link silent past the ZMTP
        heartbeat timeout). libzmq reconnects by itself; what the puller held and had
        not acknowledged goes to the others now rather than waiting for it. On an
        endpoint this pusher binds, the monitor does not say whose connection it was:
        the pullers that connected there are checked."""
        if self._sock.closed:
            return
        route = self._route_of.get(endpoint)
        if route is None:
            if self._learned:
                now = trio.current_time()
                self._checks = sorted({*self._checks, *(now + t for t in CHECKS)})
                self._wake()
            return
        self._disconnects += 1
        self._holder_gone(route, endpoint, "connection dropped")

    def _learn(self, route: bytes) -> bool:
        """A hello on ``route``: a puller that connected to one of our endpoints.
        False if it cannot be one (this pusher binds nothing, or it is a route of
        our own connections)."""
        if not self._binds or route in self._connected:
            return False
        if route not in self._learned:
            self._learned.add(route)
            self._routes.append(route)
            log.debug("reliable pusher: puller %s connected", route.hex())
            self._wake()
        return True

    def _check_learned(self) -> None:
        """Send an empty frame to each learned puller: libzmq refuses the ones whose
        connection is gone (``ROUTER_MANDATORY``), and they are retired."""
        sock = self._sock
        sock.sendable()  # an EVENTS read: libzmq takes in the pipes that ended
        for route in [r for r in self._routes if r in self._learned]:
            try:
                sock.send_to_nowait(route, HELLO)
            except PeerUnreachable:
                self._gone.append(route)
            except trio.WouldBlock:
                pass  # there, its queue full
        self._retire()

    def _retire(self) -> None:
        """Retire the learned routes a send found gone: what they held goes to the
        other pullers (a puller that comes back says hello again)."""
        while self._gone:
            route = self._gone.pop()
            if route in self._learned:
                self._learned.discard(route)
                self._disconnects += 1
                self._holder_gone(route, f"puller {route.hex()}", "connection dropped")

    def _holder_gone(self, route: bytes, endpoint: str, why: str) -> None:
        """Stop using ``route``; what it acknowledged before going is done, the rest of
        what it held goes out to the other pullers now."""
        if route in self._routes:
            self._routes.remove(route)
        if not self._sock.closed:
            self._read_acks()
        n = self._core.destination_lost(route, trio.current_time())
        self._redelivered += n
        if n:
            log.info("reliable pusher: %s (%s); %d item(s) it held go to other pullers",
                     endpoint, why, n)
        self._transmit()
        self._wake()

    # -- the wire ----------------------------------------------------------------------------

    def _transmit(self, now: float | None = None) -> bool:
        """Put everything due on the wire; False if something found no puller."""
        core = self._core
        if now is None:
            now = trio.current_time()
        todo = core.transmissions(now)
        if not todo:
            return True
        if self._outbox is None:
            sent_all = self._put_on_wire(todo, now, None)
        else:
            placed: list[tuple[bytes, int]] = []
            try:
                sent_all = self._put_on_wire(todo, now, placed)
            finally:
                self._outbox.sent_to(placed)  # where each went: a restart sends it there
        if self._gone:  # learned pullers found gone: theirs go out again, elsewhere
            self._retire()
            return not core.queued()
        return sent_all

    def _put_on_wire(self, todo: list[int], now: float,
                     placed: list[tuple[bytes, int]] | None) -> bool:
        """``_transmit``'s work; ``placed`` collects ``(route, seq)`` of what went."""
        core = self._core
        prior = self._prior
        waiting: list[int] = []  # restored items waiting for their puller
        sock = self._sock
        routes = self._routes
        floor = core.floor()
        left: list[int] = []  # from the first that found no way out on
        for i, seq in enumerate(todo):
            data, encoded_floor = core.payload(seq)
            if encoded_floor != floor:  # a retransmission: tell the current floor
                data = data[:_FLOOR_AT] + _U64.pack(floor) + data[_FLOOR_AT + 8:]
            held_by = core.destination(seq)
            if prior and held_by is None and seq in prior:
                # restored from the outbox: to the puller that had it, if it is there
                if prior[seq] in routes:
                    held_by = prior[seq]  # forgotten once sent
                elif now < self._restore_until:
                    waiting.append(seq)  # it may yet connect: wait for it a little
                    continue
                else:
                    del prior[seq]
            if held_by is not None and held_by in routes:
                # Its puller is still connected (a timer ran out: the acknowledgement
                # is late, the puller slow or its link lossy): send it there again, where
                # it is recognised, never to a second worker.
                try:
                    sock.send_to_nowait(held_by, data)
                except (PeerUnreachable, trio.WouldBlock) as exc:
                    if isinstance(exc, PeerUnreachable) and held_by in self._learned:
                        self._gone.append(held_by)
                    left = todo[i:]
                    break
                core.sent(seq, held_by, now)
                if prior:
                    prior.pop(seq, None)
                if placed is not None:
                    placed.append((held_by, seq))
                continue
            share = self._share()
            for _ in range(len(routes)):
                route = routes[self._turn % len(routes)]
                self._turn += 1
                if core.held_by(route) >= share:
                    continue  # it holds its share of the window (stuck, or slow)
                try:
                    sock.send_to_nowait(route, data)
                except (PeerUnreachable, trio.WouldBlock) as exc:
                    if isinstance(exc, PeerUnreachable) and route in self._learned:
                        self._gone.append(route)
                    continue
                core.sent(seq, route, now)
                if placed is not None:
                    placed.append((route, seq))
                break
            else:
                left = todo[i:]
                break
        for later in reversed(waiting + left):
            core.unsent(later)  # first in line, in order, for the next look
        return not waiting and not left

    def _share(self) -> int:
        """The most a puller may hold of the window (sent to it, not done): one
        puller that stops acknowledging stalls only its share, not the others."""
        return max(1, self._core.window // max(1, len(self._routes)))

    def _pick(self) -> bytes | None:
        """The next puller in turn that holds less than its share, or None."""
        routes = self._routes
        n = len(routes)
        share = self._share()
        held_by = self._core.held_by
        for _ in range(n):
            route = routes[self._turn % n]
            self._turn += 1
            if held_by(route) < share:
                return route
        return None

    def _deal(self, k: int) -> list[bytes]:
        """Destinations for up to ``k`` new items, round-robin over the pullers below
        their share (fewer than ``k`` when the shares run out)."""
        routes = self._routes
        n = len(routes)
        share = self._share()
        held_by = self._core.held_by
        turn = self._turn
        order = [routes[(turn + i) % n] for i in range(n)]
        room = [share - held_by(r) for r in order]
        if min(room) >= k:  # the common case: plain round-robin
            self._turn = turn + k
            return [order[j % n] for j in range(k)]
        dests: list[bytes] = []
        while len(dests) < k and max(room) > 0:
            for i in range(n):
                if room[i] > 0 and len(dests) < k:
                    dests.append(order[i])
                    room[i] -= 1
        self._turn = turn + len(dests)
        return dests

    def _capped(self) -> bool:
        """Every connected puller holds its share: only acknowledgements help."""
        share = self._share()
        return bool(self._routes) and all(self._core.held_by(r) >= share
                                          for r in self._routes)

    def _read_acks(self) -> None:
        got = False
        while raws := self._sock.receive_batch_nowait(256):
            got = True
            for frames in raws:
                self._on_ack(frames)
        if got and self._waiters:
            self._sock.interrupt()  # a waiter parked on the socket may be done now

    def _on_ack(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._malformed += 1
            return
        if not frames[1]:  # a hello
            if not self._learn(frames[0]):
                self._malformed += 1
            return
        try:
            msg = decode(frames[1])
            received, done = msg.body
            if (msg.kind is not Kind.ACK or type(received) is not list
                    or type(done) is not list
                    or not all(type(s) is int for s in (*received, *done))):
                raise ValueError
        except Exception:  # hostile input of any shape: counted, dropped
            self._malformed += 1
            return
        if msg.correlation and msg.correlation != self._tag:
            # for another stream: a pusher this puller reached at the same endpoint
            # before (this one's numbers mean other items)
            log.debug("reliable pusher: ignored an acknowledgement for another stream")
            return
        core = self._core
        core.on_received(received, frames[0], trio.current_time())
        if core.on_done(done) and self._outbox is not None:
            self._outbox.remove(done)

    async def _run(self) -> None:
        """Retransmit what falls due while the application is not sending, until closed.

        It sleeps on the clock, not on the socket: a task parked on the socket would
        make every send pay for an EVENTS refresh. Acknowledgements are read when it
        wakes, by ``send`` now and then, and by whoever waits for room or for acks."""
        sock = self._sock
        core = self._core
        backoff = 0.001
        while not sock.closed:
            self._read_acks()
            checks = self._checks
            if checks and checks[0] <= trio.current_time():
                while checks and checks[0] <= trio.current_time():
                    checks.pop(0)
                self._check_learned()
            sent_all = self._transmit()
            if core.gave_up_pending():
                self._collect_failures()
            if sent_all:
                backoff = 0.001
                timer = core.get_timer()
                # new items get later deadlines than the ones armed; wake at least
                # every rto while anything is in flight, in case one comes earlier
                deadline = (None if timer is None
                            else min(timer, trio.current_time() + core.rto))
            elif self._routes and (self._capped() or not sock.sendable()):
                # Every puller's queue is full: sleep on the socket until one has room
                # or acknowledgements come (parked there, sends pay an EVENTS read;
                # they are failing anyway).
                timer = core.get_timer(queued=False)
                if checks:
                    timer = checks[0] if timer is None else min(timer, checks[0])
                self._waiters += 1
                try:
                    with trio.move_on_at(math.inf if timer is None else max(timer, 0.0)):
                        if self._capped():
                            await sock.wait_receivable()  # acknowledgements free shares
                        else:
                            await sock.wait_either()
                except ClosedError:
                    return
                finally:
                    self._waiters -= 1
                backoff = 0.001
                continue
            elif self._routes:  # its own puller's queue is full (a resend): look again soon
                deadline = trio.current_time() + backoff
                backoff = min(backoff * 2, 0.05)
            else:  # no puller: one connecting wakes us (_wake); in-flight timers run on
                timer = core.get_timer(queued=False)
                deadline = None if timer is None else max(timer, trio.current_time())
                if self._binds:
                    # A puller that connects to us says hello on the socket: wait there
                    # (nothing is being sent meanwhile: it costs the sends nothing).
                    if checks:
                        deadline = checks[0] if deadline is None else min(deadline, checks[0])
                    self._waiters += 1
                    try:
                        with trio.move_on_at(math.inf if deadline is None else deadline):
                            await sock.wait_receivable()
                    except ClosedError:
                        return
                    finally:
                        self._waiters -= 1
                    continue
            if checks:
                deadline = checks[0] if deadline is None else min(deadline, checks[0])
            self._arm = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._arm.wait()

    async def aclose(self) -> None:
        """Close; unacknowledged items are dropped (``statistics().in_flight`` says how many)."""
        if self._core.in_flight:
            if self._outbox is None:
                log.warning("reliable pusher closed with %d item(s) no puller "
                            "acknowledged; they are dropped (open_pusher(outbox=PATH) "
                            "keeps them for the next run)", self._core.in_flight)
            else:
                log.info("reliable pusher closed with %d item(s) no puller "
                         "acknowledged; they stay in the outbox %s and are sent again "
                         "when it reopens", self._core.in_flight, self._outbox.path)
        self._links.close()
        self._sock.close()
        if self._outbox is not None:
            self._outbox.close()
        self._arm.set()
        await trio.lowlevel.checkpoint()


class _ReliableReceiver(BufferedReceiver[T]):
    """The receiving end of reliable push/pull; ``_wrap`` makes what the buffer holds."""

    def __init__(self, sock: Socket, identity: Identity | None, *, batch: int,
                 max_streams: int) -> None:
        super().__init__(sock, batch=batch)
        self._enc = stream_encoder(identity, sock)
        self._dedup = Deduplicator(max_streams=max_streams)
        # Acknowledgements to send, per route: [epoch, stream, received, done], the
        # pusher stream they are for (one per route but across a pusher's restart).
        self._acks: dict[bytes, list[Any]] = {}
        self._done_count = 0
        # delivered into the buffer, not yet done: (sender, epoch, stream, seq) -> route
        self._holding: dict[tuple[str, int, int, int], bytes] = {}
        self._acks_sent = 0
        self._ack_seq = 0
        self._pending_received = 0
        self._last_flush = 0.0
        self._decode_fast = fast_decode(Kind.PUSH)
        self._pushers: dict[str, bytes] = {}  # endpoint -> route, of pushers that bind
        self._pusher_routes: set[bytes] = set()
        self._links: LinkMonitor | None = None

    # -- pushers that bind --------------------------------------------------------------------

    def _connect(self, endpoint: str) -> None:
        """Connect to a pusher bound at ``endpoint``; say hello once connected."""
        route = b"u" + len(self._pushers).to_bytes(4, "big")
        self._sock.setsockopt(zmq.CONNECT_ROUTING_ID, route)
        self._pushers[endpoint] = route
        self._pusher_routes.add(route)
        self._sock.connect(endpoint)
        if endpoint.startswith("inproc://"):
            self._hello(endpoint)  # inproc has no handshake for the monitor to report

    def _hello(self, endpoint: str) -> None:
        """A connection to the pusher at ``endpoint`` is up (again): introduce this
        puller, so that the pusher routes items to it."""
        route = self._pushers.get(endpoint)
        if route is not None and not self._sock.closed:
            try:
                self._sock.send_to_nowait(route, HELLO)
            except (PeerUnreachable, trio.WouldBlock):
                pass  # gone again: the next handshake says hello

    def _wrap(self, msg: Message) -> T:
        raise NotImplementedError

    def _finish_current(self) -> None:
        """Mark done what the application finished by asking for more."""

    _routed = True  # drained with Socket.drain_routed: plain receives, no frame lists

    def _accept_routed(self, route: bytes, frame: bytes, more: bool) -> None:
        msg = None if more else self._decode_fast(frame)
        if msg is None:
            if not frame and not more and route in self._pusher_routes:
                return  # a pusher we connected to checks that we are still there
            msg = self._malformed.check_frame(self._sock, frame, _PUSH, "reliable puller",
                                              more)
            if msg is None:
                return
        epoch = msg.epoch
        stream = msg.stream
        rec = self._acks.get(route)
        if rec is None or rec[1] != stream or rec[0] != epoch:
            rec = self._ack_record(route, epoch, stream)
        rec[2].append(msg.seq)
        self._pending_received += 1
        item = (msg.sender, epoch, stream, msg.seq)
        if not self._dedup.accept(item[:3], msg.seq, msg.correlation):
            holder = self._holding.get(item)
            if holder is None:  # done before: say so again
                rec[3].append(msg.seq)
                self._done_count += 1
            elif holder != route:
                self._holding[item] = route  # its pusher now speaks on this route
            return
        self._holding[item] = route
        self._received += 1
        self._buffer.append(self._wrap(msg))

    def _fill(self) -> int:
        n = super()._fill()
        if self._pending_received >= _ACK_BATCH:
            self._flush(done=False)
        return n

    def _before_wait(self) -> None:
        # What arrived was only copies (or garbage): their acknowledgements go now,
        # or the pusher would wait for them while we wait for it.
        if self._pending_received or self._done_count:
            self._flush(done=True)

    def _mark_done(self, msg: Message) -> bool:
        """The application is done with ``msg``; False if it was not held (done already)."""
        route = self._holding.pop((msg.sender, msg.epoch, msg.stream, msg.seq), None)
        if route is None:
            return False
        rec = self._acks.get(route)
        if rec is None or rec[1] != msg.stream or rec[0] != msg.epoch:
            rec = self._ack_record(route, msg.epoch, msg.stream)
        rec[3].append(msg.seq)
        self._done_count += 1
        if self._done_count >= _ACK_BATCH:
            self._flush(done=True)
        return True

    def receive_nowait(self) -> T:
        """The next item if one is here, else ``trio.WouldBlock``."""
        self._finish_current()
        try:
            return super().receive_nowait()
        except trio.WouldBlock:
            self._flush(done=True)
            raise

    async def receive(self) -> T:
        """Wait for the next item. Cancel-safe."""
        self._finish_current()
        if not self._buffer and not self._fill() and (self._pending_received
                                                       or self._done_count):
            # About to wait with acknowledgements pending: send them within
            # _ACK_DELAY, batching whatever else arrives meanwhile.
            deadline = self._last_flush + _ACK_DELAY
            if trio.current_time() < deadline:
                with trio.move_on_at(deadline):
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
        2 ms or 64 items). Never blocks."""
        if not self._sock.closed:
            self._flush(done=True)

    def _ack_record(self, route: bytes, epoch: int, stream: int) -> list[Any]:
        """The pending acknowledgements of ``route`` for stream ``(epoch, stream)``;
        those pending for another stream on that route (a pusher restarted behind a
        connection this puller made) are sent first."""
        old = self._acks.pop(route, None)
        if old is not None:
            self._send_acks(route, old, done=True)  # if refused, the pusher probes
        rec: list[Any] = [epoch, stream, [], []]
        self._acks[route] = rec
        return rec

    def _flush(self, *, done: bool) -> None:
        self._last_flush = trio.current_time()
        acks = self._acks
        for route in list(acks):
            rec = acks.pop(route)
            kept = self._send_acks(route, rec, done=done)
            if kept:
                # The pusher is not reading (its queue to us is full), or the done
                # ones wait for a later flush: keep them. Only the done ones: a
                # received one is no news once it is done, and the pusher probes
                # for the rest.
                acks[route] = [rec[0], rec[1], [], kept]
                self._done_count += len(kept)

    def _send_acks(self, route: bytes, rec: list[Any], *, done: bool) -> list[int]:
        """Send what ``rec`` (taken out of ``_acks``) holds: the received ones, and
        the done ones if ``done``. Returns the done ones not sent (not ``done``, or
        the pusher's queue to us full); ``_done_count`` no longer counts them."""
        received: list[int] = rec[2]
        finished: list[int] = rec[3]
        self._pending_received -= len(received)
        self._done_count -= len(finished)
        if not done:
            if not received:
                return finished
            finished, kept = [], finished
        else:
            kept = []
            if not received and not finished:
                return kept
        frame = self._enc.encode(Kind.ACK, _TOPIC, [received, finished], self._ack_seq,
                                 time_ns(), ack_tag(rec[0], rec[1]))
        self._ack_seq += 1
        try:
            self._sock.send_to_nowait(route, frame)
            self._acks_sent += 1
        except trio.WouldBlock:
            return finished + kept
        except (PeerUnreachable, ClosedError):
            pass  # the pusher is gone: it sends the items again elsewhere
        return kept

    def statistics(self) -> ReliablePullerStatistics:
        """An immutable snapshot of this resource's counters."""
        return ReliablePullerStatistics(
            received=self._received, duplicates=self._dedup.duplicates,
            held=len(self._holding), acks_sent=self._acks_sent,
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
        await trio.lowlevel.checkpoint()


class ReliablePuller(_ReliableReceiver[Message]):
    """Receives work items at least once over the wire, once to the application.
    A ``trio.abc.ReceiveChannel[Message]``; an item is done when the next is asked for
    (``receive`` or ``async for`` moving on). ``open_puller(reliable=True)``."""

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
        """The next item if one is here, else ``trio.WouldBlock``. Marks the previous
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
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<Delivery {self.id} acked={self._acked}>"


class ManualAckPuller(_ReliableReceiver[Delivery]):
    """A reliable puller whose items are done when ``await item.ack()`` says so
    (``open_puller(reliable=True, manual_ack=True)``); they may be acknowledged in
    any order, from any task of the same trio run."""

    def _wrap(self, msg: Message) -> Delivery:
        return Delivery(self, msg)

    def _ack(self, msg: Message) -> None:
        self._sock.check_open("acknowledge (the item goes to another puller)")
        self._mark_done(msg)
        self._flush(done=True)


@asynccontextmanager
async def open_reliable_pusher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, window: int = 1024, rto: float = 0.5, max_attempts: int = 10,
    give_up_after: float | None = None, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, socket: Socket | None = None,
    outbox: str | os.PathLike[str] | None = None,
) -> AsyncIterator[ReliablePusher]:
    """A reliable pusher bound to ``bind`` (reliable pullers connect and say hello)
    and/or connected to the pullers at ``connect``, or (for a node) over an unconnected
    ``socket`` whose routes the node adds and drops. ``outbox``: a SQLite file keeping
    accepted items until done (see ``shoal.patterns._outbox``)."""
    binds = endpoint_list(bind, "bind")
    eps = endpoint_list(connect, "connect")
    if socket is None:
        require_endpoints(binds, eps, "open_pusher(reliable=True)")
        check_limits(high_water_mark=high_water_mark)
    box = Outbox(outbox) if outbox is not None else None
    try:
        if socket is None:
            socket = Socket.open(zmq.ROUTER, context=context, linger_ms=linger_ms,
                                 options=reliable_options(high_water_mark))
        push = ReliablePusher(socket, identity, window=window, rto=rto,
                              max_attempts=max_attempts, give_up_after=give_up_after,
                              outbox=box)
    except BaseException:
        if box is not None:
            box.close()
        if socket is not None:
            socket.close()
        raise
    push._links.start()  # before any bind or connect: no handshake goes unseen
    async with push, open_service_nursery() as nursery:
        for ep in binds:
            push._bind(ep)
        for i, ep in enumerate(eps):
            push.add_route(b"p" + i.to_bytes(4, "big"), ep)
        nursery.start_soon(push._run)
        nursery.start_soon(push._links.run)
        try:
            yield push
        finally:
            nursery.cancel_scope.cancel()


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
        pull._links = LinkMonitor(socket, pull._hello, lambda _ep: None)
        pull._links.start()  # before any connect: no handshake goes unseen
        async with open_service_nursery() as nursery:
            for ep in connect:
                pull._connect(ep)
            nursery.start_soon(pull._links.run)
            try:
                yield pull
            finally:
                nursery.cancel_scope.cancel()
