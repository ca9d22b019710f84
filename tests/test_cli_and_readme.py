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


def test_demo_shows_all_three_patterns_and_ends_by_itself() -> None:
    done = run_shoal("demo", "--seconds", "1.5")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[pub]" in out
    assert "[sub" in out
    assert re.search(r"\[worker-[AB]\]\s+took job", out)
    assert re.search(r"\[req\]\s+3 requests in flight -> \d\+\d=\d+", out)
    summary = json.loads(out.rsplit("summary", 1)[1])
    assert summary["replies"] == summary["requests"] > 0
    assert sum(summary["jobs"].values()) >= 2
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
