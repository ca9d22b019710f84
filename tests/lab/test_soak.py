"""The soak run (``benchmarks/soak.py``) in a CI-sized form, and its checks.

A short run (16 s, 2 s intervals, lower rates) of every pattern, best effort and
reliable, must exit 0: messages in every interval of every stream, nothing lost or
duplicated in reliable mode, and no process's memory growing past the bound. The
growth check and the loss counting are also fed synthetic input on which they must
fail, so that a passing run means something.

Network safety: the soak binds and connects on tcp://127.0.0.1 only. The run is a
subprocess in its own session, killed with its workers if it overruns its deadline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.lab

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
DEADLINE_S = 90.0  # the run takes about 25 s; this is only the hang guard
LIMIT_MIB = 20.0
STREAMS = {(p, m) for p in ("pubsub", "pushpull", "reqrep")
           for m in ("best-effort", "reliable")}


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    """``benchmarks/soak.py`` imported as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("shoal_soak_under_test", SOAK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def run_soak(tmp_path: Path, *args: str) -> tuple[int, str, str, dict[str, Any]]:
    out = tmp_path / "soak.json"
    proc = subprocess.Popen([sys.executable, str(SOAK), *args, "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and every worker it spawned
        stdout, stderr = proc.communicate()
        pytest.fail(f"the soak run overran {DEADLINE_S} s\n{stdout}\n{stderr}")
    doc = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, stdout, stderr, doc


def test_short_soak_flows_loses_nothing_reliable_and_does_not_grow(tmp_path: Path) -> None:
    code, stdout, stderr, doc = run_soak(
        tmp_path, "--seconds", "16", "--interval", "2", "--rate-pubsub", "2000",
        "--rate-pushpull", "2000", "--rate-reqrep", "1000",
        "--max-growth-mib", str(LIMIT_MIB))
    assert code == 0, f"{stdout}\n{stderr}"
    assert doc["ok"] is True
    assert all(c["ok"] for c in doc["checks"]), doc["checks"]

    streams = {(s["pattern"], s["mode"]): s for s in doc["streams"]}
    assert set(streams) == STREAMS
    for (pattern, mode), s in streams.items():
        intervals = s["intervals"]
        assert len(intervals) == 8, (pattern, mode)
        idle = [r["k"] for r in intervals if r["delivered"] <= 0 or r["sent"] <= 0]
        assert not idle, f"{pattern}/{mode}: nothing flowed in intervals {idle}"
        totals = s["totals"]
        assert totals["delivered"] > 0
        assert totals["bad_replies"] == 0
        if mode == "reliable":
            assert totals["lost"] == 0, (pattern, totals)
            assert totals["duplicates"] == 0, (pattern, totals)
            assert totals["given_up"] == 0, (pattern, totals)
            assert intervals[-1]["missing"] == 0, (pattern, intervals[-1])
            if pattern != "reqrep":
                assert totals["acked_all"] is True, (pattern, totals)

    procs = doc["processes"]
    assert len(procs) == 12
    for key, p in procs.items():
        assert p["rss_start_mib"] > 0, key
        g = p["growth"]
        assert g["samples"] == 8, key
        assert g["ok"] is True, (key, g)
        assert g["growth_mib"] <= LIMIT_MIB, (key, g)
        assert g["projected_mib"] <= LIMIT_MIB, (key, g)
    growth_checks = [c for c in doc["checks"] if c["check"].endswith("memory growth")]
    assert len(growth_checks) == 12


def series(n: int, step_s: float, rss: list[float]) -> tuple[list[float], list[float]]:
    return [step_s * (i + 1) for i in range(n)], rss


@pytest.mark.parametrize("shape", ["linear", "step"])
def test_growth_check_fails_on_growing_memory(soak: ModuleType, shape: str) -> None:
    rng = random.Random(7)
    n = 30
    if shape == "linear":  # a steady leak, 1 MiB per interval, with noise
        rss = [40.0 + 1.0 * i + rng.uniform(-0.8, 0.8) for i in range(n)]
    else:  # memory that jumps once and stays up
        rss = [40.0 + (25.0 if i >= n // 2 else 0.0) + rng.uniform(-0.8, 0.8)
               for i in range(n)]
    g = soak.check_growth(*series(n, 2.0, rss), LIMIT_MIB)
    assert g.ok is False
    if shape == "linear":
        # 29 MiB over the run: the slope sees all of it; the medians of the thirds,
        # two thirds of a run apart, see about 19.5 and would pass on their own.
        assert 0.8 * 30 < g.slope_mib_per_min < 1.2 * 30  # 1 MiB per 2 s
        assert g.projected_mib > LIMIT_MIB
        assert g.growth_mib > 0.5 * LIMIT_MIB
    else:
        assert g.growth_mib > LIMIT_MIB


def test_growth_check_passes_flat_noisy_memory_with_spikes(soak: ModuleType) -> None:
    rng = random.Random(11)
    n = 30
    rss = [40.0 + rng.gauss(0.0, 1.5) for _ in range(n)]
    rss[n - 1] += 30.0  # a single spike at the very end (a burst being handled)
    rss[3] += 30.0
    g = soak.check_growth(*series(n, 2.0, rss), LIMIT_MIB)
    assert g.ok is True
    assert abs(g.growth_mib) < 3.0
    assert abs(g.projected_mib) < 3.0


def test_growth_check_wants_three_samples(soak: ModuleType) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        soak.check_growth([1.0, 2.0], [40.0, 41.0], LIMIT_MIB)


def test_receiver_counts_losses_duplicates_and_late_arrivals(soak: ModuleType) -> None:
    t = soak.SeqTracker()
    for n in (0, 1, 3, 2, 2, 6, 0):
        t.see(n)
    assert (t.unique, t.duplicates, t.late, t.missing) == (5, 2, 1, 2)  # 4 and 5 missing
