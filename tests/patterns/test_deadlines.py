"""Deadlines travel with requests: a request carries the time its caller still waits
(the enclosing cancel scope's, or ``deadline=``); a replier skips a request whose
caller has given up, ``serve_replier`` cancels a handler at the caller's deadline, and
a handler's own requests pass on what is left.

Network safety: loopback only (explicit 127.0.0.1 endpoints).
"""

from __future__ import annotations

import math
from functools import partial

import anyio
import anyio.lowlevel
import pytest
import trio

import shoal
from shoal._core import FLAG_DEADLINE, Kind, decode, request_budget
from shoal.errors import LocalProtocolError
from shoal.patterns import serve_replier
from support.loops import too_slow
from support.waiting import eventually

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"
ROUNDING = 1e-6
"""What a time left may be over its bound by: a budget travels in whole microseconds,
and on a clock that counts whole milliseconds (uvloop's) no time at all may pass
between the caller's reading and the replier's, so only float rounding is left."""


# -- the wire ------------------------------------------------------------------------


def test_the_budget_is_read_from_a_flagged_request_and_absent_otherwise() -> None:
    enc = shoal._core.StreamEncoder(sender=bytes(16), epoch=1, stream=2)
    plain, _ = enc.encode_parts(Kind.REQUEST, b"\0", b"x", 7, 1, 7)
    timed, _ = enc.encode_parts(Kind.REQUEST, b"\0", b"x", 1500, 1, 7,
                                extra_flags=FLAG_DEADLINE)
    assert plain[3] & FLAG_DEADLINE == 0
    assert request_budget(plain) == -1
    assert request_budget(timed) == 1500
    # a decoder that ignores the advisory bit reads the same request (an old replier)
    msg = decode(timed)
    assert (msg.kind, msg.body, msg.correlation) == (Kind.REQUEST, b"x", 7)
    with_topic, _ = enc.encode_parts(Kind.REQUEST, b"t\0", {"a": 1}, 99, 1, 8,
                                     {"h": 1}, FLAG_DEADLINE)
    assert request_budget(with_topic) == 99
    assert decode(with_topic).headers == {"h": 1}


@pytest.mark.parametrize("anyio_backend", ["trio"])  # trio's own cancel scopes
async def test_the_requesters_deadline_lookup_agrees_with_trio_in_every_nesting() -> None:
    # Under trio the requester reads the effective deadline from trio's fields (it is on
    # every request's path); it must give trio's answer whatever the scopes around it.
    from shoal._io import current
    from shoal._io._trio import FIELDS_OK

    assert FIELDS_OK, "trio's cancel-scope fields moved: the lookup fell back to trio's"
    effective_deadline = current().current_effective_deadline

    async def same() -> None:
        assert effective_deadline() == trio.current_effective_deadline()
        await trio.lowlevel.checkpoint()  # (raises Cancelled in the cancelled scope)

    await same()  # no deadline at all: inf
    with trio.move_on_after(5):
        await same()
        with trio.move_on_after(1):
            await same()  # the inner, nearer one
            with trio.CancelScope(shield=True):
                await same()  # a shield hides the outer deadlines: inf
                with trio.move_on_after(3):
                    await same()
        with trio.move_on_after(9):
            await same()  # the outer, nearer one
        with trio.CancelScope() as scope:
            scope.deadline = trio.current_time() + 0.5  # moved after entering
            await same()
            scope.cancel()
            await same()  # cancelled: -inf
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.deadline = trio.current_time() + 2

        async def child() -> None:
            await same()  # a child task inherits its nursery's deadline

        nursery.start_soon(child)
    assert effective_deadline() == math.inf


async def test_a_bad_deadline_is_refused_before_anything_is_sent() -> None:
    with anyio.fail_after(5):
        async with shoal.open_requester(connect="tcp://127.0.0.1:9") as client:
            for bad in (-1, math.inf, "1", True):
                with pytest.raises(LocalProtocolError, match="deadline"):
                    await client.request(b"x", deadline=bad)  # type: ignore[arg-type]
            assert client.statistics().sent == 0


async def cancel_later(scope: anyio.CancelScope, seconds: float) -> None:
    await anyio.sleep(seconds)
    scope.cancel()


# -- the replier side --------------------------------------------------------------------


