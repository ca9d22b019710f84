"""The peer table: which nodes are alive, what they offer, and where to reach them.

A pure reducer. The node feeds it what arrives on its control socket (``State``,
``Bye``) and the time; it answers with events (``PeerJoined``, ``PeerUpdated``,
``PeerLeft``) and says when it next needs to be asked about timeouts.

Rules (the theory of operation):

* A peer is an incarnation: ``(node id, epoch)``. A State with a known id and a new
  epoch means the node restarted: the old incarnation leaves (reason ``restarted``)
  and the new one joins.
* A peer that sends nothing for ``timeout`` seconds leaves (reason ``timeout``). It
  may come back with the same epoch (a link that flapped): it joins again. If another
  epoch of that id joins first, the timed-out one is retired. Peers that take part in
  the ring watch (``State.ring``, see ``shoal._core._ring``) are held to the timeout
  only by their watchers: this table holds its ring predecessors, says which of them
  to ``suspect``, and drops the others when a watcher reports them ``Gone``.
* Within an incarnation, a State with a lower revision than the last one is stale
  (reordered) and ignored.
* A ``Bye`` removes the peer at once (reason ``goodbye``). Its epoch is retired: a
  late State of that incarnation (reordered, or queued before the goodbye) is ignored,
  and so is a State of any incarnation replaced by a newer one.
* The table holds at most ``max_peers`` peers; States from further nodes are ignored
  and counted in ``refused``.

Sans-I/O: no clock, no sockets. ``now`` is any monotonic float the caller chooses.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from shoal._core._control import ChannelOffer, Role, State
from shoal._core._ring import SUSPECT_AFTER, Ring

__all__ = [
    "Peer",
    "PeerEvent",
    "PeerJoined",
    "PeerLeft",
    "PeerTable",
    "PeerUpdated",
    "choose_address",
    "control_endpoint",
    "offers",
]

_RETIRED_MAX = 4096


@dataclass(frozen=True, slots=True)
class Peer:
    """A node seen on the network (one incarnation of it)."""

    id: str
    """The node id, 32 hex digits (also the ``Message.sender`` of its messages)."""
    name: str
    """The name the node was opened with (not necessarily unique)."""
    epoch: int
    """The incarnation: a fresh number every time the node starts."""
    addresses: tuple[str, ...]
    """The addresses the node listens on."""
    address: str
    """Of ``addresses``, the one this node uses to reach it."""
    control_port: int
    channels: tuple[ChannelOffer, ...]
    """The node's catalogue: what it offers on which channel."""
    revision: int
    """Grows with every change of the node's catalogue."""
    last_seen: float = field(compare=False)
    """When this node last heard from it (the event loop's clock: ``anyio.current_time()``,
    ``trio.current_time()`` under trio). Under the ring watch only its watchers hear it
    every second or so: for the others this is when it last sent them something (its
    State, a beat)."""

    def endpoint(self, offer: ChannelOffer) -> str:
        """The ZeroMQ endpoint of one of this peer's listening channel offers."""
        return f"tcp://{_host(self.address)}:{offer.port}"

    @property
    def control_endpoint(self) -> str:
        """Where this node's control socket listens."""
        return control_endpoint(self.address, self.control_port)


def control_endpoint(address: str, port: int) -> str:
    """The ZeroMQ endpoint of a control socket at ``address`` and ``port``."""
    return f"tcp://{_host(address)}:{port}"


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@dataclass(frozen=True, slots=True)
class PeerJoined:
    """A node (incarnation) appeared."""

    peer: Peer


@dataclass(frozen=True, slots=True)
class PeerUpdated:
    """A node changed its catalogue (or addresses)."""

    peer: Peer
    previous: Peer


@dataclass(frozen=True, slots=True)
class PeerLeft:
    """A node (incarnation) is gone. ``reason``: ``goodbye`` (it said so),
    ``timeout`` (it went silent) or ``restarted`` (a new incarnation replaced it)."""

    peer: Peer
    reason: str


PeerEvent = PeerJoined | PeerUpdated | PeerLeft

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def choose_address(candidates: Sequence[str], networks: Iterable[Network]) -> str:
    """Of a peer's addresses, the first that lies in one of our own ``networks``
    (reachable directly); failing that, the first one."""
    nets = list(networks)
    for a in candidates:
        ip = ipaddress.ip_address(a)
        if any(ip.version == n.version and ip in n for n in nets):
            return a
    return candidates[0]


