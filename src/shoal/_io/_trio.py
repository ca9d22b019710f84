"""The seam under trio: trio's own functions, unwrapped (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable

import trio
from trio._core._run import GLOBAL_RUN_CONTEXT, CancelStatus

from shoal._io._loop import Loop

_INF = float("inf")


def _walk_deadline() -> float:
    """``trio.current_effective_deadline()`` at a quarter of its cost (a request reads
    it every time): the same walk up the task's cancel statuses, reading trio's fields
    instead of its properties. Used only when those fields exist (``_FIELDS_OK``);
    ``tests/patterns/test_deadlines.py`` checks it against trio's own answer."""
    status: CancelStatus | None = GLOBAL_RUN_CONTEXT.task._cancel_status
    if status is None or status.effectively_cancelled:
        return -_INF
    deadline = _INF
    while status is not None:
        scope = status._scope
        if scope._deadline < deadline:
            deadline = scope._deadline
        if scope._shield:
            break
        status = status._parent
    return deadline


def _fields(cls: type) -> set[str]:
    return {a.name for a in getattr(cls, "__attrs_attrs__", ())}


FIELDS_OK = ({"_scope", "_parent", "effectively_cancelled"} <= _fields(CancelStatus)
             and {"_deadline", "_shield"} <= _fields(trio.CancelScope))


class TrioLoop(Loop):
    __slots__ = ()
    name = "trio"
    FdClosed = trio.ClosedResourceError

    # Class attributes holding plain functions would bind as methods: staticmethod.
    wait_readable = staticmethod(trio.lowlevel.wait_readable)
    notify_closing = staticmethod(trio.lowlevel.notify_closing)
    checkpoint = staticmethod(trio.lowlevel.checkpoint)
    checkpoint_if_cancelled = staticmethod(trio.lowlevel.checkpoint_if_cancelled)
    cancel_shielded_checkpoint = staticmethod(trio.lowlevel.cancel_shielded_checkpoint)
    ParkingLot = staticmethod(trio.lowlevel.ParkingLot)
    Event = staticmethod(trio.Event)
    current_time = staticmethod(trio.current_time)
    current_effective_deadline = staticmethod(
        _walk_deadline if FIELDS_OK else trio.current_effective_deadline)
    fail_after = staticmethod(trio.fail_after)
    move_on_after = staticmethod(trio.move_on_after)

    def clock(self) -> Callable[[], float]:
        # trio.current_time() costs 3x the bound clock method
        return trio.lowlevel.current_clock().current_time