async def test_the_replier_sees_the_callers_remaining_time_or_none() -> None:
    seen: list[float] = []

    def handler(req: shoal.Request) -> bytes:
        seen.append(req.deadline - anyio.current_time())
        assert req.message.seq == req.id  # the budget does not leak into the seq
        return b"ok"

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(serve_replier, handler, bind=LOOPBACK))
            async with shoal.open_requester(connect=rep.endpoints) as client:
                # no deadline in effect: a shielded scope (the test's fail_after does not
                # reach in), bounded by a task that cancels it instead
                with anyio.CancelScope(shield=True) as free:
                    nursery.start_soon(cancel_later, free, 5)
                    await client.request(b"no deadline")
                assert not free.cancelled_caught
                free.cancel()
                with anyio.move_on_after(3):
                    await client.request(b"scope")
                await client.request(b"explicit", deadline=2)
                with anyio.move_on_after(9):  # the explicit one overrides the scope's
                    await client.request(b"both", deadline=1)
            nursery.cancel_scope.cancel()
    assert seen[0] == math.inf
    assert 0 < seen[1] <= 3 + ROUNDING
    assert 0 < seen[2] <= 2 + ROUNDING
    assert 0 < seen[3] <= 1 + ROUNDING


async def test_an_explicit_deadline_fails_the_call_when_it_passes() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_replier(bind=LOOPBACK) as rep,  # never answers
            shoal.open_requester(connect=rep.endpoints) as client,
        ):
            with pytest.raises(too_slow()):  # the loop's own timeout exception
                await client.request(b"x", deadline=0.05)
            st = rep.statistics()
            # nothing answered it, and the receive buffer still holds it
            assert (st.replied, st.expired) == (0, 0)
            with pytest.raises(anyio.WouldBlock):
                rep.receive_nowait()  # taken after its deadline: skipped, counted
            assert rep.statistics().expired == 1


async def test_a_request_whose_caller_gave_up_while_it_queued_never_reaches_the_handler(
) -> None:
    """A slow request occupies the replier; a caller under ``fail_after(0.05)`` asks
    meanwhile and gives up. When the replier comes to its request the deadline has
    passed: skipped and counted, the handler never runs for it."""
    ran: list[bytes] = []
    slow_started = anyio.Event()

    async def handler(req: shoal.Request) -> bytes:
        ran.append(req.body)
        if req.body == b"slow":
            slow_started.set()
            await anyio.sleep(0.3)
        return bytes(req.body)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(serve_replier, handler, bind=LOOPBACK))
            async with shoal.open_requester(connect=rep.endpoints) as client:
                nursery.start_soon(client.request, b"slow")
                await slow_started.wait()
                with pytest.raises(TimeoutError), anyio.fail_after(0.05):
                    await client.request(b"hurried")
                await eventually(lambda: rep.statistics().expired == 1)
                assert await client.request(b"after") == b"after"
            nursery.cancel_scope.cancel()
    assert ran == [b"slow", b"after"]
    st = rep.statistics()
    assert (st.expired, st.cut_short, st.replied) == (1, 0, 2)


async def test_serve_replier_cancels_a_handler_when_its_caller_stops_waiting() -> None:
    outcome: list[str] = []

    async def handler(req: shoal.Request) -> bytes:
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            outcome.append("cancelled")
            raise
        outcome.append("finished")
        return b"late"

    with anyio.fail_after(10):
        async with anyio.create_task_group() as nursery:
            rep = await nursery.start(partial(serve_replier, handler, bind=LOOPBACK))
            async with shoal.open_requester(connect=rep.endpoints) as client:
                with anyio.move_on_after(0.1):
                    await client.request(b"x")
                await eventually(lambda: rep.statistics().cut_short == 1)
            nursery.cancel_scope.cancel()
    assert outcome == ["cancelled"]
    st = rep.statistics()
    assert (st.replied, st.failed) == (0, 0)


async def test_a_nested_request_carries_the_time_left_less_what_the_first_hop_spent(
) -> None:
    """A asks B under a 5 s scope; B's handler works 0.2 s, then asks C. C's handler
    sees at most 4.8 s left: the deadline went on with B's time taken off."""
    at_b: list[float] = []
    at_c: list[float] = []

    def c_handler(req: shoal.Request) -> str:
        at_c.append(req.deadline - anyio.current_time())
        return "from c"

    with anyio.fail_after(15):
        async with anyio.create_task_group() as nursery:
            c = await nursery.start(partial(serve_replier, c_handler, bind=LOOPBACK))
            async with shoal.open_requester(connect=c.endpoints) as to_c:

                async def b_handler(req: shoal.Request) -> str:
                    at_b.append(req.deadline - anyio.current_time())
                    await anyio.sleep(0.2)
                    return "b+" + str(await to_c.request(req.body))

                b = await nursery.start(partial(serve_replier, b_handler, bind=LOOPBACK))
                async with shoal.open_requester(connect=b.endpoints) as to_b:
                    with anyio.move_on_after(5):
                        assert await to_b.request(b"q") == "b+from c"
            nursery.cancel_scope.cancel()
    assert 0 < at_b[0] <= 5 + ROUNDING
    assert 0 < at_c[0] <= at_b[0] - 0.2 + ROUNDING
    assert at_c[0] > 1  # passed on, not lost (generous: the machine may be loaded)
