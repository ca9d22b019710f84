"""The history store, request and bundle codecs: plain synchronous specifications."""

from __future__ import annotations

import random

import pytest

from shoal._core import (
    MARKER,
    HistoryStore,
    Kind,
    Message,
    StreamEncoder,
    bundles,
    decode_bundle,
    decode_request,
    encode_request,
)
from shoal._core._history import ENTRY_OVERHEAD, MAX_HISTORY_PREFIXES, TOPIC_OVERHEAD
from shoal.errors import DecodeError

MARK = MARKER + bytes(range(16))


def publication(enc: StreamEncoder, topic: str, seq: int, body: bytes = b"x") -> bytes:
    head, big = enc.encode_parts(Kind.PUBLISH, topic.encode() + b"\0", body, seq, 0, 0, None)
    assert big is None
    return head


@pytest.fixture
def enc() -> StreamEncoder:
    return StreamEncoder(sender=b"s" * 16, epoch=1, stream=1, max_size=1 << 24)


def test_keeps_the_last_depth_of_each_topic_oldest_first(enc: StreamEncoder) -> None:
    store = HistoryStore(depth=3, max_bytes=1 << 20, max_topics=10)
    for seq in range(10):
        for t in ("a", "b"):
            store.add(t.encode() + b"\0", publication(enc, t, seq))
    got = [m for m in decode_bundle(b"".join(bundles(MARK, store.select(2, [b""]),
                                                      1 << 24))[len(MARK):])]
    assert [(m.topic, m.seq) for m in got if isinstance(m, Message)] == [
        ("a", 8), ("a", 9), ("b", 8), ("b", 9)]
    assert len(list(store.select(99, [b"a"]))) == 3  # clamped to the store's depth
    assert list(store.select(0, [b""])) == []


def test_bytes_and_topics_never_pass_their_bounds(enc: StreamEncoder) -> None:
    store = HistoryStore(depth=2, max_bytes=50_000, max_topics=300)
    frame_size = len(publication(enc, "t/000000", 0))
    for i in range(200_000):
        store.add(f"t/{i:06d}".encode() + b"\0", publication(enc, f"t/{i:06d}", 0))
        if i % 997 == 0:
            assert store.bytes <= 50_000
            assert len(store) <= 300
    assert store.bytes <= 50_000
    per_topic = frame_size + ENTRY_OVERHEAD + TOPIC_OVERHEAD + len(b"t/000000\0")
    assert len(store) == min(300, 50_000 // per_topic)
    # the topics kept are the ones published last
    kept = [m.topic for m in decode_bundle(b"".join(
        bundles(MARK, store.select(2, [b""]), 1 << 24))[len(MARK):]) if isinstance(m, Message)]
    assert kept[-1] == "t/199999"
    assert store.evicted == 200_000 - len(store)


def test_bundles_stay_under_the_size_limit(enc: StreamEncoder) -> None:
    frames = [publication(enc, "t", i, b"y" * 1000) for i in range(100)]
    out = list(bundles(MARK, iter(frames), 10_000))
    assert all(len(b) <= 10_000 and b.startswith(MARK) for b in out)
    seqs = [m.seq for b in out for m in decode_bundle(b[len(MARK):]) if isinstance(m, Message)]
    assert seqs == list(range(100))
    assert list(bundles(MARK, iter(frames), 500)) == []  # none fits: left out


def test_requests_round_trip_and_bad_ones_raise_decode_error_only() -> None:
    req = encode_request(MARK, 5, [b"a/", b""])
    assert decode_request(req) == (MARK, 5, [b"a/", b""])
    with pytest.raises(ValueError, match="prefixes"):
        encode_request(MARK, 5, [b"p"] * (MAX_HISTORY_PREFIXES + 1))
    rng = random.Random(15)
    for _ in range(2000):
        junk = bytearray(req)
        for _ in range(rng.randrange(1, 4)):
            junk[rng.randrange(len(junk))] = rng.randrange(256)
        cut = bytes(junk[:rng.randrange(len(junk) + 1)])
        for candidate in (bytes(junk), cut):
            try:
                _marker, _depth, prefixes = decode_request(candidate)
            except DecodeError:
                continue
            assert len(prefixes) <= MAX_HISTORY_PREFIXES


def test_a_broken_bundle_yields_errors_never_raises(enc: StreamEncoder) -> None:
    good = b"".join(bundles(MARK, iter([publication(enc, "t", 0)]), 1 << 24))[len(MARK):]
    rng = random.Random(7)
    for _ in range(2000):
        junk = bytearray(good)
        junk[rng.randrange(len(junk))] = rng.randrange(256)
        items = list(decode_bundle(bytes(junk[:rng.randrange(len(junk) + 1)])))
        assert all(isinstance(i, Message | DecodeError) for i in items)
