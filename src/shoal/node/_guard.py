"""Whether a node is secured, decided once: a ``Plaintext`` or a ``Secured`` guard.

Every question that depends on it goes to the guard: a socket's CURVE options, how
to connect, the key an introduction needs, whether a discovered node may be
introduced to, whether a control message may speak for the node id it names, the
key of a peer's listeners. The rest of the node never tests whether it is secured.

Trust is decided here, and only here (``Secured``):

* A discovered node whose source gives its node id is introduced to only if
  ``trust.allows(key, node_id)`` (asked again at every re-introduction, so a key
  added to a trusted-keys file takes effect without a restart).
* A State is admitted only if the trust policy allows its sender's ZAP-authenticated
  key for the node id it claims (asked once per peer's life: heartbeats would stat a
  trusted-keys file every time; TOFU pins the id to the key here), and while the
  peer is known, only with the key first seen for its id (another key: a forged id,
  dropped and logged once).
* The ZAP handler, bound on the node's context before any CURVE server exists,
  admits connections with the keys the policy allows (and the node's own).
"""

from __future__ import annotations

import logging

import zmq

from shoal._core import State
from shoal._zmq._socket import Socket
from shoal.discovery._contract import Found
from shoal.errors import LocalProtocolError
from shoal.node._watch import WarnOnce
from shoal.security._curve import Security, connect_curve, peer_key
from shoal.security._zap import ZapHandler, ZapStatistics

__all__ = ["Guard", "Plaintext", "Refusal", "Secured", "guard_for"]

Options = list[tuple[int, int | bytes]]
Received = list[tuple[list[bytes], bytes | None]]
"""Control messages as frames, each with its sender's authenticated key (or None)."""


class Refusal:
    """Why a discovered node is not introduced to (logged once per instance)."""

    __slots__ = ("final", "level", "reason")

    def __init__(self, reason: str, level: int = logging.WARNING, *, final: bool = False) -> None:
        self.reason = reason
        self.level = level
        self.final = final
        """True: the record can never qualify (plaintext and secured nodes never mix);
        False: asked again at each re-introduction (a trust policy may change)."""


