"""``shoal bench --hedge``: a tiny run shows its three variants, the table and the text
latency plot (``--json``: one record per variant); the plot's pieces drawn from
made-up round trips; ``benchmarks/hedging.py`` is a thin entry to the same code.

Nothing here asserts a speed: the figures are checked for shape and consistency only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.cli._bench._hedge import VARIANTS, HedgeOptions, HedgeVariant, percentile
from shoal.cli._bench._hedge_report import (
    PLOT_ROWS,
    RAMP,
    WIDTH,
    axis_rows,
    column,
    histogram_row,
    plot,
    records,
)

NAMES = [name for name, _, _ in VARIANTS]
TINY = ["--hedge", "--count", "40", "--rounds", "1", "--warmup", "5", "--progress", "never"]
HEDGING = Path(__file__).resolve().parents[2] / "benchmarks" / "hedging.py"


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from shoal.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "bench", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def made_up() -> list[HedgeVariant]:
    fast = [150e-6 + i * 1e-7 for i in range(1000)]
    out = []
    for name, mark, hedged in VARIANTS:
        v = HedgeVariant(name, mark, 0.005 if hedged else None, samples=list(fast))
        if name == "stall":
            v.samples[::50] = [0.0505] * len(v.samples[::50])
        elif name == "stall+hedge":
            v.samples[::50] = [0.0053] * len(v.samples[::50])
        out.append(v)
    return out


def check_plot(lines: list[str]) -> None:
    labels, axis = axis_rows()
    assert labels.split() == ["50us", "100us", "1ms", "10ms", "100ms"]
    assert lines.count(" " * 18 + axis) == 2
    for name in NAMES:
        hist = [line for line in lines if line.startswith(f"{name:<12}hist")]
        assert len(hist) == 1, (name, lines)
        i = lines.index(hist[0])
        rows = lines[i + 1:i + 1 + len(PLOT_ROWS)]
        assert [r[12:18].strip() for r in rows] == list(PLOT_ROWS)
        assert all("=" in r[18:18 + WIDTH] for r in rows)


# -- the plot, drawn from made-up round trips -------------------------------------------


def test_the_log_axis_spans_50_us_to_100_ms_and_clamps() -> None:
    assert column(10e-6) == 0
    assert column(50e-6) == 0
    assert column(0.1) == WIDTH - 1
    assert column(5.0) == WIDTH - 1
    assert column(1e-4) < column(1e-3) < column(1e-2) < column(0.05) < WIDTH - 1


def test_a_histogram_row_marks_the_tail_and_leaves_empty_buckets_blank() -> None:
    row = histogram_row([150e-6] * 990 + [0.050] * 10)
    assert len(row) == WIDTH
    assert row[column(150e-6)] == RAMP[-1]
    assert row[column(0.050)] not in (" ", RAMP[-1])
    assert set(row) - {" "} <= set(RAMP)
    assert row.count(" ") == WIDTH - 2
    assert histogram_row([]) == " " * WIDTH


def test_the_plot_has_a_hist_row_and_a_bar_per_percentile_for_each_variant() -> None:
    lines: list[str] = []
    variants = made_up()
    plot(variants, lines.append)
    check_plot(lines)
    bars = {}
    for i, line in enumerate(lines):
        if line[:12].strip() in NAMES:
            bars[line[:12].strip()] = lines[i + 3]  # the p99 row
    # the stalled tail lies near 50 ms, the hedged one near 5 ms: longer and shorter bars
    assert bars["stall"].count("=") > bars["stall+hedge"].count("=") \
        > bars["no stall"].count("=")
    assert bars["stall"].rstrip().endswith("50,500")


def test_records_give_the_raw_percentiles_of_each_variant() -> None:
    recs = records(made_up(), HedgeOptions(rounds=1, count=1000), {"before": [0.1] * 3})
    assert [r["variant"] for r in recs] == NAMES
    for r in recs:
        lat = r["latency_us"]
        order = [lat[k] for k in ("min", "p50", "p90", "p99", "p99.9", "max")]
        assert order == sorted(order)
        assert r["requests"] == 1000
    assert [r["hedge_after"] for r in recs] == [None, None, 0.005]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 3.0


# -- whole runs -------------------------------------------------------------------------


@pytest.mark.lab  # a whole program, with two replier processes
def test_a_tiny_hedge_run_prints_the_three_variants_the_table_and_the_plot() -> None:
    done = bench(*TINY)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("hedging: two repliers")
    assert lines[2].startswith("load average (1, 5, 15 min): ")
    header = lines.index(next(line for line in lines if line.startswith("variant ")))
    for k, name in enumerate(NAMES):
        row = lines[header + 1 + k].split()
        assert row[:len(name.split())] == name.split()
        assert row[len(name.split())] == "40"  # requests
    assert any(line.startswith("stall+hedge p99 / no stall p99 = ") for line in lines)
    check_plot(lines)


@pytest.mark.lab
def test_a_tiny_hedge_run_with_json_prints_one_record_per_variant() -> None:
    done = bench(*TINY, "--json")
    assert done.returncode == 0, done.stderr
    recs = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [r["variant"] for r in recs] == NAMES
    for r in recs:
        assert r["bench"] == "hedge"
        assert r["requests"] == 40
        lat = r["latency_us"]
        assert [lat[k] for k in ("min", "p50", "p99", "max")] == sorted(
            lat[k] for k in ("min", "p50", "p99", "max"))
        assert set(r["load"]) == {"before", "after"}


@pytest.mark.lab
def test_hedging_py_is_a_thin_entry_to_the_same_measurement() -> None:
    done = subprocess.run([sys.executable, str(HEDGING), "--rounds", "1", "--count", "20"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    check_plot(done.stdout.splitlines())


@pytest.mark.lab  # the shoal command
@pytest.mark.parametrize("args", [["--plot", "x.png"], ["--curve"], ["--rate", "10"],
                                  ["--transport", "ipc"], ["--count", "1"]])
def test_hedge_refuses_options_that_do_not_apply(args: list[str]) -> None:
    done = bench("--hedge", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("shoal bench: ")
