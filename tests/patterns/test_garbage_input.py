"""Receivers survive garbage from the wire.

A raw pyzmq peer sends every kind of bad message at a shoal receiver, then a good one.
The rule for every receiver: each bad message is dropped and counted (by reason) in
``statistics().malformed``, nothing is raised at the caller, and the next good message
arrives as if nothing had happened.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio
import pytest
import zmq

import shoal
from shoal._core import Kind, decode, encode, encode_topic
from shoal.errors import DecodeError
from support.endpoints import Addresses
from support.pubsub import sync_subscribers
from support.raw import (
    RAW_SENDER,
    decode_reason,
    expected_reasons,
    garbage,
    raw_receive,
    raw_socket,
)

pytestmark = pytest.mark.anyio


def bind_raw(sock: zmq.Socket[bytes], addresses: Addresses) -> str:
    sock.bind(addresses.fresh())
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class RawStamp:
    """Builds valid frames as a foreign sender would (per-topic sequence numbers)."""

    def __init__(self) -> None:
        self._seq: Counter[str] = Counter()

    def frame(self, kind: Kind, body: Any, topic: str = "", correlation: int = 0) -> bytes:
        seq = self._seq[topic]
        self._seq[topic] += 1
        return encode(kind, encode_topic(topic), body, sender=RAW_SENDER, epoch=1, stream=1,
                      seq=seq, timestamp_ns=time.time_ns(), correlation=correlation)


def frame_by_frame(cases: list[tuple[list[bytes], str]], *kinds: Kind,
                   ) -> tuple[list[tuple[list[bytes], str]], int]:
    """What a receiver of one-frame messages that reads plain frames (puller,
    subscriber) makes of ``cases``: each frame of a multi-frame message is a message
    of its own. Returns the frames it drops, each with its reason, and how many it
    delivers."""
    dropped: list[tuple[list[bytes], str]] = []
    delivered = 0
    for frames, reason in cases:
        if len(frames) == 1:
            dropped.append((frames, reason))
            continue
        for frame in frames:
            try:
                ok = decode(frame).kind in kinds
            except DecodeError as exc:
                dropped.append(([frame], exc.reason))
                continue
            if ok:
                delivered += 1
            else:
                dropped.append(([frame], "unexpected-kind"))
    return dropped, delivered


def test_plain_frame_readers_judge_each_frame_of_a_multi_frame_message() -> None:
    """The catalogue's two multi-frame messages, read frame by frame: the valid frames
    are delivered, the empty one is dropped as what it is."""
    cases = [(f, r) for f, r in garbage(Kind.PUSH) if len(f) > 1]
    dropped, delivered = frame_by_frame(cases, Kind.PUSH)
    assert delivered == 4
    assert [r for _, r in dropped] == ["no-topic-delimiter"]


def test_the_garbage_catalogue_is_what_it_claims() -> None:
    """Each single-frame case really fails to decode with its stated reason (or decodes,
    for the wrong-kind cases), so the receiver tests below count the right things."""
    for frames, reason in garbage(Kind.PUSH):
        if reason == "unexpected-kind":
            assert decode(frames[0]).kind is not Kind.PUSH
        elif reason != "frame-count":
            assert decode_reason(frames[0]) == reason


# -- per receiver -------------------------------------------------------------------------------


async def test_a_subscriber_drops_and_counts_garbage_then_receives_the_next_publication(
    addresses: Addresses, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    raw = raw_socket(zctx, zmq.PUB)
    endpoint = bind_raw(raw, addresses)
    stamp = RawStamp()
    cases = garbage(Kind.PUBLISH)

    def publish(topic: str, body: Any) -> None:
        raw.send(stamp.frame(Kind.PUBLISH, body, topic), zmq.NOBLOCK)

    with anyio.fail_after(10):
        async with shoal.open_subscriber(connect=endpoint, context=zctx) as sub:
            await sync_subscribers(publish, sub)
            before = sub.statistics()
            for frames, _ in cases:
                raw.send_multipart(frames, zmq.NOBLOCK)
            publish("news", "the good one")
            extra = []
            while (msg := await sub.receive()).topic != "news":
                extra.append(msg)
            stats = sub.statistics()

    dropped, delivered = frame_by_frame(cases, Kind.PUBLISH)
    assert (msg.topic, msg.body, msg.sender) == ("news", "the good one", RAW_SENDER.hex())
    assert len(extra) == delivered
    assert before.malformed == 0
    assert stats.malformed == len(dropped)
    assert stats.malformed_by_reason == expected_reasons(dropped)
    assert stats.received == before.received + 1 + delivered


async def test_a_puller_drops_and_counts_garbage_then_receives_the_next_item(
    addresses: Addresses, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    stamp = RawStamp()
    cases = garbage(Kind.PUSH)
    with anyio.fail_after(10):
        async with shoal.open_puller(bind=addresses.fresh(), context=zctx) as pull:
            raw = raw_socket(zctx, zmq.PUSH)
            raw.connect(pull.endpoints[0])  # the pipe exists at once: sends queue
            for frames, _ in cases:
                raw.send_multipart(frames, zmq.NOBLOCK)
            raw.send(stamp.frame(Kind.PUSH, {"job": 1}), zmq.NOBLOCK)
            extra = []
            while (msg := await pull.receive()).body != {"job": 1}:
                extra.append(msg)
            stats = pull.statistics()

    dropped, delivered = frame_by_frame(cases, Kind.PUSH)
    assert msg.body == {"job": 1}
    assert len(extra) == delivered
    assert stats.malformed == len(dropped)
    assert stats.malformed_by_reason == expected_reasons(dropped)
    assert stats.received == 1 + delivered


async def test_a_replier_drops_and_counts_garbage_then_answers_the_next_request(
    addresses: Addresses, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """ROUTER prepends the peer's identity: one frame from a DEALER is the right count,
    two or more are garbage."""
    stamp = RawStamp()
    cases = garbage(Kind.REQUEST)
    with anyio.fail_after(10):
        async with shoal.open_replier(bind=addresses.fresh(), context=zctx) as rep:
            raw = raw_socket(zctx, zmq.DEALER)
            raw.connect(rep.endpoints[0])
            for frames, _ in cases:
                raw.send_multipart(frames, zmq.NOBLOCK)
            raw.send(stamp.frame(Kind.REQUEST, "question", correlation=4242), zmq.NOBLOCK)
            req = await rep.receive()
            await req.reply("answer")
            [reply_frame] = await raw_receive(raw)
            stats = rep.statistics()

    assert req.body == "question"
    assert req.id == 4242
    reply = decode(reply_frame)
    assert (reply.kind, reply.body, reply.correlation) == (Kind.REPLY, "answer", 4242)
    assert stats.malformed == len(cases)
    assert stats.malformed_by_reason == expected_reasons(cases)
    assert (stats.received, stats.replied) == (1, 1)


async def test_a_requester_drops_and_counts_garbage_then_gets_its_reply(
    addresses: Addresses, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    stamp = RawStamp()
    cases = garbage(Kind.REPLY, Kind.ERROR)  # ERROR replies are valid: RemoteError
    result: list[Any] = []
    with anyio.fail_after(10):
        raw = raw_socket(zctx, zmq.ROUTER)
        endpoint = bind_raw(raw, addresses)
        async with (
            shoal.open_requester(connect=endpoint, context=zctx) as client,
            anyio.create_task_group() as nursery,
        ):
            async def ask() -> None:
                result.append(await client.request("question"))

            nursery.start_soon(ask)
            identity, request_frame = await raw_receive(raw)
            request = decode(request_frame)
            for frames, _ in cases:
                raw.send_multipart([identity, *frames], zmq.NOBLOCK)
            # a well-formed reply nobody asked for is not garbage: it is "unmatched"
            raw.send_multipart([identity, stamp.frame(
                Kind.REPLY, "stray", correlation=request.correlation + 1000)], zmq.NOBLOCK)
            raw.send_multipart([identity, encode(
                Kind.REPLY, b"", "answer", sender=RAW_SENDER, epoch=5, stream=6, seq=7,
                timestamp_ns=time.time_ns(), correlation=request.correlation)], zmq.NOBLOCK)
        stats = client.statistics()

    assert (request.kind, request.body) == (Kind.REQUEST, "question")
    assert result == ["answer"]
    assert stats.malformed == len(cases)
    assert stats.malformed_by_reason == expected_reasons(cases)
    assert (stats.replies, stats.unmatched, stats.in_flight) == (1, 1, 0)
