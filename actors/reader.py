"""Reader actor: streams one side's changes of one map to the partitions, in batches.

A background thread loops: read up to ``batch`` changes past the read position, stamp them
with the side's bounded hybrid clock (`conflict.BoundedClock`: the application's commit
times, clipped to the window in which the engine saw them commit, plus a tolerance), route
each record to its partition by a stable hash of the key its row had before the change,
send every partition its slice (one call per partition per batch, even when empty, so that
each partition's cursor moves with the stream), and wait for the acknowledgements. Changes
are trimmed from the application's change table once every partition has them in its WAL.

Up to `WINDOW` batches are in flight at once. When the stream runs dry, the reader asks the
partitions to flush, so every write is confirmed before it calls itself idle.

Keys. An update that changes a record's key is sent as one change (op ``M``), routed by the
old key, and ends its batch: the reader waits for every answer and delivers the mail the
partitions sent (a record moving to the partition of its new key, changes forwarded after
a record that moved, redirects) before it sends anything else, so the side's next changes,
made at the new key, find the record there. Mail can come back from any batch (a change of a
record that moved away is forwarded); the reader delivers it as soon as it has the answer,
partition to partition until none is left, and tells each source which of its mail is
delivered. A restarted reader first delivers what the partitions' outboxes still hold.

A partition that failed a call, restarted, or answered ``gap`` is "behind": the reader asks
it for its cursor and resends it the changes it is missing from the change table, before
going on. So a restarted partition loses nothing and merges nothing twice.

The first time a map plays, partitions have no cursor (-1): the reader sends them a snapshot
of the existing rows (consistent with the change-sequence head it reads in the same
transaction) and then the head as their cursor.

The clock resumes after the latest stamp any partition merged (a restart never stamps
lower); the skew the application's clock shows is in `status`, and each time it passes the
tolerance (and when it comes back) an error entry of kind ``clock`` is logged.

The loop never dies on an exception: it records it, backs off and tries again.
"""

from __future__ import annotations

import operator
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from actors import ray_api
from actors.tuning import tune_gc
from conflict import DEFAULT_TOLERANCE_MS, BoundedClock, Origins
from engine.codec import encode
from engine.connectors import RawChange, open_connector
from engine.errors import DualsyncError
from engine.ids import Mode, Side
from engine.maps import EntityMap
from engine.pipeline import partition_of, partitioner

