"""Peers in other processes (``support/peer.py``): start one, read what it reports,
SIGKILL it.

A peer runs on the same event loop as the test that starts it (trio, asyncio or
uvloop). Every peer is killed on the way out of its context manager, whatever
happened, and its stdout is closed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from support.endpoints import endpoint
from support.loops import current_loop
from support.nodes import FAST

PEER = Path(__file__).with_name("peer.py")


class PeerProcess:
    """A peer in a subprocess: its JSON stdout lines, its death."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self._stdout = proc.stdout
        self._buf = b""
        self.ready: dict[str, Any] = {}

    async def line(self) -> dict[str, Any]:
        """The next line; AssertionError once stdout ended (the process is gone)."""
        while b"\n" not in self._buf:
            try:
                self._buf += await self._stdout.receive(65536)
            except anyio.EndOfStream:
                raise AssertionError(
                    f"the peer process exited ({self.proc.returncode})") from None
        raw, _, self._buf = self._buf.partition(b"\n")
        out: dict[str, Any] = json.loads(raw)
        return out

    async def expect(self, event: str) -> dict[str, Any]:
        """The next line reporting ``event`` (other lines are skipped)."""
        while True:
            got = await self.line()
            if got["event"] == event:
                return got

    def kill(self) -> None:
        """SIGKILL: no goodbye, no clean-up of shoal state, nothing."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def aclose(self) -> None:
        """Kill, reap, close stdout (bounded: shielded, 5 s at most)."""
        self.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await self.proc.wait()
            await self._stdout.aclose()


@asynccontextmanager
async def peer_process(kind: str, *args: str) -> AsyncIterator[PeerProcess]:
    """Start ``peer.py KIND ARGS`` on the caller's event loop; wait until it is ready;
    SIGKILL it on the way out."""
    # only stdout is piped: a stderr pipe that nobody reads could fill and stall the peer
    proc = await anyio.open_process([sys.executable, str(PEER), "--loop", current_loop(),
                                     kind, *args],
                                    stdin=None, stdout=subprocess.PIPE, stderr=None)
    peer = PeerProcess(proc)
    try:
        peer.ready = await peer.expect("ready")
        yield peer
    finally:
        await peer.aclose()


def node_process(name: str, a_port: int | None, *args: str,
                 ) -> AbstractAsyncContextManager[PeerProcess]:
    """A node introduced to the node at ``a_port`` (None: to nobody), with ``FAST``
    liveness settings."""
    peer = [] if a_port is None else ["--peer", endpoint(a_port)]
    return peer_process("node", name, *peer, "--heartbeat", str(FAST["heartbeat"]),
                        "--peer-timeout", str(FAST["peer_timeout"]), *args)


def puller_process(*args: str) -> AbstractAsyncContextManager[PeerProcess]:
    """A reliable puller (``--bind EP`` or ``--connect EP``, then puller options)."""
    return peer_process("puller", *args)


def subscriber_process(*args: str) -> AbstractAsyncContextManager[PeerProcess]:
    """A reliable subscriber (``--bind EP`` or ``--connect EP``, ``--topic PREFIX``...)."""
    return peer_process("subscriber", *args)
