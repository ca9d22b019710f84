"""``shoal doctor``'s clock comparison, its checks of endpoints where no node answers,
and the control-plane clock query underneath (``ClockQuery``/``ClockReading``,
``Node.read_clock``).

A host with a skewed clock is a node process whose ``time.time_ns`` (the wall clock
shoal reads) is shifted before shoal is imported; an older node, one whose answer to
clock queries is switched off.

Network safety: every node and every doctor runs with ``--interface 127.0.0.1`` or
``interfaces=["127.0.0.1"]``; the ``--static`` endpoint is on loopback.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import trio

import shoal
from shoal._core import VERSION
from shoal._core._control import (
    ClockQuery,
    ClockReading,
    ControlMessage,
    decode_control,
    encode_control,
)
from shoal.cli._doctor import DEFAULT_SKEW_THRESHOLD
from shoal.errors import DecodeError, EncodeError, LocalProtocolError
from shoal.node._control import Control
from support.endpoints import free_port

LO = ["--interface", "127.0.0.1"]

# A node running `shoal ARGS...` whose wall clock is SKEW seconds off, and which
# answers clock queries unless OLD is 1 (an older shoal). It prints "ready" once its
# imports are done (the slow part on a busy machine).
NODE = """
import sys, time
skew_ns, old = int(float(sys.argv[1]) * 1e9), sys.argv[2] == "1"
if skew_ns:
    _wall = time.time_ns
    time.time_ns = lambda: _wall() + skew_ns
import shoal.node._control
if old:
    shoal.node._control.Control._answer_clock = lambda self, route, token: None
