"""The control protocol's liveness and reach: the ring watch, member lists, and one
connection per pair. Part of ``Control`` (``shoal.node._control``), kept apart so each
module reads at a glance.

The ring watch (``shoal._core._ring``): beats go to this node's ring successors in
turn; a quiet predecessor is sent ``Suspect``, one silent for the timeout is dropped
and reported ``Gone`` to every peer, and every other peer is asked to answer (the
sweep). Member lists: a plaintext node asks its first peers which nodes they know.

One connection per pair: of two nodes that take part in the ring, only the one with
the lower node id keeps a control link to the other. Its link names itself with the
route ``node id + epoch``; the other node answers on that connection, through its
control socket (``_send``), and closes its own link to it once the route is seen.
The lower node reads its links (``LinkPool``). If the route cannot be used (the
connection is down), a link is opened again until it can. Nodes that do not take part
keep one link each way, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import anyio

from shoal._core import Identity, Peer, PeerEvent, PeerLeft, PeerTable, control_endpoint
from shoal._core._control import (
    MAX_MEMBERS,
    Ask,
    Gone,
    Members,
    MembersQuery,
    Suspect,
    encode_control,
)
from shoal._io import WouldBlock
from shoal._zmq._socket import Socket
from shoal.errors import ShoalError
from shoal.node._guard import Guard
from shoal.node._links import LinkPool
from shoal.node._watch import log

__all__ = ["REFUTE_FOR", "RingWatch", "route_of"]

REFUTE_FOR = 5
"""Peer timeouts for which a node that suspected us is beaten directly (the views of
the ring agree again by then: a join is heard of within milliseconds)."""


def route_of(node_id: bytes, epoch: int) -> bytes:
    """The routing id a node's control links connect with: its incarnation."""
    return node_id + epoch.to_bytes(4, "big")


