"""Clocks: hybrid logical timestamps, vector clocks and dot contexts.

All three are plain values with no I/O. Time is injected: a `HybridClock` is given the
physical time by its caller, it never reads the system clock itself.

- `Timestamp` is a hybrid logical clock (HLC) reading ``(wall_ms, counter, origin)``. Tuples
  compare lexicographically, so two timestamps always have a total order and ties break
  deterministically on the origin id, never on wall time alone.
- `VectorClock` maps an origin to a counter and gives the causal partial order: `compare`
  returns `None` for concurrent clocks.
- `DotContext` is the set of events ("dots", ``(origin, n)``) a replica has seen, stored as a
  vector clock plus the few dots that arrived out of order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import NamedTuple

__all__ = [
    "DotContext",
    "HybridClock",
    "Ordering",
    "Timestamp",
    "VectorClock",
]

Dot = tuple[str, int]
"""One event: ``(origin, n)``, the n-th event of that origin (n counts from 1)."""


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

    def covers(self, other: VectorClock | Dot) -> bool:
        """True if every event of ``other`` (a clock, or one dot) is known to this clock."""
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


class DotContext:
    """A set of dots, compact when dots of each origin arrive without gaps.

    ``vv[o] = n`` means dots ``(o, 1) .. (o, n)`` are all present; ``cloud`` holds dots past a
    gap. Mutable on purpose: it sits on the merge hot path. ``copy()`` before sharing.
    """

    __slots__ = ("cloud", "vv")

    def __init__(self, vv: dict[str, int] | None = None, cloud: Iterable[Dot] = ()) -> None:
        self.vv: dict[str, int] = dict(vv) if vv else {}
        self.cloud: set[Dot] | None = None
        for dot in cloud:
            self.add(dot)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, DotContext)
            and self.vv == other.vv
            and (self.cloud or set()) == (other.cloud or set())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DotContext({self.vv!r}, {sorted(self.cloud or ())!r})"

    def copy(self) -> DotContext:
        new = DotContext(self.vv)
        if self.cloud:
            new.cloud = set(self.cloud)
        return new

    def covers(self, dot: Dot) -> bool:
        origin, n = dot
        return n <= self.vv.get(origin, 0) or (self.cloud is not None and dot in self.cloud)

    def next_dot(self, origin: str) -> Dot:
        """The dot a new event of ``origin`` gets: one past everything seen of it."""
        top = self.vv.get(origin, 0)
        if self.cloud:
            top = max([top, *(n for o, n in self.cloud if o == origin)])
        return (origin, top + 1)

    def add(self, dot: Dot) -> None:
        origin, n = dot
        top = self.vv.get(origin, 0)
        if n <= top:
            return
        if n == top + 1:
            self.vv[origin] = n
            if self.cloud:
                self._compact(origin)
        else:
            if self.cloud is None:
                self.cloud = set()
            self.cloud.add(dot)

    def merge(self, other: DotContext) -> None:
        for origin, n in other.vv.items():
            if n > self.vv.get(origin, 0):
                self.vv[origin] = n
                if self.cloud:
                    self._compact(origin)
        if other.cloud:
            for dot in other.cloud:
                self.add(dot)

    def _compact(self, origin: str) -> None:
        cloud = self.cloud
        assert cloud is not None
        top = self.vv[origin]
        for dot in [d for d in cloud if d[0] == origin and d[1] <= top]:
            cloud.discard(dot)
        while (origin, top + 1) in cloud:
            top += 1
            cloud.discard((origin, top))
        self.vv[origin] = top
        if not cloud:
            self.cloud = None
