"""Best-effort pub/sub history: a late joiner gets the last publications of each topic
first, then the live stream, with nothing twice and nothing missing at the seam; the
history stays within its bounds whatever is published or asked. Loopback only, every
test under ``anyio.fail_after``."""

from __future__ import annotations

import struct

import anyio
import pytest
import zmq

from shoal import Message
from shoal._core import ALL, MARKER, OWNER, decode, decode_bundle, encode_request, encode_topic
from shoal.errors import LocalProtocolError
from shoal.patterns import open_publisher, open_subscriber
from shoal.patterns._history import HistoryPublisher
from support.raw import raw_receive, raw_socket
from support.waiting import eventually

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"
TOPICS = ("sensors/a", "sensors/b", "sensors/c")


def by_topic(msgs: list[Message]) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in msgs:
        out.setdefault(m.topic, []).append(m)
    return out


async def test_late_joiner_gets_the_last_five_of_each_topic_then_live() -> None:
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, history=5) as pub:
            for i in range(100):
                for t in TOPICS:
                    await pub.publish(t, i)
            async with open_subscriber(connect=pub.endpoints[0], topics=["sensors/"],
                                       history=5) as sub:
                await pub.wait_for_subscribers(1)
                replay = [await sub.receive() for _ in range(15)]
                for t in TOPICS:
                    await pub.publish(t, 100)
                live = [await sub.receive() for _ in range(3)]
    assert [(m.topic, m.body, m.seq, m.replayed) for m in replay] == [
        (t, i, i, True) for t in TOPICS for i in range(95, 100)]
    assert [(m.topic, m.seq, m.replayed) for m in live] == [(t, 100, False) for t in TOPICS]
    stats = sub.statistics()
    assert (stats.replayed, stats.gaps, stats.out_of_order, stats.received) == (15, 0, 0, 18)
    assert pub.statistics().replayed == 15


async def test_the_seam_holds_while_the_publisher_keeps_publishing() -> None:
    """Subscribers join one after another while three topics are published without
    pause: each gets exactly 5 replayed per topic, consecutive, then live messages
    whose numbers continue the replay's with no duplicate and no hole."""
    rounds = 6
    with anyio.fail_after(20):
        async with open_publisher(bind=LOOPBACK, history=5, high_water_mark=100_000) as pub:
            for i in range(100):
                for t in TOPICS:
                    await pub.publish(t, i)
            stop = anyio.Event()

            async def keep_publishing() -> None:
                i = 100
                while not stop.is_set():
                    for t in TOPICS:
                        await pub.publish(t, i)
                    i += 1
                    if i % 20 == 0:
                        await anyio.sleep(0.0005)

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(keep_publishing)
                for _ in range(rounds):
                    await anyio.sleep(0.005)
                    async with open_subscriber(connect=pub.endpoints[0],
                                               topics=["sensors/"], history=5) as sub:
                        got: list[Message] = []
                        while sum(not m.replayed for m in got) < 300:
                            got += await sub.receive_batch()
                    check_seam(got, depth=5)
                    assert sub.statistics().gaps == 0
                    assert sub.statistics().replay_duplicates == 0
                stop.set()


def check_seam(got: list[Message], *, depth: int) -> None:
    replayed = [m for m in got if m.replayed]
    assert len(replayed) == depth * len(TOPICS)
    first_live = next(i for i, m in enumerate(got) if not m.replayed)
    assert all(m.replayed for m in got[:first_live])
    assert not any(m.replayed for m in got[first_live:])  # the replay comes first
    for topic, msgs in by_topic(got).items():
        seqs = [m.seq for m in msgs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), topic  # no dup, no hole
        assert [m.replayed for m in msgs[:depth]] == [True] * depth
        assert seqs[0] >= 95


async def test_history_zero_skips_replay_and_a_smaller_depth_takes_less() -> None:
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, history=5) as pub:
            for i in range(100):
                for t in TOPICS:
                    await pub.publish(t, i)
            async with open_subscriber(connect=pub.endpoints[0], history=0) as none, \
                    open_subscriber(connect=pub.endpoints[0], history=2) as two:
                await pub.wait_for_subscribers(2)
                await pub.publish("sensors/a", "live")
                first = await none.receive()
                replay = [await two.receive() for _ in range(6)]
                after = await two.receive()
    assert (first.seq, first.body, first.replayed) == (100, "live", False)
    assert none.statistics().replayed == 0
    assert [(m.topic, m.seq) for m in replay] == [(t, i) for t in TOPICS for i in (98, 99)]
    assert (after.seq, after.replayed) == (100, False)


async def test_a_replay_reaches_only_the_subscriber_that_asked() -> None:
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, history=3) as pub, \
                open_subscriber(connect=pub.endpoints[0], history=0) as early:
            await pub.wait_for_subscribers(1)
            for t in TOPICS:
                await pub.publish(t, "old")
            for _ in TOPICS:
                await early.receive()
            async with open_subscriber(connect=pub.endpoints[0]) as late:
                await pub.wait_for_subscribers(2)
                replay = [await late.receive() for _ in TOPICS]
                await pub.publish("end", 1)
                assert (await early.receive()).topic == "end"
    assert all(m.replayed for m in replay)
    s = early.statistics()
    assert (s.received, s.malformed, s.replayed) == (4, 0, 0)


async def test_only_the_prefixes_subscribed_are_replayed() -> None:
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, history=2) as pub:
            for t in ("a/1", "a/2", "b/1"):
                await pub.publish(t, t)
            async with open_subscriber(connect=pub.endpoints[0], topics=["a/"]) as sub:
                await pub.wait_for_subscribers(1)
                got = [await sub.receive() for _ in range(2)]
                await pub.publish("b/1", "x")
                await pub.publish("a/1", "live")
                live = await sub.receive()
    assert sorted(m.topic for m in got) == ["a/1", "a/2"]
    assert (live.topic, live.body, live.replayed) == ("a/1", "live", False)


