"""The wire format: msgpack messages, each a map with a type tag ``t`` and a version ``v``.

Messages (version 2):

``changes``   reader -> partition. ``side``, ``from``/``to`` (the change-sequence range the batch
              covers, exclusive/inclusive; ``from`` -1 for a snapshot), ``snap`` (rows come
              from the initial snapshot), ``final`` (the snapshot's last message), ``errors``
              (source rows that cannot be synced: ``[seq, field, message, row]``), ``notes``
              (what the reader reports for the log, such as a skewed clock:
              ``[kind, message, details]``), ``acked`` (the mail number up to which the
              reader delivered this partition's mail) and ``rows``:
              ``[seq, op, key, ts, old, new]`` where ``op`` is ``"I"``, ``"U"``, ``"D"``,
              ``"M"`` (an update of the key: ``key`` is the old one, ``new`` holds the new)
              or ``"S"`` (a row of the initial snapshot), ``key`` the canonical key list,
              ``ts`` a packed stamp (`conflict.clock.pack`) and ``old``/``new`` value
              lists in canonical field order (or nil). The same type carries mail between
              partitions (reader -> partition ``deliver``): ``side``, ``snap`` false and
              ``mail``: ``[source, number, [kind, key, origin, body]]``.
``writes``    partition -> writer. ``writer`` (the partition's name), ``epoch`` (its
              incarnation: a writer refuses an earlier one once it saw a later one),
              ``number`` (the receipt number the connector records with the write) and
              ``rows``: ``[op, key, {field_index: value}, old_key or nil]``.
``result``    writer -> partition. ``position`` (where the write landed in the side's change
              log) and ``errors``: ``[row_index, field_index or nil, message]``, with a 4th
              item true for a row refused on a duplicate unique value.
``record``    a partition's persisted record state (see `engine.records`).

A partition answers ``apply`` and ``deliver`` with a plain dict: ``status`` (``ok``, or
``gap``: the batch starts past its cursor, resend), the ``cursor`` merged up to and the
``durable`` one, ``busy`` (writes under way), ``mail`` (for other partitions, carried by the
reader), ``deferred`` (mail it cannot take yet: send it again later) and ``clock`` (the
latest stamp of the side it merged).

Values are msgpack's own types (nil, bool, int, float, str, bytes, lists, maps) and the
canonical types of `engine.values` as ext types: 2 decimal (its exact text), 3 timestamp
(int64 microseconds since the epoch, UTC), 4 date (int32 proleptic ordinal), 5 uuid (16
bytes), 6 json (compact JSON text). `UNSEEN` (a value the engine has not observed) is ext 1;
in persisted records only, `conflict.ABSENT` (a field never assigned) is ext 7 and `SAME` (a
side holds the merged values) ext 8.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from decimal import Decimal
from typing import Any

import msgpack

from conflict import ABSENT
from engine.errors import CodecError
from engine.values import UTC, Json

__all__ = ["SAME", "UNSEEN", "VERSION", "decode", "encode"]

VERSION = 2
_UNSEEN_EXT, _DECIMAL, _TIMESTAMP, _DATE, _UUID, _JSON, _ABSENT_EXT, _SAME_EXT = range(1, 9)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_US = dt.timedelta(microseconds=1)


class _Unseen:
    """The value of a field the engine has not observed on a side."""

    _instance: _Unseen | None = None

    def __new__(cls) -> _Unseen:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSEEN"

    def __reduce__(self) -> Any:
        return (_Unseen, ())


UNSEEN: Any = _Unseen()


class _Same:
    """What a side holds when it holds exactly the merged values (see `engine.records`)."""

    _instance: _Same | None = None

    def __new__(cls) -> _Same:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SAME"

    def __reduce__(self) -> Any:
        return (_Same, ())


SAME: Any = _Same()


def _default(obj: Any) -> Any:
    if obj is UNSEEN:
        return msgpack.ExtType(_UNSEEN_EXT, b"")
    if obj is ABSENT:
        return msgpack.ExtType(_ABSENT_EXT, b"")
    if obj is SAME:
        return msgpack.ExtType(_SAME_EXT, b"")
    if isinstance(obj, Decimal):
        return msgpack.ExtType(_DECIMAL, str(obj).encode())
    if isinstance(obj, dt.datetime):
        if obj.tzinfo is None:
            raise TypeError(f"a timestamp must carry its time zone, found naive {obj!r}")
        return msgpack.ExtType(_TIMESTAMP, struct.pack(">q", (obj - _EPOCH) // _US))
    if isinstance(obj, dt.date):
        return msgpack.ExtType(_DATE, struct.pack(">i", obj.toordinal()))
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_UUID, obj.bytes)
    if isinstance(obj, Json):
        return msgpack.ExtType(_JSON, obj.dumps().encode())
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__} value {obj!r}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _UNSEEN_EXT:
        return UNSEEN
    if code == _DECIMAL:
        return Decimal(data.decode())
    if code == _TIMESTAMP:
        return _EPOCH + struct.unpack(">q", data)[0] * _US
    if code == _DATE:
        return dt.date.fromordinal(struct.unpack(">i", data)[0])
    if code == _UUID:
        return uuid.UUID(bytes=data)
    if code == _JSON:
        return Json.loads(data)
    if code == _ABSENT_EXT:
        return ABSENT
    if code == _SAME_EXT:
        return SAME
    raise CodecError(f"unknown msgpack ext type {code} (expected 1 to {_SAME_EXT})")


def encode(kind: str, **body: Any) -> bytes:
    """Encode one message of type ``kind``."""
    body["t"] = kind
    body["v"] = VERSION
    try:
        return msgpack.packb(body, default=_default, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode a {kind!r} message: {exc}") from exc


def pack(value: Any) -> bytes:
    """Encode a bare value (no type tag): record keys, stored payloads."""
    return msgpack.packb(value, default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def decode(data: bytes, kind: str) -> dict[str, Any]:
    """Decode a message that must be of type ``kind`` and version `VERSION`."""
    try:
        body = unpack(data)
    except (
        ValueError,
        TypeError,  # e.g. a map keyed by a list: unhashable
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise CodecError(
            f"expected a msgpack {kind!r} message, found undecodable bytes: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise CodecError(f"expected a {kind!r} message (a map), found {type(body).__name__}")
    found, version = body.get("t"), body.get("v")
    if found != kind or version != VERSION:
        raise CodecError(
            f"expected a {kind!r} message version {VERSION}, found {found!r} version {version!r}"
        )
    return body
