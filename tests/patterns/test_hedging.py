"""Hedged requests: ``request(body, hedge_after=...)`` sends the same request (same id)
to another replier when no reply came in time; the first answer wins, later ones are
counted as waste, and no replier runs one request twice. Also least-loaded routing
over a node's repliers.

Network safety: loopback only (explicit 127.0.0.1 endpoints; nodes with ``Static``
discovery on 127.0.0.1, in this process or in a peer process, ``tests/support/peer.py``,
that is always killed).
"""

from __future__ import annotations

from collections import Counter
from functools import partial

import anyio
import pytest

import shoal
from shoal.errors import LocalProtocolError
from shoal.patterns import serve_replier
from support.endpoints import free_port
from support.nodes import FAST, open_test_node
from support.peers import node_process
from support.waiting import eventually

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"


async def test_bad_hedge_after_values_are_refused() -> None:
    with anyio.fail_after(5):
        async with shoal.open_requester(connect="tcp://127.0.0.1:9") as client:
            for bad in (0, -1, "p0", "p100", "fast", "p9x", True):
                with pytest.raises(LocalProtocolError, match="hedge_after"):
                    await client.request(b"x", hedge_after=bad)


async def test_a_hedged_copy_to_the_same_replier_does_not_run_twice() -> None:
    ran: Counter[int] = Counter()

    async def handler(req: shoal.Request) -> int:
        ran[req.id] += 1
        await anyio.sleep(0.2)
        return int(req.body) * 2

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(serve_replier, handler, bind=LOOPBACK))
            async with shoal.open_requester(connect=rep.endpoints) as client:
                assert await client.request(21, hedge_after=0.02) == 42
                st = client.statistics()
                assert (st.hedged, st.replies) == (1, 1)
            await eventually(lambda: rep.statistics().duplicates == 1)
            nursery.cancel_scope.cancel()
    assert list(ran.values()) == [1]


async def test_the_first_answer_wins_and_the_slower_copy_is_counted_as_waste() -> None:
    """Whichever replier sees a request first stalls 0.3 s; the hedged copy's replier
    answers at once. The caller gets the hedge's answer; the stalled one comes later
    and is dropped, counted."""
    seen: set[int] = set()
    ran: Counter[tuple[str, int]] = Counter()

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def handle(req: shoal.Request) -> str:
            ran[name, req.id] += 1
            if req.body == "hedged" and req.id not in seen:
                seen.add(req.id)
                await anyio.sleep(0.3)
            return name
        return handle

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            r1 = await nursery.start(partial(serve_replier, handler("r1"), bind=LOOPBACK))
            r2 = await nursery.start(partial(serve_replier, handler("r2"), bind=LOOPBACK))
            async with shoal.open_requester(connect=r1.endpoints + r2.endpoints) as client:
                answered: set[str] = set()
                while answered != {"r1", "r2"}:  # both connections up
                    answered.add(await client.request("warm"))
                got = await client.request("hedged", hedge_after=0.05)
                # no task reads while no call waits: later calls read the late answer
                while client.statistics().hedge_wasted == 0:
                    await client.request("more")
                    await anyio.sleep(0.02)
                st = client.statistics()
                assert (st.hedged, st.unmatched) == (1, 0)
            nursery.cancel_scope.cancel()
    hedged_id = next(iter(seen))
    assert {ran["r1", hedged_id], ran["r2", hedged_id]} == {1}  # once on each
    assert got in ("r1", "r2")


