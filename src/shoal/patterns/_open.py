"""The ``open_*`` functions of publish/subscribe and push/pull, with their one
``reliable=`` switch: best effort (``shoal.patterns._pubsub``, ``_pushpull``) or at
least once (``_reliable_publisher``, ``_reliable_subscriber``, ``_reliable_push``,
``_reliable_pull``). The best-effort modules
never import the reliable ones; this module imports both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Literal, overload

import zmq

from shoal._core import Identity
from shoal._zmq._socket import DEFAULT_LINGER_MS
from shoal.errors import LocalProtocolError
from shoal.patterns._common import DEFAULT_BATCH, Endpoints, with_busy_poll
from shoal.patterns._history import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_TOPICS,
    check_history_args,
    open_history_publisher,
)
from shoal.patterns._pubsub import (
    Publisher,
    Subscriber,
    open_best_effort_publisher,
    open_best_effort_subscriber,
)
from shoal.patterns._pubsub_args import (
    DEFAULT_MAX_TOPICS,
    check_publisher_args,
    check_subscriber_args,
)
from shoal.patterns._pushpull import (
    Puller,
    Pusher,
    open_best_effort_puller,
    open_best_effort_pusher,
)
from shoal.patterns._reliable_publisher import ReliablePublisher, open_reliable_publisher
from shoal.patterns._reliable_pull import ManualAckPuller, ReliablePuller, open_reliable_puller
from shoal.patterns._reliable_push import ReliablePusher, open_reliable_pusher
from shoal.patterns._reliable_subscriber import ReliableSubscriber, open_reliable_subscriber

__all__ = ["open_publisher", "open_puller", "open_pusher", "open_subscriber"]


@overload
def open_publisher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: Literal[False] = False, busy_poll: float = 0.0,
    history: int = 0, history_bytes: int = DEFAULT_HISTORY_BYTES,
    history_topics: int = DEFAULT_HISTORY_TOPICS, max_topics: int = DEFAULT_MAX_TOPICS,
) -> AbstractAsyncContextManager[Publisher]: ...


@overload
def open_publisher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: Literal[True],
    busy_poll: float = 0.0, window: int = 8192,
    rto: float = 0.5, grace: float = 10.0, max_subscribers: int = 1024,
    history: int = 0, history_bytes: int = DEFAULT_HISTORY_BYTES,
    history_topics: int = DEFAULT_HISTORY_TOPICS,
) -> AbstractAsyncContextManager[ReliablePublisher]: ...


def open_publisher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: bool = False,
    busy_poll: float = 0.0, window: int = 8192,
    rto: float = 0.5, grace: float = 10.0, max_subscribers: int = 1024,
    history: int = 0, history_bytes: int = DEFAULT_HISTORY_BYTES,
    history_topics: int = DEFAULT_HISTORY_TOPICS, max_topics: int = DEFAULT_MAX_TOPICS,
) -> AbstractAsyncContextManager[Publisher] | AbstractAsyncContextManager[ReliablePublisher]:
    """Open a publisher bound to and/or connected to the given endpoints.

    ``bind="tcp://127.0.0.1:*"`` picks a free port; ``pub.endpoints`` tells which.
    Raises ``LocalProtocolError``/``InvalidEndpoint`` for bad arguments,
    ``TransportError`` when the address cannot be used.

    ``reliable=True``: at least once (exactly once and in order to the application) to
    every subscriber opened with ``reliable=True`` (either side may bind; a publisher
    that connects says hello, and the subscriber introduces itself). It keeps each
    subscriber's unacknowledged publications (up to ``window``; ``publish`` waits
    beyond), sends them again after ``rto`` seconds without progress, and drops a
    subscriber silent for ``grace`` seconds (counted, logged).

    ``history=N``: keep the last ``N`` publications of each topic and replay them,
    oldest first, to each subscriber that joins and asks (subscribers do by default),
    before the live stream, with no duplicate and no hole between the two (with
    ``reliable=True``, at least once like the rest, at most ``window`` of them).
    ``history=1`` is a last-value cache. What is kept is bounded by ``history_bytes``
    (64 MiB by default) and ``history_topics`` (100,000): over either, the topic least
    recently published loses its oldest publication. ``statistics()`` says what is
    held and how much was replayed.

    ``max_topics`` (best effort; 100,000 by default) bounds the topics whose sequence
    numbers a publisher remembers: past it, the publisher forgets them all and goes on
    in a new stream, every topic numbered from 0 again (subscribers see no gap and
    nothing out of order; ``statistics().topic_resets`` counts it).
    """
    check_history_args(history, history_bytes, history_topics)
    check_publisher_args(max_topics)
    if history and not reliable:
        cm0 = open_history_publisher(
            bind=bind, connect=connect, identity=identity, high_water_mark=high_water_mark,
            context=context, linger_ms=linger_ms, history=history,
            history_bytes=history_bytes, history_topics=history_topics,
            max_topics=max_topics)
        return with_busy_poll(cm0, busy_poll)
    if reliable:
        cm1 = open_reliable_publisher(
            bind=bind, connect=connect, identity=identity, high_water_mark=high_water_mark,
            window=window, rto=rto, grace=grace, max_subscribers=max_subscribers,
            context=context, linger_ms=linger_ms, history=history,
            history_bytes=history_bytes, history_topics=history_topics)
        return with_busy_poll(cm1, busy_poll)
    cm2 = open_best_effort_publisher(bind=bind, connect=connect, identity=identity,
                          high_water_mark=high_water_mark, context=context, linger_ms=linger_ms,
                          max_topics=max_topics)
    return with_busy_poll(cm2, busy_poll)


@overload
def open_subscriber(
    *, bind: Endpoints = None, connect: Endpoints = None, topics: Sequence[str] = ("",),
    high_water_mark: int = 1000, batch: int = DEFAULT_BATCH, max_streams: int = 4096,
    context: zmq.Context[zmq.Socket[bytes]] | None = None, reliable: Literal[False] = False,
    busy_poll: float = 0.0, history: int | None = None,
) -> AbstractAsyncContextManager[Subscriber]: ...


@overload
def open_subscriber(
    *, bind: Endpoints = None, connect: Endpoints = None, topics: Sequence[str] = ("",),
    high_water_mark: int = 1000, batch: int = DEFAULT_BATCH, max_streams: int = 4096,
    context: zmq.Context[zmq.Socket[bytes]] | None = None, reliable: Literal[True],
    busy_poll: float = 0.0,
    identity: Identity | None = None, heartbeat: float = 0.5, history: int | None = None,
) -> AbstractAsyncContextManager[ReliableSubscriber]: ...


def open_subscriber(
    *, bind: Endpoints = None, connect: Endpoints = None, topics: Sequence[str] = ("",),
    high_water_mark: int = 1000, batch: int = DEFAULT_BATCH, max_streams: int = 4096,
    context: zmq.Context[zmq.Socket[bytes]] | None = None, reliable: bool = False,
    busy_poll: float = 0.0,
    identity: Identity | None = None, heartbeat: float = 0.5, history: int | None = None,
) -> AbstractAsyncContextManager[Subscriber] | AbstractAsyncContextManager[ReliableSubscriber]:
    """Open a subscriber receiving every topic that starts with one of ``topics``, or
    that matches one of them given as a wildcard pattern (``site/*/temp``: ``*`` is
    one level, ``**`` any number; see ``shoal._core._topics`` for the grammar).

    The default, ``("",)``, receives everything; ``topics=()`` receives nothing until
    ``subscribe()`` is called. A malformed pattern raises ``InvalidTopicPattern``.
    ``max_streams`` bounds the gap-tracking memory.

    ``reliable=True``: from reliable publishers (either side may bind), once and in
    order per publisher, everything published after a publisher heard of it. It
    tells each publisher where it stands every ``heartbeat`` seconds and as it
    receives.

    ``history``: how many of each topic's latest publications to take from a history
    publisher's replay when joining (``None``, the default: all it keeps; ``0``:
    none). Replayed messages come first, marked ``msg.replayed``; history covers the
    ``topics`` given here, not prefixes subscribed later. A reliable subscriber gets
    its replay reliably too, at most the publisher's ``window`` publications of it.
    """
    if reliable:
        check_subscriber_args(topics, max_streams, history)
        cm3 = open_reliable_subscriber(
            bind=bind, connect=connect, topics=topics, identity=identity,
            high_water_mark=high_water_mark, batch=batch, max_streams=max_streams,
            heartbeat=heartbeat, context=context, history=history)
        return with_busy_poll(cm3, busy_poll)
    check_subscriber_args(topics, max_streams, history)  # before anything opens
    cm4 = open_best_effort_subscriber(bind=bind, connect=connect, topics=topics,
                           high_water_mark=high_water_mark, batch=batch,
                           max_streams=max_streams, context=context, history=history)
    return with_busy_poll(cm4, busy_poll)


@overload
def open_pusher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: Literal[False] = False, busy_poll: float = 0.0,
) -> AbstractAsyncContextManager[Pusher]: ...


@overload
def open_pusher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: Literal[True], busy_poll: float = 0.0,
    window: int = 1024,
    rto: float = 0.5, max_attempts: int = 10, give_up_after: float | None = None,
    outbox: str | os.PathLike[str] | None = None,
) -> AbstractAsyncContextManager[ReliablePusher]: ...


def open_pusher(
    *, bind: Endpoints = None, connect: Endpoints = None, identity: Identity | None = None,
    high_water_mark: int = 1000, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS, reliable: bool = False, busy_poll: float = 0.0,
    window: int = 1024,
    rto: float = 0.5, max_attempts: int = 10, give_up_after: float | None = None,
    outbox: str | os.PathLike[str] | None = None,
) -> AbstractAsyncContextManager[Pusher] | AbstractAsyncContextManager[ReliablePusher]:
    """Open a pusher. ``send()`` waits until a puller is connected and can take work.

    ``reliable=True``: at least once, to pullers opened with ``reliable=True`` (it
    connects to them, or they to it: either side may bind). An item stays in a window of ``window``
    until a puller's application is done with it, is retransmitted after ``rto``
    seconds (doubling) until a puller has it, goes to another puller if the one
    holding it disconnects, and is given up after ``max_attempts`` transmissions or
    ``give_up_after`` seconds (``wait_acked()`` raises ``DeliveryFailed``; they are
    also on ``push.dead_letters``).

    ``outbox="path.sqlite"`` (reliable only) keeps every accepted item on disk until
    it is done; a pusher reopened on the same file after a crash sends them again
    under their original ids, and pullers drop the copies they already had. Without
    an outbox, a pusher that crashes loses the items it had not yet seen done.
    """
    if outbox is not None and not reliable:
        raise LocalProtocolError("outbox= needs reliable=True (a best-effort pusher "
                                 "keeps nothing)")
    if reliable:
        cm1 = open_reliable_pusher(
            bind=bind, connect=connect, identity=identity, high_water_mark=high_water_mark,
            window=window, rto=rto, max_attempts=max_attempts, give_up_after=give_up_after,
            context=context, linger_ms=linger_ms, outbox=outbox)
        return with_busy_poll(cm1, busy_poll)
    cm2 = open_best_effort_pusher(bind=bind, connect=connect, identity=identity,
                       high_water_mark=high_water_mark, context=context, linger_ms=linger_ms)
    return with_busy_poll(cm2, busy_poll)


@overload
def open_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    reliable: Literal[False] = False, busy_poll: float = 0.0,
) -> AbstractAsyncContextManager[Puller]: ...


@overload
def open_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    reliable: Literal[True], busy_poll: float = 0.0, manual_ack: Literal[False] = False,
    identity: Identity | None = None, max_streams: int = 4096,
) -> AbstractAsyncContextManager[ReliablePuller]: ...


@overload
def open_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    reliable: Literal[True], busy_poll: float = 0.0, manual_ack: Literal[True],
    identity: Identity | None = None, max_streams: int = 4096,
) -> AbstractAsyncContextManager[ManualAckPuller]: ...


def open_puller(
    *, bind: Endpoints = None, connect: Endpoints = None, high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH, context: zmq.Context[zmq.Socket[bytes]] | None = None,
    reliable: bool = False, busy_poll: float = 0.0, manual_ack: bool = False,
    identity: Identity | None = None, max_streams: int = 4096,
) -> (AbstractAsyncContextManager[Puller] | AbstractAsyncContextManager[ReliablePuller]
      | AbstractAsyncContextManager[ManualAckPuller]):
    """Open a puller: ``async for msg in pull`` yields each work item sent to it.

    ``reliable=True``: from reliable pushers (either side may bind; a puller that
    connects introduces itself to each pusher, which then sends it work). Each item
    reaches the application once; it is done (acknowledged) when the next one is
    asked for, or, with ``manual_ack=True``, when ``await item.ack()`` is called on
    the ``Delivery`` handed out. ``identity`` names this puller's
    acknowledgements; ``max_streams`` bounds how many senders it remembers.
    """
    if reliable:
        if manual_ack:
            cm3 = open_reliable_puller(bind=bind, connect=connect, identity=identity,
                                       high_water_mark=high_water_mark, batch=batch,
                                       max_streams=max_streams, manual_ack=True,
                                       context=context)
            return with_busy_poll(cm3, busy_poll)
        cm4 = open_reliable_puller(bind=bind, connect=connect, identity=identity,
                                   high_water_mark=high_water_mark, batch=batch,
                                   max_streams=max_streams, context=context)
        return with_busy_poll(cm4, busy_poll)
    if manual_ack:
        raise LocalProtocolError("manual_ack=True needs reliable=True (a best-effort "
                                 "puller acknowledges nothing)")
    cm5 = open_best_effort_puller(bind=bind, connect=connect, high_water_mark=high_water_mark,
                       batch=batch, context=context)
    return with_busy_poll(cm5, busy_poll)


