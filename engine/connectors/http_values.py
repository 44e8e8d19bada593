"""Canonical values (`engine.values`) over JSON, for the HTTP connector.

JSON has numbers, strings, booleans, null, arrays and objects; a field's declared canonical
type (`Capture.types`) says how its JSON form reads back:

| type        | JSON written                     | JSON read                                    |
| ----------- | -------------------------------- | -------------------------------------------- |
| `int`       | number (at most 2**53 in size)   | number, or a string of digits (text ids)     |
| `decimal`   | string, exact (``"12.50"``)      | string or number (parsed exactly, no float)  |
| `float`     | number (no NaN nor infinities)   | number                                       |
| `text`      | string                           | string                                       |
| `bool`      | true / false                     | true / false                                 |
| `date`      | ``"2024-02-29"``                 | ISO 8601 date                                |
| `timestamp` | ISO 8601 in UTC, ``+00:00``      | ISO 8601 (an offset; naive = UTC), as UTC    |
| `json`      | the document itself              | any value but null                           |
| `bytes`     | base64 text                      | base64 text                                  |
| `uuid`      | text                             | text                                         |

A value JSON would not carry exactly is refused (`to_json` raises ValueError, a row failure
naming the field): NaN and infinities, an integer past 2**53 (parsers that read numbers as
doubles, JavaScript's among them, round it: I-JSON, RFC 7493, says to send it as text), a
lone surrogate in text (no UTF-8 form), and the same inside a `json` document.

NULL is JSON null (so a `json` field cannot hold the JSON document ``null``: it is NULL). A
field with no declared type reads as its JSON value (a number with a fraction as a float, an
array or object as `Json`). A value that does not parse as its declared type is kept as it is:
the target refuses it with a row-level error; nothing is dropped or rounded here.

Bodies are parsed with ``parse_float=Decimal`` so a decimal sent as a JSON number stays exact;
everything that is not a decimal field gets plain floats back.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.values import Convert, Json, has_utf8, parse_timestamp, to_utc

__all__ = ["dumps", "loads", "reader", "to_json"]

_INT_TEXT = re.compile(r"-?[0-9]+")
EXACT_INT = 2**53  # integers a double holds exactly (I-JSON, RFC 7493: beyond, send text)


def loads(data: bytes | str) -> Any:
    """Parse a JSON body; numbers with a fraction become `Decimal` (see `reader`)."""
    return json.loads(data, parse_float=Decimal)


def dumps(value: Any) -> bytes:
    """A JSON body (UTF-8); ValueError for what JSON cannot hold (NaN, infinities)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def to_json(value: Any) -> Any:
    """The JSON form of a canonical value (by its Python type: the same for every map);
    ValueError, saying what was expected and found, for a value JSON would not carry
    exactly."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -EXACT_INT <= value <= EXACT_INT:
            raise ValueError(
                f"expected an integer from {-EXACT_INT} to {EXACT_INT}, found {value}: JSON"
                " parsers that read numbers as doubles (JavaScript's) would round it"
            )
        return value
    if isinstance(value, str):
        if not has_utf8(value):
            raise ValueError(f"expected Unicode text, found {value!r}: it has no UTF-8 form")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, found {value!r}: JSON has no other")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"expected a finite number, found {value}: JSON has no other")
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"a timestamp must carry its time zone, found naive {value!r}")
        return to_utc(value).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Json):
        _check_document(value.value)
        return value.value
    raise ValueError(f"{type(value).__name__} value {value!r} has no JSON form")


def _check_document(node: Any) -> None:
    """ValueError for what a JSON document cannot carry exactly: NaN or an infinity, an
    integer a double would round, a lone surrogate."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_document(k)
            _check_document(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _check_document(v)
    elif isinstance(node, (int, float, str)) and not isinstance(node, bool):
        try:
            to_json(node)
        except ValueError as exc:
            raise ValueError(f"in the JSON document: {exc}") from None


def plain(value: Any) -> Any:
    """A parsed JSON value with plain floats instead of `Decimal` (for non-decimal fields)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _untyped(v: Any) -> Any:
    if isinstance(v, (list, dict)):
        return Json(plain(v))
    return plain(v)


def _int(v: Any) -> Any:
    if isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value():
        return int(v)
    if isinstance(v, str) and _INT_TEXT.fullmatch(v):
        return int(v)
    return v


def _decimal(v: Any) -> Any:
    if isinstance(v, str):
        return Decimal(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return Decimal(v)
    return v


def _float(v: Any) -> Any:
    if isinstance(v, Decimal) or (isinstance(v, int) and not isinstance(v, bool)):
        return float(v)
    return v


def _bool(v: Any) -> Any:
    if isinstance(v, str) and v in ("true", "false"):
        return v == "true"
    return v


def _date(v: Any) -> Any:
    return dt.date.fromisoformat(v) if isinstance(v, str) else v


def _timestamp(v: Any) -> Any:
    return parse_timestamp(v) if isinstance(v, str) else v


def _json(v: Any) -> Any:
    return Json(plain(v))


def _bytes(v: Any) -> Any:
    return base64.b64decode(v, validate=True) if isinstance(v, str) else v


def _uuid(v: Any) -> Any:
    return uuid.UUID(v) if isinstance(v, str) else v


_READ: dict[str, Convert] = {
    "int": _int,
    "decimal": _decimal,
    "float": _float,
    "bool": _bool,
    "date": _date,
    "timestamp": _timestamp,
    "json": _json,
    "bytes": _bytes,
    "uuid": _uuid,
}


def reader(kind: str | None) -> Convert:
    """How a parsed JSON value of a field of canonical type ``kind`` becomes canonical.

    NULL stays NULL; a value that does not parse is returned as it is (still made plain:
    never a `Decimal` outside decimal fields, and an array or object as `Json`).
    """
    convert = _READ.get(kind or "")
    if convert is None:
        return lambda v: None if v is None else _untyped(v)

    def read(v: Any) -> Any:
        if v is None:
            return None
        try:
            return convert(v)
        except (ValueError, TypeError, ArithmeticError, InvalidOperation, binascii.Error):
            return _untyped(v)

    return read
