"""The waits that tests rely on can fail: ``eventually`` says what it waited for,
``still_waiting`` tells a wait from a return, and ``wait_all_tasks_blocked`` returns
only once nothing can run, on every event loop."""

from __future__ import annotations

import socket

import anyio
import pytest
import trio
import trio.testing

from support.waiting import eventually, still_waiting, wait_all_tasks_blocked


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


@pytest.mark.anyio
async def test_still_waiting_tells_a_wait_from_a_return() -> None:
    with anyio.fail_after(5):
        assert await still_waiting(anyio.sleep_forever)
        assert not await still_waiting(anyio.lowlevel.checkpoint)
        event = anyio.Event()
        event.set()
        assert not await still_waiting(event.wait)


@pytest.mark.anyio
async def test_wait_all_tasks_blocked_waits_for_a_busy_task_and_for_ready_io() -> None:
    steps = 0
    received: list[bytes] = []

    async def busy() -> None:
        nonlocal steps
        for _ in range(200):  # runnable all along, yet never waiting for anything
            steps += 1
            await anyio.lowlevel.checkpoint()

    async def reader(sock: socket.socket) -> None:
        await anyio.wait_readable(sock)
        received.append(sock.recv(10))

    a, b = socket.socketpair()
    with a, b, anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(busy)
            await wait_all_tasks_blocked()
            assert steps == 200
            tasks.start_soon(reader, a)
            await wait_all_tasks_blocked()  # the reader waits on its socket
            assert received == []
            b.send(b"x")  # readable now: the reader's wake is on its way
            await wait_all_tasks_blocked()
            assert received == [b"x"]


@pytest.mark.anyio
async def test_wait_all_tasks_blocked_with_a_cushion_lets_a_near_timer_fire() -> None:
    woke = anyio.Event()

    async def nap() -> None:
        await anyio.sleep(0.02)
        woke.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(nap)
            await wait_all_tasks_blocked(cushion=0.2)
            assert woke.is_set()
