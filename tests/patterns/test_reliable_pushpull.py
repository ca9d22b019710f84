"""Reliable push/pull end to end: each item reaches one application once, a full window
blocks the sender, a puller that closes or dies hands its unfinished items on, items
that nobody takes are given up and reported, garbage is dropped and counted.

Network safety: loopback only. Explicit endpoints are ``tcp://127.0.0.1:*`` or ``ipc://``
paths under the test's ``tmp_path``; nodes use ``Static`` discovery on 127.0.0.1; the
pullers that are SIGKILLed run in a subprocess (``tests/support/peer.py``) under the
same rules and are killed in a ``finally`` whatever happens. Never mDNS.

Every I/O test runs under ``anyio.fail_after`` so a lost wake-up fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest
import trio
import trio.testing
import zmq

import shoal
from shoal import Kind
from shoal._core import decode, encode
from shoal._zmq._socket import Socket
from shoal.errors import ClosedError, DeliveryFailed, EncodeError, LocalProtocolError
from shoal.patterns import Delivery, ReliablePusher, ReliablePusherStatistics
from support.delivery import drain, warm_up
from support.endpoints import bind_address, free_port
from support.loops import FrozenClockLoop
from support.nodes import FAST, open_test_node, pair
from support.peers import PeerProcess, node_process, puller_process
from support.raw import expected_reasons, garbage, raw_receive, raw_socket
from support.waiting import eventually, wait_all_tasks_blocked

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"


# -- helpers -------------------------------------------------------------------------------


async def wait_acked(push: ReliablePusher) -> None:
    """``push.wait_acked()`` (one name for every delivery test to wait through)."""
    await push.wait_acked()


async def settle(push: ReliablePusher, condition: Callable[[ReliablePusherStatistics], bool],
                 ) -> ReliablePusherStatistics:
    """Wait until the pusher's statistics satisfy ``condition``. An idle pusher reads
    acknowledgements only when something waits on it: ``wait_acked`` is that something."""
    while not condition(st := push.statistics()):
        with anyio.move_on_after(0.01):
            await push.wait_acked()
    return st


async def follow_pulled(proc: PeerProcess, into: list[Any], ended: anyio.Event) -> None:
    """Collect the bodies ``proc`` reports pulling, until its stdout ends (it died: the
    pipe still hands over what it wrote before)."""
    while True:
        try:
            line = await proc.line()
        except AssertionError:  # end of file: the process is gone
            break
        if line["event"] == "pulled":
            into.append(line["body"])
    ended.set()


# -- explicit endpoints: every item once -----------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc", "inproc"])
async def test_each_item_reaches_exactly_one_application_once(
        transport: str, tmp_path: Path) -> None:
    n = 2000
    got: list[list[Any]] = [[], [], []]
    with anyio.fail_after(20):
        async with (
            shoal.open_puller(bind=bind_address(transport, tmp_path, "p0"),
                              reliable=True) as p0,
            shoal.open_puller(bind=bind_address(transport, tmp_path, "p1"),
                              reliable=True) as p1,
            shoal.open_puller(bind=bind_address(transport, tmp_path, "p2"),
                              reliable=True) as p2,
            shoal.open_pusher(connect=p0.endpoints + p1.endpoints + p2.endpoints,
                              reliable=True) as push,
            anyio.create_task_group() as nursery,
        ):
            pullers = (p0, p1, p2)
            for p, into in zip(pullers, got, strict=True):
                nursery.start_soon(drain, p, into)
            warm = await warm_up(push, *got)
            for i in range(warm, n):
                await push.send(i)
            await wait_acked(push)
            st = push.statistics()
            # wait_acked means every puller's application asked for the next item
            pst = [p.statistics() for p in pullers]
            nursery.cancel_scope.cancel()
    everything = [i for into in got for i in into]
    assert sorted(everything) == list(range(n))  # each once, none lost
    assert all(len(into) >= n // 10 for into in got)  # turn by turn: spread over all
    assert st.sent == n
    assert st.acked == n
    assert st.in_flight == 0
    assert st.given_up == 0
    assert st.malformed == 0
    assert st.redelivered == 0
    assert sum(s.received for s in pst) == n
    assert [s.received for s in pst] == [len(into) for into in got]
    assert all(s.held == 0 for s in pst)
    assert all(s.malformed == 0 for s in pst)
    # copies seen on the wire can only come from retransmissions
    assert sum(s.duplicates for s in pst) <= st.retransmitted


async def test_two_pushers_to_one_puller_are_two_streams_not_duplicates() -> None:
    """Both pushers number their items from 0: the puller tells them apart by stream."""
    n = 300
    got: list[Any] = []
    with anyio.fail_after(15):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True) as one,
            shoal.open_pusher(connect=pull.endpoints, reliable=True) as two,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(drain, pull, got)
            for i in range(n):
                await one.send(("one", i))
                await two.send(("two", i))
            await wait_acked(one)
            await wait_acked(two)
            pst = pull.statistics()
            nursery.cancel_scope.cancel()
    assert sorted(got) == sorted([["one", i] for i in range(n)] + [["two", i] for i in range(n)])
    assert (pst.received, pst.duplicates, pst.held) == (2 * n, 0, 0)


async def test_headers_and_envelope_arrive_with_the_item() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True) as push,
        ):
            await push.send(b"raw bytes", headers={"trace": "t-1"})
            await push.send({"k": [1, 2]})
            first = await pull.receive()
            second = await pull.receive()
            # asking for the second finished the first; the second is in hand
            assert pull.statistics().held == 1
            with pytest.raises(anyio.WouldBlock):
                pull.receive_nowait()
            assert pull.statistics().held == 0
            await wait_acked(push)
    assert first.body == b"raw bytes"
    assert dict(first.headers) == {"trace": "t-1"}
    assert second.body == {"k": [1, 2]}
    assert first.kind is shoal.Kind.PUSH
    assert (first.sender, first.epoch, first.stream) == (
        second.sender, second.epoch, second.stream)
    assert second.seq == first.seq + 1
    assert first.id != second.id


# -- backpressure ---------------------------------------------------------------------------


async def test_a_full_window_blocks_send_and_a_cancelled_send_takes_nothing() -> None:
    window = 4
    with anyio.fail_after(15):
        # rto long: nothing is retransmitted while the puller does not read
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True, window=window,
                              rto=30) as push,
        ):
            for i in range(window):
                push.send_nowait(i)
            with pytest.raises(anyio.WouldBlock):
                push.send_nowait("refused")
            sent_while_blocked = False

            async def blocked_send() -> None:
                nonlocal sent_while_blocked
                await push.send("cancelled")
                sent_while_blocked = True

            with anyio.move_on_after(0.3) as scope:
                await blocked_send()
            assert scope.cancelled_caught
            assert not sent_while_blocked
            st = push.statistics()
            assert (st.sent, st.in_flight, st.acked) == (window, window, 0)

            # the puller reads: room again, and a waiting send goes through
            got = [(await pull.receive()).body for _ in range(window)]
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(blocked_send)
                # items are done when the next is asked for: ask
                got.append((await pull.receive()).body)
            assert sent_while_blocked
            with pytest.raises(anyio.WouldBlock):
                pull.receive_nowait()  # marks the last one done; nothing else came
            await wait_acked(push)
            st = push.statistics()
    assert got == [0, 1, 2, 3, "cancelled"]  # the cancelled call sent nothing
    assert (st.sent, st.acked, st.in_flight) == (window + 1, window + 1, 0)


def block_the_event_loop(seconds: float) -> None:
    """Sleep without letting the event loop run anything (to stage a race
    deterministically)."""
    time.sleep(seconds)


def read_acks_behind_the_loops_back(push: ReliablePusher) -> None:
    """Make the pusher read its acknowledgements now, in this task, without a
    checkpoint (so no waiting task runs meanwhile): ``send_nowait`` with a full window
    reads them first, then refuses the unencodable body. Blocks until one is read.

    Each attempt comes after a pause (blocking on purpose: the waiter must not run), so
    the acknowledgement is already queued when it is read: read as it lands, libzmq
    may report it to the waiter as well, and the race this stages would not happen."""
    deadline = time.monotonic() + 10
    while push.statistics().acked == 0:
        if time.monotonic() > deadline:
            raise AssertionError("no acknowledgement arrived")
        time.sleep(0.05)
        try:
            push.send_nowait(object())
        except (anyio.WouldBlock, EncodeError):
            pass


async def test_wait_acked_wakes_when_another_task_reads_the_last_ack() -> None:
    """One task waits in ``wait_acked``; another task's call reads the last
    acknowledgement. The waiter must notice. (Regression: it stayed parked on the
    socket until the next retransmission deadline, or forever once the items were
    received; in the wild the reader was the pusher's own timer task.)"""
    returned = False
    with anyio.fail_after(15):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True, manual_ack=True) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True, window=1,
                              rto=30) as push,
            anyio.create_task_group() as nursery,
        ):
            await push.send("x")
            item = await pull.receive()

            async def waiter() -> None:
                nonlocal returned
                await push.wait_acked()
                returned = True

            nursery.start_soon(waiter)
            await wait_all_tasks_blocked()  # parked on the socket
            item.ack_nowait()
            read_acks_behind_the_loops_back(push)
            assert push.statistics().in_flight == 0
            await wait_all_tasks_blocked()
            finished = returned
            nursery.cancel_scope.cancel()
    assert finished, "wait_acked still waits with nothing in flight"


