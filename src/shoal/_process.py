"""The process's default sender identity and stream numbering.

Resources opened without a node share one process-wide identity (a random 128-bit
sender id and a random 32-bit epoch, fresh for every process) and each takes its own
stream number, so ``(sender, epoch, stream, seq)`` is unique across the process.
"""

from __future__ import annotations

import itertools
import os
import secrets

from shoal._core import Identity

__all__ = ["new_identity", "next_stream", "process_identity"]

_streams = itertools.count(1)
_process: Identity | None = None
_pid = 0


def new_identity() -> Identity:
    """A fresh random identity."""
    return Identity(sender=os.urandom(16), epoch=secrets.randbits(32))


def process_identity() -> Identity:
    """This process's default identity (a forked child gets its own)."""
    global _process, _pid
    if _process is None or _pid != os.getpid():
        _process = new_identity()
        _pid = os.getpid()
    return _process


def next_stream() -> int:
    """A stream number not used before in this process (fits the envelope's u32)."""
    return next(_streams) & 0xFFFFFFFF
