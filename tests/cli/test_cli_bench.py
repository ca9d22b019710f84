"""``shoal bench``: subprocess runs over tcp, ipc and inproc on loopback, --serve and
--peer, the JSON records and the ratios in them, CPU time per message at each end,
--busy-poll, --backend (shoal on asyncio and uvloop at both ends), --rate pacing and
its coordinated omission correction, --plot, and the error paths.

Nothing here asserts a speed: the machines are shared. The figures are checked for
consistency (counts, ordering of percentiles, CPU figures positive, ratios equal to
the quotients of the figures they compare), and pacing for its lower bound on wall
time.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import trio
import zmq

import shoal
from shoal.cli._bench import _common
from shoal.cli._bench._client import Measured
from shoal.cli._bench._command import EXAMPLES
from shoal.cli._bench._common import (
    CPU_EVERY,
    CPU_SIDES,
    TIMED,
    WARMUP,
    Schedule,
    Spec,
    Tally,
    curve_client_context,
    make_body,
)
from shoal.cli._bench._report import SATURATED_NOTE, latency_label, records
from shoal.cli._bench._run import Options, Variant
from shoal.cli._bench._server import BenchServer
from shoal.errors import RemoteError

pytestmark = pytest.mark.lab

QUICK = ["--count", "300", "--warmup", "50", "--rounds", "1", "--progress", "never"]


def bench(*args: str, timeout: float = 120,
          pre: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{pre}import sys; from shoal.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "bench", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def check_record(rec: dict[str, Any]) -> None:
    lat = rec["latency_us"]
    assert lat is not None, rec
    order = [lat[k] for k in ("min", "p50", "p90", "p99", "p99.9", "p99.99", "max")]
    assert order == sorted(order), rec
    assert rec["throughput"] > 0, rec
    assert rec["timed"] >= 300, rec


def check_cpu(rec: dict[str, Any], rounds: int = 1) -> None:
    """CPU microseconds per message (per round trip for rr) at each end: a positive
    number per side, the median of one figure per round."""
    sides = CPU_SIDES[rec["pattern"]]
    assert set(rec["cpu_us"]) == set(sides), rec
    assert set(rec["cpu_us_rounds"]) == set(sides), rec
    for side in sides:
        us, per_round = rec["cpu_us"][side], rec["cpu_us_rounds"][side]
        assert isinstance(us, float), rec
        assert us > 0, rec
        assert len(per_round) == rounds, rec
        assert all(x > 0 for x in per_round), rec
        assert us == pytest.approx(statistics.median(per_round), abs=0.002), rec


def check_ratios(recs: list[dict[str, Any]]) -> None:
    """Each shoal record's ratios are the quotients of the figures it compares."""
    for pattern in {r["pattern"] for r in recs}:
        rows = {r["label"]: r for r in recs if r["pattern"] == pattern}
        raw, be = rows["raw pyzmq"], rows.get("shoal")
        for label, r in rows.items():
            if label == "raw pyzmq":
                assert r["vs_raw"] is None
                continue
            for key in ("p50", "p99"):
                want = r["latency_us"][key] / raw["latency_us"][key]
                assert r["vs_raw"][key] == pytest.approx(want, rel=0.01, abs=0.002)
            want = r["throughput"] / raw["throughput"]
            assert r["vs_raw"]["throughput"] == pytest.approx(want, rel=0.01, abs=0.002)
            check_cpu_ratios(r["vs_raw"], r, raw)
            if label == "shoal reliable" and be is not None:
                want = r["latency_us"]["p50"] / be["latency_us"]["p50"]
                assert r["vs_best_effort"]["p50"] == pytest.approx(want, rel=0.01,
                                                                   abs=0.002)
                check_cpu_ratios(r["vs_best_effort"], r, be)


