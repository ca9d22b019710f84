"""The hot paths as specifications: batch sends, split large bodies, busy polling,
and the socket-layer rule that no wait parks after a libzmq call without looking.

Speed itself is measured in ``benchmarks/``, never here: these tests pin what the
fast paths must still do (order, exact counts, what a cancelled batch did, what a
hostile peer's split frames become). Every async test runs under trio, asyncio's
selector loop and uvloop; every I/O test runs under ``anyio.fail_after``.
"""

from __future__ import annotations

import itertools
import os
import random
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import zmq

import shoal
from shoal import Kind
from shoal._core import (
    HEADER,
    SPLIT_AT,
    GapTracker,
    StreamEncoder,
    decode,
    encode,
    encode_topic,
    fast_decoder,
)
from shoal._core._envelope import FLAG_RAW, FLAG_SPLIT
from shoal._zmq._socket import Socket
from shoal.errors import EncodeError, LocalProtocolError
from support.endpoints import Addresses
from support.naive import NaiveSocket, StaleEventsSocket
from support.pubsub import sync_subscribers

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"
BIG = os.urandom(SPLIT_AT * 16)  # 1 MiB: travels as a second frame
_names = itertools.count()


# -- batch sends ----------------------------------------------------------------------


async def test_send_many_delivers_every_item_in_order(addresses: Addresses) -> None:
    bodies: list[Any] = [b"raw %d" % i if i % 3 else {"n": i} for i in range(1000)]
    with anyio.fail_after(10):
        async with (shoal.open_puller(bind=addresses.fresh()) as pull,
                    shoal.open_pusher(connect=pull.endpoints[0]) as push):
            await push.send_many(bodies)
            got: list[Any] = []
            while len(got) < len(bodies):
                got.extend(m.body for m in await pull.receive_batch())
    assert got == bodies
    assert push.statistics().sent == len(bodies)


async def test_send_many_nowait_sends_a_prefix_and_says_how_long() -> None:
    """At the high-water mark the batch stops: exactly the first ``n`` went, and the
    sequence numbers of the rest are used by the next send."""
    with anyio.fail_after(10):
        async with (shoal.open_puller(bind=LOOPBACK, high_water_mark=5) as pull,
                    shoal.open_pusher(connect=pull.endpoints[0], high_water_mark=5) as push):
            await push.send(b"probe")  # waits until connected
            await pull.receive()
            sent = push.send_many_nowait([b"%d" % i for i in range(100_000)])
            assert 0 < sent < 100_000
            assert push.statistics().sent == 1 + sent
            got: list[shoal.Message] = []
            while len(got) < sent:
                got.extend(m for m in await pull.receive_batch())
    assert [m.body for m in got] == [b"%d" % i for i in range(sent)]
    assert [m.seq for m in got] == list(range(1, sent + 1))


async def test_a_batch_that_cannot_be_encoded_sends_nothing() -> None:
    with anyio.fail_after(10):
        async with (shoal.open_puller(bind=LOOPBACK) as pull,
                    shoal.open_pusher(connect=pull.endpoints[0]) as push):
            with pytest.raises(EncodeError):
                await push.send_many([b"fine", {"not": object()}, b"fine too"])
            with pytest.raises(EncodeError):
                push.send_many_nowait([b"fine", object()])
            assert push.statistics().sent == 0
            await push.send(b"after")
            msg = await pull.receive()
    assert (msg.body, msg.seq) == (b"after", 0)


async def test_a_cancelled_send_many_sent_exactly_what_statistics_say() -> None:
    with anyio.fail_after(10):
        async with (shoal.open_puller(bind=LOOPBACK, high_water_mark=10) as pull,
                    shoal.open_pusher(connect=pull.endpoints[0], high_water_mark=10) as push):
            await push.send(b"hello")
            await pull.receive()
            # 40 MiB: more than the high-water marks and the kernel's buffers hold
            bodies = [b"%08d" % i * 512 for i in range(10_000)]
            with anyio.move_on_after(0.3) as scope:
                await push.send_many(bodies)
            assert scope.cancelled_caught
            sent = push.statistics().sent - 1
            assert 0 < sent < 10_000
            # a fence behind them on the one connection: once it is here, so is all
            # that was sent before it, and nothing else is on its way
            got: list[bytes] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(push.send, b"fence")  # waits for room: queues are full
                while not got or got[-1] != b"fence":
                    got.extend(m.body for m in await pull.receive_batch())
    assert got[:-1] == bodies[:sent]


