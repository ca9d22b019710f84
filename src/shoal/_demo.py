"""``shoal demo``: seven nodes on loopback find each other over mDNS and talk.

A sensor node publishes telemetry and hands out jobs; two subscriber nodes (one for
every room, one for room1 only), two workers, a calculator (replier) and a client
(requester) find each other by channel name. Halfway through, worker-B leaves (it
says goodbye) and comes back as a new incarnation, and the others re-wire.

Uses only the public API. Every node is pinned to 127.0.0.1 (mDNS included):
nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from typing import Any

import trio

import shoal
from shoal.discovery import MDNS, PeerJoined, PeerLeft, PeerUpdated

ROOMS = ("room1", "room2", "kitchen")
LOOPBACK = ["127.0.0.1"]


def _fmt(body: Any) -> str:
    return json.dumps(body, sort_keys=True)


def _mdns() -> MDNS:
    return MDNS(interfaces=LOOPBACK)


class _Demo:
    def __init__(self, seconds: float, out: Callable[[str], None]) -> None:
        self.seconds = seconds
        self.out = out
        self.rng = random.Random(7)
        self.jobs: dict[str, list[int]] = {"worker-A": [], "worker-B": []}
        self.got: dict[str, int] = {"dashboard": 0, "room1-display": 0}
        self.gaps = 0
        self.discovery: list[str] = []

    def say(self, who: str, text: str) -> None:
        self.out(f"[{who:<13}] {text}")

    async def observe(self, *, task_status: trio.TaskStatus[None]) -> None:
        """A quiet node that reports what discovery tells it."""
        async with shoal.open_node("observer", discovery=_mdns()) as node:
            watch = node.watch_peers()
            task_status.started()
            async for ev in watch:
                if isinstance(ev, PeerJoined):
                    offers = ", ".join(sorted(f"{c.name}/{c.role.value}"
                                              for c in ev.peer.channels)) or "nothing yet"
                    line = f"{ev.peer.name} joined (epoch {ev.peer.epoch:08x}; {offers})"
                elif isinstance(ev, PeerLeft):
                    line = f"{ev.peer.name} left ({ev.reason})"
                elif isinstance(ev, PeerUpdated):
                    before = {(c.name, c.role) for c in ev.previous.channels}
                    new = [f"{c.name}/{c.role.value}" for c in ev.peer.channels
                           if (c.name, c.role) not in before]
                    if not new:
                        continue
                    line = f"{ev.peer.name} now offers {', '.join(new)}"
                self.discovery.append(line)
                self.say("discovery", line)

    async def subscriber(self, name: str, prefix: str) -> None:
        async with shoal.open_node(name, discovery=_mdns()) as node, \
                   node.open_subscriber("telemetry", topics=[prefix]) as sub:
            try:
                async for msg in sub:
                    self.got[name] += 1
                    self.say(name, f"got {msg.topic} {_fmt(msg.body)} (seq {msg.seq})")
            finally:
                self.gaps += sub.statistics().gaps

    async def worker(self, name: str, *, stop: trio.Event | None = None) -> None:
        async with shoal.open_node(name, discovery=_mdns()) as node, \
                   node.open_puller("jobs") as pull:
            with trio.CancelScope() as scope:
                if stop is not None:
                    async def leave() -> None:
                        await stop.wait()
                        scope.cancel()
                    async with trio.open_nursery() as n:
                        n.start_soon(leave)
                        await self._work(name, pull)
                else:
                    await self._work(name, pull)
        if stop is not None:
            self.say(name, "left (goodbye sent)")

    async def _work(self, name: str, pull: shoal.Puller) -> None:
        async for msg in pull:
            self.jobs[name].append(msg.body["job"])
            self.say(name, f"took job {msg.body['job']}")

    async def calculator(self) -> None:
        def add(req: shoal.Request) -> int:
            return int(req.body["a"]) + int(req.body["b"])

        async with shoal.open_node("calculator", discovery=_mdns()) as node, \
                   node.open_replier("math") as rep:
            async for req in rep:
                try:
                    await req.reply(add(req))
                except (KeyError, TypeError, ValueError) as exc:
                    await req.fail(f"{type(exc).__name__}: {exc}")

    async def run(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(self.observe)
            nursery.start_soon(self.subscriber, "dashboard", "sensors/")
            nursery.start_soon(self.subscriber, "room1-display", "sensors/room1")
            nursery.start_soon(self.worker, "worker-A")
            b_leaves = trio.Event()
            nursery.start_soon(lambda: self.worker("worker-B", stop=b_leaves))
            nursery.start_soon(self.calculator)
            async with shoal.open_node("sensor", discovery=_mdns()) as sensor, \
                       sensor.open_publisher("telemetry") as pub, \
                       sensor.open_pusher("jobs") as push, \
                       shoal.open_node("client", discovery=_mdns()) as client_node, \
                       client_node.open_requester("math") as client:
                with trio.fail_after(15):
                    await pub.wait_for_subscribers(2)
                    await sensor.wait_for_peers(2, channel="jobs")
                self.say("sensor", "both subscribers and both workers are connected")
                await self._flow(pub, push, client, nursery, b_leaves)
                await trio.sleep(0.3)
                summary = {
                    "published": pub.statistics().published,
                    "received": dict(self.got),
                    "gaps": self.gaps,
                    "jobs_sent": push.statistics().sent,
                    "jobs": {k: len(v) for k, v in self.jobs.items()},
                    "requests": client.statistics().sent,
                    "replies": client.statistics().replies,
                    "discovery": len(self.discovery),
                }
            nursery.cancel_scope.cancel()
        return summary

    async def _flow(self, pub: shoal.Publisher, push: shoal.Pusher, client: shoal.Requester,
                    nursery: trio.Nursery, b_leaves: trio.Event) -> None:
        ticks = max(4, int(self.seconds / 0.5))
        for tick in range(ticks):
            if tick == ticks // 4:
                b_leaves.set()  # worker-B leaves; jobs go to worker-A alone
            if tick == ticks // 2:
                self.say("worker-B", "starts again (a new incarnation)")
                nursery.start_soon(self.worker, "worker-B")
            room = ROOMS[tick % len(ROOMS)]
            reading = {"celsius": round(self.rng.uniform(18, 24), 1)}
            await pub.publish(f"sensors/{room}", reading, headers={"unit": "C"})
            self.say("sensor", f"published sensors/{room} {_fmt(reading)}")
            for job in range(2):
                await push.send({"job": tick * 2 + job})
            pairs = [(self.rng.randint(1, 9), self.rng.randint(1, 9)) for _ in range(3)]
            answers: list[str] = []

            async def ask(a: int, b: int, into: list[str] = answers) -> None:
                into.append(f"{a}+{b}={await client.request({'a': a, 'b': b})}")

            with trio.fail_after(5):
                async with trio.open_nursery() as asks:
                    for a, b in pairs:
                        asks.start_soon(ask, a, b)
            self.say("client", f"3 requests in flight -> {', '.join(sorted(answers))}")
            if tick == 0:
                try:
                    await client.request({"a": 1, "b": "x"})
                except shoal.errors.RemoteError as exc:
                    self.say("client", f"a bad request fails cleanly: {exc}")
            await trio.sleep(0.5)


async def run_demo(*, seconds: float = 10.0, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo for about ``seconds`` (after discovery); return a summary."""
    with trio.fail_after(seconds + 30):
        summary = await _Demo(seconds, out).run()
    out("")
    out("summary        " + _fmt(summary))
    return summary


def add_demo_command(commands: Any) -> None:
    """Add ``shoal demo`` to the command line's sub-parsers."""
    demo = commands.add_parser(
        "demo",
        help="nodes that find each other over loopback mDNS and talk",
        description="Start seven nodes on 127.0.0.1 (a sensor publishing and handing out "
        "jobs, two subscribers, two workers, a calculator and its client) that find "
        "each other over mDNS; one worker leaves and returns. Prints what flows.",
        epilog="example: shoal demo --seconds 10",
    )
    demo.add_argument("--seconds", type=float, default=10.0,
                      help="how long to run (default: 10)")


def run_demo_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``shoal demo`` as parsed; return the exit status."""
    if not 0 < args.seconds <= 3600:
        parser.error("--seconds must be between 0 and 3600")

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        trio.run(lambda: run_demo(seconds=args.seconds, out=out))
    except KeyboardInterrupt:
        return 130
    return 0
