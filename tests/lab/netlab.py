"""A tiny LAN of Linux network namespaces for tests that need real multicast between hosts.

Layout of a lab with prefix ``P`` and ``n`` hosts::

    netns P-sw:  bridge br0 (multicast_snooping 0) <- ports h0 .. h{n-1}
    netns P-hI:  lo up, eth0 (veth peer of hI in P-sw), 10.X.Y.(I+1)/24,
                 route 224.0.0.0/4 dev eth0

Everything (bridge, veths, addresses, routes) lives inside namespaces the lab creates;
nothing is added to the root namespace, so no packet ever reaches a real interface.
Deleting the namespaces removes the veths and the bridge with them.

Large labs: the kernel keeps one neighbour (ARP) table for every namespace, and starts
refusing dynamic entries at ``net.ipv4.neigh.default.gc_thresh3`` (1,024 by default):
a full mesh of ``n`` hosts needs ``n * (n - 1)`` of them, so beyond about 32 hosts
some hosts cannot reach others. With ``static_neighbours`` (on by default above
``STATIC_NEIGHBOURS_ABOVE`` hosts) every host gets a permanent entry for every other
host's ``eth0``, which the kernel neither expires nor counts against that limit.

Usage::

    reason = namespaces_available()   # None, or why a lab can't be built here
    with Lab.create(3) as lab:
        a, b, c = lab.hosts
        proc = a.popen([sys.executable, "-c", "..."], stdout=subprocess.PIPE)
        print(b.run(["ping", "-c1", "-W1", a.address], timeout=5).returncode)
        b.link_down(); b.link_up()    # flap b's bridge port (b keeps its routes)
        with b.packet_loss(0.10) as loss:   # drop 10% of b's packets, both directions
            ...
        print(loss.counters())        # packets seen / dropped while it was on

    lab3 = lab_fixture(3)             # in a test module: a pytest fixture yielding a Lab
    lab4 = lab_fixture(4, scope="module")   # one lab shared by a module's tests
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import pytest

__all__ = ["STATIC_NEIGHBOURS_ABOVE", "Host", "Lab", "LossCounters", "PacketLoss",
           "lab_fixture", "namespaces_available", "packet_loss_available"]

IP_TIMEOUT = 10.0
"""Upper bound for one ``ip`` invocation (they normally take a few milliseconds)."""

KILL_WAIT = 5.0
"""How long to wait for a SIGKILLed process to be reaped."""

STATIC_NEIGHBOURS_ABOVE = 32
"""``Lab.create`` gives hosts permanent neighbour entries by default above this many
hosts (see the module docstring)."""

DEFAULT_PREFIX = "shoallab"
"""Default namespace names are ``shoallab<pid>n<counter>-sw`` / ``...-h<i>``."""

_STALE = re.compile(rf"^{DEFAULT_PREFIX}(\d+)n\d+-")
_counter = itertools.count()
_open_labs: weakref.WeakSet[Lab] = weakref.WeakSet()


class LabError(RuntimeError):
    """Building the lab failed (the message carries the failing ``ip`` command and stderr)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)}: timed out after {IP_TIMEOUT}s") from exc
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _ip_batch(ns: str, commands: Sequence[str]) -> None:
    """Run ``ip`` commands (one per line, without the ``ip``) in namespace ``ns`` with a
    single ``ip -batch`` process."""
    cmd = ["ip", "-n", ns, "-batch", "-"]
    try:
        done = subprocess.run(cmd, input="\n".join(commands) + "\n", capture_output=True,
                              text=True, timeout=IP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)}: timed out after {IP_TIMEOUT}s") from exc
    if done.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")


def _netns_list() -> list[str]:
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    done = _ip("netns", "pids", ns, check=False)
    return [int(tok) for tok in done.stdout.split() if tok.isdigit()]


def _sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _destroy_namespace(ns: str) -> None:
    """SIGKILL everything still inside ``ns`` (daemons included), then delete it."""
    for pid in _netns_pids(ns):
        if pid != os.getpid():
            _sigkill(pid)
    _ip("netns", "delete", ns, check=False)


