"""Fuzzing every decoder that reads bytes from the wire, from discovery or from disk.

What ``test_envelope.py``, ``test_control.py`` and ``test_garbage_input.py`` already
cover (random bytes, byte-level mutations, a catalogue of refusals) is not repeated.
Here: structured hostility, i.e. valid frames carrying msgpack of the wrong type,
declared lengths far past the end, nesting around msgpack's depth limit and very
long strings, in every place a decoder reads them:

* the envelope: user headers and bodies of any msgpack type (checked against msgpack
  itself), declared lengths (never an allocation the input does not justify), the
  refusal reasons (always one of the documented labels), one ``StreamEncoder`` for a
  whole stream (round trip);
* the control plane: a hostile msgpack document in every field;
* the reliable protocol frames, through the real resources (over sockets that connect
  nowhere): the pusher's and the publisher's acknowledgements, the floors the reliable
  puller reads and the chain links (``prev``) the reliable subscriber reads. Their
  per-message handlers (``_on_ack``, ``_accept``) are called directly: the very code
  the socket reader runs on each message, with the effect of each one observable;
* discovery: mDNS service info (raw TXT bytes, addresses, port) turned into a control
  endpoint, our own advertisement round-tripped, static endpoint strings;
* the outbox file a reliable pusher reopens.

The rule everywhere: a valid object, or the documented error type; never another
exception, never a hang (hypothesis deadlines), never a crash of the resource. Inputs
that once broke it have tests of their own.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import struct
import tempfile
import tracemalloc
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, cast

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo

import shoal
from shoal._core import (
    HEADER,
    RESUME,
    START,
    VERSION,
    Bye,
    Kind,
    Message,
    State,
    StreamEncoder,
    choose_address,
    decode,
    decode_control,
    encode,
    encode_topic,
)
from shoal._core._envelope import FLAG_HEADERS, FLAG_RAW, MAX_HEADERS
from shoal.discovery import MDNS, Static
from shoal.discovery._contract import Advertisement, Found, Lost
from shoal.discovery._interfaces import Network
from shoal.errors import DecodeError, DeliveryFailed, LocalProtocolError
from shoal.node._discovered import pick_endpoint
from shoal.patterns import ReliablePublisher, ReliablePuller, ReliablePusher
from shoal.patterns._reliable_subscriber import ReliableSubscriber
from support.hostile import candidate

U32 = 2**32 - 1
U64 = 2**64 - 1
SENDER = bytes(range(16))
NOWHERE = "tcp://127.0.0.1:9"
"""A loopback endpoint nobody listens on: resources that must connect somewhere."""

REASONS = frozenset({
    "no-topic-delimiter", "topic-not-utf8", "truncated-header", "unsupported-version",
    "unknown-kind", "unknown-flags", "truncated-headers", "bad-headers-length",
    "headers-not-a-map", "headers-key-not-str", "malformed", "frame-count",
})
"""Every ``DecodeError.reason`` the envelope decoder documents (stable labels)."""

CONTROL_REASONS = frozenset({"too-large", "malformed", "unsupported-version",
                             "unknown-control", "bad-node-id", "bad-field"})

# -- strategies: hostile msgpack ----------------------------------------------------------------

hashable_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), U64) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8)
)
scalars = (
    hashable_scalars
    | st.text(min_size=300, max_size=300)
    | st.sampled_from([100, 70_000]).map(lambda n: "é" * (n // 2))  # past MAX_HEADERS
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(hashable_scalars, inner,
                                                                max_size=4),
    max_leaves=20,
)
BOMBS = (b"\xd9", b"\xda", b"\xdb", b"\xc4", b"\xc5", b"\xc6", b"\xdc", b"\xdd", b"\xde",
         b"\xdf", b"\xc7", b"\xc8", b"\xc9")
"""msgpack types with a length prefix: str8/16/32, bin8/16/32, array16/32, map16/32,
ext8/16/32."""


def bomb(prefix: bytes, declared: int) -> bytes:
    """A msgpack header declaring ``declared`` (clipped to what its width holds)."""
    width = {b"\xd9": 1, b"\xc4": 1, b"\xc7": 1, b"\xda": 2, b"\xc5": 2, b"\xdc": 2,
             b"\xde": 2, b"\xc8": 2}.get(prefix, 4)
    n = min(declared, (1 << (8 * width)) - 1)
    return prefix + n.to_bytes(width, "big") + (b"\x01" if prefix in (b"\xc7", b"\xc8",
                                                                       b"\xc9") else b"")


bombs = st.builds(bomb, st.sampled_from(BOMBS), st.integers(0, U32))
nesting = st.integers(0, 1100).map(lambda depth: b"\x91" * depth + b"\xc0")
docs = st.one_of(
    values.map(lambda v: bytes(msgpack.packb(v))),
    bombs,
    nesting,
    st.binary(max_size=40),
)
"""One msgpack document, valid or hostile."""


def header(kind: Kind = Kind.PUSH, flags: int = 0, topic: bytes = b"t") -> bytes:
    return topic + b"\0" + HEADER.pack(VERSION, kind, flags, SENDER, 1, 2, 3, 4, 5)


def unpacked(doc: bytes | memoryview) -> tuple[bool, Any]:
    """What msgpack makes of ``doc`` with the envelope's settings: (ok, value)."""
    try:
        return True, msgpack.unpackb(doc, raw=False, strict_map_key=False)
    except Exception:
        return False, None


