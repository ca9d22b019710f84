"""When the receiving ends of the reliable patterns acknowledge: what they owe each
route, and the timer that says when it must go.

Theory of operation (the shape of aioquic's recovery: the I/O layer asks
``get_timer()``, sleeps until then or until input, and asks what to send):

* Acknowledgements are batched: one goes out per ``batch`` (64) arrivals or items
  done, and none waits longer than ``delay`` (2 ms) once its receiver has nothing
  more to read. ``get_timer()`` is that moment (None while nothing is owed); the I/O
  layer flushes when it arrives, when a batch is full (``received_due`` /
  ``done_due``), and before it parks on its socket past the timer.
* ``acks_to_send(now)`` hands over what is owed, per route (the connection it is
  answered on); ``refused(route, ack)`` takes back the done part of one the peer's
  queue did not take (a received part is no news once done, and a pusher probes
  what it does not hear about).

``PullReceiver`` is the receiving end of reliable push/pull: the ``Deduplicator``,
the items delivered and not yet done (and the route each came on), and the
``PullAck``s owed. ``SubscriberReceiver`` is that of reliable publish/subscribe: the
``ChainReceiver`` and the routes owed a ``SubscriberAck``.

Contract: sans-I/O; the time is passed in. A route is any hashable (the I/O layer's
routing id).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Final

from shoal._core._acks import PullAck, SubscriberAck, ack_tag
from shoal._core._dedup import Deduplicator
from shoal._core._fanout import ChainReceiver

__all__ = ["ACK_BATCH", "ACK_DELAY", "PullReceiver", "SubscriberReceiver"]

ACK_BATCH: Final = 64
"""Arrivals (or items done) that make an acknowledgement go at once."""
ACK_DELAY: Final = 0.002
"""Seconds a receiver with nothing more to read may sit on acknowledgements."""

_Item = tuple[str, int, int, int]
"""A pushed item: (sender, epoch, stream, seq)."""


class _Owed:
    """What one route is owed for one pusher stream."""

    __slots__ = ("done", "epoch", "received", "stream")

    def __init__(self, epoch: int, stream: int) -> None:
        self.epoch = epoch
        self.stream = stream
        self.received: list[int] = []
        self.done: list[int] = []

    def ack(self, received: list[int], done: list[int]) -> PullAck:
        return PullAck(received, done, ack_tag(self.epoch, self.stream))


class PullReceiver:
    """The receiving end of reliable push/pull, without the I/O.

    ``accept`` each arriving item (True: deliver it), ``finish`` it when the
    application is done; acknowledgements accumulate per route until
    ``acks_to_send``. Every arrival is acknowledged as received (a copy too: the first
    acknowledgement may have been lost); a copy of an item done before is
    acknowledged as done again (that repairs a lost done acknowledgement when the
    pusher probes)."""

    __slots__ = ("_holding", "_last_flush", "_owed", "_stale", "batch", "dedup", "delay",
                 "pending_done", "pending_received")

    def __init__(self, *, max_streams: int = 4096, window: int = 65536,
                 batch: int = ACK_BATCH, delay: float = ACK_DELAY) -> None:
        self.dedup = Deduplicator(max_streams=max_streams, window=window)
        self.batch = batch
        self.delay = delay
        # route -> what it is owed for one pusher stream (one per route, but a pusher
        # restarted behind a route speaks another)
        self._owed: dict[Hashable, _Owed] = {}
        self._stale: list[tuple[Hashable, PullAck]] = []  # for a stream no longer spoken
        self._holding: dict[_Item, Hashable] = {}  # delivered, not done -> its route
        self.pending_received = 0
        self.pending_done = 0
        self._last_flush = 0.0

    @property
    def held(self) -> int:
        """Items delivered and not yet done."""
        return len(self._holding)

    @property
    def received_due(self) -> bool:
        """A batch of received acknowledgements is owed: send them now."""
        return self.pending_received >= self.batch

    @property
    def done_due(self) -> bool:
        """A batch of done acknowledgements is owed: send them now."""
        return self.pending_done >= self.batch

    def accept(self, route: Hashable, sender: str, epoch: int, stream: int, seq: int,
               floor: int) -> bool:
        """An item arrived on ``route`` carrying the pusher's ``floor``; True if it is
        new (deliver it), False for a copy."""
        rec = self._owed.get(route)
        if rec is None or rec.stream != stream or rec.epoch != epoch:
            rec = self._open(route, epoch, stream)
        rec.received.append(seq)
        self.pending_received += 1
        item = (sender, epoch, stream, seq)
        if not self.dedup.accept(item[:3], seq, floor):
            holder = self._holding.get(item)
            if holder is None:  # done before: say so again
                rec.done.append(seq)
                self.pending_done += 1
            elif holder != route:
                self._holding[item] = route  # its pusher now speaks on this route
            return False
        self._holding[item] = route
        return True

    def finish(self, sender: str, epoch: int, stream: int, seq: int) -> bool:
        """The application is done with an item; False if it was not held (done
        already, or never delivered)."""
        route = self._holding.pop((sender, epoch, stream, seq), None)
        if route is None:
            return False
        rec = self._owed.get(route)
        if rec is None or rec.stream != stream or rec.epoch != epoch:
            rec = self._open(route, epoch, stream)
        rec.done.append(seq)
        self.pending_done += 1
        return True

    def _open(self, route: Hashable, epoch: int, stream: int) -> _Owed:
        """What ``route`` owes for stream ``(epoch, stream)``; what it owed another
        stream (a pusher restarted behind a connection this puller made) goes with
        the next ``acks_to_send``, done or not."""
        old = self._owed.pop(route, None)
        if old is not None:
            self.pending_received -= len(old.received)
            self.pending_done -= len(old.done)
            if old.received or old.done:
                self._stale.append((route, old.ack(old.received, old.done)))
        rec = self._owed[route] = _Owed(epoch, stream)
        return rec

    def pending(self) -> bool:
        """Whether anything is owed."""
        return bool(self.pending_received or self.pending_done or self._stale)

    def get_timer(self) -> float | None:
        """When what is owed must go at the latest; None while nothing is."""
        if self.pending_received or self.pending_done or self._stale:
            return self._last_flush + self.delay
        return None

    def acks_to_send(self, now: float, *, done: bool = True) -> list[tuple[Hashable, PullAck]]:
        """What is owed, per route, taken out. ``done=False``: only the received
        parts (the done ones wait for a flush that includes them); owed for a stream
        no longer spoken goes either way."""
        self._last_flush = now
        out, self._stale = self._stale, []
        owed = self._owed
        for route in list(owed):
            rec = owed[route]
            received = rec.received
            if done:
                del owed[route]
                self.pending_received -= len(received)
                self.pending_done -= len(rec.done)
                if received or rec.done:
                    out.append((route, rec.ack(received, rec.done)))
            elif received:
                self.pending_received -= len(received)
                rec.received = []
                out.append((route, rec.ack(received, [])))
        return out

    def refused(self, route: Hashable, ack: PullAck) -> None:
        """``ack`` did not go (the pusher's queue to us is full): its done part is owed
        again, if ``route`` still speaks that stream (else the pusher probes)."""
        if not ack.done:
            return
        epoch, stream = ack.tag >> 32, ack.tag & 0xFFFFFFFF
        rec = self._owed.get(route)
        if rec is None:
            rec = self._owed[route] = _Owed(epoch, stream)
        elif rec.epoch != epoch or rec.stream != stream:
            return
        rec.done[:0] = ack.done
        self.pending_done += len(ack.done)


class SubscriberReceiver:
    """The receiving end of reliable publish/subscribe, without the I/O: the
    ``ChainReceiver`` that places each publication, and the publisher routes owed an
    acknowledgement (each is told where its stream stands)."""

    __slots__ = ("_dirty", "_last_flush", "_stream_of", "batch", "chain", "delay", "pending")

    def __init__(self, *, max_streams: int = 4096, batch: int = ACK_BATCH,
                 delay: float = ACK_DELAY) -> None:
        self.chain = ChainReceiver(max_streams=max_streams)
        self.batch = batch
        self.delay = delay
        self._stream_of: dict[Hashable, tuple[str, int, int]] = {}  # route -> stream
        self._dirty: set[Hashable] = set()  # routes owed an acknowledgement
        self.pending = 0  # publications arrived since the last flush
        self._last_flush = 0.0

    def accept(self, route: Hashable, stream: tuple[str, int, int], seq: int,
               prev: int) -> str:
        """A publication arrived on ``route``: ``ChainReceiver.accept``'s verdict."""
        self._stream_of[route] = stream
        self._dirty.add(route)
        self.pending += 1
        return self.chain.accept(stream, seq, prev)

    @property
    def due(self) -> bool:
        """A batch of arrivals is unacknowledged: acknowledge now."""
        return self.pending >= self.batch

    def get_timer(self) -> float | None:
        """When the routes owed an acknowledgement must have it; None if none is."""
        return self._last_flush + self.delay if self.pending else None

    def routes_to_ack(self, now: float) -> set[Hashable]:
        """The routes owed an acknowledgement, taken out (build each with ``ack``)."""
        self._last_flush = now
        self.pending = 0
        dirty, self._dirty = self._dirty, set()
        return dirty

    def ack(self, route: Hashable, prefixes: Sequence[str], *, bye: bool = False,
            history: int = 0) -> SubscriberAck:
        """The acknowledgement for ``route``: where the stream last heard on it stands
        (``history``: the depth of history asked of a publisher that has no book for
        this subscriber yet)."""
        stream = self._stream_of.get(route)
        if stream is None:
            return SubscriberAck(prefixes, bye=bye, history=history)
        return SubscriberAck(prefixes, stream[1], stream[2], self.chain.acked(stream), bye,
                             history)

    def forget(self, route: Hashable) -> None:
        """``route`` is gone: owe it nothing."""
        self._stream_of.pop(route, None)
        self._dirty.discard(route)
