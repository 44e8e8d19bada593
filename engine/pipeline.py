"""The sync protocol of one partition, sans I/O.

`PartitionLogic.ingest(side, changes)` takes a batch of captured changes from one side and
returns the writes to make on each side plus the conflicts and errors to log;
`PartitionLogic.confirm(side, writes, failures)` takes the outcome of those writes. Nothing
here talks to Ray, a database or the clock: the actor shell in ``actors/`` carries the bytes.

Per record the partition keeps (`Tracked`):

- ``state``: the merged `RecordState` (field registers, existence);
- ``seen[side]``: what the engine knows that side holds: ``None`` (no row), `UNSEEN` (not
  known) or a list of values in canonical field order (a field may be `UNSEEN`);
- ``pending[side]``: our writes to that side that the side's change stream has not passed
  yet, each with its ``position`` in the side's change log (changes up to it committed before
  the write, later ones after).

``seen`` follows each side's history in log order: a change sets it to the change's new row,
and our writes that landed after that change (position >= its sequence) are applied on top.
So even when an application edits a record while our write to it is in flight, the engine
knows what the application ends up holding, and writes again if that is not the merged state.
Our own writes are never captured as changes, so nothing loops.

Causality: a change carries the values the application held before it (``old``, or for an
insert what we had seen on that side). An edit of a field whose old value is the current
winner was made on top of everything merged so far: it overwrites every concurrent value and
wins. Otherwise it overwrites only the values equal to its old value and stays concurrent with
the rest, and the map's policy decides (and a conflict is logged).

Convergence: after a batch, every touched record is compared with what each side holds.
Both-ways fields are written wherever they differ from the merged winner; one-way fields are
written when their winner changed, so an edit made on the receiving side of a one-way field
stays until the source changes it.

Persisted across restarts: ``state``, ``seen`` and ``pending`` of every record (see
``encode_record``), with the per-side cursors. `ingest` and
`confirm` are deterministic (given the state, the batch and the write outcomes), so the actor
shell can persist a batch as its input and outcome, and rebuild by replaying it.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgpack

from conflict import (
    LWW,
    Conflict,
    Edit,
    FieldState,
    RecordState,
    Register,
    Timestamp,
    resolve,
)
from engine.codec import UNSEEN, pack, unpack
from engine.ids import RecordKey, Side
from engine.maps import CompiledMap

__all__ = [
    "EXISTS",
    "Change",
    "ConflictEntry",
    "ErrorEntry",
    "Outcome",
    "PartitionLogic",
    "Tracked",
    "Write",
    "decode_record",
    "encode_record",
    "partition_of",
]

EXISTS = "$exists"
BOTH_SIDES = frozenset((Side.LEFT, Side.RIGHT))
"""The pseudo-field named in conflict entries for a delete against a concurrent update."""

_ABSENT: Any = object()


_packers = threading.local()


def partition_of(key: Sequence[Any], partitions: int) -> int:
    """The partition owning ``key``: partition i owns the i-th of ``partitions`` equal ranges
    of the CRC-32 of the msgpack-encoded key (stable across processes, unlike ``hash()``)."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        # NOTE: one Packer per thread: building one per call cost more than the hash.
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return (zlib.crc32(packer.pack(list(key))) * partitions) >> 32


class Change(NamedTuple):
    """A captured change in canonical form (see `engine.codec` for the wire shape)."""

    seq: int
    op: str  # "I" insert, "U" update, "D" delete, "S" a row of the initial snapshot
    key: RecordKey
    ts: Timestamp
    old: Sequence[Any] | None
    new: Sequence[Any] | None


class Write(NamedTuple):
    """One record to write on a side: op ``I`` (upsert all), ``U`` (update) or ``D``."""

    op: str
    key: RecordKey
    values: dict[int, Any]


class ConflictEntry(NamedTuple):
    at_ms: int
    map: str
    key: RecordKey
    field: str
    candidates: list[tuple[Any, str, Timestamp]]  # (value, origin, timestamp), oldest first
    winner: tuple[Any, str, Timestamp]
    rule: str


class ErrorEntry(NamedTuple):
    at_ms: int
    map: str
    app: str
    key: RecordKey | None
    field: str | None
    kind: str  # "read" (bad source record), "write" (refused by the target), "resolve"
    message: str
    payload: dict[str, Any]


class Outcome(NamedTuple):
    writes: tuple[list[Write], list[Write]]  # indexed by Side
    conflicts: list[ConflictEntry]
    errors: list[ErrorEntry]


