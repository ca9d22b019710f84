"""Wildcard subscriptions, as pure functions: the grammar, what a pattern matches,
the literal prefix libzmq filters on, and the filter a subscriber asks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._core import (
    GapTracker,
    Kind,
    Message,
    TopicFilter,
    encode,
    encode_topic,
    fast_decoder,
    literal_prefix,
    parse_subscription,
)
from shoal.errors import InvalidTopicPattern, LocalProtocolError


def oracle(pattern: str, topic: str) -> bool:
    """Level by level, independently of the regular expressions shoal builds."""
    def match(p: list[str], t: list[str]) -> bool:
        if not p:
            return not t
        if p[0] == "**":
            return any(match(p[1:], t[i:]) for i in range(len(t) + 1))
        if not t:
            return False
        return (p[0] == "*" or p[0] == t[0]) and match(p[1:], t[1:])
    return match(pattern.split("/"), topic.split("/"))


TABLE = [
    # pattern, topic, matches
    ("site/*/temp", "site/a/temp", True),
    ("site/*/temp", "site//temp", True),  # '*' takes an empty level
    ("site/*/temp", "site/a/b/temp", False),
    ("site/*/temp", "site/a/temp/x", False),
    ("site/*/temp", "site/temp", False),
    ("site/*/temp", "site/a/hum", False),
    ("site/*/temp", "sites/a/temp", False),
    ("site/**", "site", True),
    ("site/**", "site/", True),
    ("site/**", "site/a", True),
    ("site/**", "site/a/b/c", True),
    ("site/**", "sites", False),
    ("site/**", "sitea/b", False),
    ("site/**/temp", "site/temp", True),
    ("site/**/temp", "site/a/temp", True),
    ("site/**/temp", "site/a/b/temp", True),
    ("site/**/temp", "site/a/b/temp2", False),
    ("site/**/temp", "sitetemp", False),
    ("**/temp", "temp", True),
    ("**/temp", "a/b/temp", True),
    ("**/temp", "a/btemp", False),
    ("**", "", True),
    ("**", "anything/at/all", True),
    ("*", "", True),
    ("*", "one", True),
    ("*", "one/two", False),
    ("*/*", "a/b", True),
    ("*/*", "a", False),
    ("site/*/*/temp", "site/1/dev/temp", True),
    ("site/*/*/temp", "site/1/temp", False),
    ("a/**/**", "a", True),
    ("a/**/**/b", "a/b", True),
    ("a/**/b/**", "a/x/b", True),
    ("a/**/b/**", "a/x/c", False),
    ("a.b/*", "a.b/x", True),
    ("a.b/*", "axb/x", False),  # literal levels are literal, '.' included
    ("a+(b)/*", "a+(b)/x", True),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), TABLE)
def test_pattern_table(pattern: str, topic: str, expected: bool) -> None:
    sub = parse_subscription(pattern)
    assert sub.matches(topic) is expected
    assert oracle(pattern, topic) is expected
    if expected:  # whatever a pattern takes starts with its literal prefix
        assert topic.startswith(sub.prefix)


@pytest.mark.parametrize(("pattern", "prefix"), [
    ("site/*/temp", "site/"),
    ("site/**", "site"),
    ("site/**/**", "site"),
    ("site/**/temp", "site/"),
    ("a/b/*", "a/b/"),
    ("*/temp", ""),
    ("**", ""),
    ("plain/prefix", "plain/prefix"),
    ("", ""),
])
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix


def test_plain_prefixes_are_prefixes() -> None:
    sub = parse_subscription("room1/")
    assert sub.regex is None
    assert sub.matches("room1/temp")
    assert sub.matches("room1/")
    assert not sub.matches("room2/temp")


@pytest.mark.parametrize("bad", ["a*b", "a/**b", "**x", "***", "a/*b/c", "site/x*", "*a/b",
                                 "a/b**", "a/***/b"])
def test_malformed_patterns_are_refused_with_the_typed_error(bad: str) -> None:
    with pytest.raises(InvalidTopicPattern) as info:
        parse_subscription(bad)
    assert isinstance(info.value, LocalProtocolError)
    message = str(info.value)
    assert "'*' matches one level" in message
    assert "'**' any number of levels" in message
    assert info.value.pattern == bad


levels = st.lists(st.text(alphabet="ab/x.", max_size=3).filter(lambda s: "/" not in s),
                  min_size=1, max_size=5)
topics = levels.map("/".join)
literals = st.lists(st.sampled_from(["a", "b", "", "ab"]), min_size=1, max_size=3).map("/".join)


@given(prefix=literals, topic=topics)
def test_double_star_is_any_suffix_at_level_boundaries(prefix: str, topic: str) -> None:
    expected = topic == prefix or topic.startswith(prefix + "/")
    assert parse_subscription(prefix + "/**").matches(topic) is expected


@given(prefix=literals, topic=topics)
def test_star_never_crosses_a_slash(prefix: str, topic: str) -> None:
    rest = topic[len(prefix) + 1:]
    expected = topic.startswith(prefix + "/") and "/" not in rest
    assert parse_subscription(prefix + "/*").matches(topic) is expected


pattern_levels = st.lists(st.sampled_from(["a", "b", "", "*", "**", "x.y"]), min_size=1,
                          max_size=5).map("/".join).filter(lambda p: "*" in p)


@given(pattern=pattern_levels, topic=topics)
def test_patterns_agree_with_the_level_oracle(pattern: str, topic: str) -> None:
    sub = parse_subscription(pattern)
    assert sub.matches(topic) is oracle(pattern, topic)
    if sub.matches(topic):
        assert topic.startswith(sub.prefix)  # the libzmq stage never loses a match


def test_a_filter_of_prefixes_only_is_inactive() -> None:
    assert not TopicFilter([parse_subscription("a/"), parse_subscription("")]).active


def test_a_filter_takes_a_topic_any_subscription_takes() -> None:
    f = TopicFilter([parse_subscription("site/*/temp"), parse_subscription("log/")])
    assert f.active
    assert f.wanted("site/1/temp")
    assert f.wanted("log/anything/deep")
    assert not f.wanted("site/1/hum")
    assert not f.wanted("other")
    for _ in range(5000):  # the verdict cache stays bounded
        f.wanted("site/1/temp")
    assert all(f.wanted(f"site/{i}/temp") for i in range(5000))
    assert len(f._cache) <= 4096


def publication(topic: str, seq: int) -> bytes:
    return encode(Kind.PUBLISH, encode_topic(topic), b"64", sender=b"s" * 16, epoch=1,
                  stream=1, seq=seq, timestamp_ns=0)


def no_fallback(frame: bytes) -> None:
    raise AssertionError(f"the fast path left a valid raw publication to the fallback: {frame!r}")


def test_the_fast_path_asks_once_per_stream_and_keeps_refused_frames_out_of_the_gaps() -> None:
    asked: list[str] = []

    def wanted(topic: str) -> bool:
        asked.append(topic)
        return topic.endswith("/temp")

    got: list[Message] = []
    refused: list[tuple[str, int]] = []
    gaps = GapTracker()
    accept = fast_decoder(Kind.PUBLISH, topic=True, deliver=got.append, fallback=no_fallback,
                          gaps=gaps, wanted=wanted,
                          unwanted=lambda key, seq: refused.append((key[3], seq)))
    for seq in range(3):
        accept(publication("s/1/temp", seq))
        accept(publication("s/1/hum", seq * 2))  # numbers skipped: gaps, were it taken
    assert [(m.topic, m.seq) for m in got] == [("s/1/temp", 0), ("s/1/temp", 1),
                                               ("s/1/temp", 2)]
    assert refused == [("s/1/hum", 0), ("s/1/hum", 2), ("s/1/hum", 4)]
    assert asked == ["s/1/temp", "s/1/hum"]  # once per stream, not per frame
    assert gaps.gaps == 0
    assert len(gaps) == 1  # the refused stream is not even tracked


def test_without_a_filter_the_same_frames_are_delivered_and_their_holes_counted() -> None:
    got: list[Message] = []
    gaps = GapTracker()
    accept = fast_decoder(Kind.PUBLISH, topic=True, deliver=got.append, fallback=no_fallback,
                          gaps=gaps)
    for seq in range(3):
        accept(publication("s/1/hum", seq * 2))
    assert [m.seq for m in got] == [0, 2, 4]
    assert gaps.gaps == 2


def test_skip_moves_a_tracked_stream_on_without_counting() -> None:
    gaps = GapTracker()
    key = ("s", 1, 1, "t")
    gaps.observe(key, 0)
    for seq in (1, 2, 3):
        gaps.skip(key, seq)
    assert gaps.observe(key, 4) == 0
    gaps.skip(("s", 1, 1, "other"), 7)  # an untracked stream stays untracked
    assert len(gaps) == 1
    assert (gaps.gaps, gaps.out_of_order) == (0, 0)