@functools.cache
def namespaces_available() -> str | None:
    """None if labs can be built here, else a human-readable reason (for ``pytest.skip``)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        how = "`unshare -rn` exists" if shutil.which("unshare") else "`unshare` is missing too"
        return (
            "network-namespace labs need root (`ip netns add`); not root here "
            f"(euid {os.geteuid()}); {how}, but the unprivileged path is not implemented"
        )
    probe = f"{DEFAULT_PREFIX}{os.getpid()}probe{next(_counter)}"
    try:
        _ip("netns", "add", probe)
        # Everything a lab needs, tried inside the probe namespace only.
        _ip("-n", probe, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", probe, "link", "set", "v0", "master", "br0")
    except LabError as exc:
        return f"cannot build network namespaces here: {exc}"
    except OSError as exc:
        return f"cannot run `ip`: {exc}"
    finally:
        with contextlib.suppress(Exception):
            _ip("netns", "delete", probe, check=False)
    return None


def _loss_program(fraction: float) -> str:
    """Classic BPF (``tc filter ... bpf da bytecode``) dropping ``fraction`` of packets:
    load a random u32 (ancillary offset SKF_AD_RANDOM), return TC_ACT_OK (0) if it is
    >= the threshold, else TC_ACT_SHOT (2). Needs no sch_netem module."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    threshold = min(int(fraction * 2**32), 2**32 - 1)
    return f"4,32 0 0 4294963256,53 0 1 {threshold},6 0 0 0,6 0 0 2"


@functools.cache
def packet_loss_available() -> str | None:
    """None if :meth:`Host.packet_loss` works here, else why not (for ``pytest.skip``)."""
    reason = namespaces_available()
    if reason is not None:
        return reason
    if shutil.which("tc") is None:
        return "the `tc` command (iproute2) is not installed"
    probe = f"{DEFAULT_PREFIX}{os.getpid()}lossprobe{next(_counter)}"
    try:
        _ip("netns", "add", probe)
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        for argv in (["qdisc", "add", "dev", "v0", "clsact"],
                     ["filter", "add", "dev", "v0", "egress", "bpf", "da", "bytecode",
                      _loss_program(0.1)]):
            done = _tc(probe, *argv)
            if done.returncode != 0:
                return (f"cannot drop packets with tc here: `tc {' '.join(argv)}`: "
                        f"{done.stderr.strip()}")
    except LabError as exc:
        return f"cannot build the packet-loss probe namespace: {exc}"
    except OSError as exc:
        return f"cannot run `ip` or `tc`: {exc}"
    finally:
        with contextlib.suppress(Exception):
            _ip("netns", "delete", probe, check=False)
    return None


def _tc(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, "tc", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=IP_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(cmd)}: timed out after {IP_TIMEOUT}s") from exc


def _mac_of(ns: str, device: str) -> str:
    done = _ip("-n", ns, "-j", "link", "show", "dev", device)
    try:
        mac = json.loads(done.stdout)[0]["address"]
    except (ValueError, LookupError, TypeError) as exc:
        raise LabError(f"ip -n {ns} -j link show dev {device}: no address in "
                       f"{done.stdout.strip()!r}") from exc
    return str(mac)


@dataclass(frozen=True, slots=True)
class LossCounters:
    """What the loss qdisc saw, both directions together, since it was added."""

    packets: int
    """Packets that went through the filters (sent and received)."""
    dropped: int
    """Of those, packets the filters dropped."""


class PacketLoss:
    """Random packet loss on one host's ``eth0`` (inside its namespace): a ``clsact``
    qdisc with a classic-BPF filter on egress (and ingress, unless told otherwise).

    ``apply()`` / ``remove()``, or ``with host.packet_loss(0.1) as loss: ...``. Removing
    the qdisc removes the filters; deleting the namespace (``Lab.close``) removes
    everything anyway. ``counters()`` reads the qdisc's statistics, so a test can check
    that packets were actually dropped rather than assume it."""

    def __init__(self, host: Host, fraction: float, *,
                 directions: Sequence[Literal["egress", "ingress"]] = ("egress", "ingress"),
                 device: str = "eth0") -> None:
        self.host = host
        self.fraction = fraction
        self.directions = tuple(directions)
        self.device = device
        self.program = _loss_program(fraction)
        self.active = False
        self.last: LossCounters | None = None
        """The counters read by ``remove()`` right before the qdisc went away."""

    def __repr__(self) -> str:
        return (f"PacketLoss({self.host.name!r}, {self.fraction:.0%}, "
                f"{'+'.join(self.directions)}, active={self.active})")

    def _tc(self, *args: str) -> None:
        done = _tc(self.host.name, *args)
        if done.returncode != 0:
            raise LabError(f"tc {' '.join(args)} in {self.host.name}: exit "
                           f"{done.returncode}: {done.stderr.strip()}")

    def apply(self) -> None:
        """Start dropping (raises :class:`LabError`, after undoing, if ``tc`` fails)."""
        self._tc("qdisc", "add", "dev", self.device, "clsact")
        self.active = True
        try:
            for direction in self.directions:
                self._tc("filter", "add", "dev", self.device, direction, "bpf", "da",
                         "bytecode", self.program)
        except BaseException:
            self.remove()
            raise

    def counters(self) -> LossCounters:
        """Packets seen and dropped by the filters so far (zeros if not applied)."""
        done = _tc(self.host.name, "-s", "-j", "qdisc", "show", "dev", self.device)
        try:
            qdiscs = json.loads(done.stdout or "[]")
        except ValueError:
            qdiscs = []
        for q in qdiscs:
            if isinstance(q, dict) and q.get("kind") == "clsact":
                return LossCounters(int(q.get("packets", 0)), int(q.get("drops", 0)))
        return LossCounters(0, 0)

    def remove(self) -> None:
        """Stop dropping (idempotent; never raises, so it is safe in ``finally``)."""
        if not self.active:
            return
        with contextlib.suppress(Exception):
            self.last = self.counters()
        with contextlib.suppress(Exception):
            _tc(self.host.name, "qdisc", "del", "dev", self.device, "clsact")
        self.active = False

    def __enter__(self) -> Self:
        self.apply()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def remove_stale_namespaces() -> list[str]:
    """Delete default-prefix namespaces left behind by test processes that no longer exist."""
    removed = []
    for ns in _netns_list():
        m = _STALE.match(ns)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            _destroy_namespace(ns)
            removed.append(ns)
        except PermissionError:
            pass
    return removed


