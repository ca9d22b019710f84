"""A reliable puller in a process of its own, for tests that SIGKILL it mid-stream.

    python tests/_reliable_proc.py --bind tcp://127.0.0.1:*     (explicit endpoint)
    python tests/_reliable_proc.py --connect tcp://127.0.0.1:PORT (to a bound pusher)
    python tests/_reliable_proc.py --node NAME --peer tcp://127.0.0.1:PORT --channel CH
        [--heartbeat S] [--peer-timeout S]                       (a node's puller)
    common options: [--manual-ack] [--stall-after N] [--delay S]

Opens one reliable puller (``open_puller(bind=..., reliable=True)``, the same with
``connect=``, or
``node.open_puller(CH, reliable=True)`` on a node with ``Static`` discovery), prints
``{"event": "ready", ...}`` (with the puller's ``endpoints``, or the node's ``id``) and
then one JSON line per item, flushed at once, so that a test killing it knows what it
did:

* ``{"event": "pulled", "body": ...}`` as soon as an item reaches the application
  (before any work on it: an item printed may be unfinished);
* ``--delay S``: the "work" on each item is ``trio.sleep(S)``;
* ``--manual-ack``: each item is acknowledged (``await item.ack()``) after its work;
* ``--stall-after N``: the N-th item is pulled and never finished: the puller first
  sends every pending acknowledgement (``flush_acks``), then prints
  ``{"event": "stalled", "body": ..., "finished": N - 1, "held": ...}`` and sleeps
  until killed, holding the item (and whatever else is in its buffer).

Network safety: binds or connects only what ``--bind``/``--connect`` say (tests pass
127.0.0.1 or ipc) or, as a node, 127.0.0.1 (``interfaces=["127.0.0.1"]``); never mDNS.
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
from shoal.patterns import Delivery, ManualAckPuller, ReliablePuller


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def work(puller: ReliablePuller | ManualAckPuller, *, stall_after: int,
               delay: float) -> None:
    n = 0
    async for item in puller:
        n += 1
        emit(event="pulled", body=item.body)
        if n == stall_after:
            puller.flush_acks()
            emit(event="stalled", body=item.body, finished=n - 1,
                 held=puller.statistics().held)
            await trio.sleep_forever()
        if delay:
            await trio.sleep(delay)
        if isinstance(item, Delivery):
            await item.ack()


async def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bind")
    p.add_argument("--connect")
    p.add_argument("--node")
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--channel", default="jobs")
    p.add_argument("--heartbeat", type=float, default=0.2)
    p.add_argument("--peer-timeout", type=float, default=1.0)
    p.add_argument("--manual-ack", action="store_true")
    p.add_argument("--stall-after", type=int, default=0)
    p.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args(argv)
    if sum(a is not None for a in (args.bind, args.connect, args.node)) != 1:
        p.error("pass exactly one of --bind, --connect and --node")
    async with AsyncExitStack() as stack:
        puller: ReliablePuller | ManualAckPuller
        if args.node is not None:
            node = await stack.enter_async_context(shoal.open_node(
                args.node, discovery=Static(args.peer), interfaces=["127.0.0.1"],
                heartbeat=args.heartbeat, peer_timeout=args.peer_timeout))
            if args.manual_ack:
                puller = await stack.enter_async_context(
                    node.open_puller(args.channel, reliable=True, manual_ack=True))
            else:
                puller = await stack.enter_async_context(
                    node.open_puller(args.channel, reliable=True))
            emit(event="ready", id=node.id, epoch=node.epoch, control_port=node.control_port)
        else:
            if args.manual_ack:
                puller = await stack.enter_async_context(
                    shoal.open_puller(bind=args.bind, connect=args.connect, reliable=True,
                                      manual_ack=True))
            else:
                puller = await stack.enter_async_context(
                    shoal.open_puller(bind=args.bind, connect=args.connect, reliable=True))
            emit(event="ready", endpoints=puller.endpoints)
        await work(puller, stall_after=args.stall_after, delay=args.delay)


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
