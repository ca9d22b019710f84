"""What a requester's calls share: the checks of their arguments, the record of one
request in flight (``_Pending``), and the requester's counters.

A ``_Pending`` is written by whichever call reads the socket (it matches the reply by
id) and read by the call that waits for it; it holds where the request went (routed
mode), how many copies were sent (hedging) and when (latency measurement).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import zmq

from shoal._core import Message
from shoal._io._loop import Wake
from shoal.errors import LocalProtocolError

__all__ = ["RequesterStatistics", "check_deadline", "check_hedge_after",
           "requester_options"]

_INF = math.inf
_MAX_RECENT_HEDGED = 4096
_MIN_SAMPLES = 20
"""Round trips measured before ``hedge_after="pNN"`` hedges at all."""
_MAX_BUDGET = 2**63
"""Microseconds: a budget beyond this (292,000 years) is sent as this."""


def check_deadline(deadline: object) -> float:
    """Refuse a ``deadline=`` that is not a finite number of seconds >= 0."""
    if (isinstance(deadline, bool) or not isinstance(deadline, int | float)
            or not 0 <= deadline < _INF):
        raise LocalProtocolError(f"deadline is a number of seconds >= 0 from now (or None: "
                                 f"the enclosing cancel scope's), not {deadline!r}")
    return float(deadline)


def check_hedge_after(hedge_after: object) -> float | None:
    """Refuse a ``hedge_after=`` that is neither seconds > 0 nor ``"pNN"`` (a
    percentile, 1..99, of the requester's own latency); return the quantile as a
    negative number for a percentile (``"p95"`` -> -0.95), else the seconds."""
    if isinstance(hedge_after, str):
        digits = hedge_after[1:]
        if hedge_after[:1] == "p" and digits.isdigit() and 1 <= int(digits) <= 99:
            return -int(digits) / 100
    elif (not isinstance(hedge_after, bool) and isinstance(hedge_after, int | float)
          and 0 < hedge_after < _INF):
        return float(hedge_after)
    raise LocalProtocolError(f"hedge_after is a number of seconds > 0, or a percentile "
                             f"of this requester's latency such as 'p95', not {hedge_after!r}")


@dataclass(frozen=True, slots=True)
class RequesterStatistics:
    """Counters of a requester at one moment."""

    sent: int
    """Requests handed to ZeroMQ."""
    replies: int
    """Replies matched to a waiting request (including failures reported by repliers)."""
    remote_errors: int
    """Replies that reported a handler failure (raised as ``RemoteError``)."""
    unmatched: int
    """Replies nobody waited for any more (the request was cancelled or timed out)."""
    lost: int
    """Requests failed with ``PeerLost`` because their replier vanished."""
    retried: int
    """Requests sent again (``retries=``) after a timeout or a vanished replier."""
    hedged: int
    """Requests also sent to another replier because no reply came within
    ``hedge_after``."""
    hedge_wasted: int
    """Replies to a hedged request that came after the first (dropped)."""
    in_flight: int
    malformed: int
    malformed_by_reason: Mapping[str, int]


class _Pending:
    __slots__ = ("copies", "done", "error", "gone", "lost", "reply", "routes", "sent_at",
                 "wake")

    def __init__(self) -> None:
        self.done = False
        self.gone = False  # the waiting call has returned or was cancelled
        self.error = False
        self.reply: Message | None = None
        self.wake: Wake | None = None
        self.routes: tuple[bytes, ...] = ()  # routed mode: the repliers it went to
        self.lost = ""  # routed mode: why those repliers are gone
        self.copies = 1  # sent this many times (hedges and retries)
        self.sent_at = 0.0  # the loop's time, when latency is measured (hedging)


def requester_options(
    high_water_mark: int, *, routed: bool = False
) -> list[tuple[int, int | bytes]]:
    """Socket options of a requester (DEALER; ROUTER in routed mode)."""
    # No ZMQ_IMMEDIATE: with it, libzmq discards the unread replies of a replier that
    # disconnects (a replier that answers and exits would lose its last answers).
    opts: list[tuple[int, int | bytes]] = [
        (zmq.SNDHWM, high_water_mark), (zmq.RCVHWM, high_water_mark)]
    if routed:
        opts.append((zmq.ROUTER_MANDATORY, 1))  # an unconnected route raises, not drops
    return opts


