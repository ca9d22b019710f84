"""Where a reliable pusher's items go: the pullers it may use (connected, or learned
from their hellos when it binds), what happens when one goes away, and putting due
items on the wire (``_transmit``). ``ReliablePusher`` builds on it; the wire rules
are in ``shoal._core`` (``ReliableSender``, ``decode_pull_ack``) and the routes in
``shoal.patterns._routes``.

A retransmission carries the current floor: the correlation field of the encoded
frame is rewritten (``with_correlation``) when the floor moved since it was encoded.
An item restored from the outbox goes first to the puller it went to before, if that
one connects within ``RESTORE_WAIT``: it recognises what it already did.
"""

from __future__ import annotations

import logging

from shoal._core import (
    ACK_TOPIC,
    ReliableSender,
    correlation_at,
    decode_pull_ack,
    with_correlation,
)
from shoal._io import WouldBlock
from shoal._zmq._socket import PeerUnreachable, Socket
from shoal.errors import DecodeError
from shoal.patterns._acked import AckedSender
from shoal.patterns._links import LinkMonitor
from shoal.patterns._outbox import Outbox
from shoal.patterns._routes import HELLO, Routes, Turns

__all__ = ["CHECKS", "PushWire"]

log = logging.getLogger("shoal")

_FLOOR_AT = correlation_at(ACK_TOPIC)
"""Where a push frame carries the floor (its topic is empty, like an acknowledgement's)."""
CHECKS = (0.0, 0.01, 0.1, 1.0)
"""Seconds after an accepted connection drops at which a bound pusher checks the
pullers it learned (libzmq retires a dropped connection's pipe a moment after its
monitor reports the drop)."""


