"""The ZAP handler: authenticates a context's incoming CURVE connections from a Trust.

libzmq asks a ZAP handler (ZeroMQ RFC 27) about every handshake on a socket that
authenticates: it sends a request over ``inproc://zeromq.zap.01`` *of the same
context* and holds the handshake until the answer. The handler here binds that
endpoint with a ROUTER (a ``shoal._zmq._socket.Socket``, so the FD rules are kept) and
answers in the event loop's thread:

* request frames: ``[routing id, b"", b"1.0", request id, domain, address,
  routing id of the server socket, mechanism, credentials...]``;
* CURVE with one 32-byte credential: ``trust.allows(key, None)`` decides; ``200``
  with user id = the client's Z85 public key (receivers read it as the message
  property ``User-Id``; a named key also sets ``Trust-Name``), else ``400``;
* any other mechanism (``NULL``, ``PLAIN``...): ``400``, counted in
  ``wrong_mechanism``: with security on, only CURVE is admitted;
* anything malformed (wrong version, missing frames, a credential of the wrong size)
  or a policy that fails: ``500``, counted; the handler never stops for it.

libzmq behaviours this rests on (libzmq 4.3.5; checked by tests/security/test_security.py
unless marked "seen by hand"):

* No handler bound: a CURVE server admits *every* client (encryption without
  authentication), unless the server socket sets ``ZAP_DOMAIN`` and
  ``ZAP_ENFORCE_DOMAIN=1``: then every handshake fails until a handler is bound.
  ``shoal.security.server_options`` sets both, so a missing handler fails closed.
* The handshake waits for the answer, however slow, up to the server socket's
  ``HANDSHAKE_IVL`` (default 30 s); then the connection is dropped and the client
  reconnects, which makes a new request. A blocked event loop delays handshakes but
  admits nobody.
* A ``400`` makes the client's handshake fail with ``EVENT_HANDSHAKE_FAILED_AUTH``
  (value 400) and the client does **not** reconnect to that endpoint (a ``500``
  too, seen by hand): a refused peer stays away until it calls ``connect()`` again,
  so adding its key to a trusted-keys file admits it on its next connect, not by
  itself. (A ``300`` leaves the handshake hanging until ``HANDSHAKE_IVL``, seen by
  hand; this handler never sends it.)
* A client with the wrong server key fails the handshake before any ZAP request
  and keeps retrying; a client without CURVE is refused by the server before any
  ZAP request.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn

import anyio
import zmq
from anyio.abc import TaskStatus
from zmq.utils import z85

from shoal._io import WouldBlock
from shoal._zmq._socket import Socket
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import ShoalError, TransportError
from shoal.security._keys import SecurityError
from shoal.security._trust import Trust

__all__ = ["ZAP_ENDPOINT", "ZapHandler", "ZapStatistics", "open_zap_handler", "serve_zap"]

log = logging.getLogger("shoal")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
"""Where libzmq sends ZAP requests (fixed by RFC 27; one handler per context)."""

_VERSION = b"1.0"
_BATCH = 64
_MAX_LOGGED = 1024  # refused keys remembered so that each is logged at WARNING once


@dataclass(frozen=True, slots=True)
class ZapStatistics:
    """Counters of a ZAP handler at one moment."""

    requests: int
    """Requests read (every one was answered)."""
    allowed: int
    """CURVE clients admitted (``200``)."""
    refused: int
    """CURVE clients the trust policy refused (``400``); by reason in the policy's
    own ``statistics()``."""
    wrong_mechanism: int
    """Handshakes with another mechanism than CURVE (``400``)."""
    malformed: int
    """Requests that were not valid ZAP (``500``)."""
    errors: int
    """Requests the trust policy failed on (``500``; logged with the traceback)."""


def _metadata(properties: dict[str, bytes]) -> bytes:
    # ZMTP metadata: name length (1 byte), name, value length (4 bytes, big-endian), value
    out = bytearray()
    for name, value in properties.items():
        raw = name.encode("ascii")
        out += bytes([len(raw)]) + raw + len(value).to_bytes(4, "big") + value
    return bytes(out)


class ZapHandler:
    """Answers ZAP requests from ``trust``.

    The protocol is sans-I/O: ``answer(frames)`` turns one request (as a ROUTER
    receives it) into the reply to send. ``bind(context)``, ``serve()`` and
    ``close()`` drive it on the context's ZAP endpoint; ``serve_zap`` does all three.
    Raises ``SecurityError`` if ``trust`` is not a ``Trust``.
    """

    __slots__ = ("_counts", "_logged", "_sock", "trust")

    def __init__(self, trust: Trust) -> None:
        if not isinstance(trust, Trust):
            raise SecurityError(f"a ZAP handler needs a shoal.security.Trust, not {trust!r}")
        self.trust = trust
        self._counts = dict.fromkeys(
            ("requests", "allowed", "refused", "wrong_mechanism", "malformed", "errors"), 0)
        self._logged: set[bytes] = set()
        self._sock: Socket | None = None

    # -- driving it on a socket (serve_zap does all three) ------------------------------

    def bind(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Bind the ZAP endpoint on ``context`` now (synchronous, so an owner can do it
        before binding its CURVE servers); ``serve()`` then answers. Raises
        ``SecurityError`` if a handler is already bound there, or this one is bound."""
        if self._sock is not None:
            raise SecurityError("this ZAP handler is already bound; make one per context")
        try:
            self._sock = Socket.open(zmq.ROUTER, bind=[ZAP_ENDPOINT], context=context,
                                     linger_ms=0)
        except TransportError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SecurityError("a ZAP handler is already bound on this ZeroMQ "
                                    "context; run one per context") from None
            raise

    async def serve(self) -> NoReturn:
        """Answer requests until cancelled (then the endpoint stays bound, requests
        wait, until ``close()``). Raises ``SecurityError`` if not bound, ``ClosedError``
        if closed meanwhile."""
        sock = self._sock
        if sock is None:
            raise SecurityError("bind(context) the ZAP handler before serve()")
        checkpoint = sock.loop.checkpoint
        while True:
            # NOBLOCK first, wait only when drained (see shoal._zmq._socket): a request is taken
            # off the socket and answered with no checkpoint in between
            batch = sock.receive_batch_nowait(_BATCH)
            for frames in batch:
                try:
                    sock.send_nowait(self.answer(frames))
                except (WouldBlock, ShoalError):
                    pass  # the asking connection is gone (ROUTER drops unroutable replies)
            if batch:
                await checkpoint()
            else:
                await sock.wait_receivable()

    def close(self) -> None:
        """Unbind the endpoint and close the socket (before ``context.term()``, which
        waits for it). From then on handshakes on servers with ``server_options``
        fail. Idempotent; never checkpoints."""
        sock, self._sock = self._sock, None
        if sock is None or sock.closed:
            return
        # unbind first: libzmq frees the inproc name of a closed socket only later, in
        # its reaper thread, and a handler bound next must find it free
        try:
            sock.unbind(ZAP_ENDPOINT)
        except ShoalError:
            pass  # the context is terminating: the name goes with it
        sock.close()

    # -- the protocol ----------------------------------------------------------------------

    def statistics(self) -> ZapStatistics:
        """An immutable snapshot of the handler's counters."""
        return ZapStatistics(**self._counts)

    def answer(self, frames: list[bytes]) -> list[bytes]:
        """The reply frames (routing id first) for one request. Never raises."""
        self._counts["requests"] += 1
        route = frames[0] if frames else b""
        body = frames[2:] if len(frames) >= 2 and frames[1] == b"" else None
        request_id = body[1] if body is not None and len(body) >= 2 else b""

        def reply(status: bytes, text: str, user: bytes = b"", meta: bytes = b"") -> list[bytes]:
            return [route, b"", _VERSION, request_id, status, text.encode(), user, meta]

        def malformed(why: str) -> list[bytes]:
            self._counts["malformed"] += 1
            log.debug("ZAP handler: malformed request (%s)", why)
            return reply(b"500", f"malformed ZAP request: {why}")

        if body is None:
            return malformed("no empty delimiter frame after the routing id")
        if len(body) < 6:
            return malformed(f"{len(body)} frames, a request has at least 6")
        version, _, _domain, address, _identity, mechanism, *credentials = body
        if version != _VERSION:
            return malformed(f"version {version[:16]!r}, this handler speaks 1.0")
        if mechanism != b"CURVE":
            self._counts["wrong_mechanism"] += 1
            shown = mechanism[:16].decode("ascii", "replace")
            log.debug("ZAP handler: refused a %s handshake from %s (CURVE required)",
                      shown, address[:64].decode("ascii", "replace"))
            return reply(b"400", f"mechanism {shown} refused: CURVE required")
        if len(credentials) != 1 or len(credentials[0]) != 32:
            return malformed("a CURVE request carries one 32-byte public key")
        key = z85.encode(credentials[0])
        try:
            verdict = self.trust.allows(key, None)
        except Exception:
            # a policy bug must not stop the handler (every later handshake would
            # hang until HANDSHAKE_IVL): refuse this one and say why in the log
            self._counts["errors"] += 1
            log.exception("ZAP handler: the trust policy failed on key %s", key.decode())
            return reply(b"500", "internal error in the trust policy")
        if verdict.allowed:
            self._counts["allowed"] += 1
            meta = _metadata({"Trust-Name": verdict.name.encode()}) if verdict.name else b""
            return reply(b"200", "OK", key, meta)
        self._counts["refused"] += 1
        if key not in self._logged:
            if len(self._logged) >= _MAX_LOGGED:
                self._logged.clear()
            self._logged.add(key)
            log.warning("refused a CURVE connection from %s with key %s (%s): add the "
                        "key to this node's trusted keys to admit it",
                        address[:64].decode("ascii", "replace"), key.decode(), verdict.reason)
        return reply(b"400", f"key refused: {verdict.reason}")


