"""The canonical value model: the types a field value has while it travels between apps.

Every connector turns what its application holds into these, and back, without loss:

| type        | Python value                          | notes                                   |
| ----------- | ------------------------------------- | --------------------------------------- |
| `int`       | `int`                                 | 64-bit signed on most targets           |
| `decimal`   | `decimal.Decimal`                     | exact: never through a float            |
| `float`     | `float`                               | IEEE double                             |
| `text`      | `str`                                 | full Unicode                            |
| `bool`      | `bool`                                |                                         |
| `date`      | `datetime.date`                       |                                         |
| `timestamp` | `datetime.datetime`, timezone-aware   | an instant; kept in UTC                 |
| `json`      | `Json` (wraps dict, list, str, ...)   | a document, compared by value           |
| `bytes`     | `bytes`                               |                                         |
| `uuid`      | `uuid.UUID`                           |                                         |

`None` is NULL in every type, and never the same as an empty string. A value a target cannot
hold exactly (too long, out of range, more digits than the column keeps, text it would read
as a date its own way) is refused by the target as a row-level error naming the field; no
connector truncates, rounds, clamps or folds silently.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = [
    "TYPES",
    "Convert",
    "Json",
    "canonical_type",
    "carries",
    "kind_of",
    "lenient",
    "parse_timestamp",
    "to_utc",
]

TYPES = ("int", "decimal", "float", "text", "bool", "date", "timestamp", "json", "bytes", "uuid")
UTC = dt.UTC


@dataclass(frozen=True, slots=True)
class Json:
    """A JSON document. Wrapped so a JSON string is not mistaken for text.

    NOTE: not a NamedTuple: msgpack would pack a tuple as an array before asking us.
    """

    value: Any

    def __hash__(self) -> int:
        return hash(self.dumps())

    def dumps(self) -> str:
        """Compact JSON text with sorted keys (one text per document)."""
        return json.dumps(self.value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)

    @classmethod
    def loads(cls, text: str | bytes) -> Json:
        return cls(json.loads(text))


Convert = Callable[[Any], Any]
"""A conversion of one value between an application's form and the canonical one."""


def has_utf8(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (a lone surrogate has none)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def lenient(convert: Convert) -> Convert:
    """A read conversion that keeps the stored value when it does not parse: the target then
    refuses it as a row-level error naming the record; nothing is dropped on the way."""

    def run(v: Any) -> Any:
        try:
            return convert(v)
        except (ValueError, TypeError, ArithmeticError):
            return v

    return run


def kind_of(declared: str) -> str | None:
    """The canonical type a declared SQL column type holds, in SQLite, PostgreSQL or MariaDB
    spelling (``INTEGER``, ``numeric(12,2)``, ``timestamptz``, ``TINYINT(1)``...); None when
    it says nothing (SQLite columns without a type, HTTP fields)."""
    t = declared.strip().upper()
    if not t:
        return None
    if "BOOL" in t or t.startswith("TINYINT(1)") or t == "BIT(1)":
        return "bool"
    if "INTERVAL" in t or "POINT" in t:
        return None
    if "INT" in t or t == "SERIAL" or t == "BIGSERIAL":
        return "int"
    if "DEC" in t or "NUMERIC" in t or "MONEY" in t or "NUMBER" in t:
        return "decimal"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "float"
    if "TIMESTAMP" in t or "DATETIME" in t:
        return "timestamp"
    if "DATE" in t:
        return "date"
    if "UUID" in t:
        return "uuid"
    if "JSON" in t:
        return "json"
    if "BLOB" in t or "BINARY" in t or "BYTEA" in t:
        return "bytes"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t or t == "NAME":
        return "text"
    return None


# (from, to): a column of the second type takes values of the first (within its range and
# precision: an integer past 2**53 into a float, say, is refused as a row-level error).
WIDENS = frozenset({("int", "decimal"), ("int", "float"), ("bool", "int"), ("uuid", "text")})


def carries(source: str | None, target: str | None) -> bool:
    """Whether values of type ``source`` can go to a ``target`` column (unknown: yes); one
    past the column's range or precision is still refused, record by record."""
    return source is None or target is None or source == target or (source, target) in WIDENS


def to_utc(value: dt.datetime) -> dt.datetime:
    """An aware datetime in UTC; a naive one is taken as UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_timestamp(text: str) -> dt.datetime:
    """An ISO 8601 timestamp (``T`` or space separated; naive means UTC) as an aware UTC."""
    return to_utc(dt.datetime.fromisoformat(text))


def canonical_type(value: Any) -> str | None:
    """The canonical type name of ``value`` (None for NULL); TypeError if it has none."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes):
        return "bytes"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise TypeError(f"a timestamp must carry its time zone, found naive {value!r}")
        return "timestamp"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, Json):
        return "json"
    raise TypeError(f"{type(value).__name__} value {value!r} has no canonical type")
