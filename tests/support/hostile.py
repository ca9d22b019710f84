"""A hostile peer for shoal's sockets: raw pyzmq sending random and mutated frames.

What it is for: ``tests/patterns/test_hostile_peer.py`` sets one of these against each shoal
socket type while legitimate shoal peers talk through the same socket, then checks
that nothing crashed, nothing legitimate was lost, and that every hostile message was
counted as malformed, exactly.

Exactness rests on ``Garbage``: it draws candidate messages (random bytes, and valid
frames cut, bit-flipped, extended, given another kind, a huge declared length, a body
of the wrong msgpack type, deep nesting or very long strings, in the wrong number of
frames) and asks an *oracle* (``classify``) what the receiving resource will do with
each. The oracle mirrors the receiver's documented rules; a candidate the receiver
would accept as valid is never sent, so every message sent must be counted once,
under the reason the oracle names.

Rules kept here: every socket talks to 127.0.0.1 only (the callers pass endpoints
bound on loopback, or bind ``tcp://127.0.0.1:*``); every loop is bounded in time and
in count, and every blocking call has a timeout, so a runner always returns. The
runners are blocking and meant for ``trio.to_thread.run_sync``: each owns the sockets
it is handed (and the context), and closes them with a linger long enough for what
it counted as sent to leave.
"""

from __future__ import annotations

import random
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from shoal._core import (
    Kind,
    VersionMismatch,
    decode,
    decode_control,
    encode,
)
from shoal.errors import DecodeError

__all__ = [
    "HOSTILE_SENDER",
    "VERSION_MISMATCH",
    "Classify",
    "Garbage",
    "Tally",
    "answer_requests",
    "candidate",
    "control_reason",
    "envelope_reason",
    "flood",
    "flood_peers",
    "frame_by_frame_reason",
    "open_flooders",
    "publisher_ack_reason",
    "pusher_ack_reason",
    "random_value",
    "work_as_puller",
]

HOSTILE_SENDER = b"hostile-peer-id!"
VERSION_MISMATCH = "version-mismatch"
"""The oracle's label for control frames a node counts as another protocol version."""

Reasons = str | tuple[str, ...]
Classify = Callable[[list[bytes]], Reasons | None]
"""What the receiver does with a message (its frames, as the hostile peer sends them):
the reason it counts it under as malformed, or None if it accepts it. A receiver that
reads each frame as a message of its own counts a multi-frame message once per
frame: a tuple of reasons."""

_LINGER_MS = 2000
_SEND_TIMEOUT_MS = 200
_MSGPACK_BOMBS = (b"\xdb", b"\xc6", b"\xdd", b"\xdf", b"\xc9")  # str32 bin32 arr32 map32 ext32


# -- oracles -------------------------------------------------------------------------------


def envelope_reason(frames: list[bytes], kinds: Sequence[Kind]) -> str | None:
    """A receiver taking one message of ``kinds`` (``MalformedCounter.check_frame``):
    one frame, or a first frame announcing a split body and that body; any other
    frame count is a ``frame-count``."""
    try:
        msg = decode(frames[0])
    except DecodeError as exc:
        if exc.reason != "frame-count" or len(frames) == 1:
            return exc.reason if len(frames) == 1 else "frame-count"
        try:
            msg = decode(frames[0], frames[1:])
        except DecodeError as exc2:
            return exc2.reason
    else:
        if len(frames) != 1:
            return "frame-count"
    return None if msg.kind in kinds else "unexpected-kind"


def frame_by_frame_reason(frames: list[bytes], kinds: Sequence[Kind]) -> Reasons | None:
    """A receiver of one-frame messages that reads plain frames (puller, subscriber):
    each frame of a multi-frame message is judged as a message of its own, except
    that a frame announcing a split body takes the frames after it as that body.
    None if any would be delivered (the hostile peer then does not send it)."""
    reasons = []
    for i in range(len(frames)):
        split = False
        try:
            decode(frames[i])
        except DecodeError as exc:
            split = exc.reason == "frame-count" and i + 1 < len(frames)
        reason = envelope_reason(frames[i:] if split else [frames[i]], kinds)
        if reason is None:
            return None
        reasons.append(reason)
        if split:
            break
    return reasons[0] if len(reasons) == 1 else tuple(reasons)


