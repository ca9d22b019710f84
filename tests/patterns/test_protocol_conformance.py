"""docs/PROTOCOL.md is enough to be a shoal peer: raw ZeroMQ sockets, driven from the
spec alone, talk to real shoal peers over loopback.

Every constant here (kinds, flags, the header layout, the special sequence numbers,
control message and role names, the acknowledgement layouts) is read from the tables
in docs/PROTOCOL.md, never imported from ``shoal._core``: if the page and the code
drift apart, these tests fail. Frames are built and taken apart byte by byte with
``struct`` and ``msgpack``; shoal is used only through its public API, as the peer on
the other end.

Network safety: every socket binds or connects on 127.0.0.1; the node has no
discovery source. Every test runs under ``anyio.fail_after``.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
import zmq

import shoal
from shoal.discovery import MDNS, Advertisement
from shoal.patterns import ReliablePusher
from support.waiting import eventually

pytestmark = pytest.mark.anyio

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
LOOPBACK = "tcp://127.0.0.1:*"
Ctx = zmq.Context[zmq.Socket[bytes]]
Sock = zmq.Socket[bytes]


# -- the spec's tables -------------------------------------------------------------------------


def table(heading: str) -> list[dict[str, str]]:
    """The first table after the ``### heading`` line, one dict per row, keyed by the
    column titles; cells stripped of spaces and backticks."""
    lines = DOC.splitlines()
    at = lines.index(f"### {heading}")
    while not lines[at].startswith("|"):
        at += 1
    rows = []
    while at < len(lines) and lines[at].startswith("|"):
        rows.append([c.strip().strip("`") for c in lines[at].strip().strip("|").split("|")])
        at += 1
    titles, rule, *body = rows
    assert set("".join(rule)) <= set("-: "), f"{heading}: no title row"
    return [dict(zip(titles, row, strict=True)) for row in body]


CONST = {r["name"]: int(r["value"]) for r in table("Protocol constants")}
VERSION = CONST["VERSION"]
HEADER_SIZE = CONST["HEADER_SIZE"]
MAX_TOPIC = CONST["MAX_TOPIC"]
SPLIT_AT = CONST["SPLIT_AT"]
START, RESUME = CONST["START"], CONST["RESUME"]
KIND = {r["kind"]: int(r["value"]) for r in table("Kinds")}
FLAG = {r["flag"]: int(r["bit"], 16) for r in table("Flags") if r["flag"] != "-"}
ADVISORY = [int(r["bit"], 16) for r in table("Flags") if r["range"] == "advisory"]
MUST_UNDERSTAND = [int(r["bit"], 16) for r in table("Flags") if r["range"] == "must-understand"]
_CODES = {"u8": "B", "u32": "I", "u64": "Q"}
HEADER_ROWS = table("Header fields")
HEADER = struct.Struct("<" + "".join(
    f"{r['size']}s" if r["type"] == "bytes" else _CODES[r["type"]] for r in HEADER_ROWS))
FIELDS = [r["field"] for r in HEADER_ROWS]
U32 = struct.Struct("<I")
CONTROL = {r["name"] for r in table("Control messages")}
ROLES = {r["role"]: r["name"] for r in table("Roles")}
PUSH_ACK = [r["field"] for r in table("Reliable push/pull acknowledgement")]
PUB_ACK = [r["field"] for r in table("Reliable publish/subscribe acknowledgement")]


def test_the_spec_tables_hang_together() -> None:
    """The header layout is contiguous and as long as HEADER_SIZE; flags cover the byte
    once each; every kind has a distinct value."""
    offset = 0
    for row in HEADER_ROWS:
        assert int(row["offset"]) == offset, row
        offset += int(row["size"])
    assert offset == HEADER.size == HEADER_SIZE
    bits = [int(r["bit"], 16) for r in table("Flags")]
    assert sorted(bits) == [1 << i for i in range(8)]
    assert len(set(KIND.values())) == len(KIND)
    assert FIELDS[:4] == ["version", "kind", "flags", "reserved"]
    assert [r["position"] for r in table("State fields")] == [str(i) for i in range(9)]


# -- frames built and read from the spec ----------------------------------------------------------


@dataclass
class Envelope:
    """One message, as the spec's fields name it."""

    kind: int
    topic: str = ""
    body: Any = None
    raw: bool = False
    headers: dict[str, Any] | None = None
    sender: bytes = b"\x5a" * 16
    epoch: int = 1
    stream: int = 1
    seq: int = 0
    timestamp_ns: int = 0
    correlation: int = 0
    flags: int = 0
    """Flag bits, besides RAW/HEADERS/SPLIT (which follow from the fields)."""
    version: int = VERSION
    reserved: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def frames(self) -> list[bytes]:
        """The ZeroMQ frames of this message: one, or two with a split body."""
        body = self.body if self.raw else msgpack.packb(self.body, use_bin_type=True)
        flags = self.flags | (FLAG["RAW"] if self.raw else 0)
        extra = b""
        if self.headers is not None:
            packed = msgpack.packb(self.headers, use_bin_type=True)
            flags |= FLAG["HEADERS"]
            extra = U32.pack(len(packed)) + packed
        split = len(body) >= SPLIT_AT
        if split:
            flags |= FLAG["SPLIT"]
        values = {"version": self.version, "kind": self.kind, "flags": flags,
                  "reserved": self.reserved, "sender": self.sender, "epoch": self.epoch,
                  "stream": self.stream, "seq": self.seq, "timestamp_ns": self.timestamp_ns,
                  "correlation": self.correlation}
        head = self.topic.encode() + b"\0" + HEADER.pack(*(values[f] for f in FIELDS)) + extra
        return [head, body] if split else [head + body]