async def test_wait_acked_wakes_when_the_ack_is_read_just_before_it_runs() -> None:
    """The acknowledgement lands and wakes the task in ``wait_acked`` (parked on the
    socket); before that task runs, another task of the same pusher reads the
    acknowledgement and interrupts the socket's waiters. The waiter must still look
    again. Which of the two runs first is the scheduler's coin toss, so the scene is
    played up to 20 times: with the bug, one of them hangs (chance of missing it:
    1e-6)."""
    with anyio.fail_after(20):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True, manual_ack=True) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True, window=1,
                              rto=30) as push,
            anyio.create_task_group() as nursery,
        ):
            for round_ in range(20):
                await push.send(round_)
                item = await pull.receive()
                returned = anyio.Event()

                async def waiter(done: anyio.Event) -> None:
                    await push.wait_acked()
                    done.set()

                nursery.start_soon(waiter, returned)
                await wait_all_tasks_blocked()  # parked on the socket
                item.ack_nowait()
                block_the_event_loop(0.05)  # the ack lands, the pusher's FD is signalled
                # one checkpoint: epoll reports the FD (the waiter is scheduled) and this
                # task runs in the same batch, before or after it
                await anyio.lowlevel.checkpoint()
                with contextlib.suppress(anyio.WouldBlock, EncodeError):
                    push.send_nowait(object())  # window full: reads the acknowledgement
                await wait_all_tasks_blocked()
                assert push.statistics().in_flight == 0
                assert returned.is_set(), f"wait_acked missed its ack (round {round_})"
            nursery.cancel_scope.cancel()