def attempt(decoder: Any, frame: bytes) -> tuple[Any, str | None]:
    """``(decoded, None)``, or ``(None, reason)`` for a ``DecodeError``."""
    try:
        return decoder(frame), None
    except DecodeError as exc:
        return None, exc.reason


def same(a: Any, b: Any) -> bool:
    """Equal as msgpack sees it (NaN included)."""
    return bytes(msgpack.packb(a)) == bytes(msgpack.packb(b))


# -- the envelope -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=2000)
@given(docs, docs, st.booleans())
def test_user_headers_of_any_msgpack_type_decode_to_a_str_keyed_map_or_refuse(
    blob: bytes, body: bytes, raw: bool
) -> None:
    frame = (header(flags=FLAG_HEADERS | (FLAG_RAW if raw else 0))
             + struct.pack("<I", len(blob)) + blob + body)
    ok, expected = unpacked(blob)
    msg, reason = attempt(decode, frame)
    if reason is not None:
        assert reason in {"headers-not-a-map", "headers-key-not-str", "malformed",
                          "bad-headers-length"}
        assert (reason == "bad-headers-length") == (len(blob) > MAX_HEADERS)
        if reason in {"headers-not-a-map", "headers-key-not-str"}:
            assert ok
            assert isinstance(expected, dict) == (reason == "headers-key-not-str")
        return
    assert ok
    assert isinstance(expected, dict)
    assert all(type(k) is str for k in msg.headers)
    assert same(dict(msg.headers), expected)
    if raw:
        assert msg.body == body


@settings(max_examples=300, deadline=2000)
@given(docs)
def test_a_body_decodes_to_exactly_what_msgpack_makes_of_it_or_is_malformed(body: bytes) -> None:
    """A differential check: the envelope adds nothing to and hides nothing from
    msgpack's verdict on the body (trailing bytes included)."""
    ok, expected = unpacked(body)
    msg, reason = attempt(decode, header() + body)
    assert reason == (None if ok else "malformed")
    if not ok:
        return
    assert same(msg.body, expected)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(BOMBS), st.integers(2**16, U32), st.sampled_from(["body", "headers"]),
       st.binary(max_size=64))
def test_a_declared_length_past_the_end_fails_without_allocating_it(
    prefix: bytes, declared: int, where: str, tail: bytes
) -> None:
    """A short frame claiming up to 4 GiB (in a msgpack length or the headers length
    field) is refused, and decoding it allocates in proportion to the frame only."""
    if where == "body":
        frame = header() + bomb(prefix, declared) + tail
    else:
        frame = (header(flags=FLAG_HEADERS) + struct.pack("<I", declared)
                 + bomb(prefix, declared) + tail)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * len(frame) + 256 * 1024


