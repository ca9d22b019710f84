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
