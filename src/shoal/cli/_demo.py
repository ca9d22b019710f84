"""``shoal demo``: nine nodes on loopback find each other, talk, and survive a crash.

The nodes:

* in this process: an observer (reports what discovery sees), a sensor (publishes
  telemetry and hands out jobs over reliable push/pull), two subscribers (every room,
  and room1 only; both count gaps), a calculator (replier) and its client (requester:
  several requests in flight, and one bad request that fails cleanly);
* three workers, each a process of its own (``shoal.cli._demo_worker``) taking jobs slowly
  enough to hold a few. A third of the way through, one is killed with SIGKILL while
  it holds unfinished jobs; the pusher redelivers them to the others; later the
  killed worker starts again as a new incarnation.

Each worker reports on its stdout every job it gets and every job it is done with
(acknowledged), so the demo knows what the killed worker held. At the end it checks
and says: every job sent was processed exactly once; the jobs handed out more than
once are exactly those the killed worker held unfinished (handed again to another
worker); every request was answered (the bad one with an error); every reading reached
its subscribers without gaps. The exit status is 0
when all of that holds, 1 when not (or the demo could not run), 130 after Ctrl-C.

Output: on a terminal, a status panel redrawn in place four times a second (ANSI
codes); otherwise, or with ``--plain``, one line per event and a summary, with no
escape codes. ``--seconds`` is how long the traffic runs once the nodes have found
each other (which takes two to four seconds more).

Network safety: every node (its sockets and its mDNS) is pinned to 127.0.0.1, under a
DNS-SD service type of this run's own, so that two demos on one machine never mix.
Every worker process is killed and reaped on every way out (the end, an error,
Ctrl-C); a worker also leaves by itself when its stdin closes, so that it never
outlives the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

import shoal
from shoal.discovery import MDNS, PeerJoined, PeerLeft, PeerUpdated
from shoal.patterns import ReliablePusher

__all__ = ["DemoFailed", "add_demo_command", "run_demo", "run_demo_command"]

ROOMS = ("room1", "room2", "kitchen")
LOOPBACK = ["127.0.0.1"]
WORKERS = ("worker-A", "worker-B", "worker-C")
VICTIM = "worker-C"
JOBS = "jobs"
TICK = 0.5
"""Seconds between two rounds of traffic (a reading, a burst of jobs, requests)."""
BURST = 9
"""Jobs per round: three for each worker, a burst it takes a while to work through."""
JOB_MS = 20.0
"""Milliseconds a worker takes per job."""
SETUP_TIMEOUT = 20.0
REFRESH = 0.25
"""Seconds between two redraws of the live panel."""
RECENT = 8
"""Events the live panel lists at most."""


class DemoFailed(Exception):
    """The demo could not run (nodes that never found each other, a worker that
    died on its own); the message says what happened."""


def _fmt(body: Any) -> str:
    return json.dumps(body, sort_keys=True)


def _jobs(jobs: list[int] | set[int]) -> str:
    return ", ".join(str(j) for j in sorted(jobs)) or "none"


# -- what the person watching sees ----------------------------------------------------------

@dataclass
class _Row:
    """One node in the live panel."""

    name: str
    pattern: str
    state: str = "starting"
    counts: Callable[[], str] | None = None
    peers: Callable[[], int | None] | None = None
    last: deque[str] = field(default_factory=lambda: deque(maxlen=3))
    """Its last few events, in short, oldest first (the panel drops the oldest ones
    that do not fit its width)."""

    def freeze(self) -> None:
        """The node is closing: keep showing what it showed (a closed node has no
        peers and its counters stop anyway)."""
        counts = self.counts() if self.counts else ""
        peers = self.peers() if self.peers else None
        self.counts = lambda: counts
        self.peers = lambda: peers
        self.state = "left"


class _View:
    """Where the demo's events go: plain lines, or a panel redrawn in place.

    ``say`` is chatter (each publication, each round of jobs), shown in line mode
    only; ``note`` is an event (joined, left, killed, redelivered), a line in line mode
    and an entry of the panel's recent events in live mode."""

    def __init__(self, out: Callable[[str], None], *, live: bool, seconds: float) -> None:
        self._out = out
        self.live = live
        self.seconds = seconds
        self.rows: dict[str, _Row] = {}
        self.recent: deque[str] = deque(maxlen=RECENT)
        self.started = trio.current_time()
        self.traffic_from: float | None = None
        self.gone = False
        self.on_gone: Callable[[], None] = lambda: None
        self._drawn = 0

    def write(self, text: str) -> None:
        if self.gone:
            return
        try:
            self._out(text)
        except BrokenPipeError:  # the reader went away (``shoal demo | head``)
            self.gone = True
            self.on_gone()

    def row(self, name: str, pattern: str) -> _Row:
        row = self.rows[name] = _Row(name, pattern)
        return row

    def say(self, who: str, text: str) -> None:
        if not self.live:
            self.write(f"[{who:<13}] {text}")

    def note(self, who: str, text: str, *, row: str | None = None,
             short: str | None = None, merge: bool = False) -> None:
        """An event of ``who``; ``row``/``short``: the node whose row lists it among
        its last events, and how (default: ``who``, ``text``). ``merge``: replace that
        row's last event if it starts with the same word (it said less)."""
        target = self.rows.get(row or who)
        if target is not None:
            entry = short or text
            last = target.last
            if merge and last and last[-1].split()[0] == entry.split()[0]:
                last.pop()
            last.append(entry)
        if self.live:
            self.recent.append(f"{self._clock():>6}  {who:<13} {text}")
        else:
            self.write(f"[{who:<13}] {text}")

    def _clock(self) -> str:
        return f"{trio.current_time() - self.started:.1f}s"

    # -- the live panel --

    def _panel(self, final: str) -> list[str]:
        size = shutil.get_terminal_size((100, 24))
        if self.traffic_from is None:
            phase = "the nodes are finding each other"
        else:
            ran = min(trio.current_time() - self.traffic_from, self.seconds)
            phase = f"traffic {ran:4.1f}s of {self.seconds:g}s"
        tail = final or "Ctrl-C stops"
        lines = [f"\x1b[1mshoal demo\x1b[0m: {len(self.rows)} nodes on 127.0.0.1, "
                 f"{phase} ({tail})",
                 f"{'NODE':<14}{'PATTERN':<26}{'STATE':<9}{'COUNTS':<28}{'PEERS':>5}  "
                 "LAST EVENTS"]
        colours: list[str] = ["", ""]
        for r in self.rows.values():
            counts = r.counts() if r.counts else ""
            peers = r.peers() if r.peers else None
            head = (f"{r.name:<13} {r.pattern:<25} {r.state:<8} {counts:<27} "
                    f"{'-' if peers is None else peers:>5}  ")
            lines.append(head + _story(r.last, size.columns - 1 - len(head)))
            colours.append("\x1b[31m" if r.state == "KILLED" else "")
        lines.append("recent events")
        colours.append("")
        room = max(1, size.lines - len(lines) - 1)
        for event in list(self.recent)[-room:]:
            lines.append(event)
            colours.append("\x1b[33m" if "redelivered" in event or "killed" in event
                           else "")
        width = max(20, size.columns - 1)  # never wrap: the redraw counts lines
        return [f"{c}{_clip(line, width)}\x1b[0m" if c else _clip(line, width)
                for line, c in zip(lines, colours, strict=True)]

    def draw(self, *, final: str = "") -> None:
        """Redraw the panel over the previous one (live mode only); ``final``: the last
        time, with this word instead of the hint to stop."""
        if not self.live:
            return
        lines = self._panel(final)
        # never shorter than the last one, whose lines are overwritten one by one (an
        # erase to the end of the screen from its top would be a full-screen clear,
        # which some terminals copy into their scrollback every time)
        lines += [""] * (self._drawn - len(lines))
        up = f"\x1b[{self._drawn}A" if self._drawn else "\x1b[?25l"  # hide the cursor
        self.write(up + "\r" + "\n".join(f"\x1b[2K{line}" for line in lines)
                   + ("\x1b[?25h" if final else ""))
        self._drawn = len(lines)

    async def refresh(self) -> None:
        while True:
            self.draw()
            await trio.sleep(REFRESH)

    def close(self, word: str) -> None:
        """The last redraw (saying ``word``: done, stopped), cursor shown again."""
        if self.live and not self.gone:
            self.draw(final=word)
            self.live = False  # from here on, plain lines


