"""Sending on a shoal socket: every libzmq call here keeps the rules of the socket
layer's theory of operation (``shoal._zmq._base``): try with NOBLOCK first, wait only
on ``zmq.Again``, and refresh the waiters after every call made while anybody waits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import zmq

from shoal._io import WouldBlock
from shoal._zmq._base import (
    _NOBLOCK,
    _SNDMORE,
    POLLOUT,
    YIELD_EVERY,
    SocketBase,
    _raw_send,
)
from shoal._zmq._context import map_error

__all__ = ["SendingSocket"]


class SendingSocket(SocketBase):
    """``send*`` and pacing: see ``SocketBase`` for the state they share."""

    __slots__ = ()

    # -- operations ----------------------------------------------------------------

    def send_nowait(self, msg: bytes | Sequence[bytes]) -> None:
        """Queue one message (bytes, or a list of frames). Raises ``WouldBlock``
        at the high-water mark (or, for PUSH/DEALER, with no peer connected)."""
        if not isinstance(msg, bytes) and len(msg) == 2:
            self.send_to_nowait(msg[0], msg[1])  # [routing id, frame]: ROUTER's hot path
            return
        self.check_open("send")
        try:
            if isinstance(msg, bytes):
                _raw_send(self._sock, msg, _NOBLOCK)
            else:
                self._sock.send_multipart(msg, _NOBLOCK)
        except zmq.Again:
            raise WouldBlock from None
        except zmq.ZMQError as exc:
            raise map_error(exc, "send") from None
        finally:
            self._after_call()

    def send_to_nowait(self, route: bytes, frame: bytes) -> None:
        """Send the two-frame message ``[route, frame]`` (a ROUTER's hot path, also
        what ``send_nowait`` does with a two-item list). Same errors."""
        self.check_open("send")
        sock = self._sock
        try:
            # A ROUTER queues a message's frames together or not at all, so a refusal
            # (Again, unroutable) can only come on the first frame.
            _raw_send(sock, route, _NOBLOCK | _SNDMORE)
            _raw_send(sock, frame, _NOBLOCK)
        except zmq.Again:
            raise WouldBlock from None
        except zmq.ZMQError as exc:
            raise map_error(exc, "send") from None
        finally:
            self._quiet = 0
            if self._parked:
                self._refresh()

    def send_split_nowait(self, route: bytes | None, head: bytes, body: bytes) -> None:
        """Send ``[route,] head, body``, the body without a copy (libzmq keeps a
        reference until it has gone out). For large bodies. Same errors as
        ``send_nowait``; a refusal can only come on the first frame, so a message is
        queued whole or not at all."""
        self.check_open("send")
        sock = self._sock
        try:
            if route is not None:
                _raw_send(sock, route, _NOBLOCK | _SNDMORE)
            _raw_send(sock, head, _NOBLOCK | _SNDMORE)
            _raw_send(sock, body, _NOBLOCK, False)
        except zmq.Again:
            raise WouldBlock from None
        except zmq.ZMQError as exc:
            raise map_error(exc, "send") from None
        finally:
            self._after_call()

    def send_batch_nowait(self, frames: Sequence[bytes | tuple[bytes, bytes]],
                          start: int = 0) -> int:
        """Send ``frames[start:]`` in order until the socket refuses one (high-water
        mark, or no peer); return how many went. Each item is a one-frame message,
        or ``(head, body)`` sent as ``send_split_nowait`` does. Never blocks; raises
        only if the very first send fails with an error other than a refusal."""
        self.check_open("send")
        sock = self._sock
        i = start
        n = len(frames)
        quiet = 0
        try:
            while i < n:
                f = frames[i]
                if type(f) is bytes:
                    _raw_send(sock, f, _NOBLOCK)
                else:
                    head, body = cast(tuple[bytes, bytes], f)
                    _raw_send(sock, head, _NOBLOCK | _SNDMORE)
                    _raw_send(sock, body, _NOBLOCK, False)
                i += 1
        except zmq.Again:
            quiet = POLLOUT
        except zmq.ZMQError as exc:
            if i == start:
                raise map_error(exc, "send") from None
        finally:
            self._settle(quiet)
        return i - start

    def send_routed_batch_nowait(self, routes: Sequence[bytes],
                                 frames: Sequence[bytes]) -> int:
        """Send ``[routes[i], frames[i]]`` in order (a ROUTER's batch) until one is
        refused (high-water mark, or a peer not connected); return how many went.
        Never blocks; EVENTS is re-read once, after the batch."""
        self.check_open("send")
        sock = self._sock
        i = 0
        n = len(frames)
        try:
            while i < n:
                _raw_send(sock, routes[i], _NOBLOCK | _SNDMORE)
                _raw_send(sock, frames[i], _NOBLOCK)
                i += 1
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH and i == 0:
                raise map_error(exc, "send") from None
        finally:
            self._after_call()
        return i

    async def send(self, msg: bytes | Sequence[bytes]) -> None:
        """Send, waiting while the socket cannot take the message.

        A cancellation point on every call; a scheduling point whenever it had to
        wait and otherwise once every ``YIELD_EVERY`` calls (see the module notes).
        Cancel-safe: if cancelled, the message was not queued.
        """
        await self._io.checkpoint_if_cancelled()
        try:
            self.send_nowait(msg)
        except WouldBlock:
            while True:
                await self._wait(POLLOUT)
                try:
                    self.send_nowait(msg)
                except WouldBlock:
                    continue
                break
            self._unyielded = 0
            await self._io.cancel_shielded_checkpoint()
            return
        await self.pace()

    async def pace(self) -> None:
        """The scheduling half of a checkpoint, taken once every ``YIELD_EVERY`` calls.

        For senders whose operation did not wait: call after the operation.
        Shielded, so it never raises ``Cancelled`` after the message has gone.
        """
        if self.due_to_yield():
            await self._io.cancel_shielded_checkpoint()

    def due_to_yield(self) -> bool:
        """Count one send; True once every ``YIELD_EVERY`` calls (then yield yourself:
        the inlined form of ``pace()`` for the hottest paths)."""
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            return True
        return False
