"""shoal soak run: every pattern, best effort and reliable, paced for a long time, with
each process's memory watched for growth.

Usage (from the repository root, with shoal installed in the active environment)::

    python benchmarks/soak.py                          # 10 minutes, report every 10 s
    python benchmarks/soak.py --seconds 60 --interval 5 --json soak.json
    python benchmarks/soak.py --seconds 20 --interval 2 --rate 1000   # CI-sized

Options: ``--seconds`` (run length, default 600), ``--interval`` (reporting interval,
default 10 s; the first interval is the warmup), ``--rate`` (messages/s for every
pattern and mode) or per pattern ``--rate-pubsub``, ``--rate-pushpull`` (default 5000
each) and ``--rate-reqrep`` (default 2000), ``--size`` (body bytes, default 64),
``--concurrency`` (requests in flight per requester, at most; default 8), ``--retries``
(reliable request/reply, default 3), ``--only pubsub,pushpull,reqrep``,
``--modes best-effort,reliable``, ``--max-growth-mib`` (default 20), ``--json FILE``.

What runs. Six streams at once: publish/subscribe, push/pull and request/reply, each
best effort and reliable (``reliable=True`` on ``open_publisher``/``open_subscriber``/
``open_pusher``/``open_puller``; ``request(body, retries=N)`` for request/reply). Each
stream is two processes (``multiprocessing``, spawn start method): the sender
(publisher, pusher, requester) and the receiver (subscriber, puller, replier), so the
memory of each side is measured on its own; twelve processes in all. Everything goes
over TCP on 127.0.0.1 only: the publisher, the puller and the replier bind
``tcp://127.0.0.1:*`` and the other side connects to the port the driver passes on.

Pacing. A sender does not send as fast as it can: it keeps to a schedule of ``rate``
messages per second from a start time the driver gives every process (one clock,
``time.monotonic``, shared by all processes). Every 10 ms it sends what the schedule
says is due (waking more often costs more CPU than the messages do at these rates); if
it falls more than half a second behind, it sheds the excess and counts it as
``behind``, so an overloaded run shows up in the figures instead of as a growing
backlog. A requester runs a pacer that hands out one permit per request due, on the
same schedule, and ``--concurrency`` tasks that each take a permit, send a request and
wait for its reply: at most that many requests are in flight. The default rates keep
all six streams together at about three quarters of two cores on the machines this
was written on (request/reply costs several times more CPU per message than the
one-way patterns): the run measures steady state, not overload. Each body is
``bytes`` of ``--size`` bytes whose first 8 are the message number (little-endian
u64); a replier echoes the body and the requester checks it.

What is recorded. Intervals are cut at fixed times (start + k x interval) in every
process at once. At each cut every process reports its resident memory (``VmRSS`` from
``/proc/self/status``), its CPU time, its counters and its pattern's ``statistics()``.
Senders count messages sent. Receivers track the message numbers themselves: unique
numbers received, duplicates (a number seen twice), and missing (numbers skipped over
and not yet arrived), independently of what shoal reports; shoal's own counters
(subscriber gaps, retransmissions, retries, duplicates dropped...) are recorded beside.
A requester counts replies, wrong replies and requests that failed (no reply within
its deadline: 5 s best effort; reliable, one retry deadline per attempt plus 1 s).
At the end each sender stops on schedule (a reliable one then waits until everything is
acknowledged), tells the driver how many it sent, and the driver tells the receiver,
which drains until it has them all or nothing new came for 3 s.

Throughput per interval is what arrived (replies, for request/reply) divided by the
interval's measured length; the table gives the minimum, median and maximum over the
intervals after the warmup. Memory: the first cut (end of the warmup interval) is the
start; growth is judged on the cuts from there on, two ways, both robust to noise:
the median of the last third of the samples minus the median of the first third, and a
Theil-Sen slope (the median of the slopes between every pair of samples), projected
over the same span. Both are reported.

Checks (exit status 1 when one fails; 2 when the run itself broke down): for every
process, neither growth figure above ``--max-growth-mib``; for every stream, messages
arrived in every interval and no reply was wrong; in reliable mode, nothing lost and
nothing delivered twice to the application. Loss in best-effort mode is reported, not
failed. When the run breaks down, every worker still running prints its Python stack to
stderr (faulthandler, on SIGUSR1 from the driver) before it is stopped.
"""

from __future__ import annotations

import argparse
import faulthandler
import itertools
import json
import multiprocessing
import os
import platform
import signal
import statistics
import struct
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import trio
import zmq

import shoal
from shoal.errors import DeliveryFailed, PeerLost, RemoteError

