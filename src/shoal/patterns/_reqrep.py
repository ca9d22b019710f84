"""Request/reply over DEALER (requester) and ROUTER (replier), many requests in flight.

Not REQ/REP: REQ locks up when one reply is lost. Each request carries an id in the
envelope's ``correlation`` field; the reply carries it back and the requester matches
it to the waiting call. DEALER spreads requests round-robin over the repliers it is
connected to. It does not set ``ZMQ_IMMEDIATE``, which would make libzmq discard the
replies already received from a replier that then disconnects; the price is that a
request may queue for a connected endpoint whose replier is down, so a caller that
cannot wait forever uses a timeout (``trio.fail_after``). The ROUTER
sets ``ZMQ_ROUTER_MANDATORY``: a reply to a requester that has gone is counted as
unroutable instead of vanishing, and a full queue applies backpressure.

A replier also answers a plain ZeroMQ REQ socket (or a DEALER that frames like one):
REQ puts an empty delimiter frame before the envelope. The replier notices the empty
first frame, takes the envelope from the frames after it, and puts the delimiter back
in front of its answer, which REQ requires. A DEALER's request never starts with an
empty frame, so this costs its requests one length test.

The requester has no background task. Whichever waiting ``request()`` finds nobody
reading becomes the reader: it drains replies, hands each to its caller, and when its
own reply arrives passes the reader role to another waiting call (leader/follower).
One request in flight thus reads its own reply with no task hand-off.

Routed mode (what a node's requester uses): the socket is a ROUTER that connects to
each replier under a routing id of its own choosing (``add_route``), picks the
replier for each request itself (round-robin over those that accept it) and so knows
where every request went. When a replier vanishes (``drop_route``), the requests
waiting on it fail at once with ``PeerLost`` instead of waiting for a reply that
cannot come; they are not re-sent elsewhere, because the replier may have run them.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import Any

import trio
import zmq

from shoal._core import SPLIT_AT, Identity, Kind, Message, pack_tail
from shoal._zmq._socket import DEFAULT_LINGER_MS, PeerUnreachable, Socket
from shoal.errors import (
    ClosedError,
    EncodeError,
    LocalProtocolError,
    MessageTooLarge,
    PeerLost,
    RemoteError,
)
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    MalformedCounter,
    SocketResource,
    check_busy_poll,
    open_socket,
    stream_encoder,
)
from shoal.patterns._links import LinkMonitor

__all__ = [
    "Replier",
    "ReplierStatistics",
    "Request",
    "Requester",
    "RequesterStatistics",
    "open_replier",
    "open_requester",
    "serve_replier",
]

log = logging.getLogger("shoal")

_ANSWERS = (Kind.REPLY, Kind.ERROR)
_REQUEST = (Kind.REQUEST,)


@dataclass(frozen=True, slots=True)
class RequesterStatistics:
    """Counters of a requester at one moment."""

    sent: int
    """Requests handed to ZeroMQ."""
    replies: int
    """Replies matched to a waiting request (including failures reported by repliers)."""
    remote_errors: int
    """Replies that reported a handler failure (raised as ``RemoteError``)."""
    unmatched: int
    """Replies nobody waited for any more (the request was cancelled or timed out)."""
    lost: int
    """Requests failed with ``PeerLost`` because their replier vanished."""
    retried: int
    """Requests sent again (``retries=``) after a timeout or a vanished replier."""
    in_flight: int
    malformed: int
    malformed_by_reason: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ReplierStatistics:
    """Counters of a replier at one moment."""

    received: int
    """Valid requests delivered into the receive buffer."""
    replied: int
    """Requests answered with ``reply()``."""
    failed: int
    """Requests answered with ``fail()`` (including handler exceptions)."""
    unroutable: int
    """Answers dropped because the requester had gone."""
    duplicates: int
    """Repeated requests (a requester's retry): answered from the reply cache, or
    dropped while the first copy is still being handled; the handler never runs twice."""
    reused_ids: int
    """Requests whose id (sender, epoch, stream, correlation) the reply cache holds for
    a different request: answered with an error (``RemoteError`` at the caller), never
    with the other request's reply."""
    malformed: int
    malformed_by_reason: Mapping[str, int]


class _Pending:
    __slots__ = ("done", "error", "gone", "lost", "reply", "route", "wake")

    def __init__(self) -> None:
        self.done = False
        self.gone = False  # the waiting call has returned or was cancelled
        self.error = False
        self.reply: Message | None = None
        self.wake: trio.Event | None = None
        self.route = b""  # routed mode: the replier the request went to
        self.lost = ""  # routed mode: why that replier is gone


class Requester(SocketResource):
    """Sends requests and matches replies by id. Make one with ``open_requester``."""

    def __init__(
        self, sock: Socket, identity: Identity | None, *, batch: int, routed: bool = False
    ) -> None:
        self._sock = sock
        self._enc = stream_encoder(identity, sock)
        self._head = b"\0" + self._enc.raw_prefix[Kind.REQUEST]
        self._max = sock.max_message_size
        self._batch = batch
        self._routed = routed
        self._frames = 2 if routed else 1
        self._routes: list[bytes] = []
        self._route_of: dict[str, bytes] = {}  # endpoint -> route (routed mode)
        self._turn = 0
        self._routes_changed = trio.Event()
        # Routed mode: a replier's connection dropping (a killed process: its kernel
        # resets the connection) fails the requests it held at once, before the node
        # times the peer out. ``links.run()`` runs in the owner's task group.
        self.links: LinkMonitor | None = None
        if routed:
            self.links = LinkMonitor(sock, self._link_up, self._link_down)
            self.links.start()  # before any connect: no handshake goes unseen
        self._lost = 0
        self._retried = 0
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._followers: deque[_Pending] = deque()
        self._reading = False
        self._malformed = MalformedCounter()
        self._sent = 0
        self._replies = 0
        self._remote_errors = 0
        self._unmatched = 0

    async def request(
        self, body: Any, *, headers: Mapping[str, Any] | None = None, retries: int = 0,
        retry_after: float = 1.0,
    ) -> Any:
        """Send ``body`` to one replier and return the body of its reply.

        Waits as long as it takes: wrap it in ``trio.fail_after`` / ``move_on_after``.
        Many calls may be in flight at once. ``retries``: send the request again, with
        the same id, when no reply came within ``retry_after`` seconds (or when its
        replier vanished), up to ``retries`` times; repliers recognise the id and
        answer a repeat from their reply cache instead of running the handler twice.
        Raises ``RemoteError`` if the replier's handler failed, ``PeerLost`` if the
        replier vanished (no retries left), ``EncodeError`` for a body msgpack cannot
        encode, ``ClosedError`` if the requester is closed. Cancel-safe: a late reply
        to a cancelled call is counted in ``statistics().unmatched`` and dropped.
        """
        msg = await self.request_message(body, headers=headers, retries=retries,
                                         retry_after=retry_after)
        return msg.body

    async def request_message(
        self, body: Any, *, headers: Mapping[str, Any] | None = None, retries: int = 0,
        retry_after: float = 1.0,
    ) -> Message:
        """Like ``request()``, but return the whole reply ``Message`` (headers, sender...)."""
        if not isinstance(retries, int) or retries < 0 or not retry_after > 0:
            raise LocalProtocolError("retries is an int >= 0 and retry_after a number of "
                                     "seconds > 0")
        rid = self._next_id
        frame: bytes | tuple[bytes, bytes]
        if type(body) is bytes and headers is None and len(body) < SPLIT_AT:  # one join
            frame = b"".join((self._head, pack_tail(rid, time_ns(), rid), body))
            if len(frame) > self._max:
                raise MessageTooLarge(len(frame), self._max)
        else:
            head, big = self._enc.encode_parts(Kind.REQUEST, b"\0", body, rid, time_ns(), rid,
                                               headers)
            frame = head if big is None else (head, big)
        self._next_id = rid + 1
        slot = _Pending()
        self._pending[rid] = slot
        try:
            if self._routed:
                slot.route = await self._send_routed(frame)
            elif type(frame) is bytes:
                await self._sock.send(frame)
            else:
                await self._send_split(frame)
            self._sent += 1
            if not retries and not self._reading:
                # one call in flight (the latency path): read our own reply, no hand-off
                await self._read_until(slot)
            for _ in range(retries):
                with trio.move_on_after(retry_after):
                    await self._await_reply(slot)
                if slot.done and not slot.lost:
                    break
                # no answer in time, or its replier vanished: the same request again
                slot.done, slot.lost = False, ""
                await self._send_request(slot, frame)
                self._retried += 1
            await self._await_reply(slot)
        finally:
            slot.gone = True
            del self._pending[rid]
        if slot.lost:
            raise PeerLost(f"request {rid} got no reply: {slot.lost}. It may or may not "
                           "have been processed; retry if the request is idempotent")
        reply = slot.reply
        assert reply is not None
        if slot.error:
            raise RemoteError(str(reply.body))
        return reply

    async def _send_request(self, slot: _Pending, frame: bytes | tuple[bytes, bytes]) -> None:
        if self._routed:
            slot.route = await self._send_routed(frame, avoid=slot.route)
        elif type(frame) is bytes:
            await self._sock.send(frame)
        else:
            await self._send_split(frame)

    async def _send_split(self, frame: Any) -> None:
        """Send a request whose body is a frame of its own (zero-copy)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        while True:
            try:
                sock.send_split_nowait(None, *frame)
            except trio.WouldBlock:
                await sock.wait_sendable()
                continue
            await sock.pace()
            return

    async def _await_reply(self, slot: _Pending) -> None:
        while not slot.done:
            if self._reading:
                slot.wake = trio.Event()
                self._followers.append(slot)
                await slot.wake.wait()
            else:
                await self._read_until(slot)

    async def _send_routed(self, frame: bytes | tuple[bytes, bytes],
                           avoid: bytes = b"") -> bytes:
        """Send to the next replier that takes the request (``avoid``, where it went
        before, only if no other does); return its route."""
        await trio.lowlevel.checkpoint_if_cancelled()
        delay = 0.001
        while True:
            sock = self._sock
            sock.check_open("send a request")
            n = len(self._routes)
            start = self._turn
            self._turn += 1
            order = [self._routes[(start + i) % n] for i in range(n)]
            if avoid in order and n > 1:
                order.remove(avoid)
                order.append(avoid)
            for route in order:
                try:
                    if type(frame) is bytes:
                        sock.send_to_nowait(route, frame)
                    else:
                        sock.send_split_nowait(route, *frame)
                except (PeerUnreachable, trio.WouldBlock):
                    continue  # not connected (yet, or any more), or its queue is full
                await sock.pace()
                return route
            # Nobody took it. A new route wakes us; a connection completing its
            # handshake tells nobody, so with routes known, look again soon.
            changed = self._routes_changed
            with trio.move_on_after(delay if n else math.inf):
                await changed.wait()
            delay = min(delay * 2, 0.05)

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None:
        """Routed mode: connect to a replier at ``endpoint``, known as ``route``.
        ``server_key``: the CURVE public key (Z85) of the listener there, for a socket
        made with ``shoal.security.client_options`` (libzmq reads it at ``connect``)."""
        self._sock.setsockopt(zmq.CONNECT_ROUTING_ID, route)
        if server_key is not None:
            self._sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        self._sock.connect(endpoint)
        self._routes.append(route)
        self._route_of[endpoint] = route
        self._wake_senders()

    def _wake_senders(self) -> None:
        self._routes_changed.set()
        self._routes_changed = trio.Event()

    def _link_up(self, endpoint: str) -> None:
        if endpoint in self._route_of:
            self._wake_senders()  # a request waiting for a replier can go now

    def _link_down(self, endpoint: str) -> None:
        route = self._route_of.get(endpoint)
        if route is not None:
            self._fail_pending(route, f"its connection to the replier at {endpoint} "
                                      "dropped")

    def drop_route(self, route: bytes, endpoint: str, why: str) -> None:
        """Routed mode: disconnect from a replier; requests waiting on it raise
        ``PeerLost(why)``."""
        if route in self._routes:
            self._routes.remove(route)
        if self._route_of.get(endpoint) == route:
            del self._route_of[endpoint]
        if not self._sock.closed:
            self._sock.disconnect(endpoint)
        self._fail_pending(route, why)

    def _fail_pending(self, route: bytes, why: str) -> None:
        """Requests waiting on ``route`` are lost there: re-sent elsewhere (retries)
        or ``PeerLost(why)``."""
        woke = False
        for slot in self._pending.values():
            if slot.route == route and not slot.done:
                slot.done = True
                slot.lost = why
                self._lost += 1
                woke = True
                if slot.wake is not None:
                    slot.wake.set()
        if woke:
            self._sock.interrupt()  # the reading call may be one of them

    async def _read_until(self, slot: _Pending) -> None:
        self._reading = True
        try:
            while not slot.done:
                raws = self._sock.receive_batch_nowait(self._batch)
                if not raws:
                    await self._sock.wait_receivable()
                    continue
                for frames in raws:
                    self._dispatch(frames)
        finally:
            self._reading = False
            # Pass the reader role on: wake one call that still waits for its reply.
            followers = self._followers
            while followers:
                other = followers.popleft()
                if not other.gone and not other.done and other.wake is not None:
                    other.wake.set()
                    break

    def _dispatch(self, frames: list[bytes]) -> None:
        msg = self._malformed.check(frames, _ANSWERS, "requester", nframes=self._frames,
                                    split=True)
        if msg is None:
            return
        slot = self._pending.get(msg.correlation)
        if slot is None or slot.done:
            self._unmatched += 1
            return
        slot.done = True
        slot.reply = msg
        self._replies += 1
        if msg.kind is Kind.ERROR:
            slot.error = True
            self._remote_errors += 1
        if slot.wake is not None:
            slot.wake.set()

    def statistics(self) -> RequesterStatistics:
        """An immutable snapshot of this resource's counters."""
        return RequesterStatistics(
            sent=self._sent,
            replies=self._replies,
            remote_errors=self._remote_errors,
            unmatched=self._unmatched,
            lost=self._lost,
            retried=self._retried,
            in_flight=len(self._pending),
            malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason),
        )

    async def aclose(self) -> None:
        """Close; calls still waiting for a reply raise ``ClosedError``."""
        if self.links is not None:
            self.links.close()
        self._sock.close()
        for slot in self._pending.values():
            if slot.wake is not None:
                slot.wake.set()  # followers re-check and find the socket closed
        await trio.lowlevel.checkpoint()


