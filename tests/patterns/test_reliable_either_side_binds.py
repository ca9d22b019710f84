"""Reliable push/pull and pub/sub with the other side bound: pullers that connect to a
bound pusher, publishers that connect to a bound subscriber, and mixtures. The side
that connects says hello (an empty frame) so that the bound side learns its route;
everything the reliable patterns promise holds this way round too: each item once,
redelivery when a puller closes or is killed, gaps repaired in order, restarts.

Network safety: loopback only. Endpoints are ``tcp://127.0.0.1:*`` or ``ipc://`` paths
under the test's ``tmp_path``; the peers that are SIGKILLed (``tests/support/peer.py``)
run under the same rules and are killed in a ``finally``. Never mDNS.

Every I/O test runs under ``anyio.fail_after`` so a lost wake-up fails instead of hanging.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import zmq

import shoal
from shoal import Kind
from shoal._core import FanoutSender, ack_tag, decode, encode
from shoal._core._fanout import Dropped
from shoal._zmq._socket import Socket
from shoal.errors import DecodeError
from shoal.patterns import Delivery, ReliablePusher
from shoal.patterns._routes import HELLO
from support.delivery import (
    Got,
    collect,
    count_items,
    drain,
    matching,
    settle_subscribers,
    warm_up,
)
from support.endpoints import bind_address
from support.peers import puller_process, subscriber_process
from support.raw import raw_receive, raw_socket
from support.waiting import eventually, wait_all_tasks_blocked

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"


async def settle_push(push: ReliablePusher, acked: int) -> None:
    """Wait until ``push`` has read acknowledgements of ``acked`` items. An idle pusher
    reads them only when something waits on it: ``wait_acked`` is that something."""
    while push.statistics().acked < acked:
        with anyio.move_on_after(0.01):
            await push.wait_acked()


# -- push/pull: pullers that connect ---------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc", "inproc"])
async def test_pullers_that_connect_to_a_bound_pusher_get_each_item_once(
        transport: str, tmp_path: Path) -> None:
    n = 2000
    got: list[list[Any]] = [[], [], []]
    with anyio.fail_after(20):
        async with shoal.open_pusher(bind=bind_address(transport, tmp_path, "push"),
                                     reliable=True) as push:
            ep = push.endpoints
            async with (
                shoal.open_puller(connect=ep, reliable=True) as p0,
                shoal.open_puller(connect=ep, reliable=True) as p1,
                shoal.open_puller(connect=ep, reliable=True, manual_ack=True) as p2,
                anyio.create_task_group() as nursery,
            ):
                async def acking(into: list[Any]) -> None:
                    async for item in p2:
                        into.append(item.body)
                        await item.ack()

                nursery.start_soon(drain, p0, got[0])
                nursery.start_soon(drain, p1, got[1])
                nursery.start_soon(acking, got[2])
                for i in range(await warm_up(push, *got), n):
                    await push.send(i)
                await push.wait_acked()
                st = push.statistics()
                pst = [p.statistics() for p in (p0, p1, p2)]
                nursery.cancel_scope.cancel()
    assert sorted(i for into in got for i in into) == list(range(n))  # each once
    assert all(len(into) >= n // 10 for into in got)  # spread over all three
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)
    assert (st.malformed, st.redelivered, st.disconnects) == (0, 0, 0)
    assert len(st.held) == 3
    assert [s.received for s in pst] == [len(into) for into in got]
    assert all(s.malformed == 0 and s.held == 0 for s in pst)


async def test_a_puller_that_connected_and_closes_hands_its_unfinished_items_on() -> None:
    """Pullers A and B connect to a bound pusher. A finishes a few items, keeps one in
    hand (and more in its buffer), and closes. The pusher hears only that a connection
    to its endpoint dropped: it checks the pullers it knows there, finds A gone, and
    sends what A held to B. The only item seen twice is the one A never finished."""
    n = 400
    a_seen: list[int] = []
    b_seen: list[int] = []
    a_held = -1
    with anyio.fail_after(20):
        # rto long: nothing is retransmitted on a timer, only because A went away
        async with (
            shoal.open_pusher(bind=LOOPBACK, reliable=True, rto=30) as push,
            shoal.open_puller(connect=push.endpoints, reliable=True) as a,
            shoal.open_puller(connect=push.endpoints, reliable=True) as b,
            anyio.create_task_group() as nursery,
        ):
            async def run_a() -> None:
                nonlocal a_held
                async for msg in a:
                    a_seen.append(msg.body)
                    if len(a_seen) == 10:
                        break  # the 10th is in hand, never finished
                a_held = a.statistics().held
                await a.aclose()

            nursery.start_soon(run_a)
            nursery.start_soon(drain, b, b_seen)
            for i in range(await warm_up(push, a_seen, b_seen), n):
                await push.send(i)
            await push.wait_acked()
            st = push.statistics()
            b_stats = b.statistics()
            nursery.cancel_scope.cancel()
    assert len(b_seen) == len(set(b_seen))
    assert set(a_seen) & set(b_seen) == {a_seen[-1]}  # only the unfinished one
    assert sorted(a_seen[:-1] + b_seen) == list(range(n))
    assert a_held >= 1
    assert st.redelivered >= a_held
    assert st.disconnects == 1
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)
    assert len(st.held) == 1  # only B is left
    # B was checked too (an empty frame from its pusher): not malformed
    assert (b_stats.duplicates, b_stats.malformed) == (0, 0)


async def test_a_killed_puller_process_that_connected_loses_nothing() -> None:
    """Puller A is a process connected to a bound pusher; it finishes some items, then
    stalls holding one (and more in its buffer) and is SIGKILLed. Every item is
    processed; the only item processed twice is the one A held unfinished."""
    n = 400
    b_seen: list[int] = []
    a_seen: list[int] = []
    with anyio.fail_after(30):
        async with (
            shoal.open_pusher(bind=LOOPBACK, reliable=True, rto=30) as push,
            puller_process("--connect", push.endpoints[0], "--stall-after", "15") as proc,
            shoal.open_puller(connect=push.endpoints, reliable=True) as b,
            anyio.create_task_group() as nursery,
        ):
            stalled: dict[str, Any] = {}
            stall = anyio.Event()

            async def follow_a() -> None:
                while (line := await proc.line())["event"] != "stalled":
                    a_seen.append(line["body"])
                stalled.update(line)
                stall.set()

            nursery.start_soon(follow_a)
            nursery.start_soon(drain, b, b_seen)
            for i in range(await warm_up(push, a_seen, b_seen), n):
                await push.send(i)
            await stall.wait()
            assert stalled["finished"] == len(a_seen) - 1 == 14
            while push.statistics().acked < stalled["finished"] + len(b_seen):
                with anyio.move_on_after(0.01):
                    await push.wait_acked()
            pending = push.statistics().in_flight
            assert pending >= stalled["held"] >= 1
            proc.kill()
            await push.wait_acked()
            st = push.statistics()
            nursery.cancel_scope.cancel()
    assert len(b_seen) == len(set(b_seen))
    assert set(a_seen) & set(b_seen) == {a_seen[-1]}
    assert sorted(a_seen[:-1] + b_seen) == list(range(n))
    assert st.disconnects == 1
    assert stalled["held"] <= st.redelivered <= pending
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)


async def test_pushers_and_pullers_may_each_bind_some_endpoints_and_connect_to_others(
        tmp_path: Path) -> None:
    """Pusher X binds and also connects to puller Q's endpoint; puller P connects to X;
    Q also connects to pusher Y, which binds. Every item of both pushers is processed
    once, X's spread over P and Q."""
    n = 300
    got_p: list[Any] = []
    got_q: list[Any] = []
    with anyio.fail_after(20):
        async with (
            shoal.open_pusher(bind=f"ipc://{tmp_path}/y", reliable=True) as y,
            shoal.open_puller(bind=LOOPBACK, connect=y.endpoints, reliable=True) as q,
            shoal.open_pusher(bind=f"ipc://{tmp_path}/x", connect=q.endpoints,
                              reliable=True) as x,
            shoal.open_puller(connect=x.endpoints, reliable=True) as p,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(drain, p, got_p)
            nursery.start_soon(drain, q, got_q)
            for i in range(await warm_up(x, got_p, got_q), n):
                await x.send(i)
            for i in range(n):
                await y.send(("y", i))
            await x.wait_acked()
            await y.wait_acked()
            xst, yst = x.statistics(), y.statistics()
            nursery.cancel_scope.cancel()
    xs = sorted(b for b in got_p + got_q if isinstance(b, int))
    ys = [b[1] for b in got_q if isinstance(b, list)]
    assert xs == list(range(n))
    assert sorted(ys) == list(range(n))
    assert all(isinstance(b, int) for b in got_p)  # P is not connected to Y
    assert (len(xst.held), len(yst.held)) == (2, 1)
    assert (xst.acked, yst.acked, xst.malformed, yst.malformed) == (n, n, 0, 0)


async def test_a_puller_says_hello_and_tags_its_acknowledgements_with_the_pusher_stream(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """The wire, seen by a raw ROUTER playing a bound pusher: the puller that connects
    sends an empty frame first, and acknowledges an item of stream (epoch 5, stream 9)
    with an ACK whose correlation is that stream's tag."""
    raw = raw_socket(zctx, zmq.ROUTER)
    raw.bind(LOOPBACK)
    endpoint = raw.getsockopt_string(zmq.LAST_ENDPOINT)
    item = encode(Kind.PUSH, b"", "job", sender=b"raw-reliable-psh", epoch=5, stream=9,
                  seq=0, timestamp_ns=0, correlation=0)
    with anyio.fail_after(10):
        async with shoal.open_puller(connect=endpoint, reliable=True, context=zctx) as pull:
            route, hello = await raw_receive(raw)
            raw.send_multipart([route, item], zmq.NOBLOCK)
            got = await pull.receive()
            pull.mark_done()
            acks: list[Any] = []
            while not any(a.body[1] for a in acks):
                acks.append(decode((await raw_receive(raw))[-1]))
            stats = pull.statistics()
    raw.close()
    assert hello == HELLO
    assert got.body == "job"
    assert all(a.kind is Kind.ACK for a in acks)
    assert {a.correlation for a in acks} == {ack_tag(5, 9)}
    assert [s for a in acks for s in a.body[1]] == [0]
    assert stats.malformed == 0


async def test_an_acknowledgement_tagged_for_another_stream_is_ignored() -> None:
    """A tag of another stream (the pusher that was at this endpoint before) does not
    finish this pusher's items of the same numbers; a tag of 0 (a puller from before
    tags) or of this stream does."""
    def ack(done: list[int], correlation: int) -> bytes:
        return encode(Kind.ACK, b"", [done, done], sender=b"raw-reliable-pul", epoch=1,
                      stream=1, seq=0, timestamp_ns=0, correlation=correlation)

    with anyio.fail_after(5):
        async with shoal.open_pusher(connect="tcp://127.0.0.1:1", reliable=True) as push:
            for i in range(3):
                push.send_nowait(i)
            tag = ack_tag(push._enc.epoch, push._enc.stream)
            push._on_ack([b"p\0\0\0\0", ack([0, 1, 2], tag ^ 1)])
            other = push.statistics()
            push._on_ack([b"p\0\0\0\0", ack([0], 0)])
            push._on_ack([b"p\0\0\0\0", ack([1, 2], tag)])
            st = push.statistics()
    assert (other.acked, other.in_flight, other.malformed) == (0, 3, 0)
    assert (st.acked, st.in_flight, st.malformed) == (3, 0, 0)


async def test_acknowledgements_for_a_pusher_restarted_at_the_endpoint_finish_nothing_new(
        tmp_path: Path) -> None:
    """A puller connected to a bound pusher holds three unfinished items when the
    pusher goes away; a new pusher binds the same endpoint and the puller's connection
    (its route) comes back to it. The puller then finishes the old items: those
    acknowledgements reach the new pusher, whose items 0, 1, 2 they must not finish."""
    endpoint = f"ipc://{tmp_path}/push"
    with anyio.fail_after(20):
        async with shoal.open_puller(connect=endpoint, reliable=True, manual_ack=True) as pull:
            async with shoal.open_pusher(bind=endpoint, reliable=True) as old:
                for i in range(3):
                    await old.send(("old", i))
                olds: list[Delivery] = [await pull.receive() for _ in range(3)]
            async with shoal.open_pusher(bind=endpoint, reliable=True, rto=30) as new:
                for i in range(3):
                    await new.send(("new", i))
                news: list[Delivery] = [await pull.receive() for _ in range(3)]
                for d in olds:
                    await d.ack()  # for the pusher that is gone
                await news[0].ack()  # after them on the same connection
                await settle_push(new, 1)
                st = new.statistics()
                for d in news[1:]:
                    await d.ack()
                await new.wait_acked()
    assert [d.body for d in olds] == [["old", i] for i in range(3)]
    assert [d.body for d in news] == [["new", i] for i in range(3)]
    assert [d.message.seq for d in news] == [0, 1, 2]  # the same numbers as the old ones
    assert (st.acked, st.in_flight) == (1, 2)


async def test_a_bound_pusher_reopened_on_its_outbox_finishes_with_the_puller_that_had_them(
        tmp_path: Path) -> None:
    """Puller A, connected to a bound pusher with an outbox, has every item when the
    pusher goes away before hearing that any was done. A pusher reopened on the outbox
    at the same endpoint hears from A (its route, its acknowledgements of the same
    stream) and finishes everything, though puller B connects too: nothing is
    processed twice."""
    endpoint = f"ipc://{tmp_path}/push"
    path = tmp_path / "jobs.sqlite"
    n = 30
    got_a: list[Any] = []
    got_b: list[Any] = []
    with anyio.fail_after(30):
        async with shoal.open_puller(connect=endpoint, reliable=True) as a:
            async with shoal.open_pusher(bind=endpoint, reliable=True, outbox=path) as first:
                for i in range(n):
                    await first.send(i)
                while first.statistics().sent < n:
                    with anyio.move_on_after(0.01):
                        await first.wait_acked()
            assert count_items(path) == n  # nothing heard done
            async with (
                shoal.open_pusher(bind=endpoint, reliable=True, outbox=path) as again,
                shoal.open_puller(connect=endpoint, reliable=True) as b,
                anyio.create_task_group() as nursery,
            ):
                restored = again.statistics().restored
                nursery.start_soon(drain, a, got_a)
                nursery.start_soon(drain, b, got_b)
                await again.wait_acked()
                st = again.statistics()
                a_stats = a.statistics()
                nursery.cancel_scope.cancel()
    assert restored == n
    assert sorted(got_a) == list(range(n))  # A processed each once, from the first pusher
    assert got_b == []
    assert a_stats.received == n
    assert (st.acked, st.in_flight, st.given_up) == (n, 0, 0)
    assert count_items(path) == 0


# -- pub/sub: publishers that connect ---------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc", "inproc"])
async def test_publishers_that_connect_to_bound_subscribers_deliver_once_in_order(
        transport: str, tmp_path: Path) -> None:
    """Two publishers connect to two bound subscribers. ``wait_for_subscribers`` returns
    before the applications read anything: the subscribers answer the hellos
    themselves. Each subscriber gets each publisher's matching publications once, in
    order."""
    n = 1000
    p1, p2 = ["a/"], ["b/", "a/x"]
    topics = ("a/x", "a/y", "b/z", "c/w", "a/x/deep")
    got1: Got = []
    got2: Got = []
    with anyio.fail_after(30):
        async with (
            shoal.open_subscriber(bind=bind_address(transport, tmp_path, "s1"), topics=p1,
                                  reliable=True) as s1,
            shoal.open_subscriber(bind=bind_address(transport, tmp_path, "s2"), topics=p2,
                                  reliable=True) as s2,
            shoal.open_publisher(connect=s1.endpoints + s2.endpoints, reliable=True) as one,
            shoal.open_publisher(connect=s1.endpoints + s2.endpoints, reliable=True) as two,
            anyio.create_task_group() as nursery,
        ):
            await one.wait_for_subscribers(2)
            await two.wait_for_subscribers(2)
            nursery.start_soon(collect, s1, got1)
            nursery.start_soon(collect, s2, got2)
            published = [(topics[i % len(topics)], i) for i in range(n)]
            for topic, body in published:
                await one.publish(topic, ("one", body))
                await two.publish(topic, ("two", body))
            exp1, exp2 = matching(published, p1), matching(published, p2)
            await settle_subscribers(one, (got1, 2 * len(exp1)), (got2, 2 * len(exp2)))
            await two.wait_acked()
            st = [one.statistics(), two.statistics()]
            sst = [s1.statistics(), s2.statistics()]
            nursery.cancel_scope.cancel()
    for got, exp in ((got1, exp1), (got2, exp2)):
        for name in ("one", "two"):
            assert [(t, b[1]) for t, b in got if b[0] == name] == exp
        assert len(got) == 2 * len(exp)
    for pst in st:
        assert (pst.subscribers, pst.in_flight, pst.dropped_subscribers, pst.malformed) == (
            2, 0, 0, 0)
        assert pst.acked == len(exp1) + len(exp2)
    for s, exp in zip(sst, (exp1, exp2), strict=True):
        assert (s.received, s.resyncs, s.malformed) == (2 * len(exp), 0, 0)


async def test_publications_lost_on_the_way_to_a_bound_subscriber_are_repaired_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tenth publication the publisher sends to a bound subscriber is lost on
    the way (the first time). The subscriber sees the holes (``missing``), its
    acknowledgements stop at them, and the publisher sends again from there: the
    application gets everything once, in order."""
    n = 300
    got: Got = []
    lost: set[int] = set()
    with anyio.fail_after(30):
        async with (
            shoal.open_subscriber(bind=LOOPBACK, reliable=True) as sub,
            shoal.open_publisher(connect=sub.endpoints, reliable=True, rto=0.05) as pub,
            anyio.create_task_group() as nursery,
        ):
            sock = pub._sock
            real_send = Socket.send_to_nowait

            def lossy_send(self: Socket, route: bytes, frame: bytes) -> None:
                if self is sock:
                    try:
                        msg = decode(frame)
                    except DecodeError:  # the hello
                        msg = None
                    if (msg is not None and msg.kind is Kind.PUBLISH and msg.seq % 10 == 5
                            and msg.seq not in lost):
                        lost.add(msg.seq)
                        return None  # lost on the way
                return real_send(self, route, frame)

            monkeypatch.setattr(Socket, "send_to_nowait", lossy_send)
            await pub.wait_for_subscribers(1)
            nursery.start_soon(collect, sub, got)
            published = [("t", i) for i in range(n)]
            for topic, body in published:
                await pub.publish(topic, body)
            await settle_subscribers(pub, (got, n))
            st, sst = pub.statistics(), sub.statistics()
            nursery.cancel_scope.cancel()
    assert len(lost) == n // 10
    assert got == published
    assert st.retransmitted >= len(lost)
    assert sst.missing > 0  # the holes were seen, and repaired
    assert (st.acked, st.in_flight, sst.received, sst.resyncs) == (n, 0, n, 0)


async def test_a_subscriber_restarted_at_its_endpoint_replaces_its_old_book(
        tmp_path: Path) -> None:
    """A bound subscriber is SIGKILLed and another one binds the same endpoint: the
    publisher's connection comes back to the new one, which answers on the old one's
    route. The old book is dropped then (counted, ``replaced``), not after ``grace``,
    so its full window no longer blocks the publisher; the new subscriber gets what
    is published once it is known, in order."""
    endpoint = f"ipc://{tmp_path}/sub"
    window = 8
    with anyio.fail_after(30):
        async with shoal.open_publisher(connect=endpoint, reliable=True, window=window,
                                        grace=60) as pub:
            async with subscriber_process("--bind", endpoint) as first:
                await pub.wait_for_subscribers(1)
                for i in range(3):
                    await pub.publish("t", ("first", i))
                for i in range(3):
                    assert (await first.expect("received"))["body"] == ["first", i]
                await pub.wait_acked()
                first.kill()
                await first.proc.wait()
                for i in range(window):  # nobody acknowledges these: the window fills
                    pub.publish_nowait("t", ("lost", i))
                with pytest.raises(anyio.WouldBlock):
                    pub.publish_nowait("t", "one too many")
            async with subscriber_process("--bind", endpoint) as second:
                await eventually(lambda: pub.statistics().dropped_subscribers == 1)
                st = pub.statistics()
                for i in range(3 * window):  # would block until grace with the old book
                    await pub.publish("t", ("second", i))
                got: list[int] = []
                while len(got) < 3 * window:
                    body = (await second.expect("received"))["body"]
                    if body[0] == "second":
                        got.append(body[1])
    assert (st.dropped_subscribers, st.undelivered, st.subscribers) == (1, window, 1)
    assert got == list(range(3 * window))


async def test_subscribers_and_publishers_may_each_bind_some_endpoints_and_connect_to_others(
        tmp_path: Path) -> None:
    """Subscriber S binds and also connects to publisher X, which binds; publisher Y
    connects to S and binds too, and subscriber T connects to Y. Everything reaches
    who it should, once, in order per publisher."""
    n = 200
    got_s: Got = []
    got_t: Got = []
    with anyio.fail_after(20):
        async with (
            shoal.open_publisher(bind=LOOPBACK, reliable=True) as x,
            shoal.open_subscriber(bind=f"ipc://{tmp_path}/s", connect=x.endpoints,
                                  reliable=True) as s,
            shoal.open_publisher(bind=LOOPBACK, connect=s.endpoints, reliable=True) as y,
            shoal.open_subscriber(connect=y.endpoints, reliable=True) as t,
            anyio.create_task_group() as nursery,
        ):
            await x.wait_for_subscribers(1)
            await y.wait_for_subscribers(2)
            nursery.start_soon(collect, s, got_s)
            nursery.start_soon(collect, t, got_t)
            for i in range(n):
                await x.publish("x", i)
                await y.publish("y", i)
            await settle_subscribers(x, (got_s, 2 * n))
            await settle_subscribers(y, (got_t, n))
            xst, yst = x.statistics(), y.statistics()
            nursery.cancel_scope.cancel()
    assert [b for tp, b in got_s if tp == "x"] == list(range(n))
    assert [b for tp, b in got_s if tp == "y"] == list(range(n))
    assert got_t == [("y", i) for i in range(n)]
    assert (xst.subscribers, yst.subscribers) == (1, 2)
    assert (xst.acked, yst.acked) == (n, 2 * n)


async def test_a_publisher_restarted_while_connected_to_a_bound_subscriber() -> None:
    """A publisher connected to a bound subscriber closes and another connects: the
    subscriber introduces itself to the new one and takes its stream from the start;
    sends to the route of the one that left fail and it is forgotten."""
    got: Got = []
    with anyio.fail_after(20):
        async with (
            shoal.open_subscriber(bind=LOOPBACK, reliable=True, heartbeat=0.2) as sub,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(collect, sub, got)
            for name in ("first", "second"):
                async with shoal.open_publisher(connect=sub.endpoints, reliable=True) as pub:
                    await pub.wait_for_subscribers(1)
                    for i in range(20):
                        await pub.publish("t", (name, i))
                    await settle_subscribers(pub, (got, 20 if name == "first" else 40))
            await eventually(lambda: len(sub._learned) == 0)  # heartbeats found them gone
            sst = sub.statistics()
            nursery.cancel_scope.cancel()
    assert got == [("t", [name, i]) for name in ("first", "second") for i in range(20)]
    assert (sst.received, sst.resyncs, sst.missing, sst.malformed) == (40, 0, 0, 0)


# -- the publisher's books: one subscriber per route ------------------------------------------


def test_a_key_heard_on_the_route_of_another_book_replaces_that_book() -> None:
    """Route r leads to subscriber A, then B answers on r (A's endpoint now has B): A's
    book is dropped with what it held, counted, and reported by the next ``due`` as
    ``replaced``; B's book opens with the next publication."""
    s = FanoutSender(window=8, rto=1.0, grace=10.0)
    s.on_ack("A", "r", [""], -1, 0.0)
    s.on_ack("C", "q", [""], -1, 0.0)
    s.publish("t", "p0", 0.1)
    s.publish("t", "p1", 0.2)
    s.on_ack("C", "q", [""], 1, 0.3)
    book = s.on_ack("B", "r", [""], -1, 0.5)
    assert book is not None
    assert book.route == "r"
    assert set(s.books) == {"B", "C"}
    assert (s.dropped, s.undelivered, s.in_flight) == (1, 2, 0)
    _, dropped = s.due(0.6)
    assert dropped == [Dropped("A", 2, 0.5, "replaced")]
    _, targets = s.publish("t", "p2", 0.7)
    assert {b.key for b, _ in targets} == {"B", "C"}
    # a book that moves to another route frees its old one: no replacement there
    s.on_ack("C", "q2", [""], 2, 0.8)
    s.on_ack("D", "q", [""], -1, 0.9)
    assert set(s.books) == {"B", "C", "D"}
    assert s.dropped == 1


async def test_subscriber_hello_is_malformed_where_no_publisher_can_connect(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """An empty frame is a hello only from a connection a subscriber accepted; from a
    publisher it connected to, it is garbage, counted as before."""
    raw = raw_socket(zctx, zmq.ROUTER)
    raw.bind(LOOPBACK)
    endpoint = raw.getsockopt_string(zmq.LAST_ENDPOINT)
    with anyio.fail_after(10):
        async with shoal.open_subscriber(bind=LOOPBACK, connect=endpoint, reliable=True,
                                         context=zctx) as sub:
            route, _ack = await raw_receive(raw)  # its introduction
            raw.send_multipart([route, b""], zmq.NOBLOCK)
            # nobody receives: the subscriber reads its socket itself (it binds)
            await eventually(lambda: sub.statistics().malformed == 1)
            st = sub.statistics()
            learned = set(sub._learned)
    raw.close()
    assert st.malformed_by_reason == {"no-topic-delimiter": 1}
    assert learned == set()


async def test_what_a_bound_subscriber_reads_for_itself_reaches_a_receive_already_waiting(
) -> None:
    """The application waits in ``receive``; the subscriber's own task (reading hellos)
    takes a publication off the socket before the application's task runs: the
    waiting receive must return it, not wait on the socket again."""
    with anyio.fail_after(10):
        async with (
            shoal.open_subscriber(bind=LOOPBACK, reliable=True, heartbeat=30) as sub,
            shoal.open_publisher(connect=sub.endpoints, reliable=True) as pub,
            anyio.create_task_group() as nursery,
        ):
            await pub.wait_for_subscribers(1)
            got: list[Any] = []

            async def app() -> None:
                got.append((await sub.receive()).body)

            nursery.start_soon(app)
            await wait_all_tasks_blocked()  # the application waits
            pub.publish_nowait("t", "first")
            for _ in range(5000):  # the subscriber's task reads, the application cannot run
                sub._take_hellos()
                if sub._buffer:
                    break
                time.sleep(0.001)  # noqa: ASYNC251 (blocking on purpose: no task may run)
            buffered = len(sub._buffer)
            await eventually(lambda: got == ["first"])
    assert buffered == 1


async def test_a_held_item_sent_again_on_another_connection_is_finished_there(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """An item the application holds comes again on another connection (a pusher
    reopened on its outbox, with a new connection, sends what was unfinished): the done
    acknowledgement goes where it came from last, where its pusher now is."""
    item = encode(Kind.PUSH, b"", "job", sender=b"raw-reliable-psh", epoch=3, stream=1,
                  seq=0, timestamp_ns=0, correlation=0)
    with anyio.fail_after(10):
        async with shoal.open_puller(bind=LOOPBACK, reliable=True, manual_ack=True,
                                     context=zctx) as pull:
            before, after = raw_socket(zctx, zmq.DEALER), raw_socket(zctx, zmq.DEALER)
            before.connect(pull.endpoints[0])
            after.connect(pull.endpoints[0])
            before.send(item, zmq.NOBLOCK)
            delivery = await pull.receive()
            after.send(item, zmq.NOBLOCK)  # the copy: received, not delivered again
            while pull.statistics().duplicates == 0:
                with pytest.raises(anyio.WouldBlock):
                    pull.receive_nowait()  # reads the socket
                await anyio.sleep(0.005)
            await delivery.ack()
            done_after: list[int] = []
            while not done_after:
                done_after += decode((await raw_receive(after))[-1]).body[1]
            done_before: list[int] = []
            while True:
                try:
                    frame = before.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                done_before += decode(frame).body[1]
    before.close()
    after.close()
    assert done_after == [0]
    assert done_before == []
