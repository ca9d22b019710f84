"""Reliable subscribe: a subscriber that gets, once and in order per publisher,
everything reliable publishers publish on its prefixes after they heard of it.

It introduces itself to each publisher with a ``SubscriberAck`` (its prefixes, and
where the publisher's stream stands here), repeats it every ``heartbeat`` seconds and
after what it receives; ``shoal._core.SubscriberReceiver`` places each publication
(``ChainReceiver``) and says which publisher routes are owed an acknowledgement and
by when. This module moves bytes.

Who speaks first: the side that connects, because the bound side cannot address a
peer before hearing from it. A subscriber that connects names each publisher's
connection itself and introduces itself when libzmq's monitor reports the handshake.
A subscriber that binds answers a hello (an empty frame) from a connection it
accepted with its introduction, and heartbeats that publisher from then on, until a
send finds the connection gone (``ROUTER_MANDATORY``). An empty frame from anywhere
else is malformed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import cast

import anyio
import anyio.lowlevel
import zmq

from shoal._core import (
    ALL,
    FLAG_REPLAYED,
    MAX_PREFIXES,
    Identity,
    Kind,
    Message,
    ReplayedMessage,
    SubscriberReceiver,
    TopicFilter,
    encode_topic,
    fast_decode,
    local_route,
    parse_subscription,
)
from shoal._io import WouldBlock
from shoal._zmq._socket import DEFAULT_LINGER_MS, PeerUnreachable, Socket
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import ClosedError, LocalProtocolError
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    check_limits,
    check_reliable_pubsub_args,
    endpoint_list,
    require_endpoints,
    stream_encoder,
)
from shoal.patterns._links import LinkMonitor
from shoal.patterns._routes import Routes, reliable_options

__all__ = ["ReliableSubscriber", "ReliableSubscriberStatistics", "open_reliable_subscriber"]

log = logging.getLogger("shoal")

_PUBLISH = (Kind.PUBLISH,)
_HELLO_WAIT = 0.01
"""Seconds after a publisher's connection to a bound subscriber is up before the
subscriber looks for its hello (when its application is not reading)."""


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
    filtered: int = 0
    """Publications placed in order but that no wildcard pattern (nor prefix) takes:
    acknowledged like the others, not delivered (publishers filter by prefix only)."""
    replayed: int = 0
    """Publications delivered from a publisher's history (``msg.replayed``), counted in
    ``received`` too."""


class ReliableSubscriber(BufferedReceiver[Message]):
    """Receives, once and in order per publisher, what reliable publishers publish on
    its prefixes. A receive channel of ``Message`` (``async for msg in sub``)."""

    def __init__(self, sock: Socket, identity: Identity | None, *, batch: int,
                 max_streams: int, heartbeat: float, history: int | None = None) -> None:
        super().__init__(sock, batch=batch)
        self._history = ALL if history is None else history
        self._replayed = 0
        self._enc = stream_encoder(identity, sock)
        self._core = SubscriberReceiver(max_streams=max_streams)
        self._prefixes: list[str] = []  # the subscriptions, as given
        self._wire: list[str] = []  # what publishers filter by: each one's literal prefix
        self._filter = TopicFilter()
        self._filtered = 0
        self._heartbeat = heartbeat
        # The publishers: those it connected to, and (once it binds) those that
        # connected to it, learned from their hellos (see the module docstring).
        self._book = Routes(sock)
        self._learned = self._book.learned
        self._nudge = anyio.Event()  # a publisher connected to one of our endpoints
        self._acks_sent = 0
        self._ack_seq = 0
        sock.setsockopt(zmq.ROUTING_ID, b"S" + os.urandom(15))
        self._links = LinkMonitor(sock, self._link_up, lambda _ep: None)
        self._decode_fast = fast_decode(Kind.PUBLISH, topic=True)

    # -- topics ------------------------------------------------------------------------------

    def subscribe(self, prefix: str) -> None:
        """Also receive topics starting with ``prefix`` (``""``: every topic), or
        matching it if it is a wildcard pattern (``site/*/temp``), from the
        publications that follow the publishers hearing of it. Raises
        ``InvalidTopicPattern`` for a malformed pattern."""
        encode_topic(prefix)
        parse_subscription(prefix)
        if prefix not in self._prefixes:
            if len(self._prefixes) >= MAX_PREFIXES:
                raise LocalProtocolError(f"at most {MAX_PREFIXES} prefixes per subscriber")
            self._prefixes.append(prefix)
            self._subscriptions_changed()

    def unsubscribe(self, prefix: str) -> None:
        """Stop receiving topics for ``prefix`` (a prefix or pattern given before)."""
        if prefix not in self._prefixes:
            raise LocalProtocolError(f"not subscribed to {prefix!r}; see .topics")
        self._prefixes.remove(prefix)
        self._subscriptions_changed()

    def _subscriptions_changed(self) -> None:
        subs = [parse_subscription(p) for p in self._prefixes]
        self._filter = TopicFilter(subs)
        # patterns do not travel: publishers hear each one's literal prefix
        self._wire = list(dict.fromkeys(s.prefix for s in subs))
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
        made with ``shoal.security.client_options``."""
        self._book.add(route, endpoint, server_key)

    def _bind(self, endpoint: str) -> None:
        """Listen at ``endpoint``: publishers that connect there say hello and are
        answered with this subscriber's introduction."""
        self._book.bind(endpoint)

    def _learn(self, route: bytes) -> bool:
        """A hello on ``route``: a publisher that connected to one of our endpoints.
        Introduce ourselves to it. False if it cannot be one (this subscriber binds
        nothing, or it is a route of our own connections)."""
        if not self._book.learnable(route):
            return False
        self._book.learn(route)
        self._send_ack(route)
        return True

    def _publisher_routes(self) -> list[bytes]:
        return [*self._book.by_endpoint.values(), *self._learned]

    def drop_route(self, route: bytes, endpoint: str, why: str = "") -> None:
        """Disconnect from a publisher. No goodbye: if it comes back (a link that
        flapped), its book of this subscriber is still there and it resumes in order."""
        self._book.drop(route, endpoint)
        self._core.forget(route)

    def _link_up(self, endpoint: str) -> None:
        route = self._book.by_endpoint.get(endpoint)
        if route is not None:
            self._send_ack(route)  # introduce ourselves at once
        elif self._book.binds:
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
        verdict = self._core.accept(route, (msg.sender, msg.epoch, msg.stream), msg.seq,
                                    msg.correlation)
        if verdict == "deliver" or verdict == "resync":
            if verdict == "resync":
                log.warning("reliable subscriber: publisher %s had dropped this subscriber; "
                            "what it published meanwhile is lost", msg.sender)
            filt = self._filter
            if filt.active and not filt.wanted(msg.topic):
                self._filtered += 1  # placed in the chain (acknowledged), not delivered
                return
            self._received += 1
            if self._history and frame[frame.find(0) + 3] & FLAG_REPLAYED:
                msg = ReplayedMessage(*msg)
                self._replayed += 1
            self._buffer.append(msg)

    def _fill(self) -> int:
        n = super()._fill()
        if self._core.due:
            self._flush()
        if not n and self._buffer:
            # ``_take_hellos`` filled the buffer while a receive waited on the socket:
            # say so, or that receive would wait again with messages here
            return len(self._buffer)
        return n

    def _before_wait(self) -> None:
        if self._core.pending:
            self._flush()

    async def receive(self) -> Message:
        """Wait for the next publication. Cancel-safe."""
        if not self._buffer and not self._fill():
            deadline = self._core.get_timer()
            if deadline is not None:
                # acknowledgements owed: sent by the deadline, batching what comes
                # meanwhile
                io = self._io
                left = deadline - io.current_time()
                if left > 0:
                    with io.move_on_after(left):
                        await self._sock.wait_receivable()
                    self._fill()
                if not self._buffer:
                    self._flush()
        return await super().receive()

    def receive_nowait(self) -> Message:
        """The next publication if one is here, else ``WouldBlock``."""
        try:
            return super().receive_nowait()
        except WouldBlock:
            self._flush()
            raise

    # -- acknowledgements ---------------------------------------------------------------------

    def _flush(self) -> None:
        for route in self._core.routes_to_ack(self._io.current_time()):
            self._send_ack(cast(bytes, route))

    def _ack_all(self) -> None:
        if not self._sock.closed:
            for route in self._publisher_routes():
                self._send_ack(route)

    def _send_ack(self, route: bytes, *, bye: bool = False) -> None:
        ack = self._core.ack(route, self._wire, bye=bye, history=self._history)
        frame = ack.encode(self._enc, self._ack_seq, time_ns())
        self._ack_seq += 1
        try:
            self._sock.send_to_nowait(route, frame)
            self._acks_sent += 1
        except PeerUnreachable:
            if route in self._learned:
                # a publisher that connected to us is gone (it says hello if it comes
                # back): forget it
                self._learned.discard(route)
                self._core.forget(route)
            # else not connected (yet): the next heartbeat or handshake says it
        except (WouldBlock, ClosedError):
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
        next_beat = anyio.current_time()
        while not self._sock.closed:
            if self._book.binds:
                self._take_hellos()
            if anyio.current_time() >= next_beat:
                self._ack_all()
                next_beat = anyio.current_time() + self._heartbeat
            with anyio.CancelScope(deadline=next_beat):
                await self._nudge.wait()
            if self._nudge.is_set():
                self._nudge = anyio.Event()
                await anyio.sleep(_HELLO_WAIT)

    def statistics(self) -> ReliableSubscriberStatistics:
        """An immutable snapshot of this resource's counters."""
        c = self._core.chain
        return ReliableSubscriberStatistics(
            received=self._received, duplicates=c.duplicates, missing=c.missing,
            resyncs=c.resyncs, acks_sent=self._acks_sent, malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason), filtered=self._filtered,
            replayed=self._replayed)

    async def aclose(self) -> None:
        """Close, telling the publishers to forget this subscriber."""
        if not self._sock.closed:
            self._flush()
            for route in self._publisher_routes():
                self._send_ack(route, bye=True)
        self._links.close()
        self._sock.close()
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def open_reliable_subscriber(
    *, bind: Endpoints = None, connect: Endpoints = None, topics: Sequence[str] = ("",),
    identity: Identity | None = None, high_water_mark: int = 1000, batch: int = DEFAULT_BATCH,
    max_streams: int = 4096, heartbeat: float = 0.5,
    context: zmq.Context[zmq.Socket[bytes]] | None = None, socket: Socket | None = None,
    history: int | None = None,
) -> AsyncIterator[ReliableSubscriber]:
    """A reliable subscriber bound to ``bind`` (reliable publishers connect and say
    hello) and/or connected to the publishers at ``connect``, or (for a node) over an
    unconnected ``socket`` whose routes the node adds and drops. ``history``: how many
    of the last publications of each topic to take from a history publisher when
    joining it (None: all it keeps; 0: none)."""
    check_reliable_pubsub_args(heartbeat=heartbeat)
    if isinstance(topics, str):
        raise LocalProtocolError("topics is a list of prefixes: pass [topic], not a str")
    for t in topics:
        encode_topic(t)
        parse_subscription(t)
    if max_streams < 1:
        raise LocalProtocolError("max_streams must be >= 1")
    binds, eps = endpoint_list(bind, "bind"), endpoint_list(connect, "connect")
    if socket is None:
        require_endpoints(binds, eps, "open_subscriber(reliable=True)")
        check_limits(high_water_mark=high_water_mark, batch=batch)
        socket = Socket.open(zmq.ROUTER, context=context, linger_ms=DEFAULT_LINGER_MS,
                             options=reliable_options(high_water_mark))
    sub = ReliableSubscriber(socket, identity, batch=batch, max_streams=max_streams,
                             heartbeat=heartbeat, history=history)
    for t in topics:
        sub.subscribe(t)
    sub._links.start()
    async with sub, open_service_nursery() as nursery:
        for ep in binds:
            sub._bind(ep)
        for i, ep in enumerate(eps):
            sub.add_route(local_route(b"u", i), ep)
        nursery.start_soon(sub._run)
        nursery.start_soon(sub._links.run)
        try:
            yield sub
        finally:
            nursery.cancel_scope.cancel()
