"""Routes: the routing ids a node gives its connections to its peers' listeners.

A ROUTER socket that connects names each connection itself (``CONNECT_ROUTING_ID``)
and sends to that name. A node names the connection to one listener of one peer
incarnation so that the name says whose it is::

    b"r" | peer id (16 bytes) | epoch (u32, big-endian) | port (u16, big-endian)

The epoch is part of it: requests waiting on a restarted peer fail even if the new
incarnation listens on the same port. ``Route`` is that value, typed; ``encode`` and
``Route.decode`` are the only places that know the layout. Resources opened on
explicit endpoints name their connections ``local_route(letter, index)`` instead.

Contract: sans-I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from shoal._core._errors import DecodeError

__all__ = ["Route", "local_route"]

_LAYOUT: Final = struct.Struct(">c16sIH")
_TAG: Final = b"r"


@dataclass(frozen=True, slots=True)
class Route:
    """A node's route to one listener (``port``) of one incarnation (``epoch``) of the
    peer ``peer_id`` (its node id, 32 hex digits)."""

    peer_id: str
    epoch: int
    port: int

    def encode(self) -> bytes:
        """The routing id (22 bytes)."""
        return _LAYOUT.pack(_TAG, bytes.fromhex(self.peer_id), self.epoch, self.port)

    @classmethod
    def decode(cls, raw: bytes) -> Route:
        """The route a routing id names; ``DecodeError`` (reason ``not-a-route``) for
        bytes that are not one."""
        if len(raw) != _LAYOUT.size or raw[:1] != _TAG:
            raise DecodeError("not-a-route", f"{len(raw)} bytes")
        _, peer, epoch, port = _LAYOUT.unpack(raw)
        return cls(peer.hex(), epoch, port)


def local_route(letter: bytes, index: int) -> bytes:
    """The routing id of the ``index``-th connection a resource opened on explicit
    endpoints makes: one ``letter`` (which resource) and four bytes."""
    return letter + index.to_bytes(4, "big")
