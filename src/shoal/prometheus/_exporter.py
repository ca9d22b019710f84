"""A Prometheus exporter: shoal's counters over HTTP, served from trio.

    async with shoal.open_prometheus_exporter(bind=("127.0.0.1", 9464)) as exporter:
        exporter.add_node(node)                 # the node, its peers, what it opened
        exporter.add(pusher, name="jobs")       # a resource opened without a node
        ...                                     # GET http://127.0.0.1:9464/metrics

Contract:

* Nothing is read until a scrape: each ``GET /metrics`` takes fresh ``statistics()``
  snapshots (and the node's peer table) and renders them with ``prometheus_client``'s
  data model, in the exporter's own ``CollectorRegistry`` (never the global one).
* The HTTP server is trio's (``trio.serve_listeners`` on the listeners bound at
  ``bind``); no thread is started. Each connection carries one request: a request
  head over ``MAX_REQUEST_BYTES`` is answered 431; a connection not answered within
  ``connection_timeout`` seconds is cut off; at most ``max_connections`` are served
  at once (more are closed unanswered); every connection is closed after its
  response. A misbehaving client, or a resource whose ``statistics()`` fails, never
  takes the exporter (or the application around it) down.
* ``bind`` is required: the exporter listens only where it is told.
* ``prometheus_client`` is imported when an exporter opens, not with shoal: without
  it, opening raises ``LocalProtocolError`` saying what to install.

Naming (Prometheus conventions). A statistics dataclass ``FooBarStatistics`` gives
metrics ``shoal_foo_bar_<field>``, one per field, found generically so that a field
added later is exported too:

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
exporter runs (Prometheus would read that as a restart).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import logging
import re
import textwrap
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, Protocol

import trio

from shoal._zmq._socket import require_trio
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import LocalProtocolError, TransportError

if TYPE_CHECKING:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
    )
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from shoal.node._node import Node

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "GAUGE_FIELDS", "MAX_REQUEST_BYTES",
           "PrometheusExporter", "open_prometheus_exporter"]

log = logging.getLogger("shoal")

GAUGE_FIELDS = frozenset({"peers", "links", "in_flight", "held", "subscribers", "topics"})
"""Statistics fields that are current sizes (gauges); every other number is a counter."""
MAX_REQUEST_BYTES = 8192
"""Largest request head (request line and headers) the exporter reads."""
DEFAULT_TIMEOUT = 10.0
"""Seconds a connection may take, from accept to response sent, before it is cut off."""
DEFAULT_MAX_CONNECTIONS = 16
"""Connections served at once; further ones are closed without an answer."""

_INSTALL_HINT = "pip install 'shoal[prometheus]'"
_RESOURCE_LABELS = ("node", "node_id", "channel", "role")
_NODE_LABELS = ("node", "node_id")
_PEER_LABELS = ("node", "node_id", "peer", "peer_id")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.([01])")
# How long, after the response, a connection is drained so that closing it does not
# reset it (and destroy the response) while the client's bytes are still arriving.
_LINGER = 1.0
_LINGER_BYTES = 65536

Outcome = Literal["ok", "not_found", "method_not_allowed", "bad_request", "too_large",
                  "timeout", "busy", "empty", "error"]


class _Snapshotting(Protocol):
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
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
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
        self.live: dict[int, tuple[str, _Snapshotting]] = {}
        self.groups: dict[tuple[str, str], _Group] = {}


def _listed_resources(node: Node) -> list[tuple[str, _Snapshotting]]:
    """(channel, resource) for each resource open through ``node``.

    Read from ``node.resources()`` (records with ``channel`` and ``resource``), looked up
    by name so that a node without that accessor still exports itself and its peers."""
    lister: Callable[[], Iterable[Any]] | None = getattr(node, "resources", None)
    if lister is None:
        return []
    return [(str(rec.channel), rec.resource) for rec in lister()]


class PrometheusExporter:
    """Serves the counters of nodes and resources to Prometheus. Make one with
    ``open_prometheus_exporter``; ``address`` is where it listens, ``registry`` the
    ``prometheus_client.CollectorRegistry`` it renders (register more collectors
    there to serve them on the same page)."""

    def __init__(self, registry: CollectorRegistry, listeners: list[trio.SocketListener], *,
                 timeout: float, max_connections: int) -> None:
        self.registry = registry
        self._listeners = listeners
        self._timeout = timeout
        self._max_connections = max_connections
        self._active = 0
        self._nodes: dict[str, _NodeEntry] = {}  # node id -> entry
        self._resources: dict[int, tuple[str, _Snapshotting, str]] = {}  # id -> (name, r, kind)
        self._outcomes: dict[str, int] = {}
        self._collect_errors = 0
        registry.register(self)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the exporter listens on (the port chosen when ``bind`` said 0)."""
        sockname = self._listeners[0].socket.getsockname()
        return str(sockname[0]), int(sockname[1])

    # -- what to export ------------------------------------------------------------------

    def add_node(self, node: Node) -> None:
        """Export ``node``: its ``statistics()`` (labels ``node``, ``node_id``), its peers
        (``shoal_peer_*``) and every resource opened through it, now and later (labels
        ``channel`` and ``role``). Adding the same node again does nothing. Raises
        ``LocalProtocolError`` for another node with the same id (their series would
        collide: give the nodes distinct names or ``node_id=``)."""
        entry = self._nodes.get(node.id)
        if entry is not None:
            if entry.node is not node:
                raise LocalProtocolError(f"another node with id {node.id} is already exported; "
                                         "remove() it first, or give the nodes distinct "
                                         "names or node_id=")
            return
        _plan(node.statistics())
        self._nodes[node.id] = _NodeEntry(node)

    def add(self, resource: _Snapshotting, *, name: str) -> None:
        """Export a resource opened without a node (``shoal.open_pusher(...)`` and the
        like): its ``statistics()``, labelled ``channel=name`` and its role. Exported
        until ``remove(resource)``, closed or not (its counters then stay as they were).

        Raises ``LocalProtocolError`` if ``name`` is not a non-empty string, if the
        resource has no ``statistics()`` giving a dataclass, or if another resource of
        the same role is already exported under ``name``."""
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
        """Stop exporting a node or resource (its series vanish). Unknown: no-op."""
        for nid, entry in list(self._nodes.items()):
            if entry.node is target:
                del self._nodes[nid]
        self._resources.pop(id(target), None)

    # -- prometheus_client's collector protocol -------------------------------------------

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on what is open at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families, from fresh snapshots. Call from the trio thread."""
        fams = _Families()
        try:
            now: float | None = trio.current_time()
        except RuntimeError:  # rendered outside trio: peer ages are unknown
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
        for outcome, n in sorted(self._outcomes.items()):
            fams.add("shoal_exporter_requests", "HTTP connections served, by outcome",
                     gauge=False, labels={"outcome": outcome}, value=n)
        return iter(fams)

    @staticmethod
    def _labels(node: str, node_id: str, channel: str, role: str) -> dict[str, str]:
        return dict(zip(_RESOURCE_LABELS, (node, node_id, channel, role), strict=True))

    def _snapshot(self, target: _Snapshotting) -> object | None:
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

    # -- HTTP ----------------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        """One connection: one request, one response, closed. Never raises."""
        if self._active >= self._max_connections:
            self._count("busy")
            await trio.aclose_forcefully(stream)
            return
        self._active += 1
        outcome: Outcome = "error"
        try:
            with trio.move_on_after(self._timeout) as scope:
                outcome = await self._exchange(stream)
            if scope.cancelled_caught:
                outcome = "timeout"
            elif outcome != "empty":
                await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away: "error", unless it had been answered
        except Exception:
            # a bug here must not crash the application embedding the exporter
            outcome = "error"
            log.exception("the Prometheus exporter failed on a connection")
        finally:
            self._active -= 1
            self._count(outcome)
            await trio.aclose_forcefully(stream)

    def _count(self, outcome: Outcome) -> None:
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    async def _exchange(self, stream: trio.SocketStream) -> Outcome:
        """Read one request and answer it; the outcome (set before the answer is sent,
        so a client that leaves while reading it still counts as answered)."""
        head = await _read_head(stream)
        if head is None:
            await _respond(stream, 431, "Request Header Fields Too Large",
                           b"request head too large\n")
            return "too_large"
        if not head:
            return "empty"  # connected and closed without a request (a port probe)
        first = head.split(b"\n", 1)[0].rstrip(b"\r")
        match = _REQUEST_LINE.fullmatch(first.decode("latin-1"))
        if match is None:
            await _respond(stream, 400, "Bad Request", b"not an HTTP/1.x request\n")
            return "bad_request"
        method, target = match.group(1), match.group(2)
        if target.split("?", 1)[0] != "/metrics":
            await _respond(stream, 404, "Not Found", b"metrics are at /metrics\n")
            return "not_found"
        if method not in ("GET", "HEAD"):
            await _respond(stream, 405, "Method Not Allowed", b"use GET\n",
                           extra=b"Allow: GET, HEAD\r\n")
            return "method_not_allowed"
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        try:
            body = generate_latest(self.registry)
        except Exception:
            log.exception("the Prometheus exporter failed to render the metrics")
            await _respond(stream, 500, "Internal Server Error", b"see the server's log\n")
            return "error"
        await _respond(stream, 200, "OK", body, content_type=CONTENT_TYPE_LATEST,
                       head_only=method == "HEAD")
        return "ok"


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request head; b"" if the client closed first; None if it is too large."""
    buf = bytearray()
    while True:
        chunk = await stream.receive_some(MAX_REQUEST_BYTES + 1 - len(buf))
        if not chunk:
            return b""
        # search from a little before the new bytes: the terminator may straddle chunks
        start = max(0, len(buf) - 3)
        buf += chunk
        end = _HEAD_END.search(buf, start)
        if end is not None:
            return bytes(buf[:end.start()])
        if len(buf) > MAX_REQUEST_BYTES:
            return None


