"""Reliable request/reply: ``request(body, retries=N)`` sends the same request again
(same id) after ``retry_after`` seconds or when its replier vanishes; a replier
recognises a repeat and answers it from its reply cache, so no handler runs twice for
one request on a live replier.

Network safety: loopback only (explicit 127.0.0.1 endpoints; nodes with ``Static``
discovery on 127.0.0.1).
"""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import pytest
import zmq

import shoal
from shoal import Kind
from shoal._core import decode, encode
from shoal.errors import LocalProtocolError
from support.endpoints import free_port
from support.nodes import open_test_node
from support.peers import node_process

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"


async def test_a_retry_goes_to_another_replier_when_the_first_stays_silent() -> None:
    """Two repliers on explicit endpoints; one receives requests and never answers.
    With retries, every request is answered by the other one, whose handler ran once
    per request."""
    handled: list[int] = []
    with anyio.fail_after(15):
        async with (
            shoal.open_replier(bind=LOOPBACK) as mute,
            shoal.open_replier(bind=LOOPBACK) as live,
            shoal.open_requester(connect=mute.endpoints + live.endpoints) as client,
            anyio.create_task_group() as nursery,
        ):
            async def ignore() -> None:
                async for _ in mute:
                    pass

            async def answer() -> None:
                async for req in live:
                    handled.append(req.body)
                    await req.reply(req.body * 10)

            nursery.start_soon(ignore)
            nursery.start_soon(answer)
            # One at a time: a DEALER spreads sends round-robin, so a request that went
            # to the silent replier goes to the other one when sent again.
            results = {}
            for i in range(20):
                results[i] = await client.request(i, retries=3, retry_after=0.1)
            nursery.cancel_scope.cancel()
    assert results == {i: i * 10 for i in range(20)}
    assert sorted(handled) == list(range(20))  # each handled once, by the live replier
    st = client.statistics()
    # round-robin alternates, and each retry takes the live replier's turn: so every
    # request after the first meets the silent replier first
    assert 19 <= st.retried <= 20
    assert st.replies == 20


async def test_a_repeated_request_is_answered_from_the_cache_not_the_handler() -> None:
    """A requester whose reply was lost sends the same request again: the replier
    answers the repeat with the reply it already sent, without running the handler."""
    runs = 0
    with anyio.fail_after(10):
        async with shoal.open_replier(bind=LOOPBACK) as rep, anyio.create_task_group() as nursery:
            async def serve() -> None:
                nonlocal runs
                async for req in rep:
                    runs += 1
                    await req.reply({"n": runs, "echo": req.body})

            nursery.start_soon(serve)
            ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            dealer = ctx.socket(zmq.DEALER)
            dealer.connect(rep.endpoints[0])
            try:
                frame = encode(Kind.REQUEST, b"", "hello", sender=b"\x07" * 16, epoch=1,
                               stream=9, seq=5, timestamp_ns=time.time_ns(), correlation=5)
                replies = []
                for _ in range(3):
                    dealer.send(frame)
                    # the raw socket is blocking; wait for the answer in a thread
                    raw = await anyio.to_thread.run_sync(dealer.recv)
                    replies.append(decode(raw))
            finally:
                dealer.close(linger=0)
                ctx.term()
            nursery.cancel_scope.cancel()
    assert runs == 1
    assert [r.body for r in replies] == [{"n": 1, "echo": "hello"}] * 3
    assert all(r.correlation == 5 for r in replies)
    assert rep.statistics().duplicates == 2
    assert rep.statistics().replied == 1


