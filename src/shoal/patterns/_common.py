"""What every pattern shares: endpoint arguments, the sending stamp, and the
buffered receive path.

The receive path is built around batches (DESIGN.md: per-message trio hand-offs cap
throughput at a fifth of a batched reader). ``BufferedReceiver.receive()`` serves a
local buffer of already-decoded messages without a scheduling round-trip; only when
the buffer is empty does it drain the socket (everything queued, up to ``batch``
messages, decoding each and dropping malformed ones) and then yield once.

Pullers and subscribers fill the buffer through ``Socket.drain`` with a closure from
``shoal._core.fast_decoder`` (one Python call per message: the common envelope
decoded inline, anything else judged by the full decoder); repliers and the reliable
receivers through ``Socket.drain_routed`` (each frame with the route it came on).

Cancel safety: messages move from libzmq into the buffer synchronously and leave the
buffer only by being returned, so a cancelled ``receive()`` loses nothing.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, TypeVar

import anyio.abc
import zmq

from shoal._core import Identity, Kind, Message, StreamEncoder, decode, encode_topic
from shoal._io import WouldBlock, have_trio
from shoal._process import next_stream, process_identity
from shoal._zmq._socket import Socket
from shoal.errors import ClosedError, DecodeError, LocalProtocolError

__all__ = [
    "DEFAULT_BATCH",
    "BufferedReceiver",
    "Endpoints",
    "MalformedCounter",
    "PublishItem",
    "SocketResource",
    "check_busy_poll",
    "check_limits",
    "check_reliable_pubsub_args",
    "endpoint_list",
    "open_socket",
    "publish_item",
    "stream_encoder",
    "with_busy_poll",
]

log = logging.getLogger("shoal")

Endpoints = str | Sequence[str] | None
T = TypeVar("T")

DEFAULT_BATCH = 512
"""Messages drained from the socket per scheduling round-trip, at most."""


def endpoint_list(value: Endpoints, name: str) -> list[str]:
    """Normalise a ``bind=``/``connect=`` argument to a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise LocalProtocolError(f"{name}= takes an endpoint string or a list of them, not {value!r}")


def require_endpoints(bind: list[str], connect: list[str], what: str) -> None:
    if not bind and not connect:
        raise LocalProtocolError(
            f"{what} needs somewhere to talk: pass bind='tcp://127.0.0.1:*' and/or "
            "connect='tcp://HOST:PORT' (ipc:// and inproc:// work too)")


def stream_encoder(identity: Identity | None, sock: Socket) -> StreamEncoder:
    """An encoder for a new stream of ``identity`` (default: the process identity),
    refusing messages over ``sock``'s ``max_message_size``."""
    ident = identity if identity is not None else process_identity()
    return StreamEncoder(sender=ident.sender, epoch=ident.epoch, stream=next_stream(),
                         max_size=sock.max_message_size)


def check_limits(*, high_water_mark: int, batch: int = 1) -> None:
    """Refuse tuning values that cannot work, before any socket is opened."""
    if not isinstance(high_water_mark, int) or high_water_mark < 0:
        raise LocalProtocolError(
            f"high_water_mark must be an int >= 0 (0 means no limit), not {high_water_mark!r}")
    if not isinstance(batch, int) or batch < 1:
        raise LocalProtocolError(f"batch must be an int >= 1, not {batch!r}")


