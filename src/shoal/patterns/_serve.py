"""``serve_replier``: answer every request of a replier with a handler function.

The handler takes the ``Request`` and returns the reply body; an exception becomes an
error reply and serving goes on. A request carrying its caller's deadline runs under
a cancel scope with the deadline ``req.deadline`` (see ``shoal.patterns._replier``), so
the handler's own requests pass the time left on. The replier itself: ``shoal.patterns._replier``.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from shoal._core import Identity
from shoal.errors import ClosedError, EncodeError
from shoal.patterns._common import Endpoints
from shoal.patterns._replier import Replier, Request, open_replier

__all__ = ["Handler", "serve_replier"]

log = logging.getLogger("shoal")

_INF = math.inf


Handler = Callable[[Request], Any | Awaitable[Any]]
"""``def handler(req: Request) -> reply body`` (or ``async def``)."""

_MISTAKEN_FOR_BODY = ("'Request'", "'_ReqRequest'")
"""How Python names the type in the TypeError/AttributeError of a handler that treats
its ``Request`` as the body (``req["a"]``, ``"a" in req``, ``req.get("a")``, ``req + 1``)."""


def _took_request_for_body(exc: Exception) -> bool:
    """Whether a handler's ``exc`` comes from treating its ``Request`` as the body."""
    return isinstance(exc, TypeError | AttributeError) and any(
        name in str(exc) for name in _MISTAKEN_FOR_BODY)


def _explain(exc: Exception, took_request: bool) -> str:
    """The error reply for a handler that raised ``exc``: its type and message, and for
    a handler that took the ``Request`` for the body, what it got instead."""
    text = f"{type(exc).__name__}: {exc}"
    if took_request:
        text += (" (the handler received a shoal.Request, not the request's body: its "
                 "body is req.body; write def handler(req): ... req.body ...)")
    return text


async def serve_replier(
    handler: Handler,
    *,
    bind: Endpoints = None,
    connect: Endpoints = None,
    identity: Identity | None = None,
    task_status: TaskStatus[Replier] = TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Answer every request with ``handler(req)`` until cancelled.

    ``handler`` takes the ``Request`` (not its body: the body is ``req.body``, beside
    ``req.headers`` and ``req.message``) and returns the reply body; it may be a plain
    function or an ``async def``::

        def add(req: shoal.Request) -> int:
            return req.body["a"] + req.body["b"]

    Use with ``nursery.start`` (trio) or ``task_group.start`` (AnyIO): it reports the
    open ``Replier`` (for ``.endpoints`` and ``statistics()``). An exception in the
    handler becomes a ``RemoteError`` at the caller and serving goes on; so does a
    return value msgpack cannot encode. A handler that treats the ``Request`` as the
    body (``req["a"]``, ``req.get("a")``) fails with a ``TypeError``/``AttributeError``
    whose reply, and log warning, says so. ``options`` go to ``open_replier``.

    A request that carries its caller's deadline runs under a cancel scope with the
    deadline ``req.deadline``: an ``async`` handler still running when the caller
    stops waiting is cancelled and the request left unanswered
    (``statistics().cut_short``); requests the handler makes inherit what is left of
    the time. A request whose deadline passed while it queued is skipped
    (``statistics().expired``).
    """
    warned = False
    async with open_replier(bind=bind, connect=connect, identity=identity, **options) as rep:
        io = rep._sock.loop  # a scope per request: the event loop's own, not AnyIO's
        task_status.started(rep)
        async for req in rep:
            try:
                if req.deadline == _INF:
                    result = handler(req)
                    if inspect.isawaitable(result):
                        result = await result
                else:
                    left = max(req.deadline - io.current_time(), 0.0)
                    with io.move_on_after(left) as scope:
                        result = handler(req)
                        if inspect.isawaitable(result):
                            result = await result
                    if scope.cancelled_caught:
                        rep.cut_short(req)
                        continue
            except Exception as exc:
                took_request = _took_request_for_body(exc)
                text = _explain(exc, took_request)
                if took_request and not warned:
                    warned = True  # once per replier: the handler is wrong every time
                    log.warning("serve_replier: handler %r failed: %s", handler, text)
                else:
                    log.debug("handler failed on request %d: %r", req.id, exc)
                await req.fail(text)
                continue
            try:
                await req.reply(result)
            except EncodeError as exc:
                await req.fail(f"the handler's result could not be encoded: {exc}")
            except ClosedError:
                return
