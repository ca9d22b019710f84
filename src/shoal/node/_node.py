"""A node: one process's presence on the LAN, and the patterns wired by channel name.

What a node owns: an identity (a node id, stable for a name on a host unless given,
and a fresh epoch per start), its own ZeroMQ context, a control socket that other
nodes talk to and a link to each of them, the peer table, its discovery sources, and
the sockets of the channels opened through it.

``Node`` is a facade over rooms, each one concern:

* ``_guard``: whether the node is secured (CURVE options, connecting, trust: decided
  there, once);
* ``_sockets``: the socket factory (the node's context and options);
* ``_control``: the control protocol (introductions, State heartbeats, goodbyes,
  admission, the peer table) and ``_links``, the pool of control links;
* ``_discovered``: what discovery sources report, and the node's decisions on it
  (which address, whom to introduce itself to, again after partitions);
* ``_channels``: the catalogue and the wiring of connecting roles to listeners, and
  ``_patterns``: the ``open_*`` factories;
* ``_clock`` (``read_clock``) and ``_watch`` (``watch_peers``).

Security (``open_node(..., security=Security(keypair, trust))``): every socket is a
CURVE server (binding) or client (connecting); the node's ZAP handler, bound on the
node's context before the control socket, admits the keys its trust policy allows.
Each ``connect()`` names the server's public key, which comes from the discovery
source for an introduction, and from the ZAP-authenticated ``User-Id`` of a peer's
State for everything else: the link back and every data connection to that peer's
listeners (see ``_guard`` and ``_links``).

Never here: reading a socket outside the event loop (trio or asyncio), blocking calls
in the event loop's thread (zeroconf is driven through ``anyio.to_thread``), timers that
are not the event loop's clock.
"""

from __future__ import annotations

import hashlib
import logging
import socket as _socket
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import zmq
from anyio.abc import TaskGroup

from shoal._core import MAX_ADDRESSES, Identity, Peer, PeerEvent, PeerTable
from shoal._process import new_identity
from shoal._zmq._socket import DEFAULT_MAX_MESSAGE_SIZE, require_loop
from shoal._zmq._tasks import open_service_nursery
from shoal.discovery._contract import Advertisement, Source
from shoal.discovery._interfaces import (
    local_networks,
    multicast_addresses,
    resolve_interfaces,
)
from shoal.errors import ClosedError, LocalProtocolError
from shoal.node._channels import Channels, NodeResource
from shoal.node._clock import ClockSample, sample_clock
from shoal.node._control import Control, Reasons
from shoal.node._discovered import Discovered
from shoal.node._guard import guard_for
from shoal.node._links import MAX_PENDING_LINKS
from shoal.node._patterns import Patterns
from shoal.node._sockets import SocketFactory, check_descriptors
from shoal.node._watch import PeerWatch, WarnOnce
from shoal.patterns._common import check_busy_poll
from shoal.security._curve import Security
from shoal.security._zap import ZapStatistics

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_MAX_PEERS", "DEFAULT_PEER_TIMEOUT", "MAX_PENDING_LINKS",
           "ClockSample", "Node", "NodeResource", "NodeStatistics", "PeerWatch", "Source",
           "open_node"]

DEFAULT_HEARTBEAT = 0.5
"""Seconds between two States on each control link."""
DEFAULT_PEER_TIMEOUT = 2.0
"""Seconds of silence after which a peer is taken for dead."""
DEFAULT_MAX_PEERS = 1000
"""Peers (control links) a node keeps at most, unless told otherwise."""


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """Counters of a node at one moment."""

    peers: int
    """Live peers."""
    links: int
    """Control links (live peers, plus nodes being introduced to): this node's own,
    and those of lower peers it answers on (one connection per pair)."""
    control_received: int
    """Valid control messages received."""
    malformed: int
    """Control messages dropped as malformed (see the log at DEBUG)."""
    version_mismatches: int
    """Control messages from nodes on another protocol version (ignored)."""
    refused: int
    """States ignored because the peer table was full."""
    beats_received: int = 0
    """Of ``control_received``, the small heartbeats (``Beat``)."""
    links_refused: int = 0
    """Control links not opened for want of a socket or descriptor (logged)."""
    links_unanswered: int = 0
    """Control links that went unanswered (logged once each, with the likely cause)."""
    peers_refused: int = 0
    """Nodes not linked to because ``max_peers`` was reached (logged and counted once
    each until admitted; tried again when discovery repeats and a place is free)."""
    suspicions: int = 0
    """Watched peers this node found quiet and sent ``Suspect`` (the ring watch)."""
    reported_gone: int = 0
    """Peers dropped because the peer watching them reported them silent (``Gone``)."""
    members_learned: int = 0
    """Nodes this node introduced itself to because a peer listed them (a node that
    knows one member meets the others; plaintext nodes)."""


