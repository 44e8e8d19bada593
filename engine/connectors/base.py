"""The connector contract: the few methods every application connector implements.

A connector talks to one application (one URL). The engine asks it, per map side, to:

- ``describe(entity)``: the entity's columns and unique keys (None if it does not exist);
- ``prepare(capture)``: install change capture for the captured columns (idempotent);
- ``snapshot(capture, chunk)``: the change-sequence head and the existing rows, consistent
  with each other (rows changed after the head arrive as changes);
- ``read_changes(capture, after, limit)``: changes with sequence > ``after``, oldest first;
- ``wait_for_changes(capture, after, timeout)``: block until a change past ``after`` exists;
- ``ack(capture, upto)``: changes up to ``upto`` are durably merged and may be dropped;
- ``apply(capture, ops, receipt)``: write a batch in one transaction. Our own writes must
  never be captured as changes (no echo). The result says where the write landed in the
  change log (``position``: every change with a sequence up to it committed before the write,
  every later one after it), so the engine knows what the application holds at every point
  of its log. Records the application refuses come back as `WriteFailure`; the rest of the
  batch is written. A value the application would change on the way in (clamp, truncate,
  round, fold) counts as refused: its record is a `WriteFailure` naming the column, with a
  message saying what the column expects and what was found, never a silent change. With a
  `Receipt`, the connector records ``(capture, writer) -> (number, position, failures)`` in
  the same transaction: it is recorded if and only if the batch committed (refused records
  included: the rest committed, and ``failures`` lists the refused ones exactly as the
  `WriteResult` does: same rows, columns and whole messages, in row order), one statement
  per batch. A batch that raises records nothing. An empty batch with a receipt records it
  too.
- ``capture_problem(capture)``, ``suspend(capture)``, ``recapture(capture, keys)``: for
  schema drift (see `engine.drift`): is the capture intact; remove its triggers only; log
  rows the application holds as inserts.
- ``check(app, url)`` (a class method): refuse a URL that cannot be used, before anything is
  created (a missing SQLite file, an unreachable server, refused credentials).
- ``last_receipt(capture, writer)``: the `WriteReceipt` of the last batch ``writer`` applied
  with a receipt, or None: what the engine asks after a crash, from any process, to learn
  whether a batch it sent landed, where, and which of its records the application refused
  (so it never believes the side holds a value it refused). ``release`` drops the capture's
  receipts.

Write ops (`WriteOp`):

- ``I`` upserts the record at ``key`` with ``values``; ``U`` updates the given ``values`` of
  the record at ``key`` (nothing if there is none); ``D`` deletes it (nothing if gone).
- ``M`` moves a record whose key changed: the record the application holds at ``old``
  becomes the record at ``key``, with ``values`` (every captured column, key columns
  included, equal to ``key``). SQL connectors run ``UPDATE ... SET <every column> WHERE <key>
  = <old>``: a real update of the key, so the application's ON UPDATE CASCADE foreign keys
  follow. No record at ``old``: nothing is written and it is no failure (the application
  moved or deleted it; its change stream says so). A record at ``key`` already: a row-level
  `WriteFailure` naming the key column, like any refused record.
- Order inside a batch: deletes first, then moves in the order given (a chain of moves is
  given the one whose target is free first; a cycle cannot be written), then updates and
  inserts, so an ``I`` at a moved record's old key in the same batch creates a new record.
  Otherwise a batch holds at most one op per key (an ``M`` holds its ``key``; its ``old`` may
  be the ``key`` of an ``I`` or ``U`` that follows it).

Drivers' exceptions are translated into `ConnectorError` inside the connector. Every method
works in batches: no call is made per record on the hot path.
"""

from __future__ import annotations

import abc
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from engine.errors import ConnectorError

