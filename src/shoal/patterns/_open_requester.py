"""``open_requester``: a requester on explicit endpoints, plain or per endpoint.

Plain (the default): a DEALER; libzmq spreads requests round-robin over the
connected repliers. ``per_endpoint=True``: a ROUTER that connects to each endpoint
under a route of its own (``b"e"`` and the endpoint), as a node's requester does to
its peers, so that it picks the replier of each request itself (least loaded, a
vanished replier's requests fail at once) and can address every replier
(``request_all``). The link monitor that notices a dropped connection runs in a
task of this context manager.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import zmq

from shoal._core import Identity
from shoal._zmq._socket import DEFAULT_LINGER_MS
from shoal._zmq._tasks import open_service_nursery
from shoal.errors import LocalProtocolError
from shoal.patterns._common import (
    DEFAULT_BATCH,
    Endpoints,
    check_busy_poll,
    endpoint_list,
    open_socket,
)
from shoal.patterns._request_slots import requester_options
from shoal.patterns._requester import Requester

__all__ = ["open_requester"]


@asynccontextmanager
async def open_requester(
    *,
    bind: Endpoints = None,
    connect: Endpoints = None,
    identity: Identity | None = None,
    high_water_mark: int = 1000,
    batch: int = DEFAULT_BATCH,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
    linger_ms: int = DEFAULT_LINGER_MS,
    busy_poll: float = 0.0,
    per_endpoint: bool = False,
) -> AsyncIterator[Requester]:
    """Open a requester. Requests are spread round-robin over connected repliers.

    ``busy_poll``: seconds a call waiting for its reply spins before it sleeps (see
    the README's "Busy polling": lower latency for a core's worth of CPU).

    ``per_endpoint=True`` (with ``connect=`` only): one connection per endpoint that
    the requester addresses itself, as a node's requester does: each request goes to
    the replier with the fewest in flight, a request whose replier's connection
    drops raises ``PeerLost`` at once, and ``request_all`` / ``gather`` reach every
    endpoint. Raises ``LocalProtocolError`` with ``bind=``.
    """
    busy_poll = check_busy_poll(busy_poll)
    if not per_endpoint:
        sock = open_socket("open_requester", zmq.DEALER, bind=bind, connect=connect,
                           high_water_mark=high_water_mark, batch=batch, context=context,
                           linger_ms=linger_ms, options=requester_options(high_water_mark))
        sock.busy_poll = busy_poll
        async with Requester(sock, identity, batch=batch) as client:
            yield client
        return
    endpoints = endpoint_list(connect, "connect")
    if bind is not None or not endpoints:
        raise LocalProtocolError("per_endpoint=True takes connect= endpoints only (it "
                                 "addresses the repliers it connects to); drop bind=")
    sock = open_socket("open_requester", zmq.ROUTER, bind=None, connect=None,
                       high_water_mark=high_water_mark, batch=batch, context=context,
                       linger_ms=linger_ms, endpoints_checked=True,
                       options=requester_options(high_water_mark, routed=True))
    sock.busy_poll = busy_poll
    async with (
        Requester(sock, identity, batch=batch, routed=True) as client,
        open_service_nursery() as nursery,
    ):
        assert client.links is not None
        nursery.start_soon(client.links.run)
        for ep in endpoints:
            client.add_route(b"e" + ep.encode(), ep)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()
