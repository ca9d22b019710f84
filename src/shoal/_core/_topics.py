"""Subscriptions: plain prefixes and wildcard patterns, and the filter they make.

Grammar. A subscription is split into levels at ``/``. A level that contains ``*``
must be exactly ``*`` (any one level, possibly empty; never a ``/``) or ``**`` (any
number of levels, none included). Anything else with a ``*`` in it (``a*b``,
``a/**b``, ``**x``, ``***``) is malformed: ``InvalidTopicPattern``.

* A subscription without a wildcard level is a **prefix**, as it always was: it
  takes every topic that starts with it (``""``: every topic).
* One with a wildcard level is a **pattern**: it takes the topics it matches as a
  whole. ``site/*/temp`` takes ``site/a/temp``, not ``site/a/temp/x`` nor
  ``site/a/b/temp``; ``site/**`` takes ``site``, ``site/a`` and ``site/a/b``.

Two stages. libzmq filters by the pattern's *literal prefix* (``literal_prefix``),
the text before its first wildcard level: ``site/*/temp`` subscribes ``site/``;
a pattern whose wildcards are all trailing ``**`` (``site/**``) subscribes ``site``
(it matches ``site`` itself). Publications that pass that prefix are then matched in
shoal (``TopicFilter.wanted``); what fails is filtered out (counted, not delivered).
Nothing of a pattern travels besides that prefix.

Contract: sans-I/O and pure: no clock, no I/O. Memory is bounded (the verdict cache
holds at most ``_MAX_CACHED`` topics and is then cleared).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from shoal._core._errors import InvalidTopicPattern

__all__ = ["Subscription", "TopicFilter", "literal_prefix", "parse_subscription"]

_MAX_CACHED: Final = 4096


@dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription, parsed: ``text`` as given, ``prefix`` what libzmq (or a
    reliable publisher) filters on, and ``regex`` the rest of the match (None for a
    plain prefix, where ``prefix`` says it all)."""

    text: str
    prefix: str
    regex: re.Pattern[str] | None

    def matches(self, topic: str) -> bool:
        """Whether this subscription takes ``topic``."""
        if self.regex is None:
            return topic.startswith(self.prefix)
        return self.regex.fullmatch(topic) is not None


def _levels(text: str) -> list[str]:
    levels = text.split("/")
    for level in levels:
        if "*" in level and level not in ("*", "**"):
            raise InvalidTopicPattern(text, level)
    return levels


def literal_prefix(text: str) -> str:
    """What a subscription asks libzmq for: the text before its first wildcard level
    (with its ``/``, unless only ``**`` levels follow, which may match none). A plain
    prefix is its own. Raises ``InvalidTopicPattern`` for a malformed one."""
    return parse_subscription(text).prefix


def parse_subscription(text: str) -> Subscription:
    """Parse ``text`` (see the module's grammar). Raises ``InvalidTopicPattern``."""
    if "*" not in text:
        return Subscription(text, text, None)
    levels = _levels(text)
    first = next(i for i, lv in enumerate(levels) if lv in ("*", "**"))
    if first == 0:
        prefix = ""
    elif all(lv == "**" for lv in levels[first:]):
        prefix = "/".join(levels[:first])
    else:
        prefix = "/".join(levels[:first]) + "/"
    return Subscription(text, prefix, re.compile(_regex(levels), re.DOTALL))


def _regex(levels: list[str]) -> str:
    """A regular expression matching whole topics. ``**`` becomes an optional run of
    whole levels that carries the ``/`` joining it to a neighbour (consecutive ``**``
    levels mean what one does, and are read as one)."""
    lv = [x for i, x in enumerate(levels) if not (x == "**" and i and levels[i - 1] == "**")]
    out: list[str] = []
    n = len(lv)
    for i, x in enumerate(lv):
        last = i == n - 1
        if x == "**" and last:
            out.append(".*" if n == 1 else "(?:/.*)?")  # "a/**": "a", or "a/" and anything
            continue
        if i and lv[i - 1] != "**":
            out.append("/")
        if x == "**":
            out.append("(?:.*/)?")  # "**/b", "a/**/b": levels, each ending with its "/"
        else:
            out.append("[^/]*" if x == "*" else re.escape(x))
    return "".join(out)


class TopicFilter:
    """The subscriptions of one subscriber, as the one question its receive path asks:
    does it want this topic (``wanted``)? ``active`` is False when every subscription
    is a plain prefix: libzmq (or the publisher) has filtered everything already, and
    the receive path asks nothing."""

    __slots__ = ("_cache", "_prefixes", "_regexes", "active")

    def __init__(self, subscriptions: Iterable[Subscription] = ()) -> None:
        subs = list(subscriptions)
        self._prefixes = tuple(s.prefix for s in subs if s.regex is None)
        self._regexes = tuple(s.regex for s in subs if s.regex is not None)
        self.active = bool(self._regexes)
        self._cache: dict[str, bool] = {}

    def wanted(self, topic: str) -> bool:
        """Whether some subscription takes ``topic`` (cached per topic, bounded)."""
        verdict = self._cache.get(topic)
        if verdict is None:
            verdict = topic.startswith(self._prefixes) or any(
                r.fullmatch(topic) is not None for r in self._regexes)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[topic] = verdict
        return verdict
