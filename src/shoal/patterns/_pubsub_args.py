"""The arguments of best-effort publish/subscribe: default bounds, socket options, and
the checks that refuse what cannot work before a socket is opened (each raises a
``LocalProtocolError`` saying what to pass instead). Used by ``_pubsub``, ``_history``,
``open_publisher``/``open_subscriber`` and shoal's node alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import zmq

from shoal._core import MARKER, MAX_HISTORY_PREFIXES, OWNER, encode_topic, parse_subscription
from shoal.errors import LocalProtocolError

__all__ = [
    "DEFAULT_MAX_TOPICS",
    "check_publisher_args",
    "check_subscriber_args",
    "new_marker",
    "publisher_options",
    "subscriber_options",
]

DEFAULT_MAX_TOPICS = 100_000
"""Default bound on the topics a publisher numbers at once (``max_topics=``)."""


def publisher_options(high_water_mark: int) -> list[tuple[int, int | bytes]]:
    """Socket options of a publisher (an XPUB socket)."""
    return [(zmq.SNDHWM, high_water_mark)]


def subscriber_options(high_water_mark: int, marker: bytes | None = None,
                       history: int | None = 0) -> list[tuple[int, int | bytes]]:
    """Socket options of a subscriber (a SUB socket). One that asks for history names
    its marker in its connections' metadata, so that a history publisher can tell
    which subscriber each subscription comes from (see ``_history``)."""
    if marker is None or history == 0:
        return [(zmq.RCVHWM, high_water_mark)]
    owner = OWNER + b":" + marker[1:].hex().encode()
    return [(zmq.RCVHWM, high_water_mark), (zmq.METADATA, owner)]


def new_marker() -> bytes:
    """A subscriber's marker: ``0xff`` and 16 random bytes."""
    return MARKER + os.urandom(16)


def check_publisher_args(max_topics: int) -> None:
    """Refuse publisher arguments that cannot work, before a socket is opened."""
    if isinstance(max_topics, bool) or not isinstance(max_topics, int) or max_topics < 1:
        raise LocalProtocolError(f"max_topics must be an int >= 1, not {max_topics!r}")


def check_subscriber_args(topics: Sequence[str], max_streams: int,
                          history: int | None = None) -> None:
    """Refuse subscriber arguments that cannot work, before a socket is opened."""
    if isinstance(topics, str):
        raise LocalProtocolError("topics= takes a list of prefixes or patterns, e.g. "
                                 "topics=['sensors/'] or topics=['site/*/temp']")
    for t in topics:
        encode_topic(t)
        parse_subscription(t)  # raises InvalidTopicPattern, saying what is allowed
    if not isinstance(max_streams, int) or max_streams < 1:
        raise LocalProtocolError(f"max_streams must be an int >= 1, not {max_streams!r}")
    if history is not None and (isinstance(history, bool) or not isinstance(history, int)
                                or history < 0):
        raise LocalProtocolError(f"history must be None (all the publisher keeps) or an "
                                 f"int >= 0 (0: no replay), not {history!r}")
    if history != 0 and len(set(topics)) > MAX_HISTORY_PREFIXES:
        raise LocalProtocolError(f"history covers at most {MAX_HISTORY_PREFIXES} prefixes; pass "
                                 "history=0 or subscribe fewer")