LOOPBACK = "tcp://127.0.0.1:*"
TOPIC = "soak"
PATTERNS = ("pubsub", "pushpull", "reqrep")
MODES = ("best-effort", "reliable")
ROLES = {  # pattern: (sender role, receiver role, which side binds)
    "pubsub": ("publisher", "subscriber", "sender"),
    "pushpull": ("pusher", "puller", "receiver"),
    "reqrep": ("requester", "replier", "receiver"),
}
DEFAULT_RATES = {"pubsub": 5000.0, "pushpull": 5000.0, "reqrep": 2000.0}  # messages/s
TICK_S = 0.01  # how often a paced sender sends what is due
MAX_BEHIND_S = 0.5  # a sender further behind its schedule than this sheds the excess
SETUP_S = 60.0  # for every process to start, bind/connect and say it is ready
DRAIN_IDLE_S = 3.0  # a receiver stops draining after this long without a new message
DRAIN_MAX_S = 30.0  # and after this long in any case; also a reliable sender's ack wait
BEST_EFFORT_REQUEST_S = 5.0
MISSING_CAP = 100_000  # message numbers a receiver remembers as missing, at most

_U64 = struct.Struct("<Q")

Record = dict[str, Any]


# ---------------------------------------------------------------------------------
# memory growth: the check the exit status rests on


@dataclass(frozen=True)
class Growth:
    """How one process's memory moved over the run (after the warmup)."""

    samples: int
    first_mib: float
    """Median RSS of the first third of the samples."""
    last_mib: float
    """Median RSS of the last third."""
    growth_mib: float
    """``last_mib - first_mib``."""
    slope_mib_per_min: float
    """Theil-Sen slope of RSS over time."""
    projected_mib: float
    """The slope times the span of the samples."""
    span_s: float
    limit_mib: float
    ok: bool
    """Neither ``growth_mib`` nor ``projected_mib`` is above ``limit_mib``."""


def theil_sen_slope(times: Sequence[float], values: Sequence[float],
                    max_points: int = 200) -> float:
    """The median of the slopes between every pair of points (robust to outliers).

    Beyond ``max_points`` points, evenly spaced points stand for the rest (the pair
    count grows with the square). Returns 0.0 when no two points differ in time.
    """
    n = len(times)
    if n > max_points:
        idx = [round(i * (n - 1) / (max_points - 1)) for i in range(max_points)]
        times = [times[i] for i in idx]
        values = [values[i] for i in idx]
        n = max_points
    slopes = [(values[j] - values[i]) / (times[j] - times[i])
              for i in range(n) for j in range(i + 1, n) if times[j] != times[i]]
    return statistics.median(slopes) if slopes else 0.0


def check_growth(times_s: Sequence[float], rss_mib: Sequence[float],
                 limit_mib: float) -> Growth:
    """Judge a series of RSS samples (MiB, at ``times_s`` seconds) for growth.

    Two estimates, each robust to noise and to single spikes: the median of the last
    third of the samples minus the median of the first third, and the Theil-Sen slope
    projected over the span of the samples. ``ok`` is false when either exceeds
    ``limit_mib``. Needs at least 3 samples (``ValueError`` otherwise).
    """
    n = len(rss_mib)
    if n < 3 or len(times_s) != n:
        raise ValueError("check_growth needs at least 3 samples, with one time each")
    third = n // 3
    first = statistics.median(rss_mib[:third])
    last = statistics.median(rss_mib[-third:])
    slope = theil_sen_slope(times_s, rss_mib)
    span = times_s[-1] - times_s[0]
    projected = slope * span
    growth = last - first
    return Growth(samples=n, first_mib=first, last_mib=last, growth_mib=growth,
                  slope_mib_per_min=slope * 60.0, projected_mib=projected, span_s=span,
                  limit_mib=limit_mib, ok=growth <= limit_mib and projected <= limit_mib)


# ---------------------------------------------------------------------------------
# what a worker process measures


def rss_kib() -> int:
    """This process's resident set size in KiB (``VmRSS``), or -1 if unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class SeqTracker:
    """Counts message numbers as a receiver sees them: unique, duplicate, missing.

    Numbers skipped over are remembered (up to ``MISSING_CAP``; beyond that only
    counted) so that one arriving late fills its hole instead of counting twice.
    """

    def __init__(self) -> None:
        self.highest = -1
        self.unique = 0
        self.duplicates = 0
        self.late = 0  # arrived after a higher number (filled a hole)
        self.untracked = 0  # holes beyond the cap: counted missing for good
        self._missing: set[int] = set()

    def see(self, n: int) -> None:
        hi = self.highest
        if n > hi:
            if n > hi + 1:
                room = max(0, MISSING_CAP - len(self._missing))
                gap = n - hi - 1
                self._missing.update(range(hi + 1, hi + 1 + min(gap, room)))
                self.untracked += max(0, gap - room)
            self.highest = n
            self.unique += 1
        elif n in self._missing:
            self._missing.discard(n)
            self.unique += 1
            self.late += 1
        else:
            self.duplicates += 1

    @property
    def missing(self) -> int:
        return len(self._missing) + self.untracked


@dataclass
class Counters:
    """A worker's own counts (cumulative); what it reports at every cut."""

    sent: int = 0
    behind: int = 0  # messages the schedule wanted but the sender shed (overload)
    replies: int = 0
    bad_replies: int = 0
    failed: int = 0  # requests with no reply by their deadline, or given up
    given_up: int = 0
    acked_all: bool | None = None
    tracker: SeqTracker | None = None

    def snapshot(self) -> Record:
        out: Record = {"sent": self.sent, "behind": self.behind, "replies": self.replies,
                       "bad_replies": self.bad_replies, "failed": self.failed,
                       "given_up": self.given_up}
        if self.acked_all is not None:
            out["acked_all"] = self.acked_all
        t = self.tracker
        if t is not None:
            out.update(received=t.unique, duplicates=t.duplicates, missing=t.missing,
                       late=t.late)
        return out


