"""``shoal peers / pub / sub / push / pull / req / reply / doctor`` end to end, as
subprocesses.

Network safety: every command runs with ``--interface 127.0.0.1`` (mDNS pinned to
loopback); nothing else is contacted.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

LO = ["--interface", "127.0.0.1"]


def shoal(*args: str, stdin: str | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def background(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A command running beside the test; killed at the end if still running."""
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def finish(proc: subprocess.Popen[str], timeout: float = 20) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def channel() -> str:
    """A channel name no other test (or stray node on loopback) uses."""
    return f"t-{uuid.uuid4().hex[:8]}"


def test_req_gets_the_reply_of_reply_echo() -> None:
    ch = channel()
    with background("reply", ch, "--echo", "--count", "1", "--seconds", "20", "--json",
                    *LO) as rep:
        done = shoal("req", ch, '{"a": [1, 2]}', "--timeout", "15", *LO)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"a": [1, 2]}
        code, out, err = finish(rep)
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["request"] == {"a": [1, 2]}


def test_sub_prints_what_pub_publishes_on_its_prefixes_from_stdin_lines() -> None:
    ch = channel()
    with background("sub", ch, "--topic", "room1/", "--count", "2", "--seconds", "25",
                    "--json", *LO) as sub:
        done = shoal("pub", ch, "room1/temp", "--timeout", "15", *LO,
                     stdin='{"c": 1}\n\n"two"\n')
        assert done.returncode == 0, done.stderr
        code, out, err = finish(sub)
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert [(m["topic"], m["body"]) for m in got] == [("room1/temp", {"c": 1}),
                                                     ("room1/temp", "two")]
    assert got[0]["id"] != got[1]["id"]


def test_reliable_push_exits_once_pull_has_done_every_item() -> None:
    ch = channel()
    with background("pull", ch, "--reliable", "--count", "3", "--seconds", "25",
                    *LO) as pull:
        done = shoal("push", ch, "--reliable", "--json", "--timeout", "20", *LO,
                     stdin="1\n2\n3\n")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"pushed": 3, "channel": ch}
        code, out, err = finish(pull)
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [1, 2, 3]


def test_peers_once_lists_a_node_with_its_channel() -> None:
    ch = channel()
    with background("reply", ch, "--echo", "--seconds", "20", *LO):
        done = shoal("peers", "--once", "--wait", "4", "--json", *LO)
    assert done.returncode == 0, done.stderr
    peers = [json.loads(line) for line in done.stdout.splitlines()]
    assert any(f"{ch}:rep" in p["channels"] for p in peers), peers
    assert all({"name", "id", "epoch", "addresses", "channels", "version", "last_seen_s"}
               <= set(p) for p in peers)
    assert all(p["version"] == 1 and 0 <= p["last_seen_s"] < 5 for p in peers), peers


def test_peers_keeps_a_live_table_on_a_terminal() -> None:
    """On a terminal, ``shoal peers`` redraws a table in place (no pipe: a pty)."""
    ch = channel()
    with background("reply", ch, "--echo", "--seconds", "20", *LO):
        primary, secondary = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "peers", "--wait", "2",
                                 "--seconds", "3", *LO], stdout=secondary,
                                stderr=subprocess.PIPE)
        os.close(secondary)
        out = b""
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                ready, _, _ = select.select([primary], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(primary, 65536)
                    except OSError:  # the other end closed
                        break
                    if not chunk:
                        break
                    out += chunk
                elif proc.poll() is not None:
                    break
            assert proc.wait(timeout=10) == 0
        finally:
            os.close(primary)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    text = out.decode(errors="replace")
    assert text.count("\x1b[H") >= 2, text  # drawn, then redrawn in place
    assert "NAME" in text
    assert "SEEN" in text
    assert f"{ch}:rep" in text
    assert "node(s); Ctrl-C to stop" in text


@pytest.mark.parametrize(("args", "stdin", "reason"), [
    (("req", "ch", "not json"), None, "BODY is not JSON"),
    (("pub", "ch", "t"), "{\n", "line 1 of stdin is not JSON"),
    (("sub", "ch", "--count", "0"), None, "--count must be at least 1"),
    (("req", "ch", "1", "--timeout", "-1"), None, "--timeout must be between"),
    (("reply", "ch"), None, "--echo"),
    (("pub", "ch"), None, "TOPIC"),
])
def test_bad_arguments_exit_2_with_a_one_line_reason(args: tuple[str, ...], stdin: str | None,
                                                     reason: str) -> None:
    done = shoal(*args, *LO, stdin=stdin)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert reason.lower() in done.stderr.lower()
    assert "Traceback" not in done.stderr


def test_a_request_nobody_answers_fails_with_exit_1_and_a_reason() -> None:
    done = shoal("req", channel(), "1", "--timeout", "1.5", *LO)
    assert done.returncode == 1
    assert "timed out" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command",
                         ["peers", "pub", "sub", "push", "pull", "req", "reply", "doctor"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    done = shoal(command, "--help")
    assert done.returncode == 0
    assert "example: shoal " + command in done.stdout
    assert "--interface" in done.stdout


def test_doctor_finds_a_node_and_checks_that_it_is_reachable() -> None:
    ch = channel()
    with background("reply", ch, "--echo", "--seconds", "20", *LO):
        done = shoal("doctor", "--wait", "4", "--json", *LO)
    assert done.returncode == 0, (done.stdout, done.stderr)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    interfaces = [e for e in events if e["event"] == "interface"]
    assert any("127.0.0.1" in e["ipv4"] and e["loopback"] for e in interfaces)
    nodes = [e for e in events if e["event"] == "node" and f"{ch}:rep" in e["channels"]]
    assert len(nodes) == 1, events
    assert nodes[0]["reachable"] is True
    assert nodes[0]["address"] == "127.0.0.1"
    findings = [e for e in events if e["event"] == "finding"]
    assert not [f for f in findings if f["level"] == "problem"], findings


def test_doctor_says_what_is_wrong_and_how_to_fix_it() -> None:
    # An address no interface has (a loopback one, so that even a bug sends nothing
    # off this host): found before any traffic is sent.
    done = shoal("doctor", "--interface", "127.9.9.9", "--wait", "1")
    assert done.returncode == 1
    assert "127.9.9.9 is not an address of this machine" in done.stdout
    assert "fix:" in done.stdout
    assert shoal("doctor", "--wait", "0", *LO).returncode == 2
