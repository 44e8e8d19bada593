"""The connector contract: the few methods every application connector implements.

A connector talks to one application (one URL). The engine asks it, per map side, to:

- ``describe(entity)``: the entity's columns and unique keys (None if it does not exist);
- ``prepare(capture)``: install change capture for the captured columns (idempotent);
- ``snapshot(capture, chunk)``: the change-sequence head and the existing rows, consistent
  with each other (rows changed after the head arrive as changes);
- ``read_changes(capture, after, limit)``: changes with sequence > ``after``, oldest first;
- ``wait_for_changes(capture, after, timeout)``: block until a change past ``after`` exists;
- ``ack(capture, upto)``: changes up to ``upto`` are durably merged and may be dropped;
- ``apply(capture, ops)``: write a batch in one transaction. Our own writes must never be
  captured as changes (no echo). The result says where the write landed in the change log
  (``position``: every change with a sequence up to it committed before the write, every later
  one after it), so the engine knows what the application holds at every point of its log.
  Records the application refuses come back as `WriteFailure`; the rest of the batch is
  written.

Drivers' exceptions are translated into `ConnectorError` inside the connector. Every method
works in batches: no call is made per record on the hot path.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "Capture",
    "Column",
    "Connector",
    "EntitySchema",
    "RawChange",
    "WriteFailure",
    "WriteOp",
    "WriteResult",
]


@dataclass(frozen=True)
class Capture:
    """What one side of a map reads and writes.

    ``name`` is unique per (map, side) and safe in identifiers; ``columns`` are in the map's
    canonical field order; ``key`` lists the key columns in canonical key order. Values are
    read and written in the canonical value model (`engine.values`).
    """

    name: str
    entity: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    types: tuple[str | None, ...] = ()
    """Canonical type per column, where the map declares one (see `engine.values`)."""

    def type_of(self, column: int) -> str | None:
        return self.types[column] if column < len(self.types) else None

    @property
    def key_index(self) -> tuple[int, ...]:
        return tuple(self.columns.index(c) for c in self.key)


class Column(NamedTuple):
    name: str
    type: str
    nullable: bool
    has_default: bool


@dataclass(frozen=True)
class EntitySchema:
    entity: str
    columns: dict[str, Column]
    unique: tuple[tuple[str, ...], ...]
    """Column sets with a primary key or unique index (each usable to upsert on)."""
    open: bool = False
    """Records may hold fields not listed (JSON documents): a missing column is no error."""


class RawChange(NamedTuple):
    """One captured change. ``old``/``new`` are value tuples in capture column order."""

    seq: int
    op: str  # "I", "U" or "D"
    at_ms: int  # commit time at the application, ms since the epoch
    old: tuple[Any, ...] | None
    new: tuple[Any, ...] | None


class WriteOp(NamedTuple):
    """One record to write: ``I`` upsert, ``U`` update, ``D`` delete.

    ``key`` holds the key values in capture key order; ``values`` maps capture column index
    to value (unused for deletes). A batch holds at most one op per key, so a connector may
    apply them in any order (the SQLite connector groups them by kind and columns).
    """

    op: str
    key: tuple[Any, ...]
    values: dict[int, Any]


class WriteResult(NamedTuple):
    """The outcome of `Connector.apply`: the refused records and where the write landed."""

    failures: list[WriteFailure]
    position: int


class WriteFailure(NamedTuple):
    """A record of a batch the application refused. ``row`` is its position in the batch."""

    row: int
    column: str | None
    message: str


class Connector(abc.ABC):
    """Base class of connectors; see the module docstring for the contract. URL schemes map
    to connector classes in `engine.connectors.REGISTRY`."""

    def __init__(self, app: str, url: str) -> None:
        self.app = app
        self.url = url

    @abc.abstractmethod
    def describe(self, entity: str) -> EntitySchema | None: ...

    @abc.abstractmethod
    def prepare(self, capture: Capture) -> None: ...

    @abc.abstractmethod
    def release(self, capture: Capture) -> None:
        """Remove the change capture of ``capture`` (when its map is deleted)."""

    @abc.abstractmethod
    def head(self, capture: Capture) -> int: ...

    @abc.abstractmethod
    def snapshot(
        self, capture: Capture, chunk: int
    ) -> tuple[int, Iterator[list[tuple[Any, ...]]]]: ...

    @abc.abstractmethod
    def read_changes(self, capture: Capture, after: int, limit: int) -> list[RawChange]: ...

    @abc.abstractmethod
    def wait_for_changes(self, capture: Capture, after: int, timeout: float) -> bool: ...

    @abc.abstractmethod
    def ack(self, capture: Capture, upto: int) -> None: ...

    @abc.abstractmethod
    def apply(self, capture: Capture, ops: Sequence[WriteOp]) -> WriteResult: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
