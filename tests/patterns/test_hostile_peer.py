"""Every shoal socket type against a hostile peer, while legitimate peers talk through it.

For each resource (subscriber, puller, replier, requester, the four reliable ends, and
a node's control port) a raw pyzmq peer (``tests/support/hostile.py``, in a thread) sends,
for about a second, random and mutated messages: wrong frame counts, empty frames,
truncated envelopes, valid envelopes of the wrong kind, huge declared lengths, bodies
of the wrong msgpack type, deep nesting, long frames, from random routing ids. Legit
shoal peers exchange traffic through the same socket meanwhile. The rules:

* nothing crashes, and the resource still works afterwards;
* legitimate traffic all arrives (each item or publication once, in reliable mode;
  best-effort traffic too here, since nothing overflows a queue);
* every hostile message is counted in ``statistics()``: the hostile peer never sends
  a message its oracle says the receiver would accept, so the counts are exact, and
  where the statistics say why, the reasons match too.

Network safety: every socket is on 127.0.0.1; the hostile peer never sends a valid
control State (it would name addresses for the node to connect to). Every test runs
under ``anyio.fail_after``; every hostile loop is bounded in time and count.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import zmq

import shoal
from shoal._core import Bye, ChannelOffer, Kind, Role, State, encode, encode_control
from shoal.discovery import PeerLeft
from support.hostile import (
    HOSTILE_SENDER,
    VERSION_MISMATCH,
    Classify,
    Garbage,
    Tally,
    answer_requests,
    control_reason,
    envelope_reason,
    flood,
    flood_peers,
    frame_by_frame_reason,
    open_flooders,
    publisher_ack_reason,
    pusher_ack_reason,
    work_as_puller,
)

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"
DURATION = 1.0
"""Seconds each hostile peer floods for (at most)."""
LIMIT = 2500
"""Hostile messages per peer, at most."""
N = 200
"""Legitimate messages per test."""
PACE = DURATION / N
TIMEOUT = 30

Ctx = zmq.Context[zmq.Socket[bytes]]


# -- helpers ----------------------------------------------------------------------------------


def templates(*bodies: Any, topic: bytes = b"") -> list[bytes]:
    """Valid envelopes of every kind (and raw-bytes and user-headers variants), to
    mutate; ``bodies`` add envelopes of every kind with those bodies."""
    out = []
    for i, kind in enumerate(Kind):
        for body in ({"n": i, "tags": ["a", "b"]}, b"raw bytes", *bodies):
            out.append(encode(kind, topic, body, sender=HOSTILE_SENDER, epoch=1, stream=2,
                              seq=i, timestamp_ns=time.time_ns(), correlation=i,
                              headers={"h": i} if i % 2 else None))
    return out


def receiver_oracle(*kinds: Kind) -> Classify:
    return lambda frames: envelope_reason(frames, kinds)


def replier_oracle() -> Classify:
    """A replier also takes a request framed as REQ frames it: an empty delimiter, then
    the envelope's frames, judged as a message of their own."""
    def reason(frames: list[bytes]) -> str | None:
        if len(frames) > 1 and not frames[0]:
            frames = frames[1:]
        return envelope_reason(frames, (Kind.REQUEST,))
    return reason


def frame_oracle(*kinds: Kind) -> Classify:
    """Pullers and subscribers read plain frames: a multi-frame message counts once
    per frame."""
    return lambda frames: frame_by_frame_reason(frames, kinds)


@dataclass
class HostileRun:
    stop: threading.Event
    tally: Tally | None = None

    @property
    def result(self) -> Tally:
        assert self.tally is not None, "the hostile peer did not finish"
        return self.tally


@asynccontextmanager
async def hostile(run: Callable[[threading.Event], Tally]) -> AsyncIterator[HostileRun]:
    """Run a hostile peer in a thread beside the block; on leaving, wait for it to
    finish (it is bounded in time). Stopped early if the block raises."""
    box = HostileRun(threading.Event())

    async def go() -> None:
        box.tally = await anyio.to_thread.run_sync(run, box.stop)

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(go)
        try:
            yield box
        except BaseException:
            box.stop.set()
            raise


