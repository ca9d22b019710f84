"""Receiving on a shoal socket: ``drain`` / ``drain_routed`` (the hot path: plain
``bytes`` handed to a callback as they come) and frame lists for multi-frame control
traffic, under the rules of the socket layer's theory of operation
(``shoal._zmq._base``)."""

from __future__ import annotations

from collections.abc import Callable

import zmq

from shoal._zmq._base import (
    _ASK_EVENTS_BELOW,
    _EVENTS,
    _NOBLOCK,
    _RCVMORE,
    POLLIN,
    SocketBase,
    _raw_get,
    _raw_recv,
)
from shoal._zmq._context import map_error

__all__ = ["ReceivingSocket"]


class ReceivingSocket(SocketBase):
    """``drain*`` and ``receive*``: see ``SocketBase`` for the state they share."""

    __slots__ = ()

    def _receive_plan(self, limit: int) -> tuple[int, int]:
        """``(limit, receives that ask EVENTS first)`` for a drain: right after a wait
        for POLLIN ended, one message, tried at once (the wake is nearly always it)."""
        if self._woke:
            self._woke = False
            return 1, 0
        return limit, _ASK_EVENTS_BELOW

    def receive_batch_nowait(self, limit: int) -> list[list[bytes]]:
        """Take up to ``limit`` messages that are already queued, without blocking.

        Each message is its list of frames. Returns ``[]`` when nothing is queued.
        For multi-frame traffic (routers, control); ``drain`` is the single-frame
        hot path.
        """
        self.check_open("receive")
        out: list[list[bytes]] = []
        sock = self._sock
        quiet = 0
        limit, ask = self._receive_plan(limit)
        try:
            # pyzmq's zmq.Again costs about two EVENTS reads (measured), so ask EVENTS
            # while the batch is small (the latency path: one message, or none) and let
            # Again end the long batches. Reading EVENTS consumes the edge just as a
            # failed recv does, so a caller may wait on the FD after an empty result.
            while len(out) < limit:
                if len(out) < ask and not _raw_get(sock, _EVENTS) & POLLIN:
                    quiet = POLLIN
                    break
                # A zero-copy Frame tells ``more`` without a getsockopt(RCVMORE) call,
                # which costs more than the receive itself for small messages.
                frame = _raw_recv(sock, _NOBLOCK, False)
                if frame.more:
                    parts = [frame.bytes]
                    while frame.more:
                        frame = _raw_recv(sock, _NOBLOCK, False)
                        parts.append(frame.bytes)
                    out.append(parts)
                else:
                    out.append([frame.bytes])
        except zmq.Again:
            quiet = POLLIN
        except zmq.ZMQError as exc:
            if not out:
                raise map_error(exc, "receive") from None
            # hand over what we have; the error recurs on the next call
        finally:
            self._settle(quiet)
        return out

    def drain(self, limit: int, accept: Callable[[bytes], object]) -> int:
        """Take up to ``limit`` queued messages, handing each one's first frame to
        ``accept`` as plain ``bytes``; return how many were taken. Never blocks.

        The hot path of single-frame sockets (PULL, SUB, DEALER): a plain receive costs
        a quarter of a zero-copy ``Frame``. ``accept`` may call ``take_rest()`` for the
        rest of a message whose first frame announces more (a split envelope); other
        extra frames are not looked for, and come through ``accept`` one by one.

        Right after a wait for POLLIN ended, the first receive is tried without an
        EVENTS read and only that one message is taken (the latency path: the next
        call asks EVENTS anyway before anybody parks).
        """
        self.check_open("receive")
        sock = self._sock
        quiet = 0
        limit, ask = self._receive_plan(limit)
        i = 0  # messages taken so far
        try:
            while i < limit and i < ask:
                if not _raw_get(sock, _EVENTS) & POLLIN:
                    quiet = POLLIN
                    return i
                frame = _raw_recv(sock, _NOBLOCK)
                i += 1
                accept(frame)
            # A long batch: the tightest loop, ended by the limit or by Again (one
            # raise per batch costs less than an EVENTS read per message). When a
            # receive fails at index i, i messages were taken before it.
            for i in range(i, limit):  # noqa: B007, B020 (i is read after the loop)
                accept(_raw_recv(sock, _NOBLOCK))
            else:
                i = limit
        except zmq.Again:
            quiet = POLLIN
        except zmq.ZMQError as exc:
            if not i:
                raise map_error(exc, "receive") from None
        finally:
            self._settle(quiet)
        return i

    def drain_routed(self, limit: int, accept: Callable[[bytes, bytes, bool], object]) -> int:
        """``drain`` for ROUTER sockets: ``accept(route, frame, more)`` per message,
        ``more`` telling whether frames follow ``frame``. ``accept`` takes them with
        ``take_rest()``; any it leaves are discarded, so the next message starts on
        its routing id (a router must never lose track of where messages begin)."""
        self.check_open("receive")
        sock = self._sock
        n = 0
        quiet = 0
        limit, ask = self._receive_plan(limit)
        try:
            while n < limit:
                if n < ask and not _raw_get(sock, _EVENTS) & POLLIN:
                    quiet = POLLIN
                    break
                route = _raw_recv(sock, _NOBLOCK)
                f = _raw_recv(sock, _NOBLOCK, False)
                n += 1
                more = self._rest = f.more
                accept(route, f.bytes, more)
                if self._rest:
                    self.take_rest()
        except zmq.Again:
            quiet = POLLIN
        except zmq.ZMQError as exc:
            if not n:
                raise map_error(exc, "receive") from None
        finally:
            self._rest = False
            self._settle(quiet)
        return n

    def take_rest(self) -> list[bytes]:
        """The frames left of the message ``drain`` is handing over, or ``[]`` if it
        has no more. Only from inside a ``drain`` or ``drain_routed`` callback, before
        it returns. Each is copied once, from libzmq's buffer into its ``bytes`` (for
        a large body, cheaper than a zero-copy frame whose buffer the main thread
        then has to free)."""
        sock = self._sock
        out: list[bytes] = []
        try:
            more = self._rest or _raw_get(sock, _RCVMORE)
            while more:
                out.append(_raw_recv(sock, _NOBLOCK))
                more = _raw_get(sock, _RCVMORE)
        except zmq.ZMQError:
            pass  # a message's frames arrive together: this is the socket closing
        self._rest = False
        return out

    def receive_frames_nowait(self, limit: int) -> list[list[zmq.Frame]]:
        """Like ``receive_batch_nowait``, but each frame is a ``zmq.Frame``, whose
        connection metadata (``frame.get("User-Id")``: the ZAP-authenticated key) can be
        read. Slower than the bytes path: for control traffic, not the hot path."""
        self.check_open("receive")
        out: list[list[zmq.Frame]] = []
        try:
            while len(out) < limit:
                out.append(self._sock.recv_multipart(_NOBLOCK, copy=False))
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            if not out:
                raise map_error(exc, "receive") from None
        finally:
            self._after_call()
        return out
