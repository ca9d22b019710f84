"""GapTracker: best-effort loss is counted per stream and per sender, in bounded memory."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._core import GapTracker, StreamKey


def key(sender: str = "a", epoch: int = 1, stream: int = 1, topic: str = "t") -> StreamKey:
    return (sender, epoch, stream, topic)


def test_in_order_arrivals_report_no_gaps() -> None:
    g = GapTracker()
    assert [g.observe(key(), seq) for seq in range(100)] == [0] * 100
    assert (g.gaps, g.out_of_order, g.gaps_by_sender()) == (0, 0, {})


@pytest.mark.parametrize("first", [0, 1, 17, 2**64 - 1])
def test_the_first_sight_of_a_stream_is_not_a_gap(first: int) -> None:
    """What was published before a subscriber joined is not the subscriber's loss."""
    g = GapTracker()
    assert g.observe(key(), first) == 0
    assert g.gaps == 0
    assert len(g) == 1


def test_skipped_sequence_numbers_are_counted_and_returned() -> None:
    g = GapTracker()
    g.observe(key(), 0)
    assert g.observe(key(), 1) == 0
    assert g.observe(key(), 5) == 3  # 2, 3, 4 missing
    assert g.observe(key(), 6) == 0
    assert g.observe(key(), 10) == 3
    assert g.gaps == 6
    assert g.gaps_by_sender() == {"a": 6}


def test_gaps_are_counted_per_sender_across_its_streams() -> None:
    g = GapTracker()
    for k in (key("a", stream=1), key("a", stream=2), key("b"), key("c")):
        g.observe(k, 0)
    g.observe(key("a", stream=1), 3)  # 2 missing
    g.observe(key("a", stream=2), 2)  # 1 missing
    g.observe(key("b"), 11)  # 10 missing
    g.observe(key("c"), 1)  # none
    assert g.gaps == 13
    assert g.gaps_by_sender() == {"a": 3, "b": 10}


def test_topics_and_epochs_are_separate_streams() -> None:
    """seq counts per topic, and a restarted sender (new epoch) starts again from 0."""
    g = GapTracker()
    g.observe(key(topic="x"), 5)
    assert g.observe(key(topic="y"), 0) == 0
    assert g.observe(key(epoch=2, topic="x"), 0) == 0
    assert g.gaps == 0
    assert len(g) == 3


def test_late_and_duplicate_arrivals_count_as_out_of_order_not_gaps() -> None:
    g = GapTracker()
    g.observe(key(), 0)
    g.observe(key(), 5)
    assert g.gaps == 4
    assert g.observe(key(), 3) == 0  # late
    assert g.observe(key(), 5) == 0  # duplicate
    assert g.out_of_order == 2
    assert g.gaps == 4
    assert g.observe(key(), 6) == 0  # the stream goes on where it was


def test_gaps_by_sender_returns_a_copy() -> None:
    g = GapTracker()
    g.observe(key(), 0)
    g.observe(key(), 2)
    g.gaps_by_sender()["a"] = 1000
    assert g.gaps_by_sender() == {"a": 1}


def test_max_streams_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_streams"):
        GapTracker(max_streams=0)


def test_the_least_recently_seen_stream_is_forgotten_first() -> None:
    g = GapTracker(max_streams=2)
    g.observe(key(stream=1), 0)
    g.observe(key(stream=2), 0)
    g.observe(key(stream=1), 1)  # stream 1 is now the most recently seen
    g.observe(key(stream=3), 0)  # evicts stream 2
    assert (len(g), g.forgotten) == (2, 1)
    assert g.observe(key(stream=1), 3) == 1  # still tracked: the gap is seen
    assert g.observe(key(stream=2), 9) == 0  # forgotten: a first sight again


def test_memory_is_bounded_under_a_flood_of_invented_ids() -> None:
    rng = random.Random(1234)
    g = GapTracker(max_streams=64)
    for _ in range(20_000):
        k = (f"{rng.getrandbits(128):032x}", rng.getrandbits(32), rng.getrandbits(32), "t")
        g.observe(k, rng.getrandbits(20))
        g.observe(k, rng.getrandbits(20))  # often a gap: per-sender counters must stay bounded
        assert len(g) <= 64
    assert len(g.gaps_by_sender()) <= 64
    assert g.forgotten == 20_000 - 64
    assert g.gaps >= sum(g.gaps_by_sender().values())


arrivals = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(0, 3), st.integers(0, 30)), max_size=200
)


@given(arrivals)
def test_matches_a_reference_model_when_nothing_is_forgotten(
    events: list[tuple[str, int, int]]
) -> None:
    g = GapTracker(max_streams=1000)
    expected_next: dict[StreamKey, int] = {}
    gaps = out_of_order = 0
    by_sender: dict[str, int] = {}
    for sender, stream, seq in events:
        k = key(sender, stream=stream)
        nxt = expected_next.get(k)
        if nxt is None or seq == nxt:
            missed = 0
        elif seq < nxt:
            missed = 0
            out_of_order += 1
        else:
            missed = seq - nxt
            by_sender[sender] = by_sender.get(sender, 0) + missed
        if nxt is None or seq >= nxt:
            expected_next[k] = seq + 1
        gaps += missed
        assert g.observe(k, seq) == missed
    assert (g.gaps, g.out_of_order, g.forgotten) == (gaps, out_of_order, 0)
    assert g.gaps_by_sender() == by_sender
    assert len(g) == len(expected_next)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 16), st.lists(st.tuples(st.integers(0, 100), st.integers(0, 2**64 - 1)),
                                    max_size=300))
def test_never_tracks_more_than_max_streams(
    max_streams: int, events: list[tuple[int, int]]
) -> None:
    g = GapTracker(max_streams=max_streams)
    for stream, seq in events:
        g.observe(key(sender=str(stream), stream=stream), seq)
        assert len(g) <= max_streams
        assert len(g.gaps_by_sender()) <= max_streams
    # every stream that was ever tracked is either still tracked or counted as forgotten
    assert len(g) + g.forgotten >= len({s for s, _ in events})
