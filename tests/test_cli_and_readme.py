"""The command line and the README's example work as documented (run as subprocesses).

``shoal demo`` itself is covered by ``test_demo.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


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
