"""A shoal node for one host of a namespace lab (``tests/lab/netlab.py``), driven over stdio.

    python tests/lab/lab_node.py --name NAME [--discovery mdns|static] [--static-peer tcp://IP:PORT]
        [--port N] [--heartbeat S] [--peer-timeout S]
        [--pub CH] [--sub CH [--topic PREFIX]] [--push CH] [--pull CH] [--rep CH]
        [--rep-silent CH] [--req CH] [--publish-on-ready CH TOPIC] [--history N]
        [--publish-every S]

Role options can be repeated. ``--topic`` (repeatable) gives the subscribers' prefixes
(default: every topic). ``--discovery mdns`` (the default) runs ``MDNS()`` with no
``interfaces``: every interface of the namespace. ``--static-peer`` adds a ``Static``
source (with ``--discovery mdns`` too, which mixes both). ``--history N`` opens the
publishers with ``history=N`` (keep and replay the last ``N`` of each topic); the
subscribers always ask for all a publisher keeps.

Every stdout line is one JSON object, flushed at once; ``t`` is ``time.time()`` (the
lab's namespaces share the kernel clock, so times compare across hosts):

* ``{"event": "starting", "t"}`` right before ``open_node``;
* ``{"event": "ready", "name", "id", "epoch", "control_port", "addresses", "t"}`` once
  the node and every role are open;
* ``{"event": "joined"|"updated"|"left", "name", "id", "epoch", "reason", "channels",
  "t"}`` for every peer change (peers already known when the watch starts are
  reported as ``joined`` with ``"known": true``);
* ``{"event": "msg", "channel", "topic", "body", "sender", "epoch", "seq", "replayed",
  "t"}`` for every message a subscriber or puller receives (``replayed``: it came from
  a publisher's history);
* ``{"event": "request", "channel", "body", "t"}`` for every request a replier receives,
  then ``{"event": "answered", ...}`` once it replied ``{"from": NAME, "body": body}``
  (``--rep-silent``: reported, never answered);
* ``{"event": "published", "channel", "topic", "body", "t"}`` after ``--publish-on-ready``
  published (it waits for one subscriber first, then publishes ``{"t": ...}`` once);
* ``{"event": "ticked", "channel", "n", "t"}`` each time ``--publish-every S`` published
  ``{"n": n, "t": ...}`` with topic ``tick`` on every ``--pub`` channel (every ``S``
  seconds, from ready on, whether or not anyone subscribes).

Commands, one JSON object per stdin line (``tag``, if given, is echoed in the answer):

* ``{"cmd": "publish", "channel", "topic", "body"}`` -> ``{"event": "published", ...}``
* ``{"cmd": "push", "channel", "body"}`` -> ``{"event": "pushed", ...}`` (in order per
  channel; a push waits while no puller is connected)
* ``{"cmd": "request", "channel", "body", "timeout"}`` -> ``{"event": "reply", "body"}``
  or ``{"event": "error", "type": "PeerLost"|"TooSlowError"|..., "message"}``
* ``{"cmd": "gather", "channel", "body", "within", "timeout"}`` -> ``{"event":
  "gathered", "replies", "missing", "elapsed"}``: ``requester.gather(body,
  within=within)``; each answer is ``{"replier", "status", "body", "error"}`` (a
  replier's node id, ``replied``/``failed``/``missing``), ``elapsed`` the seconds the
  call took (trio's clock)
* ``{"cmd": "wait_subscribers", "channel", "n", "timeout"}`` -> ``{"event": "subscribers",
  "n"}`` (or an ``error`` event)
* ``{"cmd": "wait_pullers", "channel", "n", "timeout"}`` -> ``{"event": "pullers",
  "n"}`` (or an ``error`` event): the pusher's connections to ``n`` pullers are up
* ``{"cmd": "wait_peers", "n", "channel", "timeout"}`` -> ``{"event": "peers_ready",
  "peers"}`` (or an ``error`` event)
* ``{"cmd": "peers"}`` -> ``{"event": "peers", "peers": [names], "ids": [...]}``
* ``{"cmd": "stats"}`` -> ``{"event": "stats", ...}`` with every field of
  ``node.statistics()`` (``peers``, ``links``, ``control_received``...)
* ``{"cmd": "exit"}`` (or end of stdin) -> leaves cleanly (goodbye), prints
  ``{"event": "exited"}`` and exits 0.

Network safety: this process refuses to start (exit 2) unless it runs in a named network
namespace (``/run/netns/*``), never the root one: it is meant for ``Host.popen`` only,
where "every interface" means the lab's.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import trio

import shoal
import shoal.node._links as shoal_links
from shoal.discovery import MDNS, Peer, PeerJoined, PeerLeft, Static
from shoal.node._node import DEFAULT_HEARTBEAT, DEFAULT_PEER_TIMEOUT, Source
from shoal.patterns import Answer

log = logging.getLogger("lab_node")

Command = dict[str, Any]
T = TypeVar("T")


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout, flushed."""
    fields = {"event": event, **fields}
    fields.setdefault("t", time.time())
    sys.stdout.write(json.dumps(fields, default=repr) + "\n")
    sys.stdout.flush()