async def settle(done: Callable[[], bool],
                 poke: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint) -> None:
    """Until ``done()``: let the resource read what is queued (``poke``; by default,
    its own tasks do)."""
    while not done():
        await poke()
        await anyio.sleep(0.01)


class Nowait(Protocol):
    def receive_nowait(self) -> Any: ...


def drain(receiver: Nowait) -> Callable[[], Awaitable[None]]:
    """A poke for a receiver: read (and drop) whatever is queued, valid or not."""
    async def poke() -> None:
        while True:
            try:
                receiver.receive_nowait()
            except anyio.WouldBlock:
                break
        await anyio.lowlevel.checkpoint()
    return poke


def plus_one(req: shoal.Request) -> Any:
    return req.body + 1


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    """The hostile peer's context. Its runner terminates it when done; if the test
    failed before that, it is destroyed here."""
    context: Ctx = zmq.Context()
    yield context
    if not context.closed:
        context.destroy(linger=0)


def bound(ctx: Ctx, socket_type: int) -> tuple[zmq.Socket[bytes], str]:
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.SNDTIMEO, 200)
    if socket_type == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if socket_type == zmq.XPUB:
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # block, never drop: the count stays exact
    sock.bind(LOOPBACK)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def assert_counted_exactly(stats: Any, tally: Tally) -> None:
    """A receiver with a ``MalformedCounter``: the totals and the reasons match."""
    assert tally.sent > 50, f"the hostile peer hardly sent anything: {tally}"
    assert stats.malformed == tally.sent
    assert stats.malformed_by_reason == dict(tally.reasons)


# -- best effort ------------------------------------------------------------------------------


async def test_a_subscriber_under_a_hostile_publisher(ctx: Ctx) -> None:
    xpub, evil = bound(ctx, zmq.XPUB)
    garbage = Garbage(1, templates(topic=b"news"), frame_oracle(Kind.PUBLISH), prepare=LIMIT)
    got: list[shoal.Message] = []
    with anyio.fail_after(TIMEOUT):
        async with (shoal.open_publisher(bind=LOOPBACK) as pub,
                    shoal.open_subscriber(connect=[pub.endpoints[0], evil]) as sub):
            await pub.wait_for_subscribers(1)

            async def take() -> None:
                while len(got) < N:
                    got.append(await sub.receive())

            async with (hostile(lambda stop: flood(ctx, [xpub], garbage, duration=DURATION,
                                                   limit=LIMIT, stop=stop,
                                                   wait_for_subscription=True)) as run,
                        anyio.create_task_group() as nursery):
                nursery.start_soon(take)
                for i in range(N):
                    await pub.publish("legit", i)
                    await anyio.sleep(PACE)
            tally = run.result
            await settle(lambda: sub.statistics().malformed >= tally.sent, drain(sub))
            await pub.publish("legit", "after")
            after = await sub.receive()
            stats = sub.statistics()

    assert [m.body for m in got] == list(range(N))
    assert after.body == "after"
    assert_counted_exactly(stats, tally)
    assert (stats.received, stats.gaps) == (N + 1, 0)


async def test_a_puller_under_hostile_pushers(ctx: Ctx) -> None:
    garbage = Garbage(2, templates(), frame_oracle(Kind.PUSH), prepare=LIMIT)
    got: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with (shoal.open_puller(bind=LOOPBACK) as pull,
                    shoal.open_pusher(connect=pull.endpoints[0]) as push):
            socks = open_flooders(ctx, zmq.PUSH, pull.endpoints[0], count=2, seed=2)

            async def take() -> None:
                while len(got) < N:
                    got.append((await pull.receive()).body)

            async with (hostile(lambda stop: flood(ctx, socks, garbage, duration=DURATION,
                                                   limit=LIMIT, stop=stop)) as run,
                        anyio.create_task_group() as nursery):
                nursery.start_soon(take)
                for i in range(N):
                    await push.send(i)
                    await anyio.sleep(PACE)
            tally = run.result
            await settle(lambda: pull.statistics().malformed >= tally.sent, drain(pull))
            await push.send("after")
            after = await pull.receive()
            stats = pull.statistics()

    assert got == list(range(N))
    assert after.body == "after"
    assert_counted_exactly(stats, tally)
    assert stats.received == N + 1


