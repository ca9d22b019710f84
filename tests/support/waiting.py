"""Waiting for a condition that has no event of its own (a counter, a list filled by
another task), bounded by a deadline that fails with a message naming what was awaited.

Prefer an event when there is one (``wait_acked()``, a message on the same ordered
stream, ``trio.Event``): ``eventually`` polls, so it is for state that only changes
as a side effect of something else.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio
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
    condition's source) and the time waited. The caller's ``trio.fail_after`` still
    bounds the test as a whole.
    """
    deadline = trio.current_time() + within
    while not condition():
        if trio.current_time() >= deadline:
            raise AssertionError(
                f"still not true after {within:g} s: {what or describe(condition)}")
        await trio.sleep(poll)  # the state polled has no event to wait on


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

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return not returned
