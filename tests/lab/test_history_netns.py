"""History across namespaced hosts over nodes: a display node started late gets the
last value at once.

Host A's node publishes a set-point on a channel with ``history=1`` and never again;
host B's node starts afterwards, finds A over mDNS (inside the lab's namespaces) and
subscribes: the last value reaches it replayed, soon after discovery. The delay is
printed (``-s`` shows it) and bounded only by a generous deadline: a namespace lab on
a shared machine is no place for a tight time.

Network safety: both nodes run inside namespaces the lab creates (``Host.popen``;
``lab_node.py`` refuses to run anywhere else). The lab kills what it started and
deletes its namespaces.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from labtools import LabNode, is_event
from netlab import Lab, lab_fixture

pytestmark = pytest.mark.lab

lab2 = lab_fixture(2)

DEADLINE = 15.0
"""Seconds from B's start within which the replayed value must arrive: discovery
(a few seconds at most in these labs), the connection and the replay, with room."""
QUIET = 1.0
"""How long B is watched afterwards for a second copy that must not come."""


@pytest.fixture
def started() -> Iterator[list[LabNode]]:
    nodes: list[LabNode] = []
    try:
        yield nodes
    finally:
        for node in nodes:
            node.close()


def test_a_display_started_late_gets_the_last_value_at_once(
        lab2: Lab, started: list[LabNode]) -> None:
    host_a, host_b = lab2.hosts
    plant = LabNode.start(host_a, "plant", "--pub", "plant", "--history", "1")
    started.append(plant)
    for value in (19.0, 21.5):
        plant.call({"cmd": "publish", "channel": "plant", "topic": "boiler/setpoint",
                    "body": value}, is_event("published", body=value), 5.0)

    display = LabNode(host_b, "display", ["--sub", "plant", "--topic", "boiler/"])
    started.append(display)
    display.wait_ready()
    msg = display.wait_for(is_event("msg", channel="plant"), DEADLINE,
                           what="the replayed set-point")
    joined = display.wait_for(is_event("joined", name="plant"), 1.0,
                              what="the plant's node, discovered before its message")
    time.sleep(QUIET)

    assert (msg["topic"], msg["body"], msg["seq"], msg["replayed"]) == (
        "boiler/setpoint", 21.5, 1, True)
    assert msg["epoch"] == plant.epoch
    assert len(display.find(is_event("msg"))) == 1  # the last value only, once
    assert joined["address"] == host_a.address  # found on the lab network, over mDNS
    after_start = msg["t"] - display.spawned
    after_discovery = msg["t"] - joined["t"]
    print(f"\nreplayed set-point on B: {after_start:.3f} s after B's process started, "
          f"{msg['t'] - display.ready['t']:.3f} s after B was ready, {after_discovery:.3f} s "
          f"after B discovered A")
