"""Control links that cannot be had or are never answered, and peers past
``max_peers``: refused or reported with their likely cause, counted, and never a
crash. Loopback only, every test under ``anyio.fail_after``."""

from __future__ import annotations

import logging
import resource
import socket
from collections.abc import Sequence

import anyio
import anyio.abc
import pytest
import zmq

import shoal
from shoal import Node
from shoal.errors import LocalProtocolError, TransportError
from shoal.node import _discovered, _links
from shoal.node._sockets import SocketFactory, descriptors_needed, max_sockets
from support.endpoints import endpoint, free_port
from support.nodes import LOOPBACK, Liveness, open_test_node
from support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_a_link_that_gets_no_tcp_connection_is_reported_as_unreachable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_links, "UNANSWERED_AFTER", 0.3)
    nobody = endpoint(free_port())  # nothing listens there: every connect is refused
    with anyio.fail_after(10), caplog.at_level(logging.WARNING, logger="shoal"):
        async with open_test_node("a", heartbeat=0.05, peer_timeout=1.0) as a:
            a.introduce(nobody)
            await eventually(lambda: a.statistics().links_unanswered > 0)
            await anyio.sleep(0.3)  # a second report would come by now
            stats = a.statistics()
    assert (stats.links_unanswered, stats.peers) == (1, 0)
    said = [r.getMessage() for r in caplog.records if "no answer" in r.getMessage()]
    assert len(said) == 1
    assert nobody in said[0]
    assert "no TCP connection" in said[0]


async def test_a_link_that_connects_but_never_shakes_hands_is_reported_as_not_shoal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_links, "UNANSWERED_AFTER", 0.3)
    with socket.socket() as listener:  # accepts TCP, never speaks ZMTP
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        where = endpoint(listener.getsockname()[1])
        with anyio.fail_after(10), caplog.at_level(logging.WARNING, logger="shoal"):
            async with open_test_node("a", heartbeat=0.05, peer_timeout=1.0) as a:
                a.introduce(where)
                await eventually(lambda: a.statistics().links_unanswered > 0)
    said = [r.getMessage() for r in caplog.records if "no answer" in r.getMessage()]
    assert len(said) == 1
    assert "no shoal handshake" in said[0]


async def test_a_node_out_of_sockets_refuses_the_peer_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    opened = SocketFactory.open

    def scarce(self: SocketFactory, kind: int, options: object, **kw: object) -> object:
        if kw.get("data") is False and kind == zmq.DEALER:
            raise TransportError("cannot create a socket: Too many open files")
        return opened(self, kind, options, **kw)  # type: ignore[arg-type]

    with anyio.fail_after(10), caplog.at_level(logging.WARNING, logger="shoal"):
        async with open_test_node("b", port=port, heartbeat=0.05, peer_timeout=1.0) as b:
            monkeypatch.setattr(SocketFactory, "open", scarce)
            async with open_test_node("a", peers=[port], heartbeat=0.05,
                                      peer_timeout=1.0) as a:
                await eventually(lambda: a.statistics().links_refused > 0)
                assert a.peers() == []
                monkeypatch.undo()  # sockets again: the next introduction links
                a.introduce(endpoint(port))
                await a.wait_for_peers(1)
                await b.wait_for_peers(1)
    said = [r.getMessage() for r in caplog.records if "not linking to" in r.getMessage()]
    assert said
    assert "Too many open files" in said[0]


# -- max_peers ------------------------------------------------------------------------


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "max_peers=" in r.getMessage()
            and "reached" in r.getMessage()]


FAST = Liveness(heartbeat=0.05, peer_timeout=1.0)


async def serve_node(name: str, leave: anyio.Event, port: int = 0, peers: Sequence[int] = (),
                     *, task_status: anyio.abc.TaskStatus[Node] = anyio.TASK_STATUS_IGNORED,
                     ) -> None:
    """A node that stays until ``leave`` is set (then says goodbye)."""
    async with open_test_node(name, port=port, peers=peers, **FAST) as node:
        task_status.started(node)
        await leave.wait()



