"""A best-effort publisher that keeps history for late joiners (``history=N``).

It keeps the last ``N`` publications of each topic (``shoal._core.HistoryStore``,
bounded by ``history_bytes`` and ``history_topics``) and replays them to each
subscriber that asks, to it alone, before anything live, with no duplicate and no
hole at the seam.

How replay reaches one subscriber only. XPUB sends by subscription match, never to a
chosen connection; but it can be told, with ``XPUB_MANUAL``, to apply each
subscription only when the application does (``SUBSCRIBE`` after reading one applies
it to the connection it came from). A history publisher runs in that mode:

- A subscriber that wants history sends, before its topic subscriptions, a *request*:
  its marker (which it also subscribes), the depth it wants and its prefixes. On
  reading the request, with no checkpoint in between, the publisher subscribes that
  connection to the marker and to the request's prefixes, and sends the replay as
  bundles that lead with the marker (so only that connection matches them). Live
  publications on those prefixes reach the connection from that moment on: the
  replay holds everything published before it and the live stream everything after,
  so the seam needs nothing from the subscriber. The subscriber's own topic
  subscriptions follow and are applied again (a no-op on the same connection).
- Every other subscription is applied as it comes, as plain XPUB would. An everything
  subscription (``""``) is applied as the 254 one-byte prefixes ``0x00``-``0xfd``,
  which every topic starts with and no replay bundle does: a bundle never reaches
  another subscriber.

libzmq sends a connection's subscriptions in the order they were made, but when a
connection comes up after them (a reconnection, a node that connects to a publisher
it just discovered) it sends them in its own order, topics before the request. So a
subscriber that asks for history also names its marker in its connections' ZMTP
metadata (``X-Shoal-Marker``), and the publisher holds back a topic subscription from
such a connection until that subscriber's request has been answered.

The other designs considered: a side channel (a ROUTER the subscriber asks) needs a
second endpoint and leaves the seam to the subscriber, which would have to hold live
messages until the replay ends; plain XPUB cannot order the replay before the live
stream on one connection, since libzmq applies a subscription before the application
reads it. Subscriptions must be read promptly (nothing reaches a new subscriber until
they are), so a history publisher runs a task that reads them as they arrive.

A publisher without history is the plain ``Publisher``: nothing here is on its path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import zmq

from shoal._core import (
    MARKER,
    OWNER,
    REQUEST,
    HistoryStore,
    Identity,
    bundles,
    decode_request,
)
from shoal._io import WouldBlock
from shoal._zmq._socket import Socket
from shoal.errors import DecodeError, LocalProtocolError
from shoal.patterns._common import Endpoints, PublishItem, log, open_socket
from shoal.patterns._pubsub import Publisher, PublisherStatistics
from shoal.patterns._pubsub_args import (
    DEFAULT_MAX_TOPICS,
    check_publisher_args,
    publisher_options,
)

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_TOPICS",
    "HistoryPublisher",
    "check_history_args",
    "history_publisher_options",
    "open_history_publisher",
    "run_history_publisher",
]

DEFAULT_HISTORY_BYTES = 64 << 20
"""Default bound on what a publisher's history holds, in bytes (64 MiB)."""
DEFAULT_HISTORY_TOPICS = 100_000
"""Default bound on how many topics a publisher's history holds."""
_MAX_DEFERRED = 1024
"""Bound on the subscribers (and the subscriptions of each) held back for a request."""
_EVERYTHING = [bytes((b,)) for b in range(0xFE)]
"""What an everything subscription becomes: every first byte but 0xfe and 0xff."""


