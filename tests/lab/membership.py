"""Membership of a group of ``lab_node.py`` processes, followed from their peer events.

    group = start_group(lab.hosts, discovery="static", publish_every=1.0)
    view = Membership(group)
    done = view.wait_full(timeout=30)       # time.time() when the last node saw everyone
    view.wait_gone(victim, timeout=10)      # every other node's ``left`` event for it

Each node's view is rebuilt from its own ``joined`` / ``updated`` / ``left`` events (see
``lab_node.py``): a peer is live for an observer from the event that reports it with the
epoch its process printed in ``ready`` until a ``left`` for that epoch. A node's view is
full when it holds every other member of the group with its current epoch; the group is
full when every view is. Times are the nodes' ``time.time()`` stamps (the lab's
namespaces share the kernel clock). Every wait has a deadline and raises ``LabTimeout``
saying who still misses whom.

Used by ``tests/lab/test_scale_netns.py`` and ``benchmarks/scale.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from labtools import Event, LabNode, LabTimeout, start_nodes
from netlab import Host

__all__ = ["CHANNEL", "CONTROL_PORT", "Membership", "node_args", "start_group"]

CONTROL_PORT = 7000
"""The control port of every node with static discovery (peer lists name it)."""
CHANNEL = "scale"
"""The channel every node subscribes to (and the first node also publishes on)."""
POLL = 0.02
"""Seconds between two looks at the nodes' events while waiting."""


def node_args(hosts: Sequence[Host], index: int, *, discovery: str,
              publish_every: float | None = None, extra: Sequence[str] = ()) -> list[str]:
    """``lab_node.py`` options for the node on ``hosts[index]``: subscribes to
    ``CHANNEL``; the first host also publishes a tick there every ``publish_every``
    seconds; ``discovery`` is ``mdns`` (every interface of the namespace) or ``static``
    (a fixed control port, and every other host's control endpoint)."""
    args = ["--sub", CHANNEL]
    if index == 0 and publish_every is not None:
        args += ["--pub", CHANNEL, "--publish-every", str(publish_every)]
    if discovery == "static":
        args += ["--discovery", "static", "--port", str(CONTROL_PORT)]
        for other in hosts:
            if other is not hosts[index]:
                args += ["--static-peer", f"tcp://{other.address}:{CONTROL_PORT}"]
    elif discovery != "mdns":
        raise ValueError(f"discovery is 'mdns' or 'static', not {discovery!r}")
    return [*args, *extra]


def start_group(hosts: Sequence[Host], *, discovery: str, publish_every: float | None = None,
                ready_timeout: float = 60.0, names: str = "n",
                extra: Sequence[str] = (), batch: int | None = None) -> list[LabNode]:
    """One node per host, spawned all at once (or ``batch`` at a time, each batch once
    the previous one is ready), then waited for until ready (every one is killed if one
    fails). Node ``i`` is named ``{names}{i}``."""
    return start_nodes(
        [(host, f"{names}{i}", node_args(hosts, i, discovery=discovery,
                                          publish_every=publish_every, extra=extra))
         for i, host in enumerate(hosts)], ready_timeout, batch=batch)


def _every(_: Event) -> bool:
    return True


class _View:
    """One observer's live peers, from its events. ``current`` counts the expected
    peers it holds with their expected epoch, so each event costs O(1)."""

    __slots__ = ("current", "expected", "full_since", "live", "node", "read")

    def __init__(self, node: LabNode, expected: dict[str, int]) -> None:
        self.node = node
        self.expected = expected  # peer name -> the epoch its process printed in ready
        self.read = 0  # events consumed
        self.live: dict[str, int] = {}  # peer name -> epoch
        self.current = 0  # how many of ``expected`` are in ``live`` with their epoch
        self.full_since: float | None = None

    def _set(self, peer: str, epoch: int | None) -> None:
        want = self.expected.get(peer)
        was = want is not None and self.live.get(peer) == want
        if epoch is None:
            del self.live[peer]
        else:
            self.live[peer] = epoch
        now = want is not None and epoch == want
        self.current += int(now) - int(was)

    def apply(self, observer: str, ev: Event, lefts: list[tuple[str, Event]]) -> None:
        kind = ev.get("event")
        peer = ev.get("name")
        if kind in ("joined", "updated") and isinstance(peer, str):
            self._set(peer, int(ev["epoch"]))
        elif kind == "left" and isinstance(peer, str):
            lefts.append((observer, ev))
            if self.live.get(peer) == ev.get("epoch"):
                self._set(peer, None)
        else:
            return
        if self.current < len(self.expected):
            self.full_since = None
        elif self.full_since is None:
            self.full_since = float(ev["t"])


