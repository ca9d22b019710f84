"""``shoal peers / pub / sub / push / pull / req / reply``: talk to shoal nodes from
the shell. Each command opens a node of its own (mDNS on ``--interface``, default
the library's default; plus any ``--static`` endpoints) and works by channel name.
Data goes in and out as JSON.

``--interface`` takes interface names (``lo``, ``eth0``) as well as IPv4 addresses;
both are checked against this machine's interfaces before anything is opened, and
one that is not there ends the command with exit status 2 and one line saying which
interfaces there are. ``pub`` and ``push`` send standard input line by line as it
arrives (``shoal.cli._stdin``); ``reply`` echoes, or answers by running a command
(``--exec``, ``shoal.cli._exec``).

Exit status: 0 done; 1 a failure at run time (no peer in time, an error reply...);
2 a bad argument, or (``pub``/``push``, at the end) lines of standard input that
were skipped."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import trio

import shoal
from shoal import discovery
from shoal.cli._exec import Outcome, run_command
from shoal.cli._req import add_req_arguments, check_req_args, run_req
from shoal.cli._show import dump as _dump
from shoal.cli._show import printable as _printable
from shoal.cli._stdin import BadLines, Input, UsageError, parse_json
from shoal.discovery import MDNS, Peer, PeerJoined, PeerLeft, Static

__all__ = ["add_talk_commands", "run_talk"]

Out = Callable[[str], None]


def add_talk_commands(commands: Any) -> None:
    """Register the commands on the ``shoal`` parser's subparsers."""

    def common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
        p.add_argument("--interface", action="append", metavar="IP|NAME",
                       help="an interface to discover on, by IPv4 address or name, e.g. "
                       "192.168.1.20 or eth0 (repeatable; default: every "
                       "multicast-capable interface); lo or 127.0.0.1 stays on this host")
        p.add_argument("--static", action="append", default=[], metavar="tcp://IP:PORT",
                       help="a peer's control endpoint, where there is no multicast "
                       "(repeatable)")
        p.add_argument("--name", default=f"shoal-cli-{os.getpid()}",
                       help="this node's name (default: shoal-cli-PID)")
        p.add_argument("--port", type=int, default=0,
                       help="this node's control port, for others' --static lists "
                       "(default: any free port)")
        if data:
            p.add_argument("--json", action="store_true",
                           help="print one JSON object per line")

    def add(name: str, help: str, example: str, description: str,
            ) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=description,  # type: ignore[no-any-return]
                                   epilog=f"example: {example}")

    p = add("peers", "list the shoal nodes on the network",
            "shoal peers --once --interface 127.0.0.1",
            "Print the nodes this one discovers (name, id, addresses, channels and "
            "roles, epoch, protocol version, seconds since last heard), then keep a "
            "live table on a terminal, or print every change as it happens otherwise.")
    common(p)
    p.add_argument("--once", action="store_true", help="print a snapshot and exit")
    p.add_argument("--wait", type=float, default=2.0,
                   help="seconds to listen before the snapshot (default: 2)")
    p.add_argument("--seconds", type=float, default=None,
                   help="stop after this many seconds (default: until interrupted)")
    p.add_argument("--lines", action="store_true",
                   help="print changes as lines even on a terminal (no live table)")

    p = add("pub", "publish on a channel", "shoal pub telemetry room1/temp '{\"c\": 21.5}'",
            "Publish BODY (JSON) on TOPIC, or each line of standard input as one message "
            "(JSON) as soon as the line is complete (tail -f log | shoal pub ...). A line "
            "that is not JSON is reported on stderr with its number and skipped; the "
            "others are sent, and the exit status is then 2.")
    common(p)
    p.add_argument("channel", help="the channel to publish on")
    p.add_argument("topic", help="the topic of every message (subscribers filter on its "
                   "prefix), e.g. room1/temp")
    p.add_argument("body", nargs="?", help="the message, as JSON (default: one message per "
                   "line of stdin)")
    p.add_argument("--subscribers", type=int, default=1,
                   help="wait for this many subscribers before the first message "
                   "(default: 1)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for them (default: 10)")
    p.add_argument("--reliable", action="store_true", help="at-least-once pub/sub")
    p.add_argument("--history", type=int, default=0, metavar="N",
                   help="keep the last N messages of each topic for subscribers that join "
                   "later (N=1: a retained last value); they go with the process: see --keep")
    p.add_argument("--keep", action="store_true", help="stay up after publishing (until "
                   "interrupted), so that subscribers joining later get the --history")

    p = add("sub", "print what is published on a channel",
            "shoal sub telemetry --topic room1/ --topic 'site/*/temp' --count 10",
            "Print every message published on CHANNEL whose topic starts with a --topic "
            "prefix or matches a --topic pattern (default: every topic).")
    common(p)
    p.add_argument("channel", help="the channel to subscribe to")
    p.add_argument("--topic", action="append", metavar="PREFIX|PATTERN",
                   help="print only topics that start with PREFIX, or match PATTERN, where "
                   "a level '*' is any one level and '**' any number of levels, e.g. "
                   "'site/*/temp', 'site/**' (repeatable; default: every topic)")
    p.add_argument("--count", type=int, default=None, help="exit after N messages")
    p.add_argument("--seconds", type=float, default=None, help="exit after S seconds")
    p.add_argument("--reliable", action="store_true", help="at-least-once pub/sub")
    p.add_argument("--history", type=int, default=None, metavar="N",
                   help="from publishers with history, first the last N messages of each "
                   "topic (default: all they keep; 0: none)")

    p = add("push", "hand work items to a channel's pullers",
            "shoal push jobs '{\"n\": 1}'",
            "Send BODY (JSON) to one puller of CHANNEL, or each line of standard input as "
            "one item (JSON) as soon as the line is complete. A line that is not JSON is "
            "reported on stderr with its number and skipped; the others are sent, and "
            "the exit status is then 2.")
    common(p)
    p.add_argument("channel", help="the channel whose pullers get the items")
    p.add_argument("body", nargs="?", help="the item, as JSON (default: one item per line "
                   "of stdin)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds one item may wait for a puller to take it, and "
                   "(--reliable) the last ones for their acknowledgements (default: 10)")
    p.add_argument("--reliable", action="store_true",
                   help="at least once: exit when every item is acknowledged")

    p = add("pull", "print work items from a channel", "shoal pull jobs --count 1",
            "Take work items from every pusher of CHANNEL and print them.")
    common(p)
    p.add_argument("channel", help="the channel to take items from")
    p.add_argument("--count", type=int, default=None, help="exit after N items")
    p.add_argument("--seconds", type=float, default=None, help="exit after S seconds")
    p.add_argument("--reliable", action="store_true", help="at-least-once push/pull")

    p = add("req", "send a request and print the reply",
            "shoal req math '{\"a\": 1, \"b\": 2}' --timeout 5",
            "Send BODY (JSON) to one replier of CHANNEL and print its reply. An error "
            "reply (the replier failed) is printed on stderr, with exit status 1. With "
            "--all, send it to every replier of CHANNEL and print one line per replier: "
            "its reply, its error, or that it did not answer within --within seconds "
            "(exit status 1 if any failed or is missing).")
    common(p)
    add_req_arguments(p)

    p = add("reply", "answer requests on a channel",
            "shoal reply upper --exec 'tr a-z A-Z'  ",
            "Answer every request on CHANNEL: with its own body (--echo, the default), or "
            "with what a shell command prints (--exec CMD). CMD runs through /bin/sh for "
            "each request, with the request body as one line of JSON on its stdin; its "
            "stdout is the reply, as JSON if it parses, else as a string. A command that "
            "exits non-zero or runs past --exec-timeout is answered with an error reply "
            "(the requester sees RemoteError; shoal req exits 1) carrying the last line "
            "of its stderr, and the replier goes on serving.")
    common(p)
    p.add_argument("channel", help="the channel to answer on")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--echo", action="store_true",
                     help="answer each request with its body (the default)")
    how.add_argument("--exec", dest="exec_command", metavar="CMD",
                     help="answer each request with the output of the shell command CMD "
                     "(request JSON on its stdin)")
    p.add_argument("--exec-timeout", type=float, default=10.0, metavar="S",
                   help="with --exec: kill a command still running after S seconds and "
                   "send an error reply (default: 10)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="with --exec: run up to N commands at once (default: 1, one "
                   "request at a time)")
    p.add_argument("--count", type=int, default=None, help="exit after N requests")
    p.add_argument("--seconds", type=float, default=None, help="exit after S seconds")


@asynccontextmanager
async def _node(args: argparse.Namespace) -> AsyncIterator[shoal.Node]:
    sources: list[Any] = [MDNS(interfaces=args.interface)]
    if args.static:
        sources.append(Static(args.static, interfaces=args.interface))
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    async with shoal.open_node(args.name, discovery=sources, port=args.port) as node:
        yield node


def _peer_record(peer: Peer) -> dict[str, Any]:
    return {"name": peer.name, "id": peer.id, "epoch": peer.epoch,
            "addresses": list(peer.addresses),
            "channels": [f"{c.name}:{c.role.value}" for c in peer.channels],
            # The node only admits peers of its own protocol version (doctor reports
            # the others), so every peer listed speaks this one.
            "version": shoal.PROTOCOL_VERSION,
            "last_seen_s": round(max(0.0, trio.current_time() - peer.last_seen), 1)}


_TABLE = "{:<20} {:<12}  {:<16} {:>8} {:>2} {:>6}  {}"


def _table(peers: list[Peer]) -> list[str]:
    rows = [_TABLE.format("NAME", "ID", "ADDRESSES", "EPOCH", "V", "SEEN", "CHANNELS")]
    for peer in sorted(peers, key=lambda p: (p.name, p.id)):
        r = _peer_record(peer)
        rows.append(_TABLE.format(r["name"][:20], r["id"][:12], ",".join(r["addresses"]),
                                  f"{r['epoch']:08x}", r["version"],
                                  f"{r['last_seen_s']:.1f}s", " ".join(r["channels"]) or "-"))
    return rows


async def _live_table(node: shoal.Node, out: Out) -> None:
    """Redraw the table in place about once a second, and at once on a change (a
    terminal only)."""
    watch = node.watch_peers()
    while True:
        peers = node.peers()
        stamp = trio.current_time()
        lines = _table(peers)
        lines.append(f"{len(peers)} node(s); Ctrl-C to stop")
        # Home, then each line cleared to its end, then the rest of the screen cleared.
        out("\x1b[H" + "".join(f"{line}\x1b[K\n" for line in lines) + "\x1b[J")
        with trio.move_on_at(stamp + 1.0):
            await watch.__anext__()


async def _peers(args: argparse.Namespace, out: Out, err: Out) -> None:
    def show(kind: str, peer: Peer, reason: str | None = None) -> None:
        rec = _peer_record(peer)
        if args.json:
            out(json.dumps({"event": kind, **rec, **({"reason": reason} if reason else {})}))
        else:
            extra = f" ({reason})" if reason else ""
            out(f"{kind:<7} {rec['name']:<20} {rec['id'][:12]}  "
                f"{','.join(rec['addresses']):<16} {' '.join(rec['channels']) or '-'}"
                f"  v{rec['version']} seen {rec['last_seen_s']:.1f}s ago{extra}")

    async with _node(args) as node:
        await trio.sleep(args.wait)
        live = not (args.once or args.json or args.lines) and sys.stdout.isatty()
        if not live:
            for peer in sorted(node.peers(), key=lambda p: (p.name, p.id)):
                show("peer", peer)
        if args.once:
            return
        with trio.move_on_after(args.seconds if args.seconds is not None else float("inf")):
            if live:
                await _live_table(node, out)
            async for change in node.watch_peers():
                if isinstance(change, PeerJoined):
                    show("joined", change.peer)
                elif isinstance(change, PeerLeft):
                    show("left", change.peer, change.reason)
                else:
                    show("updated", change.peer)


async def _send_each(args: argparse.Namespace, source: Input,
                     send: Callable[[Any], Awaitable[object]],
                     before_first: Callable[[], Awaitable[object]] | None = None) -> int:
    """Send every body as soon as it is read; the number sent. ``before_first`` runs
    once a first body is there (nothing waits for peers when there is nothing to
    send). A body that cannot be encoded is skipped like a line that is not JSON."""
    sent = 0
    async with aclosing(source.bodies()) as bodies:
        async for line, body in bodies:
            if sent == 0 and before_first is not None:
                await before_first()
            try:
                with trio.fail_after(args.timeout):
                    await send(body)
            except shoal.errors.EncodeError as exc:
                if line is None:
                    raise UsageError(f"BODY cannot be sent: {exc}") from None
                source.skip(line, f"cannot be sent ({exc})")
                continue
            sent += 1
    return sent


async def _pub(args: argparse.Namespace, out: Out, err: Out) -> None:
    source = Input(args.body, lambda line: err(f"shoal pub: {line}"))
    async with _node(args) as node:
        opener = (node.open_publisher(args.channel, reliable=True, history=args.history)
                  if args.reliable
                  else node.open_publisher(args.channel, history=args.history))
        async with opener as pub:
            async def subscribers() -> None:
                with trio.fail_after(args.timeout):
                    await pub.wait_for_subscribers(args.subscribers)

            sent = await _send_each(args, source, lambda body: pub.publish(args.topic, body),
                                    subscribers)
            if sent and isinstance(pub, shoal.patterns.ReliablePublisher):
                with trio.fail_after(args.timeout):
                    await pub.wait_acked()
            elif sent:
                await trio.sleep(0.2)  # best effort: let libzmq write them out
            if args.keep:
                await trio.sleep_forever()  # serving the history to whoever joins
            elif args.history:
                err("shoal pub: the history ends with this process (--keep keeps it up)")
    if args.json:
        out(json.dumps({"published": sent, "skipped": len(source.skipped),
                        "channel": args.channel}))
    source.check()


async def _receive_loop(args: argparse.Namespace, receiver: Any,
                        show: Callable[[Any], None]) -> None:
    n = 0
    with trio.move_on_after(args.seconds if args.seconds is not None else float("inf")):
        async for item in receiver:
            show(item)
            n += 1
            if args.count is not None and n >= args.count:
                break
    if isinstance(receiver, shoal.patterns.ReliablePuller):
        receiver.mark_done()  # what was printed is done


async def _sub(args: argparse.Namespace, out: Out, err: Out) -> None:
    topics = args.topic or [""]

    def show(msg: shoal.Message) -> None:
        if args.json:
            out(json.dumps({"topic": msg.topic, "body": _printable(msg.body),
                            "sender": msg.sender, "seq": msg.seq, "id": msg.id,
                            "replayed": msg.replayed},
                           ensure_ascii=False, default=repr))
        else:
            out(f"{msg.topic} {_dump(msg.body)}")

    async with _node(args) as node:
        opener = (node.open_subscriber(args.channel, topics=topics, reliable=True,
                                       history=args.history)
                  if args.reliable else node.open_subscriber(args.channel, topics=topics,
                                                             history=args.history))
        async with opener as sub:
            await _receive_loop(args, sub, show)


async def _push(args: argparse.Namespace, out: Out, err: Out) -> None:
    source = Input(args.body, lambda line: err(f"shoal push: {line}"))
    async with _node(args) as node:
        if args.reliable:
            async with node.open_pusher(args.channel, reliable=True) as rpush:
                sent = await _send_each(args, source, rpush.send)
                with trio.fail_after(args.timeout):
                    await rpush.wait_acked()
        else:
            async with node.open_pusher(args.channel) as push:
                sent = await _send_each(args, source, push.send)
                if sent:
                    await trio.sleep(0.2)  # best effort: let libzmq write them out
    if args.json:
        out(json.dumps({"pushed": sent, "skipped": len(source.skipped),
                        "channel": args.channel}))
    source.check()


async def _pull(args: argparse.Namespace, out: Out, err: Out) -> None:
    def show(msg: shoal.Message) -> None:
        if args.json:
            out(json.dumps({"body": _printable(msg.body), "id": msg.id},
                           ensure_ascii=False, default=repr))
        else:
            out(_dump(msg.body))

    async with _node(args) as node:
        opener = (node.open_puller(args.channel, reliable=True) if args.reliable
                  else node.open_puller(args.channel))
        async with opener as pull:
            await _receive_loop(args, pull, show)


async def _req(args: argparse.Namespace, out: Out, err: Out) -> None:
    body = parse_json(args.body, "BODY")
    check_req_args(args)
    async with _node(args) as node, node.open_requester(args.channel) as client:
        await run_req(args, body, node, client, out)


async def _answer(args: argparse.Namespace, req: shoal.Request, err: Out) -> None:
    """Answer one request: its own body, or what the --exec command made of it."""
    if args.exec_command is None:
        await req.reply(req.body)
        return
    outcome: Outcome = await run_command(args.exec_command, _dump(req.body),
                                         args.exec_timeout, err)
    ok, value = outcome
    if ok:
        try:
            await req.reply(value)
            return
        except shoal.errors.EncodeError as exc:
            ok, value = False, f"the command's output cannot be sent as a reply: {exc}"
    err(f"shoal reply: request {req.id}: {value}")
    await req.fail(value)


async def _reply(args: argparse.Namespace, out: Out, err: Out) -> None:
    def show(req: shoal.Request) -> None:
        if args.json:
            out(json.dumps({"request": _printable(req.body), "id": req.id},
                           ensure_ascii=False, default=repr))
        else:
            out(f"request {_dump(req.body)}")

    free = trio.Semaphore(args.concurrency)

    async def answer(req: shoal.Request) -> None:
        try:
            await _answer(args, req, err)
        except (shoal.errors.ShoalError, OSError) as exc:
            # One request that cannot be answered (the shell cannot start, the
            # reply cannot leave) does not stop the others.
            err(f"shoal reply: request {req.id}: {type(exc).__name__}: {exc}")
        finally:
            free.release()

    async with _node(args) as node, node.open_replier(args.channel) as rep:
        n = 0
        # Requests being answered when --seconds or --count ends the loop are finished
        # (each within --exec-timeout) before the nursery closes.
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(args.seconds if args.seconds is not None
                                    else float("inf")):
                async for req in rep:
                    show(req)
                    await free.acquire()
                    nursery.start_soon(answer, req)
                    n += 1
                    if args.count is not None and n >= args.count:
                        break
        await trio.sleep(0.2)  # the last reply leaves before the node does


_COMMANDS = {"peers": _peers, "pub": _pub, "sub": _sub, "push": _push, "pull": _pull,
             "req": _req, "reply": _reply}


def _interface_args(given: list[str]) -> list[str]:
    """``--interface`` values as IPv4 addresses of this machine (names resolved), or a
    UsageError naming the interfaces there are."""
    try:
        addresses = discovery.resolve_interfaces(given)
    except shoal.errors.LocalProtocolError as exc:
        raise UsageError(f"--interface {exc}") from None
    unknown = discovery.unknown_addresses(addresses)
    if unknown:
        have = "; ".join(f"{i.name} {', '.join(i.ipv4)}" for i in discovery.interfaces() if i.ipv4)
        raise UsageError(f"--interface {unknown[0]} is not an address of this machine "
                         f"(interfaces: {have or 'none with IPv4'})")
    return addresses


def run_talk(args: argparse.Namespace, out: Out, err: Out) -> int:
    """Run one of the commands; the exit status."""
    for name in ("seconds", "timeout", "wait", "exec_timeout", "within"):
        value = getattr(args, name, None)
        if value is not None and not 0 < value <= 86400:
            flag = name.replace("_", "-")
            err(f"shoal {args.command}: --{flag} must be between 0 and 86400 seconds")
            return 2
    for name in ("count", "subscribers", "concurrency"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            err(f"shoal {args.command}: --{name} must be at least 1")
            return 2
    if getattr(args, "retries", 0) < 0:
        err(f"shoal {args.command}: --retries must be at least 0")
        return 2
    try:
        if args.interface:
            args.interface = _interface_args(args.interface)
        trio.run(_COMMANDS[args.command], args, out, err)
    except (UsageError, BadLines, shoal.errors.InvalidTopicPattern) as exc:
        err(f"shoal {args.command}: {exc}")
        return 2
    except trio.TooSlowError:
        err(f"shoal {args.command}: timed out (no peer on channel "
            f"{getattr(args, 'channel', '?')!r}, or no answer in time; see shoal peers)")
        return 1
    except KeyboardInterrupt:
        return 130
    except shoal.errors.ShoalError as exc:
        err(f"shoal {args.command}: {type(exc).__name__}: {exc}")
        return 1
    return 0
