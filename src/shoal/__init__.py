"""shoal: brokerless peer-to-peer messaging for Python, trio-native, over ZeroMQ.

    async with shoal.open_node("sensor-7", discovery=shoal.discovery.MDNS()) as node:
        async with node.open_publisher("telemetry") as pub:
            await pub.publish("room1/temp", {"celsius": 21.5})

    async with shoal.open_publisher(bind="tcp://127.0.0.1:*") as pub:   # no discovery
        await pub.publish("sensors/room1", {"celsius": 21.5})

The public surface is what ``__all__`` lists here, plus ``shoal.patterns``,
``shoal.discovery`` and ``shoal.errors``; everything under a ``_name`` is private.
``PROTOCOL_VERSION`` is the wire protocol this shoal speaks (envelope, control
messages, the ``v`` of its mDNS TXT record): a node admits only peers on the same one.
"""

from typing import TYPE_CHECKING, Any

from shoal import discovery, errors
from shoal._core import VERSION as PROTOCOL_VERSION
from shoal._core import Identity, Kind, Message
from shoal._naming import claim
from shoal.node import Node, NodeStatistics, PeerWatch, open_node
from shoal.patterns import (
    Publisher,
    Puller,
    Pusher,
    Replier,
    Request,
    Requester,
    Subscriber,
    open_publisher,
    open_puller,
    open_pusher,
    open_replier,
    open_requester,
    open_subscriber,
    serve_replier,
)

if TYPE_CHECKING:
    from shoal.prometheus import PrometheusExporter, open_prometheus_exporter

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "Identity",
    "Kind",
    "Message",
    "Node",
    "NodeStatistics",
    "PeerWatch",
    "PrometheusExporter",
    "Publisher",
    "Puller",
    "Pusher",
    "Replier",
    "Request",
    "Requester",
    "Subscriber",
    "__version__",
    "discovery",
    "errors",
    "open_node",
    "open_prometheus_exporter",
    "open_publisher",
    "open_puller",
    "open_pusher",
    "open_replier",
    "open_requester",
    "open_subscriber",
    "serve_replier",
]


claim(globals(), __all__, __name__)


def __getattr__(name: str) -> Any:
    # The exporter (and prometheus_client behind it) loads when first asked for.
    if name in ("PrometheusExporter", "open_prometheus_exporter"):
        from shoal import prometheus

        return getattr(prometheus, name)
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
