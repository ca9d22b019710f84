"""The three patterns end to end, over tcp (loopback), ipc (tmp_path) and inproc.

Tests taking the ``addresses`` fixture run once per transport; every async test runs
once per event loop (trio, asyncio, uvloop). Every test runs under
``anyio.fail_after`` so a lost wake-up fails instead of hanging.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgpack
import pytest
import trio
import zmq

import shoal
from shoal import Identity, Kind, Message
from shoal._core import decode, encode
from shoal.errors import (
    ClosedError,
    EncodeError,
    InvalidEndpoint,
    LocalProtocolError,
    RemoteError,
    ShoalError,
)
from support.endpoints import Addresses
from support.pubsub import sync_subscribers
from support.waiting import eventually, still_waiting, wait_all_tasks_blocked

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"

BODIES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**64 - 1,
    -(2**63),
    3.25,
    float("inf"),
    "",
    "héllo ☃ 🐟",
    b"",
    b"\x00\xff raw \xc1",
    [],
    [1, "two", None, [3.0, b"four"]],
    {},
    {"nested": {"list": [1, {"b": b"\x00"}]}},
    {1: "int key", b"k": "bytes key", None: "nil key", 2.5: "float key"},
    msgpack.ExtType(42, b"ext"),
]


def headers_for(i: int) -> dict[str, Any]:
    return {"i": i, "unit": "C", "trace": b"\x01\x02", "tags": ["a", "b"]}


# -- publish/subscribe -----------------------------------------------------------------------


async def test_pubsub_fans_out_to_every_subscriber_whose_prefix_matches(
    addresses: Addresses,
) -> None:
    topics = ["sensors/room1", "sensors/room1/temp", "sensors/room1x", "sensors/room2",
              "sensors/", "other", "otherwise", "x/sensors/room1"]
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=addresses.fresh()) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["sensors/"]) as a,
            shoal.open_subscriber(connect=pub.endpoints, topics=["sensors/room1"]) as b,
            shoal.open_subscriber(connect=pub.endpoints, topics=["other"]) as c,
            shoal.open_subscriber(connect=pub.endpoints, topics=["sensors/room1x"]) as d,
            shoal.open_subscriber(connect=pub.endpoints, topics=["sensors/room2", "x/"]) as e,
        ):
            assert await sync_subscribers(pub.publish_nowait, a, b, c, d, e) == [[]] * 5
            for i, topic in enumerate(topics):
                await pub.publish(topic, i)
            got = await sync_subscribers(pub.publish_nowait, a, b, c, d, e)

    received = [[(m.topic, m.body) for m in msgs] for msgs in got]
    assert received[0] == [("sensors/room1", 0), ("sensors/room1/temp", 1),
                           ("sensors/room1x", 2), ("sensors/room2", 3), ("sensors/", 4)]
    assert received[1] == [("sensors/room1", 0), ("sensors/room1/temp", 1),
                           ("sensors/room1x", 2)]
    assert received[2] == [("other", 5), ("otherwise", 6)]
    # a longer subscription never matches a shorter topic
    assert received[3] == [("sensors/room1x", 2)]
    assert received[4] == [("sensors/room2", 3), ("x/sensors/room1", 7)]


async def test_pubsub_bodies_of_every_msgpack_type_and_headers_arrive_untouched(
    addresses: Addresses,
) -> None:
    ident = Identity(sender=b"publisher-id-16b", epoch=77)
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=addresses.fresh(), identity=ident) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["data"]) as sub,
        ):
            await sync_subscribers(pub.publish_nowait, sub)
            for i, body in enumerate(BODIES):
                await pub.publish("data", body, headers=headers_for(i))
            [got] = await sync_subscribers(pub.publish_nowait, sub)

    assert [m.body for m in got] == BODIES
    assert [type(m.body) for m in got] == [type(b) for b in BODIES]
    assert [dict(m.headers) for m in got] == [headers_for(i) for i in range(len(BODIES))]
    assert {(m.kind, m.topic, m.sender, m.epoch) for m in got} == {
        (Kind.PUBLISH, "data", ident.sender_hex, 77)}
    assert [m.seq for m in got] == list(range(len(BODIES)))
    assert len({m.id for m in got}) == len(BODIES)


async def test_pubsub_sequence_numbers_count_per_topic(addresses: Addresses) -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=addresses.fresh()) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["t/"]) as sub,
        ):
            await sync_subscribers(pub.publish_nowait, sub)
            for topic in ["t/a", "t/b", "t/a", "t/a", "t/b"]:
                await pub.publish(topic, None)
            [got] = await sync_subscribers(pub.publish_nowait, sub)
            stats = sub.statistics()
    assert [(m.topic, m.seq) for m in got] == [
        ("t/a", 0), ("t/b", 0), ("t/a", 1), ("t/a", 2), ("t/b", 1)]
    assert len({m.stream for m in got}) == 1
    assert stats.gaps == 0
    # the ids tell the topics apart: deduplicating by id keeps every message
    assert len({m.id for m in got}) == len(got)
    assert got[0].id.split(":", 4)[3:] == ["0", "t/a"]


async def test_a_subscriber_may_bind_and_several_publishers_connect(
    addresses: Addresses,
) -> None:
    p1 = Identity(sender=b"1" * 16, epoch=1)
    p2 = Identity(sender=b"2" * 16, epoch=2)
    with anyio.fail_after(10):
        async with (
            shoal.open_subscriber(bind=addresses.fresh(), topics=["news"]) as sub,
            shoal.open_publisher(connect=sub.endpoints, identity=p1) as pub1,
            shoal.open_publisher(connect=sub.endpoints, identity=p2) as pub2,
        ):
            await sync_subscribers(pub1.publish_nowait, sub)
            await sync_subscribers(pub2.publish_nowait, sub)
            for i in range(5):
                await pub1.publish("news", ("one", i))
                await pub2.publish("news", ("two", i))
            [from1] = await sync_subscribers(pub1.publish_nowait, sub)
            [from2] = await sync_subscribers(pub2.publish_nowait, sub)
            got = from1 + from2

    by_sender: dict[str, list[Any]] = {}
    for m in got:
        by_sender.setdefault(m.sender, []).append(m.body)
    assert by_sender == {
        p1.sender_hex: [["one", i] for i in range(5)],
        p2.sender_hex: [["two", i] for i in range(5)],
    }


async def test_a_subscriber_can_change_its_subscriptions_while_open() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=LOOPBACK) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=()) as sub,
        ):
            assert sub.topics == frozenset()
            sub.subscribe("a")
            sub.subscribe("b")
            sub.subscribe("a")  # twice is once
            assert sub.topics == {"a", "b"}
            await sync_subscribers(pub.publish_nowait, sub)
            sub.unsubscribe("a")
            await sync_subscribers(pub.publish_nowait, sub)  # the unsubscribe is in force
            for topic in ["a", "b", "a", "b"]:
                await pub.publish(topic, topic)
            [got] = await sync_subscribers(pub.publish_nowait, sub)
    assert [m.topic for m in got] == ["b", "b"]
    assert sub.topics == {"b"}


async def test_pubsub_loss_at_the_high_water_mark_is_counted_as_gaps(
    addresses: Addresses,
) -> None:
    """Best effort is never silent: with small high-water marks on both sides and a
    subscriber that does not read, PUB drops; every message missing between the first
    and the last one received is a gap, attributed to the publisher's sender id."""
    ident = Identity(sender=b"lossy-publisher!", epoch=3)
    payload = b"x" * 4096  # 20 MB in all: more than the kernel's socket buffers hold
    with anyio.fail_after(20):
        async with (
            shoal.open_publisher(bind=addresses.fresh(), identity=ident,
                                 high_water_mark=10) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["flood"],
                                  high_water_mark=10) as sub,
        ):
            await sync_subscribers(pub.publish_nowait, sub)
            assert sub.statistics().gaps == 0
            published = pub.statistics().published
            for _ in range(5000):  # no checkpoint: the subscriber cannot read meanwhile
                pub.publish_nowait("flood", payload)
            assert pub.statistics().published - published == 5000
            [flood] = await sync_subscribers(pub.publish_nowait, sub)
            # a loss at the end of a stream shows once the stream goes on: publish one more
            await pub.publish("flood", payload)
            [tail] = await sync_subscribers(pub.publish_nowait, sub)
            stats = sub.statistics()

    assert [m.seq for m in tail] == [5000]
    got = flood + tail
    seqs = [m.seq for m in got]
    assert seqs == sorted(set(seqs)), "PUB/SUB delivers one publisher's messages in order"
    assert all(m.body == payload for m in got)
    assert 0 < len(flood) < 5000
    assert stats.gaps > 0
    assert len(got) + stats.gaps == seqs[-1] - seqs[0] + 1
    assert stats.gaps_by_publisher == {ident.sender_hex: stats.gaps}
    assert stats.out_of_order == 0


