"""The scenario of ``shoal demo``: the nodes of the demo's own process and the traffic.

Six nodes run here (an observer, a sensor, two subscribers, a calculator and its
client) beside the three worker processes (``_workers``). Once every node has found
the ones it needs, the traffic runs in rounds of ``TICK`` seconds: a reading
published, a burst of jobs pushed (reliable), three requests in flight (and, once, a
bad one). About a third of the way through, the victim worker is killed while it holds
its share of a burst; half way through it starts again. At the end the demo waits
(bounded) for every job to be acknowledged and reported, and returns the summary
that ``_command`` checks.
"""

from __future__ import annotations

import random
import secrets
from collections import defaultdict
from typing import Any

import trio

import shoal
from shoal.cli._demo._panel import View, as_json
from shoal.cli._demo._workers import BURST, JOBS, VICTIM, WORKERS, Crew, DemoFailed
from shoal.discovery import MDNS, PeerJoined, PeerLeft, PeerUpdated
from shoal.patterns import ReliablePusher

ROOMS = ("room1", "room2", "kitchen")
LOOPBACK = ["127.0.0.1"]
TICK = 0.5
"""Seconds between two rounds of traffic (a reading, a burst of jobs, requests)."""
SETUP_TIMEOUT = 20.0


class Demo:
    """The nodes of this process, the traffic between them, and what came of it."""

    def __init__(self, seconds: float, view: View, *, job_ms: float) -> None:
        self.seconds = seconds
        self.view = view
        self.rng = random.Random(7)
        self.service_type = f"_shoal-{secrets.token_hex(4)}._tcp.local."
        self.crew = Crew(view, service_type=self.service_type, job_ms=job_ms)
        self.jobs_sent = 0
        self.published: defaultdict[str, int] = defaultdict(int)
        self.received: dict[str, int] = {"dashboard": 0, "room1-display": 0}
        self.subs: dict[str, shoal.Subscriber] = {}
        self.reading_arrived = trio.Event()
        self.discovery = 0
        self.bad_request = ""

    def _mdns(self) -> MDNS:
        return MDNS(interfaces=LOOPBACK, service_type=self.service_type)

    # -- the nodes of this process --

    async def observe(self, *, task_status: trio.TaskStatus[None]) -> None:
        """A quiet node that reports what discovery tells it."""
        async with shoal.open_node("observer", discovery=self._mdns()) as node:
            watch = node.watch_peers()
            row = self.view.rows["observer"]
            row.state = "up"
            row.counts = lambda: f"{self.discovery} events"
            row.peers = lambda: len(node.peers())
            task_status.started()
            try:
                await self._report_discovery(watch)
            finally:
                row.freeze()

    async def _report_discovery(self, watch: shoal.PeerWatch) -> None:
        async for ev in watch:
            if isinstance(ev, PeerJoined):
                offers = ", ".join(sorted(f"{c.name}/{c.role.value}"
                                          for c in ev.peer.channels)) or "nothing yet"
                line = f"{ev.peer.name} joined (epoch {ev.peer.epoch:08x}; {offers})"
                short = "joined"
            elif isinstance(ev, PeerLeft):
                line = f"{ev.peer.name} left ({ev.reason})"
                short = f"left ({ev.reason})"
            elif isinstance(ev, PeerUpdated):
                before = {(c.name, c.role) for c in ev.previous.channels}
                new = [f"{c.name}/{c.role.value}" for c in ev.peer.channels
                       if (c.name, c.role) not in before]
                if not new:
                    continue
                line = f"{ev.peer.name} now offers {', '.join(new)}"
                short = "offers " + ", ".join(new)
            self.discovery += 1
            self.view.note("discovery", line, row=ev.peer.name, short=short)

    async def subscriber(self, name: str, prefix: str) -> None:
        async with shoal.open_node(name, discovery=self._mdns()) as node, \
                   node.open_subscriber("telemetry", topics=[prefix]) as sub:
            self.subs[name] = sub
            row = self.view.rows[name]
            row.state = "up"
            row.counts = lambda: (f"received {self.received[name]}, "
                                  f"gaps {sub.statistics().gaps}")
            row.peers = lambda: len(node.peers())
            try:
                async for msg in sub:
                    self.received[name] += 1
                    self.reading_arrived.set()
                    self.view.say(name, f"got {msg.topic} {as_json(msg.body)} (seq {msg.seq})")
            finally:
                row.freeze()

    async def calculator(self) -> None:
        def add(req: shoal.Request) -> int:
            return int(req.body["a"]) + int(req.body["b"])

        async with shoal.open_node("calculator", discovery=self._mdns()) as node, \
                   node.open_replier("math") as rep:
            row = self.view.rows["calculator"]
            row.state = "up"
            row.counts = lambda: (f"answered {rep.statistics().replied}, "
                                  f"failed {rep.statistics().failed}")
            row.peers = lambda: len(node.peers())
            try:
                async for req in rep:
                    try:
                        await req.reply(add(req))
                    except (KeyError, TypeError, ValueError) as exc:
                        await req.fail(f"{type(exc).__name__}: {exc}")
            finally:
                row.freeze()

    # -- the run --

    async def run(self) -> dict[str, Any]:
        view = self.view
        view.row("observer", "discovery watch")
        view.row("sensor", "pub + reliable push")
        view.row("dashboard", "sub sensors/")
        view.row("room1-display", "sub sensors/room1")
        view.row("calculator", "reply")
        view.row("client", "request")
        for name in WORKERS:
            view.row(name, "reliable pull")
        summary: dict[str, Any] = {}
        try:
            async with trio.open_nursery() as procs:  # what reads and stops the workers
                self.crew.nursery = procs
                async with trio.open_nursery() as nodes:  # the nodes of this process
                    if view.live:
                        nodes.start_soon(view.refresh)
                    for name in WORKERS:  # first: a process takes longest to start
                        await self.crew.spawn(name)
                    await nodes.start(self.observe)
                    nodes.start_soon(self.subscriber, "dashboard", "sensors/")
                    nodes.start_soon(self.subscriber, "room1-display", "sensors/room1")
                    nodes.start_soon(self.calculator)
                    sensor, pub, push = await nodes.start(self.sensor)
                    client_node, client = await nodes.start(self.client)
                    summary = await self._traffic(sensor, pub, push, client_node, client)
                    # both at once: each node's mDNS goodbye takes most of a second
                    procs.start_soon(self.crew.stop)
                    nodes.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.crew.reap()
        return summary

    async def sensor(self, *, task_status: trio.TaskStatus[
            tuple[shoal.Node, shoal.Publisher, ReliablePusher]]) -> None:
        """The node that publishes readings and hands out jobs (open until cancelled)."""
        async with shoal.open_node("sensor", discovery=self._mdns()) as sensor, \
                   sensor.open_publisher("telemetry") as pub, \
                   sensor.open_pusher(JOBS, reliable=True) as push:
            row = self.view.rows["sensor"]
            row.state = "up"
            row.peers = lambda: len(sensor.peers())
            row.counts = lambda: (f"published {pub.statistics().published}, "
                                  f"jobs sent {push.statistics().sent}")
            task_status.started((sensor, pub, push))
            try:
                await trio.sleep_forever()
            finally:
                row.freeze()

    async def client(self, *, task_status: trio.TaskStatus[
            tuple[shoal.Node, shoal.Requester]]) -> None:
        """The calculator's client (open until cancelled)."""
        async with shoal.open_node("client", discovery=self._mdns()) as node, \
                   node.open_requester("math") as client:
            row = self.view.rows["client"]
            row.state = "up"
            row.peers = lambda: len(node.peers())
            row.counts = lambda: (f"replies {client.statistics().replies}, "
                                  f"failed {client.statistics().remote_errors}")
            task_status.started((node, client))
            try:
                await trio.sleep_forever()
            finally:
                row.freeze()

    async def _traffic(self, sensor: shoal.Node, pub: shoal.Publisher, push: ReliablePusher,
                       client_node: shoal.Node, client: shoal.Requester) -> dict[str, Any]:
        try:
            with trio.fail_after(SETUP_TIMEOUT):
                await pub.wait_for_subscribers(2)
                await sensor.wait_for_peers(len(WORKERS), channel=JOBS)
                await client_node.wait_for_peers(1, channel="math")
        except trio.TooSlowError:
            raise DemoFailed(
                f"the nodes did not find each other within {SETUP_TIMEOUT:g} s over "
                "mDNS on 127.0.0.1 (`shoal doctor` may say why)") from None
        self.view.note("sensor", "both subscribers, the three workers and the calculator "
                       "are connected", short="connected")
        self.view.traffic_from = trio.current_time()
        await self._rounds(pub, push, client)
        await self._finish(push)
        self.crew.flush_lines()
        return self._summary(push, client)

    async def _rounds(self, pub: shoal.Publisher, push: ReliablePusher,
                      client: shoal.Requester) -> None:
        ticks = max(6, round(self.seconds / TICK))
        kill_at = max(2, ticks * 3 // 10)
        restart_at = max(kill_at + 2, ticks // 2)
        victim = next(w for w in self.crew.workers if w.name == VICTIM)
        start = trio.current_time()
        for tick in range(ticks):
            if tick == kill_at:
                self.crew.kill_armed = victim  # killed once its share of this burst is in
            if tick == restart_at:
                await self.crew.spawn(VICTIM)
            room = ROOMS[tick % len(ROOMS)]
            reading = {"celsius": round(self.rng.uniform(18, 24), 1)}
            await pub.publish(f"sensors/{room}", reading, headers={"unit": "C"})
            self.published[room] += 1
            self.view.say("sensor", f"published sensors/{room} {as_json(reading)}")
            first = self.jobs_sent
            for _ in range(BURST):
                await push.send({"job": self.jobs_sent})
                self.jobs_sent += 1
            self.view.say("sensor", f"sent jobs {first}-{self.jobs_sent - 1}")
            await self._ask(client, bad=tick == 1)
            if tick == kill_at:
                self.crew.flush_lines()
                with trio.move_on_after(2):
                    await self.crew.fired.wait()
                if not self.crew.fired.is_set():
                    self.crew.kill(victim)  # its share never came: kill it anyway
                await self.crew.after_kill(victim)
            self.crew.flush_lines()
            await trio.sleep_until(start + (tick + 1) * TICK)

    async def _ask(self, client: shoal.Requester, *, bad: bool) -> None:
        pairs = [(self.rng.randint(1, 9), self.rng.randint(1, 9)) for _ in range(3)]
        answers: list[str] = []

        async def ask(a: int, b: int) -> None:
            answers.append(f"{a}+{b}={await client.request({'a': a, 'b': b})}")

        with trio.fail_after(5):
            async with trio.open_nursery() as asks:
                for a, b in pairs:
                    asks.start_soon(ask, a, b)
            self.view.say("client", f"3 requests in flight -> {', '.join(sorted(answers))}")
            if bad:
                try:
                    await client.request({"a": 1, "b": "x"})
                except shoal.errors.RemoteError as exc:
                    self.bad_request = exc.message
                    self.view.note("client", f"a bad request fails cleanly: {exc}",
                                   short="bad request failed")

    async def _finish(self, push: ReliablePusher) -> None:
        """Wait (bounded) for every job to be done and reported, the restarted worker to
        be up and the last readings to arrive."""
        crew = self.crew
        try:
            with trio.fail_after(15):
                await push.wait_acked()
        except trio.TooSlowError:
            raise DemoFailed(f"{push.statistics().in_flight} job(s) were still not done "
                             "15 s after the last was sent") from None
        except shoal.errors.DeliveryFailed as exc:
            raise DemoFailed(f"the pusher gave up on jobs: {exc}") from None
        with trio.move_on_after(5):
            # a job is acknowledged a moment before its worker reports it done
            while len(crew.done_by) < self.jobs_sent:
                await crew.job_done.wait()
                crew.job_done = trio.Event()
        with trio.move_on_after(5):  # a slow machine may take longer: not an error
            for w in crew.workers:
                if w.incarnation > 1:
                    await w.ready.wait()
        expected = self._expected()
        with trio.move_on_after(2):
            while self.received != expected:
                await self.reading_arrived.wait()
                self.reading_arrived = trio.Event()
        self.view.say("sensor", f"every job is acknowledged ({push.statistics().acked})")

    def _expected(self) -> dict[str, int]:
        return {"dashboard": sum(self.published.values()),
                "room1-display": self.published["room1"]}

    def _summary(self, push: ReliablePusher, client: shoal.Requester) -> dict[str, Any]:
        crew = self.crew
        sent = self.jobs_sent
        done = set(crew.done_by)
        twice = sorted(j for j, ws in crew.done_by.items() if len(ws) > 1)
        missing = sorted(set(range(sent)) - done)
        handed_out_again = sorted(j for j, ws in crew.taken_by.items() if len(ws) > 1)
        victim = crew.victim
        stats = client.statistics()
        return {
            "nodes": len(self.view.rows),
            "published": sum(self.published.values()),
            "received": dict(self.received),
            "expected": self._expected(),
            "gaps": sum(sub.statistics().gaps for sub in self.subs.values()),
            "jobs_sent": sent,
            "jobs_done": len(done),
            "done_twice": twice,
            "missing": missing,
            "killed": None if victim is None else {"name": victim.name, "pid": victim.pid,
                                                   "holding": crew.lost},
            "redelivered": {str(j): n for j, n in sorted(crew.redelivered.items())},
            "handed_out_again": handed_out_again,
            "pusher_redelivered": push.statistics().redelivered,
            "jobs_by_worker": {f"{w.name}#{w.incarnation}": w.done for w in crew.workers},
            "worker_pids": [w.pid for w in crew.workers],
            "requests": stats.sent,
            "replies": stats.replies,
            "failed_requests": stats.remote_errors,
            "bad_request_error": self.bad_request,
            "discovery_events": self.discovery,
        }
