"""shoal: brokerless peer-to-peer messaging for Python, trio-native, over ZeroMQ.

    async with shoal.open_publisher(bind="tcp://127.0.0.1:*") as pub:
        await pub.publish("sensors/room1", {"celsius": 21.5})

The public surface is what ``__all__`` lists here, plus ``shoal.patterns``,
``shoal.discovery`` and ``shoal.errors``; everything under a ``_name`` is private.
"""

from shoal import errors
from shoal._core import Identity, Kind, Message
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

__version__ = "0.1.0"

__all__ = [
    "Identity",
    "Kind",
    "Message",
    "Publisher",
    "Puller",
    "Pusher",
    "Replier",
    "Request",
    "Requester",
    "Subscriber",
    "__version__",
    "errors",
    "open_publisher",
    "open_puller",
    "open_pusher",
    "open_replier",
    "open_requester",
    "open_subscriber",
    "serve_replier",
]
