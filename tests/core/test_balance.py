"""The requester's replier choice: fewest in flight, ties in turn, silent repliers
last; and the bounded latency percentile behind ``hedge_after="p95"``."""

from __future__ import annotations

from collections import Counter

from shoal._core._balance import (
    MAX_TRACKED,
    SILENT_FLOOR,
    WINDOW,
    Balancer,
    LatencyEstimator,
)

A, B, C = b"a", b"b", b"c"


def balancer(*routes: bytes) -> Balancer:
    bal = Balancer()
    for r in routes:
        bal.add(r)
    return bal


def test_ties_are_taken_in_turn() -> None:
    bal = balancer(A, B, C)
    firsts: Counter[bytes] = Counter()
    for rid in range(30):
        route = bal.order(0.0)[0]
        firsts[route] += 1
        bal.sent(route, rid, 0.0)
        bal.answered(route, rid, 0.001)
    assert firsts == {A: 10, B: 10, C: 10}


def test_the_replier_with_fewest_in_flight_comes_first() -> None:
    bal = balancer(A, B)
    bal.sent(A, 1, 0.0)
    bal.sent(A, 2, 0.0)
    bal.sent(B, 3, 0.0)
    assert [bal.order(0.0)[0] for _ in range(4)] == [B, B, B, B]
    bal.answered(A, 1, 0.001)
    bal.answered(A, 2, 0.001)
    assert bal.order(0.0)[0] == A


def test_a_replier_silent_past_its_usual_latency_goes_last_even_when_less_loaded() -> None:
    bal = balancer(A, B)
    for rid in range(10):  # both answer in 1 ms
        bal.sent(A, rid, 0.0)
        bal.answered(A, rid, 0.001)
        bal.sent(B, 100 + rid, 0.0)
        bal.answered(B, 100 + rid, 0.001)
    bal.sent(A, 50, 1.0)  # A takes one and goes quiet
    later = 1.0 + SILENT_FLOOR * 2
    for i in range(3):
        bal.sent(B, 200 + i, later - 0.001)  # B is busier, but its requests are fresh
    assert bal.order(1.0 + SILENT_FLOOR / 2)[0] == A  # not yet past the floor: least loaded
    assert bal.silent(A, later)
    assert not bal.silent(B, later)
    assert bal.order(later) == [B, A]


def test_avoided_routes_go_last_and_removed_routes_vanish() -> None:
    bal = balancer(A, B, C)
    assert bal.order(0.0, (A, B))[0] == C
    bal.remove(C)
    assert sorted(bal.order(0.0)) == [A, B]
    bal.sent(C, 1, 0.0)  # a late send to a removed route is ignored
    assert bal.answered(C, 1, 0.1) is None


def test_in_flight_bookkeeping_is_bounded_per_replier() -> None:
    bal = balancer(A)
    for rid in range(MAX_TRACKED + 10):
        bal.sent(A, rid, 0.0)
    assert bal.in_flight(A) == MAX_TRACKED
    assert bal.answered(A, 0, 1.0) is None  # the oldest were forgotten
    assert bal.answered(A, MAX_TRACKED + 9, 1.0) == 1.0


def test_the_latency_percentile_follows_the_recent_window() -> None:
    est = LatencyEstimator()
    assert est.percentile(0.95) is None
    for i in range(100):
        est.add(0.001 if i % 10 else 0.050)  # one in ten slow
    p50, p95 = est.percentile(0.5), est.percentile(0.95)
    assert p50 == 0.001
    assert p95 == 0.050
    for _ in range(WINDOW):
        est.add(0.002)
    assert len(est) == WINDOW
    assert est.percentile(0.99) == 0.002  # the old samples left the window