async def test_publish_many_takes_pairs_and_triples_and_numbers_each_topic() -> None:
    with anyio.fail_after(10):
        async with (shoal.open_publisher(bind=LOOPBACK) as pub,
                    shoal.open_subscriber(connect=pub.endpoints[0], topics=["t/"]) as sub):
            await sync_subscribers(pub.publish_nowait, sub)
            with pytest.raises(EncodeError):  # uses no sequence number: no gap below
                await pub.publish_many([("t/a", 0), ("t/a", object())])
            await pub.publish_many([("t/a", 1), ("t/b", 2, {"h": "x"}), ("t/a", b"3")])
            got = [await sub.receive() for _ in range(3)]
            stats = sub.statistics()
    assert [(m.topic, m.body, dict(m.headers), m.seq) for m in got] == [
        ("t/a", 1, {}, 0), ("t/b", 2, {"h": "x"}, 0), ("t/a", b"3", {}, 1)]
    assert stats.gaps == 0


async def test_publish_many_refuses_a_malformed_item_before_sending_anything() -> None:
    with anyio.fail_after(10):
        async with shoal.open_publisher(bind=LOOPBACK) as pub:
            with pytest.raises(LocalProtocolError, match="tuples"):
                pub.publish_many_nowait([("t", 1), "t"])  # type: ignore[list-item]
            with pytest.raises(EncodeError):
                pub.publish_many_nowait([("t", 1), ("t", object())])
            assert pub.statistics().published == 0


# -- large bodies ---------------------------------------------------------------------


async def test_large_bodies_arrive_whole_on_every_pattern(addresses: Addresses) -> None:
    big_msgpack = {"blob": BIG[: SPLIT_AT * 2], "n": 7}
    with anyio.fail_after(20):
        async with (shoal.open_puller(bind=addresses.fresh()) as pull,
                    shoal.open_pusher(connect=pull.endpoints[0]) as push):
            await push.send(BIG)
            await push.send_many([BIG, big_msgpack, b"small"])
            got = [(await pull.receive()).body for _ in range(4)]
        assert got == [BIG, BIG, big_msgpack, b"small"]

        async with (shoal.open_publisher(bind=addresses.fresh()) as pub,
                    shoal.open_subscriber(connect=pub.endpoints[0]) as sub):
            await sync_subscribers(pub.publish_nowait, sub)
            await pub.publish("big", BIG, headers={"k": 1})
            msg = await sub.receive()
        assert (msg.topic, msg.body, dict(msg.headers)) == ("big", BIG, {"k": 1})

        async def echo(req: shoal.Request) -> Any:
            return req.body

        async with anyio.create_task_group() as tg:
            rep = await tg.start(partial(shoal.serve_replier, echo,
                                              bind=addresses.fresh()))
            async with shoal.open_requester(connect=rep.endpoints[0]) as client:
                assert await client.request(BIG) == BIG
            tg.cancel_scope.cancel()


