"""At-least-once delivery, sans-I/O: the sender's window and the receiver's memory.

``ReliableSender`` keeps every message of one stream until it is acknowledged:

* ``send(payload, now)`` gives the message the next sequence number and queues it for
  transmission; it refuses (``WindowFull``) once ``window`` messages are unacknowledged,
  or once the newest would be ``max_span`` numbers above the oldest not yet done (the
  receivers' duplicate memory is sized to ``max_span``): the caller applies
  backpressure instead of dropping.
* ``transmissions(now)`` lists what to put on the wire now (new messages first, then
  retransmissions that are due); the caller sends each and reports where with
  ``sent(seq, destination, now)``. A message with no acknowledgement of any kind is
  retransmitted after ``rto`` seconds, doubling each attempt up to ``max_rto``.
* Two acknowledgements: ``on_received(seqs)`` (the receiver holds the message: timer
  retransmission stops, the message stays in the window) and ``on_done(seqs)`` (the
  application is finished with it: it leaves the window). A received-but-not-done
  message is retransmitted only when its destination is reported gone
  (``destination_lost``), so a slow handler is never duplicated by a timer, and, as a
  *probe*, to the destination that holds it when ``on_received`` was given ``now``:
  ``probe_after`` seconds after the received acknowledgement (looked for every
  ``probe_after / 2``), doubling up to
  ``PROBE_MAX``. A probe is a duplicate at the receiver, which answers it with a done
  acknowledgement if the application has finished (one that was lost on the way), or
  a received one again: a lost done acknowledgement costs ``probe_after`` seconds,
  never the stream. Probes do not count toward ``max_attempts``. A
  *received* acknowledgement from a destination other than the one the message was
  last sent to is ignored (a late word from a receiver given up on).
* A message that reached ``max_attempts`` transmissions without being received (the
  count starts again when its holder is lost), or that is older than
  ``give_up_after`` seconds, is given up: it leaves the window and
  a ``GaveUp`` is queued (``gave_up()`` drains them).
* ``floor()`` is the lowest sequence number still in the window. Every message carries
  it, so receivers can forget everything below it.

The receiver's memory of what it delivered is ``Deduplicator``
(``shoal._core._dedup``, named here too).

Sans-I/O: no clock, no sockets; ``now`` is any monotonic float, destinations are
opaque hashable values chosen by the caller.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shoal._core._dedup import Deduplicator
from shoal._core._errors import LocalProtocolError

__all__ = ["Deduplicator", "GaveUp", "ReliableSender", "WindowFull"]


PROBE_MAX = 60.0
"""The longest interval between two probes of a message's holder (seconds)."""


class WindowFull(LocalProtocolError):
    """``send`` was called with ``window`` messages unacknowledged; wait for acks."""


@dataclass(frozen=True, slots=True)
class GaveUp:
    """A message the sender stopped trying to deliver."""

    seq: int
    payload: Any
    attempts: int
    """How many times it was put on the wire."""
    destination: Hashable | None
    """Where it was sent last (None: it was never sent)."""
    reason: str
    """``attempts`` (``max_attempts`` transmissions, none received) or ``deadline``."""


class _Entry:
    __slots__ = ("attempts", "destination", "due", "first", "last", "payload", "probe",
                 "probe_due", "probes", "queued", "received", "tries")
    probe: bool
    probes: int
    probe_due: float

    def __init__(self, payload: Any, first: float) -> None:
        self.payload = payload
        self.first = first
        self.attempts = 0  # transmissions in all
        self.tries = 0  # transmissions since it was last received (the give-up count)
        self.destination: Hashable | None = None  # who has it (None: nobody, or lost)
        self.last: Hashable | None = None  # where it was sent last (for GaveUp)
        self.due = first  # when to (re)transmit; inf once received
        self.received = False
        self.queued = True  # in the transmission queue (at most once)
        # Set by ``on_received`` (only a received entry reads them): ``probe``, queued
        # as a probe of its holder; ``probes``, since it was received; ``probe_due``,
        # when to probe its holder next.


