"""The catalogue of a node's channels, and the connectors that wire them to peers.

Listening roles (publisher, pullers, replier) bind an ephemeral port on the node's
address and enter the catalogue with it; connecting roles (subscribers, pushers,
requester) enter it without one and get a connector. ``rewire(peers)`` connects every
connector to exactly the listeners it should reach among the live peers (and this
node's own), and disconnects those of peers that left or withdrew the channel.

A connection is named by a *route*: ``b"r"``, the peer's node id (16 bytes), its
epoch (4) and the listener's port (2). The incarnation is part of it, so requests
waiting on a restarted replier fail even if the new one reuses the port. Resources
that route themselves (reliable patterns, the requester) take it through their own
``add_route`` / ``drop_route``; plain sockets (best-effort subscriber and pusher)
connect and disconnect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from shoal._core import ChannelOffer, Peer, PeerEvent, PeerUpdated, Role, encode_topic, offers
from shoal._zmq._socket import Socket
from shoal.errors import LocalProtocolError
from shoal.node._guard import Guard

__all__ = ["Channels", "NodeResource", "Routed", "SocketConnector", "check_channel"]


@dataclass(frozen=True, slots=True)
class NodeResource:
    """A resource open through a node (``Node.resources()``): its channel, its role,
    and the publisher, subscriber, pusher... itself."""

    channel: str
    role: Role
    resource: Any


class Routed(Protocol):
    """A resource that makes its own connections, one per route."""

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None: ...

    def drop_route(self, route: bytes, endpoint: str, why: str) -> None: ...


class SocketConnector:
    """Connections of a plain socket (the route only names them here)."""

    __slots__ = ("_guard", "_sock")

    def __init__(self, sock: Socket, guard: Guard) -> None:
        self._sock = sock
        self._guard = guard

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None:
        self._guard.connect(self._sock, endpoint, server_key)

    def drop_route(self, route: bytes, endpoint: str, why: str) -> None:
        self._sock.disconnect(endpoint)


def route_of(peer: Peer, offer: ChannelOffer) -> bytes:
    return (b"r" + bytes.fromhex(peer.id) + peer.epoch.to_bytes(4, "big")
            + offer.port.to_bytes(2, "big"))


class _Wiring:
    """A local connecting resource and the listeners it is connected to."""

    __slots__ = ("channel", "current", "role", "target")

    def __init__(self, channel: str, role: Role, target: Routed) -> None:
        self.channel = channel
        self.role = role
        self.target = target
        self.current: dict[str, tuple[bytes, str]] = {}  # endpoint -> (route, peer id)


def check_channel(channel: object) -> str:
    if not isinstance(channel, str) or not channel:
        raise LocalProtocolError(f"a channel is a non-empty string, not {channel!r}")
    encode_topic(channel)  # same rules as topics: UTF-8, no NUL, bounded
    return channel


class Channels:
    """The catalogue (what this node offers) and the wiring of its connecting roles.
    ``changed()`` is called after every change of the catalogue."""

    def __init__(self, guard: Guard, changed: Callable[[], None]) -> None:
        self._guard = guard
        self._changed = changed
        self._offers: dict[int, ChannelOffer] = {}
        self._resources: dict[int, NodeResource] = {}
        self._wirings: dict[int, _Wiring] = {}
        self._tokens = iter(range(1, 2**62))
        self.closed = False

    def offers(self) -> tuple[ChannelOffer, ...]:
        return tuple(self._offers.values())

    def resources(self) -> list[NodeResource]:
        return list(self._resources.values())

    @contextmanager
    def listing(self, offer: ChannelOffer, resource: Any,
                target: Routed | None = None) -> Iterator[None]:
        """Offer ``offer`` for as long as the block runs; ``target``: the connecting
        resource's connections, wired to the peers that offer the counterpart."""
        token = next(self._tokens)
        self._offers[token] = offer
        self._resources[token] = NodeResource(offer.name, offer.role, resource)
        if target is not None:
            self._wirings[token] = _Wiring(offer.name, offer.role, target)
        self._changed()
        try:
            yield
        finally:
            del self._offers[token]
            self._resources.pop(token, None)
            self._wirings.pop(token, None)
            if not self.closed:
                self._changed()

    def concerns(self, events: Sequence[PeerEvent]) -> bool:
        """Whether any of ``events`` is about a peer that offers, or offered, what one
        of the connectors reaches (else ``rewire`` would change nothing: a group of
        nodes that do not share a channel costs no rewiring as it grows)."""
        for ev in events:
            for peer in (ev.peer, ev.previous) if isinstance(ev, PeerUpdated) else (ev.peer,):
                for wiring in self._wirings.values():
                    if offers(peer, wiring.channel, wiring.role.counterpart):
                        return True
        return False

    def rewire(self, everyone: Sequence[Peer], reasons: dict[str, str] | None = None) -> None:
        """Connect every connector to exactly the listeners it should reach among
        ``everyone`` (this node first). ``reasons``: why peers left, by id."""
        for wiring in self._wirings.values():
            want: dict[str, tuple[bytes, str]] = {}
            for peer in everyone:
                if not self._guard.knows(peer.id):
                    continue  # not authenticated (cannot happen: States need a key)
                for offer in offers(peer, wiring.channel, wiring.role.counterpart):
                    want[peer.endpoint(offer)] = (route_of(peer, offer), peer.id)
            for ep, (route, peer_id) in list(wiring.current.items()):
                if ep not in want or want[ep][0] != route:
                    del wiring.current[ep]
                    why = (reasons or {}).get(
                        peer_id, f"the listener at {ep} withdrew channel {wiring.channel!r}")
                    wiring.target.drop_route(route, ep, why)
            for ep, (route, peer_id) in want.items():
                if ep not in wiring.current:
                    wiring.current[ep] = (route, peer_id)
                    wiring.target.add_route(route, ep,
                                            server_key=self._guard.server_key(peer_id))

    def reconnect(self, peer_ids: set[str], why: str) -> None:
        """Make the connections to ``peer_ids``' listeners again (they were refused
        and libzmq does not retry a refused connection)."""
        for wiring in self._wirings.values():
            for ep, (route, peer_id) in list(wiring.current.items()):
                if peer_id in peer_ids:
                    wiring.target.drop_route(route, ep, why)
                    wiring.target.add_route(route, ep,
                                            server_key=self._guard.server_key(peer_id))
