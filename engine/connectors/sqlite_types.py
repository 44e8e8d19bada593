"""SQLite storage of the canonical types (`engine.values`).

SQLite stores INTEGER, REAL, TEXT, BLOB and NULL; a column's declared type says which
canonical type it holds. Exact forms are kept: a decimal as its text (SQLite keeps a numeric
text as a number only when that is lossless), a timestamp as ISO 8601 text in UTC, a date as
ISO text, a uuid as its text, JSON as compact text, a bool as 0/1.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

from engine.values import Convert, Json, kind_of, parse_timestamp, to_utc


def canonical_of(declared: str) -> str | None:
    """The canonical type a declared SQLite column type holds (None: as stored)."""
    return kind_of(declared)


def _decimal_in(v: Any) -> Any:
    if isinstance(v, (int, str)):
        return Decimal(v)
    if isinstance(v, float):
        return Decimal(repr(v))  # the shortest text of the stored double: what was written
    return v


def _decimal_out(v: Any) -> Any:
    return str(v) if isinstance(v, Decimal) else v


def _timestamp_in(v: Any) -> Any:
    return parse_timestamp(v) if isinstance(v, str) else v


def _timestamp_out(v: Any) -> Any:
    return to_utc(v).isoformat() if isinstance(v, dt.datetime) else v


def _date_in(v: Any) -> Any:
    return dt.date.fromisoformat(v) if isinstance(v, str) else v


def _date_out(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.date) else v


def _uuid_in(v: Any) -> Any:
    if isinstance(v, str):
        return uuid.UUID(v)
    if isinstance(v, bytes) and len(v) == 16:
        return uuid.UUID(bytes=v)
    return v


def _str_out(v: Any) -> Any:
    return str(v) if isinstance(v, uuid.UUID) else v


def _json_in(v: Any) -> Any:
    return Json.loads(v) if isinstance(v, (str, bytes)) else v


def _json_out(v: Any) -> Any:
    return v.dumps() if isinstance(v, Json) else v


def _bool_in(v: Any) -> Any:
    return bool(v) if isinstance(v, int) else v


READ: dict[str, Convert] = {
    "decimal": _decimal_in,
    "timestamp": _timestamp_in,
    "date": _date_in,
    "uuid": _uuid_in,
    "json": _json_in,
    "bool": _bool_in,
}
WRITE: dict[str, Convert] = {
    "decimal": _decimal_out,
    "timestamp": _timestamp_out,
    "date": _date_out,
    "uuid": _str_out,
    "json": _json_out,
}
