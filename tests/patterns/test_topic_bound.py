"""A publisher's numbering table is bounded by ``max_topics``: when a topic new to a
full table comes, the publisher drops the table and goes on in a new stream, every
topic numbered from 0 again. Subscribers see no gap and nothing out of order across
the switch, and a history replay still has no duplicate and no hole at its seam.
Loopback only, every I/O test under ``anyio.fail_after``."""

from __future__ import annotations

import anyio
import pytest

from shoal import Message
from shoal.errors import EncodeError, LocalProtocolError
from shoal.patterns import open_publisher, open_subscriber
from support.nodes import pair

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"


def numbering(topics: list[str], bound: int) -> list[tuple[int, int]]:
    """The model: per publication, (which stream, counted from 0; its seq)."""
    table: dict[str, int] = {}
    stream = 0
    out = []
    for t in topics:
        if t not in table:
            if len(table) >= bound:
                table = {}
                stream += 1
            table[t] = 0
        out.append((stream, table[t]))
        table[t] += 1
    return out


def as_seen(msgs: list[Message]) -> list[tuple[int, int]]:
    """Per message, (its stream by order of first appearance; its seq)."""
    order: dict[int, int] = {}
    return [(order.setdefault(m.stream, len(order)), m.seq) for m in msgs]


def check_runs(msgs: list[Message]) -> None:
    """Within each (stream, topic), sequence numbers are consecutive: nothing twice,
    nothing missing."""
    runs: dict[tuple[int, str], list[int]] = {}
    for m in msgs:
        runs.setdefault((m.stream, m.topic), []).append(m.seq)
    for key, seqs in runs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), key


async def test_a_full_table_moves_the_publisher_to_a_new_stream_without_a_gap() -> None:
    topics = [f"t/{i}" for _ in range(5) for i in range(6)]  # 6 topics, a table of 4
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, max_topics=4) as pub, \
                open_subscriber(connect=pub.endpoints[0]) as sub:
            await pub.wait_for_subscribers(1)
            for n, t in enumerate(topics):
                await pub.publish(t, n)
            got = [await sub.receive() for _ in topics]
            stats = pub.statistics()
    model = numbering(topics, 4)
    assert [m.body for m in got] == list(range(len(topics)))
    assert as_seen(got) == model
    assert stats.topic_resets == model[-1][0] > 0
    assert stats.topics <= 4
    s = sub.statistics()
    assert (s.gaps, s.out_of_order, s.received) == (0, 0, len(topics))
    assert len({(m.sender, m.epoch) for m in got}) == 1  # the same publisher throughout


async def test_a_batch_may_switch_streams_part_way() -> None:
    batches = [[(f"t/{(b * 3 + i) % 7}", b * 10 + i) for i in range(9)] for b in range(6)]
    topics = [t for batch in batches for t, _ in batch]
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, max_topics=3) as pub, \
                open_subscriber(connect=pub.endpoints[0]) as sub:
            await pub.wait_for_subscribers(1)
            for batch in batches:
                pub.publish_many_nowait(batch)
                assert pub.statistics().topics <= 3
            got = [await sub.receive() for _ in topics]
    assert [m.body for m in got] == [body for batch in batches for _, body in batch]
    assert as_seen(got) == numbering(topics, 3)
    assert pub.statistics().topic_resets == numbering(topics, 3)[-1][0]
    s = sub.statistics()
    assert (s.gaps, s.out_of_order) == (0, 0)


async def test_a_batch_that_fails_after_a_switch_leaves_no_hole() -> None:
    """The switch stands (the old stream is abandoned), but nothing of the failed
    batch is sent and the new stream starts at 0 with what comes next."""
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, max_topics=2) as pub, \
                open_subscriber(connect=pub.endpoints[0]) as sub:
            await pub.wait_for_subscribers(1)
            pub.publish_many_nowait([("a", 1), ("b", 2)])
            with pytest.raises(EncodeError):
                pub.publish_many_nowait([("a", 3), ("c", 4), ("c", object())])
            pub.publish_many_nowait([("c", 5), ("a", 6)])
            got = [await sub.receive() for _ in range(4)]
    assert [(m.topic, m.body, m.seq) for m in got] == [
        ("a", 1, 0), ("b", 2, 0), ("c", 5, 0), ("a", 6, 0)]
    assert got[0].stream == got[1].stream != got[2].stream == got[3].stream
    assert pub.statistics().published == 4
    assert sub.statistics().gaps == 0


