"""Wildcard subscriptions on real sockets: best effort and reliable, explicit
endpoints and nodes. libzmq filters each pattern's literal prefix; shoal filters the
rest, counts it in ``statistics().filtered``, and never counts it as a gap or lets it
hold a reliable chain back. Every test runs under ``anyio.fail_after``."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import shoal
from shoal import Message
from shoal._core import parse_subscription
from shoal.errors import InvalidTopicPattern
from support.nodes import pair
from support.pubsub import sync_subscribers
from support.waiting import eventually

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"

TOPICS = ["site/a/temp", "site/b/temp", "site/a/hum", "site/a/b/temp", "site/temp",
          "sites/a/temp", "other/a/temp", "log", "log/x", "log/x/y", "logs/x", "lo"]
PATTERNS = ["site/*/temp", "log/**"]


def wanted(topic: str, patterns: list[str] = PATTERNS) -> bool:
    return any(parse_subscription(p).matches(topic) for p in patterns)


def past_prefix(topic: str, patterns: list[str] = PATTERNS) -> bool:
    """Whether libzmq lets ``topic`` through (it starts with a literal prefix)."""
    return any(topic.startswith(parse_subscription(p).prefix) for p in patterns)


@pytest.mark.parametrize("body", [b"raw", {"msgpack": 1}], ids=["raw", "msgpack"])
async def test_a_pattern_subscriber_gets_exactly_the_matching_topics(body: Any) -> None:
    """Raw bodies take the fast receive path, msgpack ones the full decoder: both filter."""
    published = [t for _ in range(3) for t in TOPICS]
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=LOOPBACK) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=PATTERNS) as sub,
        ):
            assert sub.topics == set(PATTERNS)
            await sync_subscribers(pub.publish_nowait, sub)
            for topic in published:
                await pub.publish(topic, body)
            [got] = await sync_subscribers(pub.publish_nowait, sub)
            stats = sub.statistics()
    assert [m.topic for m in got] == [t for t in published if wanted(t)]
    assert all(m.body == body for m in got)
    # Only what passed the literal prefixes ("site/", "log") reached shoal and was
    # filtered there: "sites/a/temp", "other/a/temp" and "lo" never left libzmq.
    filtered = [t for t in published if past_prefix(t) and not wanted(t)]
    assert len(filtered) == 3 * 4  # site/a/hum, site/a/b/temp, site/temp, logs/x
    assert stats.filtered == len(filtered)
    assert stats.gaps == 0
    assert stats.malformed == 0


async def test_prefixes_without_wildcards_filter_nothing_in_shoal() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=LOOPBACK) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["site/"]) as sub,
        ):
            await sync_subscribers(pub.publish_nowait, sub)
            for topic in TOPICS:
                await pub.publish(topic, b"x")
            [got] = await sync_subscribers(pub.publish_nowait, sub)
            stats = sub.statistics()
    assert [m.topic for m in got] == [t for t in TOPICS if t.startswith("site/")]
    assert stats.filtered == 0


async def test_a_plain_prefix_beside_a_pattern_keeps_its_prefix_meaning() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=LOOPBACK) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["site/*/temp", "site/a/"]) as sub,
        ):
            await sync_subscribers(pub.publish_nowait, sub)
            for topic in TOPICS:
                await pub.publish(topic, b"x")
            [got] = await sync_subscribers(pub.publish_nowait, sub)
    assert [m.topic for m in got] == ["site/a/temp", "site/b/temp", "site/a/hum",
                                      "site/a/b/temp"]
    assert sub.statistics().filtered == 1  # site/temp passed "site/"; sites/... did not


async def test_filtered_publications_never_count_as_gaps_even_across_subscription_changes(
) -> None:
    """A stream delivered, then filtered for a while (its pattern withdrawn), then
    delivered again: the filtered stretch is not a hole."""
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=LOOPBACK) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["a/*"]) as sub,
        ):
            await sync_subscribers(pub.publish_nowait, sub)
            for _ in range(3):
                await pub.publish("a/x", b"1")
                await pub.publish("a/x/deep", b"f")  # filtered from the start
            [first] = await sync_subscribers(pub.publish_nowait, sub)
            sub.subscribe("a/*/deep/*")  # keeps "a/" subscribed in libzmq
            sub.unsubscribe("a/*")
            await sync_subscribers(pub.publish_nowait, sub)
            for _ in range(5):
                await pub.publish("a/x", b"2")  # now filtered
            [middle] = await sync_subscribers(pub.publish_nowait, sub)
            sub.subscribe("a/*")
            await sync_subscribers(pub.publish_nowait, sub)
            for _ in range(2):
                await pub.publish("a/x", b"3")
                await pub.publish("a/x/deep", b"f")
            [last] = await sync_subscribers(pub.publish_nowait, sub)
            stats = sub.statistics()
    assert [(m.topic, m.seq) for m in first] == [("a/x", 0), ("a/x", 1), ("a/x", 2)]
    assert middle == []
    assert [(m.topic, m.seq) for m in last] == [("a/x", 8), ("a/x", 9)]
    assert stats.filtered == 3 + 5 + 2
    assert stats.gaps == 0
    assert stats.out_of_order == 0


async def test_malformed_patterns_are_refused_before_anything_opens() -> None:
    with anyio.fail_after(5):
        with pytest.raises(InvalidTopicPattern, match="'\\*' matches one level"):
            async with shoal.open_subscriber(connect="tcp://127.0.0.1:9", topics=["a/**b"]):
                pass
        with pytest.raises(InvalidTopicPattern):
            async with shoal.open_subscriber(connect="tcp://127.0.0.1:9", topics=["a*"],
                                             reliable=True):
                pass
        async with shoal.open_subscriber(connect="tcp://127.0.0.1:9", topics=()) as sub:
            with pytest.raises(InvalidTopicPattern):
                sub.subscribe("**x")
            assert sub.topics == frozenset()


async def collect(sub: Any, into: list[Message], n: int) -> None:
    async for msg in sub:
        into.append(msg)
        if len(into) == n:
            return


async def test_a_reliable_pattern_subscriber_gets_every_match_once_in_order_nothing_resent(
) -> None:
    """The publisher filters by the literal prefix ("site/") only; the subscriber places
    every publication in its chain and acknowledges it, delivering the matches. Nothing
    is missing, nothing is sent again, and the publisher's book empties."""
    n = 3000
    published = [(TOPICS[i % len(TOPICS)], i) for i in range(n)]
    expected = [(t, i) for t, i in published if wanted(t, ["site/*/temp"])]
    past = [t for t, _ in published if t.startswith("site/")]
    got: list[Message] = []
    with anyio.fail_after(30):
        async with (
            shoal.open_publisher(bind=LOOPBACK, reliable=True, rto=2.0) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["site/*/temp"],
                                  reliable=True) as sub,
        ):
            await pub.wait_for_subscribers(1)
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(collect, sub, got, len(expected))
                for topic, i in published:
                    await pub.publish(topic, i)
            await eventually(lambda: pub.statistics().in_flight == 0)
            pst, sst = pub.statistics(), sub.statistics()
    assert [(m.topic, m.body) for m in got] == expected
    assert pst.published == len(past)  # the publisher sent what passed the prefix
    assert pst.acked == len(past)  # ... and every one of them was acknowledged
    assert (pst.retransmitted, pst.undelivered, pst.dropped_subscribers) == (0, 0, 0)
    assert sst.filtered == len(past) - len(expected)
    assert (sst.received, sst.missing, sst.duplicates, sst.resyncs) == (
        len(expected), 0, 0, 0)


