"""Control links that cannot be had or are never answered: refused or reported with
their likely cause, counted, and never a crash. Loopback only, every test under
``trio.fail_after``."""

from __future__ import annotations

import logging
import socket

import pytest
import trio
import zmq

from shoal.errors import TransportError
from shoal.node import _links
from shoal.node._sockets import SocketFactory
from support.endpoints import endpoint, free_port
from support.nodes import open_test_node
from support.waiting import eventually


async def test_a_link_that_gets_no_tcp_connection_is_reported_as_unreachable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_links, "UNANSWERED_AFTER", 0.3)
    nobody = endpoint(free_port())  # nothing listens there: every connect is refused
    with trio.fail_after(10), caplog.at_level(logging.WARNING, logger="shoal"):
        async with open_test_node("a", heartbeat=0.05, peer_timeout=1.0) as a:
            a.introduce(nobody)
            await eventually(lambda: a.statistics().links_unanswered > 0)
            await trio.sleep(0.3)  # a second report would come by now
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
        with trio.fail_after(10), caplog.at_level(logging.WARNING, logger="shoal"):
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

    with trio.fail_after(10), caplog.at_level(logging.WARNING, logger="shoal"):
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
