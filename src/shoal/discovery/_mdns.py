"""mDNS/DNS-SD discovery over python-zeroconf, bridged into the event loop (trio or asyncio).

Each node registers one DNS-SD instance of ``SERVICE_TYPE``: SRV and A records point
at its control socket, TXT carries ``v`` (the protocol version), ``id`` (node id),
``name`` and ``epoch``. Ordinary tools list it (``avahi-browse -rt _shoal._tcp``).
The channel catalogue does not travel in DNS: the node introduces itself over ZeroMQ
to every instance reported, and the answer carries the catalogue.

What it reports (``shoal.discovery._contract``): every instance of the service type
that resolves, speaks this protocol version and is not this node, as a ``Found`` with
one endpoint per IPv4 address, the ``pk`` and ``id`` of its TXT record; ``Lost`` when
the instance is withdrawn. A secured node advertises ``pk`` (its CURVE public key,
Z85); whether a key is trusted, and what to do with a plaintext instance, is the
node's decision. An advertisement with a malformed ``pk`` or ``id`` is not reported
(logged once).

Finding peers again after a partition: zeroconf reports a cached service once, so
every ``_REINTRODUCE`` seconds the instances the node reports as unreached are
resolved again from the cache (a peer restarted meanwhile has a new port) and
reported afresh, and the browse question is asked again (see ``_heal``).

Keeping the start-up burst small (RFC 6762 §5.2, §5.4, §7.1, §7.3): the first browse
question (zeroconf's browser, 20-120 ms after the start) and the node's first
``_QU_ASKS`` questions of its own ask for unicast replies (the QU bit), so answers
to a starting node go to it alone, not to every host; later questions are QM. Every
question of the node's own lists the node's own instance as a known answer (zeroconf
hears its own queries and would answer them by multicast); a QM question is not sent
when another host asked it in the last second with no known answer this node lacks
(the answers to that one reach every host); and each is sent after a random delay
that grows with the instances heard (``_ask_delay``), so nodes started together do
not ask in lockstep.

Bridging: python-zeroconf runs its own asyncio loop in a thread, apart from the node's
event loop (trio, or another asyncio loop). Its blocking calls (construct, close) run
through ``anyio.to_thread``; registration and resolutions run as tasks on zeroconf's
loop that the node awaits and closing cancels (a node closed while its name is still
being probed does not wait for the probes to end, and no task is left pending on a
stopped loop). The way back is ``anyio.from_thread.run_sync`` with the node's loop
token, which waits until the node's loop has run the call; so it is taken from threads
that may wait, never from zeroconf's loop: the browser callback runs on the browser's
own thread (zeroconf runs handlers there so that they may block), and a finished task
is reported from a worker thread of zeroconf's loop.

Closing sends one goodbye (the records with a TTL of 0), as soon as the node closes:
zeroconf's own unregister repeats it twice more, 125 ms apart, and its close waits
for that and for any registration in progress (up to a second). Peers learn of the
departure over ZeroMQ in any case (the node's goodbye, or the heartbeat timeout);
the mDNS goodbye only makes caches forget the instance sooner.

Network safety: ``interfaces`` pins zeroconf to the given addresses; the default
(None) is every interface, which tests and demos must never use outside a network
namespace of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import random
import socket
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream
from zeroconf import (
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    current_time_millis,
)
from zeroconf import Zeroconf as _Zeroconf
from zeroconf._cache import DNSCache  # these four are not re-exported by the package
from zeroconf._dns import DNSPointer, DNSQuestion, DNSRecord
from zeroconf._history import QuestionHistory
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceInfo

from shoal._core import VERSION, choose_address
from shoal.discovery._contract import Advertisement, Found, Lost, Reports
from shoal.discovery._interfaces import (
    Network,
    local_networks,
    multicast_addresses,
    resolve_interfaces,
)
from shoal.errors import LocalProtocolError
from shoal.security._keys import z85_key_or_none

__all__ = ["MDNS", "SERVICE_TYPE"]

log = logging.getLogger("shoal")
T = TypeVar("T")

SERVICE_TYPE = "_shoal._tcp.local."
_RESOLVE_MS = 3000
_QUEUE = 4096
_MAX_KNOWN = 4096
"""Instances remembered (``found``), at most (the rest are reported, not remembered)."""
_REINTRODUCE = 2.0
_FAST_FOR = 60.0
"""Seconds after the start, and after a peer was lost, during which the browse query
is repeated every ``_REINTRODUCE`` seconds (then every ``_SLOW_QUERY`` while this node
knows no peer at all, else not: zeroconf's own schedule is enough)."""
_SLOW_QUERY = 30.0
"""Seconds between browse questions while none of the instances found is a live peer."""
_QU_ASKS = 2
"""The node's first browse questions of its own that ask for unicast replies (QU):
the later ones are QM, which hosts that asked the same in the last second need not
repeat (a QU question cannot spare anybody's)."""
_DELAY_PER_PEER = 0.025
_MAX_DELAY = 1.0
"""A browse question of the node's own waits a random time in [0, d], d =
``_DELAY_PER_PEER`` s per instance heard, at most ``_MAX_DELAY`` (half of
``_REINTRODUCE``): the more nodes, the more of them may be asking at once."""


def _utf8_prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``limit`` bytes."""
    return text.encode()[:limit].decode(errors="ignore")


class MDNS:
    """Discovery over mDNS/DNS-SD on the LAN.

    ``interfaces``: IPv4 addresses or interface names to announce and listen on
    (``["127.0.0.1"]`` or ``["lo"]`` keeps everything on this machine). None means
    every multicast-capable interface: what nodes on a LAN want. ``service_type``
    separates groups of nodes that must not see each other.
    """

    def __init__(
        self, *, interfaces: Sequence[str] | None = None, service_type: str = SERVICE_TYPE,
    ) -> None:
        if isinstance(interfaces, str) or (interfaces is not None and not all(
                isinstance(i, str) for i in interfaces)):
            raise LocalProtocolError("interfaces= takes a list of IPv4 addresses or "
                                     "interface names, e.g. ['127.0.0.1'] or ['lo']")
        if not service_type.endswith("._tcp.local.") or not service_type.startswith("_"):
            raise LocalProtocolError(
                f"service_type looks like '_shoal._tcp.local.', not {service_type!r}")
        self.interfaces = None if interfaces is None else tuple(resolve_interfaces(interfaces))
        self.service_type = service_type
        self._warned: set[str] = set()
        self._endpoints: dict[str, str] = {}  # instance name -> control endpoint
        self._own: Advertisement | None = None  # while discovering
        self._reports: Reports | None = None
        self._networks: list[Network] = []  # the node's own (for ``found``)

    def __repr__(self) -> str:
        return f"MDNS(interfaces={self.interfaces!r})"

    @property
    def found(self) -> dict[str, str]:
        """The shoal instances heard over mDNS and not withdrawn since: instance name
        -> control endpoint (of its addresses, one on a network this node shares, as
        the node picks it; a snapshot, bounded like the table behind it)."""
        return dict(self._endpoints)

    def _info(self, own: Advertisement) -> ServiceInfo:
        # DNS limits bytes, not characters: a label is at most 63 bytes, a TXT entry 255.
        label = f"{_utf8_prefix(own.name, 40)}-{own.id[:8]}"
        properties = {"v": str(VERSION), "id": own.id,
                      "name": _utf8_prefix(own.name, 200), "epoch": str(own.epoch)}
        if own.public_key is not None:
            properties["pk"] = own.public_key.decode("ascii")
        return ServiceInfo(
            self.service_type, f"{label}.{self.service_type}",
            port=own.control_port,
            addresses=[socket.inet_aton(a) for a in own.addresses],
            server=f"shoal-{own.id[:16]}.local.",
            properties=properties,
        )

    def _attach(self, own: Advertisement, reports: Reports) -> None:
        self._own, self._reports = own, reports
        self._networks = local_networks(own.addresses)

    async def discover(self, own: Advertisement, reports: Reports, *,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Announce ``own`` and report the instances heard, until cancelled."""
        self._attach(own, reports)
        # Default: the multicast-capable interfaces the node advertises, not zeroconf's
        # "All" (which includes loopback and interfaces that cannot do multicast).
        choice: Any = (list(self.interfaces) if self.interfaces is not None
                       else multicast_addresses() or list(own.addresses))
        zc = await anyio.to_thread.run_sync(
            lambda: _Zeroconf(interfaces=choice, ip_version=IPVersion.V4Only))
        info = self._info(own)
        send, receive = anyio.create_memory_object_stream[tuple[str, bool]](_QUEUE)
        token = anyio.lowlevel.current_token()

        def on_change(zeroconf: Any, service_type: str, name: str,
                      state_change: ServiceStateChange) -> None:
            # the browser's thread (not zeroconf's loop): hand the name over
            removed = state_change is ServiceStateChange.Removed
            with contextlib.suppress(anyio.RunFinishedError):
                anyio.from_thread.run_sync(_offer, send, (name, removed), token=token)

        browser = None
        bridge = _Bridge(zc, info)
        try:
            async with send, receive, anyio.create_task_group() as nursery:
                # Registration probes the name for ~1.2 s: do it beside browsing.
                nursery.start_soon(bridge.register)
                # question_type None: the first question is QU, the later ones QM (RFC
                # 6762 §5.4); QU would make every one QU. Pinned by a test.
                browser = ServiceBrowser(zc, self.service_type, handlers=[on_change],
                                         question_type=None)
                nursery.start_soon(self._heal, bridge, reports)
                task_status.started()
                async for name, removed in receive:
                    if removed:
                        # Departures travel over ZeroMQ (goodbye, heartbeat timeout);
                        # the node only stops introducing itself to the instance.
                        self._endpoints.pop(name, None)
                        reports.report(Lost(name))
                    elif name != info.name:
                        nursery.start_soon(self._resolve, bridge, name)
        finally:
            with anyio.move_on_after(3, shield=True):
                if browser is not None:
                    await anyio.to_thread.run_sync(browser.cancel, abandon_on_cancel=True)
                await anyio.to_thread.run_sync(bridge.close, abandon_on_cancel=True)

    async def _resolve(self, bridge: _Bridge, name: str) -> None:
        info = await bridge.resolve(self.service_type, name)
        if info is None or not info.port:
            log.debug("mDNS: %s did not resolve", name)
            return
        props = {k: v for k, v in info.properties.items() if isinstance(k, bytes)}
        self._found(name, props, info.parsed_addresses(IPVersion.V4Only), info.port)

    def _warn_once(self, name: str, level: int, message: str, *args: object) -> None:
        if name not in self._warned and len(self._warned) < 1024:
            self._warned.add(name)
            log.log(level, message, *args)

    def _found(self, name: str, props: dict[bytes, bytes | None],
               addresses: Sequence[str], port: int) -> None:
        """A resolved instance: report it, if it is a shoal node of this version."""
        assert self._own is not None
        assert self._reports is not None
        version = props.get(b"v")
        if version != str(VERSION).encode():
            self._warn_once(name, logging.WARNING, "mDNS: ignoring %s: it speaks shoal "
                            "protocol %r, this node %r", name, version, VERSION)
            return
        if props.get(b"id") == self._own.id.encode():
            return  # ourselves (another interface's announcement)
        if not addresses:
            return
        raw_key = props.get(b"pk")
        key: bytes | None = None
        node_id = _node_id(props.get(b"id"))
        if raw_key is not None:
            key = z85_key_or_none(raw_key)
            if key is None or node_id is None:
                self._warn_once(name, logging.WARNING, "mDNS: ignoring %s: malformed "
                                "public key or node id in its advertisement", name)
                return
        if name in self._endpoints or len(self._endpoints) < _MAX_KNOWN:
            address = choose_address(list(addresses), self._networks)
            self._endpoints[name] = f"tcp://{address}:{port}"
        self._reports.report(Found(name, tuple(f"tcp://{a}:{port}" for a in addresses),
                                   public_key=key, node_id=node_id))

    async def _heal(self, bridge: _Bridge, reports: Reports) -> None:
        """Find peers again after a partition, whenever it began.

        Every ``_REINTRODUCE`` seconds: resolve afresh from the DNS-SD cache every
        instance the node reports as unreached, and report it again (zeroconf reports
        a cached service once; a peer restarted meanwhile has a new port). And ask the
        browse question again, naming the reached instances as known answers so that
        only the others reply: zeroconf asks at about 0, 1, 5 and 14 s after start,
        then only near the records' expiry (~an hour), so a node started while cut off
        would not hear of its peers for that long. Asked every ``_REINTRODUCE``
        seconds during ``_FAST_FOR`` seconds after the start, after a reached instance
        was lost, and while an instance is unreached; every ``_SLOW_QUERY`` seconds
        while none is reached; otherwise not. Each question waits ``_ask_delay`` first,
        and the first ``_QU_ASKS`` are QU (see the module docstring)."""
        started = last_loss = anyio.current_time()
        last_query = -math.inf
        previous: frozenset[str] = frozenset()
        asked = 0
        while True:
            await anyio.sleep(_REINTRODUCE)
            now = anyio.current_time()
            reached = reports.reached()
            if previous - reached:
                last_loss = now
            previous = reached
            missing = reports.unreached()
            fast = now - started < _FAST_FOR or now - last_loss < _FAST_FOR or missing
            if fast or (not reached and now - last_query >= _SLOW_QUERY):
                last_query = now
                await anyio.sleep(_ask_delay(len(self._endpoints), random.random()))
                bridge.ask(self.service_type, reports.reached(), unicast=asked < _QU_ASKS)
                asked += 1
            for name in missing:
                await self._resolve(bridge, name)


def _ask_delay(peers: int, draw: float) -> float:
    """How long a browse question of the node's own waits, for a node that has heard
    ``peers`` instances and a uniform ``draw`` in [0, 1): in [0, ``_MAX_DELAY``]."""
    return draw * min(_MAX_DELAY, _DELAY_PER_PEER * max(peers, 0))


def _browse_query(cache: DNSCache, history: QuestionHistory, service_type: str,
                  known: frozenset[str], own: DNSPointer, *, unicast: bool,
                  now: float) -> DNSOutgoing | None:
    """The browse question for ``service_type``, or None when it need not be asked.

    Known answers: ``own`` (the node's own instance: zeroconf answers the questions it
    hears, its own too) and the cached pointers to the instances in ``known`` (which
    then stay silent: RFC 6762 §7.1 known-answer suppression). ``unicast``: the QU bit.
    A QM question is None when another host asked it within the last second with no
    known answer that this one lacks (§7.3: the multicast answers to that question
    reach this node too); it is then noted in ``history`` as asked."""
    question = DNSQuestion(service_type, _TYPE_PTR, _CLASS_IN)
    question.unicast = unicast
    answers: set[DNSRecord] = {own}
    for record in cache.get_all_by_details(service_type, _TYPE_PTR, _CLASS_IN):
        if isinstance(record, DNSPointer) and record.alias in known and not record.is_stale(now):
            answers.add(record)
    if not unicast:
        if history.suppresses(question, now, answers):
            return None
        history.add_question_at_time(question, now, answers)
    out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
    out.add_question(question)
    for record in answers:
        out.add_answer_at_time(record, now)
    return out


_FLAGS_QUERY = 0x0000
_TYPE_PTR = 12
_CLASS_IN = 1


def _node_id(value: bytes | None) -> bytes | None:
    """The node id of a TXT ``id`` value (32 hex digits), or None if malformed."""
    try:
        raw = bytes.fromhex((value or b"").decode("ascii"))
    except ValueError:
        return None
    return raw if len(raw) == 16 else None


def _offer(send: MemoryObjectSendStream[tuple[str, bool]], item: tuple[str, bool]) -> None:
    try:
        send.send_nowait(item)
    except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
        log.debug("mDNS: dropped a browse event for %s (queue full or closed)", item[0])


class _Bridge:
    """The node's work on zeroconf's asyncio loop: the DNS-SD instance (probed and
    announced by ``register``) and the resolutions in progress, each a task there
    that the node's loop awaits. ``close`` cancels what is left, withdraws the
    instance and closes zeroconf, so no task is left pending on a stopped loop."""

    def __init__(self, zc: _Zeroconf, info: ServiceInfo) -> None:
        assert zc.loop is not None
        self.zc = zc
        self.loop = zc.loop
        self.info = info
        self.token = anyio.lowlevel.current_token()  # the node's loop
        self.thread = threading.get_ident()  # the node's loop's
        self.tasks: set[asyncio.Task[Any]] = set()  # on zeroconf's loop
        self.registered = False
        self.own = info.dns_pointer()

    def ask(self, service_type: str, known: frozenset[str], *, unicast: bool) -> None:
        """Ask the browse question (see ``_browse_query``) from zeroconf's loop, which
        owns the cache and the question history. Never blocks."""
        def on_loop() -> None:
            out = _browse_query(self.zc.cache, self.zc.question_history, service_type,
                                known, self.own, unicast=unicast, now=current_time_millis())
            if out is not None:
                self.zc.async_send(out)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to ask
            self.loop.call_soon_threadsafe(on_loop)

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            return await coro
        finally:
            self.tasks.discard(task)

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on zeroconf's loop; the node's loop waits for it (cancelling it
        if cancelled)."""
        future = asyncio.run_coroutine_threadsafe(self._tracked(coro), self.loop)
        done = anyio.Event()

        def finished(_: object) -> None:
            if threading.get_ident() == self.thread:
                done.set()  # done already, or cancelled from here
                return
            # zeroconf's loop: the way back waits for the node's loop, so a worker
            # thread of zeroconf's loop takes it
            with contextlib.suppress(RuntimeError):  # zeroconf's loop is closing
                self.loop.run_in_executor(None, self._wake, done)

        future.add_done_callback(finished)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            future.cancel()
            raise
        return future.result()

    def _wake(self, done: anyio.Event) -> None:
        # RunFinishedError (a RuntimeError): the node's loop has ended, nobody waits
        with contextlib.suppress(RuntimeError):
            anyio.from_thread.run_sync(done.set, token=self.token)

    async def _announce(self) -> None:
        # zeroconf's loop: probe the name, enter it, then announce it (twice more)
        announced = await self.zc.async_register_service(self.info)
        self.registered = True
        await announced

    async def register(self) -> None:
        try:
            await self._on_loop(self._announce())
        except concurrent.futures.CancelledError:
            return  # closing
        log.debug("mDNS: registered %s", self.info.name)

    async def resolve(self, service_type: str, name: str) -> AsyncServiceInfo | None:
        try:
            return await self._on_loop(
                self.zc.async_get_service_info(service_type, name, _RESOLVE_MS))
        except concurrent.futures.CancelledError:
            return None  # closing

    async def _withdraw(self) -> None:
        # zeroconf's loop: stop what is in progress, then one goodbye if announced
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.registered:
            self.zc.registry.async_remove(self.info)
            self.zc.async_send(self.zc.generate_service_broadcast(self.info, 0))

    def close(self) -> None:
        """Withdraw the instance and close zeroconf (blocking: run in a thread)."""
        try:
            asyncio.run_coroutine_threadsafe(self._withdraw(), self.loop).result(1.0)
        except Exception as exc:  # zeroconf's loop stopped or stuck: close anyway
            log.debug("mDNS: withdrawing %s: %r", self.info.name, exc)
        self.zc.close()