__all__ = [
    "Capture",
    "Column",
    "Connector",
    "EntitySchema",
    "RawChange",
    "Receipt",
    "WriteFailure",
    "WriteOp",
    "WriteReceipt",
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
    compare: str | None = None
    """What the application's comparison of the column's values ignores (case, trailing
    spaces...; `engine.connectors.keyrules`), or None: values compare exactly."""


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
    """One record to write: ``I`` upsert, ``U`` update, ``D`` delete, ``M`` move.

    ``key`` holds the key values in capture key order; ``values`` maps capture column index
    to value (unused for deletes; for a move every captured column). ``old``, for a move
    only, is the key the record has now (in capture key order). Connectors apply a batch
    deletes first, then moves in the order given, then updates and inserts (see the module
    docstring); within a kind they may group records by columns.
    """

    op: str  # "I" upsert, "U" update, "D" delete, "M" move
    key: tuple[Any, ...]
    values: dict[int, Any]
    old: tuple[Any, ...] | None = None  # "M" only: the key the row has now


OP_ORDER = {"D": 0, "M": 1, "U": 2, "I": 2}
"""The order in which connectors apply the kinds of ops of a batch: moves as given; updates
and upserts in any order among themselves."""

RECEIPT_WRITER_MAX = 100


def move_problem(capture: Capture, op: WriteOp) -> str | None:
    """Why a move cannot be written as given (a row failure), or None."""
    if op.old is None or len(op.old) != len(capture.key):
        return f"a move needs the old key ({len(capture.key)} values), found {op.old!r}"
    return None


def shown(value: Any, limit: int = 60) -> str:
    """A value as the message of a row failure shows what it found: text quoted (cut after
    ``limit`` characters, with its length), dates and timestamps in ISO 8601, anything else
    as Python prints it."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} chars)"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


class Receipt(NamedTuple):
    """Who wrote a batch and its number: recorded with the batch, atomically."""

    writer: str  # e.g. "customers/3" (a map's partition); at most 100 characters
    number: int  # that writer's batch number; increases with every batch it sends


class WriteResult(NamedTuple):
    """The outcome of `Connector.apply`: the refused records and where the write landed."""

    failures: list[WriteFailure]
    position: int


class WriteFailure(NamedTuple):
    """A record of a batch the application refused. ``row`` is its position in the batch;
    ``duplicate``: refused on a unique value another row holds (which a later write may
    free: the engine tries it again, see `engine.pipeline`)."""

    row: int
    column: str | None
    message: str
    duplicate: bool = False


class WriteReceipt(NamedTuple):
    """What the last batch a writer applied with a receipt came to."""

    number: int
    position: int
    failures: list[WriteFailure]  # the refused records of that batch (row index, column, message)


def pack_failures(failures: Sequence[WriteFailure]) -> str | None:
    """The refused records of a batch as receipt tables store them: None when there are none
    (most batches), else a compact JSON list ``[[row, column or null, message], ...]`` in the
    order given (the `WriteResult`'s), a 4th item 1 for a duplicate. ASCII only (``\\uXXXX``
    escapes), so any column charset holds it and NUL or a lone surrogate in a message
    survives; messages are kept whole."""
    if not failures:
        return None
    rows = [[int(f.row), f.column, f.message, *([1] if f.duplicate else [])] for f in failures]
    return json.dumps(rows, separators=(",", ":"))


def unpack_failures(stored: str | bytes | None) -> list[WriteFailure]:
    """The inverse of `pack_failures` (NULL, or an empty list, is no failure)."""
    if not stored:
        return []
    return [
        WriteFailure(int(item[0]), item[1], item[2], bool(item[3:] and item[3]))
        for item in json.loads(stored)
    ]


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
    def apply(
        self, capture: Capture, ops: Sequence[WriteOp], receipt: Receipt | None = None
    ) -> WriteResult: ...

    @abc.abstractmethod
    def last_receipt(self, capture: Capture, writer: str) -> WriteReceipt | None:
        """The number, position and refused records of the last batch `writer` applied to
        `capture` with a receipt, or None."""

    def _check_receipt(self, capture: Capture, receipt: Receipt | None) -> None:
        """`ConnectorError` (before anything is written) for a receipt no table can hold."""
        if receipt is None:
            return
        problem = ""
        if not isinstance(receipt.writer, str) or not 0 < len(receipt.writer) <= RECEIPT_WRITER_MAX:
            problem = f"a receipt's writer is 1 to {RECEIPT_WRITER_MAX} characters of text"
        elif isinstance(receipt.number, bool) or not isinstance(receipt.number, int):
            problem = "a receipt's number is an integer"
        elif not -(2**63) <= receipt.number < 2**63:
            problem = "a receipt's number fits in 64 bits"
        if problem:
            raise ConnectorError(
                self.app, capture.entity, f"{problem}, found {receipt.writer!r}, {receipt.number!r}"
            )

    def capture_problem(self, capture: Capture) -> str | None:
        """Why the change capture of ``capture`` is not fully installed (a trigger or the
        change table is missing: the table was dropped and created again), or None. The
        default, for connectors with nothing installed in the application: None."""
        return None

    def suspend(self, capture: Capture) -> None:  # noqa: B027 - optional hook
        """Remove the capture's triggers, keep its change table and positions: while the
        entity does not fit the map (a column dropped or renamed), so that triggers naming
        that column cannot break the application's own writes. `prepare` installs them
        again. Idempotent."""

    def recapture(self, capture: Capture, keys: Sequence[tuple[Any, ...]]) -> int:
        """Log the rows the application holds now at ``keys`` (in capture key order) as
        inserts in the change log, as if it had just inserted them: for rows it wrote while
        its capture was missing. Returns how many rows were logged (a key without a row logs
        nothing)."""
        raise ConnectorError(self.app, capture.entity, "this connector cannot recapture rows")

    @classmethod
    def check(cls, app: str, url: str) -> None:
        """Prove that ``url`` can be used before it is registered: the server answers, the
        credentials are accepted, the database (file, schema) exists. Raises `AppError` or
        `ConnectorError` saying what is wrong. By default: open a connector and close it."""
        cls(app, url).close()

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
