"""The ring watch: each node beats its ring successors and holds only its predecessors
to the peer timeout; a quiet peer is suspected, one silent for the timeout is reported
``Gone`` to every peer. The table's rules first (sans-I/O), then nodes on loopback,
every I/O test under ``anyio.fail_after``."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import msgpack
import pytest

from shoal._core import VERSION, PeerLeft, State, decode_control, encode_control
from shoal._core._control import (
    MAX_MEMBERS,
    Ask,
    ChannelOffer,
    Gone,
    Members,
    MembersQuery,
    Role,
    Suspect,
)
from shoal._core._peers import PeerTable
from shoal._core._ring import SUSPECT_AFTER, Ring
from shoal.errors import DecodeError, EncodeError
from shoal.node._node import default_node_id
from support.endpoints import endpoint, free_port
from support.nodes import FAST, open_test_node
from support.peers import node_process

pytestmark = pytest.mark.anyio

ME = bytes([0x50]) + b"\x00" * 15
T = 2.0


def nid(n: int) -> bytes:
    return bytes([n]) + b"\x00" * 15


def state(n: int, *, ring: bool = True, epoch: int = 1) -> State:
    return State(nid(n), epoch, f"n{n}", ("127.0.0.1",), 7000 + n, 0, (), ring=ring)


def table_with(*ns: int, ring: bool = True) -> PeerTable:
    table = PeerTable(ME, timeout=T)
    for n in ns:
        table.on_state(state(n, ring=ring), 0.0)
    return table


def test_neighbours_wrap_around_the_ring() -> None:
    ring = Ring(nid(5))
    assert (ring.successors, ring.predecessors) == ((), ())
    ring.add(nid(9))
    assert (ring.successors, ring.predecessors) == ((nid(9),), (nid(9),))
    ring.extend([nid(1), nid(3), nid(7)])
    assert ring.successors == (nid(7), nid(9))
    assert ring.predecessors == (nid(3), nid(1))
    assert not ring.add(nid(7))
    assert ring.remove(nid(7))
    assert not ring.remove(nid(7))
    assert ring.successors == (nid(9), nid(1))
    assert not ring.remove(nid(5))  # never itself


def test_only_the_predecessors_are_held_to_the_timeout() -> None:
    # ring: 0x10 0x20 0x30 [0x50] 0x60 0x70: predecessors 0x30 and 0x20
    table = table_with(0x10, 0x20, 0x30, 0x60, 0x70)
    assert table.ring.predecessors == (nid(0x30), nid(0x20))
    assert table.expire(T - 0.1) == []
    left = table.expire(T + 0.1)  # nobody heard from since 0.0: only those two go
    assert {e.peer.id for e in left} == {nid(0x30).hex(), nid(0x20).hex()}
    assert len(table) == 3


def test_a_quiet_predecessor_is_suspected_then_dropped_and_the_next_is_held_afresh() -> None:
    table = table_with(0x10, 0x20, 0x30, 0x60, 0x70)
    for n in (0x10, 0x20, 0x60, 0x70):
        table.on_beat(nid(n), 1, 1.9)
    quiet = T * SUSPECT_AFTER
    assert table.suspects(quiet - 0.01) == []
    assert [p.id for p in table.suspects(quiet + 0.01)] == [nid(0x30).hex()]
    assert table.suspects(quiet + 0.02) == []  # once
    assert table.next_deadline() == pytest.approx(T)
    left = table.expire(T + 0.01)
    assert [(e.peer.id, e.reason) for e in left if isinstance(e, PeerLeft)] == \
        [(nid(0x30).hex(), "timeout")]
    # 0x10 is held now, from now: not dropped although last heard at 0.0
    assert table.ring.predecessors == (nid(0x20), nid(0x10))
    assert table.expire(T + 1.0) == []
    # 0x20 was last heard at 1.9, 0x10 is held from T + 0.01
    assert [p.id for p in table.suspects(T + quiet)] == [nid(0x20).hex()]
    assert [p.id for p in table.suspects(T + 0.02 + quiet)] == [nid(0x10).hex()]


def test_peers_not_watched_stay_however_long_they_are_silent() -> None:
    table = table_with(0x10, 0x20, 0x30, 0x60, 0x70)
    for t in range(1, 100):
        for n in (0x20, 0x30):
            table.on_beat(nid(n), 1, float(t))
        assert table.expire(float(t)) == []
    assert len(table) == 5


def test_a_beat_clears_a_suspicion() -> None:
    table = table_with(0x30)
    assert len(table.suspects(T * SUSPECT_AFTER + 0.1)) == 1
    table.on_beat(nid(0x30), 1, 1.8)
    assert table.expire(T + 0.1) == []
    assert len(table.suspects(1.8 + T * SUSPECT_AFTER + 0.1)) == 1  # suspected anew


def test_gone_drops_a_peer_unless_heard_from_lately() -> None:
    table = table_with(0x10, 0x20, 0x30, 0x60, 0x70)
    table.on_beat(nid(0x60), 1, 4.5)
    assert table.on_gone(nid(0x60), 1, 5.0) == []  # heard 0.5 s ago: not for us to drop
    assert table.on_gone(nid(0x70), 2, 5.0) == []  # another incarnation
    [left] = table.on_gone(nid(0x70), 1, 5.0)
    assert isinstance(left, PeerLeft)
    assert left.reason == "timeout"
    assert nid(0x70) not in table
    table.on_state(state(0x70), 6.0)  # it comes back (same epoch): it joins again
    assert nid(0x70) in table


def test_a_peer_that_does_not_take_part_is_held_directly() -> None:
    table = table_with(0x60, ring=False)
    table.on_state(state(0x10), 0.0)
    assert table.legacy() == [nid(0x60)]
    assert table.takes_part(nid(0x10))
    assert not table.takes_part(nid(0x60))
    # only ring peers are suspected; the other is simply timed out
    assert [p.id for p in table.suspects(T * SUSPECT_AFTER + 0.1)] == [nid(0x10).hex()]
    left = table.expire(T + 0.1)
    assert {e.peer.id for e in left} == {nid(0x60).hex(), nid(0x10).hex()}


def test_a_restarted_peer_takes_its_new_place() -> None:
    table = table_with(0x30)
    table.on_state(state(0x30, ring=False, epoch=2), 1.0)
    assert table.legacy() == [nid(0x30)]
    assert not table.takes_part(nid(0x30))
    assert table.ring.predecessors == ()


def test_the_ring_messages_round_trip() -> None:
    for msg in (Suspect(nid(1), 7, nid(2)), Gone(nid(1), 7, nid(2)), Ask(nid(3))):
        assert decode_control(encode_control(msg)) == msg
    assert msgpack.unpackb(encode_control(Ask(nid(3)))) == [VERSION, "ask", nid(3)]


def test_taking_part_is_a_catalogue_entry_older_nodes_skip() -> None:
    offer = ChannelOffer("jobs", Role.PULLER, 7001)
    st = State(nid(1), 7, "n", ("127.0.0.1",), 7000, 3, (offer,), ring=True)
    frame = encode_control(st)
    assert decode_control(frame) == st
    fields = msgpack.unpackb(frame)
    assert fields[8] == [["jobs", "pull", 7001], ["", "~ring", 0]]
    # an older node knows no role "~ring": it skips that entry (an unknown role), so it
    # sees the node and its catalogue as they are
    fields[8][1][1] = "~other"
    older = decode_control(msgpack.packb(fields))
    assert isinstance(older, State)
    assert older.channels == (offer,)
    plain = decode_control(encode_control(State(nid(1), 7, "n", ("127.0.0.1",), 7000, 3,
                                                (offer,))))
    assert isinstance(plain, State)
    assert not plain.ring


async def test_each_node_hears_a_constant_number_of_beats() -> None:
    """Six nodes: each hears about one Beat per heartbeat (from its two predecessors in
    turn), not one from each of five peers."""
    hb, timeout = 0.05, 1.0
    ports = [free_port() for _ in range(6)]
    with anyio.fail_after(20):
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(open_test_node(
                f"n{i}", port=ports[i], peers=ports[:i], heartbeat=hb, peer_timeout=timeout))
                for i in range(6)]
            for n in nodes:
                await n.wait_for_peers(5)
            await anyio.sleep(0.5)
            before = [n.statistics().beats_received for n in nodes]
            await anyio.sleep(2.0)
            heard = [n.statistics().beats_received - b
                     for n, b in zip(nodes, before, strict=True)]
            assert all(len(n.peers()) == 5 for n in nodes)
            assert all(n.statistics().reported_gone == 0 for n in nodes)
    # all-to-all would be 5 per heartbeat: 200 in 2 s
    for h in heard:
        assert 20 <= h <= 2.0 / hb * 1.6, heard


async def test_a_killed_node_is_reported_gone_to_the_peers_that_do_not_watch_it() -> None:
    ports = [free_port() for _ in range(4)]
    with anyio.fail_after(30):
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(open_test_node(
                f"w{i}", port=ports[i], peers=ports[:i], **FAST)) for i in range(4)]
            extra = [a for p in ports[1:] for a in ("--peer", endpoint(p))]
            proc = await stack.enter_async_context(node_process("victim", ports[0], *extra))
            for n in nodes:
                await n.wait_for_peers(4)
            watches = [n.watch_peers() for n in nodes]
            t0 = anyio.current_time()
            proc.kill()
            for w in watches:
                async for ev in w:
                    if isinstance(ev, PeerLeft):
                        assert ev.peer.id == proc.ready["id"]
                        assert ev.reason == "timeout"
                        break
            dt = anyio.current_time() - t0
            print(f"\n[SIGKILL -> every one of 4 peers: left after {dt:.2f} s]")
            assert dt < 2 * FAST["peer_timeout"]
            stats = [n.statistics() for n in nodes]
            # two nodes watch it; the others heard it from them
            assert sum(s.suspicions for s in stats) >= 2
            assert sum(s.reported_gone for s in stats) >= 1


def test_a_node_that_times_out_a_watched_peer_sweeps_the_others() -> None:
    """After its own timeout, every other ring peer must answer within half a timeout:
    those that do stay, those that do not leave (a node cut off from everyone learns
    it in one step)."""
    table = table_with(0x10, 0x20, 0x30, 0x60, 0x70, 0x80, 0x90)
    left = table.expire(T + 0.1)  # the two watched ones
    assert len(left) == 2
    assert table.ring.predecessors == (nid(0x10), nid(0x90))  # watched from now
    asked = {p.id for p in table.sweep(T + 0.1)}
    assert asked == {nid(0x60).hex(), nid(0x70).hex(), nid(0x80).hex()}
    assert table.sweep(T + 0.2) == []  # once
    table.on_state(state(0x60), T + 0.3)  # its answer
    assert table.next_deadline() == pytest.approx(T + 0.1 + T / 2)
    assert table.expire_swept(T + 0.1 + T / 2 - 0.01) == []
    late = table.expire_swept(T + 0.1 + T / 2 + 0.01)
    assert len(late) == 2
    assert {(e.peer.id, e.reason) for e in late if isinstance(e, PeerLeft)} == {
        (nid(0x70).hex(), "timeout"), (nid(0x80).hex(), "timeout")}
    assert nid(0x60) in table


def test_member_lists_round_trip_and_are_bounded() -> None:
    members = Members(nid(1), (("10.0.0.7", 7700), ("fe80::1", 7701)))
    assert decode_control(encode_control(members)) == members
    assert decode_control(encode_control(MembersQuery(nid(2)))) == MembersQuery(nid(2))
    with pytest.raises(EncodeError):
        encode_control(Members(nid(1), (("10.0.0.7", 1),) * (MAX_MEMBERS + 1)))
    for bad in ([["10.0.0.7"]], [["not an address", 1]], [["10.0.0.7", 70000]], "x",
                [[["10.0.0.7"], 1]]):
        with pytest.raises(DecodeError):
            decode_control(msgpack.packb([VERSION, "members", nid(1), bad]))


async def test_nodes_that_know_one_seed_meet_each_other() -> None:
    """Every node is given only the seed's endpoint: the member lists the seed gives
    make every node meet every other."""
    ports = [free_port() for _ in range(5)]
    with anyio.fail_after(20):
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(open_test_node(
                f"m{i}", port=ports[i], peers=ports[:1] if i else [], **FAST))
                for i in range(5)]
            for n in nodes:
                await n.wait_for_peers(4)
            assert sum(n.statistics().members_learned for n in nodes) > 0


async def test_three_neighbours_killed_at_once_are_all_dropped() -> None:
    """Three nodes that follow each other on the ring die together: the first one's
    both watchers die with it. The next watchers take over (a fresh timeout), so every
    survivor drops all three within about two peer timeouts."""
    timeout = FAST["peer_timeout"]
    survivors = [f"s{i}" for i in range(4)]
    ring = sorted(default_node_id(n) for n in survivors)
    # the widest gap between two survivors on the ring; three victims inside it
    gaps = [(ring[(i + 1) % 4][0] - ring[i][0]) % 256 for i in range(4)]
    start = ring[gaps.index(max(gaps))]
    def inside(name: str) -> bool:
        nid_ = default_node_id(name)
        return 0 < (nid_[0] - start[0]) % 256 < max(gaps)
    victims = [n for n in (f"v{i}" for i in range(200)) if inside(n)][:3]
    assert len(victims) == 3
    ports = [free_port() for _ in survivors]
    with anyio.fail_after(40):
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(open_test_node(
                name, port=ports[i], peers=ports[:i], **FAST))
                for i, name in enumerate(survivors)]
            extra = [a for p in ports[1:] for a in ("--peer", endpoint(p))]
            procs = [await stack.enter_async_context(node_process(v, ports[0], *extra))
                     for v in victims]
            for n in nodes:
                await n.wait_for_peers(6)
            watches = [n.watch_peers() for n in nodes]
            t0 = anyio.current_time()
            for p in procs:
                p.kill()
            ids = {p.ready["id"] for p in procs}
            for w in watches:
                gone: set[str] = set()
                async for ev in w:
                    if isinstance(ev, PeerLeft):
                        assert ev.reason == "timeout"
                        gone.add(ev.peer.id)
                        if gone == ids:
                            break
            dt = anyio.current_time() - t0
            print(f"\n[three ring neighbours SIGKILLed: all 4 survivors dropped them after "
                  f"{dt:.2f} s (peer_timeout {timeout} s)]")
            assert dt < 2 * timeout + 1.0
            assert all(len(n.peers()) == 3 for n in nodes)


async def test_each_pair_of_nodes_keeps_one_control_connection() -> None:
    """Five nodes: of each pair, only the lower id keeps a control link (ten links in
    all, not twenty); the other answers on it, and the group holds still."""
    ports = [free_port() for _ in range(5)]
    with anyio.fail_after(20):
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(open_test_node(
                f"p{i}", port=ports[i], peers=ports[:i], **FAST)) for i in range(5)]
            for n in nodes:
                await n.wait_for_peers(4)
            await anyio.sleep(2 * FAST["peer_timeout"])
            own = {n.id: len(n._control.links) for n in nodes}  # this node's own links
            by_id = sorted(own)
            # the k-th lowest node links to the 4 - k above it
            assert [own[i] for i in by_id] == [4, 3, 2, 1, 0]
            for n in nodes:
                stats = n.statistics()
                assert stats.links == 4  # its own and those it answers on
                assert len(n.peers()) == 4
                assert stats.reported_gone == 0
                assert stats.beats_received > 0
