"""SQLite connector: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

Change capture: per captured entity, three triggers write every insert, update and delete
into a change table ``_ds_log_<capture>`` (an AUTOINCREMENT sequence, so a sequence number is
never reused; the commit time in ms; the old and new values of the captured columns, one
table column each, so values keep their SQLite types). Updates that change none of the
captured columns are not logged.

Upserts: ``REPLACE`` (and ``INSERT OR REPLACE``, ``UPDATE OR REPLACE``, a ``UNIQUE ... ON
CONFLICT REPLACE`` constraint) deletes the rows the new row collides with, and SQLite fires no
delete trigger for them unless ``recursive_triggers`` is on. So BEFORE INSERT (and BEFORE
UPDATE of a key or unique column) a trigger copies the rows holding NEW's value on the
capture key or on any UNIQUE index of plain columns (under that index's collation) into
``_ds_pend_<capture>``; the AFTER trigger logs as a delete each of them that is gone (by
rowid, or by exact key in a WITHOUT ROWID table), before the change itself, and an insert at
a key whose row it replaced as an update of that row (nothing when no captured value
changed). Copying more rows than collide is harmless: only rows gone afterwards are logged.
``INSERT ... ON CONFLICT DO UPDATE`` fires the update triggers. With ``recursive_triggers`` on,
the delete trigger logs the deleted rows itself and takes them out of the pending table.
Not seen: a row displaced through a unique index on an expression.

Echo suppression: the engine's write transaction sets a flag in the table ``_ds_session``
(one row per capture) and resets it before commit, so other connections only ever see it
unset. The triggers log nothing while it is set: our own writes never come back as changes.
Inside that transaction, which holds SQLite's write lock, the writer reads the change log's
last sequence: every change up to it committed before our write and every later one after,
which tells the engine exactly where its write landed in the application's history.

Writes: one transaction per batch, one ``executemany`` per kind and column set: deletes
first, then moves in the order given, then updates and upserts (``INSERT ... ON CONFLICT DO
UPDATE``). A move (``M``) is ``UPDATE <entity> SET <key and every given column> WHERE <key> =
<old key>``: a real update of the key; no row at the old key updates nothing; a row at the
new key already is a UNIQUE failure of that record. NOTE: SQLite enforces foreign keys only
on connections that turn them on (``PRAGMA foreign_keys``, off by default), so a batch
holding moves is written with them on: ON UPDATE CASCADE foreign keys follow, and a write
the declared foreign keys forbid (a parent with children and no ON UPDATE action) is a
failure of that record. Other batches keep the connection's setting (off). A refused record
is found by writing the batch again record by record, only on that failure path (one
refused on a UNIQUE constraint is tried again after the rest, while that helps: another
record of the batch may free its value) (a value
the driver cannot bind, such as an integer past 64 bits, is named by its column). A value
SQLite would store changed (NaN as NULL, a decimal rounded to a double...: see
`engine.connectors.sqlite_types.writer`) is refused before writing, naming its column.

Receipts: the table ``_ds_receipts (capture, writer, number, position, failures)``, keyed by
(capture, writer), in the application's file next to the change tables (created by
`prepare`, which adds ``failures`` to a table made before it existed). A batch with a
`Receipt` upserts its row in the batch's own transaction, after its writes, once its refused
records are known: one statement, committed if and only if the batch is. ``failures`` holds
them as `base.pack_failures` spells them (NULL when there are none).

The database is put in WAL mode so other programs keep reading and writing while the engine
runs; every connection waits up to ``busy_timeout`` for the write lock.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.connectors.base import (
    OP_ORDER,
    Capture,
    Column,
    Connector,
    EntitySchema,
    RawChange,
    Receipt,
    WriteFailure,
    WriteOp,
    WriteReceipt,
    WriteResult,
    move_problem,
    pack_failures,
    shown,
    unpack_failures,
)
from engine.connectors.keyrules import sqlite_rule
from engine.connectors.sqlite_types import READ, Refused, canonical_of, writer
from engine.errors import AppError, ConnectorError
from engine.values import Convert, has_utf8, lenient

__all__ = ["SqliteConnector", "sqlite_path"]

SESSION = "_ds_session"
RECEIPTS = "_ds_receipts"
BUSY_TIMEOUT_MS = 10_000
POLL_INTERVAL = 0.004  # seconds between looks at the change table while waiting
NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
CAPTURE_TRIGGERS = (
    "before_insert",
    "insert",
    "before_update",
    "update",
    "delete",
)  # _ds_<capture>_<event>, made by `prepare`


def q(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def sqlite_path(url: str) -> Path:
    """The database file of a ``sqlite:///...`` URL (relative paths stay relative)."""
    if not url.startswith("sqlite:///"):
        raise AppError(None, f"expected a URL like sqlite:///path/to/file.db, found {url!r}")
    path = url[len("sqlite:///") :]
    if not path or path == ":memory:":
        raise AppError(None, f"{url!r} names no database file (in-memory databases can't sync)")
    return Path(path)


def log_table(capture: Capture) -> str:
    return f"_ds_log_{capture.name}"


def pend_table(capture: Capture) -> str:
    """Rows an application's statement may displace, kept between its BEFORE and AFTER
    triggers (see "Upserts" in the module docstring)."""
    return f"_ds_pend_{capture.name}"


