"""Reliable pub/sub history: a late joiner gets the last publications of each topic
first, at least once like everything else (sent again when lost), then the live
stream in order, with nothing twice and nothing missing at the seam. Loopback only,
every test under ``anyio.fail_after``."""

from __future__ import annotations

import anyio
import pytest

from shoal import Message
from shoal.patterns import open_publisher, open_subscriber

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"
TOPICS = ("sensors/a", "sensors/b", "sensors/c")


def by_topic(msgs: list[Message]) -> dict[str, list[Message]]:
    out: dict[str, list[Message]] = {}
    for m in msgs:
        out.setdefault(m.topic, []).append(m)
    return out


async def test_a_late_reliable_subscriber_gets_the_last_five_of_each_topic_then_live() -> None:
    with anyio.fail_after(10):
        async with open_publisher(bind=LOOPBACK, reliable=True, history=5) as pub:
            for i in range(100):
                for t in TOPICS:
                    await pub.publish(t, i)
            async with open_subscriber(connect=pub.endpoints[0], reliable=True,
                                       topics=["sensors/"]) as sub:
                replay = [await sub.receive() for _ in range(15)]
                await pub.wait_for_subscribers(1)
                for t in TOPICS:
                    await pub.publish(t, 100)
                live = [await sub.receive() for _ in range(3)]
                await pub.wait_acked()
    assert [(m.topic, m.body, m.replayed) for m in replay] == [
        (t, i, True) for t in TOPICS for i in range(95, 100)]
    assert [(m.topic, m.body, m.replayed) for m in live] == [(t, 100, False) for t in TOPICS]
    stats = sub.statistics()
    assert (stats.replayed, stats.received, stats.missing, stats.duplicates) == (15, 18, 0, 0)
    assert pub.statistics().replayed == 15
    assert pub.statistics().in_flight == 0


async def test_the_reliable_seam_holds_while_the_publisher_keeps_publishing() -> None:
    """Subscribers join one after another while three topics are published without
    pause: each gets 5 replayed per topic, then live ones that continue them with no
    duplicate and no hole (the bodies count per topic)."""
    with anyio.fail_after(30):
        async with open_publisher(bind=LOOPBACK, reliable=True, history=5) as pub:
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
                for _ in range(5):
                    await anyio.sleep(0.005)
                    async with open_subscriber(connect=pub.endpoints[0], reliable=True,
                                               topics=["sensors/"]) as sub:
                        got: list[Message] = []
                        while sum(not m.replayed for m in got) < 300:
                            got += await sub.receive_batch()
                    replayed = [m for m in got if m.replayed]
                    assert len(replayed) == 15
                    assert got[:15] == replayed  # the replay comes first
                    for topic, msgs in by_topic(got).items():
                        bodies = [m.body for m in msgs]
                        assert bodies == list(range(bodies[0], bodies[0] + len(bodies))), topic
                    assert sub.statistics().missing == 0
                stop.set()


async def test_a_replay_that_overflows_the_pipe_is_sent_again_until_complete() -> None:
    """A replay far larger than the connection's high-water mark: what the pipe
    refused is sent again as the subscriber acknowledges, in order, all of it. The
    acknowledgements drive it, not the retransmission timer: ``rto`` is long enough
    that a loaded machine's late ack does not resend a pipeful (duplicates)."""
    n = 2000
    with anyio.fail_after(20):
        async with open_publisher(bind=LOOPBACK, reliable=True, history=1,
                                  high_water_mark=20, rto=0.5) as pub:
            await pub.publish_many([(f"dev/{i}", i) for i in range(n)])
            async with open_subscriber(connect=pub.endpoints[0], reliable=True,
                                       high_water_mark=20) as sub:
                got = [await sub.receive() for _ in range(n)]
                await pub.wait_acked()
    assert [m.body for m in got] == list(range(n))
    assert all(m.replayed for m in got)
    assert pub.statistics().replayed == n
    assert sub.statistics().duplicates == 0


async def test_history_zero_and_depth_and_patterns_choose_what_is_replayed() -> None:
    with anyio.fail_after(15):
        async with open_publisher(bind=LOOPBACK, reliable=True, history=3) as pub:
            for t in ("site/a/temp", "site/a/hum", "site/b/temp"):
                for i in range(3):
                    await pub.publish(t, i)
            ep = pub.endpoints[0]
            async with open_subscriber(connect=ep, reliable=True, history=0) as none, \
                    open_subscriber(connect=ep, reliable=True, history=1) as last, \
                    open_subscriber(connect=ep, reliable=True,
                                    topics=["site/*/temp"]) as temps:
                await pub.wait_for_subscribers(3)
                with anyio.move_on_after(0.2):
                    await none.receive()
                    raise AssertionError("history=0 was replayed to")
                got_last = [await last.receive() for _ in range(3)]
                got_temps = [await temps.receive() for _ in range(6)]
                await pub.publish("site/c/temp", "live")
                assert (await none.receive()).body == "live"
                assert (await last.receive()).body == "live"
                assert (await temps.receive()).body == "live"
    assert sorted((m.topic, m.body) for m in got_last) == [
        ("site/a/hum", 2), ("site/a/temp", 2), ("site/b/temp", 2)]
    assert all(m.replayed for m in got_last + got_temps)
    assert sorted((m.topic, m.body) for m in got_temps) == [
        ("site/a/temp", i) for i in range(3)] + [("site/b/temp", i) for i in range(3)]
    assert temps.statistics().filtered == 3  # the hum ones: placed, acknowledged, dropped
    assert none.statistics().replayed == 0


async def test_a_subscriber_that_binds_gets_its_replay_too() -> None:
    """The publisher connects and says hello; the subscriber's answer opens its book,
    which starts with the value published before."""
    with anyio.fail_after(10):
        async with open_subscriber(bind=LOOPBACK, reliable=True) as sub, \
                open_publisher(connect=sub.endpoints[0], reliable=True, history=1) as pub:
            await pub.publish("setpoint", 21.0)
            await pub.publish("setpoint", 21.5)  # before the subscriber could answer
            await pub.wait_for_subscribers(1)
            await pub.publish("setpoint", 22.0)
            got = [await sub.receive() for _ in range(2)]
    assert [(m.body, m.replayed) for m in got] == [(21.5, True), (22.0, False)]
