"""The Prometheus exporter: what a scrape shows for nodes, peers and resources, and how
its HTTP server treats good, bad, slow and oversized clients.

Every scrape goes over a real TCP connection to the exporter on 127.0.0.1, and the page
is read back with ``prometheus_client``'s own parser. Nodes use ``Static`` discovery on
127.0.0.1 (never mDNS). Every test runs under ``anyio.fail_after``, once on each event
loop (trio, asyncio, uvloop).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import shoal
import shoal.patterns
from shoal import Node
from shoal.discovery import Role, Static
from shoal.errors import LocalProtocolError, TransportError
from shoal.node._node import DEFAULT_PEER_TIMEOUT
from shoal.prometheus import _metrics
from shoal.prometheus._exporter import GAUGE_FIELDS, MAX_REQUEST_BYTES, open_prometheus_exporter
from support.endpoints import free_port
from support.waiting import eventually

pytestmark = pytest.mark.anyio

LOOPBACK = ("127.0.0.1", 0)
Address = tuple[str, int]
T = TypeVar("T")


# -- helpers ---------------------------------------------------------------------------------


def open_test_node(name: str, *, peers: Sequence[int] = (), port: int = 0
                   ) -> AbstractAsyncContextManager[Node]:
    return shoal.open_node(name, discovery=Static([f"tcp://127.0.0.1:{p}" for p in peers]),
                           interfaces=["127.0.0.1"], port=port)


@asynccontextmanager
async def node_pair() -> AsyncIterator[tuple[Node, Node]]:
    a_port = free_port()
    async with open_test_node("a", port=a_port) as a, open_test_node("b", peers=[a_port]) as b:
        await a.wait_for_peers(1)
        await b.wait_for_peers(1)
        yield a, b


class Opened:
    """Opens resources through a node and checks that ``Node.resources()`` lists each
    one (channel, role, the object) while it is open, which the exporter relies on."""

    def __init__(self, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
        self.node = node

    @asynccontextmanager
    async def track(self, channel: str, role: Role, cm: AbstractAsyncContextManager[T]
                    ) -> AsyncIterator[T]:
        async with cm as resource:
            listed = [(r.channel, r.role, r.resource) for r in self.node.resources()]
            assert (channel, role, resource) in listed
            yield resource


async def read_to_end(stream: anyio.abc.ByteReceiveStream) -> bytes:
    """Everything ``stream`` receives until the server closes."""
    data = b""
    while True:
        try:
            data += await stream.receive(65536)
        except anyio.EndOfStream:
            return data


async def http(address: Address, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request``, read the response until the server closes."""
    stream = await anyio.connect_tcp(*address)
    async with stream:
        await stream.send(request)
        data = await read_to_end(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return int(status.split()[1]), headers, body


class Page:
    """A scraped exposition, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str, **labels: str) -> list[Sample]:
        return [s for f in self.families.values() for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        found = self.samples(name, **labels)
        assert len(found) == 1, f"{name}{labels}: {found}\n{self.text}"
        return found[0].value

    def type_of(self, family: str) -> str:
        return str(self.families[family].type)


async def scrape(address: Address) -> Page:
    status, headers, body = await http(
        address, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
    assert status == 200, body
    assert headers["content-type"] == prometheus_client.CONTENT_TYPE_LATEST
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return Page(body.decode())


# -- what a scrape shows ---------------------------------------------------------------------


async def test_a_node_its_peers_and_its_resources_are_exported(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with anyio.fail_after(20):
        async with node_pair() as (a, b), open_prometheus_exporter(bind=LOOPBACK) as exp:
            opened_a, opened_b = Opened(a, monkeypatch), Opened(b, monkeypatch)
            exp.add_node(a)
            exp.add_node(b)
            exp.add_node(a)  # again: nothing changes
            async with (
                opened_a.track("telemetry", Role.PUBLISHER, a.open_publisher("telemetry")) as pub,
                opened_b.track("telemetry", Role.SUBSCRIBER,
                               b.open_subscriber("telemetry")) as sub,
                opened_a.track("rpc", Role.REPLIER, a.open_replier("rpc")) as rep,
                opened_b.track("rpc", Role.REQUESTER, b.open_requester("rpc")) as req,
                opened_b.track("jobs", Role.RELIABLE_PUSHER,
                               b.open_pusher("jobs", reliable=True)) as push,
                opened_a.track("jobs", Role.RELIABLE_PULLER,
                               a.open_puller("jobs", reliable=True)) as pull,
                anyio.create_task_group() as nursery,
            ):
                async def answer() -> None:
                    async for r in rep:
                        await r.reply(r.body * 2)

                nursery.start_soon(answer)
                await pub.wait_for_subscribers(1)
                for i in range(5):
                    await pub.publish("room1/temp", i)
                got = [(await sub.receive()).body for _ in range(5)]
                assert got == list(range(5))
                assert [await req.request(i) for i in range(3)] == [0, 2, 4]
                for i in range(4):
                    await push.send(i)
                assert [(await pull.receive()).body for _ in range(4)] == list(range(4))

                page = await scrape(exp.address)
                on_a = {"node": "a", "node_id": a.id}
                on_b = {"node": "b", "node_id": b.id}
                # the nodes themselves
                assert page.value("shoal_node_peers", **on_a) == 1
                assert page.type_of("shoal_node_peers") == "gauge"
                assert page.value("shoal_node_control_received_total", **on_a) > 0
                assert page.type_of("shoal_node_control_received") == "counter"
                assert page.value("shoal_node_malformed_total", **on_b) == 0
                assert page.value("shoal_node_info", **on_a, epoch=str(a.epoch)) == 1
                # their peers
                assert page.value("shoal_peer_info", **on_a, peer="b", peer_id=b.id,
                                  epoch=str(b.epoch), address="127.0.0.1") == 1
                age = page.value("shoal_peer_last_seen_age_seconds", **on_a, peer_id=b.id)
                assert 0 <= age < DEFAULT_PEER_TIMEOUT  # a live peer was heard from lately
                assert page.value("shoal_peer_offers", **on_b, peer_id=a.id) == 3
                # their resources, by channel and role
                assert page.value("shoal_publisher_published_total", **on_a,
                                  channel="telemetry", role="publisher") == 5
                assert page.value("shoal_publisher_subscribers", **on_a,
                                  channel="telemetry") == 1
                assert page.type_of("shoal_publisher_subscribers") == "gauge"
                assert page.value("shoal_subscriber_received_total", **on_b,
                                  channel="telemetry", role="subscriber") == 5
                assert page.value("shoal_subscriber_gaps_total", **on_b) == 0
                assert page.value("shoal_requester_sent_total", **on_b, channel="rpc") == 3
                assert page.value("shoal_requester_replies_total", **on_b, channel="rpc") == 3
                assert page.value("shoal_requester_in_flight", **on_b, channel="rpc") == 0
                assert page.value("shoal_replier_replied_total", **on_a, channel="rpc",
                                  role="replier") == 3
                assert page.value("shoal_reliable_puller_received_total", **on_a,
                                  channel="jobs", role="reliable_puller") == 4
                # the last item is still in the application's hands
                assert page.value("shoal_reliable_puller_held", **on_a, channel="jobs") == 1
                assert page.value("shoal_reliable_pusher_sent_total", **on_b,
                                  channel="jobs", role="reliable_pusher") == 4
                # nothing from one node shows under the other
                assert page.samples("shoal_publisher_published_total", node="b") == []

                pull.mark_done()
                await push.wait_acked()
                page = await scrape(exp.address)
                assert page.value("shoal_reliable_puller_held", **on_a, channel="jobs") == 0
                assert page.value("shoal_reliable_pusher_in_flight", **on_b) == 0
                assert page.value("shoal_reliable_pusher_acked_total", **on_b) == 4
                nursery.cancel_scope.cancel()


async def test_counters_of_closed_resources_are_kept_so_they_never_go_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with anyio.fail_after(20):
        async with node_pair() as (a, b), open_prometheus_exporter(bind=LOOPBACK) as exp:
            opened_a, opened_b = Opened(a, monkeypatch), Opened(b, monkeypatch)
            exp.add_node(b)
            on_b = {"node": "b", "channel": "telemetry", "role": "subscriber"}
            async with opened_a.track("telemetry", Role.PUBLISHER,
                                      a.open_publisher("telemetry")) as pub:
                total = 0
                for n in (3, 4):
                    async with (
                        opened_b.track("telemetry", Role.SUBSCRIBER,
                                       b.open_subscriber("telemetry")) as sub1,
                        opened_b.track("telemetry", Role.SUBSCRIBER,
                                       b.open_subscriber("telemetry")) as sub2,
                    ):
                        await pub.wait_for_subscribers(2)
                        for i in range(n):
                            await pub.publish("t", i)
                        for s in (sub1, sub2):
                            for _ in range(n):
                                await s.receive()
                        total += 2 * n
                        # two subscribers on one channel: one series, their sum
                        page = await scrape(exp.address)
                        assert page.value("shoal_subscriber_received_total", **on_b) == total
                    await eventually(lambda: pub.statistics().subscribers == 0)
                    # both closed: their counts stay
                    page = await scrape(exp.address)
                    assert page.value("shoal_subscriber_received_total", **on_b) == total
            assert total == 14
            exp.remove(b)
            page = await scrape(exp.address)
            assert page.samples("shoal_subscriber_received_total") == []
            assert page.samples("shoal_node_peers") == []


async def test_a_node_lists_the_resources_opened_through_it() -> None:
    with anyio.fail_after(10):
        async with (
            open_test_node("solo") as node,
            open_prometheus_exporter(bind=LOOPBACK) as exp,
            node.open_pusher("jobs") as push,
            node.open_puller("jobs") as pull,
        ):
            exp.add_node(node)
            await push.send("x")
            await pull.receive()
            page = await scrape(exp.address)
            assert page.value("shoal_pusher_sent_total", node="solo", channel="jobs") == 1


async def test_a_resource_opened_without_a_node_is_exported_under_its_name() -> None:
    with anyio.fail_after(10):
        async with (
            shoal.open_puller(bind="tcp://127.0.0.1:*") as pull,
            open_prometheus_exporter(bind=LOOPBACK) as exp,
        ):
            async with shoal.open_pusher(connect=pull.endpoints) as push:
                exp.add(pull, name="jobs")
                exp.add(push, name="jobs")  # another role may share the name
                exp.add(push, name="jobs")  # the same again: nothing changes
                with pytest.raises(LocalProtocolError, match="already exported"):
                    exp.add(_Fixed(shoal.patterns.PullerStatistics(0, 0, {})), name="jobs")
                with pytest.raises(LocalProtocolError, match="statistics"):
                    exp.add(object(), name="x")  # type: ignore[arg-type]
                with pytest.raises(LocalProtocolError, match="name="):
                    exp.add(pull, name="")
                for i in range(6):
                    await push.send(i)
                for _ in range(6):
                    await pull.receive()
                page = await scrape(exp.address)
                plain = {"node": "", "node_id": "", "channel": "jobs"}
                assert page.value("shoal_puller_received_total", **plain, role="puller") == 6
                assert page.value("shoal_pusher_sent_total", **plain, role="pusher") == 6
            # closed but still added: its last counts stay on the page
            page = await scrape(exp.address)
            assert page.value("shoal_pusher_sent_total", channel="jobs") == 6
            exp.remove(push)
            page = await scrape(exp.address)
            assert page.samples("shoal_pusher_sent_total") == []
            assert page.value("shoal_puller_received_total", channel="jobs") == 6


class _Fixed:
    """A stand-in resource whose statistics() returns what it is given."""

    def __init__(self, stats: object) -> None:
        self.stats = stats

    def statistics(self) -> object:
        return self.stats


def _sample_statistics(cls: type[Any]) -> Any:
    """An instance of a statistics dataclass with every field set: numbers 7, mappings
    one key."""
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        if kind == "int":
            values[f.name] = 7
        elif kind.startswith("Mapping"):
            values[f.name] = {"k1": 3}
        else:
            raise AssertionError(f"{cls.__name__}.{f.name}: a {kind}, which the exporter "
                                 "leaves out; teach it (and this test) that type")
    return cls(**values)


STATISTICS = [shoal.NodeStatistics] + [
    getattr(shoal.patterns, n) for n in shoal.patterns.__all__ if n.endswith("Statistics")]


async def test_every_field_of_every_statistics_class_becomes_a_metric() -> None:
    assert len(STATISTICS) >= 11
    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK) as exp:
            for i, cls in enumerate(STATISTICS):
                exp.add(_Fixed(_sample_statistics(cls)), name=f"r{i}")
            page = await scrape(exp.address)
        seen_gauges = set()
        for cls in STATISTICS:
            kind = cls.__name__.removesuffix("Statistics")
            kind = "".join(f"_{c.lower()}" if c.isupper() else c for c in kind).lstrip("_")
            for f in dataclasses.fields(cls):
                family = f"shoal_{kind}_{f.name}"
                assert family in page.families, f"{cls.__name__}.{f.name} is not exported"
                gauge = f.name in GAUGE_FIELDS or f.name.rpartition("_by_")[0] in GAUGE_FIELDS
                assert page.type_of(family) == ("gauge" if gauge else "counter"), family
                seen_gauges |= {f.name} if gauge else set()
                suffix = "" if gauge else "_total"
                if str(f.type).startswith("Mapping"):
                    label = f.name.rpartition("_by_")[2] if "_by_" in f.name else "key"
                    assert page.value(family + suffix, **{label: "k1"}) == 3
                else:
                    assert page.value(family + suffix) == 7
        # the table of gauges names real fields (a renamed field would turn into a counter)
        assert seen_gauges == GAUGE_FIELDS
        # help texts are the fields' docstrings
        assert page.families["shoal_pusher_sent"].documentation == (
            "Messages handed to ZeroMQ. (PusherStatistics.sent)")


async def test_a_field_of_an_unknown_type_is_left_out_with_a_warning(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # the exporter warns once per field and process: this run's warning must be its first
    monkeypatch.setattr(_metrics, "_warned", set())

    @dataclasses.dataclass(frozen=True)
    class OddStatistics:
        sent: int
        state: str
        healthy: bool
        drops_by_channel: Mapping[str, int]

    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK) as exp:
            with caplog.at_level(logging.WARNING, logger="shoal"):
                exp.add(_Fixed(OddStatistics(4, "up", True, {"c": 2})), name="odd")
            page = await scrape(exp.address)
    assert page.value("shoal_odd_sent_total", channel="odd", role="odd") == 4
    assert page.value("shoal_odd_healthy", channel="odd") == 1
    assert page.type_of("shoal_odd_healthy") == "gauge"
    # a key label that would clash with a label every series has is renamed
    assert page.value("shoal_odd_drops_by_channel_total", channel="odd", channel_key="c") == 2
    assert not any("state" in name for name in page.families)
    assert "OddStatistics.state" in caplog.text


async def test_a_failing_statistics_call_does_not_blank_the_page(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __init__(self) -> None:
            self.fail = False

        def statistics(self) -> shoal.patterns.PusherStatistics:
            if self.fail:
                raise RuntimeError("boom")
            return shoal.patterns.PusherStatistics(sent=1)

    broken = Broken()
    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK) as exp:
            exp.add(broken, name="bad")
            exp.add(_Fixed(shoal.patterns.PusherStatistics(sent=9)), name="good")
            broken.fail = True
            page = await scrape(exp.address)
    assert page.value("shoal_pusher_sent_total", channel="good") == 9
    assert page.samples("shoal_pusher_sent_total", channel="bad") == []
    assert page.value("shoal_exporter_collect_errors_total") == 1
    assert "boom" in caplog.text


async def test_the_exporter_keeps_its_own_registry() -> None:
    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK) as exp:
            exp.add(_Fixed(shoal.patterns.PusherStatistics(sent=2)), name="p")
            assert exp.registry is not prometheus_client.REGISTRY
            assert b"shoal_pusher_sent_total" in prometheus_client.generate_latest(exp.registry)
            assert b"shoal_" not in prometheus_client.generate_latest()


# -- the HTTP server -------------------------------------------------------------------------


async def test_only_get_and_head_of_metrics_are_served() -> None:
    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK) as exp:
            addr = exp.address
            assert addr[0] == "127.0.0.1"
            assert addr[1] > 0
            status, _, _ = await http(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == 404
            status, _, _ = await http(addr, b"GET /metricsx HTTP/1.1\r\n\r\n")
            assert status == 404
            status, headers, _ = await http(
                addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            assert status == 405
            assert headers["allow"] == "GET, HEAD"
            status, _, _ = await http(addr, b"DELETE /metrics HTTP/1.0\r\n\r\n")
            assert status == 405
            status, headers, body = await http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert status == 200
            assert body == b""
            assert int(headers["content-length"]) > 0
            status, _, body = await http(addr, b"GET /metrics?x=1 HTTP/1.0\n\n")
            assert status == 200
            assert b"shoal_exporter_requests_total" in body
            async with open_prometheus_exporter(bind=("localhost", 0)) as by_name:
                assert (await scrape(by_name.address)).families
            for garbage in (b"hello\r\n\r\n", b"GET /metrics HTTP/2.0\r\n\r\n",
                            b"GET  /metrics HTTP/1.1\r\n\r\n", b"\xff\xfe\r\n\r\n"):
                status, _, _ = await http(addr, garbage)
                assert status == 400, garbage
            page = await scrape(addr)
            assert page.value("shoal_exporter_requests_total", outcome="not_found") == 2
            assert page.value("shoal_exporter_requests_total", outcome="bad_request") == 4
            assert page.value("shoal_exporter_requests_total",
                              outcome="method_not_allowed") == 2
            assert page.value("shoal_exporter_requests_total", outcome="ok") == 2


async def test_an_oversized_request_is_refused_and_the_next_scrape_works() -> None:
    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK) as exp:
            big = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_REQUEST_BYTES
            status, _, _ = await http(exp.address, big + b"\r\n\r\n")
            assert status == 431
            # a client that keeps sending past the limit is still answered, then closed
            stream = await anyio.connect_tcp(*exp.address)
            async with stream:
                await stream.send(big)
                data = await read_to_end(stream)
                assert data.startswith(b"HTTP/1.1 431 ")
            page = await scrape(exp.address)
            assert page.value("shoal_exporter_requests_total", outcome="too_large") == 2


async def test_a_slow_client_is_cut_off_without_holding_up_scrapes() -> None:
    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK, connection_timeout=0.5) as exp:
            slow = await anyio.connect_tcp(*exp.address)
            async with slow:
                await slow.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and stalls
                page = await scrape(exp.address)  # served meanwhile
                assert page.samples("shoal_exporter_requests_total", outcome="timeout") == []
                # the stalled connection is closed unanswered after connection_timeout
                assert await read_to_end(slow) == b""
            page = await scrape(exp.address)
            assert page.value("shoal_exporter_requests_total", outcome="timeout") == 1
            assert page.value("shoal_exporter_requests_total", outcome="ok") == 1


async def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK, max_connections=1,
                                            connection_timeout=0.5) as exp:
            slow = await anyio.connect_tcp(*exp.address)
            async with slow:
                await slow.send(b"GET /met")
                await eventually(lambda: exp._server.active == 1)
                extra = await anyio.connect_tcp(*exp.address)
                async with extra:
                    await extra.send(b"GET /metrics HTTP/1.1\r\n\r\n")
                    try:
                        assert await read_to_end(extra) == b""
                    except anyio.BrokenResourceError:
                        pass  # closed with our request unread: a reset, also a refusal
                assert await read_to_end(slow) == b""
            page = await scrape(exp.address)  # the slot is free again
            assert page.value("shoal_exporter_requests_total", outcome="busy") == 1


async def test_closing_the_exporter_closes_the_listener_and_its_connections() -> None:
    with anyio.fail_after(10):
        async with open_prometheus_exporter(bind=LOOPBACK) as exp:
            address = exp.address
            await scrape(address)
            idle = await anyio.connect_tcp(*address)
        async with idle:
            assert await read_to_end(idle) == b""
        with pytest.raises(OSError, match="connect"):
            await anyio.connect_tcp(*address)


# -- opening ---------------------------------------------------------------------------------


async def test_without_prometheus_client_opening_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now fails
    with anyio.fail_after(5), pytest.raises(LocalProtocolError,
                                           match=r"pip install 'shoal\[prometheus\]'"):
        async with open_prometheus_exporter(bind=LOOPBACK):
            pass


@pytest.mark.parametrize("bind", [None, "127.0.0.1:9464", ("", 0), ("127.0.0.1",),
                                  ("127.0.0.1", 70000), ("127.0.0.1", -1), ("127.0.0.1", "80"),
                                  ("127.0.0.1", True), (b"127.0.0.1", 0)])
async def test_bind_is_a_host_and_a_port(bind: Any) -> None:
    with anyio.fail_after(5), pytest.raises(LocalProtocolError, match="bind="):
        async with open_prometheus_exporter(bind=bind):
            pass


async def test_bad_limits_and_a_taken_port_are_refused() -> None:
    with anyio.fail_after(5):
        for kwargs in ({"connection_timeout": 0}, {"connection_timeout": float("nan")},
                       {"max_connections": 0}):
            with pytest.raises(LocalProtocolError):
                async with open_prometheus_exporter(bind=LOOPBACK, **kwargs):
                    pass
        async with open_prometheus_exporter(bind=LOOPBACK) as exp:
            with pytest.raises(TransportError, match="cannot listen"):
                async with open_prometheus_exporter(bind=exp.address):
                    pass


async def test_two_nodes_with_one_id_are_refused() -> None:
    with anyio.fail_after(10):
        async with (
            open_test_node("twin") as first,
            shoal.open_node("twin", discovery=Static([]), interfaces=["127.0.0.1"],
                            node_id=first.identity.sender) as second,
            open_prometheus_exporter(bind=LOOPBACK) as exp,
        ):
            exp.add_node(first)
            with pytest.raises(LocalProtocolError, match="node_id="):
                exp.add_node(second)