class Host:
    """One host of a :class:`Lab`: a namespace with ``lo`` and ``eth0`` on the lab's bridge."""

    def __init__(self, lab: Lab, index: int, name: str, address: str, port: str,
                 mac: str = "") -> None:
        self.lab = lab
        self.index = index
        self.name = name
        """The netns name (``ip netns exec NAME ...``)."""
        self.address = address
        """This host's IPv4 address on ``eth0`` (the /24 is shared by the lab's hosts)."""
        self.port = port
        """Name of the bridge-side veth end, inside the switch namespace."""
        self.mac = mac
        """The hardware address of this host's ``eth0``."""
        self.procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address!r})"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the namespace; the lab SIGKILLs it on close.

        The process gets its own session (process group) unless ``start_new_session`` is
        given, so :meth:`kill` also reaches the children it started.
        """
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kw)
        self.procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], timeout: float = 10.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the namespace to completion (killed after ``timeout`` seconds).

        Output is captured as text unless overridden; raises ``subprocess.TimeoutExpired``.
        """
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("check", False)
        done: subprocess.CompletedProcess[str] = subprocess.run(
            self.argv(argv), timeout=timeout, **kw
        )
        return done

    def kill(self, proc: subprocess.Popen[Any]) -> int | None:
        """SIGKILL ``proc`` (and its process group if it leads one); reap it; return its code."""
        if proc.poll() is None:
            try:
                pgid = os.getpgid(proc.pid)
            except ProcessLookupError:
                pgid = -1
            if pgid == proc.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            _sigkill(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_WAIT)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    def link_down(self) -> None:
        """Unplug the cable: take the bridge-side end of this host's veth down.

        The host side only loses carrier, so its addresses and routes (including the
        multicast route) stay; traffic to and from this host stops.
        """
        _ip("-n", self.lab.switch, "link", "set", self.port, "down")

    def link_up(self) -> None:
        """Plug the cable back in (bridge port forwards again at once: STP is off)."""
        _ip("-n", self.lab.switch, "link", "set", self.port, "up")

    def packet_loss(self, fraction: float, *,
                    directions: Sequence[Literal["egress", "ingress"]] = ("egress", "ingress"),
                    ) -> PacketLoss:
        """Random loss of ``fraction`` of this host's packets on ``eth0`` (see
        :class:`PacketLoss`; not applied until ``apply()`` or ``with``)."""
        return PacketLoss(self, fraction, directions=directions)

    def tcp_counters(self) -> dict[str, int]:
        """The namespace's TCP counters (``/proc/net/snmp``: ``RetransSegs``, ``OutSegs``...)."""
        lines = [ln.split() for ln in self.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
                 if ln.startswith("Tcp:")]
        if len(lines) < 2:
            return {}
        return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=False)
                if v.lstrip("-").isdigit()}


