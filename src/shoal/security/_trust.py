"""Trust policies: which CURVE public keys a node admits, and for which node ids.

A policy answers one question, synchronously: ``trust.allows(public_key, node_id)``
returns a ``Verdict`` (allowed or refused, with a short stable reason). ``node_id``
is None where it is not known: the ZAP handler sees only the key of a connecting
client; the node knows the id once it reads the peer's State (whose ``User-Id`` is
the key) or a DNS-SD TXT record (which carries both).

Policies:

* ``Trust.keys([...])``: a fixed list of keys (each optionally named).
* ``Trust.file(path)``: a trusted-keys file, re-read when it changes (its mtime, size
  or inode), so an operator adds or removes a key without a restart. Format: one
  ``KEY [name]`` per line; blank lines and lines starting with ``#`` are comments
  (no CURVE key starts with ``#``: a Z85 group starting with it would exceed 32
  bits).
* ``Trust.tofu(path)``: trust on first use. The first key seen for a node id is
  pinned to it and written to ``path`` (``NODE_ID_HEX KEY`` per line); a different
  key later for a pinned id is refused and logged at WARNING with both keys and the
  fix. With ``node_id=None`` every well-formed key is allowed (reason ``unpinned``):
  the pin is checked when the id is known.
* ``Trust.any_of(a, b, ...)``: allowed if any policy allows, asked in order (e.g. a
  node's own key beside the operator's list).

Failure rules: data off the wire never raises (a malformed key is refused as
``bad-key``); configuration errors at construction raise ``KeyFileError`` /
``InvalidKey``. A trusted-keys file that later becomes unreadable trusts nobody
until it is readable again (fail closed); a malformed line read on a reload is
skipped with a warning (it can grant nothing), the others still count.

File reading is the only I/O: a ``stat`` per ``allows`` call, a read when the file
changed, a rewrite (to a temporary file renamed over the old one) when TOFU pins.
Not thread-safe; one event loop's thread calls it.
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import LocalProtocolError
from shoal.security._keys import KEY_LENGTH, KeyFileError, check_key, z85_key_or_none

__all__ = ["Trust", "TrustStatistics", "Verdict"]

log = logging.getLogger("shoal")

_MAX_FILE = 4 * 1024 * 1024
_MAX_WARNED = 1024  # (id, key) pairs remembered so that a warning is logged once


@dataclass(frozen=True, slots=True)
class Verdict:
    """A policy's answer. True in a boolean context when allowed.

    ``reason`` when allowed: ``listed`` (in a key list or file), ``pinned`` (TOFU,
    the key pinned for this id), ``first-use`` (TOFU, just pinned), ``unpinned``
    (TOFU, id not known yet). When refused: ``unlisted``, ``key-changed`` (TOFU),
    ``bad-key`` (not a CURVE key), ``bad-node-id``.
    """

    allowed: bool
    reason: str
    name: str | None = None
    """The key's name in the list or file, if it has one."""

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True, slots=True)
class TrustStatistics:
    """Counters of a policy at one moment."""

    allowed: int
    refused: Mapping[str, int]
    """Refusals by reason (see ``Verdict``); read-only."""

    @property
    def refused_total(self) -> int:
        """Refusals of every reason."""
        return sum(self.refused.values())


def _entries(pairs: Iterable[object]) -> dict[bytes, str | None]:
    out: dict[bytes, str | None] = {}
    for item in pairs:
        if isinstance(item, tuple) and len(item) == 2:
            key, name = item
            if name is not None and not isinstance(name, str):
                raise LocalProtocolError(f"a key's name is a str, not {name!r}")
        else:
            key, name = item, None
        out[check_key(key)] = name
    return out