def parse(frames: list[bytes]) -> Envelope:
    """Read a message byte by byte as the spec lays it out (strictly: any surprise
    fails the test)."""
    first = frames[0]
    nul = first.index(b"\0")
    assert nul <= MAX_TOPIC
    values = dict(zip(FIELDS, HEADER.unpack_from(first, nul + 1), strict=True))
    flags = values["flags"]
    assert values["version"] == VERSION
    assert values["reserved"] == 0
    assert flags & ~(FLAG["RAW"] | FLAG["HEADERS"] | FLAG["SPLIT"] | FLAG["REPLAYED"]) == 0
    at = nul + 1 + HEADER.size
    headers = None
    if flags & FLAG["HEADERS"]:
        (length,) = U32.unpack_from(first, at)
        headers = msgpack.unpackb(first[at + 4:at + 4 + length], raw=False)
        assert isinstance(headers, dict)
        at += 4 + length
    if flags & FLAG["SPLIT"]:
        assert len(frames) == 2
        assert at == len(first)
        body_bytes = frames[1]
    else:
        assert len(frames) == 1
        body_bytes = first[at:]
    raw = bool(flags & FLAG["RAW"])
    body = body_bytes if raw else msgpack.unpackb(body_bytes, raw=False)
    return Envelope(kind=values["kind"], topic=first[:nul].decode(), body=body, raw=raw,
                    headers=headers, sender=values["sender"], epoch=values["epoch"],
                    stream=values["stream"], seq=values["seq"],
                    timestamp_ns=values["timestamp_ns"], correlation=values["correlation"],
                    flags=flags)


def test_the_worked_example_is_what_the_tables_build() -> None:
    example = re.search(r"A worked example:.*?```\n(.*?)```", DOC, re.S)
    assert example is not None
    pairs = []
    for line in example.group(1).splitlines():
        for token in line.split():  # the bytes lead each line, a comment follows
            if not re.fullmatch(r"[0-9a-f]{2}", token):
                break
            pairs.append(token)
    expected = bytes.fromhex("".join(pairs))
    built = Envelope(KIND["PUBLISH"], "t", 1, sender=bytes(range(16)), epoch=7, stream=3,
                     seq=42, timestamp_ns=1_700_000_000_000_000_000).frames()
    assert built == [expected]
    said = re.search(r"is (\d+) bytes:", DOC)
    assert said is not None
    assert int(said.group(1)) == len(expected)


# -- raw sockets in the event loop --------------------------------------------------------------


@asynccontextmanager
async def raw_context() -> AsyncIterator[Ctx]:
    ctx: Ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def raw_socket(ctx: Ctx, kind: int, *, bind: bool = False, connect: str | None = None,
               options: tuple[tuple[int, int | bytes], ...] = ()) -> Sock:
    sock = ctx.socket(kind)
    sock.linger = 0
    for option, value in options:
        sock.setsockopt(option, value)
    if bind:
        sock.bind("tcp://127.0.0.1:*")
    if connect is not None:
        sock.connect(connect)
    return sock