def stats_record(stats: Any) -> Record:
    """The integer counters of a ``statistics()`` snapshot."""
    return {k: v for k, v in asdict(stats).items() if isinstance(v, int)}


@dataclass(frozen=True)
class Job:
    """What one worker process is to do (sent to it when it is spawned)."""

    pattern: str
    mode: str
    side: str  # "sender" | "receiver"
    rate: float
    size: int
    concurrency: int
    retries: int
    endpoint: str = ""  # for the side that connects

    @property
    def reliable(self) -> bool:
        return self.mode == "reliable"

    @property
    def binds(self) -> bool:
        return ROLES[self.pattern][2] == self.side

    @property
    def role(self) -> str:
        sender, receiver, _ = ROLES[self.pattern]
        return sender if self.side == "sender" else receiver

    @property
    def key(self) -> str:
        return f"{self.pattern}/{self.mode}/{self.role}"


class Link:
    """The worker's end of its pipe to the driver, usable from trio."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, *msg: Any) -> None:
        self.conn.send(msg)

    async def receive(self, expected: str) -> tuple[Any, ...]:
        await trio.lowlevel.wait_readable(self.conn.fileno())
        msg = self.conn.recv()
        if not isinstance(msg, tuple) or msg[0] != expected:
            raise RuntimeError(f"driver sent {msg!r}, expected {expected!r}")
        return msg


@asynccontextmanager
async def open_resource(job: Job) -> AsyncIterator[Any]:
    """The job's pattern endpoint, bound to loopback or connected to ``job.endpoint``."""
    bind = LOOPBACK if job.binds else None
    connect = None if job.binds else job.endpoint
    # The reliable= overloads want a literal, hence the pairs of calls.
    cm: Any
    if job.pattern == "pubsub" and job.side == "sender":
        cm = (shoal.open_publisher(bind=bind, reliable=True) if job.reliable
              else shoal.open_publisher(bind=bind))
    elif job.pattern == "pubsub":
        cm = (shoal.open_subscriber(connect=connect, topics=[TOPIC], reliable=True)
              if job.reliable else shoal.open_subscriber(connect=connect, topics=[TOPIC]))
    elif job.pattern == "pushpull" and job.side == "sender":
        cm = (shoal.open_pusher(connect=connect, reliable=True) if job.reliable
              else shoal.open_pusher(connect=connect))
    elif job.pattern == "pushpull":
        cm = (shoal.open_puller(bind=bind, reliable=True) if job.reliable
              else shoal.open_puller(bind=bind))
    elif job.side == "sender":
        cm = shoal.open_requester(connect=connect)
    else:
        cm = shoal.open_replier(bind=bind)
    async with cm as res:
        yield res


def make_body(n: int, pad: bytes) -> bytes:
    return _U64.pack(n) + pad


async def sleep_until(deadline: float) -> None:
    # trio's clock has an arbitrary offset: deadlines shared between processes are in
    # time.monotonic(), turned into a delay here.
    await trio.sleep(max(0.0, deadline - time.monotonic()))


async def paced_send(send: Callable[[bytes], Any], job: Job, c: Counters, start: float,
                     end: float) -> None:
    """Send ``job.rate`` messages per second from ``start`` until ``end``."""
    pad = bytes(job.size - _U64.size)
    max_behind = max(1, int(job.rate * MAX_BEHIND_S))
    await sleep_until(start)
    while (now := time.monotonic()) < end:
        due = int((now - start) * job.rate) - c.behind
        if due - c.sent > max_behind:
            c.behind += due - c.sent - max_behind
            due = c.sent + max_behind
        while c.sent < due:
            await send(make_body(c.sent, pad))
            c.sent += 1
        await trio.sleep(TICK_S)


async def paced_requests(req: shoal.Requester, job: Job, c: Counters, start: float,
                         end: float) -> None:
    """``job.concurrency`` tasks issue requests as a pacer hands out permits on schedule."""
    pad = bytes(job.size - _U64.size)
    retries = job.retries if job.reliable else 0
    retry_after = 1.0
    deadline = (retry_after * (retries + 1) + 1.0) if job.reliable else BEST_EFFORT_REQUEST_S
    max_behind = max(1, int(job.rate * MAX_BEHIND_S))
    # A permit per request due. Tasks that find one waiting go on without a sleep and a
    # timer per request, which would cost more than the request itself.
    permits = trio.Semaphore(0)
    closing = False

    async def pacer() -> None:
        nonlocal closing
        released = 0
        await sleep_until(start)
        while (now := time.monotonic()) < end:
            due = int((now - start) * job.rate) - c.behind
            if due - c.sent > max_behind:
                c.behind += due - c.sent - max_behind
                due = c.sent + max_behind
            while released < due:
                permits.release()
                released += 1
            await trio.sleep(TICK_S)
        closing = True
        for _ in range(job.concurrency):
            permits.release()  # wakes every task to see that the run is over

    async def requests() -> None:
        while True:
            await permits.acquire()
            if closing:
                return
            n = c.sent
            c.sent += 1
            body = make_body(n, pad)
            reply = None
            with trio.move_on_after(deadline):
                try:
                    reply = await req.request(body, retries=retries, retry_after=retry_after)
                except (PeerLost, RemoteError):
                    pass
            if reply is None:
                c.failed += 1
            elif reply == body:
                c.replies += 1
            else:
                c.bad_replies += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pacer)
        for _ in range(job.concurrency):
            nursery.start_soon(requests)