async def test_a_replier_under_hostile_requesters_with_random_routing_ids(ctx: Ctx) -> None:
    garbage = Garbage(3, templates(), replier_oracle(), prepare=LIMIT)
    answers: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as outer:
            rep = await outer.start(partial(shoal.serve_replier, plus_one, bind=LOOPBACK))
            assert isinstance(rep, shoal.Replier)
            socks = open_flooders(ctx, zmq.DEALER, rep.endpoints[0], count=3, seed=3)
            async with shoal.open_requester(connect=rep.endpoints[0]) as client:
                async with hostile(lambda stop: flood(ctx, socks, garbage, duration=DURATION,
                                                      limit=LIMIT, stop=stop)) as run:
                    for i in range(N // 2):
                        answers.append(await client.request(i))
                        await anyio.sleep(2 * PACE)
                tally = run.result
                await settle(lambda: rep.statistics().malformed >= tally.sent)
                after = await client.request(1000)
                stats = rep.statistics()
            outer.cancel_scope.cancel()

    assert answers == [i + 1 for i in range(N // 2)]
    assert after == 1001
    assert_counted_exactly(stats, tally)
    assert (stats.received, stats.replied, stats.failed) == (N // 2 + 1, N // 2 + 1, 0)


async def test_a_requester_with_a_hostile_replier_answering_garbage(ctx: Ctx) -> None:
    """The requester is connected to a legit replier and to a hostile one, which buries
    each proper reply under garbage (and DEALER spreads requests over both)."""
    router, evil = bound(ctx, zmq.ROUTER)
    garbage = Garbage(4, templates(), receiver_oracle(Kind.REPLY, Kind.ERROR), prepare=LIMIT)
    answers: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as outer:
            rep = await outer.start(partial(shoal.serve_replier, plus_one, bind=LOOPBACK))
            assert isinstance(rep, shoal.Replier)
            async with shoal.open_requester(connect=[rep.endpoints[0], evil]) as client:
                async with hostile(lambda stop: answer_requests(
                        ctx, router, garbage, duration=TIMEOUT, stop=stop)) as run:
                    for i in range(N // 2):
                        answers.append(await client.request(i))
                    run.stop.set()
                tally = run.result
                stats = client.statistics()
            outer.cancel_scope.cancel()

    assert answers == [i + 1 for i in range(N // 2)]
    assert tally.answered > 0, "the hostile replier got no request"
    assert_counted_exactly(stats, tally)
    assert (stats.replies, stats.unmatched, stats.in_flight) == (N // 2, 0, 0)


# -- reliable ---------------------------------------------------------------------------------


async def test_a_reliable_puller_under_hostile_pushers(ctx: Ctx) -> None:
    garbage = Garbage(5, templates(), receiver_oracle(Kind.PUSH), prepare=LIMIT)
    got: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with (shoal.open_puller(bind=LOOPBACK, reliable=True) as pull,
                    shoal.open_pusher(connect=pull.endpoints[0], reliable=True) as push):
            socks = open_flooders(ctx, zmq.DEALER, pull.endpoints[0], count=3, seed=5)

            async def take() -> None:
                while len(got) < N:
                    got.append((await pull.receive()).body)

            async with (hostile(lambda stop: flood(ctx, socks, garbage, duration=DURATION,
                                                   limit=LIMIT, stop=stop)) as run,
                        anyio.create_task_group() as nursery):
                nursery.start_soon(take)
                for i in range(N):
                    await push.send(i)
                    await anyio.sleep(PACE)
            pull.mark_done()
            await push.wait_acked()
            tally = run.result
            await settle(lambda: pull.statistics().malformed >= tally.sent, drain(pull))
            stats = pull.statistics()
            pushed = push.statistics()

    assert got == list(range(N))  # each once, and (one pusher, one puller) in order
    assert_counted_exactly(stats, tally)
    assert stats.received == N
    assert (pushed.acked, pushed.given_up, pushed.in_flight) == (N, 0, 0)


async def test_a_reliable_pusher_with_a_hostile_puller_sending_garbage_acks(ctx: Ctx) -> None:
    """The hostile puller does the work it is given (each item acknowledged properly)
    but floods the pusher with garbage acknowledgements between."""
    router, evil = bound(ctx, zmq.ROUTER)
    garbage = Garbage(6, templates([[1, 2], [3]], [[], []], [[0], {"x": 1}]),
                      pusher_ack_reason, prepare=LIMIT)
    got: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with (shoal.open_puller(bind=LOOPBACK, reliable=True) as pull,
                    shoal.open_pusher(connect=[pull.endpoints[0], evil],
                                      reliable=True) as push):

            async def take() -> None:
                async for msg in pull:
                    got.append(msg.body)

            async with (hostile(lambda stop: work_as_puller(
                    ctx, router, garbage, duration=TIMEOUT, stop=stop, limit=LIMIT)) as run,
                        anyio.create_task_group() as nursery):
                nursery.start_soon(take)
                for i in range(N):
                    await push.send(i)
                    await anyio.sleep(PACE)
                await push.wait_acked()
                run.stop.set()
                nursery.cancel_scope.cancel()
            tally = run.result

            async def read_acks() -> None:
                await push.wait_acked()

            await settle(lambda: push.statistics().malformed >= tally.sent, read_acks)
            stats = push.statistics()

    handled = list(tally.handled.values())
    assert handled, "the hostile puller was given no work"
    assert Counter(got) + Counter(handled) == Counter(range(N))  # each item once
    assert (stats.acked, stats.given_up, stats.in_flight) == (N, 0, 0)
    assert tally.sent > 50
    assert stats.malformed == tally.sent


async def test_a_reliable_publisher_under_hostile_subscribers(ctx: Ctx) -> None:
    garbage = Garbage(7, templates([["news"], 1, 2, 3, False], [[], 0, 0, -1, True],
                                   [["a", 1], 0, 0, 0, False]),
                      publisher_ack_reason, prepare=LIMIT)
    got: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with (shoal.open_publisher(bind=LOOPBACK, reliable=True) as pub,
                    shoal.open_subscriber(connect=pub.endpoints[0], reliable=True) as sub):
            await pub.wait_for_subscribers(1)
            socks = open_flooders(ctx, zmq.DEALER, pub.endpoints[0], count=3, seed=7)

            async def take() -> None:
                while len(got) < N:
                    got.append((await sub.receive()).body)

            async with (hostile(lambda stop: flood(ctx, socks, garbage, duration=DURATION,
                                                   limit=LIMIT, stop=stop)) as run,
                        anyio.create_task_group() as nursery):
                nursery.start_soon(take)
                for i in range(N):
                    await pub.publish("legit", i)
                    await anyio.sleep(PACE)
            await pub.wait_acked()
            tally = run.result
            await settle(lambda: pub.statistics().malformed >= tally.sent)
            stats = pub.statistics()

    assert got == list(range(N))
    assert tally.sent > 50
    assert stats.malformed == tally.sent
    assert (stats.subscribers, stats.refused_subscribers, stats.in_flight) == (1, 0, 0)


async def test_a_reliable_subscriber_under_a_hostile_publisher(ctx: Ctx) -> None:
    router, evil = bound(ctx, zmq.ROUTER)
    garbage = Garbage(8, templates(topic=b"legit"), receiver_oracle(Kind.PUBLISH), prepare=LIMIT)
    got: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with (shoal.open_publisher(bind=LOOPBACK, reliable=True) as pub,
                    shoal.open_subscriber(connect=[pub.endpoints[0], evil],
                                          reliable=True) as sub):
            await pub.wait_for_subscribers(1)

            async def take() -> None:
                while len(got) < N:
                    got.append((await sub.receive()).body)

            async with (hostile(lambda stop: flood_peers(ctx, router, garbage,
                                                         duration=DURATION, limit=LIMIT,
                                                         stop=stop)) as run,
                        anyio.create_task_group() as nursery):
                nursery.start_soon(take)
                for i in range(N):
                    await pub.publish("legit", i)
                    await anyio.sleep(PACE)
            await pub.wait_acked()
            tally = run.result
            await settle(lambda: sub.statistics().malformed >= tally.sent, drain(sub))
            stats = sub.statistics()

    assert got == list(range(N))
    assert_counted_exactly(stats, tally)
    assert (stats.received, stats.missing, stats.resyncs) == (N, 0, 0)


# -- the node control port --------------------------------------------------------------------


def control_templates() -> list[bytes]:
    """Valid control frames to mutate (never sent as they are)."""
    state = State(node_id=HOSTILE_SENDER, epoch=9, name="hostile", addresses=("127.0.0.1",),
                  control_port=9, revision=3,
                  channels=(ChannelOffer("jobs", Role.PULLER, 9),
                            ChannelOffer("news", Role.SUBSCRIBER)))
    return [encode_control(state), encode_control(Bye(HOSTILE_SENDER, 9))]


async def test_a_node_control_port_under_hostile_nodes(ctx: Ctx) -> None:
    """Two nodes find each other and run a channel while hostile DEALERs flood the
    control port of one: malformed frames and frames of other protocol versions are
    counted apart, exactly; the nodes keep each other and every job arrives."""
    garbage = Garbage(9, control_templates(), control_reason, envelope=False, prepare=LIMIT)
    got: list[Any] = []
    left: list[PeerLeft] = []
    with anyio.fail_after(TIMEOUT):
        async with (shoal.open_node("hostile-test-a", interfaces=["127.0.0.1"],
                                    heartbeat=0.1, peer_timeout=2.0) as a,
                    shoal.open_node("hostile-test-b", interfaces=["127.0.0.1"],
                                    heartbeat=0.1, peer_timeout=2.0) as b):
            a.introduce(b.control_endpoint)
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            async with (b.open_puller("jobs") as pull, a.open_pusher("jobs") as push,
                        anyio.create_task_group() as watchers):
                for node in (a, b):
                    async def watch(node: shoal.Node = node) -> None:
                        async for event in node.watch_peers():
                            if isinstance(event, PeerLeft):
                                left.append(event)
                    watchers.start_soon(watch)
                socks = open_flooders(ctx, zmq.DEALER, b.control_endpoint, count=3, seed=9)

                async def take() -> None:
                    while len(got) < N:
                        got.append((await pull.receive()).body)

                async with (hostile(lambda stop: flood(ctx, socks, garbage,
                                                       duration=DURATION, limit=LIMIT,
                                                       stop=stop)) as run,
                            anyio.create_task_group() as nursery):
                    nursery.start_soon(take)
                    for i in range(N):
                        await push.send(i)
                        await anyio.sleep(PACE)
                tally = run.result

                def counted() -> int:
                    s = b.statistics()
                    return s.malformed + s.version_mismatches

                await settle(lambda: counted() >= tally.sent)
                stats = b.statistics()
                peers = (a.peers(), b.peers())
                watchers.cancel_scope.cancel()

    assert got == list(range(N))
    assert left == []
    assert [p.id for p in peers[0]] == [b.id]
    assert [p.id for p in peers[1]] == [a.id]
    assert tally.sent > 50
    assert stats.version_mismatches == tally.reasons[VERSION_MISMATCH] > 0
    assert stats.malformed == tally.sent - tally.reasons[VERSION_MISMATCH]


async def test_a_node_survives_a_control_frame_whose_kind_is_nested_1000_deep(ctx: Ctx) -> None:
    frame = b"\x92\x01" + b"\x91" * 1000 + b"\xc0"  # [1, [[[...[nil]...]]]]: 1003 bytes
    died: Exception | None = None
    try:
        with anyio.fail_after(10):
            async with shoal.open_node("hostile-test-deep", interfaces=["127.0.0.1"]) as node:
                [dealer] = open_flooders(ctx, zmq.DEALER, node.control_endpoint, count=1,
                                         seed=10)
                dealer.send(frame)
                await settle(lambda: node.statistics().malformed >= 1)
                async with shoal.open_node("hostile-test-probe",
                                           interfaces=["127.0.0.1"]) as probe:
                    probe.introduce(node.control_endpoint)
                    await node.wait_for_peers(1)
    except Exception as exc:  # the node's nursery re-raises what killed it
        died = exc
    assert died is None, f"one 1003-byte control frame killed the node: {died!r}"