def check_cpu_ratios(ratios: dict[str, Any], rec: dict[str, Any],
                     base: dict[str, Any]) -> None:
    for side in CPU_SIDES[rec["pattern"]]:
        mine, theirs = rec["cpu_us"][side], base["cpu_us"][side]
        if mine is None or theirs is None:
            assert ratios[f"cpu_{side}"] is None
        else:
            assert ratios[f"cpu_{side}"] == pytest.approx(mine / theirs, rel=0.01,
                                                          abs=0.002)


def test_every_pattern_over_tcp_as_json_with_ratios_to_raw() -> None:
    done = bench(*QUICK, "--json")
    assert done.returncode == 0, done.stderr
    recs = lines(done.stdout)
    assert {(r["pattern"], r["label"]) for r in recs} == {
        (p, label) for p in ("rr", "pp", "ps")
        for label in ("raw pyzmq", "shoal", "shoal reliable")}
    for rec in recs:
        assert rec["transport"] == "tcp"
        assert rec["size"] == 64
        assert rec["busy_poll"] == 0
        check_record(rec)
        check_cpu(rec)
        assert rec["latency"] == ("round-trip" if rec["pattern"] == "rr" else "one-way")
        # sent as fast as possible: one-way latency is mostly queueing, and says so
        assert rec["latency_saturated"] is (rec["pattern"] != "rr")
        if rec["reliable"] or rec["pattern"] != "ps":
            assert rec["lost"] == 0, rec   # backpressure or acknowledgements: no loss
            assert rec["received"] == rec["sent"] == 350, rec
    check_ratios(recs)


@pytest.mark.parametrize(("backend", "transport", "patterns"), [
    ("asyncio", "tcp", "rr,pp,ps"), ("uvloop", "inproc", "rr,pp")])
def test_backend_runs_shoal_on_that_loop(backend: str, transport: str,
                                         patterns: str) -> None:
    done = bench(*QUICK, "--json", "--backend", backend, "--transport", transport,
                 "--pattern", patterns, timeout=60)
    assert done.returncode == 0, done.stderr
    recs = lines(done.stdout)
    assert len(recs) == 3 * len(patterns.split(","))
    for rec in recs:
        assert rec["backend"] == backend
        check_record(rec)
        if transport != "inproc":
            check_cpu(rec)
        if rec["pattern"] != "ps" or rec["reliable"]:
            assert rec["lost"] == 0, rec
    check_ratios(recs)


async def test_a_server_started_with_a_backend_runs_on_it() -> None:
    with server("--backend", "uvloop", "--for", "20") as (_, endpoint):
        with trio.fail_after(10):
            async with shoal.open_requester(connect=endpoint) as ctl:
                assert (await ctl.request({"op": "hello"}))["loop"] == "uvloop"


