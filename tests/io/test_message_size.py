"""The message size bound: ZMQ_MAXMSGSIZE on every shoal socket, and the sending side
refusing, with ``MessageTooLarge``, what its peers would not accept.

A message over the limit is refused before it is taken: a best-effort send sends
nothing, a reliable send leaves the window as it was (nothing to retransmit forever).
A peer that sends more than a receiver's limit anyway (raw pyzmq, another limit) is
disconnected by libzmq and its message never reaches the application, while other
peers' messages keep arriving.
"""

from __future__ import annotations

import anyio
import pytest
import zmq
from zmq.utils.monitor import parse_monitor_message

import shoal
from shoal._core import Kind, StreamEncoder
from shoal._zmq._socket import DEFAULT_MAX_MESSAGE_SIZE
from shoal.errors import EncodeError, LocalProtocolError, MessageTooLarge
from support.raw import raw_receive

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"
MIB = 1024 * 1024


def test_the_default_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == 16 * MIB


def test_the_encoder_refuses_a_frame_over_its_limit_and_says_what_to_do() -> None:
    enc = StreamEncoder(sender=b"s" * 16, epoch=1, stream=1, max_size=1000)
    ok = enc.encode(Kind.PUBLISH, b"t\0", b"x" * 900, 0, 0)
    assert len(ok) <= 1000
    with pytest.raises(MessageTooLarge) as caught:
        enc.encode(Kind.PUBLISH, b"t\0", b"x" * 1000, 0, 0)
    assert caught.value.limit == 1000
    assert caught.value.size > 1000
    assert "max_message_size" in str(caught.value)
    assert isinstance(caught.value, EncodeError)
    with pytest.raises(MessageTooLarge):  # headers count too
        enc.encode(Kind.PUBLISH, b"t\0", b"x" * 800, 0, 0, headers={"h": "y" * 300})


async def test_explicit_resources_take_the_default_and_refuse_beyond_it() -> None:
    with anyio.fail_after(10):
        async with shoal.open_puller(bind=LOOPBACK) as pull, \
                shoal.open_pusher(connect=pull.endpoints) as push:
            with pytest.raises(MessageTooLarge):
                await push.send(b"x" * (16 * MIB + 1))
            big = b"y" * (8 * MIB)
            await push.send(big)
            assert (await pull.receive()).body == big


async def test_a_context_with_maxmsgsize_sets_the_limit_of_its_sockets() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.MAXMSGSIZE, 4096)
    try:
        with anyio.fail_after(10):
            async with shoal.open_publisher(bind=LOOPBACK, context=ctx) as pub:
                await pub.publish("t", b"x" * 1000)
                with pytest.raises(MessageTooLarge):
                    await pub.publish("t", b"x" * 5000)
                assert pub._sock.zmq_socket.getsockopt(zmq.MAXMSGSIZE) == 4096
    finally:
        ctx.destroy(linger=0)


async def test_a_reliable_send_over_the_limit_leaves_the_window_untouched() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.MAXMSGSIZE, 4096)
    try:
        with anyio.fail_after(15):
            async with shoal.open_puller(bind=LOOPBACK, reliable=True, context=ctx) as pull, \
                    shoal.open_pusher(connect=pull.endpoints, reliable=True,
                                      context=ctx) as push:
                with pytest.raises(MessageTooLarge):
                    push.send_nowait(b"x" * 5000)
                assert push.statistics().in_flight == 0
                await push.send(b"small")
                assert (await pull.receive()).body == b"small"
                pull.mark_done()
                await push.wait_acked()
                st = push.statistics()
                assert st.sent == 1
                assert st.in_flight == 0
    finally:
        ctx.destroy(linger=0)


async def test_a_peer_over_the_receivers_limit_is_cut_off_and_others_go_on() -> None:
    """A raw pyzmq sender ignoring the limit: libzmq drops its oversize message (and
    its connection); a well-behaved sender's messages still arrive."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.MAXMSGSIZE, 4096)
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    events = raw.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        with anyio.fail_after(15):
            async with shoal.open_puller(bind=LOOPBACK, context=ctx) as pull, \
                    shoal.open_pusher(connect=pull.endpoints) as good:
                raw.connect(pull.endpoints[0])
                raw.send(b"z" * 100_000)  # not even an envelope; over the limit anyway
                for i in range(20):
                    await good.send(i)
                got = [(await pull.receive()).body for _ in range(20)]
                assert got == list(range(20))
                # libzmq cut the raw peer off on reading the oversize message's length:
                # its connection is gone, and with it the message
                while True:
                    event = parse_monitor_message(await raw_receive(events))
                    if event["event"] == zmq.EVENT_DISCONNECTED:
                        break
                with pytest.raises(anyio.WouldBlock):
                    pull.receive_nowait()
                assert pull.statistics().malformed == 0  # dropped by libzmq, not decoded
    finally:
        events.close()
        raw.close()
        ctx.destroy(linger=0)


async def test_open_node_takes_a_limit_for_all_its_sockets() -> None:
    with anyio.fail_after(20):
        async with shoal.open_node("size-a", interfaces=["127.0.0.1"],
                                   max_message_size=2048) as a, a.open_publisher("ch") as pub:
            assert pub._sock.zmq_socket.getsockopt(zmq.MAXMSGSIZE) == 2048
            with pytest.raises(MessageTooLarge):
                await pub.publish("t", b"x" * 4096)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "big", True])
async def test_open_node_refuses_a_nonsense_limit(bad: object) -> None:
    with anyio.fail_after(10), pytest.raises(LocalProtocolError, match="max_message_size"):
        async with shoal.open_node("size-bad", interfaces=["127.0.0.1"],
                                   max_message_size=bad):  # type: ignore[arg-type]
            pass


async def test_over_inproc_the_receiver_drops_and_counts_what_is_over_its_limit() -> None:
    """inproc bypasses libzmq's MAXMSGSIZE: the receiver applies the same bound before
    decoding (a valid envelope, just too large), counts it, and goes on."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ctx.setsockopt(zmq.MAXMSGSIZE, 4096)
    raw: zmq.Socket[bytes] = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 0)
    enc = StreamEncoder(sender=b"s" * 16, epoch=1, stream=1)  # no limit of its own
    try:
        with anyio.fail_after(10):
            async with shoal.open_puller(bind="inproc://size-test", context=ctx) as pull:
                raw.connect("inproc://size-test")
                raw.send(enc.encode(Kind.PUSH, b"\0", b"x" * 10_000, 0, 0))
                raw.send(enc.encode(Kind.PUSH, b"\0", b"fits", 1, 0))
                assert (await pull.receive()).body == b"fits"
                st = pull.statistics()
                assert st.malformed == 1
    finally:
        raw.close()
        ctx.destroy(linger=0)