async def test_publishing_without_subscribers_neither_blocks_nor_fails() -> None:
    with anyio.fail_after(5):
        async with shoal.open_publisher(bind=LOOPBACK, high_water_mark=1) as pub:
            for i in range(1000):
                await pub.publish("nobody/listens", i)
            assert pub.statistics().published == 1000


# -- push/pull ---------------------------------------------------------------------------


async def test_wait_for_pullers_counts_connections_whose_handshake_completed() -> None:
    """A pusher that binds counts the pullers connected to it, and one that connects
    counts the pullers it reached; a puller that leaves is counted out."""
    with anyio.fail_after(10):
        async with shoal.open_pusher(bind=LOOPBACK) as push:
            assert push.pullers == 0
            assert await still_waiting(lambda: push.wait_for_pullers(1))  # nobody yet
            async with (shoal.open_puller(connect=push.endpoints) as p0,
                        shoal.open_puller(connect=push.endpoints)):
                await push.wait_for_pullers(2)
                assert push.pullers == 2
                # every item after the wait reaches both: the connections are up
                for i in range(20):
                    await push.send(i)
                got = [(await p0.receive()).body for _ in range(10)]
                assert len(got) == 10
            await eventually(lambda: push.pullers == 0)  # both closed: counted out
        async with (shoal.open_puller(bind=LOOPBACK) as a,
                    shoal.open_puller(bind=LOOPBACK) as b,
                    shoal.open_pusher(connect=a.endpoints + b.endpoints) as push):
            await push.wait_for_pullers(2)
            assert push.pullers == 2
        with pytest.raises(ClosedError):
            await push.wait_for_pullers(1)


async def test_push_pull_delivers_each_message_to_exactly_one_of_several_pullers(
    addresses: Addresses,
) -> None:
    total = 300
    seen: list[list[int]] = [[], [], []]
    warmup_seen = [0, 0, 0]
    arrived = anyio.Event()
    warm = anyio.Event()

    async def drain(i: int, pull: shoal.Puller) -> None:
        async for msg in pull:
            if msg.body == "warmup":
                warmup_seen[i] += 1
                warm.set()
            else:
                seen[i].append(msg.body)
                if sum(map(len, seen)) == total:
                    arrived.set()

    with anyio.fail_after(15):
        async with (
            shoal.open_pusher(bind=addresses.fresh()) as push,
            shoal.open_puller(connect=push.endpoints) as p0,
            shoal.open_puller(connect=push.endpoints) as p1,
            shoal.open_puller(connect=push.endpoints) as p2,
            anyio.create_task_group() as nursery,
        ):
            for i, pull in enumerate([p0, p1, p2]):
                nursery.start_soon(drain, i, pull)
            # handshake: PUSH only deals to connected pullers; wait until all three are
            while not all(warmup_seen):
                warm = anyio.Event()
                await push.send("warmup")
                await warm.wait()
            for n in range(total):
                await push.send(n)
            await arrived.wait()
            nursery.cancel_scope.cancel()

    everything = sorted(n for got in seen for n in got)
    assert everything == list(range(total)), "each message exactly once"
    assert all(seen), f"every puller got some work: {[len(s) for s in seen]}"
    assert all(got == sorted(got) for got in seen)


