"""Peer changes as a stream (``Node.watch_peers``), and the node's warn-once log.

A ``PeerWatch`` is a buffer the node pushes every ``PeerEvent`` into, read with
``async for``. It never drops an event silently: past ``WATCH_BUFFER`` unread events
it fails, and the reader takes a fresh snapshot.
"""

from __future__ import annotations

import logging
from collections import deque

from shoal import _io
from shoal._core import PeerEvent
from shoal.errors import ShoalError

__all__ = ["WATCH_BUFFER", "PeerWatch", "WarnOnce", "log"]

log = logging.getLogger("shoal")

WATCH_BUFFER = 1024
"""Events a ``watch_peers()`` iterator may fall behind by before it fails."""
_MAX_WARNED = 1024  # (reason, who) pairs remembered so that each is logged once


class PeerWatch:
    """Peer changes as they happen: ``async for change in node.watch_peers()``.

    Yields ``PeerJoined``, ``PeerUpdated`` and ``PeerLeft``; ends when the node
    closes. If the consumer falls more than ``WATCH_BUFFER`` events behind, the
    iteration raises ``ShoalError`` (take ``node.peers()`` and watch again) rather
    than skip events silently.
    """

    def __init__(self, io: _io.Loop | None = None) -> None:
        self._io = io if io is not None else _io.current()  # the node's event loop
        self._events: deque[PeerEvent] = deque()
        self._lot = self._io.ParkingLot()
        self._closed = False
        self._overflowed = False

    def _push(self, event: PeerEvent) -> None:
        if len(self._events) >= WATCH_BUFFER:
            self._overflowed = True
        else:
            self._events.append(event)
        self._lot.unpark_all()

    def _close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    def __aiter__(self) -> PeerWatch:
        return self

    async def __anext__(self) -> PeerEvent:
        while True:
            if self._overflowed:
                raise ShoalError(f"watch_peers() fell more than {WATCH_BUFFER} events behind;"
                                 " take node.peers() and start a new watch")
            if self._events:
                await self._io.checkpoint()
                return self._events.popleft()
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()


class WarnOnce:
    """Log each (reason, who) once, remembering a bounded number of them: a flood of
    bad peers cannot grow it without limit, nor fill the log."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._warned)

    def __call__(self, reason: str, who: str, message: str, *args: object,
                 level: int = logging.WARNING) -> None:
        if (reason, who) in self._warned:
            return
        if len(self._warned) >= _MAX_WARNED:
            self._warned.clear()
        self._warned.add((reason, who))
        log.log(level, message, *args)

    def forget(self, reason: str, who: str) -> None:
        """Log (reason, who) again next time (the condition ended)."""
        self._warned.discard((reason, who))
