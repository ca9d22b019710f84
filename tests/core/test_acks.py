"""The reliable patterns' wire rules in the core (sans-I/O): the acknowledgement
codecs, when acknowledgements are due, the frame field the senders rewrite, and the
route codec. Plain synchronous tests; the simulations in ``test_reliable_core.py`` and
``test_reliable_pubsub.py`` drive the same classes over lossy links."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from shoal._core import (
    ACK_BATCH,
    ACK_DELAY,
    HEADER,
    MAX_PREFIXES,
    START,
    Kind,
    PullAck,
    PullReceiver,
    Route,
    StreamEncoder,
    SubscriberAck,
    SubscriberReceiver,
    ack_tag,
    correlation_at,
    decode,
    decode_pull_ack,
    decode_subscriber_ack,
    encode_topic,
    local_route,
    with_correlation,
)
from shoal._core._acks import ACK_REASONS
from shoal.errors import DecodeError

SENDER = bytes(range(16))
ENC = StreamEncoder(sender=SENDER, epoch=7, stream=3)


def ack_frame(body: Any, kind: Kind = Kind.ACK, correlation: int = 0) -> bytes:
    return ENC.encode(kind, b"\0", body, 5, 1000, correlation)


# -- the codecs ------------------------------------------------------------------------------


def test_a_pull_ack_round_trips_with_its_tag() -> None:
    frame = PullAck([1, 2], [2], ack_tag(9, 4)).encode(ENC, 11, 1234)
    msg, ack = decode_pull_ack(frame)
    assert ack == PullAck([1, 2], [2], (9 << 32) | 4)
    assert (msg.kind, msg.seq, msg.epoch, msg.stream, msg.topic) == (Kind.ACK, 11, 7, 3, "")
    assert msg.body == [[1, 2], [2]]  # the documented array: [received, done]


def test_a_subscriber_ack_round_trips() -> None:
    sent = SubscriberAck(["a/", ""], 2, 5, 40, bye=True)
    msg, ack = decode_subscriber_ack(sent.encode(ENC, 3, 99))
    assert ack == SubscriberAck(["a/", ""], 2, 5, 40, True)
    assert msg.body == [["a/", ""], 2, 5, 40, True]  # [prefixes, epoch, stream, acked, bye]
    assert SubscriberAck(["x"]) == SubscriberAck(["x"], -1, -1, -1, False)


def test_a_subscriber_ack_asking_for_history_carries_the_depth_sixth() -> None:
    sent = SubscriberAck(["a/"], history=5)
    msg, ack = decode_subscriber_ack(sent.encode(ENC, 3, 99))
    assert (ack, msg.body) == (sent, [["a/"], -1, -1, -1, False, 5])
    # history=0 is the five-element array peers that know no history read
    assert decode_subscriber_ack(SubscriberAck(["a/"]).encode(ENC, 4, 99))[0].body == [
        ["a/"], -1, -1, -1, False]


PULL_CASES = [
    ([[1], [2]], Kind.PUSH, "not-an-ack"),
    ({"received": [1]}, Kind.ACK, "ack-not-an-array"),
    ([[1], [2], [3]], Kind.ACK, "ack-not-an-array"),
    ("ab", Kind.ACK, "ack-not-an-array"),
    ([[1], 2], Kind.ACK, "ack-seqs-not-arrays"),
    ([[1, "2"], []], Kind.ACK, "ack-seq-not-int"),
    ([[], [True]], Kind.ACK, "ack-seq-not-int"),
    ([[], [1.0]], Kind.ACK, "ack-seq-not-int"),
]
SUBSCRIBER_CASES = [
    ([["a"], 1, 2, 3], "ack-not-an-array"),
    (["a", 1, 2, 3, False], "ack-prefixes"),
    ([["a", 1], 1, 2, 3, False], "ack-prefixes"),
    ([["p"] * (MAX_PREFIXES + 1), 1, 2, 3, False], "ack-prefixes"),
    ([["a"], "1", 2, 3, False], "ack-stream-not-int"),
    ([["a"], 1, None, 3, False], "ack-stream-not-int"),
    ([["a"], 1, 2, False, False], "ack-stream-not-int"),
    ([["a"], 1, 2, 3, 0], "ack-bye-not-bool"),
    ([["a"], 1, 2, 3, False, -1], "ack-history"),
    ([["a"], 1, 2, 3, False, 2**32], "ack-history"),
    ([["a"], 1, 2, 3, False, True], "ack-history"),
    ([["a"], 1, 2, 3, False, 1, 1], "ack-not-an-array"),
]


@pytest.mark.parametrize(("body", "kind", "reason"), PULL_CASES)
def test_a_malformed_pull_ack_is_one_decode_error_naming_what(
        body: Any, kind: Kind, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_pull_ack(ack_frame(body, kind))
    assert caught.value.reason == reason


@pytest.mark.parametrize(("body", "reason"), SUBSCRIBER_CASES)
def test_a_malformed_subscriber_ack_is_one_decode_error_naming_what(
        body: Any, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_subscriber_ack(ack_frame(body))
    assert caught.value.reason == reason


def test_the_ack_decoders_raise_only_decode_error_on_any_bytes() -> None:
    """Truncations and bit flips of valid acknowledgements: a value or DecodeError."""
    frames = [PullAck([1, 2, 3], [1], 5).encode(ENC, 1, 2),
              SubscriberAck(["a"], 1, 2, 3).encode(ENC, 1, 2)]
    outcomes: set[str] = set()
    for frame in frames:
        for cut in range(len(frame)):
            for data in (frame[:cut], frame[:cut] + bytes([frame[cut] ^ 0xFF]) + frame[cut + 1:]):
                for decoder in (decode_pull_ack, decode_subscriber_ack):
                    try:
                        decoder(data)
                        outcomes.add("ok")
                    except DecodeError as exc:
                        outcomes.add(exc.reason)
    assert "ok" in outcomes
    assert outcomes & ACK_REASONS  # the body checks were reached, not only the envelope's


def test_every_documented_ack_reason_is_raised_by_a_case_above() -> None:
    raised = {c[-1] for c in PULL_CASES} | {c[-1] for c in SUBSCRIBER_CASES}
    assert raised == ACK_REASONS


# -- the frame field the reliable senders rewrite ------------------------------------------------


@pytest.mark.parametrize("topic", ["", "a", "sensors/temperature/ünï"])
def test_the_correlation_field_sits_where_the_header_layout_puts_it(topic: str) -> None:
    """The offset is derived here from HEADER's format (every field before the last
    u64), not from ``correlation_at``'s own arithmetic."""
    fields = HEADER.format.lstrip("<")
    assert fields.endswith("Q")
    before = struct.calcsize("<" + fields[:-1])
    topic_z = encode_topic(topic) + b"\0"
    frame = ENC.encode(Kind.PUBLISH, topic_z, b"body", 1, 2, 0x1122334455667788)
    at = correlation_at(topic_z)
    assert at == len(topic_z) + before
    assert frame[at:at + 8] == struct.pack("<Q", 0x1122334455667788)
    patched = with_correlation(frame, at, 42)
    assert len(patched) == len(frame)
    a, b = decode(frame), decode(patched)
    assert b.correlation == 42
    assert b._replace(correlation=a.correlation) == a