class HistoryPublisher(Publisher):
    """A ``Publisher`` that replays its recent history to subscribers that join.
    Make one with ``open_publisher(..., history=N)``."""

    def __init__(self, sock: Socket, identity: Identity | None, *, depth: int,
                 max_bytes: int, max_topics: int,
                 max_numbered: int = DEFAULT_MAX_TOPICS) -> None:
        super().__init__(sock, identity, max_topics=max_numbered)
        self._store = HistoryStore(depth=depth, max_bytes=max_bytes, max_topics=max_topics)
        self._requests = 0
        self._replayed = 0
        self._answered: set[bytes] = set()
        """Markers of subscribers whose request was answered (while subscribed)."""
        self._deferred: dict[bytes, list[bytes]] = {}
        """Per marker, topic subscriptions held back until its request comes."""

    def _read_subscriptions(self) -> None:
        """Apply the subscriptions queued, one at a time (``XPUB_MANUAL`` applies
        ``SUBSCRIBE`` to the connection of the last one read), answering requests."""
        sock = self._sock
        while raws := sock.receive_frames_nowait(1):
            frames = raws[0]
            f = frames[0].bytes
            if len(frames) != 1 or not f or f[0] > 1:
                continue
            body = f[1:]
            if body[:1] == REQUEST:
                if f[0] == 1:
                    self._answer(body)
                continue  # a request withdrawn: nothing was subscribed for it
            if f[0] == 1 and body[:1] != MARKER and self._defer(frames[0], body):
                continue
            self._apply(f[0] == 1, body)
            if body[:1] == MARKER:
                if f[0] == 1:
                    self._subscribers.add(body)
                else:
                    self._subscribers.discard(body)
                    self._answered.discard(body)
                    self._deferred.pop(body, None)

    def _apply(self, subscribe: bool, prefix: bytes) -> None:
        option = zmq.SUBSCRIBE if subscribe else zmq.UNSUBSCRIBE
        for p in _EVERYTHING if not prefix else (prefix,):
            self._sock.setsockopt(option, p)

    def _defer(self, frame: zmq.Frame, prefix: bytes) -> bool:
        """Hold back a topic subscription from a subscriber whose request has not been
        read yet (its connection's metadata names it): the request applies it, with
        the replay. libzmq sends a connection's subscriptions again in its own order
        (topics before the request) when it reconnects or connects late."""
        try:
            named = frame.get(OWNER.decode())
            owner = MARKER + bytes.fromhex(named) if isinstance(named, str) else b""
        except (zmq.ZMQError, ValueError):
            return False  # a subscriber that wants no history, or a foreign one
        if len(owner) != 17:
            return False
        if owner in self._answered:
            return False
        held = self._deferred.get(owner)
        if held is None:
            if len(self._deferred) >= _MAX_DEFERRED:
                self._deferred.pop(next(iter(self._deferred)))
            held = self._deferred[owner] = []
        if len(held) >= _MAX_DEFERRED:
            return False
        held.append(prefix)
        return True

    def _answer(self, body: bytes) -> None:
        """Subscribe the requesting connection and replay to it, in one go."""
        try:
            marker, depth, prefixes = decode_request(body)
        except DecodeError:
            self._requests += 1
            log.debug("publisher dropped a malformed history request")
            return
        if marker in self._answered:
            return  # asked again on the same subscription: it has its replay
        sock = self._sock
        sock.setsockopt(zmq.SUBSCRIBE, marker)
        for prefix in (*prefixes, *self._deferred.pop(marker, ())):
            self._apply(True, prefix)
        if len(self._answered) >= _MAX_DEFERRED:
            self._answered.pop()
        self._answered.add(marker)
        self._requests += 1
        sent = 0

        def counted(frames: Iterable[bytes | tuple[bytes, bytes]]
                    ) -> Iterable[bytes | tuple[bytes, bytes]]:
            nonlocal sent
            for frame in frames:
                sent += 1
                yield frame
        out = list(bundles(marker, iter(counted(self._store.select(depth, prefixes))),
                           sock.max_message_size))
        if out:
            sock.send_batch_nowait(out)  # PUB-like: never refused (dropped at the HWM)
        self._replayed += sent

    async def _serve(self) -> None:
        """Read subscriptions as they arrive, until closed."""
        sock = self._sock
        while not sock.closed:
            self._read_subscriptions()
            try:
                await sock.wait_receivable()
            except anyio.ClosedResourceError:
                return

    def _encode(self, topic: str, body: Any,
                headers: Mapping[str, Any] | None) -> bytes | tuple[bytes, bytes]:
        frame = super()._encode(topic, body, headers)
        self._store.add(self._topics[topic][0], frame)
        return frame

    def publish_many_nowait(self, items: Iterable[PublishItem]) -> None:
        self._sock.check_open("publish")
        frames = self._encode_many(items)
        add = self._store.add
        for frame in frames:
            # the topic leads the frame up to its NUL (the batch may have moved to a
            # new stream part way, so the numbering table may not hold it any more)
            head = frame if isinstance(frame, bytes) else frame[0]
            add(head[:head.index(0) + 1], frame)
        sock = self._sock
        done = 0
        while done < len(frames):
            sent = sock.send_batch_nowait(frames, done)
            if not sent:
                raise WouldBlock
            done += sent
        self._sent(done)

    def statistics(self) -> PublisherStatistics:
        """An immutable snapshot of this resource's counters, the history's with them
        (a request that could not be parsed counts in ``history_requests`` too)."""
        s = self._store
        return PublisherStatistics(
            published=self._published, topics=len(self._topics),
            subscribers=self.subscribers, history_topics=len(s), history_bytes=s.bytes,
            history_evicted=s.evicted, history_requests=self._requests,
            replayed=self._replayed, topic_resets=self._topic_resets)