def _unique(exc: Exception) -> bool:
    """A write refused on a UNIQUE or PRIMARY KEY constraint."""
    return getattr(exc, "sqlite_errorcode", None) in (1555, 2067)  # SQLITE_CONSTRAINT_*


def _has_rowid(con: sqlite3.Connection, entity: str) -> bool:
    try:
        con.execute(f"SELECT rowid FROM {q(entity)} LIMIT 0")
    except sqlite3.OperationalError:
        return False  # WITHOUT ROWID
    return True


def _unique_sets(
    con: sqlite3.Connection, entity: str, key: Sequence[str]
) -> list[list[tuple[str, str]]]:
    """The column sets a new row can collide on, (column, collation) each: the capture key
    (compared under its columns' own collations) and every UNIQUE index or constraint on
    plain columns (compared under the index's collations; an index on expressions is left
    out: a row it displaces is not seen, see the module docstring)."""
    sets: list[list[tuple[str, str]]] = [[(c, "") for c in key]]
    for index in con.execute(f"PRAGMA index_list({q(entity)})").fetchall():
        if not index[2]:
            continue
        info = [r for r in con.execute(f"PRAGMA index_xinfo({q(index[1])})") if r[5]]
        if any(r[1] < 0 for r in info):
            continue
        sets.append([(r[2], r[4]) for r in info])
    return sets


def connect(path: Path | str) -> sqlite3.Connection:
    con = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = con.execute("PRAGMA journal_mode").fetchone()[0]
    if mode.lower() != "wal":
        con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    return con


# Errors that concern one record (a constraint, a value the column refuses), not the batch.
ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,  # an integer past 64 bits
    UnicodeEncodeError,  # a lone surrogate in text
)

_COLUMN_IN_ERROR = (
    re.compile(r"constraint failed: [^.\s]+\.([^\s,]+)"),
    re.compile(r"column [^.\s]+\.([^\s,]+)"),
)


