"""MariaDB / MySQL connector: ``mysql://user[:password]@host[:port]/database`` (or ``mariadb://``).

Driver: asyncmy (maintained, asyncio, Cython-accelerated protocol and escaping). The contract
is synchronous (readers and writers call it from threads of Ray actors), so each connector
owns a private event loop and drives it with ``run_until_complete`` under a lock: the
reader's thread and the actor's main thread take turns, every connection stays on the loop
that opened it, and no background thread is needed. (So a connector must not be called from
a thread that is itself running an asyncio loop.) Values are sent as literals escaped by
asyncmy, several statements per packet where the server allows it.

Session, on every connection: ``sql_mode`` = `SQL_MODE` (STRICT_ALL_TABLES: most values too
long or out of range are an error, whatever the server's global mode; those it still changes
silently are refused before sending, see Writes; no
NO_BACKSLASH_ESCAPES, which asyncmy's escaping relies on), ``time_zone = '+00:00'`` (TIMESTAMP
values come and go in UTC; DATETIME columns are taken to hold UTC), utf8mb4, READ COMMITTED
(no gap locks: trimming the change table never blocks the application's inserts).

Change capture: per capture, AFTER INSERT/UPDATE/DELETE triggers log each change of the
application into ``_ds_log_<capture>`` (``seq``, ``op``, ``at_ms`` and one ``o:``/``n:`` column
per captured column, in the column's own type). An UPDATE that changes no captured column is
not logged (strings are compared as bytes, so a change of case is a change). ``at_ms`` is the
statement's ``@@timestamp``, which does not depend on the session's time zone.

Upserts: ``INSERT ... ON DUPLICATE KEY UPDATE`` fires the update triggers. ``REPLACE`` fires
the delete triggers for every row it deletes (the one at the new row's key and any it
collides with on another unique index), then the insert trigger. To log the replaced row as
an update, a BEFORE INSERT trigger sets the session variable ``@`_ds_rep_<capture>``` to 0, the
delete trigger sets it to the first seq it logs while it is 0, and the insert trigger, when
it is set, turns the delete it finds from there at the new row's key (compared as bytes) into
an update logged after the other deletes (or into nothing when no captured value changed).
A delete and an insert in separate statements stay what they are. MariaDB fires AFTER UPDATE
for a row ``UPDATE IGNORE`` skips on a duplicate key: when a key or unique column changes,
the update trigger logs only if the row holds NEW's unique values.

Commit order: AUTO_INCREMENT values are handed out at insert, not commit, so they cannot
say what committed before what. Instead the table ``_ds_gate`` holds one row per capture,
and the trigger takes the next sequence with ``UPDATE _ds_gate SET seq = LAST_INSERT_ID(seq
+ 1)`` (LAST_INSERT_ID(expr) hands the value to the log insert; the server restores the
application's own LAST_INSERT_ID when the trigger ends). The row lock is held until commit,
so a transaction that changes the table holds the gate from its first logged change to its
commit: sequences are handed out in commit order, and the committed ones form a prefix (a
rolled-back transaction gives its numbers back; nobody saw them). Our write transaction
locks the gate row first (``SELECT seq ... FOR UPDATE``): that seq is its ``position``, every
change up to it committed before our write and every later one after it. ``head`` is the
gate's committed seq.

Cost: transactions that change a captured table serialize on the gate row, from their first
logged change to their commit. One that holds a row lock while it queues for the gate can
deadlock with the gate's holder wanting that row, where without capture it would only have
waited: InnoDB rolls one back (error 1213), which applications on InnoDB must retry anyway.
Our writer locks the gate, then every row of its batch (primary-key lookups), before it
writes anything, so in such a deadlock InnoDB rolls back our writer, which has written
nothing, not the application's transaction (short of waits it cannot foresee: a new key
another transaction is inserting, a foreign key's parent); it retries with a jittered backoff
for up to `RETRY_BUDGET_S`.

Receipts: ``_ds_receipts (capture, writer, number, position, failures)`` in the database,
keyed by (capture, writer), created by `prepare` (which adds ``failures`` to a table made
before it existed). A batch with a `Receipt` upserts its row in the packet that commits it,
once its refused records are known: recorded if and only if the batch commits.
``failures`` (LONGTEXT, ASCII JSON) holds them as `base.pack_failures` spells them (NULL when
there are none); the statement carries them whole, so together they must fit the server's
``max_allowed_packet``.

No echo: our write transaction sets ``@dualsync_writing`` to the capture's name and resets it
before commit; that capture's triggers log nothing while it is set (another map's capture on
the same table still sees our writes, as it must).

Writes: one transaction per batch, grouped by kind and columns: deletes, then moves in the
order given, then updates and upserts. Upserts are multi-row ``INSERT ... ON DUPLICATE KEY
UPDATE`` when the capture key is the only unique key a new row can collide on; otherwise
(ODKU would update whichever row collides) the rows are updated by key and the missing ones
inserted. Updates and deletes are per-row statements sent many per packet. A move (``M``) is
``UPDATE <entity> SET <key and every column> = ... WHERE <key> = <old key>``, also many per
packet: a real update of the key (InnoDB's ON UPDATE CASCADE foreign keys follow); no row at
the old key updates nothing; a row at the new key is a duplicate-key failure of that record.
Both keys of a move are locked with the batch's rows. A refused record (constraint, range,
length, bad JSON...) is found by bisecting the batch within savepoints, only on that failure
path (one refused on a duplicate key is tried again after the rest, while that helps),
and reported as a `WriteFailure` naming the column the server names. Values the server
would change silently, strict mode or not (more decimals than the column's scale, a double
past a BIGINT's range, trailing spaces past a VARCHAR's length...: see
`engine.connectors.mysql_types`), are refused before sending, naming the column.

Values (`engine.values`): TINYINT(1)/BOOLEAN and BIT(1) hold bool; DECIMAL, Decimal;
TIMESTAMP and DATETIME, an aware UTC datetime; JSON (MySQL's type, or MariaDB's LONGTEXT with
a json_valid() check, described as ``json``), `Json`; MariaDB's UUID (or CHAR(36), BINARY(16)
where the map declares uuid), uuid.UUID; binary strings, bytes; TIME, its text.

Limits: dropping or retyping a captured column breaks the triggers (the application's
writes fail) until the capture is prepared again or released. Two captures of one table lock
their gates in trigger order, our writer its own first: their writers can deadlock with the
application. MySQL has no CREATE OR REPLACE TRIGGER, so there a changed trigger is dropped
and created (a short window without capture); the MySQL paths are untested here.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncmy
from asyncmy.connection import Connection
from asyncmy.constants import CLIENT
from asyncmy.cursors import Cursor

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
    unpack_failures,
)
from engine.connectors.keyrules import mysql_rule
from engine.connectors.mysql_sql import (
    PACKET,
    RECEIPTS,
    Batch,
    Group,
    _groups,
    _keyset,
    _many,
    _results,
    _rows,
    lit,
    log_column,
    log_table,
    q,
    receipt_sql,
)
from engine.connectors.mysql_types import (
    DRIVER_ERRORS,
    RETRY_ERRORS,
    ROW_ERRORS,
    TEXT_TYPES,
    Info,
    Plan,
    Table,
    _broken,
    _column_of,
    _errno,
    _problem,
    _reads,
    _writer,
)
from engine.errors import AppError, ConnectorError

__all__ = ["Address", "MysqlConnector", "mysql_address"]

T = TypeVar("T")

SQL_MODE = (
    "STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
)
GATE = "_ds_gate"
WRITING = "@dualsync_writing"
POLL_INTERVAL = 0.005  # seconds between looks at the gate while waiting for changes
IDLE_PING_S = 30.0  # ping a connection idle this long before using it (wait_timeout kills)
RETRY_BUDGET_S = 30.0  # how long a batch rolled back by a deadlock is tried again
ACK_CHUNK = 10_000  # log rows deleted per statement when trimming
OLD, NEW = ("o:", "OLD"), ("n:", "NEW")  # log column prefix, trigger row
CAPTURE_TRIGGERS = ("bins", "ins", "upd", "del")  # _ds_<capture>_<event>, made by `prepare`


class Address(NamedTuple):
    host: str
    port: int
    user: str
    password: str
    database: str
    unix_socket: str | None


def mysql_address(url: str) -> Address:
    """Where a ``mysql://`` / ``mariadb://`` URL points (``?unix_socket=/path`` optional)."""
    parts = urlsplit(url)
    shape = "mysql://user[:password]@host[:port]/database"
    if parts.scheme.lower() not in ("mysql", "mariadb"):
        raise AppError(None, f"expected a URL like {shape}, found scheme {parts.scheme!r}")
    database = unquote(parts.path[1:])
    if not database or "/" in database:
        raise AppError(None, f"the URL names no database; expected {shape}")
    try:
        port = parts.port or 3306
    except ValueError:
        raise AppError(None, f"the URL's port is not a number; expected {shape}") from None
    sockets = parse_qs(parts.query).get("unix_socket")
    return Address(
        parts.hostname or "127.0.0.1",
        port,
        unquote(parts.username or "root"),
        unquote(parts.password or ""),
        database,
        sockets[0] if sockets else None,
    )


