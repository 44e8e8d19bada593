"""The contract harness of the SQLite connector: a file in the test's tmp_path."""

from __future__ import annotations

import sqlite3
from typing import Any

from engine.connectors.sqlite_types import READ, WRITE, canonical_of

from contract_harness import COLUMNS, Harness

DDL = """CREATE TABLE "{entity}" (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER, price DECIMAL(12, 2),
    at TIMESTAMP, day DATE, doc JSON, data BLOB, ref UUID, flag BOOLEAN, ratio DOUBLE,
    note TEXT)"""
DECLARED = ("INTEGER", "TEXT", "INTEGER", "DECIMAL(12, 2)", "TIMESTAMP", "DATE", "JSON", "BLOB",
            "UUID", "BOOLEAN", "DOUBLE")  # fmt: skip


class SqliteHarness(Harness):
    name = "sqlite"
    enforces_length = False  # SQLite stores any length: there is nothing to truncate either

    def __init__(self, tmp_path: Any) -> None:
        super().__init__(tmp_path)
        self.path = tmp_path / "app.db"
        self.db = sqlite3.connect(
            self.path, isolation_level=None, timeout=30, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode = WAL")
        kinds = [canonical_of(t) for t in DECLARED]
        self._out = [WRITE.get(k or "") for k in kinds]
        self._in = [READ.get(k or "") for k in kinds]

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def create(self, entity: str = "items") -> None:
        self.db.execute(DDL.format(entity=entity))

    def _stored(self, column: str, value: Any) -> Any:
        convert = self._out[COLUMNS.index(column)] if column in COLUMNS else None
        return convert(value) if convert else value

    def insert(self, rows: list[dict[str, Any]], entity: str = "items") -> None:
        self.db.execute("BEGIN")
        for row in rows:
            cols = list(row)
            marks = ", ".join("?" for _ in cols)
            self.db.execute(
                f'INSERT INTO "{entity}" ({", ".join(cols)}) VALUES ({marks})',
                [self._stored(c, row[c]) for c in cols],
            )
        self.db.execute("COMMIT")

    def update(self, key: int, values: dict[str, Any], entity: str = "items") -> None:
        sets = ", ".join(f"{c} = ?" for c in values)
        self.db.execute(
            f'UPDATE "{entity}" SET {sets} WHERE id = ?',
            [*(self._stored(c, v) for c, v in values.items()), key],
        )

    def delete(self, key: int, entity: str = "items") -> None:
        self.db.execute(f'DELETE FROM "{entity}" WHERE id = ?', (key,))

    def rows(self, entity: str = "items") -> dict[int, tuple[Any, ...]]:
        out = {}
        for row in self.db.execute(f'SELECT {", ".join(COLUMNS)} FROM "{entity}"'):
            out[row[0]] = tuple(f(v) if (f := self._in[i]) else v for i, v in enumerate(row))
        return out

    def close(self) -> None:
        self.db.close()


HARNESS = SqliteHarness
