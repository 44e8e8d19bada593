"""PostgreSQL connector: ``postgresql://user[:password]@host[:port]/database?schema=name``.

The schema defaults to ``public``; other query parameters go to libpq as they are. Every
identifier is quoted and schema-qualified.

Driver: psycopg 3, its synchronous API. The connector contract is synchronous (readers and
writers call it from threads of Ray actors), and psycopg 3 gives the hot paths what they
need without an event loop: ``executemany`` sends a group of records in one round trip
(pipeline mode), a server-side cursor streams a snapshot in chunks, results of the canonical
types come over the binary protocol, and Decimal, UUID, aware datetimes (timestamptz), jsonb
and bytea are adapted natively both ways, never through text of our own. One connection
serves the connector, guarded by a lock (the reader thread and the actor's main thread both
call it); a second one only LISTENs, so waiting for changes never holds up the others.

Change capture, per capture ``c``, in the connector's schema:

- ``_ds_log_<c>``: ``seq bigint primary key``, ``op`` (I/U/D), ``at_ms`` and an
  ``"o:<col>"`` and ``"n:<col>"`` column per captured column, in the column's own type;
- ``_ds_seq_<c>`` hands out the sequence numbers; ``_ds_gate_<c>`` has two rows: the gate
  (row 0, only ever locked) and the acknowledged floor (row 1, see `PostgresConnector.head`);
- ``_ds_fn_<c>()`` and three row-level AFTER triggers ``_ds_<c>_insert|update|delete`` log
  the application's changes and ``pg_notify('ds_<c>', '')`` (delivered at commit), so
  `wait_for_changes` sleeps on LISTEN instead of polling. An UPDATE that changes no captured
  column (``IS DISTINCT FROM``) is not logged.

Commit-ordered sequences. The engine needs ``WriteResult.position``: every change with
``seq <= position`` committed before our write, every later one after it. A sequence is
assigned when a row is logged, not at commit, so two transactions can commit in the opposite
order of their numbers. So the trigger first locks the gate row (``SELECT ... FOR UPDATE``,
held to the end of the transaction) and only then takes ``nextval``: transactions that log
changes take their numbers one at a time, in commit order, and whoever sees change ``n``
sees every change before it. Our write transaction, once its rows are written, locks the
same gate and reads the head: that is its ``position``. The gate is locked, never updated, so
applications running REPEATABLE READ or SERIALIZABLE get no serialization failures from it
(a counter row updated by every transaction would fail any two that overlap); the sequence
is not transactional, which is why the lock comes first. ``at_ms`` is ``clock_timestamp()``
read under the gate: the nearest to the commit time a trigger sees, and it never decreases
along the log (as far as the server clock goes). Cost: transactions that change captured
columns of the entity serialize on the gate, from their first logged change to their commit;
ours holds it only from the end of its writes to its commit, so it never waits for a row
lock while holding the gate (an application transaction logging a change and then writing a
row we hold can still deadlock with us; PostgreSQL breaks it and we write again).

Writes: one transaction per batch, one ``executemany`` (pipeline mode: one round trip) per
kind and column set: deletes, then moves in the order given, then updates, then upserts
(``INSERT ... ON CONFLICT (<key>) DO UPDATE``). A move (``M``) is ``UPDATE <entity> SET <key
and every column> = ... WHERE <key> = <old key>``: a real update of the key, so ON UPDATE
CASCADE foreign keys follow; no row at the old key updates nothing; a row at the new key is
a unique violation of that record (found by bisecting the batch in savepoints, only on that
failure path, like any refused record). A record refused on a unique violation is written
again after the rest of the batch, while that helps: another record of the batch may free
the value.

Receipts: ``_ds_receipts (capture, writer, number, position, failures)`` in the connector's
schema, keyed by (capture, writer), created by `prepare` (which adds ``failures`` to a table
made before it existed). A batch with a `Receipt` reads its position and upserts its receipt
in one statement, under the gate, in the batch's own transaction, once its refused records
are known: recorded if and only if the batch commits. ``failures`` (text) holds them as
`base.pack_failures` spells them (NULL when there are none).

No echo: our write transaction sets ``dualsync.writing`` (``set_config(..., true)``, local to
the transaction) to the capture's name, and the triggers' WHEN clauses skip rows while it
holds that name. The flag is per capture, as in the SQLite connector, so a second map on the
same table still captures the first one's writes.

The trigger function runs as its owner (SECURITY DEFINER), so applications connecting with
roles of their own need no rights on the change tables. Its WHEN clauses name every captured
column, so PostgreSQL refuses to drop or retype one while capture is installed (``release``
first; ``DROP ... CASCADE`` drops the triggers, and writes naming the column come back as row
failures). Renaming a captured column breaks the trigger function, which names it: release
the map first. TRUNCATE is not captured.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import psycopg

from engine.connectors.base import (
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
    pack_failures,
    unpack_failures,
)
from engine.connectors.keyrules import postgresql_rule
from engine.connectors.postgresql_sql import (
    COLLATIONS_SQL,
    COLUMNS_SQL,
    CONSTRAINT_COLUMNS_SQL,
    RECEIPTS,
    RELATION_SQL,
    UNIQUE_SQL,
    Names,
    Rows,
    Statement,
    _plan,
    ident,
    lit,
    names_of,
    q,
)
from engine.connectors.postgresql_types import (
    RETRY_STATES,
    UNDEFINED_COLUMN,
    PgColumn,
    Table,
    _message,
    _reader,
    _row_level,
)
from engine.errors import AppError, ConnectorError
from engine.values import carries, kind_of

__all__ = ["PostgresConnector", "parse_url"]

Con = psycopg.Connection[tuple[Any, ...]]

FLAG = "dualsync.writing"
GATE_ROW, FLOOR_ROW = 0, 1
ATTEMPTS = 4  # a write lost to a deadlock or a dropped column is tried again, this often
NOW_MS = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
NO_EQUALITY = frozenset("json xml point line lseg box path polygon circle".split())


def redact(url: str) -> str:
    """``url`` without its password (for messages)."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def parse_url(url: str) -> tuple[str, str, dict[str, str]]:
    """The libpq URI (without ``schema``), the schema and the other query parameters."""
    parts = urlsplit(url)
    if parts.scheme != "postgresql":
        raise AppError(
            None, f"expected a URL like postgresql://user@host:5432/db?schema=name, found {url!r}"
        )
    if not unquote(parts.path.lstrip("/")):
        raise AppError(None, f"{redact(url)!r} names no database")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    schema = query.pop("schema", "public")
    if not schema:
        raise AppError(None, f"{redact(url)!r} names an empty schema")
    # NOTE: not urlunsplit: it drops the empty host of postgresql:///db?host=/socket/dir
    rest = "?" + urlencode(query) if query else ""
    return url.split("?", 1)[0] + rest, schema, query


