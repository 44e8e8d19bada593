"""Durable state: one SQLite file per partition, and the engine registry.

What is persisted, and why (everything else is rebuilt after a restart):

`PartitionStore` (``<state_dir>/maps/<map>/partition-<i>.sqlite``)
- ``wal``: what the partition did, in order: each row holds a batch it merged (the msgpack
  bytes as they arrived) and/or the outcome of the previous batch's writes. One small
  transaction per batch, whatever its size. Merging is deterministic, so replaying the rows
  rebuilds exactly the state they produced; a batch counts as durable once the row holding
  its write outcome is committed;
- ``records`` + ``meta``: a checkpoint. Per record key the merged state, what each side holds
  and the writes in flight (`encode_record`); the per-side cursors.
  Taken now and then (the WAL grew large, or the partition went idle); it lets the WAL rows it
  covers go. Restart = load the checkpoint, replay the WAL: nothing lost, nothing merged twice;
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
from typing import Any

from engine.codec import pack, unpack
from engine.ids import RecordKey
from engine.pipeline import ConflictEntry, ErrorEntry, Tracked, decode_record, encode_record

__all__ = ["PartitionStore", "Registry"]


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    return con


class PartitionStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._con = _connect(path)
        self._con.executescript(
            """
            CREATE TABLE IF NOT EXISTS records (key BLOB PRIMARY KEY, state BLOB NOT NULL)
                WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
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

    def load(
        self,
    ) -> tuple[
        dict[RecordKey, Tracked],
        dict[str, int],
        list[tuple[int, int | None, bytes | None, bytes | None, int]],
    ]:
        """The checkpoint (records, meta) and the WAL rows after it, oldest first."""
        records = {
            tuple(unpack(key)): decode_record(state)
            for key, state in self._con.execute("SELECT key, state FROM records")
        }
        meta = dict(self._con.execute("SELECT name, value FROM meta").fetchall())
        wal = self._con.execute(
            "SELECT id, side, payload, outcome, changes FROM wal ORDER BY id"
        ).fetchall()
        return records, meta, wal

    def append(
        self,
        side: int | None,
        payload: bytes | None,
        outcome: bytes | None,
        changes: int,
        conflicts: Iterable[ConflictEntry] = (),
        errors: Iterable[ErrorEntry] = (),
    ) -> int:
        """Append one WAL row (a merged batch and/or the previous one's write outcome), with
        the activity it logged; returns its id."""
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

    def drop_batch(self, wal_id: int) -> None:
        """Forget the batch of row ``wal_id`` (merged, but its writes never confirmed)."""
        self._con.execute(
            "UPDATE wal SET payload = NULL, side = NULL, changes = 0 WHERE id = ?", (wal_id,)
        )

    def checkpoint(
        self, records: Iterable[tuple[RecordKey, Tracked]], meta: dict[str, int], upto: int
    ) -> None:
        """Store the records changed since the last checkpoint; drop WAL rows <= ``upto``."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                "INSERT OR REPLACE INTO records (key, state) VALUES (?, ?)",
                [(pack(key), encode_record(rec)) for key, rec in records],
            )
            con.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", meta.items())
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
    """Apps and maps (with their mode) of one engine, in ``<state_dir>/engine.sqlite``."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._con = _connect(path)
        self._con.executescript(
            """
            CREATE TABLE IF NOT EXISTS apps (name TEXT PRIMARY KEY, url TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS maps (
                name TEXT PRIMARY KEY, spec TEXT NOT NULL, mode TEXT NOT NULL);
            """
        )

    def apps(self) -> dict[str, str]:
        with self._lock:
            return dict(self._con.execute("SELECT name, url FROM apps").fetchall())

    def put_app(self, name: str, url: str) -> None:
        with self._lock:
            self._con.execute("INSERT OR REPLACE INTO apps (name, url) VALUES (?, ?)", (name, url))

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

    def close(self) -> None:
        self._con.close()
