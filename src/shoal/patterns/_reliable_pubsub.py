"""Reliable publish/subscribe: every publication reaches every known subscriber whose
prefixes match, in order, once; a subscriber gone longer than a grace period is
dropped from the publisher's books, and that is counted and logged.

Sockets: both ends are ROUTERs, and either may bind (or both bind some endpoints and
connect to others). A subscriber introduces itself with an acknowledgement (ACK
envelope, body ``[prefixes, epoch, stream, acked, bye]``: its topic prefixes, the
publisher stream it last heard on this connection, the last publication of it
delivered in order, and whether it is leaving), repeats it every ``heartbeat``
seconds and after every batch it receives. The publisher filters by prefix itself and
sends each publication to each matching subscriber's route as a PUBLISH envelope
whose ``seq`` numbers the publisher's stream and whose ``correlation`` is the previous
publication sent to that subscriber. The state machines are
``shoal._core.FanoutSender`` and ``ChainReceiver``.

Who speaks first: the side that connects, because the bound side cannot address a
peer before hearing from it.

* A subscriber that connects names each publisher's connection itself
  (``CONNECT_ROUTING_ID``) and introduces itself when libzmq's monitor reports the
  handshake; the publisher learns the subscriber's route (its ``ROUTING_ID``) from that.
* A publisher that connects names each subscriber's connection itself and sends a
  *hello*, an empty frame, when the handshake completes (at once on inproc); it sets a
  routing id of its own for its life (a reconnect takes the same route over:
  ``ROUTER_HANDOVER``). A subscriber that binds answers a hello from a connection it
  accepted with its introduction, and heartbeats that publisher from then on, until a
  send finds the connection gone (``ROUTER_MANDATORY``). An empty frame from anywhere
  else (the publishers it connected to, or a subscriber that binds nothing) is
  malformed, as before. The route of a publisher's connection stays when the
  subscriber at that endpoint is restarted: the publisher drops the book of a
  subscriber whose route another one answers on (``FanoutSender``, ``replaced``).

A subscriber gets what is published after its first acknowledgement reached the
publisher (``wait_for_subscribers(n)`` waits for that). A publisher blocks
(``publish`` waits, ``publish_nowait`` raises ``trio.WouldBlock``) while a subscriber
has ``window`` publications unacknowledged, until it catches up or is dropped after
``grace`` seconds of silence.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import Any, cast

import trio
import zmq

from shoal._core import (
    MAX_TOPIC,
    SPLIT_AT,
    ChainReceiver,
    FanoutSender,
    Identity,
    Kind,
    Message,
    decode,
    encode_topic,
    fast_decode,
    pack_tail,
)
from shoal._core._fanout import Book
from shoal._zmq._socket import DEFAULT_LINGER_MS, PeerUnreachable, Socket
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import ClosedError, EncodeError, LocalProtocolError
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    SocketResource,
    check_limits,
    endpoint_list,
    open_socket,
    publish_item,
    require_endpoints,
    stream_encoder,
)
from shoal.patterns._links import LinkMonitor
from shoal.patterns._reliable_pushpull import BATCH_BYTES, HELLO, reliable_options

__all__ = ["ReliablePublisher", "ReliablePublisherStatistics", "ReliableSubscriber",
           "ReliableSubscriberStatistics", "open_reliable_publisher",
           "open_reliable_subscriber"]

log = logging.getLogger("shoal")

_PUBLISH = (Kind.PUBLISH,)
_ACK_TOPIC = b"\0"
_U64 = struct.Struct("<Q")
_ACK_BATCH = 64
_ACK_DELAY = 0.002
_MAX_PREFIXES = 256
_HELLO_WAIT = 0.01
"""Seconds after a publisher's connection to a bound subscriber is up before the
subscriber looks for its hello (when its application is not reading)."""


@dataclass(frozen=True, slots=True)
class ReliablePublisherStatistics:
    """Counters of a reliable publisher at one moment."""

    published: int
    """Publications that matched at least one subscriber."""
    acked: int
    """(subscriber, publication) pairs acknowledged."""
    in_flight: int
    """Publications some subscriber has not acknowledged yet."""
    retransmitted: int
    """(subscriber, publication) pairs sent again."""
    subscribers: int
    dropped_subscribers: int
    """Subscribers dropped after ``grace`` seconds of silence."""
    undelivered: int
    """Publications the dropped subscribers never acknowledged (given up)."""
    refused_subscribers: int
    malformed: int


@dataclass(frozen=True, slots=True)
class ReliableSubscriberStatistics:
    """Counters of a reliable subscriber at one moment."""

    received: int
    """Publications delivered to the application (each once, in order per publisher)."""
    duplicates: int
    missing: int
    """Publications dropped because one before them was missing (sent again later)."""
    resyncs: int
    """Times a publisher had dropped this subscriber and started over: what was
    published meanwhile never reached it."""
    acks_sent: int
    malformed: int
    malformed_by_reason: Mapping[str, int]


class ReliablePublisher(SocketResource):
    """Publishes at least once to every known subscriber. ``open_publisher(reliable=True)``."""

    def __init__(self, sock: Socket, identity: Identity | None, *, window: int, rto: float,
                 grace: float, max_subscribers: int) -> None:
        self._sock = sock
        self._enc = stream_encoder(identity, sock)
        self._core = FanoutSender(window=window, rto=rto, max_rto=max(rto, 5.0), grace=grace,
                                  max_subscribers=max_subscribers)
        self._topics: dict[str, bytes] = {}
        self._raw_prefix = self._enc.raw_prefix[Kind.PUBLISH]
        self._malformed = 0
        self._arm = trio.Event()
        self._waiters = 0  # tasks in _wait_for
        # Routes whose pipe refused a send (high-water mark): nothing more goes to them
        # until their resend, which starts from the hole in order. Sending past a hole
        # is wasted (the subscriber cannot place what follows it) and refills the pipe.
        self._stalled: set[Any] = set()
        self._resume = False  # a stalled subscriber acknowledged: resend to it now
        self._route_of: dict[str, bytes] = {}  # endpoint -> route, of subscribers that bind
        self._links = LinkMonitor(sock, self._hello, lambda _ep: None)

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None:
        """Connect to a subscriber bound at ``endpoint``, known as ``route``; say hello
        once connected. ``server_key``: the CURVE public key (Z85) of the listener
        there, for a socket made with ``shoal.security.client_options``."""
        self._sock.setsockopt(zmq.CONNECT_ROUTING_ID, route)
        if server_key is not None:
            self._sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        self._route_of[endpoint] = route
        self._sock.connect(endpoint)
        if endpoint.startswith("inproc://"):
            self._hello(endpoint)  # inproc has no handshake for the monitor to report

    def _hello(self, endpoint: str) -> None:
        """A connection to the subscriber at ``endpoint`` is up (again): say hello, so
        that it introduces itself (and says where it stands)."""
        route = self._route_of.get(endpoint)
        if route is not None and not self._sock.closed:
            try:
                self._sock.send_to_nowait(route, HELLO)
            except (PeerUnreachable, trio.WouldBlock):
                pass  # gone again: the next handshake says hello

    @property
    def subscribers(self) -> int:
        """How many subscribers this publisher keeps books for."""
        if not self._sock.closed:
            self._read_acks()
        return len(self._core.books)

    async def wait_for_subscribers(self, n: int = 1) -> None:
        """Wait until at least ``n`` subscribers have introduced themselves; they get
        everything published from then on. The caller owns the timeout."""
        await self._wait_for(lambda: len(self._core.books) >= n)

    async def wait_acked(self) -> None:
        """Wait until every subscriber has acknowledged everything published so far
        (a subscriber dropped meanwhile no longer counts). The caller owns the timeout."""
        await self._wait_for(lambda: not self._core.in_flight)

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        """Read acknowledgements (resending what falls due) until ``condition``.
        Parked on the socket; another task of this publisher reading acknowledgements
        wakes it (``_read_acks``)."""
        sock = self._sock
        self._waiters += 1
        try:
            while True:
                sock.check_open("wait")
                self._read_acks()
                if condition():
                    await trio.lowlevel.checkpoint()
                    return
                self._tick()
                timer = self._core.get_timer()
                with trio.move_on_at(math.inf if timer is None else timer):
                    await sock.wait_receivable()
        finally:
            self._waiters -= 1

    def publish_nowait(
        self, topic: str, body: Any, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish, or raise ``trio.WouldBlock`` while a subscriber's window is full.
        Raises ``EncodeError`` for what cannot be sent (nothing is sent)."""
        self._sock.check_open("publish")
        core = self._core
        if not core.has_room():
            self._read_acks()
            if not core.has_room():
                raise trio.WouldBlock
        raw_topic = self._raw_topic(topic)
        frame = self._enc.encode(Kind.PUBLISH, raw_topic, body, core.next_seq, time_ns(), 0,
                                 headers)
        seq, targets = core.publish(topic, (frame, len(raw_topic) + 44),
                                    trio.current_time())
        stalled = self._stalled
        for book, prev in targets:
            if book.route not in stalled:
                self._send(book, frame, len(raw_topic) + 44, prev)
        if not seq & 31:
            self._read_acks()
        if targets:
            self._arm.set()

    async def publish(
        self, topic: str, body: Any, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish ``body`` on ``topic`` to every subscriber whose prefix matches;
        waits while one of them has ``window`` publications unacknowledged."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._core.has_room():
            await self._wait_for(self._core.has_room)
        self.publish_nowait(topic, body, headers=headers)
        await self._sock.pace()

    async def publish_many(self, items: Iterable[Any]) -> None:
        """Publish every item, in order, as ``publish`` would: ``(topic, body)`` or
        ``(topic, body, headers)`` each, with one scheduling point for the batch.
        Waits while a subscriber's window is full. If cancelled while waiting (or on
        ``EncodeError``/``LocalProtocolError`` for an item), the items before that
        point were published and the rest were not."""
        await trio.lowlevel.checkpoint_if_cancelled()
        batch = items if isinstance(items, list) else list(items)
        waited = False
        i = 0
        while True:
            i += self._take_batch(batch, i)
            if i >= len(batch):
                break
            await self._wait_for(self._core.has_room)  # a window is full
            waited = True
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _raw_topic(self, topic: str) -> bytes:
        """``topic`` encoded with its NUL (remembered for up to 4096 topics)."""
        raw_topic = self._topics.get(topic)
        if raw_topic is None:
            raw_topic = encode_topic(topic) + b"\0"
            if len(self._topics) < 4096:
                self._topics[topic] = raw_topic
        return raw_topic

    def _take_batch(self, items: list[Any], start: int) -> int:
        """Publish as many of ``items[start:]`` as every window has room for (at most
        ``_ACK_BATCH * 4``, and about ``BATCH_BYTES``) in one go: encoded under one
        timestamp, entered in the books at once, sent with one EVENTS read. Returns
        how many were published (0: a window is full). An item that cannot be
        encoded raises once the items before it are published."""
        self._sock.check_open("publish")
        core = self._core
        k = min(core.room(), len(items) - start, _ACK_BATCH * 4)
        if k <= 0:
            self._read_acks()
            k = min(core.room(), len(items) - start, _ACK_BATCH * 4)
            if k <= 0:
                return 0
        ts = time_ns()
        seq = core.next_seq
        encode = self._enc.encode
        prefix = self._raw_prefix
        topics = self._topics
        join = b"".join
        inline = self._sock.max_message_size >= SPLIT_AT + MAX_TOPIC + 64
        entries: list[tuple[str, tuple[bytes, int]]] = []
        error: Exception | None = None
        size = 0
        for item in items[start:start + k]:
            try:
                if type(item) is tuple and len(item) == 2 and type(item[0]) is str:
                    topic, body = item
                    headers = None
                else:
                    topic, body, headers = publish_item(item)
                raw_topic = topics.get(topic) or self._raw_topic(topic)
                if inline and type(body) is bytes and headers is None and len(body) < SPLIT_AT:
                    # the common case as one join: see StreamEncoder.raw_prefix
                    frame = join((raw_topic, prefix, pack_tail(seq, ts, 0), body))
                else:
                    frame = encode(Kind.PUBLISH, raw_topic, body, seq, ts, 0, headers)
            except (EncodeError, LocalProtocolError) as exc:
                error = exc
                break
            entries.append((topic, (frame, len(raw_topic) + 44)))
            seq += 1
            size += len(frame)
            if size >= BATCH_BYTES:
                break  # large bodies: the rest in the next batch
        if entries:
            self._publish_entries(entries)
        if error is not None:
            raise error
        return len(entries)

    def _publish_entries(self, entries: list[tuple[str, tuple[bytes, int]]]) -> None:
        """Enter encoded publications in the books and send each to its subscribers,
        in order; a route whose pipe refuses one is stalled as ``_send`` does."""
        _, targets = self._core.publish_many(entries, trio.current_time())
        stalled = self._stalled
        routes: list[Any] = []  # routing ids (bytes)
        frames: list[bytes] = []
        sends: list[tuple[Book, int]] = []  # (book, prev) of each frame
        pack = _U64.pack
        for (_topic, (frame, at)), books in zip(entries, targets, strict=True):
            for book, prev in books:
                if book.route not in stalled:
                    routes.append(book.route)
                    frames.append(b"".join((frame[:at], pack(prev), frame[at + 8:])))
                    sends.append((book, prev))
        if routes:
            sent = self._sock.send_routed_batch_nowait(routes, frames)
            for i in range(sent, len(routes)):  # refused: judged one by one
                if routes[i] not in stalled:
                    self._send_frame(*sends[i], frames[i])
            self._arm.set()
        self._read_acks()

    def _send(self, book: Book, frame: bytes, at: int, prev: int) -> bool:
        """Send one publication (the one after ``prev``) to one subscriber; False if
        its pipe is full (the route is then stalled until the subscriber acknowledges
        again or its timer runs out) or it is not connected."""
        return self._send_frame(book, prev, frame[:at] + _U64.pack(prev) + frame[at + 8:])

    def _send_frame(self, book: Book, prev: int, data: bytes) -> bool:
        try:
            self._sock.send_to_nowait(cast(bytes, book.route), data)
        except trio.WouldBlock:
            self._stalled.add(book.route)
            self._core.stalled(book, prev)
            return False  # sent, from here on, when it acknowledges or its timer runs out
        except PeerUnreachable:
            return False  # sent again when its timer runs out
        return True

    def _read_acks(self) -> None:
        got = False
        while raws := self._sock.receive_batch_nowait(256):
            got = True
            for frames in raws:
                self._on_ack(frames)
        if self._resume:
            self._resume = False
            self._tick()
        if got and self._waiters:
            self._sock.interrupt()  # a waiter parked on the socket may be done now

    def _on_ack(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 2:
                raise ValueError
            msg = decode(frames[1])
            prefixes, epoch, stream, acked, bye = msg.body
            if (msg.kind is not Kind.ACK or not isinstance(prefixes, list)
                    or len(prefixes) > _MAX_PREFIXES
                    or not all(isinstance(p, str) for p in prefixes)
                    or type(acked) is not int or type(epoch) is not int
                    or type(stream) is not int):
                raise ValueError
        except Exception:  # hostile input of any shape: counted, dropped
            self._malformed += 1
            return
        key = (msg.sender, msg.epoch, msg.stream)
        core = self._core
        if bye:
            if core.on_bye(key):
                log.debug("reliable publisher: subscriber %s left", msg.sender)
            return
        if (epoch, stream) != (self._enc.epoch, self._enc.stream):
            acked = -1  # it speaks of another publisher, or of our previous life
        now = trio.current_time()
        if core.on_ack(key, frames[0], prefixes, acked, now, msg.seq) is None:
            log.debug("reliable publisher: refused a subscriber (%d already)",
                      core.max_subscribers)
        elif frames[0] in self._stalled:
            # Its pipe had filled; an acknowledgement means it has been draining it:
            # carry on from the hole now rather than at the retransmission timer.
            book = core.books.get(key)
            if book is not None and book.route == frames[0]:
                core.resume(book)
                self._resume = True

    def _tick(self) -> None:
        """Send again what is due; drop subscribers silent past the grace period."""
        resend, dropped = self._core.due(trio.current_time())
        if self._stalled:  # forget the routes of subscribers that are gone
            self._stalled &= {book.route for book in self._core.books.values()}
        core = self._core
        for book, entries in resend:
            self._stalled.discard(book.route)
            sent = 0
            for seq, prev in entries:
                frame, at = core.payload(seq)
                if not self._send(book, frame, at, prev):
                    break  # a full pipe: the rest would only refill it; next time
                sent += 1
            core.resent(sent)

        for d in dropped:
            if d.reason == "replaced":
                log.warning("reliable publisher: dropped subscriber %s, replaced by another "
                            "at its endpoint; %d publication(s) never reached it", d.key,
                            d.undelivered)
            else:
                log.warning("reliable publisher: dropped subscriber %s after %.1f s of "
                            "silence; %d publication(s) never reached it", d.key,
                            d.silent_for, d.undelivered)

    async def _run(self) -> None:
        """Read acknowledgements, resend and drop on time, until closed."""
        sock = self._sock
        while not sock.closed:
            self._read_acks()
            self._tick()
            timer = self._core.get_timer()
            now = trio.current_time()
            if timer is None:
                self._arm = trio.Event()
                with trio.move_on_after(0.25):  # heartbeats from new subscribers
                    await self._arm.wait()
            else:
                await trio.sleep_until(min(timer, now + 0.1))

    def statistics(self) -> ReliablePublisherStatistics:
        """An immutable snapshot of this resource's counters."""
        c = self._core
        return ReliablePublisherStatistics(
            published=c.sent, acked=c.acked, in_flight=c.in_flight,
            retransmitted=c.retransmitted, subscribers=len(c.books),
            dropped_subscribers=c.dropped, undelivered=c.undelivered,
            refused_subscribers=c.refused, malformed=self._malformed)

    async def aclose(self) -> None:
        """Close; what subscribers have not acknowledged is not sent again."""
        if self._core.in_flight and not self._sock.closed:
            log.warning("reliable publisher closed with %d publication(s) not "
                        "acknowledged by every subscriber; they are not sent again",
                        self._core.in_flight)
        self._links.close()
        self._sock.close()
        self._arm.set()
        await trio.lowlevel.checkpoint()


class ReliableSubscriber(BufferedReceiver[Message]):
    """Receives, once and in order per publisher, what reliable publishers publish on
    its prefixes. A ``trio.abc.ReceiveChannel[Message]``."""

    def __init__(self, sock: Socket, identity: Identity | None, *, batch: int,
                 max_streams: int, heartbeat: float) -> None:
        super().__init__(sock, batch=batch)
        self._enc = stream_encoder(identity, sock)
        self._chain = ChainReceiver(max_streams=max_streams)
        self._prefixes: list[str] = []
        self._heartbeat = heartbeat
        self._routes: dict[str, bytes] = {}  # endpoint -> route
        # Publishers that connected to an endpoint this subscriber binds: routes learned
        # from their hellos (see the module docstring).
        self._binds = False
        self._connected: set[bytes] = set()  # routes of add_route, once it binds too
        self._learned: set[bytes] = set()
        self._nudge = trio.Event()  # a publisher connected to one of our endpoints
        self._stream_of: dict[bytes, tuple[str, int, int]] = {}  # route -> publisher stream
        self._dirty: set[bytes] = set()  # routes owed an acknowledgement
        self._pending = 0
        self._acks_sent = 0
        self._ack_seq = 0
        self._last_flush = 0.0
        sock.setsockopt(zmq.ROUTING_ID, b"S" + os.urandom(15))
        self._links = LinkMonitor(sock, self._link_up, lambda _ep: None)
        self._decode_fast = fast_decode(Kind.PUBLISH, topic=True)

    # -- topics ------------------------------------------------------------------------------

    def subscribe(self, prefix: str) -> None:
        """Also receive topics starting with ``prefix`` (``""``: every topic), from the
        publications that follow the publishers hearing of it."""
        encode_topic(prefix)
        if prefix not in self._prefixes:
            if len(self._prefixes) >= _MAX_PREFIXES:
                raise LocalProtocolError(f"at most {_MAX_PREFIXES} prefixes per subscriber")
            self._prefixes.append(prefix)
            self._ack_all()

    def unsubscribe(self, prefix: str) -> None:
        """Stop receiving topics for ``prefix`` (a prefix given before)."""
        if prefix not in self._prefixes:
            raise LocalProtocolError(f"not subscribed to {prefix!r}; see .topics")
        self._prefixes.remove(prefix)
        self._ack_all()

    @property
    def topics(self) -> frozenset[str]:
        """The prefixes subscribed to."""
        return frozenset(self._prefixes)

    # -- routes ----------------------------------------------------------------------------

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None:
        """Connect to a publisher at ``endpoint``, known as ``route``.
        ``server_key``: the CURVE public key (Z85) of the listener there, for a socket
        made with ``shoal.security.client_options`` (libzmq reads it at ``connect``)."""
        if self._binds:  # a hello on this route is not one of a publisher connecting to us
            self._connected.add(route)
        self._sock.setsockopt(zmq.CONNECT_ROUTING_ID, route)
        if server_key is not None:
            self._sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        self._routes[endpoint] = route
        self._sock.connect(endpoint)

    def _bind(self, endpoint: str) -> None:
        """Listen at ``endpoint``: publishers that connect there say hello and are
        answered with this subscriber's introduction."""
        self._binds = True
        self._connected.update(self._routes.values())
        self._sock.bind(endpoint)

    def _learn(self, route: bytes) -> bool:
        """A hello on ``route``: a publisher that connected to one of our endpoints.
        Introduce ourselves to it. False if it cannot be one (this subscriber binds
        nothing, or it is a route of our own connections)."""
        if not self._binds or route in self._connected:
            return False
        self._learned.add(route)
        self._send_ack(route)
        return True

    def _publisher_routes(self) -> list[bytes]:
        return [*self._routes.values(), *self._learned]

    def drop_route(self, route: bytes, endpoint: str, why: str = "") -> None:
        """Disconnect from a publisher. No goodbye: if it comes back (a link that
        flapped), its book of this subscriber is still there and it resumes in order."""
        if self._routes.get(endpoint) == route:
            del self._routes[endpoint]
        if not self._sock.closed:
            self._sock.disconnect(endpoint)
        self._stream_of.pop(route, None)
        self._dirty.discard(route)

    def _link_up(self, endpoint: str) -> None:
        route = self._routes.get(endpoint)
        if route is not None:
            self._send_ack(route)  # introduce ourselves at once
        elif self._binds:
            self._nudge.set()  # a publisher connected here: its hello is on the way

    # -- receiving -----------------------------------------------------------------------------

    _routed = True  # drained with Socket.drain_routed: plain receives, no frame lists

    def _accept_routed(self, route: bytes, frame: bytes, more: bool) -> None:
        msg = None if more else self._decode_fast(frame)
        if msg is None:
            if not frame and not more and self._learn(route):
                return  # a hello
            msg = self._malformed.check_frame(self._sock, frame, _PUBLISH,
                                              "reliable subscriber", more)
            if msg is None:
                return
        stream = (msg.sender, msg.epoch, msg.stream)
        self._stream_of[route] = stream
        self._dirty.add(route)
        self._pending += 1
        verdict = self._chain.accept(stream, msg.seq, msg.correlation)
        if verdict == "deliver" or verdict == "resync":
            if verdict == "resync":
                log.warning("reliable subscriber: publisher %s had dropped this subscriber; "
                            "what it published meanwhile is lost", msg.sender)
            self._received += 1
            self._buffer.append(msg)

    def _fill(self) -> int:
        n = super()._fill()
        if self._pending >= _ACK_BATCH:
            self._flush()
        if not n and self._buffer:
            # ``_take_hellos`` filled the buffer while a receive waited on the socket:
            # say so, or that receive would wait again with messages here
            return len(self._buffer)
        return n

    def _before_wait(self) -> None:
        if self._pending:
            self._flush()

    async def receive(self) -> Message:
        """Wait for the next publication. Cancel-safe."""
        if not self._buffer and not self._fill() and self._pending:
            deadline = self._last_flush + _ACK_DELAY
            if trio.current_time() < deadline:
                with trio.move_on_at(deadline):
                    await self._sock.wait_receivable()
                self._fill()
            if not self._buffer:
                self._flush()
        return await super().receive()

    def receive_nowait(self) -> Message:
        """The next publication if one is here, else ``trio.WouldBlock``."""
        try:
            return super().receive_nowait()
        except trio.WouldBlock:
            self._flush()
            raise

    # -- acknowledgements ---------------------------------------------------------------------

    def _flush(self) -> None:
        self._last_flush = trio.current_time()
        self._pending = 0
        dirty, self._dirty = self._dirty, set()
        for route in dirty:
            self._send_ack(route)

    def _ack_all(self) -> None:
        if not self._sock.closed:
            for route in self._publisher_routes():
                self._send_ack(route)

    def _send_ack(self, route: bytes, *, bye: bool = False) -> None:
        stream = self._stream_of.get(route)
        if stream is None:
            epoch, num, acked = -1, -1, -1
        else:
            epoch, num, acked = stream[1], stream[2], self._chain.acked(stream)
        frame = self._enc.encode(Kind.ACK, _ACK_TOPIC, [self._prefixes, epoch, num, acked, bye],
                                 self._ack_seq, time_ns())
        self._ack_seq += 1
        try:
            self._sock.send_to_nowait(route, frame)
            self._acks_sent += 1
        except PeerUnreachable:
            if route in self._learned:
                # a publisher that connected to us is gone (it says hello if it comes
                # back): forget it
                self._learned.discard(route)
                self._stream_of.pop(route, None)
                self._dirty.discard(route)
            # else not connected (yet): the next heartbeat or handshake says it
        except (trio.WouldBlock, ClosedError):
            pass  # its queue is full, or we are closed: the next heartbeat says it

    def _take_hellos(self) -> None:
        """Read the socket on the application's behalf: a publisher that connected to
        one of our endpoints waits for an answer to its hello, and the application
        may not be receiving. At most one batch beyond what the buffer holds."""
        if self._sock.closed or len(self._buffer) >= self._batch:
            return
        if self._fill() and self._buffer:
            self._sock.interrupt()  # a receive waiting on the socket: look at the buffer

    async def _run(self) -> None:
        """Heartbeats: every publisher hears from this subscriber every ``heartbeat``
        seconds, so it keeps its book (and learns where it stands). A subscriber that
        binds also reads hellos then, and just after a publisher connects."""
        next_beat = trio.current_time()
        while not self._sock.closed:
            if self._binds:
                self._take_hellos()
            if trio.current_time() >= next_beat:
                self._ack_all()
                next_beat = trio.current_time() + self._heartbeat
            with trio.move_on_at(next_beat):
                await self._nudge.wait()
            if self._nudge.is_set():
                self._nudge = trio.Event()
                await trio.sleep(_HELLO_WAIT)

    def statistics(self) -> ReliableSubscriberStatistics:
        """An immutable snapshot of this resource's counters."""
        c = self._chain
        return ReliableSubscriberStatistics(
            received=self._received, duplicates=c.duplicates, missing=c.missing,
            resyncs=c.resyncs, acks_sent=self._acks_sent, malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason))

    async def aclose(self) -> None:
        """Close, telling the publishers to forget this subscriber."""
        if not self._sock.closed:
            self._flush()
            for route in self._publisher_routes():
                self._send_ack(route, bye=True)
        self._links.close()
        self._sock.close()
        await trio.lowlevel.checkpoint()


def check_reliable_pubsub_args(*, window: int = 1, rto: float = 1.0, grace: float = 1.0,
                               heartbeat: float = 1.0) -> None:
    """Refuse values that cannot work. (``grace`` should exceed a few of the
    subscribers' ``heartbeat``s, 0.5 s by default; each side only knows its own.)"""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise LocalProtocolError(f"window must be an int >= 1, not {window!r}")
    for name, value in (("rto", rto), ("grace", grace), ("heartbeat", heartbeat)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise LocalProtocolError(f"{name} must be a number > 0, not {value!r}")


@asynccontextmanager
async def open_reliable_publisher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000,
    window: int = 8192, rto: float = 0.5, grace: float = 10.0, max_subscribers: int = 1024,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, socket: Socket | None = None,
) -> AsyncIterator[ReliablePublisher]:
    """A reliable publisher bound to ``bind`` (reliable subscribers connect) and/or
    connected to the reliable subscribers bound at ``connect``, or over a node's bound
    ``socket``."""
    check_reliable_pubsub_args(window=window, rto=rto, grace=grace)
    binds, eps = endpoint_list(bind, "bind"), endpoint_list(connect, "connect")
    if socket is None:
        require_endpoints(binds, eps, "open_publisher(reliable=True)")
        # A publisher that connects is known to the subscribers by its own routing id,
        # the same for its life: a reconnect takes its route over (ROUTER_HANDOVER).
        options = reliable_options(high_water_mark)
        if eps:
            options.append((zmq.ROUTING_ID, b"B" + os.urandom(15)))
        socket = open_socket("open_publisher(reliable=True)", zmq.ROUTER, bind=binds,
                             connect=None, high_water_mark=high_water_mark, context=context,
                             linger_ms=linger_ms, options=options, endpoints_checked=True)
    pub = ReliablePublisher(socket, identity, window=window, rto=rto, grace=grace,
                            max_subscribers=max_subscribers)
    if eps:
        pub._links.start()  # before any connect: no handshake goes unseen
    async with pub, open_service_nursery() as nursery:
        for i, ep in enumerate(eps):
            pub.add_route(b"s" + i.to_bytes(4, "big"), ep)
        nursery.start_soon(pub._run)
        nursery.start_soon(pub._links.run)
        try:
            yield pub
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_reliable_subscriber(
    *, bind: Endpoints = None, connect: Endpoints = None, topics: Sequence[str] = ("",),
    identity: Identity | None = None, high_water_mark: int = 1000, batch: int = DEFAULT_BATCH,
    max_streams: int = 4096, heartbeat: float = 0.5,
    context: zmq.Context[zmq.Socket[bytes]] | None = None, socket: Socket | None = None,
) -> AsyncIterator[ReliableSubscriber]:
    """A reliable subscriber bound to ``bind`` (reliable publishers connect and say
    hello) and/or connected to the publishers at ``connect``, or (for a node) over an
    unconnected ``socket`` whose routes the node adds and drops."""
    check_reliable_pubsub_args(heartbeat=heartbeat)
    if isinstance(topics, str):
        raise LocalProtocolError("topics is a list of prefixes: pass [topic], not a str")
    for t in topics:
        encode_topic(t)
    if max_streams < 1:
        raise LocalProtocolError("max_streams must be >= 1")
    binds, eps = endpoint_list(bind, "bind"), endpoint_list(connect, "connect")
    if socket is None:
        require_endpoints(binds, eps, "open_subscriber(reliable=True)")
        check_limits(high_water_mark=high_water_mark, batch=batch)
        socket = Socket.open(zmq.ROUTER, context=context, linger_ms=DEFAULT_LINGER_MS,
                             options=reliable_options(high_water_mark))
    sub = ReliableSubscriber(socket, identity, batch=batch, max_streams=max_streams,
                             heartbeat=heartbeat)
    for t in topics:
        sub.subscribe(t)
    sub._links.start()
    async with sub, open_service_nursery() as nursery:
        for ep in binds:
            sub._bind(ep)
        for i, ep in enumerate(eps):
            sub.add_route(b"u" + i.to_bytes(4, "big"), ep)
        nursery.start_soon(sub._run)
        nursery.start_soon(sub._links.run)
        try:
            yield sub
        finally:
            nursery.cancel_scope.cancel()
