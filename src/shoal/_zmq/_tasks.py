"""A nursery for a resource's background tasks whose body is the caller's code."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

__all__ = ["open_service_nursery"]


@asynccontextmanager
async def open_service_nursery() -> AsyncIterator[TaskGroup]:
    """A task group (``anyio.create_task_group()``) for an ``async with`` resource
    that runs tasks beside the caller's block. A lone exception (the caller's, or one
    task's) comes out as itself rather than wrapped in an ``ExceptionGroup``, so
    ``except ValueError``
    around ``async with shoal.open_...`` works; several at once stay a group."""
    try:
        async with anyio.create_task_group() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        raise exc from exc.__cause__