ACK_EVERY_S = 1.0
WINDOW = 2  # batches in flight at once (measured best on 2 cores with python -m bench e2e)
IDLE_WAIT_S = 0.05
RETRY_WAIT_S = 0.02  # between flushes of a partition with refused records to write again
CALL_TIMEOUT_S = 120.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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
        self.key_of = operator.itemgetter(*cmap.key)
        self.connector = open_connector(self.app, app_url)
        self.connector.prepare(self.capture)
        self.partitions = partitions
        self.batch = int(options.get("batch_size", 5000))
        self.window = int(options.get("window", WINDOW))
        self.rank = Origins(list(cmap.apps)).rank(self.app)
        self.tolerance_ms = int(options.get("clock_tolerance_ms", DEFAULT_TOLERANCE_MS))
        self.clock = BoundedClock(self.rank, self.tolerance_ms)
        self.skewed = False
        self.notes: list[list[Any]] = []  # clock entries for the next batch to log
        self.looked_ms = 0  # when the reader last saw the end of the change log (0: never)
        self.mode = Mode.PAUSE
        self.sent: list[int] | None = None  # per partition: its cursor, as last told
        self.expected: list[int] = []  # per partition: where it is once in-flight calls land
        self.inflight: deque[list[tuple[int, Any]]] = deque()
        self.busy: set[int] = set()  # partitions whose last batch's writes are under way
        self.acked_mail = [0] * len(partitions)  # per partition: its mail delivered up to
        self.undelivered: list[tuple[int, int, list[Any]]] = []  # (source, number, mail)
        self.read_pos = 0
        self.acked = 0
        self.behind: set[int] = set()
        self.idle = False
        self.polls = 0
        self.counts = {
            "changes": 0,
            "batches": 0,
            "read_errors": 0,
            "failures": 0,
            "moves": 0,
            "mail": 0,
        }
        self.last_error: str | None = None
        self._last_ack = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"reader-{cmap.name}-{self.side.label}", daemon=True
        )
        self._thread.start()

    # -- control ---------------------------------------------------------------------------

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
        idle = (
            self.mode is Mode.PLAY
            and self.idle
            and not self.behind
            and not self.inflight
            and not self.busy
            and not self.undelivered
        )
        last = Origins(list(self.cmap.apps)).timestamp(self.clock.last)
        return {
            "pid": os.getpid(),
            "side": self.side.label,
            "app": self.app,
            "mode": self.mode.value,
            "read_pos": self.read_pos,
            "head": head,
            "acked": self.acked,
            "idle": idle,
            "polls": self.polls,
            "behind": sorted(self.behind),
            "last_error": self.last_error,
            "clock": [last.wall_ms, last.counter],
            "skew_ms": self.clock.skew_ms,
            "clock_tolerance_ms": self.tolerance_ms,
            **self.counts,
        }

    # -- the loop --------------------------------------------------------------------------

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
                if self.undelivered:
                    self._deliver([])
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

    def _flush(self, which: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Flush the partitions (all, or ``which``) and return their answers."""
        chosen = range(len(self.partitions)) if which is None else which
        refs = [
            ray_api.call(self.partitions[p], "flush", int(self.side), self._acked(p))
            for p in chosen
        ]
        return list(ray_api.get(refs, timeout=CALL_TIMEOUT_S))

    def _start(self) -> None:
        while True:
            answers = self._flush()
            cursors = [int(a["durable"]) for a in answers]
            last = max(int(a.get("clock", 0)) for a in answers)
            if last > self.clock.last:
                self.clock = BoundedClock(self.rank, self.tolerance_ms, last)
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
        self.busy.clear()
        # partitions with refused records to write again want flushing (see `_step`)
        self.busy.update(i for i, a in enumerate(answers) if a.get("retrying"))
        # Mail the partitions sent through us before a restart: deliver it (again).
        refs = [ray_api.call(p, "outbox", int(self.side)) for p in self.partitions]
        boxes = ray_api.get(refs, timeout=CALL_TIMEOUT_S)
        self._deliver(
            [(source, number, mail) for source, box in enumerate(boxes) for number, mail in box]
        )

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
                parts, errors = self._decode(raws, snapshot_ms=now_ms())
                self._call(targets, parts, errors, hi=head, snap=True)
                targets = [p for p in targets if p not in self.behind]
        else:
            head = self.connector.head(self.capture)
        self._call(targets, None, [], hi=head, snap=True, final=True)
        self.behind.difference_update(fresh)

    def _read(self, after: int) -> tuple[list[RawChange], int, int]:
        """Changes past ``after`` (a batch at most), and the window in which those not seen
        before committed (engine time, ms): since the last look that reached the end of the
        log, until now."""
        start = now_ms()
        raws = self.connector.read_changes(self.capture, after, self.batch)
        earliest = self.looked_ms
        if len(raws) < self.batch:
            self.looked_ms = start
        return raws, earliest, now_ms()

    def _step(self) -> None:
        """Read and send the next batch, keeping up to ``window`` batches in flight."""
        raws: list[RawChange] = []
        if len(self.inflight) < self.window:
            raws, earliest, latest = self._read(self.read_pos)
        if raws:
            self.idle = False
            moves = self._moves(raws)
            if moves < len(raws):
                raws = raws[: moves + 1]  # a move ends its batch (see the module docstring)
            hi = raws[-1].seq
            parts, errors = self._decode(raws, earliest=earliest, latest=latest)
            targets = [i for i in range(len(self.partitions)) if i not in self.behind]
            self.inflight.append(self._submit(targets, parts, errors, hi=hi))
            self.read_pos = hi
            self.counts["changes"] += len(raws)
            self.counts["batches"] += 1
            if moves < len(raws):
                self.counts["moves"] += 1
                while self.inflight:
                    self._collect(self.inflight.popleft())
            return
        if self.inflight:
            self._collect(self.inflight.popleft())
            self._maybe_ack()
            return
        assert self.sent is not None
        unflushed = sorted(self.busy - self.behind)
        if unflushed:
            # Caught up: have the partitions confirm their last writes.
            try:
                answers = self._flush(unflushed)
            except DualsyncError:
                self.behind.update(unflushed)
                raise
            retrying = False
            for p, answer in zip(unflushed, answers, strict=True):
                durable = int(answer["durable"])
                self.sent[p] = durable
                if answer.get("retrying"):
                    retrying = True  # records it writes again soon: flush it again then
                else:
                    self.busy.discard(p)
                if durable < self.expected[p]:
                    self.behind.add(p)  # it restarted and lost what was in flight: resend
            if retrying:
                self.connector.wait_for_changes(self.capture, self.read_pos, RETRY_WAIT_S)
            return
        self.polls += 1
        self.idle = True
        self._maybe_ack()
        self.connector.wait_for_changes(self.capture, self.read_pos, IDLE_WAIT_S)

    def _moves(self, raws: Sequence[RawChange]) -> int:
        """The index of the first change of ``raws`` that changes the key (len: none)."""
        get = self.key_of  # a key value, or a tuple of them
        for i, (_, op, _, old, new) in enumerate(raws):
            if op == "U" and get(old) != get(new):  # type: ignore[arg-type]  # (an update has both)
                return i
        return len(raws)

    def _resync(self) -> None:
        """Resend each lagging partition what it misses, from its cursor."""
        assert self.sent is not None
        while self.inflight:
            self._collect(self.inflight.popleft())
        for p in sorted(self.behind):
            cursor = int(self._flush([p])[0]["durable"])
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
                moves = self._moves(raws)
                raws = raws[: moves + 1]
                hi = raws[-1].seq if raws else self.read_pos
                # NOTE: resent changes were seen before; when they committed is not known.
                parts, errors = self._decode(raws, earliest=0, latest=now_ms())
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
        notes, self.notes = self.notes, []
        for p in targets:
            payload = encode(
                "changes",
                side=side,
                snap=snap,
                final=final,
                to=hi,
                rows=parts[p] if parts else [],
                errors=errors if p == 0 else [],
                notes=notes if p == 0 else [],
                acked=self._acked(p),
                **{"from": -1 if snap else self.expected[p]},
            )
            refs.append((p, ray_api.call(self.partitions[p], "apply", side, payload)))
            if not snap:
                self.expected[p] = hi
        return refs

    def _collect(self, refs: list[tuple[int, Any]]) -> None:
        """Wait for a batch's answers; a partition that failed is marked behind. Mail in the
        answers is delivered at once."""
        mail: list[tuple[int, int, list[Any]]] = []
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
            if answer.get("busy") or answer.get("retrying"):
                self.busy.add(p)
            else:
                self.busy.discard(p)
            mail += [(p, number, m) for number, m in answer.get("mail", ())]
        if mail or self.undelivered:
            self._deliver(mail)

    def _acked(self, source: int) -> int:
        """Partition ``source``'s mail delivered up to (none of it still waiting)."""
        waiting = [n for s, n, _ in self.undelivered if s == source]
        return min([self.acked_mail[source], *(n - 1 for n in waiting)])

    def _deliver(self, mail: list[tuple[int, int, list[Any]]]) -> None:
        """Deliver mail to the partitions owning its keys, and the mail that brings, until
        none is left. Each delivery is durable when answered; mail a partition could not
        take waits in ``undelivered`` and is tried again."""
        pending = [*self.undelivered, *mail]
        self.undelivered = []
        n = len(self.partitions)
        side = int(self.side)
        while pending:
            by_target: dict[int, list[list[Any]]] = {}
            for source, number, m in pending:
                by_target.setdefault(partition_of(m[1], n), []).append([source, number, m])
            pending = []
            refs = [
                (
                    t,
                    items,
                    ray_api.call(
                        self.partitions[t],
                        "deliver",
                        side,
                        encode("changes", side=side, snap=False, mail=items),
                    ),
                )
                for t, items in by_target.items()
            ]
            for target, items, ref in refs:
                try:
                    answer = ray_api.get(ref, timeout=CALL_TIMEOUT_S)
                except DualsyncError as exc:
                    self.counts["failures"] += 1
                    self.last_error = f"partition {target}: {type(exc).__name__}: {exc}"
                    self.undelivered += [(s, num, m) for s, num, m in items]
                    continue
                deferred = answer.get("deferred", [])
                taken = items[: len(items) - len(deferred)]
                self.counts["mail"] += len(taken)
                for source, number, _ in taken:
                    self.acked_mail[source] = max(self.acked_mail[source], number)
                # NOTE: a change forwarded after a record the other side's reader has not
                # delivered yet: sent again on the next round of the loop.
                self.undelivered += [(s, num, m) for s, num, m in deferred]
                pending += [(target, number, m) for number, m in answer.get("mail", ())]

    def _decode(
        self,
        raws: Sequence[RawChange],
        *,
        earliest: int = 0,
        latest: int = 0,
        snapshot_ms: int | None = None,
    ) -> tuple[list[list[Any]], list[Any]]:
        """Stamp and route changes to partitions in wire form; rows with a NULL key become
        errors."""
        n = len(self.partitions)
        parts: list[list[Any]] = [[] for _ in range(n)]
        errors: list[Any] = []
        key_idx = self.cmap.key
        clock = self.clock
        if snapshot_ms is not None:
            stamps = [clock.now(snapshot_ms) for _ in raws]
        else:
            stamps = clock.stamp_many([raw.at_ms for raw in raws], earliest, latest)
        owner = partitioner(n)
        get, single = self.key_of, len(key_idx) == 1  # ``get``: a key value, or a tuple
        # NOTE: the hot path of the reader: one pass, no generator per change.
        for raw, ts in zip(raws, stamps, strict=True):
            seq, op, _, old, new = raw
            if op == "U":
                assert old is not None and new is not None
                was, now = get(old), get(new)
                if (was is None or now is None) if single else (None in was or None in now):
                    errors.append(self._null_key_error(raw))
                    self.counts["read_errors"] += 1
                    continue
                key = [was] if single else list(was)
                if now != was:
                    op = "M"
            else:
                image = new if op != "D" else old
                assert image is not None
                key = [image[i] for i in key_idx]
                if None in key:
                    errors.append(self._null_key_error(raw))
                    self.counts["read_errors"] += 1
                    continue
            parts[owner(key)].append([seq, op, key, ts, old, new])
        if snapshot_ms is None and raws:
            self._watch_skew()
        return parts, errors

    def _watch_skew(self) -> None:
        skewed = self.clock.skewed
        if skewed == self.skewed:
            return
        self.skewed = skewed
        skew = self.clock.skew_ms
        if skewed:
            message = (
                f"{self.app}'s clock is {abs(skew):,} ms {'ahead of' if skew > 0 else 'behind'}"
                f" the engine's (tolerance {self.tolerance_ms:,} ms): its commit times are "
                "clipped to the tolerance"
            )
        else:
            message = f"{self.app}'s clock is back within {self.tolerance_ms:,} ms of the engine's"
        self.notes.append(["clock", message, {"skew_ms": skew, "tolerance_ms": self.tolerance_ms}])

    def _null_key_error(self, raw: RawChange) -> list[Any]:
        names = self.cmap.fields
        old, new = raw.old, raw.new
        image = old if raw.op == "D" or (raw.op == "U" and old and None in old) else new
        assert image is not None
        at = next(i for i in self.cmap.key if image[i] is None)
        field, column = names[at], self.capture.columns[at]
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