@settings(max_examples=400, deadline=2000)
@given(st.randoms(use_true_random=False))
def test_every_refusal_names_one_of_the_documented_reasons(rng: Any) -> None:
    """The hostile peer's generator (tests/support/hostile.py) as a fuzz source: mutated
    envelopes of every kind, one frame at a time."""
    templates = [encode(kind, b"topic", body, sender=SENDER, epoch=1, stream=2, seq=3,
                        timestamp_ns=4, correlation=5, headers=headers)
                 for kind in Kind for body in ([[1, 2], [3]], b"raw")
                 for headers in (None, {"h": 1})]
    for frame in candidate(rng, templates, envelope=True):
        msg, reason = attempt(decode, frame)
        if reason is not None:
            assert reason in REASONS
        else:
            assert isinstance(msg, Message)
            assert isinstance(msg.kind, Kind)


topics = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
                 max_size=40)
small_values = st.recursive(
    hashable_scalars | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hashable_scalars, inner,
                                                                max_size=3),
    max_leaves=10,
)
entries = st.tuples(
    st.sampled_from(Kind), topics, small_values | st.binary(max_size=64),
    st.integers(0, U64), st.integers(0, U64), st.integers(0, U64),
    st.none() | st.dictionaries(st.text(max_size=8), small_values, max_size=3),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=16, max_size=16), st.integers(0, U32), st.integers(0, U32),
       st.lists(entries, max_size=12))
def test_one_stream_encoder_round_trips_a_whole_stream(
    sender: bytes, epoch: int, stream: int, messages: list[Any]
) -> None:
    """A sender keeps one encoder per stream (its prefixes cached per kind and
    flags): every frame it makes decodes to exactly what went in."""
    enc = StreamEncoder(sender=sender, epoch=epoch, stream=stream)
    for kind, topic, body, seq, ts, corr, headers in messages:
        frame = enc.encode(kind, encode_topic(topic) + b"\0", body, seq, ts, corr, headers)
        msg = decode(frame)
        assert (msg.topic, msg.kind, msg.sender, msg.epoch, msg.stream, msg.seq,
                msg.timestamp_ns, msg.correlation) == (topic, kind, sender.hex(), epoch,
                                                       stream, seq, ts, corr)
        assert same(msg.body, body) if not isinstance(body, bytes) else msg.body == body
        assert same(dict(msg.headers), headers or {})


def test_nesting_up_to_msgpacks_limit_decodes_and_beyond_it_is_malformed() -> None:
    """msgpack unpacks up to 1024 nested containers: a body that deep is a valid
    message (whoever prints it needs care), one level more is malformed."""
    deepest = header() + b"\x91" * 1024 + b"\xc0"
    body = decode(deepest).body
    depth = 0
    while isinstance(body, list):
        body, depth = body[0], depth + 1
    assert depth == 1024
    with pytest.raises(DecodeError, match="malformed"):
        decode(header() + b"\x91" * 1025 + b"\xc0")


# -- the control plane --------------------------------------------------------------------------


def state_fields() -> list[Any]:
    return [VERSION, "state", SENDER, 7, "node", ["127.0.0.1"], 7000, 1,
            [["jobs", "pull", 7001], ["news", "sub", 0]]]


def spliced(fields: list[Any], at: int, doc: bytes) -> bytes:
    """The control frame ``fields`` with field ``at`` replaced by the raw document."""
    parts = [bytes(msgpack.packb(f)) for f in fields]
    parts[at] = doc
    return bytes([0x90 | len(parts)]) + b"".join(parts)


def control_decodes_or_refuses(frame: bytes) -> None:
    msg, reason = attempt(decode_control, frame)
    if reason is not None:
        assert reason in CONTROL_REASONS
        return
    assert isinstance(msg, State | Bye)
    assert len(msg.node_id) == 16


KIND_DEPTH_LIMIT = 500
"""Nesting at the kind position is fuzzed below this depth here; deeper, see
test_a_control_field_nested_to_any_depth_is_a_decode_error (a known bug)."""


