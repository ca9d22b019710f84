"""``shoal bench --serve`` on one lab host and ``--peer`` on another.

Network safety: both ends run inside namespaces the lab creates (``Host.popen`` /
``Host.run``); the lab kills them and deletes its namespaces.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from netlab import Host, Lab, lab_fixture

pytestmark = pytest.mark.lab

lab2 = lab_fixture(2)

QUICK = ["--count", "300", "--warmup", "50", "--rounds", "1", "--progress", "never"]


@contextmanager
def serving(host: Host, endpoint: str) -> Iterator[str]:
    proc = host.popen([sys.executable, "-m", "shoal", "bench", "--serve", endpoint],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("shoal bench serving on tcp://"), (first, proc.stderr)
        yield first.split()[-1]
    finally:
        host.kill(proc)


def test_peer_measures_every_pattern_against_a_server_on_another_host(lab2: Lab) -> None:
    a, b = lab2.hosts
    with serving(a, f"tcp://{a.address}:*") as endpoint:
        assert endpoint.startswith(f"tcp://{a.address}:")
        done = b.run([sys.executable, "-m", "shoal", "bench", "--peer", endpoint, *QUICK,
                      "--json"], timeout=180)
    assert done.returncode == 0, done.stderr
    recs = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(recs) == 9
    for rec in recs:
        assert rec["transport"] == "tcp"
        assert rec["timed"] >= 300, rec
        assert rec["throughput"] > 0, rec
        # The lab's namespaces share one kernel, hence one monotonic clock: one-way
        # latency is measured as on one machine.
        assert rec["latency_us"] is not None, rec
        if rec["reliable"] or rec["pattern"] != "ps":
            assert rec["lost"] == 0, rec


def test_a_server_on_every_address_is_reached_at_the_peer_address(lab2: Lab) -> None:
    """Bound to 0.0.0.0 inside host A, the server names its data endpoints 0.0.0.0;
    the client reaches them at the address it used for the control endpoint."""
    a, b = lab2.hosts
    with serving(a, "tcp://0.0.0.0:*") as endpoint:
        port = endpoint.rsplit(":", 1)[1]
        done = b.run([sys.executable, "-m", "shoal", "bench", "--peer",
                      f"tcp://{a.address}:{port}", *QUICK, "--pattern", "rr,pp",
                      "--mode", "reliable", "--json"], timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 4


def test_a_cut_link_fails_the_run_with_one_line(lab2: Lab) -> None:
    a, b = lab2.hosts
    with serving(a, f"tcp://{a.address}:*") as endpoint:
        a.link_down()
        try:
            done = b.run([sys.executable, "-m", "shoal", "bench", "--peer", endpoint,
                          *QUICK, "--pattern", "rr", "--timeout", "2"], timeout=60)
        finally:
            a.link_up()
    assert done.returncode == 1
    assert f"no bench server answers at {endpoint}" in done.stderr
    assert "Traceback" not in done.stderr
