"""One partition at work: the protocol (`engine.pipeline`), its store, its WAL, its writers.

`PartitionRunner` is what the partition actor runs, without Ray: the writers are reached
through a `WriterPort` (the actor's is made of Ray calls; tests use plain objects), and time
through an injected clock. It merges a batch, appends it to the WAL, and only then sends its
writes, with a receipt number (the WAL row id): so if the partition dies, the batch is
replayed from the WAL and the writers tell, from the applications' own receipts, whether and
where its writes landed; if they did not, they are sent again. Nothing is merged twice,
nothing is lost, and what a side held after our write is always known exactly.

The outcome of a batch's writes is collected at the start of the next call (or by `flush`)
and appended with the next WAL row: merging batch k+1 overlaps with writing batch k. A batch
that touches a record with a write in flight to the same side, or that moves records, waits
for that write first. Mail for other partitions (see `engine.pipeline`) is made durable before
the answer carries it: a call that produced mail completes its writes before answering.

Calls: ``apply(side, payload)`` is idempotent per change sequence: a batch at or below the
cursor is acknowledged without effect, and a batch that starts past the cursor is answered
with ``gap`` so the reader resends from the cursor. ``deliver(side, payload)`` ignores mail it
already took (per source partition and side, mail is numbered).

Persisted (in `engine.store.PartitionStore`'s meta, at checkpoints; the WAL replays the
rest): the logic's counters, the cursors, the incarnation (``epoch``, which fences writes of
an earlier incarnation still on their way), the mail numbering, the mail not yet
acknowledged and the highest mail number taken per source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from engine.codec import decode, encode, pack, unpack
from engine.ids import Side
from engine.maps import CompiledMap
from engine.pipeline import (
    DEFAULT_CACHE_RECORDS,
    Change,
    ErrorEntry,
    Mail,
    Outcome,
    PartitionLogic,
    Write,
)
from engine.records import encode_record
from engine.store import PartitionStore

__all__ = ["PartitionRunner", "WriterPort"]

CHECKPOINT_CHANGES = 500_000  # WAL size (changes) that forces a checkpoint
CHECKPOINT_DIRTY = 200_000  # records changed since the last checkpoint that force one


class WriterPort(Protocol):
    """How a partition reaches the writers of its map's two sides."""

    def submit(self, side: Side, payload: bytes) -> Any:
        """Send a ``writes`` message; returns a handle for `results`."""

    def results(self, handles: list[Any]) -> list[bytes]:
        """The ``result`` messages of the writes sent (raises if a writer failed)."""

    def receipt(self, side: Side, writer: str, epoch: int) -> dict[str, Any] | None:
        """The last batch ``writer`` applied on ``side``: ``{"number", "position",
        "errors"}`` (errors as in a ``result`` message), or None; the writer refuses
        batches of earlier epochs from then on."""


class InFlight(NamedTuple):
    """A batch merged and in the WAL, whose writes are under way."""

    side: Side
    number: int  # its WAL row id: the receipt number of its writes
    merged: Outcome
    handles: list[tuple[Side, Any]]


