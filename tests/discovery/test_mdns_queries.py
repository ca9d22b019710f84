"""The browse questions shoal asks of its own: QU for the first ones, the node's own
instance always a known answer, QM ones spared when another host just asked the same
(RFC 6762 §5.4, §7.1, §7.3), and the random delay before each, bounded.

No sockets: the question is built against a zeroconf cache and question history."""

from __future__ import annotations

from zeroconf._cache import DNSCache
from zeroconf._dns import DNSPointer
from zeroconf._history import QuestionHistory
from zeroconf._protocol.incoming import DNSIncoming

from shoal.discovery._mdns import _MAX_DELAY, _ask_delay, _browse_query

TYPE = "_shoaltest._tcp.local."


def pointer(name: str) -> DNSPointer:
    return DNSPointer(TYPE, 12, 1, 4500, f"{name}.{TYPE}")


def sent(cache: DNSCache, history: QuestionHistory, known: frozenset[str], *,
         unicast: bool, now: float = 1e6) -> DNSIncoming | None:
    out = _browse_query(cache, history, TYPE, known, pointer("me"), unicast=unicast, now=now)
    return None if out is None else DNSIncoming(out.packets()[0])


def test_a_qu_question_carries_the_unicast_bit_and_the_own_instance_as_known_answer() -> None:
    cache = DNSCache()
    cache.async_add_records([pointer("a"), pointer("b")])
    msg = sent(cache, QuestionHistory(), frozenset({f"a.{TYPE}"}), unicast=True)
    assert msg is not None
    [question] = msg.questions
    assert question.unicast
    assert question.name == TYPE
    assert {r.alias for r in msg.answers() if isinstance(r, DNSPointer)} == {
        f"me.{TYPE}", f"a.{TYPE}"}


def test_a_qm_question_is_spared_when_another_host_just_asked_with_no_more_known() -> None:
    history = QuestionHistory()
    first = sent(DNSCache(), history, frozenset(), unicast=False)
    assert first is not None
    assert not first.questions[0].unicast
    # within the second: the same question with the same known answers is not repeated
    assert sent(DNSCache(), history, frozenset(), unicast=False, now=1e6 + 500) is None
    # QU questions are never spared, and a second later the QM one goes out again
    assert sent(DNSCache(), history, frozenset(), unicast=True, now=1e6 + 500) is not None
    assert sent(DNSCache(), history, frozenset(), unicast=False, now=1e6 + 1500) is not None


def test_the_delay_before_a_question_grows_with_the_peers_heard_and_is_bounded() -> None:
    assert _ask_delay(0, 0.99) == 0.0
    assert _ask_delay(4, 0.5) < _ask_delay(8, 0.5)
    assert all(0.0 <= _ask_delay(n, 0.999) <= _MAX_DELAY for n in (1, 10, 40, 10_000))
    assert _ask_delay(10_000, 0.999) > 0.9 * _MAX_DELAY