async def run_sender(job: Job, res: Any, c: Counters, start: float, end: float) -> None:
    if job.pattern == "pubsub":
        publish = res.publish

        async def send(body: bytes) -> None:
            await publish(TOPIC, body)

        await paced_send(send, job, c, start, end)
    elif job.pattern == "pushpull":
        await paced_send(res.send, job, c, start, end)
    else:
        await paced_requests(res, job, c, start, end)
        return
    if job.reliable:
        c.acked_all = False
        with trio.move_on_after(DRAIN_MAX_S):
            try:
                await res.wait_acked()
                c.acked_all = True
            except DeliveryFailed as exc:
                c.given_up += len(exc.failed)


async def run_receiver(job: Job, res: Any, c: Counters) -> None:
    """Receive until cancelled, counting message numbers."""
    tracker = c.tracker
    assert tracker is not None
    see = tracker.see
    unpack = _U64.unpack_from
    if job.pattern == "reqrep":
        async for req in res:
            body = req.body
            see(unpack(body)[0])
            await req.reply(body)
    else:
        receive_batch = res.receive_batch
        while True:
            for msg in await receive_batch():
                see(unpack(msg.body)[0])


async def report_cuts(link: Link, res: Any, c: Counters, start: float, interval: float,
                      n: int) -> None:
    """Report at every cut: memory, CPU time, counters, the pattern's statistics."""
    for k in range(n):
        await sleep_until(start + (k + 1) * interval)
        link.send("cut", k, {"t": time.monotonic() - start, "rss_kib": rss_kib(),
                             "cpu_s": time.process_time(), "counters": c.snapshot(),
                             "stats": stats_record(res.statistics())})


async def worker(job: Job, link: Link) -> None:
    async with open_resource(job) as res:
        if job.binds:
            link.send("endpoint", res.endpoints[0])
        if job.pattern == "pubsub" and job.side == "sender":
            # Both kinds of publisher know when a subscriber is in place: nothing is
            # published to nobody (the best-effort slow joiner).
            with trio.fail_after(SETUP_S):
                await res.wait_for_subscribers(1)
        link.send("ready", {"pid": os.getpid(), "rss_kib": rss_kib()})
        _, start, interval, n = await link.receive("start")
        end = start + interval * n
        c = Counters(tracker=None if job.side == "sender" else SeqTracker())

        def final() -> Record:
            return {"t": time.monotonic() - start, "rss_kib": rss_kib(),
                    "cpu_s": time.process_time(), "counters": c.snapshot(),
                    "stats": stats_record(res.statistics())}

        async with trio.open_nursery() as nursery:
            cuts_done = trio.Event()

            async def cuts() -> None:
                await report_cuts(link, res, c, start, interval, n)
                cuts_done.set()

            nursery.start_soon(cuts)
            if job.side == "sender":
                await run_sender(job, res, c, start, end)
                await cuts_done.wait()
                link.send("final", final())
            else:
                nursery.start_soon(run_receiver, job, res, c)
                _, expected = await link.receive("expect")
                await cuts_done.wait()
                tracker = c.tracker
                assert tracker is not None
                seen, idle_since = tracker.unique, time.monotonic()
                with trio.move_on_after(DRAIN_MAX_S):
                    while tracker.unique < expected:
                        await trio.sleep(0.02)
                        if tracker.unique != seen:
                            seen, idle_since = tracker.unique, time.monotonic()
                        elif time.monotonic() - idle_since > DRAIN_IDLE_S:
                            break
                # Let a reliable receiver's last acknowledgements go out.
                await trio.sleep(0.1)
                link.send("final", final())
            await link.receive("close")
            nursery.cancel_scope.cancel()


def worker_main(job: Job, conn: Connection, hang_dump_s: float) -> None:
    """A worker process: run ``job``, reporting to the driver over ``conn``."""
    # A stuck worker prints its stack before the driver gives up on it, and whenever
    # the driver asks (SIGUSR1, sent when the run breaks down).
    faulthandler.dump_traceback_later(hang_dump_s, exit=False)
    faulthandler.register(signal.SIGUSR1, all_threads=False)
    try:
        trio.run(worker, job, Link(conn))
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        faulthandler.cancel_dump_traceback_later()
        conn.close()


# ---------------------------------------------------------------------------------
# the driver


class RunFailed(Exception):
    """The run itself broke down (a process died, timed out or raised)."""


