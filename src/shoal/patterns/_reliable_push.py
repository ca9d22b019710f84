"""Reliable push: a pusher that sends each work item at least once, to one puller,
and sends it to another if the one holding it dies or vanishes before it is done.

The wire rules (``docs/PROTOCOL.md``, "Reliable push/pull") in short: the pusher
picks the puller for every item itself (round-robin over the pullers below their
share of the window, ``Turns``) and sends it to that puller's route as a PUSH
envelope whose ``correlation`` carries the pusher's *floor* (lowest sequence number
not yet done; rewritten into a retransmission with ``with_correlation``). Pullers
answer with ``PullAck``s: *received* stops an item's retransmission timer, *done*
takes it out of the window. The state machine is ``shoal._core.ReliableSender``; the
routes (connected, or learned from hellos when the pusher binds) are
``shoal.patterns._routes``; this module moves bytes.

* A pusher that connects names each puller's connection itself and starts using it
  when libzmq's monitor reports the handshake.
* A pusher that binds cannot address a puller before hearing from it: a puller that
  connects says hello after each handshake, and the pusher routes items to whoever
  says hello on a connection it accepted. libzmq's monitor names only the listening
  endpoint when an accepted connection drops, not the peer: the pusher then sends an
  empty frame to each puller it learned that way, at once and a few times over the
  next second (libzmq may take a moment to retire the connection), and
  ``ROUTER_MANDATORY`` refuses the one that is gone, whose items go to the others;
  any send refused that way retires it too.

An acknowledgement tagged for another pusher stream (``ack_tag``: a puller that
reached a previous pusher at the same endpoint) is ignored; a tag of 0 (pullers that
predate it) is taken as the pusher's own.

Given up (no puller received it after ``max_attempts`` transmissions, or older than
``give_up_after`` seconds): ``wait_acked()`` raises ``DeliveryFailed`` naming them,
and they are on ``dead_letters``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from time import time_ns
from typing import Any

import anyio.lowlevel
import zmq

from shoal._core import (
    ACK_TOPIC,
    Identity,
    Kind,
    ReliableSender,
    StreamEncoder,
    ack_tag,
    decode,
    local_route,
)
from shoal._io import WouldBlock
from shoal._process import next_stream, process_identity
from shoal._zmq._socket import DEFAULT_LINGER_MS, PeerUnreachable, Socket
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import DecodeError, LocalProtocolError
from shoal.patterns._acked import BATCH_BYTES
from shoal.patterns._common import (
    Endpoints,
    check_limits,
    endpoint_list,
    require_endpoints,
    stream_encoder,
)
from shoal.patterns._dead_letters import DeadLetter, DeadLetterChannel, DeadLetters
from shoal.patterns._outbox import Outbox
from shoal.patterns._push_wire import PushWire
from shoal.patterns._routes import reliable_options

__all__ = ["DeadLetter", "ReliablePusher", "ReliablePusherStatistics", "open_reliable_pusher"]

log = logging.getLogger("shoal")

_READ_EVERY_MASK = 31
PROBE_AFTER = 2.0
"""Seconds (at least; 4 rto if more) before a pusher asks a puller holding an item
about it again: the repair of a lost done acknowledgement."""
RESTORE_WAIT = 3.0
"""Seconds a pusher reopened on its outbox waits for the puller an unfinished item
went to before (which recognises it) before sending it to another."""


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


class ReliablePusher(PushWire):
    """Sends work items at least once, each to one puller. ``open_pusher(reliable=True)``."""

    def __init__(
        self, sock: Socket, identity: Identity | None, *, window: int, rto: float,
        max_attempts: int, give_up_after: float | None, outbox: Outbox | None = None,
    ) -> None:
        # A puller holding an item is asked again (probed) PROBE_AFTER s after it said
        # so, then doubling: a done acknowledgement lost on the way costs that long.
        self._core = ReliableSender(window=window, rto=rto, max_rto=max(rto, 5.0),
                                    max_attempts=max_attempts, give_up_after=give_up_after,
                                    probe_after=max(4 * rto, PROBE_AFTER))
        super().__init__(sock, self._core, outbox)
        self._restored = 0
        if outbox is None:
            self._enc = stream_encoder(identity, sock)
        else:
            self._enc = self._open_outbox(outbox, identity)
        self._tag = ack_tag(self._enc.epoch, self._enc.stream)
        self._sent_all = True  # the last transmission found a puller for everything
        # One routing id for the pusher's life: a puller answering after a reconnect
        # still reaches it.
        sock.setsockopt(zmq.ROUTING_ID, b"P" + os.urandom(15))
        self._dead = DeadLetters()

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
                           self._io.current_time())
        self._restored = len(pending)
        # Each goes first to the puller it went to before, if that one is there within
        # RESTORE_WAIT: it recognises what it already did (and acknowledges it again)
        # where another puller would do it a second time.
        self._prior = {seq: route for seq, _frame, route in pending if route is not None}
        self._restore_until = self._io.current_time() + RESTORE_WAIT
        if pending:
            log.info("reliable pusher: %d item(s) from the outbox %s are sent again",
                     len(pending), outbox.path)
        return StreamEncoder(sender=sender, epoch=epoch, stream=stream,
                             max_size=self._sock.max_message_size)

    # -- the application side -------------------------------------------------------------

    def send_nowait(self, body: Any, *, headers: Mapping[str, Any] | None = None) -> None:
        """Take the item into the window and send it, or raise ``WouldBlock`` (both
        ``anyio.WouldBlock`` and ``trio.WouldBlock``) when the window is full. Raises
        ``EncodeError`` for a body msgpack cannot encode."""
        self._sock.check_open("send")
        core = self._core
        floor = core.room()
        if floor is None:
            self._read_acks()
            floor = core.room()
            if floor is None:
                raise WouldBlock
        was_empty = not core.in_flight
        frame = self._enc.encode(Kind.PUSH, ACK_TOPIC, body, core.next_seq, time_ns(), floor,
                                 headers)
        now = self._io.current_time()
        route = None
        if self._routes and not core.queued():
            route = self._turns.next()  # the next in turn below its share
        if self._outbox is not None:
            self._outbox.add(core.next_seq, frame, route)  # on disk before it is accepted
        if route is not None:
            # The common case: straight onto the wire, to the next puller in turn.
            seq = core.send_now((frame, floor), now)
            try:
                self._sock.send_to_nowait(route, frame)
            except (PeerUnreachable, WouldBlock) as exc:
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
        await self._io.checkpoint_if_cancelled()
        try:
            self.send_nowait(body, headers=headers)
        except WouldBlock:
            await self._wait_for(self._core.has_room, "wait for acknowledgements")
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
            except WouldBlock:
                break
            taken += 1
        return taken

    async def send_many(self, bodies: Iterable[Any]) -> None:
        """Send every body, in order, as ``send`` would, with one scheduling point for
        the batch; waits while the window is full. If cancelled while waiting (or on
        ``EncodeError``), the items before that point were taken and the rest were not."""
        await self._io.checkpoint_if_cancelled()
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
            except WouldBlock:
                await self._wait_for(self._core.has_room, "wait for acknowledgements")
                waited = True
        if not waited:
            await self._io.cancel_shielded_checkpoint()

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
            frame = encode(Kind.PUSH, ACK_TOPIC, items[start + j], seq0 + j, ts, floor)
            frames.append(frame)
            size += len(frame)
            if size >= BATCH_BYTES:
                break  # large bodies: the rest in the next batch
        dests = self._turns.deal(len(frames))
        if not dests:
            return 0  # every puller holds its share: send_nowait queues
        k = len(dests)
        del frames[k:]
        was_empty = not core.in_flight
        now = self._io.current_time()
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
        await self._wait_for(lambda: not self._core.in_flight, "wait for acknowledgements")
        await self._io.checkpoint()
        self._raise_failures()

    def _do_due(self) -> None:
        self._sent_all = self._transmit()
        if self._core.gave_up_pending():
            self._collect_failures()

    def _wait_plan(self) -> tuple[float | None, bool]:
        # What is queued and found no puller waits for one (``_wake``), or for a full
        # queue to drain: on the socket when every puller's queue is full, else (its
        # own puller's queue is full) looked at again soon.
        sent_all = self._sent_all
        timer = self._core.get_timer(queued=sent_all)
        full = not sent_all and bool(self._routes) and not self._turns.capped()
        if full and self._sock.sendable():
            soon = self._io.current_time() + 0.005
            timer = soon if timer is None else min(timer, soon)
            full = False
        return timer, full

    @property
    def dead_letters(self) -> DeadLetterChannel:
        """Items given up, as they are given up (``async for letter in
        push.dead_letters``; the loop ends once the pusher is closed and the letters
        are read). Holds the latest 1024 unread; older unread ones are dropped and
        counted in ``statistics().dead_letters_dropped`` (each was logged when given
        up). ``wait_acked`` reports the same items through ``DeliveryFailed``."""
        return self._dead.out

    def _collect_failures(self) -> None:
        given_up = self._core.gave_up()
        if self._outbox is not None:
            self._outbox.remove(g.seq for g in given_up)
        self._dead.add(given_up)

    def _raise_failures(self) -> None:
        self._collect_failures()
        self._dead.raise_failures()

    def statistics(self) -> ReliablePusherStatistics:
        """An immutable snapshot of this resource's counters."""
        c = self._core
        return ReliablePusherStatistics(
            sent=c.sent_count, acked=c.acked, in_flight=c.in_flight,
            retransmitted=c.retransmitted, redelivered=self._redelivered,
            given_up=c.given_up, disconnects=self._disconnects, restored=self._restored,
            dead_letters_dropped=self._dead.dropped, malformed=self._malformed,
            held={r.hex(): c.held_by(r) for r in self._routes})

    async def _run(self) -> None:
        """Retransmit what falls due while the application is not sending, until closed.

        It sleeps on the clock, not on the socket: a task parked on the socket would
        make every send pay for an EVENTS refresh. Acknowledgements are read when it
        wakes, by ``send`` now and then, and by whoever waits for room or for acks."""
        sock = self._sock
        core = self._core
        clock = self._io.clock()
        backoff = 0.001
        while not sock.closed:
            self._read_acks()
            checks = self._checks
            if checks and checks[0] <= clock():
                while checks and checks[0] <= clock():
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
                            else min(timer, clock() + core.rto))
            elif self._routes and (self._turns.capped() or not sock.sendable()):
                # Every puller's queue is full: sleep on the socket until one has room
                # or acknowledgements come (parked there, sends pay an EVENTS read;
                # they are failing anyway).
                timer = core.get_timer(queued=False)
                if checks:
                    timer = checks[0] if timer is None else min(timer, checks[0])
                # acknowledgements free shares; room in a queue lets the sends go
                if not await self._park_as_waiter(timer, either=not self._turns.capped()):
                    return
                backoff = 0.001
                continue
            elif self._routes:  # its own puller's queue is full (a resend): look again soon
                deadline = clock() + backoff
                backoff = min(backoff * 2, 0.05)
            else:  # no puller: one connecting wakes us (_wake); in-flight timers run on
                timer = core.get_timer(queued=False)
                deadline = None if timer is None else max(timer, clock())
                if self._book.binds:
                    # A puller that connects to us says hello on the socket: wait there
                    # (nothing is being sent meanwhile: it costs the sends nothing).
                    if checks:
                        deadline = checks[0] if deadline is None else min(deadline, checks[0])
                    if not await self._park_as_waiter(deadline):
                        return
                    continue
            if checks:
                deadline = checks[0] if deadline is None else min(deadline, checks[0])
            await self._sleep(deadline)

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
        self._dead.close()
        self._arm.set()
        await anyio.lowlevel.checkpoint()



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
            push.add_route(local_route(b"p", i), ep)
        nursery.start_soon(push._run)
        nursery.start_soon(push._links.run)
        try:
            yield push
        finally:
            nursery.cancel_scope.cancel()


