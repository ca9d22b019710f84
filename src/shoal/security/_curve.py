"""CURVE socket settings: which options make a socket a server or a client.

* A socket that binds is a CURVE **server**: ``server_options`` (``CURVE_SERVER=1``,
  ``CURVE_SECRETKEY``, and ``ZAP_DOMAIN`` + ``ZAP_ENFORCE_DOMAIN=1`` so that no
  handshake succeeds while no ZAP handler is bound: fail closed).
* A socket that connects is a CURVE **client**: ``client_options``
  (``CURVE_PUBLICKEY``, ``CURVE_SECRETKEY``), and before *each* ``connect()`` the
  public key of the server it connects to: ``connect_curve``. libzmq copies a
  socket's options when ``connect()`` is called and keeps that copy for the
  connection's life, reconnects included, so one socket connects to many servers,
  each with its own key. ``connect_curve`` sets the key and connects with no
  checkpoint in between, so no other task can change the key in the gap.

``Security`` bundles a node's key pair and trust policy with these helpers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import zmq

from shoal._zmq._socket import Socket
from shoal.security._keys import KeyPair, SecurityError, check_key, z85_key_or_none
from shoal.security._trust import Trust

__all__ = ["ZAP_DOMAIN", "Security", "check_curve_support", "client_options",
           "connect_curve", "peer_key", "server_options"]

ZAP_DOMAIN = b"shoal"
"""The ZAP domain shoal's server sockets announce (required for enforcement)."""

Options = list[tuple[int, int | bytes]]


def check_curve_support() -> None:
    """Raise ``SecurityError`` unless this pyzmq's libzmq has CURVE (libsodium)."""
    if not zmq.has("curve"):
        raise SecurityError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE; "
                            "install a pyzmq wheel (they bundle a CURVE-enabled libzmq)")


def server_options(keypair: KeyPair) -> Options:
    """Options for a socket that binds (pass to ``Socket.open(options=...)`` or set
    before ``bind``)."""
    return [(zmq.ZAP_DOMAIN, ZAP_DOMAIN), (zmq.ZAP_ENFORCE_DOMAIN, 1),
            (zmq.CURVE_SERVER, 1), (zmq.CURVE_SECRETKEY, keypair.secret)]


def client_options(keypair: KeyPair) -> Options:
    """Options for a socket that connects; each connect then needs the server's key
    (``connect_curve``)."""
    return [(zmq.CURVE_PUBLICKEY, keypair.public), (zmq.CURVE_SECRETKEY, keypair.secret)]


def connect_curve(sock: Socket, endpoint: str, server_key: bytes | str) -> None:
    """Connect ``sock`` (made with ``client_options``) to the CURVE server at
    ``endpoint`` whose public key is ``server_key`` (Z85). Synchronous. Raises
    ``InvalidKey`` for a malformed key, as ``Socket.connect`` otherwise."""
    key = check_key(server_key, "server's public key")
    sock.setsockopt(zmq.CURVE_SERVERKEY, key)
    sock.connect(endpoint)


def peer_key(frame: zmq.Frame) -> bytes | None:
    """The Z85 public key of the peer that sent ``frame`` (a received ``zmq.Frame``,
    not bytes: the ``User-Id`` property the ZAP handler set), or None if the
    connection was not authenticated by a shoal ZAP handler."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return None  # no such property: not a ZAP-authenticated connection
    return z85_key_or_none(user) if isinstance(user, str) else None


@dataclass(frozen=True, slots=True)
class Security:
    """A node's CURVE identity and trust policy.

    ``keypair``: this node's keys (``load_keypair``, ``generate_keypair``).
    ``trust``: who may connect (``Trust.keys``, ``Trust.file``, ``Trust.tofu``...).
    Raises ``SecurityError`` if libzmq lacks CURVE or an argument has the wrong type.
    """

    keypair: KeyPair
    trust: Trust
    zap_trust: Trust = field(init=False, repr=False, compare=False)
    """What the ZAP handler asks: this node's own key (named ``self``: a node's
    connecting sockets reach its own listeners too), then ``trust``."""

    def __post_init__(self) -> None:
        check_curve_support()
        if not isinstance(self.keypair, KeyPair):
            raise SecurityError(f"keypair= takes a shoal.security.KeyPair, not "
                                f"{self.keypair!r}")
        if not isinstance(self.trust, Trust):
            raise SecurityError(f"trust= takes a shoal.security.Trust, not {self.trust!r}")
        own = Trust.keys([(self.keypair.public, "self")])
        object.__setattr__(self, "zap_trust", Trust.any_of(own, self.trust))

    @property
    def public_key(self) -> bytes:
        """This node's public key (Z85): what peers need to connect to it."""
        return self.keypair.public

    def server_options(self) -> Options:
        """``server_options(self.keypair)``."""
        return server_options(self.keypair)

    def client_options(self) -> Options:
        """``client_options(self.keypair)``."""
        return client_options(self.keypair)

    def connect(self, sock: Socket, endpoint: str, server_key: bytes | str) -> None:
        """``connect_curve(sock, endpoint, server_key)``."""
        connect_curve(sock, endpoint, server_key)
