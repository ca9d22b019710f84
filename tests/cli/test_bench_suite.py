"""The benchmark suite (``benchmarks/run.py``, ``shoal.cli._bench._suite``): a tiny run
end to end (every variant measured, tables, targets and the JSON document), and the
pieces its figures rest on (nearest-rank percentiles, interleaved rounds, targets).

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
from shoal.cli._bench._suite._common import VARIANTS, percentile
from shoal.cli._bench._suite._report import Targets, fmt_size

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
