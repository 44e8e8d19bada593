"""Durable state: one SQLite file per partition, and the engine registry.

What is persisted, and why (everything else is rebuilt after a restart):

`PartitionStore` (``<state_dir>/maps/<map>/partition-<i>.sqlite``)
- ``wal``: what the partition did, in order: each row holds a message it merged (a batch of
  changes, or mail from another partition: the msgpack bytes as they arrived) and/or the
  outcome of the previous batch's writes. A batch is appended before its writes are sent, so
  a restarted partition merges it again (deterministically) and asks the writers whether its
  writes landed (their receipts) instead of losing track of them. One small transaction per
  batch, whatever its size;
- ``records`` + ``meta``: a checkpoint. Per record key its state (`engine.records`), and the
  partition's counters (`PartitionLogic.meta` and the runner's). Taken now and then (the WAL
  grew large, many records changed, or the partition went idle); it lets the WAL rows it
  covers go. Records are read back in batches, only those a batch touches: restart time is
  the WAL replay, not the number of records;
- ``conflicts`` and ``errors``: the activity log, errors with their payload for retry,
  committed with the WAL row of the batch that caused them.

`Registry` (``<state_dir>/engine.sqlite``): the apps, the maps with their mode, so a restarted
engine restores what it ran.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from engine.codec import pack, unpack
from engine.ids import RecordKey
from engine.pipeline import ConflictEntry, ErrorEntry
from engine.urls import SecretBox, has_secret, redact

__all__ = ["PartitionStore", "Registry", "WalRow"]

FETCH_CHUNK = 10_000  # keys per query when loading records


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    return con


class WalRow(NamedTuple):
    id: int
    side: int | None
    payload: bytes | None
    outcome: bytes | None
    changes: int


class PartitionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._con = _connect(path)
        self._con.executescript(
            """
            CREATE TABLE IF NOT EXISTS records (key BLOB PRIMARY KEY, state BLOB NOT NULL)
                WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS wal (
                id INTEGER PRIMARY KEY AUTOINCREMENT, side INTEGER,
                payload BLOB, outcome BLOB, changes INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS conflicts (
                id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, key BLOB,
                field TEXT NOT NULL, body BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS errors (
                id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, app TEXT,
                key BLOB, field TEXT, kind TEXT NOT NULL, message TEXT NOT NULL,
                payload BLOB NOT NULL);
            """
        )

    def close(self) -> None:
        self._con.close()

    def meta(self) -> dict[str, Any]:
        """The counters of the last checkpoint."""
        return {name: unpack(value) for name, value in self._con.execute("SELECT * FROM meta")}

    def wal(self) -> list[WalRow]:
        """The WAL rows after the last checkpoint, oldest first."""
        return [
            WalRow(*row)
            for row in self._con.execute(
                "SELECT id, side, payload, outcome, changes FROM wal ORDER BY id"
            )
        ]

    def next_wal_id(self) -> int:
        """The id the next WAL row gets (ids are never reused)."""
        row = self._con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'wal'").fetchone()
        return (int(row[0]) if row else 0) + 1

    def load(self, keys: list[RecordKey]) -> dict[RecordKey, bytes]:
        """The stored states of those of ``keys`` that have one, in as few queries as the
        number of keys allows (one per `FETCH_CHUNK`)."""
        found: dict[RecordKey, bytes] = {}
        con = self._con
        for lo in range(0, len(keys), FETCH_CHUNK):
            chunk = [pack(list(k)) for k in keys[lo : lo + FETCH_CHUNK]]
            marks = ",".join("?" * len(chunk))
            for key, state in con.execute(
                f"SELECT key, state FROM records WHERE key IN ({marks})", chunk
            ):
                found[tuple(unpack(key))] = state
        return found

    def count_records(self) -> int:
        return int(self._con.execute("SELECT count(*) FROM records").fetchone()[0])

    def append(
        self,
        side: int | None,
        payload: bytes | None,
        outcome: bytes | None,
        changes: int,
        conflicts: Iterable[ConflictEntry] = (),
        errors: Iterable[ErrorEntry] = (),
    ) -> int:
        """Append one WAL row (a merged message and/or the previous batch's write outcome),
        with the activity it logged; returns its id."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            wal_id = con.execute(
                "INSERT INTO wal (side, payload, outcome, changes) VALUES (?, ?, ?, ?)",
                (side, payload, outcome, changes),
            ).lastrowid
            self._log(conflicts, errors)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        assert wal_id is not None
        return wal_id

    def checkpoint(
        self,
        records: Iterable[tuple[RecordKey, bytes]],
        gone: Iterable[RecordKey],
        meta: dict[str, Any],
        upto: int,
    ) -> None:
        """Store the records changed since the last checkpoint, drop those ``gone``, store
        ``meta``; drop WAL rows <= ``upto``. One transaction."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                "INSERT OR REPLACE INTO records (key, state) VALUES (?, ?)",
                ((pack(list(key)), state) for key, state in records),
            )
            con.executemany(
                "DELETE FROM records WHERE key = ?", ((pack(list(key)),) for key in gone)
            )
            con.executemany(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                [(name, pack(value)) for name, value in meta.items()],
            )
            con.execute("DELETE FROM wal WHERE id <= ?", (upto,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def _log(self, conflicts: Iterable[ConflictEntry], errors: Iterable[ErrorEntry]) -> None:
        con = self._con
        con.executemany(
            "INSERT INTO conflicts (at_ms, key, field, body) VALUES (?, ?, ?, ?)",
            [
                (c.at_ms, pack(c.key), c.field, pack([c.candidates, c.winner, c.rule]))
                for c in conflicts
            ],
        )
        con.executemany(
            "INSERT INTO errors (at_ms, app, key, field, kind, message, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.at_ms,
                    e.app,
                    None if e.key is None else pack(e.key),
                    e.field,
                    e.kind,
                    e.message,
                    pack(e.payload),
                )
                for e in errors
            ],
        )

    def conflicts(self, limit: int) -> list[dict[str, Any]]:
        out = []
        for cid, at_ms, key, field, body in self._con.execute(
            "SELECT id, at_ms, key, field, body FROM conflicts ORDER BY id DESC LIMIT ?", (limit,)
        ):
            candidates, winner, rule = unpack(body)
            out.append(
                {
                    "id": cid,
                    "at_ms": at_ms,
                    "key": tuple(unpack(key)),
                    "field": field,
                    "candidates": [_candidate(c) for c in candidates],
                    "winner": _candidate(winner),
                    "rule": rule,
                }
            )
        return out

    def errors(self, limit: int) -> list[dict[str, Any]]:
        out = []
        for eid, at_ms, app, key, field, kind, message, payload in self._con.execute(
            "SELECT id, at_ms, app, key, field, kind, message, payload FROM errors "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ):
            out.append(
                {
                    "id": eid,
                    "at_ms": at_ms,
                    "app": app,
                    "key": None if key is None else tuple(unpack(key)),
                    "field": field,
                    "kind": kind,
                    "message": message,
                    "payload": unpack(payload),
                }
            )
        return out

    def counts(self) -> dict[str, int]:
        con = self._con
        return {
            "conflicts": con.execute("SELECT count(*) FROM conflicts").fetchone()[0],
            "errors": con.execute("SELECT count(*) FROM errors").fetchone()[0],
        }


def _candidate(c: list[Any]) -> dict[str, Any]:
    value, origin, ts = c
    return {"value": value, "origin": origin, "ts": tuple(ts)}


class Registry:
    """Apps and maps (with their mode) of one engine, in ``<state_dir>/engine.sqlite``.

    An app URL with an inline password is stored redacted, next to its encrypted whole
    (``secret``, see `engine.urls.SecretBox`); rows written before that column existed are
    sealed when the registry opens.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._box = SecretBox(path.parent)
        self._con = _connect(path)
        self._con.executescript(
            """
            CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY, url TEXT NOT NULL,
                secret TEXT);
            CREATE TABLE IF NOT EXISTS maps (
                name TEXT PRIMARY KEY, spec TEXT NOT NULL, mode TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, map TEXT NOT NULL, at_ms INTEGER NOT NULL,
                app TEXT, kind TEXT NOT NULL, field TEXT, message TEXT NOT NULL,
                payload TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS events_by_map ON events (map, id);
            """
        )
        if "secret" not in {r[1] for r in self._con.execute("PRAGMA table_info(apps)")}:
            self._con.execute("ALTER TABLE apps ADD COLUMN secret TEXT")
        rows = self._con.execute("SELECT name, url FROM apps WHERE secret IS NULL").fetchall()
        for name, url in rows:
            if has_secret(url):
                self.put_app(name, url)

    def apps(self) -> dict[str, str]:
        """The apps' URLs as shown: inline passwords as ``***``."""
        with self._lock:
            return dict(self._con.execute("SELECT name, url FROM apps").fetchall())

    def urls(self) -> dict[str, str]:
        """The apps' whole URLs (decrypted), for connecting; never for display."""
        with self._lock:
            rows = self._con.execute("SELECT name, url, secret FROM apps").fetchall()
        return {name: self._box.open(secret) if secret else url for name, url, secret in rows}

    def put_app(self, name: str, url: str) -> None:
        shown, secret = (redact(url), self._box.seal(url)) if has_secret(url) else (url, None)
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO apps (name, url, secret) VALUES (?, ?, ?)",
                (name, shown, secret),
            )

    def maps(self) -> dict[str, tuple[dict[str, Any], str]]:
        with self._lock:
            return {
                name: (json.loads(spec), mode)
                for name, spec, mode in self._con.execute("SELECT name, spec, mode FROM maps")
            }

    def put_map(self, name: str, spec: dict[str, Any], mode: str) -> None:
        with self._lock:
            self._con.execute(
                "INSERT OR REPLACE INTO maps (name, spec, mode) VALUES (?, ?, ?)",
                (name, json.dumps(spec, sort_keys=True), mode),
            )

    def set_mode(self, name: str, mode: str) -> None:
        with self._lock:
            self._con.execute("UPDATE maps SET mode = ? WHERE name = ?", (mode, name))

    def add_event(
        self,
        map_name: str,
        at_ms: int,
        app: str | None,
        kind: str,
        field: str | None,
        message: str,
        payload: dict[str, Any],
    ) -> None:
        """An error entry of a whole map (kind ``schema`` or ``repair``), not of a record."""
        with self._lock:
            self._con.execute(
                "INSERT INTO events (map, at_ms, app, kind, field, message, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (map_name, at_ms, app, kind, field, message, json.dumps(payload, default=str)),
            )

    def events(self, map_name: str, limit: int) -> list[dict[str, Any]]:
        """The map's latest events, newest first, shaped like partitions' error entries."""
        with self._lock:
            rows = self._con.execute(
                "SELECT id, at_ms, app, kind, field, message, payload FROM events"
                " WHERE map = ? ORDER BY id DESC LIMIT ?",
                (map_name, limit),
            ).fetchall()
        return [
            {
                "id": eid,
                "at_ms": at_ms,
                "app": app,
                "key": None,
                "field": field,
                "kind": kind,
                "message": message,
                "payload": json.loads(payload),
            }
            for eid, at_ms, app, kind, field, message, payload in rows
        ]

    def delete_events(self, map_name: str) -> None:
        with self._lock:
            self._con.execute("DELETE FROM events WHERE map = ?", (map_name,))

    def delete_map(self, name: str) -> None:
        with self._lock:
            self._con.execute("DELETE FROM maps WHERE name = ?", (name,))

    def close(self) -> None:
        self._con.close()
