"""The shoal envelope: one ZeroMQ frame per shoal message.

Layout (all integers little-endian)::

    topic (UTF-8, no NUL, <= MAX_TOPIC bytes)
    0x00                                  delimiter: SUB prefixes never reach the header
    header (fixed 52 bytes, HEADER below)
      u8  version        refused unless == VERSION
      u8  kind           Kind
      u8  flags          FLAG_RAW: body is raw bytes; FLAG_HEADERS: user headers follow;
                         FLAG_SPLIT: the body is the message's second frame;
                         FLAG_REPLAYED (advisory): sent from a history;
                         FLAG_DEADLINE (advisory, requests): seq holds the caller's
                         remaining time; the unassigned bits: see "Unknown flag bits"
      u8  reserved       0 on send, ignored on receive (room for a future flag byte)
      16s sender         sender id (a node's or process's random 128-bit id)
      u32 epoch          incarnation of the sender: fresh on every start
      u32 stream         which of the sender's streams (one per resource) this is
      u64 seq            per-stream (per topic, for pub/sub) sequence number, from 0
      u64 timestamp_ns   wall-clock send time, nanoseconds since the Unix epoch
      u64 correlation    request id (requests, replies); 0 when unused
    [u32 length + msgpack map of str -> value]   only when FLAG_HEADERS
    body                                   msgpack, or raw bytes when FLAG_RAW

The topic leads so that libzmq's SUB prefix filter works on it directly; the fixed
binary header is cheaper to pack and check than a msgpack one.

Large bodies (``SPLIT_AT`` bytes and more, once encoded) travel as a second frame of
the same ZeroMQ message, with FLAG_SPLIT set and nothing after the header (and user
headers) in the first frame: the sender hands the body to libzmq without copying it
into a joined frame, and the receiver takes it zero-copy (at 1 MiB a join and
libzmq's copy cost ~900 us, a second frame ~3 us). Every other message is one frame.

Unknown flag bits: the unassigned bits are split in two ranges, so that a later
version can add a flag without making every older receiver drop its frames.
``FLAG_ADVISORY`` bits (0x08 and 0x10) may only carry what a receiver can do without
(a hint): a receiver that does not know one ignores it and decodes the frame as if it
were clear. Both are assigned: 0x08 as ``FLAG_REPLAYED`` (a publication a reliable
publisher sends from its history), 0x10 as ``FLAG_DEADLINE`` (on a ``REQUEST``, the
``seq`` field holds the microseconds the caller still waits, ``request_budget``,
instead of a number no receiver uses; a replier that does not know the bit runs the
request anyway, which is what it did before the bit existed).
``FLAG_MUST_UNDERSTAND`` bits (0x20, 0x40, 0x80) change how the frame reads: a
receiver that does not know one drops the frame (``DecodeError`` reason
``unknown-flags``, counted like any malformed input). The other known bits are all
must-understand. The hot-path decoders mask the advisory bits out of the word they
compare, so the rule costs them nothing.

Contract: this module is sans-I/O. It imports no event loop (trio, asyncio, anyio), zmq,
socket, time or random; the caller passes ids and the time in. ``decode`` treats every
byte as hostile: any failure, whatever its cause, is one ``DecodeError`` with a stable
``reason`` label, and no input can make it allocate more than a small multiple of the
input's size.
"""

from __future__ import annotations

import enum
import struct
import types
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import msgpack

from shoal._core._errors import DecodeError, EncodeError, MessageTooLarge

__all__ = [
    "HEADER",
    "MAX_TOPIC",
    "SPLIT_AT",
    "VERSION",
    "Kind",
    "Message",
    "StreamEncoder",
    "as_replayed",
    "correlation_at",
    "decode",
    "encode",
    "encode_topic",
    "pack_tail",
    "request_budget",
    "with_correlation",
]

VERSION: Final = 1
MAX_TOPIC: Final = 1024
MAX_HEADERS: Final = 64 * 1024