# -- a puller that goes away while holding items ----------------------------------------------


async def test_a_closing_puller_hands_its_unfinished_items_to_another() -> None:
    """Puller A finishes a few items, keeps one in hand (and more in its buffer), and
    closes. Everything reaches an application; the one item seen twice is the one A
    held unfinished."""
    n = 400
    a_seen: list[int] = []
    b_seen: list[int] = []
    a_held = -1
    with anyio.fail_after(20):
        # rto long: nothing is retransmitted on a timer, only because A went away
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True) as a,
            shoal.open_puller(bind=LOOPBACK, reliable=True) as b,
            shoal.open_pusher(connect=a.endpoints + b.endpoints, reliable=True,
                              rto=30) as push,
            anyio.create_task_group() as nursery,
        ):
            async def run_a() -> None:
                nonlocal a_held
                async for msg in a:
                    a_seen.append(msg.body)
                    if len(a_seen) == 10:
                        break  # the 10th is in hand, never finished
                a_held = a.statistics().held
                await a.aclose()

            nursery.start_soon(run_a)
            nursery.start_soon(drain, b, b_seen)
            for i in range(await warm_up(push, a_seen, b_seen), n):
                await push.send(i)
            await wait_acked(push)
            st = push.statistics()
            b_stats = b.statistics()
            nursery.cancel_scope.cancel()
    assert len(b_seen) == len(set(b_seen))  # B's application saw nothing twice
    assert set(a_seen) & set(b_seen) == {a_seen[-1]}  # only the unfinished one
    assert sorted(a_seen[:-1] + b_seen) == list(range(n))
    assert a_held >= 1
    assert st.redelivered >= a_held  # what A held, and what was still on its way to it
    assert st.disconnects == 1
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)
    assert b_stats.duplicates == 0


async def test_a_killed_puller_process_loses_nothing_and_only_its_unfinished_items_repeat(
) -> None:
    """Puller A is a process that finishes some items, acknowledges them, then stalls
    holding one (and more in its buffer) and is SIGKILLed. Every item is processed;
    the only item processed twice is the one A held unfinished."""
    n = 400
    b_seen: list[int] = []
    a_seen: list[int] = []
    with anyio.fail_after(20):
        async with (
            puller_process("--bind", LOOPBACK, "--stall-after", "15") as proc,
            shoal.open_puller(bind=LOOPBACK, reliable=True) as b,
            shoal.open_pusher(connect=proc.ready["endpoints"] + b.endpoints, reliable=True,
                              rto=30) as push,
            anyio.create_task_group() as nursery,
        ):
            stalled: dict[str, Any] = {}
            stall = anyio.Event()

            async def follow_a() -> None:
                while (line := await proc.line())["event"] != "stalled":
                    a_seen.append(line["body"])
                stalled.update(line)
                stall.set()

            nursery.start_soon(follow_a)
            nursery.start_soon(drain, b, b_seen)
            for i in range(await warm_up(push, a_seen, b_seen), n):
                await push.send(i)
            await stall.wait()
            assert stalled["body"] == a_seen[-1]
            finished = stalled["finished"]
            assert finished == len(a_seen) - 1 == 14
            # Wait until the pusher has read A's acknowledgements: then everything
            # done is A's finished items plus what B took (B idles, having finished).
            st = await settle(push, lambda st: st.acked == finished + len(b_seen))
            pending = st.in_flight
            assert pending == n - finished - len(b_seen) >= stalled["held"] >= 1
            proc.kill()
            await wait_acked(push)
            st = push.statistics()
            nursery.cancel_scope.cancel()
    assert len(b_seen) == len(set(b_seen))
    assert set(a_seen) & set(b_seen) == {a_seen[-1]}
    assert sorted(a_seen[:-1] + b_seen) == list(range(n))
    assert st.disconnects >= 1
    # what A had (held, buffered or on its way to it) and nothing B had finished
    assert stalled["held"] <= st.redelivered <= pending
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)


# -- manual acknowledgement ---------------------------------------------------------------------


