"""Dead letters: the items a reliable pusher gave up on, as the application sees them.

Each is logged when given up, kept for the next ``wait_acked`` (which raises
``DeliveryFailed`` naming them), and queued on the pusher's ``dead_letters`` channel,
which holds the latest ``DEAD_LETTERS`` unread (older unread ones are dropped and
counted).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from shoal._core import GaveUp, decode
from shoal.errors import DeliveryFailed

__all__ = ["DEAD_LETTERS", "DeadLetter", "DeadLetters"]

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


class DeadLetters:
    """The dead letters of one pusher: the channel, and those ``wait_acked`` reports."""

    def __init__(self) -> None:
        self.failed: list[DeadLetter] = []  # for wait_acked
        self._in, self.out = trio.open_memory_channel[DeadLetter](DEAD_LETTERS)
        self.dropped = 0

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
            try:
                self._in.send_nowait(letter)
            except trio.WouldBlock:
                self.dropped += 1
                try:  # keep the latest: drop the oldest unread
                    self.out.receive_nowait()
                    self._in.send_nowait(letter)
                except (trio.WouldBlock, trio.EndOfChannel):
                    pass
            except trio.BrokenResourceError:
                pass

    def raise_failures(self) -> None:
        """Raise ``DeliveryFailed`` for the items given up since the last call, if any."""
        if self.failed:
            failed, self.failed = self.failed, []
            raise DeliveryFailed(failed)