def test_the_table_names_a_loop_other_than_trio() -> None:
    done = bench(*QUICK, "--backend", "asyncio", "--transport", "inproc", "--pattern", "rr",
                 "--mode", "best-effort", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "request/reply over inproc, 64 B bodies, 1 round(s) x 300 messages, shoal on " \
           "asyncio; latency" in done.stdout


@pytest.mark.parametrize("transport", ["ipc", "inproc"])
def test_other_transports(transport: str) -> None:
    done = bench(*QUICK, "--json", "--transport", transport, "--pattern", "rr,pp",
                 "--size", "1024")
    assert done.returncode == 0, done.stderr
    recs = lines(done.stdout)
    assert len(recs) == 6
    for rec in recs:
        assert rec["transport"] == transport
        assert rec["size"] == 1024
        check_record(rec)
        assert rec["lost"] == 0
        if transport == "inproc":
            # Both ends in one process: neither figure would be one end's alone.
            assert set(rec["cpu_us"].values()) == {None}
            assert set(map(len, rec["cpu_us_rounds"].values())) == {0}
        else:
            check_cpu(rec)
    check_ratios(recs)


def test_table_output_names_every_variant_and_the_units() -> None:
    done = bench(*QUICK, "--pattern", "ps", "--mode", "reliable")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "pub/sub over tcp, 64 B bodies" in text
    assert "latency in µs: one-way under saturation (includes queueing)\n" in text
    assert f"\n  {SATURATED_NOTE}\n" in text
    assert "raw pyzmq" in text
    assert "shoal reliable" in text
    assert "p99.99" in text
    assert "msg/s" in text
    assert "cpu:snd" in text
    assert "cpu:rcv" in text
    assert "µs of process CPU time per message at each end" in text
    assert "\nshoal " not in text  # only the modes asked for
    assert "  shoal  " not in text


def test_rate_paces_the_sender() -> None:
    """100 + 20 messages at 200/s cannot take less than 0.6 s per variant."""
    start = time.monotonic()
    done = bench("--pattern", "rr", "--compare", "none", "--mode", "best-effort",
                 "--count", "100", "--warmup", "20", "--rounds", "1", "--rate", "200",
                 "--json", "--progress", "never")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start >= 0.6
    (rec,) = lines(done.stdout)
    assert rec["rate_target"] == 200
    # Throughput counts from the first timed message's due time to the last reply:
    # at most the paced rate (plus the last round trip's share).
    assert rec["throughput"] <= 200 * 1.05


def test_paced_one_way_latency_is_not_labelled_saturated() -> None:
    done = bench("--pattern", "pp", "--compare", "none", "--mode", "best-effort",
                 "--count", "200", "--warmup", "20", "--rounds", "1", "--rate", "2000",
                 "--progress", "never")
    assert done.returncode == 0, done.stderr
    assert "2,000/s; latency in µs: one-way\n" in done.stdout
    assert "saturation" not in done.stdout


def test_latency_labels_say_when_the_figures_are_mostly_queueing() -> None:
    """The words the table header and the plot titles use."""
    assert latency_label("pp", "one-way", 0.0) == "one-way under saturation (includes queueing)"
    assert latency_label("ps", "one-way", 0.0) == "one-way under saturation (includes queueing)"
    assert latency_label("ps", "one-way", 500.0) == "one-way"
    assert latency_label("rr", "round-trip", 0.0) == "round-trip"  # one request in flight
    assert latency_label("ps", None, 0.0) == "not measured (different clocks)"
    assert "--rate N" in SATURATED_NOTE


def test_coordinated_omission_is_charged_to_the_messages_that_were_due() -> None:
    """A sender that stalls 50 ms at 1000/s: the 50 messages due during the stall
    carry their due times, so their latency includes the wait they were made to do."""
    spec = Spec(pattern="pp", stack="raw", reliable=False, size=64, count=100, seconds=0,
                warmup=0, rate=1000, hwm=10)
    sched = Schedule(spec, start_ns=0)
    tally = Tally(latency=True)
    clock = 0
    for i in range(100):
        due = sched.due(i, clock)
        assert due == i * 1_000_000
        clock = max(clock, due)
        if i == 10:
            clock += 50_000_000          # the stall
        tally.add(make_body(64, due, sched.flag(i)), clock + 20_000)  # 20 µs transit
    lat = array("q", tally.samples)
    assert lat[:10].tolist() == [20_000] * 10
    assert lat[10] == 50_020_000
    assert lat[59] == 1_020_000
    assert lat[60] == 20_000
    assert sched.due(100, clock) is None


def test_schedule_in_duration_mode_and_warmup_flags() -> None:
    spec = Spec(pattern="pp", stack="raw", reliable=False, size=64, count=0, seconds=0.01,
                warmup=5, rate=1000, hwm=10)
    sched = Schedule(spec, start_ns=0)
    dues = [sched.due(i, 0) for i in range(40)]
    sent = [d for d in dues if d is not None]
    assert len(sent) == 15           # 5 warmup + 10 ms at 1000/s
    assert [sched.flag(i) for i in range(6)] == [WARMUP] * 5 + [TIMED]


def test_plot_draws_a_png(tmp_path: Path) -> None:
    png = tmp_path / "latency.png"
    done = bench(*QUICK, "--pattern", "rr,pp", "--plot", str(png))
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000
    assert f"plot written to {png}" in done.stdout


def test_progress_bar_on_request() -> None:
    code = "import sys; from shoal.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "bench", *QUICK[:-2], "--pattern",
                           "rr", "--mode", "best-effort", "--progress", "always"],
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    # One line redrawn in place: carriage returns, a newline only at the end.
    assert done.stderr.count(b"\r[") == 3
    assert done.stderr.count(b"\n") == 1
    assert b"] 0/2  rr raw pyzmq" in done.stderr
    assert b"] 2/2  done" in done.stderr


