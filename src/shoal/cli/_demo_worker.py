"""A worker process of ``shoal demo``: one node taking jobs from a reliable puller.

    python -m shoal.cli._demo_worker NAME --service-type _shoal-1a2b3c4d._tcp.local.

The demo starts its workers this way, in processes of their own, so that it can kill
one for real (SIGKILL: no goodbye, no acknowledgement, sockets torn down by the
kernel) and show the pusher handing that worker's unfinished jobs to the others.

What it reports on stdout, one JSON object a line, each flushed at once:

* ``{"ev": "ready", "pid": P, "epoch": "8 hex digits"}``: the node is open and its
  puller listed;
* ``{"ev": "got", "job": N}``: job ``N`` reached this worker, which holds it until done;
* ``{"ev": "done", "job": N}``: job ``N`` is processed and acknowledged (the
  acknowledgement is handed to ZeroMQ before the line is written);
* ``{"ev": "peers", "n": K}``: the number of live peers, when it changes;
* ``{"ev": "bye"}``: leaving (its stdin closed).

A job is ``{"job": N}`` and takes ``--job-ms`` milliseconds (a sleep), one at a time,
so that a burst of jobs leaves the worker holding some. The worker leaves (saying
goodbye; what it still holds goes to the other workers) when its stdin closes, which
is also what happens when the demo dies: a worker never outlives it.

Network safety: the node and its mDNS are pinned to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import trio

import shoal
from shoal.discovery import MDNS
from shoal.patterns import Delivery, ManualAckPuller

LOOPBACK = ["127.0.0.1"]
PEERS_EVERY = 0.25
"""Seconds between two looks at the peer count."""


def emit(**report: Any) -> None:
    """Write one report line. A vanished reader is ignored: the closed stdin that
    comes with it ends the worker."""
    try:
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


async def _take(pull: ManualAckPuller, queue: trio.MemorySendChannel[Delivery]) -> None:
    """Take every job out of the puller as soon as it arrives, so that the demo knows
    all that this worker holds."""
    async for item in pull:
        job = item.body.get("job") if isinstance(item.body, dict) else None
        if not isinstance(job, int):
            item.ack_nowait()  # not a demo job: nothing to do with it
            continue
        emit(ev="got", job=job)
        queue.send_nowait(item)


async def _process(queue: trio.MemoryReceiveChannel[Delivery], job_seconds: float) -> None:
    async for item in queue:
        await trio.sleep(job_seconds)
        # acknowledged first, reported after, with no checkpoint in between: a job
        # reported done has left the pusher's window
        item.ack_nowait()
        emit(ev="done", job=item.body["job"])


async def _watch_peers(node: shoal.Node) -> None:
    seen = -1
    while True:
        n = len(node.peers())
        if n != seen:
            seen = n
            emit(ev="peers", n=n)
        await trio.sleep(PEERS_EVERY)


async def _wait_for_stdin_to_close() -> None:
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(4096):
            pass


async def run_worker(name: str, *, service_type: str, channel: str, job_ms: float) -> None:
    """Take jobs on ``channel`` until stdin closes, reporting on stdout."""
    mdns = MDNS(interfaces=LOOPBACK, service_type=service_type)
    async with shoal.open_node(name, discovery=mdns) as node, \
               node.open_puller(channel, reliable=True, manual_ack=True) as pull:
        emit(ev="ready", pid=os.getpid(), epoch=f"{node.epoch:08x}")
        send, receive = trio.open_memory_channel[Delivery](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_take, pull, send)
            nursery.start_soon(_process, receive, job_ms / 1000)
            nursery.start_soon(_watch_peers, node)
            await _wait_for_stdin_to_close()
            nursery.cancel_scope.cancel()
        emit(ev="bye")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``python -m shoal.cli._demo_worker``); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m shoal.cli._demo_worker",
                                     description="A worker process of `shoal demo`.")
    parser.add_argument("name")
    parser.add_argument("--service-type", required=True,
                        help="the DNS-SD service type of the demo's nodes")
    parser.add_argument("--channel", default="jobs")
    parser.add_argument("--job-ms", type=float, default=20.0,
                        help="milliseconds each job takes (default: 20)")
    args = parser.parse_args(argv)
    if not 0 <= args.job_ms <= 10_000:
        parser.error("--job-ms must be between 0 and 10000")
    try:
        trio.run(lambda: run_worker(args.name, service_type=args.service_type,
                                    channel=args.channel, job_ms=args.job_ms))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
