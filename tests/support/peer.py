"""A shoal peer in a process of its own, for tests that SIGKILL or restart a peer.

    python tests/support/peer.py [--loop LOOP] node NAME [--peer tcp://127.0.0.1:PORT]
        [--port N] [--heartbeat S] [--peer-timeout S] [--puller CH] [--replier CH]
        [--publisher CH] [--reliable-puller CH] [--print-received] [--never-answer]
        [--stall-on BODY] [PULLER OPTIONS]
    python tests/support/peer.py [--loop LOOP] subscriber (--connect EP | --bind EP)
        [--topic PREFIX]
    python tests/support/peer.py [--loop LOOP] puller (--connect EP | --bind EP)
        [PULLER OPTIONS]

    LOOP: trio (the default), asyncio or uvloop.
    PULLER OPTIONS (a reliable puller's): [--manual-ack] [--stall-after N] [--delay S]

``node`` opens node NAME (its default id: the same for NAME on this host across
restarts) with ``Static([--peer ...])`` discovery and the channels asked for;
``subscriber`` opens ``open_subscriber(..., reliable=True)``; ``puller`` opens
``open_puller(..., reliable=True)``. Once everything is open the peer prints
``{"event": "ready", ...}`` (a node's ``id``, ``epoch`` and ``control_port``, or the
resource's ``endpoints``) and serves until killed. Every stdout line is one JSON
object, flushed at once, so that a test killing the peer knows what it did:

* ``{"event": "received", "topic", "body"}``: a subscriber's every publication;
* ``{"event": "pulled", "body"}``: a reliable puller's every item, as soon as it
  reaches the application (before any work on it: an item printed may be unfinished);
  a best-effort puller's only with ``--print-received``;
* ``{"event": "request", "body"}``: with ``--print-received``, each request received.
  A replier answers ``{"from": NAME, "body": body}``, unless ``--never-answer``;
* ``{"event": "stalled", "body"}``: with ``--stall-on BODY``, a request whose body is
  the string BODY has reached the replier, which holds it unanswered (and serves
  nothing else) until killed;
* a reliable puller's work on each item is ``anyio.sleep(--delay)``; with
  ``--manual-ack`` each item is acknowledged (``await item.ack()``) after it; with
  ``--stall-after N`` the N-th item is pulled and never finished: the puller sends
  every pending acknowledgement (``flush_acks``), prints ``{"event": "stalled",
  "body", "finished": N - 1, "held"}`` and holds it (and its buffer) until killed.

It runs on the event loop ``--loop`` names (default trio); ``support.peers`` starts
it on the loop of the test that asks. It imports nothing from the tests.

Network safety: binds or connects only what ``--bind``/``--connect`` say (tests pass
127.0.0.1 or ipc) or, as a node, 127.0.0.1 (``interfaces=["127.0.0.1"]``); never mDNS.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any

import anyio

import shoal
from shoal.discovery import Static
from shoal.patterns import Delivery, ManualAckPuller, ReliablePuller, ReliableSubscriber

Task = Callable[[], Coroutine[Any, Any, None]]


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


# -- what each role does with what it receives -------------------------------------------


async def report_publications(sub: ReliableSubscriber) -> None:
    async for msg in sub:
        emit(event="received", topic=msg.topic, body=msg.body)


async def pull(puller: shoal.Puller, report: bool) -> None:
    async for msg in puller:
        if report:
            emit(event="pulled", body=msg.body)


async def answer(name: str, replier: shoal.Replier, report: bool, reply: bool,
                 stall_on: str | None) -> None:
    async for req in replier:
        if report:
            emit(event="request", body=req.body)
        if stall_on is not None and req.body == stall_on:
            emit(event="stalled", body=req.body)
            await anyio.sleep_forever()
        if reply:
            await req.reply({"from": name, "body": req.body})


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
            await anyio.sleep_forever()
        if delay:
            await anyio.sleep(delay)
        if isinstance(item, Delivery):
            await item.ack()


def worker(puller: ReliablePuller | ManualAckPuller, args: argparse.Namespace) -> Task:
    return functools.partial(work, puller, stall_after=args.stall_after, delay=args.delay)


# -- opening each kind of peer: its ready fields and its tasks ---------------------------


Opened = tuple[dict[str, Any], list[Task]]


async def open_node(args: argparse.Namespace, stack: AsyncExitStack) -> Opened:
    node = await stack.enter_async_context(shoal.open_node(
        args.name, discovery=Static(args.peer), interfaces=["127.0.0.1"], port=args.port,
        heartbeat=args.heartbeat, peer_timeout=args.peer_timeout))
    tasks: list[Task] = []
    for ch in args.puller:
        puller = await stack.enter_async_context(node.open_puller(ch))
        tasks.append(functools.partial(pull, puller, args.print_received))
    for ch in args.replier:
        replier = await stack.enter_async_context(node.open_replier(ch))
        tasks.append(functools.partial(answer, args.name, replier, args.print_received,
                                       not args.never_answer, args.stall_on))
    for ch in args.publisher:
        await stack.enter_async_context(node.open_publisher(ch))
    for ch in args.reliable_puller:
        reliable: ReliablePuller | ManualAckPuller
        if args.manual_ack:
            reliable = await stack.enter_async_context(
                node.open_puller(ch, reliable=True, manual_ack=True))
        else:
            reliable = await stack.enter_async_context(node.open_puller(ch, reliable=True))
        tasks.append(worker(reliable, args))
    return {"id": node.id, "epoch": node.epoch, "control_port": node.control_port}, tasks


async def open_subscriber(args: argparse.Namespace, stack: AsyncExitStack) -> Opened:
    sub = await stack.enter_async_context(shoal.open_subscriber(
        connect=args.connect, bind=args.bind, topics=args.topic or [""], reliable=True))
    return {"endpoints": sub.endpoints}, [functools.partial(report_publications, sub)]


async def open_puller(args: argparse.Namespace, stack: AsyncExitStack) -> Opened:
    puller: ReliablePuller | ManualAckPuller
    if args.manual_ack:
        puller = await stack.enter_async_context(shoal.open_puller(
            bind=args.bind, connect=args.connect, reliable=True, manual_ack=True))
    else:
        puller = await stack.enter_async_context(shoal.open_puller(
            bind=args.bind, connect=args.connect, reliable=True))
    return {"endpoints": puller.endpoints}, [worker(puller, args)]


OPENERS: dict[str, Callable[[argparse.Namespace, AsyncExitStack], Awaitable[Opened]]] = {
    "node": open_node, "subscriber": open_subscriber, "puller": open_puller,
}


# -- the command line ------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A shoal peer for tests, reporting on stdout.")
    p.add_argument("--loop", choices=["trio", "asyncio", "uvloop"], default="trio")
    kinds = p.add_subparsers(dest="kind", required=True)
    pulling = argparse.ArgumentParser(add_help=False)
    pulling.add_argument("--manual-ack", action="store_true")
    pulling.add_argument("--stall-after", type=int, default=0)
    pulling.add_argument("--delay", type=float, default=0.0)
    endpoint = argparse.ArgumentParser(add_help=False)
    where = endpoint.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect")
    where.add_argument("--bind")

    node = kinds.add_parser("node", parents=[pulling])
    node.add_argument("name")
    node.add_argument("--peer", action="append", default=[])
    node.add_argument("--port", type=int, default=0)
    node.add_argument("--heartbeat", type=float, default=0.2)
    node.add_argument("--peer-timeout", type=float, default=1.0)
    for role in ("puller", "replier", "publisher", "reliable-puller"):
        node.add_argument(f"--{role}", action="append", default=[], metavar="CH")
    node.add_argument("--print-received", action="store_true")
    node.add_argument("--never-answer", action="store_true")
    node.add_argument("--stall-on", metavar="BODY")

    sub = kinds.add_parser("subscriber", parents=[endpoint])
    sub.add_argument("--topic", action="append", default=[])
    kinds.add_parser("puller", parents=[endpoint, pulling])
    return p


async def main(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        ready, tasks = await OPENERS[args.kind](args, stack)
        async with anyio.create_task_group() as nursery:
            for task in tasks:
                nursery.start_soon(task)
            emit(event="ready", **ready)
            await anyio.sleep_forever()


if __name__ == "__main__":
    arguments = parser().parse_args(sys.argv[1:])
    backend, options = (("asyncio", {"use_uvloop": True}) if arguments.loop == "uvloop"
                        else (arguments.loop, {}))
    anyio.run(main, arguments, backend=backend, backend_options=options)
