"""Schema drift: a map's entity stops fitting the map, or loses its change capture.

While a map plays, the coordinator looks at both entities every few seconds (`problems`):
the table must exist, hold every mapped column with a type the map can use, keep its key's
unique index, and still carry the capture triggers and change table (a table dropped and
created again has lost its triggers, and with them every change made since). On drift:

- the map's health is ``drift`` in `status()` with the reasons, one error of kind ``schema``
  per problem is logged, `wait_idle` raises `SchemaError`, and the readers pause (changes
  keep queueing on the side that still captures);
- a side whose entity no longer fits has its triggers removed (`Connector.suspend`): a
  trigger naming a dropped column would otherwise fail the application's own writes
  (MariaDB, PostgreSQL).

When the entity fits again, `repair` reinstalls the capture of the drifted side and
reconciles the two applications through the map (`engine.verify`), keeping what the side
that kept its data holds:

- a record the kept side has and the drifted side lost is written back to it;
- a record the drifted side has and the kept side does not (written while the drifted side
  had no capture) is logged in the drifted side's change log (`Connector.recapture`), so it
  syncs as an insert made there, under the map's rules;
- a field that differs takes the kept side's value, except a field only the drifted side
  sets (one-way from it), whose value goes to the kept side. Edits made on the drifted side
  while it had no capture cannot be ordered against the kept side's, so the kept side wins.

If both sides drifted, records found on one side only are recaptured on that side, and
records that differ are left as they are and logged (kind ``repair``): there is no side to
trust. The readers then resume where they were: changes the kept side queued meanwhile sync
as usual. Pure logic over connectors: no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.connectors.base import Connector, EntitySchema, WriteOp
from engine.errors import SchemaError
from engine.ids import Side
from engine.maps import CompiledMap, EntityMap, check_schema, check_types
from engine.verify import verify

__all__ = ["Drift", "Repair", "problems", "repair"]

BATCH = 5000


@dataclass(frozen=True)
class Drift:
    """One problem: on ``side`` (None: the map as a whole, a type no longer carried), with
    the ``field`` concerned if one is. ``fits``: the entity fits the map, only its capture
    is missing."""

    side: Side | None
    field: str | None
    message: str
    fits: bool


@dataclass
class Repair:
    """What `repair` did."""

    written: list[int] = field(default_factory=lambda: [0, 0])  # records written, per side
    recaptured: list[int] = field(default_factory=lambda: [0, 0])  # rows logged, per side
    unresolved: list[tuple[Any, ...]] = field(default_factory=list)  # keys left differing
    failures: list[str] = field(default_factory=list)  # records a side refused

    def as_dict(self) -> dict[str, Any]:
        return {
            "written": {s.label: self.written[s] for s in Side},
            "recaptured": {s.label: self.recaptured[s] for s in Side},
            "unresolved": [list(k) for k in self.unresolved[:100]],
            "failures": self.failures[:100],
        }


def problems(emap: EntityMap, cmap: CompiledMap, connectors: Sequence[Connector]) -> list[Drift]:
    """Everything that keeps the map from syncing both entities as they are now."""
    found: list[Drift] = []
    schemas: list[EntitySchema | None] = []
    for side in Side:
        schema = connectors[side].describe(emap.side(side).entity)
        schemas.append(schema)
        try:
            check_schema(emap, side, schema)
        except SchemaError as exc:
            found.append(Drift(side, exc.field, exc.problem, False))
    if found:
        return found
    try:
        check_types(emap, schemas[0], schemas[1])
    except SchemaError as exc:
        return [Drift(None, exc.field, exc.problem, False)]
    for side in Side:
        missing = connectors[side].capture_problem(cmap.capture(side))
        if missing:
            spec = emap.side(side)
            found.append(Drift(side, None, f"{spec.app}.{spec.entity}: {missing}", True))
    return found


def repair(cmap: CompiledMap, connectors: Sequence[Connector], drifted: set[Side]) -> Repair:
    """Reinstall the capture of the ``drifted`` sides and reconcile (module docstring)."""
    for side in sorted(drifted):
        connectors[side].prepare(cmap.capture(side))
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    report = verify(cmap, connectors[0], connectors[1], limit=2**62, rows=rows)
    out = Repair()
    only = (report.only_left, report.only_right)
    ops: tuple[list[WriteOp], list[WriteOp]] = ([], [])
    recapture: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]] = ([], [])
    kept = None if len(drifted) != 1 else next(iter(drifted)).other
    for side in Side:
        for key in only[side]:
            if kept is side:  # the drifted side lost it: write it back
                ops[side.other].append(WriteOp("I", key, dict(enumerate(rows[key]))))
            else:  # written on this side while its capture was missing
                recapture[side].append(key)
    index = {name: i for i, name in enumerate(cmap.fields)}
    for difference in report.differing:
        if kept is None:
            out.unresolved.append(difference.key)
            continue
        lost = kept.other
        to_lost: dict[int, Any] = {}
        to_kept: dict[int, Any] = {}
        for name, values in difference.fields.items():
            i = index[name]
            if i in cmap.owned[lost]:
                to_kept[i] = values[lost]
            else:
                to_lost[i] = values[kept]
        if to_lost:
            ops[lost].append(WriteOp("U", difference.key, to_lost))
        if to_kept:
            ops[kept].append(WriteOp("U", difference.key, to_kept))
    for side in Side:
        capture = cmap.capture(side)
        for lo in range(0, len(ops[side]), BATCH):
            chunk = ops[side][lo : lo + BATCH]
            result = connectors[side].apply(capture, chunk)
            out.written[side] += len(chunk) - len(result.failures)
            out.failures += [
                f"{cmap.apps[side]} {chunk[f.row].key!r}: {f.message}" for f in result.failures
            ]
        if recapture[side]:
            out.recaptured[side] = connectors[side].recapture(capture, recapture[side])
    return out
