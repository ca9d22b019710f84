"""Static discovery: a fixed list of control endpoints, for networks without multicast.

Each listed endpoint is reported once, as a steady ``Found`` (see
``shoal.discovery._contract``): the node keeps a control link there for as long as it
lives, introduces itself on start and on every heartbeat, and libzmq keeps
reconnecting while the peer is down, so a peer that starts later, or restarts, is
found as soon as it listens.

Secured nodes (``open_node(..., security=...)``) need each peer's CURVE public key:
give the peers as a mapping ``{endpoint: public key}``. A secured node refuses an
endpoint without a key, a plaintext node refuses keys (``LocalProtocolError`` when the
node opens): the two never mix by accident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio
from anyio.abc import TaskStatus

from shoal._zmq._socket import check_endpoint
from shoal.discovery._contract import Advertisement, Found, Reports
from shoal.errors import InvalidEndpoint, LocalProtocolError
from shoal.security._keys import check_key

__all__ = ["Static"]


class Static:
    """Discovery from a list of peers' control endpoints (``"tcp://10.0.0.7:7700"``, or
    ``"10.0.0.7:7700"``). Open those nodes with a fixed ``port=``; ``node.control_endpoint``
    tells what to list. ``interfaces``: addresses this node listens on (None: those of
    the node's other sources, else every multicast-capable interface).

    For a secured node, a mapping from endpoint to that node's public key (Z85, as
    ``node.public_key`` or ``shoal keygen`` gives it)::

        Static({"tcp://10.0.0.7:7700": "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"})

    Raises ``InvalidEndpoint`` / ``InvalidKey`` for a malformed endpoint or key."""

    def __init__(self, peers: Sequence[str] | Mapping[str, bytes | str], *,
                 interfaces: Sequence[str] | None = None) -> None:
        if isinstance(peers, str):
            raise LocalProtocolError("Static() takes a list of endpoints, e.g. "
                                     "Static(['tcp://10.0.0.7:7700'])")
        if isinstance(peers, Mapping):
            keyed = {_endpoint(p): check_key(k, f"public key of static peer {p!r}")
                     for p, k in peers.items()}
            self.peers = tuple(keyed)
            self.keys: dict[str, bytes] = keyed
            """Endpoint -> public key (empty unless given as a mapping)."""
        else:
            self.peers = tuple(_endpoint(p) for p in peers)
            self.keys = {}
        self.interfaces = None if interfaces is None else tuple(interfaces)

    def __repr__(self) -> str:
        return f"Static({list(self.peers)!r})"

    async def discover(self, own: Advertisement, reports: Reports, *,
                       task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Report every listed endpoint (steady: see the module notes)."""
        secured = own.public_key is not None
        for ep in self.peers:
            key = self.keys.get(ep)
            if secured and key is None:
                raise LocalProtocolError(
                    f"a secured node needs the public key of static peer {ep}: pass "
                    f"Static({{{ep!r}: 'ITS_PUBLIC_KEY'}}) (node.public_key on that node)")
            if not secured and key is not None:
                raise LocalProtocolError(
                    f"Static() gives a public key for {ep}, but this node is plaintext: "
                    "open it with security=shoal.security.Security(keypair, trust), or "
                    "list the endpoints without keys")
        for ep in self.peers:
            reports.report(Found(ep, (ep,), public_key=self.keys.get(ep), steady=True))
        task_status.started()


def _endpoint(value: object) -> str:
    if not isinstance(value, str):
        raise LocalProtocolError(f"a static peer is an endpoint string, not {value!r}")
    ep = value if "://" in value else f"tcp://{value}"
    if not ep.startswith("tcp://"):
        check_endpoint(ep)  # an unknown scheme: says which ones there are
    host, sep, port = ep.removeprefix("tcp://").rpartition(":")
    fixed = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
    if not ep.startswith("tcp://") or not sep or not host or not fixed:
        raise InvalidEndpoint(f"a static peer is 'tcp://HOST:PORT' with a fixed port, "
                              f"not {value!r}")
    return check_endpoint(ep)
