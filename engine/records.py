"""What a partition keeps per record, how it is persisted, and the bounded cache of them.

`Tracked` is a `conflict.Record` (the merged values, stamps and causal context) plus what the
engine knows of each side:

- ``seen[side]``: the side's row as of its *stream point* (its last change the partition
  merged, with our writes that landed before that change): None (no row), `UNSEEN` (not
  known), `SAME` (exactly the merged values: the common case, which costs nothing) or a
  list of values in canonical field order;
- ``base[side]``: the latest stamp of the *other* side's edits this side had seen at its
  stream point (0: none): our writes carry the merged state, so a side that received one
  has seen everything merged up to then;
- ``pend``: our writes to each side that its change stream has not passed yet (`Pending`);
  None in the common case;
- ``extra``: rare state, None in the common case (`Extra`): what a record that moved
  between keys needs (see `engine.pipeline`).

What a side holds *now* is its ``seen`` row with its pending writes applied on top
(`Tracked.holds`); what it has seen of the other side now is ``base`` raised by their
contexts (`Tracked.view_now`).

Persisted (`encode_record`), every field of it: a restarted partition needs all of it to go
on exactly where it was. A `Redirect` is the small trace a record leaves at a key it moved
away from.

`RecordCache` holds the records a partition works on: every record changed since the last
checkpoint (pinned until the checkpoint writes it) and up to ``size`` others, least recently
used first out; a batch fetches the records it touches and misses in one call to ``load``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from conflict import Record
from engine.codec import SAME, UNSEEN, pack, unpack
from engine.ids import RecordKey

__all__ = [
    "Extra",
    "Pending",
    "RecordCache",
    "Redirect",
    "Tracked",
    "apply_write",
    "decode_record",
    "encode_record",
    "pending_of",
]


class Pending(NamedTuple):
    """One write of ours to a side, its position in the side's change log (None while in
    flight), the key it went to, and the stamp of the other side's edits it carried
    (``ctx``)."""

    position: int | None
    op: str  # "I", "U", "D" or "M"
    key: RecordKey
    values: dict[int, Any]
    ctx: int
    old: RecordKey | None = None  # "M": the key the row had


class Extra:
    """The rare per-record state (see the module docstring and `engine.pipeline`)."""

    __slots__ = ("ghost", "last", "moved", "redirect")

    def __init__(self) -> None:
        # A record that moved here: per side, what the side held and had seen when it moved
        # (``[seen, base, pending]``), for changes made at the old key that arrive late.
        self.ghost: list[Any] | None = None
        self.last: list[int] = [-1, -1]  # per side: the last change merged (moved records)
        self.moved: list[RecordKey] = []  # keys whose owners were told to send changes here
        self.redirect: RecordKey | None = None  # a record that left this key went there


class Redirect(NamedTuple):
    """The record that was at this key moved to ``to``."""

    to: RecordKey


class Tracked(Record):
    """A merged record and what each side holds of it (see the module docstring)."""

    __slots__ = ("extra", "held", "pend")

    def __init__(self, fields: int) -> None:
        super().__init__(fields, 2)
        # ``[seen_left, seen_right, base_left, base_right]``: one list, not two (memory).
        self.held: list[Any] = [UNSEEN, UNSEEN, 0, 0]
        self.pend: list[list[Pending]] | None = None
        self.extra: Extra | None = None

    def __repr__(self) -> str:
        return (
            f"Tracked(values={self.values!r}, stamps={self.stamps!r}, multi={self.multi!r}, "
            f"vv={self.vv!r}, held={self.held!r}, "
            f"pending={self.pending(0)!r}/{self.pending(1)!r})"
        )

    @property
    def seen(self) -> list[Any]:
        """(A copy of) what each side held at its stream point (see the module docstring)."""
        return self.held[:2]

    @property
    def base(self) -> list[int]:
        """(A copy of) the other side's latest stamp each side had seen at its stream point."""
        return self.held[2:]

    def pending(self, side: int) -> list[Pending]:
        pend = self.pend
        return pend[side] if pend is not None else []

    def add_pending(self, side: int, entry: Pending) -> None:
        """Queue a write of ours to ``side`` after those already pending."""
        pend = self.pend
        if pend is None:
            self.pend = [[entry], []] if side == 0 else [[], [entry]]
        else:
            pend[side] = [*pend[side], entry]

    def set_pending(self, side: int, entries: list[Pending]) -> None:
        pend = self.pend
        if pend is None:
            if entries:
                self.pend = [entries, []] if side == 0 else [[], entries]
            return
        pend[side] = entries
        if not pend[0] and not pend[1]:
            self.pend = None

    def extras(self) -> Extra:
        if self.extra is None:
            self.extra = Extra()
        return self.extra

    def image(self, side: int) -> Any:
        """The side's row at its stream point (`SAME` made a list)."""
        seen = self.held[side]
        return self.values[:-1] if seen is SAME else seen

    def holds(self, side: int, key_index: tuple[int, ...]) -> Any:
        """What the side holds now: its row with our pending writes applied on top."""
        image = self.image(side)
        n = len(self.values) - 1
        for entry in self.pending(side):
            image = apply_write(image, entry, key_index, n)
        return image

    def view_now(self, side: int) -> int:
        """The latest stamp of the other side's edits this side has seen now."""
        view: int = self.held[2 + side]
        for entry in self.pending(side):
            if entry.ctx > view:
                view = entry.ctx
        return view

    def settle_same(self, side: int) -> None:
        """Store ``seen[side]`` as `SAME` if it is the merged record: its values, and the
        record exists (a side holding a row of a deleted record's values does not hold it)."""
        seen = self.held[side]
        values = self.values
        if isinstance(seen, list) and values[-1] is True and seen == values[:-1]:
            self.held[side] = SAME