async def test_push_pull_bodies_of_every_msgpack_type_and_headers_arrive_untouched(
    addresses: Addresses,
) -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_pusher(bind=addresses.fresh()) as push,
            shoal.open_puller(connect=push.endpoints) as pull,
        ):
            for i, body in enumerate(BODIES):
                await push.send(body, headers=headers_for(i))
            got = [await pull.receive() for _ in BODIES]
    assert [m.body for m in got] == BODIES
    assert [dict(m.headers) for m in got] == [headers_for(i) for i in range(len(BODIES))]
    assert [m.seq for m in got] == list(range(len(BODIES)))
    assert {m.kind for m in got} == {Kind.PUSH}


async def test_a_puller_may_bind_and_several_pushers_connect(addresses: Addresses) -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_puller(bind=addresses.fresh()) as pull,
            shoal.open_pusher(connect=pull.endpoints) as push1,
            shoal.open_pusher(connect=pull.endpoints) as push2,
        ):
            for i in range(10):
                await push1.send(("one", i))
                await push2.send(("two", i))
            got = [await pull.receive() for _ in range(20)]
    assert sorted(m.body for m in got) == sorted(
        [["one", i] for i in range(10)] + [["two", i] for i in range(10)])
    assert len({m.stream for m in got}) == 2


async def test_push_waits_while_no_puller_is_connected(addresses: Addresses) -> None:
    """Backpressure, not a silent drop: ``send`` waits for a puller, ``send_nowait``
    raises ``anyio.WouldBlock``; a send cancelled while waiting sent nothing."""
    with anyio.fail_after(10):
        async with shoal.open_pusher(bind=addresses.fresh()) as push:
            with pytest.raises(anyio.WouldBlock):
                push.send_nowait("nobody")
            assert await still_waiting(lambda: push.send("cancelled while waiting"))
            assert push.statistics().sent == 0
            async with shoal.open_puller(connect=push.endpoints) as pull:
                await push.send("first real")
                first = await pull.receive()
            assert first.body == "first real"
            assert first.seq == 0
            assert push.statistics().sent == 1


async def test_push_waits_at_the_high_water_mark() -> None:
    """A puller that does not read fills the queues; then ``send`` waits (it does not
    drop) and ``send_nowait`` raises ``anyio.WouldBlock``. Nothing sent is lost."""
    big = b"x" * 65536
    with anyio.fail_after(10):
        async with (
            shoal.open_puller(bind=LOOPBACK, high_water_mark=1) as pull,
            shoal.open_pusher(connect=pull.endpoints, high_water_mark=1) as push,
        ):
            await push.send("handshake")
            assert (await pull.receive()).body == "handshake"
            sent = 0
            while True:  # ends only once a send has waited, i.e. every queue is full
                with anyio.move_on_after(0.05) as waited:
                    await push.send(big)
                if waited.cancelled_caught:
                    break
                sent += 1
            with pytest.raises(anyio.WouldBlock):
                push.send_nowait("full")
            assert push.statistics().sent == 1 + sent
            got = 0
            while got < sent:
                got += len(await pull.receive_batch())
            assert got == sent
            await push.send("space again")
            assert (await pull.receive()).body == "space again"


# -- request/reply -----------------------------------------------------------------------


def answer(body: dict[str, int]) -> dict[str, int]:
    return {"n": body["n"], "square": body["n"] ** 2 + 1}


