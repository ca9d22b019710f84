"""The worker processes of ``shoal demo``: started, read, killed once, restarted, reaped.

Each worker is a process of its own (``python -m shoal.cli._demo_worker``) in its own
session, so that a Ctrl-C on the terminal reaches the demo only. It reports on its
stdout, one JSON object a line, every job it gets and every job it is done with
(acknowledged); ``Crew`` keeps those reports (who took which job, who finished it), so
that the demo knows what the killed worker held and which of those jobs another worker
got afterwards. Every process started is in ``Crew.workers`` before anything can fail,
and ``reap`` kills and waits for each one still there: every way out of the demo
calls it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from typing import Any

import trio

from shoal.cli._demo._panel import View, job_list

WORKERS = ("worker-A", "worker-B", "worker-C")
VICTIM = "worker-C"
JOBS = "jobs"
"""The channel the jobs go out on."""
BURST = 9
"""Jobs per round: three for each worker, a burst it takes a while to work through."""
JOB_MS = 20.0
"""Milliseconds a worker takes per job."""


class DemoFailed(Exception):
    """The demo could not run (nodes that never found each other, a worker that
    died on its own); the message says what happened."""


class Worker:
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


class Crew:
    """Every worker process of one demo (each incarnation) and what they reported."""

    def __init__(self, view: View, *, service_type: str, job_ms: float) -> None:
        self.view = view
        self.service_type = service_type
        self.job_ms = job_ms
        self.workers: list[Worker] = []  # every incarnation: cleanup covers them all
        self.taken_by: defaultdict[int, list[Worker]] = defaultdict(list)
        self.done_by: defaultdict[int, list[Worker]] = defaultdict(list)
        self.kill_armed: Worker | None = None
        self.armed_got = 0  # jobs the armed victim got since it was armed
        self.fired = trio.Event()
        self.victim: Worker | None = None
        self.lost: list[int] = []  # what the victim held unfinished when it died
        self.awaiting: set[int] = set()  # of those, not yet seen at another worker
        self.redelivered: dict[int, str] = {}
        self.job_done = trio.Event()
        self.nursery: trio.Nursery | None = None
        """Where the tasks reading the workers' output run (set by the demo)."""

    async def spawn(self, name: str) -> Worker:
        """Start a worker process; it is in ``self.workers`` before anything can fail."""
        assert self.nursery is not None
        incarnation = 1 + sum(w.name == name for w in self.workers)
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "shoal.cli._demo_worker", name, "--service-type",
             self.service_type, "--channel", JOBS, "--job-ms", str(self.job_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # its own session: a Ctrl-C on the terminal reaches the demo only, which
            # then kills its workers itself
            start_new_session=True)
        w = Worker(name, incarnation, proc)
        self.workers.append(w)
        row = self.view.rows[name]
        row.state = "starting"
        row.pattern = f"reliable pull, pid {w.pid}"
        row.counts = lambda: f"done {w.done}, holding {len(w.held)}"
        row.peers = lambda: w.peers
        again = " again, a new incarnation" if incarnation > 1 else ""
        self.view.note(name, f"process started{again} (pid {w.pid})", short="started")
        self.nursery.start_soon(self._read_reports, w)
        self.nursery.start_soon(self._read_stderr, w)
        return w

    async def _read_reports(self, w: Worker) -> None:
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

    async def _read_stderr(self, w: Worker) -> None:
        assert w.proc.stderr is not None
        async for chunk in w.proc.stderr:
            w.stderr += chunk
            del w.stderr[:-4096]
        w.stderr_read.set()

    def _on_report(self, w: Worker, report: dict[str, Any]) -> None:
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
                    self.kill(w)
        elif ev == "done" and isinstance(job, int):
            w.held.pop(job, None)
            w.done += 1
            w.unreported.append(job)
            self.done_by[job].append(w)
            self.job_done.set()
        elif ev == "bye":
            row.state = "left"

    def kill(self, w: Worker) -> None:
        """Kill ``w`` now (SIGKILL): the scenario's crash."""
        self.kill_armed = None
        w.killed = True
        w.proc.kill()  # SIGKILL: no goodbye, no acknowledgement, nothing flushed
        self.view.rows[w.name].state = "KILLED"
        self.fired.set()

    async def after_kill(self, w: Worker) -> None:
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
                       f"{job_list(self.lost)}, unfinished", short="killed")
        for job in self.lost:
            others = [x for x in self.taken_by[job] if x is not w]
            if others:
                self._redelivered(job, others[0])
            else:
                self.awaiting.add(job)

    def _redelivered(self, job: int, w: Worker) -> None:
        self.redelivered[job] = w.name
        victim = self.victim.name if self.victim else VICTIM
        mine = [j for j, n in self.redelivered.items() if n == w.name]
        self.view.note(w.name, f"got job {job} again, redelivered: {victim} died holding it",
                       short=f"redelivered {job_list(mine)}", merge=True)

    async def stop(self) -> None:
        """Close the stdin of every live worker (it says goodbye and exits), and read its
        last reports; kill one that takes more than five seconds."""
        async def stop(w: Worker) -> None:
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

    async def reap(self) -> None:
        """Kill and reap every worker process still there (every way out comes here)."""
        for w in self.workers:
            if w.proc.returncode is None:
                w.proc.kill()
                self.view.rows[w.name].state = "stopped"
            await w.proc.wait()

    def flush_lines(self) -> None:
        """Say (line mode) which jobs each worker did since the last time."""
        for w in self.workers:
            if w.unreported:
                self.view.say(w.name, f"did jobs {job_list(w.unreported)}")
                w.unreported.clear()
