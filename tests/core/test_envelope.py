"""The envelope codec (sans-I/O): what goes in comes out, and hostile bytes only ever
produce ``DecodeError``.
"""

from __future__ import annotations

import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._core import (
    HEADER,
    MAX_TOPIC,
    VERSION,
    Kind,
    Message,
    decode,
    encode,
    encode_topic,
    fast_decode,
)
from shoal._core._envelope import (
    FLAG_ADVISORY,
    FLAG_HEADERS,
    FLAG_MUST_UNDERSTAND,
    FLAG_RAW,
    FLAG_SPLIT,
    MAX_HEADERS,
)
from shoal.errors import DecodeError, EncodeError, LocalProtocolError, RemoteProtocolError

U32 = 2**32 - 1
U64 = 2**64 - 1
SENDER = bytes(range(16))

# -- strategies ------------------------------------------------------------------------

topics = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    max_size=64,
)
# every scalar msgpack can carry and give back as the same Python value
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=U64)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
map_keys = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=U64)
    | st.text(max_size=8) | st.binary(max_size=8)
)
bodies = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(map_keys, inner, max_size=4),
    max_leaves=16,
)
# header values: anything msgpack carries (maps with any keys are covered by
# test_headers_that_encode_also_decode)
header_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(map_keys, inner, max_size=3),
    max_leaves=8,
)
headers_st = st.none() | st.dictionaries(st.text(max_size=12), header_values, max_size=4)


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, Message]:
    """A valid frame and the Message it must decode to."""
    topic = draw(topics)
    body = draw(bodies)
    kind = draw(st.sampled_from(Kind))
    sender = draw(st.binary(min_size=16, max_size=16))
    epoch = draw(st.integers(0, U32))
    stream = draw(st.integers(0, U32))
    seq = draw(st.integers(0, U64))
    ts = draw(st.integers(0, U64))
    corr = draw(st.integers(0, U64))
    headers = draw(headers_st)
    frame = encode(kind, encode_topic(topic), body, sender=sender, epoch=epoch, stream=stream,
                   seq=seq, timestamp_ns=ts, correlation=corr, headers=headers)
    expected = Message(topic, body, kind, sender.hex(), epoch, stream, seq, ts, corr,
                       headers or {})
    return frame, expected


def frame_of(body: Any = None, *, topic: str = "t", kind: Kind = Kind.PUBLISH,
             headers: dict[str, Any] | None = None) -> bytes:
    return encode(kind, encode_topic(topic), body, sender=SENDER, epoch=7, stream=3, seq=42,
                  timestamp_ns=1_700_000_000_000_000_000, correlation=9, headers=headers)


def header_offset(frame: bytes) -> int:
    return frame.index(b"\0") + 1


def patch(frame: bytes, at: int, new: bytes) -> bytes:
    return frame[:at] + new + frame[at + len(new):]