async def test_a_reused_request_id_gets_an_error_not_the_other_requests_reply() -> None:
    """A second request with the id of one already answered (same sender, epoch and
    stream) but another body is not a retry: it is counted and answered with an
    error; the cached reply still answers true retries of the first."""
    runs = 0
    with anyio.fail_after(10):
        async with shoal.open_replier(bind=LOOPBACK) as rep, anyio.create_task_group() as nursery:
            async def serve() -> None:
                nonlocal runs
                async for req in rep:
                    runs += 1
                    await req.reply({"echo": req.body})

            nursery.start_soon(serve)
            ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.RCVTIMEO, 5000)
            dealer.connect(rep.endpoints[0])

            def request(body: str, ts: int) -> bytes:
                return encode(Kind.REQUEST, b"", body, sender=b"\x07" * 16, epoch=1,
                              stream=9, seq=5, timestamp_ns=ts, correlation=5)
            try:
                replies = []
                for frame in (request("first", 1), request("second", 2), request("first", 1)):
                    dealer.send(frame)
                    replies.append(decode(await anyio.to_thread.run_sync(dealer.recv)))
            finally:
                dealer.close(linger=0)
                ctx.term()
            nursery.cancel_scope.cancel()
    assert runs == 1
    assert [r.kind for r in replies] == [Kind.REPLY, Kind.ERROR, Kind.REPLY]
    assert replies[0].body == replies[2].body == {"echo": "first"}
    assert "already used by a different request" in replies[1].body
    assert all(r.correlation == 5 for r in replies)
    stats = rep.statistics()
    assert (stats.reused_ids, stats.duplicates, stats.replied) == (1, 1, 1)


async def test_a_repeat_while_the_handler_still_runs_is_dropped() -> None:
    """The first copy is still being handled: the repeat is dropped (not handled
    again); the one answer reaches the caller."""
    started = anyio.Event()
    release = anyio.Event()
    runs = 0
    with anyio.fail_after(10):
        async with (
            shoal.open_replier(bind=LOOPBACK) as rep,
            shoal.open_requester(connect=rep.endpoints) as client,
            anyio.create_task_group() as nursery,
        ):
            async def serve() -> None:
                nonlocal runs
                async for req in rep:
                    runs += 1
                    started.set()
                    await release.wait()
                    await req.reply("slow answer")

            async def release_later() -> None:
                await started.wait()
                await anyio.sleep(0.35)  # the caller retries (0.1 s) meanwhile
                release.set()

            nursery.start_soon(serve)
            nursery.start_soon(release_later)
            assert await client.request("x", retries=2, retry_after=0.1) == "slow answer"
            nursery.cancel_scope.cancel()
    assert runs == 1
    assert rep.statistics().duplicates == 2
    assert client.statistics().retried == 2


async def test_a_replier_killed_mid_request_the_caller_gets_its_answer_elsewhere() -> None:
    """Node requester, two replier nodes: one (a separate process) receives the
    request and is SIGKILLed before answering. With retries, the request goes to the
    live replier as soon as the connection to the dead one drops (the kernel of a
    killed process resets it): not after ``retry_after``, nor after the peer timeout
    (30 s here, so the dead replier is still listed when the answers are in). Without
    retries it would be PeerLost."""
    with anyio.fail_after(15):
        a_port = free_port()
        async with (
            open_test_node("a", port=a_port, heartbeat=0.2, peer_timeout=30.0) as a,
            a.open_requester("calc") as client,
            a.open_replier("calc") as live,
            node_process("mute", a_port, "--replier", "calc", "--print-received",
                         "--never-answer") as proc,
            anyio.create_task_group() as nursery,
        ):
            await a.wait_for_peers(1, channel="calc")
            handled: list[str] = []

            async def serve() -> None:
                async for req in live:
                    handled.append(req.body)
                    await req.reply(f"live:{req.body}")

            nursery.start_soon(serve)
            answers: list[str] = []

            async def ask(i: int) -> None:
                # retry_after longer than the test: only the replier's loss re-sends
                answers.append(await client.request(f"q{i}", retries=1, retry_after=60))

            async with anyio.create_task_group() as asks:
                for i in range(6):
                    asks.start_soon(ask, i)
                got = await proc.expect("request")  # the mute process holds one at least
                proc.kill()
            assert [p.name for p in a.peers()] == ["mute"]  # not timed out yet
            nursery.cancel_scope.cancel()
    assert sorted(answers) == sorted(f"live:q{i}" for i in range(6))
    assert sorted(handled) == sorted(f"q{i}" for i in range(6))  # once each on the live one
    assert got["body"] in {f"q{i}" for i in range(6)}
    st = client.statistics()
    assert st.retried >= 1
    assert st.lost >= 1  # the dead replier's requests were lost there, then re-sent


async def test_retries_must_be_sensible() -> None:
    with anyio.fail_after(5):
        async with shoal.open_requester(connect="tcp://127.0.0.1:1") as client:
            with pytest.raises(LocalProtocolError, match="retries"):
                await client.request(1, retries=-1)
            with pytest.raises(LocalProtocolError, match="retry_after"):
                await client.request(1, retries=1, retry_after=0)
