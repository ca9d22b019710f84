"""The seam under asyncio (and uvloop): the few primitives asyncio lacks, written on
its loop (see the package docstring).

``wait_readable`` registers the FD with ``loop.add_reader`` and leaves it registered
between waits: a request/reply loop waits once per round trip, and registering and
unregistering each time costs two ``epoll_ctl`` calls and a handle. The selector is
level-triggered, so when the FD turns readable with nobody waiting, the callback
unregisters it (the next wait registers it again). The price is an occasional
spurious wake: a readiness the selector reported before the woken task read the FD
may reach the task's next wait. The socket layer allows spurious wakes (it retries);
measured on a request/reply loop, this saves 20x the ``epoll_ctl`` calls and halves
the time the client spends in system calls. One waiter per FD, as under trio:
a second one is a ``BusyResourceError``. ``notify_closing`` unregisters the FD at once
and wakes its waiter with ``FdClosed``: the socket layer uses it both before closing a
socket (the FD number may be reused at once) and to make its watcher look again.

Checkpoints: ``checkpoint`` yields (``sleep(0)``). ``checkpoint_if_cancelled`` yields
only when the task has a cancellation pending (``Task.cancelling()``: asyncio's
``cancel()``, ``asyncio.timeout`` and AnyIO's cancel scopes all go through it), so a
send that needs no wait costs no scheduling round. ``cancel_shielded_checkpoint``
yields and, if a cancellation arrives meanwhile, re-arms it for the task's next await
instead of raising it here: it runs after a message has been queued, and the caller
must not be told that the send failed.

Parking: ``ParkingLot`` parks on futures. One asyncio difference matters: a task can be
cancelled *after* it was unparked and before it runs, so the wake it was handed is
lost. The socket layer hands the FD watch on when a parked task leaves by an exception
(``shoal._zmq._base``), so no wake is lost with it.
"""

from __future__ import annotations

import asyncio
from asyncio import CancelledError, current_task, get_running_loop
from collections import deque
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from types import coroutine
from typing import Any

import anyio

from shoal._io._loop import Loop


class FdClosed(anyio.ClosedResourceError):
    """``notify_closing`` was called for the FD being waited on."""


@coroutine
def _yield() -> Generator[None, None, None]:
    yield  # one bare step of the task: asyncio.sleep(0) without the call


class _Reader:
    """An FD registered with a loop's ``add_reader``, and who waits on it now."""

    __slots__ = ("loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiter: asyncio.Future[None] | None = None


_readers: dict[int, _Reader] = {}


def _ready(fd: int) -> None:
    reader = _readers.get(fd)
    if reader is None:
        return
    fut = reader.waiter
    if fut is None:
        # Nobody waits: stop watching (the selector is level-triggered, so a readable
        # FD nobody reads would call us on every loop iteration).
        del _readers[fd]
        reader.loop.remove_reader(fd)
        return
    reader.waiter = None
    if not fut.done():
        fut.set_result(None)


async def wait_readable(fd: int) -> None:
    loop = get_running_loop()
    reader = _readers.get(fd)
    if reader is None or reader.loop is not loop:  # not registered (with this loop)
        reader = _readers[fd] = _Reader(loop)
        loop.add_reader(fd, _ready, fd)
    elif reader.waiter is not None:
        raise anyio.BusyResourceError("waiting on this file descriptor")
    fut: asyncio.Future[None] = loop.create_future()
    reader.waiter = fut
    try:
        await fut
    finally:
        if reader.waiter is fut:  # cancelled: the FD stays registered until it fires
            reader.waiter = None


def notify_closing(fd: int) -> None:
    reader = _readers.pop(fd, None)
    if reader is None:
        return
    if not reader.loop.is_closed():
        reader.loop.remove_reader(fd)
    fut = reader.waiter
    if fut is not None and not fut.done():
        fut.set_exception(FdClosed())


async def checkpoint() -> None:
    await _yield()


async def checkpoint_if_cancelled() -> None:
    task = current_task()
    if task is not None and task.cancelling():
        await _yield()


async def cancel_shielded_checkpoint() -> None:
    try:
        await _yield()
    except CancelledError:
        task = current_task()
        if task is None:
            raise
        # Deliver it at the task's next await; uncancel() first keeps the count that
        # asyncio.timeout and AnyIO compare at their exits.
        task.uncancel()
        task.cancel()


class ParkingLot:
    """trio's ``ParkingLot`` on asyncio futures: ``park()`` waits until ``unpark()``."""

    __slots__ = ("_parked",)

    def __init__(self) -> None:
        self._parked: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._parked)

    async def park(self) -> None:
        fut: asyncio.Future[None] = get_running_loop().create_future()
        self._parked.append(fut)
        try:
            await fut
        finally:
            if not fut.done() or fut.cancelled():
                try:
                    self._parked.remove(fut)
                except ValueError:
                    pass

    def unpark(self, *, count: int = 1) -> int:
        """Wake up to ``count`` parked tasks, oldest first; returns how many woke."""
        woken = 0
        parked = self._parked
        while parked and woken < count:
            fut = parked.popleft()
            if not fut.done():  # a cancelled one is done: it is not waiting any more
                fut.set_result(None)
                woken += 1
        return woken

    def unpark_all(self) -> int:
        return self.unpark(count=len(self._parked))


def _effective_deadline() -> float:
    # AnyIO's cancel scopes (anyio.fail_after, move_on_after...) are visible here;
    # an asyncio.timeout() is not (asyncio offers no way to read it from the task).
    return anyio.current_effective_deadline()


class AsyncioLoop(Loop):
    __slots__ = ()
    name = "asyncio"
    FdClosed = FdClosed
    Cancelled = CancelledError
    TooSlow = TimeoutError

    wait_readable = staticmethod(wait_readable)
    notify_closing = staticmethod(notify_closing)
    checkpoint = staticmethod(checkpoint)
    checkpoint_if_cancelled = staticmethod(checkpoint_if_cancelled)
    cancel_shielded_checkpoint = staticmethod(cancel_shielded_checkpoint)
    ParkingLot = ParkingLot
    Event = asyncio.Event
    current_effective_deadline = staticmethod(_effective_deadline)
    fail_after: Callable[[float], AbstractContextManager[Any]] = staticmethod(anyio.fail_after)
    move_on_after: Callable[[float], AbstractContextManager[Any]] = staticmethod(
        anyio.move_on_after)

    @staticmethod
    def current_time() -> float:
        return get_running_loop().time()

    def clock(self) -> Callable[[], float]:
        return get_running_loop().time