class PostgresConnector(Connector):
    def __init__(self, app: str, url: str) -> None:
        super().__init__(app, url)
        try:
            self._conninfo, self.schema, query = parse_url(url)
        except AppError as exc:
            raise AppError(app, exc.problem) from None
        self._options: dict[str, Any] = {"autocommit": True}
        if "application_name" not in query:
            self._options["application_name"] = f"dualsync {app}"[:63]
        if "connect_timeout" not in query:
            self._options["connect_timeout"] = 10
        self._lock = threading.RLock()  # guards _con and _tables
        self._listen_lock = threading.Lock()  # guards _listener and _channels
        self._con: Con | None = None
        self._listener: Con | None = None
        self._channels: set[str] = set()
        self._tables: dict[str, Table | None] = {}
        self._loose: dict[str, list[tuple[str, str, str]] | None] = {}  # see _loose_key
        with self._lock, self._guard(None, "connecting"):
            found = self._conn().execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)
            )
            if found.fetchone() is None:
                raise AppError(app, f"schema {self.schema!r} does not exist in {redact(url)!r}")

    # -- helpers -------------------------------------------------------------------------

    @contextmanager
    def _guard(self, entity: str | None, what: str) -> Iterator[None]:
        """Translate the driver's errors into `ConnectorError` naming app and entity."""
        try:
            yield
        except psycopg.Error as exc:
            raise ConnectorError(self.app, entity, f"{what} failed: {_message(exc)}") from exc

    def _open(self, **options: Any) -> Con:
        return psycopg.connect(self._conninfo, **{**self._options, **options})

    def _conn(self) -> Con:
        """The connector's connection, opened again if it was lost. Hold ``_lock``."""
        if self._con is None or self._con.closed or self._con.broken:
            self._con = self._open()
        return self._con

    def _q(self, name: str) -> str:
        return f"{q(self.schema)}.{q(name)}"

    def _names(self, capture: Capture) -> Names:
        return names_of(self.schema, capture)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
        with self._listen_lock:
            if self._listener is not None:
                self._listener.close()

    # -- schema --------------------------------------------------------------------------

    def _table(self, entity: str, fresh: bool = False) -> Table | None:
        """The entity's columns and keys, cached. Hold ``_lock``, inside a `_guard`."""
        if fresh or entity not in self._tables:
            con = self._conn()
            row = con.execute(RELATION_SQL, (self.schema, entity)).fetchone()
            table = None
            if row is not None:
                columns = {r[0]: PgColumn(*r) for r in con.execute(COLUMNS_SQL, row)}
                unique = tuple(tuple(r[0]) for r in con.execute(UNIQUE_SQL, row))
                table = Table(row[0], columns, unique)
            self._tables[entity] = table
        return self._tables[entity]

    def describe(self, entity: str) -> EntitySchema | None:
        with self._lock, self._guard(entity, "describe"):
            table = self._table(entity, fresh=True)
            if table is None:
                return None
            collations = {
                name: (coll, deterministic)
                for name, coll, deterministic in self._conn().execute(COLLATIONS_SQL, (table.oid,))
            }
        columns = {
            c.name: Column(
                c.name,
                c.declared,
                c.nullable,
                c.has_default,
                postgresql_rule(c.base, *collations.get(c.name, (None, True))),
            )
            for c in table.columns.values()
        }
        return EntitySchema(entity, columns, table.unique)

    def _captured(self, capture: Capture, fresh: bool = False) -> list[PgColumn]:
        """The captured columns; ConnectorError naming what is missing. Hold ``_lock``."""
        table = self._table(capture.entity, fresh)
        if table is None:
            raise ConnectorError(
                self.app, capture.entity, f"no table {capture.entity!r} in schema {self.schema!r}"
            )
        missing = ", ".join(repr(c) for c in capture.columns if c not in table.columns)
        if missing:
            raise ConnectorError(
                self.app, capture.entity, f"no column {missing} in {capture.entity!r}"
            )
        return [table.columns[c] for c in capture.columns]

    def _logged(self, capture: Capture) -> list[PgColumn]:
        """The log's copies of the captured columns (new images). Hold ``_lock``."""
        log = self._table(ident("_ds_log_", capture.name))
        columns = log.columns if log else {}
        if any("n:" + c not in columns for c in capture.columns):
            self._tables.pop(ident("_ds_log_", capture.name), None)
            raise ConnectorError(
                self.app, capture.entity, f"change capture {capture.name!r} is not prepared"
            )
        return [columns["n:" + c]._replace(name=c) for c in capture.columns]

    # -- capture -------------------------------------------------------------------------

    def prepare(self, capture: Capture) -> None:
        n = self._names(capture)
        with self._lock, self._guard(capture.entity, "installing change capture"):
            cols = self._captured(capture, fresh=True)
            for i, col in enumerate(cols):
                declared, held = capture.type_of(i), kind_of(col.declared)
                if declared and held and declared != held and not carries(held, declared):
                    raise ConnectorError(
                        self.app,
                        capture.entity,
                        f"column {col.name!r} ({col.declared}) holds {held}, not the declared"
                        f" {declared}",
                    )
            ddl = self._capture_ddl(capture, cols, n)
            fingerprint = f"dualsync {zlib.crc32(''.join(ddl).encode()):08x}"
            con = self._conn()
            with con.transaction():
                # Concurrent prepares of one capture (coordinator, reader) take turns.
                con.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"dualsync {self.schema} {capture.name}",),
                )
                con.execute(f"CREATE SEQUENCE IF NOT EXISTS {n.seq}")
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {n.gate}"
                    " (id smallint PRIMARY KEY, seq bigint NOT NULL)"
                )
                con.execute(
                    f"INSERT INTO {n.gate} VALUES ({GATE_ROW}, 0), ({FLOOR_ROW}, 0)"
                    " ON CONFLICT DO NOTHING"
                )
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {n.log}"
                    " (seq bigint PRIMARY KEY, op char(1) NOT NULL, at_ms bigint NOT NULL)"
                )
                con.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._q(RECEIPTS)} (capture text NOT NULL,"
                    " writer varchar(100) NOT NULL, number bigint NOT NULL,"
                    " position bigint NOT NULL, failures text, PRIMARY KEY (capture, writer))"
                )
                if not con.execute(
                    "SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass"
                    " AND attname = 'failures' AND NOT attisdropped",
                    (self._q(RECEIPTS),),
                ).fetchone():  # a table made before receipts held failures
                    con.execute(
                        f"ALTER TABLE {self._q(RECEIPTS)} ADD COLUMN IF NOT EXISTS failures text"
                    )
                have: dict[str, str] = dict(
                    con.execute(
                        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                        (n.log,),
                    ).fetchall()
                )
                for col in cols:
                    for name in ("o:" + col.name, "n:" + col.name):
                        if name not in have:
                            con.execute(f"ALTER TABLE {n.log} ADD COLUMN {q(name)} {col.logged}")
                        elif have[name] != col.logged:
                            con.execute(
                                f"ALTER TABLE {n.log} ALTER COLUMN {q(name)} TYPE {col.logged}"
                                f" USING {q(name)}::{col.logged}"
                            )
                # NOTE: trigger DDL locks the application's table against writes: only when
                # what is installed is not what this capture needs.
                installed = con.execute(
                    "SELECT obj_description(p.oid, 'pg_proc'), (SELECT count(*) FROM pg_trigger t"
                    " WHERE t.tgfoid = p.oid AND t.tgrelid = %s::regclass)"
                    " FROM pg_proc p WHERE p.oid = to_regprocedure(%s)",
                    (self._q(capture.entity), n.fn + "()"),
                ).fetchone()
                if installed != (fingerprint, 3):
                    for trigger in n.triggers:
                        con.execute(
                            f"DROP TRIGGER IF EXISTS {trigger} ON {self._q(capture.entity)}"
                        )
                    for statement in ddl:
                        con.execute(statement)
                    con.execute(f"COMMENT ON FUNCTION {n.fn}() IS {lit(fingerprint)}")
            self._tables.pop(capture.entity, None)
            self._tables.pop(ident("_ds_log_", capture.name), None)

    def _capture_ddl(self, capture: Capture, cols: list[PgColumn], n: Names) -> list[str]:
        """The trigger function and the three CREATE TRIGGER statements."""

        def image(prefix: str, row: str) -> tuple[list[str], list[str]]:
            return [q(prefix + c.name) for c in cols], [f"{row}.{q(c.name)}" for c in cols]

        def log(op: str, *images: tuple[list[str], list[str]]) -> str:
            targets = ", ".join(t for names, _ in images for t in names)
            values = ", ".join(v for _, refs in images for v in refs)
            return (
                f"INSERT INTO {n.log} (seq, op, at_ms, {targets})"
                f" VALUES (ds_seq, '{op}', {NOW_MS}, {values});"
            )

        old, new = image("o:", "OLD"), image("n:", "NEW")
        body = (
            "DECLARE ds_seq bigint; BEGIN "
            # The gate first (see the module docstring: commit-ordered sequences).
            f"PERFORM 1 FROM {n.gate} WHERE id = {GATE_ROW} FOR UPDATE; "
            f"ds_seq := nextval({lit(n.seq)}); "
            f"IF TG_OP = 'INSERT' THEN {log('I', new)} "
            f"ELSIF TG_OP = 'UPDATE' THEN {log('U', old, new)} "
            f"ELSE {log('D', old)} END IF; "
            f"PERFORM pg_notify({lit(n.channel)}, ''); RETURN NULL; END"
        )
        not_ours = f"current_setting({lit(FLAG)}, true) IS DISTINCT FROM {lit(capture.name)}"

        def comparable(ref: str, col: PgColumn) -> str:
            # a type without equality (json...), or an array of one, is compared as text
            return f"{ref}::text" if col.base.lstrip("_") in NO_EQUALITY else ref

        changed = " OR ".join(
            f"{comparable(a, c)} IS DISTINCT FROM {comparable(b, c)}"
            for a, b, c in zip(old[1], new[1], cols, strict=True)
        )
        # NOTE: always true (folded away when planned), but it names every captured column,
        # so PostgreSQL refuses to drop or retype one under the triggers.
        pin_new, pin_old = (" OR ".join(f"{r} IS NULL" for r in refs) for refs in (new[1], old[1]))
        whens = (
            f"{not_ours} AND ({pin_new} OR true)",
            f"{not_ours} AND ({changed})",
            f"{not_ours} AND ({pin_old} OR true)",
        )
        return [
            # SECURITY DEFINER: the application's own role needs no rights on our tables;
            # a fixed search_path so that nobody's objects stand in for the built-ins.
            f"CREATE OR REPLACE FUNCTION {n.fn}() RETURNS trigger LANGUAGE plpgsql"
            f" SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS {lit(body)}",
            *(
                f"CREATE TRIGGER {name} AFTER {event} ON {self._q(capture.entity)}"
                f" FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {n.fn}()"
                for name, event, when in zip(
                    n.triggers, ("INSERT", "UPDATE", "DELETE"), whens, strict=True
                )
            ),
        ]

    def release(self, capture: Capture) -> None:
        n = self._names(capture)
        with self._lock, self._guard(capture.entity, "removing change capture"):
            con = self._conn()
            with con.transaction():
                # The function's triggers go with it (CASCADE), wherever the table is.
                con.execute(f"DROP FUNCTION IF EXISTS {n.fn}() CASCADE")
                con.execute(f"DROP TABLE IF EXISTS {n.log}, {n.gate}")
                con.execute(f"DROP SEQUENCE IF EXISTS {n.seq}")
                if self._has_receipts(con):
                    con.execute(
                        f"DELETE FROM {self._q(RECEIPTS)} WHERE capture = %s", (capture.name,)
                    )
            self._tables.pop(capture.entity, None)
            self._tables.pop(ident("_ds_log_", capture.name), None)

    def capture_problem(self, capture: Capture) -> str | None:
        n = self._names(capture)
        with self._lock, self._guard(capture.entity, "checking change capture"):
            log, triggers = self._conn().execute(
                "SELECT to_regclass(%s) IS NOT NULL, (SELECT count(*) FROM pg_trigger t"
                " WHERE t.tgrelid = to_regclass(%s) AND t.tgfoid = to_regprocedure(%s))",
                (n.log, self._q(capture.entity), n.fn + "()"),
            ).fetchone() or (False, 0)
        if not log:
            return f"the change table {n.log} is missing"
        if triggers < len(n.triggers):
            return f"the capture triggers on {capture.entity} are missing"
        return None

    def suspend(self, capture: Capture) -> None:
        n = self._names(capture)
        table = self._q(capture.entity)
        with self._lock, self._guard(capture.entity, "suspending change capture"):
            con = self._conn()
            with con.transaction():
                found = con.execute("SELECT to_regclass(%s)", (table,)).fetchone()
                if found is not None and found[0] is not None:
                    for trigger in n.triggers:
                        con.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
            self._tables.pop(capture.entity, None)

    def recapture(self, capture: Capture, keys: Sequence[tuple[Any, ...]]) -> int:
        n = self._names(capture)
        cols = capture.columns
        sql = (
            f"INSERT INTO {n.log} (seq, op, at_ms, {', '.join(q('n:' + c) for c in cols)})"
            f" SELECT nextval({lit(n.seq)}), 'I', {NOW_MS}, {', '.join(map(q, cols))}"
            f" FROM {self._q(capture.entity)}"
            f" WHERE {' AND '.join(f'{q(c)} = %s' for c in capture.key)}"
        )
        logged = 0
        with self._lock, self._guard(capture.entity, "recapturing rows"):
            con = self._conn()
            with con.transaction():
                # NOTE: the gate first, as the triggers take it: sequences in commit order.
                con.execute(f"SELECT 1 FROM {n.gate} WHERE id = {GATE_ROW} FOR UPDATE")
                for key in keys:
                    logged += con.execute(sql, list(key)).rowcount
                con.execute("SELECT pg_notify(%s, '')", (n.channel,))
        return logged

    def _has_receipts(self, con: Con) -> bool:
        found = con.execute("SELECT to_regclass(%s)", (self._q(RECEIPTS),)).fetchone()
        return found is not None and found[0] is not None

    def last_receipt(self, capture: Capture, writer: str) -> WriteReceipt | None:
        with self._lock, self._guard(capture.entity, "reading a receipt"):
            con = self._conn()
            if not self._has_receipts(con):
                return None  # never prepared
            row = con.execute(
                f"SELECT number, position, failures FROM {self._q(RECEIPTS)}"
                " WHERE capture = %s AND writer = %s",
                (capture.name, writer),
            ).fetchone()
        if row is None:
            return None
        return WriteReceipt(int(row[0]), int(row[1]), unpack_failures(row[2]))

    def _head_sql(self, capture: Capture) -> str:
        n = self._names(capture)
        return (
            f"SELECT greatest((SELECT seq FROM {n.gate} WHERE id = {FLOOR_ROW}),"
            f" (SELECT max(seq) FROM {n.log}))"
        )

    def head(self, capture: Capture) -> int:
        """The last sequence assigned: the log's last row, or the acknowledged floor once the
        log is trimmed to its end (so no sequence is ever handed out twice)."""
        with self._lock, self._guard(capture.entity, "reading the change head"):
            return _int(self._conn().execute(self._head_sql(capture)).fetchone())

    def snapshot(self, capture: Capture, chunk: int) -> tuple[int, Iterator[list[tuple[Any, ...]]]]:
        with self._lock, self._guard(capture.entity, "snapshot"):
            image, binary = _reader(self._captured(capture))
        select = (
            f"SELECT {', '.join(map(q, capture.columns))} FROM {self._q(capture.entity)}"
            f" ORDER BY {', '.join(map(q, capture.key))}"
        )
        # A connection of its own: one REPEATABLE READ transaction spans the head and every
        # chunk, without holding the connector while the caller ships the chunks.
        with self._guard(capture.entity, "snapshot"):
            con = self._open(autocommit=False)
            try:
                con.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                con.read_only = True
                head = _int(con.execute(self._head_sql(capture)).fetchone())
                cursor = con.cursor(name="dualsync_snapshot", binary=binary)
                cursor.execute(select)
            except BaseException:
                con.close()
                raise

        def chunks() -> Iterator[list[tuple[Any, ...]]]:
            try:
                with self._guard(capture.entity, "snapshot"):
                    while rows := cursor.fetchmany(chunk):
                        yield [image(row) for row in rows]
            finally:
                con.close()

        return head, chunks()

    def read_changes(self, capture: Capture, after: int, limit: int) -> list[RawChange]:
        k = len(capture.columns)
        images = ", ".join(q(p + c) for p in ("o:", "n:") for c in capture.columns)
        statement = (
            f"SELECT seq, op, at_ms, {images} FROM {self._names(capture).log}"
            " WHERE seq > %s ORDER BY seq LIMIT %s"
        )
        with self._lock, self._guard(capture.entity, "reading changes"):
            # the log's own columns: changes stay readable when the entity's columns change
            image, binary = _reader(self._logged(capture))
            with self._conn().cursor(binary=binary) as cur:
                rows = cur.execute(statement, (after, limit)).fetchall()
        return [
            RawChange(
                row[0],
                row[1],
                row[2],
                None if row[1] == "I" else image(row[3 : 3 + k]),
                None if row[1] == "D" else image(row[3 + k :]),
            )
            for row in rows
        ]

    def wait_for_changes(self, capture: Capture, after: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        head_sql, name = self._head_sql(capture), self._names(capture).channel
        with self._listen_lock, self._guard(capture.entity, "waiting for changes"):
            if self._listener is None or self._listener.closed or self._listener.broken:
                self._listener, self._channels = self._open(), set()
            con = self._listener
            if name not in self._channels:
                # LISTEN before looking at the head: any commit after the look notifies us.
                con.execute(f"LISTEN {q(name)}")
                self._channels.add(name)
            while True:
                for _ in con.notifies(timeout=0):
                    pass  # sent before the look below, which sees what they announce
                if _int(con.execute(head_sql).fetchone()) > after:
                    return True
                remaining, woken = deadline - time.monotonic(), False
                if remaining > 0:
                    for _ in con.notifies(timeout=remaining, stop_after=1):
                        woken = True
                if not woken:
                    return False  # no commit notified us: the head has not moved

    def ack(self, capture: Capture, upto: int) -> None:
        n = self._names(capture)
        # One statement: the floor rises to the last sequence trimmed, with the trim.
        trim = (
            f"WITH gone AS (DELETE FROM {n.log} WHERE seq <= %s RETURNING seq) UPDATE {n.gate}"
            f" SET seq = greatest(seq, (SELECT max(seq) FROM gone)) WHERE id = {FLOOR_ROW}"
        )
        with self._lock, self._guard(capture.entity, "trimming the change table"):
            self._conn().execute(trim, (upto,))

    # -- writes --------------------------------------------------------------------------

    def apply(
        self, capture: Capture, ops: Sequence[WriteOp], receipt: Receipt | None = None
    ) -> WriteResult:
        self._check_receipt(capture, receipt)
        bisect, problem = False, ""
        with self._lock:
            for attempt in range(ATTEMPTS):
                with self._guard(capture.entity, "writing a batch"):
                    table = self._table(capture.entity, fresh=attempt > 0)
                if table is None:
                    raise ConnectorError(
                        self.app,
                        capture.entity,
                        f"writing a batch failed: no table {capture.entity!r} in {self.schema!r}",
                    )
                failures, statements = _plan(self._q(capture.entity), capture, table, ops)
                try:
                    position = self._write(
                        capture, table, statements, failures, bisect, receipt, ops
                    )
                    return WriteResult(sorted(failures), position)
                except psycopg.Error as exc:
                    problem = _message(exc)
                    if not bisect and _row_level(exc):
                        # NOTE: only when a record is refused: find which, in savepoints.
                        bisect = True
                    elif exc.sqlstate not in (*RETRY_STATES, UNDEFINED_COLUMN):
                        raise ConnectorError(
                            self.app, capture.entity, f"writing a batch failed: {problem}"
                        ) from exc
        raise ConnectorError(
            self.app, capture.entity, f"writing a batch failed {ATTEMPTS} times, last: {problem}"
        )

    def _write(
        self,
        capture: Capture,
        table: Table,
        statements: list[Statement],
        failures: list[WriteFailure],
        bisect: bool,
        receipt: Receipt | None,
        ops: Sequence[WriteOp] = (),
    ) -> int:
        """One transaction: the groups, then the gate, and the head there: our position
        (recorded with the receipt and ``failures``, complete by then, in the same statement,
        if there is one)."""
        con = self._conn()
        gate = f"SELECT 1 FROM {self._names(capture).gate} WHERE id = {GATE_ROW} FOR UPDATE"
        head_sql = self._head_sql(capture)
        record = (
            f"INSERT INTO {self._q(RECEIPTS)} (capture, writer, number, position, failures)"
            f" SELECT %s, %s, %s, ({head_sql}), %s ON CONFLICT (capture, writer) DO UPDATE"
            " SET number = EXCLUDED.number, position = EXCLUDED.position,"
            " failures = EXCLUDED.failures RETURNING position"
        )
        loose = self._loose_key(capture)
        with con.transaction(), nullcontext() if bisect or loose else _pipeline(con):
            cur = con.cursor()
            cur.execute("SELECT set_config(%s, %s, true)", (FLAG, capture.name))
            taken: set[int] = set()
            if loose:  # keys the key column's type or collation takes for another record's
                clashes = self._clashes(cur, capture, loose, ops, {f.row for f in failures})
                failures += clashes
                taken = {f.row for f in clashes}
            dups: list[tuple[Statement, Any]] = []
            for statement in statements:
                rows = statement.rows
                if taken:
                    rows = [(i, params) for i, params in rows if i not in taken]
                    if not rows:
                        continue
                    statement = statement._replace(rows=rows)
                if bisect:
                    self._bisect(cur, capture, table, statement, statement.rows, failures, dups)
                else:
                    cur.executemany(statement.sql, [params for _, params in statement.rows])
            # A record refused on a unique value that another record of the batch frees
            # later in it (a REPLACE moved the value from one row to another) is written
            # again after the rest, as long as that helps.
            while dups:
                again, dups = dups, []
                failed = {row[0] for _, row in again}
                failures[:] = [f for f in failures if f.row not in failed]
                for statement, row in again:
                    self._bisect(cur, capture, table, statement, [row], failures, dups)
                if len(dups) == len(again):
                    break
            # The gate last: we never wait for a row lock while holding it; once we hold it,
            # no other transaction logs a change of this capture until we commit.
            cur.execute(gate)
            if receipt is None:
                cur.execute(head_sql)
            else:  # the refused records are all known now (bisecting found the last ones)
                packed = pack_failures(sorted(failures))
                cur.execute(record, (capture.name, receipt.writer, receipt.number, packed))
            return _int(cur.fetchone())

    def _loose_key(self, capture: Capture) -> list[tuple[str, str, str]] | None:
        """Per key column (name, type to compare as, rule) when one compares loosely
        (citext, character(n), a nondeterministic collation), else None. Cached."""
        if capture.name not in self._loose:
            schema = self.describe(capture.entity)
            found: list[tuple[str, str, str]] | None = None
            with self._lock, self._guard(capture.entity, "describe"):
                table = self._table(capture.entity)
                if schema is not None and table is not None:
                    rules = [schema.columns[k].compare for k in capture.key]
                    if any(rules):
                        found = []
                        for k, rule in zip(capture.key, rules, strict=True):
                            collate = ""
                            if rule and "nondeterministic collation " in rule:
                                name = rule.rsplit("nondeterministic collation ", 1)[1]
                                collate = f" COLLATE {q(name)}"
                            found.append(
                                (k, table.columns[k].declared + collate, rule or "compares exactly")
                            )
            self._loose[capture.name] = found
        return self._loose[capture.name]

    def _clashes(
        self,
        cur: psycopg.Cursor[tuple[Any, ...]],
        capture: Capture,
        loose: list[tuple[str, str, str]],
        ops: Sequence[WriteOp],
        skip: set[int],
    ) -> list[WriteFailure]:
        """The ops whose key PostgreSQL takes, under the key column's rules, for a record
        the table holds (not deleted or moved away in the batch) or an earlier op's."""
        keys = {i: op.key for i, op in enumerate(ops) if i not in skip}
        if not keys:
            return []
        going = {op.key for op in ops if op.op == "D"} | {op.old for op in ops if op.op == "M"}
        names = [f"k{n}" for n in range(len(loose))]
        arrays = ", ".join(["%s::int[]"] + ["%s::text[]"] * len(loose))
        source = f"unnest({arrays}) AS v(i, {', '.join(names)})"
        cast = [f"CAST(v.{n} AS {t})" for n, (_, t, _) in zip(names, loose, strict=True)]
        rules = "; ".join(f"{k} {rule}" for k, _, rule in loose)
        out: list[WriteFailure] = []
        clashed: set[int] = set()

        def params(chosen: list[int]) -> list[Any]:
            columns = [[None if keys[i][n] is None else str(keys[i][n]) for i in chosen]
                       for n in range(len(loose))]  # fmt: skip
            return [chosen, *columns]

        def why(i: int, other: tuple[Any, ...], whose: str) -> WriteFailure:
            a = keys[i][0] if len(keys[i]) == 1 else keys[i]
            b = other[0] if len(other) == 1 else other
            return WriteFailure(
                i,
                loose[0][0],
                f"key {a!r} collides with {b!r} ({whose}) in {self.app}.{capture.entity}:"
                f" {rules}; the other application holds them apart, so the record is not"
                " written here",
            )

        on = " AND ".join(f"t.{q(k)} = {c}" for (k, _, _), c in zip(loose, cast, strict=True))
        cur.execute(
            f"SELECT v.i, {', '.join(f't.{q(k)}' for k, _, _ in loose)} FROM {source}"
            f" JOIN {self._q(capture.entity)} t ON {on}",
            params(sorted(keys)),
        )
        for i, *held in cur.fetchall():
            found = tuple(held)
            if found != keys[i] and found not in going and i not in clashed:
                clashed.add(i)
                out.append(why(i, found, "a record it holds"))
        targets = [i for i in sorted(keys) if ops[i].op != "D" and i not in clashed]
        if len(targets) > 1:
            cur.execute(
                f"SELECT array_agg(v.i ORDER BY v.i) FROM {source} GROUP BY {', '.join(cast)}"
                " HAVING count(*) > 1",
                params(targets),
            )
            for (members,) in cur.fetchall():
                first, *later = members
                for i in later:
                    clashed.add(i)
                    out.append(why(i, keys[first], "another record of the same batch"))
        return out

    def _bisect(
        self,
        cur: psycopg.Cursor[tuple[Any, ...]],
        capture: Capture,
        table: Table,
        statement: Statement,
        rows: Rows,
        failures: list[WriteFailure],
        dups: list[tuple[Statement, Any]] | None = None,
    ) -> None:
        """Write ``rows`` of ``statement`` in a savepoint; if refused, each half again, down
        to the records refused: a few round trips per refused record, not one per record.
        Those refused on a unique value are also added to ``dups``."""
        try:
            with cur.connection.transaction(), _pipeline(cur.connection):
                cur.executemany(statement.sql, [params for _, params in rows])
        except psycopg.Error as exc:
            if not _row_level(exc):
                raise
            if len(rows) == 1:
                column = self._column_of(exc, capture, table, statement.columns)
                message = _message(exc)
                if column is not None and column not in message:
                    message = f"column {column!r}: {message}"
                duplicate = exc.sqlstate == "23505"  # unique_violation
                failures.append(WriteFailure(rows[0][0], column, message, duplicate))
                if dups is not None and duplicate:
                    dups.append((statement, rows[0]))
                return
            half = len(rows) // 2
            self._bisect(cur, capture, table, statement, rows[:half], failures, dups)
            self._bisect(cur, capture, table, statement, rows[half:], failures, dups)

    def _column_of(
        self, exc: psycopg.Error, capture: Capture, table: Table, placeholders: tuple[int, ...]
    ) -> str | None:
        """The captured column PostgreSQL blames: directly, by constraint, in its text, or
        by the parameter ``$n`` whose input it refused (``placeholders``: the captured column
        of each parameter of the statement)."""
        diag = exc.diag
        if diag.column_name in capture.columns:
            return diag.column_name
        if diag.constraint_name:
            con = self._conn()
            with con.transaction():  # a savepoint: we are inside the write transaction
                names = [
                    r[0]
                    for r in con.execute(
                        CONSTRAINT_COLUMNS_SQL, {"rel": table.oid, "name": diag.constraint_name}
                    )
                    if r[0] in capture.columns
                ]
            if names:  # a unique constraint may name the key too: blame the other column
                return str(min(names, key=lambda c: c in capture.key))
        for name in re.findall(r'column "((?:[^"]|"")+)"', diag.message_primary or ""):
            if name in capture.columns:
                return str(name)
        # NOTE: a value that does not parse as its column's type (a date, a uuid, a JSON
        # document) names no column, but the context names its parameter.
        m = re.search(r"\bparameter \$(\d+)\b", diag.context or "")
        if m and 0 < int(m.group(1)) <= len(placeholders):
            return capture.columns[placeholders[int(m.group(1)) - 1]]
        return None


# -- driver helpers ------------------------------------------------------------------------


@contextmanager
def _pipeline(con: Con) -> Iterator[None]:
    """Pipeline mode: the statements inside go in one round trip."""
    with con.pipeline() as pipeline:
        try:
            yield
        except psycopg.Error:
            # NOTE: sync the aborted pipeline first, or psycopg logs a second error on exit.
            with suppress(psycopg.Error):
                pipeline.sync()
            raise


def _int(row: tuple[Any, ...] | None) -> int:
    return int(row[0]) if row and row[0] is not None else 0
