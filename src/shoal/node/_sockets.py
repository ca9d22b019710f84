"""The node's socket factory: every socket of a node comes from here.

One ZeroMQ context per node (its ``MAXMSGSIZE`` is every socket's limit), the
node's TCP options, the guard's CURVE options (a socket that binds is a CURVE
server, one that connects a client), and the node's ``busy_poll`` on the
application's channels (the node's own sockets never spin).
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
import zmq

from shoal._zmq._socket import Socket
from shoal.errors import ClosedError
from shoal.node._guard import Guard

__all__ = ["SocketFactory"]

# Every socket of a node: ZMTP heartbeats drop dead TCP connections (a pulled cable
# sends no FIN); reconnects as every socket does (``shoal._zmq._socket.RECONNECT_OPTIONS``).
_TCP_OPTIONS: list[tuple[int, int | bytes]] = [
    (zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 3000),
]


class SocketFactory:
    def __init__(self, guard: Guard, *, bind_host: str, max_message_size: int,
                 busy_poll: float) -> None:
        self.guard = guard
        self.bind_host = bind_host
        self.busy_poll = busy_poll
        self.closed = False
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.context.setsockopt(zmq.MAXMSGSIZE, max_message_size)

    def open(self, kind: int, options: Sequence[tuple[int, int | bytes]], *,
             linger_ms: int, bind: bool = False, server: bool = False,
             data: bool = True) -> Socket:
        """A socket of ``kind``; ``bind``: on an ephemeral port of the node's address;
        ``server``: a CURVE server although it does not bind here (the control
        socket); ``data``: one of the application's channels."""
        if self.closed:
            raise ClosedError("this node is closed; open a new one")
        curve = self.guard.socket_options(server=bind or server)
        sock = Socket.open(kind, bind=[f"tcp://{self.bind_host}:*"] if bind else [],
                           context=self.context, linger_ms=linger_ms,
                           options=[*_TCP_OPTIONS, *curve, *options])
        if data:
            sock.busy_poll = self.busy_poll
        return sock

    async def term(self) -> None:
        """Terminate the context: waits for the goodbyes' linger (200 ms at most) and
        for any socket the application still holds open (2 s at most)."""
        with trio.move_on_after(2) as scope:
            scope.shield = True
            await trio.to_thread.run_sync(self.context.term, abandon_on_cancel=True)


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])
