"""``shoal peers / pub / sub / push / pull / req / reply / doctor`` end to end, as
subprocesses: standard input sent line by line as it arrives, ``reply --exec``,
``--interface`` by name, and a help text for every argument.

Network safety: every command runs with ``--interface 127.0.0.1`` or ``--interface
lo`` (mDNS pinned to loopback); commands given an interface that is not there exit
before opening anything; nothing else is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import queue
import select
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shoal.cli._main import _parser

pytestmark = pytest.mark.lab

LO = ["--interface", "127.0.0.1"]


def shoal(*args: str, stdin: str | None = None,
          timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def background(*args: str, stdin: bool = False) -> Iterator[subprocess.Popen[str]]:
    """A command running beside the test (``stdin``: a pipe the test writes); killed at
    the end if still running."""
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", *args],
                            stdin=subprocess.PIPE if stdin else None,
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


class Lines:
    """A background command's stdout, line by line as it comes (a reader thread), so
    that a test can wait for one line with a deadline while the command runs on."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._lines: queue.Queue[str | None] = queue.Queue()
        stream = proc.stdout

        def read() -> None:
            for line in stream:
                self._lines.put(line)
            self._lines.put(None)

        threading.Thread(target=read, daemon=True).start()

    def next(self, timeout: float = 30) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout} s") from None
        assert line is not None, "the command ended without printing another line"
        return line


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


@pytest.mark.parametrize("mode", [[], ["--reliable"]], ids=["best-effort", "reliable"])
def test_pub_keeps_a_last_value_for_a_sub_that_joins_later(mode: list[str]) -> None:
    ch = channel()
    with background("pub", ch, "boiler/setpoint", "21.5", "--history", "1", "--keep",
                    "--timeout", "25", *mode, *LO) as pub:
        first = shoal("sub", ch, "--count", "1", "--seconds", "25", "--json", *mode, *LO)
        assert first.returncode == 0, first.stderr  # published: now it is history
        late = shoal("sub", ch, "--count", "1", "--seconds", "25", "--json", *mode, *LO)
        assert late.returncode == 0, late.stderr
        assert pub.poll() is None  # --keep: still up
    got = json.loads(late.stdout)
    assert (got["topic"], got["body"], got["replayed"]) == ("boiler/setpoint", 21.5, True)
    assert json.loads(first.stdout)["replayed"] is False


def test_sub_topic_takes_wildcard_patterns() -> None:
    ch = channel()
    with background("sub", ch, "--topic", "site/*/temp", "--count", "1", "--seconds", "25",
                    "--json", *LO) as sub:
        for topic in ("site/a/hum", "site/a/b/temp", "site/a/temp"):
            done = shoal("pub", ch, topic, "--timeout", "15", *LO, stdin=f'"{topic}"\n')
            assert done.returncode == 0, done.stderr
        code, out, err = finish(sub)
    assert code == 0, err
    assert [json.loads(line)["topic"] for line in out.splitlines()] == ["site/a/temp"]


def test_reliable_push_exits_once_pull_has_done_every_item() -> None:
    ch = channel()
    with background("pull", ch, "--reliable", "--count", "3", "--seconds", "25",
                    *LO) as pull:
        done = shoal("push", ch, "--reliable", "--json", "--timeout", "20", *LO,
                     stdin="1\n2\n3\n")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"pushed": 3, "skipped": 0, "channel": ch}
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
    (("sub", "ch", "--topic", "site/**x"), None, "'**' any number of levels"),
    (("req", "ch", "1", "--timeout", "-1"), None, "--timeout must be between"),
    (("reply", "ch", "--echo", "--exec", "cat"), None, "not allowed with argument --echo"),
    (("reply", "ch", "--concurrency", "0"), None, "--concurrency must be at least 1"),
    (("reply", "ch", "--exec", "cat", "--exec-timeout", "0"), None,
     "--exec-timeout must be between"),
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


# -- pub and push: standard input line by line ---------------------------------------------


