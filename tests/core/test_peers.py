"""The peer table (sans-I/O): the rules of ``shoal._core._peers``, one test each.

A peer is an incarnation ``(node id, epoch)``: it joins with its first State, is
updated when its catalogue or addresses change, and leaves when it says goodbye, goes
silent for longer than the timeout, or is replaced by a new incarnation (restarted).
Goodbyes and replacements retire the incarnation for good; a timeout does not (a link
that flapped may come back). The table is bounded by ``max_peers``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._core import (
    ChannelOffer,
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerTable,
    PeerUpdated,
    Role,
    State,
    choose_address,
    offers,
)
from shoal._core._peers import Network

SELF = b"\x00" * 16
A = b"\xaa" * 16
B = b"\xbb" * 16
C = b"\xcc" * 16
TIMEOUT = 10.0

CATALOGUE = (ChannelOffer("temps", Role.PUBLISHER, 6000),)


def state(node: bytes = A, epoch: int = 1, *, revision: int = 0,
          addresses: tuple[str, ...] = ("10.0.0.1",), name: str = "a", control_port: int = 5000,
          channels: tuple[ChannelOffer, ...] = CATALOGUE) -> State:
    return State(node_id=node, epoch=epoch, name=name, addresses=addresses,
                 control_port=control_port, revision=revision, channels=channels)


def table(*, max_peers: int = 1024, networks: Sequence[Network] = ()) -> PeerTable:
    return PeerTable(SELF, timeout=TIMEOUT, max_peers=max_peers, networks=networks)


def peer(
    node: bytes = A, epoch: int = 1, *, revision: int = 0,
    addresses: tuple[str, ...] = ("10.0.0.1",), address: str | None = None,
    channels: tuple[ChannelOffer, ...] = CATALOGUE, last_seen: float = 0.0,
) -> Peer:
    return Peer(id=node.hex(), name="a", epoch=epoch, addresses=addresses,
                address=address or addresses[0], control_port=5000, channels=channels,
                revision=revision, last_seen=last_seen)


def seen(t: PeerTable, node: bytes = A) -> float:
    p = t.get(node)
    assert p is not None
    return p.last_seen


# -- joining and heartbeats --------------------------------------------------------------


def test_the_first_state_of_a_node_is_a_join() -> None:
    t = table()
    events = t.on_state(state(), 1.0)
    assert events == [PeerJoined(peer())]
    joined = events[0].peer
    assert joined.id == A.hex()
    assert joined.control_endpoint == "tcp://10.0.0.1:5000"
    assert joined.last_seen == 1.0
    assert t.peers() == [peer()]
    assert len(t) == 1


def test_the_same_state_again_is_a_heartbeat_that_only_refreshes_last_seen() -> None:
    t = table()
    t.on_state(state(), 1.0)
    assert t.on_state(state(), 5.0) == []
    [p] = t.peers()
    assert p.last_seen == 5.0
    assert seen(t) == 5.0
    assert p == peer()


def test_a_higher_revision_is_an_update_with_the_previous_peer() -> None:
    t = table()
    t.on_state(state(), 1.0)
    more = (*CATALOGUE, ChannelOffer("cmds", Role.PULLER, 6001))
    events = t.on_state(state(revision=1, channels=more), 2.0)
    assert events == [PeerUpdated(peer(revision=1, channels=more), previous=peer())]
    assert t.peers() == [peer(revision=1, channels=more)]
    assert seen(t) == 2.0


def test_changed_addresses_are_an_update_even_at_the_same_revision() -> None:
    t = table()
    t.on_state(state(), 1.0)
    events = t.on_state(state(addresses=("10.0.0.2", "10.0.0.1")), 2.0)
    assert events == [PeerUpdated(peer(addresses=("10.0.0.2", "10.0.0.1")), previous=peer())]
    [p] = t.peers()
    assert p.address == "10.0.0.2"


def test_a_lower_revision_is_ignored() -> None:
    """A State overtaken by a newer one (reordered) does not roll the catalogue back."""
    t = table()
    t.on_state(state(revision=5), 1.0)
    assert t.on_state(state(revision=3, channels=()), 2.0) == []
    assert t.peers() == [peer(revision=5)]


def test_a_lower_revision_is_ignored_even_with_other_addresses() -> None:
    t = table()
    t.on_state(state(revision=5, addresses=("10.0.0.2",)), 1.0)
    assert t.on_state(state(revision=3, channels=()), 2.0) == []
    assert t.peers() == [peer(revision=5, addresses=("10.0.0.2",))]


def test_our_own_state_is_ignored() -> None:
    t = table()
    assert t.on_state(state(SELF), 1.0) == []
    assert t.on_state(state(SELF, epoch=99), 1.0) == []
    assert len(t) == 0
    assert t.get(SELF) is None
    assert t.next_deadline() is None


def test_a_state_without_addresses_is_ignored() -> None:
    t = table()
    assert t.on_state(state(addresses=()), 1.0) == []
    assert len(t) == 0


def test_a_state_without_addresses_is_not_a_heartbeat_for_a_known_peer() -> None:
    t = table()
    t.on_state(state(), 1.0)
    assert t.on_state(state(revision=1, addresses=()), 5.0) == []
    assert t.peers() == [peer()]
    assert seen(t) == 1.0


# -- restarts ----------------------------------------------------------------------------


def test_a_new_epoch_means_the_node_restarted() -> None:
    t = table()
    t.on_state(state(epoch=1), 1.0)
    t.on_state(state(epoch=1), 2.0)
    events = t.on_state(state(epoch=2), 3.0)
    assert events == [PeerLeft(peer(epoch=1), "restarted"), PeerJoined(peer(epoch=2))]
    assert events[0].peer.last_seen == 2.0  # when the old incarnation was last heard
    assert t.peers() == [peer(epoch=2)]
    assert seen(t) == 3.0


def test_epochs_are_not_ordered_a_smaller_one_is_a_restart_too() -> None:
    t = table()
    t.on_state(state(epoch=7), 1.0)
    assert t.on_state(state(epoch=3), 2.0) == [PeerLeft(peer(epoch=7), "restarted"),
                                               PeerJoined(peer(epoch=3))]


def test_a_late_state_of_the_replaced_incarnation_is_ignored() -> None:
    t = table()
    t.on_state(state(epoch=1), 1.0)
    t.on_state(state(epoch=2), 2.0)
    assert t.on_state(state(epoch=1, revision=9), 3.0) == []
    assert t.peers() == [peer(epoch=2)]
    assert seen(t) == 2.0


def test_a_stale_state_of_a_timed_out_incarnation_does_not_lock_out_its_successor() -> None:
    t = table()
    t.on_state(state(epoch=1), 0.0)
    assert t.expire(11.0) == [PeerLeft(peer(epoch=1), "timeout")]
    assert t.on_state(state(epoch=2), 12.0) == [PeerJoined(peer(epoch=2))]
    t.on_state(state(epoch=1), 13.0)  # a stale State of the dead incarnation
    t.on_state(state(epoch=2), 14.0)  # the live incarnation's heartbeat
    p = t.get(A)
    assert p is not None
    assert p.epoch == 2


# -- goodbyes ----------------------------------------------------------------------------


def test_bye_removes_the_peer_at_once() -> None:
    t = table()
    t.on_state(state(), 1.0)
    events = t.on_bye(A, 1, 2.0)
    assert events == [PeerLeft(peer(), "goodbye")]
    assert events[0].peer.last_seen == 1.0
    assert len(t) == 0
    assert t.get(A) is None
    assert t.next_deadline() is None


def test_a_state_of_an_incarnation_that_said_bye_is_ignored() -> None:
    """Reordered, or queued before the goodbye: the incarnation is retired."""
    t = table()
    t.on_state(state(), 1.0)
    t.on_bye(A, 1, 2.0)
    assert t.on_state(state(), 3.0) == []
    assert t.on_state(state(revision=1), 4.0) == []
    assert len(t) == 0


def test_a_bye_that_overtakes_the_first_state_retires_the_incarnation_too() -> None:
    t = table()
    assert t.on_bye(A, 1, 1.0) == []
    assert t.on_state(state(), 2.0) == []
    assert len(t) == 0


def test_a_new_epoch_joins_after_a_bye() -> None:
    t = table()
    t.on_state(state(epoch=1), 1.0)
    t.on_bye(A, 1, 2.0)
    assert t.on_state(state(epoch=2), 3.0) == [PeerJoined(peer(epoch=2))]


def test_a_bye_for_an_unknown_node_or_another_epoch_changes_nothing() -> None:
    t = table()
    t.on_state(state(epoch=1), 1.0)
    assert t.on_bye(B, 1, 2.0) == []
    assert t.on_bye(A, 2, 2.0) == []
    assert t.on_bye(SELF, 1, 2.0) == []
    assert t.peers() == [peer(epoch=1)]
    assert seen(t) == 1.0


# -- timeouts ----------------------------------------------------------------------------


def test_a_peer_silent_for_longer_than_the_timeout_leaves() -> None:
    t = table()
    t.on_state(state(), 0.0)
    t.on_state(state(B), 5.0)
    events = t.expire(12.0)
    assert events == [PeerLeft(peer(), "timeout")]
    assert events[0].peer.last_seen == 0.0
    assert [p.id for p in t.peers()] == [B.hex()]


def test_a_peer_silent_for_exactly_the_timeout_stays() -> None:
    """The boundary is exclusive: ``last_seen < now - timeout`` expires."""
    t = table()
    t.on_state(state(), 0.0)
    assert t.expire(TIMEOUT) == []
    assert len(t) == 1
    assert t.expire(math.nextafter(TIMEOUT, math.inf)) == [PeerLeft(peer(), "timeout")]


def test_heartbeats_keep_a_peer_alive() -> None:
    t = table()
    for now in range(0, 100, 9):
        t.on_state(state(), float(now))
        assert t.expire(float(now) + 9.5) == []
    assert len(t) == 1


def test_a_peer_that_timed_out_rejoins_with_the_same_epoch() -> None:
    """A link that flapped: the incarnation is not retired by a timeout."""
    t = table()
    t.on_state(state(), 0.0)
    t.expire(11.0)
    assert t.on_state(state(), 12.0) == [PeerJoined(peer())]
    assert seen(t) == 12.0


def test_next_deadline_is_none_without_peers() -> None:
    assert table().next_deadline() is None


def test_next_deadline_is_when_the_longest_silent_peer_would_time_out() -> None:
    t = table()
    t.on_state(state(A), 1.0)
    t.on_state(state(B), 3.0)
    assert t.next_deadline() == 1.0 + TIMEOUT
    t.on_state(state(A), 5.0)  # heartbeat
    assert t.next_deadline() == 3.0 + TIMEOUT
    t.on_bye(B, 1, 6.0)
    assert t.next_deadline() == 5.0 + TIMEOUT
    t.expire(100.0)
    assert t.next_deadline() is None


def test_just_after_next_deadline_the_longest_silent_peer_is_gone() -> None:
    t = table()
    t.on_state(state(A), 1.0)
    t.on_state(state(B), 2.0)
    deadline = t.next_deadline()
    assert deadline is not None
    assert t.expire(deadline) == []  # the boundary is exclusive
    assert t.expire(math.nextafter(deadline, math.inf)) == [PeerLeft(peer(A), "timeout")]


# -- max_peers ---------------------------------------------------------------------------


def test_a_full_table_refuses_further_nodes_and_counts_them() -> None:
    t = table(max_peers=2)
    t.on_state(state(A), 1.0)
    t.on_state(state(B), 1.0)
    assert t.on_state(state(C), 2.0) == []
    assert t.on_state(state(C), 3.0) == []
    assert t.refused == 2
    assert t.get(C) is None
    assert len(t) == 2


def test_a_full_table_still_hears_its_known_peers() -> None:
    t = table(max_peers=2)
    t.on_state(state(A), 1.0)
    t.on_state(state(B), 1.0)
    assert t.on_state(state(A), 2.0) == []
    assert seen(t, A) == 2.0
    assert t.on_state(state(A, revision=1), 3.0) == [
        PeerUpdated(peer(A, revision=1), previous=peer(A))]
    assert t.on_state(state(A, epoch=2), 4.0) == [
        PeerLeft(peer(A, revision=1), "restarted"), PeerJoined(peer(A, epoch=2))]
    assert t.refused == 0


def test_a_refused_node_joins_once_there_is_room() -> None:
    t = table(max_peers=1)
    t.on_state(state(A), 1.0)
    assert t.on_state(state(B), 1.0) == []
    t.on_bye(A, 1, 2.0)
    assert t.on_state(state(B), 3.0) == [PeerJoined(peer(B))]
    assert t.refused == 1


# -- addresses and endpoints -------------------------------------------------------------

NET10 = ipaddress.ip_network("10.0.0.0/8")
NET192 = ipaddress.ip_network("192.168.1.0/24")
NET6 = ipaddress.ip_network("2001:db8::/32")


def test_choose_address_prefers_one_inside_our_networks() -> None:
    assert choose_address(["192.168.7.1", "10.1.2.3", "10.9.9.9"], [NET10]) == "10.1.2.3"
    assert choose_address(["10.1.2.3", "192.168.1.20"], [NET192, NET10]) == "10.1.2.3"


def test_choose_address_falls_back_to_the_first() -> None:
    assert choose_address(["192.168.7.1", "172.16.0.1"], [NET10]) == "192.168.7.1"
    assert choose_address(["192.168.7.1", "172.16.0.1"], []) == "192.168.7.1"


def test_choose_address_matches_ipv6_networks_and_mixes_versions() -> None:
    assert choose_address(["10.0.0.1", "2001:db8::5"], [NET6]) == "2001:db8::5"
    assert choose_address(["2001:db8::5", "10.0.0.1"], [NET10, NET192]) == "10.0.0.1"


def test_the_table_reaches_a_peer_through_our_own_networks() -> None:
    t = table(networks=[NET192])
    addrs = ("10.0.0.1", "192.168.1.20")
    [ev] = t.on_state(state(addresses=addrs), 1.0)
    assert ev.peer.address == "192.168.1.20"
    assert ev.peer.control_endpoint == "tcp://192.168.1.20:5000"


def test_the_table_names_a_nodes_control_endpoint_before_it_joins() -> None:
    t = table(networks=[NET192])
    st_ = state(addresses=("10.0.0.1", "192.168.1.20"))
    assert t.control_endpoint(st_) == "tcp://192.168.1.20:5000"
    assert A not in t  # asking does not make it join
    [ev] = t.on_state(st_, 1.0)
    assert ev.peer.control_endpoint == t.control_endpoint(st_)
    assert A in t
    assert t.control_endpoint(state(B, addresses=("2001:db8::5",))) == "tcp://[2001:db8::5]:5000"
    assert t.control_endpoint(state(B, addresses=())) is None


def test_endpoints_of_an_ipv4_peer() -> None:
    p = peer()
    assert p.control_endpoint == "tcp://10.0.0.1:5000"
    assert p.endpoint(ChannelOffer("temps", Role.PUBLISHER, 6000)) == "tcp://10.0.0.1:6000"


def test_endpoints_of_an_ipv6_peer_are_bracketed() -> None:
    p = peer(addresses=("2001:db8::5",))
    assert p.control_endpoint == "tcp://[2001:db8::5]:5000"
    assert p.endpoint(ChannelOffer("temps", Role.PUBLISHER, 6000)) == "tcp://[2001:db8::5]:6000"


def test_offers_filters_by_channel_role_and_listening_port() -> None:
    catalogue = (
        ChannelOffer("temps", Role.PUBLISHER, 6000),
        ChannelOffer("temps", Role.PUBLISHER, 6002),
        ChannelOffer("temps", Role.SUBSCRIBER, 0),
        ChannelOffer("temps", Role.PULLER, 6001),
        ChannelOffer("other", Role.PUBLISHER, 6003),
        ChannelOffer("temps", Role.REPLIER, 0),
    )
    p = peer(channels=catalogue)
    assert offers(p, "temps", Role.PUBLISHER) == [catalogue[0], catalogue[1]]
    assert offers(p, "temps", Role.PULLER) == [catalogue[3]]
    assert offers(p, "temps", Role.SUBSCRIBER) == []  # port 0: it connects, nobody can
    assert offers(p, "temps", Role.REPLIER) == []
    assert offers(p, "nope", Role.PUBLISHER) == []


def test_peers_compare_equal_whatever_their_last_seen() -> None:
    assert peer(last_seen=1.0) == peer(last_seen=2.0)
    assert dataclasses.replace(peer(), revision=1) != peer()


# -- the model: random histories keep every invariant ------------------------------------

NODES = (A, B, C, SELF)
ADDRESS_SETS = (("10.0.0.1",), ("10.0.0.2", "192.168.1.20"), ())

Op = tuple[str, int, int, int, int, int]  # kind, node, epoch, revision, addresses, dt

ops = st.one_of(
    st.tuples(st.just("state"), st.integers(0, 3), st.integers(1, 3), st.integers(0, 3),
              st.integers(0, 2), st.integers(0, 6)),
    st.tuples(st.just("bye"), st.integers(0, 3), st.integers(1, 3), st.just(0), st.just(0),
              st.integers(0, 6)),
    st.tuples(st.just("expire"), st.just(0), st.just(0), st.just(0), st.just(0),
              st.integers(0, 12)),
)


def snapshot(t: PeerTable) -> dict[str, Peer]:
    ps = t.peers()
    ids = [p.id for p in ps]
    assert len(ids) == len(set(ids)), "at most one peer per node id"
    assert len(ps) == len(t)
    return {p.id: p for p in ps}


def replay(before: dict[str, Peer], events: list[PeerEvent]) -> dict[str, Peer]:
    """Apply the events to the before snapshot; each must make sense where it stands."""
    now = dict(before)
    for ev in events:
        if isinstance(ev, PeerJoined):
            assert ev.peer.id not in now, "joined while present"
            b = before.get(ev.peer.id)
            assert b is None or b.epoch != ev.peer.epoch, "the same incarnation joined twice"
            now[ev.peer.id] = ev.peer
        elif isinstance(ev, PeerLeft):
            assert now.get(ev.peer.id) == ev.peer, "left without being present"
            assert ev.peer.last_seen == now[ev.peer.id].last_seen
            del now[ev.peer.id]
        else:
            assert now.get(ev.peer.id) == ev.previous, "updated from something not present"
            assert ev.peer.epoch == ev.previous.epoch
            assert ev.peer != ev.previous
            now[ev.peer.id] = ev.peer
    return now


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=40), st.sampled_from([2, 8]))
def test_random_histories_keep_the_invariants(history: list[Op], max_peers: int) -> None:
    t = table(max_peers=max_peers)
    said_bye: set[tuple[str, int]] = set()
    replaced: set[tuple[str, int]] = set()
    now = 0.0
    for kind, who, epoch, revision, addrs, dt in history:
        now += dt
        node = NODES[who]
        before = snapshot(t)
        refused = t.refused
        if kind == "state":
            st_ = state(node, epoch, revision=revision, addresses=ADDRESS_SETS[addrs])
            events = t.on_state(st_, now)
            assert all(isinstance(e, PeerJoined | PeerUpdated) or e.reason == "restarted"
                       for e in events)
            if any(isinstance(e, PeerLeft) for e in events):
                assert [type(e) for e in events] == [PeerLeft, PeerJoined]
            current = t.get(node)
            if node != SELF and st_.addresses and current and current.epoch == epoch:
                assert current.last_seen == now, "an accepted State is a heartbeat"
            if (node.hex(), epoch) in said_bye | replaced or node == SELF or not st_.addresses:
                assert events == []
        elif kind == "bye":
            events = t.on_bye(node, epoch, now)
            b = before.get(node.hex())
            if b is not None and b.epoch == epoch:
                assert events == [PeerLeft(b, "goodbye")]
            else:
                assert events == []
            said_bye.add((node.hex(), epoch))
        else:
            events = t.expire(now)
            assert all(isinstance(e, PeerLeft) and e.reason == "timeout" for e in events)
            silent = {k for k, p in before.items() if p.last_seen < now - TIMEOUT}
            assert {e.peer.id for e in events} == silent
        after = snapshot(t)
        assert replay(before, events) == after
        for k, p in after.items():  # nobody else's clock moved
            if k != node.hex() and k in before:
                assert p.last_seen == before[k].last_seen
        replaced |= {(e.peer.id, e.peer.epoch) for e in events
                     if isinstance(e, PeerLeft) and e.reason == "restarted"}
        if t.refused != refused:
            assert t.refused == refused + 1
            assert events == []
            assert node.hex() not in before
            assert len(before) == max_peers
        # the invariants
        assert SELF.hex() not in after
        assert len(after) <= max_peers
        for k, p in after.items():
            assert (k, p.epoch) not in said_bye, "a retired incarnation is back"
            assert (k, p.epoch) not in replaced, "a replaced incarnation is back"
        if kind == "expire":
            assert all(p.last_seen >= now - TIMEOUT for p in after.values())
        deadline = t.next_deadline()
        if after:
            assert deadline == min(p.last_seen for p in after.values()) + TIMEOUT
        else:
            assert deadline is None
