"""A reliable subscriber in a process of its own, for tests that SIGKILL it mid-stream.

    python tests/_pubsub_proc.py --connect tcp://127.0.0.1:PORT [--topic PREFIX ...]
    python tests/_pubsub_proc.py --bind ipc:///tmp/.../sub [--topic PREFIX ...]

Opens ``open_subscriber(connect=..., topics=..., reliable=True)`` (or ``bind=``), prints
``{"event": "ready", "endpoints": [...]}`` and then ``{"event": "received", "topic":
..., "body": ...}`` for every publication handed to it, one JSON line each, flushed at
once, until killed.

Network safety: connects or binds only where ``--connect``/``--bind`` say (tests pass
127.0.0.1 or ipc); never mDNS.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import trio

import shoal


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--connect")
    p.add_argument("--bind")
    p.add_argument("--topic", action="append", default=[])
    args = p.parse_args(argv)
    if (args.connect is None) == (args.bind is None):
        p.error("pass exactly one of --connect and --bind")
    async with shoal.open_subscriber(connect=args.connect, bind=args.bind,
                                     topics=args.topic or [""], reliable=True) as sub:
        emit(event="ready", endpoints=sub.endpoints)
        async for msg in sub:
            emit(event="received", topic=msg.topic, body=msg.body)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
