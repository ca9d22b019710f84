"""The replying end of request/reply: a ROUTER that answers each request on the
connection it came in on, with the request's id in the answer's ``correlation``.

Its ``ROUTER_MANDATORY`` makes an answer to a requester that has gone count as
unroutable instead of vanishing, and a full queue apply backpressure. It also
answers a plain ZeroMQ REQ socket (or a DEALER that frames like one): REQ puts an
empty delimiter frame before the envelope; the replier takes the envelope from the
frames after it and puts the delimiter back in front of its answer. A DEALER's
request never starts with an empty frame, so this costs its requests one length
test. Recent answers are cached (``reply_cache``) so that a request sent again is
answered without running the handler twice. The requesting end and the protocol as a
whole: ``shoal.patterns._requester``.

Deadlines: a request may carry the time its caller still waits (``FLAG_DEADLINE``).
The replier turns it into ``Request.deadline`` on its own event loop's clock, counting from
when the request arrived. libzmq does not say when that was, so the replier takes
the last moment it knew the queue to be empty: the end of the previous drain that
emptied it, or, after waiting for the socket, the moment it woke (which a request
arriving causes). A request that sat in libzmq's queue while the application was
busy thus has that time counted against it, as its caller does. A request whose
deadline has passed by the time the application takes it is dropped, not handed out
(``statistics().expired``): its caller has stopped waiting, so an answer would only
cost a message it counts as unmatched (a caller with ``deadline=`` raises
a timeout error on its own). The request is forgotten by the reply cache, so a
retry of it that arrives later runs. ``serve_replier`` runs each handler under
a cancel scope with deadline ``req.deadline``: a handler still running when its caller gives up
is cancelled (``cut_short``), and a request it makes itself carries what is left of
that time on.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import Any

import zmq

from shoal._core import FLAG_DEADLINE, SPLIT_AT, Identity, Kind, Message, pack_tail, request_budget
from shoal._io import WouldBlock
from shoal._zmq._socket import DEFAULT_LINGER_MS, PeerUnreachable, Socket
from shoal.errors import (
    LocalProtocolError,
    MessageTooLarge,
)
from shoal.patterns._common import (
    DEFAULT_BATCH,
    BufferedReceiver,
    Endpoints,
    check_busy_poll,
    open_socket,
    stream_encoder,
)

__all__ = ["Replier", "ReplierStatistics", "Request", "check_reply_cache", "open_replier",
           "replier_options"]

log = logging.getLogger("shoal")

_REQUEST = (Kind.REQUEST,)
_INF = math.inf
_new_message = tuple.__new__


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
    expired: int
    """Requests dropped unanswered because their caller's deadline had passed when the
    application came to take them (the handler never saw them)."""
    cut_short: int
    """Requests whose handler ``serve_replier`` cancelled at the caller's deadline
    (no answer sent)."""
    malformed: int
    malformed_by_reason: Mapping[str, int]


class Request:
    """One request received by a replier. Answer it once: ``reply()`` or ``fail()``."""

    __slots__ = ("_answered", "_identity", "_replier", "deadline", "message")
    _delimited = False
    """The requester framed it as REQ does (an empty frame first): so is the answer.
    A class attribute, so DEALER requests pay nothing for it (see ``_ReqRequest``)."""

    def __init__(self, replier: Replier, identity: bytes, message: Message,
                 deadline: float = _INF) -> None:
        self._replier = replier
        self._identity = identity
        self._answered = False
        self.message = message
        """The request's full envelope (sender, seq, timestamp...)."""
        self.deadline = deadline
        """When the caller stops waiting, on the event loop's clock (compare with
        ``anyio.current_time()`` or ``trio.current_time()``, or use
        ``with anyio.CancelScope(deadline=req.deadline)``; under asyncio ``loop.time()``);
        ``math.inf`` when the request carried no deadline."""

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
    """Receives ``Request``s: a receive channel of them (``BufferedReceiver``)."""

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
        self._expired = 0
        self._cut_short = 0
        # the loop's clock, bound: a drain reads it (trio.current_time() costs 3x as much)
        self._now = self._io.clock()
        self._since = self._now()  # the queue was last known empty then
        self._woke = False  # the last drain found nothing: the caller waited since

    def _fill(self) -> int:
        """Drain, then note when the queue was last known empty (see the module
        docstring): what the next drain finds arrived after that. One clock read per
        drain that finds requests, none for one that finds the queue empty."""
        woke = self._woke
        if woke:  # waited for the socket: what is queued came as it woke us
            self._since = self._now()
        n = BufferedReceiver._fill(self)
        if n == 0:
            self._woke = True  # whatever comes next wakes us (or is found at once)
        else:
            self._woke = False
            if n < self._batch and not woke:
                self._since = self._now()
        return n

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
                except (PeerUnreachable, WouldBlock):
                    self._unroutable += 1
            return
        answers[key] = [digest, None]  # being handled
        if len(answers) > self._cache_size:
            answers.popitem(last=False)
        self._received += 1
        if frame[0] or frame[3] & FLAG_DEADLINE:  # a topic, or the flag: look closer
            budget = request_budget(frame)
            if budget >= 0:  # its seq is the budget: give the message its usual seq
                t, b, k, sender, epoch, stream, _, ts, corr, headers = msg
                # (the tuple's own constructor: NamedTuple._replace costs a microsecond)
                msg = _new_message(Message, (t, b, k, sender, epoch, stream, corr, ts, corr,
                                             headers))
                self._buffer.append(make(self, route, msg, self._since + budget / 1e6))
                return
        self._buffer.append(make(self, route, msg))

    def _live(self, req: Request) -> bool:
        """Whether ``req`` may go to the application: its caller still waits.
        Otherwise it is counted and forgotten (a later retry of it may run)."""
        if req.deadline == _INF or req.deadline > self._now():
            return True
        self._expired += 1
        self._forget(req)
        log.debug("replier: request %d expired before it was taken", req.id)
        return False

    def _forget(self, req: Request) -> None:
        m = req.message
        entry = self._answers.get((m.sender, m.epoch, m.stream, m.correlation))
        if entry is not None and entry[1] is None:
            del self._answers[(m.sender, m.epoch, m.stream, m.correlation)]

    def cut_short(self, req: Request) -> None:
        """Give up ``req`` unanswered because its caller's deadline passed (what
        ``serve_replier`` does for a handler it cancelled): counted in
        ``statistics().cut_short``, and forgotten by the reply cache."""
        if not req._answered:
            self._cut_short += 1
            self._forget(req)

    def receive_nowait(self) -> Request:
        """The next request if one is here, else ``WouldBlock``; requests whose
        caller's deadline has passed are skipped (``statistics().expired``)."""
        while True:
            req = BufferedReceiver.receive_nowait(self)
            if req.deadline == _INF or self._live(req):
                return req

    async def receive(self) -> Request:
        """Wait for the next request whose caller still waits (see ``receive_nowait``).
        Cancel-safe."""
        while True:
            req = await BufferedReceiver.receive(self)
            if req.deadline == _INF or self._live(req):
                return req

    async def receive_batch(self) -> list[Request]:
        """Wait for at least one request, then return every one already here."""
        first = await self.receive()
        rest = [r for r in self._buffer if r.deadline == _INF or self._live(r)]
        self._buffer.clear()
        return [first, *rest]

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
        except (PeerUnreachable, WouldBlock):
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
        await self._io.checkpoint_if_cancelled()
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
                except WouldBlock:
                    await sock.wait_sendable()  # the requester's queue is full
                    continue
                break
            if sock.due_to_yield():
                await self._io.cancel_shielded_checkpoint()
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
            expired=self._expired,
            cut_short=self._cut_short,
            malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason),
        )


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


def replier_options(high_water_mark: int) -> list[tuple[int, int | bytes]]:
    """Socket options of a replier (ROUTER, MANDATORY: a gone requester is counted)."""
    return [(zmq.SNDHWM, high_water_mark), (zmq.RCVHWM, high_water_mark),
            (zmq.ROUTER_MANDATORY, 1)]