async def serve_zap(
    context: zmq.Context[zmq.Socket[bytes]], trust: Trust, *,
    task_status: TaskStatus[ZapHandler] = anyio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Answer ZAP requests on ``context`` from ``trust`` until cancelled.

    For ``nursery.start`` (a trio nursery or an AnyIO task group): returns
    (``task_status.started``) the ``ZapHandler`` once the endpoint is bound, so every
    handshake from then on is asked about. Start it before binding any CURVE server
    socket on the context, and let it end before
    ``context.term()`` (which waits for its socket). Raises ``SecurityError`` if
    another handler is already bound on this context.
    """
    handler = ZapHandler(trust)
    handler.bind(context)
    try:
        task_status.started(handler)
        await handler.serve()
    finally:
        handler.close()


@asynccontextmanager
async def open_zap_handler(context: zmq.Context[zmq.Socket[bytes]], trust: Trust,
                           ) -> AsyncIterator[ZapHandler]:
    """``serve_zap`` as an ``async with`` block: the handler answers while the block
    runs and is unbound when it ends. An exception from the block comes out as
    itself, not in an ``ExceptionGroup``."""
    async with open_service_nursery() as nursery:
        handler: ZapHandler = await nursery.start(serve_zap, context, trust)
        try:
            yield handler
        finally:
            nursery.cancel_scope.cancel()