class SqliteConnector(Connector):
    def __init__(self, app: str, url: str) -> None:
        super().__init__(app, url)
        try:
            self.path = sqlite_path(url)
        except AppError as exc:
            raise AppError(app, exc.problem) from None
        if not self.path.parent.exists():
            raise AppError(app, f"directory {self.path.parent} of {url!r} does not exist")
        self._lock = threading.RLock()
        self._con = self._guard(None, "open", lambda: connect(self.path))
        self._collations: dict[str, list[tuple[str, str]]] = {}  # per capture, see _key_collations
        # per capture: (read conversions, write conversions) by column, None where none,
        # and the declared types (for messages)
        self._codecs: dict[str, tuple[list[Convert | None], list[Convert | None], list[str]]] = {}

    @classmethod
    def check(cls, app: str, url: str) -> None:
        """The file must exist and be a SQLite database: a typo'd path is refused rather
        than created empty (create the database, with its tables, first)."""
        try:
            path = sqlite_path(url)
        except AppError as exc:
            raise AppError(app, exc.problem) from None
        if not path.parent.is_dir():
            raise AppError(app, f"directory {path.parent} of {url!r} does not exist")
        if not path.is_file():
            raise AppError(app, f"database file {path} does not exist (create it first)")
        try:
            con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10)
            try:
                con.execute("PRAGMA schema_version").fetchone()
            finally:
                con.close()
        except sqlite3.Error as exc:
            raise AppError(app, f"{path} cannot be used as a SQLite database: {exc}") from None

    # -- helpers -------------------------------------------------------------------------

    def _guard(self, entity: str | None, what: str, fn: Any) -> Any:
        try:
            return fn()
        except sqlite3.Error as exc:
            raise ConnectorError(self.app, entity, f"{what} failed: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # -- schema --------------------------------------------------------------------------

    def describe(self, entity: str) -> EntitySchema | None:
        def run() -> EntitySchema | None:
            con = self._con
            rows = con.execute(f"PRAGMA table_info({q(entity)})").fetchall()
            if not rows:
                return None
            pk = tuple(r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5]))
            # NOTE: SQLite lets a primary key hold NULL unless declared NOT NULL, except an
            # INTEGER PRIMARY KEY (the rowid).
            rowid = {
                r[1] for r in rows if r[5] and len(pk) == 1 and (r[2] or "").upper() == "INTEGER"
            }
            columns = {
                name: Column(name, ctype or "", not notnull and name not in rowid, dflt is not None)
                for _cid, name, ctype, notnull, dflt, _pk in rows
            }
            unique: list[tuple[str, ...]] = []
            if pk:
                unique.append(pk)
            for _seq, index, is_unique, _origin, partial in con.execute(
                f"PRAGMA index_list({q(entity)})"
            ):
                if is_unique and not partial:
                    info = [
                        (r[2], r[4])
                        for r in con.execute(f"PRAGMA index_xinfo({q(index)})")
                        if r[5]  # a key column, not the rowid the index carries
                    ]
                    cols = tuple(name for name, _ in info)
                    # an index on an expression names no column: it cannot key an upsert
                    if cols and None not in cols and cols not in unique:
                        unique.append(cols)
                    for name, coll in info:  # the index's collation decides what collides
                        rule = sqlite_rule(coll)
                        if name in columns and rule and columns[name].compare is None:
                            columns[name] = columns[name]._replace(compare=rule)
            return EntitySchema(entity, columns, tuple(unique))

        with self._lock:
            return self._guard(entity, "describe", run)  # type: ignore[no-any-return]

    def _codec(
        self, capture: Capture
    ) -> tuple[list[Convert | None], list[Convert | None], list[str]]:
        """How each captured column's values become canonical and back (cached; the writes
        raise `Refused` for a value the column would change), and its declared type."""
        codec = self._codecs.get(capture.name)
        if codec is None:
            schema = self.describe(capture.entity)
            reads: list[Convert | None] = []
            writes: list[Convert | None] = []
            types: list[str] = []
            columns = schema.columns if schema else {}
            for i, column in enumerate(capture.columns):
                declared = columns[column].type if column in columns else ""
                kind = capture.type_of(i) or canonical_of(declared)
                read = READ.get(kind or "")
                reads.append(lenient(read) if read else None)
                writes.append(writer(kind, declared))
                types.append(declared)
            codec = self._codecs[capture.name] = (reads, writes, types)
        return codec

    def _reader(self, capture: Capture) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        """A function turning a stored row of ``capture`` into canonical values."""
        converted = [(i, f) for i, f in enumerate(self._codec(capture)[0]) if f is not None]
        if not converted:
            return lambda values: values

        def image(values: tuple[Any, ...]) -> tuple[Any, ...]:
            out = list(values)
            for i, convert in converted:
                out[i] = convert(out[i])
            return tuple(out)

        return image

    # -- capture -------------------------------------------------------------------------

    def prepare(self, capture: Capture) -> None:
        log, pend = log_table(capture), pend_table(capture)
        entity = capture.entity
        ours = f"(SELECT writing FROM {SESSION} WHERE name = '{capture.name}') = 0"
        cols = capture.columns
        changed = " OR ".join(f"OLD.{q(c)} IS NOT NEW.{q(c)}" for c in cols)
        olds = ", ".join(q("o:" + c) for c in cols)
        news = ", ".join(q("n:" + c) for c in cols)
        key = [cols[i] for i in capture.key_index]

        def same_key(row: str, p: str = "p.") -> str:  # pend row p holds the key of ``row``
            return " AND ".join(f"{p}{q('o:' + c)} IS {row}.{q(c)}" for c in key)

        def trigger(name: str, event: str, when: str, body: list[str]) -> str:
            return (
                f"CREATE TRIGGER {q(f'_ds_{capture.name}_{name}')} {event} ON {q(entity)}"
                f" WHEN {when} BEGIN {' '.join(sql + ';' for sql in body)} END"
            )

        def run() -> None:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                rowid = _has_rowid(con, entity)
                uniques = _unique_sets(con, entity, key)
                ucols = sorted({c for cs in uniques for c, _ in cs})
                moved = " OR ".join(f"OLD.{q(c)} IS NOT NEW.{q(c)}" for c in ucols)
                rid = "rowid" if rowid else "NULL"
                # Rows an upsert may displace: those holding NEW's value on a unique index
                # (more is harmless: only rows gone afterwards are logged).
                candidates = " UNION ".join(
                    f"SELECT {rid}, {', '.join(q(c) for c in cols)} FROM {q(entity)} WHERE "
                    + " AND ".join(
                        f"{q(c)} = NEW.{q(c)}" + (f" COLLATE {coll}" if coll else "")
                        for c, coll in cs
                    )
                    for cs in uniques
                )
                if rowid:
                    gone = (
                        f"(p.rid = NEW.rowid OR NOT EXISTS"
                        f" (SELECT 1 FROM {q(entity)} WHERE rowid = p.rid))"
                    )
                    itself = "p.rid IS OLD.rowid"
                    dropped = "rid = OLD.rowid"
                else:
                    exact = " AND ".join(f"{q(c)} = p.{q('o:' + c)} COLLATE BINARY" for c in key)
                    gone = f"NOT EXISTS (SELECT 1 FROM {q(entity)} WHERE {exact})"
                    itself = same_key("OLD")
                    dropped = same_key("OLD", "")
                gather = [
                    f"DELETE FROM {q(pend)}",
                    f"INSERT INTO {q(pend)} (rid, {olds}) {candidates}",
                ]
                displaced = (
                    f"INSERT INTO {q(log)} (op, at_ms, {olds}) SELECT 'D', {NOW_MS}, "
                    + ", ".join(f"p.{q('o:' + c)}" for c in cols)
                    + f" FROM {q(pend)} p WHERE "
                )
                new_cols = ", ".join(f"NEW.{q(c)}" for c in cols)
                old_cols = ", ".join(f"OLD.{q(c)}" for c in cols)
                p_changed = " OR ".join(f"p.{q('o:' + c)} IS NOT NEW.{q(c)}" for c in cols)
                triggers = [
                    trigger("before_insert", "BEFORE INSERT", ours, gather),
                    trigger(
                        "insert",
                        "AFTER INSERT",
                        ours,
                        [
                            displaced + f"NOT ({same_key('NEW')}) AND {gone} ORDER BY p.seq",
                            # the row at NEW's key before the statement, if any: an update
                            f"INSERT INTO {q(log)} (op, at_ms, {olds}, {news}) SELECT CASE WHEN"
                            f" p.seq IS NULL THEN 'I' ELSE 'U' END, {NOW_MS}, "
                            + ", ".join(f"p.{q('o:' + c)}" for c in cols)
                            + f", {new_cols} FROM (SELECT 1) LEFT JOIN {q(pend)} p ON"
                            f" {same_key('NEW')} WHERE p.seq IS NULL OR {p_changed}",
                            f"DELETE FROM {q(pend)}",
                        ],
                    ),
                    trigger(
                        "before_update",
                        f"BEFORE UPDATE OF {', '.join(q(c) for c in ucols)}",
                        f"{ours} AND ({moved})",
                        gather,
                    ),
                    trigger(
                        "update",
                        "AFTER UPDATE",
                        ours,
                        [
                            displaced
                            + f"({moved}) AND NOT ({itself}) AND"
                            + (f" {gone}" if rowid else f" ({same_key('NEW')} OR {gone})")
                            + " ORDER BY p.seq",
                            f"INSERT INTO {q(log)} (op, at_ms, {olds}, {news}) SELECT 'U',"
                            f" {NOW_MS}, {old_cols}, {new_cols} WHERE {changed}",
                        ],
                    ),
                    trigger(
                        "delete",
                        "AFTER DELETE",
                        ours,
                        [
                            f"INSERT INTO {q(log)} (op, at_ms, {olds}) VALUES ('D', {NOW_MS},"
                            f" {old_cols})",
                            # a row a REPLACE deletes with recursive_triggers on: logged here
                            f"DELETE FROM {q(pend)} WHERE {dropped}",
                        ],
                    ),
                ]
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {SESSION} "
                    "(name TEXT PRIMARY KEY, writing INTEGER NOT NULL DEFAULT 0)"
                )
                con.execute(
                    f"INSERT OR IGNORE INTO {SESSION} (name, writing) VALUES (?, 0)",
                    (capture.name,),
                )
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {RECEIPTS} (capture TEXT NOT NULL, writer TEXT"
                    " NOT NULL, number INTEGER NOT NULL, position INTEGER NOT NULL,"
                    " failures TEXT, PRIMARY KEY (capture, writer)) WITHOUT ROWID"
                )
                if "failures" not in {r[1] for r in con.execute(f"PRAGMA table_info({RECEIPTS})")}:
                    con.execute(f"ALTER TABLE {RECEIPTS} ADD COLUMN failures TEXT")
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {q(log)} (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                    " op TEXT NOT NULL, at_ms INTEGER NOT NULL)"
                )
                have = {r[1] for r in con.execute(f"PRAGMA table_info({q(log)})")}
                for col in cols:
                    for prefix in ("o:", "n:"):
                        if prefix + col not in have:
                            con.execute(f"ALTER TABLE {q(log)} ADD COLUMN {q(prefix + col)}")
                con.execute(f"DROP TABLE IF EXISTS {q(pend)}")
                con.execute(
                    f"CREATE TABLE {q(pend)} (seq INTEGER PRIMARY KEY, rid INTEGER, {olds})"
                )
                self._drop_triggers(con, capture)
                for sql in triggers:
                    con.execute(sql)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

        with self._lock:
            self._guard(entity, "installing change capture", run)

    @staticmethod
    def _drop_triggers(con: sqlite3.Connection, capture: Capture) -> None:
        prefix = f"_ds_{capture.name}_"
        for (name,) in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
            (len(prefix), prefix),
        ).fetchall():
            con.execute(f"DROP TRIGGER {q(name)}")

    def release(self, capture: Capture) -> None:
        def run() -> None:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            self._drop_triggers(con, capture)
            con.execute(f"DROP TABLE IF EXISTS {q(log_table(capture))}")
            con.execute(f"DROP TABLE IF EXISTS {q(pend_table(capture))}")
            if con.execute(f"SELECT 1 FROM sqlite_master WHERE name = '{SESSION}'").fetchone():
                con.execute(f"DELETE FROM {SESSION} WHERE name = ?", (capture.name,))
            if _has_receipts(con):
                con.execute(f"DELETE FROM {RECEIPTS} WHERE capture = ?", (capture.name,))
            con.execute("COMMIT")

        with self._lock:
            self._guard(capture.entity, "removing change capture", run)

    def capture_problem(self, capture: Capture) -> str | None:
        def run() -> str | None:
            con = self._con
            found = {
                name
                for (name,) in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
                    (capture.entity,),
                )
            }
            missing = [
                n for n in (f"_ds_{capture.name}_{e}" for e in CAPTURE_TRIGGERS) if n not in found
            ]
            log = log_table(capture)
            if not con.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (log,)).fetchone():
                return f"the change table {log} is missing"
            if missing:
                return f"the capture triggers {', '.join(missing)} on {capture.entity} are missing"
            return None

        with self._lock:
            problem: str | None = self._guard(capture.entity, "checking change capture", run)
            return problem

    def suspend(self, capture: Capture) -> None:
        def run() -> None:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                self._drop_triggers(con, capture)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

        with self._lock:
            self._guard(capture.entity, "suspending change capture", run)

    def recapture(self, capture: Capture, keys: Sequence[tuple[Any, ...]]) -> int:
        cols = capture.columns
        targets = ", ".join(q("n:" + c) for c in cols)
        where = " AND ".join(f"{q(c)} = ?" for c in capture.key)
        sql = (
            f"INSERT INTO {q(log_table(capture))} (op, at_ms, {targets}) SELECT 'I', {NOW_MS},"
            f" {', '.join(q(c) for c in cols)} FROM {q(capture.entity)} WHERE {where}"
        )
        write = self._codec(capture)[1]
        key_convert = [write[i] for i in capture.key_index]

        params = []
        for k in keys:
            try:
                params.append(
                    tuple(v if f is None else f(v) for f, v in zip(key_convert, k, strict=True))
                )
            except Refused:
                continue  # a key this column cannot hold is not a row of the table

        def run() -> int:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                before = con.total_changes
                con.executemany(sql, params)
                logged: int = con.total_changes - before
                con.execute("COMMIT")
                return logged
            except BaseException:
                con.execute("ROLLBACK")
                raise

        with self._lock:
            return int(self._guard(capture.entity, "recapturing rows", run))

    def head(self, capture: Capture) -> int:
        with self._lock:
            return int(
                self._guard(
                    capture.entity, "reading the change head", lambda: _head(self._con, capture)
                )
            )

    def snapshot(self, capture: Capture, chunk: int) -> tuple[int, Iterator[list[tuple[Any, ...]]]]:
        # A connection of its own, so one read transaction spans the head and every chunk
        # without holding the connector's lock while the caller ships the chunks.
        con = self._guard(capture.entity, "snapshot", lambda: connect(self.path))
        cols = ", ".join(q(c) for c in capture.columns)
        order = ", ".join(q(c) for c in capture.key)
        try:
            con.execute("BEGIN")
            head = _head(con, capture)
            cursor = con.execute(f"SELECT {cols} FROM {q(capture.entity)} ORDER BY {order}")
        except sqlite3.Error as exc:
            con.close()
            raise ConnectorError(self.app, capture.entity, f"snapshot failed: {exc}") from exc

        image = self._reader(capture)

        def chunks() -> Iterator[list[tuple[Any, ...]]]:
            try:
                while rows := cursor.fetchmany(chunk):
                    yield [image(row) for row in rows]
            except sqlite3.Error as exc:
                raise ConnectorError(self.app, capture.entity, f"snapshot failed: {exc}") from exc
            finally:
                con.close()

        return head, chunks()

    def read_changes(self, capture: Capture, after: int, limit: int) -> list[RawChange]:
        n = len(capture.columns)
        cols = ", ".join(
            [q("o:" + c) for c in capture.columns] + [q("n:" + c) for c in capture.columns]
        )
        sql = (
            f"SELECT seq, op, at_ms, {cols} FROM {q(log_table(capture))} "
            "WHERE seq > ? ORDER BY seq LIMIT ?"
        )

        image = self._reader(capture)
        make = tuple.__new__  # NOTE: not RawChange._make: a Python-level call less per change
        plain = not any(self._codec(capture)[0])  # no column needs converting
        mid = 3 + n

        def run() -> list[RawChange]:
            rows = self._con.execute(sql, (after, limit)).fetchall()
            if plain:
                # NOTE: the reader's hot path: slices of the row, no conversion call.
                return [
                    make(
                        RawChange,
                        (
                            row[0],
                            row[1],
                            row[2],
                            None if row[1] == "I" else row[3:mid],
                            None if row[1] == "D" else row[mid:],
                        ),
                    )
                    for row in rows
                ]
            out = []
            for row in rows:
                op = row[1]
                out.append(
                    RawChange(
                        row[0],
                        op,
                        row[2],
                        None if op == "I" else image(row[3:mid]),
                        None if op == "D" else image(row[mid:]),
                    )
                )
            return out

        with self._lock:
            return self._guard(capture.entity, "reading changes", run)  # type: ignore[no-any-return]

    def wait_for_changes(self, capture: Capture, after: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                # NOTE: one indexed lookup in sqlite_sequence: cheap enough to poll.
                head = self._guard(capture.entity, "polling", lambda: _head(self._con, capture))
            if head > after:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)

    def ack(self, capture: Capture, upto: int) -> None:
        sql = f"DELETE FROM {q(log_table(capture))} WHERE seq <= ?"
        with self._lock:
            self._guard(
                capture.entity, "trimming the change table", lambda: self._con.execute(sql, (upto,))
            )

    # -- writes --------------------------------------------------------------------------

    def apply(
        self, capture: Capture, ops: Sequence[WriteOp], receipt: Receipt | None = None
    ) -> WriteResult:
        self._check_receipt(capture, receipt)
        failures: list[WriteFailure] = []
        # (kind, columns, run) -> rows, written deletes first, then moves in the order given
        # (a new run where the columns change), then updates and upserts.
        groups: dict[tuple[str, tuple[int, ...], int], list[int]] = {}
        run_of_moves, last_move = 0, None
        key_index = capture.key_index
        _reads, writes, types = self._codec(capture)
        active = [(i, f) for i, f in enumerate(writes) if f is not None]
        keyed = any(writes[i] for i in key_index)
        stored = list(ops)  # the ops with their values as stored
        for i, op in enumerate(ops):
            if op.op == "M" and (problem := move_problem(capture, op)):
                failures.append(WriteFailure(i, None, problem))
                continue
            if active:
                converted = _stored(op, writes, active, key_index, keyed)
                if not isinstance(converted, WriteOp):
                    column, problem = converted
                    name, declared = capture.columns[column], types[column]
                    message = f"column {name!r}{f' ({declared})' if declared else ''}: {problem}"
                    failures.append(WriteFailure(i, name, message))
                    continue
                stored[i] = converted
            if op.op == "M":
                cols = tuple(sorted({*op.values, *key_index}))
                if cols != last_move:
                    run_of_moves, last_move = run_of_moves + 1, cols
                groups.setdefault(("M", cols, run_of_moves), []).append(i)
            else:
                # NOTE: grouped by the columns in the order given (the partitions give them
                # in field order): no sort per record.
                cols = () if op.op == "D" else tuple(op.values)
                groups.setdefault((op.op, cols, 0), []).append(i)
        ops = stored
        statements = [
            (
                self._write_sql(capture, kind, cols),
                indexes,
                self._params(capture, kind, cols, [ops[i] for i in indexes]),
            )
            # sorted() is stable: moves keep their order
            for (kind, cols, _), indexes in sorted(
                groups.items(), key=lambda g: OP_ORDER.get(g[0][0], OP_ORDER["I"])
            )
        ]
        record = (
            f"INSERT INTO {RECEIPTS} (capture, writer, number, position, failures)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (capture, writer) DO UPDATE SET"
            " number = excluded.number, position = excluded.position, failures = excluded.failures"
        )
        found_before = len(failures)
        position = 0
        moves = any(kind == "M" for kind, _, _ in groups)
        collations = self._key_collations(capture)

        def run(one_by_one: bool) -> None:
            nonlocal position
            del failures[found_before:]
            con = self._con
            # outside the transaction: the pragma does nothing inside one
            cascade = moves and not con.execute("PRAGMA foreign_keys").fetchone()[0]
            if cascade:
                con.execute("PRAGMA foreign_keys = ON")
            try:
                write(con, one_by_one)
            finally:
                if cascade:
                    con.execute("PRAGMA foreign_keys = OFF")

        def write(con: sqlite3.Connection, one_by_one: bool) -> None:
            nonlocal position
            con.execute("BEGIN IMMEDIATE")
            try:
                # We hold the write lock from here to COMMIT: the log's last sequence now is
                # exactly where our write lands in the application's history.
                position = _head(con, capture)
                con.execute(f"UPDATE {SESSION} SET writing = 1 WHERE name = ?", (capture.name,))
                taken = {f.row for f in failures}
                if collations:
                    clashes = _collisions(con, capture, ops, taken, collations, self.app)
                    failures.extend(clashes)
                    taken |= {f.row for f in clashes}
                refused: list[tuple[str, int, Any, Exception]] = []
                for sql, indexes, params in statements:
                    if taken & set(indexes):
                        kept = [
                            (i, p) for i, p in zip(indexes, params, strict=True) if i not in taken
                        ]
                        indexes, params = [i for i, _ in kept], [p for _, p in kept]
                    if not one_by_one:
                        con.executemany(sql, params)
                        continue
                    for index, row in zip(indexes, params, strict=True):
                        try:
                            con.execute(sql, row)
                        except ROW_ERRORS as exc:
                            # SQLite undid just this statement; the transaction goes on.
                            refused.append((sql, index, row, exc))
                # A record refused on a unique value that another record of the batch frees
                # later in it (a REPLACE moved the value from one row to another) is written
                # again after the rest, as long as that helps.
                while any(_unique(exc) for *_, exc in refused):
                    again, refused = refused, []
                    for sql, index, row, first in again:
                        if not _unique(first):
                            refused.append((sql, index, row, first))
                            continue
                        try:
                            con.execute(sql, row)
                        except ROW_ERRORS as exc2:
                            refused.append((sql, index, row, exc2))
                    if len(refused) == len(again):
                        break
                failures.extend(_failure(i, ops[i], capture, exc) for _, i, _, exc in refused)
                if receipt is not None:  # every refused record is known by now
                    packed = pack_failures(sorted(failures))
                    con.execute(
                        record, (capture.name, receipt.writer, receipt.number, position, packed)
                    )
                con.execute(f"UPDATE {SESSION} SET writing = 0 WHERE name = ?", (capture.name,))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise

        with self._lock:
            try:
                run(one_by_one=False)
            except ROW_ERRORS:
                # NOTE: only when a record is refused: redo the batch record by record, so
                # the refused ones are named and the rest is written.
                self._guard(capture.entity, "writing a batch", lambda: run(one_by_one=True))
            except sqlite3.Error as exc:
                raise ConnectorError(
                    self.app, capture.entity, f"writing a batch failed: {exc}"
                ) from exc
        return WriteResult(sorted(failures), position)

    def _key_collations(self, capture: Capture) -> list[tuple[str, str]]:
        """(collation, rule) per key column when one compares loosely (NOCASE, RTRIM), else
        []: then keys that collide under it are refused (see `_collisions`). Cached."""
        found = self._collations.get(capture.name)
        if found is None:
            schema = self.describe(capture.entity)
            rules = [schema.columns[k].compare if schema and k in schema.columns else None
                     for k in capture.key]  # fmt: skip
            found = []
            if any(rules):
                for rule in rules:
                    name = "NOCASE" if rule and "NOCASE" in rule else "RTRIM" if rule else "BINARY"
                    found.append((name, rule or "compares exactly"))
            self._collations[capture.name] = found
        return found

    def last_receipt(self, capture: Capture, writer: str) -> WriteReceipt | None:
        def run() -> WriteReceipt | None:
            con = self._con
            if not _has_receipts(con):
                return None  # never prepared
            row = con.execute(
                f"SELECT number, position, failures FROM {RECEIPTS}"
                " WHERE capture = ? AND writer = ?",
                (capture.name, writer),
            ).fetchone()
            if row is None:
                return None
            return WriteReceipt(int(row[0]), int(row[1]), unpack_failures(row[2]))

        with self._lock:
            return self._guard(capture.entity, "reading a receipt", run)  # type: ignore[no-any-return]

    def _write_sql(self, capture: Capture, kind: str, cols: tuple[int, ...]) -> str:
        table = q(capture.entity)
        where = " AND ".join(f"{q(k)} = ?" for k in capture.key)
        if kind == "D":
            return f"DELETE FROM {table} WHERE {where}"
        names = [capture.columns[i] for i in cols]
        if kind in ("U", "M"):  # a move sets the key too: ``cols`` holds it
            sets = ", ".join(f"{q(c)} = ?" for c in names)
            return f"UPDATE {table} SET {sets} WHERE {where}"
        keys = list(capture.key)
        insert_cols = keys + [c for c in names if c not in capture.key]
        updates = [c for c in names if c not in capture.key]
        action = (
            "DO UPDATE SET " + ", ".join(f"{q(c)} = excluded.{q(c)}" for c in updates)
            if updates
            else "DO NOTHING"
        )
        return (
            f"INSERT INTO {table} ({', '.join(q(c) for c in insert_cols)}) "
            f"VALUES ({', '.join('?' for _ in insert_cols)}) "
            f"ON CONFLICT ({', '.join(q(k) for k in keys)}) {action}"
        )

    @staticmethod
    def _params(
        capture: Capture, kind: str, cols: tuple[int, ...], ops: Sequence[WriteOp]
    ) -> list[tuple[Any, ...]]:
        """The statement parameters of ``ops`` (all of ``kind``, writing ``cols``)."""
        if kind == "D":
            return [op.key for op in ops]
        if kind == "U":
            # NOTE: the hot path of live sync. ``cols`` is the order of each op's values
            # (see `apply`).
            return [(*op.values.values(), *op.key) for op in ops]
        if kind == "M":
            out = []
            for op in ops:
                assert op.old is not None  # checked by `move_problem`
                new = {**op.values, **dict(zip(capture.key_index, op.key, strict=True))}
                out.append((*(new[i] for i in cols), *op.old))
            return out
        key_names = capture.key
        rest = [i for i in cols if capture.columns[i] not in key_names]
        return [(*op.key, *(op.values[i] for i in rest)) for op in ops]


