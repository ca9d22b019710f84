"""The messaging patterns, on explicit endpoints.

=================  ============================  ====================================
pattern            ZeroMQ underneath             who gets a message
=================  ============================  ====================================
publish/subscribe  PUB/SUB, topic-prefix filter  every subscriber whose prefix matches
push/pull          PUSH/PULL                     exactly one puller
reliable pub/sub   ROUTER <- ROUTER, acks        every known subscriber, at least once on
                                                 the wire, once and in order to the app
reliable push/pull ROUTER -> ROUTER, acks        one puller, at least once (redelivered
                                                 if it dies before it is done)
request/reply      DEALER -> ROUTER, ids         one replier; the reply comes back
=================  ============================  ====================================
"""

from shoal._naming import claim
from shoal.patterns._dead_letters import DeadLetter
from shoal.patterns._open import open_publisher, open_puller, open_pusher, open_subscriber
from shoal.patterns._open_requester import open_requester
from shoal.patterns._pubsub import (
    Publisher,
    PublisherStatistics,
    Subscriber,
    SubscriberStatistics,
)
from shoal.patterns._pushpull import (
    Puller,
    PullerStatistics,
    Pusher,
    PusherStatistics,
)
from shoal.patterns._reliable_publisher import ReliablePublisher, ReliablePublisherStatistics
from shoal.patterns._reliable_pull import (
    Delivery,
    ManualAckPuller,
    ReliablePuller,
    ReliablePullerStatistics,
    open_reliable_puller,
)
from shoal.patterns._reliable_push import (
    ReliablePusher,
    ReliablePusherStatistics,
    open_reliable_pusher,
)
from shoal.patterns._reliable_subscriber import (
    ReliableSubscriber,
    ReliableSubscriberStatistics,
)
from shoal.patterns._replier import (
    Replier,
    ReplierStatistics,
    Request,
    open_replier,
)
from shoal.patterns._requester import Requester, RequesterStatistics
from shoal.patterns._scatter import Answer, AnswerStatus, Gathered
from shoal.patterns._serve import serve_replier

__all__ = [
    "Answer",
    "AnswerStatus",
    "DeadLetter",
    "Delivery",
    "Gathered",
    "ManualAckPuller",
    "Publisher",
    "PublisherStatistics",
    "Puller",
    "PullerStatistics",
    "Pusher",
    "PusherStatistics",
    "ReliablePublisher",
    "ReliablePublisherStatistics",
    "ReliablePuller",
    "ReliablePullerStatistics",
    "ReliablePusher",
    "ReliablePusherStatistics",
    "ReliableSubscriber",
    "ReliableSubscriberStatistics",
    "Replier",
    "ReplierStatistics",
    "Request",
    "Requester",
    "RequesterStatistics",
    "Subscriber",
    "SubscriberStatistics",
    "open_publisher",
    "open_puller",
    "open_pusher",
    "open_reliable_puller",
    "open_reliable_pusher",
    "open_replier",
    "open_requester",
    "open_subscriber",
    "serve_replier",
]

claim(globals(), __all__, __name__)