class MysqlConnector(Connector):
    def __init__(self, app: str, url: str) -> None:
        super().__init__(app, url)
        try:
            self.address = mysql_address(url)
        except AppError as exc:
            raise AppError(app, exc.problem) from None
        self._lock = threading.RLock()
        self._loop = asyncio.new_event_loop()
        self._con: Connection | None = None  # opened on first use, again after a loss
        self._used = 0.0
        self._mariadb = True
        self._sql_mode = SQL_MODE
        self._alias = False  # MySQL >= 8.0.19: ODKU reads the new row by alias, not VALUES()
        self._snapshots: set[Connection] = set()
        self._plans: dict[str, Plan] = {}
        self._closed = False

    @classmethod
    def check(cls, app: str, url: str) -> None:
        """Connect once: the server answers and accepts the credentials and database."""
        connector = cls(app, url)
        try:
            connector._ping()
        finally:
            connector.close()

    def _ping(self) -> None:
        con = self._connect(None)
        self._loop.run_until_complete(con.ensure_closed())

    # -- connections -----------------------------------------------------------------------

    async def _open(self) -> Connection:
        a = self.address
        con = await asyncmy.connect(
            host=a.host, port=a.port, user=a.user, password=a.password, database=a.database,
            unix_socket=a.unix_socket, charset="utf8mb4", autocommit=True, binary_prefix=True,
            client_flag=CLIENT.FOUND_ROWS, connect_timeout=10,
        )  # fmt: skip
        try:
            async with con.cursor() as cur:
                [(mode,)] = await _rows(
                    cur,
                    f"SET SESSION sql_mode = '{SQL_MODE}', time_zone = '+00:00', sql_notes = 0;"
                    " SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED;"
                    " SELECT @@SESSION.sql_mode",
                )
        except BaseException:
            con.close()
            raise
        self._sql_mode = str(mode)  # as the server spells it (and stores it with triggers)
        info = con.get_server_info()
        self._mariadb = "mariadb" in info.lower()
        m = re.match(r"(?:5\.5\.5-)?(\d+)\.(\d+)\.(\d+)", info)
        version = tuple(int(x) for x in m.groups()) if m else (0, 0, 0)
        self._alias = not self._mariadb and version >= (8, 0, 19)
        return con

    async def _session(self, fn: Callable[[Cursor], Awaitable[T]], con: Connection | None) -> T:
        if con is None:
            if self._con is not None and time.monotonic() - self._used > IDLE_PING_S:
                try:
                    await self._con.ping(reconnect=False)
                except DRIVER_ERRORS:
                    self._drop()
            if self._con is None:
                self._con = await self._open()
            con = self._con
            self._used = time.monotonic()
        async with con.cursor() as cur:
            return await fn(cur)

    def _run(self, fn: Callable[[Cursor], Awaitable[T]], con: Connection | None = None) -> T:
        """Run ``fn`` on the main connection (or ``con``); driver errors pass through."""
        with self._lock:
            if self._closed:
                raise ConnectorError(self.app, None, "the connector is closed")
            try:
                return self._loop.run_until_complete(self._session(fn, con))
            except BaseException as exc:
                if con is None and _broken(exc):
                    self._drop()  # the next call opens a new connection
                raise

    def _call(
        self,
        entity: str | None,
        what: str,
        fn: Callable[[Cursor], Awaitable[T]],
        con: Connection | None = None,
    ) -> T:
        """`_run`, with driver errors translated into `ConnectorError`."""
        try:
            return self._run(fn, con)
        except DRIVER_ERRORS as exc:
            raise ConnectorError(self.app, entity, f"{what} failed: {_problem(exc)}") from exc

    def _connect(self, entity: str | None) -> Connection:
        """A connection of its own (for a snapshot)."""
        with self._lock:
            if self._closed:
                raise ConnectorError(self.app, entity, "the connector is closed")
            try:
                return self._loop.run_until_complete(self._open())
            except DRIVER_ERRORS as exc:
                raise ConnectorError(
                    self.app, entity, f"connecting failed: {_problem(exc)}"
                ) from exc

    def _drop(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for con in [*self._snapshots, *([self._con] if self._con else [])]:
                try:
                    self._loop.run_until_complete(con.ensure_closed())
                except DRIVER_ERRORS:
                    con.close()
            self._snapshots.clear()
            self._con = None
            self._loop.run_until_complete(asyncio.sleep(0))  # let transports finish closing
            self._loop.close()

    # -- schema ----------------------------------------------------------------------------

    async def _table(self, cur: Cursor, entity: str) -> Table | None:
        where = (
            f"TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {lit(entity)}"
            f" AND CAST(TABLE_NAME AS BINARY) = CAST({lit(entity)} AS BINARY)"
        )
        rows = await _rows(
            cur,
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), COLUMN_TYPE, COLLATION_NAME, IS_NULLABLE,"
            " COLUMN_DEFAULT, EXTRA, NUMERIC_SCALE, DATETIME_PRECISION"
            f" FROM information_schema.COLUMNS WHERE {where} ORDER BY ORDINAL_POSITION",
        )
        if not rows:
            return None
        json: set[str] = set()
        if self._mariadb:  # MariaDB's JSON is a LONGTEXT with a json_valid() check
            for (clause,) in await _rows(
                cur,
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = " + lit(entity),
            ):
                m = re.fullmatch(r"json_valid\(`((?:[^`]|``)+)`\)", str(clause).strip())
                if m:
                    json.add(m.group(1).replace("``", "`"))
        columns: dict[str, Info] = {}
        for name, data_type, column_type, collation, nullable, default, extra, scale, frac in rows:
            extra = str(extra or "").lower()
            described = (
                "json"
                if name in json
                else data_type
                if data_type in ("enum", "set")
                else column_type
            )
            columns[name] = Info(
                name, described, data_type, column_type, collation, nullable == "YES",
                (default is not None and default != "NULL") or "auto_increment" in extra
                or "generated" in extra,
                "auto_increment" in extra, scale, frac,
            )  # fmt: skip
        stats = await _rows(
            cur,
            "SELECT INDEX_NAME, COLUMN_NAME, SUB_PART FROM information_schema.STATISTICS"
            f" WHERE {where} AND NON_UNIQUE = 0"
            " ORDER BY INDEX_NAME <> 'PRIMARY', INDEX_NAME, SEQ_IN_INDEX",
        )
        unique: dict[str, list[str | None]] = {}
        for index, column, sub_part in stats:
            # an index on an expression or a prefix cannot key an upsert
            unique.setdefault(index, []).append(None if sub_part is not None else column)
        keys = {i: tuple(c for c in cols if c) for i, cols in unique.items() if None not in cols}
        return Table(columns, keys)

    def describe(self, entity: str) -> EntitySchema | None:
        table = self._call(entity, "describe", lambda cur: self._table(cur, entity))
        if table is None:
            return None
        columns = {
            i.name: Column(
                i.name, i.type, i.nullable, i.has_default, mysql_rule(i.collation, i.data_type)
            )
            for i in table.columns.values()
        }
        unique: list[tuple[str, ...]] = []
        for cols in table.unique.values():
            if cols not in unique:
                unique.append(cols)
        return EntitySchema(entity, columns, tuple(unique))

    def _plan(self, capture: Capture, refresh: bool = False) -> Plan:
        plan = self._plans.get(capture.name)
        if plan is None or refresh:
            table = self._call(
                capture.entity, "describe", lambda cur: self._table(cur, capture.entity)
            )
            if table is None:
                raise ConnectorError(self.app, capture.entity, "the table does not exist")
            key = set(capture.key)
            written = set(capture.columns)

            def harmless(index: tuple[str, ...]) -> bool:
                # a new row cannot collide on it: one of its columns is left to
                # AUTO_INCREMENT, or to NULL
                return any(
                    c not in written
                    and (info.auto_increment or (info.nullable and not info.has_default))
                    for c in index
                    for info in [table.columns[c]]
                )

            odku = all(set(cols) == key or harmless(cols) for cols in table.unique.values())
            writes = [
                _writer(table.columns.get(c), capture.type_of(i))
                for i, c in enumerate(capture.columns)
            ]
            plan = self._plans[capture.name] = Plan(table, _reads(capture, table), writes, odku)
        return plan

    def _image(self, capture: Capture) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
        """A function turning a stored row of ``capture`` into canonical values."""
        converted = [(i, f) for i, f in enumerate(self._plan(capture).reads) if f is not None]

        def image(values: Sequence[Any]) -> tuple[Any, ...]:
            out = list(values)
            for i, convert in converted:
                out[i] = convert(out[i])
            return tuple(out)

        return image

    # -- capture ---------------------------------------------------------------------------

    def _triggers(self, capture: Capture, table: Table) -> dict[str, tuple[str, str]]:
        """Trigger name -> (timing and event, body) of ``capture``."""
        name, log = lit(capture.name), q(log_table(capture))
        ours = f"NOT ({WRITING} <=> {name})"
        cols = capture.columns
        key = [cols[i] for i in capture.key_index]
        entity = q(capture.entity)
        replacing = q(f"_ds_rep_{capture.name}")  # a user variable: see "Upserts" above
        take = f"UPDATE {q(GATE)} SET seq = LAST_INSERT_ID(seq + 1) WHERE name = {name}; "
        at = "FLOOR(@@timestamp * 1000)"

        def same(a: str, b: str, c: str) -> str:
            if table.columns[c].data_type in TEXT_TYPES:  # bytes: a change of case is a change
                return f"CAST({a} AS BINARY) <=> CAST({b} AS BINARY)"
            return f"{a} <=> {b}"

        def logged(op: str, images: Sequence[tuple[str, str]]) -> str:
            pairs = [(q(log_column(p, c)), f"{row}.{q(c)}") for p, row in images for c in cols]
            return (
                f"{take}INSERT INTO {log} (seq, op, at_ms, {', '.join(t for t, _ in pairs)})"
                f" VALUES (LAST_INSERT_ID(), '{op}', {at}, {', '.join(v for _, v in pairs)}); "
            )

        changed = " OR ".join(f"NOT ({same(f'OLD.{q(c)}', f'NEW.{q(c)}', c)})" for c in cols)
        uniques = sorted({c for index in table.unique.values() for c in index} | set(key))
        moved = " OR ".join(f"NOT (OLD.{q(c)} <=> NEW.{q(c)})" for c in uniques)
        # MariaDB fires AFTER UPDATE for a row UPDATE IGNORE skipped on a duplicate key: such
        # a row does not hold NEW's unique values.
        held = (
            f"EXISTS (SELECT 1 FROM {entity} WHERE "
            + " AND ".join(f"{q(c)} <=> NEW.{q(c)}" for c in uniques)
            + ")"
        )
        olds = ", ".join(q(log_column("o:", c)) for c in cols)
        news = ", ".join(q(log_column("n:", c)) for c in cols)
        at_new_key = " AND ".join(same(q(log_column("o:", c)), f"NEW.{q(c)}", c) for c in key)
        differs = " OR ".join(
            f"NOT ({same(q(log_column('o:', c)), f'NEW.{q(c)}', c)})" for c in cols
        )
        # After a REPLACE: the delete it logged of the row at NEW's key becomes an update of
        # that row, logged after the deletes of the rows it displaced.
        insert = (
            f"BEGIN IF {ours} THEN SET @_ds_same = NULL; "
            f"IF @{replacing} > 0 THEN SET @_ds_same = (SELECT MIN(seq) FROM {log} WHERE seq >="
            f" @{replacing} AND op = 'D' AND {at_new_key}); END IF; "
            f"IF @_ds_same IS NULL THEN {logged('I', [NEW])}"
            f"ELSE IF EXISTS (SELECT 1 FROM {log} WHERE seq = @_ds_same AND ({differs})) THEN "
            f"{take}INSERT INTO {log} (seq, op, at_ms, {olds}, {news}) SELECT LAST_INSERT_ID(),"
            f" 'U', {at}, {olds}, {', '.join(f'NEW.{q(c)}' for c in cols)} FROM {log}"
            f" WHERE seq = @_ds_same; END IF; DELETE FROM {log} WHERE seq = @_ds_same; END IF; "
            f"SET @{replacing} = NULL; END IF; END"
        )
        prefix = f"_ds_{capture.name}_"
        return {
            prefix + "bins": (
                "BEFORE INSERT",
                f"BEGIN IF {ours} THEN SET @{replacing} = 0; END IF; END",
            ),
            prefix + "ins": ("AFTER INSERT", insert),
            prefix + "upd": (
                "AFTER UPDATE",
                f"BEGIN IF {ours} AND ({changed}) AND (NOT ({moved}) OR {held}) THEN "
                f"{logged('U', [OLD, NEW])}END IF; END",
            ),
            prefix + "del": (
                "AFTER DELETE",
                f"BEGIN IF {ours} THEN {logged('D', [OLD])}"
                f"IF @{replacing} = 0 THEN SET @{replacing} = LAST_INSERT_ID(); END IF; "
                "END IF; END",
            ),
        }

    def prepare(self, capture: Capture) -> None:
        entity, log = capture.entity, log_table(capture)

        async def run(cur: Cursor) -> None:
            table = await self._table(cur, entity)
            if table is None:
                raise ConnectorError(self.app, entity, "cannot capture changes: no such table")
            missing = [c for c in capture.columns if c not in table.columns]
            if missing:
                raise ConnectorError(
                    self.app, entity, f"cannot capture changes: no column {', '.join(missing)}"
                )
            wanted: dict[str, str] = {}
            for c in capture.columns:
                info = table.columns[c]
                collate = f" COLLATE {info.collation}" if info.collation else ""
                for p in ("o:", "n:"):
                    wanted[log_column(p, c)] = f"{info.column_type}{collate}"
            await cur.execute(
                f"CREATE TABLE IF NOT EXISTS {q(GATE)} (name VARCHAR(64) NOT NULL PRIMARY KEY,"
                " seq BIGINT NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )
            await cur.execute(
                f"INSERT INTO {q(GATE)} (name, seq) VALUES ({lit(capture.name)}, 0)"
                " ON DUPLICATE KEY UPDATE seq = seq"
            )
            await cur.execute(
                f"CREATE TABLE IF NOT EXISTS {q(RECEIPTS)} (`capture` VARCHAR(64) NOT NULL,"
                " `writer` VARCHAR(100) NOT NULL, `number` BIGINT NOT NULL,"
                " `position` BIGINT NOT NULL, `failures` LONGTEXT NULL DEFAULT NULL,"
                " PRIMARY KEY (`capture`, `writer`))"
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
            )
            if not await _rows(
                cur,
                "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
                f" AND TABLE_NAME = {lit(RECEIPTS)} AND COLUMN_NAME = 'failures'",
            ):  # a table made before receipts held failures
                await cur.execute(
                    f"ALTER TABLE {q(RECEIPTS)} ADD COLUMN `failures` LONGTEXT NULL DEFAULT NULL"
                )
            cols = "".join(f", {q(c)} {t} NULL DEFAULT NULL" for c, t in wanted.items())
            await cur.execute(
                f"CREATE TABLE IF NOT EXISTS {q(log)} (seq BIGINT NOT NULL PRIMARY KEY,"
                f" op CHAR(1) NOT NULL, at_ms BIGINT NOT NULL{cols})"
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
            )
            have = {
                name: f"{ctype}{f' COLLATE {coll}' if coll else ''}"
                for name, ctype, coll in await _rows(
                    cur,
                    "SELECT COLUMN_NAME, COLUMN_TYPE, COLLATION_NAME"
                    " FROM information_schema.COLUMNS"
                    f" WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {lit(log)}",
                )
            }
            alter = [
                f"{'MODIFY' if c in have else 'ADD'} COLUMN {q(c)} {t} NULL DEFAULT NULL"
                for c, t in wanted.items()
                if have.get(c) != t
            ]
            if alter:
                await cur.execute(f"ALTER TABLE {q(log)} {', '.join(alter)}")
            existing = {
                name: (body, mode)
                for name, body, mode in await _rows(
                    cur,
                    "SELECT TRIGGER_NAME, ACTION_STATEMENT, SQL_MODE"
                    " FROM information_schema.TRIGGERS"
                    f" WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = {lit(entity)}",
                )
            }
            for name, (event, body) in self._triggers(capture, table).items():
                if existing.get(name) == (body, self._sql_mode):
                    continue
                create = f"TRIGGER {q(name)} {event} ON {q(entity)} FOR EACH ROW {body}"
                if self._mariadb:
                    await cur.execute(f"CREATE OR REPLACE {create}")
                else:
                    await cur.execute(f"DROP TRIGGER IF EXISTS {q(name)}")
                    await cur.execute(f"CREATE {create}")

        self._call(entity, "installing change capture", run)
        self._plan(capture, refresh=True)

    def release(self, capture: Capture) -> None:
        async def run(cur: Cursor) -> None:
            prefix = f"_ds_{capture.name}_"
            for suffix in CAPTURE_TRIGGERS:
                await cur.execute(f"DROP TRIGGER IF EXISTS {q(prefix + suffix)}")
            await cur.execute(f"DROP TABLE IF EXISTS {q(log_table(capture))}")
            for table, column in ((GATE, "name"), (RECEIPTS, "capture")):
                try:
                    await cur.execute(
                        f"DELETE FROM {q(table)} WHERE {q(column)} = {lit(capture.name)}"
                    )
                except asyncmy.errors.MySQLError as exc:
                    if _errno(exc) != 1146:  # no such table: nothing was ever installed
                        raise

        self._call(capture.entity, "removing change capture", run)
        self._plans.pop(capture.name, None)

    def capture_problem(self, capture: Capture) -> str | None:
        prefix = f"_ds_{capture.name}_"
        sql = (
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA ="
            f" DATABASE() AND EVENT_OBJECT_TABLE = {lit(capture.entity)};"
            " SELECT count(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()"
            f" AND TABLE_NAME = {lit(log_table(capture))}"
        )

        async def run(cur: Cursor) -> str | None:
            triggers, tables = await _results(cur, sql)
            if not tables[0][0]:
                return f"the change table {log_table(capture)} is missing"
            found = {r[0] for r in triggers}
            missing = [prefix + e for e in CAPTURE_TRIGGERS if prefix + e not in found]
            if missing:
                return f"the capture triggers {', '.join(missing)} on {capture.entity} are missing"
            return None

        return self._call(capture.entity, "checking change capture", run)

    def suspend(self, capture: Capture) -> None:
        prefix = f"_ds_{capture.name}_"

        async def run(cur: Cursor) -> None:
            names = await _rows(
                cur,
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA ="
                f" DATABASE() AND EVENT_OBJECT_TABLE = {lit(capture.entity)}",
            )
            for (name,) in names:
                if name.startswith(prefix):
                    await cur.execute(f"DROP TRIGGER IF EXISTS {q(name)}")

        self._call(capture.entity, "suspending change capture", run)

    def recapture(self, capture: Capture, keys: Sequence[tuple[Any, ...]]) -> int:
        plan = self._plan(capture, refresh=True)
        at = capture.key_index
        cols = capture.columns
        targets = ", ".join(q(log_column("n:", c)) for c in cols)
        gate = (
            f"UPDATE {q(GATE)} SET seq = LAST_INSERT_ID(seq + 1) WHERE name = {lit(capture.name)}"
        )

        def where(key: tuple[Any, ...]) -> str:
            return " AND ".join(
                f"{q(cols[i])} = {lit(plan.writes[i](v))}" for i, v in zip(at, key, strict=True)
            )

        async def run(cur: Cursor) -> int:
            logged = 0
            await cur.execute("START TRANSACTION")
            try:
                # NOTE: the gate first, as the triggers take it: sequences stay in commit order.
                await cur.execute(self._gate_sql(capture, lock=True))
                await cur.fetchall()
                for key in keys:
                    found = await _rows(
                        cur, f"SELECT 1 FROM {q(capture.entity)} WHERE {where(key)} FOR UPDATE"
                    )
                    if not found:
                        continue
                    await _rows(
                        cur,
                        f"{gate}; INSERT INTO {q(log_table(capture))} (seq, op, at_ms, {targets})"
                        f" SELECT LAST_INSERT_ID(), 'I', FLOOR(@@timestamp * 1000),"
                        f" {', '.join(q(c) for c in cols)} FROM {q(capture.entity)}"
                        f" WHERE {where(key)}",
                    )
                    logged += 1
                await cur.execute("COMMIT")
            except BaseException:
                await cur.execute("ROLLBACK")
                raise
            return logged

        return self._call(capture.entity, "recapturing rows", run)

    def _gate_sql(self, capture: Capture, lock: bool = False) -> str:
        suffix = " FOR UPDATE" if lock else ""
        return f"SELECT seq FROM {q(GATE)} WHERE name = {lit(capture.name)}{suffix}"

    def _position(self, capture: Capture, rows: list[tuple[Any, ...]]) -> int:
        if not rows:
            raise ConnectorError(
                self.app, capture.entity, f"change capture {capture.name!r} is not installed"
            )
        return int(rows[0][0])

    def last_receipt(self, capture: Capture, writer: str) -> WriteReceipt | None:
        sql = (
            f"SELECT `number`, `position`, `failures` FROM {q(RECEIPTS)}"
            f" WHERE `capture` = {lit(capture.name)} AND `writer` = {lit(writer)}"
        )
        try:
            rows = self._run(partial(_rows, sql=sql))
        except DRIVER_ERRORS as exc:
            if _errno(exc) == 1146:  # no receipts table: never prepared
                return None
            raise ConnectorError(
                self.app, capture.entity, f"reading a receipt failed: {_problem(exc)}"
            ) from exc
        if not rows:
            return None
        number, position, failures = rows[0]
        return WriteReceipt(int(number), int(position), unpack_failures(failures))

    def head(self, capture: Capture) -> int:
        try:
            rows = self._run(partial(_rows, sql=self._gate_sql(capture)))
        except DRIVER_ERRORS as exc:
            if _errno(exc) != 1146:  # no gate table: not installed (below)
                raise ConnectorError(
                    self.app, capture.entity, f"reading the change head failed: {_problem(exc)}"
                ) from exc
            rows = []
        return self._position(capture, rows)

    def snapshot(self, capture: Capture, chunk: int) -> tuple[int, Iterator[list[tuple[Any, ...]]]]:
        # A connection of its own, so one read transaction spans the head and every chunk
        # while the main connection keeps serving the connector's other calls.
        image = self._image(capture)
        entity, key = capture.entity, capture.key
        index = capture.key_index
        chunk = max(1, chunk)
        select = f"SELECT {', '.join(q(c) for c in capture.columns)} FROM {q(entity)}"
        order = f" ORDER BY {', '.join(q(k) for k in key)} LIMIT {chunk}"
        con = self._connect(entity)
        self._snapshots.add(con)

        def finish() -> None:
            with self._lock:
                if con in self._snapshots:
                    self._snapshots.discard(con)
                    con.close()

        try:
            head = self._position(
                capture,
                self._call(
                    entity,
                    "snapshot",
                    lambda cur: _rows(
                        cur,
                        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ;"
                        " START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;"
                        + self._gate_sql(capture),
                    ),
                    con,
                ),
            )
        except BaseException:
            finish()
            raise

        def chunks() -> Iterator[list[tuple[Any, ...]]]:
            try:
                where = ""
                while True:
                    sql = select + where + order
                    rows = self._call(entity, "snapshot", partial(_rows, sql=sql), con)
                    if not rows:
                        return
                    yield [image(row) for row in rows]
                    if len(rows) < chunk:
                        return
                    where = " WHERE " + _keyset(key, [rows[-1][i] for i in index])
            finally:
                finish()

        return head, chunks()

    def read_changes(self, capture: Capture, after: int, limit: int) -> list[RawChange]:
        n = len(capture.columns)
        cols = ", ".join(q(log_column(p, c)) for p in ("o:", "n:") for c in capture.columns)
        sql = (
            f"SELECT seq, op, at_ms, {cols} FROM {q(log_table(capture))}"
            f" WHERE seq > {int(after)} ORDER BY seq LIMIT {int(limit)}"
        )
        image = self._image(capture)
        rows = self._call(capture.entity, "reading changes", lambda cur: _rows(cur, sql))
        return [
            RawChange(
                int(row[0]),
                row[1],
                int(row[2]),
                None if row[1] == "I" else image(row[3 : 3 + n]),
                None if row[1] == "D" else image(row[3 + n :]),
            )
            for row in rows
        ]

    def wait_for_changes(self, capture: Capture, after: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            # NOTE: a primary-key lookup of the gate's committed seq: cheap enough to poll.
            if self.head(capture) > after:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)

    def ack(self, capture: Capture, upto: int) -> None:
        sql = (
            f"DELETE FROM {q(log_table(capture))} WHERE seq <= {int(upto)}"
            f" ORDER BY seq LIMIT {ACK_CHUNK}"
        )

        async def run(cur: Cursor) -> None:
            while await cur.execute(sql) == ACK_CHUNK:
                pass

        self._call(capture.entity, "trimming the change table", run)

    # -- writes ----------------------------------------------------------------------------

    async def _write(
        self,
        cur: Cursor,
        capture: Capture,
        batch: Batch,
        bisect: bool,
        receipt: Receipt | None,
        refused: Sequence[WriteFailure] = (),
        clashes: ClashCheck | None = None,
    ) -> tuple[int, list[WriteFailure]]:
        """One transaction: the batch's groups (bisected when ``bisect``), then the receipt
        with every refused record (``refused`` before sending and those the server refused)
        in the packet that commits. Returns the position and the server's refusals."""
        begin = [
            "START TRANSACTION",
            f"SET {WRITING} = {lit(capture.name)}",
            self._gate_sql(capture, lock=True),
        ]
        # NOTE: the rows of the batch are locked right after the gate (in the same packet
        # when they fit), before anything is written: while we wait for one we have written
        # nothing, so if an application transaction holding it waits for the gate, InnoDB
        # rolls back our writer (retried), not the application's transaction.
        together = sum(len(s) for s in batch.locks) < PACKET
        failures: list[WriteFailure] = []
        try:
            rows = (await _results(cur, "; ".join(begin + batch.locks * together)))[2]
            # We hold the gate from here to COMMIT: no captured change of the application
            # commits meanwhile, so its seq now is exactly where our write lands.
            position = self._position(capture, rows)
            if not together:
                await _many(cur, batch.locks)
            taken: set[int] = set()
            if clashes is not None:  # keys the table's collation takes for another record's
                failures += await clashes.run(cur)
                taken = {f.row for f in failures}
            dups: list[tuple[Group, int]] = []
            for group in batch.groups:
                sel = [j for j, row in enumerate(group.rows) if row not in taken]
                if not sel:
                    continue
                if bisect:
                    await self._bisect(cur, capture, group, sel, failures, dups)
                else:
                    await group.run(cur, sel)
            # A record refused on a unique value that another record of the batch frees
            # later in it (a REPLACE moved the value from one row to another) is written
            # again after the rest, as long as that helps.
            while dups:
                again, dups = dups, []
                failed = {group.rows[j] for group, j in again}
                failures[:] = [f for f in failures if f.row not in failed]
                for group, j in again:
                    await self._bisect(cur, capture, group, [j], failures, dups)
                if len(dups) == len(again):
                    break
            record = ""
            if receipt is not None:  # every refused record is known by now
                refusals = sorted([*refused, *failures])
                record = f"{receipt_sql(capture, receipt, position, refusals, self._alias)}; "
            await _rows(cur, f"{record}SET {WRITING} = NULL; COMMIT")
        except BaseException:
            try:
                await _rows(cur, f"ROLLBACK; SET {WRITING} = NULL")
            except DRIVER_ERRORS:
                self._drop()
            raise
        return position, failures

    async def _bisect(
        self,
        cur: Cursor,
        capture: Capture,
        group: Group,
        sel: Sequence[int],
        failures: list[WriteFailure],
        dups: list[tuple[Group, int]] | None = None,
    ) -> None:
        """Write ``sel`` of ``group``; find the records the server refuses by halving (those
        refused on a duplicate key are also added to ``dups``)."""
        await cur.execute("SAVEPOINT _ds_rows")
        try:
            await group.run(cur, sel)
            return
        except asyncmy.errors.MySQLError as exc:
            if _errno(exc) not in ROW_ERRORS:
                raise
            await cur.execute("ROLLBACK TO SAVEPOINT _ds_rows")
            if len(sel) == 1:
                message = _problem(exc)
                table = self._plans[capture.name].table if capture.name in self._plans else None
                column = _column_of(
                    str(exc.args[1]) if len(exc.args) > 1 else message, capture, table
                )
                duplicate = _errno(exc) == 1062  # ER_DUP_ENTRY
                failures.append(WriteFailure(group.rows[sel[0]], column, message, duplicate))
                if dups is not None and duplicate:
                    dups.append((group, sel[0]))
                return
        mid = len(sel) // 2
        await self._bisect(cur, capture, group, sel[:mid], failures, dups)
        await self._bisect(cur, capture, group, sel[mid:], failures, dups)

    def apply(
        self, capture: Capture, ops: Sequence[WriteOp], receipt: Receipt | None = None
    ) -> WriteResult:
        self._check_receipt(capture, receipt)
        plan = self._plan(capture)
        refused: list[WriteFailure] = []
        batch = _groups(capture, plan, ops, refused, self._alias)
        clashes = _clash_check(capture, plan, ops, {f.row for f in refused}, self.app)
        bisect = False
        attempt, deadline = 0, time.monotonic() + RETRY_BUDGET_S
        while True:
            attempt += 1
            try:
                position, failures = self._run(
                    partial(
                        self._write,
                        capture=capture,
                        batch=batch,
                        bisect=bisect,
                        receipt=receipt,
                        refused=refused,
                        clashes=clashes,
                    )
                )
            except asyncmy.errors.MySQLError as exc:
                errno = _errno(exc)
                if errno in ROW_ERRORS and not bisect:
                    # NOTE: only when a record is refused: redo the batch finding which.
                    bisect = True
                    continue
                if errno in RETRY_ERRORS and time.monotonic() < deadline:
                    # the server rolled the batch back whole: try again a little later
                    time.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
                    continue
                self._plans.pop(capture.name, None)  # the schema may have changed
                raise ConnectorError(
                    self.app, capture.entity, f"writing a batch failed: {_problem(exc)}"
                ) from exc
            except (TimeoutError, OSError) as exc:
                raise ConnectorError(
                    self.app, capture.entity, f"writing a batch failed: {_problem(exc)}"
                ) from exc
            return WriteResult(sorted(refused + failures), position)


class ClashCheck(NamedTuple):
    """The queries that find a batch's keys colliding under the key columns' collation
    (see `_clash_check`), run inside the write transaction."""

    stored: list[str]  # per chunk: SELECT v.i, <stored key> FROM (<batch keys>) v JOIN t
    grouped: str  # SELECT GROUP_CONCAT(i) FROM (<target keys>) v GROUP BY <keys COLLATE>
    keys: dict[int, tuple[Any, ...]]
    going: set[tuple[Any, ...]]  # keys deleted or moved away in the batch
    describe: str
    where: str
    column: str

    async def run(self, cur: Cursor) -> list[WriteFailure]:
        out: list[WriteFailure] = []
        clashed: set[int] = set()

        def why(i: int, other: tuple[Any, ...], whose: str) -> WriteFailure:
            mine = self.keys[i]
            a = mine[0] if len(mine) == 1 else mine
            b = other[0] if len(other) == 1 else other
            return WriteFailure(
                i,
                self.column,
                f"key {a!r} collides with {b!r} ({whose}) in {self.where}: {self.describe};"
                " the other application holds them apart, so the record is not written here",
            )

        for sql in self.stored:
            for i, *held in await _rows(cur, sql):
                found = tuple(held)
                if found != self.keys[i] and found not in self.going and i not in clashed:
                    clashed.add(i)
                    out.append(why(i, found, "a record it holds"))
        if self.grouped:
            for (members,) in await _rows(cur, self.grouped):
                first, *later = sorted(int(m) for m in str(members).split(","))
                for i in later:
                    if i not in clashed:
                        clashed.add(i)
                        out.append(why(i, self.keys[first], "another record of the same batch"))
        return out


def _clash_check(
    capture: Capture, plan: Plan, ops: Sequence[WriteOp], skip: set[int], app: str
) -> ClashCheck | None:
    """None when the key columns compare exactly (binary or NO PAD collations, numbers);
    else the queries of a `ClashCheck`: MariaDB itself says which keys it takes for which,
    by the columns' own collations."""
    info = [plan.table.columns[k] for k in capture.key]
    rules = [mysql_rule(c.collation, c.data_type) for c in info]
    if not any(rules) or not ops:
        return None
    at = capture.key_index
    keys = {i: op.key for i, op in enumerate(ops) if i not in skip}
    if not keys:
        return None
    names = [f"k{n}" for n in range(len(at))]

    def select(i: int, key: tuple[Any, ...]) -> str:
        values = ", ".join(
            f"{lit(plan.writes[col](v))} AS {q(name)}"
            for col, v, name in zip(at, key, names, strict=True)
        )
        return f"SELECT {i} AS i, {values}"

    selects = [select(i, key) for i, key in keys.items()]
    table = q(capture.entity)
    on = " AND ".join(f"t.{q(k)} = v.{q(n)}" for k, n in zip(capture.key, names, strict=True))
    stored = [
        f"SELECT v.i, {', '.join(f't.{q(k)}' for k in capture.key)} FROM"
        f" ({' UNION ALL '.join(selects[lo : lo + 500])}) v JOIN {table} t ON {on}"
        for lo in range(0, len(selects), 500)
    ]
    targets = {i for i in keys if ops[i].op != "D"}
    by = ", ".join(
        f"v.{q(n)} COLLATE {c.collation}" if rule and c.collation else f"v.{q(n)}"
        for n, c, rule in zip(names, info, rules, strict=True)
    )
    chosen = [select(i, keys[i]) for i in sorted(targets)]
    grouped = (
        f"SELECT GROUP_CONCAT(v.i) FROM ({' UNION ALL '.join(chosen)}) v GROUP BY {by}"
        " HAVING COUNT(*) > 1"
        if len(chosen) > 1
        else ""
    )
    going = {op.key for op in ops if op.op == "D"} | {
        op.old for op in ops if op.op == "M" and op.old is not None
    }
    describe = "; ".join(
        f"{k} {rule or 'compares exactly'}" for k, rule in zip(capture.key, rules, strict=True)
    )
    return ClashCheck(
        stored, grouped, keys, going, describe, f"{app}.{capture.entity}", capture.key[0]
    )