async def test_the_history_seam_holds_across_stream_switches() -> None:
    """Topics published in bursts of 5 into a table of 2, with history=8: each
    topic's history spans two streams. Subscribers join while publishing goes on;
    each gets 8 per topic replayed, then live, nothing twice and nothing missing."""
    topics = ("a", "b", "c")
    with anyio.fail_after(20):
        async with open_publisher(bind=LOOPBACK, history=8, max_topics=2,
                                  high_water_mark=100_000) as pub:
            for r in range(4):
                for t in topics:
                    pub.publish_many_nowait([(t, (r, k)) for k in range(5)])
            stop = anyio.Event()

            async def keep_publishing() -> None:
                r = 4
                while not stop.is_set():
                    for t in topics:
                        pub.publish_many_nowait([(t, (r, k)) for k in range(5)])
                    r += 1
                    await anyio.sleep(0.001)

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(keep_publishing)
                for _ in range(4):
                    await anyio.sleep(0.005)
                    async with open_subscriber(connect=pub.endpoints[0]) as sub:
                        got: list[Message] = []
                        while sum(not m.replayed for m in got) < 150:
                            got += await sub.receive_batch()
                    replayed = [m for m in got if m.replayed]
                    assert len(replayed) == 8 * len(topics)
                    assert got[:len(replayed)] == replayed  # the replay comes first
                    for t in topics:  # a topic's history spans two streams
                        assert len({m.stream for m in replayed if m.topic == t}) == 2
                    check_runs(got)
                    s = sub.statistics()
                    assert (s.gaps, s.out_of_order, s.replay_duplicates) == (0, 0, 0)
                stop.set()
    assert pub.statistics().topic_resets > 4


async def test_many_distinct_topics_stay_within_both_bounds() -> None:
    """300,000 distinct topics: the numbering table and the history hold no more
    than their bounds, and the last value is still replayed."""
    n, batch = 300_000, 5000
    with anyio.fail_after(30):
        async with open_publisher(bind=LOOPBACK, history=1, history_topics=1000,
                                  max_topics=20_000) as pub:
            for start in range(0, n, batch):
                pub.publish_many_nowait((f"dev/{i}", b"v") for i in range(start, start + batch))
                s = pub.statistics()
                assert s.topics <= 20_000
                assert s.history_topics <= 1000
            assert s.topic_resets == n // 20_000 - 1
            async with open_subscriber(connect=pub.endpoints[0], topics=["dev/299999"]) as sub:
                last = await sub.receive()
    assert (last.topic, last.seq, last.replayed) == ("dev/299999", 0, True)


async def test_a_node_publisher_takes_max_topics() -> None:
    with anyio.fail_after(10):
        async with pair() as (a, b), a.open_publisher("plant", max_topics=1) as pub, \
                b.open_subscriber("plant") as sub:
            await pub.wait_for_subscribers(1)
            for t in ("x", "y", "x"):
                await pub.publish(t, t)
            got = [await sub.receive() for _ in range(3)]
    assert as_seen(got) == [(0, 0), (1, 0), (2, 0)]
    assert (pub.statistics().topic_resets, sub.statistics().gaps) == (2, 0)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
def test_max_topics_is_checked(bad: object) -> None:
    with pytest.raises(LocalProtocolError, match="max_topics"):
        open_publisher(bind=LOOPBACK, max_topics=bad)  # type: ignore[call-overload]
    with pytest.raises(LocalProtocolError, match="max_topics"):
        open_publisher(bind=LOOPBACK, history=1, max_topics=bad)  # type: ignore[call-overload]