async def test_concurrent_requests_are_spread_over_repliers_and_each_reply_matches(
    addresses: Addresses,
) -> None:
    handled: list[Counter[int]] = [Counter(), Counter()]

    async def serve(i: int, rep: shoal.Replier) -> None:
        async for req in rep:
            handled[i][req.body["n"]] += 1
            await req.reply(answer(req.body))

    results: dict[int, Any] = {}
    with anyio.fail_after(30):
        async with (
            shoal.open_replier(bind=addresses.fresh()) as rep0,
            shoal.open_replier(bind=addresses.fresh()) as rep1,
            shoal.open_requester(connect=rep0.endpoints + rep1.endpoints) as client,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(serve, 0, rep0)
            nursery.start_soon(serve, 1, rep1)
            # handshake: DEALER only deals to connected repliers; wait until both are
            n = -1
            while not (handled[0] and handled[1]):
                assert await client.request({"n": n}) == answer({"n": n})
                n -= 1
            warmup = [sum(h.values()) for h in handled]

            async def ask(n: int) -> None:
                results[n] = await client.request({"n": n})

            async with anyio.create_task_group() as requests:
                for n in range(1000):
                    requests.start_soon(ask, n)
            stats = client.statistics()
            nursery.cancel_scope.cancel()

    assert results == {n: answer({"n": n}) for n in range(1000)}
    assert all(sum(h.values()) > w for h, w in zip(handled, warmup, strict=True)), (
        f"both repliers got work: {[sum(h.values()) for h in handled]}")
    served = handled[0] + handled[1]
    assert all(served[n] == 1 for n in range(1000)), "each request answered exactly once"
    assert stats.in_flight == 0
    assert stats.unmatched == 0
    assert stats.replies == stats.sent


async def test_request_reply_bodies_of_every_msgpack_type_and_headers_arrive_untouched(
    addresses: Addresses,
) -> None:
    async def echo(rep: shoal.Replier) -> None:
        async for req in rep:
            assert req.message.kind is Kind.REQUEST
            await req.reply(req.body, headers={**req.headers, "echoed": True})

    with anyio.fail_after(10):
        async with (
            shoal.open_replier(bind=addresses.fresh()) as rep,
            shoal.open_requester(connect=rep.endpoints) as client,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(echo, rep)
            replies = [await client.request_message(body, headers=headers_for(i))
                       for i, body in enumerate(BODIES)]
            nursery.cancel_scope.cancel()
    assert [m.body for m in replies] == BODIES
    assert [dict(m.headers) for m in replies] == [
        {**headers_for(i), "echoed": True} for i in range(len(BODIES))]
    assert {m.kind for m in replies} == {Kind.REPLY}
    assert len({m.correlation for m in replies}) == len(BODIES)


async def test_a_replier_may_connect_to_a_bound_requester(addresses: Addresses) -> None:
    with anyio.fail_after(10):
        async with shoal.open_requester(bind=addresses.fresh()) as client:
            endpoints = getattr(client, "endpoints", None)
            assert endpoints, "a bound requester reports where it is bound"
            async with anyio.create_task_group() as nursery:
                await nursery.start(partial(shoal.serve_replier, negate, connect=endpoints))
                assert await client.request(5) == -5
                nursery.cancel_scope.cancel()


def negate(req: shoal.Request) -> Any:
    return -req.body


async def test_serve_replier_answers_with_sync_and_async_handlers(addresses: Addresses) -> None:
    def double(req: shoal.Request) -> Any:
        return req.body * 2

    async def add(req: shoal.Request) -> Any:
        await anyio.lowlevel.checkpoint()
        return req.body["a"] + req.body["b"]

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            sync_rep = await nursery.start(
                partial(shoal.serve_replier, double, bind=addresses.fresh()))
            async_rep = await nursery.start(
                partial(shoal.serve_replier, add, bind=addresses.fresh()))
            assert isinstance(sync_rep, shoal.Replier)
            async with (
                shoal.open_requester(connect=sync_rep.endpoints) as c1,
                shoal.open_requester(connect=async_rep.endpoints) as c2,
            ):
                assert await c1.request(21) == 42
                assert await c1.request("ab") == "abab"
                assert await c2.request({"a": 1, "b": 2}) == 3
            assert sync_rep.statistics().replied == 2
            assert async_rep.statistics().replied == 1
            nursery.cancel_scope.cancel()


async def test_a_failing_handler_becomes_remote_error_and_serving_goes_on(
    addresses: Addresses,
) -> None:
    def handler(req: shoal.Request) -> Any:
        if req.body == "boom":
            raise ValueError("no boom allowed")
        if req.body == "unencodable":
            return object()
        return req.body.upper()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(
                partial(shoal.serve_replier, handler, bind=addresses.fresh()))
            async with shoal.open_requester(connect=rep.endpoints) as client:
                with pytest.raises(RemoteError) as boom:
                    await client.request("boom")
                assert await client.request("next") == "NEXT"
                with pytest.raises(RemoteError) as unencodable:
                    await client.request("unencodable")
                assert await client.request("still serving") == "STILL SERVING"
                client_stats = client.statistics()
            rep_stats = rep.statistics()
            nursery.cancel_scope.cancel()

    assert "ValueError" in boom.value.message
    assert "no boom allowed" in boom.value.message
    assert "encode" in unencodable.value.message
    assert isinstance(boom.value, ShoalError)
    assert (client_stats.sent, client_stats.replies, client_stats.remote_errors) == (4, 4, 2)
    assert (rep_stats.received, rep_stats.replied, rep_stats.failed) == (4, 2, 2)


# -- a plain ZeroMQ REQ socket as the requester ------------------------------------------------


async def raw_receive(sock: zmq.Socket[bytes]) -> list[bytes]:
    """One message from a raw pyzmq socket, waiting in the event loop (the caller's
    deadline).
    Its FD is edge-triggered: read EVENTS before every wait."""
    while not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        await anyio.wait_readable(sock.FD)
    return sock.recv_multipart(zmq.NOBLOCK)


def raw_request(body: Any, rid: int) -> bytes:
    """A request envelope as a foreign requester would build it."""
    return encode(Kind.REQUEST, b"", body, sender=b"R" * 16, epoch=5, stream=1,
                        seq=rid, timestamp_ns=time.time_ns(), correlation=rid)


async def test_a_plain_zmq_req_socket_gets_replies_and_errors(addresses: Addresses) -> None:
    """REQ frames a request as an empty delimiter and the envelope; the replier answers
    with the delimiter in front, so REQ takes the answer (it waited forever before:
    the request was dropped as a frame-count). REQ's lock-step needs every answer."""
    def add(req: shoal.Request) -> Any:
        if req.body == "boom":
            raise ValueError("no boom")
        if isinstance(req.body, bytes):
            return req.body[::-1]
        return req.body["a"] + req.body["b"]

    big = bytes(range(256)) * 300  # 76,800 bytes: a split body both ways
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as nursery:
                rep = await nursery.start(partial(shoal.serve_replier, add,
                                                  bind=addresses.fresh(), context=ctx))
                req = ctx.socket(zmq.REQ)
                req.linger = 0
                try:
                    req.connect(rep.endpoints[0])
                    req.send(raw_request({"a": 1, "b": 2}, 1))
                    (answer,) = await raw_receive(req)
                    reply = decode(answer)
                    assert (reply.kind, reply.body, reply.correlation) == (Kind.REPLY, 3, 1)

                    req.send(raw_request("boom", 2))
                    (answer,) = await raw_receive(req)
                    error = decode(answer)
                    assert (error.kind, error.correlation) == (Kind.ERROR, 2)
                    assert "no boom" in error.body

                    head = raw_request(b"", 3)
                    at = head.index(b"\0") + 3  # the flags byte: raw body, split
                    req.send_multipart([head[:at] + bytes([head[at] | 0x04]) + head[at + 1:],
                                        big])
                    head_back, body_back = await raw_receive(req)
                    reply = decode(head_back, [body_back])
                    assert (reply.correlation, reply.body) == (3, big[::-1])
                finally:
                    req.close()
                st = rep.statistics()
                assert (st.received, st.replied, st.failed, st.malformed) == (3, 2, 1, 0)
                nursery.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)


async def test_a_repeated_req_framed_request_is_answered_from_the_cache_with_the_delimiter(
) -> None:
    """A DEALER framing like REQ (empty delimiter first) sends one request twice: both
    answers come with the delimiter, and the handler runs once."""
    calls: list[Any] = []

    def handler(req: shoal.Request) -> Any:
        calls.append(req.body)
        return req.body * 2

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as nursery:
                rep = await nursery.start(partial(shoal.serve_replier, handler,
                                                  bind=LOOPBACK, context=ctx))
                dealer = ctx.socket(zmq.DEALER)
                dealer.linger = 0
                try:
                    dealer.connect(rep.endpoints[0])
                    frame = raw_request(21, 7)
                    dealer.send_multipart([b"", frame])
                    first = await raw_receive(dealer)
                    dealer.send_multipart([b"", frame])
                    again = await raw_receive(dealer)
                    dealer.send_multipart([b""])  # an empty envelope, nothing after it
                    dealer.send_multipart([b"", frame, b"x", b"y"])  # too many frames
                finally:
                    dealer.close()
                await eventually(lambda: rep.statistics().malformed == 2)
                st = rep.statistics()
                nursery.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)
    assert first[0] == again[0] == b""
    assert len(first) == len(again) == 2
    assert decode(first[1]).body == decode(again[1]).body == 42
    assert calls == [21]
    assert (st.received, st.duplicates) == (1, 1)
    assert st.malformed_by_reason == {"no-topic-delimiter": 1, "frame-count": 1}