class Request:
    """One request received by a replier. Answer it once: ``reply()`` or ``fail()``."""

    __slots__ = ("_answered", "_identity", "_replier", "message")
    _delimited = False
    """The requester framed it as REQ does (an empty frame first): so is the answer.
    A class attribute, so DEALER requests pay nothing for it (see ``_ReqRequest``)."""

    def __init__(self, replier: Replier, identity: bytes, message: Message) -> None:
        self._replier = replier
        self._identity = identity
        self._answered = False
        self.message = message
        """The request's full envelope (sender, seq, timestamp...)."""

    @property
    def body(self) -> Any:
        """The request's body, as the requester sent it."""
        return self.message.body

    @property
    def headers(self) -> Mapping[str, Any]:
        """The request's user headers."""
        return self.message.headers

    @property
    def id(self) -> int:
        """The request id, unique among the requester's requests."""
        return self.message.correlation

    @property
    def answered(self) -> bool:
        """Whether ``reply()`` or ``fail()`` has been called."""
        return self._answered

    async def reply(self, body: Any, *, headers: Mapping[str, Any] | None = None) -> None:
        """Send ``body`` back to the requester.

        Raises ``EncodeError`` for a body msgpack cannot encode (the request stays
        unanswered, so ``fail()`` can still report it), ``LocalProtocolError`` if
        the request was already answered. If the requester has gone, the reply is
        dropped and counted in ``statistics().unroutable``.
        """
        await self._replier._answer(self, Kind.REPLY, body, headers)

    async def fail(self, reason: str) -> None:
        """Report failure: the requester's ``request()`` raises ``RemoteError(reason)``."""
        await self._replier._answer(self, Kind.ERROR, str(reason), None)

    def __repr__(self) -> str:
        return f"<Request id={self.id} from={self.message.sender[:8]} body={self.body!r}>"