class ReliableSender:
    """The sending half of one reliable stream. See the module docstring."""

    def __init__(
        self, *, window: int = 1024, rto: float = 0.5, max_rto: float = 5.0,
        max_attempts: int = 10, give_up_after: float | None = None, first_seq: int = 0,
        max_span: int = 65536, probe_after: float | None = None,
    ) -> None:
        if (window < 1 or rto <= 0 or max_rto < rto or max_attempts < 1
                or max_span < window or (probe_after is not None and probe_after <= 0)):
            raise LocalProtocolError("need window >= 1, 0 < rto <= max_rto, "
                                     "max_attempts >= 1, max_span >= window, "
                                     "probe_after > 0")
        if give_up_after is not None and give_up_after <= 0:
            raise LocalProtocolError("give_up_after is a number of seconds > 0, or None")
        self.window = window
        self.max_span = max_span
        self.rto = rto
        self.max_rto = max_rto
        self.max_attempts = max_attempts
        self.probe_after = max(max_rto, 4 * rto) if probe_after is None else probe_after
        """Seconds from a received acknowledgement to the first probe of its holder."""
        self.give_up_after = give_up_after
        self.next_seq = first_seq
        self._floor = first_seq
        self._entries: dict[int, _Entry] = {}
        self._queue: deque[int] = deque()  # seqs to transmit now, in order
        # (due, seq), lazily invalidated. First transmissions all wait ``rto``, so
        # their deadlines come in sending order: a deque; retransmissions (backoff) a heap.
        self._fresh: deque[tuple[float, int]] = deque()
        self._timers: list[tuple[float, int]] = []
        self._held: dict[Hashable, int] = {}  # destination -> messages it holds or was sent
        self._next_scan = 0.0  # when transmissions() next looks for holders to probe
        self._probing = False  # on_received was given ``now``: holders get probed
        self._gave_up: list[GaveUp] = []
        self.sent_count = 0
        self.retransmitted = 0
        self.acked = 0
        self.given_up = 0

    # -- the application side ---------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Messages in the window (sent or queued, not yet done)."""
        return len(self._entries)

    def has_room(self) -> bool:
        """Whether ``send`` would take a message now."""
        return self.room() is not None

    def room(self) -> int | None:
        """``floor()`` if ``send`` would take a message now, else None (one call for
        the send path's two questions)."""
        f = self.floor()
        if len(self._entries) < self.window and self.next_seq - f < self.max_span:
            return f
        return None

    def floor(self) -> int:
        """The lowest sequence number not yet done (``next_seq`` when none is)."""
        # Only ever grows: amortised O(1) per message.
        f, entries, end = self._floor, self._entries, self.next_seq
        while f < end and f not in entries:
            f += 1
        self._floor = f
        return f

    def send(self, payload: Any, now: float) -> int:
        """Take a message into the window; return its sequence number."""
        seq = self._take(payload, now)
        self._queue.append(seq)
        return seq

    def send_now(self, payload: Any, now: float) -> int:
        """Like ``send``, for a caller that puts the message on the wire at once: it is
        not queued, and the caller must report ``sent`` (or ``unsent``) for it. Only
        while nothing is queued (``queued()`` is False), so order is kept."""
        if self._queue:
            raise LocalProtocolError("send_now() while messages are queued: use send()")
        seq = self._take(payload, now)
        self._entries[seq].queued = False
        return seq

    def room_for(self) -> int:
        """How many messages ``send`` would take now, one after another."""
        f = self.floor()
        return max(0, min(self.window - len(self._entries),
                          self.max_span - (self.next_seq - f)))

    def send_now_many(self, payloads: Sequence[Any], now: float) -> int:
        """``send_now`` for several messages at once; returns the first one's number
        (the others follow it). All must fit (``room_for()``), or none is taken."""
        if self._queue:
            raise LocalProtocolError("send_now_many() while messages are queued: use send()")
        n = len(payloads)
        if n > self.room_for():
            raise WindowFull(f"{n} messages do not fit: {self.in_flight} await "
                             f"acknowledgement (window {self.window}); wait for acks")
        first = self.next_seq
        entries = self._entries
        for i, payload in enumerate(payloads):
            e = _Entry(payload, now)
            e.queued = False
            entries[first + i] = e
        self.next_seq = first + n
        return first

    def sent_many(self, first: int, destinations: Sequence[Hashable], now: float) -> None:
        """``sent`` for ``first``, ``first + 1``... (one per destination): the first
        transmissions of messages taken with ``send_now_many``."""
        due = now + self.rto
        entries = self._entries
        fresh = self._fresh
        held = self._held
        for i, destination in enumerate(destinations):
            seq = first + i
            e = entries.get(seq)
            if e is None or e.attempts or e.received:
                self.sent(seq, destination, now)
                continue
            e.attempts = e.tries = 1
            e.destination = e.last = destination
            held[destination] = held.get(destination, 0) + 1
            e.due = due
            fresh.append((due, seq))
            self.sent_count += 1

    def _take(self, payload: Any, now: float) -> int:
        seq = self.next_seq
        # the cached floor first: only when it says "no room" is it brought up to date
        if len(self._entries) >= self.window or (
                seq - self._floor >= self.max_span and not self.has_room()):
            raise WindowFull(f"{self.in_flight} messages await acknowledgement (window "
                             f"{self.window}, span {self.max_span}); wait for acks")
        self.next_seq = seq + 1
        self._entries[seq] = _Entry(payload, now)
        return seq

    def queued(self) -> bool:
        """Whether messages wait in the transmission queue."""
        return bool(self._queue)

    def restore(self, items: Iterable[tuple[int, Any]], next_seq: int, now: float) -> None:
        """Take back the unacknowledged messages of an earlier life of this stream (a
        durable outbox), with their own numbers; numbering continues at ``next_seq``.
        Only before the first ``send``. The window may start over-full: ``has_room``
        stays False until enough are done."""
        if self._entries or self.sent_count:
            raise LocalProtocolError("restore() comes before any send()")
        for seq, payload in sorted(items, key=lambda item: item[0]):
            if not 0 <= seq < next_seq:
                raise LocalProtocolError(f"restored seq {seq} is not below next_seq {next_seq}")
            self._entries[seq] = _Entry(payload, now)
            self._queue.append(seq)
        self.next_seq = max(self.next_seq, next_seq)
        self._floor = min(self._entries, default=self.next_seq)

    def payload(self, seq: int) -> Any:
        """The payload of a message still in the window."""
        return self._entries[seq].payload

    # -- the wire side ---------------------------------------------------------------------

    def transmissions(self, now: float) -> list[int]:
        """Sequence numbers to put on the wire now (call ``sent`` for each one sent).

        Also applies the give-up rules to everything due."""
        self._expire(now)
        entries = self._entries
        fresh = self._fresh
        queue = self._queue
        while fresh and fresh[0][0] <= now:
            due, seq = fresh.popleft()
            e = entries.get(seq)
            if e is not None and e.due == due and not e.received and not e.queued:
                e.due = float("inf")  # queued; ``sent`` sets the next deadline
                e.queued = True
                queue.append(seq)
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, seq = heapq.heappop(timers)
            e = entries.get(seq)
            if e is not None and e.due == due and not e.received and not e.queued:
                e.due = float("inf")
                e.queued = True
                queue.append(seq)
        if self._probing and now >= self._next_scan:
            self._scan(now)
        out: list[int] = []
        while queue:
            seq = queue.popleft()
            e = entries.get(seq)
            if e is None:
                continue
            e.queued = False
            if e.received:
                if e.probe:
                    out.append(seq)
                continue  # else a holder turned up meanwhile
            if e.tries >= self.max_attempts:
                self._give_up(seq, e, "attempts")
                continue
            out.append(seq)
        return out

    def destination(self, seq: int) -> Hashable | None:
        """Where ``seq`` was sent last, unless that destination was reported lost
        (None then, and for a message not sent or no longer in the window)."""
        e = self._entries.get(seq)
        return None if e is None else e.destination

    def sent(self, seq: int, destination: Hashable, now: float) -> None:
        """``seq`` went on the wire to ``destination``."""
        e = self._entries.get(seq)
        if e is None:
            return
        if e.attempts:
            self.retransmitted += 1
        else:
            self.sent_count += 1
        old = e.destination
        if old is None:  # the common case inline: a first transmission
            held = self._held
            held[destination] = held.get(destination, 0) + 1
            e.destination = destination
        elif old != destination:
            self._move(e, destination)
        if e.received:  # a probe of its holder: the next one later
            e.attempts += 1
            e.probe = False
            e.probes += 1
            e.probe_due = now + min(self.probe_after * 2 ** min(e.probes, 32), PROBE_MAX)
            return
        e.attempts += 1
        e.tries += 1
        e.last = destination
        if not e.received:
            if e.tries == 1:  # deadlines of first tries come in time order: a deque
                e.due = now + self.rto
                self._fresh.append((e.due, seq))
            else:
                e.due = now + min(self.rto * (2 ** min(e.tries - 1, 32)), self.max_rto)
                heapq.heappush(self._timers, (e.due, seq))

    def unsent(self, seq: int) -> None:
        """``seq`` from ``transmissions`` could not be sent now (no destination): keep
        it first in line for the next call."""
        e = self._entries.get(seq)
        if e is not None and not e.queued:
            e.queued = True
            self._queue.appendleft(seq)

    def on_received(self, seqs: Iterable[int], destination: Hashable | None = None,
                    now: float | None = None) -> None:
        """The receiver holds these messages: no more timer retransmissions (only
        probes of the holder, from ``now + probe_after``, when ``now`` is given).
        Ignored for a message last sent to another destination (a late word from a
        receiver given up on must not stop the copy now on its way elsewhere)."""
        if now is None:
            probe_due = float("inf")
        else:
            probe_due = now + self.probe_after
            if not self._probing:
                self._probing = True
                self._next_scan = now + self.probe_after / 2
        for seq in seqs:
            e = self._entries.get(seq)
            if e is None or e.received:
                continue
            if (destination is not None and e.destination is not None
                    and e.destination != destination):
                continue
            e.received = True
            e.due = float("inf")
            e.tries = 0
            e.probes = 0
            e.probe_due = probe_due
            e.probe = False
            if destination is not None and e.destination != destination:
                self._move(e, destination)

    def on_done(self, seqs: Iterable[int]) -> int:
        """The application at the receiver is done with these: they leave the window.
        Returns how many were newly acknowledged."""
        n = 0
        entries = self._entries
        # the holders' counts (what ``_move(e, None)`` does), one update per run of
        # messages from one holder: an acknowledgement comes from one
        gone: dict[Hashable, int] = {}
        last: Hashable | None = None
        run = 0
        for seq in seqs:
            e = entries.pop(seq, None)
            if e is not None:
                n += 1
                d = e.destination
                if d is last:
                    run += 1
                else:
                    if last is not None:
                        gone[last] = gone.get(last, 0) + run
                    last, run = d, 1
        if last is not None:
            gone[last] = gone.get(last, 0) + run
        held = self._held
        for d, k in gone.items():
            left = held[d] - k
            if left:
                held[d] = left
            else:
                del held[d]
        self.acked += n
        return n

    def held_by(self, destination: Hashable) -> int:
        """How many messages in the window ``destination`` holds or was sent last
        (received or not, not yet done): its share of the window."""
        return self._held.get(destination, 0)

    def _move(self, e: _Entry, destination: Hashable | None) -> None:
        """``e`` is now with ``destination`` (None: with nobody): keep the counts."""
        old = e.destination
        if old == destination:
            return
        held = self._held
        if old is not None:
            left = held[old] - 1
            if left:
                held[old] = left
            else:
                del held[old]
        if destination is not None:
            held[destination] = held.get(destination, 0) + 1
        e.destination = destination

    def destination_lost(self, destination: Hashable, now: float) -> int:
        """``destination`` is gone: everything it held or was sent goes out again now
        (to another destination). Returns how many messages were requeued."""
        n = 0
        for seq, e in self._entries.items():
            if e.destination == destination and e.attempts:
                e.received = False
                e.probe = False
                e.due = float("inf")
                self._move(e, None)
                e.tries = 0  # a fresh start elsewhere
                if not e.queued:
                    e.queued = True
                    self._queue.append(seq)
                n += 1
        return n

    def get_timer(self, *, queued: bool = True) -> float | None:
        """When ``transmissions`` next has something to do (None: nothing pending).
        ``queued=False`` leaves out what is queued now (for a caller that could not
        send it and waits for a destination)."""
        if queued and self._queue:
            return float("-inf")
        best: float | None = None
        fresh = self._fresh
        while fresh:
            due, seq = fresh[0]
            e = self._entries.get(seq)
            if e is None or e.due != due or e.received:
                fresh.popleft()
                continue
            best = due
            break
        timers = self._timers
        while timers:
            due, seq = timers[0]
            e = self._entries.get(seq)
            if e is None or e.due != due or e.received:
                heapq.heappop(timers)
                continue
            best = due if best is None else min(best, due)
            break
        if self.give_up_after is not None and self._entries:
            oldest = min(e.first for e in self._entries.values()) + self.give_up_after
            best = oldest if best is None else min(best, oldest)
        if self._probing and self._entries:  # the next look for holders to probe
            best = self._next_scan if best is None else min(best, self._next_scan)
        return best

    def _scan(self, now: float) -> None:
        """Queue a probe for each received message whose ``probe_due`` has come.
        Once per ``probe_after / 2``: O(window), no per-message timer."""
        self._next_scan = now + self.probe_after / 2
        queue = self._queue
        for seq, e in self._entries.items():
            if e.received and not e.queued and e.probe_due <= now:
                e.queued = True
                e.probe = True
                queue.append(seq)

    def gave_up_pending(self) -> bool:
        """Whether ``gave_up()`` has something to report."""
        return bool(self._gave_up)

    def gave_up(self) -> list[GaveUp]:
        """The messages given up since the last call."""
        out, self._gave_up = self._gave_up, []
        return out

    def _expire(self, now: float) -> None:
        if self.give_up_after is None:
            return
        after = self.give_up_after
        for seq, e in list(self._entries.items()):
            if e.first + after <= now:  # the very expression get_timer reports
                self._give_up(seq, e, "deadline")

    def _give_up(self, seq: int, e: _Entry, reason: str) -> None:
        del self._entries[seq]
        if e.destination is not None:
            self._move(e, None)
        self.given_up += 1
        self._gave_up.append(GaveUp(seq, e.payload, e.attempts, e.last, reason))