class Trust:
    """A trust policy. Make one with ``Trust.keys``, ``Trust.file``, ``Trust.tofu`` or
    ``Trust.any_of``; ask it with ``allows``."""

    __slots__ = ("_allowed", "_refused")

    def __init__(self) -> None:
        self._allowed = 0
        self._refused: dict[str, int] = {}

    # -- constructors ----------------------------------------------------------------

    @staticmethod
    def keys(keys: Iterable[bytes | str | tuple[bytes | str, str | None]]
             | Mapping[bytes | str, str | None]) -> Trust:
        """Trust exactly these public keys (Z85). Items are keys or ``(key, name)``
        pairs; a mapping ``{key: name}`` works too. Raises ``InvalidKey``."""
        items = keys.items() if isinstance(keys, Mapping) else keys
        return _KeyList(_entries(items))

    @staticmethod
    def file(path: str | os.PathLike[str]) -> Trust:
        """Trust the keys listed in a trusted-keys file, re-read when it changes.
        Raises ``KeyFileError`` if it is missing or malformed now."""
        return _KeyFile(Path(path))

    @staticmethod
    def tofu(path: str | os.PathLike[str]) -> Trust:
        """Trust on first use, pins kept in ``path`` (created on the first pin; its
        directory must exist). Raises ``KeyFileError`` if it exists and is malformed."""
        return _Tofu(Path(path))

    @staticmethod
    def any_of(*policies: Trust) -> Trust:
        """Allowed if any of ``policies`` allows. They are asked in order and the first
        that allows answers (the later ones are not asked, so a TOFU policy after a
        key list pins only keys the list does not hold); else the first refusal."""
        if not policies or not all(isinstance(p, Trust) for p in policies):
            raise LocalProtocolError("Trust.any_of takes one or more Trust policies")
        return _AnyOf(policies)

    # -- the question -------------------------------------------------------------------

    def allows(self, public_key: bytes | str, node_id: bytes | None = None) -> Verdict:
        """May the holder of ``public_key`` (40 Z85 characters, or 32 raw bytes) talk
        to us, as ``node_id`` if known? Never raises for a malformed key (refused as
        ``bad-key``); raises ``LocalProtocolError`` only for arguments of the wrong
        type. Counts the answer in ``statistics()``."""
        if node_id is not None and not isinstance(node_id, bytes):
            raise LocalProtocolError(f"node_id is bytes or None, not {node_id!r}")
        key = z85_key_or_none(public_key)
        if key is None:
            if not isinstance(public_key, bytes | str):
                raise LocalProtocolError(
                    f"a public key is bytes or str, not {type(public_key).__name__}")
            verdict = Verdict(False, "bad-key")
        elif node_id is not None and not 0 < len(node_id) <= 64:
            verdict = Verdict(False, "bad-node-id")
        else:
            verdict = self._decide(key, node_id)
        if verdict.allowed:
            self._allowed += 1
        else:
            self._refused[verdict.reason] = self._refused.get(verdict.reason, 0) + 1
        return verdict

    def _decide(self, key: bytes, node_id: bytes | None) -> Verdict:
        raise NotImplementedError

    def statistics(self) -> TrustStatistics:
        """An immutable snapshot of this policy's counters."""
        return TrustStatistics(self._allowed, types.MappingProxyType(dict(self._refused)))


class _KeyList(Trust):
    __slots__ = ("_keys",)

    def __init__(self, keys: dict[bytes, str | None]) -> None:
        super().__init__()
        self._keys = keys

    def _decide(self, key: bytes, node_id: bytes | None) -> Verdict:
        if key in self._keys:
            return Verdict(True, "listed", self._keys[key])
        return Verdict(False, "unlisted")

    def __repr__(self) -> str:
        return f"Trust.keys(<{len(self._keys)} keys>)"


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    # mtime alone misses two writes within the filesystem's timestamp granularity;
    # size and inode (an editor's rename) catch most of those
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _read_lines(path: Path) -> list[tuple[int, bytes]]:
    """The non-blank lines of ``path`` with their numbers. Raises OSError, or
    KeyFileError if the file is too large."""
    with path.open("rb") as f:
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise KeyFileError(f"{path} is larger than {_MAX_FILE} bytes; is it the right file?")
    return [(n, line.strip()) for n, line in enumerate(data.splitlines(), 1) if line.strip()]


def _parse_trusted(path: Path, lines: list[tuple[int, bytes]], *, strict: bool,
                   ) -> dict[bytes, str | None]:
    keys: dict[bytes, str | None] = {}
    for number, line in lines:
        if line.startswith(b"#"):
            continue
        first, *rest = line.split(None, 1)
        key = z85_key_or_none(first) if len(first) == KEY_LENGTH else None
        if key is None:
            problem = (f"{path}, line {number}: expected a 40-character Z85 public key "
                       "and an optional name ('KEY [name]'), as `shoal keygen --public` "
                       "prints it")
            if strict:
                raise KeyFileError(problem)
            log.warning("%s; the line is skipped", problem)
            continue
        name = rest[0].decode("utf-8", "replace").strip() if rest else None
        keys[key] = name or None
    return keys