def check_history_args(history: int, history_bytes: int, history_topics: int) -> None:
    """Refuse history bounds that cannot work, before a socket is opened."""
    for name, value, low in (("history", history, 0), ("history_bytes", history_bytes, 1),
                             ("history_topics", history_topics, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LocalProtocolError(f"{name} must be an int >= {low}, not {value!r}")


@asynccontextmanager
async def open_history_publisher(
    *, bind: Endpoints, connect: Endpoints, identity: Identity | None, high_water_mark: int,
    context: zmq.Context[zmq.Socket[bytes]] | None, linger_ms: int, history: int,
    history_bytes: int, history_topics: int, max_topics: int = DEFAULT_MAX_TOPICS,
) -> AsyncIterator[HistoryPublisher]:
    check_history_args(history, history_bytes, history_topics)
    check_publisher_args(max_topics)
    sock = open_socket("open_publisher", zmq.XPUB, bind=bind, connect=connect,
                       high_water_mark=high_water_mark, context=context, linger_ms=linger_ms,
                       options=history_publisher_options(high_water_mark))
    async with run_history_publisher(sock, identity, history=history,
                                     history_bytes=history_bytes,
                                     history_topics=history_topics,
                                     max_topics=max_topics) as pub:
        yield pub


@asynccontextmanager
async def run_history_publisher(
    sock: Socket, identity: Identity | None, *, history: int, history_bytes: int,
    history_topics: int, max_topics: int = DEFAULT_MAX_TOPICS,
) -> AsyncIterator[HistoryPublisher]:
    """A history publisher on ``sock`` (an XPUB with ``history_publisher_options``),
    its subscription reader running while the block is open; closes the socket.
    ``max_topics`` bounds its numbering table (see ``Publisher``)."""
    pub = HistoryPublisher(sock, identity, depth=history, max_bytes=history_bytes,
                           max_topics=history_topics, max_numbered=max_topics)
    async with anyio.create_task_group() as tasks, pub:
        tasks.start_soon(pub._serve)
        yield pub
        tasks.cancel_scope.cancel()


def history_publisher_options(high_water_mark: int) -> list[tuple[int, int | bytes]]:
    """Socket options of a history publisher: a publisher's, in manual mode."""
    return [*publisher_options(high_water_mark), (zmq.XPUB_MANUAL, 1)]
