"""Membership of a group of nodes on a namespace lab, one node per host: everyone finds
everyone, the group holds still while nothing happens, and a SIGKILLed node is given up
by every other node.

The sizes here are small and the deadlines generous (the machine is shared): the cost
of membership as the group grows is measured by ``benchmarks/scale.py``, not asserted.

Network safety: every node runs inside a namespace the lab creates (``Host.popen``;
``lab_node.py`` refuses to run anywhere else), so mDNS stays on the lab's bridge. The
lab kills every process it started and deletes its namespaces.
"""

from __future__ import annotations

import time

import pytest
from labtools import LabNode, is_event
from membership import CHANNEL, Membership, start_group
from netlab import Lab, lab_fixture

pytestmark = pytest.mark.lab

HOSTS = 8
lab8 = lab_fixture(HOSTS)

READY = 60.0
"""Every node process is up (interpreter, imports, node open) within this."""
FULL = 30.0
"""Every node sees every other within this, from the last one being ready."""
STEADY = 3.0
"""A window with nothing going on: nobody may be reported gone."""
GONE = 10.0
"""Every node gives up a SIGKILLed node within this (peer_timeout is 2 s)."""
PUBLISH_EVERY = 0.5


def close_all(nodes: list[LabNode]) -> None:
    for node in nodes:
        node.close()


@pytest.mark.parametrize("discovery", ["static", "mdns"])
def test_a_group_converges_holds_still_and_gives_up_a_killed_node(
        lab8: Lab, discovery: str) -> None:
    nodes = start_group(lab8.hosts, discovery=discovery, publish_every=PUBLISH_EVERY,
                        ready_timeout=READY)
    try:
        view = Membership(nodes)
        view.wait_full(FULL)

        # Steady: every view stays full, nobody leaves, the ticks get through.
        departures = len(view.lefts)
        marks = [n.mark() for n in nodes]
        time.sleep(STEADY)
        assert view.missing() == {}
        assert view.lefts[departures:] == []
        for node, mark in zip(nodes, marks, strict=True):
            assert node.find(is_event("msg", channel=CHANNEL), mark), (
                f"{node.name} received no tick in {STEADY}s\n{node.describe()}")

        victim, survivors = nodes[-1], nodes[:-1]
        victim.kill()
        gone = view.wait_gone(victim, GONE)
        assert {ev["reason"] for ev in gone.values()} == {"timeout"}, gone
        assert [(obs, ev["name"]) for obs, ev in view.lefts[departures:]
                if ev["name"] != victim.name] == []
        for node in survivors:
            assert set(view.live(node.name)) == {o.name for o in survivors if o is not node}
    finally:
        close_all(nodes)



PARTITION = 8.0
"""How long three hosts are cut off: well past the peer timeout."""
APART = 20.0
"""Both sides give each other up within this (a cut-off node watches at most two of
the others at a time: it learns the rest are gone a few at a time)."""
HEAL = 15.0
"""Every node sees every other again within this, once the cables are back."""


def test_a_partition_is_seen_from_both_sides_and_heals(lab8: Lab) -> None:
    """Three of eight hosts lose their cables (each is alone then): the five report the
    three gone, each of the three reports everyone gone (on a timeout), none of the
    five reports one of the five gone, and once the cables are back the whole group
    sees everyone again, with the same incarnations."""
    nodes = start_group(lab8.hosts, discovery="static", ready_timeout=READY)
    try:
        view = Membership(nodes)
        view.wait_full(FULL)
        cut, rest = nodes[5:], nodes[:5]
        departures = len(view.lefts)
        t_cut = time.monotonic()
        for node in cut:
            node.host.link_down()
        try:
            expected = {n.name: {o.name for o in rest if o is not n} if n in rest else set()
                        for n in nodes}
            while (seen := {n.name: set(view.live(n.name)) for n in nodes}) != expected:
                assert time.monotonic() - t_cut < APART, f"the sides did not part: {seen}"
                time.sleep(0.2)
            apart = time.monotonic() - t_cut
            time.sleep(max(0.0, t_cut + PARTITION - time.monotonic()))
        finally:
            for node in cut:
                node.host.link_up()
        print(f"\n3 of 8 hosts cut off: both sides apart after {apart:.1f} s")
        lefts = view.lefts[departures:]
        assert {ev["reason"] for _, ev in lefts} == {"timeout"}, lefts
        names = {n.name for n in rest}
        assert [(obs, ev["name"]) for obs, ev in lefts
                if obs in names and ev["name"] in names] == []
        view.wait_full(HEAL)
        for node in nodes:
            assert view.live(node.name) == {o.name: o.epoch for o in nodes if o is not node}
    finally:
        close_all(nodes)
