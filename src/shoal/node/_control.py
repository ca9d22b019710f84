"""The control protocol: introductions, State heartbeats, goodbyes, admission.

A node has one control socket (a ROUTER) that other nodes talk to, and one outgoing
link per known control endpoint (``shoal.node._links``), but for one connection per
pair of ring nodes (``shoal.node._ring_watch``). Theory of operation:

* Discovery only ever gives control endpoints to *introduce ourselves to*: the node
  opens a link there and sends its ``State``. The other node, on hearing a State from
  someone it has no link to, answers with its own: on that link's route if the
  sender is a lower ring node (and closes any link of its own to it), else on a link
  it opens back. One side finding the other is enough.
* The peer table (``shoal._core.PeerTable``) is fed only by control messages, whatever
  found the peer, so every discovery source behaves the same. Liveness is the ring
  watch (``shoal._core._ring``): every ``heartbeat`` seconds a small ``Beat`` goes to
  this node's ring successors (and to peers that do not take part, and to a watcher
  that suspected us), so a node's cost does not grow with the number of peers. A
  watched peer that goes quiet is sent ``Suspect``; one silent for ``peer_timeout``
  leaves, and every peer is told (``Gone``). A clean exit sends ``Bye`` on every link.
* Full States go at first contact, at once to every peer after a catalogue change
  (``publish``), every ``STATE_EVERY`` heartbeats to the peers beaten and to one more
  in turn (so a lost State cannot stay stale), and every heartbeat to links that are
  not live peers (introductions, and nodes that left on a timeout: when the path is
  back, they hear us and we ``Ask`` them for their State). A node that joins is
  answered with our State at once.
* Admission is the guard's (``shoal.node._guard``): a State or Bye is applied only if
  its sender may speak for the node id it names. A node that answers with a key other
  than the one its link was opened with is linked again with the authenticated key. A
  node new to us joins only if a link to it may be had under ``max_peers``
  (``LinkPool.room_for``), so that every peer has one.
* A ``ClockQuery`` is answered with this host's wall clock (``shoal.node._clock``).
* Control messages from nodes on another protocol version are counted and ignored
  (logged once per version); malformed ones are counted and dropped.

Every change of the table goes through ``_apply``, which tells the node
(``on_events``: rewiring, watches) and keeps the links' grace periods.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import anyio
import zmq

from shoal._core import (
    VERSION,
    Beat,
    Bye,
    ChannelOffer,
    Identity,
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerTable,
    State,
    VersionMismatch,
    decode_control,
    encode_control,
)
from shoal._core._control import (
    Ask,
    ClockQuery,
    ClockReading,
    Gone,
    Members,
    MembersQuery,
    Suspect,
)
from shoal._io import WouldBlock
from shoal.errors import DecodeError, ShoalError
from shoal.node import _clock
from shoal.node._links import LinkPool
from shoal.node._ring_watch import RingWatch, route_of
from shoal.node._sockets import SocketFactory, port_of
from shoal.node._watch import WarnOnce, log
from shoal.patterns._common import MalformedCounter

__all__ = ["Control"]

STATE_EVERY = 10
"""Every this many heartbeats, the full State goes to the peers beaten, and to one
more live peer in turn (a State that was lost cannot stay stale)."""
_DEPARTED_MAX = 4096  # peers that left on a timeout, remembered to Ask them back
ASK_MEMBERS = 2
"""A plaintext node asks this many of the first peers it meets which nodes they know
(``MembersQuery``), and introduces itself to those: one found member is enough."""

Reasons = dict[str, str]
"""Why peers left, by peer id."""


class Control(RingWatch):
    """The control socket, the links, the peer table, and the beat that drives them."""

    def __init__(self, identity: Identity, name: str, addresses: Sequence[str],
                 sockets: SocketFactory, table: PeerTable, warn: WarnOnce, *,
                 port: int, heartbeat: float, peer_timeout: float = 2.0,
                 on_events: Callable[[list[PeerEvent], Reasons], None],
                 reconnect: Callable[[set[str], str], None], max_peers: int = 1000) -> None:
        self.identity = identity
        self.name = name
        self.addresses = tuple(addresses)
        self.table = table
        self.closed = False
        self._guard = sockets.guard
        self._warn = warn
        self._heartbeat = heartbeat
        self._timeout = peer_timeout
        self._on_events = on_events
        self._reconnect = reconnect  # make the data connections to these peers again
        # no ZMTP pings (see ``_links``); a send to a route that is not connected
        # raises (then a link of our own is opened), and a link that reconnects takes
        # its route over (see ``_ring_watch``)
        self._socket = sockets.open(
            zmq.ROUTER, [(zmq.RCVHWM, 10_000), (zmq.HEARTBEAT_IVL, 0),
                         (zmq.ROUTER_MANDATORY, 1), (zmq.ROUTER_HANDOVER, 1)],
            linger_ms=0, server=True, data=False)
        self.io = self._socket.loop  # the event loop's clock and checkpoints
        try:
            self.port = port_of(self._socket.bind(f"tcp://{sockets.bind_host}:{port}"))
        except BaseException:
            self._socket.close()
            raise
        self.links = LinkPool(sockets, warn, state=lambda: self._state_frame,
                              beat=lambda: self._beat_frame, on_admitted=self._admitted,
                              route=route_of(identity.sender, identity.epoch),
                              on_message=self._on_link_message,
                              routed=lambda: len(self._routes), max_peers=max_peers)
        self.live: set[str] = set()  # control endpoints of live peers
        self._offers: tuple[ChannelOffer, ...] = ()
        self._revision = 0
        self._state_frame = encode_control(self._state())
        self._beat_frame = self._beat()
        self._beat_now = anyio.Event()
        self.beats_received = 0
        self.suspicions = 0  # Suspects sent (a watched peer went quiet)
        self.reported_gone = 0  # peers dropped because a watcher reported them Gone
        self._refuting: dict[bytes, float] = {}  # watchers that suspected us -> until
        self._successors: tuple[bytes, ...] = ()
        self._ring_ids: set[bytes] = set()  # live peers that take part in the ring
        self._departed: OrderedDict[bytes, str] = OrderedDict()  # timed out -> endpoint
        self._turn = 0  # whose turn it is for a full State (see STATE_EVERY)
        self._members_asked = 0  # peers asked which nodes they know (ASK_MEMBERS)
        self._routes: dict[bytes, bytes] = {}  # lower peers answered on their link's route
        self.members_learned = 0  # nodes introduced to from a peer's member list
        self.malformed = MalformedCounter()
        self.received = 0
        self.mismatches = 0
        self._warned_versions: set[object] = set()

    # -- who we are -------------------------------------------------------------------

    def _state(self) -> State:
        return State(node_id=self.identity.sender, epoch=self.identity.epoch, name=self.name,
                     addresses=self.addresses, control_port=self.port,
                     revision=self._revision, channels=self._offers, ring=True)

    def _beat(self) -> bytes:
        return encode_control(Beat(self.identity.sender, self.identity.epoch, self._revision))

    def publish(self, offers: tuple[ChannelOffer, ...]) -> None:
        """The catalogue changed: a new revision, told to every peer now."""
        self._offers = offers
        self._revision += 1
        self._state_frame = encode_control(self._state())
        self._beat_frame = self._beat()
        self._beat_now.set()  # tell every peer now, not at the next heartbeat

    def self_peer(self) -> Peer:
        """This node as its peers see it."""
        return Peer(id=self.identity.sender.hex(), name=self.name, epoch=self.identity.epoch,
                    addresses=self.addresses, address=self.addresses[0],
                    control_port=self.port, channels=self._offers, revision=self._revision,
                    last_seen=self.io.current_time())

    # -- introductions -----------------------------------------------------------------

    def introduce(self, endpoint: str, *, persistent: bool = False,
                  server_key: bytes | None = None) -> None:
        """Send this node's State to a control endpoint (see ``Node.introduce``)."""
        if self.closed:
            return
        self._guard.check_introduction(endpoint, server_key)
        if self._routes and endpoint in self.live and endpoint not in self.links:
            for peer in self._routed():
                if peer.control_endpoint == endpoint:
                    self._send(peer, self._state_frame)  # (it answers on its own link)
                    return
        self.links.introduce(endpoint, server_key, persistent=persistent, live=self.live)

    def _admitted(self, endpoint: str) -> None:
        # its data listeners refused us too (one ZAP handler decides for a node's
        # sockets), and libzmq does not retry a refused connection: make them again
        ids = {p.id for p in self.table.peers() if p.control_endpoint == endpoint}
        self._reconnect(ids, f"reconnecting to {endpoint} (admitted after a refusal)")

    # -- receiving ---------------------------------------------------------------------

    async def read(self) -> None:
        sock = self._socket
        clock, checkpoint = self.io.clock(), self.io.checkpoint
        while True:
            received = self._guard.receive(sock, 64)
            if not received:
                await sock.wait_receivable()
                continue
            now = clock()
            for frames, key in received:
                self.on_control(frames, now, key)
            await checkpoint()

    def on_control(self, frames: list[bytes], now: float, key: bytes | None = None) -> None:
        if len(frames) != 2:
            self.malformed.drop("frame-count", "node control", str(len(frames)))
            return
        try:
            msg = decode_control(frames[1])
        except VersionMismatch as exc:
            self.mismatches += 1
            if exc.version not in self._warned_versions and len(self._warned_versions) < 64:
                self._warned_versions.add(exc.version)
                log.warning("ignoring a node that speaks shoal control protocol %r "
                            "(this node speaks %r); upgrade one of them", exc.version, VERSION)
            return
        except DecodeError as exc:
            self.malformed.drop_error(exc, "node control")
            return
        self.received += 1
        if isinstance(msg, ClockQuery):
            self._answer_clock(frames[0], msg.token)
        elif isinstance(msg, ClockReading):
            pass  # answers go to the socket that asked, never to a control socket
        elif isinstance(msg, Beat):
            if self._guard.speaks_for(msg.node_id, key):
                self._on_beat(msg, now)
                self._route_seen(msg.node_id, msg.epoch, frames[0])
        elif isinstance(msg, Bye):
            if self._guard.speaks_for(msg.node_id, key):
                self._apply(self.table.on_bye(msg.node_id, msg.epoch, now))
        elif isinstance(msg, Suspect | Gone | Ask):
            if self._guard.speaks_for(msg.by, key):
                self._on_ring(msg, now)
        elif isinstance(msg, MembersQuery | Members):
            if self._guard.public_key is None:  # plaintext nodes only (see _core)
                self._on_members(msg)
        elif msg.node_id == self.identity.sender and msg.epoch != self.identity.epoch:
            log.warning("another node (epoch %d) uses this node's id %s: give the nodes "
                        "distinct names or node_id=", msg.epoch, self.identity.sender.hex())
        elif self._guard.admits(msg, key):
            self._on_state(msg, now, key, frames[0])
            self._route_seen(msg.node_id, msg.epoch, frames[0])

    def _on_link_message(self, frames: list[bytes], key: bytes | None) -> None:
        """A message on one of our links: a higher node answering on our route."""
        if len(frames) != 1:
            self.malformed.drop("frame-count", "node control", str(len(frames)))
            return
        self.on_control([b"", frames[0]], self.io.current_time(), key)

    def _on_beat(self, msg: Beat, now: float) -> None:
        self.beats_received += 1
        if self.table.on_beat(msg.node_id, msg.epoch, now):
            peer = self.table.get(msg.node_id)
            if peer is not None:
                self.links.understands_beats(peer.control_endpoint)
        elif msg.node_id not in self.table and msg.node_id in self._departed:
            # a peer we timed out beats us: the path is back; it may hold us live and
            # so never introduce itself again, so ask it for its State
            self._ask(self._departed[msg.node_id])

    def _on_state(self, msg: State, now: float, key: bytes | None, route: bytes) -> None:
        if msg.node_id not in self.table:
            # a node new to us: it joins only if it can have a link (max_peers)
            endpoint = self.table.control_endpoint(msg)
            if endpoint is not None and not self.links.room_for(endpoint, self.live):
                return
        events = self.table.on_state(msg, now)
        peer = self.table.get(msg.node_id)
        if peer is not None:
            self._guard.pin(peer.id, key)
        if not events:
            return
        self._apply(events)
        peer = self.table.get(msg.node_id)
        if peer is not None:
            self.links.replace(peer.control_endpoint, key)
            if any(isinstance(ev, PeerJoined) for ev in events):
                # a new node or incarnation: answer with our State (a link there may
                # predate it), and send it States until it shows it understands Beats
                # (one that takes part in the ring does)
                self.links.understands_beats(peer.control_endpoint, msg.ring)
                if msg.ring and msg.node_id < self.identity.sender and \
                        route == route_of(msg.node_id, msg.epoch):
                    # it came on the link of a lower node: answer there (one
                    # connection per pair, see ``_ring_watch``)
                    self._routes[msg.node_id] = route
                    self._send(peer, self._state_frame)
                    self.links.drop(peer.control_endpoint)
                else:
                    self.introduce(peer.control_endpoint, server_key=key)
                if (self._members_asked < ASK_MEMBERS and self._guard.public_key is None
                        and self.table.takes_part(msg.node_id)):
                    self._members_asked += 1
                    self._send(peer, encode_control(MembersQuery(self.identity.sender)))

    def _answer_clock(self, route: bytes, token: int) -> None:
        try:
            self._socket.send_to_nowait(route, _clock.answer(token))
        except (WouldBlock, ShoalError):
            pass  # the asker left or is not reading: it times out and may ask again

    def _apply(self, events: list[PeerEvent]) -> None:
        now = self.io.current_time()
        for ev in events:
            nid = bytes.fromhex(ev.peer.id)
            if isinstance(ev, PeerLeft):
                if self.table.get(nid) is None:
                    self._guard.forget(ev.peer.id)
                    self._routes.pop(nid, None)
                    self.links.left(ev.peer.control_endpoint)
                if nid in self._ring_ids and nid not in self.table:
                    self._ring_ids.discard(nid)
                    if ev.reason == "timeout":
                        self._departed[nid] = ev.peer.control_endpoint
                        if len(self._departed) > _DEPARTED_MAX:
                            self._departed.popitem(last=False)
                log.info("peer %s (%s) left: %s", ev.peer.name, ev.peer.id[:8], ev.reason)
                # if it comes back (a link that healed), it must hear our State, not
                # Beats it cannot place: so must we hear its, and it times us out too
                self.links.understands_beats(ev.peer.control_endpoint, False)
                if ev.reason != "timeout":
                    self.links.end_grace(ev.peer.control_endpoint, now)
                else:
                    self.links.reconnect(ev.peer.control_endpoint)
            else:
                if self.table.takes_part(nid):
                    self._ring_ids.add(nid)
                self._departed.pop(nid, None)
                log.debug("peer %s (%s): %s", ev.peer.name, ev.peer.id[:8], type(ev).__name__)
        # Kept here, where every change of the table passes, rather than rebuilt for
        # each introduction (a flood of advertisements means many of those).
        self.live = self.table.control_endpoints()
        self._on_events(events, {ev.peer.id: f"node {ev.peer.name!r} left ({ev.reason})"
                                 for ev in events if isinstance(ev, PeerLeft)})
        self.links.prune(self.live, now)
        self._beat_new_successors()

    # -- the beat ----------------------------------------------------------------------

    async def beat(self) -> None:
        clock = self.io.clock()
        next_beat = clock()
        beats = 0
        while True:
            now = clock()
            if now >= next_beat or self._beat_now.is_set():
                every = self._beat_now.is_set()
                full = every or beats % STATE_EVERY == 0
                self._beat_now = anyio.Event()
                targets = self._targets(now, beats)
                turn = self._next_in_turn() if full and not every else None
                if turn is not None and turn not in targets:
                    targets.append(turn)
                routed = {bytes.fromhex(p.id): p for p in self._routed()}
                self.links.heartbeat(self._state_frame, self._beat_frame, live=self.live,
                                     to={p.control_endpoint for p in targets
                                         if bytes.fromhex(p.id) not in routed},
                                     full=full, every=every)
                frame = self._state_frame if full else self._beat_frame
                for p in (routed.values() if every else targets):
                    if bytes.fromhex(p.id) in routed:
                        self._send(p, frame)
                ask = encode_control(Ask(self.identity.sender)) if self._departed else b""
                for ep in self._departed.values():
                    if ep not in self.live and ep in self.links:
                        self.links.send(ep, ask)  # (its State goes with the heartbeat)
                beats += 1
                next_beat = now + self._heartbeat
                self.links.retry(now)
            self._watch(now)
            deadline = min(next_beat, self.table.next_deadline() or math.inf)
            with anyio.CancelScope(deadline=max(deadline, now + 0.005)):
                await self._beat_now.wait()

    # -- leaving -----------------------------------------------------------------------

    def goodbye(self) -> None:
        """Say goodbye on every link (first thing on leaving: peers drop us at once)."""
        if self.closed:
            return
        self.closed = True
        bye = encode_control(Bye(self.identity.sender, self.identity.epoch))
        self.links.broadcast(bye)
        for route in self._routes.values():
            try:
                self._socket.send_to_nowait(route, bye)
            except (WouldBlock, ShoalError):
                pass  # not connected: it times us out

    def close(self) -> None:
        self.goodbye()
        self.links.close()
        self._socket.close()

