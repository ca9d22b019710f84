"""CURVE key pairs: validation, generation, and the key-file format.

A CURVE key is 32 bytes, written as 40 characters of Z85 (ZeroMQ's base-85). shoal
holds keys as those 40 ASCII bytes everywhere (what libzmq's ``CURVE_*KEY`` options,
``zmq.curve_keypair`` and the ZAP ``User-Id`` use), so a key can be printed, logged,
put in a DNS-SD TXT record or a trusted-keys file as it is.

The key-file format (``KeyPair.save`` writes it, ``load_keypair`` reads it)::

    # shoal CURVE key pair. Keep this file secret (mode 0600).
    public-key  rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7
    secret-key  JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6

One ``LABEL KEY`` per line; blank lines and ``#`` lines are ignored. ``secret-key``
is required; ``public-key`` may be left out (it is derived), and if present it must
belong to the secret key.

Rules: a file holding a secret key is written with mode 0600 and never replaced
unless the caller asks; one readable by group or others is refused (``chmod 600``),
so a leaked-by-permissions secret is noticed instead of used. Every error says what
to do. Secret keys never appear in a ``repr`` or an error message.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.utils import z85

from shoal.errors import LocalProtocolError, ShoalError

__all__ = [
    "KEY_LENGTH",
    "InvalidKey",
    "KeyFileError",
    "KeyPair",
    "SecurityError",
    "check_key",
    "generate_keypair",
    "load_keypair",
    "public_key_of",
    "z85_key_or_none",
]

KEY_LENGTH = 40
"""Characters in a Z85-encoded CURVE key."""

_Z85 = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(_Z85)}
_MAX_FILE = 64 * 1024  # a key file is ~150 bytes; anything this big is not one


class SecurityError(ShoalError):
    """Root of the errors about keys, key files and trust (``shoal.security``)."""


class InvalidKey(SecurityError, LocalProtocolError, ValueError):
    """A key is not 40 characters of Z85, or a public key does not belong to its
    secret key. The message says which key and how to get a good one."""


class KeyFileError(SecurityError, LocalProtocolError):
    """A key file or trusted-keys file cannot be used: missing, malformed, readable
    by others, or in the way of a new one. The message names the file and the fix."""


def z85_key_or_none(key: object) -> bytes | None:
    """``key`` as 40 Z85 bytes if it is a valid CURVE key (bytes or str of 40 Z85
    characters, or 32 raw bytes), else None. Never raises: for data off the wire."""
    if isinstance(key, str):
        try:
            key = key.encode("ascii")
        except UnicodeEncodeError:
            return None
    if not isinstance(key, bytes):
        return None
    if len(key) == 32:
        return z85.encode(key)
    if len(key) != KEY_LENGTH:
        return None
    values = _Z85_VALUE
    for start in range(0, KEY_LENGTH, 5):
        group = 0
        for c in key[start:start + 5]:
            digit = values.get(c)
            if digit is None:
                return None
            group = group * 85 + digit
        # 85**5 > 2**32: some 5-character groups name no 4-byte value
        if group > 0xFFFF_FFFF:
            return None
    return key


def check_key(key: object, what: str = "public key") -> bytes:
    """Validate a CURVE key given as 40 Z85 characters (bytes or str); return it as
    bytes. Raises ``InvalidKey`` naming ``what`` and the fix. The key itself is shown
    only for public keys."""
    # z85_key_or_none also takes 32 raw bytes (ZAP credentials); configuration never
    good = None if isinstance(key, bytes) and len(key) == 32 else z85_key_or_none(key)
    if good is not None:
        return good
    if isinstance(key, bytes | str):
        shown = f" {key[:48]!r}" if "secret" not in what else ""
        problem = (f"is {len(key)} characters long, not {KEY_LENGTH}" if len(key) != KEY_LENGTH
                   else "is not Z85 (ZeroMQ's base-85 alphabet)")
        raise InvalidKey(f"the {what}{shown} {problem}: a CURVE key is {KEY_LENGTH} "
                         "Z85 characters, as `shoal keygen` prints them")
    raise InvalidKey(f"a {what} is 40 Z85 characters (bytes or str), not "
                     f"{type(key).__name__}")


def public_key_of(secret: bytes | str) -> bytes:
    """The public key that belongs to ``secret`` (both Z85). Raises ``InvalidKey``."""
    return zmq.curve_public(check_key(secret, "secret key"))


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A CURVE key pair, both keys 40 Z85 bytes.

    Raises ``InvalidKey`` if either key is malformed or ``public`` does not belong to
    ``secret``. ``repr()`` shows only the public key.
    """

    public: bytes
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        public = check_key(self.public, "public key")
        secret = check_key(self.secret, "secret key")
        if zmq.curve_public(secret) != public:
            raise InvalidKey(f"the public key {public.decode()} does not belong to this "
                             "secret key: keep the two lines of one `shoal keygen` output "
                             "together, or make a new pair")
        object.__setattr__(self, "public", public)
        object.__setattr__(self, "secret", secret)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write this pair to ``path`` in the key-file format, mode 0600.

        Refuses (``KeyFileError``) if ``path`` exists, unless ``overwrite``; the
        replacement is atomic (a temporary file renamed over the old one), so a
        crash leaves the old pair or the new one, never half a file.
        """
        p = Path(path)
        text = ("# shoal CURVE key pair. Keep this file secret (mode 0600); give peers\n"
                "# only the public key (`shoal keygen --public FILE` prints it).\n"
                f"public-key  {self.public.decode()}\n"
                f"secret-key  {self.secret.decode()}\n").encode()
        target = p if not overwrite else p.with_name(f".{p.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{p} exists; pass overwrite=True (`shoal keygen --force`) "
                               "to replace it (the key pair in it is lost)") from None
        except OSError as exc:
            raise KeyFileError(f"cannot create {target}: {exc.strerror}; check that the "
                               "directory exists and is writable") from None
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)  # whatever the umask allowed
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(target, p)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise KeyFileError(f"cannot write {p}: {exc.strerror}") from None


def generate_keypair() -> KeyPair:
    """A new random CURVE key pair (libzmq's ``zmq_curve_keypair``)."""
    public, secret = zmq.curve_keypair()
    return KeyPair(public, secret)


def load_keypair(path: str | os.PathLike[str]) -> KeyPair:
    """Read a key file written by ``KeyPair.save`` / ``shoal keygen``.

    Raises ``KeyFileError`` if the file is missing, not a regular file, readable by
    group or others (fix: ``chmod 600 PATH``), or malformed (the message gives the line
    number); ``InvalidKey`` if a key in it is bad or the two do not match.
    """
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO at PATH must not hang the open (regular files ignore it)
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"no key file at {p}: create one with `shoal keygen {p}`") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {p}: {exc.strerror}") from None
    try:
        # fstat on the open file: the mode checked is the mode of what is read
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{p} is not a regular file; give the path of a key file")
        if os.name == "posix" and st.st_mode & 0o077:
            raise KeyFileError(
                f"{p} holds a secret key but its mode {stat.S_IMODE(st.st_mode):04o} lets "
                f"group or others read it: run `chmod 600 {p}` (and make a new pair "
                "if others may have read it)")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {p}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE:
        raise KeyFileError(f"{p} is too large to be a key file")
    found: dict[str, bytes] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        label, *rest = line.split(None, 1)
        name = label.decode("ascii", "replace")
        value = rest[0].strip() if rest else b""
        if name not in ("public-key", "secret-key") or not value:
            raise KeyFileError(f"{p}, line {number}: expected 'public-key KEY' or "
                               "'secret-key KEY'; rewrite the file with `shoal keygen`")
        if name in found:
            raise KeyFileError(f"{p}, line {number}: a second {name} line; keep one")
        try:
            found[name] = check_key(value, name.replace("-", " "))
        except InvalidKey as exc:
            raise InvalidKey(f"{p}, line {number}: {exc}") from None
    if "secret-key" not in found:
        raise KeyFileError(f"{p} has no 'secret-key' line: is it a public key only? "
                           f"Make a key pair with `shoal keygen {p}`")
    secret = found["secret-key"]
    public = found.get("public-key", zmq.curve_public(secret))
    try:
        return KeyPair(public, secret)
    except InvalidKey as exc:
        raise InvalidKey(f"{p}: {exc}") from None