Pending = list[tuple[int, str, dict[int, Any]]]
"""Per side, our writes the change stream has not passed, oldest first:
``(position, op, values)``."""


class Tracked:
    __slots__ = ("last", "pending", "seen", "state")

    def __init__(
        self,
        state: RecordState | None = None,
        seen: list[Any] | None = None,
        pending: list[Pending] | None = None,
        last: list[int] | None = None,
    ) -> None:
        self.state = state if state is not None else RecordState()
        self.seen: list[Any] = seen if seen is not None else [UNSEEN, UNSEEN]
        self.pending: list[Pending] = pending if pending is not None else [[], []]
        # per side: the sequence of the last change of this record merged from that side
        self.last: list[int] = last if last is not None else [-1, -1]


class PartitionLogic:
    """The merged records of one partition and the protocol that keeps both sides equal."""

    def __init__(self, cmap: CompiledMap, records: dict[RecordKey, Tracked] | None = None) -> None:
        self.map = cmap
        self.records: dict[RecordKey, Tracked] = records if records is not None else {}
        self.dirty: set[RecordKey] = set()
        self.resolver_failures: list[tuple[str, str]] = []  # (field, message), drained by ingest
        self._index = {name: i for i, name in enumerate(cmap.fields)}

    # -- reading -------------------------------------------------------------------------

    def winner(self, name: str, fs: FieldState) -> Register:
        """The winning assignment of field ``name`` (which must hold one)."""
        if len(fs.entries) == 1:
            return next(iter(fs.entries.values()))
        return self._resolve(name, fs)[0]

    def _resolve(self, name: str, fs: FieldState) -> tuple[Register, Conflict | None]:
        """`resolve` with the map's policy; a custom resolver that fails falls back to lww
        (the failure is reported as an error of the record being merged)."""
        try:
            return resolve(name, fs, self.map.policy)
        except Exception as exc:  # NOTE: user code; one bad call must not stop the partition.
            self.resolver_failures.append((name, f"{type(exc).__name__}: {exc}"))
            winner, conflict = resolve(name, fs, LWW)
            if conflict is not None:
                conflict = Conflict(
                    conflict.field,
                    conflict.candidates,
                    winner,
                    f"lww ({self.map.policy.rule} failed)",
                )
            return winner, conflict

    def values(self, key: RecordKey) -> dict[str, Any] | None:
        """The merged record as ``{field: winning value}``, or None if it does not exist."""
        rec = self.records.get(key)
        if rec is None or not rec.state.exists:
            return None
        return {
            name: self.winner(name, fs).value for name, fs in rec.state.fields.items() if fs.entries
        }

    # -- the protocol --------------------------------------------------------------------

    def ingest(self, side: Side, changes: Iterable[Change], now_ms: int) -> Outcome:
        """Merge a batch of changes captured on ``side``; return what to write and log."""
        out = Outcome(([], []), [], [])
        # key -> [record, fields whose winner may have changed, compare every field?, sides]
        touched: dict[RecordKey, list[Any]] = {}
        self.resolver_failures.clear()  # a failure met outside a batch is no record's error
        self._reported: set[tuple[RecordKey, str]] = set()
        records = self.records
        dirty = self.dirty
        other = 1 << side.other
        for ch in changes:
            key = ch.key
            rec = records.get(key)
            if rec is None:
                rec = records[key] = Tracked()
            fields, full, won = self._edit(rec, side, ch, now_ms, out.conflicts)
            if self.resolver_failures:
                self._report_resolver(side, key, now_ms, out.errors)
            dirty.add(key)
            # Sides to look at: the other one always; this one unless it holds the merge.
            sides = other if won else 3
            look = touched.get(key)
            if look is None:
                touched[key] = [rec, set(fields), full, sides]
            else:
                look[1].update(fields)
                look[2] = look[2] or full
                look[3] |= sides
        writes = out.writes
        for key, (rec, changed, full, sides) in touched.items():
            if sides & 1:
                write = self._converge(key, rec, Side.LEFT, changed, full)
                if write is not None:
                    writes[0].append(write)
            if sides & 2:
                write = self._converge(key, rec, Side.RIGHT, changed, full)
                if write is not None:
                    writes[1].append(write)
            if self.resolver_failures:
                self._report_resolver(side, key, now_ms, out.errors)
        for target in Side:
            self._assume_written(target, writes[target])
        return out

    def _assume_written(self, side: Side, writes: Sequence[Write]) -> None:
        """Take ``writes`` as made: the next batch is merged before they are confirmed."""
        n = len(self.map.fields)
        records = self.records
        for write in writes:
            rec = records[write.key]
            if write.op == "D":
                rec.seen[side] = None
                continue
            seen = rec.seen[side]
            seen = rec.seen[side] = (
                list(seen) if write.op == "U" and isinstance(seen, list) else [UNSEEN] * n
            )
            for i, value in write.values.items():
                seen[i] = value

    def _report_resolver(
        self, side: Side, key: RecordKey, now_ms: int, errors: list[ErrorEntry]
    ) -> None:
        for field, message in self.resolver_failures:
            if (key, field) in self._reported:
                continue  # the same failure, met again while converging the same record
            self._reported.add((key, field))
            errors.append(
                ErrorEntry(
                    now_ms,
                    self.map.name,
                    self.map.apps[side],
                    key,
                    field,
                    "resolve",
                    f"conflict resolver {self.map.policy.rule!r} failed ({message}); "
                    "lww decided instead",
                    {"field": field},
                )
            )
        self.resolver_failures.clear()

    def confirm(
        self,
        side: Side,
        writes: Sequence[Write],
        position: int,
        failures: Iterable[tuple[int, int | None, str]],
        now_ms: int,
    ) -> list[ErrorEntry]:
        """Record the outcome of ``writes`` made on ``side``, which landed at ``position`` of
        its change log. ``failures`` are ``(index in writes, field index or None, message)``.

        `ingest` already took the writes as made; here a refused write makes what the side
        holds unknown again, and a made one is remembered with its position, for the side's
        changes that committed before it (see `_follow`). The caller must confirm a batch
        before merging changes of ``side`` to records it wrote (the actor does).
        """
        failed = {index: (field, message) for index, field, message in failures}
        errors: list[ErrorEntry] = []
        dirty = self.dirty
        for index, write in enumerate(writes):
            rec = self.records[write.key]
            # A change of the side merged since, committed after this write, already showed
            # what the side holds with it: nothing to add.
            passed = rec.last[side] > position
            if index in failed:
                field, message = failed[index]
                if not passed:
                    # What the side holds is now unknown: the next change of the record writes
                    # it whole, which retries this write.
                    rec.seen[side] = UNSEEN
                errors.append(
                    ErrorEntry(
                        now_ms,
                        self.map.name,
                        self.map.apps[side],
                        write.key,
                        None if field is None else self.map.fields[field],
                        "write",
                        message,
                        self._payload(side, write),
                    )
                )
                continue
            if not passed:
                rec.pending[side].append((position, write.op, write.values))
                dirty.add(write.key)
        return errors

    def read_error(
        self, side: Side, change_seq: int, field: str | None, message: str, row: Any, now_ms: int
    ) -> ErrorEntry:
        """A source record that cannot be synced (e.g. a NULL key), kept with its payload."""
        return ErrorEntry(
            now_ms,
            self.map.name,
            self.map.apps[side],
            None,
            field,
            "read",
            message,
            {"side": side.label, "seq": change_seq, "row": row},
        )

    # -- internals -----------------------------------------------------------------------

    def settle(self, side: Side, upto: int) -> None:
        """The change stream of ``side`` has passed ``upto``: forget our writes landed before.

        Only a change with a sequence up to a write's position needs that write; a sweep now
        and then keeps the pending lists (and checkpoints) small.
        """
        for rec in self.records.values():
            queue = rec.pending[side]
            if queue and queue[0][0] <= upto:
                rec.pending[side] = [entry for entry in queue if entry[0] > upto]

    def _follow(self, rec: Tracked, side: Side, ch: Change, image: list[Any] | None) -> bool:
        """Set what ``side`` holds after change ``ch``: its image, plus our writes that landed
        after it. True if such a write exists (the side may then differ from the merge)."""
        rec.last[side] = ch.seq
        queue = rec.pending[side]
        if queue:
            later = [entry for entry in queue if entry[0] >= ch.seq]
            rec.pending[side] = later
            for _, op, values in later:
                if op == "D":
                    image = None
                elif image is not None:
                    image = list(image)
                    for i, value in values.items():
                        image[i] = value
                elif op == "I":
                    image = [UNSEEN] * len(self.map.fields)
                    for i, value in values.items():
                        image[i] = value
            rec.seen[side] = image
            return bool(later)
        rec.seen[side] = image
        return False

    def _edit(
        self, rec: Tracked, side: Side, ch: Change, now_ms: int, conflicts: list[ConflictEntry]
    ) -> tuple[list[int], bool, bool]:
        """Merge one change made by the application on ``side``.

        Returns the fields whose winners may have changed; whether every field must be
        compared too (a write of ours landed after the change, or the record was re-created);
        and whether ``side`` certainly holds the merged values of those fields (its edit won
        every one of them outright), so only the other side needs a look.

        NOTE: the hot path. It applies the edit field by field with `FieldState.assign`, which
        is what `RecordState.apply` does with an `Edit` (see `conflict.record`).
        """
        cmap = self.map
        st = rec.state
        if ch.op == "D":
            self._delete(rec, side, ch, now_ms, conflicts)
            self._follow(rec, side, ch, None)
            return [], True, False
        new = ch.new
        assert new is not None
        origin = cmap.apps[side]
        prior = rec.seen[side]
        old = ch.old
        known = st.alive is not None or st.dead is not None
        if ch.op == "U" and known and old is not None:
            fields = [i for i in cmap.sourced[side] if old[i] != new[i]]
        else:
            # An insert (the side had no row: concurrent with everything merged), a snapshot
            # row (made on top of what we last saw there, if anything) or an update of a
            # record we hold nothing of: take the whole row.
            fields = list(cmap.sourced[side])
            old = prior if ch.op == "S" and isinstance(prior, list) else None
        raced = self._follow(rec, side, ch, new if isinstance(new, list) else list(new))
        if not fields:
            return fields, raced, not raced
        exists = st.exists
        recreate = ch.op == "I" and st.dead is not None and not exists
        ts = ch.ts
        edit_ts = ts.after(st.dead) if recreate else ts  # type: ignore[arg-type]
        names = cmap.fields
        sf = st.fields
        assigned = []
        for i in fields:
            name = names[i]
            fs = sf.get(name)
            field_ts = ts
            if fs is None:
                fs = sf[name] = FieldState()
                supersedes: Any = ()
            else:
                entries = fs.entries
                if not entries:
                    supersedes = ()
                else:
                    win = (
                        next(iter(entries.values())) if len(entries) == 1 else self.winner(name, fs)
                    )
                    if recreate or (old is not None and old[i] == win.value):
                        # Made on top of the current value: it overwrites every value.
                        supersedes = tuple(entries)
                        if not ts > win.ts:
                            field_ts = ts.after(win.ts)
                    elif old is not None:
                        value = old[i]
                        supersedes = [d for d, r in entries.items() if r.value == value]
                    else:
                        supersedes = ()
            if field_ts > edit_ts:
                edit_ts = field_ts
            register = Register(new[i], field_ts, fs.next_dot(origin))
            fs.assign(register, supersedes)
            if len(fs.entries) > 1 and register.dot in fs.entries:
                assigned.append(name)
        if st.alive is None or edit_ts > st.alive:
            st.alive = edit_ts
        if known and not exists and not recreate:
            # An update made without seeing a delete: the later of the two wins.
            self._log_existence(conflicts, now_ms, ch.key, st, origin, edit_ts, deleted=False)
        for name in assigned:
            _, conflict = self._resolve(name, sf[name])
            if conflict is not None:
                conflicts.append(_conflict_entry(now_ms, cmap.name, ch.key, conflict))
        full = raced or recreate
        return fields, full, not (full or assigned or (known and not exists))

    def _delete(
        self, rec: Tracked, side: Side, ch: Change, now_ms: int, conflicts: list[ConflictEntry]
    ) -> None:
        st = rec.state
        old = ch.old
        ts = ch.ts
        unseen: Timestamp | None = None
        for name, fs in st.fields.items():
            if not fs.entries:
                continue
            win = self.winner(name, fs)
            i = self._index.get(name)
            if old is not None and i is not None and old[i] == win.value:
                ts = ts.after(win.ts)
            elif unseen is None or win.ts > unseen:
                unseen = win.ts
        if unseen is None and st.alive is not None:
            ts = ts.after(st.alive)
        existed = st.exists
        st.apply(Edit(ts, True))
        if unseen is not None and existed:
            self._log_existence(
                conflicts, now_ms, ch.key, st, self.map.apps[side], ts, deleted=True, other=unseen
            )

    def _log_existence(
        self,
        conflicts: list[ConflictEntry],
        now_ms: int,
        key: RecordKey,
        st: RecordState,
        origin: str,
        ts: Timestamp,
        *,
        deleted: bool,
        other: Timestamp | None = None,
    ) -> None:
        if deleted:
            assert other is not None
            mine, theirs = ("deleted", origin, ts), ("updated", other.origin, other)
        else:
            assert st.dead is not None
            mine, theirs = ("updated", origin, ts), ("deleted", st.dead.origin, st.dead)
        candidates = sorted([mine, theirs], key=lambda c: c[2])
        winner = candidates[-1]
        conflicts.append(
            ConflictEntry(now_ms, self.map.name, key, EXISTS, candidates, winner, "later-wins")
        )

    def _winner_value(self, st: RecordState, i: int) -> Any:
        """The winning value of field ``i`` (`_ABSENT` if it was never set)."""
        name = self.map.fields[i]
        fs = st.fields.get(name)
        if fs is None or not fs.entries:
            return _ABSENT
        entries = fs.entries
        if len(entries) == 1:
            return next(iter(entries.values())).value
        return self.winner(name, fs).value

    def _converge(
        self, key: RecordKey, rec: Tracked, side: Side, changed: set[int], full: bool
    ) -> Write | None:
        """The write that brings ``side`` to the merged state, if any.

        ``changed`` holds the fields an edit of this batch changed: only their winners can
        differ from what ``side`` was last brought to, unless ``full`` (then every both-ways
        field is compared too; a one-way field is written only when its source changed it).
        """
        st = rec.state
        seen = rec.seen[side]
        if not st.exists:
            if (st.alive is None and st.dead is None) or seen is None:
                return None
            return Write("D", key, {})
        targeted = self.map.targeted[side]
        value_of = self._winner_value
        if not isinstance(seen, list):
            # The side lacks the row (or we lost track of it): write it whole. That includes
            # the side's own one-way fields: their merged values came from it in the first
            # place (a record it deleted and a concurrent update brought back).
            values = {}
            for i in range(len(self.map.fields)):
                value = value_of(st, i)
                if value is not _ABSENT:
                    values[i] = value
            return Write("I", key, values)
        both = self.map.both
        diff = {}
        for i in targeted:
            if not (i in changed or (full and both[i])):
                continue
            value = value_of(st, i)
            if value is _ABSENT:
                continue
            held = seen[i]
            if held is UNSEEN or held != value:
                diff[i] = value
        return Write("U", key, diff) if diff else None

    def _payload(self, side: Side, write: Write) -> dict[str, Any]:
        names = self.map.fields
        return {
            "side": side.label,
            "op": write.op,
            "key": list(write.key),
            "values": {names[i]: v for i, v in write.values.items()},
        }