def apply_write(image: Any, entry: Pending, key_index: tuple[int, ...], n: int) -> Any:
    """``image`` (what a side held, ``n`` fields) after our write ``entry`` landed on it, as
    the connectors apply writes: an update or a move of a row the side lacks does nothing."""
    op = entry.op
    if isinstance(image, list):
        held = tuple(image[i] for i in key_index)
        if held != (entry.old if op == "M" else entry.key):
            # The side's row has another key (it renamed the record meanwhile): the write
            # went to a key it no longer holds. (An upsert there makes a row we do not track.)
            return image
        if op == "D":
            return None
        image = list(image)
    elif op == "D":
        return None
    elif op == "I":
        image = [UNSEEN] * n
    else:
        return image
    for i, value in entry.values.items():
        image[i] = value
    return image


# -- persistence -----------------------------------------------------------------------------

_RECORD, _REDIRECT = 0, 1
# NOTE: what a side holds is persisted as True (SAME) or False (UNSEEN): msgpack packs them
# natively, where the ext types cost a Python callback each.
_SEEN_CODES = {id(SAME): True, id(UNSEEN): False}
_SEEN_MARKS = {True: SAME, False: UNSEEN}


def encode_record(rec: Tracked | Redirect) -> bytes:
    """A record's persisted form (every field: see the module docstring).

    ``[0, values, stamps, multi, vv, held, pend, extra]`` or ``[1, to]`` for a
    `Redirect`; ``pend`` is ``[pending_left, pending_right]`` or nil, ``extra`` is
    ``[ghost, last, moved, redirect]`` or nil.
    """
    if isinstance(rec, Redirect):
        return pack([_REDIRECT, list(rec.to)])
    extra = rec.extra
    pend = rec.pend
    return pack(
        [
            _RECORD,
            rec.values,
            rec.stamps,
            rec.multi,
            rec.vv,
            [_SEEN_CODES.get(id(x), x) for x in rec.held[:2]] + rec.held[2:],
            None if pend is None else [[list(p) for p in queue] for queue in pend],
            None
            if extra is None
            else [
                extra.ghost,
                extra.last,
                [list(k) for k in extra.moved],
                None if extra.redirect is None else list(extra.redirect),
            ],
        ]
    )


def decode_record(data: bytes) -> Tracked | Redirect:
    body = unpack(data)
    if body[0] == _REDIRECT:
        return Redirect(tuple(body[1]))
    _, values, stamps, multi, vv, held, pend, extra = body
    rec = Tracked.__new__(Tracked)
    rec.values = values
    rec.stamps = stamps
    rec.multi = {
        int(slot): [(e[0], e[1]) for e in entries] for slot, entries in (multi or {}).items()
    } or None
    rec.vv = vv
    for side in (0, 1):
        if type(held[side]) is bool:
            held[side] = _SEEN_MARKS[held[side]]
    rec.held = held
    rec.pend = None if pend is None else [[pending_of(p) for p in queue] for queue in pend]
    rec.extra = None
    if extra is not None:
        ghost, last, moved, redirect = extra
        x = rec.extra = Extra()
        x.ghost = ghost
        x.last = last
        x.moved = [tuple(k) for k in moved]
        x.redirect = None if redirect is None else tuple(redirect)
    return rec