def endpoint_of(sock: Sock) -> str:
    return bytes(sock.getsockopt(zmq.LAST_ENDPOINT)).decode()


def port_of(sock: Sock) -> int:
    return int(endpoint_of(sock).rsplit(":", 1)[1])


async def receive(sock: Sock) -> list[bytes]:
    """One message; the caller's ``fail_after`` bounds the wait. The FD is
    edge-triggered: EVENTS is read before every wait."""
    while not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        await anyio.wait_readable(sock.FD)
    return sock.recv_multipart(zmq.NOBLOCK)


async def send_routed(sock: Sock, frames: list[bytes]) -> None:
    """Send on a ROUTER with ROUTER_MANDATORY, retrying while the peer's connection is
    not up yet (EHOSTUNREACH)."""
    while True:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
            return
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
        await anyio.sleep(0.01)


# -- publish/subscribe -------------------------------------------------------------------------


async def test_a_raw_publisher_reaches_a_shoal_subscriber() -> None:
    """A raw XPUB waits for the subscriber's marker (the spec's way to know its
    subscriptions are in place), then publishes a msgpack body with headers, a raw
    body and a split body; topic, body, headers and every header field come through."""
    sender = os.urandom(16)
    sent = [
        Envelope(KIND["PUBLISH"], "room/1", {"c": 21.5}, headers={"unit": "C"},
                 sender=sender, epoch=9, stream=4, seq=0, timestamp_ns=123, correlation=0),
        Envelope(KIND["PUBLISH"], "other/1", "filtered out", sender=sender, epoch=9,
                 stream=4),
        Envelope(KIND["PUBLISH"], "room/1", b"\x00raw", raw=True, sender=sender, epoch=9,
                 stream=4, seq=1, timestamp_ns=456),
        Envelope(KIND["PUBLISH"], "room/2", b"\x01" * SPLIT_AT, raw=True, sender=sender,
                 epoch=9, stream=4, seq=0, timestamp_ns=789),
    ]
    with anyio.fail_after(10):
        async with raw_context() as ctx:
            xpub = raw_socket(ctx, zmq.XPUB, bind=True)
            async with shoal.open_subscriber(connect=endpoint_of(xpub),
                                             topics=["room/"]) as sub:
                while True:  # subscriptions arrive as 0x01 + prefix; the marker is last
                    (note,) = await receive(xpub)
                    if note[:2] == b"\x01\xff" and len(note) == 18:
                        break
                for env in sent:
                    xpub.send_multipart(env.frames())
                got = [await sub.receive() for _ in range(3)]
                stats = sub.statistics()
    wanted = [sent[0], sent[2], sent[3]]
    assert [(m.topic, m.body, dict(m.headers)) for m in got] == [
        (e.topic, e.body, e.headers or {}) for e in wanted]
    assert [(m.sender, m.epoch, m.stream, m.seq, m.timestamp_ns, m.correlation)
            for m in got] == [(sender.hex(), 9, 4, e.seq, e.timestamp_ns, 0) for e in wanted]
    assert [int(m.kind) for m in got] == [KIND["PUBLISH"]] * 3
    assert (stats.gaps, stats.malformed) == (0, 0)


