"""PostgreSQL storage of the canonical types (`engine.values`), and the driver's errors.

Reads: psycopg adapts numeric, uuid, date, timestamptz, bytea and the numbers natively,
over the binary protocol when every column read is of a type in `BINARY_SAFE` (else as
text); json and jsonb come back as `Json`, and timestamps as aware datetimes in UTC (a
``timestamp without time zone`` column is taken to hold UTC).

Writes: a canonical value is sent as itself (psycopg adapts it), a `Json` through psycopg's
json/jsonb adapters (text sent to a json column is JSON text: PostgreSQL parses it), a
datetime to a ``timestamp`` column as naive UTC, a uuid to a text column as its text. A value
the column cannot hold exactly is refused before sending, naming why: a NUL character in
text, a number that is not whole or out of range for int2/int4/int8, a numeric(p, s) value
with more than s decimal places or more than p - s integer digits, text longer than a
varchar(n) or char(n).

Errors: `_message` is the server's text (without the failing row it may repeat); `_row_level`
says whether an error refuses one record's values (SQLSTATE classes `ROW_STATES`, or a value
psycopg cannot send) rather than the batch.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Json as PgJson
from psycopg.types.json import Jsonb

from engine.values import Json, to_utc

# Types whose binary loaders give canonical values; other captured types are read as text.
BINARY_SAFE = frozenset(
    "int2 int4 int8 numeric float4 float8 text varchar bpchar bool date timestamp timestamptz"
    " json jsonb bytea uuid".split()
)
INT_RANGE = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
ROW_STATES = ("22", "23", "42804")  # data exceptions, constraints, a value of the wrong type
RETRY_STATES = ("40001", "40P01")  # serialization failure, deadlock: the transaction again
UNDEFINED_COLUMN = "42703"


class PgColumn(NamedTuple):
    name: str
    declared: str  # format_type of the column, as the application declared it
    base: str  # typname of its base type (domains resolved)
    logged: str  # the base type with its modifier: the type of the log's copies
    typmod: int
    nullable: bool
    has_default: bool


class Table(NamedTuple):
    """What the connector knows of an entity (cached; read again when a column goes)."""

    oid: int
    columns: dict[str, PgColumn]
    unique: tuple[tuple[str, ...], ...]


# -- values --------------------------------------------------------------------------------


def _reader(cols: list[PgColumn]) -> tuple[Callable[[tuple[Any, ...]], tuple[Any, ...]], bool]:
    """A function turning a stored row of ``cols`` into canonical values, and whether the
    binary protocol reads every one of them canonically (else text is asked for)."""
    json = [i for i, c in enumerate(cols) if c.base in ("json", "jsonb")]
    stamps = [i for i, c in enumerate(cols) if c.base in ("timestamptz", "timestamp")]
    binary = all(c.base in BINARY_SAFE for c in cols)
    if not json and not stamps:
        return (lambda row: row), binary

    def image(row: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(row)
        for i in json:
            if out[i] is not None:
                out[i] = Json(out[i])
        for i in stamps:
            if out[i] is not None:
                out[i] = to_utc(out[i])  # a timestamp without time zone holds UTC
        return tuple(out)

    return image, binary


def _writer(col: PgColumn) -> Callable[[Any], tuple[Any, str | None]]:
    """A function giving a canonical value as the parameter for ``col``, or why ``col``
    cannot hold it exactly (where PostgreSQL would truncate or round it silently)."""
    base, mod = col.base, col.typmod

    def write(v: Any) -> tuple[Any, str | None]:
        if v is None:
            return None, None
        if isinstance(v, str) and "\x00" in v:
            return v, "PostgreSQL text cannot hold a NUL character"
        if base in ("json", "jsonb"):
            if isinstance(v, str):
                return v, None  # JSON text: PostgreSQL parses it
            value = v.value if isinstance(v, Json) else v
            return (Jsonb(value) if base == "jsonb" else PgJson(value)), None
        if base in INT_RANGE:
            v = int(v) if isinstance(v, bool) else v
            if isinstance(v, (int, Decimal, float)):
                return v, _integer_problem(v, INT_RANGE[base], col)
        elif base == "numeric" and mod >= 4 and isinstance(v, (int, Decimal)):
            return v, _numeric_problem(Decimal(v), (mod - 4) >> 16, (mod - 4) & 0xFFFF, col)
        elif base in ("varchar", "bpchar") and mod >= 4 and isinstance(v, str):
            if len(v) > mod - 4:
                return v, f"{len(v)} characters do not fit {col.declared} (not truncated)"
        elif base == "timestamp" and hasattr(v, "tzinfo"):
            return to_utc(v).replace(tzinfo=None), None  # without time zone: UTC
        elif base in ("text", "varchar", "bpchar") and isinstance(v, uuid.UUID):
            return str(v), None
        return v, None

    return write


def _integer_problem(v: int | Decimal | float, bound: int, col: PgColumn) -> str | None:
    if isinstance(v, (float, Decimal)):
        finite = v.is_finite() if isinstance(v, Decimal) else math.isfinite(v)
        if not finite or v != int(v):
            return f"{v} is not a whole number: {col.declared} would round it"
    if not -bound <= v < bound:
        return f"{v} is out of range for {col.declared}"
    return None


def _numeric_problem(v: Decimal, precision: int, scale: int, col: PgColumn) -> str | None:
    """Why numeric(precision, scale) cannot hold ``v`` exactly, if it cannot."""
    _sign, digits, exponent = v.as_tuple()
    if not isinstance(exponent, int) or not any(digits):
        return None  # NaN, infinities and zeros: PostgreSQL decides
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if -(exponent + zeros) > scale:
        return f"{v} has more than {scale} decimal places: {col.declared} would round it"
    if v.adjusted() + 1 > precision - scale:
        return f"{v} is out of range for {col.declared}"
    return None


# -- errors --------------------------------------------------------------------------------


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text, detail = diag.message_primary or str(exc).strip(), diag.message_detail
    # NOTE: "Failing row contains (...)" repeats the whole record: it can be megabytes.
    return f"{text} ({detail})" if detail and not detail.startswith("Failing row") else text


def _row_level(exc: psycopg.Error) -> bool:
    """Whether ``exc`` refuses one record's values rather than the batch."""
    if exc.sqlstate is None:  # raised before sending: a value psycopg cannot send
        return isinstance(exc, (psycopg.DataError, psycopg.ProgrammingError))
    return exc.sqlstate.startswith(ROW_STATES)
