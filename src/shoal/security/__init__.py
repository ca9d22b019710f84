"""CURVE security for shoal: key pairs, trust policies and the ZAP handler.

With security on, every connection between nodes is encrypted and authenticated
with ZeroMQ's CURVE mechanism (elliptic-curve keys, one pair per node):

* **Keys** (``KeyPair``, ``generate_keypair``, ``load_keypair``, ``public_key_of``):
  40-character Z85 keys; key files are written 0600 and refused when others can
  read them. ``shoal keygen PATH`` makes one.
* **Trust** (``Trust.keys``, ``Trust.file``, ``Trust.tofu``, ``Trust.any_of``): who is
  admitted. ``trust.allows(public_key, node_id)`` returns a ``Verdict``.
* **ZAP** (``serve_zap`` / ``open_zap_handler``, or ``ZapHandler``'s ``bind``,
  ``serve`` and ``close`` for an owner that binds synchronously): the task that
  answers libzmq's authentication requests for a context from a ``Trust``; admitted
  connections carry the client's public key as the ``User-Id`` message property
  (``peer_key(frame)`` reads it).
* **Sockets** (``server_options``, ``client_options``, ``connect_curve``, or the
  ``Security`` bundle): a binding socket is a CURVE server, a connecting socket a
  CURVE client that names the server's public key before each ``connect()``.

Rules: a CURVE server must never be bound on a context without a ZAP handler
(``server_options`` makes such handshakes fail rather than admit everyone); start
the handler first and stop it last. Errors are ``SecurityError``s; those caused by
the caller's input are also ``LocalProtocolError``s.
"""

from shoal._naming import claim
from shoal.security._curve import (
    ZAP_DOMAIN,
    Security,
    check_curve_support,
    client_options,
    connect_curve,
    peer_key,
    server_options,
)
from shoal.security._keys import (
    KEY_LENGTH,
    InvalidKey,
    KeyFileError,
    KeyPair,
    SecurityError,
    check_key,
    generate_keypair,
    load_keypair,
    public_key_of,
)
from shoal.security._trust import Trust, TrustStatistics, Verdict
from shoal.security._zap import (
    ZAP_ENDPOINT,
    ZapHandler,
    ZapStatistics,
    open_zap_handler,
    serve_zap,
)

__all__ = [
    "KEY_LENGTH",
    "ZAP_DOMAIN",
    "ZAP_ENDPOINT",
    "InvalidKey",
    "KeyFileError",
    "KeyPair",
    "Security",
    "SecurityError",
    "Trust",
    "TrustStatistics",
    "Verdict",
    "ZapHandler",
    "ZapStatistics",
    "check_curve_support",
    "check_key",
    "client_options",
    "connect_curve",
    "generate_keypair",
    "load_keypair",
    "open_zap_handler",
    "peer_key",
    "public_key_of",
    "serve_zap",
    "server_options",
]

claim(globals(), __all__, __name__)
