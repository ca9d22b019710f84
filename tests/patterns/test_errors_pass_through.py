"""An exception raised in the block of a resource that runs background tasks (a node,
the reliable patterns) comes out as itself, not wrapped in an ``ExceptionGroup``.

Network safety: loopback only (127.0.0.1; ``Static([])`` discovery).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest

import shoal
from shoal.discovery import Static

pytestmark = pytest.mark.anyio

OPENERS: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {
    "node": lambda: shoal.open_node("n", discovery=Static([]), interfaces=["127.0.0.1"]),
    "reliable pusher": lambda: shoal.open_pusher(connect="tcp://127.0.0.1:9", reliable=True),
    "reliable publisher": lambda: shoal.open_publisher(bind="tcp://127.0.0.1:*",
                                                       reliable=True),
    "reliable subscriber": lambda: shoal.open_subscriber(connect="tcp://127.0.0.1:9",
                                                         reliable=True),
}


class Boom(Exception):
    pass


@pytest.mark.parametrize("what", list(OPENERS))
async def test_an_exception_from_the_block_is_not_wrapped(what: str) -> None:
    with anyio.fail_after(10):
        with pytest.raises(Boom, match="from the block") as info:
            async with OPENERS[what]():
                raise Boom("from the block")
    assert not isinstance(info.value, BaseExceptionGroup)


@pytest.mark.parametrize("what", list(OPENERS))
async def test_cancelling_around_the_block_still_works(what: str) -> None:
    with anyio.fail_after(10):
        with anyio.move_on_after(0.2) as scope:
            async with OPENERS[what]():
                await anyio.sleep_forever()
    assert scope.cancelled_caught
