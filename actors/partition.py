"""Partition actor: owns one hash range of a map's record keys and their merged state.

A thin shell around `engine.pipeline.PartitionLogic`: decode a batch, merge it, hand the
writes to the writer actors and answer at once. The outcome of those writes is collected at
the start of the next call (or by ``flush``), and then the batch and its write outcomes are
appended to the partition's WAL: so merging batch k+1 overlaps with writing batch k, and a
batch is durable one call later. Each answer gives two cursors per side: ``cursor`` (merged,
what the next batch must start from) and ``durable`` (in the WAL: the application may drop
its changes up to there).

A checkpoint of the records is taken when the WAL has grown past ``checkpoint_changes`` or
the partition has been idle for a while. If anything fails midway, the in-memory state is
rebuilt from the store (checkpoint + WAL replay), so the batch is merged again when the
reader resends it.

Calls: ``apply(side, changes)`` is idempotent per change sequence: a batch at or below the
cursor is acknowledged without effect, and a batch that starts past the cursor is answered
with ``gap`` so the reader resends from the cursor.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from actors import ray_api
from actors.tuning import collect_all, settle_heap, tune_gc
from conflict import Resolver, Timestamp
from engine.codec import decode, encode, pack, unpack
from engine.ids import Side
from engine.maps import EntityMap
from engine.pipeline import Change, ConflictEntry, ErrorEntry, Outcome, PartitionLogic
from engine.store import PartitionStore

CHECKPOINT_CHANGES = 500_000  # WAL size (changes) that forces a checkpoint
CHECKPOINT_IDLE_S = 2.0  # a partition this long without a batch checkpoints its WAL


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class InFlight(NamedTuple):
    """A batch merged, whose writes are under way: what its WAL row will need."""

    side: Side
    msg: dict[str, Any]
    payload: bytes
    changes: list[Change]
    merged: Outcome
    pending: list[tuple[Side, Any]]  # (side, ref of the writer's answer)
    errors: list[ErrorEntry]
    now: int


class Partition:
    def __init__(
        self,
        spec: dict[str, Any],
        index: int,
        state_path: str,
        writers: list[Any],
        resolvers: dict[str, Resolver] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        tune_gc()
        options = options or {}
        self.index = index
        self.cmap = EntityMap.model_validate(spec).compile(resolvers)
        self.store = PartitionStore(Path(state_path))
        self.writers = writers
        self.checkpoint_changes = int(options.get("checkpoint_changes", CHECKPOINT_CHANGES))
        self.counts: dict[str, Any] = {
            "changes": [0, 0],
            "writes": [0, 0],
            "batches": 0,
            "checkpoints": 0,
            "replayed": 0,
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_apply = time.monotonic()
        self._load()
        self._thread = threading.Thread(target=self._idle_checkpoints, daemon=True)
        self._thread.start()

    # -- state ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Rebuild from the store: the checkpoint, then every WAL row after it, in order.

        A batch merged but whose writes were never confirmed (the last row's batch) is
        dropped: the reader sends it again.
        """
        records, meta, wal = self.store.load()
        self.logic = PartitionLogic(self.cmap, records)
        self.cursors = [meta.get("cursor_left", -1), meta.get("cursor_right", -1)]
        self.durable = list(self.cursors)
        self.inflight: InFlight | None = None
        self.wal_last = 0
        self.wal_changes = 0
        previous: tuple[Side, dict[str, Any], Outcome] | None = None
        for n, (wal_id, side, payload, outcome, changes_count) in enumerate(wal):
            current = None
            if payload is not None and side is not None:
                if n == len(wal) - 1:
                    self.store.drop_batch(wal_id)
                else:
                    msg = decode(payload, "changes")
                    changes, _ = self._changes(Side(side), msg, replay=True)
                    merged = self.logic.ingest(Side(side), changes, 0)
                    self._advance(self.cursors, Side(side), msg)
                    current = (Side(side), msg, merged)
                    self.counts["replayed"] += len(changes)
            if outcome is not None:
                assert previous is not None, f"WAL row {wal_id} confirms a batch it lacks"
                self._confirm(previous[2], unpack(outcome), 0, [])
                self._advance(self.durable, previous[0], previous[1])
            previous = current
            self.wal_last = wal_id
            self.wal_changes += changes_count
        assert self.cursors == self.durable, "every replayed batch is confirmed"
        settle_heap()

    @staticmethod
    def _advance(cursors: list[int], side: Side, msg: dict[str, Any]) -> None:
        if not msg["snap"] or msg.get("final"):
            cursors[side] = max(cursors[side], msg["to"])

    def _changes(
        self, side: Side, msg: dict[str, Any], replay: bool = False
    ) -> tuple[list[Change], list[ErrorEntry]]:
        cur = self.cursors[side]
        snap = msg["snap"]
        make, stamp = Change._make, Timestamp._make
        changes = [
            make((seq, op, tuple(key), stamp(ts), old, new))
            for seq, op, key, ts, old, new in msg["rows"]
            if snap or seq > cur
        ]
        errors = (
            []
            if replay
            else [
                self.logic.read_error(side, seq, field, message, row, now_ms())
                for seq, field, message, row in msg.get("errors", ())
                if snap or seq > cur
            ]
        )
        return changes, errors

    # -- calls ---------------------------------------------------------------------------

    def ready(self) -> bool:
        return True

    def apply(self, side: int, payload: bytes) -> dict[str, Any]:
        s = Side(side)
        msg = decode(payload, "changes")
        with self._lock:
            self._last_apply = time.monotonic()
            cur = self.cursors[s]
            if msg["snap"]:
                if cur >= 0:
                    return self._answer(s)
            elif msg["to"] <= cur:
                return self._answer(s)
            elif msg["from"] > cur:
                return self._answer(s, "gap")
            changes, errors = self._changes(s, msg)
            now = now_ms()
            try:
                if self._touches_inflight(s, changes):
                    # Where our in-flight write to a record lands relative to the side's own
                    # change of it decides what the side holds: learn it before merging.
                    self._append(None)
                merged = self.logic.ingest(s, changes, now)
                pending = self._submit(merged)
                # The previous batch's writes were under way while we merged this one.
                self._append(InFlight(s, msg, payload, changes, merged, pending, errors, now))
            except BaseException:
                self._load()
                raise
            self._advance(self.cursors, s, msg)
            return self._answer(s)

    def flush(self, side: int) -> dict[str, Any]:
        """Wait for the last batch's writes and make it durable."""
        with self._lock:
            try:
                self._append(None)
            except BaseException:
                self._load()
                raise
            return self._answer(Side(side))

    def _touches_inflight(self, side: Side, changes: list[Change]) -> bool:
        if self.inflight is None:
            return False
        written = self.inflight.merged.writes[side]
        if not written:
            return False
        keys = {w.key for w in written}
        return any(c.key in keys for c in changes)

    def _answer(self, side: Side, status: str = "ok") -> dict[str, Any]:
        return {"status": status, "cursor": self.cursors[side], "durable": self.durable[side]}

    def _submit(self, merged: Outcome) -> list[tuple[Side, Any]]:
        """Send each side its writes (the writer actors work in parallel with us)."""
        pending = []
        for side in Side:
            batch = merged.writes[side]
            if batch:
                payload = encode("writes", rows=[[w.op, w.key, w.values] for w in batch])
                pending.append((side, ray_api.call(self.writers[side], "apply", payload)))
        return pending

    def _confirm(
        self, merged: Outcome, outcome: list[Any], now: int, errors: list[ErrorEntry]
    ) -> None:
        for target, position, failures in outcome:
            side = Side(target)
            errors += self.logic.confirm(side, merged.writes[side], position, failures, now)
            self.counts["writes"][side] += len(merged.writes[side]) - len(failures)

    def _append(self, batch: InFlight | None) -> None:
        """Collect the outcome of the batch in flight and append one WAL row: the new
        ``batch`` (now in flight in its place) and that outcome."""
        previous, self.inflight = self.inflight, batch
        if previous is None and batch is None:
            return
        outcome: list[Any] | None = None
        errors: list[ErrorEntry] = []
        conflicts: list[ConflictEntry] = []
        if previous is not None:
            results = ray_api.get([ref for _, ref in previous.pending]) if previous.pending else []
            outcome = []
            for (target, _), result in zip(previous.pending, results, strict=True):
                body = decode(result, "result")
                outcome.append([int(target), body["position"], body["errors"]])
            self._confirm(previous.merged, outcome, previous.now, errors)
            errors += previous.errors + previous.merged.errors
            conflicts = previous.merged.conflicts
        changes = 0 if batch is None else len(batch.changes)
        self.wal_last = self.store.append(
            None if batch is None else int(batch.side),
            None if batch is None else batch.payload,
            None if outcome is None else pack(outcome),
            changes,
            conflicts,
            errors,
        )
        self.wal_changes += changes
        if previous is not None:
            self._advance(self.durable, previous.side, previous.msg)
            self.counts["changes"][previous.side] += len(previous.changes)
            self.counts["batches"] += 1
        settle_heap()
        if self.wal_changes >= self.checkpoint_changes:
            self._checkpoint()

    def checkpoint(self) -> None:
        with self._lock:
            self._checkpoint()
            collect_all()

    def _checkpoint(self) -> None:
        self._append(None)  # a checkpoint must not hold a batch the WAL has not confirmed
        logic = self.logic
        if not self.wal_changes and not logic.dirty:
            return
        for side in Side:
            logic.settle(side, self.durable[side])
        records = logic.records
        self.store.checkpoint(
            [(key, records[key]) for key in logic.dirty],
            {"cursor_left": self.durable[0], "cursor_right": self.durable[1]},
            self.wal_last,
        )
        logic.dirty.clear()
        self.wal_changes = 0
        self.counts["checkpoints"] += 1

    def _idle_checkpoints(self) -> None:
        while not self._stop.wait(0.5):
            if self.wal_changes and time.monotonic() - self._last_apply >= CHECKPOINT_IDLE_S:
                try:
                    self.checkpoint()
                except Exception:  # NOTE: the WAL still holds everything; retry next round.
                    pass

    # NOTE: the lock keeps these off the store connection while a checkpoint uses it.

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "index": self.index,
                "pid": os.getpid(),
                "cursors": list(self.cursors),
                "durable": list(self.durable),
                "records": sum(1 for r in self.logic.records.values() if r.state.exists),
                "deleted": sum(
                    1 for r in self.logic.records.values() if r.state.dead and not r.state.exists
                ),
                "wal_changes": self.wal_changes,
                **self.counts,
                **self.store.counts(),
            }

    def conflicts(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return self.store.conflicts(limit)

    def errors(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return self.store.errors(limit)

    def record(self, key: list[Any]) -> dict[str, Any] | None:
        """The merged values of one record (None if absent or deleted)."""
        with self._lock:
            return self.logic.values(tuple(key))
