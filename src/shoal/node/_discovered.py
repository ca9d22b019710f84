"""What discovery sources report, and what the node does with it.

Each source is started with a ``SourceReports`` of its own (the contract is in
``shoal.discovery._contract``). The node decides here, the same way for every
source:

* which endpoint of a ``Found`` to use: one whose address is on a network this node
  shares (``shoal._core.choose_address``), else the first;
* whether to introduce itself at all: never to itself; and the guard's verdict
  (plaintext and secured nodes ignore each other; a secured node asks its trust
  policy about the advertised key and node id), logged once per instance;
* when to introduce itself: at once, except to a node with a lower id (it keeps the
  pair's one control connection, and dials us when it finds us) -- that one is left
  to the next round;
* when to introduce itself again: every ``REINTRODUCE`` seconds to every instance
  still reported that is not a live peer and has no link (after a partition, a
  restart), asking the guard again each time;
* how long a link stays: a steady record's link as long as the record.

Records are bounded (``MAX_RECORDS`` per source): a flood of advertisements is
introduced to once, not remembered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection

import anyio

from shoal._core import choose_address
from shoal._zmq._socket import check_endpoint
from shoal.discovery._contract import Found, Lost
from shoal.discovery._interfaces import Network
from shoal.errors import LocalProtocolError
from shoal.node._control import Control
from shoal.node._guard import Guard, Refusal
from shoal.node._watch import WarnOnce
from shoal.security._keys import check_key

__all__ = ["MAX_RECORDS", "REINTRODUCE", "Discovered", "SourceReports", "pick_endpoint"]

REINTRODUCE = 2.0
"""Seconds between introductions to a reported node that is not a live peer."""
MAX_RECORDS = 4096
"""Instances remembered per source, at most (the rest: introduced to once, when found)."""


def pick_endpoint(endpoints: Collection[str], networks: list[Network]) -> str | None:
    """Of ``tcp://HOST:PORT`` endpoints, one whose address is on a network of
    ``networks`` if any, else the first (None if there is none)."""
    hosts: dict[str, str] = {}
    for ep in endpoints:
        host = ep.removeprefix("tcp://").rpartition(":")[0].strip("[]")
        if host:
            hosts.setdefault(host, ep)
    if len(hosts) <= 1 or not all(map(_is_address, hosts)):
        return next(iter(hosts.values()), None)  # one, or host names: as listed
    return hosts[choose_address(list(hosts), networks)]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check(record: Found) -> None:
    """Raise ``LocalProtocolError`` (to the source that reports it) for a malformed
    record: nothing malformed reaches a socket later, in the node's own tasks."""
    if not isinstance(record, Found):
        raise LocalProtocolError(f"a source reports Found(...) or Lost(...), not {record!r}")
    if not isinstance(record.instance, str) or isinstance(record.endpoints, str):
        raise LocalProtocolError(f"Found(instance: str, endpoints: tuple of str), not {record!r}")
    for ep in record.endpoints:
        check_endpoint(ep)
    if record.public_key is not None:
        check_key(record.public_key, f"public key of {record.instance!r}")
    if record.node_id is not None and (not isinstance(record.node_id, bytes)
                                       or len(record.node_id) != 16):
        raise LocalProtocolError(f"the node id of {record.instance!r} is 16 bytes, not "
                                 f"{record.node_id!r}")


class SourceReports:
    """One source's reports (its ``Reports``): its records, by instance."""

    def __init__(self, owner: Discovered, label: str) -> None:
        self._owner = owner
        self.label = label
        self.records: dict[str, tuple[Found, str]] = {}  # instance -> (record, endpoint)

    def report(self, record: Found | Lost) -> None:
        if isinstance(record, Lost):
            gone = self.records.pop(record.instance, None)
            if gone is not None and gone[0].steady:
                self._owner.control.links.release(gone[1])
        else:
            self._owner.found(self, record)

    def reached(self) -> frozenset[str]:
        live = self._owner.control.live
        return frozenset(i for i, (_, ep) in self.records.items() if ep in live)

    def unreached(self) -> frozenset[str]:
        control = self._owner.control
        return frozenset(i for i, (_, ep) in self.records.items()
                         if ep not in control.live and ep not in control.links)


def instance_kept(source: SourceReports, record: Found) -> bool:
    """Whether ``record`` is remembered (so that ``Discovered.run`` comes back to it)."""
    return record.instance in source.records


class Discovered:
    def __init__(self, control: Control, guard: Guard, warn: WarnOnce,
                 networks: Callable[[], list[Network]]) -> None:
        self.control = control
        self._guard = guard
        self._warn = warn
        self._networks = networks
        self._sources: list[SourceReports] = []

    def reports_for(self, source: object) -> SourceReports:
        reports = SourceReports(self, type(source).__name__)
        self._sources.append(reports)
        return reports

    def found(self, source: SourceReports, record: Found) -> None:
        _check(record)
        if record.node_id == self.control.identity.sender:
            return  # ourselves
        endpoint = pick_endpoint(record.endpoints, self._networks())
        if endpoint is None:
            return
        refusal = self._guard.refusal(record)
        previous = source.records.pop(record.instance, None)
        if previous is not None and previous[0].steady and previous[1] != endpoint:
            self.control.links.release(previous[1])
        # a verdict that may change is asked again: the record is kept
        if (refusal is None or not refusal.final) and (
                previous is not None or len(source.records) < MAX_RECORDS):
            source.records[record.instance] = (record, endpoint)
        if (previous is None and record.node_id is not None and refusal is None
                and record.node_id < self.control.identity.sender
                and instance_kept(source, record)):
            # a lower node keeps the one control connection of a pair and finds us the
            # same way: let it dial; if it has not within REINTRODUCE, we introduce
            # ourselves then (``run``)
            return
        self._introduce(source, record, endpoint, refusal)

    def _introduce(self, source: SourceReports, record: Found, endpoint: str,
                   refusal: Refusal | None) -> None:
        if refusal is not None:
            node = "" if record.node_id is None else f" (node {record.node_id.hex()})"
            self._warn("ignored", f"{source.label}\0{record.instance}",
                       "%s: ignoring %s%s: %s", source.label, record.instance, node,
                       refusal.reason, level=refusal.level)
            return
        self.control.introduce(endpoint, persistent=record.steady,
                               server_key=record.public_key)

    async def run(self) -> None:
        """Introduce the node again, every ``REINTRODUCE`` seconds, to every instance
        reported that is not a live peer and has no link."""
        while True:
            await anyio.sleep(REINTRODUCE)
            for source in self._sources:
                for instance in source.unreached():
                    record, endpoint = source.records[instance]
                    self._introduce(source, record, endpoint, self._guard.refusal(record))