class _ReqRequest(Request):
    """A request from a REQ socket: its answer leads with the empty delimiter frame."""

    __slots__ = ()
    _delimited = True


class Replier(BufferedReceiver[Request]):
    """Receives ``Request``s; a ``trio.abc.ReceiveChannel[Request]``."""

    _routed = True

    def __init__(self, sock: Socket, identity: Identity | None, *, batch: int,
                 reply_cache: int = 1024) -> None:
        super().__init__(sock, batch=batch)
        self._enc = stream_encoder(identity, sock)
        self._reply_head = b"\0" + self._enc.raw_prefix[Kind.REPLY]
        self._max = sock.max_message_size
        self._seq = 0
        # (sender, epoch, stream, request id) -> [the request's digest, the answer sent
        # or None while handled]; the newest ``reply_cache`` requests, so a retry never
        # runs the handler twice. A retry is the same frame again (send time included):
        # the digest tells it from another request that reuses its id.
        self._answers: OrderedDict[tuple[str, int, int, int],
                                   list[Any]] = OrderedDict()
        self._cache_size = reply_cache
        self._duplicates = 0
        self._reused = 0
        self._replied = 0
        self._failed = 0
        self._unroutable = 0

    def _accept_routed(self, route: bytes, frame: bytes, more: bool) -> None:
        make: type[Request] = Request
        if not frame and more:  # REQ framing: an empty delimiter, then the envelope
            got = self._take_delimited()
            if got is None:
                return
            frame, msg = got
            make = _ReqRequest
        else:
            checked = self._malformed.check_frame(self._sock, frame, _REQUEST, "replier",
                                                  more)
            if checked is None:
                return
            msg = checked
        key = (msg.sender, msg.epoch, msg.stream, msg.correlation)
        answers = self._answers
        digest = hash(frame)  # the first frame holds the send time: enough to tell apart
        entry = answers.get(key)
        if entry is not None:
            if entry[0] != digest:
                self._reused += 1
                self._refuse_reused(route, msg, make._delimited)
                return
            self._duplicates += 1
            cached = entry[1]
            if cached is not None:  # answered already: the answer again, not the handler
                try:
                    self._send_answer(route, cached, make._delimited)
                except (PeerUnreachable, trio.WouldBlock):
                    self._unroutable += 1
            return
        answers[key] = [digest, None]  # being handled
        if len(answers) > self._cache_size:
            answers.popitem(last=False)
        self._received += 1
        self._buffer.append(make(self, route, msg))

    def _take_delimited(self) -> tuple[bytes, Message] | None:
        """A request from a REQ socket: the envelope is in the frames after the empty
        delimiter (one, or two for a split body); anything else is a ``frame-count``.
        Returns the envelope's first frame and the request, or None (counted)."""
        sock = self._sock
        frames = sock.take_rest()
        msg = self._malformed.check(frames, _REQUEST, "replier", split=True)
        if msg is None:
            return None
        if sock.inproc:  # libzmq applies the size bound on tcp and ipc only
            size = sum(len(f) for f in frames)
            if size > sock.max_message_size:
                self._malformed.drop("too-large", "replier",
                                     f"{size} bytes > {sock.max_message_size}")
                return None
        return frames[0], msg

    def _refuse_reused(self, route: bytes, msg: Message, delimited: bool) -> None:
        """Answer a request whose id belongs to another request with an error."""
        text = (f"request id {msg.correlation} was already used by a different request "
                f"from this sender; a requester must not reuse ids")
        log.warning("replier: %s (sender %s)", text, msg.sender)
        frame = self._enc.encode(Kind.ERROR, b"\0", text, self._seq, time_ns(), msg.correlation)
        self._seq += 1
        try:
            self._send_answer(route, frame, delimited)
        except (PeerUnreachable, trio.WouldBlock):
            self._unroutable += 1

    def _send_answer(self, route: bytes, frame: bytes | tuple[bytes, bytes],
                     delimited: bool = False) -> None:
        if delimited:  # a REQ requester: the empty delimiter leads the answer
            parts = [route, b"", frame] if type(frame) is bytes else [route, b"", *frame]
            self._sock.send_nowait(parts)
        elif type(frame) is bytes:
            self._sock.send_to_nowait(route, frame)
        else:
            self._sock.send_split_nowait(route, *frame)

    async def _answer(
        self, req: Request, kind: Kind, body: Any, headers: Mapping[str, Any] | None
    ) -> None:
        if req._answered:
            raise LocalProtocolError(f"request {req.id} was already answered; answer once")
        await trio.lowlevel.checkpoint_if_cancelled()
        m = req.message
        frame: bytes | tuple[bytes, bytes]
        if (type(body) is bytes and headers is None and kind is Kind.REPLY
                and len(body) < SPLIT_AT):  # the hot path: one join
            frame = b"".join((self._reply_head, pack_tail(self._seq, time_ns(), m.correlation),
                              body))
            if len(frame) > self._max:
                raise MessageTooLarge(len(frame), self._max)
        else:
            head, big = self._enc.encode_parts(kind, b"\0", body, self._seq, time_ns(),
                                               m.correlation, headers)
            frame = head if big is None else (head, big)
        req._answered = True
        entry = self._answers.get((m.sender, m.epoch, m.stream, m.correlation))
        if entry is not None:
            entry[1] = frame  # a retry of this request gets this answer
        sock = self._sock
        try:
            while True:
                try:
                    self._send_answer(req._identity, frame, req._delimited)
                except trio.WouldBlock:
                    await sock.wait_sendable()  # the requester's queue is full
                    continue
                break
            if sock.due_to_yield():
                await trio.lowlevel.cancel_shielded_checkpoint()
        except PeerUnreachable:
            self._unroutable += 1
            log.debug("reply to request %d dropped: its requester has gone", req.id)
            return
        except BaseException:
            req._answered = False
            raise
        self._seq += 1
        if kind is Kind.ERROR:
            self._failed += 1
        else:
            self._replied += 1

    def statistics(self) -> ReplierStatistics:
        """An immutable snapshot of this resource's counters."""
        return ReplierStatistics(
            received=self._received,
            replied=self._replied,
            failed=self._failed,
            unroutable=self._unroutable,
            duplicates=self._duplicates,
            reused_ids=self._reused,
            malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason),
        )


