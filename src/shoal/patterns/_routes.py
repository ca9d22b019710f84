"""Routes: how the ROUTER-based patterns (reliable push/pull, reliable pub/sub, routed
request/reply) reach their peers, in one place.

A ROUTER sends to a *route*, a routing id. The side that connects names each
connection itself (``connect_route``: ``CONNECT_ROUTING_ID`` and, on a CURVE socket,
the server key of the listener there, then ``connect``; libzmq reads both at
``connect``). The side that binds cannot address a peer before hearing from it: a
peer that connects to it says *hello* (``HELLO``, an empty frame) after every
handshake, and the bound side learns the route the hello came on (``Routes.learn``);
a hello on a route of the socket's own connections is not one of those.

``Turns`` deals items round-robin over the routes a reliable pusher may use, each
holding at most its share of the window, so a puller that stops acknowledging
stalls only its share.

Never here: what is sent on a route (the patterns' own business) or when.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator

import zmq

from shoal._io import WouldBlock
from shoal._zmq._socket import PeerUnreachable, Socket

__all__ = ["HELLO", "Routes", "Turns", "connect_route", "reliable_options"]

HELLO = b""
"""The control frame of a peer that connects to a bound ROUTER: here I am (the bound
side learns the route to it). A bound pusher sends it to check a connection."""


def reliable_options(high_water_mark: int) -> list[tuple[int, int | bytes]]:
    """Socket options of both ends of the reliable patterns: ROUTER, MANDATORY so an
    absent route raises, HANDOVER so a peer reconnecting under its routing id takes it
    over at once, ZMTP heartbeats so a silent link (pulled cable) is seen as
    disconnected in seconds."""
    return [(zmq.SNDHWM, high_water_mark), (zmq.RCVHWM, high_water_mark),
            (zmq.ROUTER_MANDATORY, 1), (zmq.ROUTER_HANDOVER, 1),
            (zmq.HEARTBEAT_IVL, 1000), (zmq.HEARTBEAT_TIMEOUT, 3000)]


def connect_route(sock: Socket, route: bytes, endpoint: str,
                  server_key: bytes | None = None) -> None:
    """Connect ``sock`` to ``endpoint``, the connection known as ``route``.
    ``server_key``: the CURVE public key (Z85) of the listener there, for a socket
    made with ``shoal.security.client_options``."""
    sock.setsockopt(zmq.CONNECT_ROUTING_ID, route)
    if server_key is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    sock.connect(endpoint)


class Routes:
    """The routes of one ROUTER socket: those of the connections it made, by endpoint
    (``by_endpoint``), and, once it binds, those learned from hellos (``learned``)."""

    __slots__ = ("_own", "binds", "by_endpoint", "learned", "sock")

    def __init__(self, sock: Socket) -> None:
        self.sock = sock
        self.by_endpoint: dict[str, bytes] = {}  # connected or not (yet)
        self.binds = False
        self._own: set[bytes] = set()  # routes of our connections, once it binds too
        self.learned: set[bytes] = set()

    def bind(self, endpoint: str) -> None:
        """Listen at ``endpoint``: peers that connect there say hello."""
        self.binds = True
        self._own.update(self.by_endpoint.values())
        self.sock.bind(endpoint)

    def add(self, route: bytes, endpoint: str, server_key: bytes | None = None) -> bool:
        """Connect to ``endpoint`` as ``route``. True if the connection is up at once
        (inproc has no handshake, and libzmq's monitor reports none)."""
        if self.binds:  # a hello on this route is not one of a peer connecting to us
            self._own.add(route)
        self.by_endpoint[endpoint] = route
        connect_route(self.sock, route, endpoint, server_key)
        return endpoint.startswith("inproc://")

    def drop(self, route: bytes, endpoint: str) -> None:
        """Forget the connection to ``endpoint`` (if it is still ``route``'s) and
        disconnect it."""
        self.forget(route, endpoint)
        self.disconnect(endpoint)

    def forget(self, route: bytes, endpoint: str) -> None:
        """Forget the connection to ``endpoint``, if it is still ``route``'s."""
        if self.by_endpoint.get(endpoint) == route:
            del self.by_endpoint[endpoint]

    def disconnect(self, endpoint: str) -> None:
        """Disconnect from ``endpoint`` (nothing once the socket is closed)."""
        if not self.sock.closed:
            self.sock.disconnect(endpoint)

    def learnable(self, route: bytes) -> bool:
        """Whether a hello on ``route`` can be one of a peer that connected to us
        (False: this socket binds nothing, or it is one of our own connections)."""
        return self.binds and route not in self._own

    def learn(self, route: bytes) -> bool:
        """A hello on ``route``: True if that route is new (learned now)."""
        if route in self.learned:
            return False
        self.learned.add(route)
        return True

    def hello(self, endpoint: str) -> None:
        """Our connection to ``endpoint`` is up (again): say hello on it."""
        route = self.by_endpoint.get(endpoint)
        if route is not None and not self.sock.closed:
            try:
                self.sock.send_to_nowait(route, HELLO)
            except (PeerUnreachable, WouldBlock):
                pass  # gone again: the next handshake says hello


class Turns:
    """Round-robin over ``routes`` (connected, in turn order), skipping a route that
    holds its share of the window (``held_by(route) >= window // len(routes)``)."""

    __slots__ = ("_held_by", "_turn", "_window", "routes")

    def __init__(self, window: int, held_by: Callable[[Hashable], int]) -> None:
        self.routes: list[bytes] = []
        self._window = window
        self._held_by = held_by
        self._turn = 0

    def share(self) -> int:
        """The most a route may hold of the window (sent to it, not done)."""
        return max(1, self._window // max(1, len(self.routes)))

    def next(self) -> bytes | None:
        """The next route in turn below its share, or None. (A send's hot path: the
        next in turn is nearly always below its share.)"""
        routes = self.routes
        n = len(routes)
        if n:
            route = routes[self._turn % n]
            self._turn += 1
            if self._held_by(route) < (self._window // n or 1):
                return route
            for _ in range(n - 1):  # it holds its share: look on
                route = routes[self._turn % n]
                self._turn += 1
                if self._held_by(route) < (self._window // n or 1):
                    return route
            self._turn += 1  # a whole round, as if it had been looked at again
        return None

    def candidates(self) -> Iterator[bytes]:
        """The routes below their share, one round from the next in turn (each taken
        advances the turn): for a send that may find a route's queue full."""
        routes = self.routes
        share = self.share()
        for _ in range(len(routes)):
            route = routes[self._turn % len(routes)]
            self._turn += 1
            if self._held_by(route) < share:
                yield route

    def deal(self, k: int) -> list[bytes]:
        """Destinations for up to ``k`` new items, round-robin over the routes below
        their share (fewer than ``k`` when the shares run out)."""
        routes = self.routes
        n = len(routes)
        share = self.share()
        held_by = self._held_by
        turn = self._turn
        order = [routes[(turn + i) % n] for i in range(n)]
        room = [share - held_by(r) for r in order]
        if min(room) >= k:  # the common case: plain round-robin
            self._turn = turn + k
            return [order[j % n] for j in range(k)]
        dests: list[bytes] = []
        while len(dests) < k and max(room) > 0:
            for i in range(n):
                if room[i] > 0 and len(dests) < k:
                    dests.append(order[i])
                    room[i] -= 1
        self._turn = turn + len(dests)
        return dests

    def capped(self) -> bool:
        """Every route holds its share: only acknowledgements make room."""
        share = self.share()
        return bool(self.routes) and all(self._held_by(r) >= share for r in self.routes)