async def test_a_replier_closed_mid_request_leaves_the_hedged_copy_to_answer_once() -> None:
    """Over a node: b never answers, c answers after 0.3 s. The request reaches both
    (first copy, then the hedge); b goes away while both hold it. The caller gets c's
    answer, once, and no PeerLost; each replier ran it once."""
    ran: Counter[tuple[str, int]] = Counter()
    both = anyio.Event()

    def note(name: str, req: shoal.Request) -> None:
        ran[name, req.id] += 1
        if req.body == "q" and ran["b", req.id] and ran["c", req.id]:
            both.set()

    async def stall(req: shoal.Request) -> str:
        note("b", req)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def slow(req: shoal.Request) -> str:
        note("c", req)
        if req.body == "q":
            await anyio.sleep(0.3)
        return "c"

    async def serve(rep: shoal.Replier, handler: object) -> None:
        async with anyio.create_task_group() as n:
            async for req in rep:
                async def one(req: shoal.Request = req) -> None:
                    await req.reply(await handler(req))  # type: ignore[operator]
                n.start_soon(one)

    with anyio.fail_after(15):
        hub = free_port()
        async with (
            open_test_node("a", port=hub) as a,
            open_test_node("c", peers=[hub]) as c,
            c.open_replier("calc") as rep_c,
            a.open_requester("calc") as client,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(serve, rep_c, slow)
            result: list[str] = []
            done = anyio.Event()

            async def ask() -> None:
                result.append(await client.request("q", hedge_after=0.05))
                done.set()

            async with open_test_node("b", peers=[hub]) as b, b.open_replier("calc") as rep_b:
                nursery.start_soon(serve, rep_b, stall)
                await a.wait_for_peers(2, channel="calc")
                nursery.start_soon(ask)
                await both.wait()
            # b has gone (its replier closed, its node said goodbye) while it held "q"
            await done.wait()
            st = client.statistics()
            nursery.cancel_scope.cancel()
    assert result == ["c"]
    assert (st.hedged, st.lost, st.replies) == (1, 0, 1)
    qid = next(rid for (name, rid) in ran if name == "b")
    assert ran["b", qid] == 1
    assert ran["c", qid] == 1


async def test_a_replier_process_killed_mid_request_leaves_the_hedged_copy_to_answer() -> None:
    """Over nodes: b, a process of its own, holds "stall" unanswered; c, in this
    process, holds it until told. The request reaches both (first copy, then the
    hedge), b is SIGKILLed and a has given it up as a peer; only then does c answer.
    The caller gets c's answer, once, and no PeerLost."""
    ran: Counter[int] = Counter()
    c_holds = anyio.Event()
    release = anyio.Event()

    async def serve_c(rep: shoal.Replier) -> None:
        async with anyio.create_task_group() as n:
            async for req in rep:
                async def one(req: shoal.Request = req) -> None:
                    if req.body == "stall":
                        ran[req.id] += 1
                        c_holds.set()
                        await release.wait()
                    await req.reply("c")
                n.start_soon(one)

    with anyio.fail_after(20):
        hub = free_port()
        async with (
            open_test_node("a", port=hub, **FAST) as a,
            open_test_node("c", peers=[hub], **FAST) as c,
            c.open_replier("calc") as rep_c,
            a.open_requester("calc") as client,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(serve_c, rep_c)
            result: list[object] = []
            done = anyio.Event()

            async def ask() -> None:
                result.append(await client.request("stall", hedge_after=0.05))
                done.set()

            async with node_process("b", hub, "--replier", "calc", "--stall-on",
                                    "stall") as b:
                await a.wait_for_peers(2, channel="calc")
                answered: set[str] = set()
                while answered != {"b", "c"}:  # both connections up
                    reply = await client.request("warm")
                    answered.add(reply if reply == "c" else reply["from"])
                warm = client.statistics()
                nursery.start_soon(ask)
                held = await b.expect("stalled")
                await c_holds.wait()
                b.kill()
                await b.proc.wait()
            await eventually(lambda: [p.name for p in a.peers()] == ["c"])  # b timed out
            assert not done.is_set()  # nothing answered yet: b is gone, c still holds it
            release.set()
            await done.wait()
            st = client.statistics()
            nursery.cancel_scope.cancel()
    assert held["body"] == "stall"
    assert result == ["c"]
    assert list(ran.values()) == [1]  # c ran it once
    assert (st.hedged - warm.hedged, st.lost - warm.lost, st.replies - warm.replies) == (
        1, 0, 1)
    assert (st.hedge_wasted, st.unmatched, st.in_flight) == (0, 0, 0)


async def test_a_node_requester_sends_to_the_least_loaded_replier() -> None:
    """b takes every request and answers none; c answers at once. With least-loaded
    routing, once b holds one request, new ones go to c: of 20 sequential requests
    with hedging off and a timeout each, b gets at most one more than its first."""
    got: Counter[str] = Counter()

    async def mute(rep: shoal.Replier) -> None:
        async for _ in rep:
            got["b"] += 1

    async def answer(rep: shoal.Replier) -> None:
        async for req in rep:
            got["c"] += 1
            await req.reply("c")

    with anyio.fail_after(15):
        hub = free_port()
        async with (
            open_test_node("a", port=hub) as a,
            open_test_node("b", peers=[hub]) as b,
            open_test_node("c", peers=[hub]) as c,
            b.open_replier("calc") as rep_b,
            c.open_replier("calc") as rep_c,
            a.open_requester("calc") as client,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(mute, rep_b)
            nursery.start_soon(answer, rep_c)
            await a.wait_for_peers(2, channel="calc")
            answered = 0
            for _ in range(20):
                with anyio.move_on_after(0.5):
                    await client.request("x")
                    answered += 1
            nursery.cancel_scope.cancel()
    # b got the first request it was offered, and (holding it, unanswered) no more
    assert got["b"] <= 1
    assert answered >= 19
