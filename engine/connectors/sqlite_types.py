"""SQLite storage of the canonical types (`engine.values`).

SQLite stores INTEGER, REAL, TEXT, BLOB and NULL; a column's declared type says which
canonical type it holds. Exact forms are kept: a timestamp as ISO 8601 text in UTC, a date as
ISO text, a uuid as its text, JSON as compact text, a bool as 0/1. A column of numeric
affinity (``DECIMAL(12, 2)``, ``NUMERIC``...) turns any numeric text into a number, rounding
it to a double (checked: SQLite 3.40 stores the text ``'12345678901234567.25'`` as the
integer ``12345678901234568``). `WRITE` (what other programs are taken to do) keeps a
decimal's text; the connector's `writer` stores a decimal there as the integer or the double
that holds it exactly, or refuses it (`Refused`), and in a column of text affinity as its
text. `writer` also refuses what SQLite would change otherwise: NaN (stored as NULL), an
integer past 64 bits or one a REAL column would round, a number other than 0 or 1 for a
bool, a timestamp with a time of day for a date.
"""

from __future__ import annotations

import datetime as dt
import math
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
    if isinstance(v, (int, float)):  # a number document in a column of numeric affinity
        return Json(v)
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

INT64 = 2**63


class Refused(ValueError):
    """A value its column would not hold exactly: the record is refused before writing."""


def affinity(declared: str) -> str:
    """SQLite's affinity of a column declared ``declared`` (its rules, in their order)."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t.strip():
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


def writer(kind: str | None, declared: str) -> Convert | None:
    """How a canonical value is stored in a column holding ``kind``, declared ``declared``
    (None: as it is); raises `Refused` for a value SQLite would change: NaN (stored as NULL),
    an integer past 64 bits, an integer a REAL column would round, a decimal a column of
    numeric affinity would round (it turns a number's text into a double: a decimal goes as
    an integer when it is whole and fits, else as the double that holds it exactly), a
    number other than 0 or 1 for a bool, a timestamp with a time of day (UTC) for a date."""
    convert = WRITE.get(kind or "")
    where = affinity(declared)
    numeric = where in ("INTEGER", "REAL", "NUMERIC")
    if kind == "json" and numeric:
        return _json_number
    if kind in ("text", "bytes", "uuid", "json", "timestamp"):
        return convert
    if kind == "date":
        return _date_write
    real, boolean = where == "REAL", kind == "bool"
    shape = declared or "a column without a declared type"

    def write(v: Any) -> Any:
        t = type(v)
        if t is float:
            if v != v:
                raise Refused(f"expected a number, found {v}: SQLite would store NULL")
            return v
        if t is int:
            if not -INT64 <= v < INT64:
                raise Refused(f"expected a 64-bit integer, found {v}: SQLite has no larger one")
            if real and float(v) != v:
                raise Refused(
                    f"expected a number {shape} holds exactly, found {v}:"
                    f" it would round it to {Decimal(float(v))}"
                )
            if boolean and v not in (0, 1):
                raise Refused(f"expected a bool (or 0 or 1), found {v}: it would read as true")
            return v
        if t is Decimal:
            if not numeric:
                if kind == "decimal":
                    return str(v)  # text affinity: kept as its text, exactly
                raise Refused(f"expected a value {shape} keeps as it is, found the decimal {v}")
            return _exact_decimal(v, real, shape)
        return convert(v) if convert else v

    return write


def _exact_decimal(v: Decimal, real: bool, shape: str) -> Any:
    """The integer or double SQLite keeps ``v`` as, exactly, in a column of numeric
    affinity (``real``: REAL affinity, which keeps a double even for a whole number)."""
    if not v.is_finite():
        return str(v)  # no number: "NaN" and "Infinity" stay text, exactly
    if v == v.to_integral_value() and -INT64 <= v < INT64 and (not real or float(v) == v):
        return int(v)
    x = float(v)
    # NOTE: what the column reads back: SQLite keeps a whole double that fits 64 bits as an
    # integer (REAL affinity turns it back into a double).
    back: Decimal | None = None
    if not real and x.is_integer() and -INT64 <= x < INT64:
        back = Decimal(int(x))
    else:
        back = Decimal(repr(x)) if math.isfinite(x) else None
    if back != v:
        rounded = f" to {back}" if back is not None else ""
        raise Refused(
            f"expected a decimal {shape} holds exactly, found {v}: SQLite would round"
            f" it{rounded} (it keeps a 64-bit integer or a double)"
        )
    return x


def _json_number(v: Any) -> Any:
    """A JSON document for a column of numeric affinity (``JSON`` is one): SQLite turns the
    text of a number document into a number, so one is stored as that number, exactly."""
    if type(v) is not Json or isinstance(v.value, bool):
        return _json_out(v)
    number = v.value
    if type(number) is int:
        if not -INT64 <= number < INT64:
            raise Refused(
                f"expected a JSON document SQLite keeps exactly, found the number {number}:"
                " a column of numeric affinity would round it to a double"
            )
        return number
    if type(number) is float and math.isfinite(number):
        return number
    return _json_out(v)  # NaN and infinities: text that stays text


def _date_write(v: Any) -> Any:
    if type(v) is dt.datetime:
        u = to_utc(v)
        if u.time() != dt.time(0):
            raise Refused(
                f"expected a date, found the timestamp {v.isoformat()}: it has a time of day"
            )
        return u.date().isoformat()
    return _date_out(v)
