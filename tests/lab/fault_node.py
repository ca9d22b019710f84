"""A shoal node for fault-injection tests on a namespace lab, driven over stdio like
``lab_node.py`` (``labtools.LabNode(..., script=FAULT_NODE)``), with the reliable roles.

    python tests/lab/fault_node.py --name NAME [--discovery mdns|static]
        [--static-peer tcp://IP:PORT] [--port N]
        [--push CH [--window N] [--rto S] [--max-attempts N] [--give-up-after S]
         [--outbox PATH]]
        [--pull CH [--work S]] [--rep CH [--handle-delay S]] [--req CH]
        [--rpub CH [--window N] [--rto S] [--grace S]] [--rsub CH [--topic P] [--heartbeat S]]

Every stdout line is one JSON object, flushed at once (``t`` is ``time.time()``):

* ``starting``, ``ready`` (``name``, ``id``, ``epoch``, ``control_port``), and
  ``joined``/``updated``/``left`` peer changes, as ``lab_node.py`` prints them;
* reliable puller (``--pull``): ``{"event": "processed", "channel", "ids": [...]}`` for
  every batch the application finished, printed and flushed *before* the puller is
  asked for more (which is what marks the batch done): an item whose done-ack can
  have left this process has been reported, even if the process is SIGKILLed next.
  ``--work S`` sleeps ``S`` seconds per item (the "processing");
* reliable pusher: ``{"cmd": "push_run", "channel", "n", "rate", "timeout"}`` sends
  bodies ``{"i": 0} .. {"i": n-1}`` paced at ``rate`` items/s (0: as fast as the window
  allows; with ``--outbox``, a pusher reopened on its file starts after the items it
  restored, at its stream's next number), printing ``{"event": "progress", "queued",
  "rss_kb", <statistics>}`` every 0.1 s, then
  waits (at most ``timeout`` s) for ``wait_acked()``: ``{"event": "acked",
  <statistics>, "elapsed"}`` or ``{"event": "error", "type", "message", "failed"}``;
* reliable subscriber (``--rsub``, on the ``--topic`` prefixes, default every topic):
  ``{"event": "received", "channel", "ids": [...]}``, the ``"i"`` of every publication
  delivered, in delivery order, in batches (at most every ``RECEIVED_EVERY`` seconds or
  ``RECEIVED_BATCH`` items, each line flushed; a ``stats`` command reports the rest
  first: once its answer is read, every delivery so far has been);
* reliable publisher (``--rpub``, ``--window``/``--rto`` as for the pusher, ``--grace``):
  ``{"cmd": "wait_subscribers", "channel", "n", "timeout"}`` -> ``{"event":
  "subscribers", "channel", "n", <statistics>}``; ``{"cmd": "publish_run", "channel",
  "n", "rate", "topic", "timeout"}`` publishes bodies ``{"i": 0} .. {"i": n-1}`` on
  ``topic`` (default ``"t"``) paced like ``push_run``, with the same ``progress``,
  ``all_queued`` and ``acked``/``error`` events (``wait_acked()``), the publisher's
  statistics in them;
* replier (``--rep``): handles requests concurrently, each sleeping ``--handle-delay``
  seconds (or the request body's ``"sleep"``): ``{"event": "handling", "rid", "sender",
  "epoch", "body"}`` when the handler starts, ``{"event": "answered", ...}`` after the
  reply went out;
* requester: ``{"cmd": "request", "channel", "body", "timeout", "retries", "retry_after",
  "tag"}`` -> ``{"event": "reply", "body", "tag"}`` or ``{"event": "error", "type",
  "message", "tag"}``;
* ``{"cmd": "stats"}`` -> ``{"event": "stats", "roles": {CHANNEL/ROLE: {counters}}}``;
  ``{"cmd": "wait_peers", "n", "channel", "timeout"}`` -> ``peers_ready``;
  ``{"cmd": "exit"}`` (or end of stdin) -> ``exited``.

Network safety: like ``lab_node.py``, it refuses to start (exit 2) outside a named
network namespace (``/run/netns/*``): it is meant for ``Host.popen`` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import trio
from lab_node import emit, named_namespace, peer_fields

import shoal
from shoal.discovery import MDNS, PeerJoined, PeerLeft, Static
from shoal.errors import DeliveryFailed
from shoal.node._node import Source
from shoal.patterns import ReliablePublisher, ReliablePuller, ReliablePusher, ReliableSubscriber

log = logging.getLogger("fault_node")

Command = dict[str, Any]
PROGRESS_EVERY = 0.1
"""Seconds between two ``progress`` events of a running ``push_run``/``publish_run``."""
RECEIVED_EVERY = 0.05
"""Seconds a reliable subscriber gathers publications before reporting them."""
RECEIVED_BATCH = 1000
"""At most this many ids in one ``received`` event."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--name", required=True)
    p.add_argument("--discovery", choices=["mdns", "static"], default="mdns")
    p.add_argument("--static-peer", action="append", default=[], metavar="tcp://IP:PORT")
    p.add_argument("--port", type=int, default=0, help="control port (0: any)")
    for role in ("push", "pull", "rep", "req", "rpub", "rsub"):
        p.add_argument(f"--{role}", action="append", default=[], metavar="CH")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--rto", type=float, default=0.5)
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds a reliable publisher keeps a silent subscriber's book")
    p.add_argument("--topic", action="append", default=[], metavar="PREFIX",
                   help="a reliable subscriber's topic prefix (default: every topic)")
    p.add_argument("--heartbeat", type=float, default=0.5,
                   help="seconds between a reliable subscriber's acknowledgements")
    p.add_argument("--max-attempts", type=int, default=10)
    p.add_argument("--give-up-after", type=float, default=None,
                   help="seconds after which a reliable pusher gives an item up")
    p.add_argument("--work", type=float, default=0.0, help="seconds of work per pulled item")
    p.add_argument("--outbox", default=None, help="the reliable pusher's outbox file")
    p.add_argument("--handle-delay", type=float, default=0.0,
                   help="seconds a request handler sleeps before replying")
    return p.parse_args(argv)