BODY_MISTAKES: dict[str, Callable[[Any], Any]] = {
    "subscript": lambda body: body["a"] + body["b"],
    "in": lambda body: "a" in body,
    "dict method": lambda body: body.get("a"),
    "arithmetic": lambda body: body + 1,
    "len": lambda body: len(body),
    "iteration": lambda body: list(body),
}


@pytest.mark.parametrize("mistake", sorted(BODY_MISTAKES))
async def test_a_handler_that_takes_the_request_for_its_body_is_told_so(
    mistake: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """``def add(body): return body["a"] + body["b"]`` gets a ``Request``: the caller's
    ``RemoteError`` (and a warning in the replier's log) says that and where the body
    is, not only ``'Request' object is not subscriptable``."""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(shoal.serve_replier, BODY_MISTAKES[mistake],
                                              bind=LOOPBACK))
            async with shoal.open_requester(connect=rep.endpoints) as client:
                with pytest.raises(RemoteError) as info:
                    await client.request({"a": 1, "b": 2})
            nursery.cancel_scope.cancel()
    assert "received a shoal.Request" in info.value.message
    assert "req.body" in info.value.message
    assert any("received a shoal.Request" in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING")


async def test_a_handler_error_that_does_not_involve_the_request_gets_no_such_hint() -> None:
    def handler(req: shoal.Request) -> Any:
        return req.body["missing"]  # the body is a dict: KeyError, a real handler bug

    def wrong_type(req: shoal.Request) -> Any:
        return req.body + 1  # the body is a str: TypeError about str and int

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(shoal.serve_replier, handler, bind=LOOPBACK))
            rep2 = await nursery.start(partial(shoal.serve_replier, wrong_type,
                                               bind=LOOPBACK))
            async with (
                shoal.open_requester(connect=rep.endpoints) as client,
                shoal.open_requester(connect=rep2.endpoints) as client2,
            ):
                with pytest.raises(RemoteError) as key_error:
                    await client.request({"a": 1})
                with pytest.raises(RemoteError) as type_error:
                    await client2.request("text")
            nursery.cancel_scope.cancel()
    assert key_error.value.message == "KeyError: 'missing'"
    assert type_error.value.message.startswith("TypeError: ")
    assert "shoal.Request" not in type_error.value.message


async def test_fail_reports_a_remote_error_with_the_reason() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_replier(bind=LOOPBACK) as rep,
            shoal.open_requester(connect=rep.endpoints) as client,
            anyio.create_task_group() as nursery,
        ):
            async def refuse() -> None:
                req = await rep.receive()
                await req.fail("out of stock")

            nursery.start_soon(refuse)
            with pytest.raises(RemoteError, match="out of stock") as info:
                await client.request({"item": 1})
    assert info.value.message == "out of stock"


async def test_a_late_reply_to_a_cancelled_request_is_counted_unmatched() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_replier(bind=LOOPBACK) as rep,
            shoal.open_requester(connect=rep.endpoints) as client,
            anyio.create_task_group() as nursery,
        ):
            give_up = anyio.CancelScope()

            async def impatient() -> None:
                with give_up:
                    await client.request("slow")

            nursery.start_soon(impatient)
            slow = await rep.receive()
            give_up.cancel()
            await wait_all_tasks_blocked()
            assert client.statistics().in_flight == 0
            await slow.reply("too late")

            async def serve_next() -> None:
                req = await rep.receive()
                await req.reply("on time")

            nursery.start_soon(serve_next)
            # the late reply arrives first on the same pipe and is dropped
            assert await client.request("fast") == "on time"
            stats = client.statistics()
    assert (stats.unmatched, stats.replies, stats.in_flight) == (1, 1, 0)


# -- statistics and closing -----------------------------------------------------------------


