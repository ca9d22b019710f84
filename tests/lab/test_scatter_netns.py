"""Scatter/gather across hosts: one node's ``gather`` reaches the repliers on three
other hosts of a namespace lab, and reports a host whose cable is out as missing.

Network safety: every node runs inside a namespace the lab creates (``Host.popen``;
``lab_node.py`` refuses to run anywhere else), discovering the others with ``MDNS()``
there; nothing runs zeroconf in the root namespace. The lab kills every process it
started and deletes its namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from labtools import Event, LabNode, is_event, start_nodes
from netlab import Lab, lab_fixture

pytestmark = pytest.mark.lab

lab4 = lab_fixture(4)

WAIT = 8.0
"""Generous bound for one step (discovery, a gather that all answer)."""
WITHIN = 1.0
"""The gather's ``within`` once a host is cut off: well below the time the requester
needs to notice (its peer timeout, 6 s; the connection's ZMTP heartbeat timeout, 3 s)."""
LIVENESS = ["--heartbeat", "0.5", "--peer-timeout", "6"]


@pytest.fixture
def nodes(lab4: Lab) -> Iterator[list[LabNode]]:
    """A requester on h0, a replier on each of h1..h3 (channel ``calc``)."""
    h = lab4.hosts
    started = start_nodes([
        (h[0], "h0", [*LIVENESS, "--req", "calc"]),
        *((h[i], f"h{i}", [*LIVENESS, "--rep", "calc"]) for i in (1, 2, 3)),
    ])
    try:
        yield started
    finally:
        for node in started:
            node.close()


def gather(client: LabNode, body: str, within: float) -> Event:
    ev = client.call({"cmd": "gather", "channel": "calc", "body": body, "within": within,
                      "timeout": within + WAIT},
                     lambda e: e["event"] in ("gathered", "error"), within + WAIT + 2)
    assert ev["event"] == "gathered", ev
    return ev


def test_gather_across_hosts_reports_a_cut_off_host_missing(
        lab4: Lab, nodes: list[LabNode]) -> None:
    client, *repliers = nodes
    cut = repliers[2]
    answer = client.call({"cmd": "wait_peers", "n": 3, "channel": "calc", "timeout": WAIT},
                         lambda e: e["event"] in ("peers_ready", "error"), WAIT + 1)
    assert answer["event"] == "peers_ready", answer

    every = gather(client, "all", WAIT)
    assert every["missing"] == [], every
    assert sorted((a["replier"], a["status"], a["body"]["from"], a["body"]["body"])
                  for a in every["replies"]) == sorted(
        (nd.id, "replied", nd.name, "all") for nd in repliers)

    lab4.hosts[3].link_down()
    try:
        some = gather(client, "some", WITHIN)
        peers = client.call({"cmd": "peers"}, is_event("peers"), WAIT)
    finally:
        lab4.hosts[3].link_up()
    assert sorted((a["replier"], a["status"], a["body"]["from"])
                  for a in some["replies"]) == sorted(
        (nd.id, "replied", nd.name) for nd in repliers[:2])
    assert [(a["replier"], a["status"]) for a in some["missing"]] == [(cut.id, "missing")]
    assert "no answer within" in some["missing"][0]["error"], some
    assert some["elapsed"] >= WITHIN  # it waited for the cut-off host until within
    # the cut-off host was still a live peer: it was addressed, not left out
    assert cut.name in peers["peers"], peers