def test_pub_publishes_each_stdin_line_as_it_arrives_and_skips_a_bad_one() -> None:
    """The first line reaches the subscriber while pub's stdin is still open (nothing
    waits for the end of the input); a line that is not JSON is reported with its
    number and skipped, the line after it is still sent, and the exit status says
    that a line was skipped."""
    ch = channel()
    with background("sub", ch, "--count", "2", "--seconds", "50", "--json", *LO) as sub, \
            background("pub", ch, "t", "--timeout", "40", *LO, stdin=True) as pub:
        got = Lines(sub)
        assert pub.stdin is not None
        pub.stdin.write('{"n": 1}\n')
        pub.stdin.flush()
        assert json.loads(got.next(timeout=40))["body"] == {"n": 1}
        assert pub.poll() is None  # still reading its input
        _, err = pub.communicate('oops\n{"n": 3}\n', timeout=30)
        assert json.loads(got.next(timeout=20))["body"] == {"n": 3}
        assert sub.wait(timeout=20) == 0
    assert pub.returncode == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("shoal pub: line 2 of stdin is not JSON"), err
    assert lines[0].endswith("'oops'; skipped"), err
    assert lines[-1] == ("shoal pub: 1 of 3 line(s) of stdin skipped (line 2); every "
                         "other line was sent"), err
    assert "Traceback" not in err


def test_push_sends_the_lines_around_a_bad_one_and_counts_what_it_skipped() -> None:
    ch = channel()
    with background("pull", ch, "--reliable", "--count", "3", "--seconds", "30",
                    *LO) as pull:
        done = shoal("push", ch, "--reliable", "--json", "--timeout", "20", *LO,
                     stdin='1\n{"broken": \n2\n\n3\n')
        code, out, err = finish(pull)
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout) == {"pushed": 3, "skipped": 1, "channel": ch}
    assert "line 2 of stdin is not JSON" in done.stderr
    assert code == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [1, 2, 3]


def test_a_stdin_line_that_is_not_utf8_is_skipped_not_a_crash() -> None:
    ch = channel()
    with background("pull", ch, "--count", "2", "--seconds", "30", *LO) as pull:
        done = subprocess.run([sys.executable, "-m", "shoal.cli", "push", ch, "--timeout",
                               "20", *LO], input=b'"a"\n\xff\xfe\n"b"\n',
                              capture_output=True, timeout=30, check=False)
        code, out, _ = finish(pull)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "line 2 of stdin is not UTF-8" in err
    assert "Traceback" not in err
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == ["a", "b"]


def test_with_nothing_valid_to_send_pub_exits_without_waiting_for_subscribers() -> None:
    done = shoal("pub", channel(), "t", "--timeout", "60", *LO, stdin="nope\n")
    assert done.returncode == 2, done.stderr
    assert "line 1 of stdin is not JSON" in done.stderr
    assert "1 of 1 line(s) of stdin skipped" in done.stderr


# -- reply: echo by default, or --exec ------------------------------------------------------


ANSWER = """
import json, os, sys, time
request = json.load(sys.stdin)
if request == "fail":
    print("no such thing", file=sys.stderr)
    sys.exit(3)
if request == "slow":
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(120)
if request == "text":
    print("plain words")
    sys.exit(0)
print(json.dumps({"sum": request["a"] + request["b"]}))
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie no one has reaped yet is dead too


def test_reply_exec_answers_with_the_commands_output_and_its_failures(
    tmp_path: Path,
) -> None:
    """One replier, four requests: JSON output is the reply; output that is not JSON
    is sent as a string; a non-zero exit and a command past --exec-timeout are error
    replies (shoal req exits 1 saying why), the slow command is killed, and the
    replier serves every request and exits 0 after --count."""
    script, pidfile = tmp_path / "answer.py", tmp_path / "slow.pid"
    script.write_text(ANSWER)
    command = " ".join(map(shlex.quote, (sys.executable, str(script), str(pidfile))))
    ch = channel()
    with background("reply", ch, "--exec", command, "--exec-timeout", "3", "--count", "4",
                    "--seconds", "80", "--json", *LO) as rep:
        summed = shoal("req", ch, '{"a": 2, "b": 40}', "--timeout", "20", *LO)
        failed = shoal("req", ch, '"fail"', "--timeout", "20", *LO)
        slow = shoal("req", ch, '"slow"', "--timeout", "20", *LO)
        text = shoal("req", ch, '"text"', "--timeout", "20", *LO)
        code, out, err = finish(rep, timeout=30)
    assert summed.returncode == 0, summed.stderr
    assert json.loads(summed.stdout) == {"sum": 42}
    assert failed.returncode == 1
    assert failed.stderr.strip() == ("shoal req: RemoteError: the replier failed: the "
                                     "command exited with status 3: no such thing")
    assert slow.returncode == 1
    assert "ran past 3 s (--exec-timeout) and was killed" in slow.stderr
    assert _gone(int(pidfile.read_text()))
    assert text.returncode == 0, text.stderr
    assert json.loads(text.stdout) == "plain words"
    assert code == 0, err
    assert [json.loads(line)["request"] for line in out.splitlines()] == [
        {"a": 2, "b": 40}, "fail", "slow", "text"]
    assert "no such thing" in err  # the command's stderr passes through


GATE = """
import json, os, sys, time
folder = json.load(sys.stdin)["folder"]
open(os.path.join(folder, str(os.getpid())), "w").close()
deadline = time.monotonic() + 30
while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
    time.sleep(0.05)