# -- when acknowledgements are due: the puller --------------------------------------------------


def test_a_puller_owes_received_then_done_within_the_delay() -> None:
    r = PullReceiver()
    assert r.get_timer() is None
    assert r.accept("A", "s", 1, 2, 0, 0)
    assert r.get_timer() == ACK_DELAY  # nothing flushed yet: due ACK_DELAY after 0
    assert r.acks_to_send(1.0, done=False) == [("A", PullAck([0], [], ack_tag(1, 2)))]
    assert r.get_timer() is None
    assert r.finish("s", 1, 2, 0)
    assert not r.finish("s", 1, 2, 0)  # done once
    assert r.get_timer() == 1.0 + ACK_DELAY
    assert r.acks_to_send(1.5, done=False) == []  # done waits for a done flush
    assert r.acks_to_send(1.5) == [("A", PullAck([], [0], ack_tag(1, 2)))]
    assert (r.held, r.pending(), r.get_timer()) == (0, False, None)


def test_a_copy_is_acknowledged_received_while_held_and_done_once_done() -> None:
    r = PullReceiver()
    assert r.accept("A", "s", 1, 2, 7, 0)
    assert not r.accept("A", "s", 1, 2, 7, 0)  # a retransmission: held
    assert r.acks_to_send(0.0) == [("A", PullAck([7, 7], [], ack_tag(1, 2)))]
    r.finish("s", 1, 2, 7)
    r.acks_to_send(0.0)
    assert not r.accept("A", "s", 1, 2, 7, 0)  # a probe: done before
    assert r.acks_to_send(0.0) == [("A", PullAck([7], [7], ack_tag(1, 2)))]
    assert r.dedup.duplicates == 2


