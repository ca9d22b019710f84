"""Secured nodes across the hosts of a namespace lab: admitted by key, unreadable on
the wire.

Three hosts, each running ``secure_lab_node.py`` with ``MDNS()`` on its namespace's
interfaces: a and b trust each other; c holds a key neither trusts (and trusts both).
a publishes a known body on a channel that b and c subscribe to; c publishes on it
too. A raw packet capture on a's ``eth0`` records the run. Specified: b gets a's
messages and never c's; c gets nothing from a; the known body never appears on the
wire. The control run (every node plaintext) shows the same capture *does* find the
body, so the check can fail.

Network safety: every process runs inside a namespace the lab creates
(``Host.popen``; the script refuses to run elsewhere); the lab kills them and deletes
its namespaces.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtools import LabNode, is_event
from netlab import Host, Lab, lab_fixture

from shoal.security import generate_keypair

pytestmark = pytest.mark.lab

lab3 = lab_fixture(3)

SCRIPT = str(Path(__file__).resolve().parent / "secure_lab_node.py")
SECRET = "shoal-secret-payload-1234"
CHANNEL = "sec"
WAIT = 12.0
"""Bound for discovery plus the first message across hosts (no latency asserted)."""


class Run:
    """The nodes and the capture of one run; everything is killed at the end."""

    def __init__(self, lab: Lab, tmp_path: Path, *, secured: bool) -> None:
        self.lab = lab
        self.nodes: list[LabNode] = []
        self.capture_file = tmp_path / "capture.bin"
        self.capture = lab.hosts[0].popen(
            [sys.executable, "-u", SCRIPT, "--capture", "eth0", str(self.capture_file)],
            stdout=subprocess.PIPE, text=True)
        assert self.capture.stdout is not None
        assert self.capture.stdout.readline().strip() == "capturing"
        keys: dict[str, tuple[str, str]] = {}
        if secured:
            for name in ("a", "b", "c"):
                pair = generate_keypair()
                path = tmp_path / f"{name}.key"
                pair.save(path)
                keys[name] = (str(path), pair.public.decode())

        def security(name: str, *trusted: str) -> list[str]:
            if not secured:
                return []
            args = ["--key-file", keys[name][0]]
            for other in trusted:
                args.append(f"--trust={keys[other][1]}")  # a Z85 key may start with "-"
            return args

        h0, h1, h2 = lab.hosts
        self.a = self.start(h0, "a", *security("a", "b"), "--pub", CHANNEL,
                            "--publish", CHANNEL, SECRET)
        self.b = self.start(h1, "b", *security("b", "a"), "--sub", CHANNEL)
        self.c = self.start(h2, "c", *security("c", "a", "b"), "--sub", CHANNEL,
                            "--pub", CHANNEL, "--publish", CHANNEL, "from-c")

    def start(self, host: Host, name: str, *args: str) -> LabNode:
        node = LabNode(host, name, args, script=SCRIPT)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.lab.hosts[0].kill(self.capture)

    def captured(self) -> bytes:
        return self.capture_file.read_bytes()


@pytest.fixture
def run_factory(lab3: Lab, tmp_path: Path) -> Iterator[list[Run]]:
    runs: list[Run] = []
    try:
        yield runs
    finally:
        for r in runs:
            r.close()


def test_a_trusted_pair_talks_an_untrusted_host_gets_nothing_and_the_wire_is_opaque(
        lab3: Lab, tmp_path: Path, run_factory: list[Run]) -> None:
    run = Run(lab3, tmp_path, secured=True)
    run_factory.append(run)
    for node in run.nodes:
        node.wait_ready()
    a_id, c_id = run.a.id, run.c.id
    run.b.wait_count(is_event("msg", channel=CHANNEL, sender=a_id), 5, WAIT)
    # c has had the same time to get through: a few more seconds, then look
    time.sleep(2.0)
    b_got = run.b.find(is_event("msg", channel=CHANNEL))
    c_got = run.c.find(is_event("msg", channel=CHANNEL))
    assert {m["sender"] for m in b_got} == {a_id}
    assert all(m["body"] == SECRET for m in b_got)
    assert [m for m in c_got if m["sender"] != c_id] == []
    assert [e["name"] for e in run.b.find(is_event("joined"))] == ["a"]
    assert run.c.find(is_event("joined")) == []
    captured = run.captured()
    assert len(captured) > 10_000  # the capture did see the traffic
    assert SECRET.encode() not in captured
    assert b"from-c" not in captured


def test_control_without_security_the_same_capture_finds_the_body(
        lab3: Lab, tmp_path: Path, run_factory: list[Run]) -> None:
    run = Run(lab3, tmp_path, secured=False)
    run_factory.append(run)
    for node in run.nodes:
        node.wait_ready()
    run.b.wait_count(is_event("msg", channel=CHANNEL, sender=run.a.id), 5, WAIT)
    deadline = time.monotonic() + WAIT
    while SECRET.encode() not in run.captured():
        assert time.monotonic() < deadline, "the capture never saw the plaintext body"
        time.sleep(0.1)
    # plaintext nodes trust everyone: c's messages reach b too
    run.b.wait_for(is_event("msg", channel=CHANNEL, sender=run.c.id), WAIT)


@pytest.mark.parametrize("key", ["intruder", "trusted"])
def test_a_forged_advertisement_gets_no_traffic_and_delivers_nothing(
        lab3: Lab, tmp_path: Path, key: str) -> None:
    """Host C advertises a node with a's id and name: with its own key (not trusted by
    b; a node that connected anyway would complete the handshake and C would count its
    messages), or with a's public key but pointing at C's socket (whose secret is not
    a's). b connects to neither, and no message reaches C's socket."""
    h0, h1, h2 = lab3.hosts
    pairs = {n: generate_keypair() for n in ("a", "b")}
    for n, pair in pairs.items():
        pair.save(tmp_path / f"{n}.key")
    nodes: list[LabNode] = []
    forger = None
    try:
        a = LabNode(h0, "a", ["--key-file", str(tmp_path / "a.key"),
                              f"--trust={pairs['b'].public.decode()}", "--pub", CHANNEL,
                              "--publish", CHANNEL, SECRET], script=SCRIPT)
        nodes.append(a)
        a.wait_ready()
        pk = "own" if key == "intruder" else pairs["a"].public.decode()
        forger = h2.popen([sys.executable, "-u", SCRIPT, "--forge", a.id, "a", pk,
                           h2.address], stdout=subprocess.PIPE, text=True)
        assert forger.stdout is not None
        assert forger.stdout.readline().startswith("forging ")
        b = LabNode(h1, "b", ["--key-file", str(tmp_path / "b.key"),
                              f"--trust={pairs['a'].public.decode()}", "--sub", CHANNEL],
                    script=SCRIPT)
        nodes.append(b)
        b.wait_ready()
        b.wait_count(is_event("msg", channel=CHANNEL, sender=a.id), 5, WAIT)
        time.sleep(3.0)  # b has re-introduced itself to every advert a few times by now
        got = [line for line in _lines_so_far(forger) if line.startswith("got ")]
        assert got, "the forger reported nothing"
        assert got[-1] == "got 0"
        joined = b.find(is_event("joined"))
        assert [(e["name"], e["id"]) for e in joined] == [("a", a.id)]
        msgs = b.find(is_event("msg", channel=CHANNEL))
        assert all(m["sender"] == a.id and m["body"] == SECRET for m in msgs)
    finally:
        for node in nodes:
            node.close()
        if forger is not None:
            h2.kill(forger)


def _lines_so_far(proc: subprocess.Popen[str], seconds: float = 1.5) -> list[str]:
    """What ``proc`` prints (a line every 0.5 s) over the next ``seconds``."""
    import select

    assert proc.stdout is not None
    out: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line.strip())
    return out