@asynccontextmanager
async def open_requester(
    *,
    bind: Endpoints = None,
    connect: Endpoints = None,
    identity: Identity | None = None,
    high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS,
    busy_poll: float = 0.0,
) -> AsyncIterator[Requester]:
    """Open a requester. Requests are spread round-robin over connected repliers.

    ``busy_poll``: seconds a call waiting for its reply spins before it sleeps (see
    the README's "Busy polling": lower latency for a core's worth of CPU)."""
    busy_poll = check_busy_poll(busy_poll)
    sock = open_socket("open_requester", zmq.DEALER, bind=bind, connect=connect,
                       high_water_mark=high_water_mark, batch=batch, context=context,
                       linger_ms=linger_ms, options=requester_options(high_water_mark))
    sock.busy_poll = busy_poll
    async with Requester(sock, identity, batch=batch) as client:
        yield client


@asynccontextmanager
async def open_replier(
    *,
    bind: Endpoints = None,
    connect: Endpoints = None,
    identity: Identity | None = None,
    high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS,
    reply_cache: int = 1024,
    busy_poll: float = 0.0,
) -> AsyncIterator[Replier]:
    """Open a replier: ``async for req in rep: await req.reply(...)``.

    ``reply_cache``: how many recent requests it remembers, so that a request sent
    again (``request(..., retries=N)``) is answered from the cache instead of running
    the handler twice. ``busy_poll``: seconds a receive spins before it sleeps (see
    the README's "Busy polling")."""
    check_reply_cache(reply_cache)
    busy_poll = check_busy_poll(busy_poll)
    sock = open_socket("open_replier", zmq.ROUTER, bind=bind, connect=connect,
                       high_water_mark=high_water_mark, batch=batch, context=context,
                       linger_ms=linger_ms,
                       options=replier_options(high_water_mark))
    sock.busy_poll = busy_poll
    async with Replier(sock, identity, batch=batch, reply_cache=reply_cache) as rep:
        yield rep


