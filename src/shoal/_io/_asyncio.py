"""The seam under asyncio (and uvloop): the few primitives asyncio lacks, written on
its loop (see the package docstring).

``wait_readable`` registers the FD with ``loop.add_reader`` for one wait, as trio
does (one waiter per FD; a second one is a ``BusyResourceError``), and the callback
unregisters it before waking the task. Leaving it registered between waits saves the
two ``epoll_ctl`` calls but costs more: the selector is level-triggered and reports
the FD again on the next loop iteration, before the woken task has read it, so the
task's next wait wakes for nothing (measured on a request/reply loop: 2.6 waits and
2 loop iterations per round trip instead of 1.4 each). ``notify_closing``
unregisters the FD at once and wakes its waiter with ``FdClosed``: the socket layer
uses it both before closing a socket (the FD number may be reused at once) and to
make its watcher look again.

Checkpoints: ``checkpoint`` yields (a bare step of the task).
``checkpoint_if_cancelled`` yields only when the task has a cancellation pending
(``Task.cancelling()``: asyncio's ``cancel()``, ``asyncio.timeout`` and AnyIO's cancel
scopes all go through it), so a send that needs no wait costs no scheduling round.
``cancel_shielded_checkpoint`` runs after a message has been queued (or a batch
buffered): the caller must not be told the operation failed, so a cancellation that
arrives during its yield is not raised there but delivered at the task's next
suspension. AnyIO re-delivers its own by itself; one from ``asyncio.timeout`` or
``Task.cancel()`` is re-armed on the next loop iteration, unless the timeout's block
has ended meanwhile (its exit withdraws the request, and the task must not be
cancelled outside the block). The message travels with it: AnyIO tells its own
cancellations by it.

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


_INF = float("inf")

_waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = {}
"""FD -> the loop it is registered with and the future its waiter awaits."""


def _ready(fd: int) -> None:
    entry = _waiting.pop(fd, None)
    if entry is None:
        return
    loop, fut = entry
    # Unregister before the task runs: the selector is level-triggered, and the FD
    # stays readable until the woken task calls into libzmq. Left registered, the
    # next select would report it again and wake the task's next wait for nothing.
    loop.remove_reader(fd)
    if not fut.done():
        fut.set_result(None)


async def wait_readable(fd: int) -> None:
    loop = get_running_loop()
    entry = _waiting.get(fd)
    if entry is not None:
        if entry[0] is loop:
            raise anyio.BusyResourceError("waiting on this file descriptor")
        del _waiting[fd]  # left by a loop that has ended
    fut: asyncio.Future[None] = loop.create_future()
    _waiting[fd] = (loop, fut)
    loop.add_reader(fd, _ready, fd)
    try:
        await fut
    finally:
        entry = _waiting.get(fd)
        if entry is not None and entry[1] is fut:  # cancelled before it fired
            del _waiting[fd]
            loop.remove_reader(fd)


def notify_closing(fd: int) -> None:
    entry = _waiting.pop(fd, None)
    if entry is None:
        return
    loop, fut = entry
    if not loop.is_closed():
        loop.remove_reader(fd)
    if not fut.done():
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
    except CancelledError as exc:
        task = current_task()
        if task is None:
            raise
        if _deadline() == -_INF:
            # An AnyIO scope around us is cancelled: AnyIO delivers its cancellation
            # again at the task's next suspension, as long as the task is in it.
            return
        # asyncio.timeout() or a Task.cancel() cancels once. Deliver it again at the
        # task's next suspension, but only if nothing withdrew it meanwhile: a
        # timeout block that ends without another await uncancels the task at its
        # exit, and a cancellation re-armed regardless would then hit the task
        # outside that block.
        asyncio.get_running_loop().call_soon(
            _rearm, task, task.cancelling(), exc.args[0] if exc.args else None)


def _rearm(task: asyncio.Task[Any], requested: int, message: object) -> None:
    if task.done() or task.cancelling() != requested:
        return
    task.uncancel()  # cancel() counts the request again: keep the count the
    task.cancel(message)  # timeout compares at its exit


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


try:
    # The same answer without AnyIO's per-call dispatch on the running library (a
    # request reads it every time); the public call where AnyIO's layout differs.
    from anyio._backends._asyncio import AsyncIOBackend

    _deadline = AsyncIOBackend.current_effective_deadline
except (ImportError, AttributeError):  # pragma: no cover - another AnyIO release
    _deadline = _effective_deadline


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
    current_effective_deadline = staticmethod(_deadline)
    fail_after: Callable[[float], AbstractContextManager[Any]] = staticmethod(anyio.fail_after)
    move_on_after: Callable[[float], AbstractContextManager[Any]] = staticmethod(
        anyio.move_on_after)

    @staticmethod
    def current_time() -> float:
        return get_running_loop().time()

    def clock(self) -> Callable[[], float]:
        return get_running_loop().time
