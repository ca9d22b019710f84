"""The ``shoal`` console script across the hosts of a namespace lab: reply/req,
sub/pub, reliable push to two pullers, ``peers``, and ``doctor`` (a node found
reachable, and two ways a node is not: TCP blocked while mDNS gets through, and a
``--static`` endpoint where nothing listens).

Each command is the installed ``shoal`` script, started inside a lab host with
``--interface <that host's lab address>``, so discovery is real multicast between
namespaces. One 3-host lab serves the module, and two long-running nodes (a replier
on A, a subscriber on B) serve its peers and doctor tests. Every command is stopped
when its test (or the module, for those two) ends: SIGINT, so nodes say goodbye and
withdraw their mDNS announcements, and SIGKILL if that does not work within a few
seconds. At the end of the module the lab is closed and checked: no namespace of it
left, every process it started reaped.

Network safety: every command runs inside a namespace the lab creates (``Host.popen``
/ ``Host.run``) and names only lab addresses; the TCP block is a tc filter inside a
lab namespace, removed in a ``finally`` (and with the namespace anyway).
"""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netlab import IP_TIMEOUT, Host, Lab, namespaces_available

pytestmark = pytest.mark.lab

WAIT = 30.0
"""Bound for one command that waits for a peer (discovery, then its work)."""
STOP = 5.0
"""How long a command may take to exit after SIGINT."""

# Classic BPF for `tc ... bpf da`: load the IPv4 protocol byte relative to the network
# header (SKF_NET_OFF + 9, the same at ingress and egress), drop (TC_ACT_SHOT = 2) if
# it is PROTO, else pass (TC_ACT_OK = 0). Needs no tc action module.
def _drop_program(proto: int) -> str:
    return f"4,48 0 0 4293918729,21 0 1 {proto},6 0 0 2,6 0 0 0"


TCP, UDP = 6, 17


def _console_script() -> str | None:
    beside = Path(sys.executable).with_name("shoal")
    return str(beside) if beside.exists() else shutil.which("shoal")


SHOAL = _console_script()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    if SHOAL is None:
        pytest.skip("the shoal console script is not installed (pip install -e .)")
    lab = Lab.create(3)
    try:
        yield lab
    finally:
        procs, namespaces = lab.processes(), lab.namespaces
        lab.close()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                timeout=IP_TIMEOUT, check=False).stdout
        left = [ns for ns in namespaces if ns in listed.split()]
        running = [p.args for p in procs if p.poll() is None]
        assert not left, f"namespaces left behind: {left}"
        assert not running, f"processes left running: {running}"


