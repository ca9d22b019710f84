"""The exception types the sans-I/O core raises.

They live here, not in ``shoal.errors``, so that the core imports nothing outside
itself; ``shoal.errors`` re-exports them as part of the one public hierarchy.
"""

from __future__ import annotations

__all__ = ["DecodeError", "EncodeError", "LocalProtocolError", "RemoteProtocolError",
           "ShoalError"]


class ShoalError(Exception):
    """Root of every shoal exception."""


class LocalProtocolError(ShoalError):
    """The caller misused the API; the message says how to fix the call."""


class EncodeError(LocalProtocolError, TypeError):
    """A body, topic or header cannot be put on the wire (e.g. msgpack cannot encode it)."""


class RemoteProtocolError(ShoalError):
    """A peer sent something that is not a valid shoal message."""


class DecodeError(RemoteProtocolError):
    """Bytes from the wire failed to decode. ``reason`` is a short, stable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