def pusher_ack_reason(frames: list[bytes]) -> str | None:
    """A reliable pusher reading acknowledgements: an ACK envelope whose body unpacks
    into ``received, done``, two lists of ints (what the pusher checks)."""
    if len(frames) != 1:
        return "malformed"
    try:
        msg = decode(frames[0])
        received, done = msg.body
        if (msg.kind is not Kind.ACK or type(received) is not list or type(done) is not list
                or not all(type(s) is int for s in (*received, *done))):
            return "malformed"
    except Exception:
        return "malformed"
    return None


def publisher_ack_reason(frames: list[bytes]) -> str | None:
    """A reliable publisher reading acknowledgements: an ACK envelope whose body
    unpacks into ``prefixes, epoch, stream, acked, bye`` with the types it checks."""
    if len(frames) != 1:
        return "malformed"
    try:
        msg = decode(frames[0])
        prefixes, epoch, stream, acked, _bye = msg.body
        if (msg.kind is not Kind.ACK or not isinstance(prefixes, list) or len(prefixes) > 256
                or not all(isinstance(p, str) for p in prefixes) or type(acked) is not int
                or type(epoch) is not int or type(stream) is not int):
            return "malformed"
    except Exception:
        return "malformed"
    return None


def control_reason(frames: list[bytes]) -> str | None:
    """A node's control port: one frame that ``decode_control`` takes. Valid States
    and Byes are None (never sent: a State names addresses a node would connect to)."""
    if len(frames) != 1:
        return "frame-count"
    try:
        decode_control(frames[0])
    except VersionMismatch:
        return VERSION_MISMATCH
    except DecodeError as exc:
        return exc.reason
    return None


