"""What the person watching ``shoal demo`` sees: plain lines, or a panel redrawn in place.

``View`` takes the demo's events: ``say`` (chatter, line mode only) and ``note`` (an
event: a line, or an entry of the panel's recent events and of its node's row). On a
terminal the panel (one row per node, then the recent events) is redrawn four times a
second over the previous one, never wider than the terminal (the redraw counts lines);
the cursor is hidden while it runs and shown again by the last redraw. A reader that
goes away (``shoal demo | head``) stops the output, and ``on_gone`` tells the demo.
"""

from __future__ import annotations

import json
import shutil
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

REFRESH = 0.25
"""Seconds between two redraws of the live panel."""
RECENT = 8
"""Events the live panel lists at most."""


def as_json(body: Any) -> str:
    return json.dumps(body, sort_keys=True)


def job_list(jobs: list[int] | set[int]) -> str:
    return ", ".join(str(j) for j in sorted(jobs)) or "none"


@dataclass
class Row:
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


class View:
    """Where the demo's events go: plain lines, or a panel redrawn in place.

    ``say`` is chatter (each publication, each round of jobs), shown in line mode
    only; ``note`` is an event (joined, left, killed, redelivered), a line in line mode
    and an entry of the panel's recent events in live mode."""

    def __init__(self, out: Callable[[str], None], *, live: bool, seconds: float) -> None:
        self._out = out
        self.live = live
        self.seconds = seconds
        self.rows: dict[str, Row] = {}
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

    def row(self, name: str, pattern: str) -> Row:
        row = self.rows[name] = Row(name, pattern)
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
            lines.append(head + story(r.last, size.columns - 1 - len(head)))
            colours.append("\x1b[31m" if r.state == "KILLED" else "")
        lines.append("recent events")
        colours.append("")
        room = max(1, size.lines - len(lines) - 1)
        for event in list(self.recent)[-room:]:
            lines.append(event)
            colours.append("\x1b[33m" if "redelivered" in event or "killed" in event
                           else "")
        width = max(20, size.columns - 1)  # never wrap: the redraw counts lines
        return [f"{c}{clip(line, width)}\x1b[0m" if c else clip(line, width)
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


def story(events: Iterable[str], width: int) -> str:
    """A node's last events in the order they happened, the oldest ones left out
    (marked by a leading ``...``) where they do not fit ``width`` characters."""
    kept = list(events)
    text = " > ".join(kept)
    while len(kept) > 1 and len(text) > width:
        kept.pop(0)
        text = "... " + " > ".join(kept)
    return text


def clip(line: str, width: int) -> str:
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