@contextmanager
def server(*extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen([sys.executable, "-m", "shoal", "bench", "--serve",
                             "tcp://127.0.0.1:*", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("shoal bench serving on tcp://127.0.0.1:"), first
        yield proc, first.split()[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_serve_and_peer() -> None:
    with server() as (_, endpoint):
        done = bench(*QUICK, "--json", "--peer", endpoint)
        assert done.returncode == 0, done.stderr
        recs = lines(done.stdout)
        assert len(recs) == 9
        for rec in recs:
            check_record(rec)   # one machine: one-way latency is measured too
        # The same server serves a second client run.
        again = bench(*QUICK, "--json", "--peer", endpoint, "--pattern", "rr")
        assert again.returncode == 0, again.stderr


def test_serve_for_stops_by_itself() -> None:
    with server("--for", "1") as (proc, _):
        assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize(("args", "says"), [
    (["--size", "8"], "--size must be between 16"),
    (["--count", "1"], "--count must be at least 2"),
    (["--rate", "-1"], "--rate must be >= 0"),
    (["--serve", "tcp://127.0.0.1:*", "--peer", "tcp://127.0.0.1:1"], "exclude"),
    (["--peer", "udp://x:1"], "--peer takes a tcp:// or ipc://"),
    (["--pattern", "rr,xx"], "expected a comma-separated list"),
    (["--count", "5", "--seconds", "2"], "not allowed with argument"),
    (["--busy-poll", "-0.5"], "--busy-poll must be between 0 and 1 seconds"),
    (["--busy-poll", "2"], "--busy-poll must be between 0 and 1 seconds"),
    (["--interface", "no-such-if0"],
     "--interface 'no-such-if0' is neither an IPv4 address nor an interface"),
    (["--backend", "tokio"], "invalid choice: 'tokio'"),
    (["--hedge", "--backend", "asyncio"], "--hedge runs on tcp 127.0.0.1 under trio"),
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], says: str) -> None:
    done = bench(*args, timeout=30)
    assert done.returncode == 2, done
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_no_server_at_the_peer_exits_1() -> None:
    done = bench("--peer", "tcp://127.0.0.1:9", "--timeout", "1.5", timeout=30)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert "no bench server answers at tcp://127.0.0.1:9" in done.stderr
    assert "shoal bench --serve" in done.stderr


def test_missing_histogram_package_names_the_extra() -> None:
    done = bench(*QUICK, pre="import sys; sys.modules['hdrh'] = None; "
                 "sys.modules['hdrh.histogram'] = None; ", timeout=30)
    assert done.returncode == 1
    assert "pip install 'shoal[cli]'" in done.stderr


def test_help_has_examples() -> None:
    done = bench("--help", timeout=30)
    assert done.returncode == 0
    assert "shoal bench --serve" in done.stdout
    assert "--rate" in done.stdout


def test_help_is_wrapped_and_keeps_the_examples_as_written() -> None:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # 80 columns
    code = "import sys; from shoal.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "bench", "--help"],
                          capture_output=True, text=True, timeout=30, check=False, env=env)
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= 100, [ln for ln in lines if len(ln) > 100]
    assert "latency under saturation" in " ".join(done.stdout.split())
    for example in EXAMPLES.splitlines():  # one example per line, as written
        assert example in lines


@pytest.mark.anyio  # on every event loop
async def test_server_refuses_malformed_control_requests(anyio_backend: object) -> None:
    backend = "uvloop" if isinstance(anyio_backend, tuple) else str(anyio_backend)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            endpoint = await tasks.start(BenchServer("tcp://127.0.0.1:*").serve)
            async with shoal.open_requester(connect=endpoint) as ctl:
                for bad in ({"op": "nope"}, ["open"], {"op": "open", "spec": {"size": 1}},
                            {"op": "open", "spec": {**_spec_wire(), "size": 3}},
                            {"op": "result", "session": 99, "sent": 1}, b"\xff"):
                    with pytest.raises(RemoteError):
                        await ctl.request(bad)
                hello = await ctl.request({"op": "hello"})
                assert (hello["version"], hello["loop"]) == (shoal.__version__, backend)
            tasks.cancel_scope.cancel()


def _spec_wire() -> dict[str, Any]:
    return Spec(pattern="rr", stack="shoal", reliable=False, size=64, count=10, seconds=0,
                warmup=0, rate=0, hwm=10).to_wire()


def test_records_without_raw_have_no_ratios() -> None:
    opts = Options(patterns=("pp",), compare_raw=False, rounds=1)
    variants = [Variant(s, "tcp", None) for s in opts.specs("pp")]
    for v, rate in zip(variants, (100.0, 40.0), strict=True):
        v.rates.append(rate)
    recs = records(variants, opts, "x")
    assert [r["label"] for r in recs] == ["shoal", "shoal reliable"]
    assert all(r["vs_raw"] is None for r in recs)
    assert recs[1]["vs_best_effort"]["throughput"] == 0.4
    assert recs[1]["latency_us"] is None


def test_curve_encrypts_both_stacks() -> None:
    done = bench(*QUICK, "--json", "--curve", "--pattern", "rr,pp")
    assert done.returncode == 0, done.stderr
    recs = lines(done.stdout)
    assert {r["label"] for r in recs} == {"raw pyzmq +curve", "shoal +curve",
                                          "shoal reliable +curve"}
    for rec in recs:
        assert rec["curve"] is True
        check_record(rec)
        assert rec["lost"] == 0


def test_curve_with_inproc_is_refused() -> None:
    done = bench("--curve", "--transport", "inproc", timeout=30)
    assert done.returncode == 2
    assert "--curve needs --transport tcp or ipc" in done.stderr


@pytest.mark.anyio  # on every event loop
async def test_a_curve_session_admits_no_plaintext_client() -> None:
    """The control that --curve really encrypts: a plaintext REQ gets no answer from a
    CURVE session's replier, a CURVE client with the server's key does."""
    spec = Spec(pattern="rr", stack="raw", reliable=False, size=64, count=10, seconds=0,
                warmup=0, rate=0, hwm=10, curve=True)

    def ask(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> bytes | None:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(endpoint)
            sock.send(make_body(64, 0, TIMED))
            return sock.recv() if sock.poll(1500) else None
        finally:
            sock.close()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            endpoint = await tasks.start(BenchServer("tcp://127.0.0.1:*").serve)
            async with shoal.open_requester(connect=endpoint) as ctl:
                opened = await ctl.request({"op": "open", "spec": spec.to_wire()})
                data = opened["endpoint"]
                plain = await anyio.to_thread.run_sync(ask, zmq.Context.instance(), data)
                assert plain is None
                ctx = curve_client_context(opened["server_key"])
                try:
                    secured = await anyio.to_thread.run_sync(ask, ctx, data)
                finally:
                    ctx.destroy(linger=0)
                assert secured == make_body(64, 0, TIMED)
                await ctl.request({"op": "close", "session": opened["session"]})
            tasks.cancel_scope.cancel()


def takes_busy_poll() -> bool:
    return all("busy_poll" in inspect.signature(f).parameters
               for f in (shoal.open_requester, shoal.open_replier, shoal.open_pusher,
                         shoal.open_puller, shoal.open_publisher, shoal.open_subscriber))


@pytest.mark.skipif(not takes_busy_poll(), reason="this shoal's resources take no "
                    "busy_poll= yet")
def test_busy_poll_reaches_shoal_at_both_ends() -> None:
    done = bench(*QUICK, "--json", "--busy-poll", "0.001")
    assert done.returncode == 0, done.stderr
    assert "skipped" not in done.stderr
    recs = lines(done.stdout)
    assert len(recs) == 9
    for rec in recs:
        assert rec["busy_poll"] == (0 if rec["stack"] == "raw" else 0.001)
        check_record(rec)
        check_cpu(rec)
    check_ratios(recs)


def test_busy_poll_without_the_keyword_is_skipped_in_one_line() -> None:
    """A shoal whose openers take no busy_poll= (stood in for by a wrapper without it)
    measures without it and says so."""
    pre = ("import shoal; _o = shoal.open_requester; "
           "shoal.open_requester = lambda **kw: _o(**kw); ")
    done = bench(*QUICK, "--json", "--pattern", "rr", "--busy-poll", "0.001", pre=pre)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "shoal bench: --busy-poll skipped: open_requester" in done.stderr
    assert "take no busy_poll=" in done.stderr
    assert [r["busy_poll"] for r in lines(done.stdout)] == [0, 0, 0]


def test_cpu_per_message_is_read_every_cpu_every_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver reads the CPU clock at its first timed message and every CPU_EVERY
    after (never per message), and divides what it spent between the first and the
    last reading by the messages between them; warmup and probes do not count."""
    reads: list[int] = []

    def clock() -> int:
        reads.append(len(reads))
        return 3_000 * len(reads)       # 3 us more at each reading

    monkeypatch.setattr(_common, "cpu_ns", clock)
    tally = Tally(latency=False)
    for flag in (WARMUP, _common.PROBE):
        tally.add(make_body(64, 0, flag), 0)
    assert tally.cpu_us() is None
    assert not reads
    tally.add(make_body(64, 0, TIMED), 0)
    assert len(reads) == 1
    assert tally.cpu_us() is None    # no interval yet
    for _ in range(2 * CPU_EVERY + 10):
        tally.add(make_body(64, 0, TIMED), 0)
    assert len(reads) == 3                               # at 1, 65 and 129
    assert tally.cpu_us() == pytest.approx(2 * 3.0 / (2 * CPU_EVERY))
    assert tally.result()["cpu_us"] == tally.cpu_us()


def test_cpu_figures_are_medians_over_rounds_and_ratios_their_quotients() -> None:
    opts = Options(patterns=("pp",), rounds=3)
    raw, be, rel = (Variant(s, "tcp", None) for s in opts.specs("pp"))
    for v, sends in ((raw, (1.0, 3.0, 2.0)), (be, (4.0, 5.0, 9.0)), (rel, (10.0, 8.0, 1.0))):
        for send in sends:
            v.add(Measured(sent=10, received=10, timed=10, rate=100.0, hist=None,
                           cpu={"send": send, "receive": send / 2}))
    recs = {r["label"]: r for r in records([raw, be, rel], opts, "x")}
    assert recs["raw pyzmq"]["cpu_us"] == {"send": 2.0, "receive": 1.0}
    assert recs["shoal"]["cpu_us_rounds"] == {"send": [4.0, 5.0, 9.0],
                                              "receive": [2.0, 2.5, 4.5]}
    assert recs["shoal"]["vs_raw"]["cpu_send"] == 2.5
    assert recs["shoal"]["vs_raw"]["cpu_receive"] == 2.5
    assert recs["shoal reliable"]["vs_best_effort"]["cpu_send"] == 1.6
    # A side never measured (inproc) has no figure and no ratio.
    lone = Variant(opts.specs("pp")[1], "inproc", None)
    lone.add(Measured(sent=1, received=1, timed=1, rate=1.0, hist=None,
                      cpu={"send": None, "receive": None}))
    (rec,) = records([lone], Options(patterns=("pp",), compare_raw=False, rounds=1), "x")
    assert rec["cpu_us"] == {"send": None, "receive": None}