async def _respond(stream: trio.SocketStream, code: int, reason: str, body: bytes, *,
                   content_type: str = "text/plain; charset=utf-8", extra: bytes = b"",
                   head_only: bool = False) -> None:
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode("latin-1")
    await stream.send_all(head + extra + b"\r\n" + (b"" if head_only else body))


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then read (and drop) what the client still sends until it closes,
    briefly: closing with unread bytes would reset the connection, and a reset can
    destroy a response the client has not read yet."""
    await stream.send_eof()
    drained = 0
    with trio.move_on_after(_LINGER):
        while drained < _LINGER_BYTES:
            chunk = await stream.receive_some(16384)
            if not chunk:
                return
            drained += len(chunk)


def _check_bind(bind: object) -> tuple[str, int]:
    if (not isinstance(bind, tuple | list) or len(bind) != 2
            or not isinstance(bind[0], str) or not bind[0]
            or not isinstance(bind[1], int) or isinstance(bind[1], bool)
            or not 0 <= bind[1] <= 65535):
        raise LocalProtocolError(
            f"bind= is (host, port), e.g. ('127.0.0.1', 9464) (port 0 picks one), not {bind!r}")
    return bind[0], bind[1]


@asynccontextmanager
async def open_prometheus_exporter(
    *, bind: tuple[str, int], connection_timeout: float = DEFAULT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> AsyncIterator[PrometheusExporter]:
    """Serve shoal's counters to Prometheus at ``http://HOST:PORT/metrics``.

    ``bind``: ``(host, port)`` to listen on, e.g. ``("127.0.0.1", 9464)``; port 0 picks
    a free one (``exporter.address`` tells which). ``connection_timeout``: seconds a
    connection may take, from accept to response sent, before it is cut off.
    ``max_connections``: connections served at once. Add what to export with
    ``exporter.add_node(node)`` and ``exporter.add(resource, name=...)``. Leaving the
    block closes the listeners and every connection.

    Raises ``LocalProtocolError`` for bad arguments or if ``prometheus_client`` is not
    installed (``pip install 'shoal[prometheus]'``), ``TransportError`` if the address
    cannot be bound.
    """
    require_trio("shoal.open_prometheus_exporter() was entered")
    try:
        from prometheus_client import CollectorRegistry
    except ImportError as exc:
        raise LocalProtocolError("the Prometheus exporter needs the prometheus-client "
                                 f"package: {_INSTALL_HINT}") from exc
    host, port = _check_bind(bind)
    if (not isinstance(connection_timeout, int | float) or isinstance(connection_timeout, bool)
            or not 0 < connection_timeout < float("inf")):
        raise LocalProtocolError("connection_timeout= is a positive number of seconds, "
                                 f"not {connection_timeout!r}")
    if not isinstance(max_connections, int) or isinstance(max_connections, bool) \
            or max_connections < 1:
        raise LocalProtocolError(f"max_connections= is at least 1, not {max_connections!r}")
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise TransportError(f"cannot listen on {host}:{port} for the Prometheus exporter: "
                             f"{exc.strerror or exc}", exc.errno) from exc
    if port == 0 and len(listeners) > 1:
        # a host name with several addresses got one free port per address: keep the
        # first, so that ``address`` tells the whole truth
        for extra in listeners[1:]:
            await trio.aclose_forcefully(extra)
        del listeners[1:]
    try:
        exporter = PrometheusExporter(CollectorRegistry(), listeners, timeout=connection_timeout,
                                      max_connections=max_connections)
        async with open_service_nursery() as nursery:
            await nursery.start(trio.serve_listeners, exporter._handle, listeners)
            try:
                yield exporter
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:  # serve_listeners closed them, unless it never started
            await trio.aclose_forcefully(listener)
