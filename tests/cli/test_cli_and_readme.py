"""The command line and the README's example work as documented (run as subprocesses).

``shoal demo`` itself is covered by ``test_demo.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]


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


UNFINISHED_AT_CLOSE = """
import logging, sys, trio, shoal
from shoal.cli._main import configure_logging
if sys.argv[1] == "own":
    logging.basicConfig(format="OWN %(name)s %(message)s")
configure_logging()

async def main():
    with trio.fail_after(10):
        async with shoal.open_puller(bind="tcp://127.0.0.1:*", reliable=True) as pull:
            async with shoal.open_pusher(connect=pull.endpoints, reliable=True) as push:
                await push.send("held")
                await pull.receive()  # taken, never finished

trio.run(main)
"""


def test_the_command_line_reports_library_warnings_as_its_own_lines() -> None:
    """An item dropped at close reaches the terminal as a 'shoal: warning:' line that
    says what happened and what to do; a program with its own logging set-up keeps it."""
    def stderr_of(mode: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", UNFINISHED_AT_CLOSE, mode],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stderr.splitlines()

    lines = stderr_of("cli")
    assert len(lines) == 1, lines
    assert lines[0].startswith("shoal: warning: reliable pusher closed with 1 item(s) ")
    assert "dropped" in lines[0]
    assert "outbox=" in lines[0]
    own = stderr_of("own")
    assert len(own) == 1, own
    assert own[0].startswith("OWN shoal reliable pusher closed"), own


def test_the_readme_commands_work_with_any_supported_python() -> None:
    """The two opening commands name no minor version; the README says what happens on
    a Python that is too old, and the version it names is the one pip enforces."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block is not None
    commands = block.group(1).splitlines()
    assert len(commands) == 2
    for command in commands:
        assert command.startswith("python3 -m venv .venv && "), command
        assert not re.search(r"python3\.\d", command), command
    pyproject = (ROOT / "pyproject.toml").read_text()
    required = re.search(r'^requires-python = ">=(3\.\d+)"$', pyproject, re.M)
    assert required is not None
    assert f"needs Python {required.group(1)} or newer" in readme
    assert "requires a different Python" in readme


def test_the_readme_asyncio_example_runs() -> None:
    """The 30-second example's asyncio twin prints what the trio one does, and runs
    with no trio imported."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## 30 seconds", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(examples) == 2
    code = examples[1]
    assert "asyncio.run(main())" in code
    assert "trio" not in code
    guarded = "import sys; sys.modules['trio'] = None\n" + code  # importing trio fails
    done = subprocess.run([sys.executable, "-c", guarded], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("sensors/room1 {'celsius': 21.5} {'unit': 'C'}")
    assert lines[1] == "3"
    assert done.stderr == ""