def pending_of(item: list[Any]) -> Pending:
    position, op, key, values, ctx, old = item
    return Pending(position, op, tuple(key), values, ctx, None if old is None else tuple(old))


# -- the cache -------------------------------------------------------------------------------

Loader = Callable[[list[RecordKey]], dict[RecordKey, bytes]]


class RecordCache:
    """The records of a partition at hand (see the module docstring).

    ``dirty`` records (changed since the last checkpoint) stay until `checkpointed`; up to
    ``size`` others are kept, least recently used evicted first. ``gone`` are keys whose
    record must be dropped from the store at the next checkpoint.
    """

    def __init__(self, size: int, load: Loader | None = None) -> None:
        if size < 0:
            raise ValueError(f"the record cache size must be >= 0, found {size}")
        self.size = size
        self._load = load
        self.clean: dict[RecordKey, Tracked | Redirect] = {}
        self.dirty: dict[RecordKey, Tracked | Redirect] = {}
        self.gone: set[RecordKey] = set()
        self.absent: set[RecordKey] = set()  # looked for by the last fetch, not in the store
        self.loads = 0
        self.loaded = 0

    def __len__(self) -> int:
        return len(self.clean) + len(self.dirty)

    def fetch(self, keys: Iterable[RecordKey]) -> None:
        """Make the records of ``keys`` that exist in the store available (one load)."""
        missing = [
            k
            for k in dict.fromkeys(keys)
            if k not in self.dirty and k not in self.clean and k not in self.gone
        ]
        if missing and self._load is not None:
            found = self._load(missing)
            self.loads += 1
            self.loaded += len(found)
            for key, data in found.items():
                self.clean[key] = decode_record(data)
            self.absent = {k for k in missing if k not in found}
            self._evict()

    def get(self, key: RecordKey) -> Tracked | Redirect | None:
        rec = self.dirty.get(key)
        if rec is not None:
            return rec
        rec = self.clean.pop(key, None)
        if rec is not None:
            self.clean[key] = rec  # most recently used last
            return rec
        if key in self.gone or key in self.absent or self._load is None:
            return None
        self.fetch([key])
        return self.clean.get(key)

    def take(self, key: RecordKey) -> Tracked | Redirect | None:
        """The record of ``key`` (loading it if need be), kept as changed (see `put`)."""
        rec = self.dirty.get(key)
        if rec is not None:
            return rec
        rec = self.clean.pop(key, None)
        if rec is None:
            rec = self.get(key)
            if rec is None:
                return None
            self.clean.pop(key, None)
        self.dirty[key] = rec
        return rec

    def put(self, key: RecordKey, rec: Tracked | Redirect) -> None:
        """``rec`` changed (or is new): keep it until the next checkpoint."""
        self.clean.pop(key, None)
        self.gone.discard(key)
        self.absent.discard(key)
        self.dirty[key] = rec

    def drop(self, key: RecordKey) -> None:
        """Forget ``key`` (its record is removed from the store at the next checkpoint)."""
        self.clean.pop(key, None)
        self.dirty.pop(key, None)
        self.gone.add(key)

    def checkpointed(self) -> None:
        """The dirty records and the drops are in the store now."""
        self.clean.update(self.dirty)
        self.dirty = {}
        self.gone = set()
        self._evict()

    def _evict(self) -> None:
        clean = self.clean
        excess = len(clean) - self.size
        if excess > 0:
            for key in list(_first(clean, excess)):
                del clean[key]

    def items(self) -> Iterable[tuple[RecordKey, Tracked | Redirect]]:
        """Every record at hand (dirty ones first)."""
        yield from self.dirty.items()
        yield from self.clean.items()


def _first(d: dict[RecordKey, Any], n: int) -> Iterable[RecordKey]:
    for i, key in enumerate(d):
        if i >= n:
            return
        yield key
