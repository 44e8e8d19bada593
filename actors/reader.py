"""Reader actor: streams one side's changes of one map to the partitions, in batches.

A background thread loops: read up to ``batch`` changes past the read position, stamp them
with the side's hybrid clock (driven by the application's commit times), route each record
to its partition by a stable hash, send every partition its slice (one call per partition
per batch, even when empty, so that each partition's cursor moves with the stream), and wait
for the acknowledgements. Changes are trimmed from the application's change table only once
every partition has persisted past them.

Up to `WINDOW` batches are in flight at once. A partition answers with the cursor it has
merged up to and the cursor its WAL holds (durable); when the stream runs dry, the reader
asks the partitions to flush, so everything read is durable before it calls itself idle.

A partition that failed a call, restarted, or answered ``gap`` is "behind": the reader asks
it for its durable cursor and resends it the changes it is missing from the change table,
before going on. So a restarted partition loses nothing and merges nothing twice.

The first time a map plays, partitions have no cursor (-1): the reader sends them a snapshot
of the existing rows (consistent with the change-sequence head it reads in the same
transaction) and then the head as their cursor.

The loop never dies on an exception: it records it, backs off and tries again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from actors import ray_api
from actors.tuning import tune_gc
from conflict import HybridClock
from engine.codec import encode
from engine.connectors import RawChange, open_connector
from engine.errors import DualsyncError
from engine.ids import Mode, Side
from engine.maps import EntityMap
from engine.pipeline import partition_of

ACK_EVERY_S = 1.0
WINDOW = 2  # batches in flight at once (measured best on 2 cores with python -m bench e2e)
IDLE_WAIT_S = 0.05
CALL_TIMEOUT_S = 120.0


class Reader:
    def __init__(
        self,
        spec: dict[str, Any],
        side: int,
        app_url: str,
        partitions: list[Any],
        options: dict[str, Any] | None = None,
    ) -> None:
        tune_gc()
        options = options or {}
        self.side = Side(side)
        self.emap = EntityMap.model_validate(spec)
        cmap = self.emap.compile()
        self.cmap = cmap
        self.app = cmap.apps[self.side]
        self.capture = cmap.capture(self.side)
        self.connector = open_connector(self.app, app_url)
        self.connector.prepare(self.capture)
        self.partitions = partitions
        self.batch = int(options.get("batch_size", 5000))
        self.window = int(options.get("window", WINDOW))
        self.clock = HybridClock(self.app)
        self.mode = Mode.PAUSE
        self.sent: list[int] | None = None  # per partition: its durable cursor, as last told
        self.expected: list[int] = []  # per partition: where it is once in-flight calls land
        self.inflight: deque[list[tuple[int, Any]]] = deque()
        self.read_pos = 0
        self.acked = 0
        self.behind: set[int] = set()
        self.idle = False
        self.polls = 0
        self.counts = {"changes": 0, "batches": 0, "read_errors": 0, "failures": 0}
        self.last_error: str | None = None
        self._last_ack = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"reader-{cmap.name}-{self.side.label}", daemon=True
        )
        self._thread.start()

    # -- control -------------------------------------------------------------------------

    def ready(self) -> bool:
        return True

    def set_mode(self, mode: str) -> str:
        self.mode = Mode(mode)
        self._wake.set()
        return self.mode.value

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.connector.close()

    def status(self) -> dict[str, Any]:
        try:
            head: int | None = self.connector.head(self.capture)
        except DualsyncError:
            head = None
        return {
            "pid": os.getpid(),
            "side": self.side.label,
            "app": self.app,
            "mode": self.mode.value,
            "read_pos": self.read_pos,
            "head": head,
            "acked": self.acked,
            "idle": self.mode is Mode.PLAY and self.idle and not self.behind and not self.inflight,
            "polls": self.polls,
            "behind": sorted(self.behind),
            "last_error": self.last_error,
            **self.counts,
        }

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self.mode is not Mode.PLAY:
                self.idle = False
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                if self.sent is None:
                    self._start()
                if self.behind:
                    self._resync()
                self._step()
                failures = 0
            except Exception as exc:  # NOTE: the loop must survive anything; it retries.
                failures += 1
                self.counts["failures"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.idle = False
                self._stop.wait(min(1.0, 0.02 * 2 ** min(failures, 6)))

    def _flush(self, which: Sequence[int] | None = None) -> list[int]:
        """Flush the partitions (all, or ``which``) and return their durable cursors."""
        chosen = range(len(self.partitions)) if which is None else which
        refs = [ray_api.call(self.partitions[p], "flush", int(self.side)) for p in chosen]
        return [int(a["durable"]) for a in ray_api.get(refs, timeout=CALL_TIMEOUT_S)]

    def _start(self) -> None:
        while True:
            cursors = self._flush()
            fresh = [i for i, c in enumerate(cursors) if c < 0]
            if not fresh:
                break
            self._initial(fresh)
        self.sent = cursors
        self.expected = list(cursors)
        self.read_pos = min(cursors)
        self.acked = self.read_pos
        self.behind.clear()
        self.inflight.clear()

    def _initial(self, fresh: list[int]) -> None:
        """Snapshot the existing rows into partitions that have never synced.

        A partition that misses any chunk (it failed or restarted meanwhile) does not get the
        final marker: it stays uninitialised and is sent the whole snapshot again.
        """
        targets = list(fresh)
        if self.emap.initial_sync:
            head, chunks = self.connector.snapshot(self.capture, self.batch)
            for rows in chunks:
                raws = [RawChange(head, "S", 0, None, row) for row in rows]
                now = time.time_ns() // 1_000_000
                parts, errors = self._decode(raws, stamp_ms=now)
                self._call(targets, parts, errors, hi=head, snap=True)
                targets = [p for p in targets if p not in self.behind]
        else:
            head = self.connector.head(self.capture)
        self._call(targets, None, [], hi=head, snap=True, final=True)
        self.behind.difference_update(fresh)

    def _step(self) -> None:
        """Read and send the next batch, keeping up to ``window`` batches in flight."""
        raws = []
        if len(self.inflight) < self.window:
            raws = self.connector.read_changes(self.capture, self.read_pos, self.batch)
        if raws:
            self.idle = False
            hi = raws[-1].seq
            parts, errors = self._decode(raws)
            targets = [i for i in range(len(self.partitions)) if i not in self.behind]
            self.inflight.append(self._submit(targets, parts, errors, hi=hi))
            self.read_pos = hi
            self.counts["changes"] += len(raws)
            self.counts["batches"] += 1
            return
        if self.inflight:
            self._collect(self.inflight.popleft())
            self._maybe_ack()
            return
        assert self.sent is not None
        unflushed = [
            p for p, d in enumerate(self.sent) if d < self.expected[p] and p not in self.behind
        ]
        if unflushed:
            # Caught up: make the partitions' last batches durable (their writes are done).
            try:
                durables = self._flush(unflushed)
            except DualsyncError:
                self.behind.update(unflushed)
                raise
            for p, durable in zip(unflushed, durables, strict=True):
                self.sent[p] = durable
                if durable < self.expected[p]:
                    self.behind.add(p)  # it restarted and lost what was in flight: resend
            return
        self.polls += 1
        self.idle = True
        self._maybe_ack()
        self.connector.wait_for_changes(self.capture, self.read_pos, IDLE_WAIT_S)

    def _resync(self) -> None:
        """Resend each lagging partition what it misses, from its durable cursor."""
        assert self.sent is not None
        while self.inflight:
            self._collect(self.inflight.popleft())
        for p in sorted(self.behind):
            cursor = self._flush([p])[0]
            if cursor < 0:
                self.sent = None  # it lost even its initial sync: start over
                return
            self.sent[p] = self.expected[p] = cursor
            self.behind.discard(p)
            # NOTE: progress is what was sent (``expected``); the durable cursor lags a batch.
            while self.expected[p] < self.read_pos and p not in self.behind:
                raws = [
                    r
                    for r in self.connector.read_changes(self.capture, self.expected[p], self.batch)
                    if r.seq <= self.read_pos
                ]
                hi = raws[-1].seq if raws else self.read_pos
                parts, errors = self._decode(raws)
                self._call([p], parts, errors, hi=hi)
            if p in self.behind:
                return

    def _call(self, targets: Sequence[int], parts: Any, errors: list[Any], **batch: Any) -> None:
        """Send each target partition its slice and wait for the answers (see `_submit`)."""
        while self.inflight:
            self._collect(self.inflight.popleft())
        self._collect(self._submit(targets, parts, errors, **batch))

    def _submit(
        self,
        targets: Sequence[int],
        parts: list[list[Any]] | None,
        errors: list[Any],
        *,
        hi: int,
        snap: bool = False,
        final: bool = False,
    ) -> list[tuple[int, Any]]:
        side = int(self.side)
        refs = []
        for p in targets:
            payload = encode(
                "changes",
                side=side,
                snap=snap,
                final=final,
                to=hi,
                rows=parts[p] if parts else [],
                errors=errors if p == 0 else [],
                **{"from": -1 if snap else self.expected[p]},
            )
            refs.append((p, ray_api.call(self.partitions[p], "apply", side, payload)))
            if not snap:
                self.expected[p] = hi
        return refs

    def _collect(self, refs: list[tuple[int, Any]]) -> None:
        """Wait for a batch's answers; a partition that failed is marked behind."""
        for p, ref in refs:
            try:
                answer = ray_api.get(ref, timeout=CALL_TIMEOUT_S)
            except DualsyncError as exc:
                self.behind.add(p)
                self.counts["failures"] += 1
                self.last_error = f"partition {p}: {type(exc).__name__}: {exc}"
                continue
            if answer["status"] != "ok":
                self.behind.add(p)
            elif self.sent is not None:
                self.sent[p] = max(self.sent[p], int(answer["durable"]))

    def _decode(
        self, raws: Sequence[RawChange], stamp_ms: int | None = None
    ) -> tuple[list[list[Any]], list[Any]]:
        """Route changes to partitions in wire form; rows with a NULL key become errors."""
        n = len(self.partitions)
        parts: list[list[Any]] = [[] for _ in range(n)]
        errors: list[Any] = []
        key_idx = self.cmap.key
        clock = self.clock
        for raw in raws:
            seq, op, at_ms, old, new = raw
            image = old if op == "D" else new
            assert image is not None
            key = [image[i] for i in key_idx]
            if None in key:
                errors.append(self._null_key_error(raw, key))
                self.counts["read_errors"] += 1
                continue
            ts = clock.now(stamp_ms if stamp_ms is not None else at_ms)
            if op == "U":
                assert old is not None
                if any(old[i] != new[i] for i in key_idx):  # type: ignore[index]
                    old_key = [old[i] for i in key_idx]
                    # A key change is a delete of the old key and an insert of the new one.
                    parts[partition_of(old_key, n)].append([seq, "D", old_key, ts, old, None])
                    op, old = "I", None
            parts[partition_of(key, n)].append([seq, op, key, ts, old, new])
        return parts, errors

    def _null_key_error(self, raw: RawChange, key: list[Any]) -> list[Any]:
        names = self.cmap.fields
        field = names[self.cmap.key[key.index(None)]]
        column = self.capture.columns[self.cmap.key[key.index(None)]]
        image = raw.old if raw.op == "D" else raw.new
        assert image is not None
        row = dict(zip(self.capture.columns, image, strict=True))
        message = (
            f"{self.app}.{self.capture.entity}: key column {column!r} is NULL; "
            "the record cannot be synced until it has a key"
        )
        return [raw.seq, field, message, {"op": raw.op, "values": row}]

    def _maybe_ack(self) -> None:
        if self.sent is None:
            return
        floor = min(self.sent)
        if floor > self.acked and time.monotonic() - self._last_ack >= ACK_EVERY_S:
            self.connector.ack(self.capture, floor)
            self.acked = floor
            self._last_ack = time.monotonic()
