"""The exception types the sans-I/O core raises.

They live here, not in ``shoal.errors``, so that the core imports nothing outside
itself; ``shoal.errors`` re-exports them as part of the one public hierarchy.
"""

from __future__ import annotations

__all__ = ["DecodeError", "EncodeError", "InvalidTopicPattern", "LocalProtocolError",
           "MessageTooLarge", "RemoteProtocolError", "ShoalError"]


class ShoalError(Exception):
    """Root of every shoal exception."""


class LocalProtocolError(ShoalError):
    """The caller misused the API; the message says how to fix the call."""


class EncodeError(LocalProtocolError, TypeError):
    """A body, topic or header cannot be put on the wire (e.g. msgpack cannot encode it)."""


class MessageTooLarge(EncodeError):
    """A message encodes to more bytes than the socket's ``max_message_size``; it was
    not sent (receivers would drop the connection that carried it)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"this message encodes to {size} bytes, over the limit of {limit} bytes; send "
            "smaller messages, or raise the limit on both ends: "
            "open_node(max_message_size=...), or a zmq.Context with MAXMSGSIZE set "
            "passed as context=")


class InvalidTopicPattern(LocalProtocolError, ValueError):
    """A subscription is not a valid prefix or pattern. ``pattern`` is the
    subscription, ``level`` the level at fault."""

    def __init__(self, pattern: str, level: str) -> None:
        self.pattern = pattern
        self.level = level
        super().__init__(
            f"{pattern!r} is not a valid subscription: its level {level!r} holds a '*'. "
            "A '*' may only stand as a whole level between '/': '*' matches one level, "
            "'**' any number of levels (none included), e.g. 'site/*/temp' or 'site/**'; "
            "a subscription without '*' is a plain prefix")


class RemoteProtocolError(ShoalError):
    """A peer sent something that is not a valid shoal message."""


class DecodeError(RemoteProtocolError):
    """Bytes from the wire failed to decode. ``reason`` is a short, stable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
