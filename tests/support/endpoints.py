"""Loopback endpoints: a free TCP port, and fresh bind addresses on each transport.

Network safety: every address here is ``tcp://127.0.0.1:*`` (or a port on 127.0.0.1),
an ``ipc://`` path under the test's ``tmp_path``, or a process-unique ``inproc://``
name.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

TRANSPORTS = ("tcp", "ipc", "inproc")
LOOPBACK_ANY = "tcp://127.0.0.1:*"
"""Bind here for a fresh TCP port on loopback; connect to what ``endpoints`` says."""

_names = itertools.count()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a fixed ``port=``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def endpoint(port: int) -> str:
    """``tcp://127.0.0.1:PORT``."""
    return f"tcp://127.0.0.1:{port}"


class Addresses:
    """Hands out fresh bind addresses on one transport (loopback / tmp_path / inproc)."""

    def __init__(self, transport: str, tmp_path: Path) -> None:
        self.transport = transport
        self._dir = tmp_path

    def fresh(self) -> str:
        """A new address to bind to. Connect to what the resource's ``endpoints`` says."""
        n = next(_names)
        if self.transport == "tcp":
            return LOOPBACK_ANY
        if self.transport == "ipc":
            return f"ipc://{self._dir}/s{n}"
        if self.transport == "inproc":
            return f"inproc://shoal-test-{os.getpid()}-{n}"
        raise AssertionError(f"unknown transport {self.transport!r}")


def bind_address(transport: str, tmp_path: Path, name: str) -> str:
    """An address named ``name`` to bind on ``transport``: loopback with any port, an
    ipc path under ``tmp_path``, or an inproc name unique to the test."""
    if transport == "tcp":
        return LOOPBACK_ANY
    if transport == "inproc":
        return f"inproc://{tmp_path.name}-{name}"
    return f"ipc://{tmp_path}/{name}"