class Plaintext:
    """A node without CURVE: nothing is encrypted, every peer is admitted."""

    security: Security | None = None
    public_key: bytes | None = None

    def bind_zap(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        """Nothing to bind."""

    async def serve(self) -> None:
        """Nothing to serve."""

    def close(self) -> None:
        """Nothing to close."""

    def zap_statistics(self) -> ZapStatistics | None:
        return None

    def socket_options(self, *, server: bool) -> Options:
        return []

    def connect(self, sock: Socket, endpoint: str, server_key: bytes | None) -> None:
        sock.connect(endpoint)

    def check_introduction(self, endpoint: str, server_key: bytes | None) -> None:
        if server_key is not None:
            raise LocalProtocolError(f"introducing to {endpoint}: server_key= needs a node "
                                     "opened with security=")

    def refusal(self, found: Found) -> Refusal | None:
        if found.public_key is not None:
            return Refusal("a secured node (it advertises a public key) ignored by a "
                           "plaintext node", logging.INFO, final=True)
        return None

    def receive(self, sock: Socket, limit: int) -> Received:
        return [(frames, None) for frames in sock.receive_batch_nowait(limit)]

    def admits(self, msg: State, key: bytes | None) -> bool:
        return True

    def speaks_for(self, node_id: bytes, key: bytes | None) -> bool:
        return True

    def pin(self, peer_id: str, key: bytes | None) -> None:
        """Nothing remembered."""

    def forget(self, peer_id: str) -> None:
        """Nothing remembered."""

    def server_key(self, peer_id: str) -> bytes | None:
        return None

    def key_of(self, peer_id: str) -> bytes | None:
        return None

    def knows(self, peer_id: str) -> bool:
        """Whether ``peer_id``'s listeners can be connected to (its key is known)."""
        return True

    def replaces_link(self, link_key: bytes | None, key: bytes | None) -> bool:
        return False


class Secured:
    """A node with CURVE: every socket a server (binding) or a client (connecting).
    (Not a subclass of ``Plaintext``: every question is answered here, none by
    inheritance.)"""

    security: Security
    public_key: bytes

    def __init__(self, security: Security, warn: WarnOnce, own_id: str) -> None:
        self.security = security
        self._own_id = own_id
        self.public_key = security.public_key
        self._zap = ZapHandler(security.zap_trust)
        self._warn = warn
        self._keys: dict[str, bytes] = {}  # live peer id -> its authenticated key

    def bind_zap(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        # before any CURVE server exists: handshakes never meet a missing handler
        self._zap.bind(context)

    async def serve(self) -> None:
        await self._zap.serve()

    def close(self) -> None:
        self._zap.close()  # after the servers, before term (which waits for it)

    def zap_statistics(self) -> ZapStatistics | None:
        return self._zap.statistics()

    def socket_options(self, *, server: bool) -> Options:
        security = self.security
        return security.server_options() if server else security.client_options()

    def connect(self, sock: Socket, endpoint: str, server_key: bytes | None) -> None:
        if server_key is None:
            raise LocalProtocolError(f"no public key known for {endpoint}: a secured node "
                                     "names the key of the node it connects to "
                                     "(server_key=)")
        connect_curve(sock, endpoint, server_key)

    def check_introduction(self, endpoint: str, server_key: bytes | None) -> None:
        if server_key is None:
            raise LocalProtocolError(f"introducing to {endpoint}: a secured node needs the "
                                     "peer's public key (server_key=)")

    def refusal(self, found: Found) -> Refusal | None:
        if found.public_key is None:
            return Refusal("plaintext peer (no public key advertised) ignored by a "
                           "secured node", final=True)
        if found.node_id is None:
            return None  # a configured key: trust is asked when its State comes
        verdict = self.security.trust.allows(found.public_key, found.node_id)
        if not verdict:
            return Refusal(f"its key {found.public_key.decode()} is refused by this "
                           f"node's trust policy ({verdict.reason})")
        return None

    def receive(self, sock: Socket, limit: int) -> Received:
        # frames with their metadata: the sender's ZAP-authenticated key (User-Id)
        return [([f.bytes for f in frames], peer_key(frames[-1]))
                for frames in sock.receive_frames_nowait(limit)]

    def speaks_for(self, node_id: bytes, key: bytes | None) -> bool:
        """Whether ``key`` may speak for ``node_id`` (False: logged, drop the message)."""
        nid = node_id.hex()
        if key is None:
            # cannot happen through a CURVE server with ZAP; refuse rather than guess
            self._warn("no-key", nid, "dropped a control message from node %s without "
                       "an authenticated key", nid)
            return False
        held = self._keys.get(nid)
        if held is not None and held != key:
            self._warn("forged", nid + key.decode(),
                       "dropped a control message claiming node id %s from key %s: that "
                       "node is known with key %s (a forged or reused node id)",
                       nid, key.decode(), held.decode())
            return False
        return True

    def admits(self, msg: State, key: bytes | None) -> bool:
        if not self.speaks_for(msg.node_id, key):
            return False
        assert key is not None
        nid = msg.node_id.hex()
        if nid not in self._keys:
            verdict = self.security.trust.allows(key, msg.node_id)
            if not verdict:
                self._warn("untrusted", nid + key.decode(),
                           "ignoring node %s (%r) with key %s: %s by this node's trust "
                           "policy", nid, msg.name, key.decode(), verdict.reason)
                return False
        return True

    def pin(self, peer_id: str, key: bytes | None) -> None:
        """``peer_id`` is a live peer, speaking with ``key``."""
        if key is not None:
            self._keys[peer_id] = key

    def forget(self, peer_id: str) -> None:
        self._keys.pop(peer_id, None)

    def server_key(self, peer_id: str) -> bytes | None:
        """The public key of a live peer's listeners (this node's own for itself)."""
        if peer_id == self._own_id:
            return self.public_key
        return self._keys.get(peer_id)

    def key_of(self, peer_id: str) -> bytes | None:
        return self._keys.get(peer_id)

    def knows(self, peer_id: str) -> bool:
        return self.server_key(peer_id) is not None

    def replaces_link(self, link_key: bytes | None, key: bytes | None) -> bool:
        """A link opened from an advertisement with another key than the one a State
        was authenticated with: the authenticated one wins."""
        return link_key != key


Guard = Plaintext | Secured


def guard_for(security: Security | None, warn: WarnOnce, own_id: str) -> Guard:
    return Plaintext() if security is None else Secured(security, warn, own_id)
