"""The durable outbox of a reliable pusher, and what a pusher gives up (dead letters).

A pusher opened with ``outbox="file.sqlite"`` keeps each accepted item on disk until a
puller is done with it; killed and reopened on the same file, it sends the unfinished
items again under their original ids and pullers drop the copies they already had.

Network safety: loopback only (explicit 127.0.0.1 endpoints).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import zmq

import shoal
from shoal.errors import DeliveryFailed, LocalProtocolError
from shoal.patterns import DeadLetter
from support.delivery import count_items
from support.endpoints import free_port
from support.loops import current_loop

pytestmark = pytest.mark.anyio

LOOPBACK = "tcp://127.0.0.1:*"

# A pusher process on the test's event loop (LOOP: trio, asyncio or uvloop): send N
# items through its outbox to ENDPOINTS (comma-separated), wait up to WAIT seconds for
# them to go on the wire, report, then wait to be killed (SIGKILL: no clean close, no
# flush).
_CHILD = r"""
import sys, anyio, shoal
async def main() -> None:
    endpoints, path, n = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3])
    async with shoal.open_pusher(connect=endpoints, reliable=True, outbox=path) as push:
        for i in range(n):
            await push.send({"n": i})
        with anyio.move_on_after(float(sys.argv[4])):  # until they went on the wire
            while push.statistics().sent < n:
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)  # and reached the puller's socket
        print("sent", flush=True)
        await anyio.sleep(60)
loop = sys.argv[5]
anyio.run(main, backend="trio" if loop == "trio" else "asyncio",
          backend_options={"use_uvloop": True} if loop == "uvloop" else {})
