"""The ring watch: which peers a node beats, and which it holds to the peer timeout.

With every node beating every other, each node sends and receives N heartbeats per
interval. Here the nodes that take part (``State.ring``) sit on a ring ordered by
node id; each node beats only its ``WIDTH`` successors and holds only its ``WIDTH``
predecessors to the timeout, so a node's cost is constant in N and every node is
still watched by ``WIDTH`` others. (A node beats its successors in turn, one per
heartbeat, when each still hears from it at least twice per peer timeout: with the
defaults, 0.5 s and 2 s, each watcher hears from its peer every second.) What a
watcher finds, everyone learns:

* a watched peer silent for ``SUSPECT_AFTER`` of the timeout is sent ``Suspect``: if
  it is alive but does not beat this watcher (their views of the ring differ for a
  moment: a join not yet heard of), it beats the watcher at once and goes on doing
  so for a while (``refute``), so no live peer is dropped for a difference of views;
* one silent for the whole timeout leaves, and the watcher tells every peer that
  takes part (``Gone``): they drop it too, unless they heard from it themselves
  within half a timeout;
* and the watcher asks every other peer to answer within half a timeout (the sweep),
  dropping those that do not: a node that is itself cut off learns at once that the
  others are gone, rather than a few watched peers per timeout.

A peer that does not take part (an older node) is beaten directly and held to the
timeout directly, as before. A peer that becomes watched (the ring changed) gets a
fresh timeout from that moment.

Sans-I/O: ids and times are passed in.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

__all__ = ["SUSPECT_AFTER", "WIDTH", "Ring"]

WIDTH = 2
"""Successors each node beats (and predecessors each node watches)."""
SUSPECT_AFTER = 0.75
"""Of the peer timeout: the silence after which a watched peer is sent ``Suspect``."""


class Ring:
    """Node ids in order (this node's among them); ``successors`` and
    ``predecessors`` are this node's ``WIDTH`` neighbours on each side."""

    def __init__(self, self_id: bytes, width: int = WIDTH) -> None:
        self._self = self_id
        self._width = width
        self._ids: list[bytes] = [self_id]
        self.successors: tuple[bytes, ...] = ()
        self.predecessors: tuple[bytes, ...] = ()

    def __contains__(self, node_id: bytes) -> bool:
        i = bisect.bisect_left(self._ids, node_id)
        return i < len(self._ids) and self._ids[i] == node_id

    def __len__(self) -> int:
        """Nodes on the ring, this one included."""
        return len(self._ids)

    def add(self, node_id: bytes) -> bool:
        """Put ``node_id`` on the ring; False if it was there already."""
        i = bisect.bisect_left(self._ids, node_id)
        if i < len(self._ids) and self._ids[i] == node_id:
            return False
        self._ids.insert(i, node_id)
        self._neighbours()
        return True

    def remove(self, node_id: bytes) -> bool:
        """Take ``node_id`` off the ring; False if it was not there."""
        if node_id == self._self or node_id not in self:
            return False
        self._ids.pop(bisect.bisect_left(self._ids, node_id))
        self._neighbours()
        return True

    def others(self) -> list[bytes]:
        """Every node on the ring but this one."""
        return [k for k in self._ids if k != self._self]

    def extend(self, node_ids: Iterable[bytes]) -> None:
        for nid in node_ids:
            self.add(nid)

    def _neighbours(self) -> None:
        n = len(self._ids)
        k = min(self._width, n - 1)
        me = bisect.bisect_left(self._ids, self._self)
        self.successors = tuple(self._ids[(me + j) % n] for j in range(1, k + 1))
        self.predecessors = tuple(self._ids[(me - j) % n] for j in range(1, k + 1))