def _has_receipts(con: sqlite3.Connection) -> bool:
    found = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (RECEIPTS,)
    ).fetchone()
    return found is not None


def _head(con: sqlite3.Connection, capture: Capture) -> int:
    row = con.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = ?", (log_table(capture),)
    ).fetchone()
    return int(row[0]) if row else 0


def _column_of(message: str, capture: Capture) -> str | None:
    for pattern in _COLUMN_IN_ERROR:
        m = pattern.search(message)
        if m and m.group(1) in capture.columns:
            return m.group(1)
    for col in capture.columns:
        if re.search(rf"\b{re.escape(col)}\b", message):
            return col
    return None


def _stored(
    op: WriteOp,
    writes: Sequence[Convert | None],
    active: Sequence[tuple[int, Convert]],
    key_index: tuple[int, ...],
    keyed: bool,
) -> WriteOp | tuple[int, str]:
    """``op`` with its values as they are stored (``op`` itself where none changes), or the
    column (its index) of the first value its column would not hold exactly, and why (see
    `sqlite_types.writer`). ``active``: the columns with a writer, and it; ``keyed``: a key
    column has one."""
    try:
        # NOTE: the hot path of live sync: most writers only check their values, so a new
        # op is made only where one changes.
        values = op.values
        changed: dict[int, Any] | None = None
        if len(values) < len(active):
            # (the usual update: a few values; look up each one's writer)
            for i, v in values.items():
                f = writes[i]
                if f is not None and v is not None and (w := f(v)) is not v:
                    if changed is None:
                        changed = dict(values)
                    changed[i] = w
        else:
            for i, f in active:
                v = values.get(i)
                if v is not None and (w := f(v)) is not v:
                    if changed is None:
                        changed = dict(values)
                    changed[i] = w
        key, old = op.key, op.old
        if keyed:
            key = _key_out(key, writes, key_index)
            if op.op == "M" and old is not None:
                old = _key_out(old, writes, key_index)
        if changed is None and key is op.key and old is op.old:
            return op
        return WriteOp(op.op, key, values if changed is None else changed, old)
    except Refused:
        # NOTE: only on this failure path: which value, one by one.
        moved = zip(key_index, op.old or (), strict=True) if op.op == "M" else ()
        for i, v in (*zip(key_index, op.key, strict=True), *op.values.items(), *moved):
            try:
                if f := writes[i]:
                    f(v)
            except Refused as exc:
                return i, str(exc)
        raise


