"""The waits that tests rely on can fail: ``eventually`` says what it waited for, and
``still_waiting`` tells a wait from a return."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from support.waiting import eventually, still_waiting


async def test_eventually_returns_once_the_condition_holds(
        autojump_clock: trio.testing.MockClock) -> None:
    flag = trio.Event()

    async def later() -> None:
        await trio.sleep(1)
        flag.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(later)
        await eventually(flag.is_set)
    assert trio.current_time() >= 1


async def test_eventually_fails_naming_the_condition_after_its_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    never_true: list[int] = []
    with pytest.raises(AssertionError, match=r"after 2 s: .*never_true"):
        await eventually(lambda: never_true, within=2)
    with pytest.raises(AssertionError, match=r"after 0\.5 s: the answer"):
        await eventually(lambda: False, within=0.5, what="the answer")


async def test_still_waiting_tells_a_wait_from_a_return() -> None:
    with trio.fail_after(5):
        assert await still_waiting(trio.sleep_forever)
        assert not await still_waiting(trio.lowlevel.checkpoint)
        event = trio.Event()
        event.set()
        assert not await still_waiting(event.wait)