@settings(max_examples=300, deadline=2000)
@given(st.sampled_from([state_fields(), [VERSION, "bye", SENDER, 7]]), st.data())
def test_a_hostile_document_in_any_control_field_is_a_decode_error(
    fields: list[Any], data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(fields) - 1), label="field")
    doc = data.draw(docs, label="document")
    if at == 1 and doc.startswith(b"\x91" * KIND_DEPTH_LIMIT):
        doc = b"\xc0"
    control_decodes_or_refuses(spliced(fields, at, doc))
    if len(fields) == 9:  # and inside a channel entry
        entry = data.draw(st.integers(0, 2), label="channel field")
        channel = [bytes(msgpack.packb(v)) for v in fields[8][0]]
        channel[entry] = doc
        control_decodes_or_refuses(
            spliced(fields, 8, b"\x92" + b"\x93" + b"".join(channel)
                    + bytes(msgpack.packb(fields[8][1]))))


@pytest.mark.parametrize(
    ("at", "depth"),
    [(at, depth) for at in range(9) for depth in (10, 500, 1000, 1023, 1024, 5000)],
)
def test_a_control_field_nested_to_any_depth_is_a_decode_error(at: int, depth: int) -> None:
    frame = spliced(state_fields(), at, b"\x91" * depth + b"\xc0")
    with pytest.raises(DecodeError):
        decode_control(frame)


@pytest.mark.parametrize("prefix", BOMBS)
def test_a_control_field_declaring_4_gib_fails_without_allocating_it(prefix: bytes) -> None:
    frame = spliced(state_fields(), 4, bomb(prefix, U32))
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode_control(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * len(frame) + 256 * 1024


# -- reliable protocol frames, through the real resources ----------------------------------------

ROUTE = b"r\x00\x00\x00\x01"
ack_bodies = st.one_of(
    st.tuples(st.lists(st.integers(-3, 8)), st.lists(st.integers(-3, 8))).map(list),
    st.lists(values, max_size=3),
    values,
)


def ack_frame(body: Any, seq: int = 0, kind: Kind = Kind.ACK) -> bytes:
    return encode(kind, b"", body, sender=SENDER, epoch=1, stream=2, seq=seq, timestamp_ns=0)


def ack_frames(bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[list[bytes]]:
    """What arrives at a ROUTER: the route, then one frame (or a wrong count)."""
    one = st.one_of(
        bodies.map(ack_frame),
        st.tuples(bodies, st.sampled_from(Kind)).map(lambda t: ack_frame(t[0], kind=t[1])),
        docs.map(lambda d: header(Kind.ACK, topic=b"") + d),
        st.binary(max_size=80),
    )
    return st.one_of(one.map(lambda f: [ROUTE, f]),
                     st.lists(one, min_size=2, max_size=3).map(lambda fs: [ROUTE, *fs]))


def is_two_int_lists(body: Any) -> bool:
    return (isinstance(body, list) and len(body) == 2
            and all(isinstance(x, list) and all(type(s) is int for s in x) for x in body))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ack_frames(ack_bodies), min_size=1, max_size=8))
async def test_a_reliable_pusher_reads_any_acknowledgement_without_breaking(
    acks: list[list[bytes]]
) -> None:
    with trio.fail_after(5):
        async with shoal.open_pusher(connect=NOWHERE, reliable=True) as push:
            assert isinstance(push, ReliablePusher)
            for i in range(6):
                push.send_nowait(i)
            for frames in acks:
                before = push.statistics()
                push._on_ack(frames)  # the pusher's whole acknowledgement decoder
                after = push.statistics()
                msg: Message | None = None
                if len(frames) == 2:
                    try:
                        msg = decode(frames[1])
                    except DecodeError:
                        pass
                if msg is not None and msg.kind is Kind.ACK and is_two_int_lists(msg.body):
                    assert after.malformed == before.malformed
                    done = {s for s in msg.body[1] if 0 <= s < 6}
                    assert after.acked - before.acked <= len(done)
                elif after.malformed == before.malformed:
                    # taken although not two lists of ints: only the lax cases that
                    # test_an_acknowledgement_whose_lists_are_bytes_or_maps pins
                    assert msg is not None
                    assert msg.kind is Kind.ACK
                    assert is_two_int_lists(msg.body)
                else:
                    assert after.malformed == before.malformed + 1
                    assert after.acked == before.acked
                assert after.in_flight == 6 - after.acked >= 0


