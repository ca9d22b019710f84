"""How nodes find each other: mDNS/DNS-SD on the LAN, or static peer lists.

    async with shoal.open_node("sensor-7", discovery=MDNS(interfaces=["127.0.0.1"])) as node:
        for peer in node.peers(): ...
        async for change in node.watch_peers(): ...   # PeerJoined / PeerUpdated / PeerLeft

A discovery source only finds a peer's control endpoint; what the peer offers (its
catalogue of channels), its liveness and its goodbye travel over ZeroMQ between the
nodes, so ``MDNS`` and ``Static`` behave the same once a peer is found.

Writing a source (a registry lookup, a file watched...): an object with an
``interfaces`` attribute (None, or the addresses it works on) and an ``async def
discover(own, reports, *, task_status)`` (the ``Source`` protocol). The node starts it
with ``task_group.start``, giving it ``own`` (an ``Advertisement``: this node's name, id,
epoch, addresses, control port and public key, for a source that announces it) and
``reports``: the source calls ``reports.report(Found(instance, endpoints,
public_key=..., node_id=...))`` for each node it finds and ``reports.report(Lost(instance))``
when one is withdrawn, and may ask ``reports.reached()`` / ``reports.unreached()``
which of its instances are live peers, to pace its lookups. A source knows nothing of
the node and decides nothing: which address to use, whether a key is trusted, when
to introduce the node and to introduce it again after a partition are the node's
decisions, the same for every source::

    class Registry:
        interfaces = None

        async def discover(self, own, reports, *, task_status=anyio.TASK_STATUS_IGNORED):
            task_status.started()
            while True:
                for name, endpoint, key in await lookup():
                    reports.report(Found(name, (endpoint,), public_key=key))
                await anyio.sleep(10)

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
from shoal._naming import claim
from shoal.discovery._contract import Advertisement, Found, Lost, Reports, Source
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
    "Advertisement",
    "ChannelOffer",
    "Found",
    "Interface",
    "Lost",
    "Peer",
    "PeerEvent",
    "PeerJoined",
    "PeerLeft",
    "PeerUpdated",
    "Reports",
    "Role",
    "Source",
    "Static",
    "interfaces",
    "resolve_interfaces",
    "unknown_addresses",
]

claim(globals(), __all__, __name__)