class PeerTable:
    """The live peers of one node, keyed by node id. See the module docstring."""

    def __init__(
        self, self_id: bytes, *, timeout: float, networks: Iterable[Network] = (),
        max_peers: int = 1024,
    ) -> None:
        self._self = self_id
        self._timeout = timeout
        self._networks = list(networks)
        self._max = max_peers
        self._peers: dict[bytes, Peer] = {}
        self._seen: dict[bytes, float] = {}
        self._retired: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        self._timed_out: OrderedDict[bytes, int] = OrderedDict()  # id -> its last epoch
        self.ring = Ring(self_id)  # this node and the peers that take part in the ring watch
        self._legacy: set[bytes] = set()  # live peers that do not: held directly
        self._preds: tuple[bytes, ...] = ()  # the ring predecessors this table holds
        self._since: dict[bytes, float] = {}  # held peers -> when the hold began
        self._suspected: set[bytes] = set()  # held peers sent a Suspect (not heard since)
        self._swept: dict[bytes, float] = {}  # ring peers asked to answer -> since when
        self.refused = 0
        """States ignored because the table was full."""

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: bytes) -> bool:
        """Whether an incarnation of ``node_id`` is a live peer."""
        return node_id in self._peers

    def control_endpoint(self, st: State) -> str | None:
        """Where the node that sent ``st`` would be reached, were it to join (the
        ``control_endpoint`` of its ``Peer``); None for a State without addresses."""
        if not st.addresses:
            return None
        return f"tcp://{_host(choose_address(st.addresses, self._networks))}:{st.control_port}"

    def peers(self) -> list[Peer]:
        """Every live peer, with ``last_seen`` filled in."""
        return [_with_seen(p, self._seen[k]) for k, p in self._peers.items()]

    def control_endpoints(self) -> set[str]:
        """Where every live peer's control socket listens."""
        return {p.control_endpoint for p in self._peers.values()}

    def get(self, node_id: bytes) -> Peer | None:
        p = self._peers.get(node_id)
        return None if p is None else _with_seen(p, self._seen[node_id])

    def _retire(self, key: tuple[bytes, int]) -> None:
        self._retired[key] = None
        if len(self._retired) > _RETIRED_MAX:
            self._retired.popitem(last=False)

    def on_state(self, st: State, now: float) -> list[PeerEvent]:
        """A State arrived. Returns what changed (often nothing: a heartbeat)."""
        nid = st.node_id
        if nid == self._self or (nid, st.epoch) in self._retired or not st.addresses:
            return []
        old = self._peers.get(nid)
        if old is not None and old.epoch == st.epoch:
            self._heard(nid, now)
            if st.revision < old.revision or (
                    st.revision == old.revision and st.addresses == old.addresses):
                return []  # a heartbeat, or a stale State overtaken by a newer one
            new = self._peer(st, now)
            self._peers[nid] = new
            return [PeerUpdated(new, _with_seen(old, now))]
        events: list[PeerEvent] = []
        if old is not None:
            self._retire((nid, old.epoch))
            events.append(PeerLeft(self._drop(nid, now), "restarted"))
        elif len(self._peers) >= self._max:
            self.refused += 1
            return []
        timed_out = self._timed_out.pop(nid, None)
        if timed_out is not None and timed_out != st.epoch:
            self._retire((nid, timed_out))  # replaced while away: its late States are stale
        new = self._peer(st, now)
        self._peers[nid] = new
        self._seen[nid] = now
        if st.ring:
            self.ring.add(nid)
            self._hold_predecessors(now)
        else:
            self._legacy.add(nid)
            self._since[nid] = now
        events.append(PeerJoined(new))
        return events

    def on_beat(self, node_id: bytes, epoch: int, now: float) -> bool:
        """A small heartbeat arrived: True if it is from a live peer's incarnation (it
        counts as heard from), False if the table does not hold that incarnation (a
        Beat never makes a peer join: only a State says enough)."""
        old = self._peers.get(node_id)
        if old is None or old.epoch != epoch:
            return False
        self._heard(node_id, now)
        return True

    def on_bye(self, node_id: bytes, epoch: int, now: float) -> list[PeerEvent]:
        """A goodbye arrived: the incarnation leaves now and stays retired."""
        self._retire((node_id, epoch))
        old = self._peers.get(node_id)
        if old is None or old.epoch != epoch:
            return []
        return [PeerLeft(self._drop(node_id, now), "goodbye")]

    def on_gone(self, node_id: bytes, epoch: int, now: float) -> list[PeerEvent]:
        """A watcher reports the incarnation silent for the timeout: it leaves (reason
        ``timeout``) unless this node heard from it within half a timeout."""
        old = self._peers.get(node_id)
        if old is None or old.epoch != epoch or self._seen[node_id] > now - self._timeout / 2:
            return []
        return [PeerLeft(self._time_out(node_id, now), "timeout")]

    def expire(self, now: float) -> list[PeerEvent]:
        """Every held peer (see the module docstring) silent for longer than the
        timeout leaves."""
        limit = now - self._timeout
        gone = [k for k, since in self._since.items() if max(self._seen[k], since) < limit]
        return [PeerLeft(self._time_out(k, now), "timeout") for k in gone
                if k in self._peers]

    def suspects(self, now: float) -> list[Peer]:
        """The watched ring peers silent for ``SUSPECT_AFTER`` of the timeout, each
        returned once (until heard from again): send each a ``Suspect``."""
        limit = now - self._timeout * SUSPECT_AFTER
        found = [k for k in self._preds if k not in self._suspected
                 and max(self._seen[k], self._since[k]) < limit]
        self._suspected.update(found)
        return [self._peers[k] for k in found]

    def sweep(self, now: float) -> list[Peer]:
        """This node timed out a peer it watched: every other ring peer must be heard
        from within half a timeout from ``now`` (ask each to answer), or it leaves
        (``expire_swept``). A node cut off from the rest so learns they are gone in one
        step, not a few watched peers per timeout."""
        found = [k for k in self.ring.others() if k not in self._since
                 and k not in self._swept and k in self._peers]
        for k in found:
            self._swept[k] = now
        return [self._peers[k] for k in found]

    def expire_swept(self, now: float) -> list[PeerEvent]:
        """The swept peers (``sweep``) not heard from within half a timeout leave
        (reason ``timeout``)."""
        limit = now - self._timeout / 2
        late = [k for k, at in self._swept.items() if at < limit]
        return [PeerLeft(self._time_out(k, now), "timeout") for k in late]

    def takes_part(self, node_id: bytes) -> bool:
        """Whether the live peer ``node_id`` takes part in the ring watch."""
        return node_id in self.ring and node_id in self._peers

    def legacy(self) -> list[bytes]:
        """The live peers that do not take part in the ring watch (beaten directly)."""
        return list(self._legacy)

    def next_deadline(self) -> float | None:
        """When ``expire`` or ``suspects`` could next have something to do (None:
        nothing held)."""
        t, sa = self._timeout, self._timeout * SUSPECT_AFTER
        deadlines = [max(self._seen[k], since) + (sa if k in self._preds and k not in
                                                  self._suspected else t)
                     for k, since in self._since.items()]
        deadlines += (at + t / 2 for at in self._swept.values())
        return min(deadlines) if deadlines else None

    def _heard(self, node_id: bytes, now: float) -> None:
        self._seen[node_id] = now
        self._suspected.discard(node_id)
        self._swept.pop(node_id, None)

    def _hold_predecessors(self, now: float) -> None:
        """The ring changed: hold its predecessors now (a fresh timeout for a peer that
        was not held), let go of those that are not any more."""
        preds = self.ring.predecessors
        if preds == self._preds:
            return
        for k in self._preds:
            if k not in preds and k not in self._legacy:
                self._since.pop(k, None)
                self._suspected.discard(k)
        for k in preds:
            self._since.setdefault(k, now)
        self._preds = preds

    def _time_out(self, node_id: bytes, now: float) -> Peer:
        p = self._drop(node_id, now)
        # remembered, so that a new incarnation joining later retires this one
        self._timed_out[node_id] = p.epoch
        if len(self._timed_out) > _RETIRED_MAX:
            self._timed_out.popitem(last=False)
        return p

    def _drop(self, node_id: bytes, now: float) -> Peer:
        p = self._peers.pop(node_id)
        self._since.pop(node_id, None)
        self._suspected.discard(node_id)
        self._swept.pop(node_id, None)
        self._legacy.discard(node_id)
        if self.ring.remove(node_id):
            self._hold_predecessors(now)
        return _with_seen(p, self._seen.pop(node_id))

    def _peer(self, st: State, now: float) -> Peer:
        return Peer(
            id=st.node_id.hex(), name=st.name, epoch=st.epoch, addresses=st.addresses,
            address=choose_address(st.addresses, self._networks),
            control_port=st.control_port, channels=st.channels, revision=st.revision,
            last_seen=now,
        )


def _with_seen(p: Peer, seen: float) -> Peer:
    if p.last_seen == seen:
        return p
    return Peer(p.id, p.name, p.epoch, p.addresses, p.address, p.control_port, p.channels,
                p.revision, seen)


def offers(peer: Peer, channel: str, role: Role) -> list[ChannelOffer]:
    """The peer's listening offers on ``channel`` in ``role``."""
    return [c for c in peer.channels if c.name == channel and c.role is role and c.port]
