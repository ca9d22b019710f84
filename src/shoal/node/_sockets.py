"""The node's socket factory: every socket of a node comes from here.

One ZeroMQ context per node (its ``MAXMSGSIZE`` is every socket's limit), the
node's TCP options, the guard's CURVE options (a socket that binds is a CURVE
server, one that connects a client), and the node's ``busy_poll`` on the
application's channels (the node's own sockets never spin).

The context's socket limit (``MAX_SOCKETS``; libzmq's default is 1,023) is sized
from the node's ``max_peers``::

    max_sockets(max_peers) = SOCKETS_PER_LINK * max_peers + NODE_SOCKETS + CHANNEL_SOCKETS
                           = 3 * max_peers + 16 + 1023

a control link per peer (its DEALER and, while it watches its handshakes, a monitor
pair), the node's own sockets (control socket, ZAP handler, clock queries), and what
libzmq's default leaves the application's channels (a channel is a socket, most with a
monitor pair: about 340 channels). Clamped to libzmq's ``SOCKET_LIMIT``.

File descriptors are the process's (``ulimit -n``), shared by every node and
everything else in it; ``check_descriptors`` compares the soft limit with what
``max_peers`` may need, at least::

    descriptors_needed(max_peers) = BASE_DESCRIPTORS + DESCRIPTORS_PER_PEER * max_peers
                                  = 64 + 4 * max_peers

per peer: the link's socket and its TCP connection, the peer's link to our control
socket, and one data connection (each further channel shared with that peer adds one).
Too low is one log line naming both numbers and the fix, not a failure: a node that
runs out of descriptors refuses the peer it was linking to (``links_refused``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import zmq

from shoal._zmq._socket import Socket
from shoal.errors import ClosedError
from shoal.node._guard import Guard
from shoal.node._watch import log

try:
    import resource
except ImportError:  # not a Unix: no descriptor limit to read
    resource = None  # type: ignore[assignment]

__all__ = ["BASE_DESCRIPTORS", "CHANNEL_SOCKETS", "DESCRIPTORS_PER_PEER", "NODE_SOCKETS",
           "SOCKETS_PER_LINK", "SocketFactory", "check_descriptors", "descriptors_needed",
           "max_sockets"]

SOCKETS_PER_LINK = 3
"""A control link's DEALER, and its monitor pair while it watches its handshakes (a
secured link, always)."""
NODE_SOCKETS = 16
"""The node's own: its control socket, the ZAP handler, clock queries in flight."""
CHANNEL_SOCKETS = 1023
"""Left for the application's channels (libzmq's default limit for a whole context)."""
BASE_DESCRIPTORS = 64
"""Descriptors of a node with no peers, and of the Python process around it, at least."""
DESCRIPTORS_PER_PEER = 4


def max_sockets(max_peers: int) -> int:
    """The ``MAX_SOCKETS`` a node with ``max_peers`` asks of its context (see above)."""
    return SOCKETS_PER_LINK * max_peers + NODE_SOCKETS + CHANNEL_SOCKETS


def descriptors_needed(max_peers: int) -> int:
    """The descriptors a node may need with ``max_peers`` peers, at least (see above)."""
    return BASE_DESCRIPTORS + DESCRIPTORS_PER_PEER * max_peers


def check_descriptors(max_peers: int, *, level: int = logging.WARNING) -> bool:
    """Log once (at ``level``) if the process's soft descriptor limit is below what
    ``max_peers`` may need; True if it is enough (or there is no limit to read)."""
    if resource is None:
        return True
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = descriptors_needed(max_peers)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return True
    log.log(level, "max_peers=%d may need %d file descriptors, but this process may open "
            "only %d (ulimit -n): past that, peers are refused for want of a descriptor. "
            "Raise the limit (ulimit -n %d in the shell that starts it, LimitNOFILE= for a "
            "systemd service) or lower max_peers", max_peers, need, soft, need)
    return False

# Every socket of a node: ZMTP heartbeats drop dead TCP connections (a pulled cable
# sends no FIN); reconnects as every socket does (``shoal._zmq._socket.RECONNECT_OPTIONS``).
# Only the connecting end pings (a ping and its pong a second per connection, not
# two of each): its pings carry a TTL, so the listening end drops a connection whose
# pings stop as soon as it would have by pinging itself.
_TCP_OPTIONS: list[tuple[int, int | bytes]] = [
    (zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 3000), (zmq.HEARTBEAT_TTL, 3000),
]
_LISTENER_OPTIONS: list[tuple[int, int | bytes]] = [(zmq.HEARTBEAT_IVL, 0)]


class SocketFactory:
    def __init__(self, guard: Guard, *, bind_host: str, max_message_size: int,
                 busy_poll: float, max_peers: int) -> None:
        self.guard = guard
        self.bind_host = bind_host
        self.busy_poll = busy_poll
        self.closed = False
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.context.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        # before the first socket: libzmq sizes its socket table then
        limit = self.context.get(zmq.SOCKET_LIMIT)
        self.context.set(zmq.MAX_SOCKETS, min(max_sockets(max_peers), limit))

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
                           options=[*(_LISTENER_OPTIONS if bind else _TCP_OPTIONS), *curve,
                                    *options])
        if data:
            sock.busy_poll = self.busy_poll
        return sock

    async def term(self) -> None:
        """Terminate the context: waits for the goodbyes' linger (200 ms at most) and
        for any socket the application still holds open (2 s at most)."""
        with anyio.move_on_after(2, shield=True):
            await anyio.to_thread.run_sync(self.context.term, abandon_on_cancel=True)


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])
