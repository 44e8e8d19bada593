"""MariaDB / MySQL storage of the canonical types (`engine.values`), and the driver's errors.

A column's described type says which canonical type it holds (`kind_of`), unless the map
declares one. Reads (`READ`, applied by `_reads`): TINYINT(1)/BOOLEAN and BIT(1) give bool;
DECIMAL, Decimal; TIMESTAMP and DATETIME, an aware datetime in UTC (sessions run in UTC and
DATETIME columns are taken to hold UTC); JSON (MariaDB's is a LONGTEXT, described as
``json``), `Json`; UUID, CHAR(36) or BINARY(16) declared uuid, uuid.UUID; TIME, its text
``[-]HHH:MM:SS[.ffffff]``. A value that does not parse is kept as stored (`_safe`): the target
refuses it as a row-level error.

Writes (`_writer`): datetimes go as naive UTC, `Json` as its text, a uuid as its 16 bytes to
a binary column or else as its text, a whole float to an integer column as an integer, a
float to a DECIMAL as the exact decimal of its shortest text, an ISO date's text to a DATE
as that date, anything else as itself (asyncmy spells the literal). STRICT_ALL_TABLES makes
the server refuse most values out of range or too long, but not all (MariaDB 10.11,
checked): it still rounds more decimals than a DECIMAL's scale (a note), drops trailing
spaces past a VARCHAR's length or a TEXT's bytes (a note), rounds a double with a fraction
(or its text) into an integer column or an integer past 2**53 into a DOUBLE, stores a double
of 2**63 or more into a BIGINT as 2**63 - 1 and the text of a timestamp into a DATE as its
date, all without an error. So a value the column would not hold exactly raises `Refused`
before sending, as "expected ..., found ...": a number that is not whole or out of range for
an integer column, more decimals or integer digits than a DECIMAL(p, s) takes, an integer or
decimal a FLOAT/DOUBLE would round, NaN or an infinity, a number other than 0 or 1 for a
bool column, text longer than a CHAR/VARCHAR(n) (or ending in a space, for a CHAR, which
drops it) or than a TINYTEXT/TEXT/MEDIUMTEXT's bytes, bytes longer than a (VAR)BINARY(n) (or
shorter, for a BINARY, which pads them), more fractional digits than a
DATETIME/TIMESTAMP/TIME keeps, a time of day for a DATE, a date for a DATETIME/TIMESTAMP,
text for a date or timestamp that is not ISO 8601, the text of a number a numeric column
would change as it would the number, a lone surrogate in text, a JSON document holding NaN,
a value of a type with no SQL form.

Errors: `_errno` and `_problem` read a driver exception; `ROW_ERRORS` refuse one record,
`RETRY_ERRORS` the whole transaction (tried again); `_broken` says whether the connection is
lost; `_column_of` finds the captured column a server message names.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import struct
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, NoReturn

import asyncmy

from engine.connectors.base import Capture, shown
from engine.errors import ConnectorError
from engine.values import Convert, Json, has_utf8, kind_of, lenient, parse_timestamp, to_utc

# Server errors that refuse one record, not the batch.
ROW_ERRORS = frozenset({
    1048, 1062, 1169, 1171, 1216, 1217, 1263, 1264, 1265, 1292, 1300, 1364, 1366, 1367, 1406,
    1411, 1441, 1451, 1452, 1644, 1690, 1859, 3140, 3819, 4025,
})  # fmt: skip
RETRY_ERRORS = frozenset({1213})  # deadlock: InnoDB rolled the whole transaction back
DRIVER_ERRORS = (asyncmy.errors.MySQLError, OSError, TimeoutError)

INT_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"})
INT_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "integer": 32, "bigint": 64}
FLOAT_BITS = {"float": 24, "double": 53, "real": 53}  # significand bits
TEXT_BYTES = {"tinytext": 255, "text": 65535, "mediumtext": 2**24 - 1}
TEXT_TYPES = frozenset({
    "char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set",
})  # fmt: skip
BINARY_TYPES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
UTC = dt.UTC


class Info(NamedTuple):
    """What the connector knows of one column of the application's table."""

    name: str
    type: str  # as described: COLUMN_TYPE; "json" for MariaDB's JSON; enum/set bare
    data_type: str  # DATA_TYPE, lower case
    column_type: str  # COLUMN_TYPE: the log table copies it
    collation: str | None
    nullable: bool
    has_default: bool
    auto_increment: bool
    scale: int | None  # decimals a DECIMAL keeps
    fraction: int | None  # fractional-second digits a DATETIME/TIMESTAMP/TIME keeps