class PartitionRunner:
    def __init__(
        self,
        cmap: CompiledMap,
        index: int,
        partitions: int,
        store: PartitionStore,
        writers: WriterPort,
        *,
        clock_ms: Callable[[], int],
        cache_records: int = DEFAULT_CACHE_RECORDS,
        checkpoint_changes: int = CHECKPOINT_CHANGES,
        checkpoint_dirty: int = CHECKPOINT_DIRTY,
    ) -> None:
        self.cmap = cmap
        self.index = index
        self.partitions = partitions
        self.store = store
        self.writers = writers
        self.now_ms = clock_ms
        self.cache_records = cache_records
        self.checkpoint_changes = checkpoint_changes
        self.checkpoint_dirty = checkpoint_dirty
        self.writer_id = f"{cmap.name}/{index}"
        self.counts: dict[str, Any] = {
            "changes": [0, 0],
            "writes": [0, 0],
            "batches": 0,
            "checkpoints": 0,
            "replayed": 0,
            "resent": 0,
            "retried": [0, 0],  # per side: writes made again after a duplicate refusal
        }
        self._reset({})

    def _reset(self, meta: dict[str, Any]) -> None:
        """The state a checkpoint's counters describe (before the WAL is replayed)."""
        self.logic = PartitionLogic(
            self.cmap,
            index=self.index,
            partitions=self.partitions,
            load=self.store.load,
            cache_records=self.cache_records,
        )
        self.logic.restore(meta.get("logic", {}))
        self.cursors = self.logic.stream  # per side, the change sequence merged up to
        self.epoch = int(meta.get("epoch", 0)) + 1
        self.mail_next: list[int] = list(meta.get("mail_next", [1, 1]))
        self.outbox: list[list[tuple[int, Mail]]] = [
            [(n, Mail(*m)) for n, m in box] for box in meta.get("outbox", [[], []])
        ]
        self.mail_seen: dict[str, int] = dict(meta.get("mail_seen", {}))
        self.inflight: InFlight | None = None
        self.wal_last = 0
        self.wal_changes = 0

    # -- state -----------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild from the store: the checkpoint's counters, then every WAL row after it,
        in order; then finish the last batch, whose writes' outcome was never recorded.

        Call it once after construction, and again after a call failed midway."""
        store = self.store
        self._reset(store.meta())
        # In the order the live partition did it: a row's message was merged before the
        # outcome it carries (of the batch before) was confirmed.
        last: tuple[Side, int, Outcome] | None = None
        for row in store.wal():
            current = None
            if row.payload is not None and row.side is not None:
                side = Side(row.side)
                merged, count = self._replay(side, row.payload)
                self.counts["replayed"] += count
                if self._has_writes(merged):
                    current = (side, row.id, merged)
            if row.outcome is not None:
                assert last is not None, f"WAL row {row.id} confirms a batch it lacks"
                self._confirm(last[2], unpack(row.outcome), 0, [])
                last = None
            if current is not None:
                assert last is None, f"WAL row {row.id}: the batch before it was not confirmed"
                last = current
            self.wal_last = row.id
            self.wal_changes += row.changes
        # Persist the new incarnation before fencing the writers with it.
        store.checkpoint([], [], {"epoch": self.epoch}, 0)
        if last is not None:
            self._recover(*last)

    def _replay(self, side: Side, payload: bytes) -> tuple[Outcome, int]:
        msg = decode(payload, "changes")
        if msg.get("mail") is not None:
            merged, deferred = self._take_mail(side, msg, 0)
            return merged, len(msg["mail"]) - len(deferred)
        if msg.get("retry") is not None:
            return self.logic.retry(side, [tuple(k) for k in msg["retry"]], 0), 0
        changes, _ = self._changes(side, msg)
        return self.logic.ingest(side, changes, 0, self._upto(msg)), len(changes)

    def _recover(self, side: Side, number: int, merged: Outcome) -> None:
        """Find out whether the writes of batch ``number`` landed (the writers' receipts);
        send those that did not; record the outcome."""
        outcome = []
        for target in Side:
            writes = merged.writes[target]
            if not writes:
                continue
            receipt = self.writers.receipt(target, self.writer_id, self.epoch)
            if receipt is not None and receipt["number"] == number:
                outcome.append([int(target), receipt["position"], receipt["errors"]])
                continue
            self.counts["resent"] += len(writes)
            handle = self.writers.submit(target, self._writes(writes, number))
            body = decode(self.writers.results([handle])[0], "result")
            outcome.append([int(target), body["position"], body["errors"]])
        errors: list[ErrorEntry] = []
        self._confirm(merged, outcome, self.now_ms(), errors)
        self.wal_last = self.store.append(None, None, pack(outcome), 0, (), errors)

    def _has_writes(self, merged: Outcome) -> bool:
        return bool(merged.writes[0] or merged.writes[1])

    @staticmethod
    def _upto(msg: dict[str, Any]) -> int | None:
        return None if msg["snap"] and not msg.get("final") else int(msg["to"])

    def _changes(
        self, side: Side, msg: dict[str, Any]
    ) -> tuple[list[Change], list[tuple[int, str | None, str, Any]]]:
        cur = self.cursors[side]
        snap = msg["snap"]
        make = tuple.__new__  # NOTE: not Change._make: a Python-level call less per change
        changes = [
            make(Change, (seq, op, tuple(key), ts, old, new))
            for seq, op, key, ts, old, new in msg["rows"]
            if snap or seq > cur
        ]
        errors = [(e[0], e[1], e[2], e[3]) for e in msg.get("errors", ()) if snap or e[0] > cur]
        return changes, errors

    # -- calls -----------------------------------------------------------------------------

    def apply(self, side: Side, payload: bytes) -> dict[str, Any]:
        msg = decode(payload, "changes")
        cur = self.cursors[side]
        self._ack(side, msg)
        if msg["snap"]:
            if cur >= 0:
                return self._answer(side)
        elif msg["to"] <= cur:
            return self._answer(side)
        elif msg["from"] > cur:
            return self._answer(side, "gap")
        changes, read_errors = self._changes(side, msg)
        now = self.now_ms()
        if self._must_wait(side, changes):
            self._complete()
        merged = self.logic.ingest(side, changes, now, self._upto(msg))
        errors = [
            self.logic.read_error(side, seq, field, message, row, now)
            for seq, field, message, row in read_errors
        ]
        errors += [
            ErrorEntry(now, self.cmap.name, self.cmap.apps[side], None, None, kind, text, body)
            for kind, text, body in msg.get("notes", ())
        ]
        mail = self._post(side, merged)
        self._record(side, payload, merged, errors, len(changes))
        if mail:
            self._complete()
        if self.logic.retry_due[0] or self.logic.retry_due[1]:
            self._retry_due()  # (a stream that never pauses still retries)
        return self._answer(side, mail=mail)

    def deliver(self, side: Side, payload: bytes) -> dict[str, Any]:
        """Take mail from other partitions (durably: answered once in the WAL). Mail it
        cannot take yet comes back as ``deferred``, for the reader to send again."""
        msg = decode(payload, "changes")
        self._complete()
        merged, deferred = self._take_mail(side, msg, self.now_ms())
        mail = self._post(side, merged)
        self._record(side, payload, merged, [], len(msg["mail"]) - len(deferred))
        self._complete()
        answer = self._answer(side, mail=mail)
        if deferred:
            answer["deferred"] = deferred
        return answer

    def _take_mail(
        self, side: Side, msg: dict[str, Any], now: int
    ) -> tuple[Outcome, list[list[Any]]]:
        fresh, items = [], []
        for item in msg["mail"]:
            source, number, mail = item
            if number <= self.mail_seen.get(f"{source}/{int(side)}", 0):
                continue  # delivered before (the reader sends again after a restart)
            kind, key, origin, body = mail
            fresh.append(Mail(kind, tuple(key), origin, body))
            items.append(item)
        merged, taken = self.logic.deliver(side, fresh, now)
        for source, number, _ in items[:taken]:
            self.mail_seen[f"{source}/{int(side)}"] = number
        return merged, items[taken:]

    def flush(self, side: Side, acked: int = 0) -> dict[str, Any]:
        """Wait for the last batch's writes and record their outcome; then write again the
        records refused on a duplicate unique value whose next try is due (see
        `engine.pipeline.PartitionLogic.retry`): the answer says ``retrying`` while any
        wait, so the reader flushes again a little later."""
        self._ack(side, {"acked": acked})
        self._complete()
        self._retry_due()
        return self._answer(side)

    def _retry_due(self) -> None:
        """Write again the refused records whose next try is due (one WAL row per side)."""
        now = self.now_ms()
        for target in Side:
            keys = self.logic.retries_due(target, now)
            if not keys:
                continue
            self._complete()
            # NOTE: in the WAL like any batch, so that a restart replays the same writes.
            payload = encode(
                "changes",
                side=int(target),
                snap=False,
                to=self.cursors[target],
                rows=[],
                retry=[list(k) for k in keys],
                **{"from": self.cursors[target]},
            )
            merged = self.logic.retry(target, keys, now)
            self._record(target, payload, merged, [], 0)
            self.counts["retried"][target] += len(merged.writes[target])

    def outbox_of(self, side: Side) -> list[list[Any]]:
        """The mail of ``side``'s reader not acknowledged yet (a restarted reader sends it
        again)."""
        return [[n, list(m)] for n, m in self.outbox[side]]

    def _ack(self, side: Side, msg: dict[str, Any]) -> None:
        acked = msg.get("acked")
        if acked:
            self.outbox[side] = [(n, m) for n, m in self.outbox[side] if n > acked]

    def _post(self, side: Side, merged: Outcome) -> list[list[Any]]:
        """Number the mail of a merge and keep it until the reader acknowledges it."""
        posted = []
        for mail in merged.mail:
            number = self.mail_next[side]
            self.mail_next[side] = number + 1
            self.outbox[side].append((number, mail))
            posted.append([number, list(mail)])
        return posted

    def _must_wait(self, side: Side, changes: list[Change]) -> bool:
        """Whether the batch in flight must be confirmed before merging ``changes``: where
        our write to a record lands relative to the side's own change of it decides what
        the side holds; and a record that moves takes its writes with it."""
        inflight = self.inflight
        if inflight is None:
            return False
        if any(c.op == "M" for c in changes):
            return True
        written = inflight.merged.writes[side]
        if not written:
            return False
        keys = {w.key for w in written}
        return any(c.key in keys for c in changes)

    def _answer(
        self, side: Side, status: str = "ok", mail: list[list[Any]] | None = None
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "status": status,
            "cursor": self.cursors[side],
            "durable": self.cursors[side],
            "busy": self.inflight is not None,  # writes under way: a flush confirms them
        }
        if self.logic.retrying[0] or self.logic.retrying[1]:
            answer["retrying"] = True
        if mail:
            answer["mail"] = mail
        return answer

    def _writes(self, writes: list[Write], number: int) -> bytes:
        return encode(
            "writes",
            rows=writes,  # a `Write` packs as its wire row: [op, key, values, old]
            writer=self.writer_id,
            epoch=self.epoch,
            number=number,
        )

    def _record(
        self,
        side: Side,
        payload: bytes,
        merged: Outcome,
        errors: list[ErrorEntry],
        count: int,
    ) -> None:
        """Append the merged message to the WAL, with the outcome of the batch in flight,
        then send the new batch's writes."""
        previous, self.inflight = self.inflight, None
        outcome, confirm_errors = self._collect(previous)
        number = self.store.next_wal_id()
        self.wal_last = self.store.append(
            int(side),
            payload,
            None if outcome is None else pack(outcome),
            count,
            merged.conflicts,
            [*errors, *merged.errors, *confirm_errors],
        )
        assert self.wal_last == number
        self.wal_changes += count
        self.counts["changes"][side] += count
        self.counts["batches"] += 1
        if self._has_writes(merged):
            handles = [
                (target, self.writers.submit(target, self._writes(merged.writes[target], number)))
                for target in Side
                if merged.writes[target]
            ]
            self.inflight = InFlight(side, number, merged, handles)
        if (
            self.wal_changes >= self.checkpoint_changes
            or len(self.logic.cache.dirty) >= self.checkpoint_dirty
        ):
            self.checkpoint()

    def _collect(self, batch: InFlight | None) -> tuple[list[Any] | None, list[ErrorEntry]]:
        """Wait for ``batch``'s writes and confirm them."""
        if batch is None:
            return None, []
        results = self.writers.results([h for _, h in batch.handles])
        outcome = []
        for (target, _), result in zip(batch.handles, results, strict=True):
            body = decode(result, "result")
            outcome.append([int(target), body["position"], body["errors"]])
        errors: list[ErrorEntry] = []
        self._confirm(batch.merged, outcome, self.now_ms(), errors)
        return outcome, errors

    def _complete(self) -> None:
        """Confirm the batch in flight and record its outcome."""
        previous, self.inflight = self.inflight, None
        if previous is None:
            return
        outcome, errors = self._collect(previous)
        self.wal_last = self.store.append(None, None, pack(outcome), 0, (), errors)

    def _confirm(
        self, merged: Outcome, outcome: list[Any], now: int, errors: list[ErrorEntry]
    ) -> None:
        for target, position, failures in outcome:
            side = Side(target)
            writes = merged.writes[side]
            errors += self.logic.confirm(side, writes, position, failures, now)
            self.counts["writes"][side] += len(writes) - len(failures)

    def checkpoint(self) -> None:
        """Store the records changed since the last checkpoint and let the WAL go."""
        self._complete()
        logic = self.logic
        if not self.wal_changes and not logic.cache.dirty and not logic.cache.gone:
            return
        for side in Side:
            logic.settle(side, self.cursors[side])
        cache = logic.cache
        self.store.checkpoint(
            [(key, encode_record(rec)) for key, rec in cache.dirty.items()],
            cache.gone,
            {
                "logic": logic.meta(),
                "epoch": self.epoch,
                "mail_next": self.mail_next,
                "outbox": [[[n, list(m)] for n, m in box] for box in self.outbox],
                "mail_seen": self.mail_seen,
            },
            self.wal_last,
        )
        cache.checkpointed()
        self.wal_changes = 0
        self.counts["checkpoints"] += 1

    # -- observation -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        cache = self.logic.cache
        return {
            "index": self.index,
            "cursors": list(self.cursors),
            "durable": list(self.cursors),
            "records": self.logic.records,
            "deleted": self.logic.deleted,
            "clock": list(self.logic.clock),
            "cached": len(cache),
            "dirty": len(cache.dirty),
            "loads": cache.loads,
            "wal_changes": self.wal_changes,
            "retrying": [len(self.logic.retrying[0]), len(self.logic.retrying[1])],
            "epoch": self.epoch,
            **self.counts,
            **self.store.counts(),
        }

    def record(self, key: tuple[Any, ...]) -> Any:
        return self.logic.values(key)