async def test_statistics_count_what_happened() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=LOOPBACK) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["s/"]) as sub,
            shoal.open_pusher(bind=LOOPBACK) as push,
            shoal.open_puller(connect=push.endpoints) as pull,
        ):
            await sync_subscribers(pub.publish_nowait, sub)
            before = sub.statistics()
            published_before = pub.statistics().published
            topics_before = pub.statistics().topics
            for topic in ["s/a", "s/b", "s/a", "zzz"]:
                await pub.publish(topic, 1)
            assert pub.statistics() == shoal.patterns.PublisherStatistics(
                published=published_before + 4, topics=topics_before + 3, subscribers=1)
            [got] = await sync_subscribers(pub.publish_nowait, sub)
            assert len(got) == 3
            after = sub.statistics()
            assert after.received - before.received >= 3  # plus the handshake's own probes
            assert (after.malformed, after.malformed_by_reason) == (0, {})
            assert (after.gaps, after.gaps_by_publisher, after.out_of_order) == (0, {}, 0)

            for i in range(5):
                await push.send(i)
            for _ in range(5):
                await pull.receive()
            assert push.statistics().sent == 5
            assert pull.statistics() == shoal.patterns.PullerStatistics(
                received=5, malformed=0, malformed_by_reason={})


async def test_publisher_statistics_start_at_zero_and_count_topics() -> None:
    with anyio.fail_after(5):
        async with shoal.open_publisher(bind=LOOPBACK) as pub:
            assert pub.statistics() == shoal.patterns.PublisherStatistics(
                published=0, topics=0, subscribers=0)
            for topic in ["a", "b", "a"]:
                await pub.publish(topic, None)
            assert pub.statistics() == shoal.patterns.PublisherStatistics(
                published=3, topics=2, subscribers=0)


def _open(kind: str) -> AbstractAsyncContextManager[Any]:
    if kind == "subscriber":
        return shoal.open_subscriber(bind=LOOPBACK)
    if kind == "puller":
        return shoal.open_puller(bind=LOOPBACK)
    return shoal.open_replier(bind=LOOPBACK)


@pytest.mark.parametrize("kind", ["subscriber", "puller", "replier"])
async def test_async_for_ends_cleanly_when_the_receiver_is_closed_from_another_task(
    kind: str,
) -> None:
    items: list[Any] = []
    finished = anyio.Event()
    with anyio.fail_after(5):
        async with _open(kind) as rx:
            async def consume() -> None:
                async for item in rx:
                    items.append(item)
                finished.set()

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(consume)
                await wait_all_tasks_blocked()  # parked in receive()
                await rx.aclose()
            assert finished.is_set()
            assert items == []
            with pytest.raises(ClosedError):
                await rx.receive()


# -- API misuse -------------------------------------------------------------------------------


async def test_an_unencodable_body_is_refused_and_no_sequence_number_is_lost() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_publisher(bind=LOOPBACK) as pub,
            shoal.open_subscriber(connect=pub.endpoints, topics=["t"]) as sub,
        ):
            await sync_subscribers(pub.publish_nowait, sub)
            with pytest.raises(EncodeError):
                await pub.publish("t", object())  # before the topic's first message
            await pub.publish("t", "first")
            with pytest.raises(EncodeError):
                await pub.publish("t", {"bad": object()})
            with pytest.raises(EncodeError):
                pub.publish_nowait("t", "ok", headers={"bad": object()})
            await pub.publish("t", "second")
            [got] = await sync_subscribers(pub.publish_nowait, sub)
            stats = sub.statistics()
    assert [(m.body, m.seq) for m in got] == [("first", 0), ("second", 1)]
    assert stats.gaps == 0
    assert pub.statistics().published >= 2


async def test_a_pusher_refuses_an_unencodable_body_without_using_a_sequence_number() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_pusher(bind=LOOPBACK) as push,
            shoal.open_puller(connect=push.endpoints) as pull,
        ):
            await push.send("a")
            with pytest.raises(EncodeError):
                await push.send(object())
            with pytest.raises(EncodeError):
                push.send_nowait({1, 2})
            await push.send("b")
            got = [await pull.receive() for _ in range(2)]
    assert [(m.body, m.seq) for m in got] == [("a", 0), ("b", 1)]
    assert push.statistics().sent == 2


async def test_a_requester_refuses_an_unencodable_body_and_sends_nothing() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_replier(bind=LOOPBACK) as rep,
            shoal.open_requester(connect=rep.endpoints) as client,
        ):
            with pytest.raises(EncodeError):
                await client.request(object())
            assert client.statistics().sent == 0
            assert client.statistics().in_flight == 0


async def test_a_closed_resource_raises_closed_error_which_is_anyios_and_trios_closed_error(
) -> None:
    with anyio.fail_after(5):
        async with shoal.open_pusher(bind=LOOPBACK) as push:
            pass
        async with shoal.open_publisher(bind=LOOPBACK) as pub:
            pass
        async with shoal.open_subscriber(bind=LOOPBACK) as sub:
            pass
        async with shoal.open_requester(bind=LOOPBACK) as client:
            pass
        with pytest.raises(ClosedError) as pushed:
            await push.send("x")
        assert isinstance(pushed.value, anyio.ClosedResourceError)
        assert isinstance(pushed.value, trio.ClosedResourceError)  # on every loop
        with pytest.raises(anyio.ClosedResourceError):
            push.send_nowait("x")
        with pytest.raises(ClosedError):
            await pub.publish("t", 1)
        with pytest.raises(ClosedError):
            await sub.receive()
        with pytest.raises(ClosedError):
            sub.receive_nowait()
        with pytest.raises(ClosedError):
            await client.request(1)
        assert client.statistics().in_flight == 0


