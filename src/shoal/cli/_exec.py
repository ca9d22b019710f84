"""``shoal reply --exec CMD``: answer a request by running a shell command.

For each request, ``CMD`` runs through the shell (``/bin/sh -c CMD``) with the request
body as one line of JSON on its standard input. Its standard output is the reply:
parsed as JSON when it is JSON (surrounding whitespace allowed), else sent as a
string (the text, one trailing newline removed). Its standard error goes to the
replier's standard error.

A command that exits non-zero, is killed, or runs past the time limit is answered
with an error reply (the requester's ``request()`` raises ``RemoteError``, ``shoal
req`` exits 1) saying what happened and the last line the command wrote to standard
error; the replier goes on serving. Each command runs in a process group of its own,
so that on a timeout the shell and everything it started are killed together.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["Outcome", "run_command"]

Out = Callable[[str], None]

Outcome = tuple[bool, Any]
"""``(True, reply body)`` or ``(False, why it failed)``."""


async def _kill_group(proc: trio.Process) -> None:
    # On a timeout: the whole group (the shell and what it started), at once.
    if sys.platform == "win32":
        proc.kill()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_command(command: str, request: str, seconds: float, err: Out) -> Outcome:
    """Run ``command`` with ``request`` (a JSON text) on its standard input; what to
    reply. Cancel-safe: a cancellation kills the command's process group."""
    group: dict[str, Any] = {} if sys.platform == "win32" else {"start_new_session": True}
    with trio.move_on_after(seconds) as scope:
        done = await trio.run_process(
            command, shell=True, stdin=(request + "\n").encode(), capture_stdout=True,
            capture_stderr=True, check=False, deliver_cancel=_kill_group, **group)
    if scope.cancelled_caught:
        return False, f"the command ran past {seconds:g} s (--exec-timeout) and was killed"
    stderr = done.stderr.decode(errors="replace")
    for line in stderr.splitlines():
        err(line)
    if done.returncode != 0:
        last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
        if done.returncode < 0:
            what = f"the command was killed by signal {-done.returncode}"
        else:
            what = f"the command exited with status {done.returncode}"
        return False, what + (f": {last[:200]}" if last else "")
    text = done.stdout.decode(errors="replace")
    try:
        return True, json.loads(text)
    except json.JSONDecodeError:
        return True, text.removesuffix("\n")