FLAG_RAW: Final = 0x01
FLAG_HEADERS: Final = 0x02
FLAG_SPLIT: Final = 0x04
_KNOWN_FLAGS: Final = FLAG_RAW | FLAG_HEADERS | FLAG_SPLIT
FLAG_REPLAYED: Final = 0x08
"""Advisory: a publication a reliable publisher sends from its history to a subscriber
that joined after it was published (``Message.replayed``); a receiver that does not
know the bit takes it as a live publication."""
FLAG_DEADLINE: Final = 0x10
"""Advisory, on a ``REQUEST``: ``seq`` is the caller's remaining time in microseconds."""
FLAG_ADVISORY: Final = 0x18
"""Flag bits a receiver ignores when it does not know them (hints only):
``FLAG_REPLAYED`` and ``FLAG_DEADLINE``."""
FLAG_MUST_UNDERSTAND: Final = 0xE0
"""Unassigned flag bits that make a receiver which does not know them drop the frame."""

SPLIT_AT: Final = 64 * 1024
"""Bodies of this many bytes (encoded) and more travel as a frame of their own."""

HEADER: Final = struct.Struct("<BBBx16sIIQQQ")
# HEADER split in two: the part fixed per stream, and the part that changes per message.
_PREFIX: Final = struct.Struct("<BBBx16sII")
_TAIL: Final = struct.Struct("<QQQ")
_U32: Final = struct.Struct("<I")
Buffer = Any  # bytes, memoryview or a zero-copy ZeroMQ frame: anything with the buffer protocol
# The first header word (version, kind, flags; the reserved byte masked off) and the
# rest, read in one unpack by the fast decoders.
_FAST: Final = struct.Struct("<xI16sIIQQQ")


class Kind(enum.IntEnum):
    """What a message is for. Receivers drop kinds their pattern does not expect."""

    PUBLISH = 1
    PUSH = 2
    REQUEST = 3
    REPLY = 4
    ERROR = 5
    ACK = 6


_KINDS: Final[dict[int, Kind]] = {int(k): k for k in Kind}
_new_message: Final = tuple.__new__
_unpack_header: Final = HEADER.unpack_from
_HEADER_SIZE: Final = HEADER.size
_EMPTY: Final[Mapping[str, Any]] = types.MappingProxyType({})


class Message(NamedTuple):
    """One received shoal message (immutable).

    ``(sender, epoch, stream, topic, seq)`` identifies it uniquely (a publisher numbers
    each topic on its own); ``id`` spells that as a string.
    ``body`` is whatever the sender passed (``bytes`` arrive as ``bytes``, untouched).

    A ``NamedTuple`` rather than a frozen dataclass on purpose: it is built once per
    received message, and a frozen dataclass costs about five times as much to
    construct (measured: ~2.9 us against ~0.6 us), which is most of the receive budget.
    """

    topic: str
    body: Any
    kind: Kind
    sender: str
    epoch: int
    stream: int
    seq: int
    timestamp_ns: int
    correlation: int = 0
    headers: Mapping[str, Any] = _EMPTY

    @property
    def id(self) -> str:
        """Globally unique message id: ``sender:epoch:stream:seq``, then ``:topic``
        when there is a topic (pub/sub sequence numbers count per topic, so two
        topics of one publisher share numbers). Parse it with ``split(":", 4)``."""
        if self.topic:
            return f"{self.sender}:{self.epoch:08x}:{self.stream}:{self.seq}:{self.topic}"
        return f"{self.sender}:{self.epoch:08x}:{self.stream}:{self.seq}"

    @property
    def timestamp(self) -> float:
        """Send time in seconds since the Unix epoch (the sender's clock)."""
        return self.timestamp_ns / 1e9

    @property
    def replayed(self) -> bool:
        """True for a publication a history publisher replayed to this subscriber
        when it joined (sent before it joined); False for everything live."""
        return False


class ReplayedMessage(Message):
    """A ``Message`` replayed from a publisher's history (``replayed`` is True)."""

    __slots__ = ()

    @property
    def replayed(self) -> bool:
        return True


