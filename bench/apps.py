"""The applications a benchmark runs against: a table ``items`` in SQLite, PostgreSQL or
MariaDB/MySQL, driven as another program would (its own connection, plain SQL).

`open_app(url, workdir)` gives a `BenchApp`: it creates its table (in a fresh schema or
database on a server, dropped by `close`), and does the few bulk operations the benchmark
needs. The engine is pointed at `BenchApp.url`.
"""

from __future__ import annotations

import abc
import asyncio
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

TABLE = "items"
COLUMNS = ("id", "name", "qty", "price", "stamp")
Row = tuple[Any, ...]


class BenchApp(abc.ABC):
    """One application with an ``items`` table (and an ``items_copy`` for the raw copy)."""

    url: str
    mark = "%s"  # the driver's parameter placeholder

    @abc.abstractmethod
    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Row]: ...

    @abc.abstractmethod
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """In one transaction."""

    @abc.abstractmethod
    def ddl(self, table: str) -> str: ...

    def create(self) -> None:
        for table in (TABLE, f"{TABLE}_copy"):
            self.execute(self.ddl(table))
            self.execute(f"CREATE INDEX {table}_stamp ON {table} (stamp)")
            self.execute(f"CREATE INDEX {table}_qty ON {table} (qty)")

    def insert_sql(self, table: str) -> str:
        marks = ", ".join(self.mark for _ in COLUMNS)
        return f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks})"

    def insert(self, rows: Sequence[Row], table: str = TABLE) -> None:
        self.executemany(self.insert_sql(table), rows)

    @abc.abstractmethod
    def upsert(self, rows: Sequence[Row], table: str) -> None:
        """Insert or update by id, one statement batch in one transaction (the raw copy)."""

    def rows(self, table: str = TABLE) -> list[Row]:
        return self.execute(f"SELECT {', '.join(COLUMNS)} FROM {table}")

    def bump(self, ids: Sequence[int]) -> None:
        """qty = qty + 1 for ``ids``, in one transaction."""
        self.executemany(
            f"UPDATE {TABLE} SET qty = qty + 1 WHERE id = {self.mark}", [(i,) for i in ids]
        )

    def stamp(self, stamps: Sequence[tuple[int, int]]) -> None:
        """Set (stamp, id) pairs in one transaction."""
        self.executemany(f"UPDATE {TABLE} SET stamp = {self.mark} WHERE id = {self.mark}", stamps)

    def count_qty(self, qty: int) -> int:
        return int(
            self.execute(f"SELECT count(*) FROM {TABLE} WHERE qty = {self.mark}", (qty,))[0][0]
        )

    def stamps_since(self, low: int) -> list[Row]:
        return self.execute(f"SELECT id, stamp FROM {TABLE} WHERE stamp > {self.mark}", (low,))

    def close(self) -> None:  # noqa: B027 - optional
        pass


class SqliteApp(BenchApp):
    mark = "?"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.con = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.execute("PRAGMA synchronous = NORMAL")
        self._lock = threading.Lock()

    def ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " qty INTEGER NOT NULL, price REAL, stamp INTEGER NOT NULL DEFAULT 0)"
        )

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return self.con.execute(sql, args).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self.con.execute("BEGIN")
            self.con.executemany(sql, rows)
            self.con.execute("COMMIT")

    def upsert(self, rows: Sequence[Row], table: str) -> None:
        sets = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
        self.executemany(
            self.insert_sql(table) + f" ON CONFLICT (id) DO UPDATE SET {sets}",
            rows,
        )

    def data_version(self) -> int:
        return int(self.execute("PRAGMA data_version")[0][0])


class PostgresApp(BenchApp):
    def __init__(self, url: str) -> None:
        import psycopg

        parts = urlsplit(url)
        self.schema = f"ds_bench_{os.urandom(5).hex()}"
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
        self.url = urlunsplit(parts._replace(query=urlencode([*query, ("schema", self.schema)])))
        dsn = urlunsplit(parts._replace(query=urlencode(query)))
        self.con = psycopg.connect(dsn, autocommit=True)
        self.con.execute(f"CREATE SCHEMA {self.schema}")
        self.con.execute(f"SET search_path TO {self.schema}")
        self._lock = threading.Lock()

    def ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE {table} (id integer PRIMARY KEY, name text NOT NULL,"
            " qty integer NOT NULL, price double precision, stamp bigint NOT NULL DEFAULT 0)"
        )

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            cur = self.con.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock, self.con.transaction(), self.con.cursor() as cur:
            cur.executemany(sql, rows)

    def upsert(self, rows: Sequence[Row], table: str) -> None:
        sets = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
        self.executemany(
            self.insert_sql(table) + f" ON CONFLICT (id) DO UPDATE SET {sets}",
            rows,
        )

    def close(self) -> None:
        self.con.execute(f"DROP SCHEMA {self.schema} CASCADE")
        self.con.close()


class MysqlApp(BenchApp):
    """asyncmy on a private event loop, used from plain threads."""

    def __init__(self, url: str) -> None:
        import asyncmy

        parts = urlsplit(url)
        self.database = f"ds_bench_{os.urandom(5).hex()}"
        self.url = f"{parts.scheme}://{parts.netloc}/{self.database}"
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self.con = self._loop.run_until_complete(
            asyncmy.connect(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 3306,
                user=unquote(parts.username or "root"),
                password=unquote(parts.password or ""),
                charset="utf8mb4",
                autocommit=True,
            )
        )
        self.execute(f"CREATE DATABASE {self.database}")
        self.execute(f"USE {self.database}")

    def ddl(self, table: str) -> str:
        return (
            f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL,"
            " qty INT NOT NULL, price DOUBLE, stamp BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB"
        )

    def _run(self, sql: str, args: Any, many: bool) -> list[Row]:
        async def go() -> list[Row]:
            async with self.con.cursor() as cur:
                if many:
                    await cur.execute("START TRANSACTION")
                    await cur.executemany(sql, args)
                    await cur.execute("COMMIT")
                    return []
                await cur.execute(sql, args or None)
                return list(await cur.fetchall()) if cur.description else []

        with self._lock:
            return self._loop.run_until_complete(go())

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._run(sql, args, many=False)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._run(sql, rows, many=True)

    def upsert(self, rows: Sequence[Row], table: str) -> None:
        sets = ", ".join(f"{c} = VALUES({c})" for c in COLUMNS[1:])
        self.executemany(
            self.insert_sql(table) + f" ON DUPLICATE KEY UPDATE {sets}",
            rows,
        )

    def close(self) -> None:
        self.execute(f"DROP DATABASE {self.database}")
        with self._lock:
            self._loop.run_until_complete(self.con.ensure_closed())
            self._loop.close()


def open_app(url: str, workdir: Path, name: str) -> BenchApp:
    """A fresh application behind ``url``: ``sqlite`` (a file ``<name>.db`` in ``workdir``),
    or a server URL (a fresh schema / database on it)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        app: BenchApp = SqliteApp(workdir / f"{name}.db")
    elif scheme == "postgresql":
        app = PostgresApp(url)
    elif scheme in ("mysql", "mariadb"):
        app = MysqlApp(url)
    else:
        raise SystemExit(f"bench: no bench application for {url!r} (sqlite, postgresql, mysql)")
    app.create()
    return app
