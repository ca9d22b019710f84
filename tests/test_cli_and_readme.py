"""The command line and the README's example work as documented (run as subprocesses)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_demo_nodes_discover_each_other_and_all_three_patterns_flow() -> None:
    done = run_shoal("demo", "--seconds", "4")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for name in ("sensor", "dashboard", "room1-display", "worker-A", "calculator", "client"):
        assert re.search(rf"\[discovery\s*\] {name} joined", out), name
    assert "[sensor       ] both subscribers and both workers are connected" in out
    assert re.search(r"\[dashboard\s*\] got sensors/room2", out)
    assert re.search(r"\[room1-display\] got sensors/room1", out)
    assert not re.search(r"\[room1-display\] got sensors/(room2|kitchen)", out)
    assert re.search(r"\[worker-[AB]\s*\] took job", out)
    assert re.search(r"\[client\s*\] 3 requests in flight -> \d\+\d=\d+", out)
    # worker-B leaves with a goodbye and comes back as a new incarnation
    assert re.search(r"\[discovery\s*\] worker-B left \(goodbye\)", out)
    assert len(re.findall(r"\[discovery\s*\] worker-B joined", out)) == 2
    summary = json.loads(out.rsplit("summary", 1)[1])
    assert summary["replies"] == summary["requests"] > 0
    assert summary["jobs_sent"] == 2 * summary["published"]
    # best effort: jobs queued for worker-B when it left are lost with it (at most a few)
    assert summary["jobs_sent"] - 4 <= sum(summary["jobs"].values()) <= summary["jobs_sent"]
    assert summary["gaps"] == 0


def test_bad_arguments_exit_non_zero_with_a_reason() -> None:
    done = run_shoal("demo", "--seconds", "0")
    assert done.returncode == 2
    assert "--seconds" in done.stderr
    assert run_shoal().returncode == 2
    assert run_shoal("no-such-command").returncode == 2


def test_the_readme_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example is not None
    done = subprocess.run([sys.executable, "-c", example.group(1)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sensors/room1 {'celsius': 21.5} {'unit': 'C'}")
    assert lines[1] == "3"
