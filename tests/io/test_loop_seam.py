"""The event-loop seam (``shoal._io``) under asyncio and uvloop: the primitives that
asyncio lacks, written for shoal, keep trio's contracts. Under trio they *are* trio's
functions (checked here too), so only the identity needs a test there."""

from __future__ import annotations

import asyncio
import socket

import anyio
import pytest
import trio

from shoal import _io
from shoal._io._asyncio import FdClosed, ParkingLot
from support.loops import ASYNCIO_RUNNERS, Run

on_asyncio_loops = pytest.mark.parametrize(
    "run", list(ASYNCIO_RUNNERS.values()), ids=list(ASYNCIO_RUNNERS))


def test_under_trio_the_seam_is_trio_itself() -> None:
    async def main() -> None:
        loop = _io.current()
        assert loop.name == "trio"
        assert loop.wait_readable is trio.lowlevel.wait_readable
        assert loop.checkpoint is trio.lowlevel.checkpoint
        assert loop.cancel_shielded_checkpoint is trio.lowlevel.cancel_shielded_checkpoint
        assert loop.ParkingLot is trio.lowlevel.ParkingLot
        assert loop.fail_after is trio.fail_after

    trio.run(main)


def test_outside_an_event_loop_there_is_no_seam() -> None:
    with pytest.raises(RuntimeError, match="no trio or asyncio event loop"):
        _io.current()


@on_asyncio_loops
def test_wait_readable_wakes_on_data_and_one_waiter_per_fd(run: Run) -> None:
    async def main() -> None:
        loop = _io.current()
        assert loop.name == "asyncio"
        a, b = socket.socketpair()
        try:
            async with asyncio.timeout(5):
                waiter = asyncio.create_task(loop.wait_readable(a.fileno()))
                await asyncio.sleep(0.01)
                assert not waiter.done()
                with pytest.raises(anyio.BusyResourceError):
                    await loop.wait_readable(a.fileno())
                b.send(b"x")
                await waiter
                # Readable and nobody waiting: the next wait returns at once.
                await loop.wait_readable(a.fileno())
                a.recv(1)
                # Nothing to read: a wait sleeps (no readiness reported before the
                # read reaches it).
                wakes = 0
                with anyio.move_on_after(0.1) as scope:
                    while True:
                        await loop.wait_readable(a.fileno())
                        wakes += 1
                assert scope.cancelled_caught
                assert wakes == 0
        finally:
            loop.notify_closing(a.fileno())
            a.close()
            b.close()

    run(main())


@on_asyncio_loops
def test_notify_closing_wakes_the_waiter_with_fd_closed(run: Run) -> None:
    async def main() -> None:
        loop = _io.current()
        a, b = socket.socketpair()
        try:
            async with asyncio.timeout(5):
                waiter = asyncio.create_task(loop.wait_readable(a.fileno()))
                await asyncio.sleep(0.01)
                loop.notify_closing(a.fileno())
                with pytest.raises(FdClosed):
                    await waiter
                # The FD can be waited on again afterwards (the socket layer's "poke").
                b.send(b"x")
                await loop.wait_readable(a.fileno())
        finally:
            loop.notify_closing(a.fileno())
            a.close()
            b.close()

    run(main())


@on_asyncio_loops
def test_a_shielded_checkpoint_defers_cancellation_to_the_next_await(run: Run) -> None:
    """A send that queued its message yields without raising; the cancellation (here
    an asyncio.timeout's) arrives at the next await and the timeout still reports
    TimeoutError, so the task's cancel count was kept."""
    async def main() -> None:
        loop = _io.current()
        reached = []

        async def spin() -> None:
            async with asyncio.timeout(0.01):
                while True:
                    task = asyncio.current_task()
                    assert task is not None
                    if task.cancelling():
                        await loop.cancel_shielded_checkpoint()  # must not raise
                        reached.append("shielded")
                        await asyncio.sleep(0)  # raises here
                        reached.append("never")
                    await loop.cancel_shielded_checkpoint()

        with pytest.raises(TimeoutError):
            await spin()
        assert reached == ["shielded"]
        task = asyncio.current_task()
        assert task is not None
        assert task.cancelling() == 0

    run(main())


