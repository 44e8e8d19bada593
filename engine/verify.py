"""`verify`: compare the two applications of a map record by record.

Both sides are read through the map, as the engine reads them: each connector's snapshot
gives the captured columns in canonical field order and in the canonical value model, so a
left row and a right row with the same key compare field by field (``Decimal('1.50') ==
1.5``; text is compared exactly, case and trailing spaces included).

How: the left side is read and kept as ``key -> row``, the right side is streamed against it
(rows are compared with ``==``, exactly: no digest can hide a difference). Memory is about
350 bytes per record of the 5-field bench table; where a table has more than ``max_keys``
records the work is split by key hash range (`engine.pipeline.partition_of`) into passes
that each hold one range of the left side.

A map that is playing keeps changing both sides: verify a paused or idle map (`wait_idle`)
for an exact answer. Pure logic over two connectors: no Ray.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.connectors.base import Connector
from engine.ids import Side
from engine.maps import CompiledMap, EntityMap
from engine.pipeline import partition_of

__all__ = ["Difference", "VerifyReport", "verify", "verify_map"]

CHUNK = 20_000
MAX_KEYS = 1_000_000
LIMIT = 100


@dataclass(frozen=True)
class Difference:
    """A record present on both sides whose ``fields`` differ: field -> (left, right)."""

    key: tuple[Any, ...]
    fields: dict[str, tuple[Any, Any]]


@dataclass
class VerifyReport:
    """What `verify` found. The lists hold at most ``limit`` records each; the counts are
    exact."""

    map: str
    left: int = 0
    right: int = 0
    only_left: list[tuple[Any, ...]] = field(default_factory=list)
    only_right: list[tuple[Any, ...]] = field(default_factory=list)
    differing: list[Difference] = field(default_factory=list)
    only_left_count: int = 0
    only_right_count: int = 0
    differing_count: int = 0
    passes: int = 1
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.only_left_count or self.only_right_count or self.differing_count)

    def as_dict(self) -> dict[str, Any]:
        return {
            "map": self.map,
            "ok": self.ok,
            "left": self.left,
            "right": self.right,
            "only_left": {"count": self.only_left_count, "keys": [list(k) for k in self.only_left]},
            "only_right": {
                "count": self.only_right_count,
                "keys": [list(k) for k in self.only_right],
            },
            "differing": {
                "count": self.differing_count,
                "records": [
                    {"key": list(d.key), "fields": {f: list(v) for f, v in d.fields.items()}}
                    for d in self.differing
                ],
            },
            "passes": self.passes,
            "seconds": round(self.seconds, 3),
        }


def verify(
    cmap: CompiledMap,
    left: Connector,
    right: Connector,
    *,
    limit: int = LIMIT,
    chunk: int = CHUNK,
    max_keys: int = MAX_KEYS,
    clock: Any = time.perf_counter,
    rows: dict[tuple[Any, ...], tuple[Any, ...]] | None = None,
) -> VerifyReport:
    """Compare ``cmap``'s records on ``left`` and ``right`` (connectors of its two apps).

    ``rows``, if given, receives the rows of the records found on one side only (for
    `engine.drift`'s repair, which writes them to the other side)."""
    started = clock()
    connectors = (left, right)
    key_at = cmap.key
    passes = 1
    while True:
        report = VerifyReport(cmap.name, passes=passes)
        if rows is not None:
            rows.clear()
        if _run(cmap, connectors, key_at, passes, max_keys, limit, chunk, report, rows):
            break
        passes *= 2  # a range held more than max_keys records: split every range in two
    report.seconds = clock() - started
    return report


def _run(
    cmap: CompiledMap,
    connectors: tuple[Connector, Connector],
    key_at: tuple[int, ...],
    passes: int,
    max_keys: int,
    limit: int,
    chunk: int,
    report: VerifyReport,
    rows: dict[tuple[Any, ...], tuple[Any, ...]] | None = None,
) -> bool:
    """One full comparison in ``passes`` hash ranges; False if a range overflowed."""
    fields = cmap.fields
    for part in range(passes):
        held: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for row in _rows(cmap, connectors[Side.LEFT], Side.LEFT, chunk, passes, part, key_at):
            held[tuple([row[i] for i in key_at])] = row
            if len(held) > max_keys:
                return False
        report.left += len(held)
        for row in _rows(cmap, connectors[Side.RIGHT], Side.RIGHT, chunk, passes, part, key_at):
            key = tuple([row[i] for i in key_at])
            report.right += 1
            mine = held.pop(key, None)
            if mine is None:
                if rows is not None:
                    rows[key] = row
                report.only_right_count += 1
                if len(report.only_right) < limit:
                    report.only_right.append(key)
            elif mine != row:
                differ = {
                    fields[i]: (x, y)
                    for i, (x, y) in enumerate(zip(mine, row, strict=True))
                    if not _same(x, y)
                }
                if differ:  # NOTE: else only NaNs, which are the same value here
                    report.differing_count += 1
                    if len(report.differing) < limit:
                        report.differing.append(Difference(key, differ))
        report.only_left_count += len(held)
        if rows is not None:
            rows.update(held)
        report.only_left.extend(itertools.islice(held, max(0, limit - len(report.only_left))))
    return True


def _rows(
    cmap: CompiledMap,
    connector: Connector,
    side: Side,
    chunk: int,
    passes: int,
    part: int,
    key_at: tuple[int, ...],
) -> Iterator[tuple[Any, ...]]:
    _head, chunks = connector.snapshot(cmap.capture(side), chunk)
    for rows in chunks:
        if passes == 1:
            yield from rows
        else:
            for row in rows:
                if partition_of([row[i] for i in key_at], passes) == part:
                    yield row


def _same(x: Any, y: Any) -> bool:
    if x == y:
        return True
    return isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)


def verify_map(
    spec: Mapping[str, Any], urls: Sequence[str], limit: int = LIMIT, max_keys: int = MAX_KEYS
) -> VerifyReport:
    """`verify` of a map given as its spec and its two apps' URLs (left, right): opens the
    connectors, compares, closes them."""
    from engine.connectors import open_connector  # NOTE: here, so `engine.verify` stays light

    emap = EntityMap.model_validate(spec)
    cmap = emap.compile()
    opened: list[Connector] = []
    try:
        for side in Side:
            opened.append(open_connector(emap.side(side).app, urls[side]))
        return verify(cmap, opened[0], opened[1], limit=limit, max_keys=max_keys)
    finally:
        for connector in opened:
            connector.close()
