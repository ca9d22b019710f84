"""The link pool: one outgoing control link (a DEALER) per known control endpoint,
except to lower nodes of the ring that keep a link to this one (one connection per
pair: that node answers on our link's route, and we read what comes back on it; see
``shoal.node._ring_watch``).

A link carries this node's State (its introduction), its heartbeats and its goodbye.
A heartbeat is the full State until the node at the other end has shown it
understands the small ``Beat`` (it sent us one: ``understands_beats``); a new link
sends one Beat after its introduction, so that two nodes that both understand it
switch at once, while a node that does not counts one unknown control message and
keeps getting States.

Liveness is the control protocol's (the ring watch, ``shoal.node._control``): links
carry no ZMTP pings, so a link to a peer that is neither beaten nor watched is silent
and costs nothing. A dead TCP connection (a pulled cable sends no FIN) would stay stuck in
the kernel's retransmission backoff, so the link to a node that left on a timeout is
connected afresh (``reconnect``: libzmq's connects are given up after a short timeout
and tried again), and carries our State at every heartbeat for ``LINK_GRACE`` seconds:
the two nodes meet again soon after the path is back.

Links to live peers stay; links to endpoints that are not live peers close
after ``LINK_GRACE`` seconds (libzmq keeps reconnecting meanwhile, so two nodes
separated by a flapping link find each other again when it heals), except persistent
ones (a steady discovery record: a configured peer), which stay as long as the
record. Links to nodes that said goodbye close at once. Links to endpoints not yet
known as peers are bounded (``MAX_PENDING_LINKS``): a flood of advertisements cannot
make a node open sockets without limit.

All links are bounded by the node's ``max_peers``: a link is a peer, or a node being
introduced to. At the bound, a new endpoint gets a link only by taking the place of an
idle one (to a node that was a live peer and left, or one opened ``LINK_GRACE`` seconds
ago that never became a live peer), which is closed; else it is refused before any
socket is made: logged once and counted in ``peers_refused`` until it is admitted
(discovery introduces the node again every few seconds, and a node that introduces
itself to us is asked about through ``room_for``).

Each link's handshakes are followed on its socket monitor (``shoal._zmq._monitor``):

* a secured link refused by the other node's ZAP handler is connected again every
  ``AUTH_RETRY`` seconds (libzmq does not reconnect a refused client); when it is
  admitted at last, ``on_admitted(endpoint)`` lets the node make its data
  connections to that peer again (one ZAP handler decides for all of a node's
  sockets, so they were refused too). Adding a key to a trusted-keys file thus takes
  effect without restarts.
* handshakes that fail again and again (something that accepts TCP and is not a shoal
  node) are backed off from ``HANDSHAKE_RETRY`` up to ``HANDSHAKE_RETRY_MAX``
  seconds, and logged once, instead of libzmq's 100 ms reconnect.

A plaintext link stops watching after its first handshake: a shoal node is there.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Collection

import anyio
import zmq
from anyio.abc import TaskGroup

from shoal._io import WouldBlock
from shoal._zmq._monitor import (
    CONNECTED,
    DISCONNECTED,
    HANDSHAKE_FAILED,
    HANDSHAKE_FAILED_AUTH,
    HANDSHAKE_SUCCEEDED,
    Monitor,
)
from shoal._zmq._socket import Socket
from shoal.errors import ClosedError, ShoalError
from shoal.node._sockets import SocketFactory
from shoal.node._watch import WarnOnce, log

__all__ = ["AUTH_RETRY", "HANDSHAKE_RETRY", "LINK_GRACE", "MAX_PENDING_LINKS", "LinkPool"]

LINK_GRACE = 30.0
"""Seconds a control link to a silent, unknown or departed-on-timeout node stays open."""
MAX_PENDING_LINKS = 128
"""Control links to endpoints that are not live peers (being introduced to), at most;
introductions beyond are skipped (discovery reports them again later). A secured
link costs three ZeroMQ sockets (its own and a monitor pair): the context's limit is
sized for ``max_peers`` of them (``shoal.node._sockets.max_sockets``)."""
AUTH_RETRY = 5.0
"""Seconds between connection attempts to a node whose ZAP handler refused our key."""
HANDSHAKE_RETRY = 1.0
"""After two failed handshakes in a row on a control link (something that accepts TCP
and is not a shoal node), it is tried again after this, doubling up to
``HANDSHAKE_RETRY_MAX``, instead of libzmq's 100 ms reconnect."""
HANDSHAKE_RETRY_MAX = 60.0
UNANSWERED_AFTER = 10.0
"""A link with no completed handshake this many seconds after it opened is logged
once, with its likely cause, and counted (``NodeStatistics.links_unanswered``)."""
_REFUSALS_REMEMBERED = 4096  # endpoints refused at max_peers, counted once each
_LINK_EVENTS = (HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED_AUTH | HANDSHAKE_FAILED | DISCONNECTED
                | CONNECTED)