print(len(os.listdir(folder)))
"""


def test_reply_exec_runs_up_to_concurrency_commands_at_once(tmp_path: Path) -> None:
    """Each command waits until two of them are running: with --concurrency 2, two
    requests sent at once both see two (one at a time, the first would wait alone
    until --exec-timeout)."""
    script, folder = tmp_path / "gate.py", tmp_path / "running"
    script.write_text(GATE)
    folder.mkdir()
    ch = channel()
    body = json.dumps({"folder": str(folder)})
    with background("reply", ch, "--exec", f"{shlex.quote(sys.executable)} "
                    f"{shlex.quote(str(script))}", "--concurrency", "2", "--exec-timeout",
                    "40", "--count", "2", "--seconds", "80", *LO) as rep:
        reqs = [subprocess.Popen([sys.executable, "-m", "shoal.cli", "req", ch, body,
                                  "--timeout", "50", *LO], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            answers = [r.communicate(timeout=60) for r in reqs]
        finally:
            for r in reqs:
                if r.poll() is None:
                    r.kill()
                r.wait(timeout=10)
        code, _, err = finish(rep, timeout=30)
    assert [r.returncode for r in reqs] == [0, 0], answers
    assert [json.loads(out) for out, _ in answers] == [2, 2]
    assert code == 0, err


def test_reply_echoes_by_default_and_interface_takes_a_name() -> None:
    """No --echo needed; ``--interface lo`` is loopback (127.0.0.1)."""
    if "lo" not in {name for _, name in socket.if_nameindex()}:
        pytest.skip("no interface named lo here")
    ch = channel()
    with background("reply", ch, "--count", "1", "--seconds", "25", "--interface",
                    "lo") as rep:
        done = shoal("req", ch, '{"x": [1]}', "--timeout", "15", "--interface", "lo")
        code, _, err = finish(rep)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"x": [1]}
    assert code == 0, err


# -- --interface ------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("peers", "--once"), ("pub", "ch", "t", "1"),
                                  ("sub", "ch"), ("push", "ch", "1"), ("pull", "ch"),
                                  ("req", "ch", "1"), ("reply", "ch"), ("doctor",)],
                         ids=lambda a: a[0])
def test_an_interface_that_is_not_there_exits_2_in_one_line(args: tuple[str, ...]) -> None:
    done = shoal(*args, "--interface", "no-such-if0", timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    said = done.stderr.strip()
    assert said.startswith(f"shoal {args[0]}: --interface 'no-such-if0' is neither an IPv4 "
                           "address nor an interface of this machine (interfaces: "), said
    assert said.count("\n") == 0
    listed = said.rsplit("(interfaces: ", 1)[1].rstrip(")").split(", ")
    assert sorted(listed) == sorted(name for _, name in socket.if_nameindex())
    assert done.stdout == ""


@pytest.mark.parametrize("command", [("peers", "--once"), ("req", "ch", "1")],
                         ids=lambda a: a[0])
def test_an_address_no_interface_has_exits_2_before_opening_anything(
    command: tuple[str, ...],
) -> None:
    # TEST-NET-3 (RFC 5737): documentation only, on no machine's interface
    done = shoal(*command, "--interface", "203.0.113.77", timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"shoal {command[0]}: --interface 203.0.113.77 is not an "
                                  "address of this machine (interfaces: ")
    assert len(done.stderr.strip().splitlines()) == 1


# -- help ---------------------------------------------------------------------------------


def test_every_argument_of_every_command_has_help() -> None:
    parser = _parser()
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.option_strings or action.dest}"
               for name, sub in commands.choices.items() for action in sub._actions
               if not (action.help or "").strip()]
    assert missing == []
    assert len(commands.choices) >= 10  # every command was walked


FIRST_STALLS = """\
import json, os, sys, time
request = json.load(sys.stdin)
try:  # the first request to reach any replier sharing the folder stalls
    os.close(os.open(os.path.join(request["folder"], "first"), os.O_CREAT | os.O_EXCL))
    time.sleep(60)