async def test_closing_a_requester_wakes_waiting_requests_with_closed_error() -> None:
    outcomes: list[BaseException] = []
    with anyio.fail_after(5):
        async with (
            shoal.open_replier(bind=LOOPBACK) as rep,
            shoal.open_requester(connect=rep.endpoints) as client,
        ):
            async def ask(n: int) -> None:
                try:
                    await client.request(n)
                except ClosedError as exc:
                    outcomes.append(exc)

            async with anyio.create_task_group() as nursery:
                for n in range(3):
                    nursery.start_soon(ask, n)
                for _ in range(3):
                    await rep.receive()  # all three sent, none answered
                await wait_all_tasks_blocked()
                await client.aclose()
    assert len(outcomes) == 3


Opener = Callable[..., AbstractAsyncContextManager[Any]]
OPENERS: dict[str, Opener] = {
    "publisher": shoal.open_publisher,
    "subscriber": shoal.open_subscriber,
    "pusher": shoal.open_pusher,
    "puller": shoal.open_puller,
    "requester": shoal.open_requester,
    "replier": shoal.open_replier,
}


@pytest.mark.parametrize("side", ["bind", "connect"])
@pytest.mark.parametrize(
    "endpoint",
    ["http://x", "", "127.0.0.1:5555", "udp://127.0.0.1:5555", "tcp://127.0.0.1:notaport"],
)
@pytest.mark.parametrize("opener", list(OPENERS))
async def test_a_bad_endpoint_raises_invalid_endpoint(
    opener: str, endpoint: str, side: str
) -> None:
    with anyio.fail_after(5):
        with pytest.raises(InvalidEndpoint) as info:
            async with OPENERS[opener](**{side: endpoint}):
                pass
        assert isinstance(info.value, LocalProtocolError)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("endpoint", "side", "says"), [
    ("tcp://127.0.0.1:99999", "bind", "from 0 to 65535"),  # libzmq wrapped it to 34463
    ("tcp://127.0.0.1:99999", "connect", "from 1 to 65535"),
    ("tcp://127.0.0.1:-5", "bind", "from 0 to 65535"),  # libzmq bound 65531
    ("tcp://127.0.0.1", "bind", "no port"),  # libzmq: "Invalid argument"
    ("tcp://127.0.0.1", "connect", "no port"),
    ("tcp://127.0.0.1:*", "connect", "from 1 to 65535"),
])
async def test_a_tcp_endpoint_without_a_valid_port_says_what_to_write(
    endpoint: str, side: str, says: str
) -> None:
    with anyio.fail_after(5):
        with pytest.raises(InvalidEndpoint, match=says):
            async with shoal.open_puller(**{side: endpoint}):  # type: ignore[call-overload]
                pass


@pytest.mark.parametrize("opener", list(OPENERS))
async def test_a_bad_endpoint_in_a_list_raises_invalid_endpoint(opener: str) -> None:
    with anyio.fail_after(5):
        with pytest.raises(InvalidEndpoint):
            async with OPENERS[opener](bind=[LOOPBACK, "http://x"]):
                pass


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"bind": None, "connect": None}, {"bind": [], "connect": []}],
    ids=["nothing", "none", "empty-lists"],
)
@pytest.mark.parametrize("opener", list(OPENERS))
async def test_opening_without_bind_or_connect_raises_local_protocol_error(
    opener: str, kwargs: dict[str, Any]
) -> None:
    with anyio.fail_after(5):
        with pytest.raises(LocalProtocolError, match="bind="):
            async with OPENERS[opener](**kwargs):
                pass


@pytest.mark.parametrize("value", [b"tcp://127.0.0.1:*", 5555, [b"tcp://127.0.0.1:*"]])
async def test_endpoints_that_are_not_strings_raise_local_protocol_error(value: Any) -> None:
    with anyio.fail_after(5):
        with pytest.raises(LocalProtocolError):
            async with shoal.open_pusher(bind=value):
                pass


async def test_serve_replier_without_endpoints_raises_local_protocol_error() -> None:
    with anyio.fail_after(5), pytest.raises(LocalProtocolError):
        await shoal.serve_replier(negate)


async def test_a_topic_with_nul_raises_encode_error() -> None:
    with anyio.fail_after(5):
        async with shoal.open_publisher(bind=LOOPBACK) as pub:
            with pytest.raises(EncodeError):
                await pub.publish("sensors\0room1", 1)
            with pytest.raises(EncodeError):
                pub.publish_nowait("\0", 1)
            with pytest.raises(EncodeError):
                await pub.publish(b"bytes-topic", 1)  # type: ignore[arg-type]
            assert pub.statistics() == shoal.patterns.PublisherStatistics(0, 0, 0)
        with pytest.raises(EncodeError):
            async with shoal.open_subscriber(bind=LOOPBACK, topics=["ok", "bad\0"]):
                pass
        async with shoal.open_subscriber(bind=LOOPBACK) as sub:
            with pytest.raises(EncodeError):
                sub.subscribe("a\0")
            assert sub.topics == {""}


async def test_subscriber_argument_mistakes_raise_local_protocol_error() -> None:
    with anyio.fail_after(5):
        with pytest.raises(LocalProtocolError, match="list"):
            async with shoal.open_subscriber(bind=LOOPBACK, topics="sensors/"):
                pass
        with pytest.raises(LocalProtocolError, match="batch"):
            async with shoal.open_subscriber(bind=LOOPBACK, batch=0):
                pass
        async with shoal.open_subscriber(bind=LOOPBACK, topics=["a"]) as sub:
            with pytest.raises(LocalProtocolError, match="not subscribed"):
                sub.unsubscribe("b")


async def test_answering_a_request_twice_raises_local_protocol_error() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_replier(bind=LOOPBACK) as rep,
            shoal.open_requester(connect=rep.endpoints) as client,
            anyio.create_task_group() as nursery,
        ):
            async def answer_twice() -> None:
                req = await rep.receive()
                assert not req.answered
                await req.reply("once")
                assert req.answered
                with pytest.raises(LocalProtocolError, match="already answered"):
                    await req.reply("twice")
                with pytest.raises(LocalProtocolError, match="already answered"):
                    await req.fail("and a failure")

            nursery.start_soon(answer_twice)
            assert await client.request("q") == "once"
    assert rep.statistics().replied == 1


