"""The exporter's HTTP server: one route (``GET /metrics``), served from the event loop
(trio or asyncio).

Contract:

* Each connection carries one request and is closed after its response (no
  keep-alive, no request body). A request head over ``MAX_REQUEST_BYTES`` is answered
  431; a connection not answered within ``timeout`` seconds is cut off; at most
  ``max_connections`` are served at once (more are closed unanswered). Every
  connection ends in one outcome, counted in ``outcomes`` (the page reports them).
* ``handle`` never raises: a misbehaving client, or a page that fails to render, never
  takes the exporter (or the application around it) down.
* No thread is started: the caller accepts the connections (on AnyIO listeners) and
  runs ``handle`` on each, in a task of its own.

Why it is written here rather than taken from a library: the protocol it needs is a
request line and a blank line, and what matters (the limits, the timeout, the
connection cap, draining before close) is ours to decide in any server.
``prometheus_client``'s own server runs in threads, which shoal does not start;
a general ASGI server would bring a dependency tree for a single route.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Literal

import anyio
from anyio.abc import ByteStream

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "MAX_REQUEST_BYTES", "MetricsServer",
           "Outcome"]

log = logging.getLogger("shoal")

MAX_REQUEST_BYTES = 8192
"""Largest request head (request line and headers) the exporter reads."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a connection may take, from accept to response sent, before it is cut off."""
DEFAULT_MAX_CONNECTIONS = 16
"""Connections served at once; further ones are closed without an answer."""

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.([01])")
# How long, after the response, a connection is drained so that closing it does not
# reset it (and destroy the response) while the client's bytes are still arriving.
_LINGER = 1.0
_LINGER_BYTES = 65536

Outcome = Literal["ok", "not_found", "method_not_allowed", "bad_request", "too_large",
                  "timeout", "busy", "empty", "error"]

Render = Callable[[], tuple[bytes, str]]
"""Makes the page: (body, content type). May raise: the client is then answered 500."""


class MetricsServer:
    """Answers ``GET /metrics`` (and ``HEAD``) with what ``render`` makes; ``handle`` is
    what to run on each accepted connection."""

    def __init__(self, render: Render, *, timeout: float, max_connections: int) -> None:
        self._render = render
        self._timeout = timeout
        self._max_connections = max_connections
        self._active = 0
        self.outcomes: dict[str, int] = {}
        """Connections served so far, by outcome."""

    @property
    def active(self) -> int:
        """Connections being served now."""
        return self._active

    async def handle(self, stream: ByteStream) -> None:
        """One connection: one request, one response, closed. Never raises."""
        if self._active >= self._max_connections:
            self._count("busy")
            await anyio.aclose_forcefully(stream)
            return
        self._active += 1
        outcome: Outcome = "error"
        try:
            with anyio.move_on_after(self._timeout) as scope:
                outcome = await self._exchange(stream)
            if scope.cancelled_caught:
                outcome = "timeout"
            elif outcome != "empty":
                await _linger(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client went away: "error", unless it had been answered
        except Exception:
            # a bug here must not crash the application embedding the exporter
            outcome = "error"
            log.exception("the Prometheus exporter failed on a connection")
        finally:
            self._active -= 1
            self._count(outcome)
            await anyio.aclose_forcefully(stream)

    def _count(self, outcome: Outcome) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def _exchange(self, stream: ByteStream) -> Outcome:
        """Read one request and answer it; the outcome (set before the answer is sent,
        so a client that leaves while reading it still counts as answered)."""
        head = await _read_head(stream)
        if head is None:
            await _respond(stream, 431, "Request Header Fields Too Large",
                           b"request head too large\n")
            return "too_large"
        if not head:
            return "empty"  # connected and closed without a request (a port probe)
        first = head.split(b"\n", 1)[0].rstrip(b"\r")
        match = _REQUEST_LINE.fullmatch(first.decode("latin-1"))
        if match is None:
            await _respond(stream, 400, "Bad Request", b"not an HTTP/1.x request\n")
            return "bad_request"
        method, target = match.group(1), match.group(2)
        if target.split("?", 1)[0] != "/metrics":
            await _respond(stream, 404, "Not Found", b"metrics are at /metrics\n")
            return "not_found"
        if method not in ("GET", "HEAD"):
            await _respond(stream, 405, "Method Not Allowed", b"use GET\n",
                           extra=b"Allow: GET, HEAD\r\n")
            return "method_not_allowed"
        try:
            body, content_type = self._render()
        except Exception:
            log.exception("the Prometheus exporter failed to render the metrics")
            await _respond(stream, 500, "Internal Server Error", b"see the server's log\n")
            return "error"
        await _respond(stream, 200, "OK", body, content_type=content_type,
                       head_only=method == "HEAD")
        return "ok"


async def _read_head(stream: ByteStream) -> bytes | None:
    """The request head; b"" if the client closed first; None if it is too large."""
    buf = bytearray()
    while True:
        try:
            chunk = await stream.receive(MAX_REQUEST_BYTES + 1 - len(buf))
        except anyio.EndOfStream:
            return b""
        # search from a little before the new bytes: the terminator may straddle chunks
        start = max(0, len(buf) - 3)
        buf += chunk
        end = _HEAD_END.search(buf, start)
        if end is not None:
            return bytes(buf[:end.start()])
        if len(buf) > MAX_REQUEST_BYTES:
            return None


async def _respond(stream: ByteStream, code: int, reason: str, body: bytes, *,
                   content_type: str = "text/plain; charset=utf-8", extra: bytes = b"",
                   head_only: bool = False) -> None:
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode("latin-1")
    await stream.send(head + extra + b"\r\n" + (b"" if head_only else body))


async def _linger(stream: ByteStream) -> None:
    """Half-close, then read (and drop) what the client still sends until it closes,
    briefly: closing with unread bytes would reset the connection, and a reset can
    destroy a response the client has not read yet."""
    await stream.send_eof()
    drained = 0
    with anyio.move_on_after(_LINGER):
        while drained < _LINGER_BYTES:
            try:
                chunk = await stream.receive(16384)
            except anyio.EndOfStream:
                return
            drained += len(chunk)
