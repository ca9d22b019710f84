"""What the Prometheus exporter reads from nodes and resources, and how it names it.

``Collector`` holds what is exported (nodes added with ``add_node``, resources with
``add``) and turns fresh ``statistics()`` snapshots into ``prometheus_client`` metric
families at each scrape. It does no I/O and keeps no timer: nothing is read until a
scrape asks, and a resource whose ``statistics()`` fails is counted and logged, never
allowed to blank the page.

Naming (Prometheus conventions). A statistics dataclass ``FooBarStatistics`` gives
metrics ``shoal_foo_bar_<field>``, one per field, found generically so that a field
added later is exported too; the help text is the field's attribute docstring:

* numbers are counters (``..._total``), except the fields named in ``GAUGE_FIELDS``
  (current sizes: peers, links, in flight, held, subscribers, topics), which are gauges;
  booleans are gauges (0 or 1);
* a mapping field ``<what>_by_<label>`` (``malformed_by_reason``, ``gaps_by_publisher``)
  gives one series per key, the key in label ``<label>`` (``key`` for other mappings);
* a field of any other type is left out, with a warning logged once.

Labels: node metrics carry ``node`` (name) and ``node_id``; resource metrics carry
``node``, ``node_id``, ``channel`` and ``role`` (``subscriber``, ``reliable_pusher``...);
a resource added with ``add(resource, name=...)`` has ``node=""``, ``node_id=""`` and
``channel=<name>``. Resources of one node sharing a channel and a role are summed,
and the counts of those that closed are kept, so a counter never goes down while the
exporter runs (Prometheus would read that as a restart). Peers give ``shoal_peer``
(info), ``shoal_peer_offers`` and ``shoal_peer_last_seen_age_seconds``; the exporter's
own ``shoal_exporter_collect_errors`` and ``shoal_exporter_requests`` (by outcome, as
the HTTP server counted them) close the page.

``prometheus_client`` is imported only while families are made (at a scrape).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from shoal._naming import defined_in
from shoal.errors import LocalProtocolError

if TYPE_CHECKING:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
    )
    from prometheus_client.metrics_core import Metric

    from shoal.node import Node

__all__ = ["GAUGE_FIELDS", "Collector"]

log = logging.getLogger("shoal")

GAUGE_FIELDS = frozenset({"peers", "links", "in_flight", "held", "subscribers", "topics"})
"""Statistics fields that are current sizes (gauges); every other number is a counter."""

_RESOURCE_LABELS = ("node", "node_id", "channel", "role")
_NODE_LABELS = ("node", "node_id")
_PEER_LABELS = ("node", "node_id", "peer", "peer_id")


class Snapshotting(Protocol):
    def statistics(self) -> object: ...


# -- statistics dataclasses -> samples ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    gauge: bool
    label: str | None  # a mapping's key label; None for a plain number


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """How one statistics class becomes metrics (found once per class)."""

    kind: str  # "subscriber", "reliable_pusher", "node"...
    fields: tuple[_Field, ...]
    help: Mapping[str, str]  # field -> the metric's help text


_plans: dict[type, _Plan] = {}
_warned: set[tuple[str, str]] = set()


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower())


def _plan(stats: object) -> _Plan:
    """The plan for ``stats``'s class. Raises ``LocalProtocolError`` if it is not a
    dataclass instance."""
    cls = type(stats)
    plan = _plans.get(cls)
    if plan is not None:
        return plan
    if not dataclasses.is_dataclass(stats) or isinstance(stats, type):
        raise LocalProtocolError(f"statistics() returned {stats!r}, not a dataclass instance; "
                                 "the exporter takes shoal nodes and resources")
    kind = _snake(cls.__name__.removesuffix("Statistics") or cls.__name__)
    fields = []
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if isinstance(value, bool):
            fields.append(_Field(f.name, gauge=True, label=None))
        elif isinstance(value, int | float):
            fields.append(_Field(f.name, gauge=f.name in GAUGE_FIELDS, label=None))
        elif isinstance(value, Mapping):
            head, by, label = f.name.rpartition("_by_")
            label = _snake(label) if by and head else "key"
            if label in _RESOURCE_LABELS:  # would clash with a label of every series
                label = f"{label}_key"
            gauge = (head if by and head else f.name) in GAUGE_FIELDS
            fields.append(_Field(f.name, gauge=gauge, label=label))
        elif (cls.__qualname__, f.name) not in _warned:
            _warned.add((cls.__qualname__, f.name))
            log.warning("the Prometheus exporter leaves out %s.%s (a %s, neither a number "
                        "nor a mapping of numbers)", cls.__qualname__, f.name,
                        type(value).__name__)
    docs = _field_docs(cls)
    help_text = {f.name: " ".join(filter(None, [docs.get(f.name), f"({cls.__qualname__}."
                                                f"{f.name})"])) for f in fields}
    plan = _plans[cls] = _Plan(kind, tuple(fields), help_text)
    return plan


def _field_docs(cls: type) -> dict[str, str]:
    """A dataclass's attribute docstrings (the string under a field), for help texts;
    empty where the source cannot be read."""
    # The module that defines it: public classes report their public module.
    module = sys.modules.get(defined_in(cls))
    try:
        tree = ast.parse(inspect.getsource(module)) if module is not None else None
    except (OSError, TypeError, SyntaxError):
        tree = None
    found = [n for n in tree.body if isinstance(n, ast.ClassDef)
             and n.name == cls.__name__] if tree is not None else []
    body = found[0].body if found else []
    docs = {}
    for stmt, after in itertools.pairwise(body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


Values = dict[tuple[str, str], float]
"""(field, mapping key or "") -> value."""


def _values(plan: _Plan, stats: object) -> Values:
    out: Values = {}
    for f in plan.fields:
        value = getattr(stats, f.name)
        if f.label is None:
            if isinstance(value, int | float):
                out[(f.name, "")] = float(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(v, int | float):
                    out[(f.name, str(k))] = float(v)
    return out


def _add(into: Values, values: Values, plan: _Plan, *, counters_only: bool = False) -> None:
    gauges = {f.name for f in plan.fields if f.gauge}
    for key, v in values.items():
        if counters_only and key[0] in gauges:
            continue
        into[key] = into.get(key, 0.0) + v


class _Families:
    """The metric families of one scrape, made as they are first needed."""

    def __init__(self) -> None:
        self._numbers: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        self._infos: dict[str, InfoMetricFamily] = {}

    def number(self, name: str, doc: str, labels: Iterable[str], *,
               gauge: bool) -> CounterMetricFamily | GaugeMetricFamily | None:
        """The family ``name`` (None if it exists with the other type: two fields that
        map to one name keep the first)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fam = self._numbers.get(name)
        if fam is None:
            cls = GaugeMetricFamily if gauge else CounterMetricFamily
            fam = self._numbers[name] = cls(name, doc, labels=list(labels))
        return fam if fam.type == ("gauge" if gauge else "counter") else None

    def info(self, name: str, doc: str, labels: Iterable[str]) -> InfoMetricFamily:
        from prometheus_client.core import InfoMetricFamily

        fam = self._infos.get(name)
        if fam is None:
            fam = self._infos[name] = InfoMetricFamily(name, doc, labels=list(labels))
        return fam

    def add(self, name: str, doc: str, *, gauge: bool, labels: dict[str, str],
            value: float) -> None:
        fam = self.number(name, doc, labels, gauge=gauge)
        if fam is not None:
            fam.add_metric(list(labels.values()), value)

    def emit(self, plan: _Plan, values: Values, labels: dict[str, str]) -> None:
        by_field = {f.name: f for f in plan.fields}
        for f in plan.fields:
            # every field gets its family, even a mapping with no keys yet
            self.number(f"shoal_{plan.kind}_{f.name}", plan.help[f.name],
                        [*labels, *([] if f.label is None else [f.label])], gauge=f.gauge)
        for (field, key), v in sorted(values.items()):
            f = by_field[field]
            extra = {} if f.label is None else {f.label: key}
            self.add(f"shoal_{plan.kind}_{field}", plan.help[field],
                     gauge=f.gauge, labels={**labels, **extra}, value=v)

    def __iter__(self) -> Iterator[Metric]:
        yield from self._numbers.values()
        yield from self._infos.values()


