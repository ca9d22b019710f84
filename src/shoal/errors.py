"""The exceptions shoal raises, under one root.

The errors about keys, key files and trust (``SecurityError``, ``InvalidKey``,
``KeyFileError``) are defined in and exported from ``shoal.security``; they derive
from ``ShoalError`` like every other.

Rules:

* ``ShoalError`` is the root: ``except shoal.errors.ShoalError`` catches all of them.
* ``LocalProtocolError`` means *you* misused the API (bad endpoint, a body msgpack
  cannot encode, a topic with a NUL byte, a malformed wildcard pattern...). Its
  message says what to do instead.
* ``RemoteProtocolError`` means a peer sent bytes that are not a valid shoal message.
  Receivers never raise it at you: they drop the message and count it in
  ``statistics().malformed``. The codec raises it so tests and tools can see why.
* ``ClosedError`` is raised when a closed resource is used. It is also an
  ``anyio.ClosedResourceError`` and, with trio installed, a ``trio.ClosedResourceError``,
  so code written against either contract works. ``WouldBlock`` (from ``*_nowait``
  calls) is likewise both ``anyio.WouldBlock`` and ``trio.WouldBlock``.
* ``zmq.ZMQError`` never escapes: the socket layer translates it once, into these
  (``shoal._zmq._context.map_error``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from shoal._io import WouldBlock, have_trio

if TYPE_CHECKING or have_trio:
    import trio as _trio

from shoal._core._errors import (
    DecodeError,
    EncodeError,
    InvalidTopicPattern,
    LocalProtocolError,
    MessageTooLarge,
    RemoteProtocolError,
    ShoalError,
)

__all__ = [
    "ClosedError",
    "DecodeError",
    "DeliveryFailed",
    "EncodeError",
    "InvalidEndpoint",
    "InvalidTopicPattern",
    "LocalProtocolError",
    "MessageTooLarge",
    "NoEventLoop",
    "NotUnderTrio",
    "PeerLost",
    "RemoteError",
    "RemoteProtocolError",
    "ShoalError",
    "TransportError",
    "WouldBlock",
]


class InvalidEndpoint(LocalProtocolError, ValueError):
    """An endpoint string is malformed or cannot be bound/connected as given."""


class NoEventLoop(LocalProtocolError, RuntimeError):
    """A shoal resource was opened outside trio and asyncio: from plain synchronous
    code, from a worker thread, or under another async library."""

    def __init__(self, what: str) -> None:
        try:
            import sniffio
            where = f"under {sniffio.current_async_library()}"
        except Exception:
            where = "outside any event loop"
        super().__init__(
            f"{what} {where}, but shoal runs under trio or asyncio: call it in code "
            "started by trio.run(...), asyncio.run(...) or anyio.run(...) (uvloop too)")


NotUnderTrio = NoEventLoop
"""The former name of ``NoEventLoop``, from when shoal ran under trio only."""


class RemoteError(ShoalError):
    """The replier's handler failed; ``message`` is what it reported."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"the replier failed: {message}")


class TransportError(ShoalError):
    """ZeroMQ refused an operation for a reason that is not the caller's fault
    (address in use, too many open files...). ``errno`` is ZeroMQ's error number."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


if TYPE_CHECKING or have_trio:

    class ClosedError(ShoalError, anyio.ClosedResourceError, _trio.ClosedResourceError):
        """The resource was closed (by ``aclose()`` or leaving its ``async with``)."""

    class PeerLost(ShoalError, anyio.BrokenResourceError, _trio.BrokenResourceError):
        """The peer an operation depended on vanished (left, timed out or restarted)
        before answering. Whether it acted on the request is unknown."""

else:  # pragma: no cover - the asyncio-only install

    class ClosedError(ShoalError, anyio.ClosedResourceError):
        """The resource was closed (by ``aclose()`` or leaving its ``async with``)."""

    class PeerLost(ShoalError, anyio.BrokenResourceError):
        """The peer an operation depended on vanished (left, timed out or restarted)
        before answering. Whether it acted on the request is unknown."""


class DeliveryFailed(ShoalError):
    """Messages were given up: no receiver took them within the sender's attempts or
    deadline. ``failed`` lists them (``shoal.patterns.DeadLetter``: ``id``, ``seq``,
    ``body``, ``headers``, ``attempts``, ``last_peer``, ``reason``)."""

    def __init__(self, failed: list[Any]) -> None:
        self.failed = failed
        shown = ", ".join(f"seq {g.seq} ({g.reason}, {g.attempts} attempts)" for g in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        super().__init__(f"{len(failed)} message(s) given up: {shown}{more}; "
                         "check that a receiver is reachable, or raise the sender's "
                         "max_attempts / give_up_after")


# Every error reports the module users import it from (``shoal.errors.EncodeError``
# in tracebacks and reprs), not the private one that defines it.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
