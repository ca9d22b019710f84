"""A shoal node in a process of its own, for tests that kill or restart a peer.

    python tests/_node_proc.py NAME [--peer tcp://127.0.0.1:PORT] [--port N] [--puller CH]
        [--replier CH] [--publisher CH] [--print-received] [--never-answer]
        [--heartbeat S] [--peer-timeout S]

Opens node NAME (default node id: the same for NAME on this host across restarts) with
``Static([--peer ...])`` discovery on 127.0.0.1 only (control port ``--port``, default
any), opens the requested channels, prints
one JSON line ``{"event": "ready", "id": ..., "epoch": ..., "control_port": ...}`` to
stdout and then serves until killed. Every stdout line is one JSON object, flushed at once:

* ``--print-received``: ``{"event": "pulled", "body": ...}`` for each work item pulled,
  and ``{"event": "request", "body": ...}`` for each request received.
* A replier answers ``{"from": NAME, "body": body}``, unless ``--never-answer``: then it
  receives requests (and reports them) but never answers.

Network safety: binds nothing but 127.0.0.1 (``interfaces=["127.0.0.1"]``); never mDNS.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AsyncExitStack
from typing import Any

import trio

import shoal
from shoal.discovery import Static


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def pull_forever(puller: shoal.Puller, report: bool) -> None:
    async for msg in puller:
        if report:
            emit(event="pulled", body=msg.body)


async def serve_forever(name: str, replier: shoal.Replier, report: bool, answer: bool) -> None:
    async for req in replier:
        if report:
            emit(event="request", body=req.body)
        if answer:
            await req.reply({"from": name, "body": req.body})


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--puller", action="append", default=[])
    p.add_argument("--replier", action="append", default=[])
    p.add_argument("--publisher", action="append", default=[])
    p.add_argument("--print-received", action="store_true")
    p.add_argument("--never-answer", action="store_true")
    p.add_argument("--heartbeat", type=float, default=0.2)
    p.add_argument("--peer-timeout", type=float, default=1.0)
    args = p.parse_args(argv)
    async with (
        shoal.open_node(args.name, discovery=Static(args.peer), interfaces=["127.0.0.1"],
                        port=args.port, heartbeat=args.heartbeat,
                        peer_timeout=args.peer_timeout) as node,
        AsyncExitStack() as stack,
        trio.open_nursery() as nursery,
    ):
        for ch in args.puller:
            puller = await stack.enter_async_context(node.open_puller(ch))
            nursery.start_soon(pull_forever, puller, args.print_received)
        for ch in args.replier:
            replier = await stack.enter_async_context(node.open_replier(ch))
            nursery.start_soon(serve_forever, args.name, replier, args.print_received,
                               not args.never_answer)
        for ch in args.publisher:
            await stack.enter_async_context(node.open_publisher(ch))
        emit(event="ready", id=node.id, epoch=node.epoch, control_port=node.control_port)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
