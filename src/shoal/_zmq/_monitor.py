"""libzmq's socket monitor, read in one place.

A monitored socket reports connection events (``zmq.EVENT_*``) on an inproc PAIR of its
own. Each event is two frames: six bytes (the event number, 16 bits little-endian, and
a value, 32 bits little-endian: an errno, a file descriptor, an interval...) and the
endpoint it concerns. ``parse_event`` turns those frames into a ``LinkEvent``, or None
for anything else (a truncated frame is not an event; nothing here raises on what the
monitor sends).

An event names the endpoint the socket connected to. On an endpoint the socket binds,
it names that listening endpoint, the same for every peer that connected there (and
never the peer's routing id).

``Monitor`` owns the monitor socket: start it before the first ``connect`` so that no
handshake goes unseen, read it with ``events_nowait`` and ``wait``, and ``close`` it
before closing the watched socket (it stops libzmq's monitor there first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import zmq

from shoal._zmq._socket import Socket
from shoal.errors import ClosedError

__all__ = ["LinkEvent", "Monitor", "parse_event"]

HANDSHAKE_SUCCEEDED = zmq.EVENT_HANDSHAKE_SUCCEEDED
"""The ZMTP handshake completed: the peer is a ZeroMQ peer and (CURVE) admitted us."""
HANDSHAKE_FAILED_AUTH = zmq.EVENT_HANDSHAKE_FAILED_AUTH
"""The other side's ZAP handler refused us."""
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
"""The handshake failed for another reason (not a ZeroMQ peer, a protocol error)."""
DISCONNECTED = zmq.EVENT_DISCONNECTED
CONNECTED = zmq.EVENT_CONNECTED
"""A connection closed (a peer killed or gone, a ZMTP heartbeat timeout)."""


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """One monitor event: what happened (``zmq.EVENT_*``), where, and its value."""

    event: int
    endpoint: str
    value: int = 0

    @property
    def handshake_failed(self) -> bool:
        """A handshake failure other than a refusal by the other side's ZAP handler."""
        return bool(self.event & HANDSHAKE_FAILED)


def parse_event(frames: Sequence[bytes]) -> LinkEvent | None:
    """The event in a monitor message, or None if the frames are not one."""
    if len(frames) != 2 or len(frames[0]) < 6:
        return None
    head = frames[0]
    return LinkEvent(int.from_bytes(head[:2], "little"), frames[1].decode(errors="replace"),
                     int.from_bytes(head[2:6], "little"))


class Monitor:
    """The monitor of ``sock`` for ``events`` (a mask of ``zmq.EVENT_*``)."""

    __slots__ = ("_mon", "_sock")

    def __init__(self, sock: Socket, events: int) -> None:
        self._sock = sock
        self._mon: Socket | None = sock.monitor(events)

    @property
    def closed(self) -> bool:
        return self._mon is None or self._mon.closed

    def events_nowait(self, limit: int = 64) -> list[LinkEvent]:
        """The events that have arrived, at most ``limit`` (none once closed)."""
        mon = self._mon
        if mon is None or mon.closed:
            return []
        return [e for frames in mon.receive_batch_nowait(limit)
                if (e := parse_event(frames)) is not None]

    async def wait(self) -> None:
        """Wait until an event may have arrived. Raises ``ClosedError`` once closed."""
        mon = self._mon
        if mon is None:
            raise ClosedError("the monitor is closed")
        await mon.wait_receivable()

    def close(self) -> None:
        """Stop monitoring and close the monitor socket. Idempotent; never checkpoints."""
        mon, self._mon = self._mon, None
        if mon is None:
            return
        self._sock.disable_monitor()
        mon.close()
