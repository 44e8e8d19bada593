"""PostgreSQL storage of the canonical types (`engine.values`), and the driver's errors.

Reads: psycopg adapts numeric, uuid, date, timestamptz, bytea and the numbers natively,
over the binary protocol when every column read is of a type in `BINARY_SAFE` (else as
text); json and jsonb come back as `Json`, and timestamps as aware datetimes in UTC (a
``timestamp without time zone`` column is taken to hold UTC).

Writes: a canonical value is sent as itself (psycopg adapts it), a `Json` through psycopg's
json/jsonb adapters (text sent to a json column is JSON text: PostgreSQL parses it), a
datetime as UTC (naive UTC to a ``timestamp`` column), a float to a numeric column as the
exact decimal of its shortest text (PostgreSQL would cast it through 15 digits), a uuid to a
text column as its text. A value the column cannot hold exactly is refused before sending,
as "expected ..., found ...": a NUL character or a lone surrogate in text, a number that is
not whole or out of range for int2/int4/int8, a numeric(p, s) value with more than s decimal
places or more than p - s integer digits, an integer or decimal a float4/float8 would round
(the text of a number too: the server reads it as that number), text longer than a
varchar(n) or char(n), a timestamp with a time of day (UTC) for a date, a date for a
timestamp, text for a date or timestamp that is not ISO 8601 (an ISO date's text is sent as
that date: PostgreSQL would read other spellings its own way). Whatever else PostgreSQL
refuses comes back as its error, the column found by `_column_of` (in
`engine.connectors.postgresql`).

Errors: `_message` is the server's text (without the failing row it may repeat); `_row_level`
says whether an error refuses one record's values (SQLSTATE classes `ROW_STATES`, or a value
psycopg cannot send) rather than the batch.
"""

from __future__ import annotations

import datetime as dt
import math
import struct
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import Json as PgJson
from psycopg.types.json import Jsonb

from engine.connectors.base import shown
from engine.values import Json, has_utf8, parse_timestamp, to_utc