async def test_a_large_body_travels_as_a_second_frame(
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    raw = zctx.socket(zmq.PULL)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    with anyio.fail_after(10):
        async with shoal.open_pusher(connect=f"tcp://127.0.0.1:{port}", context=zctx) as push:
            await push.send(BIG)
            await push.send(BIG[:SPLIT_AT - 1])
            frames = await anyio.to_thread.run_sync(raw.recv_multipart)
            small = await anyio.to_thread.run_sync(raw.recv_multipart)
    raw.close(linger=0)
    head, body = frames
    assert body == BIG
    assert head[3] == FLAG_RAW | FLAG_SPLIT
    assert len(head) == 1 + HEADER.size
    assert decode(head, [body]).body == BIG
    assert len(small) == 1
    assert decode(small[0]).body == BIG[:SPLIT_AT - 1]


async def test_large_requests_and_replies_travel_split(
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    raw = zctx.socket(zmq.ROUTER)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    got: list[Any] = []
    with anyio.fail_after(10):
        async with (shoal.open_requester(connect=f"tcp://127.0.0.1:{port}",
                                         context=zctx) as client,
                    anyio.create_task_group() as tg):
            async def ask() -> None:
                got.append(await client.request(BIG))
            tg.start_soon(ask)
            route, head, body = await anyio.to_thread.run_sync(raw.recv_multipart)
            request = decode(head, [body])
            assert request.body == BIG
            reply = StreamEncoder(sender=b"r" * 16, epoch=1, stream=1)
            rhead, rbody = reply.encode_parts(Kind.REPLY, b"\0", BIG[::-1], 0, 0,
                                              request.correlation)
            assert rbody is not None
            raw.send_multipart([route, rhead, rbody])
    raw.close(linger=0)
    assert got == [BIG[::-1]]


def split_head(kind: Kind, topic: str = "") -> bytes:
    """A first frame that announces a split raw body."""
    frame = encode(kind, encode_topic(topic), b"", sender=b"s" * 16, epoch=1, stream=1,
                   seq=0, timestamp_ns=0)
    at = frame.index(b"\0") + 3
    return frame[:at] + bytes([FLAG_RAW | FLAG_SPLIT]) + frame[at + 1:]


async def test_a_split_announced_without_its_body_is_dropped_and_counted(
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """A hostile head alone, or a head with two bodies: dropped as frame-count, and
    the next message is not swallowed as a body."""
    head = split_head(Kind.PUSH)
    with anyio.fail_after(10):
        async with shoal.open_puller(bind=LOOPBACK, context=zctx) as pull:
            raw = zctx.socket(zmq.PUSH)
            raw.connect(pull.endpoints[0])
            raw.send(head)
            raw.send_multipart([head, b"body", b"and more"])
            raw.send_multipart([head, b"the body"])
            raw.send(encode(Kind.PUSH, b"", b"next", sender=b"s" * 16, epoch=1, stream=1,
                            seq=1, timestamp_ns=0))
            first = await pull.receive()
            second = await pull.receive()
            stats = pull.statistics()
            raw.close(linger=0)
    assert (first.body, second.body) == (b"the body", b"next")
    assert stats.malformed_by_reason == {"frame-count": 2}


# -- busy polling ---------------------------------------------------------------------


async def test_busy_polling_request_reply_answers_every_request() -> None:
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            rep = await tg.start(partial(shoal.serve_replier, lambda r: r.body * 2,
                                              bind=LOOPBACK, busy_poll=0.001))
            async with shoal.open_requester(connect=rep.endpoints[0], busy_poll=0.001) as c:
                assert [await c.request(i) for i in range(200)] == [2 * i for i in range(200)]
            tg.cancel_scope.cancel()


async def test_a_busy_polling_receiver_lets_other_tasks_run() -> None:
    """A subscriber that always finds its next message while spinning still yields
    now and then: the other task keeps ticking."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(10):
        async with (shoal.open_puller(bind=LOOPBACK, busy_poll=0.01) as pull,
                    shoal.open_pusher(connect=pull.endpoints[0]) as push,
                    anyio.create_task_group() as tg):
            tg.start_soon(tick)
            for _ in range(20):
                await push.send_many([b"x"] * 50)
                for _ in range(50):
                    await pull.receive()
            tg.cancel_scope.cancel()
    assert ticks >= 20


@pytest.mark.parametrize("bad", [-1, "0.1", float("nan"), float("inf"), True, None])
async def test_busy_poll_must_be_a_number_of_seconds(bad: Any) -> None:
    with anyio.fail_after(10):
        with pytest.raises(LocalProtocolError, match="busy_poll"):
            async with shoal.open_puller(bind=LOOPBACK, busy_poll=bad):
                pass
        with pytest.raises(LocalProtocolError, match="busy_poll"):
            async with shoal.open_requester(connect="tcp://127.0.0.1:9", busy_poll=bad):
                pass


async def test_a_node_hands_busy_poll_to_its_channels() -> None:
    with anyio.fail_after(10):
        async with shoal.open_node("busy", interfaces=["127.0.0.1"], busy_poll=0.002) as node:
            async with node.open_puller("jobs") as pull, node.open_publisher("news") as pub:
                assert pull._sock.busy_poll == 0.002
                assert pub._sock.busy_poll == 0.002
            assert node._control._socket.busy_poll == 0.0


# -- the socket layer owns "look before you park" -------------------------------------


def dealer_pair(zctx: zmq.Context[zmq.Socket[bytes]], cls: type[Socket] = Socket,
                ) -> tuple[Socket, zmq.Socket[bytes]]:
    ep = f"inproc://hot-path-{next(_names)}"
    peer = zctx.socket(zmq.DEALER)
    peer.bind(ep)
    ours = cls(zctx.socket(zmq.DEALER), linger_ms=0)
    ours.connect(ep)
    return ours, peer


async def ack_then_wait(ours: Socket, peer: zmq.Socket[bytes], patience: float) -> bool:
    """The reliable receivers' shape: find nothing, send acknowledgements, wait. The
    send takes the edge that announced the message meanwhile. Returns whether the
    wait returned within ``patience`` seconds."""
    assert ours.receive_batch_nowait(8) == []
    peer.send(b"arrived")
    await anyio.sleep(0.05)  # it is queued, and the FD has fired
    ours.send_nowait(b"ack")  # processes libzmq's commands: the edge is gone
    with anyio.move_on_after(patience):
        await ours.wait_receivable()
        return True
    return False


async def test_a_send_right_before_a_wait_cannot_strand_a_message(
    zctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """The wait must still see the message instead of sleeping until some later edge."""
    ours, peer = dealer_pair(zctx)
    with anyio.fail_after(5):
        assert await ack_then_wait(ours, peer, patience=2)
        assert ours.receive_batch_nowait(8) == [[b"arrived"]]
    ours.close()
    peer.close(linger=0)


@pytest.mark.parametrize("naive", [NaiveSocket, StaleEventsSocket],
                         ids=["naive", "no-events-read-after-a-call"])
async def test_a_send_right_before_a_wait_strands_a_naive_receiver(
    zctx: zmq.Context[zmq.Socket[bytes]], naive: type[Socket],
) -> None:
    """The same scenario against a socket that parks on the FD without re-reading
    EVENTS after the send: its wait sleeps through a message that was queued all
    along. So the test above can fail, on every loop it runs on."""
    ours, peer = dealer_pair(zctx, naive)
    with anyio.fail_after(5):
        assert not await ack_then_wait(ours, peer, patience=0.5)
        assert ours.receive_batch_nowait(8) == [[b"arrived"]]
    ours.close()
    peer.close(linger=0)


async def test_reliable_senders_take_batches_too() -> None:
    bodies = [b"%d" % i for i in range(3000)]  # more than the window: send_many waits
    with anyio.fail_after(20):
        async with (shoal.open_puller(bind=LOOPBACK, reliable=True) as pull,
                    shoal.open_pusher(connect=pull.endpoints, reliable=True, window=256) as push):
            async with anyio.create_task_group() as tg:
                tg.start_soon(push.send_many, bodies)
                got: list[bytes] = []
                while len(got) < len(bodies):
                    got.extend(m.body for m in await pull.receive_batch())
            assert push.send_many_nowait([b"more"]) == 1
            assert (await pull.receive()).body == b"more"
        assert got == bodies

        async with (shoal.open_publisher(bind=LOOPBACK, reliable=True) as pub,
                    shoal.open_subscriber(connect=pub.endpoints, reliable=True) as sub):
            await pub.wait_for_subscribers(1)
            await pub.publish_many([("r/a", i) for i in range(500)] + [("r/b", "x", {"h": 1})])
            msgs = [await sub.receive() for _ in range(501)]
        assert [m.body for m in msgs[:500]] == list(range(500))
        assert (msgs[500].topic, dict(msgs[500].headers)) == ("r/b", {"h": 1})


@pytest.mark.parametrize("topical", [False, True])
def test_the_fast_decoders_agree_with_decode_across_many_streams(topical: bool) -> None:
    """More streams than the decoders remember (they forget and re-learn), topics,
    senders and sequence numbers mixed: every message equals what ``decode`` says."""
    kind = Kind.PUBLISH if topical else Kind.PUSH
    frames = []
    for i in range(5000):
        enc = StreamEncoder(sender=i.to_bytes(16, "little"), epoch=i % 7, stream=i % 3)
        topic = encode_topic(f"t/{i % 11}" if topical else "") + b"\0"
        frames += [enc.encode(kind, topic, b"body %d" % i, seq, 1000 + seq, seq)
                   for seq in range(2)]
    got: list[Any] = []
    slow: list[bytes] = []
    accept = fast_decoder(kind, topic=topical, deliver=got.append, fallback=slow.append)
    for frame in frames:
        accept(frame)
    assert slow == []
    assert got == [decode(f) for f in frames]


def unexpected(frame: bytes) -> None:
    pytest.fail(f"the fast decoder handed on a frame it should take: {frame!r}")


def test_the_topical_decoder_counts_gaps_as_the_tracker_does() -> None:
    """The decoder keeps each stream's gap cell and skips the tracker for in-order
    arrivals. Fed the same arrivals (gaps, duplicates, late ones), its counts equal
    those of a tracker that ``observe``s every arrival."""
    rng = random.Random(7)
    encoders = [StreamEncoder(sender=bytes([i]) * 16, epoch=1, stream=0) for i in range(5)]
    nxt = [0] * len(encoders)
    arrivals = []
    for _ in range(4000):
        i = rng.randrange(len(encoders))
        seq = max(0, nxt[i] + rng.choice([0] * 12 + [-1, -3, 2, 70]))  # mostly in order
        nxt[i] = max(nxt[i], seq + 1)
        topic = f"t/{i % 2}"
        frame = encoders[i].encode(Kind.PUBLISH, encode_topic(topic) + b"\0", b"x", seq, 0)
        arrivals.append((frame, (bytes([i]).hex() * 16, 1, 0, topic), seq))
    reference = GapTracker()
    tracker = GapTracker()
    got: list[Any] = []
    accept = fast_decoder(Kind.PUBLISH, topic=True, deliver=got.append,
                          fallback=unexpected, gaps=tracker)
    for frame, key, seq in arrivals:
        reference.observe(key, seq)
        accept(frame)
    assert len(got) == len(arrivals)
    assert reference.gaps > 0
    assert reference.out_of_order > 0
    assert ((tracker.gaps, tracker.out_of_order, tracker.gaps_by_sender(), len(tracker))
            == (reference.gaps, reference.out_of_order, reference.gaps_by_sender(),
                len(reference)))


def test_the_topical_decoder_drops_the_cell_of_a_stream_the_tracker_forgot() -> None:
    """A stream evicted from the tracker while the decoder holds its cell: its next
    arrival is a first sight, and a gap after that is still counted."""
    tracker = GapTracker(max_streams=2)
    accept = fast_decoder(Kind.PUBLISH, topic=True, deliver=lambda m: None,
                          fallback=unexpected, gaps=tracker)
    a, b, c = (StreamEncoder(sender=bytes([i]) * 16, epoch=1, stream=0) for i in range(3))
    for enc, seqs in ((a, range(10)), (b, [0]), (c, [0]), (a, [10, 11, 13])):
        for seq in seqs:
            accept(enc.encode(Kind.PUBLISH, b"t\0", b"x", seq, 0))
    assert (tracker.forgotten, tracker.gaps) == (2, 1)  # a, then b; 12 is missing