def _story(events: Iterable[str], width: int) -> str:
    """A node's last events in the order they happened, the oldest ones left out
    (marked by a leading ``...``) where they do not fit ``width`` characters."""
    kept = list(events)
    text = " > ".join(kept)
    while len(kept) > 1 and len(text) > width:
        kept.pop(0)
        text = "... " + " > ".join(kept)
    return text


def _clip(line: str, width: int) -> str:
    """Cut ``line`` to ``width`` visible characters (escape sequences do not count)."""
    out: list[str] = []
    seen = 0
    i = 0
    while i < len(line) and seen < width:
        if line[i] == "\x1b":
            end = i + 1
            while end < len(line) and not line[end].isalpha():
                end += 1
            out.append(line[i:end + 1])
            i = end + 1
            continue
        out.append(line[i])
        seen += 1
        i += 1
    return "".join(out)


# -- the worker processes ---------------------------------------------------------------------

class _Worker:
    """One worker process (one incarnation) and what it reported."""

    def __init__(self, name: str, incarnation: int, proc: trio.Process) -> None:
        self.name = name
        self.incarnation = incarnation
        self.proc = proc
        self.pid = proc.pid
        self.held: dict[int, None] = {}  # got and not reported done, in arrival order
        self.done = 0
        self.unreported: list[int] = []  # done since the last line about it
        self.peers: int | None = None
        self.killed = False
        self.ready = trio.Event()
        self.eof = trio.Event()  # its stdout is read to the end
        self.stderr = bytearray()  # the last 4 KiB of its stderr
        self.stderr_read = trio.Event()

    def holding(self) -> list[int]:
        """Jobs it got and has not reported done, in arrival order."""
        return list(self.held)


