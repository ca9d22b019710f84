"""Reliable publish/subscribe, sans-I/O: the publisher's books and the subscriber's chain.

``FanoutSender`` is the publisher's side. Every publication gets the next number of
the publisher's stream. The publisher keeps a *book* per known subscriber (known from
its acknowledgements, which also carry its topic prefixes): the publications that
match its prefixes and that it has not yet acknowledged. Each publication sent to a
subscriber carries, besides its own number, the number of the previous publication
sent to that subscriber (``prev``; ``START`` for the first one of a book), so a
subscriber can tell a gap from a publication it was never meant to get.

* ``publish(topic, payload, now)`` returns the number and the ``(book, prev)`` pairs
  to send it to. It refuses (``WindowFull``) while some book holds ``window``
  unacknowledged publications: a subscriber that is behind slows the publisher down
  (backpressure) until it catches up or is dropped.
* ``on_ack(key, route, topics, acked, now)``: the subscriber ``key`` (reachable at
  ``route``) has everything up to ``acked`` in order (-1: nothing of this stream).
  An unknown key opens a book, starting with the next publication. A route leads to
  one subscriber: a key heard on a route that another book holds means that other
  subscriber was replaced there (a publisher's connection to an endpoint now leads to
  a subscriber restarted at it). Its book is dropped as a silent one is (counted),
  with ``reason`` ``replaced``, and the next ``due`` reports it.
* ``due(now)`` lists what to send again: a book whose acknowledgements stopped
  advancing for ``rto`` seconds (doubling, up to ``max_rto``) gets every publication it
  holds again, in order (go-back-N: a subscriber loses publications only in a burst,
  when a connection drops or a high-water mark overflows). A subscriber heard from
  again after a silence longer than two ``rto`` gets its book again at once. A book
  not heard from for ``grace`` seconds is dropped, with what it held (``Dropped``).
  The caller reports what it actually sent again with ``resent(count)`` (that is
  what ``retransmitted`` counts).
* ``stalled(book, prev)``: sending to the book was refused (a full pipe) at the
  publication sent after ``prev``; the caller sends it nothing more until
  ``resume(book)`` (the subscriber acknowledged: it is draining), after which the
  next ``due`` lists the book's publications from the refused one on: what was
  already sent is not sent again before the retransmission timer says so.
* ``replay(book, payloads, now)``: a subscriber that just joined gets publications
  from the publisher's history first, numbered next in the stream for its book alone.
* ``on_bye(key)``: the subscriber left cleanly; its book goes without a count.
* An acknowledgement of ``LOST_TRACK`` (-2) means the subscriber holds publications of
  this stream it cannot place (its memory of the stream was forgotten, or the first
  publication of its book never came): the book's chain starts over at the oldest
  unacknowledged publication, sent again at once as a ``START``.

``ChainReceiver`` is the subscriber's side, per publisher stream: the number of the
last publication delivered. A publication is delivered if its ``prev`` is that number
(or ``START`` of a first book); one already delivered is a duplicate; one whose
``prev`` is further on means something in between is missing: it is dropped (the
publisher sends everything again from the acknowledged point). A publication of a
stream it has no memory of, other than a ``START``, makes it acknowledge
``LOST_TRACK`` until a ``START`` comes. A ``START`` beyond the
last delivered number means the publisher dropped this subscriber's book and opened a
new one: what was published in between is lost to it, and counted as a *resync*.

Sans-I/O: no clock, no sockets; routes and keys are opaque hashable values.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shoal._core._errors import LocalProtocolError
from shoal._core._reliable import WindowFull

__all__ = ["LOST_TRACK", "RESUME", "START", "Book", "ChainReceiver", "Dropped", "FanoutSender"]

START = 2**64 - 1
"""``prev`` of the first publication of a book."""
RESUME = 2**64 - 2
"""``prev`` of the first publication of a book opened for a subscriber the publisher
had dropped: what was published in between never reached it (a *resync*)."""
LOST_TRACK = -2
"""The acknowledgement of a subscriber that cannot place what it receives."""
_MAX_DOUBLINGS = 32


@dataclass(frozen=True, slots=True)
class Dropped:
    """A subscriber the publisher stopped keeping publications for."""

    key: Hashable
    undelivered: int
    """Publications it held, never acknowledged."""
    silent_for: float
    reason: str = "silence"
    """``silence`` (``grace`` seconds of it), or ``replaced`` (another subscriber
    answered on its route)."""


class Book:
    """What the publisher keeps for one subscriber."""

    __slots__ = ("ack_seq", "acked", "attempts", "due", "key", "last_heard", "last_sent",
                 "prefixes", "resume", "route", "sent_upto", "unacked")

    def __init__(self, key: Hashable, route: Hashable, prefixes: tuple[str, ...],
                 now: float) -> None:
        self.key = key
        self.route = route
        self.prefixes = prefixes
        self.unacked: deque[tuple[int, int]] = deque()  # (seq, prev), in order
        self.last_sent = START
        self.acked = -1
        self.last_heard = now
        self.due = float("inf")  # when to send ``unacked`` again
        self.attempts = 0  # retransmission rounds since the last progress
        self.ack_seq = -1  # number of the newest acknowledgement taken
        # After a refused send: the number of the last publication sent before it (-1:
        # none), where ``resume`` carries on.
        self.sent_upto = -1
        self.resume = False  # carry on after ``sent_upto`` at the next ``due``


class FanoutSender:
    """The publisher's side of reliable pub/sub. See the module docstring."""

    def __init__(self, *, window: int = 8192, rto: float = 0.5, max_rto: float = 5.0,
                 grace: float = 10.0, max_subscribers: int = 1024) -> None:
        if (not isinstance(window, int) or isinstance(window, bool) or window < 1 or rto <= 0
                or max_rto < rto or grace <= 0 or max_subscribers < 1):
            raise LocalProtocolError(
                "need window >= 1, 0 < rto <= max_rto, grace > 0, max_subscribers >= 1")
        self.window = window
        self.rto = rto
        self.max_rto = max_rto
        self.grace = grace
        self.max_subscribers = max_subscribers
        self.next_seq = 0
        self.books: dict[Hashable, Book] = {}
        # subscribers dropped for silence, newest last: if one comes back, its new book
        # starts with RESUME so that it counts what it missed
        self._dropped_keys: OrderedDict[Hashable, None] = OrderedDict()
        self._log: dict[int, list[Any]] = {}  # seq -> [payload, books holding it]
        self._by_route: dict[Hashable, Hashable] = {}  # route -> key of the book there
        self._replaced: list[Dropped] = []  # reported by the next ``due``
        self.sent = 0
        self.acked = 0
        self.retransmitted = 0
        self.dropped = 0
        self.undelivered = 0
        self.refused = 0
        self.restarts = 0
        self.replayed = 0

    # -- publishing ------------------------------------------------------------------------

    def has_room(self) -> bool:
        return all(len(b.unacked) < self.window for b in self.books.values())

    def room(self) -> int:
        """How many publications can be made before some subscriber's window is full
        (``window`` with no subscriber)."""
        books = self.books
        if not books:
            return self.window
        return self.window - max(len(b.unacked) for b in books.values())

    def publish(self, topic: str, payload: Any, now: float) -> tuple[int, list[tuple[Book, int]]]:
        """Number a publication and enter it in the books whose prefixes match it.
        Returns its number and ``(book, prev)`` for each subscriber to send it to."""
        if not self.has_room():
            raise WindowFull(f"a subscriber has {self.window} publications unacknowledged; "
                             "wait for it to catch up (or to be dropped)")
        return self._enter(topic, payload, now)

    def publish_many(self, entries: Sequence[tuple[str, Any]], now: float
                     ) -> tuple[int, list[list[tuple[Book, int]]]]:
        """``publish`` for each ``(topic, payload)`` in order, the window checked once
        (``room()`` must cover them all). Returns the first number and, per entry,
        its ``(book, prev)`` list."""
        if len(entries) > self.room():
            raise WindowFull(f"{len(entries)} publications do not fit: a subscriber's "
                             f"window has room for {self.room()}")
        first = self.next_seq
        enter = self._enter
        return first, [enter(topic, payload, now)[1] for topic, payload in entries]

    def _enter(self, topic: str, payload: Any, now: float
               ) -> tuple[int, list[tuple[Book, int]]]:
        seq = self.next_seq
        self.next_seq = seq + 1
        out: list[tuple[Book, int]] = []
        for book in self.books.values():
            if topic.startswith(book.prefixes):
                prev = book.last_sent
                book.unacked.append((seq, prev))
                book.last_sent = seq
                if book.due == float("inf"):
                    book.due = now + self.rto
                out.append((book, prev))
        if out:
            self._log[seq] = [payload, len(out)]
            self.sent += 1
        return seq, out

    def replay(self, book: Book, payloads: Sequence[Any], now: float) -> list[tuple[int, int]]:
        """Enter ``payloads`` (publications from the publisher's history, for a
        subscriber that just joined) in ``book`` alone, numbered next in the stream in
        order: the caller made them with the numbers ``next_seq``, ``next_seq + 1``...
        Returns ``(seq, prev)`` for each, to send. Other subscribers never see these
        numbers: their ``prev`` chains step over them."""
        out: list[tuple[int, int]] = []
        log = self._log
        for payload in payloads:
            seq = self.next_seq
            self.next_seq = seq + 1
            prev = book.last_sent
            book.unacked.append((seq, prev))
            book.last_sent = seq
            log[seq] = [payload, 1]
            out.append((seq, prev))
        if out and book.due == float("inf"):
            book.due = now + self.rto
        self.replayed += len(out)
        return out

    def payload(self, seq: int) -> Any:
        return self._log[seq][0]

    @property
    def in_flight(self) -> int:
        """Publications some subscriber has not acknowledged yet."""
        return len(self._log)

    def held(self) -> int:
        """Book entries over all subscribers (the memory bound's measure)."""
        return sum(len(b.unacked) for b in self.books.values())

    # -- acknowledgements --------------------------------------------------------------------

    def on_ack(self, key: Hashable, route: Hashable, prefixes: Sequence[str], acked: int,
               now: float, ack_seq: int | None = None) -> Book | None:
        """An acknowledgement (or heartbeat) from subscriber ``key``. Returns its book
        (None if refused: the table of subscribers is full). ``ack_seq``, if given,
        numbers the subscriber's acknowledgements: an older one arriving late is
        ignored."""
        book = self.books.get(key)
        if book is None or book.route != route:
            holder = self._by_route.get(route)
            if holder is not None and holder != key:
                other = self.books.get(holder)
                if other is not None and other.route == route:
                    self._replaced.append(self._drop(holder, now, "replaced"))
        if book is None:
            if len(self.books) >= self.max_subscribers:
                self.refused += 1
                return None
            book = self.books[key] = Book(key, route, tuple(prefixes), now)
            self._by_route[route] = key
            if self._dropped_keys.pop(key, 0) is None:
                book.last_sent = RESUME
        if ack_seq is not None:
            if ack_seq <= book.ack_seq:
                return book  # overtaken by a newer one
            book.ack_seq = ack_seq
        if book.route != route:
            if self._by_route.get(book.route) == key:
                del self._by_route[book.route]
            self._by_route[route] = key
            book.route = route
        book.prefixes = tuple(prefixes)
        if book.unacked and now - book.last_heard > 2 * self.rto:
            # Back after a silence (a link that was down): send it what it holds now
            # rather than when the backed-off timer says.
            book.attempts = 0
            book.due = min(book.due, now)
        book.last_heard = now
        if acked == LOST_TRACK:
            self._restart_chain(book, now)
            return book
        if acked > book.acked:
            book.acked = acked
            unacked = book.unacked
            progressed = False
            while unacked and unacked[0][0] <= acked:
                seq, _ = unacked.popleft()
                self._release(seq)
                self.acked += 1
                progressed = True
            if progressed:
                book.attempts = 0
                book.due = now + self.rto if unacked else float("inf")
        return book

    def _restart_chain(self, book: Book, now: float) -> None:
        """The subscriber cannot place what it gets: start its chain over."""
        self.restarts += 1
        if book.unacked:
            seq, prev = book.unacked[0]
            book.unacked[0] = (seq, RESUME if prev == RESUME else START)
            book.due = now  # send the book again now
        else:
            book.last_sent = START

    def on_bye(self, key: Hashable) -> bool:
        """The subscriber left cleanly: forget its book. True if there was one."""
        book = self.books.pop(key, None)
        if book is None:
            return False
        if self._by_route.get(book.route) == key:
            del self._by_route[book.route]
        for seq, _ in book.unacked:
            self._release(seq)
        return True

    def _drop(self, key: Hashable, now: float, reason: str) -> Dropped:
        """Stop keeping publications for ``key`` (it comes back, if ever, as RESUME)."""
        book = self.books[key]
        self.on_bye(key)
        self._dropped_keys[key] = None
        if len(self._dropped_keys) > self.max_subscribers:
            self._dropped_keys.popitem(last=False)
        self.dropped += 1
        self.undelivered += len(book.unacked)
        return Dropped(key, len(book.unacked), now - book.last_heard, reason)

    def _release(self, seq: int) -> None:
        entry = self._log.get(seq)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self._log[seq]

    # -- time --------------------------------------------------------------------------------

    def stalled(self, book: Book, prev: int) -> None:
        """Sending the publication that follows ``prev`` to ``book`` was refused:
        everything before it had been sent."""
        book.sent_upto = prev if prev < RESUME else -1
        book.resume = False

    def resume(self, book: Book) -> None:
        """A stalled book's subscriber is draining: the next ``due`` lists what was
        not sent yet."""
        book.resume = True

    def resent(self, count: int) -> None:
        """``count`` publications of what ``due`` listed were sent again."""
        self.retransmitted += count

    def due(self, now: float) -> tuple[list[tuple[Book, list[tuple[int, int]]]], list[Dropped]]:
        """What to send again now (per book, in order), and the books dropped for
        silence."""
        resend: list[tuple[Book, list[tuple[int, int]]]] = []
        dropped, self._replaced = self._replaced, []
        for key, book in list(self.books.items()):
            if now - book.last_heard >= self.grace:
                dropped.append(self._drop(key, now, "silence"))
                continue
            if book.unacked and book.due <= now:
                book.attempts += 1
                book.due = now + min(self.rto * 2 ** min(book.attempts, _MAX_DOUBLINGS),
                                     self.max_rto)
                resend.append((book, list(book.unacked)))
                book.sent_upto = book.unacked[-1][0]  # unless ``stalled`` says otherwise
            elif book.resume and book.unacked:
                after = book.sent_upto
                rest = [e for e in book.unacked if e[0] > after]
                if rest:
                    resend.append((book, rest))
                    book.sent_upto = rest[-1][0]
            book.resume = False
        return resend, dropped

    def get_timer(self) -> float | None:
        """When ``due`` next has something to do (None: no subscriber)."""
        best: float | None = None
        for book in self.books.values():
            t = min(book.due, book.last_heard + self.grace)
            best = t if best is None else min(best, t)
        return best