async def test_a_raw_subscriber_reads_a_shoal_publisher_byte_by_byte() -> None:
    """A raw SUB with the spec's marker is counted by ``wait_for_subscribers``; what the
    publisher sends parses field by field, with sequence numbers per topic."""
    ident = shoal.Identity(os.urandom(16), 0xDEADBEEF)
    big = os.urandom(SPLIT_AT)
    with anyio.fail_after(10):
        async with raw_context() as ctx, shoal.open_publisher(bind=LOOPBACK,
                                                                identity=ident) as pub:
            sub = raw_socket(ctx, zmq.SUB, connect=pub.endpoints[0],
                             options=((zmq.SUBSCRIBE, b"room/"),
                                      (zmq.SUBSCRIBE, b"\xff" + os.urandom(16))))
            await pub.wait_for_subscribers(1)
            before = time.time_ns()
            await pub.publish("room/1", {"c": 21.5}, headers={"unit": "C"})
            await pub.publish("other", 1)
            await pub.publish("room/2", b"raw")
            await pub.publish("room/1", big)
            got = [parse(await receive(sub)) for _ in range(3)]
            after = time.time_ns()
    assert [(e.topic, e.seq, e.body, e.raw, e.headers) for e in got] == [
        ("room/1", 0, {"c": 21.5}, False, {"unit": "C"}),
        ("room/2", 0, b"raw", True, None),
        ("room/1", 1, big, True, None),
    ]
    assert [e.flags for e in got] == [FLAG["HEADERS"], FLAG["RAW"],
                                      FLAG["RAW"] | FLAG["SPLIT"]]
    assert {(e.kind, e.sender, e.epoch, e.correlation) for e in got} == {
        (KIND["PUBLISH"], ident.sender, ident.epoch, 0)}
    assert len({e.stream for e in got}) == 1
    assert all(before <= e.timestamp_ns <= after for e in got)  # ns since 1970, its clock


# -- push/pull, and what a receiver does with what it does not understand -----------------------


async def test_a_raw_pusher_feeds_a_shoal_puller_that_judges_unknown_bits_by_their_range(
) -> None:
    good = partial(Envelope, KIND["PUSH"], sender=os.urandom(16), epoch=3, stream=8)
    cases = [
        (good(body={"job": 0}, seq=0), None),
        (good(body=b"hinted", raw=True, seq=1, flags=ADVISORY[0]), None),
        (good(body={"job": 2}, seq=2, flags=ADVISORY[-1]), None),
        (good(body={"job": 3}, seq=3, flags=MUST_UNDERSTAND[0]), "unknown-flags"),
        (good(body=b"x", raw=True, seq=4, flags=MUST_UNDERSTAND[-1]), "unknown-flags"),
        (good(body={"job": 5}, seq=5, reserved=0x7F), None),
        (good(body=1, seq=6, version=VERSION + 1), "unsupported-version"),
        (Envelope(max(KIND.values()) + 1, body=1), "unknown-kind"),
        (Envelope(KIND["REQUEST"], body=1, correlation=1), "unexpected-kind"),
        (good(body=b"\x02" * SPLIT_AT, raw=True, seq=7), None),
        (good(body="fence", seq=8), None),
    ]
    with anyio.fail_after(10):
        async with raw_context() as ctx, shoal.open_puller(bind=LOOPBACK) as pull:
            push = raw_socket(ctx, zmq.PUSH, connect=pull.endpoints[0])
            for env, _ in cases:
                push.send_multipart(env.frames())
            got: list[shoal.Message] = []
            while not got or got[-1].body != "fence":
                got.append(await pull.receive())
            stats = pull.statistics()
    delivered = [env for env, reason in cases if reason is None]
    assert [(m.seq, m.body) for m in got] == [(e.seq, e.body) for e in delivered]
    assert stats.malformed_by_reason == {
        "unknown-flags": 2, "unsupported-version": 1, "unknown-kind": 1, "unexpected-kind": 1}


# -- request/reply --------------------------------------------------------------------------------


def calculator(calls: list[Any], req: shoal.Request) -> Any:
    calls.append(req.body)
    if req.body == "fail":
        raise ValueError("refused on purpose")
    if isinstance(req.body, bytes):
        return req.body.upper()
    return req.body["a"] + req.body["b"]


