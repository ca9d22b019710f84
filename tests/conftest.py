"""Fixtures for every test.

Helpers shared between test files live in ``tests/support`` (tests import them from
there, never from one another).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from support.endpoints import TRANSPORTS, Addresses

BACKENDS = [
    pytest.param("trio", id="trio"),
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]
"""The event loops a test marked ``pytest.mark.anyio`` runs on, each in turn: trio,
asyncio's default (selector) loop, and uvloop."""


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """AnyIO's plugin runs every ``pytest.mark.anyio`` test once per ``BACKENDS`` entry."""
    return request.param


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-trio's ``trio_mode`` marks every async test for trio; a test (or module)
    marked ``pytest.mark.anyio`` runs under AnyIO's plugin instead, on every backend."""
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [m for m in item.own_markers if m.name != "trio"]


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