# -- the generator -------------------------------------------------------------------------


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value: scalars at the edges of their ranges, long strings, nested
    lists and maps (keys of any hashable msgpack type)."""
    roll = rng.randrange(14 if depth < 3 else 9)
    if roll == 0:
        return None
    if roll == 1:
        return rng.random() < 0.5
    if roll == 2:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**32, -(2**31)])
    if roll == 3:
        return rng.randrange(-1000, 1000)
    if roll == 4:
        return rng.choice([0.5, -0.0, float("inf"), float("nan"), 1e308])
    if roll == 5:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(12)))
    if roll == 6:
        return rng.randbytes(rng.randrange(24))
    if roll == 7:
        return "x" * rng.choice([300, 70_000])
    if roll == 8:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(8)))
    if roll in (9, 10):
        return [random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 2, 5, 5, 9]))]
    if roll == 11:
        keys = [rng.randrange(-5, 5), "k", b"k", None, True, 1.5]
        return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    nested: Any = random_value(rng, 3)
    for _ in range(rng.choice([50, 500])):
        nested = [nested]
    return nested


def _packed(rng: random.Random) -> bytes:
    """A msgpack document that is either a random value or a hostile length/nesting."""
    roll = rng.randrange(8)
    if roll == 0:
        return rng.choice(_MSGPACK_BOMBS) + struct.pack(">I", rng.choice([2**32 - 1, 2**31,
                                                                            1 << 20]))
    if roll == 1:
        return b"\x91" * rng.choice([1023, 1024, 5000]) + b"\xc0"
    return bytes(msgpack.packb(random_value(rng), use_bin_type=True))


def _flip(rng: random.Random, frame: bytes) -> bytes:
    if not frame:
        return b"\x00"
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _envelope_mutant(rng: random.Random, frame: bytes) -> list[bytes]:
    """A mutated copy of a valid envelope, as one message (list of frames)."""
    off = frame.index(b"\0") + 1
    head = frame[: off + 52]
    roll = rng.randrange(10)
    if roll == 0:  # another kind, version or flags byte
        at = off + rng.randrange(3)
        return [frame[:at] + bytes([rng.randrange(256)]) + frame[at + 1:]]
    if roll == 1:  # a declared user-headers length far past the end
        flagged = head[: off + 2] + bytes([head[off + 2] | 0x02]) + head[off + 3:]
        declared = rng.choice([2**32 - 1, 65 * 1024, len(frame) + 1, rng.randrange(2**32)])
        return [flagged + struct.pack("<I", declared) + frame[off + 52:]]
    if roll == 2:  # user headers of the wrong type or length
        flagged = head[: off + 2] + bytes([0x02]) + head[off + 3:]
        blob = _packed(rng)
        return [flagged + struct.pack("<I", len(blob)) + blob + _packed(rng)]
    if roll == 3:  # a topic with no delimiter, or invalid UTF-8 in it
        return [rng.choice([b"t" * 2000, b"\xff\xfe"]) + frame[off - 1:]]
    # a body of another type (msgpack-encoded, not raw): type confusion, bombs, nesting
    plain = head[: off + 2] + b"\x00" + head[off + 3:]
    return [plain + _packed(rng)]


def _control_mutant(rng: random.Random, frame: bytes) -> list[bytes]:
    """A control frame with fields of the wrong type, a bomb, or another version."""
    fields: list[Any] = list(msgpack.unpackb(frame))
    roll = rng.randrange(4)
    if roll == 0:
        fields[0] = rng.choice([0, 2, 255, "1", 1.0, None, [1]])  # another version
    elif roll == 1:
        i = rng.randrange(1, len(fields))
        fields[i] = random_value(rng)
    elif roll == 2:
        fields = fields[: rng.randrange(len(fields))] + [random_value(rng)] * rng.randrange(3)
    else:  # splice a hostile msgpack document in place of one field
        i = rng.randrange(1, len(fields))
        parts = [bytes(msgpack.packb(f)) for f in fields]
        parts[i] = _packed(rng)
        return [bytes([0x90 | len(parts)]) + b"".join(parts)]
    return [bytes(msgpack.packb(fields, use_bin_type=True))]


def candidate(rng: random.Random, templates: Sequence[bytes], *, envelope: bool) -> list[bytes]:
    """One hostile message: a list of frames."""
    frame = rng.choice(templates)
    roll = rng.randrange(12)
    if roll == 0:
        return [rng.randbytes(rng.randrange(300))]
    if roll == 1:
        return [b""]
    if roll == 2:  # the wrong number of frames
        return rng.choice([[frame, frame], [b"", frame], [frame, b""],
                           [frame] * rng.randint(3, 6)])
    if roll == 3:
        return [frame[: rng.randrange(len(frame))]]
    if roll == 4:
        return [_flip(rng, frame)]
    if roll == 5:
        return [frame + rng.randbytes(rng.randint(1, 32))]
    if roll == 6 and rng.random() < 0.05:  # now and then a long one: 256 KiB of noise
        return [rng.randbytes(256 * 1024)]
    if envelope:
        return _envelope_mutant(rng, frame)
    return _control_mutant(rng, frame)


@dataclass
class Tally:
    """What a hostile peer sent, and what it chose not to send."""

    sent: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    """Sent messages by the reason the receiver must count them under."""
    skipped: int = 0
    """Candidates the receiver would accept as valid: not sent."""
    unsafe: int = 0
    """Candidates the oracle itself could not classify (an exception other than
    ``DecodeError``): not sent. See the xfail tests of the decoders."""
    timeouts: int = 0
    """Sends that timed out (not counted as sent)."""
    answered: int = 0
    """Legitimate requests or items the peer answered properly."""
    handled: dict[int, Any] = field(default_factory=dict)
    """Work items it processed: seq -> body."""

    def count(self, reason: Reasons) -> None:
        for one in (reason,) if isinstance(reason, str) else reason:
            self.sent += 1
            self.reasons[one] += 1


class Garbage:
    """An endless, seeded supply of messages that ``classify`` says are malformed.

    ``prepare(n)`` makes the first ``n`` ahead of time: generating and classifying
    them holds the GIL, which would slow the trio thread down during the flood."""

    def __init__(self, seed: int, templates: Sequence[bytes], classify: Classify, *,
                 envelope: bool = True, prepare: int = 0) -> None:
        self._rng = random.Random(seed)
        self._templates = list(templates)
        self._classify = classify
        self._envelope = envelope
        self.tally = Tally()
        self._ready: deque[tuple[list[bytes], Reasons]] = deque()
        self._ready.extend(self._make() for _ in range(prepare))

    def __iter__(self) -> Iterator[tuple[list[bytes], Reasons]]:
        return self

    def __next__(self) -> tuple[list[bytes], Reasons]:
        if self._ready:
            return self._ready.popleft()
        return self._make()

    def _make(self) -> tuple[list[bytes], Reasons]:
        for _ in range(10_000):
            frames = candidate(self._rng, self._templates, envelope=self._envelope)
            try:
                reason = self._classify(frames)
            except Exception:
                self.tally.unsafe += 1
                continue
            if reason is None:
                self.tally.skipped += 1
                continue
            return frames, reason
        raise AssertionError("the oracle accepts everything: check the templates")


# -- runners (blocking: run them in a thread) ---------------------------------------------------


def _send(sock: zmq.Socket[bytes], frames: list[bytes]) -> bool:
    try:
        sock.send_multipart(frames, copy=False)
    except zmq.Again:
        return False
    return True


def _close_all(socks: Sequence[zmq.Socket[bytes]], ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    for s in socks:
        s.close(linger=_LINGER_MS)
    ctx.term()  # waits (at most the linger) until what was sent has left


def open_flooders(ctx: zmq.Context[zmq.Socket[bytes]], socket_type: int, endpoint: str, *,
                  count: int, seed: int) -> list[zmq.Socket[bytes]]:
    """``count`` sockets connected to ``endpoint`` (loopback), each DEALER under a
    random routing id of its own."""
    rng = random.Random(seed)
    socks = []
    for _ in range(count):
        s = ctx.socket(socket_type)
        s.setsockopt(zmq.SNDTIMEO, _SEND_TIMEOUT_MS)
        s.setsockopt(zmq.SNDHWM, 1000)
        if socket_type == zmq.DEALER:
            # any bytes but a leading zero (reserved by libzmq), up to 255 of them
            s.setsockopt(zmq.ROUTING_ID, bytes([rng.randrange(1, 256)])
                         + rng.randbytes(rng.randrange(255)))
        s.connect(endpoint)
        socks.append(s)
    return socks


def flood(ctx: zmq.Context[zmq.Socket[bytes]], socks: Sequence[zmq.Socket[bytes]],
          garbage: Garbage, *, duration: float, limit: int, stop: threading.Event,
          wait_for_subscription: bool = False) -> Tally:
    """Send garbage round-robin over ``socks`` for ``duration`` seconds (or ``limit``
    messages, or until ``stop``), then close them. ``wait_for_subscription``: the
    sockets are bound XPUBs; flood once a subscriber's subscription to everything
    (``b"\\x01"``) has arrived on each."""
    tally = garbage.tally
    try:
        deadline = time.monotonic() + duration
        if wait_for_subscription:
            for s in socks:
                s.setsockopt(zmq.RCVTIMEO, 5000)
                while s.recv() != b"\x01":
                    pass
        while tally.sent < limit and not stop.is_set() and time.monotonic() < deadline:
            for s in socks:
                frames, reason = next(garbage)
                if _send(s, frames):
                    tally.count(reason)
                else:
                    tally.timeouts += 1
            if not tally.sent % 64:
                time.sleep(0.005)  # spread the flood over the whole duration
    finally:
        _close_all(socks, ctx)
    return tally


def flood_peers(ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes],
                garbage: Garbage, *, duration: float, limit: int,
                stop: threading.Event) -> Tally:
    """A bound ROUTER (MANDATORY) that learns the routing ids of whoever connects and
    talks to it (shoal's connecting ROUTERs introduce themselves), and floods them."""
    tally = garbage.tally
    peers: list[bytes] = []
    try:
        deadline = time.monotonic() + duration
        while not stop.is_set() and time.monotonic() < deadline:
            while sock.poll(0 if peers else 10):
                peer = sock.recv_multipart()[0]
                if peer not in peers:
                    peers.append(peer)
            if tally.sent >= limit or not peers:
                continue
            for peer in peers:
                frames, reason = next(garbage)
                try:
                    sent = _send(sock, [peer, *frames])
                except zmq.ZMQError:  # EHOSTUNREACH: not connected (any more)
                    sent = False
                if sent:
                    tally.count(reason)
                else:
                    tally.timeouts += 1
            if not tally.sent % 64:
                time.sleep(0.005)
    finally:
        _close_all([sock], ctx)
    return tally


def answer_requests(ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes],
                    garbage: Garbage, *, duration: float, stop: threading.Event,
                    most: int = 40) -> Tally:
    """A bound ROUTER acting as a replier: every request gets up to ``most`` garbage
    messages, then a proper reply (body + 1). All garbage goes before a reply on the
    same connection, so a requester that got every reply has read all of it."""
    tally = garbage.tally
    rng = random.Random(7)
    try:
        deadline = time.monotonic() + duration
        while not stop.is_set() and time.monotonic() < deadline:
            if not sock.poll(10):
                continue
            peer, frame = sock.recv_multipart()
            req = decode(frame)
            for _ in range(rng.randrange(most + 1)):
                frames, reason = next(garbage)
                if _send(sock, [peer, *frames]):
                    tally.count(reason)
            reply = encode(Kind.REPLY, b"", req.body + 1, sender=HOSTILE_SENDER, epoch=1,
                           stream=1, seq=tally.answered, timestamp_ns=time.time_ns(),
                           correlation=req.correlation)
            if not _send(sock, [peer, reply]):
                raise AssertionError("a proper reply timed out")
            tally.answered += 1
    finally:
        _close_all([sock], ctx)
    return tally


