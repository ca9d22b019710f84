"""Reliable publish: every publication reaches every known subscriber whose prefixes
match, in order, once; a subscriber silent longer than ``grace`` is dropped from the
publisher's books, and that is counted and logged.

The wire rules (``docs/PROTOCOL.md``, "Reliable publish/subscribe") in short: both
ends are ROUTERs and either may bind. Subscribers introduce themselves and say where
they stand with ``SubscriberAck``s (``shoal._core``); the publisher keeps a book per
subscriber (``shoal._core.FanoutSender``), filters by prefix itself, and sends each
publication to each matching subscriber's route as a PUBLISH envelope whose ``seq``
numbers the publisher's stream and whose ``correlation`` is the previous publication
sent to that subscriber: the field ``with_correlation`` rewrites per subscriber in the
one encoded frame.

A publisher that connects names each subscriber's connection itself and says hello
when the handshake completes (at once on inproc); it sets a routing id of its own for
its life (a reconnect takes the same route over: ``ROUTER_HANDOVER``). The route of
a publisher's connection stays when the subscriber at that endpoint is restarted: the
publisher drops the book of a subscriber whose route another one answers on
(``FanoutSender``, ``replaced``).

A subscriber gets what is published after its first acknowledgement reached the
publisher (``wait_for_subscribers(n)`` waits for that). A publisher blocks
(``publish`` waits, ``publish_nowait`` raises ``WouldBlock``) while a subscriber
has ``window`` publications unacknowledged, until it catches up or is dropped after
``grace`` seconds of silence.

History (``history=N``): the publisher keeps the last ``N`` publications of each topic
(``shoal._core.HistoryStore``, bounded as a best-effort publisher's is). A subscriber
that joins says in its acknowledgements how deep a history it wants; when its book
opens, the kept publications of its prefixes go into that book alone, first, as new
publications of the stream marked ``FLAG_REPLAYED``: acknowledged, sent again and
placed in order like any other, and everything published after the book opened
follows them, so the seam has neither a hole nor a duplicate. A subscriber the
publisher had dropped and that comes back gets no replay (it resyncs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from time import time_ns
from typing import Any, cast

import anyio
import anyio.lowlevel
import zmq

from shoal._core import (
    ACK_BATCH,
    MAX_TOPIC,
    SPLIT_AT,
    FanoutSender,
    HistoryStore,
    Identity,
    Kind,
    correlation_at,
    decode_subscriber_ack,
    encode_topic,
    local_route,
    pack_tail,
    renumbered,
    with_correlation,
)
from shoal._core._fanout import START, Book
from shoal._io import WouldBlock
from shoal._zmq._socket import DEFAULT_LINGER_MS, PeerUnreachable, Socket
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import DecodeError, EncodeError, LocalProtocolError
from shoal.patterns._acked import BATCH_BYTES, AckedSender
from shoal.patterns._common import (
    Endpoints,
    check_reliable_pubsub_args,
    endpoint_list,
    open_socket,
    publish_item,
    require_endpoints,
    stream_encoder,
)
from shoal.patterns._links import LinkMonitor
from shoal.patterns._publisher_statistics import ReliablePublisherStatistics
from shoal.patterns._routes import Routes, reliable_options

__all__ = ["ReliablePublisher", "ReliablePublisherStatistics", "open_reliable_publisher"]

log = logging.getLogger("shoal")

_CORRELATION = correlation_at(b"")  # a frame's topic and NUL end this far before it
_MANY = 4 * ACK_BATCH
"""The most publications ``publish_many`` takes in one go: a few acknowledgement
batches' worth, so acknowledgements are read between them."""


