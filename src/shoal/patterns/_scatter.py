"""Scatter/gather: one request to every replier a requester can address, the answers
as they come (``Requester.request_all``, ``Requester.gather``).

Only a routed requester (a node's, or ``open_requester(..., per_endpoint=True)``) can
address each replier: a plain DEALER spreads requests round-robin and cannot say
which replier a copy reaches, so ``request_all`` refuses it. The repliers addressed
are the routes known when the call starts; each gets a copy under a request id of
its own, so the matching, the reader role and a vanished replier's ``PeerLost``
work exactly as for ``request()``, whose path this module adds nothing to.

Every copy carries the deadline ``within`` (``FLAG_DEADLINE``): a replier skips a
copy whose caller has stopped waiting. What never happens here: an answer raised as
an exception for all (a replier's failure is that replier's ``Answer``), or a wait
past ``within``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from time import time_ns
from typing import TYPE_CHECKING, Any

from shoal._core import FLAG_DEADLINE, Kind, Message
from shoal._core._balance import Balancer
from shoal._io import Loop, WouldBlock
from shoal._io._loop import Wake
from shoal._zmq._socket import PeerUnreachable, Socket
from shoal.errors import LocalProtocolError
from shoal.patterns._request_slots import _MAX_BUDGET, _Pending

__all__ = ["Answer", "AnswerStatus", "Gathered", "Scatter"]


class AnswerStatus(enum.Enum):
    """What became of one replier's copy of a scattered request."""

    REPLIED = "replied"
    """It answered: ``Answer.body``."""
    FAILED = "failed"
    """Its handler failed: ``Answer.error`` (what ``request()`` raises as
    ``RemoteError``)."""
    MISSING = "missing"
    """No answer by ``within``, or the replier vanished or could not be reached:
    ``Answer.error`` says which."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One replier's part of ``request_all`` / ``gather``."""

    replier: str
    """Who: the replier's node id (32 hex digits) over a node, else its endpoint."""
    endpoint: str
    """Where the requester reached it."""
    status: AnswerStatus
    body: Any = None
    """The reply's body (``REPLIED``), else None."""
    error: str = ""
    """Why not: the replier's error text (``FAILED``) or why it is ``MISSING``."""
    message: Message | None = None
    """The whole reply (headers, sender...), when there is one."""

    @property
    def ok(self) -> bool:
        """Whether the replier answered with a reply (not an error, not missing)."""
        return self.status is AnswerStatus.REPLIED


@dataclass(frozen=True, slots=True)
class Gathered:
    """What ``gather`` collected: the answers in the order they came, and the repliers
    that did not answer."""

    replies: tuple[Answer, ...]
    """``REPLIED`` and ``FAILED`` answers, first come first."""
    missing: tuple[Answer, ...]
    """``MISSING`` ones, each with the reason."""

    @property
    def complete(self) -> bool:
        """Whether every replier addressed answered (a reply or an error)."""
        return not self.missing


def replier_of(route: bytes, endpoint: str) -> str:
    """A node's route is ``b"r"``, the peer's node id (16 bytes), epoch (4), port (2):
    name the replier by its node id; any other route by its endpoint."""
    if len(route) == 23 and route[:1] == b"r":
        return route[1:17].hex()
    return endpoint


def _check_within(within: object) -> float:
    if (isinstance(within, bool) or not isinstance(within, int | float)
            or not 0 < within < math.inf):
        raise LocalProtocolError(f"within is a number of seconds > 0 (how long to wait for "
                                 f"the answers), not {within!r}")
    return float(within)


