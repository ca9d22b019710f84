"""Small heartbeats: nodes that understand ``Beat`` send it instead of their full
State, and keep sending States to a node that does not. Loopback only, every test
under ``anyio.fail_after``."""

from __future__ import annotations

import anyio
import msgpack
import pytest
import zmq

from shoal._core import VERSION, Beat, State, decode_control, encode_control
from shoal._core._peers import PeerTable
from support.endpoints import free_port
from support.nodes import open_test_node
from support.raw import raw_socket

pytestmark = pytest.mark.anyio

NODE = b"\x01" * 16


def test_a_beat_refreshes_only_the_incarnation_the_table_holds() -> None:
    table = PeerTable(b"\x00" * 16, timeout=2.0)
    assert not table.on_beat(NODE, 7, 0.0)  # unknown: a Beat never makes a peer join
    assert len(table) == 0
    table.on_state(State(NODE, 7, "n", ("127.0.0.1",), 1, 0, ()), 0.0)
    assert table.on_beat(NODE, 7, 1.9)
    assert table.expire(3.0) == []  # heard from at 1.9
    assert not table.on_beat(NODE, 8, 3.5)  # another incarnation: not this one
    assert [type(e).__name__ for e in table.expire(4.0)] == ["PeerLeft"]


def test_a_beat_round_trips_and_is_a_fifth_of_a_state() -> None:
    beat = Beat(NODE, 7, 3)
    frame = encode_control(beat)
    assert decode_control(frame) == beat
    assert msgpack.unpackb(frame) == [VERSION, "beat", NODE, 7, 3]
    state = encode_control(State(NODE, 7, "display-7", ("10.0.0.7", "fe80::7"), 7700, 3, ()))
    assert len(frame) * 2 < len(state)


async def test_two_nodes_beat_each_other_after_their_states() -> None:
    port = free_port()
    with anyio.fail_after(10):
        async with open_test_node("a", port=port, heartbeat=0.05, peer_timeout=1.0) as a, \
                open_test_node("b", peers=[port], heartbeat=0.05, peer_timeout=1.0) as b:
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            await anyio.sleep(1.0)
            sa, sb = a.statistics(), b.statistics()
    for s in (sa, sb):
        states = s.control_received - s.beats_received
        assert s.beats_received >= 10
        # an introduction, an answer, and one full State in every ten heartbeats
        assert states <= 4 + s.control_received // 10, s


async def test_a_node_that_never_beats_keeps_getting_states() -> None:
    """An older node drops Beats as unknown control messages and sends only States:
    it is sent one Beat (the question) and then full States as heartbeats."""
    old_port = free_port()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        inbox = raw_socket(ctx, zmq.ROUTER)
        inbox.bind(f"tcp://127.0.0.1:{old_port}")
        old_state = encode_control(State(NODE, 1, "old", ("127.0.0.1",), old_port, 0, ()))
        with anyio.fail_after(10):
            async with open_test_node("new", heartbeat=0.05, peer_timeout=1.0) as new:
                out = raw_socket(ctx, zmq.DEALER)
                out.connect(f"tcp://127.0.0.1:{new.control_port}")
                kinds: list[str] = []
                for _ in range(30):  # 1.5 s of an old node's heartbeats
                    out.send(old_state)
                    await anyio.sleep(0.05)
                    while inbox.poll(0):
                        _, frame = inbox.recv_multipart()
                        kinds.append(msgpack.unpackb(frame)[1])
                assert [p.name for p in new.peers()] == ["old"]  # never timed out
                out.close()
    finally:
        ctx.destroy(linger=0)
    assert kinds.count("beat") == 1
    assert kinds.count("state") >= 20
