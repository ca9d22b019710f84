"""What the two acknowledged senders (``ReliablePusher``, ``ReliablePublisher``) share:
reading acknowledgements, waiting for a condition they make true, and waking the
tasks parked on the socket.

Theory of operation. Nobody sits on the socket while the application sends (a task
parked there would make every send pay for an EVENTS refresh), so acknowledgements
are read when someone looks: ``_read_acks`` drains every queued frame into
``_on_ack``, called by the sending calls now and then, by the timer task when it
wakes, and by ``_wait_for``. A task in ``_wait_for`` parks on the socket until the
next deadline its sender names (``_wait_plan``); whoever reads acknowledgements
while it is parked wakes it (``Socket.interrupt``), since what it waits for may have
come with them. The sender's timer task sleeps on ``_arm`` (``_wake`` sets it) or
its next deadline.

Every wait here is on a send's or an acknowledgement's path: it goes through the
socket's event loop primitives (``sock.loop``: checkpoints, clock, events, timeouts),
never through AnyIO's per-call dispatch.
"""

from __future__ import annotations

from collections.abc import Callable

from shoal._io import Loop
from shoal._io._loop import Wake
from shoal._zmq._socket import Socket
from shoal.errors import ClosedError
from shoal.patterns._common import SocketResource

__all__ = ["BATCH_BYTES", "AckedSender"]

BATCH_BYTES = 1 << 20
"""A batch send (``send_many``, ``publish_many``) encodes about this many bytes at a
time at most: large bodies do not pile up in memory before the first one leaves."""


class AckedSender(SocketResource):
    """The acknowledgement plumbing of a reliable sender over ``_sock``; subclasses
    say what an acknowledgement means (``_on_ack``) and when to look again
    (``_wait_plan``)."""

    _sock: Socket

    def __init__(self, sock: Socket) -> None:
        self._sock = sock
        self._io: Loop = sock.loop
        self._arm: Wake = self._io.Event()  # wakes the timer task (work to time, a peer connecting)
        self._waiters = 0  # tasks parked in _wait_for (or on the socket for the timer)
        self._malformed = 0

    def _on_ack(self, frames: list[bytes]) -> None:
        raise NotImplementedError

    def _after_acks(self) -> None:
        """Called once a read has drained the socket (the acknowledgements are in)."""

    def _do_due(self) -> None:
        """In ``_wait_for``, once acknowledgements are read: what is due before the
        condition is looked at."""

    def _wait_plan(self) -> tuple[float | None, bool]:
        """Before ``_wait_for`` parks (the condition is false): until when to park
        (None: until woken), and whether to wake when the socket can send, too.
        Computed only then: a timer can cost a look at the whole window."""
        raise NotImplementedError

    def _read_acks(self) -> None:
        got = False
        while raws := self._sock.receive_batch_nowait(256):
            got = True
            for frames in raws:
                self._on_ack(frames)
        self._after_acks()
        if got and self._waiters:
            self._sock.interrupt()  # a waiter parked on the socket may be done now

    def _wake(self) -> None:
        """Something changed that tasks of this sender may wait for: the timer task
        looks again, and so does whoever waits in ``_wait_for``."""
        self._arm.set()
        if self._waiters:
            self._sock.interrupt()

    async def _wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Read acknowledgements (and do what falls due) until ``condition``. Parked on
        the socket; woken by acknowledgements arriving, by another task of this sender
        reading them, and by ``_wake``. The caller owns the timeout."""
        sock = self._sock
        self._waiters += 1
        try:
            while True:
                sock.check_open(what)
                self._read_acks()
                self._do_due()
                if condition():
                    return
                deadline, either = self._wait_plan()
                await self._park(deadline, either=either)
        finally:
            self._waiters -= 1

    async def _park(self, deadline: float | None, *, either: bool = False) -> None:
        """Wait on the socket until it has input (or room, if ``either``) or
        ``deadline``."""
        wait = self._sock.wait_either if either else self._sock.wait_receivable
        if deadline is None:
            await wait()
            return
        io = self._io
        with io.move_on_after(max(deadline - io.current_time(), 0.0)):
            await wait()

    async def _park_as_waiter(self, deadline: float | None, *, either: bool = False) -> bool:
        """The timer task parks on the socket as a waiter would (whoever reads
        acknowledgements wakes it); False once the socket is closed."""
        self._waiters += 1
        try:
            await self._park(deadline, either=either)
        except ClosedError:
            return False
        finally:
            self._waiters -= 1
        return True

    async def _sleep(self, deadline: float | None) -> None:
        """The timer task's sleep: until ``deadline`` or ``_wake``."""
        io = self._io
        arm = self._arm = io.Event()
        if deadline is None:
            await arm.wait()
            return
        with io.move_on_after(max(deadline - io.current_time(), 0.0)):
            await arm.wait()