class Table(NamedTuple):
    columns: dict[str, Info]
    unique: dict[str, tuple[str, ...]]  # index name -> columns (primary key first)


class Plan(NamedTuple):
    """How one capture reads and writes its table (cached per capture)."""

    table: Table
    reads: list[Convert | None]
    writes: list[Convert]
    odku: bool  # the capture key is the only unique key a new row can collide on


class Refused(Exception):
    """A value the column cannot hold exactly: the record is refused before sending."""


# -- values ----------------------------------------------------------------------------------


def _bool_in(v: Any) -> Any:
    if isinstance(v, bytes):  # BIT(1)
        return int.from_bytes(v, "big") != 0
    return bool(v) if isinstance(v, int) else v


def _timestamp_in(v: Any) -> Any:
    return v.replace(tzinfo=UTC) if isinstance(v, dt.datetime) and v.tzinfo is None else v


def _json_in(v: Any) -> Any:
    return Json.loads(v) if isinstance(v, (str, bytes)) else v


def _uuid_in(v: Any) -> Any:
    if isinstance(v, str):
        return uuid.UUID(v)
    return uuid.UUID(bytes=v) if isinstance(v, bytes) and len(v) == 16 else v


def _decimal_in(v: Any) -> Any:
    if isinstance(v, float):
        return Decimal(repr(v))
    return Decimal(v) if isinstance(v, (int, str)) else v


def _time_in(v: Any) -> Any:
    """TIME has no canonical type: it travels as its text, ``[-]HHH:MM:SS[.ffffff]``."""
    if not isinstance(v, dt.timedelta):
        return v
    sign, v = ("-", -v) if v < dt.timedelta(0) else ("", v)
    seconds = v.days * 86400 + v.seconds
    text = f"{sign}{seconds // 3600:02}:{seconds // 60 % 60:02}:{seconds % 60:02}"
    return text + (f".{v.microseconds:06}" if v.microseconds else "")


READ: dict[str, Convert] = {
    "bool": _bool_in,
    "timestamp": _timestamp_in,
    "json": _json_in,
    "uuid": _uuid_in,
    "decimal": _decimal_in,
}


def _reads(capture: Capture, table: Table) -> list[Convert | None]:
    out: list[Convert | None] = []
    for i, name in enumerate(capture.columns):
        info = table.columns.get(name)
        kind = capture.type_of(i) or (kind_of(info.type) if info else None)
        read = READ.get(kind or "")
        if read is None and info is not None and info.data_type == "time":
            read = _time_in
        out.append(lenient(read) if read else None)
    return out


