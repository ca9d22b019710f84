"""What ``shoal pub`` and ``shoal push`` send: BODY from the command line, or one JSON
value per line of standard input, each handed over as soon as its line is complete.

Nothing waits for the end of the input: ``tail -f log | shoal pub ...`` publishes each
line when it is written. Standard input is read in a worker thread (a blocking
``os.read`` of whatever is there, up to 64 KiB), so a line that arrives alone goes out
alone and a file piped in arrives in large chunks; the event loop never blocks on it.

A line that is not JSON is reported on stderr with its number and skipped; the lines
before and after it are sent. Blank lines are skipped silently. ``BadLines`` (raised
by ``check()`` once everything else is sent) says how many were skipped, so that the
command can exit non-zero at the end.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncGenerator, Callable
from typing import Any

import trio

__all__ = ["BadLines", "Input"]

CHUNK = 65536
"""Bytes asked of one read of standard input (a read returns what is there)."""

Out = Callable[[str], None]


class BadLines(Exception):
    """Some lines of standard input were skipped (exit status 2 at the end)."""


class Input:
    """The bodies to send: ``bodies()`` yields ``(line number, body)`` pairs (line
    None for BODY given as an argument); ``skip()`` records a line that was read but
    could not be sent; ``check()`` raises ``BadLines`` if any line was skipped."""

    def __init__(self, body: str | None, err: Out) -> None:
        self.body = body
        self.err = err
        self.skipped: list[int] = []
        self.lines = 0
        """Lines of standard input read so far."""

    def skip(self, line: int, why: str) -> None:
        self.skipped.append(line)
        self.err(f"line {line} of stdin {why}; skipped")

    def check(self) -> None:
        if self.skipped:
            shown = ", ".join(map(str, self.skipped[:10])) + (
                ", ..." if len(self.skipped) > 10 else "")
            raise BadLines(f"{len(self.skipped)} of {self.lines} line(s) of stdin skipped "
                           f"(line {shown}); every other line was sent")

    async def bodies(self) -> AsyncGenerator[tuple[int | None, Any], None]:
        """The bodies in order, each as soon as it has been read."""
        if self.body is not None:
            yield None, parse_json(self.body, "BODY")
            return
        fd = _stdin_fd()
        if os.isatty(fd):
            self.err("reading one JSON value per line from the terminal (Ctrl-D ends)")
        pending = b""
        while True:
            chunk: bytes = await trio.to_thread.run_sync(os.read, fd, CHUNK,
                                                         abandon_on_cancel=True)
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                if (item := self._line(raw)) is not None:
                    yield item
        if pending and (item := self._line(pending)) is not None:
            yield item

    def _line(self, raw: bytes) -> tuple[int, Any] | None:
        self.lines += 1
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            self.skip(self.lines, f"is not UTF-8 (byte {exc.start + 1})")
            return None
        if not text.strip():
            return None
        try:
            return self.lines, json.loads(text)
        except json.JSONDecodeError as exc:
            self.skip(self.lines, f"is not JSON ({exc.msg} at column {exc.colno}): "
                      f"{text.rstrip(chr(13))[:60]!r}")
            return None


class UsageError(Exception):
    """A bad argument found after parsing (exit status 2, one line)."""


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not JSON ({exc.msg} at column {exc.colno}): "
                         f"{text[:60]!r}; quote strings, e.g. '\"hello\"'") from None


def _stdin_fd() -> int:
    try:
        if sys.stdin is None:
            raise ValueError
        return sys.stdin.fileno()
    except (ValueError, OSError):
        raise UsageError("no BODY given and standard input is closed: give BODY, or "
                         "pipe one JSON value per line") from None