# -- what is exported --------------------------------------------------------------------------


class _Group:
    """Resources of one node on one (channel, role), and what the closed ones counted."""

    __slots__ = ("plan", "retired")

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.retired: Values = {}


class _NodeEntry:
    __slots__ = ("groups", "live", "node")

    def __init__(self, node: Node) -> None:
        self.node = node
        # resources seen at the last scrape, held so that their final counts can be read
        # once the node no longer lists them: id -> (channel, resource)
        self.live: dict[int, tuple[str, Snapshotting]] = {}
        self.groups: dict[tuple[str, str], _Group] = {}


def _listed_resources(node: Node) -> list[tuple[str, Snapshotting]]:
    """(channel, resource) for each resource open through ``node``.

    Read from ``node.resources()`` (records with ``channel`` and ``resource``), looked up
    by name so that a node without that accessor still exports itself and its peers."""
    lister: Callable[[], Iterable[Any]] | None = getattr(node, "resources", None)
    if lister is None:
        return []
    return [(str(rec.channel), rec.resource) for rec in lister()]


class Collector:
    """What is exported, read into metric families at each scrape (``families``).
    Call from the event loop's thread: nodes and resources are read where they live."""

    def __init__(self) -> None:
        self._nodes: dict[str, _NodeEntry] = {}  # node id -> entry
        self._resources: dict[int, tuple[str, Snapshotting, str]] = {}  # id -> (name, r, kind)
        self._collect_errors = 0

    def add_node(self, node: Node) -> None:
        """See ``PrometheusExporter.add_node``."""
        entry = self._nodes.get(node.id)
        if entry is not None:
            if entry.node is not node:
                raise LocalProtocolError(f"another node with id {node.id} is already exported; "
                                         "remove() it first, or give the nodes distinct "
                                         "names or node_id=")
            return
        _plan(node.statistics())
        self._nodes[node.id] = _NodeEntry(node)

    def add(self, resource: Snapshotting, *, name: str) -> None:
        """See ``PrometheusExporter.add``."""
        if not isinstance(name, str) or not name:
            raise LocalProtocolError(f"name= is a non-empty string, not {name!r}")
        stats = getattr(resource, "statistics", None)
        if not callable(stats):
            raise LocalProtocolError(f"{resource!r} has no statistics(); add() takes shoal "
                                     "resources (add_node() takes nodes)")
        kind = _plan(stats()).kind
        for other, (n, _, k) in self._resources.items():
            if n == name and k == kind and other != id(resource):
                raise LocalProtocolError(f"a {kind} is already exported as {name!r}; "
                                         "give each resource its own name=")
        self._resources[id(resource)] = (name, resource, kind)

    def remove(self, target: object) -> None:
        """See ``PrometheusExporter.remove``."""
        for nid, entry in list(self._nodes.items()):
            if entry.node is target:
                del self._nodes[nid]
        self._resources.pop(id(target), None)

    def families(self, requests: Mapping[str, int]) -> Iterator[Metric]:
        """The metric families, from fresh snapshots; ``requests``: HTTP connections
        served so far, by outcome."""
        fams = _Families()
        try:
            now: float | None = anyio.current_time()
        except RuntimeError:  # rendered outside the event loop: peer ages are unknown
            now = None
        for entry in self._nodes.values():
            self._collect_node(fams, entry, now)
        for name, res, _kind in self._resources.values():
            stats = self._snapshot(res)
            if stats is not None:
                plan = _plan(stats)
                fams.emit(plan, _values(plan, stats), self._labels("", "", name, plan.kind))
        fams.add("shoal_exporter_collect_errors", "statistics() calls that failed during "
                 "scrapes (see the log)", gauge=False, labels={},
                 value=self._collect_errors)
        fams.number("shoal_exporter_requests", "HTTP connections served, by outcome",
                    ["outcome"], gauge=False)
        for outcome, n in sorted(requests.items()):
            fams.add("shoal_exporter_requests", "HTTP connections served, by outcome",
                     gauge=False, labels={"outcome": outcome}, value=n)
        return iter(fams)

    @staticmethod
    def _labels(node: str, node_id: str, channel: str, role: str) -> dict[str, str]:
        return dict(zip(_RESOURCE_LABELS, (node, node_id, channel, role), strict=True))

    def _snapshot(self, target: Snapshotting) -> object | None:
        try:
            return target.statistics()
        except Exception:
            # one broken resource must not blank the whole page
            self._collect_errors += 1
            log.warning("statistics() of %r failed during a scrape", target, exc_info=True)
            return None

    def _collect_node(self, fams: _Families, entry: _NodeEntry, now: float | None) -> None:
        node = entry.node
        nlabels = {"node": node.name, "node_id": node.id}
        stats = self._snapshot(node)
        if stats is not None:
            plan = _plan(stats)
            fams.emit(plan, _values(plan, stats), nlabels)
        fams.info("shoal_node", "A node this exporter reads (epoch: its incarnation)",
                  [*_NODE_LABELS, "epoch"]).add_metric([node.name, node.id, str(node.epoch)], {})

        info = fams.info("shoal_peer", "A live peer of the node (address: where the node "
                         "reaches it)", [*_PEER_LABELS, "epoch", "address"])
        offers = fams.number("shoal_peer_offers", "Channel offers in the peer's catalogue",
                             _PEER_LABELS, gauge=True)
        age = fams.number("shoal_peer_last_seen_age_seconds", "Seconds since the node last "
                          "heard from the peer", _PEER_LABELS, gauge=True)
        for p in node.peers():
            plabels = [node.name, node.id, p.name, p.id]
            info.add_metric([*plabels, str(p.epoch), p.address], {})
            if offers is not None:
                offers.add_metric(plabels, len(p.channels))
            if age is not None and now is not None:
                age.add_metric(plabels, max(0.0, now - p.last_seen))

        # resources: fold in the counts of those closed since the last scrape, then add
        # the open ones, summed per (channel, role)
        listed = _listed_resources(node)
        current = {id(r): (ch, r) for ch, r in listed}
        for rid, (ch, res) in entry.live.items():
            if rid not in current:
                final = self._snapshot(res)
                if final is not None:
                    plan = _plan(final)
                    group = entry.groups.setdefault((ch, plan.kind), _Group(plan))
                    _add(group.retired, _values(plan, final), plan, counters_only=True)
        entry.live = current
        totals = {key: dict(group.retired) for key, group in entry.groups.items()}
        for ch, res in listed:
            snap = self._snapshot(res)
            if snap is not None:
                plan = _plan(snap)
                entry.groups.setdefault((ch, plan.kind), _Group(plan))
                _add(totals.setdefault((ch, plan.kind), {}), _values(plan, snap), plan)
        for (ch, kind), values in sorted(totals.items()):
            fams.emit(entry.groups[(ch, kind)].plan, values,
                      self._labels(node.name, node.id, ch, kind))
