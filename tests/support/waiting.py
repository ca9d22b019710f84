"""Waiting for a condition that has no event of its own (a counter, a list filled by
another task), bounded by a deadline that fails with a message naming what was awaited.

Prefer an event when there is one (``wait_acked()``, a message on the same ordered
stream, ``anyio.Event``): ``eventually`` polls, so it is for state that only changes
as a side effect of something else.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import anyio
import sniffio
import trio.testing

DEFAULT_WITHIN = 5.0
"""Seconds ``eventually`` waits by default: well beyond what any loopback exchange
takes, and below the tests' own ``fail_after`` so that this message is the one seen."""


def describe(condition: Callable[[], object]) -> str:
    """The condition's source line (a lambda's text), or its name."""
    try:
        source = inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)
    return " ".join(source.split())


async def eventually(condition: Callable[[], object], *, within: float = DEFAULT_WITHIN,
                     poll: float = 0.005, what: str | None = None) -> None:
    """Return as soon as ``condition()`` is true; checked every ``poll`` seconds.

    Raises AssertionError after ``within`` seconds, naming ``what`` (default: the
    condition's source) and the time waited. The caller's ``anyio.fail_after``
    (``trio.fail_after`` under pytest-trio) still bounds the test as a whole.
    """
    deadline = anyio.current_time() + within
    while not condition():
        if anyio.current_time() >= deadline:
            raise AssertionError(
                f"still not true after {within:g} s: {what or describe(condition)}")
        await anyio.sleep(poll)  # the state polled has no event to wait on


async def still_waiting(call: Callable[[], Awaitable[object]]) -> bool:
    """Whether ``call()`` is still waiting once every task is blocked; it is cancelled
    either way.

    For a wait that only outside input can end (a peer connecting, an acknowledgement
    arriving): when no such input is on its way, "every task blocked" is the moment
    that proves the wait would go on, with no sleep. Where input may be in flight
    through libzmq's own threads, this proves nothing: wait for that input instead.
    """
    returned = False

    async def run() -> None:
        nonlocal returned
        await call()
        returned = True

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(run)
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return not returned


async def wait_all_tasks_blocked(cushion: float = 0.0) -> None:
    """Return once every other task is blocked (waiting on I/O, a timer, an event) and
    has stayed so for ``cushion`` seconds: what ``trio.testing.wait_all_tasks_blocked``
    is under trio, on every event loop.

    Under asyncio (uvloop too) a task is blocked while it awaits a future that is not
    done; a task that is runnable, or whose future is done but has not run yet, is not.
    The check is passed twice in a row, one loop iteration apart, so that the callbacks
    of I/O that was ready at the first one have run (and woken their tasks) by the
    second. A cushion is waited out and then checked again: anything that arrived
    during it has run by then. AnyIO's ``wait_all_tasks_blocked`` sleeps 0.1 s after
    every check that fails and has no cushion.
    """
    if sniffio.current_async_library() == "trio":
        await trio.testing.wait_all_tasks_blocked(cushion)
        return
    await _asyncio_all_blocked()
    if cushion > 0:
        await anyio.sleep(cushion)
        await _asyncio_all_blocked()


def _others_blocked(me: asyncio.Task[object] | None) -> bool:
    for task in asyncio.all_tasks():
        if task is me:
            continue
        waiter = getattr(task, "_fut_waiter", None)  # asyncio keeps it on every task
        if waiter is None or waiter.done():
            return False
    return True


async def _asyncio_all_blocked() -> None:
    me = asyncio.current_task()
    passed = 0
    while passed < 2:
        await asyncio.sleep(0)
        passed = passed + 1 if _others_blocked(me) else 0
