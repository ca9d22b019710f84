"""Request/reply over DEALER (requester) and ROUTER (replier), many requests in flight.

Not REQ/REP: REQ locks up when one reply is lost. Each request carries an id in the
envelope's ``correlation`` field; the reply carries it back and the requester matches
it to the waiting call. DEALER spreads requests round-robin over the repliers it is
connected to. It does not set ``ZMQ_IMMEDIATE``, which would make libzmq discard the
replies already received from a replier that then disconnects; the price is that a
request may queue for a connected endpoint whose replier is down, so a caller that
cannot wait forever uses a timeout (``trio.fail_after``, ``anyio.fail_after``,
``asyncio.timeout``). The ROUTER
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
replier for each request itself and so knows where every request went: the one with
the fewest of this requester's requests in flight, ties in turn, a replier that
holds a request far past its usual latency last (``shoal._core._balance``). When a
replier vanishes (``drop_route``), the requests waiting on it fail at once with
``PeerLost`` instead of waiting for a reply that cannot come; they are not re-sent
elsewhere, because the replier may have run them.

Hedging (``hedge_after=``): a request with no reply after that long is sent again,
byte for byte, to another replier; the first answer wins. The replier that loses is
not told: a cancel message would cost a send on the latency path for every hedge and
a new message kind older repliers drop, to save work that has mostly started by
then; the copy carries the caller's deadline, so a loser that has not reached it
when the caller is done skips it anyway.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Mapping
from time import time_ns
from typing import Any

from shoal._core import FLAG_DEADLINE, SPLIT_AT, Identity, Kind, Message, pack_tail
from shoal._core._balance import Balancer, LatencyEstimator
from shoal._io import WouldBlock
from shoal._io._loop import Wake
from shoal._zmq._socket import PeerUnreachable, Socket
from shoal.errors import (
    LocalProtocolError,
    MessageTooLarge,
    PeerLost,
    RemoteError,
)
from shoal.patterns._common import (
    MalformedCounter,
    SocketResource,
    stream_encoder,
)
from shoal.patterns._links import LinkMonitor
from shoal.patterns._request_slots import (
    _INF,
    _MAX_BUDGET,
    _MAX_RECENT_HEDGED,
    _MIN_SAMPLES,
    RequesterStatistics,
    _Pending,
    check_deadline,
    check_hedge_after,
    requester_options,
)
from shoal.patterns._routes import connect_route
from shoal.patterns._scatter import Scatter

__all__ = ["Requester", "RequesterStatistics", "requester_options"]

log = logging.getLogger("shoal")

_ANSWERS = (Kind.REPLY, Kind.ERROR)

class Requester(SocketResource, Scatter):
    """Sends requests and matches replies by id. Make one with ``open_requester``."""

    def __init__(
        self, sock: Socket, identity: Identity | None, *, batch: int, routed: bool = False
    ) -> None:
        self._sock = sock
        self._io = sock.loop
        self._enc = stream_encoder(identity, sock)
        self._head = b"\0" + self._enc.raw_prefix[Kind.REQUEST]
        self._head_timed = b"\0" + self._enc.prefix(Kind.REQUEST, 1 | FLAG_DEADLINE)
        self._max = sock.max_message_size
        self._batch = batch
        self._routed = routed
        self._frames = 2 if routed else 1
        self._route_of: dict[str, bytes] = {}  # endpoint -> route (routed mode)
        self._balance = Balancer()  # routed mode: who gets the next request
        self._latency = LatencyEstimator()  # for hedge_after="p95"
        self._hedged = 0
        self._hedge_wasted = 0
        self._recent_hedged: OrderedDict[int, None] = OrderedDict()
        self._routes_changed: Wake = self._io.Event()
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
        retry_after: float = 1.0, deadline: float | None = None,
        hedge_after: float | str | None = None,
    ) -> Any:
        """Send ``body`` to one replier and return the body of its reply.

        Waits as long as it takes: wrap it in a timeout (``trio.fail_after``,
        ``anyio.fail_after``, ``asyncio.timeout``...). The request carries the
        innermost cancel scope's deadline (trio's, or AnyIO's under asyncio: an
        ``asyncio.timeout`` cannot be read, so there use ``deadline=``) as the time
        the caller still waits: a replier skips a request whose caller has stopped waiting, and
        ``serve_replier`` cancels its handler then (``Request.deadline``).
        ``deadline``: seconds from now; sent instead of the cancel scope's, and the
        call raises ``trio.TooSlowError`` (under asyncio ``TimeoutError``) when they
        have passed without a reply.
        ``hedge_after``: seconds (or ``"p95"``, a percentile of this requester's own
        recent latency, ``latency()``; no hedging until it has measured 20 round
        trips) after which, with no reply yet, the same request (same id) also goes
        to another replier; the first answer wins and later ones are dropped
        (``statistics().hedge_wasted``). No replier runs one request twice: a copy
        that reaches the same replier is answered from its reply cache. Over a
        node, the copy goes to a replier the request has not been to; a plain
        requester's copy goes where libzmq's round-robin sends it. The retry timer
        (``retries``) starts after the hedge was sent.
        Many calls may be in flight at once. ``retries``: send the request again, with
        the same id, when no reply came within ``retry_after`` seconds (or when its
        replier vanished), up to ``retries`` times; repliers recognise the id and
        answer a repeat from their reply cache instead of running the handler twice.
        Raises ``RemoteError`` if the replier's handler failed, ``PeerLost`` if the
        replier vanished (no retries left), ``EncodeError`` for a body msgpack cannot
        encode, ``ClosedError`` if the requester is closed. Cancel-safe: a late reply
        to a cancelled call is counted in ``statistics().unmatched`` and dropped.
        """
        if deadline is None:
            msg = await self._request(body, headers, retries, retry_after,
                                      self._io.current_effective_deadline(), hedge_after)
        else:
            seconds = check_deadline(deadline)
            with self._io.fail_after(seconds):
                msg = await self._request(body, headers, retries, retry_after,
                                          self._io.current_time() + seconds, hedge_after)
        return msg.body

    async def request_message(
        self, body: Any, *, headers: Mapping[str, Any] | None = None, retries: int = 0,
        retry_after: float = 1.0, deadline: float | None = None,
        hedge_after: float | str | None = None,
    ) -> Message:
        """Like ``request()``, but return the whole reply ``Message`` (headers, sender...)."""
        if deadline is None:
            return await self._request(body, headers, retries, retry_after,
                                       self._io.current_effective_deadline(), hedge_after)
        seconds = check_deadline(deadline)
        with self._io.fail_after(seconds):
            return await self._request(body, headers, retries, retry_after,
                                       self._io.current_time() + seconds, hedge_after)

    async def _request(
        self, body: Any, headers: Mapping[str, Any] | None, retries: int,
        retry_after: float, until: float, hedge_after: float | str | None,
    ) -> Message:
        """One request, its caller waiting until ``until`` (the event loop's time; inf: no end)."""
        if not isinstance(retries, int) or retries < 0 or not retry_after > 0:
            raise LocalProtocolError("retries is an int >= 0 and retry_after a number of "
                                     "seconds > 0")
        hedge: float | None = None
        if hedge_after is not None:
            hedge = check_hedge_after(hedge_after)
            if hedge is not None and hedge < 0:  # a percentile of our own latency
                hedge = (self._latency.percentile(-hedge)
                         if len(self._latency) >= _MIN_SAMPLES else None)
        rid = self._next_id
        # The deadline travels as the time left (no clock is shared), in the seq field
        # of a request flagged FLAG_DEADLINE; without one the frame is as it always was.
        budget = -1
        if until != _INF:
            budget = min(max(0, int((until - self._io.current_time()) * 1e6)), _MAX_BUDGET)
        frame: bytes | tuple[bytes, bytes]
        if type(body) is bytes and headers is None and len(body) < SPLIT_AT:  # one join
            if budget < 0:
                frame = b"".join((self._head, pack_tail(rid, time_ns(), rid), body))
            else:
                frame = b"".join((self._head_timed, pack_tail(budget, time_ns(), rid), body))
            if len(frame) > self._max:
                raise MessageTooLarge(len(frame), self._max)
        else:
            head, big = self._enc.encode_parts(
                Kind.REQUEST, b"\0", body, rid if budget < 0 else budget, time_ns(), rid,
                headers, 0 if budget < 0 else FLAG_DEADLINE)
            frame = head if big is None else (head, big)
        self._next_id = rid + 1
        slot = _Pending()
        self._pending[rid] = slot
        try:
            if self._routed:
                await self._send_routed(frame, rid, slot)
            elif type(frame) is bytes:
                await self._sock.send(frame)
            else:
                await self._send_split(frame)
            self._sent += 1
            if hedge_after is not None:
                slot.sent_at = self._io.current_time()  # measured (the percentile needs it)
                if hedge is not None:
                    await self._hedge(slot, frame, rid, hedge)
            elif not retries and not self._reading:
                # one call in flight (the latency path): read our own reply, no hand-off
                await self._read_until(slot)
            for _ in range(retries):
                with self._io.move_on_after(retry_after):
                    await self._await_reply(slot)
                if slot.done and not slot.lost:
                    break
                # no answer in time, or its replier vanished: the same request again
                slot.done, slot.lost = False, ""
                await self._send_request(slot, frame, rid)
                self._retried += 1
            await self._await_reply(slot)
        finally:
            slot.gone = True
            del self._pending[rid]
            if slot.copies > 1:
                self._remember_hedged(rid, slot)
        if slot.lost:
            raise PeerLost(f"request {rid} got no reply: {slot.lost}. It may or may not "
                           "have been processed; retry if the request is idempotent")
        reply = slot.reply
        assert reply is not None
        if slot.error:
            raise RemoteError(str(reply.body))
        return reply

    async def _hedge(self, slot: _Pending, frame: bytes | tuple[bytes, bytes], rid: int,
                     after: float) -> None:
        """Wait ``after`` seconds for the reply; if none came, send the same frame
        (same id) to another replier too. The first answer wins (``_dispatch``)."""
        with self._io.move_on_after(after):
            await self._await_reply(slot)
        if slot.done:
            return
        if self._routed:
            if not any(r not in slot.routes for r in self._balance.routes):
                return  # nobody else to ask: the replier's cache would drop the copy
            await self._send_routed(frame, rid, slot)
        else:  # libzmq's round-robin picks the next replier
            await self._send_plain(frame)
        slot.copies += 1
        self._hedged += 1

    async def _send_request(self, slot: _Pending, frame: bytes | tuple[bytes, bytes],
                            rid: int) -> None:
        if self._routed:
            await self._send_routed(frame, rid, slot)
        else:
            await self._send_plain(frame)

    async def _send_plain(self, frame: bytes | tuple[bytes, bytes]) -> None:
        if type(frame) is bytes:
            await self._sock.send(frame)
        else:
            await self._send_split(frame)

    async def _send_split(self, frame: Any) -> None:
        """Send a request whose body is a frame of its own (zero-copy)."""
        await self._io.checkpoint_if_cancelled()
        sock = self._sock
        while True:
            try:
                sock.send_split_nowait(None, *frame)
            except WouldBlock:
                await sock.wait_sendable()
                continue
            await sock.pace()
            return

    async def _await_reply(self, slot: _Pending) -> None:
        while not slot.done:
            if self._reading:
                slot.wake = self._io.Event()
                self._followers.append(slot)
                await slot.wake.wait()
            else:
                await self._read_until(slot)

    async def _send_routed(self, frame: bytes | tuple[bytes, bytes], rid: int,
                           slot: _Pending) -> None:
        """Send to the best replier that takes the request (fewest in flight, silent
        ones last; where a copy went before only if no other takes it)."""
        await self._io.checkpoint_if_cancelled()
        delay = 0.001
        while True:
            sock = self._sock
            sock.check_open("send a request")
            now = self._io.current_time()
            order = self._balance.order(now, slot.routes)
            for route in order:
                try:
                    if type(frame) is bytes:
                        sock.send_to_nowait(route, frame)
                    else:
                        sock.send_split_nowait(route, *frame)
                except (PeerUnreachable, WouldBlock):
                    continue  # not connected (yet, or any more), or its queue is full
                self._balance.sent(route, rid, now)
                if route not in slot.routes:
                    slot.routes = (*slot.routes, route)
                await sock.pace()
                return
            # Nobody took it. A new route wakes us; a connection completing its
            # handshake tells nobody, so with routes known, look again soon.
            changed = self._routes_changed
            with self._io.move_on_after(delay if order else math.inf):
                await changed.wait()
            delay = min(delay * 2, 0.05)

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None:
        """Routed mode: connect to a replier at ``endpoint``, known as ``route``.
        ``server_key``: the CURVE public key (Z85) of the listener there, for a socket
        made with ``shoal.security.client_options`` (libzmq reads it at ``connect``)."""
        connect_route(self._sock, route, endpoint, server_key)
        self._balance.add(route)
        self._route_of[endpoint] = route
        self._wake_senders()

    def _wake_senders(self) -> None:
        self._routes_changed.set()
        self._routes_changed = self._io.Event()

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
        self._balance.remove(route)
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
            if route in slot.routes and not slot.done:
                slot.routes = tuple(r for r in slot.routes if r != route)
                if slot.routes:
                    continue  # a copy went elsewhere too: that replier may answer
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
            self._pass_reader_role()

    def _pass_reader_role(self) -> None:
        """The reading call is done: wake one call that still waits for its reply,
        to read in its place."""
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
        rid = msg.correlation
        if self._routed:
            rtt = self._balance.answered(frames[0], rid, self._io.current_time())
            if rtt is not None:
                self._latency.add(rtt)
        slot = self._pending.get(rid)
        if slot is None or slot.done:
            if slot is not None and slot.copies > 1:  # the loser of a hedged request
                self._hedge_wasted += 1
            elif rid in self._recent_hedged:  # ... that came after the call returned
                del self._recent_hedged[rid]
                self._hedge_wasted += 1
            else:
                self._unmatched += 1
            return
        if slot.sent_at and not self._routed:
            self._latency.add(self._io.current_time() - slot.sent_at)
        slot.done = True
        slot.reply = msg
        self._replies += 1
        if msg.kind is Kind.ERROR:
            slot.error = True
            self._remote_errors += 1
        if slot.wake is not None:
            slot.wake.set()

    def _remember_hedged(self, rid: int, slot: _Pending) -> None:
        """A request sent more than once has finished: a later answer to it is a
        hedge's (or retry's) waste, not a stray (bounded memory)."""
        self._recent_hedged[rid] = None
        if len(self._recent_hedged) > _MAX_RECENT_HEDGED:
            self._recent_hedged.popitem(last=False)

    def latency(self, q: float = 0.5) -> float | None:
        """The ``q`` quantile (0..1) of this requester's recent round trips, in
        seconds, or None before it has measured any. Measured for every request in
        routed mode (a node's requester), and for requests with ``hedge_after``
        otherwise."""
        return self._latency.percentile(q)

    def statistics(self) -> RequesterStatistics:
        """An immutable snapshot of this resource's counters."""
        return RequesterStatistics(
            sent=self._sent,
            replies=self._replies,
            remote_errors=self._remote_errors,
            unmatched=self._unmatched,
            lost=self._lost,
            retried=self._retried,
            hedged=self._hedged,
            hedge_wasted=self._hedge_wasted,
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
        await self._io.checkpoint()