class Lab:
    """A switch namespace with a bridge, and ``n`` host namespaces cabled to it."""

    def __init__(self, prefix: str, subnet: str) -> None:
        self.prefix = prefix
        self.subnet = subnet
        """The lab's ``10.X.Y`` (hosts are ``10.X.Y.1`` ...)."""
        self.switch = f"{prefix}-sw"
        self.hosts: list[Host] = []
        self.closed = False
        self._namespaces: list[str] = []

    @classmethod
    def create(cls, n_hosts: int, prefix: str | None = None, *,
               static_neighbours: bool | None = None) -> Lab:
        """Build the lab (raises :class:`LabError`, after cleaning up, if anything fails).

        ``static_neighbours``: give every host a permanent neighbour entry for every
        other host (see the module docstring); None: only above
        ``STATIC_NEIGHBOURS_ABOVE`` hosts."""
        if static_neighbours is None:
            static_neighbours = n_hosts > STATIC_NEIGHBOURS_ABOVE
        if not 1 <= n_hosts <= 250:
            raise ValueError(f"n_hosts must be in 1..250, got {n_hosts}")
        seq = next(_counter)
        if prefix is None:
            remove_stale_namespaces()
            prefix = f"{DEFAULT_PREFIX}{os.getpid()}n{seq}"
        tag = (os.getpid() * 7 + seq) % 65536
        lab = cls(prefix, f"10.{tag >> 8}.{tag & 0xFF}")
        _open_labs.add(lab)
        try:
            lab._build(n_hosts)
            if static_neighbours:
                lab._pin_neighbours()
        except BaseException:
            lab.close()
            raise
        return lab

    def _build(self, n_hosts: int) -> None:
        taken = set(_netns_list())
        names = [self.switch, *(f"{self.prefix}-h{i}" for i in range(n_hosts))]
        clash = taken.intersection(names)
        if clash:
            raise LabError(f"namespaces already exist: {sorted(clash)}")
        sw = self.switch
        _ip("netns", "add", sw)
        self._namespaces.append(sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i in range(n_hosts):
            ns, port = f"{self.prefix}-h{i}", f"h{i}"
            address = f"{self.subnet}.{i + 1}"
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            # Both ends are born in the switch namespace; the peer moves straight into ns.
            _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", sw, "link", "set", port, "master", "br0")
            _ip("-n", sw, "link", "set", port, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
            self.hosts.append(Host(self, i, ns, address, port, _mac_of(ns, "eth0")))

    def _pin_neighbours(self) -> None:
        """A permanent neighbour entry on every host for every other host's ``eth0``."""
        for host in self.hosts:
            _ip_batch(host.name, [
                f"neigh replace {other.address} lladdr {other.mac} dev eth0 nud permanent"
                for other in self.hosts if other is not host])

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab created (switch first)."""
        return list(self._namespaces)

    def processes(self) -> list[subprocess.Popen[Any]]:
        """Every process started with :meth:`Host.popen` in this lab."""
        return [p for h in self.hosts for p in h.procs]

    def close(self) -> None:
        """Kill every tracked process and everything else inside the lab's namespaces,
        then delete the namespaces (and with them the veths and the bridge). Idempotent."""
        if self.closed:
            return
        self.closed = True
        for host in self.hosts:
            for proc in host.procs:
                with contextlib.suppress(Exception):
                    host.kill(proc)
        for ns in reversed(self._namespaces):
            with contextlib.suppress(Exception):
                _destroy_namespace(ns)
        _open_labs.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@atexit.register
def _close_open_labs() -> None:
    for lab in list(_open_labs):
        with contextlib.suppress(Exception):
            lab.close()


def lab_fixture(
    n: int, *, scope: Literal["function", "module", "session"] = "function"
) -> Callable[[], Iterator[Lab]]:
    """A pytest fixture yielding a fresh ``n``-host :class:`Lab`, closed after the test
    (or, with ``scope="module"``, after the module's last test) whatever its outcome;
    it skips the test with the reason when labs can't be built.

    In a test module: ``lab3 = lab_fixture(3)`` then ``def test_x(lab3: Lab) -> None``.
    A shared lab is shared state: a test that cuts a link or adds loss restores it in
    a ``finally``.
    """

    def _lab() -> Iterator[Lab]:
        reason = namespaces_available()
        if reason is not None:
            pytest.skip(reason)
        with Lab.create(n) as lab:
            yield lab

    _lab.__name__ = f"lab{n}"
    fixture: Callable[[], Iterator[Lab]] = pytest.fixture(_lab, scope=scope)
    return fixture


lab3 = lab_fixture(3)
"""A 3-host lab fixture (use it through ``pytest_plugins = ["netlab"]`` or redefine locally)."""