class _Demo:
    def __init__(self, seconds: float, view: _View, *, job_ms: float) -> None:
        self.seconds = seconds
        self.view = view
        self.job_ms = job_ms
        self.rng = random.Random(7)
        self.service_type = f"_shoal-{secrets.token_hex(4)}._tcp.local."
        self.workers: list[_Worker] = []  # every incarnation: cleanup covers them all
        self.taken_by: defaultdict[int, list[_Worker]] = defaultdict(list)
        self.done_by: defaultdict[int, list[_Worker]] = defaultdict(list)
        self.kill_armed: _Worker | None = None
        self.armed_got = 0  # jobs the armed victim got since it was armed
        self.fired = trio.Event()
        self.victim: _Worker | None = None
        self.lost: list[int] = []  # what the victim held unfinished when it died
        self.awaiting: set[int] = set()  # of those, not yet seen at another worker
        self.redelivered: dict[int, str] = {}
        self.jobs_sent = 0
        self.published: defaultdict[str, int] = defaultdict(int)
        self.received: dict[str, int] = {"dashboard": 0, "room1-display": 0}
        self.subs: dict[str, shoal.Subscriber] = {}
        self.reading_arrived = trio.Event()
        self.job_done = trio.Event()
        self.discovery = 0
        self.bad_request = ""
        self._nursery: trio.Nursery | None = None

    def _mdns(self) -> MDNS:
        return MDNS(interfaces=LOOPBACK, service_type=self.service_type)

    # -- workers --

    async def spawn(self, name: str) -> _Worker:
        """Start a worker process; it is in ``self.workers`` before anything can fail."""
        assert self._nursery is not None
        incarnation = 1 + sum(w.name == name for w in self.workers)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "shoal.cli._demo_worker", name, "--service-type",
             self.service_type, "--channel", JOBS, "--job-ms", str(self.job_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # its own session: a Ctrl-C on the terminal reaches the demo only, which
            # then kills its workers itself
            start_new_session=True)
        w = _Worker(name, incarnation, proc)
        self.workers.append(w)
        row = self.view.rows[name]
        row.state = "starting"
        row.pattern = f"reliable pull, pid {w.pid}"
        row.counts = lambda: f"done {w.done}, holding {len(w.held)}"
        row.peers = lambda: w.peers
        again = " again, a new incarnation" if incarnation > 1 else ""
        self.view.note(name, f"process started{again} (pid {w.pid})", short="started")
        self._nursery.start_soon(self._read_reports, w)
        self._nursery.start_soon(self._read_stderr, w)
        return w

    async def _read_reports(self, w: _Worker) -> None:
        assert w.proc.stdout is not None
        pending = b""
        async for chunk in w.proc.stdout:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                try:
                    report = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(report, dict):
                    self._on_report(w, report)
        w.eof.set()
        code = await w.proc.wait()
        if not w.killed and code != 0 and not self.view.gone:
            with trio.move_on_after(1):
                await w.stderr_read.wait()
            why = w.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise DemoFailed(f"{w.name} (pid {w.pid}) exited with status {code}: {why[0]}")

    async def _read_stderr(self, w: _Worker) -> None:
        assert w.proc.stderr is not None
        async for chunk in w.proc.stderr:
            w.stderr += chunk
            del w.stderr[:-4096]
        w.stderr_read.set()

    def _on_report(self, w: _Worker, report: dict[str, Any]) -> None:
        ev = report.get("ev")
        job = report.get("job")
        row = self.view.rows[w.name]
        if ev == "ready":
            w.ready.set()
            if not w.killed:
                row.state = "up"
        elif ev == "peers" and isinstance(report.get("n"), int):
            w.peers = report["n"]
        elif ev == "got" and isinstance(job, int):
            w.held[job] = None
            self.taken_by[job].append(w)
            if job in self.awaiting and w is not self.victim:
                self.awaiting.discard(job)
                self._redelivered(job, w)
            if self.kill_armed is w:
                self.armed_got += 1
                if self.armed_got >= BURST // len(WORKERS) and len(w.held) >= 2:
                    # its share of the burst is here and it is busy with the first:
                    # kill it now, while it holds the rest unfinished
                    self._kill(w)
        elif ev == "done" and isinstance(job, int):
            w.held.pop(job, None)
            w.done += 1
            w.unreported.append(job)
            self.done_by[job].append(w)
            self.job_done.set()
        elif ev == "bye":
            row.state = "left"

    def _kill(self, w: _Worker) -> None:
        self.kill_armed = None
        w.killed = True
        w.proc.kill()  # SIGKILL: no goodbye, no acknowledgement, nothing flushed
        self.view.rows[w.name].state = "KILLED"
        self.fired.set()

    async def _after_kill(self, w: _Worker) -> None:
        """Once its last reports are read: say what it held, and which of those other
        workers already got (the rest are announced as they arrive)."""
        with trio.fail_after(10):
            await w.eof.wait()
            await w.proc.wait()
        self.victim = w
        self.lost = w.holding()
        row = self.view.rows[w.name]
        row.counts = lambda: f"died holding {len(self.lost)}"
        row.peers = lambda: None
        self.view.note(w.name, f"killed with SIGKILL (pid {w.pid}) while holding jobs "
                       f"{_jobs(self.lost)}, unfinished", short="killed")
        for job in self.lost:
            others = [x for x in self.taken_by[job] if x is not w]
            if others:
                self._redelivered(job, others[0])
            else:
                self.awaiting.add(job)

    def _redelivered(self, job: int, w: _Worker) -> None:
        self.redelivered[job] = w.name
        victim = self.victim.name if self.victim else VICTIM
        mine = [j for j, n in self.redelivered.items() if n == w.name]
        self.view.note(w.name, f"got job {job} again, redelivered: {victim} died holding it",
                       short=f"redelivered {_jobs(mine)}", merge=True)

    async def _stop_workers(self) -> None:
        """Close the stdin of every live worker (it says goodbye and exits), and read its
        last reports; kill one that takes more than five seconds."""
        async def stop(w: _Worker) -> None:
            with trio.move_on_after(5):
                if w.proc.stdin is not None:
                    await w.proc.stdin.aclose()
                await w.eof.wait()
                await w.proc.wait()
                return
            w.killed = True  # by us: not a failure of the worker
            w.proc.kill()

        async with trio.open_nursery() as nursery:
            for w in self.workers:
                if w.proc.returncode is None:
                    nursery.start_soon(stop, w)

    async def _reap(self) -> None:
        """Kill and reap every worker process still there (every way out comes here)."""
        for w in self.workers:
            if w.proc.returncode is None:
                w.proc.kill()
                self.view.rows[w.name].state = "stopped"
            await w.proc.wait()

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
                    self.view.say(name, f"got {msg.topic} {_fmt(msg.body)} (seq {msg.seq})")
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
                self._nursery = procs
                async with trio.open_nursery() as nodes:  # the nodes of this process
                    if view.live:
                        nodes.start_soon(view.refresh)
                    for name in WORKERS:  # first: a process takes longest to start
                        await self.spawn(name)
                    await nodes.start(self.observe)
                    nodes.start_soon(self.subscriber, "dashboard", "sensors/")
                    nodes.start_soon(self.subscriber, "room1-display", "sensors/room1")
                    nodes.start_soon(self.calculator)
                    sensor, pub, push = await nodes.start(self.sensor)
                    client_node, client = await nodes.start(self.client)
                    summary = await self._traffic(sensor, pub, push, client_node, client)
                    # both at once: each node's mDNS goodbye takes most of a second
                    procs.start_soon(self._stop_workers)
                    nodes.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._reap()
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
        self._flush_worker_lines()
        return self._summary(push, client)

    async def _rounds(self, pub: shoal.Publisher, push: ReliablePusher,
                      client: shoal.Requester) -> None:
        ticks = max(6, round(self.seconds / TICK))
        kill_at = max(2, ticks * 3 // 10)
        restart_at = max(kill_at + 2, ticks // 2)
        victim = next(w for w in self.workers if w.name == VICTIM)
        start = trio.current_time()
        for tick in range(ticks):
            if tick == kill_at:
                self.kill_armed = victim  # killed once its share of this burst is in
            if tick == restart_at:
                await self.spawn(VICTIM)
            room = ROOMS[tick % len(ROOMS)]
            reading = {"celsius": round(self.rng.uniform(18, 24), 1)}
            await pub.publish(f"sensors/{room}", reading, headers={"unit": "C"})
            self.published[room] += 1
            self.view.say("sensor", f"published sensors/{room} {_fmt(reading)}")
            first = self.jobs_sent
            for _ in range(BURST):
                await push.send({"job": self.jobs_sent})
                self.jobs_sent += 1
            self.view.say("sensor", f"sent jobs {first}-{self.jobs_sent - 1}")
            await self._ask(client, bad=tick == 1)
            if tick == kill_at:
                self._flush_worker_lines()
                with trio.move_on_after(2):
                    await self.fired.wait()
                if not self.fired.is_set():
                    self._kill(victim)  # its share never came: kill it anyway
                await self._after_kill(victim)
            self._flush_worker_lines()
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

    def _flush_worker_lines(self) -> None:
        for w in self.workers:
            if w.unreported:
                self.view.say(w.name, f"did jobs {_jobs(w.unreported)}")
                w.unreported.clear()

    async def _finish(self, push: ReliablePusher) -> None:
        """Wait (bounded) for every job to be done and reported, the restarted worker to
        be up and the last readings to arrive."""
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
            while len(self.done_by) < self.jobs_sent:
                await self.job_done.wait()
                self.job_done = trio.Event()
        with trio.move_on_after(5):  # a slow machine may take longer: not an error
            for w in self.workers:
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
        sent = self.jobs_sent
        done = set(self.done_by)
        twice = sorted(j for j, ws in self.done_by.items() if len(ws) > 1)
        missing = sorted(set(range(sent)) - done)
        handed_out_again = sorted(j for j, ws in self.taken_by.items() if len(ws) > 1)
        victim = self.victim
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
                                                   "holding": self.lost},
            "redelivered": {str(j): n for j, n in sorted(self.redelivered.items())},
            "handed_out_again": handed_out_again,
            "pusher_redelivered": push.statistics().redelivered,
            "jobs_by_worker": {f"{w.name}#{w.incarnation}": w.done for w in self.workers},
            "worker_pids": [w.pid for w in self.workers],
            "requests": stats.sent,
            "replies": stats.replies,
            "failed_requests": stats.remote_errors,
            "bad_request_error": self.bad_request,
            "discovery_events": self.discovery,
        }


