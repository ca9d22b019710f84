"""mDNS discovery on loopback: nodes pinned to 127.0.0.1 find each other, and a node
on another protocol version is ignored with a warning.

Network safety: every Zeroconf here (shoal's and the test's own) is given
``interfaces=["127.0.0.1"]``; nothing is sent on the machine's real interfaces.
Discovery in one network namespace takes about a second (every process shares UDP
5353 there), hence the generous deadlines.
"""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
import trio
from zeroconf import IPVersion, ServiceInfo
from zeroconf import Zeroconf as _Zeroconf

import shoal
from shoal.discovery import MDNS, SERVICE_TYPE, PeerJoined, Role

LOOPBACK = ["127.0.0.1"]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def test_two_nodes_on_loopback_mdns_find_each_other_and_talk() -> None:
    with trio.fail_after(20):
        async with (
            shoal.open_node(unique("mdns-a"), discovery=MDNS(interfaces=LOOPBACK)) as a,
            shoal.open_node(unique("mdns-b"), discovery=MDNS(interfaces=LOOPBACK)) as b,
            a.open_replier("mdns-test-math") as rep,
            b.open_requester("mdns-test-math") as client,
        ):
            [seen_by_b] = [p for p in await b.wait_for_peers(1, channel="mdns-test-math")
                           if p.id == a.id]
            assert seen_by_b.name == a.name
            assert seen_by_b.address == "127.0.0.1"
            assert (seen_by_b.control_port, seen_by_b.epoch) == (a.control_port, a.epoch)
            assert [(c.name, c.role) for c in seen_by_b.channels] == [
                ("mdns-test-math", Role.REPLIER)]

            async def serve() -> None:
                async for req in rep:
                    await req.reply(req.body * 2)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                assert await client.request(21) == 42
                nursery.cancel_scope.cancel()
            assert any(p.id == b.id for p in a.peers())


def _register_foreign(zc: _Zeroconf, version: str) -> ServiceInfo:
    info = ServiceInfo(
        SERVICE_TYPE, f"{unique('future-node')}.{SERVICE_TYPE}", port=9,
        addresses=[socket.inet_aton("127.0.0.1")], server="future-node.local.",
        properties={"v": version, "id": uuid.uuid4().hex},
    )
    zc.register_service(info)
    return info


async def test_a_node_on_another_protocol_version_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="shoal")
    zc = await trio.to_thread.run_sync(
        lambda: _Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only))
    try:
        info = await trio.to_thread.run_sync(_register_foreign, zc, "99")
        with trio.fail_after(20):
            async with shoal.open_node(unique("mdns-c"),
                                       discovery=MDNS(interfaces=LOOPBACK)) as node:
                watch = node.watch_peers()
                with trio.move_on_after(8):
                    while not any(info.name in r.getMessage() for r in caplog.records):
                        await trio.sleep(0.05)
                warnings = [r.getMessage() for r in caplog.records if info.name in r.getMessage()]
                assert len(warnings) == 1, warnings
                assert "protocol" in warnings[0] and "99" in warnings[0]
                assert node.peers() == [] or all(p.name != "future-node" for p in node.peers())
                with trio.move_on_after(0.2):
                    ev = await watch.__anext__()
                    assert not (isinstance(ev, PeerJoined) and ev.peer.control_port == 9)
    finally:
        await trio.to_thread.run_sync(zc.close)


def test_mdns_refuses_bad_arguments() -> None:
    with pytest.raises(shoal.errors.LocalProtocolError, match="list"):
        MDNS(interfaces="127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(shoal.errors.LocalProtocolError, match="_shoal._tcp.local."):
        MDNS(interfaces=LOOPBACK, service_type="shoal")
