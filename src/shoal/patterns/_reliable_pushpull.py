"""Reliable push/pull: at-least-once across the wire, each item processed once per live
worker, redelivered to another worker if the one holding it dies or vanishes.

The pusher is ``shoal.patterns._reliable_push`` (with ``_push_wire``: its routes and
wire), the puller ``shoal.patterns._reliable_pull``; their shared wire rules live in
``shoal._core`` (``ReliableSender``, ``PullReceiver``, ``PullAck``) and the routes in
``shoal.patterns._routes``. This module names them together.
"""

from shoal._core import ack_tag
from shoal.patterns._acked import BATCH_BYTES
from shoal.patterns._dead_letters import DeadLetter
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
from shoal.patterns._routes import HELLO, reliable_options

__all__ = ["BATCH_BYTES", "HELLO", "DeadLetter", "Delivery", "ManualAckPuller",
           "ReliablePuller", "ReliablePullerStatistics", "ReliablePusher",
           "ReliablePusherStatistics", "ack_tag", "open_reliable_puller",
           "open_reliable_pusher", "reliable_options"]
