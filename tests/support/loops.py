"""Which event loop a test runs on, for the few checks that differ between them.

Tests marked ``pytest.mark.anyio`` run once per loop (``tests/conftest.py``): trio,
asyncio's default loop, and uvloop. What they may tell apart is what shoal documents
as differing: the exception a shoal ``deadline=`` raises when it passes (the loop's
own, ``trio.TooSlowError`` or ``TimeoutError``), and which loop a peer process of the
test's should run (``current_loop``). ``FrozenClockLoop`` is asyncio's counterpart of
trio's stopped ``MockClock``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import sniffio
import trio

Run = Callable[[Coroutine[Any, Any, None]], None]
"""Runs a coroutine to completion on a fresh event loop (``asyncio.run``, ``uvloop.run``)."""

ASYNCIO_RUNNERS: dict[str, Run] = {"asyncio": asyncio.run}
"""The asyncio loops, by name, for tests written as plain asyncio programs (no AnyIO
runner): asyncio's default loop, and uvloop."""
try:
    import uvloop

    ASYNCIO_RUNNERS["uvloop"] = uvloop.run
except ImportError:  # pragma: no cover - uvloop is in the test extra
    pass


def current_loop() -> str:
    """``"trio"``, ``"asyncio"`` or ``"uvloop"``: the loop running the calling task
    (what ``support/peer.py --loop`` takes)."""
    name = sniffio.current_async_library()
    if name == "trio":
        return "trio"
    if name != "asyncio":
        raise AssertionError(f"shoal's tests run under trio or asyncio, not {name}")
    loop_module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if loop_module.split(".")[0] == "uvloop" else "asyncio"


def too_slow() -> type[Exception]:
    """What shoal raises when a ``deadline=`` it was given passes: the running loop's
    timeout exception (``trio.TooSlowError`` under trio, ``TimeoutError`` under asyncio).
    A timeout of the test's own (``anyio.fail_after``) raises ``TimeoutError`` on every
    loop."""
    return trio.TooSlowError if sniffio.current_async_library() == "trio" else TimeoutError


class FrozenClockLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with its clock stopped, as trio's clock is under
    ``trio.testing.MockClock()`` (rate 0): timers never come due, while I/O, callbacks
    and worker threads run as usual. A test that must progress without any timer runs
    on it through AnyIO's ``loop_factory`` option. (uvloop's timers run on libuv's own
    clock, which cannot be stopped.)"""

    def __init__(self) -> None:
        super().__init__()
        self._frozen_at = super().time()

    def time(self) -> float:
        return self._frozen_at