def encode_topic(topic: str) -> bytes:
    """Check and encode a topic or a subscription prefix.

    Raises ``EncodeError`` if it is not a ``str``, contains NUL or is too long.
    """
    if not isinstance(topic, str):
        raise EncodeError(f"topics are str, not {type(topic).__name__}: pass a text topic")
    try:
        raw = topic.encode()
    except UnicodeEncodeError:
        raise EncodeError("a topic must be valid Unicode text (no lone surrogates)") from None
    if b"\0" in raw:
        raise EncodeError("a topic may not contain NUL ('\\x00'): remove it from the topic")
    if len(raw) > MAX_TOPIC:
        raise EncodeError(f"topic is {len(raw)} bytes; the limit is {MAX_TOPIC}: shorten it")
    return raw


def _pack(value: Any, what: str) -> bytes:
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(
            f"the {what} cannot be encoded with msgpack ({exc}): send dicts, lists, str, "
            "bytes, numbers, bools or None, or encode it yourself and send bytes"
        ) from None


class StreamEncoder:
    """Encodes the messages of one stream ``(sender, epoch, stream)``.

    The header fields fixed for the stream are packed once per (kind, flags), so each
    message costs one small ``struct.pack`` and one ``join``: this is the send hot path.
    """

    __slots__ = ("_prefixes", "epoch", "max_size", "raw_prefix", "stream")

    def __init__(self, *, sender: bytes, epoch: int, stream: int,
                 max_size: int = 2**63 - 1) -> None:
        self.epoch = epoch
        self.stream = stream
        self.max_size = max_size
        """Frames longer than this raise ``MessageTooLarge`` (the sending socket's
        ``max_message_size``: what its peers accept)."""
        self._prefixes: dict[int, bytes] = {
            (kind << 8) | flags: _PREFIX.pack(VERSION, kind, flags, sender, epoch, stream)
            for kind in Kind
            for flags in range((_KNOWN_FLAGS | FLAG_DEADLINE) + 1)
        }
        self.raw_prefix: dict[Kind, bytes] = {
            kind: self._prefixes[(kind << 8) | FLAG_RAW] for kind in Kind}
        """Per kind, the packed fixed header part of a raw-bytes body without user
        headers: senders inline the common case as ``topic_z + raw_prefix[kind] +
        pack_tail(seq, ts, correlation) + body`` (one join, see ``pack_tail``)."""

    def encode(
        self,
        kind: Kind,
        topic_z: bytes,
        body: Any,
        seq: int,
        timestamp_ns: int,
        correlation: int = 0,
        headers: Mapping[str, Any] | None = None,
    ) -> bytes:
        """One frame. ``topic_z`` is ``encode_topic(topic) + b"\\0"`` (checked once, reused).

        Raises ``EncodeError`` for a body or headers that msgpack cannot encode, and
        ``MessageTooLarge`` (an ``EncodeError``) for a frame over ``max_size``.
        """
        flags, payload = _payload(body)
        return self._frame(kind, topic_z, flags, payload, seq, timestamp_ns, correlation,
                           headers)

    def encode_parts(
        self,
        kind: Kind,
        topic_z: bytes,
        body: Any,
        seq: int,
        timestamp_ns: int,
        correlation: int = 0,
        headers: Mapping[str, Any] | None = None,
        extra_flags: int = 0,
    ) -> tuple[bytes, bytes | None]:
        """Like ``encode``, but a body of ``SPLIT_AT`` bytes or more (encoded) comes
        back as a frame of its own: ``(head, body)``; otherwise ``(frame, None)``.
        ``extra_flags``: advisory bits to set (``FLAG_DEADLINE``)."""
        flags, payload = _payload(body)
        flags |= extra_flags
        if len(payload) < SPLIT_AT:
            return self._frame(kind, topic_z, flags, payload, seq, timestamp_ns,
                               correlation, headers), None
        head = self._frame(kind, topic_z, flags | FLAG_SPLIT, b"", seq, timestamp_ns,
                           correlation, headers)
        if len(payload) > self.max_size:
            raise MessageTooLarge(len(payload), self.max_size)
        return head, payload

    def _frame(self, kind: Kind, topic_z: bytes, flags: int, payload: bytes, seq: int,
               timestamp_ns: int, correlation: int,
               headers: Mapping[str, Any] | None) -> bytes:
        tail = _TAIL.pack(seq, timestamp_ns, correlation)
        if not headers:
            frame = b"".join((topic_z, self._prefixes[(kind << 8) | flags], tail, payload))
            if len(frame) > self.max_size:
                raise MessageTooLarge(len(frame), self.max_size)
            return frame
        if not isinstance(headers, Mapping) or not all(isinstance(k, str) for k in headers):
            raise EncodeError("headers must be a mapping with str keys")
        packed = _pack(dict(headers), "headers")
        if len(packed) > MAX_HEADERS:
            raise EncodeError(f"headers encode to {len(packed)} bytes; the limit is {MAX_HEADERS}")
        prefix = self._prefixes[(kind << 8) | flags | FLAG_HEADERS]
        frame = b"".join((topic_z, prefix, tail, _U32.pack(len(packed)), packed, payload))
        if len(frame) > self.max_size:
            raise MessageTooLarge(len(frame), self.max_size)
        return frame


    def prefix(self, kind: Kind, flags: int) -> bytes:
        """The packed fixed header part for ``kind`` and ``flags`` (see ``raw_prefix``)."""
        return self._prefixes[(kind << 8) | flags]