def default_node_id(name: str) -> bytes:
    """A node id that stays the same for ``name`` on this host across restarts."""
    return hashlib.sha256(f"shoal-node\0{_socket.gethostname()}\0{name}".encode()).digest()[:16]


class Node(Patterns):
    """A process's presence on the LAN. Make one with ``shoal.open_node``."""

    def __init__(
        self, name: str, identity: Identity, *, addresses: Sequence[str], bind_host: str,
        port: int, heartbeat: float, peer_timeout: float, security: Security | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, busy_poll: float = 0.0,
        max_peers: int = DEFAULT_MAX_PEERS,
    ) -> None:
        self.name = name
        self.identity = identity
        self.max_peers = max_peers
        """The most peers this node keeps (see ``open_node``)."""
        self.security = security
        """The node's CURVE key pair and trust policy; None for a plaintext node."""
        self._addresses = tuple(addresses)
        self._warned = WarnOnce()
        self._guard = guard_for(security, self._warned, identity.sender.hex())
        self._sockets = SocketFactory(self._guard, bind_host=bind_host,
                                      max_message_size=max_message_size, busy_poll=busy_poll,
                                      max_peers=max_peers)
        self._networks = local_networks(self._addresses)
        self._watches: weakref.WeakSet[PeerWatch] = weakref.WeakSet()
        self._channels = Channels(self._guard, self._catalogue_changed)
        try:
            self._guard.bind_zap(self._sockets.context)
            self._control = Control(
                identity, name, self._addresses, self._sockets,
                PeerTable(identity.sender, timeout=peer_timeout, networks=self._networks,
                          max_peers=max_peers),
                self._warned, port=port, heartbeat=heartbeat, peer_timeout=peer_timeout,
                on_events=self._peers_changed,
                reconnect=self._channels.reconnect, max_peers=max_peers)
        except BaseException:
            self._guard.close()
            self._sockets.context.term()
            raise
        self._io = self._control.io  # the event loop's primitives
        self._discovered = Discovered(self._control, self._guard, self._warned,
                                      lambda: self._networks)

    def _start(self, nursery: TaskGroup) -> None:
        self._control.links.start(nursery)
        nursery.start_soon(self._guard.serve)
        nursery.start_soon(self._control.read)
        nursery.start_soon(self._control.beat)
        nursery.start_soon(self._discovered.run)

    def _advertisement(self) -> Advertisement:
        return Advertisement(self.name, self.identity.sender, self.epoch, self._addresses,
                             self.control_port, self._guard.public_key)

    # -- who we are --------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This node's id, 32 hex digits (the ``sender`` of its messages)."""
        return self.identity.sender.hex()

    @property
    def epoch(self) -> int:
        """This incarnation: a fresh number every time the node starts."""
        return self.identity.epoch

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses this node listens on and advertises."""
        return self._addresses

    @property
    def control_port(self) -> int:
        """The port of this node's control socket."""
        return self._control.port

    @property
    def control_endpoint(self) -> str:
        """Where other nodes reach this node's control socket (for static peer lists)."""
        return f"tcp://{self._addresses[0]}:{self.control_port}"

    @property
    def public_key(self) -> bytes | None:
        """This node's CURVE public key (Z85), what peers need to reach it; None for a
        plaintext node."""
        return self._guard.public_key

    # -- what we know of others -------------------------------------------------------

    def peers(self) -> list[Peer]:
        """A snapshot of the live peers (not this node); empty once the node is closed."""
        return [] if self._control.closed else self._control.table.peers()

    def resources(self) -> list[NodeResource]:
        """The resources open through this node now, oldest first."""
        return self._channels.resources()

    def watch_peers(self) -> PeerWatch:
        """Peer changes from now on: ``async for change in node.watch_peers(): ...``.
        Take ``peers()`` first for those already known."""
        w = PeerWatch(self._io)
        if self._control.closed:
            w._close()
        self._watches.add(w)
        return w

    async def wait_for_peers(self, n: int = 1, *, channel: str | None = None) -> list[Peer]:
        """Wait until at least ``n`` peers are live (offering ``channel``, if given) and
        return them. The caller owns the timeout (``trio.fail_after``,
        ``anyio.fail_after``, ``asyncio.timeout``)."""
        watch = self.watch_peers()
        while True:
            if self._control.closed:
                raise ClosedError("the node is closed; open a new one")
            found = [p for p in self.peers()
                     if channel is None or any(c.name == channel for c in p.channels)]
            if len(found) >= n:
                await self._io.checkpoint()
                return found
            try:
                await watch.__anext__()
            except StopAsyncIteration:
                raise ClosedError("the node closed while waiting for peers") from None

    def statistics(self) -> NodeStatistics:
        """An immutable snapshot of this node's counters."""
        c = self._control
        return NodeStatistics(
            peers=len(self.peers()), links=len(c.links) + c.links.routed(),
            control_received=c.received,
            malformed=c.malformed.total, version_mismatches=c.mismatches,
            refused=c.table.refused, beats_received=c.beats_received,
            suspicions=c.suspicions, reported_gone=c.reported_gone,
            members_learned=c.members_learned,
            links_refused=c.links.refused_links, links_unanswered=c.links.unanswered,
            peers_refused=c.links.peers_refused)

    def zap_statistics(self) -> ZapStatistics | None:
        """The ZAP handler's counters (connections admitted and refused by this node's
        trust policy); None for a plaintext node."""
        return self._guard.zap_statistics()

    # -- introductions -----------------------------------------------------------------

    def introduce(self, endpoint: str, *, persistent: bool = False,
                  server_key: bytes | None = None) -> None:
        """Send this node's State to a control endpoint (what discovery reports lead to;
        for tools and tests).

        ``persistent``: keep the link for as long as the node lives, so a node that
        starts there later is found. ``server_key``: the Z85 public key of the node
        there; required by a secured node (raises ``LocalProtocolError`` without it),
        refused by a plaintext one."""
        self._control.introduce(endpoint, persistent=persistent, server_key=server_key)

    def has_link(self, endpoint: str) -> bool:
        """Whether a control link to ``endpoint`` is open (for diagnostics)."""
        return endpoint in self._control.links

    async def read_clock(self, endpoint: str, *, samples: int = 3,
                         server_key: bytes | str | None = None) -> ClockSample:
        """Compare the wall clock of the node at control ``endpoint`` (a peer's
        ``control_endpoint``) with this one's: ``samples`` queries in turn over one
        connection, keeping the one with the shortest round trip (the first one also
        pays for the connection).

        The caller owns the timeout (``trio.fail_after``, ``anyio.fail_after``,
        ``asyncio.timeout``): a node of a shoal that
        predates clock queries never answers. Cancel-safe (nothing is left open).
        ``server_key``: on a secured node, the public key of the node asked (by
        default the key of the live peer or link at ``endpoint``).

        Raises ``LocalProtocolError`` for ``samples`` < 1, a bad endpoint or (secured)
        no known key, ``ClosedError`` if this node is closed.
        """
        if type(samples) is not int or samples < 1:
            raise LocalProtocolError(f"samples= is a whole number >= 1, not {samples!r}")
        key = server_key.encode() if isinstance(server_key, str) else server_key
        if key is None:
            key = self._key_for(endpoint)
        sock = self._sockets.open(zmq.DEALER, [(zmq.SNDHWM, 8)], linger_ms=0, data=False)
        try:
            self._guard.connect(sock, endpoint, key)
            return await sample_clock(sock, samples)
        finally:
            sock.close()

    def _key_for(self, control_endpoint: str) -> bytes | None:
        for p in self._control.table.peers():
            if p.control_endpoint == control_endpoint:
                key = self._guard.key_of(p.id)
                if key is not None:
                    return key
        return self._control.links.key_of(control_endpoint)

    # -- the node's own wiring -----------------------------------------------------------

    def _peers_changed(self, events: list[PeerEvent], reasons: Reasons) -> None:
        if self._channels.concerns(events):
            self._channels.rewire([self._control.self_peer(), *self._control.table.peers()],
                                  reasons)
        for w in list(self._watches):
            for ev in events:
                w._push(ev)

    def _catalogue_changed(self) -> None:
        self._control.publish(self._channels.offers())
        self._channels.rewire([self._control.self_peer(), *self._control.table.peers()])

    def _goodbye(self) -> None:
        """Say goodbye to every peer (first thing on leaving: peers drop us at once);
        from then on nothing new opens and the catalogue stays as it is."""
        self._control.goodbye()
        self._sockets.closed = True
        self._channels.closed = True

    async def _close(self) -> None:
        """Close every socket (goodbyes get 200 ms to leave), end every watch."""
        self._goodbye()
        self._control.close()
        self._guard.close()  # after the servers, before term (which waits for it)
        for w in list(self._watches):
            w._close()
        await self._sockets.term()


