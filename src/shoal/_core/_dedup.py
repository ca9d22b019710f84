"""The receiver's memory of the reliable patterns, sans-I/O: which messages of each
stream were already delivered, so a retransmission is never delivered twice.

``Deduplicator`` keeps it, per stream ``(sender, epoch, stream)``: the
sender's floor (everything below was acknowledged as done, so anything below that
arrives again is a duplicate) and the set of sequence numbers seen at or above it.
Memory is bounded: at most ``window`` numbers per stream, which must be at least the
senders' ``max_span`` (a stream claiming more is broken or hostile: the oldest are
dropped and counted), ``max_streams`` streams
(least recently used forgotten first).

Sans-I/O: no clock, no sockets; streams are opaque hashable values.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from shoal._core._errors import LocalProtocolError

__all__ = ["Deduplicator"]


class _Seen:
    __slots__ = ("floor", "seqs")

    def __init__(self) -> None:
        self.floor = 0
        self.seqs: set[int] = set()


class Deduplicator:
    """Which messages of each stream were already delivered. See the module docstring."""

    def __init__(self, *, max_streams: int = 4096, window: int = 65536) -> None:
        if max_streams < 1 or window < 1:
            raise LocalProtocolError("max_streams and window must be >= 1")
        self._max_streams = max_streams
        self._window = window
        self._streams: OrderedDict[Hashable, _Seen] = OrderedDict()
        self._last_key: Hashable = None  # the stream of the previous call, and its memory
        self._last: _Seen | None = None
        self.duplicates = 0
        self.forgotten_streams = 0
        self.overflowed = 0

    def accept(self, stream: Hashable, seq: int, floor: int) -> bool:
        """A message ``seq`` of ``stream`` arrived carrying the sender's ``floor``.
        True: new, deliver it. False: a duplicate (already delivered, or below the
        floor, i.e. acknowledged as done), drop it but acknowledge it again."""
        streams = self._streams
        # the common case first: the same stream as last time
        s = self._last if stream == self._last_key else streams.get(stream)
        if s is None:
            s = streams[stream] = _Seen()
            if len(streams) > self._max_streams:
                streams.popitem(last=False)
                self.forgotten_streams += 1
        elif stream != self._last_key:
            streams.move_to_end(stream)
        self._last_key, self._last = stream, s
        if floor > s.floor:
            s.floor = floor
            if s.seqs:
                s.seqs = {q for q in s.seqs if q >= floor}
        if seq < s.floor or seq in s.seqs:
            self.duplicates += 1
            return False
        s.seqs.add(seq)
        if len(s.seqs) > self._window:
            # A sender never has more than its window above its floor; one that claims
            # to is hostile or broken. Forget the oldest rather than grow.
            s.seqs.discard(min(s.seqs))
            self.overflowed += 1
        return True

    def __len__(self) -> int:
        return len(self._streams)

    def remembered(self) -> int:
        """Sequence numbers held over all streams (the memory bound's measure)."""
        return sum(len(s.seqs) for s in self._streams.values())
