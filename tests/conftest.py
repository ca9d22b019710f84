"""Shared helpers: fresh loopback-only endpoints and the pub/sub slow-joiner handshake.

Network safety: every address handed out here is ``tcp://127.0.0.1:*``, an ``ipc://``
path under the test's ``tmp_path``, or a process-unique ``inproc://`` name.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from shoal import Message, Subscriber

TRANSPORTS = ("tcp", "ipc", "inproc")

_names = itertools.count()
_probes = itertools.count()

PROBE_PREFIX = "__shoal-test-probe__/"
"""Topics starting with this are the handshake's; tests never publish on them."""

PROBE_PATIENCE = 0.01
"""How long one round of the handshake waits for a probe before publishing another."""


class Addresses:
    """Hands out fresh bind addresses on one transport (loopback / tmp_path / inproc)."""

    def __init__(self, transport: str, tmp_path: Path) -> None:
        self.transport = transport
        self._dir = tmp_path

    def fresh(self) -> str:
        """A new address to bind to. Connect to what the resource's ``endpoints`` says."""
        n = next(_names)
        if self.transport == "tcp":
            return "tcp://127.0.0.1:*"
        if self.transport == "ipc":
            return f"ipc://{self._dir}/s{n}"
        if self.transport == "inproc":
            return f"inproc://shoal-test-{os.getpid()}-{n}"
        raise AssertionError(f"unknown transport {self.transport!r}")


@pytest.fixture(params=TRANSPORTS)
def addresses(request: pytest.FixtureRequest, tmp_path: Path) -> Addresses:
    """Fresh bind addresses; the test runs once per transport."""
    return Addresses(str(request.param), tmp_path)


async def sync_subscribers(
    publish: Callable[[str, Any], object], *subs: Subscriber
) -> list[list[Message]]:
    """The pub/sub handshake: returns once every subscriber provably hears ``publish``.

    Each subscriber subscribes to a fresh probe topic; probes are published in a loop
    until every subscriber has received one (so its subscriptions, made earlier, are in
    force at the publisher: libzmq applies a pipe's subscriptions in order). Then one
    fence is published and every subscriber reads up to it. A publisher's messages
    reach a subscriber in order, so afterwards nothing published before the call is
    still on its way.

    Returns, per subscriber, the non-probe messages that arrived before the fence
    (empty when the handshake is done before anything is published).
    """
    topic = f"{PROBE_PREFIX}{next(_probes)}/"
    fence = {"fence": topic}
    for sub in subs:
        sub.subscribe(topic)
    got: list[list[Message]] = [[] for _ in subs]
    heard = [False] * len(subs)

    def take(i: int, msg: Message) -> None:
        if msg.topic == topic:
            heard[i] = True
        elif not msg.topic.startswith(PROBE_PREFIX):
            got[i].append(msg)

    n = 0
    while not all(heard):
        publish(topic, {"probe": n})
        n += 1
        for i, sub in enumerate(subs):
            if heard[i]:
                # keep draining, or probes could fill its queue and drop the fence
                while True:
                    try:
                        take(i, sub.receive_nowait())
                    except trio.WouldBlock:
                        break
                continue
            with trio.move_on_after(PROBE_PATIENCE):
                while not heard[i]:
                    take(i, await sub.receive())
    publish(topic, fence)
    for i, sub in enumerate(subs):
        while True:
            msg = await sub.receive()
            if msg.topic == topic and msg.body == fence:
                break
            take(i, msg)
    for sub in subs:
        sub.unsubscribe(topic)
    return got


SLOW_MODULES = frozenset({
    "test_demo", "test_soak", "test_faults", "test_multihost", "test_netlab",
    "test_bench_netns", "test_cli_netns", "test_cli_doctor_netns", "test_secure_netns",
    "test_dnssd_interop",
})
"""Modules whose tests run whole programs or network-namespace labs: together most of
the suite's time. ``pytest -m "not slow"`` leaves them out (the development loop);
CI runs everything."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: runs programs or network labs (deselect with -m 'not slow')")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