def _verdict(summary: dict[str, Any]) -> tuple[list[tuple[str, str]], bool]:
    """What the summary shows, in words; and whether every check holds."""
    killed = summary["killed"] or {"name": VICTIM, "holding": []}
    lost = killed["holding"]
    redelivered = summary["redelivered"]
    jobs_ok = (not summary["missing"] and not summary["done_twice"]
               and summary["jobs_done"] == summary["jobs_sent"]
               and summary["handed_out_again"] == sorted(lost)
               and sorted(int(j) for j in redelivered) == sorted(lost))
    where = ", ".join(f"{j} -> {n}" for j, n in redelivered.items()) or "none"
    lines = []
    if jobs_ok:
        lines.append(("jobs", f"{summary['jobs_sent']} sent, {summary['jobs_done']} done: "
                      "every job was processed exactly once"))
    else:
        lines.append(("jobs", f"NOT as it should be: {summary['jobs_sent']} sent, "
                      f"{summary['jobs_done']} done, missing {_jobs(summary['missing'])}, "
                      f"done twice {_jobs(summary['done_twice'])}"))
    lines.append(("jobs", f"{killed['name']} was killed holding {_jobs(lost)} unfinished; "
                  f"handed to another worker after the kill: {where} (jobs given out "
                  f"more than once: {_jobs(summary['handed_out_again'])}; the pusher "
                  f"counted {summary['pusher_redelivered']} redelivered)"))
    failed = summary["failed_requests"]
    requests_ok = summary["replies"] == summary["requests"] > 0 and failed == 1
    lines.append(("requests", f"{summary['requests']} sent, {summary['replies']} answered, "
                  f"{failed} failed" + (" (the bad one)" if failed == 1
                                        else " (only the bad one should)")))
    pubsub_ok = summary["gaps"] == 0 and summary["received"] == summary["expected"]
    got = ", ".join(f"{n} {summary['received'][n]}/{e}"
                    for n, e in summary["expected"].items())
    lines.append(("pub/sub", f"{summary['published']} published; received: {got}; "
                  f"gaps {summary['gaps']}"))
    return lines, jobs_ok and requests_ok and pubsub_ok


