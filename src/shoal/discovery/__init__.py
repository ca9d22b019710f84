"""How nodes find each other: mDNS/DNS-SD on the LAN, or static peer lists.

    async with shoal.open_node("sensor-7", discovery=MDNS(interfaces=["127.0.0.1"])) as node:
        for peer in node.peers(): ...
        async for change in node.watch_peers(): ...   # PeerJoined / PeerUpdated / PeerLeft

A discovery source only finds a peer's control endpoint; what the peer offers (its
catalogue of channels), its liveness and its goodbye travel over ZeroMQ between the
nodes, so ``MDNS`` and ``Static`` behave the same once a peer is found.

``interfaces=`` (of ``MDNS``, ``Static`` and ``open_node``) takes interface names or
IPv4 addresses; ``resolve_interfaces`` does that resolution for an application that
takes the same option (``unknown_addresses`` says which addresses are not this
machine's), and ``interfaces()`` lists the machine's interfaces with their flags.
"""

from shoal._core import (
    ChannelOffer,
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    Role,
)
from shoal.discovery._interfaces import (
    Interface,
    interfaces,
    resolve_interfaces,
    unknown_addresses,
)
from shoal.discovery._mdns import MDNS, SERVICE_TYPE
from shoal.discovery._static import Static

__all__ = [
    "MDNS",
    "SERVICE_TYPE",
    "ChannelOffer",
    "Interface",
    "Peer",
    "PeerEvent",
    "PeerJoined",
    "PeerLeft",
    "PeerUpdated",
    "Role",
    "Static",
    "interfaces",
    "resolve_interfaces",
    "unknown_addresses",
]
