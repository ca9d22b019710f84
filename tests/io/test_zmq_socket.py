"""The event loop <-> pyzmq socket layer under the edge-triggered FD, on every loop
shoal runs on: each test runs under trio, asyncio's selector loop and uvloop.

Each hang listed in DESIGN.md has a deterministic regression test here, and each
test is paired with a run of the same scenario against a deliberately naive
implementation (``support.naive``: ``NaiveSocket``, where every waiter parks on the FD
itself, nothing is re-checked after a libzmq call, receive waits before it tries; or
the real socket with the one rule that the scenario is about dropped). The pairs run
on every loop too: they show that the scenario really reproduces the hang there, so
the regression test can fail there.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest
import trio
import zmq

from shoal._io import current
from shoal._zmq._socket import Socket
from shoal.errors import ClosedError
from support.naive import NaiveSocket, UnrefreshedSocket

pytestmark = pytest.mark.anyio

_names = itertools.count()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def inproc() -> str:
    return f"inproc://socket-test-{next(_names)}"


def pair(ctx: zmq.Context[zmq.Socket[bytes]], cls: type[Socket] = Socket,
         ) -> tuple[Socket, zmq.Socket[bytes]]:
    """Our DEALER socket connected to a raw DEALER peer over inproc."""
    ep = inproc()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.bind(ep)
    ours = cls(ctx.socket(zmq.DEALER), linger_ms=0)
    ours.connect(ep)
    return ours, peer


def filled_pair(ctx: zmq.Context[zmq.Socket[bytes]], cls: type[Socket] = Socket,
                ) -> tuple[Socket, zmq.Socket[bytes], int]:
    """Like ``pair``, with the pipe to the peer full: the next send must wait.

    (``ZMQ_IMMEDIATE`` cannot force that over inproc: connecting before the bind
    creates the pipe at once.) Returns the number of messages queued.
    """
    ep = inproc()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.RCVHWM, 1)
    peer.bind(ep)
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.SNDHWM, 1)
    ours = cls(raw, linger_ms=0)
    ours.connect(ep)
    queued = 0
    while True:
        try:
            ours.send_nowait(b"filler")
            queued += 1
        except anyio.WouldBlock:
            return ours, peer, queued


async def recv_one(sock: Socket) -> bytes:
    """The receive loop the patterns use: try first, wait only after Again."""
    while True:
        got = sock.receive_batch_nowait(1)
        if got:
            return got[0][0]
        await sock.wait_receivable()


async def naive_recv_one(sock: Socket) -> bytes:
    """Wait for the FD, then receive once."""
    while True:
        await sock.wait_receivable()
        got = sock.receive_batch_nowait(1)
        if got:
            return got[0][0]


def peer_recv(peer: zmq.Socket[bytes], timeout: float = 2.0) -> bytes:
    if not peer.poll(int(timeout * 1000)):
        raise AssertionError("the raw peer received nothing")
    return peer.recv()


# --- 1. A call on the same socket steals the edge from a parked receiver -------------

def steal_edge(ours: Socket, how: str) -> None:
    if how == "send":
        # libzmq throttles command processing inside send() to once per ~1 ms of
        # CPU ticks; sleeping past that makes the send consume the edge every time.
        time.sleep(0.005)
        ours.send_nowait(b"ping")
    else:
        ours.connect(inproc())  # connect processes commands unthrottled


async def run_steal_scenario(ours: Socket, peer: zmq.Socket[bytes], how: str,
                             patience: float) -> list[bytes]:
    got: list[bytes] = []
    arrived = anyio.Event()

    async def receiver() -> None:
        got.append(await recv_one(ours))
        arrived.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        await anyio.wait_all_tasks_blocked()  # receiver parked on the FD
        peer.send(b"hello")  # inproc: our FD becomes readable right now
        steal_edge(ours, how)  # ...and this call consumes it, before the loop polls
        with anyio.move_on_after(patience):
            await arrived.wait()
        tg.cancel_scope.cancel()
    return got


@pytest.mark.parametrize("how", ["send", "connect"])
async def test_a_call_on_the_socket_does_not_strand_a_parked_receiver(
    ctx: zmq.Context[zmq.Socket[bytes]], how: str
) -> None:
    ours, peer = pair(ctx)
    with anyio.fail_after(5):
        for _ in range(20):
            assert await run_steal_scenario(ours, peer, how, patience=2) == [b"hello"]
    ours.close()


@pytest.mark.parametrize("naive", [NaiveSocket, UnrefreshedSocket],
                         ids=["naive", "no-refresh-after-a-call"])
@pytest.mark.parametrize("how", ["send", "connect"])
async def test_the_steal_scenario_hangs_a_naive_implementation(
    ctx: zmq.Context[zmq.Socket[bytes]], how: str, naive: type[Socket]
) -> None:
    ours, peer = pair(ctx, naive)
    with anyio.fail_after(5):
        assert await run_steal_scenario(ours, peer, how, patience=0.5) == []
    ours.close()


# --- 2. One waiter per FD: a sender and a receiver wait at the same time -------------

async def run_two_waiters(ctx: zmq.Context[zmq.Socket[bytes]], cls: type[Socket]) -> bytes:
    ours, peer, queued = filled_pair(ctx, cls)
    received: list[bytes] = []

    async def receiver() -> None:
        received.append(await recv_one(ours))

    async with anyio.create_task_group() as tg:
        tg.start_soon(receiver)
        tg.start_soon(ours.send, b"question")
        await anyio.wait_all_tasks_blocked()  # both parked
        for _ in range(queued):  # drain: the sender can go now
            assert peer_recv(peer) == b"filler"
        with anyio.fail_after(2):
            # the peer is a raw pyzmq socket: no event to wait on, so poll it
            while not peer.poll(0):  # noqa: ASYNC110
                await anyio.sleep(0.001)
        assert peer.recv() == b"question"
        peer.send(b"answer")
    ours.close()
    return received[0]


async def test_a_sender_and_a_receiver_may_wait_on_one_socket_at_once(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    with anyio.fail_after(5):
        assert await run_two_waiters(ctx, Socket) == b"answer"


def busy_error() -> type[Exception]:
    """What a second waiter on one FD gets from the running loop."""
    return trio.BusyResourceError if current().name == "trio" else anyio.BusyResourceError


async def test_two_waiters_break_a_naive_implementation(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    with anyio.fail_after(5), pytest.RaisesGroup(busy_error(), flatten_subgroups=True):
        await run_two_waiters(ctx, NaiveSocket)


# --- 3. Messages already queued need no new edge ------------------------------------

async def receive_queued(ctx: zmq.Context[zmq.Socket[bytes]], naive: bool,
                         cls: type[Socket] = Socket) -> list[bytes]:
    ours, peer = pair(ctx, cls)
    for i in range(10):
        peer.send(b"%d" % i)
    got: list[bytes] = []
    with anyio.move_on_after(0.5):
        while len(got) < 10:
            got.append(await (naive_recv_one(ours) if naive else recv_one(ours)))
    ours.close()
    return got


async def test_queued_messages_are_received_without_a_new_edge(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    with anyio.fail_after(5):
        assert await receive_queued(ctx, naive=False) == [b"%d" % i for i in range(10)]


async def test_queued_messages_strand_a_wait_first_receiver(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """"Wait for the FD, then recv once" never sees all ten: no edge announces them."""
    with anyio.fail_after(5):
        assert len(await receive_queued(ctx, naive=True, cls=NaiveSocket)) < 10


async def test_a_wait_after_a_libzmq_call_reads_events_before_parking(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """The socket owns the invariant: the connect and the peer's sends left the edge
    consumed, yet even a receiver that waits first gets all ten, because a wait after
    any libzmq call re-reads EVENTS before it parks."""
    with anyio.fail_after(5):
        assert await receive_queued(ctx, naive=True) == [b"%d" % i for i in range(10)]


# --- 4. Closing wakes every waiter ---------------------------------------------------

async def test_close_wakes_every_waiter_with_closed_error(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    ours, _peer, _ = filled_pair(ctx)  # sends and receives both wait
    outcomes: list[str] = []

    async def wait_for(op: str) -> None:
        try:
            if op == "send":
                await ours.send(b"x")
            else:
                await recv_one(ours)
        except ClosedError:
            outcomes.append(op)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for, "send")
            tg.start_soon(wait_for, "receive")
            tg.start_soon(wait_for, "receive")
            await anyio.wait_all_tasks_blocked()
            ours.close()
    assert sorted(outcomes) == ["receive", "receive", "send"]
    assert isinstance(ClosedError("x"), anyio.ClosedResourceError)
    assert isinstance(ClosedError("x"), trio.ClosedResourceError)
    with pytest.raises(ClosedError):
        ours.send_nowait(b"after close")
    ours.close()  # idempotent


# --- 5. LINGER never hangs shutdown --------------------------------------------------

async def test_unsent_messages_do_not_hang_context_termination() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    ours = Socket(context.socket(zmq.DEALER), linger_ms=50)
    # A TCP peer that never answers: messages queue on the pipe and stay unsent.
    ours.connect("tcp://127.0.0.1:9")
    for _ in range(10):
        ours.send_nowait(b"stuck")
    ours.close()
    with anyio.fail_after(5):
        await anyio.to_thread.run_sync(context.term, abandon_on_cancel=True)


# --- 6. Cancellation safety ----------------------------------------------------------

async def test_a_cancelled_receive_leaves_the_message_queued(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    ours, peer = pair(ctx)
    with anyio.fail_after(5):
        with anyio.move_on_after(0.05) as scope:
            await recv_one(ours)
        assert scope.cancelled_caught
        peer.send(b"after the cancel")
        assert await recv_one(ours) == b"after the cancel"
    ours.close()


async def test_a_cancelled_send_sent_nothing(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    ours, peer, queued = filled_pair(ctx)
    with anyio.fail_after(5):
        with anyio.move_on_after(0.05) as scope:
            await ours.send(b"cancelled")
        assert scope.cancelled_caught
        for _ in range(queued):
            assert peer_recv(peer) == b"filler"
        await ours.send(b"sent")
        assert peer_recv(peer) == b"sent"
        assert not peer.poll(100)
    ours.close()


async def test_cancelling_at_every_step_loses_and_duplicates_nothing(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """A receiver cancelled over and over while 2,000 messages stream in gets each once."""
    ours, peer = pair(ctx)
    total = 2000
    got: list[bytes] = []

    async def stream() -> None:
        for i in range(total):
            peer.send(b"%d" % i)
            if i % 7 == 0:
                await anyio.lowlevel.checkpoint()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            deadlines = itertools.cycle([0.0, 0.0, 1e-5, 1e-4, 1e-3])
            while len(got) < total:
                with anyio.move_on_after(next(deadlines)):
                    got.append(await recv_one(ours))
    assert got == [b"%d" % i for i in range(total)]
    ours.close()


async def test_zmq_again_never_escapes(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    ours, _peer, _ = filled_pair(ctx)
    with anyio.fail_after(5):
        with pytest.raises(anyio.WouldBlock):
            ours.send_nowait(b"nobody there")
        assert ours.receive_batch_nowait(10) == []
        with anyio.move_on_after(0.05):
            await ours.send(b"waits, never raises zmq.Again")
    ours.close()


# --- 7. A sender and a receiver hammering one socket ----------------------------------

async def test_concurrent_sending_and_receiving_under_backpressure_never_stalls(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    """A sends 3,000 messages and receives their echoes in two tasks at once, with tiny
    high-water marks so both of A's tasks (and the echoing B) keep parking and waking
    each other through the watcher, the parking lots and pokes. Nothing may stall."""
    total = 3000
    ep = inproc()
    raw_b = ctx.socket(zmq.DEALER)
    raw_a = ctx.socket(zmq.DEALER)
    for raw in (raw_a, raw_b):
        raw.setsockopt(zmq.SNDHWM, 5)
        raw.setsockopt(zmq.RCVHWM, 5)
    b = Socket(raw_b, linger_ms=0)
    b.bind(ep)
    a = Socket(raw_a, linger_ms=0)
    a.connect(ep)
    echoed: list[bytes] = []

    async def echo() -> None:
        for _ in range(total):
            await b.send(await recv_one(b))

    async def send_all() -> None:
        for i in range(total):
            await a.send(b"%d" % i)

    async def receive_all() -> None:
        while len(echoed) < total:
            echoed.append(await recv_one(a))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(echo)
            tg.start_soon(receive_all)
            tg.start_soon(send_all)
    assert echoed == [b"%d" % i for i in range(total)]
    a.close()
    b.close()