async def run_demo(*, seconds: float = 20.0, out: Callable[[str], None] = print,
                   live: bool = False, job_ms: float = JOB_MS) -> dict[str, Any] | None:
    """Run the demo: about ``seconds`` of traffic once the nodes have found each other.

    ``out`` takes each line (live mode: each redraw, escape codes included). Returns
    the summary, with ``"ok"`` telling whether every check held; None if the output
    went away (a closed pipe). Raises ``DemoFailed`` (inside an ``ExceptionGroup``)
    if the demo cannot run. Every worker process is reaped before it returns or raises.
    """
    view = _View(out, live=live, seconds=seconds)
    demo = _Demo(seconds, view, job_ms=job_ms)
    try:
        with trio.CancelScope() as scope:
            view.on_gone = scope.cancel
            with trio.fail_after(seconds + 90):
                summary = await demo.run()
    except BaseException:
        view.close("stopped")
        raise
    view.close("done")
    if view.gone or scope.cancelled_caught:
        return None
    lines, ok = _verdict(summary)
    summary["ok"] = ok
    view.write("")
    for who, text in lines:
        view.write(f"[{who:<13}] {text}")
    if not live:
        view.write("summary        " + _fmt(summary))
    return summary


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600, not {text}")
    return value


def add_demo_command(commands: Any) -> None:
    """Add ``shoal demo`` to the command line's sub-parsers."""
    demo = commands.add_parser(
        "demo",
        help="nodes on loopback that find each other, talk, and survive a killed worker",
        description="Start nine nodes on 127.0.0.1 that find each other over mDNS: an "
        "observer, a sensor publishing readings and handing out jobs (reliable "
        "push/pull), two subscribers, a calculator and its client, and three worker "
        "processes. One "
        "worker is killed (SIGKILL) while it holds jobs; they are redelivered to the "
        "others, and it comes back. On a terminal a live panel shows every node; "
        "otherwise one line per event.",
        epilog="example: shoal demo --seconds 10",
    )
    demo.add_argument("--seconds", type=_seconds, default=20.0,
                      help="how long the traffic runs once the nodes have found each "
                      "other (default: 20; start-up adds 2-4 s)")
    demo.add_argument("--plain", action="store_true",
                      help="one line per event, no live panel, even on a terminal")


