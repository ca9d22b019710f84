"""Drive ``tests/lab/lab_node.py`` processes on the hosts of a namespace lab, with deadlines.

    node = LabNode.start(lab.hosts[0], "h0", "--pub", "telemetry")   # waits for "ready"
    node.send({"cmd": "wait_subscribers", "channel": "telemetry", "n": 2})
    ev = node.wait_for(lambda e: e["event"] == "subscribers", timeout=5)
    node.kill()

A background thread reads the process's stdout, one JSON event per line, into
``node.events`` (every event ever printed, in order, each with ``_rx``: when this process
read it). ``wait_for`` scans those events from an index (``after``; ``node.mark()`` is
"from now on") and gives up with ``LabTimeout`` (an ``AssertionError``, so pytest shows
it as a failure) carrying the node's recent events and stderr. Nothing here ever blocks
without a deadline.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from netlab import Host

__all__ = ["LAB_NODE", "Event", "LabNode", "LabTimeout", "is_event", "start_nodes"]

LAB_NODE = str(Path(__file__).resolve().parent / "lab_node.py")
"""Absolute path of the node runner script."""

READY_TIMEOUT = 15.0
"""How long a node may take to print ``ready`` (imports, zeroconf startup)."""

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


class LabTimeout(AssertionError):
    """An awaited event did not come in time."""


def is_event(kind: str, **fields: Any) -> Predicate:
    """A predicate: the event is ``kind`` and has every given field with that value."""

    def match(ev: Event) -> bool:
        return ev.get("event") == kind and all(ev.get(k) == v for k, v in fields.items())

    match.__name__ = f"{kind}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"
    return match


class LabNode:
    """One ``lab_node.py`` process on a lab host."""

    def __init__(self, host: Host, name: str, args: Iterable[str], *,
                 script: str = LAB_NODE) -> None:
        self.host = host
        self.name = name
        self.script = script
        """The node runner (``lab_node.py`` unless another one speaks the same stdio
        protocol: ``--name NAME`` first, JSON events out, a ``ready`` event)."""
        self.argv = [sys.executable, "-u", script, "--name", name, *args]
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self.spawned = time.time()
        """``time.time()`` right before the process was started."""
        self.killed: float | None = None
        """``time.time()`` right before ``kill()`` sent SIGKILL."""
        self._cond = threading.Condition()
        self._eof = False
        self._ready: Event | None = None  # the first ``ready`` event, once read
        self.proc: subprocess.Popen[str] = host.popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True,
                             name=f"lab-node-{name}-out"),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True,
                             name=f"lab-node-{name}-err"),
        ]
        for t in self._threads:
            t.start()

    def __repr__(self) -> str:
        return f"LabNode({self.name!r} on {self.host.name}, pid {self.proc.pid})"

    @classmethod
    def start(cls, host: Host, name: str, *args: str,
              ready_timeout: float = READY_TIMEOUT, script: str = LAB_NODE) -> LabNode:
        """Start a node and wait until it is ready (its id and epoch are then known)."""
        node = cls(host, name, args, script=script)
        node.wait_ready(ready_timeout)
        return node

    # -- reading -------------------------------------------------------------------------

    def _read_stdout(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                line = line.strip()
                if not line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    ev = {"event": "garbage", "line": line}
                if not isinstance(ev, dict):
                    ev = {"event": "garbage", "line": line}
                ev["_rx"] = time.time()
                with self._cond:
                    if self._ready is None and ev.get("event") == "ready":
                        self._ready = ev
                    self.events.append(ev)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass  # closed under us by kill()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _read_stderr(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                with self._cond:
                    self.stderr.append(line.rstrip("\n"))
                    del self.stderr[:-200]
        except (OSError, ValueError):
            pass

    def mark(self) -> int:
        """Index of the next event: ``wait_for(..., after=node.mark())`` means "from now"."""
        with self._cond:
            return len(self.events)

    def find(self, pred: Predicate, after: int = 0) -> list[Event]:
        """Every event so far (from index ``after``) matching ``pred``."""
        with self._cond:
            return [ev for ev in self.events[after:] if pred(ev)]

    def wait_for(self, pred: Predicate, timeout: float, after: int = 0,
                 what: str | None = None) -> Event:
        """The first event from index ``after`` that matches ``pred``, waiting at most
        ``timeout`` seconds for it. Raises ``LabTimeout`` (also if the process ends)."""
        return self.wait_count(pred, 1, timeout, after=after, what=what)[0]

    def wait_count(self, pred: Predicate, n: int, timeout: float, after: int = 0,
                   what: str | None = None) -> list[Event]:
        """The first ``n`` events from index ``after`` that match ``pred``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [ev for ev in self.events[after:] if pred(ev)]
                if len(found) >= n:
                    return found[:n]
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    break
                self._cond.wait(left)
        why = "its process ended" if self._eof else f"not within {timeout:.1f}s"
        raise LabTimeout(
            f"{self}: waited for {n} x {what or getattr(pred, '__name__', 'event')}, "
            f"got {len(found)}: {why}\n{self.describe()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Event:
        return self.wait_for(is_event("ready"), timeout)

    def describe(self, last: int = 25) -> str:
        """The node's last events and stderr lines, for failure messages."""
        with self._cond:
            evs = [json.dumps({k: v for k, v in ev.items() if k != "_rx"}, default=repr)
                   for ev in self.events[-last:]]
            err = self.stderr[-last:]
        return ("  last events:\n    " + "\n    ".join(evs or ["(none)"])
                + "\n  stderr:\n    " + "\n    ".join(err or ["(none)"]))

    # -- identity ------------------------------------------------------------------------

    @property
    def ready(self) -> Event:
        """The node's first ``ready`` event (kept aside when read: no scan of the events)."""
        with self._cond:
            ready = self._ready
        if ready is None:
            raise LabTimeout(f"{self} is not ready\n{self.describe()}")
        return ready

    @property
    def id(self) -> str:
        return str(self.ready["id"])

    @property
    def epoch(self) -> int:
        return int(self.ready["epoch"])

    @property
    def control_endpoint(self) -> str:
        return f"tcp://{self.host.address}:{self.ready['control_port']}"

    # -- acting --------------------------------------------------------------------------

    def send(self, cmd: Event) -> None:
        """Write one command line to the node's stdin."""
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(cmd) + "\n")
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise LabTimeout(f"{self}: cannot send {cmd!r}: {exc!r}\n{self.describe()}") from exc

    def call(self, cmd: Event, answer: Predicate, timeout: float) -> Event:
        """Send ``cmd`` and wait for the first matching event after it."""
        after = self.mark()
        self.send(cmd)
        return self.wait_for(answer, timeout, after=after, what=f"answer to {cmd!r}")

    def kill(self) -> float:
        """SIGKILL the process (and its group); return when the signal was sent."""
        self.killed = time.time()
        self.host.kill(self.proc)
        self.join()
        return self.killed

    def exit(self, timeout: float = 5.0) -> int | None:
        """Ask the node to leave cleanly and wait for the process to end (else kill it)."""
        with contextlib.suppress(LabTimeout):
            self.send({"cmd": "exit"})
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode

    def join(self, timeout: float = 2.0) -> None:
        for t in self._threads:
            t.join(timeout)

    def close(self) -> None:
        """Kill the process if it still runs (idempotent)."""
        self.host.kill(self.proc)  # also closes the pipes of one that already ended
        self.join()


def start_nodes(specs: Iterable[tuple[Host, str, list[str]]],
                ready_timeout: float = READY_TIMEOUT, *,
                script: str = LAB_NODE, batch: int | None = None) -> list[LabNode]:
    """Start several nodes, then wait until each is ready (kills them all if one fails,
    or if they are not all ready within ``ready_timeout`` of the first spawn).
    ``batch``: spawn that many at a time, the next ones once those are ready (None: all
    at once); on a small machine this keeps dozens of interpreters from starting
    together. ``script``: the node runner (default ``lab_node.py``)."""
    if batch is not None and batch < 1:
        raise ValueError(f"batch is a positive number of nodes or None, not {batch}")
    todo = list(specs)
    step = batch or max(1, len(todo))
    nodes: list[LabNode] = []
    deadline = time.monotonic() + ready_timeout
    try:
        for first in range(0, len(todo), step):
            spawned = [LabNode(host, name, args, script=script)
                       for host, name, args in todo[first:first + step]]
            nodes.extend(spawned)
            for node in spawned:
                node.wait_ready(max(0.1, deadline - time.monotonic()))
    except BaseException:
        for node in nodes:
            node.close()
        raise
    return nodes