def _key_out(
    key: tuple[Any, ...], writes: Sequence[Convert | None], key_index: tuple[int, ...]
) -> tuple[Any, ...]:
    """``key`` as stored (``key`` itself where no value changes)."""
    if len(key_index) == 1:  # NOTE: the hot path: one key column
        v = key[0]
        f = writes[key_index[0]]
        if v is None or f is None or (w := f(v)) is v:
            return key
        return (w,)
    out = key
    for n, i in enumerate(key_index):
        v = key[n]
        if v is not None and (f := writes[i]) is not None and (w := f(v)) is not v:
            if out is key:
                out = list(key)  # type: ignore[assignment]
            out[n] = w  # type: ignore[index]
    return tuple(out) if out is not key else key


def _failure(row: int, op: WriteOp, capture: Capture, exc: Exception) -> WriteFailure:
    """The failure of a record SQLite refused, naming the column its message names or else
    the value the driver could not bind (an integer past 64 bits, a lone surrogate...)."""
    message = str(exc)
    column = _column_of(message, capture)
    if column is not None:
        return WriteFailure(row, column, message, _unique(exc))
    key = zip(capture.key_index, op.key, strict=True)
    old = zip(capture.key_index, op.old or (), strict=True) if op.op == "M" else ()
    for i, v in (*key, *op.values.items(), *old):
        if isinstance(v, bool) or v is None or isinstance(v, (float, bytes)):
            continue
        if isinstance(v, int):
            if -(2**63) <= v < 2**63:
                continue
            found = f"expected a 64-bit integer, found {v}"
        elif isinstance(v, str):
            if has_utf8(v):
                continue
            found = f"expected Unicode text, found {shown(v)}: it has no UTF-8 form"
        else:
            found = f"expected a value SQLite can store, found a {type(v).__name__} value"
        name = capture.columns[i]
        return WriteFailure(row, name, f"column {name!r}: {found} ({message})")
    return WriteFailure(row, None, message)