def named_namespace() -> str | None:
    """The name of the ``ip netns`` namespace this process runs in, or None (the root
    namespace, or one without a name: this runner refuses both)."""
    try:
        me = os.stat("/proc/self/ns/net")
        names = os.listdir("/run/netns")
    except OSError:
        return None
    for name in names:
        try:
            st = os.stat(os.path.join("/run/netns", name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            return name
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--name", required=True)
    p.add_argument("--discovery", choices=["mdns", "static"], default="mdns")
    p.add_argument("--static-peer", action="append", default=[], metavar="tcp://IP:PORT")
    p.add_argument("--port", type=int, default=0, help="control port (0: any)")
    p.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT)
    p.add_argument("--peer-timeout", type=float, default=DEFAULT_PEER_TIMEOUT)
    for role in ("pub", "sub", "push", "pull", "rep", "rep-silent", "req"):
        p.add_argument(f"--{role}", action="append", default=[], metavar="CH")
    p.add_argument("--link-grace", type=float, default=None,
                   help="override shoal.node._links.LINK_GRACE (seconds; a test knob)")
    p.add_argument("--topic", action="append", default=None, metavar="PREFIX")
    p.add_argument("--publish-on-ready", nargs=2, metavar=("CH", "TOPIC"))
    p.add_argument("--history", type=int, default=0, metavar="N",
                   help="the publishers keep and replay the last N of each topic")
    p.add_argument("--publish-every", type=float, default=None, metavar="S",
                   help="publish a tick on every --pub channel every S seconds")
    return p.parse_args(argv)


def peer_fields(peer: Peer) -> dict[str, Any]:
    return {
        "name": peer.name,
        "id": peer.id,
        "epoch": peer.epoch,
        "address": peer.address,
        "channels": sorted({f"{c.name}:{c.role.name.lower()}" for c in peer.channels}),
    }


def answers(got: tuple[Answer, ...]) -> list[dict[str, Any]]:
    """A gather's answers as JSON objects."""
    return [{"replier": a.replier, "status": a.status.value, "body": a.body,
             "error": a.error} for a in got]


class Runner:
    """The node's roles, and the command loop."""

    def __init__(self, args: argparse.Namespace, node: shoal.Node) -> None:
        self.args = args
        self.node = node
        self.publishers: dict[str, shoal.Publisher] = {}
        self.pushers: dict[str, trio.MemorySendChannel[Command]] = {}
        self.pusher_objects: dict[str, Any] = {}
        self.requesters: dict[str, shoal.Requester] = {}
        self.done = trio.Event()

    # -- reporting --------------------------------------------------------------------

    async def report_peers(self, watch: shoal.PeerWatch) -> None:
        async for change in watch:
            kind = ("joined" if isinstance(change, PeerJoined)
                    else "left" if isinstance(change, PeerLeft) else "updated")
            reason = change.reason if isinstance(change, PeerLeft) else None
            emit(kind, reason=reason, **peer_fields(change.peer))

    @staticmethod
    async def report_messages(channel: str, source: shoal.Subscriber | shoal.Puller) -> None:
        async for msg in source:
            emit("msg", channel=channel, topic=msg.topic, body=msg.body, sender=msg.sender,
                 epoch=msg.epoch, seq=msg.seq, replayed=msg.replayed)

    async def serve(self, channel: str, replier: shoal.Replier, answer: bool) -> None:
        async for req in replier:
            emit("request", channel=channel, body=req.body, sender=req.message.sender)
            if answer:
                await req.reply({"from": self.args.name, "body": req.body})
                emit("answered", channel=channel, body=req.body)

    async def push_loop(self, channel: str, pusher: shoal.Pusher,
                        queue: trio.MemoryReceiveChannel[Command]) -> None:
        async for cmd in queue:
            await pusher.send(cmd.get("body"))
            emit("pushed", channel=channel, body=cmd.get("body"), tag=cmd.get("tag"))

    async def publish_on_ready(self, channel: str, topic: str) -> None:
        pub = self.publishers[channel]
        await pub.wait_for_subscribers(1)
        body = {"t": time.time()}
        await pub.publish(topic, body)
        emit("published", channel=channel, topic=topic, body=body)

    async def publish_every(self, period: float) -> None:
        for n in itertools.count():
            for channel, pub in self.publishers.items():
                await pub.publish("tick", {"n": n, "t": time.time()})
                emit("ticked", channel=channel, n=n)
            await trio.sleep(period)

    # -- commands ---------------------------------------------------------------------

    async def guarded(self, cmd: Command, fn: Callable[[], Awaitable[None]]) -> None:
        """Run one command; report any failure as an ``error`` event."""
        try:
            timeout = cmd.get("timeout")
            with trio.fail_after(math.inf if timeout is None else float(timeout)):
                await fn()
        except (Exception, trio.TooSlowError) as exc:
            emit("error", cmd=cmd.get("cmd"), channel=cmd.get("channel"),
                 type=type(exc).__name__, message=str(exc), tag=cmd.get("tag"))

    @staticmethod
    def role(roles: dict[str, T], kind: str, channel: object) -> T:
        try:
            return roles[str(channel)]
        except KeyError:
            raise LookupError(f"this node has no {kind} on channel {channel!r} "
                              f"(it has {sorted(roles)})") from None

    async def command(self, cmd: Command, nursery: trio.Nursery) -> None:
        name = cmd.get("cmd")
        channel = cmd.get("channel")
        tag = cmd.get("tag")
        if name == "publish":
            pub = self.role(self.publishers, "publisher", channel)
            body = cmd.get("body")
            await pub.publish(str(cmd.get("topic", "")), body)
            emit("published", channel=channel, topic=cmd.get("topic", ""), body=body, tag=tag)
        elif name == "push":
            self.role(self.pushers, "pusher", channel).send_nowait(cmd)
        elif name == "request":
            requester = self.role(self.requesters, "requester", channel)

            async def request() -> None:
                reply = await requester.request(cmd.get("body"))
                emit("reply", channel=channel, body=reply, tag=tag)

            nursery.start_soon(self.guarded, cmd, request)
        elif name == "gather":
            requester = self.role(self.requesters, "requester", channel)

            async def gather() -> None:
                start = trio.current_time()
                got = await requester.gather(cmd.get("body"), within=float(cmd["within"]))
                elapsed = trio.current_time() - start
                emit("gathered", channel=channel, replies=answers(got.replies),
                     missing=answers(got.missing), elapsed=elapsed, tag=tag)

            nursery.start_soon(self.guarded, cmd, gather)
        elif name == "wait_subscribers":
            pub = self.role(self.publishers, "publisher", channel)
            n = int(cmd.get("n", 1))

            async def wait_subscribers() -> None:
                await pub.wait_for_subscribers(n)
                emit("subscribers", channel=channel, n=pub.subscribers, tag=tag)

            nursery.start_soon(self.guarded, cmd, wait_subscribers)
        elif name == "wait_pullers":
            pusher = self.role(self.pusher_objects, "pusher", channel)
            want = int(cmd.get("n", 1))

            async def wait_pullers() -> None:
                await pusher.wait_for_pullers(want)
                emit("pullers", channel=channel, n=pusher.pullers, tag=tag)

            nursery.start_soon(self.guarded, cmd, wait_pullers)
        elif name == "wait_peers":
            n = int(cmd.get("n", 1))

            async def wait_peers() -> None:
                found = await self.node.wait_for_peers(n, channel=channel)
                emit("peers_ready", channel=channel, peers=sorted(p.name for p in found),
                     tag=tag)

            nursery.start_soon(self.guarded, cmd, wait_peers)
        elif name == "peers":
            peers = self.node.peers()
            emit("peers", peers=sorted(p.name for p in peers),
                 ids=sorted(p.id for p in peers), tag=tag)
        elif name == "stats":
            emit("stats", tag=tag, **dataclasses.asdict(self.node.statistics()))
        elif name == "exit":
            self.done.set()
        else:
            emit("error", cmd=name, type="UnknownCommand", message=f"unknown command {cmd!r}",
                 tag=tag)

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
    if args.link_grace is not None:
        shoal_links.LINK_GRACE = args.link_grace
    sources: list[Source] = []
    if args.discovery == "mdns":
        sources.append(MDNS())
    if args.static_peer or args.discovery == "static":
        sources.append(Static(args.static_peer))
    emit("starting")
    async with shoal.open_node(args.name, discovery=sources, port=args.port,
                               heartbeat=args.heartbeat,
                               peer_timeout=args.peer_timeout) as node:
        # No checkpoint between the snapshot and the watch: nothing falls in between.
        known = node.peers()
        watch = node.watch_peers()
        for peer in known:
            emit("joined", reason=None, known=True, **peer_fields(peer))
        runner = Runner(args, node)
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
            nursery.start_soon(runner.report_peers, watch)
            pub_channels = list(dict.fromkeys(
                [*args.pub, *([args.publish_on_ready[0]] if args.publish_on_ready else [])]))
            for ch in pub_channels:
                runner.publishers[ch] = await stack.enter_async_context(
                    node.open_publisher(ch, history=args.history))
            topics = args.topic if args.topic is not None else [""]
            for ch in args.sub:
                sub = await stack.enter_async_context(node.open_subscriber(ch, topics=topics))
                nursery.start_soon(runner.report_messages, ch, sub)
            for ch in args.pull:
                puller = await stack.enter_async_context(node.open_puller(ch))
                nursery.start_soon(runner.report_messages, ch, puller)
            for ch in args.push:
                pusher = await stack.enter_async_context(node.open_pusher(ch))
                send, receive = trio.open_memory_channel[Command](math.inf)
                runner.pushers[ch] = send
                runner.pusher_objects[ch] = pusher
                nursery.start_soon(runner.push_loop, ch, pusher, receive)
            for ch, answer in [*((c, True) for c in args.rep),
                               *((c, False) for c in args.rep_silent)]:
                replier = await stack.enter_async_context(node.open_replier(ch))
                nursery.start_soon(runner.serve, ch, replier, answer)
            for ch in args.req:
                runner.requesters[ch] = await stack.enter_async_context(
                    node.open_requester(ch))
            emit("ready", name=args.name, id=node.id, epoch=node.epoch,
                 control_port=node.control_port, addresses=list(node.addresses))
            nursery.start_soon(runner.read_commands, nursery)
            if args.publish_on_ready:
                nursery.start_soon(runner.publish_on_ready, *args.publish_on_ready)
            if args.publish_every is not None:
                nursery.start_soon(runner.publish_every, args.publish_every)
            await runner.done.wait()
            nursery.cancel_scope.cancel()
    emit("exited")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if named_namespace() is None:
        print("lab_node.py: refusing to run outside a named network namespace (the root "
              "namespace, maybe); start it with netlab's Host.popen", file=sys.stderr)
        return 2
    trio.run(run, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