def _writer(info: Info | None, kind: str | None = None) -> Convert:
    """Turns a canonical value into what ``info``'s column is sent; raises `Refused` for a
    value the column would not hold exactly (where the server, strict mode or not, would
    round, clamp, truncate or fold it). ``kind``: the canonical type the map declares."""
    data_type = info.data_type if info else ""
    declared = info.type if info else "the column"
    column_type = info.column_type.lower() if info else ""
    kind = kind or (kind_of(info.type) if info else None)
    bits = INT_BITS.get(data_type)
    if bits is None:
        low = high = 0
    elif "unsigned" in column_type:
        low, high = 0, 2**bits - 1
    else:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    integral = data_type in INT_TYPES
    boolean = kind == "bool"
    scale = info.scale if info and data_type == "decimal" else None
    m = re.match(r"decimal\((\d+)", column_type)
    before = int(m.group(1)) - (scale or 0) if m and scale is not None else None
    float_bits = FLOAT_BITS.get(data_type)
    numeric = integral or boolean or scale is not None or float_bits is not None
    m = re.match(r"(?:var)?(?:char|binary)\((\d+)\)", column_type)
    length = int(m.group(1)) if m else None  # characters (char) or bytes (binary)
    fixed = data_type in ("char", "binary")
    fraction = info.fraction if info else None
    binary = data_type in BINARY_TYPES
    is_date = data_type == "date"
    stamps = data_type in ("datetime", "timestamp")
    text_bytes = TEXT_BYTES.get(data_type)
    checked_text = length is not None or text_bytes is not None or is_date or stamps or numeric

    def refuse(expected: str, found: Any, why: str = "") -> NoReturn:
        raise Refused(f"expected {expected}, found {found}" + (f": {why}" if why else ""))

    def number(n: int | Decimal, v: Any) -> None:
        """Refuse an exact number ``n`` (the value ``v``) the column would change."""
        if integral:
            if isinstance(n, Decimal) and n != n.to_integral_value():
                refuse("a whole number", shown(v), f"{declared} would round it")
            if bits is not None and not low <= n <= high:
                refuse(f"an integer from {low} to {high}", shown(v), f"{declared} cannot hold it")
        if boolean and n not in (0, 1):
            refuse("a bool (or 0 or 1)", shown(v), f"{declared} would read it back as true")
        if scale is not None and before is not None:
            places, digits = _digits(Decimal(n))
            if places > scale:
                refuse(f"at most {scale} decimal places", shown(v), f"{declared} would round it")
            if digits > before:
                refuse(f"at most {before} digits before the point", shown(v), "out of range")
        if float_bits is not None:
            _exact_float(n, v, float_bits, declared)

    def text(v: str) -> Any:
        if length is not None and (len(v) > length or (fixed and v.endswith(" "))):
            refuse(
                f"at most {length} characters" + (" and no trailing space" if fixed else ""),
                f"{len(v)}: {shown(v)}",
                f"{declared} would drop what does not fit (spaces without an error)",
            )
        if text_bytes is not None and len(v) > text_bytes // 4 and len(v.encode()) > text_bytes:
            refuse(
                f"at most {text_bytes} bytes of UTF-8",
                f"{len(v.encode())}: {shown(v)}",
                f"{declared} would drop what does not fit (spaces without an error)",
            )
        if numeric:
            try:
                n = Decimal(v)
            except InvalidOperation:
                return v  # no number: the server refuses it
            if n.is_finite():
                number(n, v)  # the server reads the text as this number
            return v
        if is_date:
            try:
                day = dt.date.fromisoformat(v)
            except ValueError:
                day = None
            if day is None or day.isoformat() != v:
                refuse("a date (YYYY-MM-DD)", f"the text {shown(v)}")
            return day
        if stamps:
            try:
                stamp = parse_timestamp(v)
            except ValueError:
                refuse("a timestamp (ISO 8601)", f"the text {shown(v)}")
            return write(stamp)
        return v

    def write(v: Any) -> Any:
        t = type(v)
        if v is None or t is bool:
            return v
        if t is str:
            if not has_utf8(v):
                refuse("Unicode text", shown(v), "it has no UTF-8 form")
            return text(v) if checked_text else v
        if t is int:
            if numeric:
                number(v, v)
            return v
        if t is bytes:
            if length is not None and (len(v) > length or (fixed and len(v) < length)):
                size = f"{length} bytes" if fixed else f"at most {length} bytes"
                refuse(size, f"{len(v)} bytes", f"{declared} would pad or refuse it")
            return v
        if t is Json:
            doc = v.dumps()
            if ("NaN" in doc or "Infinity" in doc) and not _finite(v.value):
                refuse("a JSON document", shown(doc), "JSON has no NaN nor infinities")
            return doc
        if t is Decimal:
            if not v.is_finite():
                refuse("a finite number", v, f"{declared} holds no NaN nor infinities")
            number(v, v)
            return int(v) if integral else v
        if t is float:
            if v != v or v in (math.inf, -math.inf):
                refuse("a finite number", v, f"{declared} holds no NaN nor infinities")
            if integral or boolean:
                if not v.is_integer():
                    refuse("a whole number", v, f"{declared} would round it")
                # NOTE: sent as an integer: MariaDB stores a double of 2**63 or more into a
                # BIGINT as 2**63 - 1, without an error even in strict mode.
                number(int(v), v)
                return int(v)
            if scale is not None:
                exact = Decimal(repr(v))  # sent as this decimal, not as a double literal
                number(exact, v)
                return exact
            if float_bits is not None:
                _exact_float(v, v, float_bits, declared)
            return v
        if t is dt.datetime:
            u = to_utc(v).replace(tzinfo=None)
            if is_date and u.time() != dt.time(0):
                refuse("a date", f"the timestamp {shown(v)}", f"{declared} drops its time of day")
            if fraction is not None and u.microsecond % 10 ** (6 - min(fraction, 6)):
                digits = f"at most {fraction} fractional digits"
                refuse(digits, shown(v), f"{declared} would round it")
            return u
        if t is dt.date:
            if stamps:
                refuse("a timestamp", f"the date {shown(v)}", f"{declared} would read a midnight")
            return v
        if t is uuid.UUID:
            return v.bytes if binary else str(v)
        if isinstance(v, (dt.timedelta, dt.time)):
            return v
        refuse("a value of a canonical type", f"a {t.__name__} value")

    return write