def _collisions(
    con: sqlite3.Connection,
    capture: Capture,
    ops: Sequence[WriteOp],
    skip: set[int],
    collations: list[tuple[str, str]],
    app: str,
) -> list[WriteFailure]:
    """The ops of a batch whose key the table's collation takes for another record's: one
    the table holds (that is not deleted or moved away in the batch), or an earlier op's of
    the batch. Asked of SQLite itself, in the write transaction."""
    key = capture.key
    rows = [(i, *op.key) for i, op in enumerate(ops) if i not in skip]
    if not rows:
        return []
    going = {op.key for op in ops if op.op == "D"} | {op.old for op in ops if op.op == "M"}
    names = ", ".join(q(f"k{n}") for n in range(len(key)))
    out: list[WriteFailure] = []
    clashed: set[int] = set()

    def why(i: int, other: tuple[Any, ...], whose: str) -> WriteFailure:
        rules = "; ".join(f"{k} {rule}" for k, (_, rule) in zip(key, collations, strict=True))
        mine = ops[i].key
        shown_key = mine[0] if len(mine) == 1 else mine
        shown_other = other[0] if len(other) == 1 else other
        return WriteFailure(
            i,
            key[0],
            f"key {shown_key!r} collides with {shown_other!r} ({whose}) in {app}.{capture.entity}:"
            f" {rules}; the other application holds them apart, so the record is not written"
            " here",
        )

    for lo in range(0, len(rows), 300):
        chunk = rows[lo : lo + 300]
        values = ", ".join("(" + ", ".join("?" * (1 + len(key))) + ")" for _ in chunk)
        params = [v for row in chunk for v in row]
        on = " AND ".join(
            f"t.{q(k)} = v.{q(f'k{n}')} COLLATE {coll}"
            for n, (k, (coll, _)) in enumerate(zip(key, collations, strict=True))
        )
        found = con.execute(
            f"WITH v(i, {names}) AS (VALUES {values})"
            f" SELECT v.i, {', '.join(f't.{q(k)}' for k in key)} FROM v"
            f" JOIN {q(capture.entity)} t ON {on}",
            params,
        ).fetchall()
        for i, *stored in found:
            held = tuple(stored)
            if held != ops[i].key and held not in going and i not in clashed:
                clashed.add(i)
                out.append(why(i, held, "a record it holds"))
    # Two records of the batch: a later one colliding with an earlier one is refused.
    targets = [row for row in rows if ops[row[0]].op != "D" and row[0] not in clashed]
    if len(targets) > 1:
        values = ", ".join("(" + ", ".join("?" * (1 + len(key))) + ")" for _ in targets)
        by = ", ".join(f"{q(f'k{n}')} COLLATE {coll}" for n, (coll, _) in enumerate(collations))
        groups = con.execute(
            f"WITH v(i, {names}) AS (VALUES {values})"
            f" SELECT group_concat(i) FROM v GROUP BY {by} HAVING count(*) > 1",
            [v for row in targets for v in row],
        ).fetchall()
        for (members,) in groups:
            first, *later = sorted(int(m) for m in members.split(","))
            for i in later:
                clashed.add(i)
                out.append(why(i, ops[first].key, "another record of the same batch"))
    return out
