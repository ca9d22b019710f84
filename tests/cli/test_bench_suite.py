"""The benchmark suite (``benchmarks/run.py``, ``shoal.cli._bench._suite``): a tiny run
end to end (every variant measured, tables, targets and the JSON document), one on
trio and asyncio (each shoal variant once per loop), and the pieces its figures rest
on (nearest-rank percentiles, interleaved rounds, names per loop, targets).

Traffic stays on 127.0.0.1: the suite binds every socket there and checks the
endpoint a worker reports before the other side connects.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.cli._bench._common import busy_poll_missing, interleaved
from shoal.cli._bench._suite._command import parse_args
from shoal.cli._bench._suite._common import (
    VARIANTS,
    Result,
    backend_missing,
    names,
    percentile,
    split_name,
    variant_name,
)
from shoal.cli._bench._suite._report import Targets, fmt_size, summarize
from shoal.cli._bench._suite._run import Config, Results

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
TINY = ["--only", "rr,pp,ps", "--sizes", "64", "--rounds", "1", "--rr-count", "200",
        "--rr-warmup", "20", "--tp-count", "2000", "--tp-warmup", "200"]


@pytest.mark.lab  # a whole program
def test_a_tiny_run_measures_every_variant_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    done = subprocess.run([sys.executable, str(RUN), *TINY, "--json", str(out)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.splitlines()[0].startswith(("quiet run: load average", "loaded run: "))
    for title in ("== request/reply round-trip latency", "== push/pull throughput",
                  "== pub/sub throughput", "== targets (information, not assertions)"):
        assert title in text
    assert "failed" not in text, text

    doc = json.loads(out.read_text())
    assert set(doc) == {"environment", "load", "config", "elapsed_s", "summary", "targets",
                        "rounds"}
    assert doc["config"]["sizes"] == [64]
    for bench, variants in VARIANTS.items():
        size = doc["summary"][bench]["64"]
        for variant in variants:
            row = size[variant]
            assert row.get("rounds") == 1 or "unavailable" in row, (bench, variant, row)
        assert size["ratios"]
    for entry in doc["rounds"]:
        for result in entry["results"]:
            assert "failed" not in result, entry
            if "unavailable" in result:
                continue
            # each side's CPU figure comes with the main thread's
            sides = ("client", "server") if entry["bench"] == "rr" else ("send", "recv")
            for side in sides:
                assert result[f"cpu_{side}_us"] > 0, entry
                assert result[f"main_{side}_us"] > 0, entry
    assert {t["verdict"] for t in doc["targets"]} <= {"PASS", "FAIL", "n/a"}
    # rr: 2; pp 64 B: 2 + CPU 2; ps 64 B: 2 + "shoal wildcard"/"shoal batch" 1
    assert len(doc["targets"]) == 2 + 4 + 2 + 1


TINY_LOOPS = ["--only", "rr,pp,ps", "--sizes", "64", "--rounds", "1", "--rr-count", "50",
              "--rr-warmup", "10", "--tp-count", "1000", "--tp-warmup", "100",
              "--backend", "trio,asyncio"]


@pytest.mark.lab  # a whole program
def test_a_tiny_run_on_trio_and_asyncio_measures_each_shoal_variant_on_each(
        tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    done = subprocess.run([sys.executable, str(RUN), *TINY_LOOPS, "--json", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "failed" not in text, text
    assert "uvloop" not in text

    doc = json.loads(out.read_text())
    assert doc["config"]["backends"] == ["trio", "asyncio"]
    assert doc["environment"]["anyio"]
    for bench, variants in VARIANTS.items():
        rows = doc["summary"][bench]["64"]
        shown = [n for v in variants
                 for n in ([v, f"{v} [asyncio]"] if v.startswith("shoal") else [v])]
        assert [n for n in rows if n != "ratios"] == shown
        figures = (("p50_us", "cpu_client_us", "cpu_server_us") if bench == "rr"
                   else ("rate", "cpu_send_us", "cpu_recv_us"))
        for name in shown:
            assert f"  {name} " in text, name
            row = rows[name]
            if "unavailable" in row:
                continue
            assert row["rounds"] == 1, (bench, name, row)
            for figure in figures:
                assert row[figure] > 0, (bench, name, figure, row)
    targets = [t["target"] for t in doc["targets"]]
    assert "request/reply 64 B shoal [asyncio]/pyzmq.asyncio p50" in targets
    # each loop is held to the pyzmq, reliable and CPU targets on its own
    for bench in ("push/pull", "pub/sub"):
        for loop in ("", " [asyncio]"):
            mine = [t for t in targets if t.startswith(f"{bench} 64 B msgs/s shoal ")
                    and t.endswith(f"{loop}/pyzmq") and (loop or "[" not in t)]
            assert len(mine) == 1, (bench, loop, targets)
    assert sum("main-thread CPU per message" in t and "[asyncio]" in t
               for t in targets) == 2


@pytest.mark.lab  # a whole program
def test_a_bad_option_is_refused_with_status_2() -> None:
    done = subprocess.run([sys.executable, str(RUN), "--only", "xx"], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "unknown benchmark 'xx'" in done.stderr


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile([7], 99.9) == 7
    assert percentile([1, 2, 3], 0) == 1


def test_rounds_rotate_the_variants() -> None:
    variants = ["A", "B", "C"]
    assert [interleaved(variants, r) for r in range(4)] == [
        ["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"], ["A", "B", "C"]]


def test_busy_poll_missing_names_the_openers_without_it() -> None:
    assert busy_poll_missing() is None  # every pattern opener takes busy_poll=
    assert busy_poll_missing(("open_requester", "open_prometheus_exporter")) == (
        "open_prometheus_exporter")


def test_targets_say_pass_fail_or_not_measured() -> None:
    targets = Targets()
    assert targets.check("pp 64 B", "ratio", 0.7, ">=", 0.6).endswith(": PASS")
    assert targets.check("pp 64 B", "ratio", 0.5, ">=", 0.6).endswith(": FAIL")
    assert targets.check("pp 64 B", "cpu", 0.9, "<=", 0.7, unit="us").endswith(": FAIL")
    assert targets.check("pp 64 B", "ratio", math.nan, ">=", 0.6).endswith(": n/a")
    assert [r["verdict"] for r in targets.records] == ["PASS", "FAIL", "FAIL", "n/a"]
    assert Targets.shown(targets.records[2]) == "0.90 us (target <= 0.7 us)"


def test_sizes_read_in_binary_units() -> None:
    assert [fmt_size(s) for s in (64, 4096, 2**20, 1000)] == [
        "64 B", "4 KiB", "1 MiB", "1000 B"]


def test_one_loop_keeps_the_names_and_more_loops_name_theirs() -> None:
    for bench, variants in VARIANTS.items():
        assert names(bench, ["trio"]) == variants
    assert names("rr", ["trio", "asyncio", "uvloop"])[:4] == [
        "shoal", "shoal [asyncio]", "shoal [uvloop]", "shoal busy-poll"]
    assert names("rr", ["trio", "asyncio"])[-3:] == ["trio FD", "pyzmq", "pyzmq.asyncio"]
    assert variant_name("shoal batch", "uvloop") == "shoal batch [uvloop]"
    assert variant_name("shoal batch", "trio") == "shoal batch"
    for name in names("pp", ["trio", "asyncio", "uvloop"]):
        assert variant_name(*split_name(name)) == name
    assert split_name("shoal reliable many [asyncio]") == ("shoal reliable many", "asyncio")


def test_backend_option_takes_a_comma_list_in_a_fixed_order(
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = parse_args(["--backend", "uvloop,trio"])
    assert cfg.backends == ["trio", "uvloop"]
    assert parse_args([])[0].backends == ["trio"]
    spec = cfg.spec("rr", "shoal busy-poll [uvloop]", 64)
    assert (spec.variant, spec.backend, spec.busy_poll) == ("shoal busy-poll", "uvloop",
                                                            cfg.busy_poll)
    assert cfg.spec("pp", "pyzmq", 64).backend == "trio"
    with pytest.raises(SystemExit) as exc:
        parse_args(["--backend", "trio,tokio"])
    assert exc.value.code == 2
    assert "--backend: give a comma list of trio, asyncio, uvloop" in capsys.readouterr().err


def test_without_uvloop_its_variants_are_not_available(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert backend_missing("asyncio") is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    why = backend_missing("uvloop")
    assert why is not None
    assert why.startswith("not available: uvloop cannot be imported")


def made_up(cfg: Config, p50: dict[str, float], rates: dict[str, float],
            missing: str | None = None) -> Results:
    """One round per variant: ``p50`` (us) for rr, ``rate`` (msgs/s) for pp, 100 us and
    1000/s where not given; a backend ``missing`` shows as not available."""
    results: Results = {}
    for bench in cfg.only:
        for name in cfg.names(bench):
            row: Result
            if missing is not None and split_name(name)[1] == missing:
                row = {"unavailable": f"not available: {missing} cannot be imported"}
            elif bench == "rr":
                us = p50.get(name, 100.0)
                row = {"p50_us": us, "p99_us": us * 2, "p999_us": us * 3,
                       "cpu_client_us": 5.0, "cpu_server_us": 5.0,
                       "main_client_us": 4.0, "main_server_us": 4.0}
            else:
                row = {"rate": rates.get(name, 1000.0), "send_rate": 1000.0, "lost": 0,
                       "received": 1, "body_ok": True, "cpu_send_us": 0.5,
                       "cpu_recv_us": 0.5, "main_send_us": 0.4, "main_recv_us": 0.4}
            results[bench, 64, name] = [row]
    return results


def tiny_config(backends: list[str]) -> Config:
    return Config(rounds=1, sizes=[64], only=["rr", "pp"], rr_count=10, rr_warmup=0,
                  tp_count=10, tp_bytes=2**20, tp_warmup=1, pp_hwm=10, ps_hwm=10,
                  backends=backends)


def test_targets_across_loops_compare_uvloop_with_trio_and_asyncio_with_pyzmq_asyncio(
        ) -> None:
    cfg = tiny_config(["trio", "asyncio", "uvloop"])
    p50 = {"shoal": 100.0, "shoal [uvloop]": 105.0, "shoal [asyncio]": 130.0,
           "pyzmq.asyncio": 120.0}
    rates = {"shoal batch": 500_000.0, "shoal send_many": 600_000.0, "pyzmq": 900_000.0,
             "shoal batch [uvloop]": 520_000.0, "shoal send_many [uvloop]": 530_000.0,
             "shoal send_many [asyncio]": 400_000.0}
    lines: list[str] = []
    summary, records = summarize(cfg, made_up(cfg, p50, rates), lines.append)
    got = {r["target"]: r for r in records}

    uv = got["request/reply 64 B shoal [uvloop]/shoal p50"]
    assert (uv["value"], uv["op"], uv["limit"], uv["verdict"]) == (
        pytest.approx(1.05), "<=", 1.1, "PASS")
    aio = got["request/reply 64 B shoal [asyncio]/pyzmq.asyncio p50"]
    assert (aio["value"], aio["limit"], aio["verdict"]) == (pytest.approx(130 / 120), 1.0,
                                                           "FAIL")
    tp = got["push/pull 64 B msgs/s shoal send_many [uvloop]/shoal send_many"]
    assert (tp["value"], tp["op"], tp["verdict"]) == (pytest.approx(530 / 600), ">=", "FAIL")
    assert tp["limit"] == pytest.approx(1 / 1.1)
    # each loop's own targets: its best best effort against raw pyzmq, its CPU
    assert "push/pull 64 B msgs/s shoal send_many [asyncio]/pyzmq" in got
    assert ("push/pull 64 B main-thread CPU per message shoal send_many [uvloop] sending"
            in got)
    assert "request/reply 64 B shoal busy-poll [asyncio]/pyzmq p50" in got
    assert summary["pp"]["64"]["ratios"]["best shoal best effort [uvloop]"] == (
        "shoal send_many [uvloop]")
    text = "\n".join(lines)
    assert "shoal [uvloop]/shoal p50 1.05x (target <= 1.1x): PASS" in text
    assert "(target >= 0.909x): FAIL" in text
    assert "  shoal reliable many [asyncio] " in text  # the column is wide enough


def test_a_loop_that_is_not_available_leaves_its_targets_unmeasured() -> None:
    cfg = tiny_config(["trio", "uvloop"])
    lines: list[str] = []
    _, records = summarize(cfg, made_up(cfg, {}, {}, missing="uvloop"), lines.append)
    got = {r["target"]: r["verdict"] for r in records}
    assert got["request/reply 64 B shoal [uvloop]/shoal p50"] == "n/a"
    assert got["push/pull 64 B msgs/s best effort [uvloop]/shoal batch"] == "n/a"
    assert any("shoal batch [uvloop]" in ln and "not available: uvloop cannot be imported"
               in ln for ln in lines)


def test_trio_alone_checks_the_targets_it_always_did() -> None:
    cfg = tiny_config(["trio"])
    lines: list[str] = []
    _, records = summarize(cfg, made_up(cfg, {}, {}), lines.append)
    assert [r["target"] for r in records] == [
        "request/reply 64 B shoal/trio FD p50",
        "request/reply 64 B shoal busy-poll/pyzmq p50",
        "push/pull 64 B msgs/s shoal batch/pyzmq",
        "push/pull 64 B msgs/s shoal reliable/shoal batch",
        "push/pull 64 B main-thread CPU per message shoal batch sending",
        "push/pull 64 B main-thread CPU per message shoal batch receiving"]