pack_tail: Final = _TAIL.pack
"""``pack_tail(seq, timestamp_ns, correlation)``: the per-message end of the header."""

_CORRELATION: Final = HEADER.size - 8
"""Where the correlation field (the header's last u64) starts, from the header's start."""
_U64: Final = struct.Struct("<Q")


def correlation_at(topic_z: bytes) -> int:
    """Where the correlation field of a frame whose topic (NUL included) is ``topic_z``
    starts: the one field the reliable senders rewrite in an encoded frame (a
    pusher's floor, a publisher's ``prev``), see ``with_correlation``."""
    return len(topic_z) + _CORRELATION


def with_correlation(frame: bytes, at: int, correlation: int) -> bytes:
    """``frame`` (encoded by ``StreamEncoder``, its correlation field at ``at``, from
    ``correlation_at``) with ``correlation`` in that field instead: a copy, the rest
    unchanged. Cheaper than encoding again, which a retransmission or a copy per
    subscriber would otherwise cost."""
    return b"".join((frame[:at], _U64.pack(correlation), frame[at + 8:]))


_SEQ_BEFORE_CORRELATION: Final = 16
_FLAGS_BEFORE_CORRELATION: Final = _CORRELATION - 2


def as_replayed(frame: bytes, at: int, seq: int) -> bytes:
    """``frame`` (its correlation field at ``at``) renumbered ``seq`` and marked
    ``FLAG_REPLAYED``: a copy, the rest unchanged. A reliable publisher replays its
    history to a subscriber that joins as new publications of its stream."""
    flags_at = at - _FLAGS_BEFORE_CORRELATION
    seq_at = at - _SEQ_BEFORE_CORRELATION
    return b"".join((frame[:flags_at], bytes((frame[flags_at] | FLAG_REPLAYED,)),
                     frame[flags_at + 1:seq_at], _U64.pack(seq), frame[seq_at + 8:]))



_SEQ: Final = 1 + 28
"""Where the seq field starts, from the topic's NUL."""


def request_budget(frame: bytes) -> int:
    """The caller's remaining time, in microseconds, that a ``REQUEST`` frame (already
    decoded without error) carries; -1 when it carries none (``FLAG_DEADLINE`` clear)."""
    z = 0 if frame[0] == 0 else frame.find(b"\0", 0, MAX_TOPIC + 1)
    if frame[z + 3] & FLAG_DEADLINE:
        return int(_U64.unpack_from(frame, z + _SEQ)[0])
    return -1


def _payload(body: Any) -> tuple[int, bytes]:
    if type(body) is bytes:
        return FLAG_RAW, body
    if isinstance(body, bytes | bytearray | memoryview):
        return FLAG_RAW, bytes(body)
    return 0, _pack(body, "body")


