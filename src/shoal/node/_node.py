"""A node: one process's presence on the LAN, and the patterns wired by channel name.

What a node owns: an identity (a node id, stable for a name on a host unless given,
and a fresh epoch per start), its own ZeroMQ context, a control socket (ROUTER) that
other nodes talk to, one outgoing control link (DEALER) per known control endpoint,
the peer table (``shoal._core.PeerTable``), its discovery sources, and the sockets of
the channels opened through it.

Theory of operation:

* Discovery sources (mDNS, static lists) only ever produce control endpoints to
  *introduce ourselves to*. The node opens a link there and sends its ``State``. The
  other node, on hearing a State from someone it has no link to, opens one back and
  answers with its own State: one side finding the other is enough.
* The peer table is fed only by control messages, whatever found the peer, so
  static and multicast discovery behave the same. Every link carries our State
  every ``heartbeat`` seconds (it is the heartbeat) and at once after a catalogue
  change; a peer silent for ``peer_timeout`` seconds leaves; a clean exit sends
  ``Bye`` on every link.
* Listening roles (publisher, puller, replier) bind an ephemeral port on the node's
  address and enter the catalogue. Connecting roles (subscriber, pusher, requester)
  connect to every live peer's (and this node's own) matching listeners, and
  disconnect when a peer leaves or withdraws the channel. A requester routes each
  request itself, so a request waiting on a vanished replier fails with ``PeerLost``.
* A node answers a ``ClockQuery`` on its control socket with its wall clock
  (``Node.read_clock`` asks), so tools can compare clocks across hosts.
* Links to peers that left on a timeout stay open (libzmq keeps reconnecting) for
  ``LINK_GRACE`` seconds, so two nodes separated by a flapping link find each other
  again when it heals; links to nodes that said goodbye close at once.
* Links to endpoints not yet known as peers are bounded (``MAX_PENDING_LINKS``): a
  flood of advertisements cannot make a node open sockets without limit.

Security (``open_node(..., security=Security(keypair, trust))``): every socket is a
CURVE server (binding) or client (connecting); the node's ZAP handler, bound on the
node's context before the control socket, admits the keys its trust policy allows.
Each ``connect()`` names the server's public key, which comes from the discovery
source (mDNS TXT ``pk``, a ``Static`` mapping) for an introduction, and from the
ZAP-authenticated ``User-Id`` of a peer's State for everything else: the link back
and every data connection to that peer's listeners. A State is accepted only if
``trust.allows(key, node_id)`` (so trust on first use pins node ids) and, while the
peer is known, only with the key first seen for its id (another key: a forged id,
dropped and logged). libzmq does not reconnect a client the server's ZAP refused:
each link's socket monitor reports the refusal and the node connects again every
``AUTH_RETRY`` seconds; when a refused link is admitted at last, the data
connections to that peer are made again too (one ZAP handler decides for all of a
node's sockets), so adding a key to a trusted-keys file takes effect without restarts.

Never here: reading a socket outside trio, blocking calls in the trio thread (zeroconf
is driven through ``trio.to_thread``), timers that are not trio's clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket as _socket
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Protocol, TypeVar, overload

import trio
import zmq

from shoal._core import (
    MAX_ADDRESSES,
    VERSION,
    Bye,
    ChannelOffer,
    Identity,
    Peer,
    PeerEvent,
    PeerLeft,
    PeerTable,
    Role,
    State,
    VersionMismatch,
    decode_control,
    encode_control,
    encode_topic,
    offers,
)
from shoal._core._control import ClockQuery, ClockReading
from shoal._process import new_identity
from shoal._zmq._socket import DEFAULT_LINGER_MS, DEFAULT_MAX_MESSAGE_SIZE, Socket, require_trio
from shoal._zmq._tasks import open_service_nursery
from shoal.discovery._interfaces import (
    local_networks,
    multicast_addresses,
    resolve_interfaces,
)
from shoal.errors import ClosedError, DecodeError, LocalProtocolError, ShoalError
from shoal.patterns._common import DEFAULT_BATCH, MalformedCounter, check_busy_poll, check_limits
from shoal.patterns._pubsub import (
    Publisher,
    Subscriber,
    check_subscriber_args,
    publisher_options,
    subscriber_options,
)
from shoal.patterns._pushpull import Puller, Pusher, puller_options, pusher_options
from shoal.patterns._reliable_pubsub import (
    ReliablePublisher,
    ReliableSubscriber,
    check_reliable_pubsub_args,
    open_reliable_publisher,
    open_reliable_subscriber,
)
from shoal.patterns._reliable_pushpull import (
    ManualAckPuller,
    ReliablePuller,
    ReliablePusher,
    open_reliable_pusher,
    reliable_options,
)
from shoal.patterns._reqrep import (
    Replier,
    Requester,
    check_reply_cache,
    replier_options,
    requester_options,
)
from shoal.security._curve import Security, connect_curve, peer_key
from shoal.security._zap import ZapHandler, ZapStatistics

R = TypeVar("R", ReliablePuller, ManualAckPuller)

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_PEER_TIMEOUT", "ClockSample", "Node",
           "NodeStatistics", "PeerWatch", "Source", "open_node"]

log = logging.getLogger("shoal")

DEFAULT_HEARTBEAT = 0.5
"""Seconds between two States on each control link."""
DEFAULT_PEER_TIMEOUT = 2.0
"""Seconds of silence after which a peer is taken for dead."""
LINK_GRACE = 30.0
"""Seconds a control link to a silent, unknown or departed-on-timeout node stays open."""
WATCH_BUFFER = 1024
"""Events a ``watch_peers()`` iterator may fall behind by before it fails."""
MAX_PENDING_LINKS = 128
"""Control links to endpoints that are not live peers (being introduced to), at most;
introductions beyond are skipped (the discovery source tries again later). A secured
link costs three ZeroMQ sockets (its own and a monitor pair) of the context's 1023."""
AUTH_RETRY = 5.0
"""Seconds between connection attempts to a node whose ZAP handler refused our key."""
HANDSHAKE_RETRY = 1.0
"""After two failed handshakes in a row on a control link (something that accepts TCP
and is not a shoal node), it is tried again after this, doubling up to
``HANDSHAKE_RETRY_MAX``, instead of libzmq's 100 ms reconnect."""
HANDSHAKE_RETRY_MAX = 60.0
_LINK_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_DISCONNECTED)
_MAX_WARNED = 1024  # (reason, who) pairs remembered so that each is logged once

# Every socket of a node: ZMTP heartbeats drop dead TCP connections (a pulled cable
# sends no FIN); reconnects as every socket does (``shoal._zmq._socket.RECONNECT_OPTIONS``).
_TCP_OPTIONS: list[tuple[int, int | bytes]] = [
    (zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 3000),
]