class _Link:
    __slots__ = ("answered", "beats", "connected", "expires", "failed", "key", "monitor",
                 "opened", "persistent", "reached", "refused", "retry_at", "sock", "up",
                 "was_live")

    def __init__(self, sock: Socket, *, persistent: bool, expires: float,
                 key: bytes | None = None) -> None:
        self.sock = sock
        self.persistent = persistent
        self.expires = expires
        self.key = key  # the server's public key (secured nodes)
        self.monitor: Monitor | None = None  # handshake events
        self.refused = False  # the other node's ZAP handler refused our key
        self.retry_at = math.inf  # when to connect again (after a refusal or failures)
        self.up = False  # a handshake completed since the last connect
        self.failed = 0  # handshakes failed in a row (not a shoal node there?)
        self.beats = False  # the node there understands Beat: heartbeats are Beats
        self.opened = 0.0  # when it was opened (the event loop's clock)
        self.connected = False  # a TCP connection was made (before any handshake)
        self.answered = False  # a handshake completed once (or the link was reported)
        self.reached = False  # a handshake completed once (or the link is not watched)
        self.was_live = False  # its endpoint was a live peer once: if it left, it is idle

    def send(self, frame: bytes) -> None:
        try:
            self.sock.send_nowait(frame)
        except WouldBlock:
            pass  # not connected and its small queue is full: the next beat will do

    def stop_watching(self) -> None:
        mon, self.monitor = self.monitor, None
        if mon is not None:
            mon.close()

    def close(self) -> None:
        self.stop_watching()
        self.sock.close()