@on_asyncio_loops
def test_checkpoint_if_cancelled_raises_only_when_a_cancel_is_pending(run: Run) -> None:
    async def main() -> None:
        loop = _io.current()
        await loop.checkpoint_if_cancelled()  # nothing pending: no effect
        with anyio.CancelScope() as scope:
            scope.cancel()
            await asyncio.sleep(0)  # AnyIO delivers its cancellation as a task.cancel()
            raise AssertionError("not reached")
        assert scope.cancelled_caught
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop.checkpoint_if_cancelled()
        task.uncancel()

    run(main())


@on_asyncio_loops
def test_parking_lot_skips_waiters_cancelled_before_they_ran(run: Run) -> None:
    async def main() -> None:
        lot = ParkingLot()
        first = asyncio.create_task(lot.park())
        second = asyncio.create_task(lot.park())
        await asyncio.sleep(0)
        assert len(lot) == 2
        first.cancel()  # cancelled, its task has not run its cleanup yet
        assert lot.unpark(count=1) == 1  # the wake goes to the second, not the dead one
        async with asyncio.timeout(5):
            await second
            with pytest.raises(asyncio.CancelledError):
                await first
        assert len(lot) == 0
        assert lot.unpark_all() == 0

    run(main())


@on_asyncio_loops
def test_the_effective_deadline_is_anyio_s_own_answer(run: Run) -> None:
    async def main() -> None:
        loop = _io.current()
        assert loop.current_effective_deadline() == anyio.current_effective_deadline()
        with anyio.move_on_after(5):
            with anyio.CancelScope(shield=True):
                assert loop.current_effective_deadline() == float("inf")
                await asyncio.sleep(0)
            with anyio.fail_after(2) as inner:
                assert loop.current_effective_deadline() == inner.deadline
                assert loop.current_effective_deadline() == anyio.current_effective_deadline()
                await asyncio.sleep(0)

    run(main())


async def _cancel_lands_in_a_shielded_checkpoint(loop: _io.Loop) -> None:
    """Yield with cancel_shielded_checkpoint until a cancellation has landed in one
    (the task's cancel count went up across it, and it returned normally)."""
    task = asyncio.current_task()
    assert task is not None
    for _ in range(1000):
        before = task.cancelling()
        await loop.cancel_shielded_checkpoint()
        if task.cancelling() > before:
            return
    raise AssertionError("no cancellation landed in 1000 checkpoints")


@on_asyncio_loops
def test_a_timeout_block_that_ends_after_a_shielded_checkpoint_leaks_nothing(run: Run) -> None:
    """The timeout fires during the shielded yield; the block then ends without
    another await, so the timeout's exit withdraws the request: the task is not
    cancelled later, outside the block."""
    async def main() -> None:
        loop = _io.current()
        for _ in range(5):
            async with asyncio.timeout(0):
                await _cancel_lands_in_a_shielded_checkpoint(loop)
            await asyncio.sleep(0.001)  # outside the block: must not raise
            await asyncio.sleep(0)
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0

    run(main())


@on_asyncio_loops
def test_an_anyio_scope_cancelled_during_a_shielded_checkpoint_leaks_nothing(run: Run) -> None:
    async def main() -> None:
        loop = _io.current()
        for _ in range(5):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await _cancel_lands_in_a_shielded_checkpoint(loop)
            await asyncio.sleep(0.001)  # outside the scope: must not raise
            task = asyncio.current_task()
            assert task is not None
            assert task.cancelling() == 0
            with anyio.CancelScope() as scope:  # inside, the next await is cancelled
                scope.cancel()
                await _cancel_lands_in_a_shielded_checkpoint(loop)
                await asyncio.sleep(1)
                raise AssertionError("not reached")
            assert scope.cancelled_caught

    run(main())


@on_asyncio_loops
def test_task_cancel_during_a_shielded_checkpoint_arrives_at_the_next_await(run: Run) -> None:
    async def main() -> None:
        loop = _io.current()
        steps: list[str] = []

        async def worker() -> None:
            await _cancel_lands_in_a_shielded_checkpoint(loop)
            steps.append("returned")
            await asyncio.sleep(5)
            steps.append("never")

        task = asyncio.create_task(worker())
        await asyncio.sleep(0)
        task.cancel("stop")
        with pytest.raises(asyncio.CancelledError, match="stop"):
            async with asyncio.timeout(5):
                await task
        assert steps == ["returned"]

    run(main())