def run_demo_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``shoal demo`` as parsed; return the exit status (130 after Ctrl-C)."""
    live = sys.stdout.isatty() and not args.plain

    def out(line: str) -> None:
        print(line, flush=True)

    async def main() -> int:
        interrupted = False
        failure = ""
        summary: dict[str, Any] | None = None
        # Ctrl-C cancels the demo (its cleanup kills the workers), rather than raising
        # KeyboardInterrupt wherever the signal lands.
        with trio.open_signal_receiver(signal.SIGINT) as signals, \
             trio.CancelScope() as demo_scope:
            async with trio.open_nursery() as nursery:
                async def on_interrupt() -> None:
                    nonlocal interrupted
                    async for _ in signals:  # later ones are swallowed while we clean up
                        interrupted = True
                        demo_scope.cancel()

                nursery.start_soon(on_interrupt)
                try:
                    summary = await run_demo(seconds=args.seconds, out=out, live=live)
                except* DemoFailed as group:
                    failure = str(_first_leaf(group))
                except* trio.TooSlowError:
                    failure = "the demo did not finish in time"
                finally:
                    nursery.cancel_scope.cancel()
        if interrupted:
            return 130
        if failure:
            print(f"shoal demo: {failure}", file=sys.stderr, flush=True)
            return 1
        return 0 if summary is not None and summary["ok"] else 1

    try:
        status = trio.run(main)
    except KeyboardInterrupt:
        status = 130
    if status == 130:
        print("shoal demo: interrupted", file=sys.stderr, flush=True)
    _quiet_closed_stdout()
    return status


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of ``group`` that is not itself a group (nurseries nest)."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _quiet_closed_stdout() -> None:
    """If the reader of stdout went away, point stdout at /dev/null so that Python's
    final flush does not complain."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