class RingWatch:
    """The ring watch, member lists and routes of ``Control`` (a mixin: ``Control``
    sets every attribute named here)."""

    identity: Identity
    table: PeerTable
    links: LinkPool
    live: set[str]
    addresses: tuple[str, ...]
    port: int
    _socket: Socket
    _guard: Guard
    _timeout: float
    _heartbeat: float
    _beat_frame: bytes
    _state_frame: bytes
    _beat_now: anyio.Event
    _refuting: dict[bytes, float]
    _successors: tuple[bytes, ...]
    _ring_ids: set[bytes]
    _departed: OrderedDict[bytes, str]
    _turn: int
    _routes: dict[bytes, bytes]
    suspicions: int
    reported_gone: int
    members_learned: int

    def _apply(self, events: list[PeerEvent]) -> None:
        raise NotImplementedError

    def introduce(self, endpoint: str, *, persistent: bool = False,
                  server_key: bytes | None = None) -> None:
        raise NotImplementedError

    def self_peer(self) -> Peer:
        raise NotImplementedError

    # -- one connection per pair ---------------------------------------------------------

    def _route_seen(self, node_id: bytes, epoch: int, route: bytes) -> None:
        """A message came from ``route``: if it is the link of a lower node that takes
        part in the ring, answer it there from now on, and close our link to it."""
        if (node_id >= self.identity.sender or route != route_of(node_id, epoch)
                or self._routes.get(node_id) == route or not self.table.takes_part(node_id)):
            return
        peer = self.table.get(node_id)
        if peer is None or peer.epoch != epoch:
            return
        self._routes[node_id] = route
        self._send(peer, self._state_frame)  # (in case our link had not delivered it)
        self.links.drop(peer.control_endpoint)

    def _send(self, peer: Peer, frame: bytes) -> None:
        """``frame`` to ``peer``: on the route of its link to us if it has one (a lower
        node that takes part), else on our link to it (opened if need be)."""
        nid = bytes.fromhex(peer.id)
        route = self._routes.get(nid)
        if route is not None and route == route_of(nid, peer.epoch):
            try:
                self._socket.send_to_nowait(route, frame)
                return
            except WouldBlock:
                return  # its connection is not reading: the next beat will do
            except ShoalError:
                del self._routes[nid]  # not connected (now): a link of our own until it is
        endpoint = peer.control_endpoint
        if endpoint not in self.links:
            self.introduce(endpoint, server_key=self._guard.server_key(peer.id))
        self.links.send(endpoint, frame)

    def _send_all(self, peers: Iterable[Peer], frame: bytes) -> None:
        for peer in peers:
            self._send(peer, frame)

    def _routed(self) -> list[Peer]:
        """The live peers answered on their links' routes."""
        out = []
        for nid in list(self._routes):
            peer = self.table.get(nid)
            if peer is None:
                del self._routes[nid]
            else:
                out.append(peer)
        return out

    # -- the ring watch --------------------------------------------------------------------

    def _on_ring(self, msg: Suspect | Gone | Ask, now: float) -> None:
        me = self.identity
        if isinstance(msg, Ask):
            peer = self.table.get(msg.by)
            if peer is not None:
                self._send(peer, self._state_frame)
        elif msg.node_id != me.sender:
            if isinstance(msg, Gone):
                events = self.table.on_gone(msg.node_id, msg.epoch, now)
                self.reported_gone += len(events)
                self._apply(events)
        elif msg.epoch != me.epoch:
            pass  # about an earlier incarnation of this node
        elif isinstance(msg, Suspect):
            # a watcher does not hear us: beat it now, and directly for a while
            peer = self.table.get(msg.by)
            if peer is not None:
                self._refuting[msg.by] = now + REFUTE_FOR * self._timeout
                self._send(peer, self._beat_frame)
        else:
            # reported gone while alive: every peer that dropped us hears our State
            log.info("a peer reported this node gone (a link that failed one way?); "
                     "telling every peer it is here")
            self._beat_now.set()

    def _ask(self, endpoint: str) -> None:
        """Our State, and a request for theirs, to ``endpoint``."""
        self.introduce(endpoint)
        self.links.send(endpoint, encode_control(Ask(self.identity.sender)))

    def _on_members(self, msg: MembersQuery | Members) -> None:
        """Answer a member query with our live peers' control endpoints; introduce
        ourselves to the nodes of a member list that we have no link to."""
        asker = self.table.get(msg.by)
        if asker is None:
            return  # only a live peer asks, or answers what we asked
        if isinstance(msg, MembersQuery):
            known = [(p.address, p.control_port) for p in self.table.peers()
                     if p.id != asker.id][:MAX_MEMBERS]
            self._send(asker, encode_control(Members(self.identity.sender, tuple(known))))
            return
        mine = {(a, self.port) for a in self.addresses}
        live = self.live
        for address, port in msg.endpoints:
            endpoint = control_endpoint(address, port)
            if (address, port) not in mine and endpoint not in self.links \
                    and endpoint not in live:
                self.members_learned += 1
                self.introduce(endpoint)

    def _beat_new_successors(self) -> None:
        """The ring changed: a new successor is beaten at once (it holds us from now)."""
        succ = self.table.ring.successors
        if succ == self._successors:
            return
        new = [nid for nid in succ if nid not in self._successors]
        self._successors = succ
        for nid in new:
            peer = self.table.get(nid)
            if peer is not None:
                self._send(peer, self._beat_frame)

    def _targets(self, now: float, beats: int) -> list[Peer]:
        """The peers to beat: the ring successors (in turn, one per heartbeat, when
        each still hears from us twice per peer timeout), peers that do not take part,
        watchers that suspected us."""
        for nid in [n for n, until in self._refuting.items() if until <= now]:
            del self._refuting[nid]
        succ = self.table.ring.successors
        if succ and len(succ) * self._heartbeat * 2 <= self._timeout:
            succ = (succ[beats % len(succ)],)
        targets = {}
        for nid in (*succ, *self.table.legacy(), *self._refuting):
            peer = self.table.get(nid)
            if peer is not None:
                targets[nid] = peer
        return list(targets.values())

    def _watch(self, now: float) -> None:
        """Suspect the watched peers that went quiet; drop those silent for the
        timeout, tell every peer (``Gone``), and ask every other peer to answer (the
        sweep: if it is this node that was cut off, it finds out at once)."""
        for peer in self.table.suspects(now):
            self.suspicions += 1
            log.debug("peer %s (%s) is quiet: suspected", peer.name, peer.id[:8])
            self._send(peer, encode_control(
                Suspect(bytes.fromhex(peer.id), peer.epoch, self.identity.sender)))
        events = self.table.expire(now)
        gone = [ev.peer for ev in events if isinstance(ev, PeerLeft)
                and bytes.fromhex(ev.peer.id) in self._ring_ids]
        if gone:
            self._send_all(self.table.sweep(now), encode_control(Ask(self.identity.sender)))
        events += self.table.expire_swept(now)
        if events:
            self._apply(events)
        else:
            self.links.prune(self.live, now)
        if gone:
            peers = [p for p in (self.table.get(nid) for nid in self._ring_ids)
                     if p is not None]
            for p in gone:
                self._send_all(peers, encode_control(
                    Gone(bytes.fromhex(p.id), p.epoch, self.identity.sender)))

    def _next_in_turn(self) -> Peer | None:
        """The live peer whose turn it is for our full State: the k-th after this node
        in the order of node ids, k growing by one each time. Every node counting from
        its own place, each peer gets one State per turn (were all to count from the
        first, each would get them all at once)."""
        peers = {bytes.fromhex(p.id): p for p in self.table.peers()}
        if not peers:
            return None
        order = sorted({*peers, self.identity.sender})
        self._turn = self._turn % (len(order) - 1) + 1
        nid = order[(order.index(self.identity.sender) + self._turn) % len(order)]
        return peers.get(nid)

