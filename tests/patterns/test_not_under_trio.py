"""Opened outside trio, every entry point says at once that shoal runs under trio
(``NotUnderTrio``), instead of seeming to work and failing later at close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

import shoal
from shoal.errors import LocalProtocolError, NotUnderTrio

OPENERS: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {
    "publisher": lambda: shoal.open_publisher(bind="tcp://127.0.0.1:*"),
    "subscriber": lambda: shoal.open_subscriber(connect="tcp://127.0.0.1:9"),
    "reliable pusher": lambda: shoal.open_pusher(connect="tcp://127.0.0.1:9", reliable=True),
    "puller": lambda: shoal.open_puller(bind="tcp://127.0.0.1:*"),
    "requester": lambda: shoal.open_requester(connect="tcp://127.0.0.1:9"),
    "replier": lambda: shoal.open_replier(bind="tcp://127.0.0.1:*"),
    "node": lambda: shoal.open_node("n", discovery=shoal.discovery.Static([]),
                                    interfaces=["127.0.0.1"]),
    "exporter": lambda: shoal.open_prometheus_exporter(bind=("127.0.0.1", 0)),
}


async def enter(opener: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
    async with opener():
        pass


@pytest.mark.parametrize("what", sorted(OPENERS))
def test_asyncio_gets_a_typed_error_at_the_first_call(what: str) -> None:
    async def main() -> None:
        async with asyncio.timeout(10):
            await enter(OPENERS[what])

    with pytest.raises(NotUnderTrio, match="from asyncio, but shoal runs under trio") as e:
        asyncio.run(main())
    assert "start_guest_run" in str(e.value)
    assert "From asyncio" in str(e.value)
    assert isinstance(e.value, LocalProtocolError)  # a misuse, like every other


def test_outside_any_event_loop_the_error_says_so() -> None:
    coro = enter(OPENERS["publisher"])
    with pytest.raises(NotUnderTrio, match="outside any event loop"):
        coro.send(None)


async def test_under_trio_nothing_changes() -> None:
    with trio.fail_after(10):
        async with shoal.open_publisher(bind="tcp://127.0.0.1:*") as pub:
            assert pub.endpoints