class PushWire(AckedSender):
    """The routes and the wire of a reliable pusher over ``sock``, for ``core``."""

    _tag: int  # the ack tag of this pusher's stream (set once the stream is known)
    _prior: dict[int, bytes]  # restored item -> the puller it went to
    _restore_until: float

    def __init__(self, sock: Socket, core: ReliableSender, outbox: Outbox | None) -> None:
        super().__init__(sock)
        self._core = core
        self._outbox = outbox
        self._prior = {}
        self._restore_until = 0.0
        # Connected pullers (handshake done, or a hello heard), in turn order; pullers
        # that connected to an endpoint this pusher binds are learned from their hellos.
        self._turns = Turns(core.window, core.held_by)
        self._routes = self._turns.routes
        self._book = Routes(sock)
        self._learned = self._book.learned
        self._gone: list[bytes] = []  # learned routes a send found gone, to retire
        self._checks: list[float] = []  # when to check the learned routes
        self._disconnects = 0
        self._redelivered = 0
        self._links = LinkMonitor(sock, self._link_up, self._link_lost)

    def _collect_failures(self) -> None:
        raise NotImplementedError

    # -- routes (explicit endpoints, or a node's wiring) ---------------------------------------

    def _bind(self, endpoint: str) -> None:
        """Listen at ``endpoint``: pullers that connect there say hello and get items."""
        self._book.bind(endpoint)

    def add_route(self, route: bytes, endpoint: str, *,
                  server_key: bytes | None = None) -> None:
        """Connect to a puller at ``endpoint``, known as ``route``; used once the
        monitor reports the handshake. ``server_key``: the CURVE public key (Z85) of
        the listener there, for a socket made with ``shoal.security.client_options``."""
        if self._book.add(route, endpoint, server_key):
            # inproc has no handshake and libzmq's monitor reports none: the pipe
            # exists once both ends do, and a send before that fails as unreachable.
            self._link_up(endpoint)

    def _link_up(self, endpoint: str) -> None:
        route = self._book.by_endpoint.get(endpoint)
        if route is not None and route not in self._routes:
            self._routes.append(route)
            self._wake()

    def drop_route(self, route: bytes, endpoint: str, why: str) -> None:
        """Disconnect from a puller; what it held goes to the others."""
        self._book.forget(route, endpoint)
        self._holder_gone(route, endpoint, why)  # its last acknowledgements first
        self._book.disconnect(endpoint)

    def _link_lost(self, endpoint: str) -> None:
        """The connection to a puller dropped (killed, or its link silent past the ZMTP
        heartbeat timeout). libzmq reconnects by itself; what the puller held and had
        not acknowledged goes to the others now rather than waiting for it. On an
        endpoint this pusher binds, the monitor does not say whose connection it was:
        the pullers that connected there are checked."""
        if self._sock.closed:
            return
        route = self._book.by_endpoint.get(endpoint)
        if route is None:
            if self._learned:
                now = self._io.current_time()
                self._checks = sorted({*self._checks, *(now + t for t in CHECKS)})
                self._wake()
            return
        self._disconnects += 1
        self._holder_gone(route, endpoint, "connection dropped")

    def _learn(self, route: bytes) -> bool:
        """A hello on ``route``: a puller that connected to one of our endpoints.
        False if it cannot be one (this pusher binds nothing, or it is a route of
        our own connections)."""
        if not self._book.learnable(route):
            return False
        if self._book.learn(route):
            self._routes.append(route)
            log.debug("reliable pusher: puller %s connected", route.hex())
            self._wake()
        return True

    def _check_learned(self) -> None:
        """Send an empty frame to each learned puller: libzmq refuses the ones whose
        connection is gone (``ROUTER_MANDATORY``), and they are retired."""
        sock = self._sock
        sock.sendable()  # an EVENTS read: libzmq takes in the pipes that ended
        for route in [r for r in self._routes if r in self._learned]:
            try:
                sock.send_to_nowait(route, HELLO)
            except PeerUnreachable:
                self._gone.append(route)
            except WouldBlock:
                pass  # there, its queue full
        self._retire()

    def _retire(self) -> None:
        """Retire the learned routes a send found gone: what they held goes to the
        other pullers (a puller that comes back says hello again)."""
        while self._gone:
            route = self._gone.pop()
            if route in self._learned:
                self._learned.discard(route)
                self._disconnects += 1
                self._holder_gone(route, f"puller {route.hex()}", "connection dropped")

    def _holder_gone(self, route: bytes, endpoint: str, why: str) -> None:
        """Stop using ``route``; what it acknowledged before going is done, the rest of
        what it held goes out to the other pullers now."""
        if route in self._routes:
            self._routes.remove(route)
        if not self._sock.closed:
            self._read_acks()
        n = self._core.destination_lost(route, self._io.current_time())
        self._redelivered += n
        if n:
            log.info("reliable pusher: %s (%s); %d item(s) it held go to other pullers",
                     endpoint, why, n)
        self._transmit()
        self._wake()

    # -- the wire ----------------------------------------------------------------------------

    def _transmit(self, now: float | None = None) -> bool:
        """Put everything due on the wire; False if something found no puller."""
        core = self._core
        if now is None:
            now = self._io.current_time()
        todo = core.transmissions(now)
        if not todo:
            return True
        if self._outbox is None:
            sent_all = self._put_on_wire(todo, now, None)
        else:
            placed: list[tuple[bytes, int]] = []
            try:
                sent_all = self._put_on_wire(todo, now, placed)
            finally:
                self._outbox.sent_to(placed)  # where each went: a restart sends it there
        if self._gone:  # learned pullers found gone: theirs go out again, elsewhere
            self._retire()
            return not core.queued()
        return sent_all

    def _put_on_wire(self, todo: list[int], now: float,
                     placed: list[tuple[bytes, int]] | None) -> bool:
        """``_transmit``'s work; ``placed`` collects ``(route, seq)`` of what went."""
        core = self._core
        prior = self._prior
        waiting: list[int] = []  # restored items waiting for their puller
        sock = self._sock
        routes = self._routes
        floor = core.floor()
        left: list[int] = []  # from the first that found no way out on
        for i, seq in enumerate(todo):
            data, encoded_floor = core.payload(seq)
            if encoded_floor != floor:  # a retransmission: tell the current floor
                data = with_correlation(data, _FLOOR_AT, floor)
            held_by = core.destination(seq)
            if prior and held_by is None and seq in prior:
                # restored from the outbox: to the puller that had it, if it is there
                if prior[seq] in routes:
                    held_by = prior[seq]  # forgotten once sent
                elif now < self._restore_until:
                    waiting.append(seq)  # it may yet connect: wait for it a little
                    continue
                else:
                    del prior[seq]
            if held_by is not None and held_by in routes:
                # Its puller is still connected (a timer ran out: the acknowledgement
                # is late, the puller slow or its link lossy): send it there again, where
                # it is recognised, never to a second worker.
                try:
                    sock.send_to_nowait(held_by, data)
                except (PeerUnreachable, WouldBlock) as exc:
                    if isinstance(exc, PeerUnreachable) and held_by in self._learned:
                        self._gone.append(held_by)
                    left = todo[i:]
                    break
                core.sent(seq, held_by, now)
                if prior:
                    prior.pop(seq, None)
                if placed is not None:
                    placed.append((held_by, seq))
                continue
            for route in self._turns.candidates():  # below their share of the window
                try:
                    sock.send_to_nowait(route, data)
                except (PeerUnreachable, WouldBlock) as exc:
                    if isinstance(exc, PeerUnreachable) and route in self._learned:
                        self._gone.append(route)
                    continue
                core.sent(seq, route, now)
                if placed is not None:
                    placed.append((route, seq))
                break
            else:
                left = todo[i:]
                break
        for later in reversed(waiting + left):
            core.unsent(later)  # first in line, in order, for the next look
        return not waiting and not left

    def _on_ack(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._malformed += 1
            return
        if not frames[1]:  # a hello
            if not self._learn(frames[0]):
                self._malformed += 1
            return
        try:
            _, ack = decode_pull_ack(frames[1])
        except DecodeError:  # counted, dropped
            self._malformed += 1
            return
        if ack.tag and ack.tag != self._tag:
            # for another stream: a pusher this puller reached at the same endpoint
            # before (this one's numbers mean other items)
            log.debug("reliable pusher: ignored an acknowledgement for another stream")
            return
        core = self._core
        core.on_received(ack.received, frames[0], self._io.current_time())
        if core.on_done(ack.done) and self._outbox is not None:
            self._outbox.remove(ack.done)