def rss_kb() -> int:
    """This process's resident memory, in KiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def counters(stats: Any) -> dict[str, Any]:
    """A statistics snapshot as a JSON-able dict."""
    return {k: (dict(v) if isinstance(v, dict) else v)
            for k, v in dataclasses.asdict(stats).items()}


class Runner:
    def __init__(self, args: argparse.Namespace, node: shoal.Node) -> None:
        self.args = args
        self.node = node
        self.pushers: dict[str, ReliablePusher] = {}
        self.pullers: dict[str, ReliablePuller] = {}
        self.repliers: dict[str, shoal.Replier] = {}
        self.requesters: dict[str, shoal.Requester] = {}
        self.publishers: dict[str, ReliablePublisher] = {}
        self.subscribers: dict[str, ReliableSubscriber] = {}
        self.unreported: dict[str, list[int]] = {}  # reliable subscriber: delivered ids
        self.done = trio.Event()

    async def report_peers(self, watch: shoal.PeerWatch) -> None:
        async for change in watch:
            kind = ("joined" if isinstance(change, PeerJoined)
                    else "left" if isinstance(change, PeerLeft) else "updated")
            reason = change.reason if isinstance(change, PeerLeft) else None
            emit(kind, reason=reason, **peer_fields(change.peer))

    async def pull(self, channel: str, puller: ReliablePuller) -> None:
        work = self.args.work
        while True:
            batch = await puller.receive_batch()
            if work:
                await trio.sleep(work * len(batch))
            # Reported before the next receive_batch() marks the batch done: whatever
            # the pusher may have heard is done is in our stdout pipe already.
            emit("processed", channel=channel, ids=[m.body["i"] for m in batch])

    async def push_run(self, cmd: Command) -> None:
        pusher = self.pushers[str(cmd["channel"])]

        async def send(i: int) -> None:
            await pusher.send({"i": i})

        # a pusher reopened on its outbox numbers new items after the restored ones
        await self.paced_run("push_run", cmd, send, pusher.statistics, pusher.wait_acked,
                             start=pusher._core.next_seq)

    async def publish_run(self, cmd: Command) -> None:
        publisher = self.publishers[str(cmd["channel"])]
        topic = str(cmd.get("topic", "t"))

        async def send(i: int) -> None:
            await publisher.publish(topic, {"i": i})

        await self.paced_run("publish_run", cmd, send, publisher.statistics,
                             publisher.wait_acked)

    async def paced_run(self, name: str, cmd: Command, send: Callable[[int], Awaitable[None]],
                        statistics: Callable[[], Any],
                        wait_acked: Callable[[], Awaitable[None]], start: int = 0) -> None:
        """``send(0) .. send(n-1)`` at ``rate`` per second, ``progress`` reports meanwhile,
        then ``wait_acked()`` within ``timeout``: ``acked`` or ``error``."""
        channel = str(cmd["channel"])
        n = int(cmd["n"])
        rate = float(cmd.get("rate", 0))
        queued = start
        started = trio.current_time() - start / rate if rate else trio.current_time()

        async def progress() -> None:
            while True:
                emit("progress", channel=channel, queued=queued, rss_kb=rss_kb(),
                     **counters(statistics()))
                await trio.sleep(PROGRESS_EVERY)

        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(progress)
            while queued < n:
                due = n if not rate else min(
                    n, int((trio.current_time() - started) * rate) + 1)
                while queued < due:
                    await send(queued)
                    queued += 1
                if queued < n:
                    await trio.sleep_until(started + queued / rate)
            emit("all_queued", channel=channel, queued=queued,
                 elapsed=trio.current_time() - started)
            # caught here: out of the nursery they would come wrapped in a group
            try:
                with trio.fail_after(float(cmd.get("timeout", 60))):
                    await wait_acked()
            except (DeliveryFailed, trio.TooSlowError) as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if isinstance(failure, DeliveryFailed):
            emit("error", cmd=name, channel=channel, type="DeliveryFailed",
                 message=str(failure),
                 failed=[[g.seq, g.reason, g.attempts] for g in failure.failed],
                 **counters(statistics()))
            return
        if failure is not None:
            emit("error", cmd=name, channel=channel, type="TooSlowError",
                 message="wait_acked() did not complete in time", queued=queued,
                 **counters(statistics()))
            return
        emit("acked", channel=channel, queued=queued, elapsed=trio.current_time() - started,
             **counters(statistics()))

    async def wait_subscribers(self, cmd: Command) -> None:
        channel = str(cmd["channel"])
        publisher = self.publishers[channel]
        n = int(cmd.get("n", 1))
        try:
            with trio.fail_after(float(cmd.get("timeout", 10))):
                await publisher.wait_for_subscribers(n)
        except (Exception, trio.TooSlowError) as exc:
            emit("error", cmd="wait_subscribers", channel=channel, type=type(exc).__name__,
                 message=str(exc), **counters(publisher.statistics()))
            return
        emit("subscribers", channel=channel, n=n, **counters(publisher.statistics()))

    async def receive_published(self, channel: str, sub: ReliableSubscriber) -> None:
        """Report what ``sub`` delivers, in order, in batches (flushed lines)."""
        ids = self.unreported[channel] = []
        while True:
            ids.append((await sub.receive()).body["i"])
            with trio.move_on_after(RECEIVED_EVERY):
                while len(ids) < RECEIVED_BATCH:
                    ids.append((await sub.receive()).body["i"])
            self.report_received()

    def report_received(self) -> None:
        """Print what the subscribers delivered and is not reported yet."""
        for channel, ids in self.unreported.items():
            if ids:
                emit("received", channel=channel, ids=ids[:])
                ids.clear()

    async def serve(self, channel: str, replier: shoal.Replier) -> None:
        async def handle(req: shoal.Request) -> None:
            m = req.message
            body = req.body
            emit("handling", channel=channel, rid=req.id, sender=m.sender, epoch=m.epoch,
                 body=body)
            delay = self.args.handle_delay
            if isinstance(body, dict) and isinstance(body.get("sleep"), int | float):
                delay = float(body["sleep"])
            await trio.sleep(delay)
            await req.reply({"from": self.args.name, "body": body})
            emit("answered", channel=channel, rid=req.id, sender=m.sender, epoch=m.epoch,
                 body=body)

        async with trio.open_nursery() as nursery:
            async for req in replier:
                nursery.start_soon(handle, req)

    async def request(self, cmd: Command) -> None:
        channel = str(cmd["channel"])
        tag = cmd.get("tag")
        requester = self.requesters[channel]
        try:
            with trio.fail_after(float(cmd.get("timeout", 30))):
                reply = await requester.request(
                    cmd.get("body"), retries=int(cmd.get("retries", 0)),
                    retry_after=float(cmd.get("retry_after", 1.0)))
        except (Exception, trio.TooSlowError) as exc:
            emit("error", cmd="request", channel=channel, type=type(exc).__name__,
                 message=str(exc), tag=tag)
            return
        emit("reply", channel=channel, body=reply, tag=tag)

    async def wait_peers(self, cmd: Command) -> None:
        try:
            with trio.fail_after(float(cmd.get("timeout", 10))):
                found = await self.node.wait_for_peers(int(cmd.get("n", 1)),
                                                       channel=cmd.get("channel"))
        except (Exception, trio.TooSlowError) as exc:
            emit("error", cmd="wait_peers", type=type(exc).__name__, message=str(exc),
                 tag=cmd.get("tag"))
            return
        emit("peers_ready", channel=cmd.get("channel"), peers=sorted(p.name for p in found),
             tag=cmd.get("tag"))

    def stats(self) -> dict[str, Any]:
        roles: dict[str, Any] = {}
        for kind, table in (("pusher", self.pushers), ("puller", self.pullers),
                            ("replier", self.repliers), ("requester", self.requesters),
                            ("publisher", self.publishers),
                            ("subscriber", self.subscribers)):
            for ch, res in table.items():
                roles[f"{ch}/{kind}"] = counters(res.statistics())
        return roles

    async def command(self, cmd: Command, nursery: trio.Nursery) -> None:
        name = cmd.get("cmd")
        if name == "push_run":
            nursery.start_soon(self.push_run, cmd)
        elif name == "publish_run":
            nursery.start_soon(self.publish_run, cmd)
        elif name == "wait_subscribers":
            nursery.start_soon(self.wait_subscribers, cmd)
        elif name == "request":
            nursery.start_soon(self.request, cmd)
        elif name == "wait_peers":
            nursery.start_soon(self.wait_peers, cmd)
        elif name == "stats":
            self.report_received()  # every delivery is reported before the stats
            emit("stats", roles=self.stats(), tag=cmd.get("tag"))
        elif name == "exit":
            self.done.set()
        else:
            emit("error", cmd=name, type="UnknownCommand", message=f"unknown command {cmd!r}")

    async def read_commands(self, nursery: trio.Nursery) -> None:
        stream = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        async with stream:
            while not self.done.is_set():
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break  # stdin closed: whoever drives us is gone
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        cmd = json.loads(line)
                        if not isinstance(cmd, dict):
                            raise ValueError("a command is a JSON object")
                        await self.command(cmd, nursery)
                    except Exception as exc:
                        emit("error", cmd=None, type=type(exc).__name__, message=str(exc),
                             line=line.decode(errors="replace"))
        self.done.set()


async def run(args: argparse.Namespace) -> None:
    sources: list[Source] = []
    if args.discovery == "mdns":
        sources.append(MDNS())
    if args.static_peer or args.discovery == "static":
        sources.append(Static(args.static_peer))
    emit("starting")
    async with shoal.open_node(args.name, discovery=sources, port=args.port) as node:
        known = node.peers()
        watch = node.watch_peers()
        for peer in known:
            emit("joined", reason=None, known=True, **peer_fields(peer))
        runner = Runner(args, node)
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
            nursery.start_soon(runner.report_peers, watch)
            for ch in args.pull:
                puller = await stack.enter_async_context(node.open_puller(ch, reliable=True))
                runner.pullers[ch] = puller
                nursery.start_soon(runner.pull, ch, puller)
            for ch in args.push:
                runner.pushers[ch] = await stack.enter_async_context(node.open_pusher(
                    ch, reliable=True, window=args.window, rto=args.rto,
                    max_attempts=args.max_attempts, give_up_after=args.give_up_after,
                    outbox=args.outbox))
            for ch in args.rep:
                replier = await stack.enter_async_context(node.open_replier(ch))
                runner.repliers[ch] = replier
                nursery.start_soon(runner.serve, ch, replier)
            for ch in args.req:
                runner.requesters[ch] = await stack.enter_async_context(
                    node.open_requester(ch))
            for ch in args.rpub:
                runner.publishers[ch] = await stack.enter_async_context(node.open_publisher(
                    ch, reliable=True, window=args.window, rto=args.rto, grace=args.grace))
            for ch in args.rsub:
                sub = await stack.enter_async_context(node.open_subscriber(
                    ch, topics=args.topic or [""], reliable=True, heartbeat=args.heartbeat))
                runner.subscribers[ch] = sub
                nursery.start_soon(runner.receive_published, ch, sub)
            emit("ready", name=args.name, id=node.id, epoch=node.epoch,
                 control_port=node.control_port, addresses=list(node.addresses))
            nursery.start_soon(runner.read_commands, nursery)
            await runner.done.wait()
            nursery.cancel_scope.cancel()
    emit("exited")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if named_namespace() is None:
        print("fault_node.py: refusing to run outside a named network namespace (the root "
              "namespace, maybe); start it with netlab's Host.popen", file=sys.stderr)
        return 2
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
