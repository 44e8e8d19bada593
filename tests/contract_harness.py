"""What the connector contract suite needs from each application it runs against.

Each connector has one module ``tests/harness_<name>.py`` defining ``HARNESS``, a subclass of
`Harness`. `harnesses()` finds them all; `tests/test_contract.py` runs every contract test on
every harness, unchanged. A new connector is one module plus one harness module.

A harness plays "another program": it creates the contract entity ``items`` in the
application's own types, changes it through its own connection (never through the
connector), and reads it back as canonical values (`engine.values`). Services (PostgreSQL,
MariaDB, an HTTP app) come from environment variables with this machine's defaults; if one is
missing the harness raises, so the test fails: nothing is skipped.
"""

from __future__ import annotations

import abc
import datetime as dt
import importlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from engine.connectors import Capture, Connector, WriteOp, open_connector
from engine.values import Json

# The contract entity. ``note`` exists in the table but is not captured.
COLUMNS = ("id", "name", "qty", "price", "at", "day", "doc", "data", "ref", "flag", "ratio")
TYPES = (
    "int", "text", "int", "decimal", "timestamp", "date", "json", "bytes", "uuid", "bool", "float",
)  # fmt: skip
NAME_MAX = 40  # the name column's declared length, where the application enforces one

UTC = dt.UTC


def capture(name: str = "items_L", entity: str = "items", typed: bool = False) -> Capture:
    """The capture of the contract entity (``typed``: the map declares every field's type)."""
    return Capture(name, entity, COLUMNS, ("id",), TYPES if typed else ())


def sample(i: int, **overrides: Any) -> dict[str, Any]:
    """Row ``i`` of the contract entity, as canonical values of every type."""
    row: dict[str, Any] = {
        "id": i,
        "name": f"item {i} ü😀",
        "qty": i * 10,
        "price": Decimal(f"{i}.25"),
        "at": dt.datetime(2024, 2, 29, 12, 30, i % 60, 123456, tzinfo=UTC),
        "day": dt.date(2024, 1, 1 + i % 28),
        "doc": Json({"n": i, "tags": ["a", "b"], "ok": True, "none": None}),
        "data": bytes([0, 255, i % 256]),
        "ref": uuid.UUID(int=i),
        "flag": i % 2 == 0,
        "ratio": i / 8,
    }
    row.update(overrides)
    return row


def as_tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c] for c in COLUMNS)


class Harness(abc.ABC):
    """One application with the contract entity, for one test."""

    name: ClassVar[str]
    enforces_not_null: ClassVar[bool] = True  # refuses a NULL name
    enforces_length: ClassVar[bool] = True  # refuses a name longer than NAME_MAX
    typed_capture: ClassVar[bool] = False  # its map must declare field types
    missing_entity_raises: ClassVar[bool] = True  # a write to an entity that is gone raises

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """The application's URL for `open_connector` / `SyncEngine.add_app`."""

    def connector(self, app: str = "app") -> Connector:
        return open_connector(app, self.url)

    def capture(self, name: str = "items_L", entity: str = "items") -> Capture:
        return capture(name, entity, typed=self.typed_capture)

    @abc.abstractmethod
    def create(self, entity: str = "items") -> None:
        """Create the contract entity (empty) in the application's own types."""

    @abc.abstractmethod
    def insert(self, rows: list[dict[str, Any]], entity: str = "items") -> None:
        """Insert rows as another program would (one transaction)."""

    @abc.abstractmethod
    def update(self, key: int, values: dict[str, Any], entity: str = "items") -> None:
        """Update one record as another program would; ``note`` is a non-captured column."""

    @abc.abstractmethod
    def delete(self, key: int, entity: str = "items") -> None: ...

    @abc.abstractmethod
    def rows(self, entity: str = "items") -> dict[int, tuple[Any, ...]]:
        """Every record, as canonical values in `COLUMNS` order, by id."""

    def close(self) -> None:  # noqa: B027 - optional
        pass


def harnesses() -> dict[str, type[Harness]]:
    """Every ``tests/harness_*.py``'s ``HARNESS``, by name."""
    found = {}
    for path in sorted(Path(__file__).parent.glob("harness_*.py")):
        module = importlib.import_module(path.stem)
        cls: type[Harness] = module.HARNESS
        found[cls.name] = cls
    return found


def upsert(i: int, **overrides: Any) -> WriteOp:
    """An upsert of row ``i`` of the contract entity (every column)."""
    return WriteOp("I", (i,), dict(enumerate(as_tuple(sample(i, **overrides)))))


@contextmanager
def created(cls: type[Harness], tmp_path: Path) -> Iterator[Harness]:
    """An application of ``cls`` holding the contract entity, for one test."""
    harness = cls(tmp_path)
    harness.create()
    try:
        yield harness
    finally:
        harness.close()


@contextmanager
def prepared(app: Harness) -> Iterator[Connector]:
    """A connector of ``app`` with the contract entity's capture installed."""
    connector = app.connector()
    connector.prepare(app.capture())
    try:
        yield connector
    finally:
        connector.close()
