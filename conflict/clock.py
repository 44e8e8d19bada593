"""Clocks: hybrid logical timestamps, vector clocks, and bounded application clocks.

All are plain values with no I/O. Time is injected: a `HybridClock` is given the physical
time by its caller, it never reads the system clock itself.

- `Timestamp` is a hybrid logical clock (HLC) reading ``(wall_ms, counter, origin)``. Tuples
  compare lexicographically, so two timestamps always have a total order and ties break
  deterministically on the origin id, never on wall time alone.
- A *stamp* is the same reading packed in one int (`pack`): wall time, counter, and the
  origin's rank in an `Origins` table (ranks follow the names' order, so stamps compare as
  the timestamps do). Records and the wire carry stamps: one small int instead of a tuple
  of three objects. `Origins.timestamp` turns one back into a `Timestamp`.
- `VectorClock` maps an origin to a counter and gives the causal partial order: `compare`
  returns `None` for concurrent clocks.
- `BoundedClock` stamps an application's changes from the commit times it reports, clipped
  to the window in which the engine knows they committed, plus a tolerance: an application
  clock that runs ahead or behind cannot push its timestamps further than that, and the
  offset it shows is measured (`BoundedClock.skew_ms`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

__all__ = [
    "DEFAULT_TOLERANCE_MS",
    "LIVE_WINDOW_MS",
    "MAX_COUNTER",
    "MAX_ORIGINS",
    "MAX_WALL_MS",
    "BoundedClock",
    "HybridClock",
    "Ordering",
    "Origins",
    "Timestamp",
    "VectorClock",
    "pack",
    "stamp_after",
    "unpack",
]

DEFAULT_TOLERANCE_MS = 1_000
"""How far an application's commit times may lie outside the window in which the engine
knows the change committed before they are clipped (and the skew reported)."""

ORIGIN_BITS = 4
COUNTER_BITS = 18
MAX_ORIGINS = 1 << ORIGIN_BITS
ORIGIN_MASK = MAX_ORIGINS - 1
MAX_COUNTER = (1 << COUNTER_BITS) - 1
MAX_WALL_MS = (1 << (64 - ORIGIN_BITS - COUNTER_BITS)) - 1  # about the year 2109


class Ordering(enum.Enum):
    BEFORE = "before"
    EQUAL = "equal"
    AFTER = "after"


class Timestamp(NamedTuple):
    """An HLC reading. Units: ``wall_ms`` is milliseconds since the Unix epoch.

    Invariant: for readings of one `HybridClock`, later calls give strictly greater tuples.
    Comparison is plain tuple order, (wall_ms, counter, origin).
    """

    wall_ms: int
    counter: int
    origin: str

    def after(self, seen: Timestamp) -> Timestamp:
        """This event's timestamp once it is known to have seen ``seen`` (the HLC receive rule).

        Returns ``self`` if it is already later, otherwise the smallest reading of this origin
        that is later than ``seen``. Used so that an edit made on top of a value always carries
        a later timestamp than that value, whatever the two applications' wall clocks say.
        """
        if self > seen:
            return self
        return Timestamp(seen.wall_ms, seen.counter + 1, self.origin)


def pack(wall_ms: int, counter: int, rank: int) -> int:
    """A stamp: ``wall_ms`` (42 bits), ``counter`` (18 bits), origin ``rank`` (4 bits), in
    64 bits (a msgpack uint64). Stamps compare as ``(wall_ms, counter, rank)`` tuples."""
    if not (0 <= wall_ms <= MAX_WALL_MS and 0 <= counter <= MAX_COUNTER and 0 <= rank < 16):
        raise ValueError(f"no stamp for wall {wall_ms} ms, counter {counter}, rank {rank}")
    return (((wall_ms << COUNTER_BITS) | counter) << ORIGIN_BITS) | rank


def unpack(stamp: int) -> tuple[int, int, int]:
    """``(wall_ms, counter, rank)`` of a stamp."""
    return (
        stamp >> (COUNTER_BITS + ORIGIN_BITS),
        (stamp >> ORIGIN_BITS) & MAX_COUNTER,
        (stamp & ORIGIN_MASK),
    )


def stamp_after(stamp: int, seen: int) -> int:
    """``stamp`` once its event is known to have seen ``seen`` (the HLC receive rule): itself
    if already later, otherwise ``seen``'s wall time and counter plus one, with ``stamp``'s
    origin (as `Timestamp.after`)."""
    if stamp > seen:
        return stamp
    return (((seen >> ORIGIN_BITS) + 1) << ORIGIN_BITS) | (stamp & ORIGIN_MASK)


class Origins:
    """The origins (applications) whose stamps a set of records holds, ranked by name.

    Ranking by name makes stamps break ties as `Timestamp` tuples do (on the origin name),
    and gives every process the same ranks for the same names.
    """

    __slots__ = ("names", "ranks")

    def __init__(self, names: tuple[str, ...] | list[str]) -> None:
        ordered = tuple(sorted(set(names)))
        if not 1 <= len(ordered) <= MAX_ORIGINS:
            raise ValueError(f"between 1 and {MAX_ORIGINS} origins, found {len(ordered)}")
        self.names = ordered
        self.ranks = {name: i for i, name in enumerate(ordered)}

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Origins({list(self.names)!r})"

    def rank(self, name: str) -> int:
        rank = self.ranks.get(name)
        if rank is None:
            raise KeyError(f"unknown origin {name!r} (known: {', '.join(self.names)})")
        return rank

    def name(self, stamp: int) -> str:
        return self.names[stamp & ORIGIN_MASK]

    def timestamp(self, stamp: int) -> Timestamp:
        wall, counter, rank = unpack(stamp)
        return Timestamp(wall, counter, self.names[rank])

    def stamp(self, ts: Timestamp) -> int:
        return pack(ts.wall_ms, ts.counter, self.rank(ts.origin))


class HybridClock:
    """A hybrid logical clock for one origin.

    ``now(physical_ms)`` stamps a local event; ``observe(ts, physical_ms)`` merges a remote
    reading. Both return a reading strictly greater than every earlier one of this clock.
    Physical time is passed in (milliseconds since the epoch): the clock never reads it.
    """

    __slots__ = ("_counter", "_wall", "origin")

    def __init__(self, origin: str, last: Timestamp | None = None) -> None:
        self.origin = origin
        self._wall = last.wall_ms if last else 0
        self._counter = last.counter if last else 0

    @property
    def last(self) -> Timestamp:
        return Timestamp(self._wall, self._counter, self.origin)

    def now(self, physical_ms: int) -> Timestamp:
        if physical_ms > self._wall:
            self._wall, self._counter = physical_ms, 0
        else:
            self._counter += 1
        return Timestamp(self._wall, self._counter, self.origin)

    def observe(self, remote: Timestamp, physical_ms: int) -> Timestamp:
        wall = max(self._wall, remote.wall_ms, physical_ms)
        if wall == self._wall == remote.wall_ms:
            counter = max(self._counter, remote.counter) + 1
        elif wall == self._wall:
            counter = self._counter + 1
        elif wall == remote.wall_ms:
            counter = remote.counter + 1
        else:
            counter = 0
        self._wall, self._counter = wall, counter
        return Timestamp(wall, counter, self.origin)


class VectorClock:
    """An immutable map origin -> counter (missing origins count 0)."""

    __slots__ = ("_counters",)

    def __init__(self, counters: Mapping[str, int] | None = None) -> None:
        self._counters: dict[str, int] = {k: v for k, v in (counters or {}).items() if v > 0}

    def __getitem__(self, origin: str) -> int:
        return self._counters.get(origin, 0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VectorClock) and self._counters == other._counters

    def __hash__(self) -> int:
        return hash(frozenset(self._counters.items()))

    def __repr__(self) -> str:
        return f"VectorClock({self._counters!r})"

    def as_dict(self) -> dict[str, int]:
        return dict(self._counters)

    def increment(self, origin: str) -> VectorClock:
        return VectorClock({**self._counters, origin: self[origin] + 1})

    def merge(self, other: VectorClock) -> VectorClock:
        merged = dict(self._counters)
        for origin, n in other._counters.items():
            if n > merged.get(origin, 0):
                merged[origin] = n
        return VectorClock(merged)

    def covers(self, other: VectorClock | tuple[str, int]) -> bool:
        """True if every event of ``other`` (a clock, or one event ``(origin, n)``) is known
        to this clock."""
        if isinstance(other, tuple):
            origin, n = other
            return n <= self[origin]
        return all(n <= self[origin] for origin, n in other._counters.items())

    def compare(self, other: VectorClock) -> Ordering | None:
        """The causal order of two clocks; ``None`` when they are concurrent."""
        le, ge = other.covers(self), self.covers(other)
        if le and ge:
            return Ordering.EQUAL
        if le:
            return Ordering.BEFORE
        if ge:
            return Ordering.AFTER
        return None


LIVE_WINDOW_MS = 250
"""A look at the change log this soon after the previous one measures the clock's offset
(the window is small next to any skew worth correcting: live sync looks every 50 ms)."""


class BoundedClock:
    """The hybrid clock of one application, fed by the commit times it reports; it gives
    stamps (see `pack`) of the application's ``rank``.

    ``stamp(app_ms, earliest_ms, latest_ms)`` stamps a change the application says committed
    at ``app_ms`` and that the engine knows committed between ``earliest_ms`` (its previous
    look at the change log that reached its end, which did not show it; 0 if unknown) and
    ``latest_ms`` (the look that did), on the engine's own clock. Units: milliseconds since
    the Unix epoch.

    - Offset. Every change says how far ``app_ms`` lies outside its window: a time past
      ``latest_ms`` is at least that far ahead, one before ``earliest_ms`` at least that far
      behind. A look within `LIVE_WINDOW_MS` of the previous one (live sync) measures the
      offset closely: it becomes ``skew_ms`` (positive: ahead, negative: behind, 0: inside
      the tolerance). A wider window (a backlog after a pause) can only show more of it. While
      the offset passes ``tolerance_ms`` (``skewed``) the application's times are corrected
      by it, so a clock an hour ahead does not win what it did during a pause either; a live
      look that finds the clock right again sets it back to 0.
    - Clipping. The time used is then clipped to the window widened by ``tolerance_ms`` on
      both sides: whatever the application says, its stamps lie at most ``tolerance_ms``
      outside what the engine saw. So a wrong clock stops winning conflicts as soon as it
      is right again (the hybrid clock's wall time is never more than the tolerance ahead).
    - ``last`` resumes a clock after its last stamp (a restart must never stamp lower).

    A long-running transaction can also show as "behind" (its commit time is taken when it
    logs a change, before it commits).
    """

    __slots__ = ("_counter", "_wall", "offset_ms", "rank", "skew_ms", "tolerance_ms")

    def __init__(self, rank: int, tolerance_ms: int = DEFAULT_TOLERANCE_MS, last: int = 0) -> None:
        if tolerance_ms < 0:
            raise ValueError(f"the clock tolerance must be >= 0 ms, found {tolerance_ms}")
        self.rank = rank
        self.tolerance_ms = tolerance_ms
        self.skew_ms = 0
        self.offset_ms = 0  # the correction applied to the application's times
        self._wall, self._counter, _ = unpack(last)

    @property
    def last(self) -> int:
        return pack(self._wall, self._counter, self.rank)

    @property
    def skewed(self) -> bool:
        return abs(self.skew_ms) > self.tolerance_ms

    def now(self, physical_ms: int) -> int:
        """The next stamp at ``physical_ms`` (no clipping): strictly above every earlier one."""
        if physical_ms > self._wall:
            self._wall, self._counter = physical_ms, 0
        elif self._counter < MAX_COUNTER:
            self._counter += 1
        else:  # NOTE: 262,143 stamps in one ms: borrow the next millisecond.
            self._wall, self._counter = self._wall + 1, 0
        return (((self._wall << COUNTER_BITS) | self._counter) << ORIGIN_BITS) | self.rank

    def stamp_many(self, app_ms: list[int], earliest_ms: int, latest_ms: int) -> list[int]:
        """`stamp` for each of a batch of changes seen in the same window, in order.

        NOTE: the reader's hot path: the common case (times inside the window, no offset)
        in one loop; anything else goes through `stamp`.
        """
        if self.offset_ms:
            return [self.stamp(t, earliest_ms, latest_ms) for t in app_ms]
        tolerance = self.tolerance_ms
        live = earliest_ms > 0 and latest_ms - earliest_ms <= LIVE_WINDOW_MS
        low = earliest_ms if earliest_ms > 0 else -(1 << 62)
        out = []
        wall, counter, rank = self._wall, self._counter, self.rank
        shift = COUNTER_BITS
        inside = False  # the last time was inside the window
        for t in app_ms:
            if t > latest_ms or t < low:
                inside = False
                self._wall, self._counter = wall, counter
                out.append(self.stamp(t, earliest_ms, latest_ms))
                if self.offset_ms:  # it found a skew: the rest the careful way
                    out += [self.stamp(x, earliest_ms, latest_ms) for x in app_ms[len(out) :]]
                    return out
                wall, counter = self._wall, self._counter
                continue
            inside = True
            physical = t if t >= earliest_ms - tolerance else earliest_ms - tolerance
            if physical > wall:
                wall, counter = physical, 0
            elif counter < MAX_COUNTER:
                counter += 1
            else:
                wall, counter = wall + 1, 0
            out.append((((wall << shift) | counter) << ORIGIN_BITS) | rank)
        self._wall, self._counter = wall, counter
        if live and inside:
            self.skew_ms = 0  # as `stamp` measures a time inside a live window
        return out

    def stamp(self, app_ms: int, earliest_ms: int, latest_ms: int) -> int:
        tolerance = self.tolerance_ms
        if app_ms > latest_ms:
            skew = app_ms - latest_ms
        elif earliest_ms > 0 and app_ms < earliest_ms:
            skew = app_ms - earliest_ms
        else:
            skew = 0
        if earliest_ms > 0 and latest_ms - earliest_ms <= LIVE_WINDOW_MS:
            self.offset_ms = skew if abs(skew) > tolerance else 0
            self.skew_ms = skew
        elif skew > tolerance and skew > self.offset_ms >= 0:
            self.offset_ms = self.skew_ms = skew  # at least that far ahead
        elif skew < -tolerance and skew < self.offset_ms <= 0:
            self.offset_ms = self.skew_ms = skew  # at least that far behind
        corrected = app_ms - self.offset_ms
        return self.now(min(max(corrected, earliest_ms - tolerance), latest_ms + tolerance))
