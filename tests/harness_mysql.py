"""The contract harness of the MariaDB/MySQL connector: a fresh database per test.

The server comes from ``DUALSYNC_MYSQL_URL`` (default ``mysql://root@127.0.0.1:3306/test``);
each harness creates its own database ``ds_t_<random hex>`` on it and drops it in `close`.
If the server cannot be reached the harness raises: the test fails, it is never skipped.

"Another program" talks to the server through `Db`, a blocking asyncmy connection on an event
loop of its own (PyMySQL is not a dependency), with the server's own sql_mode and the
conversions written out here, independently of the connector's. ``at`` is a TIMESTAMP(6):
MariaDB keeps it as a UTC instant and shows it in the session's time zone, which `Db` sets
to UTC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncmy

from engine.values import Json

from contract_harness import COLUMNS, Harness

DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"
DDL = """CREATE TABLE `{entity}` (
    id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, qty INT, price DECIMAL(12, 2),
    at TIMESTAMP(6) NULL DEFAULT NULL, day DATE, doc JSON, data VARBINARY(255), ref UUID,
    flag BOOLEAN, ratio DOUBLE, note TEXT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
UTC = dt.UTC


CREATED: set[str] = set()
"""The databases the harnesses of this session made (each must be gone at its end)."""


def server_url() -> str:
    return os.environ.get("DUALSYNC_MYSQL_URL", DEFAULT_URL)


def leftovers() -> list[str]:
    """What this session left behind on the server: databases it made that still exist,
    and any ``_ds_`` table or trigger in the server URL's own (shared) database."""
    shared_db = unquote(urlsplit(server_url()).path[1:])
    db = Db()
    try:
        found = {r[0] for r in db.execute("SHOW DATABASES")} & CREATED
        shared = db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " AND table_name LIKE '\\_ds\\_%%' UNION ALL SELECT trigger_name"
            " FROM information_schema.triggers WHERE trigger_schema = %s"
            " AND trigger_name LIKE '\\_ds\\_%%'",
            (shared_db, shared_db),
        )
    finally:
        db.close()
    return [f"MariaDB database {d}" for d in sorted(found)] + [
        f"MariaDB {shared_db}.{r[0]}" for r in shared
    ]


def url_for(database: str, url: str | None = None, scheme: str = "mysql") -> str:
    """The server's URL with another database (and scheme)."""
    parts = urlsplit(url or server_url())
    return f"{scheme}://{parts.netloc}/{database}"


class Db:
    """A blocking connection of another program (asyncmy on a private event loop)."""

    def __init__(self, url: str | None = None, database: str | None = None) -> None:
        parts = urlsplit(url or server_url())
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        try:
            self.con = self._loop.run_until_complete(
                asyncmy.connect(
                    host=parts.hostname or "127.0.0.1",
                    port=parts.port or 3306,
                    user=unquote(parts.username or "root"),
                    password=unquote(parts.password or ""),
                    database=database if database is not None else unquote(parts.path[1:]),
                    charset="utf8mb4",
                    autocommit=True,
                    binary_prefix=True,
                    init_command="SET time_zone = '+00:00'",
                )
            )
        except BaseException:
            self._loop.close()
            raise

    def _do(self, statements: Sequence[tuple[str, Any]]) -> list[list[tuple[Any, ...]]]:
        """Statements one by one; the rows of each."""

        async def run() -> list[list[tuple[Any, ...]]]:
            out = []
            async with self.con.cursor() as cur:
                for sql, args in statements:
                    await cur.execute(sql, args)
                    out.append(list(await cur.fetchall()) if cur.description else [])
            return out

        with self._lock:
            return self._loop.run_until_complete(run())

    def execute(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """One statement (autocommit); its rows, if it has any."""
        return self._do([(sql, args)])[0]

    def transaction(self, statements: Sequence[tuple[str, Any]]) -> list[tuple[Any, ...]]:
        """Statements in one transaction; the rows of the last one."""
        try:
            return self._do([("START TRANSACTION", None), *statements, ("COMMIT", None)])[-2]
        except BaseException:
            self._do([("ROLLBACK", None)])
            raise

    def close(self) -> None:
        with self._lock:
            try:
                self._loop.run_until_complete(self.con.ensure_closed())
            finally:
                self._loop.run_until_complete(asyncio.sleep(0))
                self._loop.close()


def stored(column: str, value: Any) -> Any:
    """A canonical value as this program stores it."""
    if isinstance(value, Json):
        return json.dumps(value.value)  # spaced: the connector must compare documents by value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def canonical(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column == "at":
        return value.replace(tzinfo=UTC)
    if column == "doc":
        return Json.loads(value)
    if column == "ref":
        return uuid.UUID(value)
    if column == "flag":
        return bool(value)
    return value


class MysqlHarness(Harness):
    name = "mysql"
    enforces_not_null = True
    enforces_length = True

    def __init__(self, tmp_path: Any) -> None:
        super().__init__(tmp_path)
        self.database = f"ds_t_{os.urandom(6).hex()}"
        admin = Db()
        try:
            admin.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4")
            CREATED.add(self.database)
        finally:
            admin.close()
        self.db = Db(database=self.database)

    @property
    def url(self) -> str:
        return url_for(self.database)

    def create(self, entity: str = "items") -> None:
        self.db.execute(DDL.format(entity=entity))

    def insert(self, rows: list[dict[str, Any]], entity: str = "items") -> None:
        self.db.transaction(
            [
                (
                    f"INSERT INTO `{entity}` ({', '.join(row)}) "
                    f"VALUES ({', '.join('%s' for _ in row)})",
                    [stored(c, v) for c, v in row.items()],
                )
                for row in rows
            ]
        )

    def update(self, key: int, values: dict[str, Any], entity: str = "items") -> None:
        sets = ", ".join(f"{c} = %s" for c in values)
        self.db.execute(
            f"UPDATE `{entity}` SET {sets} WHERE id = %s",
            [*(stored(c, v) for c, v in values.items()), key],
        )

    def delete(self, key: int, entity: str = "items") -> None:
        self.db.execute(f"DELETE FROM `{entity}` WHERE id = %s", (key,))

    def rows(self, entity: str = "items") -> dict[int, tuple[Any, ...]]:
        found = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM `{entity}`")
        return {
            row[0]: tuple(canonical(c, v) for c, v in zip(COLUMNS, row, strict=True))
            for row in found
        }

    def close(self) -> None:
        try:
            self.db.execute(f"DROP DATABASE IF EXISTS `{self.database}`")
        finally:
            self.db.close()


HARNESS = MysqlHarness