"""


class Relay:
    """A TCP relay on loopback: ``127.0.0.1:port`` forwarded to ``127.0.0.1:target``,
    listening between ``start()`` and ``stop()`` (threads; every socket closed on
    ``stop``). Lets a test decide when a connection to a puller can come up."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._socks: list[socket.socket] = []
        self._server: socket.socket | None = None

    def start(self) -> None:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
                out = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return  # stopped
            self._socks += [conn, out]
            for src, dst in ((conn, out), (out, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._socks.clear()


async def run_child_until_sent(endpoint: str, path: Path, n: int, wait: float) -> None:
    """Start the pusher process, wait for "sent", then SIGKILL it."""
    proc = subprocess.Popen(  # noqa: ASYNC220 (read in a thread below)
        [sys.executable, "-c", _CHILD, endpoint, str(path), str(n), str(wait), current_loop()],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == "sent", line
    finally:
        proc.kill()
        await anyio.to_thread.run_sync(proc.wait)


async def drain_until_acked(pull: shoal.patterns.ReliablePuller,
                            push: shoal.patterns.ReliablePusher) -> list[shoal.Message]:
    """Process everything a pusher sends until it has it all acknowledged."""
    got: list[shoal.Message] = []

    async def take() -> None:
        async for msg in pull:
            got.append(msg)

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(take)
        await push.wait_acked()
        nursery.cancel_scope.cancel()
    return got


async def test_a_killed_pusher_reopened_on_its_outbox_sends_what_was_not_done(
        tmp_path: Path) -> None:
    """Nobody takes the items before the crash: all of them come after the restart,
    with the ids they were given the first time, and new items are numbered after."""
    path = tmp_path / "jobs.sqlite"
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with anyio.fail_after(30):
        await run_child_until_sent(endpoint, path, 50, 0.0)  # no puller: all unsent
        assert count_items(path) == 50
        async with (
            shoal.open_puller(bind=endpoint, reliable=True) as pull,
            shoal.open_pusher(connect=endpoint, reliable=True, outbox=path) as push,
        ):
            assert push.statistics().restored == 50
            await push.send({"n": "new"})
            got = await drain_until_acked(pull, push)
    bodies = [m.body["n"] for m in got]
    assert sorted(bodies, key=str) == sorted([*range(50), "new"], key=str)
    ids = {m.id for m in got}
    assert len(ids) == 51
    streams = {(m.sender, m.epoch, m.stream) for m in got}
    assert len(streams) == 1  # the restored stream continues: one identity
    new = next(m for m in got if m.body["n"] == "new")
    assert new.seq == 50  # numbered after the old ones
    assert count_items(path) == 0


async def test_items_a_puller_already_processed_are_not_processed_again(
        tmp_path: Path) -> None:
    """The puller takes what reached it before the crash, but no acknowledgement of it
    reaches the pusher before it dies; the restarted pusher sends every item again and
    the puller drops the copies of what it had (acknowledging them), so each item is
    processed exactly once."""
    path = tmp_path / "jobs.sqlite"
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with anyio.fail_after(30):
        async with shoal.open_puller(bind=endpoint, reliable=True) as pull:
            await run_child_until_sent(endpoint, path, 40, 5.0)
            first: list[shoal.Message] = []
            with anyio.move_on_after(1.0):
                while len(first) < 40:
                    first.append(await pull.receive())
            async with shoal.open_pusher(connect=endpoint, reliable=True,
                                         outbox=path) as push:
                restored = push.statistics().restored
                again = await drain_until_acked(pull, push)
            stats = pull.statistics()
    assert first, "nothing reached the puller before the crash"
    assert restored == 40  # nothing was acknowledged to the dead pusher
    assert not {m.id for m in first} & {m.id for m in again}  # nothing processed twice
    assert sorted(m.body["n"] for m in first + again) == list(range(40))
    assert stats.duplicates >= len(first)
    assert count_items(path) == 0


async def test_a_restarted_pusher_sends_unfinished_items_first_to_the_puller_that_had_them(
        tmp_path: Path) -> None:
    """Before the crash every item went to puller A (B was not up), which processed
    them all; no acknowledgement reached the pusher. Reopened on its outbox with A and
    B both up, the pusher sends each item to A again, which recognises it and
    acknowledges it; B, whose memory cannot know what A did, is never handed one to
    process a second time. (Round-robin, B processed about half of them again.)"""
    path = tmp_path / "jobs.sqlite"
    pa = free_port()
    ea, eb = f"tcp://127.0.0.1:{pa}", f"tcp://127.0.0.1:{free_port()}"
    relay = Relay(free_port(), pa)  # the pusher reaches A through it: we say when
    via = f"tcp://127.0.0.1:{relay.port}"
    got_a: list[Any] = []
    got_b: list[Any] = []
    with anyio.fail_after(30):
        async with shoal.open_puller(bind=ea, reliable=True) as a:
            relay.start()
            try:
                await run_child_until_sent(f"{via},{eb}", path, 40, 5.0)
                first: list[shoal.Message] = []
                with anyio.move_on_after(2.0):
                    while len(first) < 40:
                        first.append(await a.receive())
            finally:
                relay.stop()
            async with (
                shoal.open_puller(bind=eb, reliable=True) as b,
                shoal.open_pusher(connect=[via, eb], reliable=True, outbox=path) as push,
                anyio.create_task_group() as nursery,
            ):
                async def take(pull: Any, into: list[Any]) -> None:
                    async for msg in pull:
                        into.append(msg.body)

                nursery.start_soon(take, a, got_a)
                nursery.start_soon(take, b, got_b)
                await anyio.sleep(0.5)  # B is connected by now; A not yet
                relay.start()
                try:
                    await push.wait_acked()
                finally:
                    relay.stop()
                restored = push.statistics().restored
                nursery.cancel_scope.cancel()
    assert len(first) == 40
    assert restored == 40  # nothing was acknowledged to the dead pusher
    assert got_b == []  # nothing processed twice...
    assert got_a == []  # ...A dropped its copies (and acknowledged them)
    assert count_items(path) == 0


async def test_one_outbox_one_pusher_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    with anyio.fail_after(10):
        async with shoal.open_pusher(connect="tcp://127.0.0.1:9", reliable=True,
                                     outbox=path):
            with pytest.raises(LocalProtocolError, match="in use by another pusher"):
                async with shoal.open_pusher(connect="tcp://127.0.0.1:9", reliable=True,
                                             outbox=path):
                    pass
        async with shoal.open_pusher(connect="tcp://127.0.0.1:9", reliable=True,
                                     outbox=path):
            pass  # free again once the first closed


async def test_a_file_that_is_not_an_outbox_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not a database" * 100)
    with anyio.fail_after(10), pytest.raises(LocalProtocolError, match="outbox"):
        async with shoal.open_pusher(connect="tcp://127.0.0.1:9", reliable=True,
                                     outbox=path):
            pass


async def test_an_outbox_needs_a_reliable_pusher(tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError, match="reliable=True"):
        async with shoal.open_pusher(connect="tcp://127.0.0.1:9",  # type: ignore[call-overload]
                                     outbox=tmp_path / "x.sqlite"):
            pass


async def test_given_up_items_become_dead_letters() -> None:
    """No puller at all: after give_up_after every item is given up, reported by
    wait_acked (DeliveryFailed) and on the dead_letters channel, with its body."""
    with anyio.fail_after(10):
        async with shoal.open_pusher(connect="tcp://127.0.0.1:9", reliable=True,
                                     give_up_after=0.3) as push:
            for i in range(3):
                await push.send({"n": i}, headers={"job": f"j{i}"})
            with pytest.raises(DeliveryFailed) as info:
                await push.wait_acked()
            letters = [push.dead_letters.receive_nowait() for _ in range(3)]
            with pytest.raises(anyio.WouldBlock):
                push.dead_letters.receive_nowait()
            stats = push.statistics()
    failed = info.value.failed
    assert [d.body for d in failed] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [d.headers for d in failed] == [{"job": "j0"}, {"job": "j1"}, {"job": "j2"}]
    assert all(isinstance(d, DeadLetter) for d in failed)
    assert {d.reason for d in failed} == {"deadline"}
    assert [d.id for d in letters] == [d.id for d in failed]
    assert all(d.last_peer is None and d.attempts == 0 for d in failed)  # never sent
    assert (stats.given_up, stats.in_flight) == (3, 0)
    assert "3 message(s) given up" in str(info.value)


async def test_an_item_no_puller_takes_is_given_up_after_max_attempts() -> None:
    """A puller that receives items but whose acknowledgements never come back (a raw
    ROUTER that reads and says nothing): each item is sent max_attempts times, then
    given up naming that puller."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    mute = ctx.socket(zmq.ROUTER)
    port = mute.bind_to_random_port("tcp://127.0.0.1")
    try:
        with anyio.fail_after(15):
            async with shoal.open_pusher(connect=f"tcp://127.0.0.1:{port}", reliable=True,
                                         rto=0.05, max_attempts=3) as push:
                await push.send("x")
                with pytest.raises(DeliveryFailed) as info:
                    await push.wait_acked()
    finally:
        mute.close(0)
    (letter,) = info.value.failed
    assert (letter.reason, letter.attempts) == ("attempts", 3)
    assert letter.last_peer is not None
