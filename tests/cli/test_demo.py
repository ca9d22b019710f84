"""``shoal demo`` end to end, as a subprocess: discovery, the three patterns, a worker
killed with SIGKILL whose jobs are redelivered, the live panel on a terminal, Ctrl-C,
and no worker process left behind.

Network safety: the demo pins every node and its mDNS to 127.0.0.1, under a DNS-SD
service type of its own run. Every run has a timeout; a demo still running then is
killed, and so are the worker processes it reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.lab

SHOAL = Path(sys.executable).with_name("shoal")  # the console script of this venv


def demo_command(*args: str) -> list[str]:
    if SHOAL.exists():
        return [str(SHOAL), "demo", *args]
    return [sys.executable, "-m", "shoal.cli", "demo", *args]


def worker_alive(pid: int) -> bool:
    """Whether ``pid`` is still a demo worker (running, or dead and never reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state == "Z" or b"_demo_worker" in cmdline


def kill_workers(pids: set[int]) -> None:
    """Clean up after a failed test: kill what the demo left behind."""
    for pid in pids:
        if worker_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pids_in(text: str) -> set[int]:
    return {int(p) for p in re.findall(r"pid (\d+)", text)}


class PtyDemo:
    """The demo on a pseudo-terminal of its own (120x40), as a person runs it: it is the
    session leader there, so a typed Ctrl-C reaches it as from a keyboard."""

    def __init__(self, *args: str, interrupt_when: str | None = None) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the demo
            try:
                os.execv(demo_command()[0], [*demo_command(), *args])
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.interrupt_when = interrupt_when
        self.raw = b""
        self.eof = False
        self.status: int | None = None

    @property
    def out(self) -> str:
        return self.raw.decode(errors="replace")

    def pump(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the demo is gone and the terminal hung up
            chunk = b""
        self.raw += chunk
        self.eof = not chunk
        if self.interrupt_when and self.interrupt_when.encode() in self.raw:
            os.write(self.fd, b"\x03")  # Ctrl-C: SIGINT to the foreground process group
            self.interrupt_when = None

    def reap(self, grace: float) -> None:
        end = time.monotonic() + grace
        while True:
            pid, raw = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(raw)
                return
            if time.monotonic() >= end:
                return
            time.sleep(0.05)

    def clean_up(self) -> None:
        if self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            kill_workers(pids_in(self.out))
        os.close(self.fd)


def run_in_ptys(*runs: PtyDemo, timeout: float) -> None:
    """Read every run's terminal until it ends (or the timeout); each gets a status."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not all(r.eof for r in runs):
            ready, _, _ = select.select([r.fd for r in runs if not r.eof], [], [], 0.2)
            for r in runs:
                if r.fd in ready:
                    r.pump()
        for r in runs:
            r.reap(grace=10 if r.eof else 0)
    finally:
        for r in runs:
            r.clean_up()
    for r in runs:
        assert r.status is not None, f"the demo did not finish in {timeout} s: {r.out[-500:]}"


# -- line mode -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_run() -> tuple[int, str, str]:
    """One short demo with its output on a pipe (line mode)."""
    proc = subprocess.Popen(demo_command("--seconds", "6"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            out, err = proc.communicate()
            kill_workers(pids_in(out))
    return proc.returncode, out, err


def summary_of(out: str) -> dict[str, Any]:
    line = next(x for x in out.splitlines() if x.startswith("summary "))
    summary: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    return summary


def test_nodes_find_each_other_and_the_three_patterns_flow(
        plain_run: tuple[int, str, str]) -> None:
    code, out, err = plain_run
    assert code == 0, err
    assert "\x1b" not in out  # not a terminal: no escape codes
    for name in ("sensor", "dashboard", "room1-display", "calculator", "client",
                 "worker-A", "worker-B", "worker-C"):
        assert re.search(rf"^\[discovery\s*\] {name} joined", out, re.M), name
    assert re.search(r"^\[sensor\s*\] both subscribers, the three workers and the "
                     r"calculator are connected", out, re.M)
    # pub/sub: prefixes filter, nothing is missing
    assert re.search(r"^\[dashboard\s*\] got sensors/room2", out, re.M)
    assert re.search(r"^\[room1-display\] got sensors/room1", out, re.M)
    assert not re.search(r"^\[room1-display\] got sensors/(room2|kitchen)", out, re.M)
    summary = summary_of(out)
    assert summary["published"] > 0
    assert summary["received"] == summary["expected"]
    assert summary["gaps"] == 0
    # request/reply: several in flight, every one answered, the bad one failed
    assert re.search(r"^\[client\s*\] 3 requests in flight -> \d\+\d=\d+, ", out, re.M)
    assert re.search(r"^\[client\s*\] a bad request fails cleanly: .*ValueError", out, re.M)
    assert summary["replies"] == summary["requests"] > 3
    assert summary["failed_requests"] == 1
    assert summary["ok"] is True


def test_a_killed_workers_jobs_are_redelivered_and_every_job_is_done(
        plain_run: tuple[int, str, str]) -> None:
    code, out, err = plain_run
    assert code == 0, err
    killed = re.search(r"^\[worker-C\s*\] killed with SIGKILL \(pid (\d+)\) while holding "
                       r"jobs ([\d, ]+), unfinished$", out, re.M)
    assert killed, out
    held = {int(j) for j in killed.group(2).split(", ")}
    assert held
    redelivered = {int(job): who for who, job in re.findall(
        r"^\[(worker-\w)\s*\] got job (\d+) again, redelivered: worker-C died holding it$",
        out, re.M)}
    assert set(redelivered) == held
    assert "worker-C" not in redelivered.values()
    # every job was done exactly once, by the "did jobs" lines of the workers
    done: list[int] = []
    for jobs in re.findall(r"^\[worker-\w\s*\] did jobs ([\d, ]+)$", out, re.M):
        done += [int(j) for j in jobs.split(", ")]
    summary = summary_of(out)
    sent = summary["jobs_sent"]
    assert sent > 0
    assert sorted(done) == list(range(sent))
    assert summary["jobs_done"] == sent
    assert summary["done_twice"] == summary["missing"] == []
    # handed out more than once: exactly the jobs the killed worker held unfinished
    assert summary["handed_out_again"] == sorted(held)
    assert summary["killed"]["holding"] == sorted(held)
    assert summary["pusher_redelivered"] >= len(held)
    assert re.search(rf"^\[jobs\s*\] {sent} sent, {sent} done: every job was processed "
                     "exactly once$", out, re.M)
    # redelivery after a kill is not "twice": the summary never says so
    assert "none twice" not in out
    assert "delivered twice" not in out
    assert re.search(r"^\[jobs\s*\] worker-C was killed holding [\d, ]+ unfinished; handed to "
                     r"another worker after the kill: \d+ -> worker-\w", out, re.M)
    # the worker left on a timeout (no goodbye) and a new incarnation started
    assert re.search(r"^\[discovery\s*\] worker-C left \((timeout|restarted)\)", out, re.M)
    assert re.search(r"^\[worker-C\s*\] process started again, a new incarnation", out, re.M)


def test_no_worker_process_outlives_the_demo(plain_run: tuple[int, str, str]) -> None:
    code, out, err = plain_run
    assert code == 0, err
    started = {int(p) for p in re.findall(r"^\[worker-\w\s*\] process started.*\(pid (\d+)\)$",
                                          out, re.M)}
    assert len(started) == 4  # three workers, and the killed one again
    assert started == set(summary_of(out)["worker_pids"])
    assert [p for p in started if worker_alive(p)] == []


# -- on a terminal ---------------------------------------------------------------------------


def test_on_a_terminal_a_panel_is_redrawn_in_place_and_plain_forces_lines() -> None:
    live, plain = PtyDemo("--seconds", "2"), PtyDemo("--seconds", "2", "--plain")
    run_in_ptys(live, plain, timeout=60)
    out = live.out
    assert live.status == 0, out[-2000:]
    assert out.startswith("\x1b[?25l")  # cursor hidden while the panel runs
    redraws = re.findall(r"\x1b\[(\d+)A\r", out)
    assert len(redraws) >= 8  # four a second
    assert "\x1b[?25h" in out  # and shown again
    assert "shoal demo\x1b[0m: 9 nodes on 127.0.0.1" in out
    for name in ("observer", "sensor", "dashboard", "room1-display", "calculator", "client",
                 "worker-A", "worker-B", "worker-C"):
        assert re.search(rf"\x1b\[2K(\x1b\[\d+m)?{name} ", out), name
    assert "KILLED" in out
    assert re.search(r"worker-\w\s+got job \d+ again, redelivered", out)
    assert "every job was processed exactly once" in out
    assert plain.status == 0, plain.out[-2000:]
    assert "\x1b" not in plain.out
    assert re.search(r"^\[worker-C\s*\] killed with SIGKILL", plain.out, re.M)
    assert [p for p in pids_in(out) | pids_in(plain.out) if worker_alive(p)] == []


def test_ctrl_c_stops_the_demo_with_status_130_and_its_workers() -> None:
    run = PtyDemo("--seconds", "30", interrupt_when="traffic ")
    run_in_ptys(run, timeout=40)
    assert run.status == 130, run.out[-2000:]
    assert run.out.rstrip().endswith("shoal demo: interrupted")
    assert "\x1b[?25h" in run.out  # the cursor is back
    pids = pids_in(run.out)
    assert len(pids) == 3
    assert [p for p in pids if worker_alive(p)] == []


# -- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", ["0", "-1", "abc"])
def test_bad_seconds_are_rejected_with_status_2(seconds: str) -> None:
    done = subprocess.run(demo_command("--seconds", seconds), capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 2
    assert "--seconds" in done.stderr
    assert done.stdout == ""


# -- the panel's rows, without a demo ------------------------------------------------------------


def test_a_rows_last_events_read_in_the_order_they_happened() -> None:
    from shoal.cli._demo._panel import story

    events = ["joined", "got job 7", "killed"]
    assert story(events, 200) == "joined > got job 7 > killed"
    # too narrow: the oldest go first, the newest always stays
    assert story(events, 24) == "... got job 7 > killed"
    assert story(events, 5) == "... killed"
