"""The control protocol: introductions, State heartbeats, goodbyes, admission.

A node has one control socket (a ROUTER) that other nodes talk to, and one outgoing
link per known control endpoint (``shoal.node._links``). Theory of operation:

* Discovery only ever gives control endpoints to *introduce ourselves to*: the node
  opens a link there and sends its ``State``. The other node, on hearing a State from
  someone it has no link to, opens one back and answers with its own: one side
  finding the other is enough.
* The peer table (``shoal._core.PeerTable``) is fed only by control messages, whatever
  found the peer, so every discovery source behaves the same. Every link carries a
  heartbeat every ``heartbeat`` seconds: a small ``Beat`` to nodes that understand it
  (see ``_links``), our full State to others, to all every ``STATE_EVERY`` beats and
  at once after a catalogue change (``publish``). A node that joins is answered with
  our State at once. A peer silent for ``peer_timeout`` seconds leaves; a clean exit
  sends ``Bye`` on every link.
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
from collections.abc import Callable, Sequence

import trio
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
from shoal._core._control import ClockQuery, ClockReading
from shoal.errors import DecodeError, ShoalError
from shoal.node import _clock
from shoal.node._links import LinkPool
from shoal.node._sockets import SocketFactory, port_of
from shoal.node._watch import WarnOnce, log
from shoal.patterns._common import MalformedCounter

__all__ = ["Control"]

STATE_EVERY = 10
"""Every this many heartbeats, the full State goes on every link (a State that was
lost, a node that restarted unnoticed: nothing stays stale for long)."""

Reasons = dict[str, str]
"""Why peers left, by peer id."""


class Control:
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
        self._on_events = on_events
        self._reconnect = reconnect  # make the data connections to these peers again
        # no ZMTP pings from here: each link pings (see ``_links``)
        self._socket = sockets.open(zmq.ROUTER, [(zmq.RCVHWM, 10_000), (zmq.HEARTBEAT_IVL, 0)],
                                    linger_ms=0, server=True, data=False)
        try:
            self.port = port_of(self._socket.bind(f"tcp://{sockets.bind_host}:{port}"))
        except BaseException:
            self._socket.close()
            raise
        self.links = LinkPool(sockets, warn, state=lambda: self._state_frame,
                              beat=lambda: self._beat_frame, on_admitted=self._admitted,
                              peer_timeout=peer_timeout, max_peers=max_peers)
        self.live: set[str] = set()  # control endpoints of live peers
        self._offers: tuple[ChannelOffer, ...] = ()
        self._revision = 0
        self._state_frame = encode_control(self._state())
        self._beat_frame = self._beat()
        self._beat_now = trio.Event()
        self.beats_received = 0
        self.malformed = MalformedCounter()
        self.received = 0
        self.mismatches = 0
        self._warned_versions: set[object] = set()

    # -- who we are -------------------------------------------------------------------

    def _state(self) -> State:
        return State(node_id=self.identity.sender, epoch=self.identity.epoch, name=self.name,
                     addresses=self.addresses, control_port=self.port,
                     revision=self._revision, channels=self._offers)

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
                    last_seen=trio.current_time())

    # -- introductions -----------------------------------------------------------------

    def introduce(self, endpoint: str, *, persistent: bool = False,
                  server_key: bytes | None = None) -> None:
        """Send this node's State to a control endpoint (see ``Node.introduce``)."""
        if self.closed:
            return
        self._guard.check_introduction(endpoint, server_key)
        self.links.introduce(endpoint, server_key, persistent=persistent, live=self.live)

    def _admitted(self, endpoint: str) -> None:
        # its data listeners refused us too (one ZAP handler decides for a node's
        # sockets), and libzmq does not retry a refused connection: make them again
        ids = {p.id for p in self.table.peers() if p.control_endpoint == endpoint}
        self._reconnect(ids, f"reconnecting to {endpoint} (admitted after a refusal)")

    # -- receiving ---------------------------------------------------------------------

    async def read(self) -> None:
        sock = self._socket
        while True:
            received = self._guard.receive(sock, 64)
            if not received:
                await sock.wait_receivable()
                continue
            now = trio.current_time()
            for frames, key in received:
                self.on_control(frames, now, key)
            await trio.lowlevel.checkpoint()

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
        elif isinstance(msg, Bye):
            if self._guard.speaks_for(msg.node_id, key):
                self._apply(self.table.on_bye(msg.node_id, msg.epoch, now))
        elif msg.node_id == self.identity.sender and msg.epoch != self.identity.epoch:
            log.warning("another node (epoch %d) uses this node's id %s: give the nodes "
                        "distinct names or node_id=", msg.epoch, self.identity.sender.hex())
        elif self._guard.admits(msg, key):
            self._on_state(msg, now, key)

    def _on_beat(self, msg: Beat, now: float) -> None:
        self.beats_received += 1
        if self.table.on_beat(msg.node_id, msg.epoch, now):
            peer = self.table.get(msg.node_id)
            if peer is not None:
                self.links.understands_beats(peer.control_endpoint)

    def _on_state(self, msg: State, now: float, key: bytes | None) -> None:
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
                self.links.understands_beats(peer.control_endpoint, False)
                self.introduce(peer.control_endpoint, server_key=key)

    def _answer_clock(self, route: bytes, token: int) -> None:
        try:
            self._socket.send_to_nowait(route, _clock.answer(token))
        except (trio.WouldBlock, ShoalError):
            pass  # the asker left or is not reading: it times out and may ask again

    def _apply(self, events: list[PeerEvent]) -> None:
        now = trio.current_time()
        for ev in events:
            if isinstance(ev, PeerLeft):
                if self.table.get(bytes.fromhex(ev.peer.id)) is None:
                    self._guard.forget(ev.peer.id)
                log.info("peer %s (%s) left: %s", ev.peer.name, ev.peer.id[:8], ev.reason)
                # if it comes back (a link that healed), it must hear our State, not
                # Beats it cannot place: so must we hear its, and it times us out too
                self.links.understands_beats(ev.peer.control_endpoint, False)
                if ev.reason != "timeout":
                    self.links.end_grace(ev.peer.control_endpoint, now)
            else:
                log.debug("peer %s (%s): %s", ev.peer.name, ev.peer.id[:8], type(ev).__name__)
        # Kept here, where every change of the table passes, rather than rebuilt for
        # each introduction (a flood of advertisements means many of those).
        self.live = {p.control_endpoint for p in self.table.peers()}
        self._on_events(events, {ev.peer.id: f"node {ev.peer.name!r} left ({ev.reason})"
                                 for ev in events if isinstance(ev, PeerLeft)})
        self.links.prune(self.live, now)

    # -- the beat ----------------------------------------------------------------------

    async def beat(self) -> None:
        next_beat = trio.current_time()
        beats = 0
        while True:
            now = trio.current_time()
            if now >= next_beat or self._beat_now.is_set():
                full = self._beat_now.is_set() or beats % STATE_EVERY == 0
                self._beat_now = trio.Event()
                self.links.heartbeat(self._state_frame, self._beat_frame, full=full)
                beats += 1
                next_beat = now + self._heartbeat
                self.links.retry(now)
            events = self.table.expire(now)
            if events:
                self._apply(events)
            else:
                self.links.prune(self.live, now)
            deadline = min(next_beat, self.table.next_deadline() or math.inf)
            with trio.move_on_at(max(deadline, now + 0.005)):
                await self._beat_now.wait()

    # -- leaving -----------------------------------------------------------------------

    def goodbye(self) -> None:
        """Say goodbye on every link (first thing on leaving: peers drop us at once)."""
        if self.closed:
            return
        self.closed = True
        self.links.broadcast(encode_control(Bye(self.identity.sender, self.identity.epoch)))

    def close(self) -> None:
        self.goodbye()
        self.links.close()
        self._socket.close()

