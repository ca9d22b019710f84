"""``shoal doctor`` on hosts whose interfaces are not a plain Ethernet card: a host
where only loopback is up (nodes there find each other over mDNS on 127.0.0.1, and
doctor must say so and listen there), a host where not even loopback is up, and
veth and bridge interfaces seen by a process that entered their network namespace
without remounting ``/sys`` (``nsenter``), where ``/sys/class/net`` describes the
namespace of whoever mounted it.

Each test builds its own network namespace (``ip netns add``, root only; skipped
otherwise) and deletes it, with everything still running in it, in a ``finally``.

Network safety: every process runs inside a namespace the test creates; the veth
pair has both ends in that namespace, and doctor is pinned to loopback there.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import netlab
import pytest
from netlab import DEFAULT_PREFIX, IP_TIMEOUT, namespaces_available

pytestmark = pytest.mark.lab

WAIT = 40.0
"""Bound for one command in a namespace (imports on a busy machine, then its work)."""

# A node on mDNS with default settings (no interfaces=: the library picks), with a
# replier, that says "ready" once it is announced.
NODE = """
import sys, trio, shoal
from shoal.discovery import MDNS

async def main():
    async with shoal.open_node(sys.argv[1], discovery=MDNS()) as node, \\
            node.open_replier(sys.argv[2]):
        print("ready", flush=True)
        await trio.sleep(60)
trio.run(main)
"""


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True,
                          timeout=IP_TIMEOUT, check=False)
    assert done.returncode == 0, (args, done.stderr)
    return done


@contextmanager
def namespace() -> Iterator[str]:
    """A fresh network namespace (only ``lo``, down), deleted at the end with every
    process still in it."""
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    netlab.remove_stale_namespaces()
    # named like the lab's, so that a crashed run's leftovers are removed next time
    name = f"{DEFAULT_PREFIX}{os.getpid()}n{next(netlab._counter)}-doctor"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        netlab._destroy_namespace(name)


def doctor(ns: str, *args: str, enter: str = "netns") -> subprocess.CompletedProcess[str]:
    """``shoal doctor`` in ``ns``: through ``ip netns exec`` (which remounts /sys for
    the namespace) or ``nsenter --net`` (which does not)."""
    prefix = (["ip", "netns", "exec", ns] if enter == "netns"
              else ["nsenter", f"--net=/run/netns/{ns}"])
    return subprocess.run([*prefix, sys.executable, "-m", "shoal.cli", "doctor", *args],
                          capture_output=True, text=True, timeout=WAIT, check=False)


def events(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_doctor_on_a_host_with_only_loopback_listens_there_and_finds_its_nodes() -> None:
    with namespace() as ns:
        # loopback down too: nothing can work, and doctor says so without listening
        down = doctor(ns, "--wait", "1", "--json")
        assert down.returncode == 1, (down.stdout, down.stderr)
        problems = [e for e in events(down)
                    if e["event"] == "finding" and e["level"] == "problem"]
        assert [p["what"] for p in problems] == [
            "no interface is up, not even loopback: mDNS cannot work here"], problems
        assert "ip link set lo up" in problems[0]["fix"]

        ip("-n", ns, "link", "set", "lo", "up")
        name, ch = f"lonely-{uuid.uuid4().hex[:6]}", f"t-{uuid.uuid4().hex[:6]}"
        node = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", NODE,
                                 name, ch], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert node.stdout is not None
            ready, _, _ = select.select([node.stdout], [], [], WAIT)
            assert ready, "the node did not start"
            assert node.stdout.readline().strip() == "ready", node.stderr
            done = doctor(ns, "--wait", "4", "--json")
        finally:
            node.kill()
            node.wait(timeout=10)
    assert done.returncode == 0, (done.stdout, done.stderr)
    found = events(done)
    lo = next(e for e in found if e["event"] == "interface" and e["name"] == "lo")
    assert (lo["up"], lo["loopback"], lo["ipv4"]) == (True, True, ["127.0.0.1"])
    findings = [e for e in found if e["event"] == "finding"]
    assert not [f for f in findings if f["level"] == "problem"], findings
    assert any(f["what"].startswith("no interface but loopback is up: nodes on this host "
                                    "find each other over mDNS on lo 127.0.0.1")
               for f in findings), findings
    nodes = [e for e in found if e["event"] == "node" and e["name"] == name]
    assert len(nodes) == 1, found
    assert nodes[0]["reachable"] is True
    assert f"{ch}:rep" in nodes[0]["channels"]


def test_doctor_reads_every_kind_of_interface_from_inside_a_namespace() -> None:
    """veth ends (one up, one down) and a bridge, seen through ``nsenter``: /sys still
    shows the root namespace, where these interfaces do not exist; doctor must report
    the flags ``ip link`` reports for the namespace, not ``?``."""
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter (util-linux) is not installed")
    with namespace() as ns:
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", ns, "addr", "add", "10.250.0.1/24", "dev", "v0")
        ip("-n", ns, "link", "set", "v0", "up")
        ip("-n", ns, "link", "add", "br0", "type", "bridge")
        ip("-n", ns, "link", "set", "br0", "up")
        want = {link["ifname"]: ("UP" in link["flags"], "MULTICAST" in link["flags"])
                for link in json.loads(ip("-n", ns, "-j", "link", "show").stdout)}
        done = doctor(ns, "--wait", "1", "--json", "--interface", "127.0.0.1",
                      enter="nsenter")
        text = doctor(ns, "--wait", "1", "--interface", "127.0.0.1", enter="nsenter")
    assert done.returncode == 0, (done.stdout, done.stderr)
    got = {e["name"]: e for e in events(done) if e["event"] == "interface"}
    assert set(want) == {"lo", "v0", "v1", "br0"}
    assert set(got) == set(want)
    for name, (up, multicast) in want.items():
        assert (got[name]["up"], got[name]["multicast"]) == (up, multicast), got[name]
    assert got["v0"]["up"] is True
    assert got["v1"]["up"] is False
    assert got["v0"]["ipv4"] == ["10.250.0.1"]
    assert got["lo"]["loopback"] is True
    assert not any(got[n]["loopback"] for n in ("v0", "v1", "br0"))
    lines = [ln for ln in text.stdout.splitlines() if ln.startswith("interface")]
    assert len(lines) == 4, text.stdout
    assert not [ln for ln in lines if "?" in ln], lines
    assert any(ln.split()[1:3] == ["v1", "down"] for ln in lines), lines


def test_multicast_addresses_inside_a_namespace_use_its_own_flags() -> None:
    """What a node listens on by default, seen through nsenter: the address of the
    veth that is up, not the one that is down, and no loopback."""
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter (util-linux) is not installed")
    code = ("from shoal.discovery._interfaces import multicast_addresses; "
            "print(multicast_addresses())")
    with namespace() as ns:
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", ns, "addr", "add", "10.250.0.1/24", "dev", "v0")
        ip("-n", ns, "addr", "add", "10.250.1.1/24", "dev", "v1")
        ip("-n", ns, "link", "set", "v0", "up")  # v1 stays down
        done = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-c",
                               code], capture_output=True, text=True, timeout=WAIT,
                              check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['10.250.0.1']"