@pytest.mark.parametrize("body", [[b"\x00\x01", []], [[], {0: "x", 1: "y"}],
                                  [[], b"\x00\x01\x02"]], ids=["bytes", "map", "bytes-done"])
async def test_an_acknowledgement_whose_lists_are_bytes_or_maps_is_malformed(body: Any) -> None:
    with trio.fail_after(5):
        async with shoal.open_pusher(connect=NOWHERE, reliable=True) as push:
            for i in range(3):
                push.send_nowait(i)
            push._on_ack([ROUTE, ack_frame(body)])
            stats = push.statistics()
    assert (stats.malformed, stats.acked, stats.in_flight) == (1, 0, 3)


publisher_bodies = st.one_of(
    st.tuples(st.lists(st.text(max_size=4) | values, max_size=4), values, values,
              st.integers(-(2**63), U64) | values, values).map(list),
    st.lists(values, max_size=6),
    values,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ack_frames(publisher_bodies), min_size=1, max_size=8))
async def test_a_reliable_publisher_reads_any_acknowledgement_without_breaking(
    acks: list[list[bytes]]
) -> None:
    with trio.fail_after(5):
        async with shoal.open_publisher(bind="tcp://127.0.0.1:*", reliable=True) as pub:
            assert isinstance(pub, ReliablePublisher)
            for frames in acks:
                before = pub.statistics()
                pub._on_ack(frames)
                after = pub.statistics()
                assert after.malformed - before.malformed in (0, 1)
                assert after.subscribers - before.subscribers <= 1
                if after.malformed == before.malformed:  # taken: it had the documented shape
                    msg = decode(frames[1])
                    prefixes, epoch, stream, acked, _bye = msg.body
                    assert msg.kind is Kind.ACK
                    assert len(frames) == 2
                    assert isinstance(prefixes, list)
                    assert all(isinstance(p, str) for p in prefixes)
                    assert all(type(v) is int for v in (epoch, stream, acked))
            pub.publish_nowait("t", "still publishes")  # and the publisher still works


def push_frame(seq: int, floor: int, stream: int) -> list[bytes]:
    return [ROUTE, encode(Kind.PUSH, b"", seq, sender=SENDER, epoch=1, stream=stream, seq=seq,
                          timestamp_ns=0, correlation=floor)]


wire_ints = st.one_of(st.integers(0, 20), st.sampled_from([U64, U64 - 1, 2**63, 2**32]),
                      st.integers(0, U64))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(wire_ints, wire_ints, st.integers(0, 1)), max_size=40))
async def test_a_reliable_puller_takes_any_floor_and_delivers_each_item_once(
    items: list[tuple[int, int, int]]
) -> None:
    """Floors (the pusher's lowest item not done) of any value, in any order: nothing
    breaks, an item is never handed out twice, and memory stays bounded."""
    with trio.fail_after(5):
        async with shoal.open_puller(bind="tcp://127.0.0.1:*", reliable=True,
                                     max_streams=2) as pull:
            assert isinstance(pull, ReliablePuller)
            for seq, floor, stream in items:
                route, frame = push_frame(seq, floor, stream)
                pull._accept_routed(route, frame, False)
            got = []
            while True:
                try:
                    got.append(pull.receive_nowait())
                except trio.WouldBlock:
                    break
    keys = [(m.stream, m.seq) for m in got]
    assert len(keys) == len(set(keys))
    stats = pull.statistics()
    assert stats.received == len(got)
    assert stats.received + stats.duplicates == len(items)
    assert stats.malformed == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(wire_ints, st.one_of(wire_ints, st.sampled_from([START, RESUME])),
                          st.integers(0, 2)), max_size=40))