async def test_a_node_at_max_peers_refuses_the_rest_and_admits_one_when_a_peer_leaves(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_discovered, "REINTRODUCE", 0.1)  # discovery repeats often
    names = "bcde"
    ports = {n: free_port() for n in names}
    leave = {n: anyio.Event() for n in names}
    with anyio.fail_after(20), caplog.at_level(logging.INFO, logger="shoal"):
        async with anyio.create_task_group() as tg:
            others = {n: await tg.start(serve_node, n, leave[n], ports[n])
                      for n in names}
            async with open_test_node("a", peers=list(ports.values()), max_peers=2,
                                      **FAST) as a:
                await eventually(lambda: len(a.peers()) == 2
                                 and a.statistics().peers_refused == 2)
                await anyio.sleep(0.5)  # five more rounds of discovery: still refused
                stats = a.statistics()
                assert (len(a.peers()), stats.links, stats.peers_refused) == (2, 2, 2)
                kept = sorted(p.name for p in a.peers())
                refused = sorted(set(names) - set(kept))
                said = refusals(caplog)
                assert len(said) == 2  # once per refused peer, however often it is found
                for n in refused:
                    assert others[n].peers() == []  # it never heard from a
                    [line] = [m for m in said if endpoint(ports[n]) in m]
                    assert "max_peers=2 reached" in line
                    assert "raise open_node(max_peers=...)" in line

                leave[kept[0]].set()  # a peer leaves: its place is free
                await eventually(lambda: any(p.name in refused for p in a.peers()))
                newcomer = next(p.name for p in a.peers() if p.name in refused)
                await others[newcomer].wait_for_peers(1)
                # the one that left is now refused in turn (its address stays listed)
                await eventually(lambda: a.statistics().peers_refused == 3)
                assert sorted(p.name for p in a.peers()) == sorted([kept[1], newcomer])
                assert a.statistics().links == 2
            for ev in leave.values():
                ev.set()
    assert any("a place freed up" in r.getMessage() and endpoint(ports[newcomer])
               in r.getMessage() for r in caplog.records)


async def test_a_node_at_max_peers_ignores_a_node_that_introduces_itself_until_a_place_frees(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a_port = free_port()
    b_leaves = anyio.Event()
    with anyio.fail_after(20), caplog.at_level(logging.INFO, logger="shoal"):
        async with (open_test_node("a", port=a_port, max_peers=1, **FAST) as a,
                    anyio.create_task_group() as tg):
            await tg.start(serve_node, "b", b_leaves, 0, [a_port])
            await a.wait_for_peers(1)
            async with open_test_node("c", peers=[a_port], **FAST) as c:
                await eventually(lambda: a.statistics().peers_refused == 1)
                await anyio.sleep(0.3)  # c's States keep coming: counted once
                assert [p.name for p in a.peers()] == ["b"]
                assert (a.statistics().peers_refused, a.statistics().links) == (1, 1)
                assert c.peers() == []  # a never answered
                b_leaves.set()  # b leaves: c's next State is admitted
                [back] = await c.wait_for_peers(1)
                assert back.name == "a"
                assert [p.name for p in a.peers()] == ["c"]
    assert len(refusals(caplog)) == 1


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10", [4]])
async def test_max_peers_must_be_a_whole_number_of_at_least_one(bad: object) -> None:
    with anyio.fail_after(5), pytest.raises(LocalProtocolError, match=r"max_peers is a whole "
                                           r"number >= 1"):
        async with shoal.open_node("x", interfaces=LOOPBACK, max_peers=bad):  # type: ignore[arg-type]
            pass


async def test_the_context_is_sized_for_max_peers_and_a_low_descriptor_limit_is_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (100, 1_000_000))
    need = descriptors_needed(50)
    assert need > 100
    with anyio.fail_after(10), caplog.at_level(logging.INFO, logger="shoal"):
        async with open_test_node("a", max_peers=50) as a:
            assert a.max_peers == 50
            assert a._sockets.context.get(zmq.MAX_SOCKETS) == max_sockets(50) == 3 * 50 + 1039
    said = [r for r in caplog.records if "ulimit -n" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.WARNING
    assert f"max_peers=50 may need {need} file descriptors" in said[0].getMessage()
    assert "may open only 100" in said[0].getMessage()


async def test_the_default_max_peers_only_notes_a_low_descriptor_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 1_000_000))
    with anyio.fail_after(10), caplog.at_level(logging.INFO, logger="shoal"):
        async with open_test_node("a") as a:
            assert a.max_peers == shoal.node._node.DEFAULT_MAX_PEERS == 1000
            assert a._sockets.context.get(zmq.MAX_SOCKETS) == max_sockets(1000)
    said = [r for r in caplog.records if "ulimit -n" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO]


async def test_enough_descriptors_is_silent_and_the_socket_limit_is_clamped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    huge = 100_000  # more sockets than libzmq allows a context
    monkeypatch.setattr(resource, "getrlimit",
                        lambda _which: (descriptors_needed(huge), 10_000_000))
    with anyio.fail_after(10), caplog.at_level(logging.INFO, logger="shoal"):
        async with open_test_node("a", max_peers=huge) as a:
            ctx = a._sockets.context
            assert max_sockets(huge) > ctx.get(zmq.SOCKET_LIMIT)
            assert ctx.get(zmq.MAX_SOCKETS) == ctx.get(zmq.SOCKET_LIMIT)
    assert not [r for r in caplog.records if "ulimit -n" in r.getMessage()]
