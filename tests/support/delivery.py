"""The application side of delivery tests: collect what a subscriber or puller hands
over, wait until everything sent is acknowledged and delivered, count an outbox.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoal.patterns import ReliablePublisher, ReliablePuller, ReliablePusher, ReliableSubscriber
from support.waiting import eventually, wait_all_tasks_blocked

Got = list[tuple[str, Any]]
"""(topic, body) of each publication, in delivery order."""


async def collect(sub: ReliableSubscriber, into: Got) -> None:
    """The application: record (topic, body) of everything, in delivery order."""
    async for msg in sub:
        into.append((msg.topic, msg.body))


def matching(published: Sequence[tuple[str, Any]], prefixes: Sequence[str]) -> Got:
    """What a subscriber to ``prefixes`` gets of ``published``, in order."""
    return [(t, b) for t, b in published if t.startswith(tuple(prefixes))]


async def settle_subscribers(pub: ReliablePublisher, *lists_and_counts: tuple[Got, int],
                             ) -> None:
    """Everything published is acknowledged, and each application has at least what
    it should have (the caller then checks it has nothing more)."""
    await pub.wait_acked()
    await eventually(lambda: all(len(got) >= n for got, n in lists_and_counts))
    await wait_all_tasks_blocked(cushion=0.05)


async def drain(puller: ReliablePuller, into: list[Any]) -> None:
    """The application: take every item, each done when the next is asked for."""
    async for msg in puller:
        into.append(msg.body)


async def warm_up(push: ReliablePusher, *seen: list[Any]) -> int:
    """Send items 0, 1, 2... one at a time, each waited for, until every puller's
    application has taken one (``seen`` are their lists, filled by other tasks): then
    every connection is up and what follows is spread over all of them. Returns how
    many items were sent."""
    i = 0
    while not all(seen):
        await push.send(i)
        await push.wait_acked()
        i += 1
    return i


def count_items(path: Path) -> int:
    """Items in an outbox file (opened and closed again: the file stays free)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        n: int = db.execute("SELECT count(*) FROM item").fetchone()[0]
        return n
