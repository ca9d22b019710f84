"""The durable outbox of a reliable pusher: accepted items on disk until done.

One SQLite file (stdlib ``sqlite3``, WAL journal, ``synchronous=NORMAL``) per pusher
stream. It holds the stream's identity (sender, epoch, stream number), the next
sequence number, and every item accepted and not yet done, as the encoded frame the
pullers receive. A pusher reopened on the same file continues that stream: it sends
the items again under their original identity (pullers that already had them drop
the copies and acknowledge them again) and numbers new items after the old ones.

Durability: a row is committed before ``send`` returns, so it survives the process
being killed; with ``synchronous=NORMAL`` a power loss may take the last commits.
One process at a time: the file is locked while a pusher has it open.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable

from shoal.errors import LocalProtocolError

__all__ = ["Outbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stream (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    sender BLOB NOT NULL, epoch INTEGER NOT NULL, stream INTEGER NOT NULL,
    next_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS item (seq INTEGER PRIMARY KEY, frame BLOB NOT NULL, route BLOB);
"""


class Outbox:
    """Accepted, not yet done items of one reliable pusher stream, on disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            db = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            raise LocalProtocolError(f"cannot open the outbox {self.path!r}: {exc}") from None
        self._db = db
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(item)")}
            if "route" not in columns:  # a file of an earlier version
                db.execute("ALTER TABLE item ADD COLUMN route BLOB")
            db.execute("PRAGMA user_version = 1")  # a write: the exclusive lock, kept
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" in str(exc):
                raise LocalProtocolError(
                    f"the outbox {self.path!r} is in use by another pusher; give each "
                    "pusher its own file") from None
            raise LocalProtocolError(f"cannot use the outbox {self.path!r}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise LocalProtocolError(f"{self.path!r} is not a shoal outbox: {exc}") from None

    def _damaged(self, what: str) -> LocalProtocolError:
        return LocalProtocolError(
            f"{self.path!r} is not a shoal outbox or is damaged ({what}); move it away "
            "to start a new stream")

    def stream(self) -> tuple[bytes, int, int, int] | None:
        """``(sender, epoch, stream, next_seq)`` of the stream this file continues,
        or None for a new file. Raises ``LocalProtocolError`` for a damaged file."""
        try:
            row = self._db.execute(
                "SELECT sender, epoch, stream, next_seq FROM stream WHERE id = 0").fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None
        if row is None:
            return None
        sender, epoch, stream, next_seq = row
        if not (isinstance(sender, bytes) and len(sender) == 16
                and all(type(v) is int for v in (epoch, stream, next_seq))
                and 0 <= epoch < 2**32 and 0 <= stream < 2**32 and 0 <= next_seq < 2**63):
            raise self._damaged("the stream row")
        return sender, epoch, stream, next_seq

    def start(self, sender: bytes, epoch: int, stream: int) -> None:
        """Record the identity of a new stream."""
        self._db.execute("INSERT INTO stream VALUES (0, ?, ?, ?, 0)", (sender, epoch, stream))

    def pending(self) -> list[tuple[int, bytes, bytes | None]]:
        """The items not yet done, in order: ``(seq, frame, route)``, ``route`` the
        puller it was first sent to (None: not known). Raises ``LocalProtocolError``
        for a damaged file (rows of the wrong types; frames are checked by the
        pusher)."""
        try:
            rows = self._db.execute(
                "SELECT seq, frame, route FROM item ORDER BY seq").fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None
        if not all(type(seq) is int and seq >= 0 and isinstance(frame, bytes)
                   and (route is None or isinstance(route, bytes))
                   for seq, frame, route in rows):
            raise self._damaged("an item row")
        return rows

    def add(self, seq: int, frame: bytes, route: bytes | None = None) -> None:
        """Keep an accepted item (committed when this returns); ``route``: the puller
        it goes to first, if known (a restarted pusher sends it there again: that
        puller recognises what it already did)."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("INSERT INTO item VALUES (?, ?, ?)", (seq, frame, route))
            db.execute("UPDATE stream SET next_seq = ? WHERE id = 0", (seq + 1,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def sent_to(self, pairs: Iterable[tuple[bytes, int]]) -> None:
        """Record the puller each item went to (``(route, seq)`` pairs), for items
        that waited in the queue before going out."""
        rows = list(pairs)
        if rows:
            db = self._db
            db.execute("BEGIN")
            db.executemany("UPDATE item SET route = ? WHERE seq = ?", rows)
            db.execute("COMMIT")

    def remove(self, seqs: Iterable[int]) -> None:
        """Forget items that are done (or given up)."""
        rows = [(s,) for s in seqs]
        if rows:
            db = self._db
            db.execute("BEGIN")
            db.executemany("DELETE FROM item WHERE seq = ?", rows)
            db.execute("COMMIT")

    def __len__(self) -> int:
        n: int = self._db.execute("SELECT count(*) FROM item").fetchone()[0]
        return n

    def close(self) -> None:
        self._db.close()