class _KeyFile(Trust):
    __slots__ = ("_keys", "_path", "_signature", "_unreadable")

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._signature = _signature(path)
        try:
            lines = _read_lines(path)
        except FileNotFoundError:
            raise KeyFileError(f"no trusted-keys file at {path}: create it with one "
                               "'KEY [name]' per line (`shoal keygen --public FILE` "
                               "prints a node's key)") from None
        except OSError as exc:
            raise KeyFileError(f"cannot read trusted-keys file {path}: {exc.strerror}"
                               ) from None
        self._keys = _parse_trusted(path, lines, strict=True)
        self._unreadable = False

    def _refresh(self) -> None:
        sig = _signature(self._path)
        if sig == self._signature and not self._unreadable:
            return
        self._signature = sig
        try:
            lines = _read_lines(self._path)
        except (OSError, KeyFileError) as exc:
            if not self._unreadable:
                log.warning("cannot read trusted-keys file %s (%s): trusting no key until "
                            "it is readable again", self._path,
                            getattr(exc, "strerror", None) or exc)
            self._unreadable = True
            self._keys = {}
            return
        if self._unreadable:
            log.warning("trusted-keys file %s is readable again", self._path)
        self._unreadable = False
        self._keys = _parse_trusted(self._path, lines, strict=False)
        log.info("re-read trusted-keys file %s: %d keys", self._path, len(self._keys))

    def _decide(self, key: bytes, node_id: bytes | None) -> Verdict:
        self._refresh()
        if key in self._keys:
            return Verdict(True, "listed", self._keys[key])
        return Verdict(False, "unlisted")

    def __repr__(self) -> str:
        return f"Trust.file({str(self._path)!r})"


class _Tofu(Trust):
    __slots__ = ("_path", "_pins", "_signature", "_warned")

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = path
        self._pins: dict[bytes, bytes] = {}
        self._warned: set[tuple[bytes, bytes]] = set()
        self._signature: tuple[int, int, int, int] | None = None
        if path.exists():
            self._load(strict=True)

    def _load(self, *, strict: bool) -> None:
        self._signature = _signature(self._path)
        try:
            lines = _read_lines(self._path)
        except FileNotFoundError:
            lines = []  # removed: every pin goes (the operator's way to forget them all)
        except OSError as exc:
            if strict:
                raise KeyFileError(f"cannot read TOFU pins file {self._path}: "
                                   f"{exc.strerror}") from None
            log.warning("cannot read TOFU pins file %s (%s): keeping the pins in memory",
                        self._path, exc.strerror)
            return
        pins: dict[bytes, bytes] = {}
        for number, line in lines:
            if line.startswith(b"#"):
                continue
            parts = line.split()
            try:
                node_id = bytes.fromhex(parts[0].decode("ascii"))
                key = check_key(parts[1]) if len(parts) == 2 and node_id else None
            except (ValueError, IndexError):
                key = None
            if key is None:
                problem = (f"{self._path}, line {number}: expected 'NODE_ID_HEX KEY'; "
                           "fix or delete the line")
                if strict:
                    raise KeyFileError(problem)
                log.warning("%s; the line is skipped", problem)
                continue
            pins[node_id] = key
        self._pins = pins

    def _save(self) -> None:
        text = ("# shoal trust-on-first-use pins: NODE_ID_HEX KEY per line.\n"
                "# Delete a node's line if it really was given a new key.\n"
                + "".join(f"{i.hex()} {k.decode()}\n" for i, k in self._pins.items()))
        tmp = self._path.with_name(f".{self._path.name}.{os.urandom(6).hex()}.tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self._path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("cannot write TOFU pins file %s (%s): the pin holds until this "
                        "process exits", self._path, exc.strerror)
            return
        self._signature = _signature(self._path)

    def _decide(self, key: bytes, node_id: bytes | None) -> Verdict:
        if _signature(self._path) != self._signature:
            self._load(strict=False)
        if node_id is None:
            return Verdict(True, "unpinned")
        pinned = self._pins.get(node_id)
        if pinned is None:
            self._pins[node_id] = key
            self._save()
            log.info("pinned node %s to key %s (trust on first use, %s)", node_id.hex(),
                     key.decode(), self._path)
            return Verdict(True, "first-use")
        if pinned == key:
            return Verdict(True, "pinned")
        if (node_id, key) not in self._warned:
            if len(self._warned) >= _MAX_WARNED:
                self._warned.clear()
            self._warned.add((node_id, key))
            log.warning("REFUSED node %s: it presents key %s but was pinned to key %s on "
                        "first use; this may be an impostor. If the node really was "
                        "re-keyed, remove its line from %s", node_id.hex(), key.decode(),
                        pinned.decode(), self._path)
        return Verdict(False, "key-changed")

    def __repr__(self) -> str:
        return f"Trust.tofu({str(self._path)!r})"


class _AnyOf(Trust):
    __slots__ = ("_policies",)

    def __init__(self, policies: tuple[Trust, ...]) -> None:
        super().__init__()
        self._policies = policies

    def _decide(self, key: bytes, node_id: bytes | None) -> Verdict:
        first: Verdict | None = None
        for policy in self._policies:
            verdict = policy.allows(key, node_id)
            if verdict.allowed:
                return verdict
            first = first or verdict
        assert first is not None
        return first

    def __repr__(self) -> str:
        return f"Trust.any_of({', '.join(map(repr, self._policies))})"