def _bind_plan(interfaces: Sequence[str] | None) -> tuple[str, list[str]]:
    """Where to bind, and which addresses to advertise."""
    if interfaces is not None:
        if isinstance(interfaces, str) or not all(isinstance(i, str) for i in interfaces):
            raise LocalProtocolError("interfaces= takes a list of IPv4 addresses or "
                                     f"interface names, e.g. ['127.0.0.1'] or ['lo']; "
                                     f"not {interfaces!r}")
        addrs = resolve_interfaces(interfaces)
        if not addrs or len(addrs) > MAX_ADDRESSES:
            raise LocalProtocolError(f"interfaces= takes 1 to {MAX_ADDRESSES} addresses "
                                     "(or None for every multicast-capable interface)")
        return (addrs[0] if len(addrs) == 1 else "0.0.0.0"), addrs
    # A State carries at most MAX_ADDRESSES; a host with more interfaces advertises
    # the first ones (peers pick, of those, one on a network they share).
    addrs = (multicast_addresses() or ["127.0.0.1"])[:MAX_ADDRESSES]
    return "0.0.0.0", addrs


@asynccontextmanager
async def open_node(
    name: str,
    *,
    discovery: Source | Sequence[Source] = (),
    interfaces: Sequence[str] | None = None,
    port: int = 0,
    node_id: bytes | None = None,
    heartbeat: float = DEFAULT_HEARTBEAT,
    peer_timeout: float = DEFAULT_PEER_TIMEOUT,
    security: Security | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    busy_poll: float = 0.0,
    max_peers: int | None = None,
) -> AsyncIterator[Node]:
    """Open a node: this process's presence on the network, with patterns by channel.

    ``discovery``: ``shoal.discovery.MDNS(...)``, ``shoal.discovery.Static([...])`` or a
    list of both. ``interfaces``: the IPv4 addresses (or interface names: ``lo``) to
    listen on and advertise; by default those of the discovery sources
    (``MDNS(interfaces=[...])``), else every multicast-capable interface. ``port``: the
    control port (0 picks one; static peer lists need a fixed one). ``node_id``: 16
    bytes; by default derived from ``name`` and the host name, so a restarted node
    keeps its id (with a new epoch).
    ``heartbeat`` / ``peer_timeout``: seconds between heartbeats, and of silence
    before a peer counts as gone (it is then disconnected from every channel).
    ``security``: ``shoal.security.Security(keypair, trust)`` encrypts and
    authenticates every connection with CURVE and admits only the peers ``trust``
    allows; discovery then needs the peers' keys (``MDNS`` advertises them,
    ``Static`` takes them as ``{endpoint: key}``). Secured and plaintext nodes never
    talk to each other. ``max_message_size``: the largest message (bytes, envelope
    included) the node's sockets accept from peers and let the application send
    (``MessageTooLarge`` beyond; default 16 MiB; -1 for no limit); give every node
    of a system the same value. ``busy_poll``: seconds each of the node's channels
    spins reading its socket before it sleeps (0, the default: never; see the
    README's "Busy polling").
    ``max_peers``: the most peers the node keeps (default 1000), each with a control
    link; the node's ZeroMQ context is sized for them. Past it, a new node is refused
    before any socket is made: logged once, counted in ``statistics().peers_refused``,
    and tried again when discovery repeats and a place is free (a peer that leaves
    frees its place). If the process's descriptor limit (``ulimit -n``) looks too low
    for ``max_peers``, the node logs it at start (a warning if ``max_peers`` was given).

    Leaving the block says goodbye to every peer and closes the node's sockets.
    Raises ``LocalProtocolError`` for bad arguments, ``TransportError`` if the
    address cannot be bound.
    """
    require_loop("shoal.open_node() was entered")
    if not isinstance(name, str) or not name:
        raise LocalProtocolError(f"a node name is a non-empty string, not {name!r}")
    sources = [discovery] if not isinstance(discovery, Sequence) else list(discovery)
    for s in sources:
        if not hasattr(s, "discover"):
            raise LocalProtocolError(
                f"discovery= takes shoal.discovery.MDNS(...) or Static([...]) (or another "
                f"shoal.discovery.Source: an object with a discover method), not {s!r}")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool)
                  for v in (heartbeat, peer_timeout))
    if not numbers or not 0 < heartbeat < peer_timeout:
        raise LocalProtocolError("need 0 < heartbeat < peer_timeout (seconds); "
                                 f"got heartbeat={heartbeat!r}, peer_timeout={peer_timeout!r}")
    if (type(max_message_size) is not int or max_message_size < -1
            or max_message_size == 0):
        raise LocalProtocolError("max_message_size is a number of bytes > 0, or -1 for "
                                 f"no limit; not {max_message_size!r}")
    busy_poll = check_busy_poll(busy_poll)
    if max_peers is not None and (type(max_peers) is not int or max_peers < 1):
        raise LocalProtocolError(f"max_peers is a whole number >= 1 (default "
                                 f"{DEFAULT_MAX_PEERS}), not {max_peers!r}")
    if security is not None and not isinstance(security, Security):
        raise LocalProtocolError(f"security= takes shoal.security.Security(keypair, trust), "
                                 f"not {security!r}")
    if interfaces is None:
        wanted = [s.interfaces for s in sources]
        if wanted and all(w is not None for w in wanted):
            interfaces = [a for w in wanted if w is not None for a in w]
    bind_host, addresses = _bind_plan(interfaces)
    nid = node_id if node_id is not None else default_node_id(name)
    identity = Identity(sender=nid, epoch=new_identity().epoch)
    node = Node(name, identity, addresses=addresses, bind_host=bind_host, port=port,
                heartbeat=heartbeat, peer_timeout=peer_timeout, security=security,
                max_message_size=max_message_size, busy_poll=busy_poll,
                max_peers=DEFAULT_MAX_PEERS if max_peers is None else max_peers)
    # The default is a ceiling, not a plan: on a host with the common soft limit of
    # 1,024 it would be a warning for every node, so only a max_peers asked for warns.
    check_descriptors(node.max_peers,
                      level=logging.INFO if max_peers is None else logging.WARNING)
    try:
        async with open_service_nursery() as nursery:
            node._start(nursery)
            for s in sources:
                await nursery.start(s.discover, node._advertisement(),
                                    node._discovered.reports_for(s))
            try:
                yield node
            finally:
                node._goodbye()  # before the discovery sources' slower teardown
                nursery.cancel_scope.cancel()
    finally:
        await node._close()