except FileExistsError:
    pass
print(json.dumps("fast"))
"""


def test_req_hedge_after_gets_the_answer_of_a_second_replier(tmp_path: Path) -> None:
    """Two repliers; whichever gets the request first stalls. Only the hedged copy,
    sent to the other one after 0.5 s, can answer within the timeout (without
    --hedge-after this request times out)."""
    script = tmp_path / "first_stalls.py"
    script.write_text(FIRST_STALLS)
    ch = channel()
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    body = json.dumps({"folder": str(tmp_path)})
    with (background("reply", ch, "--exec", command, "--exec-timeout", "80",
                     "--seconds", "80", *LO),
          background("reply", ch, "--exec", command, "--exec-timeout", "80",
                     "--seconds", "80", *LO)):
        done = shoal("req", ch, body, "--expect", "2", "--hedge-after", "0.5",
                     "--timeout", "25", *LO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == "fast"
    assert (tmp_path / "first").exists()  # one replier did stall on it


def test_req_all_prints_each_repliers_answer_its_error_and_the_missing() -> None:
    """Three repliers: one echoes, one fails, one takes the request and runs a
    command that outlasts --within. One line per replier, by name; exit status 1."""
    ch = channel()
    stall = f"{shlex.quote(sys.executable)} -c 'import time; time.sleep(60)'"
    fail = f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(\"cannot do it\")'"
    with (background("reply", ch, "--echo", "--name", "echoer", "--seconds", "80", *LO),
          background("reply", ch, "--exec", fail, "--name", "failer", "--seconds", "80",
                     *LO),
          background("reply", ch, "--exec", stall, "--exec-timeout", "80", "--name",
                     "staller", "--seconds", "80", *LO)):
        as_json = shoal("req", ch, '{"n": 1}', "--all", "--expect", "3", "--within", "3",
                        "--timeout", "25", "--json", *LO)
        plain = shoal("req", ch, '"hi"', "--all", "--expect", "3", "--within", "3",
                      "--timeout", "25", *LO)
    assert as_json.returncode == 1, as_json.stderr
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {(x["name"], next(k for k in ("reply", "error", "missing") if k in x))
            for x in lines} == {("echoer", "reply"), ("failer", "error"),
                                ("staller", "missing")}
    by_name = {x["name"]: x for x in lines}
    assert by_name["echoer"]["reply"] == {"n": 1}
    assert "cannot do it" in by_name["failer"]["error"]
    assert lines[-1]["name"] == "staller"
    assert all(len(x["replier"]) == 32 for x in lines)  # node ids
    assert "1 of 3 repliers failed and 1 did not answer" in as_json.stderr
    assert plain.returncode == 1, plain.stderr
    shown = sorted(plain.stdout.splitlines())
    assert shown[0] == 'echoer: "hi"'
    assert shown[1].startswith("failer: failed: ")
    assert shown[2] == "staller: missing: no answer within 3 s"


@pytest.mark.parametrize(("args", "reason"), [
    (("--within", "1"), "--within goes with --all"),
    (("--all", "--retries", "1"), "drop --retries"),
    (("--all", "--hedge-after", "1"), "drop --retries and --hedge-after"),
    (("--hedge-after", "p0"), "percentile such as p95"),
    (("--hedge-after", "soon"), "percentile such as p95"),
    (("--all", "--within", "0"), "--within must be between"),
    (("--expect", "0"), "--expect must be at least 1"),
])
def test_req_refuses_bad_combinations_with_exit_2(args: tuple[str, ...], reason: str) -> None:
    done = shoal("req", "ch", "1", *args, *LO)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert reason in done.stderr
    assert "Traceback" not in done.stderr
