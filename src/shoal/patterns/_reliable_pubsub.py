"""Reliable publish/subscribe: every publication reaches every known subscriber whose
prefixes match, in order, once.

The publisher is ``shoal.patterns._reliable_publisher``, the subscriber
``shoal.patterns._reliable_subscriber``; their wire rules live in ``shoal._core``
(``FanoutSender``, ``SubscriberReceiver``, ``SubscriberAck``) and the routes in
``shoal.patterns._routes``. This module names them together.
"""

from shoal.patterns._common import check_reliable_pubsub_args
from shoal.patterns._reliable_publisher import (
    ReliablePublisher,
    ReliablePublisherStatistics,
    open_reliable_publisher,
)
from shoal.patterns._reliable_subscriber import (
    ReliableSubscriber,
    ReliableSubscriberStatistics,
    open_reliable_subscriber,
)

__all__ = ["ReliablePublisher", "ReliablePublisherStatistics", "ReliableSubscriber",
           "ReliableSubscriberStatistics", "check_reliable_pubsub_args",
           "open_reliable_publisher", "open_reliable_subscriber"]