async def test_manual_ack_unacked_items_go_to_another_puller_acked_ones_do_not(
        tmp_path: Path) -> None:
    """Every item goes to A first (B's ipc endpoint has nobody yet). A acknowledges
    some, in shuffled order and from two tasks, and closes; B, opened then, gets exactly
    the others."""
    n = 30
    b_path = f"ipc://{tmp_path}/b"
    acked_ids: set[int] = set()
    with anyio.fail_after(20):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True, manual_ack=True) as a,
            shoal.open_pusher(connect=[*a.endpoints, b_path], reliable=True) as push,
        ):
            for i in range(n):
                await push.send({"i": i}, headers={"tag": f"t{i}"})
            items = [await a.receive() for _ in range(n)]

            for i, d in enumerate(items):
                assert d.body == {"i": i}
                assert dict(d.headers) == {"tag": f"t{i}"}
                assert d.message.body == d.body
                assert d.id == d.message.id
                assert d.message.kind is shoal.Kind.PUSH
                assert not d.acked
            assert len({d.id for d in items}) == n
            assert [d.message.seq for d in items] == sorted(d.message.seq for d in items)

            to_ack = [d for d in items if d.body["i"] % 3 != 0]  # not 0, 3, 6...
            random.Random(7).shuffle(to_ack)
            half = len(to_ack) // 2
            async with anyio.create_task_group() as nursery:
                async def ack_all(ds: list[Delivery]) -> None:
                    for d in ds:
                        await d.ack()
                        acked_ids.add(d.body["i"])

                nursery.start_soon(ack_all, to_ack[:half])
                nursery.start_soon(ack_all, to_ack[half:])
            assert all(d.acked for d in to_ack)
            sent_before = a.statistics().acks_sent
            await to_ack[0].ack()  # idempotent: nothing more is sent
            to_ack[0].ack_nowait()
            assert a.statistics().acks_sent == sent_before
            assert a.statistics().held == n - len(to_ack)
            st = await settle(push, lambda st: st.acked == len(to_ack))
            assert st.in_flight == n - len(to_ack)

            await a.aclose()
            unacked = next(d for d in items if not d.acked)
            with pytest.raises(ClosedError):
                await unacked.ack()
            with pytest.raises(ClosedError):
                unacked.ack_nowait()
            assert not unacked.acked
            await to_ack[1].ack()  # acked before the close: still idempotent, no error

            async with shoal.open_puller(bind=b_path, reliable=True, manual_ack=True) as b:
                redelivered = [await b.receive() for _ in range(n - len(to_ack))]
                for d in reversed(redelivered):  # any order
                    await d.ack()
                await wait_acked(push)
                with pytest.raises(anyio.WouldBlock):
                    b.receive_nowait()  # nothing acked at A came again
                b_stats = b.statistics()
            st = push.statistics()
    assert sorted(d.body["i"] for d in redelivered) == [i for i in range(n) if i % 3 == 0]
    assert not {d.body["i"] for d in redelivered} & acked_ids
    assert [dict(d.headers) for d in redelivered] == [
        {"tag": f"t{d.body['i']}"} for d in redelivered]
    assert {d.id for d in redelivered} <= {d.id for d in items}  # the same items, not copies
    assert b_stats.received == n - len(to_ack)
    assert b_stats.held == 0
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)
    assert st.redelivered == n - len(to_ack)


async def test_manual_ack_items_stay_in_the_window_until_acked() -> None:
    """Asking for the next item does not finish the previous one in manual mode: a
    window of 3 stays full until the application acknowledges."""
    with anyio.fail_after(10):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True, manual_ack=True) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True, window=3,
                              rto=30) as push,
        ):
            for i in range(3):
                await push.send(i)
            got = [await pull.receive() for _ in range(3)]
            with pytest.raises(anyio.WouldBlock):
                pull.receive_nowait()
            with anyio.move_on_after(0.2):
                await wait_acked(push)
            assert push.statistics().in_flight == 3
            with pytest.raises(anyio.WouldBlock):
                push.send_nowait(3)
            await got[1].ack()
            await push.send(3)  # room for exactly one
            with pytest.raises(anyio.WouldBlock):
                push.send_nowait(4)
            got.append(await pull.receive())
            for d in (got[3], got[0], got[2]):
                await d.ack()
            await wait_acked(push)
            st = push.statistics()
    assert [d.body for d in got] == [0, 1, 2, 3]
    assert (st.sent, st.acked, st.in_flight) == (4, 4, 0)


async def test_items_of_a_closed_puller_go_to_a_puller_that_connects_later_at_once(
        tmp_path: Path) -> None:
    """A holds every item unfinished and closes while no other puller is connected;
    B connects a moment later. B must get the items when its connection is up, not
    when the retransmission timer (rto, here 5 s) runs out: they were never lost, only
    waiting for a puller. (Regression: the timer task slept on the clock and the
    connecting puller's wake-up was lost.)"""
    b_path = f"ipc://{tmp_path}/b"
    with anyio.fail_after(20):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True, manual_ack=True) as a,
            shoal.open_pusher(connect=[*a.endpoints, b_path], reliable=True, rto=5) as push,
        ):
            for i in range(5):
                await push.send(i)
            for _ in range(5):
                await a.receive()
            await a.aclose()
            async with shoal.open_puller(bind=b_path, reliable=True, manual_ack=True) as b:
                got: list[int] = []
                # the ipc reconnection takes ~0.1 s; 2 s is far below rto, far above that
                with anyio.move_on_after(2):
                    while len(got) < 5:
                        got.append((await b.receive()).body)
                assert sorted(got) == [0, 1, 2, 3, 4]


# -- giving up ---------------------------------------------------------------------------------


async def test_with_no_puller_items_are_given_up_at_the_deadline() -> None:
    with anyio.fail_after(10):
        nobody = f"tcp://127.0.0.1:{free_port()}"
        async with shoal.open_pusher(connect=nobody, reliable=True, give_up_after=0.3,
                                     window=8) as push:
            for i in range(3):
                await push.send(f"job {i}")
            with pytest.raises(DeliveryFailed) as info:
                await wait_acked(push)
            st = push.statistics()
            await wait_acked(push)  # reported once, then forgotten
            letters = [push.dead_letters.receive_nowait() for _ in range(3)]
            with pytest.raises(anyio.WouldBlock):
                push.dead_letters.receive_nowait()
            for i in range(8):  # the window is free again
                push.send_nowait(i)
    failed = info.value.failed
    assert failed == letters  # the same items, on both paths
    assert [g.seq for g in failed] == [0, 1, 2]
    assert [g.body for g in failed] == ["job 0", "job 1", "job 2"]
    assert all(g.reason == "deadline" for g in failed)
    assert all(g.attempts == 0 and g.last_peer is None for g in failed)
    assert all(g.id.endswith(f":{g.seq}") for g in failed)
    assert isinstance(info.value, shoal.errors.ShoalError)
    assert "3 message(s) given up" in str(info.value)
    assert (st.given_up, st.in_flight, st.sent, st.acked) == (3, 0, 0, 0)


