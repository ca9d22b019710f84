"""The counters a reliable publisher reports (``ReliablePublisher.statistics()``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReliablePublisherStatistics"]


@dataclass(frozen=True, slots=True)
class ReliablePublisherStatistics:
    """Counters of a reliable publisher at one moment."""

    published: int
    """Publications that matched at least one subscriber."""
    acked: int
    """(subscriber, publication) pairs acknowledged."""
    in_flight: int
    """Publications some subscriber has not acknowledged yet."""
    retransmitted: int
    """(subscriber, publication) pairs sent again."""
    subscribers: int
    dropped_subscribers: int
    """Subscribers dropped after ``grace`` seconds of silence."""
    undelivered: int
    """Publications the dropped subscribers never acknowledged (given up)."""
    refused_subscribers: int
    malformed: int
    replayed: int = 0
    """Publications sent from the history to subscribers that joined (once each)."""
    history_topics: int = 0
    history_bytes: int = 0
    history_evicted: int = 0
    """What the history holds (topics; bytes as counted against ``history_bytes``),
    and what it dropped to stay within its bounds."""