def work_as_puller(ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes],
                   garbage: Garbage, *, duration: float, stop: threading.Event,
                   limit: int) -> Tally:
    """A bound ROUTER acting as a reliable puller that does its work (every item is
    acknowledged as received and done) and floods its pusher with garbage between."""
    tally = garbage.tally
    pushers: list[bytes] = []
    try:
        deadline = time.monotonic() + duration
        while not stop.is_set() and time.monotonic() < deadline:
            while sock.poll(0 if pushers else 10):
                peer, frame = sock.recv_multipart()
                if peer not in pushers:
                    pushers.append(peer)
                item = decode(frame)
                tally.handled.setdefault(item.seq, item.body)
                ack = encode(Kind.ACK, b"", [[item.seq], [item.seq]], sender=HOSTILE_SENDER,
                             epoch=1, stream=1, seq=tally.answered,
                             timestamp_ns=time.time_ns())
                if not _send(sock, [peer, ack]):
                    raise AssertionError("an acknowledgement timed out")
                tally.answered += 1
            for peer in pushers:
                if tally.sent >= limit:
                    break
                frames, reason = next(garbage)
                if _send(sock, [peer, *frames]):
                    tally.count(reason)
            if not tally.sent % 32:
                time.sleep(0.002)
    finally:
        _close_all([sock], ctx)
    return tally
