"""Scatter/gather: ``request_all`` / ``gather`` send one request to every replier a
requester can address and report each replier's answer (a reply, an error) or its
absence, with the replier's identity.

Network safety: loopback only (explicit 127.0.0.1 endpoints; nodes with ``Static``
discovery on 127.0.0.1).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from functools import partial

import anyio
import pytest

import shoal
from shoal.errors import LocalProtocolError
from shoal.patterns import Answer, AnswerStatus, serve_replier
from support.endpoints import free_port
from support.nodes import open_test_node

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"


async def answer_with(name: str, rep: shoal.Replier, *, stall: bool = False) -> None:
    """Answer every request with ``name`` (``stall``: take every request, answer
    none)."""
    async for req in rep:
        if stall:
            continue
        if req.body == "fail":
            await req.fail(f"{name} cannot")
        else:
            await req.reply(name)


@asynccontextmanager
async def three_repliers(*, stall_d: bool = False) -> AsyncIterator[
        tuple[list[shoal.Node], shoal.patterns.Requester]]:
    """Nodes b, c and d answer on ``calc`` with their names (d takes and never
    answers when ``stall_d``); node a's requester, once it sees all three. Yields
    ``[b, c, d]`` and the requester."""
    hub = free_port()
    async with (
        open_test_node("a", port=hub) as a,
        open_test_node("b", peers=[hub]) as b,
        open_test_node("c", peers=[hub]) as c,
        open_test_node("d", peers=[hub]) as d,
        b.open_replier("calc") as rb, c.open_replier("calc") as rc,
        d.open_replier("calc") as rd,
        a.open_requester("calc") as client,
        anyio.create_task_group() as nursery,
    ):
        nursery.start_soon(answer_with, "b", rb)
        nursery.start_soon(answer_with, "c", rc)
        nursery.start_soon(partial(answer_with, "d", rd, stall=stall_d))
        await a.wait_for_peers(3, channel="calc")
        try:
            yield [b, c, d], client
        finally:
            nursery.cancel_scope.cancel()


async def test_three_repliers_over_nodes_all_answer_with_their_node_ids() -> None:
    with anyio.fail_after(20):
        async with three_repliers() as ([b, c, d], client):
            got = await client.gather("hi", within=10)
    assert got.complete
    assert {(x.replier, x.body) for x in got.replies} == {
        (b.id, "b"), (c.id, "c"), (d.id, "d")}
    assert all(x.ok and x.message is not None and x.message.sender == x.replier
               for x in got.replies)


async def test_a_stalled_replier_is_reported_missing_at_within() -> None:
    """Two repliers answer; the third takes the request and never answers. The call
    ends at ``within`` with two answers and the third missing."""
    with anyio.fail_after(20):
        async with three_repliers(stall_d=True) as ([b, c, d], client):
            seen: list[Answer] = []
            async with aclosing(client.request_all("hi", within=0.5)) as answers:
                async for answer in answers:
                    seen.append(answer)
    assert {(x.replier, x.status, x.body) for x in seen} == {
        (b.id, AnswerStatus.REPLIED, "b"), (c.id, AnswerStatus.REPLIED, "c"),
        (d.id, AnswerStatus.MISSING, None)}
    assert seen[-1].replier == d.id  # the missing come last
    assert "no answer within 0.5 s" in seen[-1].error
    assert client.statistics().in_flight == 0


async def test_a_failing_handler_is_reported_for_its_replier_only() -> None:
    """Explicit endpoints (``per_endpoint=True``), ``serve_replier``: one handler
    raises; its answer is FAILED with the error text, the others' are replies."""

    def handler(name: str):  # type: ignore[no-untyped-def]
        def handle(req: shoal.Request) -> str:
            if name == "r2":
                raise ValueError("r2 is broken")
            return f"{name}:{req.body}"
        return handle

    with anyio.fail_after(15):
        async with anyio.create_task_group() as nursery:
            reps = [await nursery.start(partial(serve_replier, handler(f"r{i}"),
                                                bind=LOOPBACK)) for i in (1, 2, 3)]
            eps = [r.endpoints[0] for r in reps]
            async with shoal.open_requester(connect=eps, per_endpoint=True) as client:
                got = await client.gather("x", within=10)
            nursery.cancel_scope.cancel()
    assert got.complete
    by_ep = {x.endpoint: x for x in got.replies}
    assert set(by_ep) == set(eps)
    assert [by_ep[ep].status for ep in eps] == [
        AnswerStatus.REPLIED, AnswerStatus.FAILED, AnswerStatus.REPLIED]
    assert (by_ep[eps[0]].body, by_ep[eps[2]].body) == ("r1:x", "r3:x")
    assert "ValueError: r2 is broken" in by_ep[eps[1]].error
    assert all(x.replier == x.endpoint for x in got.replies)


async def test_the_copies_carry_the_deadline() -> None:
    deadlines: list[float] = []

    def handle(req: shoal.Request) -> str:
        deadlines.append(req.deadline - anyio.current_time())
        return "ok"

    with anyio.fail_after(15):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(serve_replier, handle, bind=LOOPBACK))
            async with shoal.open_requester(connect=rep.endpoints,
                                            per_endpoint=True) as client:
                got = await client.gather("x", within=30)
            nursery.cancel_scope.cancel()
    assert [x.body for x in got.replies] == ["ok"]
    assert len(deadlines) == 1
    assert 0 < deadlines[0] <= 30


async def test_a_replier_that_is_down_is_missing_and_the_others_answer() -> None:
    with anyio.fail_after(15):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(serve_replier, lambda req: "up",
                                              bind=LOOPBACK))
            down = f"tcp://127.0.0.1:{free_port()}"
            async with shoal.open_requester(connect=[rep.endpoints[0], down],
                                            per_endpoint=True) as client:
                got = await client.gather("x", within=1)
            nursery.cancel_scope.cancel()
    assert [(x.endpoint, x.body) for x in got.replies] == [(rep.endpoints[0], "up")]
    assert [(x.endpoint, x.status) for x in got.missing] == [(down, AnswerStatus.MISSING)]
    # the request queued for the endpoint (libzmq keeps a pipe for a connection
    # still being attempted): it is missing for want of an answer
    assert got.missing[0].error == "no answer within 1 s"


async def test_plain_requesters_and_bad_arguments_are_refused() -> None:
    with anyio.fail_after(5):
        async with shoal.open_requester(connect="tcp://127.0.0.1:9") as plain:
            with pytest.raises(LocalProtocolError, match="per_endpoint=True"):
                await plain.gather("x", within=1)
        async with shoal.open_requester(connect="tcp://127.0.0.1:9",
                                        per_endpoint=True) as client:
            for bad in (0, -1, float("inf"), "1", True, None):
                with pytest.raises(LocalProtocolError, match="within"):
                    await client.gather("x", within=bad)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError, match="connect= endpoints only"):
            async with shoal.open_requester(bind=LOOPBACK, per_endpoint=True):
                pass  # pragma: no cover


async def test_no_replier_known_yields_nothing_at_once() -> None:
    with anyio.fail_after(10):
        async with open_test_node("a") as a, a.open_requester("nobody") as client:
            got = await client.gather("x", within=60)
    assert (got.replies, got.missing) == ((), ())
