"""Nodes on loopback for tests: opened with ``Static`` discovery on 127.0.0.1 only.

Network safety: never mDNS; every node binds 127.0.0.1 (``interfaces=LOOPBACK``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypedDict

import shoal
from shoal import Node
from shoal.discovery import Static
from support.endpoints import endpoint, free_port

LOOPBACK = ["127.0.0.1"]


class Liveness(TypedDict):
    heartbeat: float
    peer_timeout: float


FAST = Liveness(heartbeat=0.2, peer_timeout=1.0)
"""Liveness settings for the tests that wait for a timeout (peer processes use them too)."""


def open_test_node(
    name: str, *, peers: Sequence[int] = (), port: int = 0, heartbeat: float = 0.5,
    peer_timeout: float = 2.0, max_peers: int | None = None,
) -> AbstractAsyncContextManager[Node]:
    """A node on loopback only, introduced to the nodes listening on ``peers`` (ports)."""
    return shoal.open_node(name, discovery=Static([endpoint(p) for p in peers]),
                           interfaces=LOOPBACK, port=port, heartbeat=heartbeat,
                           peer_timeout=peer_timeout, max_peers=max_peers)


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    """Nodes a and b that know each other; only b lists a."""
    a_port = free_port()
    async with (
        open_test_node("a", port=a_port) as a,
        open_test_node("b", peers=[a_port]) as b,
    ):
        await a.wait_for_peers(1)
        await b.wait_for_peers(1)
        yield a, b