@pytest.mark.parametrize("socket_type", ["DEALER", "REQ"])
async def test_a_raw_requester_calls_a_shoal_replier(socket_type: str) -> None:
    """Requests with a topic (ignored) and an id; the answers have an empty topic, the
    request's id, REPLY or ERROR (a msgpack str); a repeat, byte for byte, is answered
    from the cache without running the handler again."""
    calls: list[Any] = []
    me = os.urandom(16)
    request = partial(Envelope, KIND["REQUEST"], sender=me, epoch=2, stream=5)
    with anyio.fail_after(10):
        async with raw_context() as ctx, anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(shoal.serve_replier, partial(calculator, calls),
                                              bind=LOOPBACK))
            sock = raw_socket(ctx, getattr(zmq, socket_type), connect=rep.endpoints[0])

            async def call(env: Envelope) -> Envelope:
                sock.send_multipart(env.frames())
                return parse(await receive(sock))

            first = request(topic="ignored/topic", body={"a": 1, "b": 2}, seq=77,
                            correlation=77, timestamp_ns=time.time_ns())
            answer = await call(first)
            again = await call(first)
            error = await call(request(body="fail", seq=78, correlation=78))
            raw = await call(request(body=b"shout", raw=True, seq=79, correlation=79))
            big = await call(request(body=b"b" * SPLIT_AT, raw=True, seq=80, correlation=80))
            nursery.cancel_scope.cancel()
    assert (answer.kind, answer.topic, answer.correlation, answer.body) == (
        KIND["REPLY"], "", 77, 3)
    assert (again.kind, again.body, again.seq) == (KIND["REPLY"], 3, answer.seq)
    assert (error.kind, error.topic, error.correlation, error.raw) == (
        KIND["ERROR"], "", 78, False)
    assert isinstance(error.body, str)
    assert "refused on purpose" in error.body
    assert (raw.kind, raw.body, raw.raw) == (KIND["REPLY"], b"SHOUT", True)
    assert (big.correlation, big.body, bool(big.flags & FLAG["SPLIT"])) == (
        80, b"B" * SPLIT_AT, True)
    assert calls == [{"a": 1, "b": 2}, "fail", b"shout", b"b" * SPLIT_AT]


# -- the control protocol ----------------------------------------------------------------------


def control(*fields: Any) -> bytes:
    return bytes(msgpack.packb([VERSION, *fields], use_bin_type=True))


async def test_a_raw_program_joins_as_a_node_and_uses_its_channel() -> None:
    """Bind a ROUTER, introduce ourselves with a State on the node's control socket;
    the node answers with its own State on a link to our ROUTER, whose catalogue
    names the replier's port; a raw DEALER calls it there. Then the clock question,
    and a goodbye that removes us from the node's peers."""
    assert {"state", "bye", "clock?", "clock"} <= CONTROL
    me, my_epoch = os.urandom(16), 4242
    with anyio.fail_after(15):
        async with (
            raw_context() as ctx,
            shoal.open_node("conformance", interfaces=["127.0.0.1"]) as node,
            node.open_replier("calc") as rep,
            anyio.create_task_group() as nursery,
        ):
            async def serve() -> None:
                async for req in rep:
                    await req.reply(req.body * 2)

            nursery.start_soon(serve)
            mine = raw_socket(ctx, zmq.ROUTER, bind=True)
            link = raw_socket(ctx, zmq.DEALER, connect=node.control_endpoint)
            link.send(control("state", me, my_epoch, "raw-peer", ["127.0.0.1"],
                              port_of(mine), 1, []))
            while True:  # the node's States (introduction, then heartbeats)
                _route, frame = await receive(mine)
                state = msgpack.unpackb(frame, raw=False)
                channels = state[8]
                if [ch for ch in channels if ch[0] == "calc"]:
                    break
            await node.wait_for_peers(1)
            peers = node.peers()

            assert state[:2] == [VERSION, "state"]
            assert (state[2], state[3], state[4]) == (node.identity.sender, node.epoch,
                                                      "conformance")
            assert state[5] == ["127.0.0.1"]
            assert state[6] == node.control_port
            [(_name, role, port)] = [ch for ch in channels if ch[0] == "calc"]
            assert role == ROLES["replier"]
            caller = raw_socket(ctx, zmq.DEALER, connect=f"tcp://127.0.0.1:{port}")
            caller.send_multipart(Envelope(KIND["REQUEST"], body=21, sender=me,
                                           epoch=my_epoch, correlation=1).frames())
            answer = parse(await receive(caller))

            link.send(control("clock?", 99))
            clock = msgpack.unpackb((await receive(link))[0], raw=False)

            link.send(control("bye", me, my_epoch))
            await eventually(lambda: not node.peers())
            nursery.cancel_scope.cancel()
    assert [(p.name, p.id, p.epoch) for p in peers] == [("raw-peer", me.hex(), my_epoch)]
    assert (answer.kind, answer.correlation, answer.body) == (KIND["REPLY"], 1, 42)
    assert clock[:3] == [VERSION, "clock", 99]
    assert isinstance(clock[3], int)