def _digits(d: Decimal) -> tuple[int, int]:
    """The decimal places and the digits before the point a finite ``d`` needs."""
    _sign, digits, exponent = d.as_tuple()
    if not any(digits) or not isinstance(exponent, int):
        return 0, 0
    zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + zeros)), max(0, d.adjusted() + 1)


def _exact_float(n: int | float | Decimal, v: Any, bits: int, declared: str) -> None:
    """Refuse ``n`` (the value ``v``) if a float of ``bits`` significand bits rounds it."""
    try:
        x = float(n)
        if bits == 24:
            x = struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        raise Refused(f"expected a number {declared} can hold, found {shown(v)}") from None
    if x != n:  # an int or a Decimal compares with a float exactly
        raise Refused(
            f"expected a number {declared} holds exactly, found {shown(v)}:"
            f" it would round it to {Decimal(x)}"
        )


def _finite(value: Any) -> bool:
    """Whether a JSON document holds no NaN nor infinity (which JSON text cannot spell)."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def _column_of(message: str, capture: Capture, table: Table | None) -> str | None:
    """The captured column a server error names, if any."""
    for c in sorted(capture.columns, key=len, reverse=True):
        phrases = (f"column '{c}'", f"Column '{c}'", f"Field '{c}'", f"`.`{c}` at row",
                   f"FOREIGN KEY (`{c}`", f"CONSTRAINT `{c}`", f".{c}` failed")  # fmt: skip
        if any(p in message for p in phrases):
            return c
    m = re.search(r"for key '(.*)'", message)
    if m and table is not None:
        name = m.group(1)
        index = table.unique.get(name) or table.unique.get(name.rsplit(".", 1)[-1], ())
        found = [c for c in index if c in capture.columns]
        if found:
            return found[0]
    for c in sorted(capture.columns, key=len, reverse=True):
        if re.search(rf"(?<!\w){re.escape(c)}(?!\w)", message):
            return c
    return None


def _broken(exc: BaseException) -> bool:
    """Whether the connection an exception came from is unusable (not a server's answer)."""
    if isinstance(exc, (ConnectorError, Refused)):
        return False
    if isinstance(exc, asyncmy.errors.MySQLError) and not isinstance(
        exc, asyncmy.errors.InterfaceError
    ):
        n = _errno(exc)
        return not (1000 <= n < 2000 or n >= 3000)  # 2000-2999: the client's own errors
    return True


def _errno(exc: BaseException) -> int:
    args: tuple[Any, ...] = exc.args
    return args[0] if args and isinstance(args[0], int) else -1


def _problem(exc: BaseException) -> str:
    args: tuple[Any, ...] = exc.args
    if len(args) >= 2 and isinstance(args[0], int):
        return f"({args[0]}) {args[1]}"
    return str(exc) or type(exc).__name__