async def test_a_wildcard_subscriber_is_replayed_only_what_its_pattern_takes() -> None:
    """The request carries the pattern's literal prefix; what the prefix lets through
    but the pattern refuses is filtered (counted) in the replay as in the live stream."""
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, history=2) as pub:
            for t in ("site/a/temp", "site/a/hum", "site/b/temp", "site/a/b/temp", "x/temp"):
                await pub.publish(t, t)
            async with open_subscriber(connect=pub.endpoints[0],
                                       topics=["site/*/temp"]) as sub:
                await pub.wait_for_subscribers(1)
                got = [await sub.receive() for _ in range(2)]
                await pub.publish("site/c/hum", "no")
                await pub.publish("site/c/temp", "live")
                live = await sub.receive()
    assert sorted((m.topic, m.replayed) for m in got) == [("site/a/temp", True),
                                                         ("site/b/temp", True)]
    assert (live.topic, live.replayed) == ("site/c/temp", False)
    stats = sub.statistics()
    assert (stats.replayed, stats.filtered, stats.gaps) == (2, 3, 0)


async def test_many_distinct_topics_stay_within_the_bounds() -> None:
    with anyio.fail_after(20):
        async with open_publisher(bind=LOOPBACK, history=3, history_topics=1000,
                                  history_bytes=200_000) as pub:
            for start in range(0, 200_000, 5000):
                pub.publish_many_nowait((f"dev/{i}", b"x" * 20)
                                        for i in range(start, start + 5000))
                s = pub.statistics()
                assert s.history_topics <= 1000
                assert s.history_bytes <= 200_000
            s = pub.statistics()
            assert s.history_topics > 0
            assert s.history_evicted >= 200_000 - 1000
            # what is held is the most recent: the last topic published is there
            async with open_subscriber(connect=pub.endpoints[0], topics=["dev/199999"]) as sub:
                assert (await sub.receive()).topic == "dev/199999"


async def test_a_hostile_request_gets_no_more_than_the_bound() -> None:
    """A raw SUB that asks for everything, for all depth, gets at most ``history``
    per topic; a request that does not parse is counted and changes nothing."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, history=4, context=ctx) as pub:
            for i in range(50):
                for t in TOPICS:
                    await pub.publish(t, i)
            raw = raw_socket(ctx, zmq.SUB)
            try:
                raw.connect(pub.endpoints[0])
                raw.setsockopt(zmq.SUBSCRIBE, b"\xfe" + b"garbage")
                marker = MARKER + bytes(16)
                raw.setsockopt(zmq.SUBSCRIBE, encode_request(marker, ALL, [b""]))
                raw.setsockopt(zmq.SUBSCRIBE, marker)
                bundle = (await raw_receive(raw))[0]
            finally:
                raw.close()
            await eventually(lambda: pub.statistics().history_requests == 2)
            s = pub.statistics()
    assert bundle.startswith(marker)
    msgs = list(decode_bundle(bundle[len(marker):]))
    assert all(isinstance(m, Message) for m in msgs)
    assert [(m.topic, m.seq) for m in msgs if isinstance(m, Message)] == [
        (t, i) for t in TOPICS for i in range(46, 50)]
    assert s.replayed == 12


async def test_topics_subscribed_before_the_request_wait_for_it() -> None:
    """A connection that comes up late sends its subscriptions topics first: the
    publisher holds them back until the request, so a publication in between is in
    the replay and not sent live ahead of it."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ident = bytes(range(16))
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, history=4, context=ctx) as pub:
            assert isinstance(pub, HistoryPublisher)
            await pub.publish("t", 0)
            raw = raw_socket(ctx, zmq.SUB)
            try:
                raw.setsockopt(zmq.METADATA, OWNER + b":" + ident.hex().encode())
                raw.connect(pub.endpoints[0])
                raw.setsockopt(zmq.SUBSCRIBE, b"t")
                await eventually(lambda: (pub.statistics(), pub._deferred)[1])
                await pub.publish("t", 1)  # published while the topic is held back
                raw.setsockopt(zmq.SUBSCRIBE, encode_request(MARKER + ident, ALL, [b"t"]))
                raw.setsockopt(zmq.SUBSCRIBE, MARKER + ident)
                first = (await raw_receive(raw))[0]
                await pub.publish("t", 2)
                second = decode((await raw_receive(raw))[0])
            finally:
                raw.close()
    assert first.startswith(MARKER + ident)  # the replay comes first
    replay = [m.seq for m in decode_bundle(first[17:]) if isinstance(m, Message)]
    assert (replay, second.seq) == ([0, 1], 2)


def test_history_arguments_are_checked() -> None:
    with pytest.raises(LocalProtocolError, match="history"):
        open_publisher(bind=LOOPBACK, history=-1)
    with pytest.raises(LocalProtocolError, match="history_bytes"):
        open_publisher(bind=LOOPBACK, history=5, history_bytes=0)
    with pytest.raises(LocalProtocolError, match="history"):
        open_subscriber(connect="tcp://127.0.0.1:1", history=-2)


def test_a_request_carries_its_prefixes() -> None:
    req = encode_request(MARKER + b"\x01" * 16, 7, [encode_topic("a/"), b""])
    assert req[:1] == b"\xfe"
    assert struct.unpack_from("<16sIH", req, 1) == (b"\x01" * 16, 7, 2)
    assert req.endswith(b"a/\0\0")