def check_reply_cache(reply_cache: object) -> None:
    if isinstance(reply_cache, bool) or not isinstance(reply_cache, int) or reply_cache < 0:
        raise LocalProtocolError(f"reply_cache is an int >= 0, not {reply_cache!r}")


def requester_options(
    high_water_mark: int, *, routed: bool = False
) -> list[tuple[int, int | bytes]]:
    """Socket options of a requester (DEALER; ROUTER in routed mode)."""
    # No ZMQ_IMMEDIATE: with it, libzmq discards the unread replies of a replier that
    # disconnects (a replier that answers and exits would lose its last answers).
    opts: list[tuple[int, int | bytes]] = [
        (zmq.SNDHWM, high_water_mark), (zmq.RCVHWM, high_water_mark)]
    if routed:
        opts.append((zmq.ROUTER_MANDATORY, 1))  # an unconnected route raises, not drops
    return opts


def replier_options(high_water_mark: int) -> list[tuple[int, int | bytes]]:
    """Socket options of a replier (ROUTER, MANDATORY: a gone requester is counted)."""
    return [(zmq.SNDHWM, high_water_mark), (zmq.RCVHWM, high_water_mark),
            (zmq.ROUTER_MANDATORY, 1)]


Handler = Callable[[Request], Any | Awaitable[Any]]
"""``def handler(req: Request) -> reply body`` (or ``async def``)."""

