"""The acknowledgements of the reliable patterns on the wire: typed values, their ACK
envelopes, and the checks every one from the wire passes before it is believed.

Two bodies, both msgpack arrays inside an ``ACK`` envelope with an empty topic (the
tables in ``docs/PROTOCOL.md``, "Reliable push/pull acknowledgement" and "Reliable
publish/subscribe acknowledgement", are the reference):

* ``PullAck`` -- a reliable puller to a reliable pusher: ``[received, done]``, two
  arrays of sequence numbers; the envelope's ``correlation`` is the ``ack_tag`` of the
  pusher stream they are for (0: the pusher's own, from pullers that predate tags).
* ``SubscriberAck`` -- a reliable subscriber to a reliable publisher:
  ``[prefixes, epoch, stream, acked, bye]``, then ``history`` (the depth of a
  publisher's history it asks for when it joins) when that is not 0.

Both travel inside the envelope (``shoal._core._envelope``), numbered by the
acknowledging side's own stream; the envelope's sender, epoch and stream identify it.

Contract: sans-I/O. ``decode_pull_ack`` and ``decode_subscriber_ack`` treat every
byte as hostile: whatever is wrong raises ``DecodeError`` with a stable ``reason``
(the envelope's own, or one of ``ACK_REASONS``) and nothing else escapes; they check
types exactly (``True`` is not a sequence number), so what they return is what the
dataclass says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from shoal._core._envelope import Kind, Message, StreamEncoder, decode
from shoal._core._errors import DecodeError
from shoal._core._history import ALL

__all__ = [
    "ACK_REASONS",
    "ACK_TOPIC",
    "MAX_PREFIXES",
    "PullAck",
    "SubscriberAck",
    "ack_tag",
    "decode_pull_ack",
    "decode_subscriber_ack",
]

ACK_TOPIC: Final = b"\0"
"""An acknowledgement's topic as the encoder takes it: empty, with its NUL."""
MAX_PREFIXES: Final = 256
"""The most topic prefixes one reliable subscriber may name."""
ACK_REASONS: Final = frozenset({
    "not-an-ack", "ack-not-an-array", "ack-seqs-not-arrays", "ack-seq-not-int",
    "ack-prefixes", "ack-stream-not-int", "ack-bye-not-bool", "ack-history"})
"""The ``DecodeError`` reasons of the acknowledgement bodies (the envelope has its own)."""


def ack_tag(epoch: int, stream: int) -> int:
    """The ``correlation`` of a pull acknowledgement of pusher stream ``(epoch, stream)``."""
    return (epoch << 32) | stream


@dataclass(frozen=True, slots=True)
class PullAck:
    """What a reliable puller tells a pusher: items that reached it (``received``: the
    pusher stops their retransmission timers) and items its application finished
    (``done``: they leave the pusher's window). ``tag``: the pusher stream meant
    (``ack_tag``; 0 for "yours")."""

    received: Sequence[int]
    done: Sequence[int]
    tag: int = 0

    def encode(self, enc: StreamEncoder, seq: int, timestamp_ns: int) -> bytes:
        """The ACK envelope, numbered ``seq`` in the puller's stream ``enc``."""
        return enc.encode(Kind.ACK, ACK_TOPIC, [self.received, self.done], seq,
                          timestamp_ns, self.tag)


@dataclass(frozen=True, slots=True)
class SubscriberAck:
    """What a reliable subscriber tells a publisher: the prefixes it wants, the
    publisher stream ``(epoch, stream)`` it last heard on this connection (-1, -1:
    none), the last publication of it delivered in order (``acked``: -1 none,
    ``LOST_TRACK`` it cannot place what came), whether it is leaving (``bye``), and how
    many of the last publications of each topic it wants replayed from a publisher's
    history when it joins (``history``: 0 none, ``ALL`` every one kept)."""

    prefixes: Sequence[str]
    epoch: int = -1
    stream: int = -1
    acked: int = -1
    bye: bool = False
    history: int = 0

    def encode(self, enc: StreamEncoder, seq: int, timestamp_ns: int) -> bytes:
        """The ACK envelope, numbered ``seq`` in the subscriber's stream ``enc``."""
        body = [list(self.prefixes), self.epoch, self.stream, self.acked, self.bye]
        if self.history:
            body.append(self.history)
        return enc.encode(Kind.ACK, ACK_TOPIC, body, seq, timestamp_ns)


def _ack_body(frame: bytes, size: int, optional: int = 0) -> tuple[Message, list[Any]]:
    msg = decode(frame)
    if msg.kind is not Kind.ACK:
        raise DecodeError("not-an-ack", msg.kind.name)
    body = msg.body
    if type(body) is not list or not size <= len(body) <= size + optional:
        raise DecodeError("ack-not-an-array", f"expected an array of {size}")
    return msg, body


def decode_pull_ack(frame: bytes) -> tuple[Message, PullAck]:
    """The envelope of a pull acknowledgement and what it says. Raises ``DecodeError``
    for anything else."""
    msg, (received, done) = _ack_body(frame, 2)
    if type(received) is not list or type(done) is not list:
        raise DecodeError("ack-seqs-not-arrays")
    for seq in received:
        if type(seq) is not int:
            raise DecodeError("ack-seq-not-int")
    for seq in done:
        if type(seq) is not int:
            raise DecodeError("ack-seq-not-int")
    return msg, PullAck(received, done, msg.correlation)


def decode_subscriber_ack(frame: bytes) -> tuple[Message, SubscriberAck]:
    """The envelope of a subscriber's acknowledgement and what it says. Raises
    ``DecodeError`` for anything else."""
    msg, body = _ack_body(frame, 5, optional=1)
    prefixes, epoch, stream, acked, bye = body[:5]
    history = body[5] if len(body) > 5 else 0
    if type(history) is not int or not 0 <= history <= ALL:
        raise DecodeError("ack-history", "an int from 0 to 2**32 - 1")
    if (type(prefixes) is not list or len(prefixes) > MAX_PREFIXES
            or not all(type(p) is str for p in prefixes)):
        raise DecodeError("ack-prefixes", f"an array of at most {MAX_PREFIXES} str")
    if type(epoch) is not int or type(stream) is not int or type(acked) is not int:
        raise DecodeError("ack-stream-not-int")
    if type(bye) is not bool:
        raise DecodeError("ack-bye-not-bool")
    return msg, SubscriberAck(prefixes, epoch, stream, acked, bye, history)