async def test_patterns_over_nodes_best_effort_and_reliable() -> None:
    with anyio.fail_after(15):
        async with (
            pair() as (a, b),
            a.open_publisher("fleet") as pub,
            a.open_publisher("fleet-r", reliable=True) as rpub,
            b.open_subscriber("fleet", topics=["site/*/temp"]) as sub,
            b.open_subscriber("fleet-r", topics=["log/**"], reliable=True) as rsub,
        ):
            await pub.wait_for_subscribers(1)
            await rpub.wait_for_subscribers(1)
            for t in TOPICS:
                await pub.publish(t, t)
                await rpub.publish(t, t)
            await pub.publish("site/END/temp", None)
            await rpub.publish("log/END", None)

            async def until_end(s: Any) -> list[str]:
                got: list[str] = []
                async for msg in s:
                    got.append(msg.topic)
                    if "END" in msg.topic:
                        return got
                raise AssertionError("subscriber closed")

            assert await until_end(sub) == ["site/a/temp", "site/b/temp", "site/END/temp"]
            assert await until_end(rsub) == ["log", "log/x", "log/x/y", "log/END"]
            assert sub.statistics().gaps == 0
            assert sub.statistics().filtered == 3  # site/a/hum, site/a/b/temp, site/temp
            assert rsub.statistics().filtered == 1  # logs/x ("lo" is not past "log")