async def test_a_reliable_subscriber_takes_any_chain_link_and_delivers_in_order(
    pubs: list[tuple[int, int, int]]
) -> None:
    """``prev`` markers (START, RESUME, any number) and sequence numbers of any value:
    nothing breaks, and per publisher stream what is delivered only moves forward."""
    with trio.fail_after(5):
        async with shoal.open_subscriber(connect=NOWHERE, reliable=True) as sub:
            assert isinstance(sub, ReliableSubscriber)
            for seq, prev, stream in pubs:
                sub._accept_routed(ROUTE, encode(Kind.PUBLISH, b"t", seq, sender=SENDER,
                                                 epoch=1, stream=stream, seq=seq,
                                                 timestamp_ns=0, correlation=prev), False)
            got = []
            while True:
                try:
                    got.append(sub.receive_nowait())
                except trio.WouldBlock:
                    break
    for stream in {m.stream for m in got}:
        seqs = [m.seq for m in got if m.stream == stream]
        assert seqs == sorted(set(seqs))
    assert sub.statistics().malformed == 0


# -- discovery: mDNS ----------------------------------------------------------------------------

OWN_ID = "11" * 16
PEER_ID = "22" * 16


class FakeBridge:
    """Answers every resolution with one prepared ``ServiceInfo`` (no network)."""

    def __init__(self, info: ServiceInfo | None) -> None:
        self.info = info

    async def resolve(self, service_type: str, name: str) -> ServiceInfo | None:
        return self.info


class Recorder:
    """The reports of a source, recorded (``Reports``, with nothing reached)."""

    def __init__(self) -> None:
        self.records: list[Found | Lost] = []

    def report(self, record: Found | Lost) -> None:
        self.records.append(record)

    def reached(self) -> frozenset[str]:
        return frozenset()

    def unreached(self) -> frozenset[str]:
        return frozenset()

    def found(self) -> list[Found]:
        return [r for r in self.records if isinstance(r, Found)]


def advertisement(name: str = "n", node_id: str = OWN_ID, *, epoch: int = 1,
                  port: int = 5) -> Advertisement:
    return Advertisement(name, bytes.fromhex(node_id), epoch, ("127.0.0.1",), port)


NETWORKS: list[Network] = [ipaddress.ip_network("127.0.0.0/8")]


def txt(items: list[bytes]) -> bytes:
    return b"".join(bytes([len(i)]) + i for i in items)


txt_items = st.one_of(
    st.sampled_from([b"v=1", b"v=2", b"v", b"v=", b"id=" + OWN_ID.encode(),
                     b"id=" + PEER_ID.encode(), b"name=x", b"epoch=5", b"=1", b"v=1=1"]),
    st.binary(max_size=40),
)
txt_records = st.one_of(
    st.lists(txt_items, max_size=6).map(txt),
    st.binary(max_size=200),  # any rdata, length bytes pointing anywhere
)
addresses = st.lists(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
                     max_size=4)


async def resolve(info: ServiceInfo | None) -> Recorder:
    """What an mDNS source of a node (``OWN_ID``) reports for one resolution."""
    mdns = MDNS(interfaces=["127.0.0.1"])
    recorder = Recorder()
    mdns._attach(advertisement(), recorder)
    await mdns._resolve(cast(Any, FakeBridge(info)), "peer._shoal._tcp.local.")
    return recorder


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(txt_records, addresses, st.integers(0, 65535))
async def test_mdns_turns_any_service_info_into_at_most_one_sound_report(
    record: bytes, addrs: list[bytes], port: int
) -> None:
    info = ServiceInfo("_shoal._tcp.local.", "peer._shoal._tcp.local.", port=port,
                       properties=record, addresses=addrs)
    with trio.fail_after(5):
        recorder = await resolve(info)
    props = info.properties
    v4 = [str(ipaddress.IPv4Address(a)) for a in addrs if len(a) == 4]
    should = (port != 0 and props.get(b"v") == b"1" and props.get(b"id") != OWN_ID.encode()
              and bool(v4))
    found = recorder.found()
    assert len(found) == should
    for f in found:
        assert f.endpoints == tuple(f"tcp://{a}:{port}" for a in v4)
        # the node picks one on a network it shares, if there is one
        assert pick_endpoint(f.endpoints, NETWORKS) == (
            f"tcp://{choose_address(v4, NETWORKS)}:{port}")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
               max_size=255),
       st.integers(0, U32), st.integers(1, 65535))
