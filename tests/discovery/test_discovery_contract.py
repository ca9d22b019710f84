"""The discovery contract (``shoal.discovery.Source``): a source reports ``Found`` and
``Lost`` records and the node does the rest, the same for every source: which
endpoint to use, whom to introduce itself to, again when a node is not reached, how
long a link stays. A source written here, against the public names only, stands for
a third-party one (a registry lookup)."""

from __future__ import annotations

import ipaddress

import anyio
import pytest
from anyio.abc import TaskStatus

import shoal
import shoal.node._discovered
import shoal.node._links
from shoal.discovery import Advertisement, Found, Lost, Reports
from shoal.errors import LocalProtocolError
from shoal.node._discovered import pick_endpoint
from support.endpoints import endpoint, free_port
from support.nodes import LOOPBACK
from support.waiting import eventually

pytestmark = pytest.mark.anyio

SOME_KEY = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"


class Registry:
    """A source fed by the test: ``found(...)`` / ``lost(...)`` report at once."""

    interfaces = None

    def __init__(self) -> None:
        self.reports: Reports | None = None
        self.own: Advertisement | None = None

    async def discover(self, own: Advertisement, reports: Reports, *,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.own, self.reports = own, reports
        task_status.started()
        await anyio.sleep_forever()

    def report(self, record: Found | Lost) -> None:
        assert self.reports is not None
        self.reports.report(record)


async def test_a_source_of_its_own_finds_peers_through_reports() -> None:
    registry = Registry()
    with anyio.fail_after(10):
        async with (shoal.open_node("a", discovery=registry, interfaces=LOOPBACK) as a,
                    shoal.open_node("b", interfaces=LOOPBACK) as b):
            assert registry.own is not None
            assert (registry.own.node_id, registry.own.control_port) == (
                a.identity.sender, a.control_port)
            registry.report(Found("b", (b.control_endpoint,), node_id=b.identity.sender))
            [peer] = await a.wait_for_peers(1)
            assert peer.id == b.id
            await b.wait_for_peers(1)  # b answered a's introduction
            assert registry.reports is not None
            assert registry.reports.reached() == {"b"}
            assert registry.reports.unreached() == frozenset()


async def test_a_source_that_reports_this_node_itself_is_ignored() -> None:
    registry = Registry()
    with anyio.fail_after(10):
        async with shoal.open_node("a", discovery=registry, interfaces=LOOPBACK) as a:
            registry.report(Found("me", (a.control_endpoint,), node_id=a.identity.sender))
            assert not a.has_link(a.control_endpoint)
            # positive control: the same record under another id is introduced to (a
            # higher one: a lower one would be left to dial first, see _discovered)
            registry.report(Found("me", (a.control_endpoint,), node_id=b"\xff" * 16))
            assert a.has_link(a.control_endpoint)


async def test_a_node_not_reached_is_introduced_to_again_whatever_the_source(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a partition long enough for the link to go: the node introduces itself
    again to every instance still reported and not a live peer."""
    monkeypatch.setattr(shoal.node._links, "LINK_GRACE", 0.3)
    monkeypatch.setattr(shoal.node._discovered, "REINTRODUCE", 0.1)
    registry = Registry()
    b_port = free_port()
    with anyio.fail_after(15):
        async with shoal.open_node("a", discovery=registry, interfaces=LOOPBACK) as a:
            registry.report(Found("b", (endpoint(b_port),)))
            assert a.has_link(endpoint(b_port))
            assert registry.reports is not None
            await eventually(lambda: not a.has_link(endpoint(b_port)),
                             what="the link to nobody closes after its grace")
            assert registry.reports.unreached() == {"b"}
            async with shoal.open_node("b", interfaces=LOOPBACK, port=b_port) as b:
                [peer] = await a.wait_for_peers(1)  # only a's re-introduction can do this
                assert peer.id == b.id


async def test_a_steady_record_keeps_its_link_until_it_is_lost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shoal.node._links, "LINK_GRACE", 0.2)
    registry = Registry()
    steady, sighted = endpoint(free_port()), endpoint(free_port())
    with anyio.fail_after(10):
        async with shoal.open_node("a", discovery=registry, interfaces=LOOPBACK) as a:
            registry.report(Found("s", (steady,), steady=True))
            registry.report(Found("t", (sighted,)))
            # the sighting's link goes after its grace; the steady one stays meanwhile
            await eventually(lambda: not a.has_link(sighted))
            assert a.has_link(steady)
            registry.report(Lost("s"))
            await eventually(lambda: not a.has_link(steady), what="a lost record's link goes")


async def test_plaintext_and_secured_records_never_mix() -> None:
    registry = Registry()
    with anyio.fail_after(10):
        async with shoal.open_node("a", discovery=registry, interfaces=LOOPBACK) as a:
            keyed = endpoint(free_port())
            registry.report(Found("k", (keyed,), public_key=SOME_KEY))
            assert not a.has_link(keyed)
            assert registry.reports is not None
            assert registry.reports.unreached() == frozenset()  # not kept: it never qualifies
            with pytest.raises(LocalProtocolError):
                a.introduce(keyed, server_key=SOME_KEY)


def test_the_node_picks_an_endpoint_on_a_network_it_shares() -> None:
    lo = [ipaddress.ip_network("127.0.0.0/8")]
    lan = [ipaddress.ip_network("10.1.0.0/16")]
    both = ("tcp://10.1.2.3:7700", "tcp://127.0.0.1:7700")
    assert pick_endpoint(both, lo) == "tcp://127.0.0.1:7700"
    assert pick_endpoint(both, lan) == "tcp://10.1.2.3:7700"
    assert pick_endpoint(both, []) == "tcp://10.1.2.3:7700"  # none shared: the first
    assert pick_endpoint(("tcp://host.example:7700",), lo) == "tcp://host.example:7700"
    assert pick_endpoint((), lo) is None


@pytest.mark.parametrize("record", [
    Found("x", ("127.0.0.1:7700",)),  # no scheme
    Found("x", ("tcp://127.0.0.1:7700",), public_key=b"not a key"),
    Found("x", ("tcp://127.0.0.1:7700",), node_id=b"short"),
    Found("x", "tcp://127.0.0.1:7700"),  # type: ignore[arg-type]  # a str, not a tuple
], ids=["endpoint", "key", "node-id", "endpoints-as-str"])
async def test_a_malformed_record_is_refused_to_the_source_that_reports_it(
        record: Found) -> None:
    registry = Registry()
    with anyio.fail_after(10):
        async with shoal.open_node("a", discovery=registry, interfaces=LOOPBACK) as a:
            with pytest.raises(LocalProtocolError):
                registry.report(record)
            assert a.statistics().links == 0
            registry.report(Found("x", (endpoint(free_port()),)))  # a well-formed one
            assert a.statistics().links == 1


async def test_a_node_with_a_lower_id_is_left_to_dial_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Of a pair, the lower node keeps the one control connection: a record of a lower
    node is not introduced to at once (it finds us too and dials), but on the next
    round if it has not."""
    monkeypatch.setattr(shoal.node._discovered, "REINTRODUCE", 0.3)
    registry = Registry()
    low, high = free_port(), free_port()
    with anyio.fail_after(10):
        async with shoal.open_node("a", discovery=registry, interfaces=LOOPBACK) as a:
            registry.report(Found("low", (endpoint(low),), node_id=b"\0" * 16))
            registry.report(Found("high", (endpoint(high),), node_id=b"\xff" * 16))
            assert a.has_link(endpoint(high))
            assert not a.has_link(endpoint(low))
            await eventually(lambda: a.has_link(endpoint(low)),
                             what="introduced on the next round")