async def test_items_a_puller_never_takes_are_given_up_after_max_attempts() -> None:
    """The puller is there but its application never reads: no acknowledgement of any
    kind, so each item is sent ``max_attempts`` times and given up. Reading later shows
    the copies were recognised: each reaches the application once."""
    with anyio.fail_after(10):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True, rto=0.05,
                              max_attempts=3) as push,
        ):
            await push.send("a", headers={"h": 1})
            await push.send("b")
            with pytest.raises(DeliveryFailed) as info:
                await wait_acked(push)
            st = push.statistics()
            got = [await pull.receive() for _ in range(2)]
            with pytest.raises(anyio.WouldBlock):
                pull.receive_nowait()
            pst = pull.statistics()
    failed = info.value.failed
    assert sorted(g.seq for g in failed) == [0, 1]
    assert sorted((g.body, dict(g.headers)) for g in failed) == [("a", {"h": 1}), ("b", {})]
    assert all(g.reason == "attempts" and g.attempts == 3 for g in failed)
    assert all(g.last_peer is not None for g in failed)  # the puller's route
    assert (st.given_up, st.in_flight, st.sent, st.retransmitted) == (2, 0, 2, 4)
    assert [m.body for m in got] == ["a", "b"]
    assert {m.id for m in got} == {g.id for g in failed}  # given up, yet delivered late
    assert (pst.received, pst.duplicates) == (2, 4)


async def test_waiting_for_a_puller_does_not_spin() -> None:
    """Items wait for a puller to connect. ``wait_acked`` (and ``send`` with a full
    window) must sleep meanwhile, not loop: every task is seen blocked. (Regression:
    with something queued the timer was -inf, and the wait a zero-length one.)"""
    with anyio.fail_after(10):
        nobody = f"tcp://127.0.0.1:{free_port()}"
        async with (
            shoal.open_pusher(connect=nobody, reliable=True, window=1) as push,
            anyio.create_task_group() as nursery,
        ):
            await push.send("waits for a puller")
            nursery.start_soon(push.wait_acked)
            nursery.start_soon(push.send, "waits for room")
            # A spinning task is always runnable: then this never returns.
            with anyio.move_on_after(2) as scope:
                await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught, "a task kept running while nothing could happen"


@pytest.mark.parametrize("anyio_backend", [
    pytest.param(("trio", {"clock": trio.testing.MockClock(rate=0)}), id="trio"),
    pytest.param(("asyncio", {"loop_factory": FrozenClockLoop}), id="asyncio"),
])
async def test_a_full_puller_queue_is_refilled_as_it_drains_not_on_a_timer() -> None:
    """Every puller's queue is full (high-water mark 1) and the application is idle:
    the pusher must send the next queued item when the puller takes one, woken by
    the socket, not by a timer that polls. The loop's clock is frozen here (trio's
    MockClock at rate 0, or an asyncio loop whose clock stands still; uvloop's cannot
    be stopped): a pusher that polls on a timer never sends again; a real-time
    watchdog thread bounds the test."""
    n = 300
    got: list[Any] = []
    endpoint = f"inproc://refill-{random.getrandbits(32)}"
    stalled = False
    frozen_at = anyio.current_time()

    async def watchdog(scope: anyio.CancelScope) -> None:
        nonlocal stalled
        await anyio.to_thread.run_sync(time.sleep, 20, abandon_on_cancel=True)
        stalled = True
        scope.cancel()

    async with anyio.create_task_group() as guard:
        guard.start_soon(watchdog, guard.cancel_scope)
        async with (
            shoal.open_puller(bind=endpoint, reliable=True, high_water_mark=1) as pull,
            shoal.open_pusher(connect=endpoint, reliable=True, high_water_mark=1,
                              window=n) as push,
        ):
            for i in range(n):
                push.send_nowait(i)  # taken into the window; most wait in its queue
            while len(got) < n:
                got.append((await pull.receive()).body)
        guard.cancel_scope.cancel()
    assert not stalled, f"stalled after {len(got)} of {n} items with a frozen clock"
    assert anyio.current_time() == frozen_at, "the clock moved: no proof without a timer"
    assert got == list(range(n))