def check_reliable_pubsub_args(*, window: int = 1, rto: float = 1.0, grace: float = 1.0,
                               heartbeat: float = 1.0) -> None:
    """Refuse values that cannot work. (``grace`` should exceed a few of the
    subscribers' ``heartbeat``s, 0.5 s by default; each side only knows its own.)"""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise LocalProtocolError(f"window must be an int >= 1, not {window!r}")
    for name, value in (("rto", rto), ("grace", grace), ("heartbeat", heartbeat)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise LocalProtocolError(f"{name} must be a number > 0, not {value!r}")


def open_socket(
    what: str,
    socket_type: int,
    *,
    bind: Endpoints,
    connect: Endpoints,
    high_water_mark: int,
    batch: int = 1,
    context: zmq.Context[zmq.Socket[bytes]] | None,
    linger_ms: int,
    options: Sequence[tuple[int, int | bytes]] = (),
    endpoints_checked: bool = False,
) -> Socket:
    """What every ``open_*`` starts with: check the arguments (each mistake raises
    before anything is opened), then create, bind and connect the socket.
    ``endpoints_checked``: the caller checked them (and connects later itself)."""
    b, c = endpoint_list(bind, "bind"), endpoint_list(connect, "connect")
    if not endpoints_checked:
        require_endpoints(b, c, what)
    check_limits(high_water_mark=high_water_mark, batch=batch)
    return Socket.open(socket_type, bind=b, connect=c, context=context, linger_ms=linger_ms,
                       options=options)


R = TypeVar("R")

PublishItem = tuple[str, Any] | tuple[str, Any, Mapping[str, Any] | None]
"""What ``publish_many`` takes: ``(topic, body)`` or ``(topic, body, headers)``."""


def publish_item(item: object) -> tuple[str, Any, Mapping[str, Any] | None]:
    """Unpack one ``publish_many`` item, or raise ``LocalProtocolError`` (an item that
    is not such a tuple) or ``EncodeError`` (a topic that is not a ``str``)."""
    if isinstance(item, tuple) and len(item) in (2, 3):
        if type(item[0]) is not str:
            encode_topic(item[0])  # raises the EncodeError that says what to do
        return item[0], item[1], (item[2] if len(item) == 3 else None)
    raise LocalProtocolError(f"publish_many takes (topic, body) or (topic, body, headers) "
                             f"tuples, not {item!r}")


def check_busy_poll(busy_poll: object) -> float:
    """Refuse a ``busy_poll=`` that is not a number of seconds >= 0."""
    if (isinstance(busy_poll, bool) or not isinstance(busy_poll, int | float)
            or not busy_poll >= 0 or busy_poll == float("inf")):
        raise LocalProtocolError(f"busy_poll is a number of seconds >= 0 (0: off), not "
                                 f"{busy_poll!r}")
    return float(busy_poll)


def with_busy_poll(
    cm: AbstractAsyncContextManager[R], busy_poll: float
) -> AbstractAsyncContextManager[R]:
    """``cm``, whose resource's socket busy-polls for ``busy_poll`` seconds before
    parking on its FD (see ``Socket.busy_poll``). Checked before anything opens."""
    if check_busy_poll(busy_poll) == 0.0:
        return cm
    return _busy_polling(cm, busy_poll)


@asynccontextmanager
async def _busy_polling(cm: AbstractAsyncContextManager[R], busy_poll: float) -> AsyncIterator[R]:
    async with cm as resource:
        resource._sock.busy_poll = busy_poll  # type: ignore[attr-defined]
        yield resource


class MalformedCounter:
    """Counts dropped input by reason, and logs it at DEBUG."""

    __slots__ = ("by_reason", "total")

    def __init__(self) -> None:
        self.total = 0
        self.by_reason: dict[str, int] = {}

    def drop(self, reason: str, where: str, detail: str = "") -> None:
        self.total += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        log.debug("%s dropped a malformed message (%s) %s", where, reason, detail)

    def drop_error(self, exc: DecodeError, where: str) -> None:
        self.drop(exc.reason, where, exc.detail)

    def check_frame(
        self, sock: Socket, frame: bytes, kinds: tuple[Kind, ...], where: str,
        more: bool = False,
    ) -> Message | None:
        """Decode a message whose first frame ``drain`` handed over; otherwise like
        ``check``. A first frame that announces a split body takes the rest of the
        message from ``sock``. ``more`` (routers, which must always know): frames
        follow; unless the first frame announces them, that is a ``frame-count``."""
        rest: Sequence[Any] = ()
        try:
            try:
                msg = decode(frame)
            except DecodeError as exc:
                if exc.reason != "frame-count":
                    raise
                rest = sock.take_rest()  # a split message: its body follows
                if not rest:
                    raise
                msg = decode(frame, rest)
            else:
                if more:
                    raise DecodeError("frame-count", "frames after a whole message")
        except DecodeError as exc:
            if more and not rest:
                sock.take_rest()
                if exc.reason != "frame-count":
                    exc = DecodeError("frame-count", f"several frames ({exc.reason})")
            self.drop_error(exc, where)
            return None
        if rest and sock.inproc:  # libzmq applies the size bound on tcp and ipc only
            size = len(frame) + sum(len(f) for f in rest)
            if size > sock.max_message_size:
                self.drop("too-large", where, f"{size} bytes > {sock.max_message_size}")
                return None
        if msg.kind not in kinds:
            self.drop("unexpected-kind", where, msg.kind.name)
            return None
        return msg

    def check(
        self, frames: list[bytes], kinds: tuple[Kind, ...], where: str, *, nframes: int = 1,
        split: bool = False,
    ) -> Message | None:
        """Decode the envelope in the last of ``nframes`` frames if it is one of
        ``kinds``; otherwise count why it was dropped and return None. ``split``: the
        envelope may announce its body in one more frame (a large body)."""
        try:
            if len(frames) == nframes:
                msg = decode(frames[-1])
            elif split and len(frames) > nframes:
                msg = decode_split(frames[nframes - 1], frames[nframes:])
            else:
                self.drop("frame-count", where, str(len(frames)))
                return None
        except DecodeError as exc:
            self.drop_error(exc, where)
            return None
        if msg.kind not in kinds:
            self.drop("unexpected-kind", where, msg.kind.name)
            return None
        return msg


def decode_split(head: bytes, rest: Sequence[bytes]) -> Message:
    """Decode a message of several frames: valid only as a head announcing a split
    body and that body; anything else is a ``frame-count``."""
    try:
        decode(head)
    except DecodeError as exc:
        if exc.reason != "frame-count":
            raise DecodeError("frame-count", f"several frames ({exc.reason})") from None
        return decode(head, rest)
    raise DecodeError("frame-count", "frames after a whole message")


class SocketResource(anyio.abc.AsyncResource):
    """What the sending resources share: endpoints, closing, ``async with`` (an
    ``anyio.abc.AsyncResource``, and a ``trio.abc.AsyncResource`` with trio installed:
    ``aclose()`` always closes, and leaving the block calls it)."""

    _sock: Socket

    @property
    def endpoints(self) -> list[str]:
        """Endpoints this resource is bound to (ports resolved)."""
        return list(self._sock.bound)

    async def aclose(self) -> None:
        """Close; unsent messages get the socket's LINGER time to leave. Always closes."""
        self._sock.close()
        await self._sock.loop.checkpoint()


class BufferedReceiver(anyio.abc.ObjectReceiveStream[T], Generic[T]):
    """A receive channel over a ZeroMQ socket with a local decoded buffer: an
    ``anyio.abc.ObjectReceiveStream`` (``receive()``, ``aclose()``, ``async for``,
    ``async with``), and with trio installed a ``trio.abc.ReceiveChannel`` too.

    Subclasses implement ``_accept(frames)``: decode one raw message and either
    append the result to ``self._buffer`` or count it as dropped. Receivers of
    one-frame messages set ``_accept_frame`` instead (a callable taking the message's
    first frame as ``bytes``), and the buffer is filled through ``Socket.drain``,
    the hot path: plain receives, no frame lists.
    """

    _accept_frame: Callable[[bytes], None] | None = None

    def _accept_routed(self, route: bytes, frame: bytes, more: bool) -> None:
        """Routers (``_routed = True``) implement this instead: one message, drained
        by ``Socket.drain_routed``; it counts what it delivers in ``_received``."""
        raise NotImplementedError

    _routed = False

    def __init__(self, sock: Socket, *, batch: int = DEFAULT_BATCH) -> None:
        check_limits(high_water_mark=0, batch=batch)
        self._sock = sock
        self._io = sock.loop
        self._batch = batch
        self._buffer: deque[T] = deque()
        self._malformed = MalformedCounter()
        self._received = 0

    @property
    def endpoints(self) -> list[str]:
        """Endpoints this resource is bound to (ports resolved)."""
        return list(self._sock.bound)

    def _accept(self, frames: list[bytes]) -> None:
        raise NotImplementedError

    def _before_wait(self) -> None:
        """Called when ``receive`` is about to wait for the socket (nothing to hand
        out): the moment to send what the receiver owes its peers."""

    def _fill(self) -> int:
        """Drain what is queued into the buffer; return how many raw messages came."""
        sock = self._sock
        accept_frame = self._accept_frame
        if self._routed:  # routers' _accept_routed counts what it takes itself
            accept_routed: Callable[[bytes, bytes, bool], None] = self._accept_routed
            if sock.inproc:
                accept_routed = self._bounded_routed(accept_routed)
            return sock.drain_routed(self._batch, accept_routed)
        if accept_frame is not None:
            if sock.inproc:
                accept_frame = self._bounded(accept_frame)
            before = len(self._buffer)
            n = sock.drain(self._batch, accept_frame)
            self._received += len(self._buffer) - before
            return n
        raws = sock.receive_batch_nowait(self._batch)
        accept = self._accept
        if not sock.inproc:  # libzmq enforces the size limit (it drops the connection)
            for frames in raws:
                accept(frames)
            return len(raws)
        # inproc bypasses libzmq's limit: the same bound, before anything is decoded
        limit = sock.max_message_size
        for frames in raws:
            if frames and len(frames[-1]) > limit:
                self._malformed.drop("too-large", type(self).__name__,
                                     f"{len(frames[-1])} bytes > {limit}")
                continue
            accept(frames)
        return len(raws)

    def _bounded_routed(
        self, accept: Callable[[bytes, bytes, bool], None]
    ) -> Callable[[bytes, bytes, bool], None]:
        limit = self._sock.max_message_size
        malformed = self._malformed
        where = type(self).__name__

        def bounded(route: bytes, frame: bytes, more: bool) -> None:
            if len(frame) > limit:
                malformed.drop("too-large", where, f"{len(frame)} bytes > {limit}")
            else:
                accept(route, frame, more)
        return bounded

    def _bounded(self, accept: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """``accept`` behind the size bound that libzmq does not apply on inproc."""
        limit = self._sock.max_message_size
        malformed = self._malformed
        where = type(self).__name__

        def bounded(frame: bytes) -> None:
            if len(frame) > limit:
                malformed.drop("too-large", where, f"{len(frame)} bytes > {limit}")
            else:
                accept(frame)
        return bounded

    def receive_nowait(self) -> T:
        """Return the next message if one is already here, else raise
        ``shoal.errors.WouldBlock`` (also ``anyio.WouldBlock`` and ``trio.WouldBlock``)."""
        if not self._buffer:
            if self._sock.closed:
                raise ClosedError("this receiver is closed; open a new one")
            self._fill()
            if not self._buffer:
                raise WouldBlock
        return self._buffer.popleft()

    async def receive(self) -> T:
        """Wait for the next message. Cancel-safe: a cancelled call loses nothing.

        Raises ``shoal.errors.ClosedError`` (a ``ClosedResourceError`` of AnyIO and
        of trio) once the receiver is closed.
        """
        await self._io.checkpoint_if_cancelled()
        buffer = self._buffer
        if buffer:
            return buffer.popleft()
        if self._sock.closed:
            raise ClosedError("this receiver is closed; open a new one")
        waited = False
        while True:
            if self._fill() == 0:
                self._before_wait()
                await self._sock.wait_receivable()  # always a real scheduling point
                waited = True
                continue
            if not waited:
                # A batch that was already queued: yield once for it, shielded (it is
                # buffered now). After a wait we have yielded already; skipping the
                # second round trip keeps it off the request/reply latency path.
                await self._io.cancel_shielded_checkpoint()
            if buffer:
                return buffer.popleft()
            waited = False  # a batch of garbage only: look again, yielding per batch
            await self._io.checkpoint_if_cancelled()

    async def receive_batch(self) -> list[T]:
        """Wait for at least one message, then return every message already here."""
        first = await self.receive()
        rest = list(self._buffer)
        self._buffer.clear()
        return [first, *rest]

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except anyio.ClosedResourceError:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Close the socket; waiting tasks get ``ClosedError``. Always closes."""
        self._sock.close()
        await self._io.checkpoint()


if have_trio:
    # trio's contracts, for trio programs that type against them: registered as
    # virtual subclasses, so an asyncio-only install defines the same classes.
    import trio as _trio

    _trio.abc.AsyncResource.register(SocketResource)
    _trio.abc.ReceiveChannel.register(BufferedReceiver)
