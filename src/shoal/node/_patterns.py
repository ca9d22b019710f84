"""The patterns by channel name: ``node.open_publisher("prices")`` and the others.

Each ``open_*`` takes its options by keyword; what each pattern accepts and its
defaults are in one table (``DEFAULTS``), the types the checker sees in one
``TypedDict`` per pattern. ``reliable=True`` (a literal) gives the reliable
resource's type (``open_pusher(..., reliable=True)`` is a ``ReliablePusher``).

Every factory does the same: a socket from the node's factory (``bind``: on an
ephemeral port of the node's address), the pattern's resource on it, and an entry in
the catalogue for as long as the resource is open (``shoal.node._channels``): a
listener with its port, a connecting role with the connections it is wired through
(its own ``add_route``/``drop_route``, or the plain socket's connect/disconnect).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypedDict, TypeVar, Unpack, cast, overload

import zmq

from shoal._core import ChannelOffer, Identity, Role
from shoal._zmq._socket import DEFAULT_LINGER_MS, Socket
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import LocalProtocolError
from shoal.node._channels import Channels, Routed, SocketConnector, check_channel
from shoal.node._guard import Guard
from shoal.node._sockets import SocketFactory, port_of
from shoal.patterns._common import DEFAULT_BATCH, check_limits, check_reliable_pubsub_args
from shoal.patterns._history import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_TOPICS,
    check_history_args,
    history_publisher_options,
    run_history_publisher,
)
from shoal.patterns._pubsub import Publisher, Subscriber
from shoal.patterns._pubsub_args import (
    DEFAULT_MAX_TOPICS,
    check_publisher_args,
    check_subscriber_args,
    new_marker,
    publisher_options,
    subscriber_options,
)
from shoal.patterns._pushpull import Puller, Pusher, puller_options, pusher_options
from shoal.patterns._reliable_publisher import ReliablePublisher, open_reliable_publisher
from shoal.patterns._reliable_pull import ManualAckPuller, ReliablePuller
from shoal.patterns._reliable_push import ReliablePusher, open_reliable_pusher
from shoal.patterns._reliable_subscriber import ReliableSubscriber, open_reliable_subscriber
from shoal.patterns._replier import Replier, check_reply_cache, replier_options
from shoal.patterns._requester import Requester, requester_options
from shoal.patterns._routes import reliable_options

__all__ = ["DEFAULTS", "Patterns"]

T = TypeVar("T")
R = TypeVar("R", ReliablePuller, ManualAckPuller)
ACM = AbstractAsyncContextManager


class PublisherOptions(TypedDict, total=False):
    high_water_mark: int
    linger_ms: int
    history: int
    history_bytes: int
    history_topics: int
    max_topics: int


class ReliablePublisherOptions(PublisherOptions, total=False):
    window: int
    rto: float
    grace: float
    max_subscribers: int


class SubscriberOptions(TypedDict, total=False):
    topics: Sequence[str]
    high_water_mark: int
    batch: int
    max_streams: int
    history: int | None


class ReliableSubscriberOptions(SubscriberOptions, total=False):
    heartbeat: float


class PusherOptions(TypedDict, total=False):
    high_water_mark: int
    linger_ms: int


class ReliablePusherOptions(PusherOptions, total=False):
    window: int
    rto: float
    max_attempts: int
    give_up_after: float | None
    outbox: str | os.PathLike[str] | None


class PullerOptions(TypedDict, total=False):
    high_water_mark: int
    batch: int


class ReplierOptions(TypedDict, total=False):
    high_water_mark: int
    batch: int
    linger_ms: int
    reply_cache: int


class RequesterOptions(TypedDict, total=False):
    high_water_mark: int
    batch: int
    linger_ms: int


DEFAULTS: dict[str, dict[str, Any]] = {
    "publisher": {"high_water_mark": 1000, "linger_ms": DEFAULT_LINGER_MS,
                  "window": 8192, "rto": 0.5, "grace": 10.0, "max_subscribers": 1024,
                  "history": 0, "history_bytes": DEFAULT_HISTORY_BYTES,
                  "history_topics": DEFAULT_HISTORY_TOPICS,
                  "max_topics": DEFAULT_MAX_TOPICS},
    "subscriber": {"topics": ("",), "high_water_mark": 1000, "batch": DEFAULT_BATCH,
                   "max_streams": 4096, "heartbeat": 0.5, "history": None},
    "pusher": {"high_water_mark": 1000, "linger_ms": DEFAULT_LINGER_MS, "window": 1024,
               "rto": 0.5, "max_attempts": 10, "give_up_after": None, "outbox": None},
    "puller": {"high_water_mark": 1000, "batch": DEFAULT_BATCH, "manual_ack": False},
    "replier": {"high_water_mark": 1000, "batch": DEFAULT_BATCH,
                "linger_ms": DEFAULT_LINGER_MS, "reply_cache": 1024},
    "requester": {"high_water_mark": 1000, "batch": DEFAULT_BATCH,
                  "linger_ms": DEFAULT_LINGER_MS},
}
"""What each ``open_*`` accepts, and its defaults (the reliable options included: the
best-effort resource ignores them)."""


def _options(pattern: str, channel: object, given: dict[str, Any]) -> dict[str, Any]:
    check_channel(channel)
    defaults = DEFAULTS[pattern]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"open_{pattern}() got an unexpected keyword argument {unknown[0]!r}"
                        f" (it takes {', '.join(defaults)})")
    opts = {**defaults, **given}
    check_limits(high_water_mark=opts["high_water_mark"],
                 **({"batch": opts["batch"]} if "batch" in opts else {}))
    return opts


class Patterns:
    """The ``open_*`` methods of ``Node``."""

    identity: Identity
    _sockets: SocketFactory
    _channels: Channels
    _guard: Guard

    @asynccontextmanager
    async def _listed(self, channel: str, role: Role, kind: int,
                      options: list[tuple[int, int | bytes]], linger_ms: int,
                      make: Callable[[Socket], ACM[T]], *, plain: bool = False,
                      ) -> AsyncIterator[T]:
        """A socket of ``kind`` (bound if ``role`` listens), the resource ``make``
        builds on it, listed in the catalogue while open. Nothing is opened before the
        block is entered."""
        sock = self._sockets.open(kind, options, linger_ms=linger_ms, bind=role.binds)
        try:
            resource = make(sock)
        except BaseException:
            sock.close()
            raise
        async with resource as res:
            if role.binds:
                offer = ChannelOffer(channel, role, port_of(sock.bound[0]))
                with self._channels.listing(offer, res):
                    yield res
            else:
                # the routed resources (reliable patterns, requester) wire themselves
                target = SocketConnector(sock, self._guard) if plain else cast(Routed, res)
                with self._channels.listing(ChannelOffer(channel, role), res, target):
                    yield res

    # -- publish / subscribe ---------------------------------------------------------

    @overload
    def open_publisher(self, channel: str, *, reliable: Literal[False] = False,
                       **options: Unpack[PublisherOptions]) -> ACM[Publisher]: ...

    @overload
    def open_publisher(self, channel: str, *, reliable: Literal[True],
                       **options: Unpack[ReliablePublisherOptions]) -> ACM[ReliablePublisher]: ...

    def open_publisher(self, channel: str, *, reliable: bool = False,
                       **options: Any) -> ACM[Publisher] | ACM[ReliablePublisher]:
        """Publish on ``channel``: every subscriber of it on the network (this node
        included) connects, now and as they come. ``wait_for_subscribers(n)`` waits for
        them. Options: ``high_water_mark`` (1000), ``linger_ms``.

        ``reliable=True``: to subscribers opened with ``reliable=True``, at least once on
        the wire, once and in order to their applications. Each subscriber's
        unacknowledged publications are kept (up to ``window``, 8192: ``publish`` waits
        beyond) and sent again after ``rto`` seconds (0.5) without progress; a
        subscriber silent for ``grace`` seconds (10) is dropped from the books
        (counted, logged); at most ``max_subscribers`` (1024).

        ``history=N``: keep the last ``N`` publications of each topic and replay them
        to each subscriber that joins, before the live stream (reliably too with
        ``reliable=True``, at most ``window`` of them; bounded by
        ``history_bytes``, 64 MiB, and ``history_topics``, 100,000); ``history=1`` is a
        last-value cache. ``max_topics`` (100,000) bounds the topics numbered at once
        (best effort). See ``shoal.open_publisher``.
        """
        o = _options("publisher", channel, options)
        check_history_args(o["history"], o["history_bytes"], o["history_topics"])
        check_publisher_args(o["max_topics"])
        if o["history"] and not reliable:
            return self._listed(
                channel, Role.PUBLISHER, zmq.XPUB,
                history_publisher_options(o["high_water_mark"]), o["linger_ms"],
                lambda sock: run_history_publisher(
                    sock, self.identity, history=o["history"],
                    history_bytes=o["history_bytes"], history_topics=o["history_topics"],
                    max_topics=o["max_topics"]))
        if reliable:
            check_reliable_pubsub_args(window=o["window"], rto=o["rto"], grace=o["grace"])
            return self._listed(
                channel, Role.RELIABLE_PUBLISHER, zmq.ROUTER,
                reliable_options(o["high_water_mark"]), o["linger_ms"],
                lambda sock: open_reliable_publisher(
                    socket=sock, identity=self.identity, window=o["window"], rto=o["rto"],
                    grace=o["grace"], max_subscribers=o["max_subscribers"],
                    history=o["history"], history_bytes=o["history_bytes"],
                    history_topics=o["history_topics"]))
        return self._listed(channel, Role.PUBLISHER, zmq.XPUB,
                            publisher_options(o["high_water_mark"]), o["linger_ms"],
                            lambda sock: Publisher(sock, self.identity,
                                                   max_topics=o["max_topics"]))

    @overload
    def open_subscriber(self, channel: str, *, reliable: Literal[False] = False,
                        **options: Unpack[SubscriberOptions]) -> ACM[Subscriber]: ...

    @overload
    def open_subscriber(self, channel: str, *, reliable: Literal[True],
                        **options: Unpack[ReliableSubscriberOptions],
                        ) -> ACM[ReliableSubscriber]: ...

    def open_subscriber(self, channel: str, *, reliable: bool = False,
                        **options: Any) -> ACM[Subscriber] | ACM[ReliableSubscriber]:
        """Subscribe to ``topics`` (prefixes or wildcard patterns such as
        ``site/*/temp``; default every topic) on ``channel``, from
        every publisher of it, now and later. A publisher that vanishes is
        disconnected. Options: ``high_water_mark`` (1000), ``batch``, ``max_streams``
        (4096).

        ``reliable=True``: from reliable publishers, once and in order per publisher,
        everything published after the publisher heard of this subscriber (it
        tells every ``heartbeat`` seconds, 0.5, where it stands).

        ``history``: how much of a history publisher's replay to take
        when joining (``None``: all it keeps; ``0``: none; ``n``: the last ``n`` of each
        topic). Replayed messages come first, ``msg.replayed`` set.
        """
        o = _options("subscriber", channel, options)
        check_subscriber_args(o["topics"], o["max_streams"], o["history"])
        if reliable:
            check_reliable_pubsub_args(heartbeat=o["heartbeat"])
            return self._listed(
                channel, Role.RELIABLE_SUBSCRIBER, zmq.ROUTER,
                reliable_options(o["high_water_mark"]), DEFAULT_LINGER_MS,
                lambda sock: open_reliable_subscriber(
                    socket=sock, topics=o["topics"], identity=self.identity,
                    batch=o["batch"], max_streams=o["max_streams"], heartbeat=o["heartbeat"],
                    history=o["history"]))

        marker = new_marker()

        def subscriber(sock: Socket) -> Subscriber:
            sub = Subscriber(sock, batch=o["batch"], max_streams=o["max_streams"],
                             history=o["history"], marker=marker)
            sub._start(o["topics"])
            return sub

        return self._listed(channel, Role.SUBSCRIBER, zmq.SUB,
                            subscriber_options(o["high_water_mark"], marker, o["history"]), 0,
                            subscriber, plain=True)

    # -- push / pull -------------------------------------------------------------------

    @overload
    def open_pusher(self, channel: str, *, reliable: Literal[False] = False,
                    **options: Unpack[PusherOptions]) -> ACM[Pusher]: ...

    @overload
    def open_pusher(self, channel: str, *, reliable: Literal[True],
                    **options: Unpack[ReliablePusherOptions]) -> ACM[ReliablePusher]: ...

    def open_pusher(self, channel: str, *, reliable: bool = False,
                    **options: Any) -> ACM[Pusher] | ACM[ReliablePusher]:
        """Send work on ``channel``, each item to one of its pullers. ``send()`` waits
        while no puller is connected; a vanished puller is disconnected. Options:
        ``high_water_mark`` (1000), ``linger_ms``.

        ``reliable=True``: at least once (talks to pullers opened with ``reliable=True``):
        an item stays in a window of ``window`` (1024) until a puller's application is
        done with it, is retransmitted after ``rto`` seconds (0.5, doubling) until a
        puller has it, goes to another puller if the one holding it vanishes, and is
        given up after ``max_attempts`` transmissions (10) or ``give_up_after``
        seconds (``wait_acked()`` raises ``DeliveryFailed``; also on
        ``push.dead_letters``). ``outbox="path.sqlite"`` keeps accepted items on disk
        until done, so a pusher restarted on the same file sends them again under
        their original ids.
        """
        o = _options("pusher", channel, options)
        if not reliable:
            if o["outbox"] is not None:
                raise LocalProtocolError("outbox= needs reliable=True (a best-effort pusher "
                                         "keeps nothing)")
            return self._listed(channel, Role.PUSHER, zmq.PUSH,
                                pusher_options(o["high_water_mark"]), o["linger_ms"],
                                lambda sock: Pusher(sock, self.identity), plain=True)
        return self._listed(
            channel, Role.RELIABLE_PUSHER, zmq.ROUTER, reliable_options(o["high_water_mark"]),
            o["linger_ms"], lambda sock: open_reliable_pusher(
                socket=sock, identity=self.identity, window=o["window"], rto=o["rto"],
                max_attempts=o["max_attempts"], give_up_after=o["give_up_after"],
                outbox=o["outbox"]))

    @overload
    def open_puller(self, channel: str, *, reliable: Literal[False] = False,
                    **options: Unpack[PullerOptions]) -> ACM[Puller]: ...

    @overload
    def open_puller(self, channel: str, *, reliable: Literal[True],
                    manual_ack: Literal[False] = False,
                    **options: Unpack[PullerOptions]) -> ACM[ReliablePuller]: ...

    @overload
    def open_puller(self, channel: str, *, reliable: Literal[True], manual_ack: Literal[True],
                    **options: Unpack[PullerOptions]) -> ACM[ManualAckPuller]: ...

    def open_puller(self, channel: str, *, reliable: bool = False, manual_ack: bool = False,
                    **options: Any) -> ACM[Puller] | ACM[ReliablePuller] | ACM[ManualAckPuller]:
        """Take work from every pusher of ``channel``. Options: ``high_water_mark``
        (1000), ``batch``. ``reliable=True``: from reliable pushers; an item is done
        (acknowledged) when the next one is asked for, or with ``manual_ack=True`` when
        ``await item.ack()`` is called, and duplicates never reach the application."""
        o = _options("puller", channel, options)
        if not reliable:
            if manual_ack:
                raise LocalProtocolError("manual_ack=True needs reliable=True (a best-effort "
                                         "puller acknowledges nothing)")
            return self._listed(channel, Role.PULLER, zmq.PULL,
                                puller_options(o["high_water_mark"]), 0,
                                lambda sock: Puller(sock, batch=o["batch"]))
        if manual_ack:
            return self._open_reliable_puller(ManualAckPuller, channel, o)
        return self._open_reliable_puller(ReliablePuller, channel, o)

    @asynccontextmanager
    async def _open_reliable_puller(self, cls: type[R], channel: str,
                                    o: dict[str, Any]) -> AsyncIterator[R]:
        async with self._listed(
                channel, Role.RELIABLE_PULLER, zmq.ROUTER, reliable_options(o["high_water_mark"]),
                DEFAULT_LINGER_MS,  # lingers for its acks
                lambda sock: cls(sock, self.identity, batch=o["batch"], max_streams=4096),
        ) as p:
            try:
                yield p
            finally:
                # acknowledge what is done before the withdrawal reaches the
                # pushers (they re-send what was not acknowledged by then)
                p.flush_acks()

    # -- request / reply ---------------------------------------------------------------

    def open_replier(self, channel: str, **options: Unpack[ReplierOptions]) -> ACM[Replier]:
        """Answer requests on ``channel``: ``async for req in rep: await req.reply(...)``.
        A request sent again is answered from the last ``reply_cache`` replies (1024).
        Options: ``high_water_mark`` (1000), ``batch``, ``linger_ms``."""
        o = _options("replier", channel, dict(options))
        check_reply_cache(o["reply_cache"])
        return self._listed(channel, Role.REPLIER, zmq.ROUTER,
                            replier_options(o["high_water_mark"]), o["linger_ms"],
                            lambda sock: Replier(sock, self.identity, batch=o["batch"],
                                                 reply_cache=o["reply_cache"]))

    def open_requester(self, channel: str,
                       **options: Unpack[RequesterOptions]) -> ACM[Requester]:
        """Send requests to the repliers of ``channel`` (round-robin). A request waits
        while no replier is reachable; one whose replier vanishes raises ``PeerLost``.
        Options: ``high_water_mark`` (1000), ``batch``, ``linger_ms``."""
        return self._open_requester(channel, _options("requester", channel, dict(options)))

    @asynccontextmanager
    async def _open_requester(self, channel: str, o: dict[str, Any]) -> AsyncIterator[Requester]:
        async with (
            self._listed(channel, Role.REQUESTER, zmq.ROUTER,
                         requester_options(o["high_water_mark"], routed=True), o["linger_ms"],
                         lambda sock: Requester(sock, self.identity, batch=o["batch"],
                                                routed=True)) as client,
            open_service_nursery() as nursery,
        ):
            assert client.links is not None
            nursery.start_soon(client.links.run)  # its connections' ups and downs
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
