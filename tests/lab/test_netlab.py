"""The namespace lab itself: reachability, multicast across the bridge, link flaps, teardown.

Every packet here stays inside namespaces the lab creates; see ``netlab.py``.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest
from netlab import Host, Lab, lab_fixture, namespaces_available

pytestmark = pytest.mark.lab

lab3 = lab_fixture(3)

GROUP = "239.255.77.77"
PORT = 5399
TCP_PORT = 5398

RECEIVER = """
import socket, struct, sys
group, port, iface = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(5)
print("ready", flush=True)
data, src = s.recvfrom(2048)
print(data.decode(), src[0], flush=True)
"""

SENDER = """
import socket, sys, time
group, port, iface, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
for _ in range(count):
    s.sendto(b"hello-from-" + iface.encode(), (group, port))
    time.sleep(0.05)
"""

LISTENER = """
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    conn.close()
"""

CONNECT = """
import socket, sys

try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError as exc:
    sys.exit(f"unreachable: {exc}")
"""


def read_line(proc: subprocess.Popen[Any], timeout: float) -> str:
    """The next stdout line of ``proc`` (text mode), or fail after ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        pytest.fail(f"no output from {proc.args!r} within {timeout}s")
    line: str = proc.stdout.readline()
    return line.strip()


def start_listener(host: Host) -> subprocess.Popen[Any]:
    proc = host.popen(
        [sys.executable, "-c", LISTENER, host.address, str(TCP_PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert read_line(proc, 5) == "ready"
    return proc


def can_reach(src: Host, dst: Host, *, use_ping: bool | None = None) -> bool:
    """One probe from ``src`` to ``dst``: ``ping -c1 -W1`` if installed, else a TCP connect
    to a listener that the caller started on ``dst`` with :func:`start_listener`."""
    if use_ping is None:
        use_ping = shutil.which("ping") is not None
    if use_ping:
        argv = ["ping", "-c1", "-W1", dst.address]
    else:
        argv = [sys.executable, "-c", CONNECT, dst.address, str(TCP_PORT)]
    return src.run(argv, timeout=5).returncode == 0


def wait_reachable(src: Host, dst: Host, expected: bool, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        if can_reach(src, dst) == expected:
            return True
        if time.monotonic() > deadline:
            return False


@pytest.mark.parametrize("use_ping", [True, False], ids=["ping", "tcp"])
def test_hosts_reach_each_other(lab3: Lab, use_ping: bool) -> None:
    if use_ping and shutil.which("ping") is None:
        pytest.skip("ping is not installed (apt-get install iputils-ping); the tcp case covers it")
    hosts = lab3.hosts
    assert len({h.address for h in hosts}) == 3
    if not use_ping:
        for h in hosts:
            start_listener(h)
    for src in hosts:
        for dst in hosts:
            if src is not dst:
                assert can_reach(src, dst, use_ping=use_ping), f"{src} cannot reach {dst}"


def test_multicast_crosses_the_bridge(lab3: Lab) -> None:
    sender, *receivers = lab3.hosts
    procs = []
    for r in receivers:
        proc = r.popen(
            [sys.executable, "-c", RECEIVER, GROUP, str(PORT), r.address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
    for proc in procs:
        assert read_line(proc, 5) == "ready"
    sender.run(
        [sys.executable, "-c", SENDER, GROUP, str(PORT), sender.address, "5"],
        timeout=5,
        check=True,
    )
    for r, proc in zip(receivers, procs, strict=True):
        out, err = proc.communicate(timeout=6)
        assert proc.returncode == 0, f"{r} got nothing: {err}"
        assert out.split() == [f"hello-from-{sender.address}", sender.address]


def test_link_down_isolates_and_link_up_restores(lab3: Lab) -> None:
    a, b, _ = lab3.hosts
    if shutil.which("ping") is None:
        # probes go both ways below: each end needs its listener
        start_listener(a)
        start_listener(b)
    assert can_reach(a, b)
    b.link_down()
    assert wait_reachable(a, b, expected=False), "b still reachable with its cable pulled"
    assert not can_reach(b, a)
    # The host side only lost carrier: its multicast route survives the flap.
    routes = b.run(["ip", "route", "show", "224.0.0.0/4"], timeout=5).stdout
    assert "dev eth0" in routes
    b.link_up()
    assert wait_reachable(a, b, expected=True), "b unreachable after link_up"
    assert can_reach(b, a)


def root_links() -> set[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=5, check=True
    ).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


def netns_names() -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=5, check=True
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_close_removes_namespaces_and_processes() -> None:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    before = root_links()
    lab = Lab.create(3)
    try:
        assert set(lab.namespaces) <= netns_names()
        assert root_links() == before, "the lab touched the root namespace"
        sleepers = [h.popen(["sleep", "60"]) for h in lab.hosts]
        # A daemon that left its process group: only the namespace sweep catches it.
        spawner = lab.hosts[1].popen(
            ["setsid", "-f", "sh", "-c", "echo $$; exec sleep 60"],
            stdout=subprocess.PIPE,
            text=True,
        )
        daemon_pid = int(read_line(spawner, 5))
        lab.hosts[0].kill(sleepers[0])
        assert sleepers[0].returncode == -9
    finally:
        lab.close()
    assert all(p.poll() is not None for p in lab.processes())
    assert all(p.returncode == -9 for p in sleepers)
    assert not [ns for ns in netns_names() if ns.startswith(lab.prefix)]
    assert root_links() == before
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{daemon_pid}/stat") as f:
                zombie = f.read().split(") ")[1].startswith("Z")
        except FileNotFoundError:
            break
        if zombie:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"daemonized pid {daemon_pid} survived close()")
    lab.close()  # idempotent


def test_create_fails_cleanly_on_a_taken_prefix() -> None:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    with Lab.create(1) as lab:
        with pytest.raises(RuntimeError, match="already exist"):
            Lab.create(1, prefix=lab.prefix)
        assert set(lab.namespaces) <= netns_names()


def test_static_neighbours_are_permanent_and_reachable() -> None:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    with Lab.create(3, static_neighbours=True) as lab:
        macs = {h.mac for h in lab.hosts}
        assert len(macs) == 3
        assert "" not in macs
        for host in lab.hosts:
            shown = host.run(["ip", "-j", "neigh", "show", "dev", "eth0"], timeout=5)
            entries = {e["dst"]: e for e in json.loads(shown.stdout)}
            for other in lab.hosts:
                if other is host:
                    assert other.address not in entries
                    continue
                entry = entries[other.address]
                assert entry["lladdr"] == other.mac
                assert "PERMANENT" in entry["state"]
        a, b, _ = lab.hosts
        if shutil.which("ping") is None:
            start_listener(b)
        assert can_reach(a, b)


def test_small_labs_learn_neighbours_as_usual() -> None:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    with Lab.create(2) as lab:
        shown = lab.hosts[0].run(["ip", "-j", "neigh", "show", "dev", "eth0"], timeout=5)
        assert json.loads(shown.stdout or "[]") == []