async def test_an_mdns_advertisement_round_trips_to_the_control_endpoint(
    name: str, epoch: int, port: int
) -> None:
    """What a node advertises (SRV port, A record, TXT) resolves, at another node, to
    its control endpoint and node id; the TXT fields read back as written."""
    sent = MDNS(interfaces=["127.0.0.1"])._info(
        advertisement(name, PEER_ID, epoch=epoch, port=port))
    # what another node rebuilds from the records on the wire
    info = ServiceInfo("_shoal._tcp.local.", sent.name, port=sent.port, properties=sent.text,
                       addresses=sent.addresses)
    assert info.properties == {b"v": str(VERSION).encode(), b"id": PEER_ID.encode(),
                               b"name": name[:100].encode(), b"epoch": str(epoch).encode()}
    with trio.fail_after(5):
        recorder = await resolve(info)
    assert recorder.records == [Found("peer._shoal._tcp.local.", (f"tcp://127.0.0.1:{port}",),
                                      node_id=bytes.fromhex(PEER_ID))]


@pytest.mark.parametrize("name", ["é" * 40, "a" * 40 + "😀" * 53], ids=["label", "txt"])
def test_a_node_with_any_valid_name_can_be_advertised(name: str) -> None:
    assert len(name.encode()) <= 255  # a valid node name (the control plane's limit)
    info = MDNS(interfaces=["127.0.0.1"])._info(advertisement(name, PEER_ID))
    assert info.properties[b"id"] == PEER_ID.encode()


# -- discovery: static endpoints ----------------------------------------------------------------

ports = st.one_of(st.integers(0, 100_000).map(str), st.text(max_size=6),
                  st.sampled_from(["00", "080", "65535", "65536", "²", "٨٠", "+80", " 80"]))
hosts = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "", "a b", "tcp://127.0.0.1"])


@settings(max_examples=300, deadline=2000)
@given(st.one_of(st.text(max_size=40), st.tuples(hosts, ports).map(":".join),
                 st.tuples(hosts, ports).map(lambda hp: "tcp://" + ":".join(hp))))
def test_a_static_peer_is_an_endpoint_or_a_local_protocol_error(value: str) -> None:
    try:
        static = Static([value])
    except LocalProtocolError:
        return
    [ep] = static.peers
    host, _, port = ep.removeprefix("tcp://").rpartition(":")
    assert ep.startswith("tcp://")
    assert host
    assert port.isdigit()


def static_port_is_sound(value: str) -> None:
    try:
        static = Static([value])
    except LocalProtocolError:
        return
    port = static.peers[0].rpartition(":")[2]
    assert port.isascii(), f"accepted {static.peers[0]!r}"
    assert 1 <= int(port) <= 65535, f"accepted {static.peers[0]!r}"


@pytest.mark.parametrize("value", ["127.0.0.1:7700", "127.0.0.1:1", "tcp://[::1]:65535",
                                   "127.0.0.1:0", "127.0.0.1:x"])
def test_a_static_peer_port_is_an_ascii_number_from_1_to_65535(value: str) -> None:
    static_port_is_sound(value)


@pytest.mark.parametrize("value", ["127.0.0.1:00", "127.0.0.1:65536", "127.0.0.1:99999",
                                   "127.0.0.1:²", "127.0.0.1:٨٠"])
def test_a_static_peer_with_a_port_out_of_range_is_refused(value: str) -> None:
    static_port_is_sound(value)


# -- the outbox file ----------------------------------------------------------------------------


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


async def make_outbox(path: Path, n: int = 3) -> None:
    async with shoal.open_pusher(connect=NOWHERE, reliable=True, outbox=path) as push:
        for i in range(n):
            await push.send({"n": i})


