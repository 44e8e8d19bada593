"""The merged state of one record, compact: a value and a stamp per field.

A record has ``n`` fields, slots 0 .. n-1, and an existence slot, `EXISTS` (-1, the last
one: True, the record exists; False, it was deleted). Each slot holds the assignments no
other assignment overwrote. One is the normal case and costs no object of its own: ``values[i]`` and
``stamps[i]`` (a stamp is an HLC timestamp packed in an int, see `conflict.clock.pack`; its
low bits are the origin's rank). Two or more are concurrent edits: they live in ``multi[i]``
as ``(value, stamp)`` entries, oldest first, only while they last, and ``values[i]`` and
``stamps[i]`` then hold the winner a policy chose among them. ``vv`` is the record's causal
context: per origin rank, the latest stamp of it merged (0: none).

Causality is exact, never inferred from values. An `Edit` names what its author had seen:
``view``, per origin rank the latest stamp of this record it had seen (its own earlier edits
it always saw). An edit's assignment to a slot overwrites exactly the entries its author had
seen (``stamp <= view[rank]``, or an entry of its own origin) and is concurrent with the rest,
which stay beside it until an edit that saw them overwrites them. An edit made after seeing a
value therefore always wins over it, whatever the clocks or the policy say; the policy only
decides between concurrent values. Stamps name assignments: one origin's stamps are unique
and grow along that origin's history.

Delivery must be causal: an edit is applied after every edit it saw (the engine merges each
application's changes in their log order, and an edit can only have seen what the engine had
merged and written back). Under that rule `apply` gives the same state for every delivery
order consistent with causality and is idempotent, and `join` (of states that each hold a
causally closed set of edits) is commutative, associative and idempotent;
`tests/test_merge_laws.py` checks all of it.

Existence is decided between concurrent values by the later stamp ("later-wins"): a delete
against a concurrent update, the later of the two wins; an insert made after seeing a delete
(its own, or one the engine wrote) overwrites it, so a deleted record can be created again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from conflict.clock import ORIGIN_MASK, Timestamp

assert ORIGIN_MASK == 15, "Record.apply spells the origin mask as a literal"

__all__ = ["ABSENT", "EXISTS", "Chooser", "Edit", "Entry", "Record", "Register", "latest"]


class _Absent:
    """The value of a slot that was never assigned."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __reduce__(self) -> Any:
        return (_Absent, ())


ABSENT: Any = _Absent()

Entry = tuple[Any, int]
"""One assignment of a slot: ``(value, stamp)``."""

Chooser = Callable[[int, Sequence[Entry]], Entry]
"""Picks the winner among the concurrent entries of slot ``i`` (given oldest first)."""


_NONE: tuple[int, ...] = ()

EXISTS = -1
"""The existence slot: ``values[EXISTS]`` is True (exists), False (deleted) or `ABSENT`."""


def latest(slot: int, candidates: Sequence[Entry]) -> Entry:
    """The entry with the latest stamp (stamps are unique: there are no ties)."""
    return candidates[-1]


class Register(NamedTuple):
    """One assignment as policies and the conflict log see it: the value and its readable
    timestamp."""

    value: Any
    ts: Timestamp

    @property
    def origin(self) -> str:
        return self.ts.origin


class Edit(NamedTuple):
    """One change of a record by one origin.

    ``ts``: its stamp (the origin is its rank, ``ts & 15``); ``view``: per origin rank, the
    latest stamp of this record its author had seen (0 or a missing rank: nothing);
    ``assigns``: ``(slot, value)`` pairs; ``delete``: the edit deletes the record (it assigns
    existence False and nothing else; otherwise it assigns existence True after ``assigns``).
    """

    ts: int
    view: tuple[int, ...] = ()
    assigns: tuple[tuple[int, Any], ...] = ()
    delete: bool = False


def seen_by(view: Sequence[int], stamp: int) -> bool:
    """True if ``view`` (per origin rank the latest stamp seen) includes ``stamp``."""
    rank = stamp & ORIGIN_MASK
    return rank < len(view) and stamp <= view[rank]


