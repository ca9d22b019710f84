"""``shoal demo``: the three patterns talking over loopback, printing what they do.

Uses only the public API. Every socket is on 127.0.0.1; nothing leaves the machine.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import trio

import shoal

ROOMS = ("room1", "room2", "kitchen")


def _fmt(body: Any) -> str:
    return json.dumps(body, sort_keys=True)


async def run_demo(*, seconds: float = 5.0, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo for about ``seconds``; return a summary of what flowed."""
    rng = random.Random(7)
    summary: dict[str, Any] = {}
    with trio.fail_after(seconds + 10):
        async with trio.open_nursery() as nursery:
            # -- publish/subscribe: two subscribers with different prefixes ----------
            pub = await nursery.start(_publisher_ready)
            out(f"publisher   bound {pub.endpoints[0]}")
            async with (
                shoal.open_subscriber(connect=pub.endpoints, topics=["sensors/"]) as all_rooms,
                shoal.open_subscriber(connect=pub.endpoints, topics=["sensors/room1"]) as room1,
            ):
                await _until_subscribed(pub, [all_rooms, room1])
                out("subscriber  'all'   -> prefix 'sensors/'")
                out("subscriber  'room1' -> prefix 'sensors/room1'")

                # -- push/pull: two workers share the jobs -------------------------
                async with shoal.open_pusher(bind="tcp://127.0.0.1:*") as push:
                    out(f"pusher      bound {push.endpoints[0]} (two workers connect)")
                    done: dict[str, list[int]] = {"worker-A": [], "worker-B": []}
                    for name in done:
                        nursery.start_soon(_worker, name, push.endpoints, done[name], out)

                    # -- request/reply: two repliers, one requester ----------------
                    rep_a = await nursery.start(_replier, "replier-1")
                    rep_b = await nursery.start(_replier, "replier-2")
                    out(f"repliers    bound {rep_a.endpoints[0]} and {rep_b.endpoints[0]}")
                    async with shoal.open_requester(
                        connect=rep_a.endpoints + rep_b.endpoints
                    ) as client:
                        nursery.start_soon(_print_subscriber, "all", all_rooms, out)
                        nursery.start_soon(_print_subscriber, "room1", room1, out)
                        out("")
                        ticks = max(1, int(seconds / 0.5))
                        for tick in range(ticks):
                            room = ROOMS[tick % len(ROOMS)]
                            reading = {"celsius": round(rng.uniform(18, 24), 1)}
                            await pub.publish(f"sensors/{room}", reading, headers={"unit": "C"})
                            out(f"[pub]       sensors/{room} {_fmt(reading)}")
                            for job in range(2):
                                await push.send({"job": tick * 2 + job})
                            pairs = [(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(3)]
                            answers: list[str] = []

                            async def ask(a: int, b: int, into: list[str] = answers) -> None:
                                total = await client.request({"a": a, "b": b})
                                into.append(f"{a}+{b}={total}")

                            async with trio.open_nursery() as asks:
                                for a, b in pairs:
                                    asks.start_soon(ask, a, b)
                            out(f"[req]       3 requests in flight -> {', '.join(sorted(answers))}")
                            try:
                                await client.request({"a": 1, "b": "x"})
                            except shoal.errors.RemoteError as exc:
                                if tick == 0:
                                    out(f"[req]       a bad request fails cleanly: {exc}")
                            await trio.sleep(0.5)
                        await trio.sleep(0.2)
                        summary = {
                            "published": pub.statistics().published,
                            "received_all": all_rooms.statistics().received,
                            "received_room1": room1.statistics().received,
                            "gaps": all_rooms.statistics().gaps + room1.statistics().gaps,
                            "jobs": {k: len(v) for k, v in done.items()},
                            "requests": client.statistics().sent,
                            "replies": client.statistics().replies,
                        }
            nursery.cancel_scope.cancel()
    out("")
    out("summary     " + _fmt(summary))
    return summary


async def _publisher_ready(*, task_status: trio.TaskStatus[shoal.Publisher]) -> None:
    async with shoal.open_publisher(bind="tcp://127.0.0.1:*") as pub:
        task_status.started(pub)
        await trio.sleep_forever()


async def _until_subscribed(pub: shoal.Publisher, subs: list[shoal.Subscriber]) -> None:
    """Publish probes until every subscriber has one: PUB drops before a subscription
    has reached it (the slow joiner), so this is the honest way to start."""
    waiting = set(range(len(subs)))
    while waiting:
        await pub.publish("sensors/room1/probe", None)
        await trio.sleep(0.02)
        for i in list(waiting):
            try:
                while True:
                    subs[i].receive_nowait()
                    waiting.discard(i)
            except trio.WouldBlock:
                pass


async def _worker(name: str, endpoints: list[str], done: list[int],
                  out: Callable[[str], None]) -> None:
    async with shoal.open_puller(connect=endpoints) as pull:
        async for msg in pull:
            done.append(msg.body["job"])
            out(f"[{name}]  took job {msg.body['job']}")


async def _replier(name: str, *, task_status: trio.TaskStatus[shoal.Replier]) -> None:
    def add(req: shoal.Request) -> int:
        return int(req.body["a"]) + int(req.body["b"])

    await shoal.serve_replier(add, bind="tcp://127.0.0.1:*", task_status=task_status)


async def _print_subscriber(label: str, sub: shoal.Subscriber, out: Callable[[str], None]) -> None:
    async for msg in sub:
        if msg.topic.endswith("/probe"):
            continue
        out(f"  [sub {label:>5}] got {msg.topic} {_fmt(msg.body)} (seq {msg.seq})")
