"""Every entry point runs in a plain trio, asyncio or uvloop program; outside any event
loop (plain synchronous code, a worker thread) it says at once that shoal needs one
(``NoEventLoop``, formerly ``NotUnderTrio``), instead of seeming to work and failing
later at close.

Network safety: loopback only (binds 127.0.0.1; connects to 127.0.0.1:9, where nothing
needs to listen).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest
import trio
import uvloop

import shoal
from shoal.errors import LocalProtocolError, NoEventLoop, NotUnderTrio

pytestmark = pytest.mark.anyio

Opener = Callable[[], AbstractAsyncContextManager[Any]]

OPENERS: dict[str, tuple[Opener, Callable[[Any], object]]] = {
    # what to open, and a look at the opened resource that only a working one passes
    "publisher": (lambda: shoal.open_publisher(bind="tcp://127.0.0.1:*"),
                  lambda pub: pub.endpoints[0].startswith("tcp://127.0.0.1:")),
    "subscriber": (lambda: shoal.open_subscriber(connect="tcp://127.0.0.1:9"),
                   lambda sub: sub.statistics().received == 0),
    "reliable pusher": (lambda: shoal.open_pusher(connect="tcp://127.0.0.1:9", reliable=True),
                        lambda push: push.statistics().sent == 0),
    "puller": (lambda: shoal.open_puller(bind="tcp://127.0.0.1:*"),
               lambda pull: pull.endpoints[0].startswith("tcp://127.0.0.1:")),
    "requester": (lambda: shoal.open_requester(connect="tcp://127.0.0.1:9"),
                  lambda client: client.statistics().in_flight == 0),
    "replier": (lambda: shoal.open_replier(bind="tcp://127.0.0.1:*"),
                lambda rep: rep.endpoints[0].startswith("tcp://127.0.0.1:")),
    "node": (lambda: shoal.open_node("n", discovery=shoal.discovery.Static([]),
                                     interfaces=["127.0.0.1"]),
             lambda node: node.control_port > 0),
    "exporter": (lambda: shoal.open_prometheus_exporter(bind=("127.0.0.1", 0)),
                 lambda exporter: exporter.address[1] > 0),
}


async def open_and_look(what: str) -> None:
    opener, looks_fine = OPENERS[what]
    async with opener() as resource:
        assert looks_fine(resource), f"the {what} opened but does not work"


def run_under_trio(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with trio.fail_after(10):
            await main()
    trio.run(bounded)


def run_under_asyncio(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(10):
            await main()
    asyncio.run(bounded())


def run_under_uvloop(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(10):
            await main()
    uvloop.run(bounded())


RUNNERS: dict[str, Callable[[Callable[[], Awaitable[None]]], None]] = {
    "trio.run": run_under_trio,
    "asyncio.run": run_under_asyncio,
    "uvloop.run": run_under_uvloop,
}
"""Programs started the plain way, without AnyIO's runner (the other tests use it)."""


@pytest.mark.parametrize("what", sorted(OPENERS))
@pytest.mark.parametrize("run", sorted(RUNNERS))
def test_every_entry_point_works_in_a_plain_program(run: str, what: str) -> None:
    RUNNERS[run](lambda: open_and_look(what))


def enter_outside_any_loop(what: str) -> BaseException | None:
    """Enter the opener with no event loop running (the coroutine is stepped by hand):
    what it raised, or None if it did not raise."""
    opener, _ = OPENERS[what]
    coro = opener().__aenter__()
    try:
        coro.send(None)
    except BaseException as exc:  # whatever it is: the caller looks at it
        return exc
    finally:
        coro.close()
    return None


def assert_says_no_event_loop(error: BaseException | None) -> None:
    assert isinstance(error, NoEventLoop), f"expected NoEventLoop, got {error!r}"
    message = str(error)
    assert "outside any event loop" in message
    assert "shoal runs under trio or asyncio" in message
    for how in ("trio.run(", "asyncio.run(", "anyio.run("):  # how to call it instead
        assert how in message
    assert isinstance(error, LocalProtocolError)  # a misuse, like every other
    assert isinstance(error, RuntimeError)


@pytest.mark.parametrize("what", sorted(OPENERS))
def test_outside_any_event_loop_every_entry_point_says_so(what: str) -> None:
    assert_says_no_event_loop(enter_outside_any_loop(what))


@pytest.mark.parametrize("what", sorted(OPENERS))
async def test_a_worker_thread_of_a_running_loop_is_outside_it(what: str) -> None:
    # the thread runs in a copy of the loop task's context, yet no loop runs in it
    with anyio.fail_after(10):
        error = await anyio.to_thread.run_sync(enter_outside_any_loop, what)
    assert_says_no_event_loop(error)


def test_not_under_trio_is_the_former_name_of_no_event_loop() -> None:
    assert NotUnderTrio is NoEventLoop
    with pytest.raises(NotUnderTrio, match="outside any event loop"):
        raise NoEventLoop("something was opened")
