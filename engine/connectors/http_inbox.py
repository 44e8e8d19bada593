"""The durable inbox of the HTTP connector: a local SQLite file that plays the change table.

One file per application (per host, port and base path), in WAL mode with ``synchronous =
FULL``: a change is on disk before it is acknowledged (a webhook answered 200, a poll
considered done). Every connector of the application (the reader, the writer, the
coordinator's short-lived one, in any process of this machine) opens the same file.

Tables (what must survive a restart, and nothing else):

- ``log_<capture>``: the change table, read exactly like the SQLite connector's:
  ``seq INTEGER PRIMARY KEY AUTOINCREMENT`` (never reused), ``op``, ``at_ms`` and the old and
  new images (canonical value tuples, msgpack-encoded with `engine.codec.pack`).
- ``captures``: each prepared capture (its entity, columns, key and types, so a webhook
  arriving at another process can be decoded), the last fetch ticket whose listing was
  applied, and the ``since`` watermark.
- ``shadow``: per record, the last image the application was seen to hold (poll diffs
  against it; webhook events without an ``old`` image take it as their old image).
- ``written``: per record, our writes it has not reported back yet (`http_echo.Written`,
  oldest first), each recorded *before* its request is sent and marked with the fetch
  ticket at which its batch completed. It is how our own writes are recognised (echo
  suppression).
- ``receipts``: per (capture, writer), the number, position and refused records
  (``failures``, as `engine.connectors.base.pack_failures` spells them: NULL when none) of
  the last batch that writer completed with a `Receipt`, recorded in the transaction that
  marks the batch completed.
- ``clock``: one counter of fetch tickets. A poll takes a ticket before it fetches; a write
  batch takes one when it completes. So a listing whose ticket is above a write's knows it
  was fetched after that write landed.

What is a change and what is our echo is decided by `engine.connectors.http_echo`. A write's
*position* is the log head in the transaction that marks its batch completed: every change
logged up to it was reported before our write completed, and (by those rules) no change
reported after it could have happened before it landed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.codec import pack, unpack
from engine.connectors.base import (
    Capture,
    RawChange,
    WriteFailure,
    WriteReceipt,
    pack_failures,
    unpack_failures,
)
from engine.connectors.http_echo import Change, Written, decide

__all__ = ["Image", "Inbox", "key_bytes", "now_ms"]

BUSY_TIMEOUT_MS = 10_000

Image = tuple[Any, ...]
Log = list[tuple[str, int, bytes | None, bytes | None]]


def key_bytes(key: Sequence[Any]) -> bytes:
    return pack(list(key))


def log_table(name: str) -> str:
    return f'"log_{name}"'


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Inbox:
    """The inbox file of one application; every method is one short transaction.

    Thread-safe (one connection behind a lock); other processes share the file through
    SQLite's locking.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        con = sqlite3.connect(
            str(path),
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")  # durable before acknowledged
        self._con = con
        with self._write() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS clock "
                "(id INTEGER PRIMARY KEY CHECK (id = 1), ticket INTEGER NOT NULL)"
            )
            c.execute("INSERT OR IGNORE INTO clock (id, ticket) VALUES (1, 0)")
            c.execute(
                "CREATE TABLE IF NOT EXISTS captures (name TEXT PRIMARY KEY, spec BLOB NOT NULL,"
                " applied INTEGER NOT NULL DEFAULT 0, watermark BLOB)"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS shadow (capture TEXT NOT NULL, key BLOB NOT NULL,"
                " image BLOB NOT NULL, PRIMARY KEY (capture, key)) WITHOUT ROWID"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS written (capture TEXT NOT NULL, key BLOB NOT NULL,"
                " pending BLOB NOT NULL, PRIMARY KEY (capture, key)) WITHOUT ROWID"
            )
            c.execute(
                "CREATE TABLE IF NOT EXISTS receipts (capture TEXT NOT NULL, writer TEXT NOT NULL,"
                " number INTEGER NOT NULL, position INTEGER NOT NULL, failures TEXT,"
                " PRIMARY KEY (capture, writer)) WITHOUT ROWID"
            )
            if "failures" not in {r[1] for r in c.execute("PRAGMA table_info(receipts)")}:
                c.execute("ALTER TABLE receipts ADD COLUMN failures TEXT")  # an older inbox

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # -- transactions --------------------------------------------------------------------

    class _Txn:
        def __init__(self, inbox: Inbox) -> None:
            self.inbox = inbox

        def __enter__(self) -> sqlite3.Connection:
            self.inbox._lock.acquire()
            try:
                self.inbox._con.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.inbox._lock.release()
                raise
            return self.inbox._con

        def __exit__(self, kind: Any, *_: Any) -> None:
            con = self.inbox._con
            try:
                if kind is None:
                    con.execute("COMMIT")
                elif con.in_transaction:
                    con.execute("ROLLBACK")
            finally:
                self.inbox._lock.release()

    def _write(self) -> Inbox._Txn:
        return Inbox._Txn(self)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._con.execute(sql, params).fetchall()

    # -- captures ------------------------------------------------------------------------

    def prepare(self, capture: Capture) -> bool:
        """Register ``capture`` (idempotent). True while it has no baseline (it is new, its
        columns changed, or no listing was applied yet): the caller then takes one."""
        spec = pack([capture.entity, list(capture.columns), list(capture.key), list(capture.types)])
        with self._write() as c:
            row = c.execute("SELECT spec FROM captures WHERE name = ?", (capture.name,)).fetchone()
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {log_table(capture.name)} (seq INTEGER PRIMARY KEY"
                " AUTOINCREMENT, op TEXT NOT NULL, at_ms INTEGER NOT NULL, old BLOB, new BLOB)"
            )
            if row is not None and unpack(row[0])[:3] == unpack(spec)[:3]:
                if row[0] != spec:
                    c.execute("UPDATE captures SET spec = ? WHERE name = ?", (spec, capture.name))
                applied = _one(c, "SELECT applied FROM captures WHERE name = ?", capture.name)
                return bool(applied == 0)
            c.execute(
                "INSERT INTO captures (name, spec) VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                " SET spec = excluded.spec, applied = 0, watermark = NULL",
                (capture.name, spec),
            )
            c.execute("DELETE FROM shadow WHERE capture = ?", (capture.name,))
            c.execute("DELETE FROM written WHERE capture = ?", (capture.name,))
            return True

    def release(self, name: str) -> None:
        with self._write() as c:
            c.execute(f"DROP TABLE IF EXISTS {log_table(name)}")
            c.execute("DELETE FROM captures WHERE name = ?", (name,))
            c.execute("DELETE FROM shadow WHERE capture = ?", (name,))
            c.execute("DELETE FROM written WHERE capture = ?", (name,))
            c.execute("DELETE FROM receipts WHERE capture = ?", (name,))

    def capture(self, name: str) -> Capture | None:
        """A capture prepared by any connector of this inbox, by name."""
        rows = self._read("SELECT spec FROM captures WHERE name = ?", (name,))
        if not rows:
            return None
        entity, columns, key, types = unpack(rows[0][0])
        return Capture(name, entity, tuple(columns), tuple(key), tuple(types))

    def last_receipt(self, name: str, writer: str) -> WriteReceipt | None:
        rows = self._read(
            "SELECT number, position, failures FROM receipts WHERE capture = ? AND writer = ?",
            (name, writer),
        )
        if not rows:
            return None
        number, position, failures = rows[0]
        return WriteReceipt(int(number), int(position), unpack_failures(failures))

    def watermark(self, name: str) -> Any:
        rows = self._read("SELECT watermark FROM captures WHERE name = ?", (name,))
        return unpack(rows[0][0]) if rows and rows[0][0] is not None else None

    # -- the change table ----------------------------------------------------------------

    def head(self, name: str) -> int:
        with self._lock:
            return _head(self._con, name)

    def read_changes(self, name: str, after: int, limit: int) -> list[RawChange]:
        rows = self._read(
            f"SELECT seq, op, at_ms, old, new FROM {log_table(name)} "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        )
        return [
            RawChange(
                seq,
                op,
                at,
                None if old is None else tuple(unpack(old)),
                None if new is None else tuple(unpack(new)),
            )
            for seq, op, at, old, new in rows
        ]

    def ack(self, name: str, upto: int) -> None:
        with self._write() as c:
            c.execute(f"DELETE FROM {log_table(name)} WHERE seq <= ?", (upto,))

    # -- polls ---------------------------------------------------------------------------

    def take_ticket(self) -> int:
        with self._write() as c:
            c.execute("UPDATE clock SET ticket = ticket + 1 WHERE id = 1")
            return int(c.execute("SELECT ticket FROM clock WHERE id = 1").fetchone()[0])

    def apply_listing(
        self,
        name: str,
        ticket: int,
        listing: dict[bytes, Image],
        *,
        complete: bool,
        at_ms: int,
        watermark: Any = None,
    ) -> int | None:
        """Diff a listing fetched with ``ticket`` against the shadow and log the changes.

        ``complete``: the listing holds every record (records missing from it are gone).
        The first listing applied to a capture is its baseline: what exists when capture
        starts is not a change (the shadow becomes the listing; nothing is logged).
        Returns the log head after it; None if the listing is stale (one fetched later was
        applied already): nothing is done. KeyError if the capture was released.
        """
        with self._write() as c:
            row = c.execute("SELECT applied, spec FROM captures WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyError(name)
            if row[0] > ticket:
                return None
            width = len(unpack(row[1])[1])
            if row[0] == 0:  # the baseline
                c.execute("DELETE FROM shadow WHERE capture = ?", (name,))
                c.executemany(
                    "INSERT INTO shadow (capture, key, image) VALUES (?, ?, ?)",
                    [(name, k, pack(list(image))) for k, image in listing.items()],
                )
                c.execute(
                    "UPDATE captures SET applied = ?, watermark = ? WHERE name = ?",
                    (ticket, None if watermark is None else pack(watermark), name),
                )
                return _head(c, name)
            shadow = dict(
                c.execute("SELECT key, image FROM shadow WHERE capture = ?", (name,)).fetchall()
            )
            written = dict(
                c.execute("SELECT key, pending FROM written WHERE capture = ?", (name,)).fetchall()
            )
            keys = list(listing)
            if complete:  # and the records gone from it
                keys += [k for k in shadow if k not in listing]
                keys += [k for k in written if k not in listing and k not in shadow]
            now = now_ms()
            logs: Log = []
            for k in keys:
                cur = listing.get(k)
                packed = shadow.get(k)
                pending = _pending(written.get(k))
                if not pending and cur is not None and packed == pack(list(cur)):
                    continue  # unchanged: the hot path of a poll
                prev = None if packed is None else tuple(unpack(packed))
                change, follow, left = decide(
                    prev, cur, pending, width=width, now_ms=now, ticket=ticket
                )
                self._record(c, name, k, cur, change, follow, pending, left, at_ms, logs)
            self._log(c, name, logs)
            c.execute(
                "UPDATE captures SET applied = ?, watermark = coalesce(?, watermark)"
                " WHERE name = ?",
                (ticket, None if watermark is None else pack(watermark), name),
            )
            return _head(c, name)

    # -- webhook events ------------------------------------------------------------------

    def apply_events(
        self,
        name: str,
        events: Sequence[tuple[bytes, Image | None, Image | None, Image | None, int]],
    ) -> int:
        """Log webhook events, in order: ``(key, record image or None if deleted, the
        event's old image or None, a fallback old image or None, at_ms)``. Returns the log
        head after them."""
        with self._write() as c:
            row = c.execute("SELECT spec FROM captures WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise KeyError(name)
            width = len(unpack(row[0])[1])
            now = now_ms()
            for k, cur, old, fallback, at in events:
                packed = _one(c, "SELECT image FROM shadow WHERE capture = ? AND key = ?", name, k)
                prev = None if packed is None else tuple(unpack(packed))
                pending = _pending(
                    _one(c, "SELECT pending FROM written WHERE capture = ? AND key = ?", name, k)
                )
                change, follow, left = decide(
                    prev, cur, pending, width=width, now_ms=now, old=old, fallback=fallback
                )
                logs: Log = []
                self._record(c, name, k, cur, change, follow, pending, left, at, logs)
                self._log(c, name, logs)
            return _head(c, name)

    # -- writes --------------------------------------------------------------------------

    def begin_write(
        self,
        name: str,
        batch: str,
        entries: Sequence[tuple[bytes, str, dict[int, Any] | None]],
    ) -> list[bytes]:
        """Record what batch ``batch`` is about to write, before it is sent: ``(key, op,
        values)`` in the order the writes happen (values None for a delete; a record may be
        written twice: deleted by a move, then created). Returns, per entry, what its record
        was known to hold before (its shadow image and our writes still pending, packed):
        part of the keys that make a request idempotent yet new for a later write of the
        same values."""
        out: list[bytes] = []
        now = now_ms()
        with self._write() as c:
            for n, (k, op, values) in enumerate(entries):
                shadow = _one(c, "SELECT image FROM shadow WHERE capture = ? AND key = ?", name, k)
                packed = _one(
                    c, "SELECT pending FROM written WHERE capture = ? AND key = ?", name, k
                )
                out.append(pack([shadow, packed]))
                pending = _pending(packed)
                pending.append(Written(op, values, None, now, _tag(batch, n)))
                _store(c, name, k, pending)
        return out

    def finish_write(
        self,
        name: str,
        batch: str,
        outcomes: Sequence[tuple[bytes, bool]],
        receipt: tuple[str, int] | None = None,
        failures: Sequence[WriteFailure] = (),
    ) -> int:
        """Mark batch ``batch`` completed: per entry of `begin_write`, in its order, ``(key,
        landed)``: landed, the record holds what we wrote; else it was not written (refused,
        gone, or unknown). With ``receipt`` (writer, number), record it at the position with
        ``failures``, the batch's refused records. Returns the write's position: the log head
        now."""
        now = now_ms()
        with self._write() as c:
            c.execute("UPDATE clock SET ticket = ticket + 1 WHERE id = 1")
            done = int(c.execute("SELECT ticket FROM clock WHERE id = 1").fetchone()[0])
            for n, (k, hit) in enumerate(outcomes):
                tag = _tag(batch, n)
                pending = _pending(
                    _one(c, "SELECT pending FROM written WHERE capture = ? AND key = ?", name, k)
                )
                if hit:
                    pending = [
                        w._replace(done=done, at_ms=now) if w.batch == tag else w for w in pending
                    ]
                else:
                    pending = [w for w in pending if w.batch != tag]
                _store(c, name, k, pending)
            position = _head(c, name)
            if receipt is not None:
                c.execute(
                    "INSERT INTO receipts (capture, writer, number, position, failures)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (capture, writer) DO UPDATE SET"
                    " number = excluded.number, position = excluded.position,"
                    " failures = excluded.failures",
                    (name, *receipt, position, pack_failures(failures)),
                )
            return position

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _record(
        c: sqlite3.Connection,
        name: str,
        k: bytes,
        cur: Image | None,
        change: Change | None,
        follow: bool,
        pending: list[Written],
        left: list[Written],
        at_ms: int,
        logs: Log,
    ) -> None:
        if change is not None:
            logs.append(
                (
                    change.op,
                    at_ms,
                    None if change.old is None else pack(list(change.old)),
                    None if change.new is None else pack(list(change.new)),
                )
            )
        if follow:
            if cur is None:
                c.execute("DELETE FROM shadow WHERE capture = ? AND key = ?", (name, k))
            else:
                c.execute(
                    "INSERT INTO shadow (capture, key, image) VALUES (?, ?, ?) ON CONFLICT"
                    " (capture, key) DO UPDATE SET image = excluded.image",
                    (name, k, pack(list(cur))),
                )
        if left != pending:
            _store(c, name, k, left)

    @staticmethod
    def _log(c: sqlite3.Connection, name: str, logs: Log) -> None:
        if logs:
            c.executemany(
                f"INSERT INTO {log_table(name)} (op, at_ms, old, new) VALUES (?, ?, ?, ?)", logs
            )


def _tag(batch: str, entry: int) -> str:
    """The batch tag of one write (`Written.batch`): its batch and its place in it."""
    return f"{batch}/{entry}"


def _pending(packed: bytes | None) -> list[Written]:
    if packed is None:
        return []
    return [Written(op, v, done, at, b) for op, v, done, at, b in unpack(packed)]


def _store(c: sqlite3.Connection, name: str, k: bytes, pending: list[Written]) -> None:
    if not pending:
        c.execute("DELETE FROM written WHERE capture = ? AND key = ?", (name, k))
        return
    c.execute(
        "INSERT INTO written (capture, key, pending) VALUES (?, ?, ?) ON CONFLICT (capture, key)"
        " DO UPDATE SET pending = excluded.pending",
        (name, k, pack([list(w) for w in pending])),
    )


def _one(c: sqlite3.Connection, sql: str, *params: Any) -> Any:
    row = c.execute(sql, params).fetchone()
    return None if row is None else row[0]


def _head(c: sqlite3.Connection, name: str) -> int:
    # NOTE: SQLite creates sqlite_sequence with the first AUTOINCREMENT table of the file.
    if c.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() is None:
        return 0
    row = c.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (f"log_{name}",)).fetchone()
    return int(row[0]) if row else 0
