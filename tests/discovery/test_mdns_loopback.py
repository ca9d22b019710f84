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

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest
from zeroconf import IPVersion, ServiceInfo
from zeroconf import Zeroconf as _Zeroconf

import shoal
from shoal.discovery import MDNS, SERVICE_TYPE, Role

pytestmark = pytest.mark.anyio

LOOPBACK = ["127.0.0.1"]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def test_two_nodes_on_loopback_mdns_find_each_other_and_talk() -> None:
    # the default service type, which the nodes of every test running meanwhile share:
    # a channel of this run's own keeps their replier out of b's way
    channel = unique("mdns-test-math")
    with anyio.fail_after(20):
        async with (
            shoal.open_node(unique("mdns-a"), discovery=MDNS(interfaces=LOOPBACK)) as a,
            shoal.open_node(unique("mdns-b"), discovery=MDNS(interfaces=LOOPBACK)) as b,
            a.open_replier(channel) as rep,
            b.open_requester(channel) as client,
        ):
            [seen_by_b] = [p for p in await b.wait_for_peers(1, channel=channel)
                           if p.id == a.id]
            assert seen_by_b.name == a.name
            assert seen_by_b.address == "127.0.0.1"
            assert (seen_by_b.control_port, seen_by_b.epoch) == (a.control_port, a.epoch)
            assert [(c.name, c.role) for c in seen_by_b.channels] == [(channel, Role.REPLIER)]

            async def serve() -> None:
                async for req in rep:
                    await req.reply(req.body * 2)

            async with anyio.create_task_group() as nursery:
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
    zc.register_service(info, cooperating_responders=True)  # unique name: no probing
    return info


class _Heard(logging.Handler):
    """Sets an event when a record mentioning ``text`` is logged (shoal logs it on the
    event loop's thread)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.event = anyio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.event.set()


async def test_a_node_on_another_protocol_version_is_ignored_with_a_warning() -> None:
    zc = await anyio.to_thread.run_sync(
        lambda: _Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only))
    logger = logging.getLogger("shoal")
    heard = _Heard("future-node")
    logger.addHandler(heard)
    try:
        info = await anyio.to_thread.run_sync(_register_foreign, zc, "99")
        heard.text = info.name
        with anyio.fail_after(20):
            async with shoal.open_node(unique("mdns-c"),
                                       discovery=MDNS(interfaces=LOOPBACK)) as node:
                await heard.event.wait()
                await anyio.sleep(0.5)  # further announcements of it: no further warnings
                assert len(heard.messages) == 1, heard.messages
                assert "protocol b'99'" in heard.messages[0]
                assert all(p.control_port != 9 for p in node.peers())
    finally:
        logger.removeHandler(heard)
        await anyio.to_thread.run_sync(zc.close)


def test_mdns_refuses_bad_arguments() -> None:
    with pytest.raises(shoal.errors.LocalProtocolError, match="list"):
        MDNS(interfaces="127.0.0.1")
    with pytest.raises(shoal.errors.LocalProtocolError, match=r"_shoal\._tcp\.local\."):
        MDNS(interfaces=LOOPBACK, service_type="shoal")


def _service_type() -> str:
    return f"_s{uuid.uuid4().hex[:8]}._tcp.local."


async def test_a_closing_node_says_goodbye_and_a_browser_forgets_it() -> None:
    """The node's one goodbye (TTL 0) reaches a plain DNS-SD browser, which then
    reports the instance removed (long before its records' two-minute TTL)."""
    from zeroconf import ServiceBrowser, ServiceStateChange

    service_type = _service_type()
    zc = await anyio.to_thread.run_sync(
        lambda: _Zeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only))
    token = anyio.lowlevel.current_token()
    added, removed = anyio.Event(), anyio.Event()

    def on_change(zeroconf: object, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        # the browser's own thread, which may wait until the loop has run the call
        event = removed if state_change is ServiceStateChange.Removed else added
        anyio.from_thread.run_sync(event.set, token=token)

    browser = ServiceBrowser(zc, service_type, handlers=[on_change])
    try:
        with anyio.fail_after(20):
            async with shoal.open_node(unique("bye"), discovery=MDNS(
                    interfaces=LOOPBACK, service_type=service_type)):
                await added.wait()
            await removed.wait()
    finally:
        await anyio.to_thread.run_sync(browser.cancel)
        await anyio.to_thread.run_sync(zc.close)