class Source(Protocol):
    """A discovery source: finds control endpoints and introduces the node to them."""

    interfaces: tuple[str, ...] | None
    """Addresses this source works on (None: every multicast-capable interface)."""

    async def _run(self, node: Node, *, task_status: trio.TaskStatus[None]) -> None: ...


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """Counters of a node at one moment."""

    peers: int
    """Live peers."""
    links: int
    """Open outgoing control links (live peers, plus nodes being introduced to)."""
    control_received: int
    """Valid control messages received."""
    malformed: int
    """Control messages dropped as malformed (see the log at DEBUG)."""
    version_mismatches: int
    """Control messages from nodes on another protocol version (ignored)."""
    refused: int
    """States ignored because the peer table was full."""


@dataclass(frozen=True, slots=True)
class NodeResource:
    """A resource open through a node (``Node.resources()``): its channel, its role,
    and the publisher, subscriber, pusher... itself."""

    channel: str
    role: Role
    resource: Any


@dataclass(frozen=True, slots=True)
class ClockSample:
    """Another node's wall clock compared with this one's (``Node.read_clock``)."""

    offset: float
    """Seconds the other node's clock is ahead of this one's (negative: behind),
    estimated at the midpoint of the exchange."""
    round_trip: float
    """Seconds from query to answer. Unless a clock stepped meanwhile, the true offset
    is within ``round_trip / 2`` of ``offset``."""


class _Link:
    __slots__ = ("expires", "failed", "key", "monitor", "persistent", "refused", "retry_at",
                 "sock", "up")

    def __init__(self, sock: Socket, *, persistent: bool, expires: float,
                 key: bytes | None = None) -> None:
        self.sock = sock
        self.persistent = persistent
        self.expires = expires
        self.key = key  # the server's public key (secured nodes)
        self.monitor: Socket | None = None  # handshake events (secured nodes)
        self.refused = False  # the other node's ZAP handler refused our key
        self.retry_at = math.inf  # when to connect again (after a refusal or failures)
        self.up = False  # a handshake completed since the last connect
        self.failed = 0  # handshakes failed in a row (not a shoal node there?)

    def close(self) -> None:
        if self.monitor is not None:
            if not self.sock.closed:
                try:
                    self.sock.zmq_socket.disable_monitor()
                except zmq.ZMQError:
                    pass  # the context is terminating
            self.monitor.close()
        self.sock.close()


class _Connector:
    """A local connecting resource and the listeners it is connected to."""

    __slots__ = ("add", "channel", "current", "drop", "role")

    def __init__(self, channel: str, role: Role,
                 add: Callable[[str, bytes, bytes | None], None],
                 drop: Callable[[str, bytes, str], None]) -> None:
        self.channel = channel
        self.role = role
        self.add = add
        self.drop = drop
        self.current: dict[str, bytes] = {}  # endpoint -> route
        # add(endpoint, route, server_key): server_key is None on a plaintext node


def _connect(sock: Socket, endpoint: str, server_key: bytes | None) -> None:
    if server_key is None:
        sock.connect(endpoint)
    else:
        connect_curve(sock, endpoint, server_key)


class PeerWatch:
    """Peer changes as they happen: ``async for change in node.watch_peers()``.

    Yields ``PeerJoined``, ``PeerUpdated`` and ``PeerLeft``; ends when the node
    closes. If the consumer falls more than ``WATCH_BUFFER`` events behind, the
    iteration raises ``ShoalError`` (take ``node.peers()`` and watch again) rather
    than skip events silently.
    """

    def __init__(self) -> None:
        self._events: deque[PeerEvent] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._overflowed = False

    def _push(self, event: PeerEvent) -> None:
        if len(self._events) >= WATCH_BUFFER:
            self._overflowed = True
        else:
            self._events.append(event)
        self._lot.unpark_all()

    def _close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    def __aiter__(self) -> PeerWatch:
        return self

    async def __anext__(self) -> PeerEvent:
        while True:
            if self._overflowed:
                raise ShoalError(f"watch_peers() fell more than {WATCH_BUFFER} events behind;"
                                 " take node.peers() and start a new watch")
            if self._events:
                await trio.lowlevel.checkpoint()
                return self._events.popleft()
            if self._closed:
                raise StopAsyncIteration
            await self._lot.park()


def default_node_id(name: str) -> bytes:
    """A node id that stays the same for ``name`` on this host across restarts."""
    return hashlib.sha256(f"shoal-node\0{_socket.gethostname()}\0{name}".encode()).digest()[:16]


def check_channel(channel: object) -> str:
    if not isinstance(channel, str) or not channel:
        raise LocalProtocolError(f"a channel is a non-empty string, not {channel!r}")
    encode_topic(channel)  # same rules as topics: UTF-8, no NUL, bounded
    return channel


