"""``Socket``: a pyzmq socket driven from trio or asyncio, the only object in shoal that calls
into libzmq. Its rules (the theory of operation) are in ``shoal._zmq._base``; sending
is in ``_send``, receiving in ``_receive``, what all sockets share (context, limits,
endpoints, errors) in ``_context``."""

from __future__ import annotations

import itertools
from typing import Final

from shoal._zmq._base import (
    POLLIN,
    POLLOUT,
    RECONNECT_OPTIONS,
    YIELD_EVERY,
)
from shoal._zmq._context import (
    DEFAULT_LINGER_MS,
    DEFAULT_MAX_MESSAGE_SIZE,
    PeerUnreachable,
    check_endpoint,
    default_context,
    map_error,
    max_message_size,
    require_loop,
)
from shoal._zmq._receive import ReceivingSocket
from shoal._zmq._send import SendingSocket

__all__ = [
    "DEFAULT_LINGER_MS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "POLLIN",
    "POLLOUT",
    "RECONNECT_OPTIONS",
    "YIELD_EVERY",
    "PeerUnreachable",
    "Socket",
    "check_endpoint",
    "default_context",
    "map_error",
    "max_message_size",
    "require_loop",
]

_MONITORS: Final = itertools.count()  # numbers the monitor sockets' inproc addresses


class Socket(SendingSocket, ReceivingSocket):
    """A pyzmq socket driven from trio or asyncio. Not thread-safe: use it from one
    event loop."""

    __slots__ = ()

    def monitor(self, events: int) -> Socket:
        """A socket receiving libzmq's monitor events of this one (``events``: a mask of
        ``zmq.EVENT_*``), on an inproc address of its own. (pyzmq's default address
        is named after the socket's FD, which a socket closed a moment ago may still
        hold: a new socket on the reused FD would fail to start its monitor.)"""
        raw = self._sock.get_monitor_socket(events, f"inproc://shoal-monitor-{next(_MONITORS)}")
        return Socket(raw, linger_ms=0)