@dataclass
class Proc:
    job: Job
    proc: BaseProcess
    conn: Connection
    ready: Record = field(default_factory=dict)
    cuts: dict[int, Record] = field(default_factory=dict)
    final: Record | None = None
    done: bool = False


@dataclass(frozen=True)
class Config:
    seconds: float
    interval: float
    rates: dict[str, float]
    size: int
    concurrency: int
    retries: int
    only: list[str]
    modes: list[str]
    max_growth_mib: float

    @property
    def cuts(self) -> int:
        return max(1, round(self.seconds / self.interval))


class Driver:
    """Starts the worker processes, relays the start/expect/close steps, collects."""

    def __init__(self, cfg: Config, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.log = log
        self.mp = multiprocessing.get_context("spawn")
        self.procs: dict[str, Proc] = {}
        self.hang_dump_s = cfg.seconds + SETUP_S + DRAIN_MAX_S + 30.0

    def spawn(self, job: Job) -> Proc:
        mine, theirs = self.mp.Pipe()
        proc = self.mp.Process(target=worker_main, args=(job, theirs, self.hang_dump_s),
                               name=f"soak {job.key}", daemon=True)
        proc.start()
        theirs.close()
        p = Proc(job, proc, mine)
        self.procs[job.key] = p
        return p

    def receive(self, p: Proc, deadline: float) -> tuple[Any, ...]:
        if not p.conn.poll(max(0.0, deadline - time.monotonic())):
            raise RunFailed(f"{p.job.key}: no word from it in time")
        return self.unpack(p)

    def unpack(self, p: Proc) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = p.conn.recv()
        except (EOFError, OSError):
            raise RunFailed(f"{p.job.key}: the process died (exit code "
                            f"{p.proc.exitcode})") from None
        if msg[0] == "error":
            raise RunFailed(f"{p.job.key} failed:\n{msg[1]}")
        return msg

    def expect(self, p: Proc, kind: str, deadline: float) -> tuple[Any, ...]:
        msg = self.receive(p, deadline)
        if msg[0] != kind:
            raise RunFailed(f"{p.job.key} said {msg[0]!r}, expected {kind!r}")
        return msg

    def pair(self, pattern: str, mode: str) -> tuple[Proc, Proc]:
        s, r, _ = ROLES[pattern]
        return self.procs[f"{pattern}/{mode}/{s}"], self.procs[f"{pattern}/{mode}/{r}"]

    def run(self) -> float:
        """Run the soak; return the start time (``time.monotonic``) of the first interval."""
        cfg = self.cfg
        jobs = [Job(pattern, mode, side, cfg.rates[pattern], cfg.size, cfg.concurrency,
                    cfg.retries)
                for pattern in cfg.only for mode in cfg.modes
                for side in ("sender", "receiver")]
        deadline = time.monotonic() + SETUP_S
        binders = [self.spawn(j) for j in jobs if j.binds]
        endpoints: dict[tuple[str, str], str] = {}
        for p in binders:
            ep = str(self.expect(p, "endpoint", deadline)[1])
            if not ep.startswith("tcp://127.0.0.1:"):
                raise RunFailed(f"{p.job.key} bound {ep!r}, not a loopback address")
            endpoints[p.job.pattern, p.job.mode] = ep
        for j in jobs:
            if not j.binds:
                self.spawn(replace(j, endpoint=endpoints[j.pattern, j.mode]))
        waiting = {p.conn: p for p in self.procs.values()}
        while waiting:
            for conn in wait(list(waiting), timeout=max(0.0, deadline - time.monotonic())):
                assert isinstance(conn, Connection)
                p = waiting.pop(conn)
                msg = self.unpack(p)
                if msg[0] != "ready":
                    raise RunFailed(f"{p.job.key} said {msg[0]!r}, expected 'ready'")
                p.ready = msg[1]
            if waiting and time.monotonic() >= deadline:
                raise RunFailed(f"not ready after {SETUP_S:.0f} s: "
                                + ", ".join(p.job.key for p in waiting.values()))
        self.log(f"{len(self.procs)} processes ready; running for {cfg.seconds:.0f} s")
        start = time.monotonic() + 0.5
        for p in self.procs.values():
            p.conn.send(("start", start, cfg.interval, cfg.cuts))
        end = start + cfg.interval * cfg.cuts
        deadline = end + 2 * DRAIN_MAX_S + 30.0
        shown = 0  # cuts shown as progress so far
        while not all(p.done for p in self.procs.values()):
            open_conns = {p.conn: p for p in self.procs.values() if not p.done}
            ready = wait(list(open_conns), timeout=max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                stuck = [p.job.key for p in self.procs.values() if not p.done]
                raise RunFailed(f"timed out; still running: {', '.join(stuck)}")
            for conn in ready:
                assert isinstance(conn, Connection)
                self.handle(open_conns[conn], self.unpack(open_conns[conn]))
            while shown < cfg.cuts and all(shown in p.cuts for p in self.procs.values()):
                self.progress(shown)
                shown += 1
        return start

    def handle(self, p: Proc, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "cut":
            p.cuts[int(msg[1])] = msg[2]
            return
        if kind != "final":
            raise RunFailed(f"{p.job.key} said {kind!r} during the run")
        p.final = msg[1]
        sender, receiver = self.pair(p.job.pattern, p.job.mode)
        if p is sender:
            assert sender.final is not None
            receiver.conn.send(("expect", sender.final["counters"]["sent"]))
        else:
            for q in (sender, receiver):
                q.conn.send(("close",))
                q.done = True

    def progress(self, k: int) -> None:
        """One line per cut: what each stream delivered in it, and the largest RSS."""
        parts = []
        for pattern in self.cfg.only:
            for mode in self.cfg.modes:
                sender, receiver = self.pair(pattern, mode)
                field = "replies" if pattern == "reqrep" else "received"
                at = sender if pattern == "reqrep" else receiver
                got = at.cuts[k]["counters"][field] - (
                    at.cuts[k - 1]["counters"][field] if k else 0)
                parts.append(f"{pattern}/{mode} {got}")
        rss = max(p.cuts[k]["rss_kib"] for p in self.procs.values()) / 1024.0
        t = max(p.cuts[k]["t"] for p in self.procs.values())
        self.log(f"  {t:6.0f} s  delivered in the interval: {', '.join(parts)}; "
                 f"largest RSS {rss:.1f} MiB")

    def dump_stacks(self) -> None:
        """Have every worker still running print its Python stack to stderr."""
        for p in self.procs.values():
            if p.proc.is_alive() and p.proc.pid is not None:
                try:
                    os.kill(p.proc.pid, signal.SIGUSR1)
                except OSError:
                    pass
        time.sleep(0.5)

    def stop(self) -> None:
        for p in self.procs.values():
            try:
                p.conn.send(("close",))
            except OSError:
                pass
        # One grace period for all of them, then terminate, then kill.
        for grace, stop in ((5.0, None), (3.0, "terminate"), (3.0, "kill")):
            alive = [p.proc for p in self.procs.values() if p.proc.is_alive()]
            for proc in alive:
                if stop is not None:
                    getattr(proc, stop)()
            until = time.monotonic() + grace
            for proc in alive:
                proc.join(timeout=max(0.0, until - time.monotonic()))
        for p in self.procs.values():
            p.conn.close()


# ---------------------------------------------------------------------------------
# analysis

# shoal's own counters that tell of loss, repair or duplication, per pattern and mode:
# (side, statistic); recorded per interval as increments.
REPORTED: dict[tuple[str, str], list[tuple[str, str]]] = {
    ("pubsub", "best-effort"): [("receiver", "gaps"), ("receiver", "out_of_order")],
    ("pubsub", "reliable"): [("sender", "retransmitted"), ("sender", "dropped_subscribers"),
                             ("sender", "undelivered"), ("receiver", "duplicates"),
                             ("receiver", "missing"), ("receiver", "resyncs")],
    ("pushpull", "best-effort"): [],
    ("pushpull", "reliable"): [("sender", "retransmitted"), ("sender", "redelivered"),
                               ("sender", "given_up"), ("receiver", "duplicates")],
    ("reqrep", "best-effort"): [("sender", "unmatched"), ("sender", "lost"),
                                ("receiver", "duplicates")],
    ("reqrep", "reliable"): [("sender", "retried"), ("sender", "lost"),
                             ("sender", "unmatched"), ("receiver", "duplicates")],
}


def spread(values: list[float]) -> Record:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def analyse_pair(cfg: Config, pattern: str, mode: str, sender: Proc, receiver: Proc,
                 checks: list[Record]) -> Record:
    """One stream's figures: per interval, totals, throughput spread, its checks."""
    n = cfg.cuts
    name = f"{pattern}/{mode}"
    reqrep = pattern == "reqrep"

    def delivered(cut: Record) -> int:
        return int(cut["counters"]["replies"] if reqrep else cut["counters"]["received"])

    arrival = sender if reqrep else receiver
    intervals: list[Record] = []
    prev_s: Record | None = None
    prev_r: Record | None = None
    prev_t = 0.0
    for k in range(n):
        cs, cr = sender.cuts.get(k), receiver.cuts.get(k)
        if cs is None or cr is None:
            raise RunFailed(f"{name}: interval {k} was not reported")
        t = (arrival.cuts[k])["t"]
        row: Record = {
            "k": k, "t": round(t, 3), "warmup": k == 0,
            "sent": cs["counters"]["sent"] - (prev_s["counters"]["sent"] if prev_s else 0),
            "delivered": delivered(arrival.cuts[k]) - (
                delivered(arrival.cuts[k - 1]) if k else 0),
            "missing": cr["counters"]["missing"],
            "duplicates": cr["counters"]["duplicates"] - (
                prev_r["counters"]["duplicates"] if prev_r else 0),
            "failed": cs["counters"]["failed"] - (prev_s["counters"]["failed"] if prev_s else 0),
            "behind": cs["counters"]["behind"] - (prev_s["counters"]["behind"] if prev_s else 0),
        }
        row["rate"] = row["delivered"] / (t - prev_t) if t > prev_t else 0.0
        reported: Record = {}
        for side, stat in REPORTED[pattern, mode]:
            now_c, before = (cs, prev_s) if side == "sender" else (cr, prev_r)
            reported[f"{side}.{stat}"] = now_c["stats"].get(stat, 0) - (
                before["stats"].get(stat, 0) if before else 0)
        row["reported"] = reported
        intervals.append(row)
        prev_s, prev_r, prev_t = cs, cr, t
    fs, fr = sender.final, receiver.final
    assert fs is not None
    assert fr is not None
    sent = int(fs["counters"]["sent"])
    got = int(fs["counters"]["replies"] if reqrep else fr["counters"]["received"])
    totals: Record = {
        "sent": sent, "delivered": got, "lost": sent - got,
        "duplicates": fr["counters"]["duplicates"], "missing": fr["counters"]["missing"],
        "late": fr["counters"]["late"], "failed": fs["counters"]["failed"],
        "bad_replies": fs["counters"]["bad_replies"], "behind": fs["counters"]["behind"],
        "given_up": fs["counters"]["given_up"], "acked_all": fs["counters"].get("acked_all"),
        "sender_stats": fs["stats"], "receiver_stats": fr["stats"],
        "duration_s": intervals[-1]["t"] if intervals else 0.0,
    }
    rates = [r["rate"] for r in intervals if not r["warmup"]]

    def check(what: str, ok: bool, detail: str) -> None:
        checks.append({"check": f"{name}: {what}", "ok": ok, "detail": detail})

    idle = [r["k"] for r in intervals if r["delivered"] <= 0]
    check("messages in every interval", not idle,
          f"no messages in interval(s) {idle}" if idle else f"{len(intervals)} intervals")
    if reqrep:
        check("replies match requests", totals["bad_replies"] == 0,
              f"{totals['bad_replies']} wrong replies")
    if mode == "reliable":
        check("nothing lost", totals["lost"] == 0 and totals["given_up"] == 0,
              f"lost {totals['lost']}, given up {totals['given_up']}")
        check("nothing delivered twice", totals["duplicates"] == 0,
              f"{totals['duplicates']} duplicates reached the application")
    return {"pattern": pattern, "mode": mode, "rate_target": cfg.rates[pattern],
            "totals": totals, "throughput": spread(rates), "intervals": intervals}


def analyse_process(cfg: Config, p: Proc, checks: list[Record]) -> Record:
    """One process's memory series, CPU use and growth verdict."""
    cuts = [p.cuts[k] for k in sorted(p.cuts)]
    times = [c["t"] for c in cuts]
    rss = [c["rss_kib"] / 1024.0 for c in cuts]
    cpu = [(b["cpu_s"] - a["cpu_s"]) / (b["t"] - a["t"]) * 100.0
           for a, b in itertools.pairwise(cuts) if b["t"] > a["t"]]
    out: Record = {
        "pattern": p.job.pattern, "mode": p.job.mode, "role": p.job.role,
        "pid": p.ready.get("pid"), "rss_ready_mib": p.ready.get("rss_kib", -1) / 1024.0,
        "rss_start_mib": rss[0] if rss else None, "rss_end_mib": rss[-1] if rss else None,
        "rss_final_mib": p.final["rss_kib"] / 1024.0 if p.final else None,
        "cpu_percent": spread(cpu),
        "series": [{"t": round(t, 3), "rss_mib": round(r, 3)} for t, r in zip(times, rss,
                                                                             strict=True)],
    }
    if len(rss) >= 3:
        g = check_growth(times, rss, cfg.max_growth_mib)
        out["growth"] = asdict(g)
        checks.append({"check": f"{p.job.key}: memory growth", "ok": g.ok,
                       "detail": f"{g.growth_mib:+.2f} MiB (thirds), {g.projected_mib:+.2f} "
                                 f"MiB (slope), limit {g.limit_mib} MiB"})
    return out


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def print_report(cfg: Config, pairs: list[Record], procs: dict[str, Record],
                 checks: list[Record], out: Callable[[str], None]) -> None:
    out("")
    out(f"== streams: messages delivered per second over the {cfg.cuts - 1} intervals after "
        f"the {cfg.interval:g} s warmup")
    out(f"   {'stream':<22} {'target/s':>8} {'sent':>10} {'delivered':>10} {'lost':>6} "
        f"{'dups':>5} {'secs':>6} {'min/s':>8} {'median/s':>9} {'max/s':>8}")
    for pr in pairs:
        t, tp = pr["totals"], pr["throughput"]
        out(f"   {pr['pattern'] + '/' + pr['mode']:<22} {pr['rate_target']:>8,.0f} "
            f"{t['sent']:>10,} {t['delivered']:>10,} {t['lost']:>6,} {t['duplicates']:>5,} "
            f"{t['duration_s']:>6.1f} {fmt(tp['min']):>8} {fmt(tp['median']):>9} "
            f"{fmt(tp['max']):>8}")
    out("")
    out("== processes: RSS in MiB at the end of the warmup (start) and at the last cut "
        "(end); growth = median of last third - median of first third; slope projected "
        "over the run")
    out(f"   {'process':<34} {'start':>7} {'end':>7} {'growth':>7} {'slope/min':>9} "
        f"{'projected':>9} {'cpu% med':>8}  verdict")
    for key, pr in procs.items():
        g = pr.get("growth")
        verdict = "n/a" if g is None else ("ok" if g["ok"] else "GROWS")
        out(f"   {key:<34} {fmt(pr['rss_start_mib'], '.1f'):>7} "
            f"{fmt(pr['rss_end_mib'], '.1f'):>7} "
            f"{fmt(g and g['growth_mib'], '+.2f'):>7} "
            f"{fmt(g and g['slope_mib_per_min'], '+.3f'):>9} "
            f"{fmt(g and g['projected_mib'], '+.2f'):>9} "
            f"{fmt(pr['cpu_percent']['median'], '.1f'):>8}  {verdict}")
    failed = [c for c in checks if not c["ok"]]
    out("")
    out(f"== checks: {len(checks) - len(failed)} passed, {len(failed)} failed")
    for c in failed:
        out(f"   FAIL {c['check']}: {c['detail']}")


def environment() -> Record:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "trio": trio.__version__,
        "shoal": shoal.__version__,
    }


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(
        description="shoal soak run: every pattern, best effort and reliable, paced over "
                    "tcp://127.0.0.1, memory watched. See the module docstring.")
    p.add_argument("--seconds", type=float, default=600.0, help="run length (default 600)")
    p.add_argument("--interval", type=float, default=10.0,
                   help="reporting interval in seconds (default 10); the first is warmup")
    p.add_argument("--rate", type=float,
                   help="messages/s for every pattern and mode (default: pubsub and "
                        "pushpull 5000, reqrep 2000)")
    for pattern in PATTERNS:
        p.add_argument(f"--rate-{pattern}", type=float,
                       help=f"rate for {pattern} only (default {DEFAULT_RATES[pattern]:g})")
    p.add_argument("--size", type=int, default=64, help="body size in bytes (>= 8)")
    p.add_argument("--concurrency", type=int, default=8,
                   help="requests in flight per requester, at most (default 8)")
    p.add_argument("--retries", type=int, default=3,
                   help="retries of a reliable request (default 3)")
    p.add_argument("--only", default=",".join(PATTERNS), help="patterns to run")
    p.add_argument("--modes", default=",".join(MODES), help="best-effort, reliable or both")
    p.add_argument("--max-growth-mib", type=float, default=20.0,
                   help="memory growth allowed per process after warmup (default 20)")
    p.add_argument("--json", metavar="FILE", help="write everything to FILE as JSON")
    a = p.parse_args(argv)
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    modes = [x.strip() for x in a.modes.split(",") if x.strip()]
    if not only or any(x not in PATTERNS for x in only):
        p.error(f"--only: choose from {', '.join(PATTERNS)}")
    if not modes or any(x not in MODES for x in modes):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    rates = {pat: float(getattr(a, f"rate_{pat}") or a.rate or DEFAULT_RATES[pat])
             for pat in PATTERNS}
    if any(r <= 0 for r in rates.values()):
        p.error("rates must be positive")
    if a.size < _U64.size:
        p.error("--size must be at least 8 bytes (the message number)")
    if a.interval <= 0 or a.seconds / a.interval < 4:
        p.error("--seconds must span at least 4 intervals (a warmup and 3 to compare)")
    if a.concurrency < 1 or a.retries < 0 or a.max_growth_mib <= 0:
        p.error("--concurrency >= 1, --retries >= 0, --max-growth-mib > 0")
    cfg = Config(seconds=a.seconds, interval=a.interval, rates=rates, size=a.size,
                 concurrency=a.concurrency, retries=a.retries, only=only, modes=modes,
                 max_growth_mib=a.max_growth_mib)
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    env = environment()
    print("shoal soak: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"tcp://127.0.0.1, {cfg.cuts} intervals of {cfg.interval:g} s, "
          f"{cfg.size}-byte bodies, rates/s: "
          + ", ".join(f"{p} {cfg.rates[p]:g}" for p in cfg.only), flush=True)
    driver = Driver(cfg, log)
    try:
        driver.run()
    except RunFailed as exc:
        print(f"soak run failed: {exc}", file=sys.stderr)
        driver.dump_stacks()
        return 2
    finally:
        driver.stop()
    checks: list[Record] = []
    pairs = []
    try:
        for pattern in cfg.only:
            for mode in cfg.modes:
                pairs.append(analyse_pair(cfg, pattern, mode, *driver.pair(pattern, mode),
                                          checks))
    except RunFailed as exc:
        print(f"soak run failed: {exc}", file=sys.stderr)
        return 2
    procs = {key: analyse_process(cfg, p, checks) for key, p in driver.procs.items()}
    print_report(cfg, pairs, procs, checks, print)
    ok = all(c["ok"] for c in checks)
    if args.json:
        doc = {"environment": env, "config": asdict(cfg), "ok": ok, "checks": checks,
               "streams": pairs, "processes": procs}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