from shoal.cli import main
print("ready", flush=True)
sys.exit(main(sys.argv[3:]))
"""

SKEW = 5.0


def doctor(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", "doctor", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


# -- the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize("msg", [ClockQuery(0), ClockQuery(2**32 - 1),
                                 ClockReading(7, 0), ClockReading(2**32 - 1, 2**64 - 1),
                                 ClockReading(1, 1_700_000_000_123_456_789)], ids=repr)
def test_clock_messages_round_trip(msg: ControlMessage) -> None:
    assert decode_control(encode_control(msg)) == msg


@pytest.mark.parametrize("msg", [ClockQuery(-1), ClockQuery(2**32), ClockReading(1, -1),
                                 ClockReading(1, 2**64), ClockReading(2**32, 0)], ids=repr)
def test_clock_fields_out_of_range_are_refused_before_sending(msg: ControlMessage) -> None:
    with pytest.raises(EncodeError):
        encode_control(msg)


@pytest.mark.parametrize("fields", [
    [VERSION, "clock?"], [VERSION, "clock?", 1, 2], [VERSION, "clock", 1],
    [VERSION, "clock", 1, 2, 3],
], ids=repr)
def test_clock_messages_of_another_length_are_unknown_controls(fields: list[Any]) -> None:
    with pytest.raises(DecodeError) as info:
        decode_control(bytes(msgpack.packb(fields)))
    assert info.value.reason == "unknown-control"


@pytest.mark.parametrize("fields", [
    [VERSION, "clock?", "1"], [VERSION, "clock?", 1.0], [VERSION, "clock", 1, -5],
    [VERSION, "clock", 1, 1.5], [VERSION, "clock", None, 5],
], ids=repr)
def test_clock_fields_of_the_wrong_type_are_bad_fields(fields: list[Any]) -> None:
    with pytest.raises(DecodeError) as info:
        decode_control(bytes(msgpack.packb(fields)))
    assert info.value.reason == "bad-field"


# -- Node.read_clock -------------------------------------------------------------------


async def test_read_clock_compares_two_nodes_on_one_clock() -> None:
    with trio.fail_after(15):
        async with shoal.open_node("clock-a", interfaces=["127.0.0.1"]) as a, \
                shoal.open_node("clock-b", interfaces=["127.0.0.1"]) as b:
            sample = await a.read_clock(b.control_endpoint)
            assert sample.round_trip > 0
            # one kernel clock: the estimate is off by no more than half the round
            # trip (plus scheduling noise on a busy machine)
            assert abs(sample.offset) <= sample.round_trip / 2 + 0.05
            assert b.statistics().malformed == 0
            with pytest.raises(LocalProtocolError):
                await a.read_clock(b.control_endpoint, samples=0)


async def test_read_clock_waits_for_a_node_that_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Control, "_answer_clock", lambda self, route, token: None)
    with trio.fail_after(15):
        async with shoal.open_node("clock-c", interfaces=["127.0.0.1"]) as a, \
                shoal.open_node("clock-d", interfaces=["127.0.0.1"]) as b:
            with trio.move_on_after(0.5) as scope:
                await a.read_clock(b.control_endpoint)
            assert scope.cancelled_caught
            assert b.statistics().control_received >= 1  # the query did arrive


# -- shoal doctor ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, str]]:
    """Three nodes on loopback mDNS: one whose clock is SKEW s ahead, one on time, one
    that does not answer clock queries. Yields their names by role."""
    tag = uuid.uuid4().hex[:8]
    names = {"skewed": f"skewed-{tag}", "fine": f"fine-{tag}", "old": f"old-{tag}"}
    specs = {"skewed": (SKEW, "0"), "fine": (0.0, "0"), "old": (0.0, "1")}
    procs = [
        subprocess.Popen([sys.executable, "-c", NODE, str(skew), old, "reply", f"t-{tag}",
                          "--echo", "--seconds", "40", "--name", names[role], *LO],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for role, (skew, old) in specs.items()]
    try:
        deadline = time.monotonic() + 30
        for proc in procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [],
                                        max(deadline - time.monotonic(), 0))
            assert ready, "a node did not start within 30 s"
            assert proc.stdout.readline().strip() == "ready", proc.stderr
        yield names
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.mark.lab
def test_doctor_reports_a_skewed_clock_with_its_fix_and_the_offset_of_each_node(
    nodes: dict[str, str],
) -> None:
    done = doctor("--wait", "4", "--json", *LO)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    found = {e["name"]: e for e in events if e["event"] == "node"}
    assert set(nodes.values()) <= set(found), (events, done.stderr)
    skewed, fine, old = (found[nodes[r]] for r in ("skewed", "fine", "old"))
    assert SKEW - 0.5 < skewed["clock_offset_s"] < SKEW + 0.5
    assert abs(fine["clock_offset_s"]) < 0.5
    assert fine["clock_round_trip_s"] > 0
    assert old["clock_offset_s"] is None
    assert old["reachable"] is True
    findings = [e for e in events if e["event"] == "finding"]
    about = {role: [f for f in findings if f["what"].startswith(name)]
             for role, name in nodes.items()}
    skew = [f for f in about["skewed"] if "clock" in f["what"]]
    assert len(skew) == 1, about["skewed"]
    assert skew[0]["level"] == "warning"
    said = re.search(r"clock is (\d+\.\d{3}) s ahead", skew[0]["what"])
    assert said is not None, skew
    assert abs(float(said.group(1)) - SKEW) < 0.5
    assert "ahead of this host's" in skew[0]["what"]
    assert "NTP" in skew[0]["fix"]
    assert [f["level"] for f in about["fine"]] == ["ok"]  # reachable, nothing else
    assert "did not answer a clock query" in about["old"][-1]["what"]
    assert "older shoal" in about["old"][-1]["fix"]
    # skew is a warning: the exit status only counts problems
    problems = [f for f in findings if f["level"] == "problem"]
    assert done.returncode == (1 if problems else 0), problems


@pytest.mark.lab
def test_doctor_text_shows_each_clock_and_the_threshold_is_a_flag(
    nodes: dict[str, str],
) -> None:
    # two doctors side by side: the default threshold, and one above the skew
    procs = [subprocess.Popen([sys.executable, "-m", "shoal.cli", "doctor", "--wait", "4",
                               *extra, *LO], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for extra in ([], ["--skew-threshold", str(SKEW * 2)])]
    outs = [p.communicate(timeout=30)[0] for p in procs]
    default, lenient = outs
    node_line = next(ln for ln in default.splitlines()
                     if ln.startswith("node") and nodes["skewed"] in ln)
    shown = re.search(r"clock \+(\d+\.\d{3}) s ±\d+\.\d ms$", node_line)
    assert shown is not None, node_line
    assert abs(float(shown.group(1)) - SKEW) < 0.5
    old_line = next(ln for ln in default.splitlines()
                    if ln.startswith("node") and nodes["old"] in ln)
    assert "clock ?" in old_line
    assert f"{nodes['skewed']}'s clock is " in default
    assert "fix: enable NTP" in default
    assert f"threshold {DEFAULT_SKEW_THRESHOLD:g} s" in default
    assert f"{nodes['skewed']}'s clock" not in lenient
    assert f"agree with this host's within {SKEW * 2:g} s" in lenient


@pytest.mark.lab
def test_doctor_says_when_nothing_listens_at_a_static_endpoint() -> None:
    port = free_port()
    done = doctor("--wait", "1", "--static", f"tcp://127.0.0.1:{port}", "--json", *LO)
    assert done.returncode == 1, (done.stdout, done.stderr)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    silent = [e for e in events if e["event"] == "endpoint"
              and e["endpoint"] == f"tcp://127.0.0.1:{port}"]
    assert silent == [{"event": "endpoint", "endpoint": f"tcp://127.0.0.1:{port}",
                       "source": "static", "name": f"tcp://127.0.0.1:{port}",
                       "answered": False, "tcp": "refused"}]
    problem = [e for e in events if e["event"] == "finding" and e["level"] == "problem"]
    assert any("nothing listens there" in f["what"] and "fixed control port" in f["fix"]
               for f in problem), problem


@pytest.mark.lab
@pytest.mark.parametrize("value", ["0", "-1", "1e9", "nan"])
def test_a_bad_skew_threshold_exits_2_with_a_reason(value: str) -> None:
    done = doctor("--skew-threshold", value, "--wait", "1", *LO)
    assert done.returncode == 2
    assert "--skew-threshold must be between" in done.stderr
    assert "Traceback" not in done.stderr