class Node:
    """A process's presence on the LAN. Make one with ``shoal.open_node``."""

    def __init__(
        self, name: str, identity: Identity, *, addresses: Sequence[str], bind_host: str,
        port: int, heartbeat: float, peer_timeout: float, linger_ms: int,
        security: Security | None = None, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        busy_poll: float = 0.0,
    ) -> None:
        self.name = name
        self._busy_poll = busy_poll
        self.security = security
        """The node's CURVE key pair and trust policy; None for a plaintext node."""
        self.identity = identity
        self._addresses = tuple(addresses)
        self._bind_host = bind_host
        self._heartbeat = heartbeat
        self._linger = linger_ms
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # Every socket of the node (control, links, channels) takes its limit from here.
        self._ctx.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        self._networks = local_networks(self._addresses)
        self._table = PeerTable(identity.sender, timeout=peer_timeout, networks=self._networks)
        self._closed = False
        self._zap: ZapHandler | None = None
        self._nursery: trio.Nursery | None = None
        self._peer_keys: dict[str, bytes] = {}  # live peer id -> its authenticated key
        self._live_endpoints: set[str] = set()  # control endpoints of live peers
        self._warned: set[tuple[str, str]] = set()
        try:
            if security is not None:
                # before any CURVE server exists: handshakes never meet a missing handler
                self._zap = ZapHandler(security.zap_trust)
                self._zap.bind(self._ctx)
            self._control = self._socket(zmq.ROUTER, [(zmq.RCVHWM, 10_000)], linger_ms=0,
                                         server=True, data=False)
        except BaseException:
            if self._zap is not None:
                self._zap.close()
            self._ctx.term()
            raise
        try:
            self.control_port = self._port(self._control.bind(f"tcp://{bind_host}:{port}"))
        except BaseException:
            self._control.close()
            if self._zap is not None:
                self._zap.close()
            self._ctx.term()
            raise
        self._links: dict[str, _Link] = {}
        self._offers: dict[int, ChannelOffer] = {}
        self._resources: dict[int, NodeResource] = {}
        self._connectors: dict[int, _Connector] = {}
        self._tokens = iter(range(1, 2**62))
        self._revision = 0
        self._state_frame = b""
        self._watches: weakref.WeakSet[PeerWatch] = weakref.WeakSet()
        self._malformed = MalformedCounter()
        self._received = 0
        self._mismatches = 0
        self._warned_versions: set[object] = set()
        self._beat_now = trio.Event()
        self._encode_state()

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
    def control_endpoint(self) -> str:
        """Where other nodes reach this node's control socket (for static peer lists)."""
        return f"tcp://{self._addresses[0]}:{self.control_port}"

    def _state(self) -> State:
        return State(node_id=self.identity.sender, epoch=self.identity.epoch, name=self.name,
                     addresses=self._addresses, control_port=self.control_port,
                     revision=self._revision, channels=tuple(self._offers.values()))

    def _encode_state(self) -> None:
        self._state_frame = encode_control(self._state())

    def _self_peer(self) -> Peer:
        return Peer(id=self.id, name=self.name, epoch=self.epoch, addresses=self._addresses,
                    address=self._addresses[0], control_port=self.control_port,
                    channels=tuple(self._offers.values()), revision=self._revision,
                    last_seen=trio.current_time())

    # -- what we know of others -------------------------------------------------------

    def peers(self) -> list[Peer]:
        """A snapshot of the live peers (not this node); empty once the node is closed."""
        return [] if self._closed else self._table.peers()

    def resources(self) -> list[NodeResource]:
        """The resources open through this node now, oldest first."""
        return list(self._resources.values())

    def watch_peers(self) -> PeerWatch:
        """Peer changes from now on: ``async for change in node.watch_peers(): ...``.
        Take ``peers()`` first for those already known."""
        w = PeerWatch()
        if self._closed:
            w._close()
        self._watches.add(w)
        return w

    async def wait_for_peers(self, n: int = 1, *, channel: str | None = None) -> list[Peer]:
        """Wait until at least ``n`` peers are live (offering ``channel``, if given) and
        return them. The caller owns the timeout (``trio.fail_after``)."""
        watch = self.watch_peers()
        while True:
            if self._closed:
                raise ClosedError("the node is closed; open a new one")
            found = [p for p in self.peers()
                     if channel is None or any(c.name == channel for c in p.channels)]
            if len(found) >= n:
                await trio.lowlevel.checkpoint()
                return found
            try:
                await watch.__anext__()
            except StopAsyncIteration:
                raise ClosedError("the node closed while waiting for peers") from None

    def statistics(self) -> NodeStatistics:
        """An immutable snapshot of this node's counters."""
        return NodeStatistics(
            peers=len(self.peers()), links=len(self._links), control_received=self._received,
            malformed=self._malformed.total, version_mismatches=self._mismatches,
            refused=self._table.refused)

    def zap_statistics(self) -> ZapStatistics | None:
        """The ZAP handler's counters (connections admitted and refused by this node's
        trust policy); None for a plaintext node."""
        return None if self._zap is None else self._zap.statistics()

    @property
    def public_key(self) -> bytes | None:
        """This node's CURVE public key (Z85), what peers need to reach it; None for a
        plaintext node."""
        return None if self.security is None else self.security.public_key

    def _warn_once(self, reason: str, who: str, message: str, *args: object,
                   level: int = logging.WARNING) -> None:
        if (reason, who) in self._warned:
            return
        if len(self._warned) >= _MAX_WARNED:
            self._warned.clear()
        self._warned.add((reason, who))
        log.log(level, message, *args)

    # -- sockets ------------------------------------------------------------------------

    @staticmethod
    def _port(endpoint: str) -> int:
        return int(endpoint.rsplit(":", 1)[1])

    def _socket(self, kind: int, options: Sequence[tuple[int, int | bytes]], *,
                linger_ms: int, bind: bool = False, server: bool = False,
                data: bool = True) -> Socket:
        if self._closed:
            raise ClosedError("this node is closed; open a new one")
        curve: list[tuple[int, int | bytes]] = []
        if self.security is not None:
            # a socket that binds is a CURVE server, one that connects a client
            curve = (self.security.server_options() if bind or server
                     else self.security.client_options())
        sock = Socket.open(kind, bind=[f"tcp://{self._bind_host}:*"] if bind else [],
                           context=self._ctx, linger_ms=linger_ms,
                           options=[*_TCP_OPTIONS, *curve, *options])
        if data:  # the application's channels; the node's own sockets never spin
            sock.busy_poll = self._busy_poll
        return sock

    # -- control links --------------------------------------------------------------------

    def introduce(self, endpoint: str, *, persistent: bool = False,
                  server_key: bytes | None = None) -> None:
        """Send this node's State to a control endpoint (found by a discovery source).

        ``persistent``: keep the link for as long as the node lives (static peers),
        so a peer that restarts later is found again. ``server_key``: the Z85 public
        key of the node there; required by a secured node (raises
        ``LocalProtocolError`` without it), refused by a plaintext one."""
        if self._closed:
            return
        if (server_key is None) != (self.security is None):
            raise LocalProtocolError(
                f"introducing to {endpoint}: a secured node needs the peer's public key "
                "(server_key=)" if server_key is None else
                f"introducing to {endpoint}: server_key= needs a node opened with "
                "security=")
        link = self._links.get(endpoint)
        now = trio.current_time()
        if link is None:
            if not persistent and self._pending_links(endpoint) >= MAX_PENDING_LINKS:
                self._warn_once("links", "", "not introducing to %s: %d links to unknown "
                                "nodes are open already (an advertisement flood?)",
                                endpoint, MAX_PENDING_LINKS)
                return
            link = self._open_link(endpoint, server_key, persistent=persistent,
                                   expires=now + LINK_GRACE)
        link.persistent = link.persistent or persistent
        self._send(link, self._state_frame)

    def _pending_links(self, endpoint: str) -> int:
        """Links to endpoints that are not live peers, as far as the bound needs: 0 if
        ``endpoint`` is a live peer (always answered, whatever a flood of
        advertisements did) or if there are fewer links than the bound in all."""
        live = self._live_endpoints
        if endpoint in live or len(self._links) < MAX_PENDING_LINKS:
            return 0
        return sum(1 for ep, link in self._links.items()
                   if ep not in live and not link.persistent)

    def _open_link(self, endpoint: str, key: bytes | None, *, persistent: bool,
                   expires: float) -> _Link:
        sock = self._socket(zmq.DEALER, [(zmq.SNDHWM, 8)], linger_ms=200, data=False)
        link = _Link(sock, persistent=persistent, expires=expires, key=key)
        try:
            if self._nursery is not None:
                # before connect(), so no handshake goes unseen
                link.monitor = sock.monitor(_LINK_EVENTS)
                self._nursery.start_soon(self._watch_link, endpoint, link)
            _connect(sock, endpoint, key)
        except BaseException:
            link.close()
            raise
        self._links[endpoint] = link
        return link

    async def _watch_link(self, endpoint: str, link: _Link) -> None:
        """Follow a link's handshakes: refusals of a secured link (see the module
        notes), and handshakes that fail again and again (something that accepts TCP
        and closes, or speaks another protocol: backed off, logged once). A plaintext
        link stops watching after its first handshake: a shoal node is there."""
        mon = link.monitor
        assert mon is not None
        try:
            while True:
                for frames in mon.receive_batch_nowait(16):
                    if len(frames) != 2 or len(frames[0]) < 2:
                        continue
                    event = int.from_bytes(frames[0][:2], "little")
                    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                        self._link_refused(endpoint, link)
                    elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                        link.up = True
                        link.failed = 0
                        self._warned.discard(("handshake", endpoint))
                        self._link_admitted(endpoint, link)
                        if link.key is None:
                            self._stop_watching(link)
                            return
                    elif event == zmq.EVENT_DISCONNECTED:
                        if not link.up and not link.refused:
                            self._handshake_failed(endpoint, link)
                        link.up = False
                    elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                                   zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                        link.up = False
                await mon.wait_receivable()
        except ClosedError:
            pass  # the link closed

    @staticmethod
    def _stop_watching(link: _Link) -> None:
        mon, link.monitor = link.monitor, None
        if mon is not None:
            if not link.sock.closed:
                with contextlib.suppress(zmq.ZMQError):
                    link.sock.zmq_socket.disable_monitor()
            mon.close()

    def _handshake_failed(self, endpoint: str, link: _Link) -> None:
        """A connection to ``endpoint`` closed before its handshake completed. From the
        second in a row: disconnect, and connect again after a backoff."""
        link.failed += 1
        if link.failed < 2 or link.sock.closed:
            return
        wait = min(HANDSHAKE_RETRY * 2 ** min(link.failed - 2, 16), HANDSHAKE_RETRY_MAX)
        with contextlib.suppress(ShoalError):
            link.sock.disconnect(endpoint)
        link.retry_at = trio.current_time() + wait
        self._warn_once("handshake", endpoint,
                        "%s accepts connections but no shoal handshake completes there "
                        "(not a shoal node, or another protocol); trying again after "
                        "backing off, up to every %g s", endpoint, HANDSHAKE_RETRY_MAX)

    def _link_refused(self, endpoint: str, link: _Link) -> None:
        link.refused = True
        link.retry_at = trio.current_time() + AUTH_RETRY
        assert self.security is not None
        self._warn_once("refused-us", endpoint,
                        "the node at %s refused this node's key %s (authentication "
                        "failed); trying again every %g s. To admit this node, add its "
                        "key to that node's trusted keys", endpoint,
                        self.security.public_key.decode(), AUTH_RETRY)

    def _link_admitted(self, endpoint: str, link: _Link) -> None:
        if not link.refused:
            return
        link.refused = False
        self._warned.discard(("refused-us", endpoint))
        log.info("the node at %s admitted this node's key", endpoint)
        self._send(link, self._state_frame)
        # its data listeners refused us too (one ZAP handler decides for a node's
        # sockets), and libzmq does not retry a refused connection: make them again
        ids = {p.id for p in self._table.peers() if p.control_endpoint == endpoint}
        for conn in self._connectors.values():
            for ep, route in list(conn.current.items()):
                peer_id = route[1:17].hex()
                if peer_id in ids:
                    conn.drop(ep, route, f"reconnecting to {ep} (admitted after a refusal)")
                    conn.add(ep, route, self._peer_keys.get(peer_id))

    def _retry_links(self, now: float) -> None:
        """Connect again the links whose wait (a refusal, failed handshakes) is over."""
        for ep, link in self._links.items():
            if link.retry_at <= now and not link.sock.closed:
                link.retry_at = math.inf
                try:
                    link.sock.disconnect(ep)
                except ShoalError:
                    pass  # not connected any more: connect below is what counts
                _connect(link.sock, ep, link.key)
                self._send(link, self._state_frame)

    def has_link(self, endpoint: str) -> bool:
        """Whether a control link to ``endpoint`` is open (for discovery sources)."""
        return endpoint in self._links

    @staticmethod
    def _send(link: _Link, frame: bytes) -> None:
        try:
            link.sock.send_nowait(frame)
        except trio.WouldBlock:
            pass  # not connected and its small queue is full: the next beat will do

    def _broadcast(self) -> None:
        for link in self._links.values():
            self._send(link, self._state_frame)

    def _prune_links(self, now: float) -> None:
        live = {p.control_endpoint for p in self._table.peers()}
        for ep, link in list(self._links.items()):
            if ep in live:
                link.expires = now + LINK_GRACE
            elif not link.persistent and link.expires <= now:
                link.close()
                del self._links[ep]

    # -- the control plane -----------------------------------------------------------------

    def _on_control(self, frames: list[bytes], now: float, key: bytes | None = None) -> None:
        if len(frames) != 2:
            self._malformed.drop("frame-count", "node control", str(len(frames)))
            return
        try:
            msg = decode_control(frames[1])
        except VersionMismatch as exc:
            self._mismatches += 1
            if exc.version not in self._warned_versions and len(self._warned_versions) < 64:
                self._warned_versions.add(exc.version)
                log.warning("ignoring a node that speaks shoal control protocol %r "
                            "(this node speaks %r); upgrade one of them", exc.version, VERSION)
            return
        except DecodeError as exc:
            self._malformed.drop_error(exc, "node control")
            return
        self._received += 1
        if isinstance(msg, ClockQuery):
            self._answer_clock(frames[0], msg.token)
            return
        if isinstance(msg, ClockReading):
            return  # answers go to the socket that asked, never to a control socket
        if isinstance(msg, Bye):
            if self.security is not None and not self._key_matches(msg.node_id, key):
                return
            self._apply(self._table.on_bye(msg.node_id, msg.epoch, now))
            return
        if msg.node_id == self.identity.sender and msg.epoch != self.identity.epoch:
            log.warning("another node (epoch %d) uses this node's id %s: give the nodes "
                        "distinct names or node_id=", msg.epoch, self.id)
            return
        if self.security is not None:
            self._on_secured_state(msg, now, key)
            return
        events = self._table.on_state(msg, now)
        if events:
            self._apply(events)
            peer = self._table.get(msg.node_id)
            if peer is not None and peer.control_endpoint not in self._links:
                self.introduce(peer.control_endpoint)  # answer an introduction

    def _key_matches(self, node_id: bytes, key: bytes | None) -> bool:
        """Whether ``key`` may speak for ``node_id`` (False: logged, drop the message)."""
        held = self._peer_keys.get(node_id.hex())
        if key is None:
            # cannot happen through a CURVE server with ZAP; refuse rather than guess
            self._warn_once("no-key", node_id.hex(), "dropped a control message from "
                            "node %s without an authenticated key", node_id.hex())
            return False
        if held is not None and held != key:
            self._warn_once("forged", node_id.hex() + key.decode(),
                            "dropped a control message claiming node id %s from key %s: "
                            "that node is known with key %s (a forged or reused node id)",
                            node_id.hex(), key.decode(), held.decode())
            return False
        return True

    def _on_secured_state(self, msg: State, now: float, key: bytes | None) -> None:
        assert self.security is not None
        if not self._key_matches(msg.node_id, key):
            return
        assert key is not None
        nid = msg.node_id.hex()
        if nid not in self._peer_keys:
            # asked once per peer's life (heartbeats would stat a trusted-keys file
            # every time); TOFU pins the id to the key here
            verdict = self.security.trust.allows(key, msg.node_id)
            if not verdict:
                self._warn_once("untrusted", nid + key.decode(),
                                "ignoring node %s (%r) with key %s: %s by this node's "
                                "trust policy", nid, msg.name, key.decode(), verdict.reason)
                return
        events = self._table.on_state(msg, now)
        peer = self._table.get(msg.node_id)
        if peer is not None:
            self._peer_keys[nid] = key
        if events:
            self._apply(events)
            peer = self._table.get(msg.node_id)
            if peer is not None:
                link = self._links.get(peer.control_endpoint)
                if link is not None and link.key != key:
                    # a link opened from an advertisement with another key: the
                    # authenticated one wins
                    link.close()
                    del self._links[peer.control_endpoint]
                    link = None
                if link is None:
                    self.introduce(peer.control_endpoint, server_key=key)

    def _answer_clock(self, route: bytes, token: int) -> None:
        # The wall clock, read as late as possible: the asker puts the reading at the
        # midpoint of its round trip. time.time_ns is looked up on each call, so a test
        # process can stand in for a host whose clock is off.
        frame = encode_control(ClockReading(token, time.time_ns()))
        try:
            self._control.send_to_nowait(route, frame)
        except (trio.WouldBlock, ShoalError):
            pass  # the asker left or is not reading: it times out and may ask again

    async def read_clock(self, endpoint: str, *, samples: int = 3,
                         server_key: bytes | str | None = None) -> ClockSample:
        """Compare the wall clock of the node at control ``endpoint`` (a peer's
        ``control_endpoint``) with this one's: ``samples`` queries in turn over one
        connection, keeping the one with the shortest round trip (the first one also
        pays for the connection).

        The caller owns the timeout (``trio.fail_after``): a node of a shoal that
        predates clock queries never answers. Cancel-safe (nothing is left open).
        ``server_key``: on a secured node, the public key of the node asked (by
        default the key of the live peer or link at ``endpoint``).

        Raises ``LocalProtocolError`` for ``samples`` < 1, a bad endpoint or (secured)
        no known key, ``ClosedError`` if this node is closed.
        """
        if type(samples) is not int or samples < 1:
            raise LocalProtocolError(f"samples= is a whole number >= 1, not {samples!r}")
        key: bytes | str | None = None
        if self.security is not None:
            key = server_key if server_key is not None else self._key_for(endpoint)
            if key is None:
                raise LocalProtocolError(f"no public key known for {endpoint}: pass "
                                         "server_key=")
        sock = self._socket(zmq.DEALER, [(zmq.SNDHWM, 8)], linger_ms=0, data=False)
        try:
            if key is None:
                sock.connect(endpoint)
            else:
                connect_curve(sock, endpoint, key)
            best: ClockSample | None = None
            for _ in range(samples):
                sample = await self._clock_exchange(sock)
                if best is None or sample.round_trip < best.round_trip:
                    best = sample
            assert best is not None
            return best
        finally:
            sock.close()

    def _key_for(self, control_endpoint: str) -> bytes | None:
        for p in self._table.peers():
            if p.control_endpoint == control_endpoint and p.id in self._peer_keys:
                return self._peer_keys[p.id]
        link = self._links.get(control_endpoint)
        return None if link is None else link.key

    @staticmethod
    async def _clock_exchange(sock: Socket) -> ClockSample:
        token = int.from_bytes(os.urandom(4), "big")
        query = encode_control(ClockQuery(token))
        while True:
            # the round trip on the monotonic clock (the wall clock may step);
            # the wall clock only to place the midpoint
            wall0, mono0 = time.time_ns(), time.perf_counter_ns()
            try:
                sock.send_nowait(query)
                break
            except trio.WouldBlock:
                await sock.wait_sendable()
        while True:
            raws = sock.receive_batch_nowait(8)
            mono1 = time.perf_counter_ns()
            for frames in raws:
                try:
                    msg = decode_control(frames[-1])
                except DecodeError:
                    continue
                if isinstance(msg, ClockReading) and msg.token == token:
                    rtt = mono1 - mono0
                    return ClockSample(offset=(msg.time_ns - (wall0 + rtt // 2)) / 1e9,
                                       round_trip=rtt / 1e9)
            if not raws:
                await sock.wait_receivable()

    def _apply(self, events: list[PeerEvent]) -> None:
        now = trio.current_time()
        for ev in events:
            if isinstance(ev, PeerLeft):
                if self._table.get(bytes.fromhex(ev.peer.id)) is None:
                    self._peer_keys.pop(ev.peer.id, None)
                log.info("peer %s (%s) left: %s", ev.peer.name, ev.peer.id[:8], ev.reason)
                link = self._links.get(ev.peer.control_endpoint)
                if link is not None and ev.reason != "timeout":
                    link.expires = now  # said goodbye, or replaced: no grace
            else:
                log.debug("peer %s (%s): %s", ev.peer.name, ev.peer.id[:8], type(ev).__name__)
        # Kept here, where every change of the table passes, rather than rebuilt for
        # each introduction (a flood of advertisements means many of those).
        self._live_endpoints = {p.control_endpoint for p in self._table.peers()}
        reasons = {ev.peer.id: f"node {ev.peer.name!r} left ({ev.reason})"
                   for ev in events if isinstance(ev, PeerLeft)}
        self._rewire(reasons)
        self._prune_links(now)
        for w in list(self._watches):
            for ev in events:
                w._push(ev)

    def _rewire(self, reasons: dict[str, str] | None = None) -> None:
        """Connect every local connector to exactly the listeners it should reach."""
        everyone = [self._self_peer(), *self._table.peers()]
        for conn in self._connectors.values():
            want: dict[str, tuple[bytes, str]] = {}
            for peer in everyone:
                if self.security is not None and self._server_key(peer.id) is None:
                    continue  # not authenticated (cannot happen: States need a key)
                for offer in offers(peer, conn.channel, conn.role.counterpart):
                    ep = peer.endpoint(offer)
                    # the incarnation is part of the route: requests waiting on a
                    # restarted replier fail even if the new one reuses the port
                    route = (b"r" + bytes.fromhex(peer.id) + peer.epoch.to_bytes(4, "big")
                             + offer.port.to_bytes(2, "big"))
                    want[ep] = (route, peer.id)
            for ep, route in list(conn.current.items()):
                if ep not in want or want[ep][0] != route:
                    del conn.current[ep]
                    peer_id = route[1:17].hex()
                    why = (reasons or {}).get(
                        peer_id, f"the listener at {ep} withdrew channel {conn.channel!r}")
                    conn.drop(ep, route, why)
            for ep, (route, peer_id) in want.items():
                if ep not in conn.current:
                    conn.current[ep] = route
                    conn.add(ep, route, self._server_key(peer_id))

    def _server_key(self, peer_id: str) -> bytes | None:
        """The public key of a live peer's listeners (this node's own for itself)."""
        if self.security is None:
            return None
        if peer_id == self.id:
            return self.security.public_key
        return self._peer_keys.get(peer_id)

    async def _read_control(self) -> None:
        sock = self._control
        if self.security is not None:
            await self._read_secured_control(sock)
        while True:
            raws = sock.receive_batch_nowait(64)
            if not raws:
                await sock.wait_receivable()
                continue
            now = trio.current_time()
            for frames in raws:
                self._on_control(frames, now)
            await trio.lowlevel.checkpoint()

    async def _read_secured_control(self, sock: Socket) -> NoReturn:
        # frames with their metadata: the sender's ZAP-authenticated key (User-Id)
        while True:
            raws = sock.receive_frames_nowait(64)
            if not raws:
                await sock.wait_receivable()
                continue
            now = trio.current_time()
            for frames in raws:
                key = peer_key(frames[-1])
                self._on_control([f.bytes for f in frames], now, key)
            await trio.lowlevel.checkpoint()

    async def _beat(self) -> None:
        next_beat = trio.current_time()
        while True:
            now = trio.current_time()
            if now >= next_beat or self._beat_now.is_set():
                self._beat_now = trio.Event()
                self._broadcast()
                next_beat = now + self._heartbeat
                self._retry_links(now)
            events = self._table.expire(now)
            if events:
                self._apply(events)
            else:
                self._prune_links(now)
            deadline = min(next_beat, self._table.next_deadline() or math.inf)
            with trio.move_on_at(max(deadline, now + 0.005)):
                await self._beat_now.wait()

    def _catalogue_changed(self) -> None:
        self._revision += 1
        self._encode_state()
        self._rewire()
        self._beat_now.set()  # tell every peer now, not at the next heartbeat

    @contextmanager
    def _listing(self, offer: ChannelOffer, connector: _Connector | None = None, *,
                 resource: Any) -> Iterator[None]:
        token = next(self._tokens)
        self._offers[token] = offer
        self._resources[token] = NodeResource(offer.name, offer.role, resource)
        if connector is not None:
            self._connectors[token] = connector
        self._catalogue_changed()
        try:
            yield
        finally:
            del self._offers[token]
            self._resources.pop(token, None)
            self._connectors.pop(token, None)
            if not self._closed:
                self._catalogue_changed()

    # -- the patterns, by channel ----------------------------------------------------------

    def _listener(self, channel: str, role: Role, sock: Socket, resource: Any) -> Any:
        return self._listing(ChannelOffer(channel, role, self._port(sock.bound[0])),
                             resource=resource)

    @overload
    def open_publisher(
        self, channel: str, *, reliable: Literal[False] = False, high_water_mark: int = 1000,
        linger_ms: int = DEFAULT_LINGER_MS,
    ) -> AbstractAsyncContextManager[Publisher]: ...

    @overload
    def open_publisher(
        self, channel: str, *, reliable: Literal[True], high_water_mark: int = 1000,
        linger_ms: int = DEFAULT_LINGER_MS, window: int = 8192, rto: float = 0.5,
        grace: float = 10.0, max_subscribers: int = 1024,
    ) -> AbstractAsyncContextManager[ReliablePublisher]: ...

    def open_publisher(
        self, channel: str, *, reliable: bool = False, high_water_mark: int = 1000,
        linger_ms: int = DEFAULT_LINGER_MS, window: int = 8192, rto: float = 0.5,
        grace: float = 10.0, max_subscribers: int = 1024,
    ) -> AbstractAsyncContextManager[Publisher] | AbstractAsyncContextManager[ReliablePublisher]:
        """Publish on ``channel``: every subscriber of it on the network (this node
        included) connects, now and as they come. ``wait_for_subscribers(n)`` waits for them.

        ``reliable=True``: to subscribers opened with ``reliable=True``, at least once on
        the wire, once and in order to their applications. Each subscriber's
        unacknowledged publications are kept (up to ``window``: ``publish`` waits
        beyond) and sent again after ``rto`` seconds without progress; a subscriber
        silent for ``grace`` seconds is dropped from the books (counted, logged).
        """
        check_channel(channel)
        check_limits(high_water_mark=high_water_mark)
        if reliable:
            check_reliable_pubsub_args(window=window, rto=rto, grace=grace)
            return self._open_reliable_publisher(
                channel, high_water_mark=high_water_mark, linger_ms=linger_ms, window=window,
                rto=rto, grace=grace, max_subscribers=max_subscribers)
        return self._open_publisher(channel, high_water_mark=high_water_mark,
                                    linger_ms=linger_ms)

    @asynccontextmanager
    async def _open_publisher(
        self, channel: str, *, high_water_mark: int, linger_ms: int,
    ) -> AsyncIterator[Publisher]:
        sock = self._socket(zmq.XPUB, publisher_options(high_water_mark), linger_ms=linger_ms,
                            bind=True)
        async with Publisher(sock, self.identity) as pub:
            with self._listener(channel, Role.PUBLISHER, sock, pub):
                yield pub

    @asynccontextmanager
    async def _open_reliable_publisher(
        self, channel: str, *, high_water_mark: int, linger_ms: int, window: int, rto: float,
        grace: float, max_subscribers: int,
    ) -> AsyncIterator[ReliablePublisher]:
        sock = self._socket(zmq.ROUTER, reliable_options(high_water_mark), linger_ms=linger_ms,
                            bind=True)
        async with open_reliable_publisher(
            socket=sock, identity=self.identity, window=window, rto=rto, grace=grace,
            max_subscribers=max_subscribers,
        ) as pub:
            with self._listener(channel, Role.RELIABLE_PUBLISHER, sock, pub):
                yield pub

    @overload
    def open_subscriber(
        self, channel: str, *, topics: Sequence[str] = ("",), reliable: Literal[False] = False,
        high_water_mark: int = 1000, batch: int = DEFAULT_BATCH, max_streams: int = 4096,
    ) -> AbstractAsyncContextManager[Subscriber]: ...

    @overload
    def open_subscriber(
        self, channel: str, *, topics: Sequence[str] = ("",), reliable: Literal[True],
        high_water_mark: int = 1000, batch: int = DEFAULT_BATCH, max_streams: int = 4096,
        heartbeat: float = 0.5,
    ) -> AbstractAsyncContextManager[ReliableSubscriber]: ...

    def open_subscriber(
        self, channel: str, *, topics: Sequence[str] = ("",), reliable: bool = False,
        high_water_mark: int = 1000, batch: int = DEFAULT_BATCH, max_streams: int = 4096,
        heartbeat: float = 0.5,
    ) -> AbstractAsyncContextManager[Subscriber] | AbstractAsyncContextManager[ReliableSubscriber]:
        """Subscribe to ``topics`` (prefixes) on ``channel``, from every publisher of it,
        now and later. A publisher that vanishes is disconnected.

        ``reliable=True``: from reliable publishers, once and in order per publisher,
        everything published after the publisher heard of this subscriber (it
        tells every ``heartbeat`` seconds where it stands).
        """
        check_channel(channel)
        check_subscriber_args(topics, max_streams)
        check_limits(high_water_mark=high_water_mark, batch=batch)
        if reliable:
            check_reliable_pubsub_args(heartbeat=heartbeat)
            return self._open_reliable_subscriber(
                channel, topics=topics, high_water_mark=high_water_mark, batch=batch,
                max_streams=max_streams, heartbeat=heartbeat)
        return self._open_subscriber(channel, topics=topics, high_water_mark=high_water_mark,
                                     batch=batch, max_streams=max_streams)

    @asynccontextmanager
    async def _open_subscriber(
        self, channel: str, *, topics: Sequence[str], high_water_mark: int, batch: int,
        max_streams: int,
    ) -> AsyncIterator[Subscriber]:
        sock = self._socket(zmq.SUB, subscriber_options(high_water_mark), linger_ms=0)
        async with Subscriber(sock, batch=batch, max_streams=max_streams) as sub:
            sub._start(topics)
            conn = _Connector(channel, Role.SUBSCRIBER, lambda ep, _r, key: _connect(sock, ep, key),
                              lambda ep, _r, _w: sock.disconnect(ep))
            with self._listing(ChannelOffer(channel, Role.SUBSCRIBER), conn, resource=sub):
                yield sub

    @asynccontextmanager
    async def _open_reliable_subscriber(
        self, channel: str, *, topics: Sequence[str], high_water_mark: int, batch: int,
        max_streams: int, heartbeat: float,
    ) -> AsyncIterator[ReliableSubscriber]:
        sock = self._socket(zmq.ROUTER, reliable_options(high_water_mark),
                            linger_ms=DEFAULT_LINGER_MS)
        async with open_reliable_subscriber(
            socket=sock, topics=topics, identity=self.identity, batch=batch,
            max_streams=max_streams, heartbeat=heartbeat,
        ) as sub:
            conn = _Connector(channel, Role.RELIABLE_SUBSCRIBER,
                              lambda ep, route, key: sub.add_route(route, ep, server_key=key),
                              lambda ep, route, why: sub.drop_route(route, ep, why))
            with self._listing(ChannelOffer(channel, Role.RELIABLE_SUBSCRIBER), conn,
                               resource=sub):
                yield sub

    @overload
    def open_pusher(
        self, channel: str, *, reliable: Literal[False] = False, high_water_mark: int = 1000,
        linger_ms: int = DEFAULT_LINGER_MS,
    ) -> AbstractAsyncContextManager[Pusher]: ...

    @overload
    def open_pusher(
        self, channel: str, *, reliable: Literal[True], high_water_mark: int = 1000,
        linger_ms: int = DEFAULT_LINGER_MS, window: int = 1024, rto: float = 0.5,
        max_attempts: int = 10, give_up_after: float | None = None,
        outbox: str | os.PathLike[str] | None = None,
    ) -> AbstractAsyncContextManager[ReliablePusher]: ...

    def open_pusher(
        self, channel: str, *, reliable: bool = False, high_water_mark: int = 1000,
        linger_ms: int = DEFAULT_LINGER_MS, window: int = 1024, rto: float = 0.5,
        max_attempts: int = 10, give_up_after: float | None = None,
        outbox: str | os.PathLike[str] | None = None,
    ) -> AbstractAsyncContextManager[Pusher] | AbstractAsyncContextManager[ReliablePusher]:
        """Send work on ``channel``, each item to one of its pullers. ``send()`` waits
        while no puller is connected; a vanished puller is disconnected.

        ``reliable=True``: at least once (talks to pullers opened with ``reliable=True``):
        an item stays in a window of ``window`` until a puller's application is done
        with it, is retransmitted after ``rto`` seconds (doubling) until a puller has
        it, goes to another puller if the one holding it vanishes, and is given up
        after ``max_attempts`` transmissions or ``give_up_after`` seconds
        (``wait_acked()`` raises ``DeliveryFailed``; also on ``push.dead_letters``).
        ``outbox="path.sqlite"`` keeps accepted items on disk until done, so a pusher
        restarted on the same file sends them again under their original ids.
        """
        check_channel(channel)
        check_limits(high_water_mark=high_water_mark)
        if outbox is not None and not reliable:
            raise LocalProtocolError("outbox= needs reliable=True (a best-effort pusher "
                                     "keeps nothing)")
        if reliable:
            return self._open_reliable_pusher(
                channel, high_water_mark=high_water_mark, linger_ms=linger_ms,
                window=window, rto=rto, max_attempts=max_attempts,
                give_up_after=give_up_after, outbox=outbox)
        return self._open_pusher(channel, high_water_mark=high_water_mark, linger_ms=linger_ms)

    @asynccontextmanager
    async def _open_pusher(
        self, channel: str, *, high_water_mark: int, linger_ms: int,
    ) -> AsyncIterator[Pusher]:
        sock = self._socket(zmq.PUSH, pusher_options(high_water_mark), linger_ms=linger_ms)
        async with Pusher(sock, self.identity) as push:
            conn = _Connector(channel, Role.PUSHER, lambda ep, _r, key: _connect(sock, ep, key),
                              lambda ep, _r, _w: sock.disconnect(ep))
            with self._listing(ChannelOffer(channel, Role.PUSHER), conn, resource=push):
                yield push

    @asynccontextmanager
    async def _open_reliable_pusher(
        self, channel: str, *, high_water_mark: int, linger_ms: int, window: int,
        rto: float, max_attempts: int, give_up_after: float | None,
        outbox: str | os.PathLike[str] | None,
    ) -> AsyncIterator[ReliablePusher]:
        sock = self._socket(zmq.ROUTER, reliable_options(high_water_mark), linger_ms=linger_ms)
        async with open_reliable_pusher(
            socket=sock, identity=self.identity, window=window, rto=rto,
            max_attempts=max_attempts, give_up_after=give_up_after, outbox=outbox,
        ) as push:
            conn = _Connector(channel, Role.RELIABLE_PUSHER,
                              lambda ep, route, key: push.add_route(route, ep, server_key=key),
                              lambda ep, route, why: push.drop_route(route, ep, why))
            with self._listing(ChannelOffer(channel, Role.RELIABLE_PUSHER), conn,
                               resource=push):
                yield push

    @overload
    def open_puller(
        self, channel: str, *, reliable: Literal[False] = False, high_water_mark: int = 1000,
        batch: int = DEFAULT_BATCH,
    ) -> AbstractAsyncContextManager[Puller]: ...

    @overload
    def open_puller(
        self, channel: str, *, reliable: Literal[True], high_water_mark: int = 1000,
        batch: int = DEFAULT_BATCH, manual_ack: Literal[False] = False,
    ) -> AbstractAsyncContextManager[ReliablePuller]: ...

    @overload
    def open_puller(
        self, channel: str, *, reliable: Literal[True], high_water_mark: int = 1000,
        batch: int = DEFAULT_BATCH, manual_ack: Literal[True],
    ) -> AbstractAsyncContextManager[ManualAckPuller]: ...

    def open_puller(
        self, channel: str, *, reliable: bool = False, high_water_mark: int = 1000,
        batch: int = DEFAULT_BATCH, manual_ack: bool = False,
    ) -> (AbstractAsyncContextManager[Puller] | AbstractAsyncContextManager[ReliablePuller]
          | AbstractAsyncContextManager[ManualAckPuller]):
        """Take work from every pusher of ``channel``. ``reliable=True``: from reliable
        pushers; an item is done (acknowledged) when the next one is asked for, or with
        ``manual_ack=True`` when ``await item.ack()`` is called, and duplicates never
        reach the application."""
        check_channel(channel)
        check_limits(high_water_mark=high_water_mark, batch=batch)
        if reliable:
            if manual_ack:
                return self._open_reliable_puller(ManualAckPuller, channel,
                                                  high_water_mark=high_water_mark, batch=batch)
            return self._open_reliable_puller(ReliablePuller, channel,
                                              high_water_mark=high_water_mark, batch=batch)
        if manual_ack:
            raise LocalProtocolError("manual_ack=True needs reliable=True (a best-effort "
                                     "puller acknowledges nothing)")
        return self._open_puller(channel, high_water_mark=high_water_mark, batch=batch)

    @asynccontextmanager
    async def _open_puller(
        self, channel: str, *, high_water_mark: int, batch: int,
    ) -> AsyncIterator[Puller]:
        sock = self._socket(zmq.PULL, puller_options(high_water_mark), linger_ms=0, bind=True)
        async with Puller(sock, batch=batch) as pull:
            with self._listener(channel, Role.PULLER, sock, pull):
                yield pull

    @asynccontextmanager
    async def _open_reliable_puller(
        self, cls: type[R], channel: str, *, high_water_mark: int, batch: int,
    ) -> AsyncIterator[R]:
        sock = self._socket(zmq.ROUTER, reliable_options(high_water_mark),
                            linger_ms=DEFAULT_LINGER_MS, bind=True)  # lingers for its acks
        async with cls(sock, self.identity, batch=batch, max_streams=4096) as pull:
            with self._listener(channel, Role.RELIABLE_PULLER, sock, pull):
                try:
                    yield pull
                finally:
                    # acknowledge what is done before the withdrawal reaches the
                    # pushers (they re-send what was not acknowledged by then)
                    pull.flush_acks()

    @asynccontextmanager
    async def open_replier(
        self, channel: str, *, high_water_mark: int = 1000, batch: int = DEFAULT_BATCH,
        linger_ms: int = DEFAULT_LINGER_MS, reply_cache: int = 1024,
    ) -> AsyncIterator[Replier]:
        """Answer requests on ``channel``: ``async for req in rep: await req.reply(...)``.
        A request sent again is answered from the last ``reply_cache`` replies."""
        check_channel(channel)
        check_limits(high_water_mark=high_water_mark, batch=batch)
        check_reply_cache(reply_cache)
        sock = self._socket(zmq.ROUTER, replier_options(high_water_mark), linger_ms=linger_ms,
                            bind=True)
        async with Replier(sock, self.identity, batch=batch, reply_cache=reply_cache) as rep:
            with self._listener(channel, Role.REPLIER, sock, rep):
                yield rep

    @asynccontextmanager
    async def open_requester(
        self, channel: str, *, high_water_mark: int = 1000, batch: int = DEFAULT_BATCH,
        linger_ms: int = DEFAULT_LINGER_MS,
    ) -> AsyncIterator[Requester]:
        """Send requests to the repliers of ``channel`` (round-robin). A request waits
        while no replier is reachable; one whose replier vanishes raises ``PeerLost``."""
        check_channel(channel)
        check_limits(high_water_mark=high_water_mark, batch=batch)
        sock = self._socket(zmq.ROUTER, requester_options(high_water_mark, routed=True),
                            linger_ms=linger_ms)
        async with (Requester(sock, self.identity, batch=batch, routed=True) as client,
                    open_service_nursery() as nursery):
            assert client.links is not None
            nursery.start_soon(client.links.run)
            conn = _Connector(channel, Role.REQUESTER,
                              lambda ep, route, key: client.add_route(route, ep, server_key=key),
                              lambda ep, route, why: client.drop_route(route, ep, why))
            try:
                with self._listing(ChannelOffer(channel, Role.REQUESTER), conn,
                                   resource=client):
                    yield client
            finally:
                nursery.cancel_scope.cancel()

    # -- life ----------------------------------------------------------------------------

    def _goodbye(self) -> None:
        """Say goodbye on every link (first thing on leaving: peers drop us at once)."""
        if self._closed:
            return
        self._closed = True
        bye = encode_control(Bye(self.identity.sender, self.identity.epoch))
        for link in self._links.values():
            self._send(link, bye)

    async def _close(self) -> None:
        """Close every socket (goodbyes get 200 ms to leave), end every watch."""
        self._goodbye()
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._control.close()
        if self._zap is not None:
            self._zap.close()  # after the servers, before term (which waits for it)
        for w in list(self._watches):
            w._close()
        # Sockets are closed; term waits for the goodbyes' linger (200 ms at most) and
        # for any socket the application still holds open.
        with trio.move_on_after(2) as scope:
            scope.shield = True
            await trio.to_thread.run_sync(self._ctx.term, abandon_on_cancel=True)


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

    Leaving the block says goodbye to every peer and closes the node's sockets.
    Raises ``LocalProtocolError`` for bad arguments, ``TransportError`` if the
    address cannot be bound.
    """
    require_trio("shoal.open_node() was entered")
    if not isinstance(name, str) or not name:
        raise LocalProtocolError(f"a node name is a non-empty string, not {name!r}")
    sources = [discovery] if not isinstance(discovery, Sequence) else list(discovery)
    for s in sources:
        if not hasattr(s, "_run"):
            raise LocalProtocolError(
                f"discovery= takes shoal.discovery.MDNS(...) or Static([...]), not {s!r}")
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
                heartbeat=heartbeat, peer_timeout=peer_timeout, linger_ms=DEFAULT_LINGER_MS,
                security=security, max_message_size=max_message_size, busy_poll=busy_poll)
    try:
        async with open_service_nursery() as nursery:
            node._nursery = nursery
            if node._zap is not None:
                nursery.start_soon(node._zap.serve)
            nursery.start_soon(node._read_control)
            nursery.start_soon(node._beat)
            for s in sources:
                await nursery.start(s._run, node)
            try:
                yield node
            finally:
                node._goodbye()  # before the discovery sources' slower teardown
                nursery.cancel_scope.cancel()
    finally:
        await node._close()