_MISTAKEN_FOR_BODY = ("'Request'", "'_ReqRequest'")
"""How Python names the type in the TypeError/AttributeError of a handler that treats
its ``Request`` as the body (``req["a"]``, ``"a" in req``, ``req.get("a")``, ``req + 1``)."""


def _took_request_for_body(exc: Exception) -> bool:
    """Whether a handler's ``exc`` comes from treating its ``Request`` as the body."""
    return isinstance(exc, TypeError | AttributeError) and any(
        name in str(exc) for name in _MISTAKEN_FOR_BODY)


def _explain(exc: Exception, took_request: bool) -> str:
    """The error reply for a handler that raised ``exc``: its type and message, and for
    a handler that took the ``Request`` for the body, what it got instead."""
    text = f"{type(exc).__name__}: {exc}"
    if took_request:
        text += (" (the handler received a shoal.Request, not the request's body: its "
                 "body is req.body; write def handler(req): ... req.body ...)")
    return text


async def serve_replier(
    handler: Handler,
    *,
    bind: Endpoints = None,
    connect: Endpoints = None,
    identity: Identity | None = None,
    task_status: trio.TaskStatus[Replier] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Answer every request with ``handler(req)`` until cancelled.

    ``handler`` takes the ``Request`` (not its body: the body is ``req.body``, beside
    ``req.headers`` and ``req.message``) and returns the reply body; it may be a plain
    function or an ``async def``::

        def add(req: shoal.Request) -> int:
            return req.body["a"] + req.body["b"]

    Use with ``nursery.start``: it reports the open ``Replier`` (for ``.endpoints``
    and ``statistics()``). An exception in the handler becomes a ``RemoteError`` at
    the caller and serving goes on; so does a return value msgpack cannot encode. A
    handler that treats the ``Request`` as the body (``req["a"]``, ``req.get("a")``)
    fails with a ``TypeError``/``AttributeError`` whose reply, and log warning, says
    so. ``options`` go to ``open_replier``.
    """
    warned = False
    async with open_replier(bind=bind, connect=connect, identity=identity, **options) as rep:
        task_status.started(rep)
        async for req in rep:
            try:
                result = handler(req)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                took_request = _took_request_for_body(exc)
                text = _explain(exc, took_request)
                if took_request and not warned:
                    warned = True  # once per replier: the handler is wrong every time
                    log.warning("serve_replier: handler %r failed: %s", handler, text)
                else:
                    log.debug("handler failed on request %d: %r", req.id, exc)
                await req.fail(text)
                continue
            try:
                await req.reply(result)
            except EncodeError as exc:
                await req.fail(f"the handler's result could not be encoded: {exc}")
            except ClosedError:
                return
