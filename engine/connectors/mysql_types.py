"""MariaDB / MySQL storage of the canonical types (`engine.values`), and the driver's errors.

A column's described type says which canonical type it holds (`kind_of`), unless the map
declares one. Reads (`READ`, applied by `_reads`): TINYINT(1)/BOOLEAN and BIT(1) give bool;
DECIMAL, Decimal; TIMESTAMP and DATETIME, an aware datetime in UTC (sessions run in UTC and
DATETIME columns are taken to hold UTC); JSON (MariaDB's is a LONGTEXT, described as
``json``), `Json`; UUID, CHAR(36) or BINARY(16) declared uuid, uuid.UUID; TIME, its text
``[-]HHH:MM:SS[.ffffff]``. A value that does not parse is kept as stored (`_safe`): the target
refuses it as a row-level error.

Writes (`_writer`): datetimes go as naive UTC, `Json` as its text, a uuid as its 16 bytes to a
binary column or else as its text, anything else as itself (asyncmy spells the literal).
STRICT_ALL_TABLES makes the server refuse a value out of range or too long; what it would
still change silently raises `Refused` before sending: a number that is not whole for an
integer column, more decimals than a DECIMAL's scale, more fractional digits than a
DATETIME/TIMESTAMP/TIME keeps, a time of day for a DATE, NaN or an infinity, a value of a
type with no SQL form.

Errors: `_errno` and `_problem` read a driver exception; `ROW_ERRORS` refuse one record,
`RETRY_ERRORS` the whole transaction (tried again); `_broken` says whether the connection is
lost; `_column_of` finds the captured column a server message names.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import asyncmy

from engine.connectors.base import Capture
from engine.errors import ConnectorError
from engine.values import Convert, Json, kind_of, lenient, to_utc

# Server errors that refuse one record, not the batch.
ROW_ERRORS = frozenset({
    1048, 1062, 1169, 1171, 1216, 1217, 1263, 1264, 1265, 1292, 1300, 1364, 1366, 1367, 1406,
    1411, 1441, 1451, 1452, 1644, 1690, 1859, 3140, 3819, 4025,
})  # fmt: skip
RETRY_ERRORS = frozenset({1213})  # deadlock: InnoDB rolled the whole transaction back
DRIVER_ERRORS = (asyncmy.errors.MySQLError, OSError, TimeoutError)

INT_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"})
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


def _writer(info: Info | None) -> Convert:
    """Turns a canonical value into what ``info``'s column is sent; raises `Refused` for a
    value the column would not hold exactly (the server would round it silently)."""
    data_type = info.data_type if info else ""
    integral = data_type in INT_TYPES
    scale = info.scale if info and data_type == "decimal" else None
    fraction = info.fraction if info else None
    binary = data_type in BINARY_TYPES
    is_date = data_type == "date"

    def exact(number: Decimal, shown: Any) -> None:
        if not number.is_finite():
            raise Refused(f"{shown} cannot be stored in {info.type if info else 'SQL'}")
        try:
            if integral and number != number.to_integral_value():
                raise Refused(f"{shown} is not a whole number ({info.type if info else ''})")
            if scale is not None and number != number.quantize(Decimal(1).scaleb(-scale)):
                raise Refused(
                    f"{shown} has more than {scale} decimals ({info.type if info else ''})"
                )
        except InvalidOperation:
            pass  # too many digits to check here: the server refuses it as out of range

    def write(v: Any) -> Any:
        t = type(v)
        if v is None or t is str or t is int or t is bool or t is bytes:
            return v
        if t is Json:
            return v.dumps()
        if t is Decimal:
            exact(v, v)
            return v
        if t is float:
            if integral or scale is not None:
                exact(Decimal(repr(v)), v)
            elif v != v or v in (float("inf"), float("-inf")):
                raise Refused(f"{v} cannot be stored")
            return v
        if t is dt.datetime:
            u = to_utc(v).replace(tzinfo=None)
            if is_date and u.time() != dt.time(0):
                raise Refused(f"{v.isoformat()} has a time of day; the column is a date")
            if fraction is not None and u.microsecond % 10 ** (6 - min(fraction, 6)):
                raise Refused(f"{v.isoformat()} has more than {fraction} fractional digits")
            return u
        if t is dt.date:
            return v
        if t is uuid.UUID:
            return v.bytes if binary else str(v)
        if isinstance(v, (dt.timedelta, dt.time)):
            return v
        raise Refused(f"a {t.__name__} value cannot be stored")

    return write


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
