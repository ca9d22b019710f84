"""The event loop <-> pyzmq: the only module that touches a ZeroMQ file descriptor.

Facts this rests on (see DESIGN.md): ``zmq.FD`` is edge-triggered and only ever
readable; readable means "ZMQ_EVENTS may have changed". *Any* call into libzmq on the
socket (send, recv, reading EVENTS, subscribe, connect...) may consume that edge, and
a task parked on the FD then sleeps although messages are queued. trio allows one
waiter per FD.

Theory of operation:

* Operations never wait first. They try with ``NOBLOCK``; only ``zmq.Again`` leads to
  a wait, and after the wait the caller tries again (spurious wake-ups are allowed).
* At most one task, the *watcher*, waits on the FD. Every other waiting task parks in
  a ParkingLot for the event it wants (POLLIN or POLLOUT).
* Every libzmq call made while anybody waits is followed, with no checkpoint in
  between, by ``_refresh()``: read ``EVENTS``, unpark every task whose event is ready,
  and wake the watcher from its FD wait (``notify_closing``, see ``_poke_watcher``) if
  *its* event is ready. So an edge consumed by one
  task's call is always acted on for the others. With nobody waiting, the refresh is
  skipped: the next waiter tries its operation before it waits.
* No wait parks after a libzmq call without re-reading EVENTS. The socket remembers
  which events it last *saw* missing (an EVENTS read, or a recv/send that failed with
  Again) and forgets it on every other libzmq call; ``_wait`` re-reads EVENTS first
  unless the event it wants is known missing since. So a caller that sends (say,
  acknowledgements) between finding nothing and waiting cannot sleep through the
  message whose edge that send consumed, whatever pattern it belongs to.
* A receiver woken from the FD tries its receive at once (``drain`` skips the EVENTS
  read and takes that one message): the wake is nearly always its message, and a
  receive costs a fraction of an EVENTS read (~1.4 us, a system call in libzmq).
* ``busy_poll`` (seconds, default 0): before parking, a wait reads EVENTS in a loop
  for up to that long, with no checkpoint, trading a core for the wake-up latency.
* When the watcher stops watching (its event came, or it was cancelled), it unparks
  one parked task, which becomes the next watcher.
* Closing: mark closed, ``notify_closing(fd)`` (the watcher wakes with
  ``ClosedResourceError``), unpark everyone (they retry and see the socket closed),
  then close the zmq socket with a bounded LINGER, so neither close nor a later
  ``Context.term()`` can hang on unsent messages.

Scheduling: a trio scheduling round-trip costs several times a ZeroMQ send (an epoll
call per round), so ``send()`` checks for cancellation on every call but yields to the
scheduler only when it had to wait or once every ``YIELD_EVERY`` calls. A tight send
loop still lets other tasks run every few dozen messages, and timeouts and
cancellation take effect at once. Receivers make the same trade by serving a local
buffer (see ``shoal.patterns._common``).

Receiving: ``drain`` (single-frame sockets) and ``drain_routed`` (routers) receive
plain ``bytes`` and hand each message to a callback as it comes, the hot path;
``receive_batch_nowait`` returns frame lists, for multi-frame control traffic.

Cancel safety: a message is taken off the socket only by a synchronous ``recv`` whose
result is returned (or buffered by the caller) before the next checkpoint, so a
cancelled wait never loses a message. ``zmq.ZMQError`` is translated here, once;
``zmq.Again`` never leaves this module.
"""


from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter as _perf_counter
from typing import Final, Self

import zmq
import zmq.backend

from shoal._io import Loop
from shoal._io._loop import Lot
from shoal._zmq._context import (
    _UNLIMITED,
    DEFAULT_LINGER_MS,
    check_endpoint,
    default_context,
    map_error,
    max_message_size,
    require_loop,
)
from shoal.errors import ClosedError

# Plain ints: pyzmq's constants are enum flags, and ``int & IntFlag`` builds a new
# enum member on every call (it showed up at the top of the round-trip profile).
POLLIN: Final = int(zmq.POLLIN)
POLLOUT: Final = int(zmq.POLLOUT)
_NOBLOCK: Final = int(zmq.NOBLOCK)
_SNDMORE: Final = int(zmq.SNDMORE)
_EVENTS: Final = int(zmq.EVENTS)
_RCVMORE: Final = int(zmq.RCVMORE)
_BOTH: Final = POLLIN | POLLOUT
RECONNECT_OPTIONS: Final[tuple[tuple[int, int], ...]] = (
    (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 250), (zmq.CONNECT_TIMEOUT, 250))