async def test_a_lost_done_acknowledgement_is_repaired_by_a_probe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one frame that says an item is done never reaches the pusher. The pusher
    probes the puller that holds it, which answers "done" again: ``wait_acked``
    returns, and the application saw the item once."""
    dropped: list[list[int]] = []
    with anyio.fail_after(15):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True, rto=0.05) as push,
        ):
            sock = pull._sock
            real_send = Socket.send_to_nowait

            def lossy_send(self: Socket, route: bytes, frame: bytes) -> None:
                if self is not sock:
                    return real_send(self, route, frame)
                received, done = decode(frame).body
                if done and not dropped:
                    dropped.append(done)  # lost on the way: never sent
                    if received:
                        real_send(self, route, encode(Kind.ACK, b"", [received, []],
                                                sender=b"\0" * 16, epoch=0, stream=0,
                                                seq=0, timestamp_ns=0))
                    return None
                return real_send(self, route, frame)

            monkeypatch.setattr(Socket, "send_to_nowait", lossy_send)
            got: list[Any] = []

            async def work() -> None:  # done with each item when asking for the next
                async for msg in pull:
                    got.append(msg.body)

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(work)
                await push.send("item")
                await push.wait_acked()
                nursery.cancel_scope.cancel()
            st = push.statistics()
    assert dropped == [[0]]
    assert got == ["item"]
    assert (st.in_flight, st.acked) == (0, 1)
    assert st.retransmitted >= 1  # the probe
    assert pull.statistics().received == 1


async def test_a_stuck_puller_holds_only_its_share_and_the_others_keep_flowing() -> None:
    """Two pullers; one takes an item and then stops (its application hangs). It ends
    up holding at most its share of the window (window / pullers); every other item
    goes to the healthy puller and ``send`` never stalls for long. (With one shared
    window, the stuck puller filled it with half of everything and ``send`` stopped.)"""
    window, n = 64, 400
    got: list[Any] = []
    with anyio.fail_after(15):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True) as stuck,
            shoal.open_puller(bind=LOOPBACK, reliable=True) as healthy,
            shoal.open_pusher(connect=stuck.endpoints + healthy.endpoints, reliable=True,
                              window=window) as push,
            anyio.create_task_group() as nursery,
        ):
            async def work() -> None:
                async for msg in healthy:
                    got.append(msg.body)

            nursery.start_soon(work)
            await push.send("first")
            with anyio.fail_after(5):
                await stuck.receive()  # then it never asks for more
            for i in range(n):
                await push.send(i)  # never stalls for good: the healthy one drains
            # all but what the stuck one holds (its share at most) reach the healthy one
            await eventually(lambda: len(got) >= n - window // 2)
            held = push.statistics().held
            nursery.cancel_scope.cancel()
    assert len(set(got)) == len(got)
    assert len(held) == 2
    assert max(held.values()) <= window // 2  # the stuck one: its share at most


# -- misuse ------------------------------------------------------------------------------------


async def test_misuse_raises_local_protocol_error() -> None:
    with anyio.fail_after(10):
        with pytest.raises(LocalProtocolError, match="bind='tcp"):
            async with shoal.open_pusher(reliable=True):
                pass
        with pytest.raises(LocalProtocolError, match="bind='tcp"):
            async with shoal.open_puller(reliable=True):
                pass
        with pytest.raises(LocalProtocolError, match="endpoint string"):
            async with shoal.open_pusher(bind=[1], reliable=True):  # type: ignore[call-overload]
                pass
        with pytest.raises(LocalProtocolError, match="endpoint string"):
            async with shoal.open_puller(connect=[1], reliable=True):  # type: ignore[call-overload]
                pass
        with pytest.raises(LocalProtocolError, match="reliable=True"):
            async with shoal.open_puller(bind=LOOPBACK, manual_ack=True):  # type: ignore[call-overload]
                pass
        with pytest.raises(LocalProtocolError, match="max_streams"):
            async with shoal.open_puller(bind=LOOPBACK, reliable=True, max_streams=0):
                pass
        bads: list[dict[str, Any]] = [
            {"window": 0}, {"rto": 0}, {"max_attempts": 0}, {"give_up_after": 0}]
        for bad in bads:
            with pytest.raises(LocalProtocolError):
                async with shoal.open_pusher(connect="tcp://127.0.0.1:1", reliable=True,
                                             **bad):
                    pass
        async with open_test_node("solo") as node:
            with pytest.raises(LocalProtocolError, match="reliable=True"):
                async with node.open_puller("jobs", manual_ack=True):  # type: ignore[call-overload]
                    pass
            with pytest.raises(LocalProtocolError):
                async with node.open_pusher("jobs", reliable=True, window=0):
                    pass


async def test_refused_pusher_arguments_leave_no_socket_open() -> None:
    """Regression: the ROUTER socket was opened before the arguments were checked and
    was never closed when they were refused."""
    bads: list[dict[str, Any]] = [
        {"window": 0}, {"rto": 0}, {"max_attempts": 0}, {"give_up_after": 0}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with anyio.fail_after(10):
            async with open_test_node("solo") as node:
                for bad in bads:
                    try:
                        async with shoal.open_pusher(connect="tcp://127.0.0.1:1",
                                                     reliable=True, **bad):
                            pass
                    except LocalProtocolError:
                        pass
                    else:
                        raise AssertionError(f"{bad} was accepted")
                    try:
                        async with node.open_pusher("jobs", reliable=True, **bad):
                            pass
                    except LocalProtocolError:
                        pass
                    else:
                        raise AssertionError(f"{bad} was accepted by a node")
        gc.collect()  # an unclosed zmq socket warns when collected
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


# -- garbage -----------------------------------------------------------------------------------


async def test_a_reliable_puller_drops_and_counts_garbage_then_takes_the_next_item(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """A raw DEALER (the ROUTER prepends its identity) sends every kind of bad message,
    then a good item as a foreign pusher would, and the same item again."""
    cases = garbage(Kind.PUSH)
    sender = b"raw-reliable-psh"
    item = encode(Kind.PUSH, b"", {"job": 1}, sender=sender, epoch=3, stream=1, seq=7,
                  timestamp_ns=0, correlation=7)
    with anyio.fail_after(10):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True, context=zctx) as pull,
            shoal.open_pusher(connect=pull.endpoints, reliable=True, context=zctx) as push,
        ):
            raw = raw_socket(zctx, zmq.DEALER)
            raw.connect(pull.endpoints[0])
            for frames, _ in cases:
                raw.send_multipart(frames, zmq.NOBLOCK)
            raw.send(item, zmq.NOBLOCK)
            msg = await pull.receive()
            assert (msg.body, msg.sender, msg.seq) == ({"job": 1}, sender.hex(), 7)
            stats = pull.statistics()
            # shoal's own pusher still gets through
            await push.send("good")
            good = await pull.receive()  # finishes the raw item
            pull.flush_acks()  # acknowledgements wait for a batch, or until asked
            done: list[int] = []
            received: list[int] = []
            while 7 not in done:
                ack = decode((await raw_receive(raw))[-1])
                assert ack.kind is Kind.ACK
                received += ack.body[0]
                done += ack.body[1]
            raw.send(item, zmq.NOBLOCK)  # a retransmission: acknowledged, not delivered
            while pull.statistics().duplicates == 0:
                with pytest.raises(anyio.WouldBlock):
                    pull.receive_nowait()  # reads the socket, sends what is pending
                await anyio.sleep(0.005)
            while True:
                ack = decode((await raw_receive(raw))[-1])
                if 7 in ack.body[1]:
                    break
            await wait_acked(push)
            end = pull.statistics()
            raw.close()
    assert good.body == "good"
    assert received == [7]
    assert stats.malformed == len(cases)
    assert stats.malformed_by_reason == expected_reasons(cases)
    assert (end.received, end.duplicates, end.malformed) == (2, 1, len(cases))


async def test_a_duplicate_reaching_an_idle_puller_is_acknowledged_again(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """The puller's application finished an item and waits for the next. The pusher's
    copy of the acknowledgement was lost, so it sends the item again: the puller must
    say "done" again (DESIGN: always re-ack duplicates), or the pusher keeps
    retransmitting and finally gives up an item that was processed. (Regression: the
    acknowledgement used to stay queued until 64 more or a new item came.)"""
    item = encode(Kind.PUSH, b"", "job", sender=b"raw-reliable-psh", epoch=3, stream=1,
                  seq=0, timestamp_ns=0, correlation=0)
    got: list[Any] = []
    with anyio.fail_after(10):
        async with (
            shoal.open_puller(bind=LOOPBACK, reliable=True, context=zctx) as pull,
            anyio.create_task_group() as nursery,
        ):
            nursery.start_soon(drain, pull, got)
            raw = raw_socket(zctx, zmq.DEALER)
            raw.connect(pull.endpoints[0])
            raw.send(item, zmq.NOBLOCK)
            done: list[int] = []
            while 0 not in done:  # the application took it and waits for more: done
                done += decode((await raw_receive(raw))[-1]).body[1]
            await wait_all_tasks_blocked()
            acks_before = pull.statistics().acks_sent

            raw.send(item, zmq.NOBLOCK)  # the pusher did not hear: a retransmission
            await eventually(lambda: pull.statistics().duplicates == 1)
            await wait_all_tasks_blocked()  # the puller waits again
            assert pull.statistics().acks_sent == acks_before + 1
            again = decode((await raw_receive(raw))[-1])
            nursery.cancel_scope.cancel()
    assert got == ["job"]
    assert 0 in again.body[1]


async def test_a_reliable_pusher_drops_and_counts_malformed_acks(
        zctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """A raw ROUTER plays the puller: it answers an item with bad acknowledgements,
    then a good one; the pusher counts the bad ones and is done with the item."""
    raw = raw_socket(zctx, zmq.ROUTER)
    raw.bind(LOOPBACK)
    endpoint = raw.getsockopt_string(zmq.LAST_ENDPOINT)

    def ack(body: Any, kind: Kind = Kind.ACK) -> bytes:
        return encode(kind, b"", body, sender=b"raw-reliable-pul", epoch=1, stream=1,
                      seq=0, timestamp_ns=0)

    with anyio.fail_after(10):
        async with shoal.open_pusher(connect=endpoint, reliable=True, rto=30,
                                     context=zctx) as push:
            await push.send("item")
            route, frame = await raw_receive(raw)
            seq = decode(frame).seq
            bad: list[list[bytes]] = [
                [b"junk"],
                [b""],
                [ack([[seq], [seq]]), b"extra frame"],
                [ack([[seq], [seq]], kind=Kind.PUSH)],  # not an ACK
                [ack([[seq], [seq]], kind=Kind.REPLY)],
                [ack("not a pair")],
                [ack([[seq]])],  # one list, not two
                [ack([[seq], [seq], []])],
                [ack([["x"], [seq]])],  # not sequence numbers
                [ack([[seq], [True]])],
                [ack([[seq], [1.5]])],
                [ack({"received": [seq], "done": [seq]})],
                [ack([seq, seq])],
                [ack(b"\x01\x02")],
                [ack([[seq], [seq]])[:-3]],  # cut short
            ]
            for frames in bad:
                raw.send_multipart([route, *frames], zmq.NOBLOCK)
            raw.send_multipart([route, ack([[seq], [seq]])], zmq.NOBLOCK)
            await wait_acked(push)
            st = push.statistics()
            await push.send("next")
            route, frame = await raw_receive(raw)
            assert decode(frame).body == "next"
    assert (st.sent, st.acked, st.in_flight, st.retransmitted) == (1, 1, 0, 0)
    assert st.malformed == len(bad)


# -- nodes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("manual_ack", [False, True])
async def test_items_flow_between_nodes_by_channel_name(manual_ack: bool) -> None:
    n = 500
    got: list[Any] = []
    with anyio.fail_after(20):
        async with pair() as (a, b), a.open_pusher("jobs", reliable=True) as push:
            if manual_ack:
                async with b.open_puller("jobs", reliable=True, manual_ack=True) as mpull:
                    await a.wait_for_peers(1, channel="jobs")
                    for i in range(n):
                        await push.send(i)
                    for _ in range(n):
                        d = await mpull.receive()
                        assert d.message.sender == a.id
                        got.append(d.body)
                        await d.ack()
                    await wait_acked(push)
                    pst = mpull.statistics()
            else:
                async with b.open_puller("jobs", reliable=True) as pull:
                    await a.wait_for_peers(1, channel="jobs")
                    for i in range(n):
                        await push.send(i)
                    for _ in range(n):
                        msg = await pull.receive()
                        assert msg.sender == a.id
                        got.append(msg.body)
                    with pytest.raises(anyio.WouldBlock):
                        pull.receive_nowait()  # finishes the last one
                    await wait_acked(push)
                    pst = pull.statistics()
            st = push.statistics()
    assert sorted(got) == list(range(n))
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)
    assert (pst.received, pst.held) == (n, 0)


async def test_a_puller_withdrawn_from_a_node_hands_its_unfinished_items_on() -> None:
    """Node c's puller takes a few items and closes (the channel is withdrawn) with one
    in hand and more in its buffer; node b's puller gets the rest. Only the one c held
    unfinished is processed twice."""
    n = 300
    b_seen: list[int] = []
    c_seen: list[int] = []
    with anyio.fail_after(20):
        a_port = free_port()
        async with (
            open_test_node("a", port=a_port, **FAST) as a,
            open_test_node("b", peers=[a_port], **FAST) as b,
            open_test_node("c", peers=[a_port], **FAST) as c,
            b.open_puller("jobs", reliable=True) as b_pull,
            a.open_pusher("jobs", reliable=True) as push,
            anyio.create_task_group() as nursery,
        ):
            async def run_c(task_status: anyio.abc.TaskStatus[None]) -> None:
                async with c.open_puller("jobs", reliable=True) as c_pull:
                    task_status.started()
                    async for msg in c_pull:
                        c_seen.append(msg.body)
                        if len(c_seen) == 10:
                            break
                # leaving the block withdraws the channel and closes the socket

            await nursery.start(run_c)
            await a.wait_for_peers(2, channel="jobs")
            nursery.start_soon(drain, b_pull, b_seen)
            for i in range(await warm_up(push, b_seen, c_seen), n):
                await push.send(i)
            await wait_acked(push)
            st = push.statistics()
            nursery.cancel_scope.cancel()
    assert len(b_seen) == len(set(b_seen))
    assert set(b_seen) & set(c_seen) == {c_seen[-1]}
    assert sorted(c_seen[:-1] + b_seen) == list(range(n))
    assert st.redelivered >= 1
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)


@pytest.mark.parametrize("manual_ack", [False, True])
async def test_a_puller_node_killed_mid_stream_loses_nothing(manual_ack: bool) -> None:
    """Node a pushes to two puller nodes: b (here) and c, a process working slowly. c is
    SIGKILLed mid-stream; what it had not finished goes to b. Every item is processed;
    an item processed twice was one c had pulled."""
    n = 600
    b_seen: list[int] = []
    c_seen: list[int] = []
    with anyio.fail_after(30):
        a_port = free_port()
        async with (
            open_test_node("a", port=a_port, **FAST) as a,
            open_test_node("b", peers=[a_port], **FAST) as b,
            b.open_puller("jobs", reliable=True) as b_pull,
            node_process("c", a_port, "--reliable-puller", "jobs", "--delay", "0.002",
                         *(["--manual-ack"] if manual_ack else [])) as proc,
            a.open_pusher("jobs", reliable=True) as push,
            anyio.create_task_group() as nursery,
        ):
            await a.wait_for_peers(2, channel="jobs")
            c_gone = anyio.Event()
            nursery.start_soon(drain, b_pull, b_seen)
            nursery.start_soon(follow_pulled, proc, c_seen, c_gone)
            warm = await warm_up(push, b_seen, c_seen)
            for i in range(warm, n):
                await push.send(i)
            await eventually(lambda: len(c_seen) >= 20)
            proc.kill()
            await c_gone.wait()  # everything c reported is in c_seen now
            await wait_acked(push)
            st = push.statistics()
            nursery.cancel_scope.cancel()
    twice = set(b_seen) & set(c_seen)
    assert len(b_seen) == len(set(b_seen))
    assert len(c_seen) == len(set(c_seen))
    assert sorted(set(b_seen) | set(c_seen)) == list(range(n))
    assert st.redelivered >= 1
    assert len(twice) <= st.redelivered
    assert (st.sent, st.acked, st.in_flight, st.given_up) == (n, n, 0, 0)


async def test_closing_with_items_unfinished_logs_what_happens_to_them(
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    """The warning at close names the pattern, what becomes of the items, and the fix;
    with an outbox, the items are kept and the line says where."""
    for outbox in (None, tmp_path / "outbox.sqlite"):
        caplog.clear()
        with anyio.fail_after(10), caplog.at_level(logging.INFO, logger="shoal"):
            async with (
                shoal.open_puller(bind="tcp://127.0.0.1:*", reliable=True) as pull,
                shoal.open_pusher(connect=pull.endpoints, reliable=True,
                                  outbox=outbox) as push,
            ):
                await push.send("held")
                assert (await pull.receive()).body == "held"  # taken, not finished
                assert push.statistics().in_flight == 1
        said = [r for r in caplog.records if "reliable pusher closed" in r.getMessage()]
        assert len(said) == 1
        line = said[0].getMessage()
        assert "1 item(s) no puller acknowledged" in line
        if outbox is None:
            assert said[0].levelno == logging.WARNING
            assert "dropped" in line
            assert "outbox=" in line
        else:
            assert said[0].levelno == logging.INFO
            assert str(outbox) in line
            assert "sent again" in line
