"""``shoal._core`` is sans-I/O: no module under it imports an I/O, clock or randomness
library, directly or through a shoal module that does.

The check reads the source with ``ast`` (nothing is imported), so it sees every
``import x``, ``from x import y``, relative import and literal ``__import__("x")`` /
``importlib.import_module("x")``, wherever it sits (inside functions or ``if``s too).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.imports import SRC, imported_modules, module_name

CORE = SRC / "_core"

FORBIDDEN = frozenset({
    "trio", "anyio", "sniffio", "uvloop", "zmq", "zeroconf", "socket", "time", "random",
    "asyncio", "threading", "secrets", "uuid", "select", "selectors", "subprocess",
    "multiprocessing",
})
"""Top-level modules the core must not import: I/O, event loops, clocks, randomness."""

ALLOWED_SHOAL = ("shoal._core",)
"""The core uses no shoal module outside itself (its exception types live in it)."""


def violations(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports in ``source`` that break the sans-I/O rule."""
    bad = []
    for name in sorted(imported_modules(source, module, is_package=is_package)):
        top = name.split(".")[0]
        outside_core = top == "shoal" and name != "shoal" and not name.startswith(ALLOWED_SHOAL)
        if top in FORBIDDEN or outside_core:
            bad.append(name)
    return bad


CORE_FILES = sorted(CORE.rglob("*.py"))


def test_the_core_package_has_modules_to_check() -> None:
    names = {p.name for p in CORE_FILES}
    assert {"__init__.py", "_envelope.py", "_gaps.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_no_core_module_imports_io_clock_or_randomness(path: Path) -> None:
    module, is_package = module_name(path)
    assert violations(path.read_text(), module, is_package=is_package) == []


def test_the_core_imports_when_trio_and_zmq_are_unavailable() -> None:
    """Run-time proof on top of the static check: import the core in a fresh
    interpreter where importing trio, anyio, zmq, zeroconf or asyncio fails (msgpack itself
    uses the stdlib clock for its Timestamp type, so those are left to the static check)."""
    code = (
        "import sys, types\n"
        "for name in ('trio', 'anyio', 'sniffio', 'zmq', 'zeroconf', 'asyncio'):\n"
        "    sys.modules[name] = None\n"
        # a bare package object: shoal/__init__.py itself (rightly) imports anyio
        "pkg = types.ModuleType('shoal')\n"
        f"pkg.__path__ = [{str(SRC)!r}]\n"
        "sys.modules['shoal'] = pkg\n"
        "import shoal._core\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.strip() == "ok", done.stderr


# -- the checker itself catches violations --------------------------------------------------


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import trio", ["trio"]),
        ("import zmq.asyncio as za", ["zmq.asyncio"]),
        ("from zmq import Socket", ["zmq", "zmq.Socket"]),
        ("from trio.lowlevel import checkpoint", ["trio.lowlevel", "trio.lowlevel.checkpoint"]),
        ("import os, time", ["time"]),
        ("from random import randbytes", ["random", "random.randbytes"]),
        ("def f():\n    import socket\n", ["socket"]),
        ("if True:\n    from asyncio import sleep\n", ["asyncio", "asyncio.sleep"]),
        ("try:\n    import threading\nexcept ImportError:\n    pass\n", ["threading"]),
        ("import zeroconf", ["zeroconf"]),
        ("from secrets import token_bytes", ["secrets", "secrets.token_bytes"]),
        ("x = __import__('zmq')", ["zmq"]),
        ("import importlib\nm = importlib.import_module('trio')", ["trio"]),
        ("from shoal import _zmq", ["shoal._zmq"]),
        ("from shoal.patterns import open_publisher", [
            "shoal.patterns", "shoal.patterns.open_publisher"]),
        ("from .. import _zmq", ["shoal._zmq"]),
        ("from ..patterns._pubsub import Publisher", [
            "shoal.patterns._pubsub", "shoal.patterns._pubsub.Publisher"]),
    ],
)
def test_the_checker_catches_each_form_of_violation(source: str, caught: list[str]) -> None:
    assert violations(source, "shoal._core._synthetic") == caught


def test_the_checker_resolves_relative_imports_in_a_package_init() -> None:
    assert violations("from .. import _zmq", "shoal._core", is_package=True) == ["shoal._zmq"]
    assert violations("from . import _gaps", "shoal._core", is_package=True) == []


def test_the_checker_accepts_clean_sources() -> None:
    clean = (
        "from __future__ import annotations\n"
        "import enum, struct\n"
        "from collections import OrderedDict\n"
        "import msgpack\n"
        "from shoal._core._errors import DecodeError\n"
        "from shoal._core._gaps import GapTracker\n"
        "from . import _identity\n"
        "timestamp = 'time'  # the word is fine\n"
    )
    assert violations(clean, "shoal._core._synthetic") == []
