"""Static discovery: a fixed list of control endpoints, for networks without multicast.

Each listed endpoint gets a persistent control link: the node introduces itself there
on start and on every heartbeat, and libzmq keeps reconnecting while the peer is down,
so a peer that starts later, or restarts, is found as soon as it listens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from shoal._zmq import check_endpoint
from shoal.errors import InvalidEndpoint, LocalProtocolError

if TYPE_CHECKING:
    from shoal._node import Node

__all__ = ["Static"]


class Static:
    """Discovery from a list of peers' control endpoints (``"tcp://10.0.0.7:7700"``, or
    ``"10.0.0.7:7700"``). Open those nodes with a fixed ``port=``; ``node.control_endpoint``
    tells what to list. ``interfaces``: addresses this node listens on (None: those of
    the node's other sources, else every multicast-capable interface)."""

    def __init__(self, peers: Sequence[str], *, interfaces: Sequence[str] | None = None) -> None:
        if isinstance(peers, str):
            raise LocalProtocolError("Static() takes a list of endpoints, e.g. "
                                     "Static(['tcp://10.0.0.7:7700'])")
        self.peers = tuple(_endpoint(p) for p in peers)
        self.interfaces = None if interfaces is None else tuple(interfaces)

    def __repr__(self) -> str:
        return f"Static({list(self.peers)!r})"

    async def _run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        for ep in self.peers:
            node.introduce(ep, persistent=True)
        task_status.started()


def _endpoint(value: object) -> str:
    if not isinstance(value, str):
        raise LocalProtocolError(f"a static peer is an endpoint string, not {value!r}")
    ep = value if "://" in value else f"tcp://{value}"
    check_endpoint(ep)
    host, sep, port = ep.removeprefix("tcp://").rpartition(":")
    fixed = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
    if not ep.startswith("tcp://") or not sep or not host or not fixed:
        raise InvalidEndpoint(f"a static peer is 'tcp://HOST:PORT' with a fixed port, "
                              f"not {value!r}")
    return ep