class Scatter:
    """``request_all`` and ``gather`` of ``Requester`` (which it is mixed into)."""

    _sock: Socket
    _io: Loop
    _enc: Any
    _routed: bool
    _route_of: dict[str, bytes]
    _balance: Balancer
    _pending: dict[int, _Pending]
    _followers: deque[_Pending]
    _reading: bool
    _next_id: int
    _sent: int
    _batch: int
    _routes_changed: Wake

    if TYPE_CHECKING:
        def _dispatch(self, frames: list[bytes]) -> None: ...
        def _pass_reader_role(self) -> None: ...

    async def gather(self, body: Any, *, within: float,
                     headers: Mapping[str, Any] | None = None) -> Gathered:
        """Send ``body`` to every replier this requester can address and collect
        their answers for at most ``within`` seconds (sooner once all answered):
        ``Gathered.replies`` (each ``Answer`` with the replier's identity and its
        body or error) and ``Gathered.missing``. Raises as ``request_all``."""
        got: list[Answer] = []
        async with aclosing(self.request_all(body, within=within, headers=headers)) as it:
            got = [answer async for answer in it]
        return Gathered(
            tuple(a for a in got if a.status is not AnswerStatus.MISSING),
            tuple(a for a in got if a.status is AnswerStatus.MISSING))

    async def request_all(self, body: Any, *, within: float,
                          headers: Mapping[str, Any] | None = None,
                          ) -> AsyncGenerator[Answer, None]:
        """Send ``body`` to every replier this requester can address; yield one
        ``Answer`` per replier, as the answers come: ``REPLIED`` (``.body``),
        ``FAILED`` (its handler raised: ``.error``; the others go on), then, at
        ``within`` seconds, ``MISSING`` for each replier that has not answered.
        Ends as soon as every replier answered. A replier that vanishes meanwhile
        is reported ``MISSING`` when it does.

        The repliers are those known when the call starts (over a node: every live
        peer offering the channel as a replier, this node included); with none known
        it yields nothing. Each copy carries the deadline (``within``, or the enclosing
        cancel scope's if sooner), so a replier skips it once the caller stopped
        waiting. Needs a routed requester: a node's, or
        ``open_requester(connect=[...], per_endpoint=True)``; a plain one raises
        ``LocalProtocolError`` (its socket cannot address each replier). Raises
        ``LocalProtocolError`` for a ``within`` that is not seconds > 0,
        ``EncodeError`` for a body msgpack cannot encode, ``ClosedError`` if the
        requester is closed. Break out early with ``contextlib.aclosing`` to stop
        waiting for the rest at once.
        """
        seconds = _check_within(within)
        if not self._routed:
            raise LocalProtocolError(
                "request_all needs a requester that addresses each replier: a node's "
                "(node.open_requester(channel)) or open_requester(connect=[...], "
                "per_endpoint=True); this one spreads requests round-robin")
        self._sock.check_open("send a request")
        io = self._io
        until = io.current_time() + seconds
        # the copies carry the sooner of ``within`` and the caller's own deadline
        budget = min(max(0, int((min(until, io.current_effective_deadline())
                                 - io.current_time()) * 1e6)), _MAX_BUDGET)
        todo: dict[bytes, str] = {r: ep for ep, r in self._route_of.items()}
        frames: dict[bytes, tuple[int, bytes | tuple[bytes, bytes]]] = {}
        for route in todo:  # one request id per replier: matched like any request
            rid = self._next_id
            self._next_id = rid + 1
            head, big = self._enc.encode_parts(Kind.REQUEST, b"\0", body, budget, time_ns(),
                                               rid, headers, FLAG_DEADLINE)
            frames[route] = (rid, head if big is None else (head, big))
        sent: dict[int, tuple[_Pending, bytes]] = {}  # rid -> (slot, route)
        reported: set[bytes] = set()
        try:
            delay = 0.001
            while True:
                self._scatter_send(frames, sent)
                for rid, (slot, route) in list(sent.items()):
                    if slot.done:
                        del sent[rid]
                        self._forget(rid, slot)
                        reported.add(route)
                        yield self._answer(route, todo[route], slot)
                for route in [r for r in frames if r not in self._balance.routes]:
                    del frames[route]  # withdrawn before it could be sent
                    reported.add(route)
                    yield Answer(replier_of(route, todo[route]), todo[route],
                                 AnswerStatus.MISSING, error="it left before the request "
                                 "could be sent")
                if not sent and not frames:
                    return
                now = io.current_time()
                if now >= until:
                    break
                wake = min(until, now + delay) if frames else until
                delay = min(delay * 2, 0.05)
                with io.move_on_after(wake - now):
                    await self._wait_any([slot for slot, _ in sent.values()])
            for route, ep in todo.items():
                if route not in reported:
                    why = ("it could not be reached" if route in frames
                           else f"no answer within {seconds:g} s")
                    yield Answer(replier_of(route, ep), ep, AnswerStatus.MISSING, error=why)
        finally:
            for rid, (slot, _) in sent.items():
                self._forget(rid, slot)

    def _scatter_send(self, frames: dict[bytes, tuple[int, bytes | tuple[bytes, bytes]]],
                      sent: dict[int, tuple[_Pending, bytes]]) -> None:
        """Send each copy its replier takes now (not connected yet, or a full queue:
        later); the copies sent leave ``frames`` for ``sent``."""
        sock = self._sock
        now = self._io.current_time()
        for route, (rid, frame) in list(frames.items()):
            try:
                if type(frame) is bytes:
                    sock.send_to_nowait(route, frame)
                else:
                    sock.send_split_nowait(route, *frame)
            except (PeerUnreachable, WouldBlock):
                continue
            slot = _Pending()
            slot.routes = (route,)  # a vanished replier fails it (drop_route)
            self._pending[rid] = slot
            self._balance.sent(route, rid, now)
            self._sent += 1
            sent[rid] = (slot, route)
            del frames[route]

    async def _wait_any(self, slots: list[_Pending]) -> None:
        """Until one of ``slots`` is done (or, with none, the routes change): read the
        socket if nobody does, else wait to be woken like a ``request()``."""
        if not slots:
            await self._routes_changed.wait()
            return
        woken = self._io.Event()
        for slot in slots:
            slot.wake = woken  # the reader wakes us for any of them
        if self._reading:
            self._followers.append(slots[0])  # the reader role may be passed to us
            await woken.wait()
            return
        self._reading = True
        try:
            while not any(slot.done for slot in slots):
                raws = self._sock.receive_batch_nowait(self._batch)
                if not raws:
                    await self._sock.wait_receivable()
                    continue
                for frames in raws:
                    self._dispatch(frames)
        finally:
            self._reading = False
            self._pass_reader_role()

    def _forget(self, rid: int, slot: _Pending) -> None:
        slot.gone = True
        self._pending.pop(rid, None)

    def _answer(self, route: bytes, endpoint: str, slot: _Pending) -> Answer:
        who = replier_of(route, endpoint)
        if slot.lost:
            return Answer(who, endpoint, AnswerStatus.MISSING, error=slot.lost)
        msg = slot.reply
        assert msg is not None
        if slot.error:
            return Answer(who, endpoint, AnswerStatus.FAILED, error=str(msg.body),
                          message=msg)
        return Answer(who, endpoint, AnswerStatus.REPLIED, body=msg.body, message=msg)
