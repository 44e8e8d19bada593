"""The contract harness of the PostgreSQL connector: a fresh schema per test.

The server comes from ``DUALSYNC_PG_URL`` (default: this machine's local server). If it
cannot be reached, creating the harness raises and the test fails: nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.types.json import Jsonb

from engine.connectors.postgresql import parse_url
from engine.values import Json, to_utc

from contract_harness import COLUMNS, Harness

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
DDL = """CREATE TABLE {table} (
    id integer PRIMARY KEY, name varchar(40) NOT NULL, qty integer, price numeric(12, 2),
    at timestamptz, day date, doc jsonb, data bytea, ref uuid, flag boolean,
    ratio double precision, note text)"""


CREATED: set[str] = set()
"""The schemas the harnesses of this session made (each must be gone at its end)."""


def server_url() -> str:
    return os.environ.get("DUALSYNC_PG_URL", DEFAULT_URL)


def leftovers() -> list[str]:
    """What this session left behind on the server: schemas it made that still exist, and
    any ``_ds_`` table, function or trigger in the shared ``public`` schema."""
    with psycopg.connect(parse_url(server_url())[0], autocommit=True) as con:
        schemas = {
            r[0]
            for r in con.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (list(CREATED),)
            )
        }
        shared = con.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relname LIKE '\\_ds\\_%' UNION ALL SELECT proname FROM pg_proc"
            " WHERE pronamespace = 'public'::regnamespace AND proname LIKE '\\_ds\\_%'"
            " UNION ALL SELECT tgname FROM pg_trigger WHERE tgname LIKE '\\_ds\\_%'"
            " AND tgrelid::regclass::text NOT LIKE '%.%'"
        ).fetchall()
    return [f"PostgreSQL schema {s}" for s in sorted(schemas)] + [
        f"PostgreSQL public.{r[0]}" for r in shared
    ]


def with_schema(url: str, schema: str) -> str:
    """``url`` pointing at ``schema`` (other query parameters kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def stored(value: Any) -> Any:
    """A canonical value as psycopg sends it."""
    return Jsonb(value.value) if isinstance(value, Json) else value


class PostgresHarness(Harness):
    name = "postgresql"

    def __init__(self, tmp_path: Any, schema: str | None = None) -> None:
        super().__init__(tmp_path)
        self.schema = schema or f"ds_t_{uuid.uuid4().hex[:12]}"
        self.db = psycopg.connect(parse_url(server_url())[0], autocommit=True)
        self.db.execute(f"CREATE SCHEMA {q(self.schema)}")
        CREATED.add(self.schema)

    @property
    def url(self) -> str:
        return with_schema(server_url(), self.schema)

    def table(self, entity: str) -> str:
        return f"{q(self.schema)}.{q(entity)}"

    def create(self, entity: str = "items") -> None:
        self.db.execute(DDL.format(table=self.table(entity)))

    def insert(self, rows: list[dict[str, Any]], entity: str = "items") -> None:
        with self.db.transaction():
            for row in rows:
                self.db.execute(
                    f"INSERT INTO {self.table(entity)} ({', '.join(map(q, row))})"
                    f" VALUES ({', '.join('%s' for _ in row)})",
                    [stored(v) for v in row.values()],
                )

    def update(self, key: int, values: dict[str, Any], entity: str = "items") -> None:
        sets = ", ".join(f"{q(c)} = %s" for c in values)
        self.db.execute(
            f"UPDATE {self.table(entity)} SET {sets} WHERE id = %s",
            [*(stored(v) for v in values.values()), key],
        )

    def delete(self, key: int, entity: str = "items") -> None:
        self.db.execute(f"DELETE FROM {self.table(entity)} WHERE id = %s", (key,))

    def rows(self, entity: str = "items") -> dict[int, tuple[Any, ...]]:
        doc, at = COLUMNS.index("doc"), COLUMNS.index("at")
        out = {}
        for row in self.db.execute(
            f"SELECT {', '.join(map(q, COLUMNS))} FROM {self.table(entity)}"
        ):
            values = list(row)
            if values[doc] is not None:
                values[doc] = Json(values[doc])
            if values[at] is not None:
                values[at] = to_utc(values[at])
            out[row[0]] = tuple(values)
        return out

    def close(self) -> None:
        try:
            self.db.execute(f"DROP SCHEMA IF EXISTS {q(self.schema)} CASCADE")
        finally:
            self.db.close()


HARNESS = PostgresHarness