"""Every socket: a failed connect is tried again after 100 ms, backing off to 250 ms,
and a connect nobody answers (a pulled cable drops SYNs silently, and the kernel
would retry them at 1, 3, 7... s) is abandoned after 250 ms and tried afresh: a link
that comes back is used again within about half a second."""

# The hot paths call pyzmq's backend (Cython) send/recv directly: ``zmq.Socket``'s
# Python-level wrappers add ~0.8 us per send (measured) for features shoal does not use
# (draft routing ids and groups, str checks). Only ever called with bytes and ints.
_raw_send: Final = zmq.backend.Socket.send
_raw_recv: Final = zmq.backend.Socket.recv
_raw_get: Final[Callable[[zmq.Socket[bytes], int], int]] = zmq.backend.Socket.get  # type: ignore[assignment]

_ASK_EVENTS_BELOW: Final = 4

YIELD_EVERY: Final = 32
"""``send()`` yields to the scheduler at least once per this many calls."""


class SocketBase:
    """The state and the waits of a shoal socket (see the module docstring); sends
    and receives are added by ``_send`` and ``_receive``, the whole is ``Socket``."""

    __slots__ = (
        "_closed",
        "_fd",
        "_interrupts",
        "_io",
        "_linger",
        "_lots",
        "_parked",
        "_poked",
        "_quiet",
        "_rest",
        "_sock",
        "_spun",
        "_unyielded",
        "_watch_flag",
        "_woke",
        "bound",
        "busy_poll",
        "inproc",
        "max_message_size",
    )

    def __init__(self, sock: zmq.Socket[bytes], *, linger_ms: int = DEFAULT_LINGER_MS) -> None:
        self._io: Loop = require_loop("a shoal socket (open_publisher, open_node, ...) was opened")
        io = self._io
        self._sock = sock
        self._linger = linger_ms
        sock.setsockopt(zmq.LINGER, linger_ms)
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._closed = False
        self._lots: dict[int, Lot] = {
            POLLIN: io.ParkingLot(),
            POLLOUT: io.ParkingLot(),
            _BOTH: io.ParkingLot(),  # wait_either()
        }
        self._parked = 0  # tasks inside _wait (watcher included)
        self._watch_flag = 0  # what the watcher waits for; 0 = no watcher
        self._poked = False  # the watcher has been told to look again
        self._unyielded = 0  # sends since send() last yielded to the scheduler
        self._interrupts = 0  # interrupt() calls so far
        # Events known NOT to be ready because nothing has called into libzmq since
        # they were last seen missing (an EVENTS read, or a failed recv/send). A wait
        # for one of them may park on the FD at once; for any other event it must read
        # EVENTS first. Every libzmq call clears it: this is what makes "never park
        # after a libzmq call without re-reading EVENTS" hold for every caller.
        self._quiet = 0
        self._spun = 0  # busy-poll successes since the last yield
        self._woke = False  # a wait for POLLIN just ended: drain() may skip EVENTS
        self._rest = False  # drain(): the current message has frames not yet read
        self.busy_poll = 0.0
        """Seconds a wait spins (reading EVENTS) before parking on the FD; 0: never."""
        self.bound: list[str] = []
        """Endpoints bound so far, as libzmq reports them (ports resolved)."""
        self.inproc = False
        """Bound or connected over ``inproc://``, where libzmq does not apply
        MAXMSGSIZE: receivers then check the size themselves."""
        self.max_message_size = _UNLIMITED
        """The largest message this socket takes from a peer (libzmq's MAXMSGSIZE: a
        peer that sends more is disconnected), and so the largest its resource sends."""

    @classmethod
    def open(
        cls,
        socket_type: int,
        *,
        bind: Sequence[str] = (),
        connect: Sequence[str] = (),
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        options: Sequence[tuple[int, int | bytes]] = (),
        linger_ms: int = DEFAULT_LINGER_MS,
    ) -> Self:
        """Create, configure, bind and connect. On any failure nothing is left open."""
        ctx = context if context is not None else default_context()
        try:
            raw = ctx.socket(socket_type)
        except zmq.ZMQError as exc:
            raise map_error(exc, "create a socket") from None
        sock = cls(raw, linger_ms=linger_ms)
        try:
            limit = max_message_size(ctx)
            sock.setsockopt(zmq.MAXMSGSIZE, limit)
            sock.max_message_size = limit if limit >= 0 else _UNLIMITED
            for opt, value in (*RECONNECT_OPTIONS, *options):
                sock.setsockopt(opt, value)
            for ep in bind:
                sock.bind(ep)
            for ep in connect:
                sock.connect(ep)
        except BaseException:
            sock.close()
            raise
        return sock


    # -- introspection -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def loop(self) -> Loop:
        """The event loop's hot-path primitives (``shoal._io``), picked at open: a
        resource built on this socket uses them for its own checkpoints and clock."""
        return self._io

    @property
    def zmq_socket(self) -> zmq.Socket[bytes]:
        """The underlying pyzmq socket, for tests and diagnostics. Calling into it
        directly bypasses the edge bookkeeping: do not do that while tasks wait."""
        return self._sock

    def check_open(self, action: str) -> None:
        if self._closed:
            raise ClosedError(f"cannot {action}: this resource is closed; open a new one")

    # -- the edge bookkeeping ------------------------------------------------------

    def _refresh(self, *, watcher: bool = True) -> int:
        """Re-read EVENTS and wake whoever can now make progress. Never checkpoints.

        ``watcher=False`` when the watcher itself refreshes: it acts on the result
        directly instead of poking its own wait.
        """
        try:
            events: int = self._sock.getsockopt(_EVENTS)  # type: ignore[assignment]
        except zmq.ZMQError:
            events = POLLIN | POLLOUT  # wake everyone: their retry reports the error
        self._quiet = ~events & _BOTH
        lots = self._lots
        if events & POLLIN:
            lots[POLLIN].unpark_all()
        if events & POLLOUT:
            lots[POLLOUT].unpark_all()
        if events:
            lots[_BOTH].unpark_all()
        if watcher and events & self._watch_flag and not self._poked:
            self._poke_watcher()
        return events

    def _poke_watcher(self) -> None:
        # Wake the task parked in wait_readable(fd). notify_closing is trio's one way
        # to wake an FD waiter from outside besides cancellation; the watcher sees
        # ClosedResourceError while the socket is open and takes it as "look again".
        # It costs an epoll re-registration, only when another task consumed the
        # watcher's edge; wrapping every wait in a CancelScope instead costs 6-8 us
        # per wait on this machine (measured), on every round trip.
        self._poked = True
        self._io.notify_closing(self._fd)

    def _settle(self, quiet: int) -> None:
        """After a batch of libzmq calls: ``quiet`` holds the events its end showed
        missing (POLLIN: nothing queued; POLLOUT: a send refused), else 0."""
        self._quiet = quiet
        if self._parked:
            self._refresh()

    def _after_call(self) -> None:
        """Run after every libzmq call: it may have consumed the edge someone waits on."""
        self._quiet = 0
        if self._parked:
            self._refresh()

    async def _wait(self, flag: int) -> None:
        """Wait until ``flag`` (POLLIN, POLLOUT, or either: ``_BOTH``) may be ready.
        Returns spuriously; callers retry."""
        self.check_open("wait")
        if self._quiet & flag != flag and self._refresh() & flag:
            # A libzmq call since the last look may have taken the edge: the event is
            # ready now, and parking on the FD would sleep through it.
            await self._io.checkpoint()
            return
        if self.busy_poll and not self._watch_flag and self._spin(flag):
            # Found without sleeping. Yield now and then, or a busy receiver that
            # always finds its next message at once would never let others run.
            self._spun += 1
            if self._spun >= YIELD_EVERY:
                self._spun = 0
                await self._io.cancel_shielded_checkpoint()
            else:
                await self._io.checkpoint_if_cancelled()
            return
        interrupts = self._interrupts
        self._parked += 1
        if self._watch_flag:
            try:
                await self._lots[flag].park()
            except BaseException:
                # Cancelled. Under asyncio the wake that made this task the next
                # watcher may have come first and would be lost with it: hand it on.
                self._parked -= 1
                if not self._watch_flag:
                    self._hand_over()
                raise
            self._parked -= 1
            return
        self._watch_flag = flag
        try:
            while True:
                # A poke that came while we were not parked in the FD wait found nobody
                # to wake; it must not stop the next one.
                self._poked = False
                try:
                    await self._io.wait_readable(self._fd)
                except self._io.FdClosed:
                    if self._closed:
                        raise ClosedError("the socket was closed while waiting") from None
                    break  # poked: another task's call consumed our edge; look again
                if self._interrupts != interrupts:
                    # interrupt() came after the FD woke us but before we ran: its poke
                    # found nobody waiting on the FD, so return (spuriously) for it
                    break
                if flag == POLLIN:
                    # A receiver's wake is nearly always its message: let it try the
                    # receive at once instead of reading EVENTS first (a failed try
                    # costs more than an EVENTS read, a successful one far less).
                    self._quiet = 0
                    self._woke = True
                    break
                if self._refresh(watcher=False) & flag:
                    break
        finally:
            self._parked -= 1
            self._watch_flag = 0
            self._poked = False
            self._hand_over()

    def _hand_over(self) -> None:
        """Hand the FD watch to one parked task, or it would sleep with nobody on the FD."""
        for lot in self._lots.values():
            if lot:
                lot.unpark(count=1)
                break

    def _spin(self, flag: int) -> bool:
        """Busy-poll: read EVENTS until ``flag`` is ready or ``busy_poll`` seconds have
        passed. Never checkpoints (nothing else runs meanwhile: that is the price)."""
        sock = self._sock
        deadline = _perf_counter() + self.busy_poll
        try:
            while True:
                events: int = _raw_get(sock, _EVENTS)
                if events & flag:
                    self._quiet = 0
                    self._woke = flag == POLLIN
                    return True
                if _perf_counter() >= deadline:
                    self._quiet = ~events & _BOTH
                    return False
        except zmq.ZMQError:
            self._quiet = 0
            return True  # the caller's retry reports the error

    def interrupt(self) -> None:
        """Wake every task waiting on this socket (their wait returns spuriously), so
        that each re-checks its own condition. Never checkpoints."""
        self._interrupts += 1
        for lot in self._lots.values():
            lot.unpark_all()
        if self._watch_flag and not self._poked:
            self._poke_watcher()

    async def wait_receivable(self) -> None:
        """Wait until a receive may succeed (may return spuriously). Cancel-safe."""
        await self._wait(POLLIN)

    async def wait_sendable(self) -> None:
        """Wait until a send may succeed (may return spuriously). Cancel-safe."""
        await self._wait(POLLOUT)

    async def wait_either(self) -> None:
        """Wait until a receive or a send may succeed (may return spuriously): for a
        sender whose queue is full that also reads acknowledgements. Cancel-safe."""
        await self._wait(_BOTH)

    def sendable(self) -> bool:
        """Whether a send may succeed now (EVENTS, read afresh). For a ROUTER with
        ROUTER_MANDATORY: whether any peer's queue has room."""
        self.check_open("send")
        return bool(self._refresh() & POLLOUT)

    # -- configuration (each call may consume the edge, so each refreshes) ---------

    def setsockopt(self, option: int, value: int | bytes) -> None:
        self.check_open("set an option")
        try:
            self._sock.setsockopt(option, value)
        except zmq.ZMQError as exc:
            raise map_error(exc, "set socket option") from None
        finally:
            self._after_call()

    def bind(self, endpoint: str) -> str:
        """Bind and return the endpoint as bound (``tcp://127.0.0.1:*`` resolved)."""
        check_endpoint(endpoint, binding=True)
        self.check_open("bind")
        try:
            self._sock.bind(endpoint)
            actual = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.inproc = self.inproc or endpoint.startswith("inproc://")
        except zmq.ZMQError as exc:
            raise map_error(exc, f"bind {endpoint!r}") from None
        finally:
            self._after_call()
        self.bound.append(actual)
        return actual

    def connect(self, endpoint: str) -> None:
        check_endpoint(endpoint)
        self.check_open("connect")
        try:
            self._sock.connect(endpoint)
            self.inproc = self.inproc or endpoint.startswith("inproc://")
        except zmq.ZMQError as exc:
            raise map_error(exc, f"connect to {endpoint!r}") from None
        finally:
            self._after_call()

    def unbind(self, endpoint: str) -> None:
        """Stop listening on ``endpoint`` (as bound). Raises ``ClosedError`` if the
        socket or its context is closed."""
        self.check_open("unbind")
        try:
            self._sock.unbind(endpoint)
        except zmq.ZMQError as exc:
            raise map_error(exc, f"unbind {endpoint!r}") from None
        finally:
            self._after_call()

    def disable_monitor(self) -> None:
        """Stop libzmq's monitor of this socket (see ``monitor``). Never raises: on a
        closed socket, or once the context is terminating, there is nothing to stop."""
        if self._closed:
            return
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass  # the context is terminating: the monitor goes with it
        finally:
            self._after_call()

    def disconnect(self, endpoint: str) -> None:
        self.check_open("disconnect")
        try:
            self._sock.disconnect(endpoint)
        except zmq.ZMQError as exc:
            raise map_error(exc, f"disconnect from {endpoint!r}") from None
        finally:
            self._after_call()

    # -- closing -------------------------------------------------------------------

    def close(self) -> None:
        """Close now; every waiting task wakes with ``ClosedError``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._io.notify_closing(self._fd)
        for lot in self._lots.values():
            lot.unpark_all()
        self._sock.close(linger=self._linger)
