"""What every shoal socket shares: the ZeroMQ context, the message size limit, the
endpoint rules, and the translation of libzmq's errors into shoal's."""

from __future__ import annotations

import errno as _errno
from typing import Final

import zmq

from shoal import _io
from shoal.errors import ClosedError, InvalidEndpoint, NoEventLoop, TransportError

__all__ = [
    "DEFAULT_LINGER_MS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "PeerUnreachable",
    "check_endpoint",
    "default_context",
    "map_error",
    "max_message_size",
    "require_loop",
]

DEFAULT_LINGER_MS: Final = 1000
"""How long libzmq keeps trying to deliver unsent messages after a socket closes."""

_SCHEMES: Final = ("tcp://", "ipc://", "inproc://")


class PeerUnreachable(TransportError):
    """A ROUTER send named a peer that is not connected (any more)."""


def default_context() -> zmq.Context[zmq.Socket[bytes]]:
    """The process-wide ZeroMQ context (``zmq.Context.instance()``).

    Shared so that ``inproc://`` endpoints work between resources opened with the
    defaults, and between shoal and raw pyzmq sockets made from the same instance.
    """
    return zmq.Context.instance()


DEFAULT_MAX_MESSAGE_SIZE: Final = 16 * 1024 * 1024
"""The largest message (one frame: topic, header, headers, body) a shoal socket
accepts unless its context says otherwise."""
_UNLIMITED: Final = 2**63 - 1


def max_message_size(context: zmq.Context[zmq.Socket[bytes]]) -> int:
    """The message size limit for sockets of ``context``: the context's MAXMSGSIZE
    default if it has one (``ctx.setsockopt(zmq.MAXMSGSIZE, n)``; -1: no limit), else
    ``DEFAULT_MAX_MESSAGE_SIZE``."""
    limit = context.sockopts.get(zmq.MAXMSGSIZE, DEFAULT_MAX_MESSAGE_SIZE)
    return int(limit)


def map_error(exc: zmq.ZMQError, action: str) -> Exception:
    """Translate a ZMQError into the shoal exception that says what to do."""
    code = exc.errno
    if code in (zmq.ETERM, zmq.ENOTSOCK):
        return ClosedError(f"cannot {action}: the socket or its context is closed")
    if code == zmq.EHOSTUNREACH:
        return PeerUnreachable(f"cannot {action}: the peer is not connected", code)
    if code == _errno.EADDRINUSE:
        return TransportError(
            f"cannot {action}: the address is in use; pick another port or use ':*' "
            "to let the system choose", code)
    if code in (zmq.EINVAL, zmq.EPROTONOSUPPORT, _errno.ENODEV, _errno.ENOENT,
                _errno.EADDRNOTAVAIL, zmq.ENOCOMPATPROTO):
        return InvalidEndpoint(f"cannot {action}: {exc.strerror}")
    return TransportError(f"cannot {action}: {exc.strerror}", code)


def check_endpoint(endpoint: object, *, binding: bool = False) -> str:
    """Refuse anything that is not a ``tcp://``, ``ipc://`` or ``inproc://`` string,
    and a ``tcp://`` endpoint without a port or with one outside 1..65535 (``*`` or 0
    when binding: any free port). libzmq would wrap ``:99999`` to another port
    silently, and say only "Invalid argument" for a missing one."""
    if not isinstance(endpoint, str) or not endpoint.startswith(_SCHEMES):
        raise InvalidEndpoint(
            f"bad endpoint {endpoint!r}: use 'tcp://HOST:PORT' (PORT may be '*' when "
            "binding), 'ipc:///path' or 'inproc://name'")
    if endpoint.startswith("tcp://"):
        address = endpoint[6:].rpartition(";")[2]  # after a source address, if any
        host, colon, port = address.rpartition(":")
        if not colon or not host:
            raise InvalidEndpoint(
                f"bad endpoint {endpoint!r}: no port; use 'tcp://HOST:PORT'"
                + (" (or 'tcp://HOST:*' for any free port)" if binding else ""))
        low = 0 if binding else 1
        if not ((binding and port == "*")
                or (port.isdigit() and port.isascii() and low <= int(port) <= 65535)):
            raise InvalidEndpoint(
                f"bad endpoint {endpoint!r}: the port must be a number from {low} to 65535"
                + (" or '*' (any free port)" if binding else ""))
    return endpoint


def require_loop(what: str) -> _io.Loop:
    """The running event loop's primitives (trio or asyncio); ``NoEventLoop`` outside
    both: without it, a resource would open seemingly fine and fail only when it waits
    or closes."""
    try:
        return _io.current()
    except RuntimeError:
        raise NoEventLoop(what) from None