class LinkPool:
    """The control links, by endpoint. ``state()`` is this node's State frame now."""

    def __init__(self, sockets: SocketFactory, warn: WarnOnce, *,
                 state: Callable[[], bytes], beat: Callable[[], bytes],
                 on_admitted: Callable[[str], None], route: bytes = b"",
                 on_message: Callable[[list[bytes], bytes | None], None] | None = None,
                 routed: Callable[[], int] = lambda: 0, max_peers: int = 1000) -> None:
        self._sockets = sockets
        self.max_peers = max_peers
        self._beat = beat
        self._on_message = on_message
        self.routed = routed  # peers answered on their own links' routes (no link here)
        # no ZMTP pings: N links each pinging would cost every node O(N) packets; the
        # routing id names this node's incarnation, so that the node at the other end
        # can answer on this connection (see ``shoal.node._ring_watch``)
        self._options: list[tuple[int, int | bytes]] = [(zmq.SNDHWM, 8), (zmq.HEARTBEAT_IVL, 0)]
        if route:
            self._options.append((zmq.ROUTING_ID, route))
        self._guard = sockets.guard
        self._warn = warn
        self._state = state
        self._on_admitted = on_admitted
        self._links: dict[str, _Link] = {}
        self.nursery: TaskGroup | None = None  # where links are watched, once running
        self.refused_links = 0
        """Links not opened because no socket could be had (the socket or descriptor
        limit): the peer is skipped, logged, and tried again when discovery repeats."""
        self.unanswered = 0
        """Links logged as unanswered (no handshake ``UNANSWERED_AFTER`` seconds on)."""
        self.peers_refused = 0
        """Endpoints refused a link at ``max_peers`` (each counted once until admitted)."""
        self._turned_away: OrderedDict[str, None] = OrderedDict()
        self._idle: list[str] = []  # links that may give their place up, newest first
        self._left: OrderedDict[str, None] = OrderedDict()  # endpoints of peers that left

    def __contains__(self, endpoint: str) -> bool:
        return endpoint in self._links

    def __len__(self) -> int:
        return len(self._links)

    def key_of(self, endpoint: str) -> bytes | None:
        link = self._links.get(endpoint)
        return None if link is None else link.key

    def introduce(self, endpoint: str, server_key: bytes | None, *, persistent: bool,
                  live: Collection[str]) -> None:
        """Send this node's State to ``endpoint``, opening a link there if there is
        none (unless too many links go to endpoints that are not ``live`` peers)."""
        link = self._links.get(endpoint)
        if link is None:
            if not persistent and self._pending(endpoint, live) >= MAX_PENDING_LINKS:
                self._warn("links", "", "not introducing to %s: %d links to unknown nodes "
                           "are open already (an advertisement flood?)", endpoint,
                           MAX_PENDING_LINKS)
                return
            if not self.room_for(endpoint, live):
                return
            try:
                link = self._open(endpoint, server_key, persistent=persistent,
                                  expires=anyio.current_time() + LINK_GRACE)
            except (ShoalError, zmq.ZMQError) as exc:
                # out of sockets or descriptors: refuse this peer, never crash the node
                self.refused_links += 1
                self._warn("no-socket", endpoint, "not linking to %s: %s (%d links open; "
                           "raise the process's descriptor limit, ulimit -n, or run fewer "
                           "nodes per host)", endpoint, exc, len(self._links))
                return
            if endpoint in self._turned_away:
                del self._turned_away[endpoint]
                self._warn.forget("max-peers", endpoint)
                log.info("linking to %s: a place freed up (max_peers=%d)", endpoint,
                         self.max_peers)
            link.send(self._state())
            link.send(self._beat())  # do you understand Beats? (then you send them too)
            return
        link.persistent = link.persistent or persistent
        link.send(self._state())

    def room_for(self, endpoint: str, live: Collection[str]) -> bool:
        """Whether ``endpoint`` has a link or may have one under ``max_peers`` (closing
        an idle link to make room, if need be). If not, the refusal is logged once and
        counted once, until the endpoint is admitted."""
        if endpoint in self._links or len(self._links) + self.routed() < self.max_peers:
            return True
        now = anyio.current_time()
        while self._idle:
            ep = self._idle.pop()
            link = self._links.get(ep)
            if link is not None and ep not in live and self._is_idle(link, now):
                log.info("closing the control link to %s (no longer a live peer) to make "
                         "room for %s (max_peers=%d)", ep, endpoint, self.max_peers)
                link.close()
                del self._links[ep]
                return True
        if endpoint not in self._turned_away:
            self._turned_away[endpoint] = None
            if len(self._turned_away) > _REFUSALS_REMEMBERED:
                self._turned_away.popitem(last=False)
            self.peers_refused += 1
        self._warn("max-peers", endpoint, "not linking to %s: max_peers=%d reached (%d "
                   "control links, to live peers and nodes being introduced to); raise "
                   "open_node(max_peers=...) if this node should reach more peers, or give "
                   "it fewer to find. Trying again when a peer leaves", endpoint,
                   self.max_peers, len(self._links))
        return False

    @staticmethod
    def _is_idle(link: _Link, now: float) -> bool:
        """Whether a link to an endpoint that is not a live peer may give its place up:
        its peer left, or it never had one in ``LINK_GRACE`` seconds."""
        return link.was_live or now - link.opened >= LINK_GRACE

    def _pending(self, endpoint: str, live: Collection[str]) -> int:
        """Links to endpoints that are not live peers, as far as the bound needs: 0 if
        ``endpoint`` is a live peer (always answered, whatever a flood of
        advertisements did) or if there are fewer links than the bound in all."""
        if endpoint in live or len(self._links) < MAX_PENDING_LINKS:
            return 0
        return sum(1 for ep, link in self._links.items()
                   if ep not in live and not link.persistent)

    def _open(self, endpoint: str, key: bytes | None, *, persistent: bool,
              expires: float) -> _Link:
        sock = self._sockets.open(zmq.DEALER, self._options, linger_ms=200, data=False)
        link = _Link(sock, persistent=persistent, expires=expires, key=key)
        link.opened = anyio.current_time()
        link.was_live = endpoint in self._left  # (a peer answered on its route left)
        try:
            if self.nursery is not None:
                # before connect(), so no handshake goes unseen
                link.monitor = Monitor(sock, _LINK_EVENTS)
                self.nursery.start_soon(self._watch, endpoint, link)
                self._start_reading(link)
            else:
                link.answered = True  # not watched: whether it is answered is unknown
                link.reached = True
            self._guard.connect(sock, endpoint, key)
        except BaseException:
            link.close()
            raise
        self._links[endpoint] = link
        return link

    def start(self, nursery: TaskGroup) -> None:
        """Watch and read links from now on, in ``nursery`` (those open already too)."""
        self.nursery = nursery
        for link in self._links.values():
            self._start_reading(link)

    def _start_reading(self, link: _Link) -> None:
        if self.nursery is not None and self._on_message is not None:
            self.nursery.start_soon(self._read, link)

    async def _read(self, link: _Link) -> None:
        """What the node at the other end sends back on this link (it answers on our
        route: see ``shoal.node._ring_watch``)."""
        on_message = self._on_message
        assert on_message is not None
        sock = link.sock
        checkpoint = sock.loop.checkpoint
        try:
            while True:
                batch = sock.receive_batch_nowait(64)
                if not batch:
                    await sock.wait_receivable()
                    continue
                for frames in batch:
                    on_message(frames, link.key)
                await checkpoint()
        except ClosedError:
            pass  # the link closed

    def left(self, endpoint: str) -> None:
        """The peer at ``endpoint`` left: a link opened there again is idle (it may give
        its place up under ``max_peers``) until a live peer is there again."""
        self._left[endpoint] = None
        if len(self._left) > _REFUSALS_REMEMBERED:
            self._left.popitem(last=False)

    def drop(self, endpoint: str) -> None:
        """Close the link to ``endpoint`` now (the node there answers on its own link's
        route: one connection per pair). Discovery opens it again if that node goes."""
        link = self._links.pop(endpoint, None)
        if link is not None:
            link.close()

    def replace(self, endpoint: str, key: bytes | None) -> None:
        """Close the link to ``endpoint`` if it names another server key than ``key``
        (the one a State was authenticated with wins)."""
        link = self._links.get(endpoint)
        if link is not None and self._guard.replaces_link(link.key, key):
            link.close()
            del self._links[endpoint]

    def release(self, endpoint: str) -> None:
        """The link to ``endpoint`` is no longer persistent: a grace period, then it goes
        unless a live peer is there."""
        link = self._links.get(endpoint)
        if link is not None and link.persistent:
            link.persistent = False
            link.expires = anyio.current_time() + LINK_GRACE

    def reconnect(self, endpoint: str) -> None:
        """Drop the link's TCP connection and connect afresh (the node there went
        silent: the connection may be dead without a FIN)."""
        link = self._links.get(endpoint)
        if link is None or link.sock.closed:
            return
        try:
            link.sock.disconnect(endpoint)
        except ShoalError:
            pass  # not connected: connect below is what counts
        self._guard.connect(link.sock, endpoint, link.key)

    def end_grace(self, endpoint: str, now: float) -> None:
        """The node there said goodbye (or was replaced): no grace."""
        link = self._links.get(endpoint)
        if link is not None:
            link.expires = now

    def broadcast(self, frame: bytes) -> None:
        for link in self._links.values():
            link.send(frame)

    def send(self, endpoint: str, frame: bytes) -> None:
        """``frame`` on the link to ``endpoint``, if there is one."""
        link = self._links.get(endpoint)
        if link is not None:
            link.send(frame)

    def heartbeat(self, state: bytes, beat: bytes, *, to: Collection[str],
                  live: Collection[str], full: bool, every: bool = False) -> None:
        """A heartbeat: to the endpoints ``to``, ``beat`` where it is understood (unless
        ``full``), else ``state``; ``state`` to every link that is not a ``live`` peer
        (being introduced, or left on a timeout) once a node answered there (before
        that, the introduction waits in the link's queue: more would only arrive as a
        burst of stale States when the node starts), and to every link if ``every``."""
        for ep, link in self._links.items():
            if every or (ep not in live and link.reached):
                link.send(state)
            elif ep in to:
                link.send(beat if link.beats and not full else state)

    def understands_beats(self, endpoint: str, yes: bool = True) -> None:
        """The node at ``endpoint`` sent a Beat (or, ``yes=False``, is a new
        incarnation that has not yet)."""
        link = self._links.get(endpoint)
        if link is not None:
            link.beats = yes

    def prune(self, live: Collection[str], now: float) -> None:
        """Close the links whose time is up; note which ones are idle (see
        ``room_for``)."""
        idle = []
        for ep, link in list(self._links.items()):
            if ep in live:
                link.expires = now + LINK_GRACE
                link.was_live = True
                self._left.pop(ep, None)
            elif not link.persistent and link.expires <= now:
                link.close()
                del self._links[ep]
            elif self._is_idle(link, now):
                idle.append(ep)
        idle.reverse()  # the oldest link gives its place up first
        self._idle = idle

    def retry(self, now: float) -> None:
        """Connect again the links whose wait (a refusal, failed handshakes) is over;
        report the links that stay unanswered."""
        for ep, link in self._links.items():
            if not link.answered and not link.refused and now - link.opened >= UNANSWERED_AFTER:
                self._unanswered(ep, link)
            if link.retry_at <= now and not link.sock.closed:
                link.retry_at = math.inf
                try:
                    link.sock.disconnect(ep)
                except ShoalError:
                    pass  # not connected any more: connect below is what counts
                self._guard.connect(link.sock, ep, link.key)
                link.send(self._state())

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()

    # -- handshakes ---------------------------------------------------------------------

    async def _watch(self, endpoint: str, link: _Link) -> None:
        mon = link.monitor
        if mon is None:
            return  # closed before this task started
        try:
            while True:
                for ev in mon.events_nowait(16):
                    if ev.event == HANDSHAKE_FAILED_AUTH:
                        self._refused(endpoint, link)
                    elif ev.event == CONNECTED:
                        link.connected = True
                    elif ev.event == HANDSHAKE_SUCCEEDED:
                        link.up = True
                        link.answered = True
                        link.reached = True
                        link.failed = 0
                        self._warn.forget("handshake", endpoint)
                        self._admitted(endpoint, link)
                        if link.key is None:
                            link.stop_watching()
                            return
                    elif ev.event == DISCONNECTED:
                        if not link.up and not link.refused:
                            self._handshake_failed(endpoint, link)
                        link.up = False
                    elif ev.handshake_failed:
                        link.up = False
                await mon.wait()
        except ClosedError:
            pass  # the link closed

    def _unanswered(self, endpoint: str, link: _Link) -> None:
        link.answered = True  # reported once
        self.unanswered += 1
        if link.connected:
            why = ("TCP connects but no shoal handshake completes (not a shoal node, or "
                   "a secured one that does not admit this node)")
        else:
            why = ("no TCP connection could be made: the host is down or unreachable, "
                   "its address gets no ARP/neighbour answer, or a firewall drops the "
                   "packets")
        self._warn("unanswered", endpoint, "the control link to %s has had no answer for "
                   "%g s: %s; still trying", endpoint, UNANSWERED_AFTER, why)

    def _handshake_failed(self, endpoint: str, link: _Link) -> None:
        """A connection to ``endpoint`` closed before its handshake completed. From the
        second in a row: disconnect, and connect again after a backoff."""
        link.failed += 1
        if link.failed < 2 or link.sock.closed:
            return
        wait = min(HANDSHAKE_RETRY * 2 ** min(link.failed - 2, 16), HANDSHAKE_RETRY_MAX)
        try:
            link.sock.disconnect(endpoint)
        except ShoalError:
            pass
        link.retry_at = anyio.current_time() + wait
        self._warn("handshake", endpoint,
                   "%s accepts connections but no shoal handshake completes there (not a "
                   "shoal node, or another protocol); trying again after backing off, up "
                   "to every %g s", endpoint, HANDSHAKE_RETRY_MAX)

    def _refused(self, endpoint: str, link: _Link) -> None:
        link.refused = True
        link.retry_at = anyio.current_time() + AUTH_RETRY
        key = self._guard.public_key
        assert key is not None  # only a CURVE client is refused by ZAP
        self._warn("refused-us", endpoint,
                   "the node at %s refused this node's key %s (authentication failed); "
                   "trying again every %g s. To admit this node, add its key to that "
                   "node's trusted keys", endpoint, key.decode(), AUTH_RETRY)

    def _admitted(self, endpoint: str, link: _Link) -> None:
        if not link.refused:
            return
        link.refused = False
        self._warn.forget("refused-us", endpoint)
        log.info("the node at %s admitted this node's key", endpoint)
        link.send(self._state())
        self._on_admitted(endpoint)