def _conflict_entry(now_ms: int, map_name: str, key: RecordKey, c: Conflict) -> ConflictEntry:
    return ConflictEntry(
        now_ms,
        map_name,
        key,
        c.field,
        [(r.value, r.origin, r.ts) for r in c.candidates],
        (c.winner.value, c.winner.origin, c.winner.ts),
        c.rule,
    )


# -- persistence -------------------------------------------------------------------------


def encode_record(rec: Tracked) -> bytes:
    """A record's persisted form.

    ``[alive, dead, {field: [registers, vv, cloud]}, seen_left, seen_right, pending_left,
    pending_right, last]``; registers pack as ``[value, [wall_ms, counter, origin], [origin, n]]``.
    """
    st = rec.state
    return pack(
        [
            st.alive,
            st.dead,
            {
                name: [list(fs.entries.values()), fs.vv, list(fs.cloud) if fs.cloud else None]
                for name, fs in st.fields.items()
            },
            rec.seen[0],
            rec.seen[1],
            rec.pending[0],
            rec.pending[1],
            rec.last,
        ]
    )


def decode_record(data: bytes) -> Tracked:
    alive, dead, fields, seen_left, seen_right, pending_left, pending_right, last = unpack(data)
    st = RecordState()
    st.alive = Timestamp(*alive) if alive else None
    st.dead = Timestamp(*dead) if dead else None
    for name, (entries, vv, cloud) in fields.items():
        regs = {}
        for value, ts, dot in entries:
            d = (dot[0], dot[1])
            regs[d] = Register(value, Timestamp(*ts), d)
        st.fields[name] = FieldState(regs, vv, [(o, n) for o, n in cloud] if cloud else ())
    pending = [
        [(position, op, values) for position, op, values in queue]
        for queue in (pending_left, pending_right)
    ]
    return Tracked(st, [seen_left, seen_right], pending, last)
