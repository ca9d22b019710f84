"""Publisher history for late joiners: the store, the request and the replay bundle.

A publisher opened with ``history=N`` keeps the last ``N`` publications of each topic
as the frames it sent (``HistoryStore``). A subscriber that wants them asks with a
*request* (a subscription message of its own, ``encode_request``); the publisher
answers that subscriber alone with *bundles* (``bundles``): frames that lead with the
subscriber's marker, so that only its pipe matches them. ``docs/PROTOCOL.md``
(Publish/subscribe, "History") gives every byte.

Bounds, all hard: at most ``depth`` publications per topic, ``max_topics`` topics and
``max_bytes`` bytes in total (each entry costs its frames plus ``ENTRY_OVERHEAD``, each
topic its name plus ``TOPIC_OVERHEAD``).
Over a bound, the topic least recently published loses its oldest publication (and
is forgotten once empty), so ten million distinct topics cost no more than the bound.
A request is bounded by what it parses: at most ``MAX_HISTORY_PREFIXES`` prefixes of at most
``MAX_TOPIC`` bytes, a depth clamped to the store's.

Contract: sans-I/O, like the rest of ``_core``: no event loop (trio, asyncio, anyio),
zmq, socket, time or random. Nothing from the wire raises anything but ``DecodeError``.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Final

from shoal._core._envelope import MAX_TOPIC, Message, as_replayed, correlation_at, decode
from shoal._core._errors import DecodeError

__all__ = [
    "ENTRY_OVERHEAD",
    "MARKER",
    "MAX_HISTORY_PREFIXES",
    "OWNER",
    "REQUEST",
    "HistoryRequest",
    "HistoryStore",
    "bundles",
    "decode_bundle",
    "decode_request",
    "encode_request",
    "renumbered",
]

MARKER: Final = b"\xff"
"""A subscriber's marker starts with this byte (then 16 random bytes); so does a
replay bundle addressed to it."""
REQUEST: Final = b"\xfe"
"""A history request starts with this byte (no UTF-8 topic does)."""
OWNER: Final = b"X-Shoal-Marker"
"""The connection metadata property (ZMTP) in which a subscriber that asks for history
names its marker id (32 hex digits)."""
MARKER_SIZE: Final = 17
MAX_HISTORY_PREFIXES: Final = 256
ALL: Final = 0xFFFFFFFF
"""The depth of a request that takes all the publisher keeps."""
TOPIC_OVERHEAD: Final = 320
"""Bytes charged per topic held besides its name (the list, the ordered dict's entry,
the name's bytes object)."""
ENTRY_OVERHEAD: Final = 160
"""Bytes charged per kept publication besides its frames (the deque slot, the tuple,
the bytes objects' headers): what ``history_bytes`` counts is close to real memory."""
BUNDLE_BYTES: Final = 1 << 20
"""A bundle holds publications up to about this many bytes (one always fits)."""

_HEAD = struct.Struct("<16sIH")  # subscriber id, depth, prefix count
_ENTRY = struct.Struct("<II")  # first frame's length, split body's length (0: none)

Frame = bytes | tuple[bytes, bytes]
"""A publication as sent: one frame, or a head and a split body."""
HistoryRequest = tuple[bytes, int, list[bytes]]
"""A parsed request: the subscriber's marker, the depth asked, the prefixes."""


def encode_request(marker: bytes, depth: int, prefixes: Sequence[bytes]) -> bytes:
    """The subscription that asks a history publisher for its last ``depth``
    publications (``ALL``: all it keeps) of each topic matching ``prefixes``, to be
    sent to the subscriber whose marker is ``marker``."""
    if len(marker) != MARKER_SIZE or marker[:1] != MARKER:
        raise ValueError("a marker is 0xff and 16 bytes")
    if len(prefixes) > MAX_HISTORY_PREFIXES:
        raise ValueError(f"at most {MAX_HISTORY_PREFIXES} prefixes ask for history")
    return b"".join((REQUEST, _HEAD.pack(marker[1:], min(depth, ALL), len(prefixes)),
                     *(p + b"\0" for p in prefixes)))


def decode_request(body: bytes) -> HistoryRequest:
    """Parse a request (the subscription's bytes, without XPUB's leading 0x01)."""
    if body[:1] != REQUEST or len(body) < 1 + _HEAD.size:
        raise DecodeError("bad-request", "too short")
    ident, depth, count = _HEAD.unpack_from(body, 1)
    if count > MAX_HISTORY_PREFIXES:
        raise DecodeError("bad-request", f"{count} prefixes > {MAX_HISTORY_PREFIXES}")
    parts = body[1 + _HEAD.size:].split(b"\0")
    if len(parts) != count + 1 or parts[-1]:
        raise DecodeError("bad-request", "prefix count does not match")
    prefixes = parts[:-1]
    for p in prefixes:
        if len(p) > MAX_TOPIC:
            raise DecodeError("bad-request", "prefix too long")
    return MARKER + ident, depth, prefixes


class HistoryStore:
    """The last ``depth`` publications of each topic, within ``max_bytes`` and
    ``max_topics`` (see the module's docstring for what is evicted)."""

    __slots__ = ("_topics", "bytes", "depth", "evicted", "max_bytes", "max_topics")

    def __init__(self, *, depth: int, max_bytes: int, max_topics: int) -> None:
        if depth < 1 or max_bytes < 1 or max_topics < 1:
            raise ValueError("depth, max_bytes and max_topics must be at least 1")
        self.depth = depth
        self.max_bytes = max_bytes
        self.max_topics = max_topics
        # topic (encoded, with its NUL) -> its publications (size, frame), oldest first;
        # least recently published topic first
        # (a list, not a deque: 64 bytes against 760 for one publication; depths are
        # small and removing the oldest of a few is as cheap)
        self._topics: OrderedDict[bytes, list[tuple[int, Frame]]] = OrderedDict()
        self.bytes = 0
        """Bytes held, as counted against ``max_bytes``."""
        self.evicted = 0
        """Publications dropped to stay within ``max_bytes`` or ``max_topics``."""

    def __len__(self) -> int:
        """How many topics are held."""
        return len(self._topics)

    def add(self, topic_z: bytes, frame: Frame) -> None:
        """Keep ``frame``, the publication just sent on the topic ``topic_z`` (its
        encoded bytes and NUL, as it leads the frame)."""
        size = ENTRY_OVERHEAD + (len(frame) if isinstance(frame, bytes)
                                 else len(frame[0]) + len(frame[1]))
        topics = self._topics
        kept = topics.get(topic_z)
        if kept is None:
            kept = topics[topic_z] = []
            self.bytes += TOPIC_OVERHEAD + len(topic_z)
        else:
            topics.move_to_end(topic_z)
            if len(kept) >= self.depth:
                self.bytes -= kept.pop(0)[0]
        kept.append((size, frame))
        self.bytes += size
        while (self.bytes > self.max_bytes or len(topics) > self.max_topics) and topics:
            oldest_topic, oldest = next(iter(topics.items()))
            self.bytes -= oldest.pop(0)[0]
            self.evicted += 1
            if not oldest:
                del topics[oldest_topic]
                self.bytes -= TOPIC_OVERHEAD + len(oldest_topic)

    def select(self, depth: int, prefixes: Sequence[bytes]) -> Iterator[Frame]:
        """The publications a request for ``depth`` of each topic matching one of
        ``prefixes`` gets: topic by topic, oldest first within each."""
        depth = min(depth, self.depth)
        if depth == 0 or not prefixes:
            return
        every = b"" in prefixes
        for topic_z, kept in list(self._topics.items()):
            if every or topic_z.startswith(tuple(prefixes)):
                start = max(0, len(kept) - depth)
                for i in range(start, len(kept)):
                    yield kept[i][1]


def bundles(marker: bytes, frames: Iterator[Frame], max_size: int) -> Iterator[bytes]:
    """Pack publications into replay bundles for the subscriber ``marker``: each
    ``marker + entries``, an entry being ``u32 head length, u32 body length (0: the
    head is the whole publication), head, body``. A bundle stays under ``max_size``
    (the receiving socket's limit); a publication that cannot fit alone is left out."""
    room = min(BUNDLE_BYTES, max_size) - MARKER_SIZE
    parts: list[bytes] = [marker]
    used = 0
    for frame in frames:
        head, body = (frame, b"") if isinstance(frame, bytes) else frame
        need = _ENTRY.size + len(head) + len(body)
        if need > max_size - MARKER_SIZE:
            continue
        if used and used + need > room:
            yield b"".join(parts)
            parts, used = [marker], 0
        parts += (_ENTRY.pack(len(head), len(body)), head, body)
        used += need
    if used:
        yield b"".join(parts)


def decode_bundle(frame: bytes) -> Iterator[Message | DecodeError]:
    """The publications of a bundle (``frame`` without its marker), each decoded, or
    the ``DecodeError`` that says why one could not be; a bundle whose framing is
    broken ends with that error."""
    view = memoryview(frame)
    at, end = 0, len(frame)
    while at < end:
        if end - at < _ENTRY.size:
            yield DecodeError("bad-bundle", "truncated entry")
            return
        n_head, n_body = _ENTRY.unpack_from(frame, at)
        at += _ENTRY.size
        if n_head + n_body > end - at:
            yield DecodeError("bad-bundle", "entry longer than the bundle")
            return
        head = bytes(view[at:at + n_head])
        at += n_head
        try:
            if n_body:
                yield decode(head, (view[at:at + n_body],))
            else:
                yield decode(head)
        except DecodeError as exc:
            yield exc
        at += n_body


def renumbered(store: HistoryStore, depth: int, prefixes: Sequence[str], limit: int,
               first: int) -> list[tuple[bytes, int]]:
    """A reliable publisher's replay for a subscriber that joins: the kept
    publications (one frame each) of ``prefixes``, ``depth`` per topic, at most
    ``limit`` in all (the newest), each numbered from ``first`` on and flagged
    ``REPLAYED`` (``as_replayed``), with where its correlation field lies."""
    frames = list(store.select(depth, [p.encode() for p in prefixes]))[-limit:]
    out: list[tuple[bytes, int]] = []
    for i, frame in enumerate(frames):
        assert isinstance(frame, bytes)  # a reliable publication is one frame
        at = correlation_at(frame[:frame.index(0) + 1])
        out.append((as_replayed(frame, at, first + i), at))
    return out
