"""Publish/subscribe over ZeroMQ PUB/SUB, best effort.

Every message leads with its topic, so libzmq filters subscriptions by prefix before
Python sees a byte. Delivery is best effort: PUB drops at its high-water mark and
before a subscription has reached it (slow joiner). Loss is never silent: each
message carries ``(sender, epoch, stream, seq)`` with ``seq`` counted per topic, and
a subscriber counts the gaps per publisher in ``statistics()``.

A publisher's table of per-topic numbers holds at most ``max_topics``. A topic new
to a full table makes the publisher drop the table and go on in a new stream (a
stream number this process has not used): every topic restarts at 0 under a key
``(sender, epoch, stream, topic)`` that no subscriber has seen, so none counts a gap
or a message out of order, and the history's replay (which keys its duplicates the
same way) stays exact. A topic already in the table pays nothing for the bound.

Who is listening: the publisher is an XPUB socket, and every subscriber subscribes,
after its topics, to a marker prefix unique to it (``\\xff`` + 16 random bytes; no
topic can start with ``\\xff``, which is not UTF-8, so no publication ever matches
it). XPUB hands each new marker (and its withdrawal when the subscriber goes) to the
publisher, so ``wait_for_subscribers(n)`` knows when ``n`` subscribers are connected
with their subscriptions in place: the slow-joiner handshake, without probing.
Subscriptions travel in order on each connection, so when the marker has arrived the
topics subscribed before it are in effect.

Never here: waiting on a slow subscriber (PUB does not block), re-encoding bodies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import time_ns
from typing import Any

import zmq

from shoal._core import (
    ALL,
    MARKER,
    MAX_TOPIC,
    SPLIT_AT,
    GapTracker,
    Identity,
    Kind,
    Message,
    ReplayedMessage,
    StreamKey,
    Subscription,
    TopicFilter,
    decode_bundle,
    encode_request,
    encode_topic,
    fast_decoder,
    pack_tail,
    parse_subscription,
)
from shoal._io import WouldBlock
from shoal._process import process_identity
from shoal._zmq._socket import Socket
from shoal.errors import LocalProtocolError, MessageTooLarge
from shoal.patterns._common import (
    BufferedReceiver,
    Endpoints,
    PublishItem,
    SocketResource,
    open_socket,
    publish_item,
    stream_encoder,
)
from shoal.patterns._pubsub_args import (
    DEFAULT_MAX_TOPICS,
    check_publisher_args,
    check_subscriber_args,
    new_marker,
    publisher_options,
    subscriber_options,
)

_PUBLISH = (Kind.PUBLISH,)
_ROOM = 64  # more than a publication's bytes besides topic and body (NUL + header)
_MARKER = MARKER
"""Subscriber markers start with this byte; no UTF-8 topic does."""

__all__ = [
    "Publisher",
    "PublisherStatistics",
    "Subscriber",
    "SubscriberStatistics",
    "open_best_effort_publisher",
    "open_best_effort_subscriber",
]


@dataclass(frozen=True, slots=True)
class PublisherStatistics:
    """Counters of a publisher at one moment."""

    published: int
    """Messages handed to ZeroMQ (PUB may still drop them at its high-water mark)."""
    topics: int
    """Topics in the numbering table (each has its own sequence counter; at most
    ``max_topics``)."""
    subscribers: int
    """Subscribers connected with their subscriptions in place (as last seen)."""
    history_topics: int = 0
    """Topics whose publications the history holds (``history=``; at most
    ``history_topics``)."""
    history_bytes: int = 0
    """Bytes the history holds: frames plus a fixed cost per publication (at most
    ``history_bytes``)."""
    history_evicted: int = 0
    """Publications the history dropped to stay within its bounds (besides those a
    topic's newer publications push out)."""
    history_requests: int = 0
    """Subscribers' requests for history answered."""
    replayed: int = 0
    """Publications replayed to joining subscribers, over all requests."""
    topic_resets: int = 0
    """Times the numbering table reached ``max_topics`` and was dropped: the
    publisher went on in a new stream, every topic numbered from 0 again."""


@dataclass(frozen=True, slots=True)
class SubscriberStatistics:
    """Counters of a subscriber at one moment."""

    received: int
    """Valid messages delivered into the receive buffer."""
    malformed: int
    """Messages dropped because they were not valid shoal publications."""
    malformed_by_reason: Mapping[str, int]
    gaps: int
    """Messages known to be missing (sequence numbers skipped), over all publishers."""
    gaps_by_publisher: Mapping[str, int]
    """Missing messages per publisher sender id."""
    out_of_order: int
    """Messages that arrived with a sequence number already passed."""
    filtered: int = 0
    """Messages that passed libzmq's prefix filter but that no wildcard pattern (nor
    prefix) of this subscriber takes: dropped, and never counted as gaps."""
    replayed: int = 0
    """Publications delivered from a publisher's history (``msg.replayed``), counted
    in ``received`` too."""
    replay_duplicates: int = 0
    """Replayed publications dropped because they had been delivered already (a
    reconnection asks for the history again)."""


class Publisher(SocketResource):
    """Publishes messages on topics. Make one with ``open_publisher``."""

    def __init__(self, sock: Socket, identity: Identity | None, *,
                 max_topics: int = DEFAULT_MAX_TOPICS) -> None:
        self._sock = sock
        self._io = sock.loop
        self._identity = identity if identity is not None else process_identity()
        self._enc = stream_encoder(self._identity, sock)
        # topic -> [topic + NUL, next seq, topic + NUL + raw header prefix]
        self._topics: dict[str, list[Any]] = {}
        self._max_topics = max_topics
        self._topic_resets = 0
        self._raw_prefix = self._enc.raw_prefix[Kind.PUBLISH]
        self._max = sock.max_message_size
        self._published = 0
        self._subscribers: set[bytes] = set()

    def _read_subscriptions(self) -> None:
        """Take the subscription changes XPUB has queued; track subscriber markers."""
        while raws := self._sock.receive_batch_nowait(256):
            for frames in raws:
                f = frames[0]
                if len(frames) != 1 or len(f) < 2 or f[1:2] != _MARKER:
                    continue  # a topic subscription: libzmq applies it; nothing to track
                if f[0] == 1:
                    self._subscribers.add(f[1:])
                elif f[0] == 0:
                    self._subscribers.discard(f[1:])

    @property
    def subscribers(self) -> int:
        """How many subscribers are connected with their subscriptions in place."""
        if not self._sock.closed:
            self._read_subscriptions()
        return len(self._subscribers)

    async def wait_for_subscribers(self, n: int = 1) -> None:
        """Wait until at least ``n`` subscribers are connected and their subscriptions
        have reached this publisher (what was published before that, they missed).

        Counts subscribers made by shoal (each announces itself with a marker). The
        caller owns the timeout (``anyio.fail_after``, ``asyncio.timeout``...).
        Raises ``ClosedError`` if the publisher is closed while waiting.
        """
        while True:
            self._sock.check_open("wait for subscribers")
            self._read_subscriptions()
            if len(self._subscribers) >= n:
                await self._io.checkpoint()
                return
            await self._sock.wait_receivable()

    def _new_stream(self) -> None:
        """Drop the topic table and go on in a new stream (see the module's
        docstring). Off the per-message path: only a topic new to a full table
        comes here."""
        self._topics.clear()
        self._enc = stream_encoder(self._identity, self._sock)
        self._raw_prefix = self._enc.raw_prefix[Kind.PUBLISH]
        self._topic_resets += 1

    def _encode(self, topic: str, body: Any,
                headers: Mapping[str, Any] | None) -> bytes | tuple[bytes, bytes]:
        """Encode the next publication on ``topic`` and take its sequence number.
        Raises ``EncodeError`` before taking one (a topic new to a full table may
        have moved the publisher to a new stream by then: no number is lost in it)."""
        entry = self._topics.get(topic)
        if entry is None:
            topic_z = encode_topic(topic) + b"\0"
            if len(self._topics) >= self._max_topics:
                self._new_stream()
            entry = [topic_z, 0, topic_z + self._raw_prefix]
        seq = entry[1]
        if type(body) is bytes and headers is None and len(body) < SPLIT_AT:
            frame: bytes | tuple[bytes, bytes] = b"".join(
                (entry[2], pack_tail(seq, time_ns(), 0), body))
            if len(frame) > self._max:
                raise MessageTooLarge(len(frame), self._max)
        else:
            head, big = self._enc.encode_parts(Kind.PUBLISH, entry[0], body, seq, time_ns(),
                                               0, headers)
            frame = head if big is None else (head, big)
        entry[1] = seq + 1
        if seq == 0:
            self._topics[topic] = entry
        return frame

    def _encode_many(self, items: Iterable[PublishItem]) -> list[bytes | tuple[bytes, bytes]]:
        """Encode a batch under one timestamp. Sequence numbers are taken only once
        every item has been encoded. A batch may move to a new stream part way
        (``_new_stream``): the items before are numbered in the old one."""
        topics = self._topics
        batch: dict[str, list[Any]] = {}  # topic -> its entry as the batch advances it
        fresh = 0  # topics of the batch not in the table
        frames: list[bytes | tuple[bytes, bytes]] = []
        append = frames.append
        join = b"".join
        now = time_ns()
        inline = self._max >= SPLIT_AT + MAX_TOPIC + _ROOM  # no per-frame size check needed
        for item in items:
            if type(item) is tuple and len(item) == 2 and type(item[0]) is str:
                topic, body = item
                headers = None
            else:
                topic, body, headers = publish_item(item)
            entry = batch.get(topic)
            if entry is None:
                known = topics.get(topic)
                if known is None:
                    topic_z = encode_topic(topic) + b"\0"
                    if len(topics) + fresh >= self._max_topics:
                        self._new_stream()  # empties topics; the batch's entries go too
                        batch.clear()
                        fresh = 0
                    entry = [topic_z, 0, topic_z + self._raw_prefix]
                    fresh += 1
                else:
                    entry = list(known)
                batch[topic] = entry
            seq = entry[1]
            if inline and type(body) is bytes and headers is None and len(body) < SPLIT_AT:
                append(join((entry[2], pack_tail(seq, now, 0), body)))
            else:
                head, big = self._enc.encode_parts(Kind.PUBLISH, entry[0], body, seq, now, 0,
                                                   headers)
                append(head if big is None else (head, big))
            entry[1] = seq + 1
        topics.update(batch)
        return frames

    def _sent(self, n: int) -> None:
        before = self._published
        self._published += n
        if (before >> 8) != (self._published >> 8):
            # XPUB queues subscription changes for us to read: take them now and then
            # so that subscriber churn cannot pile them up when nobody asks.
            self._read_subscriptions()

    def publish_nowait(
        self, topic: str, body: Any, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish without a checkpoint. Never blocks: PUB drops at its high-water mark.

        Raises ``EncodeError`` for a topic or body that cannot be sent (nothing is sent
        and no sequence number is used), ``ClosedError`` once closed.
        """
        self._sock.check_open("publish")
        frame = self._encode(topic, body, headers)
        if type(frame) is bytes:
            self._sock.send_nowait(frame)
        else:
            self._sock.send_split_nowait(None, *frame)
        self._sent(1)

    async def publish(
        self, topic: str, body: Any, *, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Publish ``body`` on ``topic`` to every subscriber whose prefix matches.

        Best effort. A cancellation point on every call and a scheduling point every
        few dozen calls (like ``Pusher.send``). Raises ``EncodeError`` for a topic or body that
        cannot be sent, ``ClosedError`` once closed.
        """
        await self._io.checkpoint_if_cancelled()
        self.publish_nowait(topic, body, headers=headers)
        if self._sock.due_to_yield():
            await self._io.cancel_shielded_checkpoint()

    def publish_many_nowait(self, items: Iterable[PublishItem]) -> None:
        """Publish every item, in order, without a checkpoint: ``(topic, body)`` or
        ``(topic, body, headers)`` each. Never blocks (PUB drops at its high-water
        mark, as ``publish`` does).

        Every item is encoded first: ``EncodeError`` (or ``LocalProtocolError`` for an
        item that is not such a tuple) means nothing was sent and no sequence number
        was used.
        """
        self._sock.check_open("publish")
        frames = self._encode_many(items)
        sock = self._sock
        done = 0
        while done < len(frames):  # PUB refuses nothing; the loop is for XPUB_NODROP
            sent = sock.send_batch_nowait(frames, done)
            if not sent:
                raise WouldBlock
            done += sent
        self._sent(done)

    async def publish_many(self, items: Iterable[PublishItem]) -> None:
        """The batch form of ``publish``: one scheduling point for the whole batch.
        Same items and errors as ``publish_many_nowait``."""
        await self._io.checkpoint_if_cancelled()
        self.publish_many_nowait(items)
        await self._io.cancel_shielded_checkpoint()

    def statistics(self) -> PublisherStatistics:
        """An immutable snapshot of this resource's counters."""
        return PublisherStatistics(published=self._published, topics=len(self._topics),
                                   subscribers=self.subscribers,
                                   topic_resets=self._topic_resets)


class Subscriber(BufferedReceiver[Message]):
    """Receives publications whose topic starts with one of its prefixes.

    A receive channel of ``Message``s (``BufferedReceiver``): ``async for`` works.
    """

    def __init__(self, sock: Socket, *, batch: int, max_streams: int,
                 history: int | None = None, marker: bytes | None = None) -> None:
        super().__init__(sock, batch=batch)
        self._gaps = GapTracker(max_streams=max_streams)
        self._subs: dict[str, Subscription] = {}  # as given -> parsed
        self._filtered = 0
        self._marker = marker if marker is not None else new_marker()
        self._history = ALL if history is None else history
        self._replayed = 0
        self._replay_duplicates = 0
        self._rebuild()

    def _rebuild(self) -> None:
        """(Re)make the receive closure for the subscriptions now in force. Without a
        wildcard pattern it is the plain prefix path: libzmq has filtered everything."""
        filt = TopicFilter(self._subs.values())
        wanted = filt.wanted if filt.active else None
        self._wanted = wanted
        sock = self._sock
        check = self._malformed.check_frame
        append = self._buffer.append
        gaps = self._gaps
        observe = gaps.observe
        unwanted = self._unwanted
        marker = self._marker

        def slow(frame: bytes) -> None:
            if frame[:1] == _MARKER and frame.startswith(marker):  # a replay bundle
                self._replay(frame)
                return
            msg = check(sock, frame, _PUBLISH, "subscriber")
            if msg is not None:
                key = (msg.sender, msg.epoch, msg.stream, msg.topic)
                if wanted is not None and not wanted(msg.topic):
                    unwanted(key, msg.seq)
                    return
                observe(key, msg.seq)
                append(msg)
        self._accept_frame = fast_decoder(Kind.PUBLISH, topic=True, deliver=append,
                                          fallback=slow, gaps=gaps, wanted=wanted,
                                          unwanted=unwanted)

    def _unwanted(self, key: StreamKey, seq: int) -> None:
        self._filtered += 1
        self._gaps.skip(key, seq)

    def _replay(self, frame: bytes) -> None:
        """Deliver the publications of a replay bundle addressed to this subscriber,
        each marked ``replayed``, skipping those it delivered already."""
        cells = self._gaps.expected
        for msg in decode_bundle(frame[len(self._marker):]):
            if not isinstance(msg, Message):
                self._malformed.drop_error(msg, "subscriber")
                continue
            if msg.kind != Kind.PUBLISH:
                self._malformed.drop("unexpected-kind", "subscriber", msg.kind.name)
                continue
            key = (msg.sender, msg.epoch, msg.stream, msg.topic)
            if self._wanted is not None and not self._wanted(msg.topic):
                self._unwanted(key, msg.seq)
                continue
            cell = cells.get(key)
            if cell is not None and cell[0] > msg.seq:
                self._replay_duplicates += 1
                continue
            self._gaps.observe(key, msg.seq)
            self._buffer.append(ReplayedMessage(*msg))
            self._replayed += 1

    def _announce(self) -> None:
        """Subscribe the marker that lets publishers count this subscriber. Called
        after the initial topics, so a publisher that sees it has them too."""
        self._sock.setsockopt(zmq.SUBSCRIBE, self._marker)

    def _start(self, topics: Sequence[str]) -> None:
        if self._history and topics:
            # before the topics: a history publisher applies them with the replay
            raw = sorted({encode_topic(parse_subscription(t).prefix) for t in topics})
            self._sock.setsockopt(zmq.SUBSCRIBE, encode_request(self._marker, self._history,
                                                                raw))
        for t in topics:
            self.subscribe(t)
        self._announce()

    def subscribe(self, topic: str) -> None:
        """Also receive topics starting with the prefix ``topic`` (``""`` means every
        topic), or matching the wildcard pattern ``topic`` (``site/*/temp``,
        ``site/**``: see the README). Raises ``InvalidTopicPattern`` for a malformed
        pattern, ``EncodeError`` for a topic that cannot be sent."""
        if topic in self._subs:
            return
        encode_topic(topic)
        sub = parse_subscription(topic)
        self._sock.setsockopt(zmq.SUBSCRIBE, encode_topic(sub.prefix))
        self._subs[topic] = sub
        if sub.regex is not None or any(s.regex is not None for s in self._subs.values()):
            self._rebuild()

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving for ``topic`` (a prefix or pattern given before)."""
        sub = self._subs.get(topic)
        if sub is None:
            raise LocalProtocolError(f"not subscribed to {topic!r}; see .topics")
        # libzmq counts subscriptions: a prefix another pattern shares stays in force
        self._sock.setsockopt(zmq.UNSUBSCRIBE, encode_topic(sub.prefix))
        del self._subs[topic]
        self._rebuild()

    @property
    def topics(self) -> frozenset[str]:
        """The prefixes and patterns subscribed to, as given."""
        return frozenset(self._subs)

    def statistics(self) -> SubscriberStatistics:
        """An immutable snapshot of this resource's counters."""
        g = self._gaps
        return SubscriberStatistics(
            received=self._received,
            malformed=self._malformed.total,
            malformed_by_reason=dict(self._malformed.by_reason),
            gaps=g.gaps,
            gaps_by_publisher=g.gaps_by_sender(),
            out_of_order=g.out_of_order,
            filtered=self._filtered,
            replayed=self._replayed,
            replay_duplicates=self._replay_duplicates,
        )


@asynccontextmanager
async def open_best_effort_publisher(
    *, bind: Endpoints, connect: Endpoints, identity: Identity | None, high_water_mark: int,
    context: zmq.Context[zmq.Socket[bytes]] | None, linger_ms: int,
    max_topics: int = DEFAULT_MAX_TOPICS,
) -> AsyncIterator[Publisher]:
    check_publisher_args(max_topics)
    sock = open_socket("open_publisher", zmq.XPUB, bind=bind, connect=connect,
                       high_water_mark=high_water_mark, context=context,
                       linger_ms=linger_ms, options=publisher_options(high_water_mark))
    pub = Publisher(sock, identity, max_topics=max_topics)
    async with pub:
        yield pub


@asynccontextmanager
async def open_best_effort_subscriber(
    *, bind: Endpoints, connect: Endpoints, topics: Sequence[str], high_water_mark: int,
    batch: int, max_streams: int, context: zmq.Context[zmq.Socket[bytes]] | None,
    history: int | None = None,
) -> AsyncIterator[Subscriber]:
    check_subscriber_args(topics, max_streams, history)
    marker = new_marker()
    sock = open_socket("open_subscriber", zmq.SUB, bind=bind, connect=connect,
                       high_water_mark=high_water_mark, batch=batch, context=context,
                       linger_ms=0,
                       options=subscriber_options(high_water_mark, marker, history))
    sub = Subscriber(sock, batch=batch, max_streams=max_streams, history=history,
                     marker=marker)
    async with sub:
        sub._start(topics)
        yield sub
