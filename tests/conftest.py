"""Fixtures for every test, and the ``slow`` marker.

Helpers shared between test files live in ``tests/support`` (tests import them from
there, never from one another).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from support.endpoints import TRANSPORTS, Addresses


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A fresh ZeroMQ context for raw pyzmq peers and the shoal resources they talk to
    (inproc needs one shared context); destroyed with linger 0 afterwards."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture(params=TRANSPORTS)
def addresses(request: pytest.FixtureRequest, tmp_path: Path) -> Addresses:
    """Fresh bind addresses; the test runs once per transport."""
    return Addresses(str(request.param), tmp_path)


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