class ReliablePublisher(AckedSender):
    """Publishes at least once to every known subscriber. ``open_publisher(reliable=True)``."""

    def __init__(self, sock: Socket, identity: Identity | None, *, window: int, rto: float,
                 grace: float, max_subscribers: int, history: int = 0,
                 history_bytes: int = 1, history_topics: int = 1) -> None:
        super().__init__(sock)
        self._history = (HistoryStore(depth=history, max_bytes=history_bytes,
                                      max_topics=history_topics) if history else None)
        self._enc = stream_encoder(identity, sock)
        self._core = FanoutSender(window=window, rto=rto, max_rto=max(rto, 5.0), grace=grace,
                                  max_subscribers=max_subscribers)
        self._topics: dict[str, bytes] = {}
        self._raw_prefix = self._enc.raw_prefix[Kind.PUBLISH]
        # Routes whose pipe refused a send (high-water mark): nothing more goes to them
        # until their resend, which starts from the hole in order. Sending past a hole
        # is wasted (the subscriber cannot place what follows it) and refills the pipe.
        self._stalled: set[Any] = set()
        self._resume = False  # a stalled subscriber acknowledged: resend to it now
        self._watching = False  # the timer task is parked on the socket (see _run)
        self._book = Routes(sock)  # the subscribers that bind: our connections to them
        self._links = LinkMonitor(sock, self._book.hello, lambda _ep: None)

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None:
        """Connect to a subscriber bound at ``endpoint``, known as ``route``; say hello
        once connected (it introduces itself then). ``server_key``: the CURVE public
        key (Z85) of the listener there, for a socket made with
        ``shoal.security.client_options``."""
        if self._book.add(route, endpoint, server_key):
            self._book.hello(endpoint)  # inproc has no handshake for the monitor to report

    @property
    def subscribers(self) -> int:
        """How many subscribers this publisher keeps books for."""
        if not self._sock.closed:
            self._read_acks()
        return len(self._core.books)

    async def wait_for_subscribers(self, n: int = 1) -> None:
        """Wait until at least ``n`` subscribers have introduced themselves; they get
        everything published from then on. The caller owns the timeout."""
        await self._wait_for(lambda: len(self._core.books) >= n, "wait")
        await anyio.lowlevel.checkpoint()

    async def wait_acked(self) -> None:
        """Wait until every subscriber has acknowledged everything published so far
        (a subscriber dropped meanwhile no longer counts). The caller owns the timeout."""
        await self._wait_for(lambda: not self._core.in_flight, "wait")
        await self._io.checkpoint()

    def _wait_plan(self) -> tuple[float | None, bool]:
        self._tick()
        return self._core.get_timer(), False

    def publish_nowait(
        self, topic: str, body: Any, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish, or raise ``WouldBlock`` while a subscriber's window is full.
        Raises ``EncodeError`` for what cannot be sent (nothing is sent)."""
        self._sock.check_open("publish")
        core = self._core
        if not core.has_room():
            self._read_acks()
            if not core.has_room():
                raise WouldBlock
        raw_topic = self._raw_topic(topic)
        frame = self._enc.encode(Kind.PUBLISH, raw_topic, body, core.next_seq, time_ns(), 0,
                                 headers)
        at = correlation_at(raw_topic)
        seq, targets = core.publish(topic, (frame, at), self._io.current_time())
        if self._history is not None:
            self._history.add(raw_topic, frame)
        stalled = self._stalled
        for book, prev in targets:
            if book.route not in stalled:
                self._send(book, frame, at, prev)
        if not seq & 31:
            self._read_acks()
        if targets:
            self._arm.set()
            if self._watching:
                self._stop_watching()

    async def publish(
        self, topic: str, body: Any, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish ``body`` on ``topic`` to every subscriber whose prefix matches;
        waits while one of them has ``window`` publications unacknowledged."""
        await self._io.checkpoint_if_cancelled()
        if not self._core.has_room():
            await self._wait_for(self._core.has_room, "wait")
            await self._io.checkpoint()
        self.publish_nowait(topic, body, headers=headers)
        await self._sock.pace()

    async def publish_many(self, items: Iterable[Any]) -> None:
        """Publish every item, in order, as ``publish`` would: ``(topic, body)`` or
        ``(topic, body, headers)`` each, with one scheduling point for the batch.
        Waits while a subscriber's window is full. If cancelled while waiting (or on
        ``EncodeError``/``LocalProtocolError`` for an item), the items before that
        point were published and the rest were not."""
        await self._io.checkpoint_if_cancelled()
        batch = items if isinstance(items, list) else list(items)
        waited = False
        i = 0
        while True:
            i += self._take_batch(batch, i)
            if i >= len(batch):
                break
            await self._wait_for(self._core.has_room, "wait")  # a window is full
            await self._io.checkpoint()
            waited = True
        if not waited:
            await self._io.cancel_shielded_checkpoint()

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
        ``_MANY``, and about ``BATCH_BYTES``) in one go: encoded under one
        timestamp, entered in the books at once, sent with one EVENTS read. Returns
        how many were published (0: a window is full). An item that cannot be
        encoded raises once the items before it are published."""
        self._sock.check_open("publish")
        core = self._core
        k = min(core.room(), len(items) - start, _MANY)
        if k <= 0:
            self._read_acks()
            k = min(core.room(), len(items) - start, _MANY)
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
            entries.append((topic, (frame, correlation_at(raw_topic))))
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
        _, targets = self._core.publish_many(entries, self._io.current_time())
        history = self._history
        if history is not None:
            for _topic, (frame, at) in entries:
                history.add(frame[:at - _CORRELATION], frame)
        stalled = self._stalled
        routes: list[Any] = []  # routing ids (bytes)
        frames: list[bytes] = []
        sends: list[tuple[Book, int]] = []  # (book, prev) of each frame
        for (_topic, (frame, at)), books in zip(entries, targets, strict=True):
            for book, prev in books:
                if book.route not in stalled:
                    routes.append(book.route)
                    frames.append(with_correlation(frame, at, prev))
                    sends.append((book, prev))
        if routes:
            sent = self._sock.send_routed_batch_nowait(routes, frames)
            for i in range(sent, len(routes)):  # refused: judged one by one
                if routes[i] not in stalled:
                    self._send_frame(*sends[i], frames[i])
            self._arm.set()
            if self._watching:
                self._stop_watching()
        self._read_acks()

    def _send(self, book: Book, frame: bytes, at: int, prev: int) -> bool:
        """Send one publication (the one after ``prev``) to one subscriber; False if
        its pipe is full (the route is then stalled until the subscriber acknowledges
        again or its timer runs out) or it is not connected."""
        return self._send_frame(book, prev, with_correlation(frame, at, prev))

    def _send_frame(self, book: Book, prev: int, data: bytes) -> bool:
        try:
            self._sock.send_to_nowait(cast(bytes, book.route), data)
        except WouldBlock:
            self._stalled.add(book.route)
            self._core.stalled(book, prev)
            return False  # sent, from here on, when it acknowledges or its timer runs out
        except PeerUnreachable:
            return False  # sent again when its timer runs out
        return True

    def _after_acks(self) -> None:
        if self._resume:
            self._resume = False
            self._tick()

    def _on_ack(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 2:
                raise DecodeError("frame-count", f"{len(frames)} frames")
            msg, ack = decode_subscriber_ack(frames[1])
        except DecodeError:  # counted, dropped
            self._malformed += 1
            return
        key = (msg.sender, msg.epoch, msg.stream)
        core = self._core
        if ack.bye:
            if core.on_bye(key):
                log.debug("reliable publisher: subscriber %s left", msg.sender)
            return
        acked = ack.acked
        if (ack.epoch, ack.stream) != (self._enc.epoch, self._enc.stream):
            acked = -1  # it speaks of another publisher, or of our previous life
        now = self._io.current_time()
        known = key in core.books
        book = core.on_ack(key, frames[0], ack.prefixes, acked, now, msg.seq)
        if book is None:
            log.debug("reliable publisher: refused a subscriber (%d already)",
                      core.max_subscribers)
        elif not known and ack.history and self._history is not None and (
                book.last_sent == START):
            self._replay(book, ack.history, now)
        elif frames[0] in self._stalled:
            # Its pipe had filled; an acknowledgement means it has been draining it:
            # carry on from the hole now rather than at the retransmission timer.
            book = core.books.get(key)
            if book is not None and book.route == frames[0]:
                core.resume(book)
                self._resume = True

    def _replay(self, book: Book, depth: int, now: float) -> None:
        """Send a subscriber whose book just opened (nothing sent to it yet) the kept
        publications of its prefixes, at most ``window`` of them (the newest)."""
        assert self._history is not None
        payloads = renumbered(self._history, depth, book.prefixes, self._core.window,
                              self._core.next_seq)
        if not payloads:
            return
        sends = self._core.replay(book, payloads, now)
        if book.route in self._stalled:
            return  # it gets them when it acknowledges again or its timer runs out
        route = cast(bytes, book.route)
        data = [with_correlation(frame, at, prev)
                for (frame, at), (_seq, prev) in zip(payloads, sends, strict=True)]
        sent = self._sock.send_routed_batch_nowait([route] * len(data), data)
        for i in range(sent, len(data)):  # refused: the pipe is full, or not connected
            if not self._send_frame(book, sends[i][1], data[i]):
                break  # the rest when it acknowledges or its timer runs out
        self._arm.set()
        if self._watching:
            self._stop_watching()

    def _tick(self) -> None:
        """Send again what is due; drop subscribers silent past the grace period."""
        resend, dropped = self._core.due(self._io.current_time())
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
        """Read acknowledgements, resend and drop on time, until closed.

        With a history kept, while the application is not publishing (nothing was
        published since the task last looked), the task waits parked on the socket
        instead of asleep: a joining subscriber's first acknowledgement then opens
        its book, and sends its replay, as it arrives, not at the task's next look
        (up to 0.25 s later). A publication wakes it (``_stop_watching``) and it
        sleeps again while the application publishes: a task parked on the socket
        makes every send read the socket's events."""
        sock = self._sock
        io = self._io
        clock = io.clock()
        while not sock.closed:
            published = self._arm.is_set()  # since the last look (or other work came)
            self._read_acks()
            self._tick()
            self._arm = io.Event()  # what this task did itself (a replay) does not count
            timer = self._core.get_timer()
            now = clock()
            deadline = now + 0.25 if timer is None else min(timer, now + 0.1)
            if self._history is not None and not published:
                self._watching = True
                try:
                    if not await self._park_as_waiter(deadline):
                        return  # closed
                finally:
                    self._watching = False
            elif timer is None:  # woken by work to time; looks for new subscribers anyway
                await self._sleep(deadline)
            else:  # not woken by every publication: its timers are later than this
                await anyio.sleep_until(deadline)

    def _stop_watching(self) -> None:
        """A publication went out while the timer task watched the socket: wake it,
        to time the publication (it sleeps while publications are in flight)."""
        self._watching = False
        self._sock.interrupt()

    def statistics(self) -> ReliablePublisherStatistics:
        """An immutable snapshot of this resource's counters."""
        c = self._core
        h = self._history
        return ReliablePublisherStatistics(
            published=c.sent, acked=c.acked, in_flight=c.in_flight,
            retransmitted=c.retransmitted, subscribers=len(c.books),
            dropped_subscribers=c.dropped, undelivered=c.undelivered,
            refused_subscribers=c.refused, malformed=self._malformed, replayed=c.replayed,
            history_topics=0 if h is None else len(h),
            history_bytes=0 if h is None else h.bytes,
            history_evicted=0 if h is None else h.evicted)

    async def aclose(self) -> None:
        """Close; what subscribers have not acknowledged is not sent again."""
        if self._core.in_flight and not self._sock.closed:
            log.warning("reliable publisher closed with %d publication(s) not "
                        "acknowledged by every subscriber; they are not sent again",
                        self._core.in_flight)
        self._links.close()
        self._sock.close()
        self._arm.set()
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def open_reliable_publisher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000,
    window: int = 8192, rto: float = 0.5, grace: float = 10.0, max_subscribers: int = 1024,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, socket: Socket | None = None,
    history: int = 0, history_bytes: int = 64 << 20, history_topics: int = 100_000,
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
                            max_subscribers=max_subscribers, history=history,
                            history_bytes=history_bytes, history_topics=history_topics)
    if eps:
        pub._links.start()  # before any connect: no handshake goes unseen
    async with pub, open_service_nursery() as nursery:
        for i, ep in enumerate(eps):
            pub.add_route(local_route(b"s", i), ep)
        nursery.start_soon(pub._run)
        nursery.start_soon(pub._links.run)
        try:
            yield pub
        finally:
            nursery.cancel_scope.cancel()


