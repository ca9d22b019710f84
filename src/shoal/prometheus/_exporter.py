"""A Prometheus exporter: shoal's counters over HTTP, served from the event loop.

    async with shoal.open_prometheus_exporter(bind=("127.0.0.1", 9464)) as exporter:
        exporter.add_node(node)                 # the node, its peers, what it opened
        exporter.add(pusher, name="jobs")       # a resource opened without a node
        ...                                     # GET http://127.0.0.1:9464/metrics

Contract:

* Nothing is read until a scrape: each ``GET /metrics`` takes fresh ``statistics()``
  snapshots (and the node's peer table) and renders them with ``prometheus_client``'s
  data model, in the exporter's own ``CollectorRegistry`` (never the global one).
  What is collected and how it is named: ``_metrics``.
* The HTTP server runs on the event loop (trio or asyncio): AnyIO listeners bound at
  ``bind``, one task per connection; no thread is started. Its limits (request head
  size, connection timeout, connections at once), and why it is shoal's own: ``_http``.
  A misbehaving client, or a resource whose ``statistics()`` fails, never takes the
  exporter (or the application around it) down.
* ``bind`` is required: the exporter listens only where it is told.
* ``prometheus_client`` is imported when an exporter opens, not with shoal: without
  it, opening raises ``LocalProtocolError`` saying what to install.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup

from shoal._zmq._socket import require_loop
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import LocalProtocolError, TransportError
from shoal.prometheus._http import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT,
    MAX_REQUEST_BYTES,
    MetricsServer,
)
from shoal.prometheus._metrics import GAUGE_FIELDS, Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from shoal.node import Node
    from shoal.prometheus._metrics import Snapshotting

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "GAUGE_FIELDS", "MAX_REQUEST_BYTES",
           "PrometheusExporter", "open_prometheus_exporter"]

log = logging.getLogger("shoal")

_INSTALL_HINT = "pip install 'shoal[prometheus]'"


class PrometheusExporter:
    """Serves the counters of nodes and resources to Prometheus. Make one with
    ``open_prometheus_exporter``; ``address`` is where it listens, ``registry`` the
    ``prometheus_client.CollectorRegistry`` it renders (register more collectors
    there to serve them on the same page)."""

    def __init__(self, registry: CollectorRegistry, listeners: list[SocketListener], *,
                 timeout: float, max_connections: int) -> None:
        self.registry = registry
        self._listeners = listeners
        self._collector = Collector()
        self._server = MetricsServer(self._render, timeout=timeout,
                                     max_connections=max_connections)
        registry.register(self)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the exporter listens on (the port chosen when ``bind`` said 0)."""
        sockname = self._listeners[0].extra(SocketAttribute.local_address)
        assert isinstance(sockname, tuple)
        return str(sockname[0]), int(sockname[1])

    # -- what to export ------------------------------------------------------------------

    def add_node(self, node: Node) -> None:
        """Export ``node``: its ``statistics()`` (labels ``node``, ``node_id``), its peers
        (``shoal_peer_*``) and every resource opened through it, now and later (labels
        ``channel`` and ``role``). Adding the same node again does nothing. Raises
        ``LocalProtocolError`` for another node with the same id (their series would
        collide: give the nodes distinct names or ``node_id=``)."""
        self._collector.add_node(node)

    def add(self, resource: Snapshotting, *, name: str) -> None:
        """Export a resource opened without a node (``shoal.open_pusher(...)`` and the
        like): its ``statistics()``, labelled ``channel=name`` and its role. Exported
        until ``remove(resource)``, closed or not (its counters then stay as they were).

        Raises ``LocalProtocolError`` if ``name`` is not a non-empty string, if the
        resource has no ``statistics()`` giving a dataclass, or if another resource of
        the same role is already exported under ``name``."""
        self._collector.add(resource, name=name)

    def remove(self, target: object) -> None:
        """Stop exporting a node or resource (its series vanish). Unknown: no-op."""
        self._collector.remove(target)

    # -- prometheus_client's collector protocol -------------------------------------------

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on what is open at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families, from fresh snapshots. Call from the event loop's thread."""
        return self._collector.families(self._server.outcomes)

    def _render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


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
    require_loop("shoal.open_prometheus_exporter() was entered")
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
        # a host name with several addresses gets one listener per address, all on
        # the same port (a free one when ``bind`` said 0), so ``address`` tells the truth
        multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise TransportError(f"cannot listen on {host}:{port} for the Prometheus exporter: "
                             f"{exc.strerror or exc}", exc.errno) from exc
    # create_tcp_listener makes socket listeners (its type says only Listener)
    listeners = [cast(SocketListener, listener) for listener in multi.listeners]
    try:
        exporter = PrometheusExporter(CollectorRegistry(), listeners, timeout=connection_timeout,
                                      max_connections=max_connections)
        async with open_service_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(_accept, listener, exporter._server.handle, nursery)
            try:
                yield exporter
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await anyio.aclose_forcefully(listener)


# accept() failing for want of resources: wait and try again rather than stop serving
_ACCEPT_CAPACITY = frozenset(getattr(errno, name) for name in (
    "EMFILE", "ENFILE", "ENOMEM", "ENOBUFS") if hasattr(errno, name))
# a connection that failed before it was accepted (accept(2) on Linux passes on the
# network's errors): take the next one
_ACCEPT_GONE = frozenset(getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
    "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH") if hasattr(errno, name))


async def _accept(listener: SocketListener,
                  handle: Callable[[SocketStream], Coroutine[Any, Any, None]],
                  nursery: TaskGroup) -> None:
    """Accept connections until cancelled, each handled in a task of ``nursery``."""
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_GONE:
                continue
            if exc.errno not in _ACCEPT_CAPACITY:
                raise
            log.error("the Prometheus exporter cannot accept a connection: %s; trying again "
                      "in 0.1 s", exc.strerror or exc)
            await anyio.sleep(0.1)
            continue
        nursery.start_soon(handle, stream)
