"""The event-loop seam: what shoal needs from trio or asyncio, and nothing else.

shoal runs under trio and under asyncio (uvloop included) with one code base. Two
kinds of call cross the seam:

* **Structure** (task groups, cancel scopes, sleeps, threads, listeners) is written
  against AnyIO everywhere: it is not on any per-message path, and AnyIO gives both
  worlds the same semantics.
* **The hot path** (the socket layer's FD waits and parking, the checkpoints of a send
  or a receive, the clock a drain reads, the per-request wake) goes through a
  ``Loop`` object picked once, when a resource opens (``current()``). Under trio its
  attributes *are* trio's own functions (``TRIO.wait_readable is
  trio.lowlevel.wait_readable``), so the trio path pays one attribute lookup and no
  wrapper; under asyncio they are the small implementations in ``_asyncio``.

Exceptions: ``WouldBlock`` and ``shoal.errors.ClosedError`` derive from AnyIO's
classes, and from trio's too when trio is installed, so ``except trio.WouldBlock``
keeps working in trio programs and an asyncio program never needs trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import sniffio

from shoal._core._errors import ShoalError
from shoal._io._loop import Loop

__all__ = ["Loop", "WouldBlock", "current", "have_trio", "loop_name"]

try:
    import trio as _trio
except ImportError:  # pragma: no cover - the asyncio-only install
    _trio = None  # type: ignore[assignment]

have_trio = _trio is not None
"""Whether trio is installed (the ``trio`` extra)."""

if TYPE_CHECKING or have_trio:

    class WouldBlock(ShoalError, anyio.WouldBlock, _trio.WouldBlock):
        """Raised by a ``*_nowait`` call that cannot complete now. It is an
        ``anyio.WouldBlock`` and, with trio installed, a ``trio.WouldBlock``."""

else:  # pragma: no cover - the asyncio-only install

    class WouldBlock(ShoalError, anyio.WouldBlock):
        """Raised by a ``*_nowait`` call that cannot complete now (``anyio.WouldBlock``)."""


WouldBlock.__module__ = "shoal.errors"

_TRIO: Loop | None = None
_ASYNCIO: Loop | None = None


def loop_name() -> str | None:
    """``"trio"`` or ``"asyncio"`` for the running event loop, or None outside one."""
    try:
        name = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None
    return name if name in ("trio", "asyncio") else None


def current() -> Loop:
    """The hot-path primitives of the running event loop. Raises ``RuntimeError``
    outside trio and asyncio (the socket layer turns it into ``NoEventLoop``)."""
    global _TRIO, _ASYNCIO
    name = loop_name()
    if name == "trio":
        if _TRIO is None:
            from shoal._io._trio import TrioLoop
            _TRIO = TrioLoop()
        return _TRIO
    if name == "asyncio":
        if _ASYNCIO is None:
            from shoal._io._asyncio import AsyncioLoop
            _ASYNCIO = AsyncioLoop()
        return _ASYNCIO
    raise RuntimeError("no trio or asyncio event loop is running")


