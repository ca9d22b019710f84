"""History over nodes: a display node that starts late gets the last value at once."""

from __future__ import annotations

import anyio
import pytest

from support.nodes import pair

pytestmark = pytest.mark.anyio


async def test_a_late_subscriber_node_gets_the_last_values_then_live() -> None:
    with anyio.fail_after(10):
        async with pair() as (a, b), a.open_publisher("plant", history=1) as pub:
            for value in (19.0, 20.5, 21.5):
                await pub.publish("boiler/setpoint", value)
            await pub.publish("boiler/state", "on")
            await pub.publish("pump/state", "off")
            async with b.open_subscriber("plant", topics=["boiler/"]) as display:
                first = [await display.receive() for _ in range(2)]
                await pub.wait_for_subscribers(1)
                await pub.publish("boiler/setpoint", 22.0)
                live = await display.receive()
    assert [(m.topic, m.body, m.replayed) for m in first] == [
        ("boiler/setpoint", 21.5, True), ("boiler/state", "on", True)]
    assert (live.topic, live.body, live.seq, live.replayed) == ("boiler/setpoint", 22.0, 3,
                                                                 False)
    assert display.statistics().gaps == 0
    assert pub.statistics().history_topics == 3


async def test_a_node_subscriber_with_history_zero_gets_only_live() -> None:
    with anyio.fail_after(10):
        async with pair() as (a, b), a.open_publisher("plant", history=5) as pub:
            await pub.publish("t", "old")
            async with b.open_subscriber("plant", history=0) as sub:
                await pub.wait_for_subscribers(1)
                await pub.publish("t", "new")
                msg = await sub.receive()
    assert (msg.body, msg.replayed) == ("new", False)
    assert sub.statistics().replayed == 0


async def test_a_late_reliable_subscriber_node_gets_the_last_values_then_live() -> None:
    with anyio.fail_after(15):
        async with pair() as (a, b), \
                a.open_publisher("plant", reliable=True, history=1) as pub:
            for value in (19.0, 21.5):
                await pub.publish("boiler/setpoint", value)
            await pub.publish("pump/state", "off")
            async with b.open_subscriber("plant", reliable=True,
                                         topics=["boiler/"]) as display:
                first = await display.receive()
                await pub.wait_for_subscribers(1)
                await pub.publish("boiler/setpoint", 22.0)
                live = await display.receive()
                await pub.wait_acked()
    assert (first.topic, first.body, first.replayed) == ("boiler/setpoint", 21.5, True)
    assert (live.body, live.replayed) == (22.0, False)
    assert (display.statistics().replayed, display.statistics().missing) == (1, 0)
    assert pub.statistics().history_topics == 2