# -- reliable acknowledgements --------------------------------------------------------------------


def ack_tag(env: Envelope) -> int:
    """The spec's tag of the pusher stream an acknowledgement is for."""
    return (env.epoch << 32) | env.stream


@asynccontextmanager
async def raw_puller(ctx: Ctx, puller_binds: bool
                     ) -> AsyncIterator[tuple[Sock, ReliablePusher]]:
    """A raw ROUTER puller and a shoal reliable pusher, one of them bound. A puller
    that connects says hello (one empty frame) so that the bound pusher learns it."""
    if puller_binds:
        sock = raw_socket(ctx, zmq.ROUTER, bind=True)
        async with shoal.open_pusher(reliable=True, connect=endpoint_of(sock)) as push:
            yield sock, push
        return
    async with shoal.open_pusher(reliable=True, bind=LOOPBACK) as push:
        sock = raw_socket(ctx, zmq.ROUTER, options=(
            (zmq.ROUTING_ID, b"Q" + os.urandom(15)), (zmq.ROUTER_MANDATORY, 1),
            (zmq.CONNECT_ROUTING_ID, b"pusher")), connect=push.endpoints[0])
        await send_routed(sock, [b"pusher", b""])
        yield sock, push


@pytest.mark.parametrize("puller_binds", [True, False], ids=["puller-binds", "pusher-binds"])
async def test_a_raw_reliable_puller_acknowledges_a_shoal_reliable_pusher(
    puller_binds: bool,
) -> None:
    """Items come as PUSH envelopes whose correlation is the pusher's floor; an ACK
    [received, done], tagged with the pusher's stream, takes them out of its window;
    one tagged for another stream is ignored."""
    assert PUSH_ACK == ["received", "done"]
    me = os.urandom(16)
    with anyio.fail_after(15):
        async with raw_context() as ctx, raw_puller(ctx, puller_binds) as (puller, push):
            acks = 0

            async def take(seq: int) -> tuple[bytes, Envelope]:
                while True:  # skip retransmissions of earlier items
                    route, *frames = await receive(puller)
                    env = parse(frames)
                    if env.seq == seq:
                        return route, env

            async def ack(route: bytes, received: list[int], done: list[int],
                          tag: int) -> None:
                nonlocal acks
                await send_routed(puller, [route, *Envelope(
                    KIND["ACK"], body=[received, done], sender=me, seq=acks,
                    correlation=tag).frames()])
                acks += 1

            await push.send({"job": 0})
            route, item0 = await take(0)
            await ack(route, [0], [0], ack_tag(item0))
            await push.wait_acked()
            await push.send(b"job 1")
            route, item1 = await take(1)
            await ack(route, [1], [1], ack_tag(item1) ^ 1)  # another stream's: ignored
            await ack(route, [1], [], ack_tag(item1))
            with anyio.move_on_after(0.3) as waiting:  # both read, item 1 still not done
                await push.wait_acked()
            still_held = push.statistics().in_flight
            await ack(route, [], [1], ack_tag(item1))
            await push.wait_acked()
            stats = push.statistics()
    assert (item0.kind, item0.topic, item0.body, item0.correlation) == (
        KIND["PUSH"], "", {"job": 0}, 0)
    assert (item1.body, item1.correlation) == (b"job 1", 1)  # the floor: item 0 is done
    assert waiting.cancelled_caught
    assert still_held == 1
    assert (stats.acked, stats.in_flight, stats.malformed) == (2, 0, 0)