def encode(
    kind: Kind,
    topic: bytes,
    body: Any,
    *,
    sender: bytes,
    epoch: int,
    stream: int,
    seq: int,
    timestamp_ns: int,
    correlation: int = 0,
    headers: Mapping[str, Any] | None = None,
) -> bytes:
    """Build one frame (a one-off; senders keep a ``StreamEncoder``).

    ``topic`` comes from ``encode_topic``. Raises ``EncodeError`` for a body or headers
    that msgpack cannot encode.
    """
    enc = StreamEncoder(sender=sender, epoch=epoch, stream=stream)
    return enc.encode(kind, topic + b"\0", body, seq, timestamp_ns, correlation, headers)


def decode(frame: bytes, rest: Sequence[Buffer] = ()) -> Message:
    """Parse one message: its first frame, and ``rest``, the frames that followed it
    in the same ZeroMQ message (a split body). Raises ``DecodeError`` (and nothing
    else) on any bad input."""
    try:
        return _decode(frame, rest)
    except DecodeError:
        raise
    except Exception as exc:  # a hostile frame must never escape as anything else
        raise DecodeError("malformed", f"{type(exc).__name__}: {exc}") from None


def _decode(frame: bytes, rest: Sequence[Buffer]) -> Message:
    if frame[:1] == b"\0":  # no topic (push, request, reply): skip the search
        z = 0
        topic = ""
    else:
        z = frame.find(b"\0", 0, MAX_TOPIC + 1)
        if z < 0:
            raise DecodeError("no-topic-delimiter")
        try:
            topic = frame[:z].decode()
        except UnicodeDecodeError:
            raise DecodeError("topic-not-utf8") from None
    off = z + 1
    if len(frame) - off < _HEADER_SIZE:
        raise DecodeError("truncated-header", f"{len(frame) - off} bytes after the topic")
    version, kind_no, flags, sender, epoch, stream, seq, ts, corr = _unpack_header(frame, off)
    if version != VERSION:
        raise DecodeError("unsupported-version", f"got {version}, this shoal speaks {VERSION}")
    kind = _KINDS.get(kind_no)
    if kind is None:
        raise DecodeError("unknown-kind", str(kind_no))
    off += _HEADER_SIZE
    if flags == FLAG_RAW and not rest:  # the common raw-bytes case, no user headers
        return _new_message(
            Message,
            (topic, frame[off:], kind, sender.hex(), epoch, stream, seq, ts, corr, _EMPTY),
        )
    if flags & FLAG_MUST_UNDERSTAND:
        raise DecodeError("unknown-flags", hex(flags))
    # what is left besides the known bits is advisory: ignored (the tests below read
    # single bits, so it needs no masking)
    if bool(flags & FLAG_SPLIT) != bool(rest):
        raise DecodeError("frame-count", f"{1 + len(rest)} frames, split flag "
                          f"{'set' if flags & FLAG_SPLIT else 'clear'}")
    view = memoryview(frame)
    headers: Mapping[str, Any] = _EMPTY
    if flags & FLAG_HEADERS:
        if len(frame) - off < 4:
            raise DecodeError("truncated-headers")
        (hlen,) = _U32.unpack_from(frame, off)
        off += 4
        if hlen > MAX_HEADERS or hlen > len(frame) - off:
            raise DecodeError("bad-headers-length", str(hlen))
        headers = msgpack.unpackb(view[off : off + hlen], raw=False, strict_map_key=False)
        if not isinstance(headers, dict):
            raise DecodeError("headers-not-a-map")
        if not all(type(k) is str for k in headers):
            raise DecodeError("headers-key-not-str")
        off += hlen
    if rest:
        if len(rest) != 1 or off != len(frame):
            raise DecodeError("frame-count", f"{1 + len(rest)} frames, or bytes after "
                              "the header of a split message")
        body_view: Buffer = rest[0]
    else:
        body_view = view[off:]
    body: Any
    if flags & FLAG_RAW:
        body = frame[off:] if not rest else bytes(body_view)  # the one copy
    else:
        # unpackb bounds every declared length by the buffer's size, so a "huge"
        # length prefix cannot allocate; trailing bytes raise ExtraData.
        body = msgpack.unpackb(body_view, raw=False, strict_map_key=False)
    return _new_message(
        Message, (topic, body, kind, sender.hex(), epoch, stream, seq, ts, corr, headers)
    )
