"""shoal from a plain asyncio program, written as an asyncio user writes it: no AnyIO,
no trio; ``asyncio.timeout``, ``Task.cancel()`` and ``asyncio.TaskGroup``. Each test
runs on asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.errors import ClosedError, WouldBlock
from support.loops import ASYNCIO_RUNNERS, Run

pytestmark = pytest.mark.parametrize(
    "run", list(ASYNCIO_RUNNERS.values()), ids=list(ASYNCIO_RUNNERS))



def test_a_receive_cut_short_by_asyncio_timeout_loses_nothing(run: Run) -> None:
    async def main() -> None:
        async with asyncio.timeout(10):
            async with shoal.open_puller(bind="tcp://127.0.0.1:*") as pull, \
                       shoal.open_pusher(connect=pull.endpoints) as push:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await pull.receive()
                with pytest.raises(WouldBlock):
                    pull.receive_nowait()
                await push.send({"n": 1})
                await push.send({"n": 2})
                assert (await pull.receive()).body == {"n": 1}
                assert (await pull.receive()).body == {"n": 2}

    run(main())


def test_a_cancelled_receiving_task_leaves_the_message_for_the_next(run: Run) -> None:
    async def main() -> None:
        async with asyncio.timeout(10):
            async with shoal.open_publisher(bind="tcp://127.0.0.1:*") as pub, \
                       shoal.open_subscriber(connect=pub.endpoints, topics=["t"]) as sub:
                waiting = asyncio.create_task(sub.receive())
                await asyncio.sleep(0.05)
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
                await pub.wait_for_subscribers(1)
                await pub.publish("t", "after")
                msg = await sub.receive()
                assert (msg.topic, msg.body) == ("t", "after")

    run(main())


def test_async_for_ends_when_the_receiver_closes(run: Run) -> None:
    async def main() -> None:
        got: list[Any] = []
        three = asyncio.Event()
        async with asyncio.timeout(10), \
                   shoal.open_puller(bind="tcp://127.0.0.1:*") as pull:

            async def consume() -> None:
                async for msg in pull:
                    got.append(msg.body)
                    if len(got) == 3:
                        three.set()

            async with shoal.open_pusher(connect=pull.endpoints) as push, \
                       asyncio.TaskGroup() as tasks:
                tasks.create_task(consume())
                for n in range(3):
                    await push.send(n)
                await three.wait()
                await pull.aclose()  # the loop in consume() ends; the group exits
            assert got == [0, 1, 2]
            with pytest.raises(ClosedError):
                await pull.receive()

    run(main())


def test_requests_in_flight_from_a_task_group(run: Run) -> None:
    async def main() -> None:
        async with asyncio.timeout(10):
            async with shoal.open_replier(bind="tcp://127.0.0.1:*") as rep, \
                       shoal.open_requester(connect=rep.endpoints) as client:

                async def serve() -> None:
                    async for req in rep:
                        await asyncio.sleep(0.01 * (req.body % 3))  # out of order
                        await req.reply(req.body * 10)

                server = asyncio.create_task(serve())
                async with asyncio.TaskGroup() as tasks:
                    calls = [tasks.create_task(client.request(n)) for n in range(20)]
                assert [c.result() for c in calls] == [n * 10 for n in range(20)]
                server.cancel()

    run(main())


def test_request_deadline_raises_timeout_error_under_asyncio(run: Run) -> None:
    async def main() -> None:
        async with asyncio.timeout(10):
            async with shoal.open_replier(bind="tcp://127.0.0.1:*") as rep, \
                       shoal.open_requester(connect=rep.endpoints) as client:
                with pytest.raises(TimeoutError):  # nobody serves the replier
                    await client.request("late", deadline=0.05)
                assert rep.statistics().received <= 1

    run(main())


def test_serve_replier_runs_as_an_asyncio_task(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        endpoint = f"ipc://{tmp_path}/replier"

        async def add_one(req: shoal.Request) -> int:
            await asyncio.sleep(0)
            return int(req.body) + 1

        async with asyncio.timeout(10):
            server = asyncio.create_task(shoal.serve_replier(add_one, bind=endpoint))
            async with shoal.open_requester(connect=endpoint) as client:
                assert await client.request(41) == 42
                assert await client.request(1) == 2
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server

    run(main())
