"""``Loop``: the interface of the seam's hot-path half (see the package docstring)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol


class Lot(Protocol):
    """A parking lot: tasks park until someone unparks them (trio's ``ParkingLot``)."""

    def __len__(self) -> int: ...
    async def park(self) -> None: ...
    def unpark(self, *, count: int = 1) -> object: ...
    def unpark_all(self) -> object: ...


class Wake(Protocol):
    """A one-shot event (trio's ``Event``; ``asyncio.Event`` under asyncio)."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> object: ...


class Loop:
    """What the hot path calls on the running event loop. Subclasses fill every
    attribute; see ``_trio`` and ``_asyncio``."""

    __slots__ = ()

    name: ClassVar[str]
    FdClosed: ClassVar[type[Exception]]
    """What ``wait_readable`` raises when ``notify_closing`` is called for its FD."""

    wait_readable: Callable[[int], Coroutine[Any, Any, None]]
    notify_closing: Callable[[int], None]
    checkpoint: Callable[[], Coroutine[Any, Any, None]]
    checkpoint_if_cancelled: Callable[[], Coroutine[Any, Any, None]]
    cancel_shielded_checkpoint: Callable[[], Coroutine[Any, Any, None]]
    ParkingLot: Callable[[], Lot]
    Event: Callable[[], Wake]
    current_time: Callable[[], float]
    current_effective_deadline: Callable[[], float]
    fail_after: Callable[[float], AbstractContextManager[Any]]
    """Raises the loop's own timeout error: ``trio.TooSlowError``, or ``TimeoutError``."""
    move_on_after: Callable[[float], AbstractContextManager[Any]]

    def clock(self) -> Callable[[], float]:
        """A zero-argument function that reads the loop's clock, bound for a hot loop
        (the same time base as ``current_time`` and AnyIO's ``current_time``)."""
        raise NotImplementedError