async def reopen(path: Path) -> None:
    """Open a pusher on the outbox and let it give up what it restored: either it
    refuses the file (LocalProtocolError) or it runs, reporting dead letters."""
    async with shoal.open_pusher(connect=NOWHERE, reliable=True, outbox=path,
                                 give_up_after=0.05) as push:
        try:
            await push.wait_acked()
        except DeliveryFailed:
            pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
async def test_a_file_of_random_bytes_is_refused_as_an_outbox(data: bytes) -> None:
    refusal = ""
    with scratch() as d, trio.fail_after(10):
        (d / "o.sqlite").write_bytes(data)
        try:
            await reopen(d / "o.sqlite")
        except LocalProtocolError as exc:
            refusal = str(exc)
    # SQLite takes a file of 0 or 1 byte for a new database: it becomes a new outbox
    assert len(data) <= 1 or "outbox" in refusal


PAGE = 4096
"""SQLite's default page size (the outbox does not change it)."""


def item_page(data: bytes) -> int:
    """Where the page holding the items' frames starts (found by an item's body)."""
    return data.index(bytes(msgpack.packb({"n": 0}))) // PAGE * PAGE


@pytest.mark.parametrize("cut", [
    pytest.param(lambda data: 100, id="inside-the-header"),
    pytest.param(lambda data: PAGE, id="after-the-first-page"),
    pytest.param(lambda data: item_page(data), id="before-the-items-page"),
    pytest.param(lambda data: item_page(data) + 512, id="inside-the-items-page"),
    pytest.param(lambda data: item_page(data) + PAGE - 512, id="late-in-the-items-page"),
    pytest.param(lambda data: len(data) - 1, id="last-byte"),
])
async def test_a_truncated_outbox_is_refused_or_reopened(cut: Any) -> None:
    """A copy cut short (a full disk, an interrupted copy): refused with a
    LocalProtocolError, or reopened and run (what it restores is given up)."""
    with scratch() as d, trio.fail_after(10):
        await make_outbox(d / "good.sqlite")
        data = (d / "good.sqlite").read_bytes()
        (d / "o.sqlite").write_bytes(data[: cut(data)])
        refusal = ""
        try:
            await reopen(d / "o.sqlite")
        except LocalProtocolError as exc:
            refusal = str(exc)
    assert not refusal or "outbox" in refusal


def tamper(path: Path, *statements: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        for s in statements:
            db.execute(s)
        db.commit()


@pytest.mark.parametrize("statements", [
    pytest.param(["UPDATE stream SET next_seq = -5"], id="next-seq-negative"),
    pytest.param(["UPDATE item SET seq = seq + 100 WHERE seq = 2"], id="seq-past-next-seq"),
    pytest.param(["UPDATE stream SET epoch = 4294967296"], id="epoch-past-u32"),
    pytest.param(["UPDATE stream SET epoch = 'soon'"], id="epoch-text"),
    pytest.param(["UPDATE stream SET sender = 'someone'"], id="sender-text"),
    pytest.param(["UPDATE item SET frame = x'00010203'"], id="frame-not-an-envelope"),
    pytest.param(["DROP TABLE stream", "CREATE TABLE stream (id INTEGER PRIMARY KEY, x)",
                  "INSERT INTO stream VALUES (0, 1)"], id="stream-table-of-another-shape"),
])
async def test_a_tampered_outbox_is_refused_with_a_local_protocol_error(
    statements: list[str]
) -> None:
    with scratch() as d, trio.fail_after(10):
        await make_outbox(d / "o.sqlite")
        tamper(d / "o.sqlite", *statements)
        with pytest.raises(LocalProtocolError):
            await reopen(d / "o.sqlite")


# -- bookkeeping ---------------------------------------------------------------------------------


def test_the_documented_reasons_are_the_ones_the_decoders_use() -> None:
    """Each label of REASONS and CONTROL_REASONS occurs in its decoder's source, so
    the sets above cannot drift into naming reasons that no longer exist."""
    import shoal._core._control as control
    import shoal._core._envelope as envelope

    for module, reasons in ((envelope, REASONS), (control, CONTROL_REASONS)):
        source = Path(cast(str, module.__file__)).read_text()
        for reason in reasons:
            assert f'"{reason}"' in source, (module.__name__, reason)
