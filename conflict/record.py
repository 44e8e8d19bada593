"""Field-level registers and the merged state of one record.

A record is a map field -> `FieldState` plus two existence registers. The merge is a join
(commutative, associative, idempotent), so replicas that have seen the same edits hold the
same state whatever the order, duplication or grouping in which the edits arrived.

Field state (a multi-value register with a dot context, as in Automerge's ``pred`` lists):

- every assignment is a `Register` ``(value, ts, dot)``; ``dot`` identifies the assignment;
- an assignment names the dots it overwrites (``supersedes``): the values its author had seen;
- the field holds every assignment that no other assignment overwrote. One entry is the normal
  case; two or more are concurrent edits, resolved by a policy (see `conflict.policy`) while
  all of them stay readable until a later edit overwrites them.

Existence: ``alive`` is the latest timestamp of an insert or update and ``dead`` the latest
timestamp of a delete; both only grow. The record exists when ``alive > dead``. So a delete
and a concurrent update are decided by their HLC timestamps (the later wins), and a record
deleted earlier can be created again. An edit made on top of a state carries a later
timestamp than the state (`Timestamp.after`), so a causally newer delete or re-create wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from conflict.clock import Dot, DotContext, Timestamp

__all__ = ["Assign", "Edit", "FieldState", "RecordState", "Register"]


class Register(NamedTuple):
    """One assignment of a field: the value, its HLC timestamp and its identity (dot)."""

    value: Any
    ts: Timestamp
    dot: Dot

    @property
    def origin(self) -> str:
        return self.ts.origin


class Assign(NamedTuple):
    """One field of an edit: the new register and the dots it overwrites."""

    field: str
    register: Register
    supersedes: tuple[Dot, ...]


class Edit(NamedTuple):
    """A change to one record made by one origin at one time.

    ``delete`` edits carry no assignments. Upserts assert that the record exists at ``ts``.
    """

    ts: Timestamp
    delete: bool
    assigns: tuple[Assign, ...] = ()

    def as_state(self) -> RecordState:
        """The edit as a (delta) state: applying it equals joining this state."""
        state = RecordState()
        if self.delete:
            state.dead = self.ts
            return state
        state.alive = self.ts
        for field, register, supersedes in self.assigns:
            fs = state.fields.get(field)
            if fs is None:
                fs = state.fields[field] = FieldState()
            fs.assign(register, supersedes)
        return state


class FieldState(DotContext):
    """A multi-value register: the surviving assignments, and (as a `DotContext`) every dot
    seen for the field, overwritten or not. One object per field: it sits on the hot path.
    """

    __slots__ = ("entries",)

    def __init__(
        self,
        entries: dict[Dot, Register] | None = None,
        vv: dict[str, int] | None = None,
        cloud: Iterable[Dot] = (),
    ) -> None:
        super().__init__(vv, cloud)
        self.entries: dict[Dot, Register] = entries if entries is not None else {}

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FieldState)
            and self.entries == other.entries
            and DotContext.__eq__(self, other)
        )

    def __repr__(self) -> str:
        return f"FieldState({list(self.entries.values())!r}, {self.vv!r}, {self.cloud!r})"

    def copy(self) -> FieldState:
        return FieldState(dict(self.entries), self.vv, self.cloud or ())

    def registers(self) -> list[Register]:
        """The surviving assignments, oldest first (a canonical order)."""
        return sorted(self.entries.values(), key=_by_ts)

    def assign(self, register: Register, supersedes: Iterable[Dot] = ()) -> None:
        """Join the one-assignment state ``{register}`` with context ``supersedes + dot``.

        NOTE: this is `join` specialised for the hot path; `tests/test_merge_laws.py` checks
        that the two agree.
        """
        entries = self.entries
        dot = register.dot
        for old in supersedes:
            if old != dot:
                entries.pop(old, None)
            self.add(old)
        if not self.covers(dot):
            entries[dot] = register
            self.add(dot)

    def join(self, other: FieldState) -> None:
        """In place: self := self joined with other."""
        mine, theirs = self.entries, other.entries
        for dot in [d for d in mine if d not in theirs and other.covers(d)]:
            del mine[dot]
        for dot, register in theirs.items():
            if dot not in mine and not self.covers(dot):
                mine[dot] = register
        self.merge(other)


class RecordState:
    """The merged state of one record. Mutable; `copy()` before sharing."""

    __slots__ = ("alive", "dead", "fields")

    def __init__(self) -> None:
        self.fields: dict[str, FieldState] = {}
        self.alive: Timestamp | None = None
        self.dead: Timestamp | None = None

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RecordState)
            and self.alive == other.alive
            and self.dead == other.dead
            and self.fields == other.fields
        )

    def __repr__(self) -> str:
        return f"RecordState(alive={self.alive}, dead={self.dead}, fields={self.fields!r})"

    @property
    def exists(self) -> bool:
        return self.alive is not None and (self.dead is None or self.alive > self.dead)

    def copy(self) -> RecordState:
        new = RecordState()
        new.fields = {name: fs.copy() for name, fs in self.fields.items()}
        new.alive, new.dead = self.alive, self.dead
        return new

    def apply(self, edit: Edit) -> None:
        """In place: join with ``edit.as_state()`` (fast path)."""
        ts = edit.ts
        if edit.delete:
            if self.dead is None or ts > self.dead:
                self.dead = ts
            return
        if self.alive is None or ts > self.alive:
            self.alive = ts
        fields = self.fields
        for field, register, supersedes in edit.assigns:
            fs = fields.get(field)
            if fs is None:
                fs = fields[field] = FieldState()
            fs.assign(register, supersedes)

    def join(self, other: RecordState) -> None:
        """In place: self := self joined with other."""
        if other.alive is not None and (self.alive is None or other.alive > self.alive):
            self.alive = other.alive
        if other.dead is not None and (self.dead is None or other.dead > self.dead):
            self.dead = other.dead
        for name, theirs in other.fields.items():
            mine = self.fields.get(name)
            if mine is None:
                self.fields[name] = theirs.copy()
            else:
                mine.join(theirs)


def _by_ts(register: Register) -> Timestamp:
    return register.ts