def decode_reason(frame: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode(frame)
    return info.value.reason


# -- round trip --------------------------------------------------------------------------


@settings(deadline=None)
@given(frames())
def test_every_valid_frame_decodes_to_exactly_what_was_encoded(case: tuple[bytes, Message]
                                                               ) -> None:
    frame, expected = case
    assert decode(frame) == expected


@given(topics, st.sampled_from(Kind))
def test_bytes_bodies_travel_raw_and_untouched(topic: str, kind: Kind) -> None:
    raw = b"\x00\xff\xc1 not msgpack \x92"  # 0xc1 is never valid msgpack
    frame = frame_of(raw, topic=topic, kind=kind)
    assert frame.endswith(raw)
    msg = decode(frame)
    assert msg.body == raw
    assert type(msg.body) is bytes


@pytest.mark.parametrize("raw", [bytearray(b"abc"), memoryview(b"abc")])
def test_bytearray_and_memoryview_bodies_arrive_as_bytes(raw: bytearray | memoryview) -> None:
    assert decode(frame_of(raw)).body == b"abc"


def test_extreme_field_values_round_trip() -> None:
    for n in (0, 1, U32):
        for big in (0, 1, U64):
            frame = encode(Kind.REPLY, b"", None, sender=b"\xff" * 16, epoch=n, stream=n,
                           seq=big, timestamp_ns=big, correlation=big)
            msg = decode(frame)
            assert (msg.epoch, msg.stream, msg.seq, msg.timestamp_ns, msg.correlation) == (
                n, n, big, big, big)


def test_message_id_and_timestamp_are_derived_from_the_envelope() -> None:
    msg = decode(frame_of("x"))
    assert msg.sender == SENDER.hex()
    assert msg.id == f"{SENDER.hex()}:00000007:3:42:{msg.topic}"
    topical = decode(encode(Kind.PUBLISH, b"a:b", "x", sender=SENDER, epoch=7, stream=3,
                            seq=42, timestamp_ns=0))
    assert topical.id == f"{SENDER.hex()}:00000007:3:42:a:b"
    assert msg.timestamp == pytest.approx(1_700_000_000.0)


def test_no_headers_decode_as_an_empty_mapping() -> None:
    assert decode(frame_of(1)).headers == {}
    assert decode(frame_of(1, headers={})).headers == {}


def test_the_longest_topic_allowed_round_trips() -> None:
    topic = "é" * (MAX_TOPIC // 2)  # two bytes each: exactly MAX_TOPIC bytes
    assert len(encode_topic(topic)) == MAX_TOPIC
    assert decode(frame_of(1, topic=topic)).topic == topic


def test_headers_that_encode_also_decode() -> None:
    frame = frame_of("body", headers={"routing": {1: "int-keyed map"}})
    assert decode(frame).headers == {"routing": {1: "int-keyed map"}}


# -- layout --------------------------------------------------------------------------------


@given(topics)
def test_the_topic_leads_the_frame_followed_by_nul(topic: str) -> None:
    frame = frame_of({"x": 1}, topic=topic)
    raw = topic.encode()
    assert frame[: len(raw) + 1] == raw + b"\0"
    version, kind, flags, sender, *_ = HEADER.unpack_from(frame, len(raw) + 1)
    assert (version, kind, flags, sender) == (VERSION, Kind.PUBLISH, 0, SENDER)


@given(topics, topics)
def test_a_subscription_prefix_matches_the_frame_iff_it_prefixes_the_topic(
    topic: str, prefix: str
) -> None:
    """libzmq matches SUB prefixes against the frame's first bytes; the NUL after the
    topic stops a longer prefix ("sensors/room1x") matching a shorter topic."""
    frame = frame_of(None, topic=topic)
    assert frame.startswith(encode_topic(prefix)) == topic.encode().startswith(prefix.encode())


def test_a_longer_subscription_does_not_match_a_shorter_topic() -> None:
    frame = frame_of(None, topic="sensors/room1")
    assert frame.startswith(encode_topic("sensors/room1"))
    assert frame.startswith(encode_topic("sensors/"))
    assert not frame.startswith(encode_topic("sensors/room1x"))


def test_flags_say_raw_body_and_headers() -> None:
    def flags(frame: bytes) -> int:
        return int(HEADER.unpack_from(frame, header_offset(frame))[2])

    assert flags(frame_of({"a": 1})) == 0
    assert flags(frame_of(b"raw")) == FLAG_RAW
    assert flags(frame_of(b"raw", headers={"h": 1})) == FLAG_RAW | FLAG_HEADERS


def test_the_reserved_byte_is_zero_on_send_and_ignored_on_receive() -> None:
    frame = frame_of("x")
    reserved = header_offset(frame) + 3
    assert frame[reserved] == 0
    assert decode(patch(frame, reserved, b"\x7f")) == decode(frame)


# -- unknown flag bits: advisory ones ignored, must-understand ones refused -----------------


def test_every_flag_bit_is_known_advisory_or_must_understand() -> None:
    known = FLAG_RAW | FLAG_HEADERS | FLAG_SPLIT
    assert known | FLAG_ADVISORY | FLAG_MUST_UNDERSTAND == 0xFF
    assert known & FLAG_ADVISORY == known & FLAG_MUST_UNDERSTAND == 0
    assert FLAG_ADVISORY & FLAG_MUST_UNDERSTAND == 0


def with_flags(frame: bytes, extra: int) -> bytes:
    at = header_offset(frame) + 2
    return patch(frame, at, bytes([frame[at] | extra]))


ADVISORY_BITS = [b for b in range(8) if FLAG_ADVISORY >> b & 1]
MUST_UNDERSTAND_BITS = [b for b in range(8) if FLAG_MUST_UNDERSTAND >> b & 1]
SHAPES = {
    "msgpack body": frame_of({"a": [1, 2]}),
    "raw body": frame_of(b"\x00raw"),
    "raw body, no topic": frame_of(b"raw", topic="", kind=Kind.PUSH),
    "headers": frame_of("x", headers={"h": 1}),
    "raw body and headers": frame_of(b"x", headers={"h": b"\x01"}),
}


@pytest.mark.parametrize("bit", ADVISORY_BITS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_unknown_advisory_flag_is_ignored(shape: str, bit: int) -> None:
    frame = SHAPES[shape]
    assert decode(with_flags(frame, 1 << bit)) == decode(frame)


@pytest.mark.parametrize("bit", ADVISORY_BITS)
def test_an_unknown_advisory_flag_is_ignored_on_a_split_message(bit: int) -> None:
    head = with_flags(frame_of(b"", topic="", kind=Kind.PUSH), FLAG_SPLIT)
    body = b"\x01" * 100
    assert decode(with_flags(head, 1 << bit), [body]) == decode(head, [body])


@pytest.mark.parametrize("bit", MUST_UNDERSTAND_BITS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_unknown_must_understand_flag_is_refused(shape: str, bit: int) -> None:
    assert decode_reason(with_flags(SHAPES[shape], 1 << bit)) == "unknown-flags"


@pytest.mark.parametrize("topical", [False, True], ids=["untopical", "topical"])
def test_the_fast_decoders_follow_the_same_flag_rule(topical: bool) -> None:
    """The hot path takes a raw frame with an advisory bit as it is (the same message
    as ``decode``), and leaves one with a must-understand bit to ``decode``."""
    kind = Kind.PUBLISH if topical else Kind.PUSH
    frame = frame_of(b"payload", topic="t" if topical else "", kind=kind)
    for bit in ADVISORY_BITS:
        odd = with_flags(frame, 1 << bit)
        assert fast_decode(kind, topic=topical)(odd) == decode(odd) == decode(frame)
    for bit in MUST_UNDERSTAND_BITS:
        odd = with_flags(frame, 1 << bit)
        assert fast_decode(kind, topic=topical)(odd) is None
        assert decode_reason(odd) == "unknown-flags"


# -- refusals with a stable reason --------------------------------------------------------


def test_an_unknown_version_is_refused_as_unsupported_version() -> None:
    frame = frame_of("x")
    for version in (0, VERSION + 1, 255):
        assert decode_reason(patch(frame, header_offset(frame), bytes([version]))) == (
            "unsupported-version")


def test_decode_error_is_a_remote_protocol_error_with_reason_and_detail() -> None:
    frame = frame_of("x")
    with pytest.raises(RemoteProtocolError) as info:
        decode(patch(frame, header_offset(frame), b"\x09"))
    assert isinstance(info.value, DecodeError)
    assert info.value.reason == "unsupported-version"
    assert "9" in info.value.detail


def _headers_frame(declared_len: int, payload: bytes) -> bytes:
    head = HEADER.pack(VERSION, Kind.PUBLISH, FLAG_HEADERS, SENDER, 1, 1, 0, 0, 0)
    return b"t\0" + head + struct.pack("<I", declared_len) + payload


def _body_frame(body: bytes) -> bytes:
    return b"t\0" + HEADER.pack(VERSION, Kind.PUBLISH, 0, SENDER, 1, 1, 0, 0, 0) + body


VALID = frame_of({"temperature": [21.5, 22.0], "unit": "C"})
OFF = header_offset(VALID)

REFUSALS = {
    "empty frame": (b"", "no-topic-delimiter"),
    "no NUL at all": (b"just some text", "no-topic-delimiter"),
    "topic longer than MAX_TOPIC": (b"a" * (MAX_TOPIC + 1) + VALID[OFF - 1:],
                                    "no-topic-delimiter"),
    "topic not UTF-8": (b"\xff\xfe" + VALID[OFF - 1:], "topic-not-utf8"),
    "header cut short": (VALID[: OFF + HEADER.size - 1], "truncated-header"),
    "only the topic": (b"t\0", "truncated-header"),
    "version 0": (patch(VALID, OFF, b"\x00"), "unsupported-version"),
    "kind 0": (patch(VALID, OFF + 1, b"\x00"), "unknown-kind"),
    "kind 200": (patch(VALID, OFF + 1, b"\xc8"), "unknown-kind"),
    "unknown flag": (patch(VALID, OFF + 2, b"\x80"), "unknown-flags"),
    "headers flag, no length": (_headers_frame(0, b"")[:-4] + b"\x01", "truncated-headers"),
    "huge declared headers length": (_headers_frame(U32, b"\x80"), "bad-headers-length"),
    "headers length past the end": (_headers_frame(10, b"\x80"), "bad-headers-length"),
    "headers length over MAX_HEADERS": (_headers_frame(MAX_HEADERS + 1, b"\0" * (
        MAX_HEADERS + 1)), "bad-headers-length"),
    "headers not a map": (_headers_frame(2, b"\x91\x01"), "headers-not-a-map"),
    "truncated msgpack body": (VALID[:-3], "malformed"),
    "trailing bytes after the body": (VALID + b"\x01", "malformed"),
    "empty msgpack body": (_body_frame(b""), "malformed"),
    "never-valid msgpack byte": (_body_frame(b"\xc1"), "malformed"),
    "str32 declaring 4 GiB": (_body_frame(b"\xdb\xff\xff\xff\xff"), "malformed"),
    "bin32 declaring 4 GiB": (_body_frame(b"\xc6\xff\xff\xff\xff"), "malformed"),
    "array32 declaring 4G items": (_body_frame(b"\xdd\xff\xff\xff\xff"), "malformed"),
    "map32 declaring 4G pairs": (_body_frame(b"\xdf\xff\xff\xff\xff"), "malformed"),
    "nesting 100k deep": (_body_frame(b"\x91" * 100_000 + b"\xc0"), "malformed"),
    "invalid UTF-8 in a msgpack str": (_body_frame(b"\xa2\xff\xfe"), "malformed"),
}


@pytest.mark.parametrize(("frame", "reason"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_hostile_frames_are_refused_with_a_stable_reason(frame: bytes, reason: str) -> None:
    assert decode_reason(frame) == reason


@pytest.mark.parametrize(
    "frame",
    [
        _headers_frame(U32, b"\x80"),
        _body_frame(b"\xdb\xff\xff\xff\xff"),
        _body_frame(b"\xc6\xff\xff\xff\xff"),
        _body_frame(b"\xdd\xff\xff\xff\xff"),
        _body_frame(b"\xdf\xff\xff\xff\xff"),
        _body_frame(b"\x91" * 100_000 + b"\xc0"),
    ],
    ids=["headers", "str32", "bin32", "array32", "map32", "deep"],
)
def test_a_huge_declared_length_does_not_make_decode_allocate(frame: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * len(frame) + 256 * 1024


# -- fuzz: DecodeError and nothing else ----------------------------------------------------


def decodes_or_refuses(frame: bytes) -> None:
    """The decode contract: a well-typed Message, or DecodeError. Nothing else."""
    reason: object = None
    try:
        msg = decode(frame)
    except DecodeError as exc:
        reason = exc.reason
        msg = None
    if msg is None:
        assert isinstance(reason, str)
        assert reason
        return
    assert isinstance(msg, Message)
    assert isinstance(msg.kind, Kind)
    assert isinstance(msg.topic, str)
    assert len(msg.sender) == 32
    assert "\0" not in msg.topic


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    decodes_or_refuses(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_after_a_valid_header_decode_or_raise_decode_error(tail: bytes) -> None:
    for flags in (0, FLAG_RAW, FLAG_HEADERS, FLAG_RAW | FLAG_HEADERS):
        head = HEADER.pack(VERSION, Kind.PUSH, flags, SENDER, 1, 1, 0, 0, 0)
        decodes_or_refuses(b"topic\0" + head + tail)


MUTATIONS = ("truncate", "flip", "insert", "delete", "version", "kind", "flags",
             "headers-length", "append")


@settings(max_examples=500, deadline=None)
@given(frames(), st.sampled_from(MUTATIONS), st.data())
def test_mutated_valid_frames_decode_or_raise_decode_error(
    case: tuple[bytes, Message], how: str, data: st.DataObject
) -> None:
    frame, _ = case
    off = header_offset(frame)
    at = data.draw(st.integers(0, len(frame) - 1), label="at")
    byte = data.draw(st.integers(0, 255), label="byte")
    if how == "truncate":
        frame = frame[:at]
    elif how == "flip":
        frame = patch(frame, at, bytes([frame[at] ^ (byte or 1)]))
    elif how == "insert":
        frame = frame[:at] + bytes([byte]) + frame[at:]
    elif how == "delete":
        frame = frame[:at] + frame[at + 1:]
    elif how == "version":
        frame = patch(frame, off, bytes([byte]))
    elif how == "kind":
        frame = patch(frame, off + 1, bytes([byte]))
    elif how == "flags":
        frame = patch(frame, off + 2, bytes([byte]))
    elif how == "headers-length":
        declared = data.draw(st.integers(0, U32), label="declared")
        frame = patch(frame, off + 2, bytes([frame[off + 2] | FLAG_HEADERS]))
        frame = patch(frame, off + HEADER.size, struct.pack("<I", declared))
    else:
        frame += data.draw(st.binary(min_size=1, max_size=16), label="tail")
    decodes_or_refuses(frame)


# -- encoding refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    ["a\0b", "\0", "x" * (MAX_TOPIC + 1), "é" * (MAX_TOPIC // 2 + 1)],
    ids=["nul-inside", "only-nul", "too-long-ascii", "too-long-in-bytes"],
)
def test_encode_topic_refuses_nul_and_overlong_topics(topic: str) -> None:
    with pytest.raises(EncodeError):
        encode_topic(topic)


@pytest.mark.parametrize("topic", [b"bytes", None, 1, ["a"]])
def test_encode_topic_refuses_non_str(topic: Any) -> None:
    with pytest.raises(EncodeError, match="str"):
        encode_topic(topic)


def test_encode_topic_refuses_a_topic_that_is_not_valid_unicode() -> None:
    with pytest.raises(EncodeError):
        encode_topic("sensors/\ud800")


def test_encode_error_is_a_local_protocol_error_and_a_type_error() -> None:
    assert issubclass(EncodeError, LocalProtocolError)
    assert issubclass(EncodeError, TypeError)


@pytest.mark.parametrize(
    "body",
    [object(), {1, 2}, 2**64, -(2**63) - 1, "\ud800", {"deep": object()}, [lambda: 0]],
    ids=["object", "set", "too-big-int", "too-small-int", "lone-surrogate", "nested-object",
         "function"],
)
def test_an_unencodable_body_raises_encode_error(body: Any) -> None:
    with pytest.raises(EncodeError):
        frame_of(body)


def test_a_self_referencing_body_raises_encode_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError):
        frame_of(loop)


@pytest.mark.parametrize(
    "headers",
    [{1: "int key"}, {"k": object()}, {"big": b"x" * (MAX_HEADERS + 1)}, [("k", "v")]],
    ids=["non-str-key", "unencodable-value", "too-large", "not-a-mapping"],
)
def test_bad_headers_raise_encode_error(headers: Any) -> None:
    with pytest.raises(EncodeError):
        frame_of("body", headers=headers)


def test_msgpack_and_envelope_agree_on_the_body_bytes() -> None:
    """The body is plain msgpack after the header: other languages can read it."""
    body = {"celsius": 21.5, "tags": ["a", b"b"]}
    frame = frame_of(body)
    assert frame[header_offset(frame) + HEADER.size:] == msgpack.packb(body, use_bin_type=True)