class Membership:
    """What each node of a group sees of the others."""

    def __init__(self, nodes: Sequence[LabNode]) -> None:
        """``nodes`` are ready (their epochs are known)."""
        self.nodes = list(nodes)
        epochs = {n.name: n.epoch for n in self.nodes}
        self._views = {n.name: _View(n, {p: e for p, e in epochs.items() if p != n.name})
                       for n in self.nodes}
        self.lefts: list[tuple[str, Event]] = []
        """Every ``left`` event seen so far, with the observer's name."""

    def _expected(self, observer: str) -> dict[str, int]:
        return self._views[observer].expected

    def update(self) -> None:
        """Read the events the nodes printed since the last call."""
        for name, view in self._views.items():
            events = view.node.find(_every, view.read)
            view.read += len(events)
            for ev in events:
                view.apply(name, ev, self.lefts)

    def full_since(self) -> dict[str, float | None]:
        """For each node, since when it has seen every other member (None: not now)."""
        self.update()
        return {name: v.full_since for name, v in self._views.items()}

    def missing(self) -> dict[str, list[str]]:
        """For each node that does not see everyone, whom it misses."""
        self.update()
        out = {}
        for name, view in self._views.items():
            gone = sorted(p for p, e in self._expected(name).items() if view.live.get(p) != e)
            if gone:
                out[name] = gone
        return out

    def live(self, observer: str) -> dict[str, int]:
        """The peers ``observer`` sees live now (name -> epoch)."""
        self.update()
        return dict(self._views[observer].live)

    def wait_full(self, timeout: float) -> float:
        """Wait until every node sees every other; return the stamp of the event that
        completed the last view."""
        deadline = time.monotonic() + timeout
        while True:
            since = self.full_since()
            if all(t is not None for t in since.values()):
                return max(t for t in since.values() if t is not None)
            if time.monotonic() > deadline:
                raise LabTimeout(self._stuck(f"no full membership within {timeout:.0f}s"))
            self._check_alive()
            time.sleep(POLL)

    def wait_gone(self, victim: LabNode, timeout: float,
                  observers: Sequence[LabNode] | None = None) -> dict[str, Event]:
        """Wait until each observer (default: every other node) reported ``victim``'s
        epoch ``left``; return those events by observer. On the deadline, raises
        ``LabTimeout`` naming who still sees it."""
        watching = [n for n in (observers or self.nodes) if n is not victim]
        deadline = time.monotonic() + timeout
        while True:
            self.update()
            got = {obs: ev for obs, ev in self.lefts
                   if ev.get("name") == victim.name and ev.get("epoch") == victim.epoch}
            if all(n.name in got for n in watching):
                return {n.name: got[n.name] for n in watching}
            if time.monotonic() > deadline:
                late = sorted(n.name for n in watching if n.name not in got)
                raise LabTimeout(f"{len(late)} of {len(watching)} nodes still see "
                                 f"{victim.name} {timeout:.0f}s later: {', '.join(late)}")
            time.sleep(POLL)

    def _check_alive(self) -> None:
        for node in self.nodes:
            if node.proc.poll() is not None and node.killed is None:
                raise LabTimeout(f"{node} ended (exit {node.proc.returncode})\n"
                                 f"{node.describe()}")

    def _stuck(self, what: str) -> str:
        missing = self.missing()
        lines = [f"{obs} misses {', '.join(peers)}" for obs, peers in sorted(missing.items())]
        shown = lines[:10] + ([f"... and {len(lines) - 10} more"] if len(lines) > 10 else [])
        return f"{what}: {len(missing)} of {len(self.nodes)} nodes incomplete\n  " + \
            "\n  ".join(shown)
