"""Dead letters: the items a reliable pusher gave up on, as the application sees them.

Each is logged when given up, kept for the next ``wait_acked`` (which raises
``DeliveryFailed`` naming them), and queued on the pusher's ``dead_letters`` channel,
which holds the latest ``DEAD_LETTERS`` unread (older unread ones are dropped and
counted).

The channel is a plain buffer, not a memory stream with a send side: the pusher adds
to it from synchronous code, never waits for room, and lets the application read what
is left after the pusher has closed, with nothing for the application to close. Its
``receive_nowait`` raises ``shoal.errors.WouldBlock`` (``anyio.WouldBlock`` and
``trio.WouldBlock``), like every ``*_nowait`` of shoal.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import ObjectReceiveStream

from shoal._core import GaveUp, decode
from shoal._io import WouldBlock
from shoal.errors import ClosedError, DeliveryFailed

__all__ = ["DEAD_LETTERS", "DeadLetter", "DeadLetterChannel", "DeadLetters"]

log = logging.getLogger("shoal")

DEAD_LETTERS = 1024
"""Unread dead letters a pusher's channel holds."""


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


class DeadLetterChannel(ObjectReceiveStream[DeadLetter]):
    """A reliable pusher's dead letters, oldest first (``push.dead_letters``): an
    ``anyio.abc.ObjectReceiveStream[DeadLetter]``, so ``async for letter in
    push.dead_letters`` works; the loop ends once the pusher is closed and every letter
    is read. It holds the latest ``DEAD_LETTERS`` unread: an older one is dropped for
    a new one (``statistics().dead_letters_dropped`` counts them)."""

    def __init__(self) -> None:
        self._letters: deque[DeadLetter] = deque()
        self._ended = False  # the pusher is closed: no more letters
        self._closed = False  # this end is closed
        self._arrived: anyio.Event | None = None  # set when a letter comes (or the end)
        self.dropped = 0

    def _put(self, letter: DeadLetter) -> None:
        if self._closed or self._ended:
            return
        if len(self._letters) >= DEAD_LETTERS:
            self._letters.popleft()  # keep the latest: drop the oldest unread
            self.dropped += 1
        self._letters.append(letter)
        self._notify()

    def _end(self) -> None:
        self._ended = True
        self._notify()

    def _notify(self) -> None:
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    def receive_nowait(self) -> DeadLetter:
        """The oldest unread dead letter. Raises ``WouldBlock`` if none is here,
        ``anyio.EndOfStream`` once the pusher is closed and every letter was read,
        ``ClosedError`` once this channel is closed."""
        if self._closed:
            raise ClosedError("this dead letter channel is closed")
        if self._letters:
            return self._letters.popleft()
        if self._ended:
            raise anyio.EndOfStream
        raise WouldBlock

    async def receive(self) -> DeadLetter:
        """Wait for the next dead letter; raises as ``receive_nowait`` does, except that
        it waits instead of raising ``WouldBlock``. Cancel-safe."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                letter = self.receive_nowait()
            except WouldBlock:
                if self._arrived is None:
                    self._arrived = anyio.Event()
                await self._arrived.wait()
                continue
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return letter

    async def aclose(self) -> None:
        """Close this end: unread letters are dropped, waiting tasks get ``ClosedError``."""
        self._closed = True
        self._letters.clear()
        self._notify()
        await anyio.lowlevel.checkpoint()


class DeadLetters:
    """The dead letters of one pusher: the channel, and those ``wait_acked`` reports."""

    def __init__(self) -> None:
        self.failed: list[DeadLetter] = []  # for wait_acked
        self.out = DeadLetterChannel()

    @property
    def dropped(self) -> int:
        """Dead letters dropped unread from the full channel."""
        return self.out.dropped

    def close(self) -> None:
        """The pusher is closed: the channel ends once its letters are read."""
        self.out._end()

    def add(self, given_up: Iterable[GaveUp]) -> None:
        """Turn what the core gave up (payloads: ``(frame, floor)``) into dead letters:
        logged, queued, kept for ``wait_acked``."""
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
            self.failed.append(letter)
            self.out._put(letter)

    def raise_failures(self) -> None:
        """Raise ``DeliveryFailed`` for the items given up since the last call, if any."""
        if self.failed:
            failed, self.failed = self.failed, []
            raise DeliveryFailed(failed)