def test_a_batch_of_arrivals_or_of_done_items_is_due_at_once() -> None:
    r = PullReceiver()
    for seq in range(ACK_BATCH):
        assert not r.received_due
        r.accept("A", "s", 1, 2, seq, 0)
    assert r.received_due
    r.acks_to_send(0.0, done=False)
    for seq in range(ACK_BATCH):
        assert not r.done_due
        r.finish("s", 1, 2, seq)
    assert r.done_due


def test_what_a_route_owed_a_previous_pusher_stream_goes_first_and_apart() -> None:
    r = PullReceiver()
    r.accept("A", "s", 1, 2, 0, 0)
    r.accept("A", "t", 9, 2, 0, 0)  # a pusher restarted behind the same route
    assert r.acks_to_send(0.0, done=False) == [("A", PullAck([0], [], ack_tag(1, 2))),
                                               ("A", PullAck([0], [], ack_tag(9, 2)))]


def test_a_refused_ack_keeps_its_done_part_for_the_same_stream_only() -> None:
    r = PullReceiver()
    r.accept("A", "s", 1, 2, 0, 0)
    r.finish("s", 1, 2, 0)
    ((route, ack),) = r.acks_to_send(0.0)
    r.refused(route, ack)
    assert r.pending_done == 1
    assert r.acks_to_send(0.0) == [("A", PullAck([], [0], ack_tag(1, 2)))]
    r.accept("A", "s", 5, 6, 0, 0)
    r.refused("A", ack)  # the route speaks another stream now: the pusher probes
    assert r.acks_to_send(0.0) == [("A", PullAck([0], [], ack_tag(5, 6)))]


# -- when acknowledgements are due: the subscriber ----------------------------------------------


def test_a_subscriber_owes_each_route_it_heard_where_its_stream_stands() -> None:
    r = SubscriberReceiver()
    stream = ("pub", 3, 4)
    assert r.accept("A", stream, 0, START) == "deliver"
    assert r.get_timer() == ACK_DELAY
    assert r.routes_to_ack(0.5) == {"A"}
    assert r.get_timer() is None
    assert r.ack("A", ["x"]) == SubscriberAck(["x"], 3, 4, 0)
    assert r.ack("B", ["x"], bye=True) == SubscriberAck(["x"], bye=True)
    for seq in range(1, ACK_BATCH + 1):
        assert not r.due
        r.accept("A", stream, seq, seq - 1)
    assert r.due
    r.forget("A")
    assert r.routes_to_ack(1.0) == set()
    assert r.ack("A", []) == SubscriberAck([])


# -- routes ------------------------------------------------------------------------------------


def test_a_route_round_trips_and_names_its_peer() -> None:
    route = Route("ab" * 16, 0xDEADBEEF, 5555)
    raw = route.encode()
    assert raw[:1] == b"r"
    assert raw[1:17] == bytes.fromhex("ab" * 16)
    assert Route.decode(raw) == route
    for bad in (b"", raw[:-1], b"x" + raw[1:], raw + b"\0"):
        with pytest.raises(DecodeError) as caught:
            Route.decode(bad)
        assert caught.value.reason == "not-a-route"
    assert local_route(b"p", 2) == b"p\0\0\0\x02"


def test_msgpack_arrays_are_what_the_ack_bodies_are() -> None:
    """The body encodes as a plain msgpack array (what a third-party peer sends)."""
    frame = PullAck([1], [], 0).encode(ENC, 0, 0)
    body = frame[1 + HEADER.size:]
    assert msgpack.unpackb(body) == [[1], []]
