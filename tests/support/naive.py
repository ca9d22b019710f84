"""Deliberately broken shoal sockets, to show that an edge-trigger regression test can
fail: run the test's scenario against one of these and it must hang (or break) where
the real ``Socket`` does not. They wait through the running loop's ``wait_readable``,
so the demonstration holds under trio, asyncio and uvloop alike.

* ``NaiveSocket`` is what a first attempt looks like: every waiter parks on the ZeroMQ
  FD itself, nothing is re-checked after a libzmq call, and a wait never re-reads
  ``EVENTS`` before it parks.
* ``UnrefreshedSocket`` is the real socket with one rule dropped: a libzmq call is not
  followed by a refresh, so a task already parked on the FD is not told that the call
  took its edge.
* ``StaleEventsSocket`` is the real socket with another rule dropped: a libzmq call
  does not make the next wait re-read ``EVENTS``; the socket keeps believing what it
  last saw missing and parks on the FD although the call took the edge.
"""

from __future__ import annotations

from shoal._zmq._socket import Socket


class NaiveSocket(Socket):
    """Wait on the FD directly, never re-check (see the module docstring)."""

    __slots__ = ()

    def _after_call(self) -> None:
        pass

    async def _wait(self, flag: int) -> None:
        await self._io.wait_readable(self._fd)


class UnrefreshedSocket(Socket):
    """No refresh after a libzmq call (see the module docstring)."""

    __slots__ = ()

    def _after_call(self) -> None:
        self._quiet = 0


class StaleEventsSocket(Socket):
    """No EVENTS re-read before a wait that follows a libzmq call (see the module
    docstring)."""

    __slots__ = ()

    def _after_call(self) -> None:
        if self._parked:
            self._refresh()
