"""The seam under asyncio (and uvloop): the few primitives asyncio lacks, written on
its loop (see the package docstring).

``wait_readable`` registers the FD with ``loop.add_reader``; one waiter per FD, as
under trio (a second one is a ``BusyResourceError``). ``notify_closing`` unregisters
the FD at once and wakes its waiter with ``FdClosed``: the socket layer uses it both
before closing a socket (the FD number may be reused at once) and to make its watcher
look again. How long the FD stays registered depends on the loop, measured on a
request/reply loop:

* asyncio's selector loop polls the selector *before* it runs the task a readiness
  woke, and the selector is level-triggered: the FD, still readable until the task
  calls into libzmq, would be reported again and wake the task's next wait for
  nothing. So the callback unregisters it (one-shot, as trio's epoll use is): 1.4
  waits and 1.4 loop iterations per round trip, against 2.6 and 2 when it stayed.
* uvloop runs the woken task before it polls again, so the FD stays registered
  between waits (unregistered only when it fires with nobody waiting): uvloop
  closes and recreates a poll handle for every unregister and register, and keeping
  it took 5% fewer function calls and 18% less profiled time per round trip.

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
from asyncio import CancelledError, get_running_loop
from collections import deque
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from types import coroutine
from typing import Any

import anyio

try:  # the C function: asyncio's own name is a Python wrapper around it
    from _asyncio import current_task  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a Python without the C accelerator
    from asyncio import current_task

from shoal._io._loop import Loop


class FdClosed(anyio.ClosedResourceError):
    """``notify_closing`` was called for the FD being waited on."""


@coroutine
def _yield() -> Generator[None, None, None]:
    yield  # one bare step of the task: asyncio.sleep(0) without the call


_INF = float("inf")

class _Watch:
    """An FD registered with a loop's ``add_reader``, and the future of its waiter."""

    __slots__ = ("fut", "keep", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] | None = None
        # uvloop runs the woken task before it polls again: the FD can stay
        # registered between waits. asyncio's selector loop polls first: see above.
        self.keep = type(loop).__module__.startswith("uvloop")


_watches: dict[int, _Watch] = {}


def _ready(fd: int) -> None:
    watch = _watches.get(fd)
    if watch is None:
        return
    fut = watch.fut
    watch.fut = None
    if fut is None or not watch.keep:
        # Unregister: one-shot on the selector loop (the FD stays readable until the
        # woken task calls into libzmq, and the next select, which comes before the
        # task runs, would report it again and wake the task's next wait for
        # nothing); on uvloop, the FD turned readable with nobody waiting.
        del _watches[fd]
        watch.loop.remove_reader(fd)
    if fut is not None and not fut.done():
        fut.set_result(None)


async def wait_readable(fd: int) -> None:
    loop = get_running_loop()
    watch = _watches.get(fd)
    if watch is not None and watch.loop is not loop:
        del _watches[fd]  # left by a loop that has ended
        watch = None
    if watch is None:
        watch = _watches[fd] = _Watch(loop)
        loop.add_reader(fd, _ready, fd)
    elif watch.fut is not None:
        raise anyio.BusyResourceError("waiting on this file descriptor")
    fut: asyncio.Future[None] = loop.create_future()
    watch.fut = fut
    try:
        await fut
    finally:
        if watch.fut is fut:  # cancelled before it fired
            watch.fut = None
            if not watch.keep and _watches.get(fd) is watch:
                del _watches[fd]
                loop.remove_reader(fd)


def notify_closing(fd: int) -> None:
    watch = _watches.pop(fd, None)
    if watch is None:
        return
    if not watch.loop.is_closed():
        watch.loop.remove_reader(fd)
    fut = watch.fut
    watch.fut = None
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
