"""Which connections of a connecting socket are up, from libzmq's socket monitor
(parsed in ``shoal._zmq._monitor``).

An event names the endpoint the socket connected to. On an endpoint the socket binds,
it names that listening endpoint, the same for every peer that connected there (and
never the peer's routing id): a bound side learns who its peers are from what they
send (the reliable patterns' hello), and that one of them dropped from an event here.
"""

from __future__ import annotations

from collections.abc import Callable

from shoal._zmq._monitor import DISCONNECTED, HANDSHAKE_SUCCEEDED, Monitor
from shoal._zmq._socket import Socket
from shoal.errors import ClosedError

__all__ = ["LinkMonitor"]


class LinkMonitor:
    """Calls ``on_up(endpoint)`` when a connection's handshake completes and
    ``on_down(endpoint)`` when it drops (a peer killed, or a link silent past the ZMTP
    heartbeat timeout). ``start()`` before the first connect, so no handshake goes
    unseen; ``run()`` in a task; ``close()`` before closing the socket."""

    def __init__(self, sock: Socket, on_up: Callable[[str], None],
                 on_down: Callable[[str], None]) -> None:
        self._sock = sock
        self._on_up = on_up
        self._on_down = on_down
        self._mon: Monitor | None = None

    def start(self) -> None:
        self._mon = Monitor(self._sock, HANDSHAKE_SUCCEEDED | DISCONNECTED)

    async def run(self) -> None:
        mon = self._mon
        if mon is None:
            return
        try:
            while not mon.closed:
                for ev in mon.events_nowait(64):
                    if ev.event == HANDSHAKE_SUCCEEDED:
                        self._on_up(ev.endpoint)
                    elif ev.event == DISCONNECTED:
                        self._on_down(ev.endpoint)
                await mon.wait()
        except ClosedError:
            pass

    def close(self) -> None:
        mon, self._mon = self._mon, None
        if mon is not None:
            mon.close()
