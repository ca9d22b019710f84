"""Comparing wall clocks across nodes (``Node.read_clock``).

A node answers a ``ClockQuery`` on its control socket with its wall clock, read as
late as possible; the asker places the reading at the midpoint of the round trip,
measured on the monotonic clock (the wall clock may step), and keeps the sample with
the shortest round trip.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from shoal._core import decode_control, encode_control
from shoal._core._control import ClockQuery, ClockReading
from shoal._io import WouldBlock
from shoal._zmq._socket import Socket
from shoal.errors import DecodeError

__all__ = ["ClockSample", "answer", "sample_clock"]


@dataclass(frozen=True, slots=True)
class ClockSample:
    """Another node's wall clock compared with this one's (``Node.read_clock``)."""

    offset: float
    """Seconds the other node's clock is ahead of this one's (negative: behind),
    estimated at the midpoint of the exchange."""
    round_trip: float
    """Seconds from query to answer. Unless a clock stepped meanwhile, the true offset
    is within ``round_trip / 2`` of ``offset``."""


def answer(token: int) -> bytes:
    """The reading that answers query ``token``: this host's wall clock, now."""
    # time.time_ns is looked up on each call, so a test process can stand in for a
    # host whose clock is off.
    return encode_control(ClockReading(token, time.time_ns()))


async def sample_clock(sock: Socket, samples: int) -> ClockSample:
    """``samples`` exchanges in turn over ``sock`` (connected to a control endpoint):
    the one with the shortest round trip (the first also pays for the connection)."""
    best: ClockSample | None = None
    for _ in range(samples):
        sample = await _exchange(sock)
        if best is None or sample.round_trip < best.round_trip:
            best = sample
    assert best is not None
    return best


async def _exchange(sock: Socket) -> ClockSample:
    token = int.from_bytes(os.urandom(4), "big")
    query = encode_control(ClockQuery(token))
    while True:
        # the round trip on the monotonic clock (the wall clock may step);
        # the wall clock only to place the midpoint
        wall0, mono0 = time.time_ns(), time.perf_counter_ns()
        try:
            sock.send_nowait(query)
            break
        except WouldBlock:
            await sock.wait_sendable()
    while True:
        raws = sock.receive_batch_nowait(8)
        mono1 = time.perf_counter_ns()
        for frames in raws:
            try:
                msg = decode_control(frames[-1])
            except DecodeError:
                continue
            if isinstance(msg, ClockReading) and msg.token == token:
                rtt = mono1 - mono0
                return ClockSample(offset=(msg.time_ns - (wall0 + rtt // 2)) / 1e9,
                                   round_trip=rtt / 1e9)
        if not raws:
            await sock.wait_receivable()