# Types whose binary loaders give canonical values; other captured types are read as text.
BINARY_SAFE = frozenset(
    "int2 int4 int8 numeric float4 float8 text varchar bpchar bool date timestamp timestamptz"
    " json jsonb bytea uuid".split()
)
INT_RANGE = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
FLOAT_BITS = {"float4": 24, "float8": 53}  # significand bits
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
    cannot hold it exactly (where PostgreSQL would truncate, round or convert it silently).
    A problem reads "expected ..., found ..."; the caller names the column."""
    base, mod = col.base, col.typmod

    def write(v: Any) -> tuple[Any, str | None]:
        if v is None:
            return None, None
        if isinstance(v, str):
            if "\x00" in v:
                return v, f"expected text without NUL, found {shown(v)}: PostgreSQL has no NUL"
            if not has_utf8(v):
                return v, f"expected Unicode text, found {shown(v)}: it has no UTF-8 form"
        if base in ("json", "jsonb"):
            if isinstance(v, str):
                return v, None  # JSON text: PostgreSQL parses it
            value = v.value if isinstance(v, Json) else v
            return (Jsonb(value) if base == "jsonb" else PgJson(value)), None
        if base in INT_RANGE:
            v = int(v) if isinstance(v, bool) else v
            if isinstance(v, (int, Decimal, float)):
                return v, _integer_problem(v, INT_RANGE[base], col)
        elif base == "numeric":
            if isinstance(v, str) and mod >= 4 and (n := _number_text(v)) is not None:
                # the server reads the text as this number, and would round it the same
                return v, _numeric_problem(n, (mod - 4) >> 16, (mod - 4) & 0xFFFF, col, v)
            if isinstance(v, float):
                # NOTE: PostgreSQL casts a double to numeric through 15 digits: send the
                # shortest text that reads back as this double, exactly.
                v = Decimal(repr(v))
            if mod >= 4 and isinstance(v, (int, Decimal)) and not isinstance(v, bool):
                return v, _numeric_problem(Decimal(v), (mod - 4) >> 16, (mod - 4) & 0xFFFF, col)
        elif base in FLOAT_BITS:
            if isinstance(v, str) and (n := _number_text(v)) is not None:
                return v, _float_problem(n, FLOAT_BITS[base], col, v)
            return v, _float_problem(v, FLOAT_BITS[base], col)
        elif base in ("varchar", "bpchar") and mod >= 4 and isinstance(v, str):
            if len(v) > mod - 4:
                return v, (
                    f"expected at most {mod - 4} characters, found {len(v)}:"
                    f" {col.declared} would truncate them"
                )
        elif base == "date":
            return _date(v, col)
        elif base in ("timestamp", "timestamptz"):
            return _timestamp(v, base, col)
        elif base in ("text", "varchar", "bpchar") and isinstance(v, uuid.UUID):
            return str(v), None
        return v, None

    return write


def _integer_problem(v: int | Decimal | float, bound: int, col: PgColumn) -> str | None:
    if isinstance(v, (float, Decimal)):
        finite = v.is_finite() if isinstance(v, Decimal) else math.isfinite(v)
        if not finite or v != int(v):
            return f"expected a whole number, found {shown(v)}: {col.declared} would round it"
    if not -bound <= v < bound:
        return (
            f"expected an integer from {-bound} to {bound - 1}, found {shown(v)}:"
            f" out of range for {col.declared}"
        )
    return None


def _number_text(text: str) -> Decimal | None:
    """The number ``text`` spells, if it spells one."""
    try:
        return Decimal(text)
    except ArithmeticError:
        return None


def _numeric_problem(
    v: Decimal, precision: int, scale: int, col: PgColumn, found: Any = None
) -> str | None:
    """Why numeric(precision, scale) cannot hold ``v`` exactly, if it cannot (``found``:
    the value as given, if not ``v``)."""
    shown_v = shown(v if found is None else found)
    _sign, digits, exponent = v.as_tuple()
    if not isinstance(exponent, int) or not any(digits):
        return None  # NaN, infinities and zeros: PostgreSQL decides
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    if -(exponent + zeros) > scale:
        return (
            f"expected at most {scale} decimal places, found {shown_v}:"
            f" {col.declared} would round it"
        )
    if v.adjusted() + 1 > precision - scale:
        return (
            f"expected at most {precision - scale} digits before the point, found {shown_v}:"
            f" out of range for {col.declared}"
        )
    return None


def _float_problem(v: Any, bits: int, col: PgColumn, found: Any = None) -> str | None:
    """Why a float4 (``bits`` 24) or float8 (53) column would round ``v``, if it would
    (``found``: the value as given, if not ``v``)."""
    shown_v = shown(v if found is None else found)
    if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
        return None  # PostgreSQL refuses what is no number
    if isinstance(v, Decimal) and not v.is_finite():
        return None  # NaN and infinities: every float holds them
    try:
        x = float(v)
        if bits == 24 and math.isfinite(x):
            x = struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return f"expected a number within the range of {col.declared}, found {shown_v}"
    if x == v or (x != x and v != v):  # int and Decimal compare with a float exactly
        return None
    return (
        f"expected a number {col.declared} holds exactly, found {shown_v}:"
        f" it would round it to {Decimal(x)}"
    )


def _date(v: Any, col: PgColumn) -> tuple[Any, str | None]:
    """A date, a timestamp at midnight UTC or an ISO date's text as a date parameter."""
    if isinstance(v, dt.datetime):
        u = to_utc(v)
        if u.time() != dt.time(0):
            return v, (
                f"expected a date, found the timestamp {shown(v)}:"
                f" {col.declared} would drop its time of day"
            )
        return u.date(), None
    if isinstance(v, str):
        try:
            day = dt.date.fromisoformat(v)
        except ValueError:
            day = None
        if day is None or day.isoformat() != v:
            return v, f"expected a date (YYYY-MM-DD), found the text {shown(v)}"
        return day, None
    return v, None


def _timestamp(v: Any, base: str, col: PgColumn) -> tuple[Any, str | None]:
    """An aware timestamp (or its ISO 8601 text; naive is UTC) as a timestamp parameter."""
    if isinstance(v, str):
        try:
            v = parse_timestamp(v)
        except ValueError:
            return v, f"expected a timestamp (ISO 8601), found the text {shown(v)}"
    if isinstance(v, dt.datetime):
        u = to_utc(v)
        return (u.replace(tzinfo=None) if base == "timestamp" else u), None  # without: UTC
    if isinstance(v, dt.date):
        return v, (
            f"expected a timestamp, found the date {shown(v)}:"
            f" {col.declared} would read it as a midnight"
        )
    return v, None


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