async def test_an_unencodable_reply_leaves_the_request_open_for_fail() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_replier(bind=LOOPBACK) as rep,
            shoal.open_requester(connect=rep.endpoints) as client,
            anyio.create_task_group() as nursery,
        ):
            async def answer_badly() -> None:
                req = await rep.receive()
                with pytest.raises(EncodeError):
                    await req.reply(object())
                assert not req.answered
                await req.fail("could not encode")

            nursery.start_soon(answer_badly)
            with pytest.raises(RemoteError, match="could not encode"):
                await client.request("q")


def test_messages_are_immutable() -> None:
    msg = Message("t", 1, Kind.PUBLISH, "00" * 16, 1, 1, 0, 0)
    with pytest.raises(AttributeError):
        msg.body = 2  # type: ignore[misc]


async def test_a_requester_refuses_batch_zero_like_the_receivers() -> None:
    with anyio.fail_after(5), pytest.raises(LocalProtocolError, match="batch"):
        async with shoal.open_requester(bind=LOOPBACK, batch=0):
            pass


@pytest.mark.parametrize("opener", list(OPENERS))
async def test_a_bad_high_water_mark_raises_local_protocol_error(opener: str) -> None:
    with anyio.fail_after(5), pytest.raises(LocalProtocolError):
        async with OPENERS[opener](bind=LOOPBACK, high_water_mark=-5):
            pass


def unclosed_socket_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "Unclosed socket" in str(w.message)]


@pytest.mark.parametrize("opener", list(OPENERS))
async def test_closing_a_resource_closes_its_socket(opener: str) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gc.collect()  # anything unclosed from earlier tests warns now, not below
    try:
        with anyio.fail_after(5), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with OPENERS[opener](bind=LOOPBACK, context=ctx):
                pass
            gc.collect()
    finally:
        ctx.destroy(linger=0)
    assert unclosed_socket_warnings(caught) == []


@pytest.mark.parametrize("opener", ["subscriber", "puller", "replier"])
async def test_a_refused_open_leaves_no_socket_open(opener: str) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gc.collect()
    try:
        with anyio.fail_after(5), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(LocalProtocolError, match="batch"):
                async with OPENERS[opener](bind=LOOPBACK, batch=0, context=ctx):
                    pass
            gc.collect()
    finally:
        ctx.destroy(linger=0)
    assert unclosed_socket_warnings(caught) == []


async def test_a_reply_sent_just_before_the_replier_closes_still_arrives() -> None:
    """The replier answers and closes at once, and the requester reads only after the
    disconnect has been processed. The reply had arrived and must not be thrown away
    with the connection (it was, when the requester's DEALER set ZMQ_IMMEDIATE:
    libzmq then drops a disconnected peer's unread inbound messages)."""
    with anyio.fail_after(30):
        for _ in range(5):
            async with (
                shoal.open_replier(bind="tcp://127.0.0.1:*") as rep,
                shoal.open_requester(connect=rep.endpoints) as client,
            ):
                async def serve_one_then_close(rep: shoal.Replier = rep) -> None:
                    req = await rep.receive()
                    await req.reply(req.body)
                    await rep.aclose()
                    # Block the event loop (not libzmq's I/O thread): the reply lands and
                    # the disconnect is handled before the requester can read.
                    time.sleep(0.2)  # noqa: ASYNC251

                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(serve_one_then_close)
                    with anyio.fail_after(2):
                        assert await client.request(b"ping") == b"ping"


@pytest.mark.parametrize("puller_binds", [True, False])
async def test_work_sent_just_before_the_pusher_closes_still_arrives(puller_binds: bool) -> None:
    """Like the reply above: what a pusher sent before closing is delivered even if the
    puller reads only after the disconnect was processed."""
    with anyio.fail_after(30):
        for _ in range(3):
            if puller_binds:
                async with shoal.open_puller(bind="tcp://127.0.0.1:*") as pull:
                    async with shoal.open_pusher(connect=pull.endpoints) as push:
                        await push.send(b"last words")
                    time.sleep(0.2)  # noqa: ASYNC251 - libzmq handles the close meanwhile
                    assert (await pull.receive()).body == b"last words"
            else:
                async with (
                    shoal.open_pusher(bind="tcp://127.0.0.1:*") as push,
                    shoal.open_puller(connect=push.endpoints) as pull,
                ):
                    await push.send(b"last words")
                    await push.aclose()
                    time.sleep(0.2)  # noqa: ASYNC251 - libzmq handles the close meanwhile
                    assert (await pull.receive()).body == b"last words"


async def test_a_bad_max_streams_is_refused_before_anything_is_bound() -> None:
    ep = f"inproc://max-streams-{id(object())}"
    with anyio.fail_after(5):
        with pytest.raises(LocalProtocolError, match="max_streams"):
            async with shoal.open_subscriber(bind=ep, max_streams=0):
                pass  # pragma: no cover - never opened
        async with shoal.open_subscriber(bind=ep) as sub:  # the address is still free
            assert sub.endpoints == [ep]


@pytest.mark.parametrize("module", ["shoal.patterns._pubsub", "shoal.patterns._pushpull"])
def test_the_best_effort_modules_do_not_import_the_reliable_ones(module: str) -> None:
    """The ``reliable=`` switch lives in ``shoal.patterns._open``, which imports both
    kinds; a best-effort module stays free of the reliable machinery."""
    import ast
    import importlib

    source = Path(importlib.import_module(module).__file__ or "").read_text()
    imported = {node.module for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and node.module}
    assert "shoal.patterns._common" in imported  # the walk sees the imports
    assert not {m for m in imported if "reliable" in m or m.endswith(("_open", "_acked"))}
