"""Gap detection for best-effort streams (pub/sub).

Every published message carries ``(sender, epoch, stream, seq)`` with ``seq``
counting per topic from 0. A subscriber feeds each arrival to ``GapTracker.observe``
and learns how many messages of that stream it never saw, so loss in best-effort
mode is counted instead of silent.

Contract: sans-I/O, no clock needed. Memory is bounded: at most ``max_streams``
streams are remembered (least recently seen forgotten first, and counted in
``forgotten``), so a hostile peer inventing ids cannot grow it without bound.
A stream seen for the first time reports no gap: what was published before a
subscriber joined is not the subscriber's loss.

Each stream's expected sequence number lives in a one-item list, its *cell*
(``expected[key]``). Hot paths keep a stream's cell and handle the in-order case
inline (``cell[0] == seq``: set it to ``seq + 1``), without hashing the key, and
call ``observe`` for everything else; they refresh a stream's recency once per 64
in-order arrivals, so eviction forgets the streams least recently refreshed, which a
busy stream never is for long. An evicted stream's cell is set to ``FORGOTTEN``
(no sequence number matches it), so a hot path holding it falls back to ``observe``,
which starts a new cell.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["FORGOTTEN", "GapTracker", "StreamKey"]

StreamKey = tuple[str, int, int, str]  # (sender, epoch, stream, topic)
FORGOTTEN = -1
"""The content of an evicted stream's cell: sequence numbers are never negative."""


class GapTracker:
    """Tracks the next expected sequence number of each stream."""

    __slots__ = ("_by_sender", "_next", "expected", "forgotten", "gaps", "max_streams",
                 "out_of_order")

    def __init__(self, *, max_streams: int = 4096) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        self.max_streams = max_streams
        self._next: OrderedDict[StreamKey, list[int]] = OrderedDict()
        self.expected = self._next
        """Per stream, its cell: ``[the sequence number expected next]`` (least recent
        first)."""
        self._by_sender: dict[str, int] = {}
        self.gaps = 0
        """Messages known to be missing, over all streams."""
        self.out_of_order = 0
        """Arrivals with a sequence number below the one expected (duplicates, replays)."""
        self.forgotten = 0
        """Streams evicted to keep memory bounded."""

    def observe(self, key: StreamKey, seq: int) -> int:
        """Record an arrival; return how many messages were skipped just before it."""
        cell = self._next.get(key)
        if cell is None:
            if len(self._next) >= self.max_streams:
                self._next.popitem(last=False)[1][0] = FORGOTTEN
                self.forgotten += 1
            self._next[key] = [seq + 1]
            return 0
        self._next.move_to_end(key)
        nxt = cell[0]
        if seq == nxt:
            cell[0] = seq + 1
            return 0
        if seq < nxt:
            self.out_of_order += 1
            return 0
        missed = seq - nxt
        cell[0] = seq + 1
        self.gaps += missed
        sender = key[0]
        # bounded like the streams: only senders we still track keep a counter
        if sender in self._by_sender or len(self._by_sender) < self.max_streams:
            self._by_sender[sender] = self._by_sender.get(sender, 0) + missed
        return missed

    def skip(self, key: StreamKey, seq: int) -> None:
        """An arrival the subscriber filtered out (a wildcard pattern refused its
        topic): a stream already tracked expects the next one, nothing is counted, and
        an untracked stream stays untracked (its first delivered arrival is a first
        sight, not a gap)."""
        cell = self._next.get(key)
        if cell is not None and seq >= cell[0]:
            cell[0] = seq + 1

    def gaps_by_sender(self) -> dict[str, int]:
        """A copy of the per-sender gap counters."""
        return dict(self._by_sender)

    def __len__(self) -> int:
        return len(self._next)