async def test_a_raw_reliable_subscriber_acknowledges_a_shoal_reliable_publisher() -> None:
    """A ROUTER introduces itself with an ACK [prefixes, epoch, stream, acked, bye];
    publications chain by prev (START first); acknowledging the last one drains the
    publisher's window; a bye makes it forget the subscriber."""
    assert PUB_ACK == ["prefixes", "epoch", "stream", "acked", "bye", "history"]
    me = os.urandom(16)
    route = b"publisher-1"
    with anyio.fail_after(15):
        async with raw_context() as ctx, shoal.open_publisher(reliable=True,
                                                             bind=LOOPBACK) as pub:
            sub = raw_socket(ctx, zmq.ROUTER, options=(
                (zmq.ROUTING_ID, b"S" + os.urandom(15)), (zmq.ROUTER_MANDATORY, 1),
                (zmq.CONNECT_ROUTING_ID, route)), connect=pub.endpoints[0])
            acks = 0

            async def ack(epoch: int, stream: int, acked: int, bye: bool = False) -> None:
                nonlocal acks
                await send_routed(sub, [route, *Envelope(
                    KIND["ACK"], body=[["room/"], epoch, stream, acked, bye], sender=me,
                    seq=acks).frames()])
                acks += 1

            await ack(-1, -1, -1)
            await pub.wait_for_subscribers(1)
            await pub.publish("room/1", b"first")
            await pub.publish("other", b"not for us")
            await pub.publish("room/2", {"second": True})
            got: dict[int, Envelope] = {}
            while len(got) < 2:  # retransmissions may repeat one
                from_route, *frames = await receive(sub)
                assert from_route == route
                env = parse(frames)
                got[env.seq] = env
            first, second = (got[s] for s in sorted(got))
            await ack(first.epoch, first.stream, second.seq)
            await pub.wait_acked()
            await ack(first.epoch, first.stream, second.seq, bye=True)
            await eventually(lambda: pub.subscribers == 0)
    assert (first.kind, first.topic, first.body, first.seq, first.correlation) == (
        KIND["PUBLISH"], "room/1", b"first", 0, START)
    assert (second.topic, second.body, second.seq, second.correlation) == (
        "room/2", {"second": True}, 2, 0)  # one counter for all topics; prev is 0
    assert RESUME == START - 1


async def test_a_raw_reliable_subscriber_that_asks_for_history_gets_it_renumbered() -> None:
    """An ACK with a sixth element, ``history``, opening a book: the kept publications
    of its prefixes come first, flagged ``REPLAYED``, numbered next in the stream and
    chained from ``START``; the live one follows the replay in the chain."""
    me = os.urandom(16)
    route = b"publisher-1"
    with anyio.fail_after(15):
        async with raw_context() as ctx, shoal.open_publisher(
                reliable=True, bind=LOOPBACK, history=1) as pub:
            for topic, body in (("room/1", b"old"), ("room/1", b"last"), ("other", b"x")):
                await pub.publish(topic, body)
            sub = raw_socket(ctx, zmq.ROUTER, options=(
                (zmq.ROUTING_ID, b"S" + os.urandom(15)), (zmq.ROUTER_MANDATORY, 1),
                (zmq.CONNECT_ROUTING_ID, route)), connect=pub.endpoints[0])
            await send_routed(sub, [route, *Envelope(
                KIND["ACK"], body=[["room/"], -1, -1, -1, False, 1], sender=me).frames()])
            await pub.wait_for_subscribers(1)
            await pub.publish("room/2", b"live")
            got: dict[int, Envelope] = {}
            while len(got) < 2:
                _, *frames = await receive(sub)
                env = parse(frames)
                got[env.seq] = env
    replayed, live = (got[s] for s in sorted(got))
    assert (replayed.topic, replayed.body, replayed.seq, replayed.correlation) == (
        "room/1", b"last", 3, START)
    assert replayed.flags & FLAG["REPLAYED"]
    assert (live.topic, live.seq, live.correlation) == ("room/2", 4, 3)
    assert not live.flags & FLAG["REPLAYED"]


# -- DNS-SD --------------------------------------------------------------------------------------


def test_the_dns_sd_advertisement_is_what_the_spec_says() -> None:
    """The records a node would register (built, not sent: no multicast here)."""
    records = {r["record"]: r["value"] for r in table("DNS-SD records")}
    keys = {r["key"] for r in table("TXT keys")}
    node = Advertisement(name="sensor-7", node_id=os.urandom(16), epoch=31337,
                         addresses=("127.0.0.1",), control_port=7700)
    info = MDNS(interfaces=["127.0.0.1"])._info(node)
    service = records["service type"].strip("`")
    assert info.type == service
    assert info.name == f"sensor-7-{node.id[:8]}.{service}"
    assert info.server == f"shoal-{node.id[:16]}.local."
    assert info.port == 7700
    txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
    assert set(txt) == keys - {"pk"}
    assert txt == {"v": str(VERSION), "id": node.id, "name": "sensor-7", "epoch": "31337"}