class Commands:
    """The shoal commands one test starts on lab hosts; stops them all at the end."""

    def __init__(self) -> None:
        self.started: list[tuple[Host, subprocess.Popen[str]]] = []

    def start(self, host: Host, *args: str) -> subprocess.Popen[str]:
        assert SHOAL is not None
        proc: subprocess.Popen[str] = host.popen(
            [SHOAL, *args, "--interface", host.address], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.started.append((host, proc))
        return proc

    @staticmethod
    def run(host: Host, *args: str, stdin: str | None = None,
            timeout: float = WAIT + 10) -> subprocess.CompletedProcess[str]:
        assert SHOAL is not None
        return host.run([SHOAL, *args, "--interface", host.address], input=stdin,
                        timeout=timeout)

    @staticmethod
    def finish(proc: subprocess.Popen[str], timeout: float = WAIT) -> tuple[int, str, str]:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def stop(self, proc: subprocess.Popen[str], *,
             read: bool = True) -> tuple[int | None, str, str]:
        """SIGINT (a clean exit: goodbye, mDNS unregistered), then SIGKILL. Returns the
        exit status (None if it had to be killed) and, with ``read``, the output."""
        host = next(h for h, p in self.started if p is proc)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        try:
            if not read:  # another thread reads its output
                return proc.wait(timeout=STOP), "", ""
            out, err = proc.communicate(timeout=STOP)
        except subprocess.TimeoutExpired:
            host.kill(proc)
            return None, "", ""
        return proc.returncode, out, err

    def close(self) -> None:
        for _, proc in self.started:
            if proc.poll() is None:
                self.stop(proc)


@pytest.fixture
def cli(lab: Lab) -> Iterator[Commands]:
    commands = Commands()
    try:
        yield commands
    finally:
        commands.close()


def tag() -> str:
    """A fresh suffix for channel and node names."""
    return uuid.uuid4().hex[:8]


def lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@contextlib.contextmanager
def blocked(host: Host, proto: int, *directions: str) -> Iterator[None]:
    """Drop every IPv4 packet of protocol ``proto`` (TCP, UDP) that crosses ``host``'s
    ``eth0`` in ``directions`` (``ingress``, ``egress``)."""
    def tc(*args: str) -> subprocess.CompletedProcess[str]:
        return host.run(["tc", *args], timeout=IP_TIMEOUT)

    done = tc("qdisc", "add", "dev", "eth0", "clsact")
    if done.returncode != 0:
        pytest.skip(f"cannot add a clsact qdisc here: {done.stderr.strip()}")
    try:
        for direction in directions:
            done = tc("filter", "add", "dev", "eth0", direction, "protocol", "ip", "bpf",
                      "da", "bytecode", _drop_program(proto))
            if done.returncode != 0:
                pytest.skip(f"cannot add a tc bpf filter here: {done.stderr.strip()}")
        yield
    finally:
        tc("qdisc", "del", "dev", "eth0", "clsact")


# -- the patterns across hosts -----------------------------------------------------------


def test_req_on_one_host_gets_the_echo_of_reply_on_another(lab: Lab, cli: Commands) -> None:
    a, b, _ = lab.hosts
    ch = f"echo-{tag()}"
    rep = cli.start(a, "reply", ch, "--echo", "--count", "1", "--seconds", str(WAIT),
                    "--json")
    done = cli.run(b, "req", ch, '{"from": "b", "n": [1, 2]}', "--timeout", str(WAIT),
                   "--json")
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == [{"reply": {"from": "b", "n": [1, 2]}}]
    code, out, err = cli.finish(rep)
    assert code == 0, err
    assert lines(out)[0]["request"] == {"from": "b", "n": [1, 2]}


def test_sub_on_one_host_receives_the_lines_pub_sends_from_another(
    lab: Lab, cli: Commands,
) -> None:
    a, b, _ = lab.hosts
    ch = f"feed-{tag()}"
    sub = cli.start(a, "sub", ch, "--topic", "room1/", "--count", "3", "--seconds",
                    str(WAIT), "--json")
    done = cli.run(b, "pub", ch, "room1/temp", "--timeout", str(WAIT), "--json",
                   stdin='{"c": 21.5}\n"two"\n[3]\n')
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == [{"published": 3, "skipped": 0, "channel": ch}]
    code, out, err = cli.finish(sub)
    assert code == 0, err
    got = lines(out)
    assert [(m["topic"], m["body"]) for m in got] == [
        ("room1/temp", {"c": 21.5}), ("room1/temp", "two"), ("room1/temp", [3])]
    assert len({m["sender"] for m in got}) == 1


def test_reliable_push_from_one_host_reaches_pullers_on_two_others_once_each(
    lab: Lab, cli: Commands,
) -> None:
    a, b, c = lab.hosts
    ch = f"jobs-{tag()}"
    pullers = [cli.start(h, "pull", ch, "--reliable", "--seconds", str(WAIT + 10), "--json")
               for h in (a, c)]
    items = list(range(40))
    done = cli.run(b, "push", ch, "--reliable", "--timeout", str(WAIT), "--json",
                   stdin="".join(f"{i}\n" for i in items))
    assert done.returncode == 0, done.stderr
    assert lines(done.stdout) == [{"pushed": len(items), "skipped": 0, "channel": ch}]
    # every item was acknowledged as done, so each is printed by now: stop the pullers
    got: list[list[int]] = []
    for proc in pullers:
        _, out, err = cli.stop(proc)
        assert "Traceback" not in err, err
        got.append([rec["body"] for rec in lines(out)])
    everything = got[0] + got[1]
    assert sorted(everything) == items, got  # each item once, across the two pullers


# -- peers and doctor --------------------------------------------------------------------


def wait_for_line(proc: subprocess.Popen[str], wanted: Callable[[str], bool],
                  timeout: float) -> list[str]:
    """Read ``proc``'s stdout until a line satisfies ``wanted``; the lines read. Fails
    the test after ``timeout`` seconds (the reading thread ends with the process)."""
    assert proc.stdout is not None
    got: queue.Queue[str | None] = queue.Queue()
    stream = proc.stdout

    def read() -> None:
        try:
            for line in stream:
                got.put(line)
        except (OSError, ValueError):
            pass  # closed under us
        got.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        try:
            line = got.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            pytest.fail(f"no wanted line within {timeout} s; got {seen}")
        if line is None:
            pytest.fail(f"the command ended first; got {seen}")
        seen.append(line)
        if wanted(line):
            return seen


@pytest.fixture(scope="module")
def two_nodes(lab: Lab) -> Iterator[dict[str, Any]]:
    """A replier on host A and a subscriber on host B, running for the module's peers
    and doctor tests; returned once a watcher on host C has seen both join."""
    a, b, c = lab.hosts
    t = tag()
    info = {"a": f"node-a-{t}", "b": f"node-b-{t}", "ch_a": f"svc-{t}", "ch_b": f"news-{t}"}
    commands = Commands()
    try:
        commands.start(a, "reply", info["ch_a"], "--echo", "--name", info["a"],
                       "--seconds", "120")
        commands.start(b, "sub", info["ch_b"], "--name", info["b"], "--seconds", "120")
        # `shoal peers` without --once: a snapshot, then a line per change
        watch = commands.start(c, "peers", "--wait", "0.5", "--seconds", str(WAIT), "--json")
        pending = {info["a"], info["b"]}

        def both(line: str) -> bool:
            rec = json.loads(line)
            if rec["event"] in ("peer", "joined", "updated"):
                pending.discard(rec["name"])
            return not pending

        wait_for_line(watch, both, WAIT)
        assert commands.stop(watch, read=False)[0] == 130  # SIGINT: a clean exit
        yield info
    finally:
        commands.close()


def test_peers_once_on_a_third_host_lists_both_nodes_with_lab_addresses_and_channels(
    lab: Lab, cli: Commands, two_nodes: dict[str, Any],
) -> None:
    a, b, c = lab.hosts
    done = cli.run(c, "peers", "--once", "--wait", "3", "--json")
    assert done.returncode == 0, done.stderr
    found = {p["name"]: p for p in lines(done.stdout)}
    assert {two_nodes["a"], two_nodes["b"]} <= set(found), done.stdout
    node_a, node_b = found[two_nodes["a"]], found[two_nodes["b"]]
    assert node_a["addresses"] == [a.address]
    assert node_b["addresses"] == [b.address]
    assert node_a["channels"] == [f"{two_nodes['ch_a']}:rep"]
    assert node_b["channels"] == [f"{two_nodes['ch_b']}:sub"]
    assert node_a["event"] == node_b["event"] == "peer"


def test_doctor_on_a_third_host_finds_both_nodes_reachable_with_agreeing_clocks(
    lab: Lab, cli: Commands, two_nodes: dict[str, Any],
) -> None:
    a, b, c = lab.hosts
    done = cli.run(c, "doctor", "--wait", "3", "--json")
    events = lines(done.stdout)
    assert done.returncode == 0, (events, done.stderr)
    nodes = {e["name"]: e for e in events if e["event"] == "node"}
    for name, host in ((two_nodes["a"], a), (two_nodes["b"], b)):
        assert nodes[name]["address"] == host.address
        assert nodes[name]["reachable"] is True
        # the namespaces share one kernel clock
        assert abs(nodes[name]["clock_offset_s"]) < 0.5
    findings = [e for e in events if e["event"] == "finding"]
    assert any(f["level"] == "ok" and f["what"].startswith(f"{two_nodes['a']} answers at "
                                                           f"{a.address}:")
               for f in findings), findings
    assert not [f for f in findings if "clock is" in f["what"]], findings
    interfaces = [e for e in events if e["event"] == "interface"]
    assert any(c.address in i["ipv4"] and i["multicast"] for i in interfaces), interfaces


def test_doctor_says_a_node_is_unreachable_when_tcp_is_blocked_but_mdns_is_not(
    lab: Lab, cli: Commands, two_nodes: dict[str, Any],
) -> None:
    a, b, c = lab.hosts
    name = two_nodes["a"]
    with blocked(a, TCP, "ingress"):  # UDP, so mDNS, still passes
        # and, at the same time, a static endpoint on host B where nothing listens
        static = cli.start(c, "doctor", "--wait", "3", "--json", "--static",
                           f"tcp://{b.address}:9")
        done = cli.run(c, "doctor", "--wait", "4", "--json")
        static_code, static_out, static_err = cli.finish(static)
    events = lines(done.stdout)
    assert done.returncode == 1, (events, done.stderr)
    assert not [e for e in events if e["event"] == "node" and e["name"] == name], events
    silent = [e for e in events if e["event"] == "endpoint" and e["name"].startswith(name)]
    assert len(silent) == 1, events
    assert silent[0]["source"] == "mdns"
    assert silent[0]["endpoint"].startswith(f"tcp://{a.address}:")
    assert silent[0]["tcp"] == "timeout"
    problems = [e for e in events if e["event"] == "finding" and e["level"] == "problem"]
    walled = [f for f in problems if f["what"].startswith(name)]
    assert len(walled) == 1, problems
    assert "data path is blocked though mDNS gets through" in walled[0]["what"]
    assert "allow TCP to port" in walled[0]["fix"]

    events = lines(static_out)
    assert static_code == 1, (events, static_err)
    problems = [e for e in events if e["event"] == "finding" and e["level"] == "problem"]
    assert any(f["what"].startswith(f"--static tcp://{b.address}:9: nothing listens")
               and f["fix"] for f in problems), problems


# -- found across hosts ------------------------------------------------------------------


def test_static_alone_connects_two_commands_where_multicast_is_blocked(
    lab: Lab, cli: Commands,
) -> None:
    a, b, _ = lab.hosts
    ch = f"static-{tag()}"
    with blocked(a, UDP, "ingress", "egress"):  # no mDNS between A and anyone
        rep = cli.start(a, "reply", ch, "--echo", "--count", "1", "--seconds", str(WAIT),
                        "--port", "7711")
        with contextlib.suppress(subprocess.TimeoutExpired):
            rep.wait(timeout=3)
        assert rep.poll() is None, rep.communicate()
        done = cli.run(b, "req", ch, "1", "--static", f"tcp://{a.address}:7711",
                       "--timeout", "10")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1"