class _Chain:
    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -1


Verdict = Literal["deliver", "duplicate", "missing", "resync"]


class ChainReceiver:
    """The subscriber's side of reliable pub/sub. See the module docstring."""

    def __init__(self, *, max_streams: int = 4096) -> None:
        if max_streams < 1:
            raise LocalProtocolError("max_streams must be >= 1")
        self._max = max_streams
        self._chains: OrderedDict[Hashable, _Chain] = OrderedDict()
        self.duplicates = 0
        self.missing = 0
        self.resyncs = 0
        self.forgotten_streams = 0

    def accept(self, stream: Hashable, seq: int, prev: int) -> Verdict:
        """Publication ``seq`` of ``stream`` came, sent after ``prev``. ``deliver`` and
        ``resync``: hand it to the application; ``duplicate`` and ``missing``: drop it."""
        chains = self._chains
        c = chains.get(stream)
        if c is None:
            c = chains[stream] = _Chain()
            if prev != START and prev != RESUME:
                c.last = LOST_TRACK  # cannot place it: ask for the chain from a START
            if len(chains) > self._max:
                chains.popitem(last=False)
                self.forgotten_streams += 1
        else:
            chains.move_to_end(stream)
        if prev == RESUME:  # a new book after the publisher had dropped us
            if seq <= c.last:
                self.duplicates += 1
                return "duplicate"
            c.last = seq
            self.resyncs += 1
            return "resync"
        if c.last == LOST_TRACK:
            if prev != START:
                self.missing += 1
                return "missing"
            c.last = seq
            return "deliver"
        if seq <= c.last:
            self.duplicates += 1
            return "duplicate"
        if prev == c.last or (prev == START and c.last == -1):
            c.last = seq
            return "deliver"
        if prev == START:  # a new book: the publisher forgot us for a while
            c.last = seq
            self.resyncs += 1
            return "resync"
        self.missing += 1
        return "missing"

    def acked(self, stream: Hashable) -> int:
        """The last publication of ``stream`` delivered in order (-1: none;
        ``LOST_TRACK``: publications came that it cannot place)."""
        c = self._chains.get(stream)
        return -1 if c is None else c.last

    def __len__(self) -> int:
        return len(self._chains)