class Record:
    """The merged state of one record (see the module docstring). Mutable; `copy` first."""

    __slots__ = ("multi", "stamps", "values", "vv")

    def __init__(self, fields: int, origins: int = 2) -> None:
        self.values: list[Any] = [ABSENT] * (fields + 1)
        self.stamps: list[int] = [0] * (fields + 1)
        self.multi: dict[int, list[Entry]] | None = None
        self.vv: list[int] = [0] * origins

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Record)
            and self.values == other.values
            and self.stamps == other.stamps
            and (self.multi or {}) == (other.multi or {})
            and self.vv == other.vv
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Record(values={self.values!r}, stamps={self.stamps!r}, "
            f"multi={self.multi!r}, vv={self.vv!r})"
        )

    # -- reading -------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self.values[-1] is True

    @property
    def known(self) -> bool:
        """True once an edit was merged (the record exists or was deleted)."""
        return self.stamps[-1] != 0

    def entries(self, slot: int) -> list[Entry]:
        """The slot's surviving assignments, oldest first."""
        multi = self.multi
        if multi is not None and slot in multi:
            return list(multi[slot])
        stamp = self.stamps[slot]
        return [(self.values[slot], stamp)] if stamp else []

    def copy(self) -> Record:
        new = Record.__new__(Record)
        new.values = list(self.values)
        new.stamps = list(self.stamps)
        new.multi = {i: list(e) for i, e in self.multi.items()} if self.multi else None
        new.vv = list(self.vv)
        return new

    # -- merging -------------------------------------------------------------------------

    def apply(self, edit: Edit | tuple[Any, ...], choose: Chooser = latest) -> Sequence[int]:
        """Merge ``edit`` (whose causal past must have been merged already); a plain
        ``(ts, view, assigns, delete)`` tuple will do.

        Returns the slots the edit assigned that hold concurrent entries after it. An edit
        already merged (its stamp is covered by ``vv``) changes nothing.

        NOTE: the hot path. One entry per slot is the common case; it is replaced in place
        when the edit saw it or it is the author's own, and only a concurrent one allocates.
        """
        ts, view, assigns, delete = edit
        rank = ts & 15  # NOTE: ORIGIN_MASK as a literal: a global lookup costs here
        vv = self.vv
        if ts <= vv[rank]:
            return _NONE
        vv[rank] = ts
        values, stamps, multi = self.values, self.stamps, self.multi
        concurrent: Sequence[int] = _NONE
        if delete:
            assigns = ((-1, False),)
        else:
            # existence True (the ordinary case: the author's own, or one it saw)
            old = stamps[-1]
            other = old & 15
            if (multi is None or -1 not in multi) and (
                old == 0 or other == rank or (other < len(view) and old <= view[other])
            ):
                values[-1] = True
                stamps[-1] = ts
            else:
                assigns = (*assigns, (-1, True))
        for slot, value in assigns:
            if multi is None or slot not in multi:
                old = stamps[slot]
                other = old & 15
                if old == 0 or other == rank or (other < len(view) and old <= view[other]):
                    values[slot] = value
                    stamps[slot] = ts
                    continue
            if self._concurrent(slot, value, ts, view, choose):
                concurrent = [*concurrent, slot]
            multi = self.multi
        return concurrent

    def _concurrent(
        self, slot: int, value: Any, ts: int, view: Sequence[int], choose: Chooser
    ) -> bool:
        """Assign a slot whose entries the edit did not all see (the slow path). True if
        concurrent entries remain."""
        values, stamps, multi = self.values, self.stamps, self.multi
        rank = ts & ORIGIN_MASK
        if multi is not None and slot in multi:
            entries = [
                e for e in multi[slot] if e[1] & ORIGIN_MASK != rank and not seen_by(view, e[1])
            ]
        else:
            entries = [(values[slot], stamps[slot])]
        if not entries:
            assert multi is not None
            del multi[slot]
            if not multi:
                self.multi = None
            values[slot] = value
            stamps[slot] = ts
            return False
        entries.append((value, ts))
        entries.sort(key=_by_stamp)
        if multi is None:
            multi = self.multi = {}
        multi[slot] = entries
        winner = entries[-1] if slot == EXISTS else choose(slot, entries)
        values[slot], stamps[slot] = winner
        return True

    def add_concurrent(
        self,
        slot: int,
        value: Any,
        stamp: int,
        choose: Chooser = latest,
        view: Sequence[int] = (),
        *,
        own: bool = True,
    ) -> bool:
        """Add one assignment outside the causal delivery of `apply`, for what the engine
        learns out of order: a snapshot row whose history is unknown, a change that arrives
        after a later one of its origin, a record merged into another.

        It overwrites the entries ``view`` covers and (``own``) the earlier ones of its own
        origin, and is concurrent with the rest; a later entry of its own origin overwrites
        it instead. Returns True if the slot holds concurrent entries after it. The record's
        context ``vv`` is the caller's to raise.
        """
        rank = stamp & ORIGIN_MASK
        kept = []
        for entry in self.entries(slot):
            other = entry[1]
            if other == stamp:
                return bool(self.multi and slot in self.multi)  # it holds this one already
            if own and other & ORIGIN_MASK == rank:
                if other >= stamp:
                    return bool(self.multi and slot in self.multi)
                continue
            if seen_by(view, other):
                continue
            kept.append(entry)
        kept.append((value, stamp))
        kept.sort(key=_by_stamp)
        multi = self.multi
        if len(kept) == 1:
            if multi is not None and slot in multi:
                del multi[slot]
                if not multi:
                    self.multi = None
            self.values[slot], self.stamps[slot] = kept[0]
            return False
        if multi is None:
            multi = self.multi = {}
        multi[slot] = kept
        winner = kept[-1] if slot == EXISTS else choose(slot, kept)
        self.values[slot], self.stamps[slot] = winner
        return True

    def resolve(self, slot: int, choose: Chooser) -> None:
        """Pick the winner of a slot holding concurrent entries again."""
        if self.multi and slot in self.multi:
            entries = self.multi[slot]
            winner = entries[-1] if slot == EXISTS else choose(slot, entries)
            self.values[slot], self.stamps[slot] = winner

    def join(self, other: Record, choose: Chooser = latest) -> None:
        """In place: self := self joined with ``other``.

        Both must hold causally closed sets of edits of the same record (a replica that holds
        an edit holds everything that edit saw): then an entry one side lacks although its
        context covers it is one that side overwrote.
        """
        if len(other.values) != len(self.values) or len(other.vv) != len(self.vv):
            raise ValueError("cannot join records of different shapes")
        mine_multi, theirs_multi = self.multi, other.multi
        for slot in range(-1, len(self.values) - 1):
            if (
                self.stamps[slot] == other.stamps[slot]
                and not (mine_multi and slot in mine_multi)
                and not (theirs_multi and slot in theirs_multi)
            ):
                continue
            mine, theirs = self.entries(slot), other.entries(slot)
            # NOTE: entries are told apart by their stamps (which name them), never by
            # their values (a NaN is not equal to itself).
            mine_stamps = {e[1] for e in mine}
            theirs_stamps = {e[1] for e in theirs}
            keep = [e for e in mine if e[1] in theirs_stamps or not seen_by(other.vv, e[1])]
            keep += [e for e in theirs if e[1] not in mine_stamps and not seen_by(self.vv, e[1])]
            keep.sort(key=_by_stamp)
            if self.multi and slot in self.multi:
                del self.multi[slot]
            if not keep:
                self.values[slot], self.stamps[slot] = ABSENT, 0
            elif len(keep) == 1:
                self.values[slot], self.stamps[slot] = keep[0]
            else:
                if self.multi is None:
                    self.multi = {}
                self.multi[slot] = keep
                winner = keep[-1] if slot == EXISTS else choose(slot, keep)
                self.values[slot], self.stamps[slot] = winner
        if self.multi is not None and not self.multi:
            self.multi = None
        self.vv = [max(a, b) for a, b in zip(self.vv, other.vv, strict=True)]


def _by_stamp(entry: Entry) -> int:
    return entry[1]
