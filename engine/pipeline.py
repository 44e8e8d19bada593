"""The sync protocol of one partition, sans I/O.

`PartitionLogic.ingest(side, changes)` merges a batch of captured changes of one side and
returns the writes to make on each side, the conflicts and errors to log, and mail for other
partitions; `PartitionLogic.confirm(side, writes, position, failures)` takes the outcome of
those writes; `PartitionLogic.deliver(side, mail)` takes mail from other partitions. Nothing
here talks to Ray, a database or the clock: the runner (`engine.partition`) carries the bytes,
and records come from an injected loader (`engine.records.RecordCache`).

Causality (see `conflict.record` and docs/architecture.md). What a change was made on top of
comes from its side's own history, never from comparing values: that side's earlier changes
(always), and our writes that landed on the side before the change. Each write of ours
carries the merged record, so it carries the stamp of the other side's latest merged edit
(its ``ctx``); a change whose sequence is past the write's ``position`` was made after it and
has seen everything up to that stamp (``view``). So an edit or delete overwrites exactly what
its side had seen, and is concurrent with the rest. Values are compared only to find which
fields a change modified (its before and after images) and, for a record first met in a
snapshot, where the side's history is unknown: a snapshot row counts as having seen the
merged record, except in the fields where it holds a different value, which are concurrent.

Each change's stamp is raised past everything it saw (the hybrid clock's receive rule), so a
change made after seeing a value also carries a later stamp, whatever the clocks say.

Convergence. After a batch, every touched record is compared with what each side holds now
(`Tracked.holds`): both-ways fields whenever they differ from the merged winner, one-way
fields when this batch changed them (an edit made on the receiving side of a one-way field
stays until its source changes it). A side that has not seen everything merged from the
other side (`Tracked.view_now`) is written even where values agree, so that its next edit
counts as made on top of the merged record: after a batch both sides hold the merged record
and have seen it, or a write is on its way.

Keys. A record's key fields are registers like the others. An update that changes the key
(op ``M``) assigns them; when a record's merged key differs from the key it is stored at, it
moves: to the partition owning the new key (mail ``adopt``), leaving a `Redirect` behind.
A change that arrives at a key the record left, from a side that still holds the record
there, is forwarded to it (mail ``forward``), and a side holding the record at another key
(its own concurrent rename) gets a redirect installed there (mail ``redirect``). A side whose
row has another key than the merged one is written a move (``M``). So concurrent renames of
one record end with one record, the key the policy picks.

Persisted: every record (`engine.records.encode_record`) and the few counters of
`PartitionLogic.meta`. `ingest`, `confirm` and `deliver` are deterministic given the state,
their input and the write outcomes, so the runner persists inputs and outcomes and rebuilds
by replaying them.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import msgpack

from conflict import ABSENT, EXISTS, LWW, Conflict, Entry, Origins, Register, resolve
from conflict.clock import stamp_after
from engine.codec import SAME, UNSEEN
from engine.ids import RecordKey, Side
from engine.maps import CompiledMap
from engine.records import (
    Pending,
    RecordCache,
    Redirect,
    Tracked,
    apply_write,
    decode_record,
    encode_record,
    pending_of,
)

__all__ = [
    "DEFAULT_CACHE_RECORDS",
    "EXISTS_FIELD",
    "Change",
    "ConflictEntry",
    "ErrorEntry",
    "Mail",
    "Outcome",
    "PartitionLogic",
    "Write",
    "partition_of",
    "partitioner",
]

SIDES = (Side.LEFT, Side.RIGHT)  # NOTE: iterating the enum itself is slow on the hot path

EXISTS_FIELD = "$exists"
"""The pseudo-field named in conflict entries for a delete against a concurrent update."""

DEFAULT_CACHE_RECORDS = 200_000
"""Records a partition keeps in memory beyond those changed since its last checkpoint."""

RETRY_ATTEMPTS = 6
"""Times a write refused on a duplicate unique value is tried again without progress (none
of the partition's refused records landing meanwhile) before it is an error."""
RETRY_BASE_MS = 50  # the first retry after this long, each next one after twice as long

_packers = threading.local()
_new = tuple.__new__


def partition_of(key: Sequence[Any], partitions: int) -> int:
    """The partition owning ``key``: partition i owns the i-th of ``partitions`` equal ranges
    of the CRC-32 of the msgpack-encoded key (stable across processes, unlike ``hash()``)."""
    packer = getattr(_packers, "packer", None)
    if packer is None:
        # NOTE: one Packer per thread: building one per call cost more than the hash.
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    # (a tuple packs as the list of its items: the same bytes)
    return (zlib.crc32(packer.pack(key)) * partitions) >> 32


def partitioner(partitions: int) -> Any:
    """`partition_of` for ``partitions`` as a function of the key alone, for one thread's
    hot loop (its own Packer; the same partition for every key)."""
    if partitions == 1:
        return lambda key: 0
    pack = msgpack.Packer(use_bin_type=True).pack
    crc32 = zlib.crc32

    def owner(key: Sequence[Any]) -> int:
        return (crc32(pack(key)) * partitions) >> 32

    return owner


class Change(NamedTuple):
    """A captured change in canonical form (see `engine.codec` for the wire shape).

    ``key`` is the key the side's row had before the change (an insert: its key); ``ts``
    the reader's stamp (see `conflict.clock.BoundedClock`).
    """

    seq: int
    op: str  # "I" insert, "U" update, "M" update of the key, "D" delete, "S" snapshot row
    key: RecordKey
    ts: int
    old: Sequence[Any] | None
    new: Sequence[Any] | None


class Write(NamedTuple):
    """One record to write on a side: ``I`` (upsert), ``U`` (update), ``D`` or ``M`` (move
    the row at ``old`` to ``key``, with every value)."""

    op: str
    key: RecordKey
    values: dict[int, Any]
    old: RecordKey | None = None


class Mail(NamedTuple):
    """A message for the partition owning ``key``, carried by the reader of ``side``.

    ``adopt``: ``body`` is an encoded record that moved to ``key``; ``forward``: a change (in
    wire form) made at a key the record left; ``redirect``: send changes arriving at ``key``
    from a side that does not hold the record there to the key ``body``.
    """

    kind: str
    key: RecordKey
    side: int
    body: Any


class ConflictEntry(NamedTuple):
    at_ms: int
    map: str
    key: RecordKey
    field: str
    candidates: list[tuple[Any, str, Any]]  # (value, origin, Timestamp), oldest first
    winner: tuple[Any, str, Any]
    rule: str


class ErrorEntry(NamedTuple):
    at_ms: int
    map: str
    app: str
    key: RecordKey | None
    field: str | None
    kind: str  # "read", "write", "resolve", "clock", "collision"
    message: str
    payload: dict[str, Any]


class Outcome(NamedTuple):
    writes: tuple[list[Write], list[Write]]  # indexed by Side
    conflicts: list[ConflictEntry]
    errors: list[ErrorEntry]
    mail: list[Mail]


def _outcome() -> Outcome:
    return Outcome(([], []), [], [], [])


class _Touch:
    """A record a batch touched: what it changed and how it stood before."""

    __slots__ = ("changed", "concurrent", "keyed", "plain", "rec", "was")

    def __init__(self, rec: Tracked, was: int) -> None:
        self.rec = rec
        # Per side: it held the merged values before the batch and sent no change in it, so
        # only the fields the batch changed can differ from what it holds.
        held = rec.held
        self.plain = [held[0] is SAME and rec.pend is None, held[1] is SAME and rec.pend is None]
        self.changed: set[int] | None = set()  # None: compare every field
        self.concurrent: set[int] = set()
        # A key may have changed or be held elsewhere (a move, mail, a record that moved):
        # look at the keys the sides hold. Otherwise both hold it at its own key.
        self.keyed = rec.extra is not None
        self.was = was


_NONE, _LIVE, _DEAD = 0, 1, 2


def _standing(rec: Tracked | Redirect | None) -> int:
    if not isinstance(rec, Tracked):
        return _NONE
    return _state(rec)


def _state(rec: Tracked) -> int:
    """`_standing` of a `Tracked` (NOTE: the hot path: no property call)."""
    return (_LIVE if rec.values[-1] is True else _DEAD) if rec.stamps[-1] else _NONE


class PartitionLogic:
    """The records of one partition of a map and the protocol that keeps both sides equal.

    ``index``/``partitions``: which partition this is (to tell the keys it owns); ``load``
    fetches encoded records from the store (None: everything is in memory); ``live``: both
    sides are past their initial snapshot (see ``opened``).
    """

    def __init__(
        self,
        cmap: CompiledMap,
        *,
        index: int = 0,
        partitions: int = 1,
        load: Any = None,
        cache_records: int = DEFAULT_CACHE_RECORDS,
        live: bool = False,
    ) -> None:
        self.map = cmap
        self.n = len(cmap.fields)
        self.index = index
        self.partitions = partitions
        self.origins = Origins(list(cmap.apps))
        self.rank = (self.origins.rank(cmap.apps[0]), self.origins.rank(cmap.apps[1]))
        self.cache = RecordCache(cache_records, load)
        # Persisted (see `meta`): per side, the change sequence merged up to and the
        # latest reader stamp merged; the record counts; records with writes pending.
        self.stream = [-1, -1]
        self.clock = [0, 0]
        self.records = 0
        self.deleted = 0
        self.pending_keys: set[RecordKey] = set()
        # Per side: whether it has sent anything (its initial snapshot has begun: its read
        # transaction is open), and the records whose writes to it wait until then.
        self.opened = [live, live]
        self.deferred: list[set[RecordKey]] = [set(), set()]
        # Per side: records a write refused on a duplicate unique value (which a write of
        # another partition may free), with the attempts so far, and when each is due again.
        self.retrying: list[dict[RecordKey, int]] = [{}, {}]
        self.retry_due: list[dict[RecordKey, int]] = [{}, {}]
        self.quick = True  # take `_quick` where it applies (tests turn it off to compare)
        self.resolver_failures: list[tuple[str, str]] = []  # (field, message), per record
        self._reported: set[tuple[RecordKey, str]] = set()

    # -- persisted counters ----------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {
            "stream": list(self.stream),
            "clock": list(self.clock),
            "records": self.records,
            "deleted": self.deleted,
            "pending": [list(k) for k in self.pending_keys],
            "opened": list(self.opened),
            "deferred": [[list(k) for k in keys] for keys in self.deferred],
            "retrying": [[[list(k), n] for k, n in keys.items()] for keys in self.retrying],
        }

    def restore(self, meta: dict[str, Any]) -> None:
        self.stream = list(meta.get("stream", [-1, -1]))
        self.clock = list(meta.get("clock", [0, 0]))
        self.records = int(meta.get("records", 0))
        self.deleted = int(meta.get("deleted", 0))
        self.pending_keys = {tuple(k) for k in meta.get("pending", [])}
        self.opened = list(meta.get("opened", [False, False]))
        self.deferred = [{tuple(k) for k in keys} for keys in meta.get("deferred", [[], []])]
        self.retrying = [
            {tuple(k): int(n) for k, n in keys} for keys in meta.get("retrying", [[], []])
        ]
        self.retry_due = [dict.fromkeys(keys, 0) for keys in self.retrying]  # due at once

    # -- reading ---------------------------------------------------------------------------

    def owner(self, key: RecordKey) -> int:
        return partition_of(key, self.partitions)

    def values(self, key: RecordKey) -> dict[str, Any] | RecordKey | None:
        """The merged record as ``{field: winning value}``; None if it does not exist; the
        key it moved to if it moved."""
        rec = self.cache.get(key)
        if isinstance(rec, Redirect):
            return rec.to
        if rec is None or not rec.exists:
            return None
        return {
            name: value
            for name, value in zip(self.map.fields, rec.values, strict=False)
            if value is not ABSENT
        }

    def key_of(self, rec: Tracked) -> RecordKey:
        values = rec.values
        return tuple(values[i] for i in self.map.key)

    # -- the protocol ----------------------------------------------------------------------

    def ingest(
        self, side: Side, changes: Sequence[Change], now_ms: int, upto: int | None = None
    ) -> Outcome:
        """Merge a batch of changes captured on ``side``; return what to write, log and mail.

        ``upto``: the batch covers the side's change log up to there (None for the rows of
        an initial snapshot, until its last message).
        """
        out = _outcome()
        self.resolver_failures.clear()
        self._reported = set()
        waiting = self.deferred[side] if not self.opened[side] else set()
        self.opened[side] = True
        self.cache.fetch([*(ch.key for ch in changes), *waiting])
        touched: dict[RecordKey, _Touch] = {}
        if waiting:
            # The side's snapshot has begun: what waited for it can be written now (see
            # `_finish`).
            self.deferred[side] = set()
            for key in waiting:
                rec = self.cache.get(key)
                if isinstance(rec, Tracked):
                    touch = touched[key] = _Touch(rec, _standing(rec))
                    touch.changed = None
        clock = self.clock
        other = 1 - side
        writes = out.writes[other]
        quick: dict[RecordKey, int] = {}  # records `_quick` took: the index of their write
        easy = self.quick and self.opened[0] and self.opened[1]
        take = self.cache.take
        for ch in changes:
            if ch.ts > clock[side]:
                clock[side] = ch.ts
            key = ch.key
            if easy and ch.op == "U" and key not in touched:
                if key in quick:
                    self._unquick(key, quick.pop(key), writes, other, touched)
                else:
                    rec = take(key)
                    if type(rec) is Tracked:
                        write = self._quick(rec, side, ch)
                        if write is not None:
                            quick[key] = len(writes)
                            writes.append(write)
                            continue
            elif key in quick:
                self._unquick(key, quick.pop(key), writes, other, touched)
            self._change(side, ch, now_ms, touched, out, forwarded=False)
        self._finish(side, touched, now_ms, out)
        if len(writes) != len(quick) and None in writes:
            writes[:] = [w for w in writes if w is not None]
        if upto is not None and upto > self.stream[side]:
            self.stream[side] = upto
        return out

    def _quick(self, rec: Tracked, side: Side, ch: Change) -> Write | None:
        """`_merge` and `_finish` in one, for the common case (None when it is not): an
        update of a record both sides hold as merged (`SAME`), nothing pending, nothing
        concurrent, the side having seen all the other side's edits. Its edit then
        overwrites what it changed, the side still holds the merged record, and the other
        side is written the changed fields. The same outcome as the general path (the tests
        play both), in a fraction of its time.
        """
        held = rec.held
        other = 1 - side
        rank, other_rank = self.rank[side], self.rank[other]
        vv = rec.vv
        base = held[2 + side]
        if (
            held[0] is not SAME
            or held[1] is not SAME
            or rec.pend is not None
            or rec.extra is not None
            or rec.multi is not None
            or base < vv[other_rank]
        ):
            return None
        values = rec.values
        if values[-1] is not True:
            return None
        old, new = ch.old, ch.new
        assert old is not None and new is not None
        changed: dict[int, Any] = {}
        for i in self.map.sourced[side]:  # NOTE: a loop, not a comprehension: a call less
            value = new[i]
            if old[i] != value:
                changed[i] = value
        if not changed:
            return None
        ts = ch.ts
        top = vv[rank]
        if base > top:
            top = base
        if ts <= top:
            ts = stamp_after(ts, top)
        stamps = rec.stamps
        for i, value in changed.items():
            values[i] = value
            stamps[i] = ts
        stamps[-1] = ts
        vv[rank] = ts
        # The other side holds what the side held before the change: the merged values
        # then, which is the change's old image (the side held them, nothing pending).
        held[other] = old if type(old) is list else list(old)
        key = ch.key
        # NOTE: tuple.__new__ skips the named tuples' Python-level __new__ (hot path).
        entry = _new(Pending, (None, "U", key, changed, ts, None))
        rec.pend = [[], [entry]] if other else [[entry], []]  # (nothing was pending)
        self.pending_keys.add(key)
        return _new(Write, ("U", key, changed, None))

    def _unquick(
        self,
        key: RecordKey,
        at: int,
        writes: list[Any],
        side: int,
        touched: dict[RecordKey, _Touch],
    ) -> None:
        """A record `_quick` took changes again in the batch: take back its write (and the
        pending entry of it), so that the general path makes one write of both; the touch
        it starts with carries the fields the quick change assigned."""
        write = writes[at]
        writes[at] = None
        rec = self.cache.dirty[key]
        assert isinstance(rec, Tracked) and rec.pend is not None
        rec.pend = None
        self.pending_keys.discard(key)
        touch = touched[key] = _Touch(rec, _LIVE)
        touch.changed = set(write.values)

    def deliver(self, side: Side, mail: Sequence[Mail], now_ms: int) -> tuple[Outcome, int]:
        """Take mail other partitions sent through the reader of ``side``, in order; returns
        the outcome and how many were taken. A change forwarded after a record that has not
        arrived yet (the two sides' readers carry mail independently) stops there: it and
        what follows are sent again later."""
        out = _outcome()
        self.resolver_failures.clear()
        self._reported = set()
        self.cache.fetch(m.key for m in mail)
        touched: dict[RecordKey, _Touch] = {}
        taken = 0
        for m in mail:
            if m.kind == "adopt":
                rec = decode_record(m.body)
                assert isinstance(rec, Tracked)
                self._adopt(side, m.key, rec, now_ms, touched, out)
            elif m.kind == "forward":
                if m.key not in touched and self.cache.get(m.key) is None:
                    break
                seq, op, _, ts, old, new = m.body
                ch = Change(seq, op, m.key, ts, old, new)
                self._change(Side(m.side), ch, now_ms, touched, out, forwarded=True)
            elif m.kind == "redirect":
                self._install_redirect(m.key, tuple(m.body))
            else:
                raise ValueError(f"unknown mail kind {m.kind!r}")
            taken += 1
        self._finish(side, touched, now_ms, out)
        return out, taken

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

        A refused write did not land: what the side holds is marked unknown, so the next
        change of the record writes it whole (which retries it). A made one waits as pending
        until the side's change stream passes its position. The caller confirms a batch
        before merging changes of ``side`` to records it wrote (the runner does).
        """
        # (a 4th item, true: refused on a duplicate unique value; older WAL rows lack it)
        failed = {f[0]: (f[1], f[2], bool(f[3] if len(f) > 3 else False)) for f in failures}
        retrying = self.retrying[side]
        landed = False  # a record refused before was written at last
        errors: list[ErrorEntry] = []
        cache = self.cache
        dirty = cache.dirty
        upto = self.stream[side]
        passed = position <= upto
        key_index = self.map.key
        n = self.n
        for index, write in enumerate(writes):
            key = write.key
            rec = dirty.get(key)
            if rec is None:
                rec = cache.get(key)
                if isinstance(rec, Tracked):
                    cache.put(key, rec)
            pend = rec.pend if type(rec) is Tracked else None
            queue = pend[side] if pend is not None else None
            at = -1
            if queue:
                if queue[0].position is None:
                    at = 0  # (the common case: the first pending write is this one)
                else:
                    for i, entry in enumerate(queue):
                        if entry.position is None:
                            at = i
                            break
            if at < 0:
                # A delete of a row merged into another record (see `_collide`).
                if index in failed:
                    field, message, _ = failed[index]
                    errors.append(self._write_error(side, write, field, message, now_ms))
                continue
            assert isinstance(rec, Tracked) and queue is not None and pend is not None
            extra = rec.extra
            if failed and index in failed:
                del queue[at]
                rec.held[side] = UNSEEN
                field, message, duplicate = failed[index]
                if not (duplicate and self._retry_later(side, key, now_ms)):
                    tried = retrying.pop(key, 0)
                    if tried:
                        message = f"{message} (tried {tried + 1} times)"
                    errors.append(self._write_error(side, write, field, message, now_ms))
            elif passed and at == 0 and (extra is None or self._foldable(rec, side)):
                # NOTE: the common case: the side's stream has passed where the write landed,
                # so no change made before it can come any more: fold it at once.
                entry = queue.pop(0)
                held = rec.held
                image = held[side]
                if entry.op == "U" and type(image) is list and extra is None:
                    image = image.copy()  # (no move: the row has the write's key)
                    for i, value in entry.values.items():
                        image[i] = value
                else:
                    image = apply_write(rec.image(side), entry, key_index, n)
                values = rec.values
                held[side] = SAME if values[-1] is True and image == values[:-1] else image
                if entry.ctx > held[2 + side]:
                    held[2 + side] = entry.ctx
            else:
                queue[at] = queue[at]._replace(position=position)
                if passed:
                    self._fold(rec, side, upto)
            if retrying and key in retrying and not (failed and index in failed):
                del retrying[key]  # written at last
                self.retry_due[side].pop(key, None)
                landed = True
            if not pend[0] and not pend[1]:
                rec.pend = None
                self.pending_keys.discard(key)
        if landed and retrying:
            # Progress: what is still refused may wait on what just landed (a chain of moved
            # values): its tries count again from the first.
            for key in retrying:
                retrying[key] = 1
                self.retry_due[side][key] = now_ms + RETRY_BASE_MS
        return errors

    def settle(self, side: Side, upto: int) -> None:
        """The change stream of ``side`` has passed ``upto``: fold our writes that landed up
        to there into what the side held (no change made before them can come any more)."""
        keys = list(self.pending_keys)
        self.cache.fetch(keys)
        for key in keys:
            rec = self.cache.get(key)
            if not isinstance(rec, Tracked):
                self.pending_keys.discard(key)
                continue
            if self._fold(rec, side, upto):
                self.cache.put(key, rec)
            self._track_pending(key, rec)

    def _retry_later(self, side: Side, key: RecordKey, now_ms: int) -> bool:
        """Schedule ``key``'s record to be written to ``side`` again (False: it was tried
        often enough; its refusal is an error)."""
        attempts = self.retrying[side].get(key, 0)
        if attempts >= RETRY_ATTEMPTS:
            return False
        self.retrying[side][key] = attempts + 1
        self.retry_due[side][key] = now_ms + RETRY_BASE_MS * 2**attempts
        return True

    def retries_due(self, side: Side, now_ms: int) -> list[RecordKey]:
        """The records refused on ``side`` on a duplicate value whose next try is due."""
        return [key for key, due in self.retry_due[side].items() if due <= now_ms]

    def retry(self, side: Side, keys: Sequence[RecordKey], now_ms: int) -> Outcome:
        """Write the records of ``keys`` to ``side`` again, whole: each was refused there on
        a unique value another row held. A write of another partition may have freed it since
        (a value moved between two records of different partitions), or the record changed.
        What the side holds is unknown since the refusal, so the write is an upsert of the
        merged record (a delete if it was deleted meanwhile)."""
        out = _outcome()
        self.cache.fetch(keys)
        due = self.retry_due[side]
        for key in keys:
            due.pop(key, None)
            rec = self.cache.get(key)
            write = None
            if isinstance(rec, Tracked) and self.opened[side]:
                write = self._converge(key, rec, side, None)
            if write is None:
                self.retrying[side].pop(key, None)
                continue
            assert isinstance(rec, Tracked)
            self.cache.put(key, rec)
            out.writes[side].append(write)
            self._assume(key, rec, side, write)
        return out

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

    # -- merging one change ----------------------------------------------------------------

    def _change(
        self,
        side: Side,
        ch: Change,
        now_ms: int,
        touched: dict[RecordKey, _Touch],
        out: Outcome,
        *,
        forwarded: bool,
    ) -> None:
        key = ch.key
        cache = self.cache
        touch = touched.get(key)
        if touch is not None and touch.rec.extra is None:
            rec: Tracked | Redirect | None = touch.rec
        else:
            rec = cache.take(key)
            redirect: RecordKey | None = None
            if isinstance(rec, Redirect):
                redirect, rec = rec.to, None
            elif (
                not forwarded
                and rec is not None
                and rec.extra is not None
                and rec.extra.redirect is not None
                and not self._held_here(rec, side, key)
            ):
                redirect = rec.extra.redirect
            if redirect is not None and ch.op in ("U", "D", "M"):
                # The side's row is the record that moved away: send the change after it.
                out.mail.append(Mail("forward", redirect, side, list(ch)))
                return
            if touch is None:
                if rec is None:
                    rec = Tracked(self.n)
                    if redirect is not None:
                        rec.extras().redirect = redirect
                    cache.put(key, rec)
                touch = touched[key] = _Touch(rec, _state(rec))
        rec = touch.rec
        touch.plain[side] = False
        if forwarded or ch.op == "M":
            touch.keyed = True
        extra = rec.extra
        ghost = None if extra is None or extra.ghost is None else extra.ghost[side]
        if forwarded and ghost is not None:
            assert extra is not None
            late = ch.seq < extra.last[side]
            changed, concurrent = self._merge_ghost(rec, side, ch, late)
        else:
            changed, concurrent = self._merge(rec, side, ch)
            if ghost is not None:
                assert extra is not None
                extra.last[side] = ch.seq
        if touch.changed is not None:
            touch.changed.update(changed)
        if concurrent:
            touch.concurrent.update(concurrent)
        if rec.pend is None:
            self.pending_keys.discard(key)
        if self.resolver_failures:
            self._report_resolver(side, key, now_ms, out.errors)

    def _merge(self, rec: Tracked, side: Side, ch: Change) -> tuple[Sequence[int], Sequence[int]]:
        """Merge one change of ``side`` into ``rec``; return the fields it assigned and the
        slots left holding concurrent values.

        NOTE: the hot path: most changes find no pending write and one entry per field.
        """
        seq = ch.seq
        base = rec.held[2 + side]
        image = rec.held[side]
        queue = rec.pending(side)
        if queue:
            # Our writes that landed before the change: it was made on top of them.
            if image is SAME:
                image = rec.values[:-1]
            later = []
            key_index = self.map.key
            for entry in queue:
                position = entry.position
                assert position is not None, "a write in flight to a record being merged"
                if position < seq:
                    image = apply_write(image, entry, key_index, self.n)
                    if entry.ctx > base:
                        base = entry.ctx
                else:
                    later.append(entry)
            rec.set_pending(side, later)
        other = 1 - side
        if rec.held[other] is SAME:
            rec.held[other] = rec.values[:-1]  # the other side keeps what it held
        op = ch.op
        new = ch.new
        if op == "D":
            fields: Sequence[int] = ()
            assigns: tuple[tuple[int, Any], ...] = ()
            seen_after: Any = None
        else:
            assert new is not None
            seen_after = new if isinstance(new, list) else list(new)
            sourced = self.map.sourced[side]
            if op == "S" and rec.known:
                return self._snapshot(rec, side, ch, base, seen_after)
            old = ch.old
            if not rec.known:
                fields = sourced
                # NOTE: the key's own objects stand for the key fields (one copy, not two).
                key = ch.key
                for j, i in enumerate(self.map.key):
                    if new[i] == key[j]:
                        seen_after[i] = key[j]
            elif old is not None:
                fields = [i for i in sourced if old[i] != new[i]]
            elif isinstance(image, list):
                # An insert of a row the side held (a REPLACE): it changed what differs.
                fields = [i for i in sourced if image[i] is UNSEEN or image[i] != new[i]]
            else:
                fields = sourced
            if not fields:
                rec.held[side] = seen_after
                rec.held[2 + side] = base
                rec.settle_same(side)
                return (), ()
            assigns = tuple([(i, new[i]) for i in fields])
        rank = self.rank[side]
        ts = ch.ts
        top = rec.vv[rank]
        if base > top:
            top = base
        if ts <= top:
            ts = stamp_after(ts, top)
        view = (base, 0) if self.rank[other] == 0 else (0, base)
        concurrent = rec.apply((ts, view, assigns, op == "D"), self._choose)
        rec.held[side] = seen_after  # `_finish` stores it as SAME if it is
        rec.held[2 + side] = base
        return fields, concurrent

    def _snapshot(
        self, rec: Tracked, side: Side, ch: Change, base: int, seen_after: list[Any]
    ) -> tuple[Sequence[int], Sequence[int]]:
        """A snapshot row of a record already known: its side's history is unknown. It
        counts as having seen the merged record, except in the fields where it holds another
        value: those are concurrent with the merged ones, and the policy decides."""
        new = ch.new
        assert new is not None
        values = rec.values
        other_rank = self.rank[1 - side]
        differing = [
            i for i in self.map.sourced[side] if values[i] is ABSENT or values[i] != new[i]
        ]
        view_o = max(base, rec.vv[other_rank]) if rec.exists else base
        if rec.exists and not differing:
            # The two agree: nothing to merge, and neither side needs to hear of the other.
            rec.held[side] = seen_after
            rec.held[2 + side] = view_o
            rec.settle_same(side)
            return (), ()
        rank = self.rank[side]
        ts = ch.ts
        top = max(rec.vv[rank], view_o)
        if ts <= top:
            ts = stamp_after(ts, top)
        view = (view_o, 0) if other_rank == 0 else (0, view_o)
        concurrent = list(rec.apply((ts, view, (), False), self._choose))
        for i in differing:
            if rec.add_concurrent(i, new[i], ts, self._choose):
                concurrent.append(i)
        rec.held[side] = seen_after
        rec.held[2 + side] = view_o
        rec.settle_same(side)
        return differing, concurrent

    def _merge_ghost(
        self, rec: Tracked, side: Side, ch: Change, late: bool
    ) -> tuple[Sequence[int], Sequence[int]]:
        """A change the side made at the key the record left (forwarded here).

        Its view comes from what the side held and had seen there (the ghost). In order
        (no later change of the side was merged here yet) it is merged like any change;
        late, it only adds its assignments: what the side holds now came after it.
        """
        extra = rec.extra
        assert extra is not None and extra.ghost is not None
        ghost = extra.ghost[side]
        seen, base, queue = ghost[0], ghost[1], [pending_of(p) for p in ghost[2]]
        later = []
        image = seen
        for entry in queue:
            if entry.position is not None and entry.position < ch.seq:
                image = apply_write(image, entry, self.map.key, self.n)
                base = max(base, entry.ctx)
            else:
                later.append(entry)
        extra.ghost[side] = [None if ch.op == "D" else list(ch.new or ()), base, later]
        if not late:
            changed, concurrent = self._merge(rec, side, ch)
            return changed, concurrent
        if ch.op == "D":
            fields: Sequence[int] = ()
        else:
            assert ch.new is not None
            old = ch.old if ch.old is not None else image
            fields = [
                i
                for i in self.map.sourced[side]
                if not isinstance(old, Sequence) or old[i] is UNSEEN or old[i] != ch.new[i]
            ]
            if not fields:
                return (), ()
        # NOTE: its own later changes already merged here overwrite it where they assign.
        ts = ch.ts
        view = (base, 0) if self.rank[1 - side] == 0 else (0, base)
        new = ch.new or ()
        added: list[int] = []
        for i in fields:
            if rec.add_concurrent(i, new[i], ts, self._choose, view):
                added.append(i)
        return fields, added

    # -- after a batch ---------------------------------------------------------------------

    def _finish(
        self, side: Side, touched: dict[RecordKey, _Touch], now_ms: int, out: Outcome
    ) -> None:
        work = list(touched.items())
        opened = self.opened
        for key, touch in work:  # NOTE: a record moving within the partition is appended
            rec = touch.rec
            keyed = touch.keyed
            if keyed and rec.exists and self.key_of(rec) != key:
                moved = self._relocate(side, key, touch, now_ms, out)
                if moved is not None:
                    work.append(moved)
                continue
            if touch.concurrent and rec.multi:
                self._log_conflicts(key, rec, touch.concurrent, now_ms, out)
            held = rec.held
            plain = touch.plain
            # A side whose row we only know from this batch's changes (not `plain`) may
            # hold the merged values: say so (SAME), it makes `_converge` quick.
            # (A plain side's row was the merged one: it still is if the batch changed none.)
            unchanged = not touch.changed
            if (unchanged or not plain[0]) and type(held[0]) is list:
                rec.settle_same(0)
            if (unchanged or not plain[1]) and type(held[1]) is list:
                rec.settle_same(1)
            pend = rec.pend
            vv = rec.vv
            for target in SIDES:
                if (
                    held[target] is SAME
                    and (pend is None or not pend[target])
                    and held[2 + target] >= vv[self.rank[1 - target]]
                    and opened[target]
                ):
                    continue  # it holds the merged record and has seen all of it
                if not opened[target]:
                    # NOTE: until the side's initial snapshot has begun, a write could land
                    # before its snapshot reads the row, which would then show our value
                    # instead of the side's own: nothing would tell the two apart.
                    self.deferred[target].add(key)
                    continue
                write = self._converge(key, rec, target, touch.changed, keyed, plain[target])
                if write is not None:
                    out.writes[target].append(write)
                    self._assume(key, rec, target, write)
            if keyed:
                self._redirect_others(side, key, rec, out)
            now = _state(rec)
            if now != touch.was:
                self._count(touch.was, now)
                touch.was = now
            if self.resolver_failures:
                self._report_resolver(side, key, now_ms, out.errors)

    def _count(self, was: int, now: int) -> None:
        if was == now:
            return
        self.records += (now == _LIVE) - (was == _LIVE)
        self.deleted += (now == _DEAD) - (was == _DEAD)

    def _converge(
        self,
        key: RecordKey,
        rec: Tracked,
        side: Side,
        changed: set[int] | None,
        keyed: bool = True,
        plain: bool = False,
    ) -> Write | None:
        """The write that brings ``side`` to the merged record, if any (see the module
        docstring); ``changed``: the fields this batch assigned (None: every field);
        ``keyed``: the side may hold the record under another key; ``plain``: it held the
        merged values before the batch and sent nothing in it (see `_Touch`).

        NOTE: the hot path: no pending write, a side that holds the merged values.
        """
        pend = rec.pend
        if pend is not None and pend[side]:
            holds = rec.holds(side, self.map.key)
            view = rec.view_now(side)
        else:
            holds = rec.held[side]
            view = rec.held[2 + side]
        caught = view >= rec.vv[self.rank[1 - side]]
        values = rec.values
        if values[-1] is not True:
            if not rec.known or (holds is None and caught):
                return None
            held = self._held_key(holds) if keyed else None
            return Write("D", key if held is None else held, {})
        if holds is SAME:
            return None if caught else Write("U", key, self._uncovered(rec, side))
        if type(holds) is not list:
            # The side lacks the row (or we lost track of it): write it whole. That includes
            # the side's own one-way fields: their merged values came from it in the first
            # place (a record it deleted and a concurrent update brought back).
            return Write("I", key, self._whole(rec))
        if keyed:
            held = self._held_key(holds)
            if held is not None and held != key:
                return Write("M", key, self._whole(rec), held)
        if plain and changed is not None:
            targeted = self.map.targeted_set[side]
            diff = {i: values[i] for i in changed if i in targeted and holds[i] != values[i]}
            if diff:
                return Write("U", key, diff)
            return None if caught else Write("U", key, self._uncovered(rec, side))
        both = self.map.both
        diff = {}
        for i in self.map.targeted[side]:
            value = values[i]
            if value is ABSENT or not (both[i] or changed is None or i in changed):
                continue
            have = holds[i]
            if have is UNSEEN or have != value:
                diff[i] = value
        for i in self.map.owned[side]:
            # A field only this side sets: it differs only where a write of ours made the row
            # without it (the side deleted the record and a concurrent edit brought it back).
            value = values[i]
            if value is not ABSENT and holds[i] != value:
                diff[i] = value
        if diff:
            return Write("U", key, diff)
        if not caught:
            # The side holds the merged values but has not seen all the other side's edits
            # (its own won, or they agree): write them again, so its next edit is made on
            # top of the merged record.
            return Write("U", key, self._uncovered(rec, side))
        return None

    def _whole(self, rec: Tracked) -> dict[int, Any]:
        return {i: v for i, v in enumerate(rec.values[:-1]) if v is not ABSENT}

    def _uncovered(self, rec: Tracked, side: Side) -> dict[int, Any]:
        """The targeted fields holding an edit of the other side that ``side`` has not seen
        (at least the key fields, to carry the context)."""
        view = rec.view_now(side)
        other = self.rank[1 - side]
        values = {}
        for i in self.map.targeted[side]:
            for _, stamp in rec.entries(i):
                if stamp & 15 == other and stamp > view and rec.values[i] is not ABSENT:
                    values[i] = rec.values[i]
        return values or {i: rec.values[i] for i in self.map.key}

    def _held_key(self, holds: Any) -> RecordKey | None:
        if not isinstance(holds, list):
            return None
        key = tuple(holds[i] for i in self.map.key)
        return None if UNSEEN in key else key

    def _held_here(self, rec: Tracked, side: Side, key: RecordKey) -> bool:
        """Whether ``side`` holds ``rec`` at ``key`` (or we do not know what it holds)."""
        holds = rec.holds(side, self.map.key)
        if holds is UNSEEN:
            return True
        return self._held_key(holds) == key

    def _assume(self, key: RecordKey, rec: Tracked, side: Side, write: Write) -> None:
        """Take ``write`` as made: the next batch is merged before it is confirmed."""
        ctx = rec.vv[self.rank[1 - side]]
        rec.add_pending(side, Pending(None, write.op, write.key, write.values, ctx, write.old))
        self.pending_keys.add(key)

    def _fold(self, rec: Tracked, side: Side, upto: int) -> bool:
        """Fold the pending writes landed up to ``upto`` into what the side held.

        Not for a side that held a moved record at its old key: changes it made there reach
        us forwarded, later than its stream position says, and must find our writes (the
        move above all) still pending to be placed before them; its next change made here
        folds them.
        """
        if not self._foldable(rec, side):
            return False
        queue = rec.pending(side)
        n = 0
        for entry in queue:
            if entry.position is None or entry.position > upto:
                break
            n += 1
        if not n:
            return False
        image = rec.image(side)
        base = rec.held[2 + side]
        for entry in queue[:n]:
            image = apply_write(image, entry, self.map.key, self.n)
            base = max(base, entry.ctx)
        rec.held[side] = image
        rec.held[2 + side] = base
        rec.set_pending(side, queue[n:])
        rec.settle_same(side)
        return True

    @staticmethod
    def _foldable(rec: Tracked, side: Side) -> bool:
        """False for a side that held a moved record at its old key (see `_fold`)."""
        extra = rec.extra
        return extra is None or extra.ghost is None or extra.ghost[side] is None

    def _track_pending(self, key: RecordKey, rec: Tracked) -> None:
        if rec.pending(0) or rec.pending(1):
            self.pending_keys.add(key)
        else:
            self.pending_keys.discard(key)

    # -- records that move -----------------------------------------------------------------

    def _relocate(
        self, side: Side, key: RecordKey, touch: _Touch, now_ms: int, out: Outcome
    ) -> tuple[RecordKey, _Touch] | None:
        """The record's merged key is no longer ``key``: move it there (returned, to be
        finished, if this partition owns the new key too)."""
        rec = touch.rec
        to = self.key_of(rec)
        self.cache.put(key, Redirect(to))
        self.pending_keys.discard(key)
        self._count(touch.was, _NONE)
        touch.was = _NONE
        self._log_conflicts(key, rec, touch.concurrent, now_ms, out)
        rec.extras().moved.append(key)
        if self.owner(to) == self.index:
            here: dict[RecordKey, _Touch] = {}
            self._adopt(side, to, rec, now_ms, here, out)
            return to, here[to]
        out.mail.append(Mail("adopt", to, side, encode_record(rec)))
        return None

    def _adopt(
        self,
        side: Side,
        key: RecordKey,
        rec: Tracked,
        now_ms: int,
        touched: dict[RecordKey, _Touch],
        out: Outcome,
    ) -> None:
        """Take in a record that moved to ``key``."""
        existing = self.cache.get(key)
        extra = rec.extras()
        # What each side held and had seen at the old key, for its changes made there that
        # arrive late (see `_merge_ghost`).
        # (None for a side that holds it at the new key already: nothing comes forwarded.)
        extra.ghost = [
            None
            if self._held_key(rec.holds(s, self.map.key)) == key
            else [rec.image(s), rec.held[2 + s], [list(p) for p in rec.pending(s)]]
            for s in SIDES
        ]
        extra.last = [-1, -1]
        if isinstance(existing, Redirect):
            extra.redirect = existing.to
        concurrent: list[int] = []
        if isinstance(existing, Tracked) and existing.known:
            rec, concurrent = self._collide(side, key, existing, rec, now_ms, out)
        touch = touched.get(key)
        was = touch.was if touch is not None else _standing(existing)
        touch = touched[key] = _Touch(rec, was)
        touch.changed = None
        touch.keyed = True
        touch.concurrent.update(concurrent)
        self.cache.put(key, rec)
        self._track_pending(key, rec)

    def _collide(
        self,
        side: Side,
        key: RecordKey,
        existing: Tracked,
        moved: Tracked,
        now_ms: int,
        out: Outcome,
    ) -> tuple[Tracked, list[int]]:
        """A record moved onto a key another record holds: they become one record, field by
        field concurrent (the policy decides; the conflict log keeps both values), and the
        side that still holds the moved one under its old key has that row deleted. Never
        silent: an error names both keys."""
        old = moved.extra.moved[-1] if moved.extra and moved.extra.moved else None
        concurrent = []
        for slot in range(-1, self.n):
            for value, stamp in moved.entries(slot):
                if existing.add_concurrent(slot, value, stamp, self._choose, own=False):
                    concurrent.append(slot)
        for s in Side:
            existing.vv[self.rank[s]] = max(existing.vv[self.rank[s]], moved.vv[self.rank[s]])
        out.errors.append(
            ErrorEntry(
                now_ms,
                self.map.name,
                self.map.apps[side],
                key,
                None,
                "collision",
                f"record {old!r} moved to key {key!r}, which another record holds: the two "
                "were merged field by field (see the conflict log)",
                {"key": list(key), "from": None if old is None else list(old)},
            )
        )
        for s in Side:
            held = self._held_key(moved.holds(s, self.map.key))
            if held is not None and held != key:
                out.writes[s].append(Write("D", held, {}))
        return existing, concurrent

    def _install_redirect(self, key: RecordKey, to: RecordKey) -> None:
        rec = self.cache.get(key)
        if isinstance(rec, Tracked) and rec.known:
            rec.extras().redirect = to
            self.cache.put(key, rec)
        else:
            self.cache.put(key, Redirect(to))

    def _redirect_others(self, side: Side, key: RecordKey, rec: Tracked, out: Outcome) -> None:
        """A side that holds the record under another key (its own concurrent rename, not
        yet undone by our move) must have its changes there sent here."""
        for s in Side:
            held = self._held_key(rec.holds(s, self.map.key))
            if held is None or held == key:
                continue
            extra = rec.extras()
            if held in extra.moved:
                continue
            extra.moved.append(held)
            if self.owner(held) == self.index:
                self._install_redirect(held, key)
            else:
                out.mail.append(Mail("redirect", held, side, list(key)))

    # -- conflicts -------------------------------------------------------------------------

    def _choose(self, slot: int, entries: Sequence[Entry]) -> Entry:
        """The map's policy among concurrent entries; a custom resolver that fails falls
        back to lww (the failure is reported as an error of the record being merged)."""
        registers = [Register(v, self.origins.timestamp(s)) for v, s in entries]
        name = self.map.fields[slot]
        try:
            winner, _ = resolve(name, registers, self.map.policy)
        except Exception as exc:  # NOTE: user code; one bad call must not stop the partition.
            self.resolver_failures.append((name, f"{type(exc).__name__}: {exc}"))
            winner, _ = resolve(name, registers, LWW)
        return entries[registers.index(winner)]

    def _log_conflicts(
        self, key: RecordKey, rec: Tracked, slots: set[int], now_ms: int, out: Outcome
    ) -> None:
        """One entry per field still holding concurrent values after the batch."""
        multi = rec.multi
        if not multi:
            return
        timestamp = self.origins.timestamp
        for slot in sorted(slots):
            entries = multi.get(slot)
            if entries is None:
                continue
            if slot == EXISTS:
                candidates = [
                    ("updated" if v else "deleted", self.origins.name(s), timestamp(s))
                    for v, s in entries
                ]
                if len({c[0] for c in candidates}) < 2:
                    continue
                out.conflicts.append(
                    ConflictEntry(
                        now_ms,
                        self.map.name,
                        key,
                        EXISTS_FIELD,
                        candidates,
                        candidates[-1],
                        "later-wins",
                    )
                )
                continue
            registers = [Register(v, timestamp(s)) for v, s in entries]
            name = self.map.fields[slot]
            try:
                _, conflict = resolve(name, registers, self.map.policy)
            except Exception:  # NOTE: reported when the winner was chosen
                winner, conflict = resolve(name, registers, LWW)
                if conflict is not None:
                    conflict = Conflict(
                        conflict.field,
                        conflict.candidates,
                        winner,
                        f"lww ({self.map.policy.rule} failed)",
                    )
            if conflict is not None:
                out.conflicts.append(_conflict_entry(now_ms, self.map.name, key, conflict))

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

    def _write_error(
        self, side: Side, write: Write, field: int | None, message: str, now_ms: int
    ) -> ErrorEntry:
        return ErrorEntry(
            now_ms,
            self.map.name,
            self.map.apps[side],
            write.key,
            None if field is None else self.map.fields[field],
            "write",
            message,
            self._payload(side, write),
        )

    def _payload(self, side: Side, write: Write) -> dict[str, Any]:
        names = self.map.fields
        payload: dict[str, Any] = {
            "side": side.label,
            "op": write.op,
            "key": list(write.key),
            "values": {names[i]: v for i, v in write.values.items()},
        }
        if write.old is not None:
            payload["old"] = list(write.old)
        return payload


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
