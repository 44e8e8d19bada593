"""Strict values: a value the target would change is refused, naming its field, never changed.

A matrix over every connector (its contract harness, `contract_harness.harnesses`) and every
canonical type (a column of the contract entity holding it, `COLUMN`):

- a value that fits is written (an upsert and an update) and read back equal, by another
  program (`Harness.rows`) and by the connector (`snapshot`);
- a value that does not fit (`REFUSED`) is a row-level `WriteFailure` whose ``column`` is the
  field and whose message quotes the field, says what was expected and what was found; the
  rest of the batch is written and the refused rows are not changed (a new one not created,
  an existing one not updated).

Values of another type than the column's are in the matrix where the engine lets them arrive:
a map need not declare types, and a lenient read keeps what does not parse (the text
``2024-02-30`` of a SQLite DATE column, say). Where a connector's column holds every value
that can reach it, the pair is in `EVERY_VALUE_FITS` with the reason: a documented exclusion,
and a test checks that every pair is either refused somewhere or excused.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from engine.connectors import Capture, Connector, WriteOp, open_connector
from engine.connectors.mysql import SQL_MODE
from engine.values import Json

from contract_harness import (
    COLUMNS,
    NAME_MAX,
    TYPES,
    Harness,
    as_tuple,
    created,
    harnesses,
    prepared,
    sample,
    upsert,
)
from harness_mysql import MysqlHarness
from harness_postgresql import PostgresHarness
from harness_sqlite import SqliteHarness

HARNESSES = harnesses()
CONNECTORS = sorted(HARNESSES)
COLUMN = {kind: column for column, kind in zip(COLUMNS, TYPES, strict=True) if column != "id"}
KINDS = sorted(COLUMN)
UTC = dt.UTC
NOON = dt.datetime(2024, 1, 1, 12, tzinfo=UTC)


class Case(NamedTuple):
    """A value that does not fit, and what the failure's message must show of it."""

    value: Any
    expected: str  # in the message: what the column expects
    found: str  # in the message: what it found


# -- values that fit -------------------------------------------------------------------------

FITS: dict[str, list[Any]] = {
    "int": [0, -(2**31), 2**31 - 1, 3.0],
    "decimal": [Decimal("-9999999999.99"), Decimal("0.01"), Decimal("1.10"), 7, 0.5],
    "float": [1 / 3, -1e-300, 1.7976931348623157e308, 2**53, -0.5],
    "text": ["", "ü😀 \t\n\\'\"", "x" * NAME_MAX, "spaces  "],
    "bool": [True, False],
    "date": [dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(2024, 2, 29)],
    "timestamp": [
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        dt.datetime(2030, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    ],
    "json": [Json({"a": [1, 2.5, None, True, "ü"]}), Json([]), Json("text"), Json(0)],
    "bytes": [b"", bytes(range(255))],
    "uuid": [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)],
}
# what one connector holds beyond those
FITS_ALSO: dict[tuple[str, str], list[Any]] = {
    ("sqlite", "int"): [2**63 - 1, -(2**63)],
    ("sqlite", "decimal"): [Decimal("12345678901234567"), Decimal("1E+30"), Decimal("-Infinity")],
    ("sqlite", "float"): [float("inf"), float("-inf")],
    ("sqlite", "text"): ["nul \x00 inside", "x" * 10_000],
    ("sqlite", "json"): [Json({"big": 2**70}), Json(-2.5), Json(2**63 - 1), Json(float("inf"))],
    ("postgresql", "float"): [float("inf")],
    ("postgresql", "json"): [Json({"big": 2**70})],
    ("mysql", "timestamp"): [
        dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
        dt.datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC),
    ],
    ("mysql", "text"): ["nul \x00 inside"],
    ("mysql", "json"): [Json({"big": 2**70})],
    ("http", "int"): [2**53, -(2**53)],
    ("http", "text"): ["nul \x00 inside", "x" * 10_000],
    ("http", "json"): [Json({"big": 2**53})],
}

# -- values that do not fit ------------------------------------------------------------------

TOO_LONG = Case("x" * (NAME_MAX + 1), f"at most {NAME_MAX} characters", "found 41")
SPACES_PAST = Case("trailing spaces" + " " * NAME_MAX, f"at most {NAME_MAX} characters", "found 55")
REFUSED: dict[tuple[str, str], list[Case]] = {
    ("sqlite", "int"): [
        Case(2**63, "a 64-bit integer", "9223372036854775808"),
        Case(-(2**63) - 1, "a 64-bit integer", "-9223372036854775809"),
        Case(float("nan"), "a number", "nan"),  # SQLite stores NaN as NULL
    ],
    ("sqlite", "decimal"): [  # a column of numeric affinity rounds it to a double
        Case(Decimal("12345678901234567.25"), "holds exactly", "12345678901234567.25"),
        Case(Decimal("0.10000000000000001"), "holds exactly", "0.10000000000000001"),
    ],
    ("sqlite", "float"): [
        Case(float("nan"), "a number", "nan"),
        Case(2**53 + 1, "holds exactly", "9007199254740993"),
    ],
    ("sqlite", "bool"): [Case(2, "a bool", "found 2")],
    ("sqlite", "json"): [  # JSON is a column of numeric affinity: a number document is a number
        Case(Json(2**70), "a JSON document SQLite keeps exactly", "1180591620717411303424"),
    ],
    ("sqlite", "date"): [Case(NOON, "a date", "2024-01-01T12:00:00+00:00")],
    ("postgresql", "int"): [
        Case(2**31, "an integer from", "2147483648"),
        Case(1.5, "a whole number", "1.5"),
        Case(2.0**63, "an integer from", "9.223372036854776e+18"),
        Case(Decimal("2.5"), "a whole number", "2.5"),
    ],
    ("postgresql", "decimal"): [
        Case(Decimal("1.255"), "at most 2 decimal places", "1.255"),
        Case(1.255, "at most 2 decimal places", "1.255"),  # a double, which it would round
        Case(Decimal("1E+10"), "at most 10 digits before the point", "1E+10"),
        Case(10**10, "at most 10 digits before the point", "10000000000"),
        Case("1.255", "at most 2 decimal places", "'1.255'"),  # the text of a decimal
    ],
    ("postgresql", "float"): [
        Case(2**53 + 1, "holds exactly", "9007199254740993"),
        Case(Decimal("0.1"), "holds exactly", "0.1"),
        Case("9007199254740993", "holds exactly", "'9007199254740993'"),
    ],
    ("postgresql", "text"): [
        TOO_LONG,
        SPACES_PAST,  # varchar(n) drops spaces past n without an error
        Case("nul \x00 inside", "text without NUL", "'nul \\x00 inside'"),
    ],
    ("postgresql", "bool"): [Case(2, "boolean", "smallint")],  # the server's words
    ("postgresql", "date"): [
        Case("2024-02-30", "a date (YYYY-MM-DD)", "'2024-02-30'"),
        Case("2024-1-5", "a date (YYYY-MM-DD)", "'2024-1-5'"),  # it would read 2024-01-05
        Case(NOON, "a date", "2024-01-01T12:00:00+00:00"),
    ],
    ("postgresql", "timestamp"): [
        Case("2024-02-30 10:00", "a timestamp (ISO 8601)", "'2024-02-30 10:00'"),
        Case(dt.date(2024, 1, 1), "a timestamp", "2024-01-01"),
    ],
    ("postgresql", "json"): [  # the server refuses these: its error names the parameter
        Case(Json({"s": "nul \x00"}), "Unicode escape", "\\u0000"),
        Case(Json(float("nan")), "type json", "NaN"),
    ],
    ("postgresql", "uuid"): [Case("not-a-uuid", "type uuid", "not-a-uuid")],
    ("mysql", "int"): [
        Case(2**31, "an integer from", "2147483648"),
        Case(1.5, "a whole number", "1.5"),
        Case(2.0**63, "an integer from", "9.223372036854776e+18"),
        Case(Decimal("2.5"), "a whole number", "2.5"),
        Case("1.5", "a whole number", "'1.5'"),  # MariaDB would store 2
    ],
    ("mysql", "decimal"): [  # MariaDB rounds to the scale with a note, even in strict mode
        Case(Decimal("1.255"), "at most 2 decimal places", "1.255"),
        Case(1.255, "at most 2 decimal places", "1.255"),
        Case(Decimal("1E+10"), "at most 10 digits before the point", "1E+10"),
        Case(10**10, "at most 10 digits before the point", "10000000000"),
        Case("1.255", "at most 2 decimal places", "'1.255'"),
    ],
    ("mysql", "float"): [
        Case(float("inf"), "a finite number", "inf"),
        Case(float("nan"), "a finite number", "nan"),
        Case(2**53 + 1, "holds exactly", "9007199254740993"),
        Case(Decimal("0.1"), "holds exactly", "0.1"),
        Case("9007199254740993", "holds exactly", "'9007199254740993'"),
    ],
    ("mysql", "text"): [TOO_LONG, SPACES_PAST],  # spaces past n: dropped with a note
    ("mysql", "bool"): [Case(2, "a bool", "found 2")],  # TINYINT(1) holds 2, which reads as true
    ("mysql", "date"): [
        Case("2024-02-30", "a date (YYYY-MM-DD)", "'2024-02-30'"),
        Case("2024-01-01 12:00:00", "a date (YYYY-MM-DD)", "'2024-01-01 12:00:00'"),
        Case(NOON, "a date", "2024-01-01T12:00:00+00:00"),
    ],
    ("mysql", "timestamp"): [
        Case(dt.datetime(2040, 1, 1, tzinfo=UTC), "datetime", "2040-01-01"),  # the server's
        Case(dt.datetime(1969, 12, 31, tzinfo=UTC), "datetime", "1969-12-31"),
        Case(dt.date(2024, 1, 1), "a timestamp", "2024-01-01"),
    ],
    ("mysql", "json"): [Case(Json([1, float("nan")]), "a JSON document", "NaN")],
    ("mysql", "bytes"): [Case(bytes(256), "at most 255 bytes", "256 bytes")],
    ("mysql", "uuid"): [Case("not-a-uuid", "uuid", "not-a-uuid")],  # the server's words
    ("http", "int"): [  # json-server (JavaScript) reads numbers as doubles
        Case(2**53 + 1, "an integer from", "9007199254740993"),
        Case(-(2**53) - 1, "an integer from", "-9007199254740993"),
    ],
    ("http", "decimal"): [
        Case(Decimal("NaN"), "a finite number", "NaN"),
        Case(Decimal("-Infinity"), "a finite number", "-Infinity"),
    ],
    ("http", "float"): [
        Case(float("nan"), "a finite number", "nan"),
        Case(float("inf"), "a finite number", "inf"),
    ],
    ("http", "json"): [
        Case(Json({"n": 2**53 + 1}), "an integer from", "9007199254740993"),
        Case(Json([float("nan")]), "a finite number", "nan"),
    ],
}

# Pairs with no value that does not fit: why.
JSON_SERVER_KEEPS = "json-server stores any JSON value as it is sent"
EVERY_VALUE_FITS: dict[tuple[str, str], str] = {
    ("sqlite", "text"): "SQLite stores any Unicode text whole, of any length",
    ("sqlite", "timestamp"): "kept as ISO 8601 text in UTC, microseconds and years 1-9999",
    ("sqlite", "bytes"): "a BLOB of any length",
    ("sqlite", "uuid"): "kept as its text",
    ("postgresql", "bytes"): "bytea holds any bytes",
    ("http", "text"): f"{JSON_SERVER_KEEPS} (text that is not Unicode: tested below)",
    ("http", "bool"): f"{JSON_SERVER_KEEPS}: true, false, or whatever else arrives",
    ("http", "date"): f"{JSON_SERVER_KEEPS}: an ISO date's text, or other text, kept as is",
    ("http", "timestamp"): f"{JSON_SERVER_KEEPS}: ISO 8601 text with microseconds",
    ("http", "bytes"): f"{JSON_SERVER_KEEPS}: base64 text",
    ("http", "uuid"): f"{JSON_SERVER_KEEPS}: its text",
}


def label(value: Any) -> str:
    """A short name of a value for a test id."""
    text = value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else repr(value)
    return text if len(text) <= 30 else f"{text[:24]}...({len(text)})"


def fit_cases() -> list[Any]:
    return [
        pytest.param(c, kind, v, id=f"{c}-{kind}-{label(v)}")
        for c in CONNECTORS
        for kind in KINDS
        for v in FITS[kind] + FITS_ALSO.get((c, kind), [])
    ]


def refused_cases() -> list[Any]:
    return [
        pytest.param(c, kind, case, id=f"{c}-{kind}-{label(case.value)}")
        for c in CONNECTORS
        for kind in KINDS
        for case in REFUSED.get((c, kind), [])
    ]


@pytest.fixture
def app(request: Any, tmp_path: Path) -> Iterator[Harness]:
    with created(HARNESSES[request.param], tmp_path) as harness:
        yield harness


@pytest.fixture
def conn(app: Harness) -> Iterator[Connector]:
    with prepared(app) as connector:
        yield connector


def quotes(column: str, message: str) -> bool:
    """Whether ``message`` names ``column`` (quoted as Python, SQL or MariaDB quote it)."""
    return re.search(rf"[`'\"]{re.escape(column)}[`'\"]", message) is not None


# -- the matrix ------------------------------------------------------------------------------


def test_every_connector_and_type_has_a_refused_value_or_a_reason_why_none_exists() -> None:
    for connector in CONNECTORS:
        for kind in KINDS:
            refused = bool(REFUSED.get((connector, kind)))
            excused = (connector, kind) in EVERY_VALUE_FITS
            assert refused != excused, (connector, kind, refused, excused)
    assert set(REFUSED) | set(EVERY_VALUE_FITS) <= {(c, k) for c in CONNECTORS for k in KINDS}


@pytest.mark.parametrize(("app", "kind", "value"), fit_cases(), indirect=["app"])
def test_a_value_that_fits_is_written_and_read_back_equal(
    app: Harness, conn: Connector, kind: str, value: Any
) -> None:
    column = COLUMN[kind]
    cap = app.capture()
    app.insert([sample(2)])
    result = conn.apply(
        cap, [upsert(1, **{column: value}), WriteOp("U", (2,), {COLUMNS.index(column): value})]
    )
    assert result.failures == []
    expected = {i: as_tuple(sample(i, **{column: value})) for i in (1, 2)}
    assert app.rows() == expected  # as another program reads it
    _, chunks = conn.snapshot(cap, 10)
    assert {row[0]: row for chunk in chunks for row in chunk} == expected  # and the connector


@pytest.mark.parametrize(("app", "kind", "case"), refused_cases(), indirect=["app"])
def test_a_value_that_does_not_fit_is_refused_naming_the_field_and_the_rest_is_written(
    app: Harness, conn: Connector, kind: str, case: Case
) -> None:
    column = COLUMN[kind]
    cap = app.capture()
    app.insert([sample(2)])
    result = conn.apply(
        cap,
        [
            upsert(1),
            upsert(3, **{column: case.value}),  # a new record: not created
            WriteOp("U", (2,), {COLUMNS.index(column): case.value}),  # an existing one: kept
            upsert(4),
        ],
    )
    assert [(f.row, f.column) for f in result.failures] == [(1, column), (2, column)]
    for failure in result.failures:
        assert quotes(column, failure.message), failure.message
        assert case.expected in failure.message, failure.message
        assert case.found in failure.message, failure.message
    assert app.rows() == {i: as_tuple(sample(i)) for i in (1, 2, 4)}


# -- beyond the contract entity --------------------------------------------------------------


@pytest.mark.parametrize("app", CONNECTORS, indirect=True)
def test_text_that_is_not_unicode_is_refused_naming_the_field(
    app: Harness, conn: Connector
) -> None:
    # a lone surrogate: a JSON body may spell one ("\ud800"); no UTF-8 form holds it
    result = conn.apply(app.capture(), [upsert(1, name="lone \ud800"), upsert(2)])
    [failure] = result.failures
    assert failure.row == 0 and failure.column == "name"
    assert "expected Unicode text" in failure.message and "\\ud800" in failure.message
    assert app.rows() == {2: as_tuple(sample(2))}


WIDE = ("id", "big", "ubig", "amount", "single")
WIDE_DDL = {
    "mysql": "CREATE TABLE {table} (id INT PRIMARY KEY, big BIGINT, ubig BIGINT UNSIGNED,"
    " amount DECIMAL(65, 2), single FLOAT)",
    "postgresql": "CREATE TABLE {table} (id integer PRIMARY KEY, big bigint,"
    " ubig numeric(20, 0), amount numeric(65, 2), single real)",
}


def create_wide(app: Harness) -> None:
    table = app.table("wide") if isinstance(app, PostgresHarness) else "wide"
    app.db.execute(WIDE_DDL[app.name].format(table=table))  # type: ignore[attr-defined]


def wide_rows(app: Harness) -> dict[int, tuple[Any, ...]]:
    if isinstance(app, MysqlHarness):
        return {r[0]: tuple(r) for r in app.db.execute(f"SELECT {', '.join(WIDE)} FROM wide")}
    assert isinstance(app, PostgresHarness)
    found = app.db.execute(f"SELECT {', '.join(WIDE)} FROM {app.table('wide')}").fetchall()
    return {r[0]: tuple(r) for r in found}


@pytest.mark.parametrize("app", ["mysql", "postgresql"], indirect=True)
def test_a_sqlite_real_of_2_63_is_refused_by_a_bigint_never_clamped(
    app: Harness, tmp_path: Path
) -> None:
    create_wide(app)
    (tmp_path / "source").mkdir()
    source = SqliteHarness(tmp_path / "source")
    source.db.execute("CREATE TABLE wide (id INTEGER PRIMARY KEY, big REAL)")
    source.db.execute("INSERT INTO wide VALUES (1, ?), (2, ?), (3, ?)", (2.0**63, -(2.0**63), 5.0))
    reader = open_connector("source", source.url)
    writer = open_connector("target", app.url)
    try:
        cap = Capture("wide_L", "wide", ("id", "big"), ("id",))
        reader.prepare(cap)
        writer.prepare(cap)
        _, chunks = reader.snapshot(cap, 10)
        rows = [row for chunk in chunks for row in chunk]
        assert rows == [(1, 2.0**63), (2, -(2.0**63)), (3, 5.0)]  # SQLite keeps the doubles
        result = writer.apply(cap, [WriteOp("I", (r[0],), dict(enumerate(r))) for r in rows])
        [failure] = result.failures
        assert failure.row == 0 and failure.column == "big"
        assert "9.223372036854776e+18" in failure.message and "an integer from" in failure.message
        assert {k: r[1] for k, r in wide_rows(app).items()} == {2: -(2**63), 3: 5}
    finally:
        reader.close()
        writer.close()
        source.close()


@pytest.mark.parametrize("app", ["mysql", "postgresql"], indirect=True)
def test_wide_columns_refuse_what_they_would_round_and_hold_what_fits(app: Harness) -> None:
    create_wide(app)
    conn = open_connector("target", app.url)
    digits = "1234567890123456789012345678901"  # 31 digits before the point
    rows = [
        (1, 2**63 - 1, 2**63, Decimal(f"{digits}.23"), 0.5),  # every one fits
        (2, None, None, Decimal(f"{digits}.234"), None),  # one decimal place too many
        (3, None, None, None, 0.1),  # a float4 / FLOAT holds no 0.1: it would round it
        (4, 2.0**63, None, None, None),  # a BIGINT holds at most 2**63 - 1
        (5, None, -1, None, None),  # unsigned (MariaDB) or numeric(20, 0) (PostgreSQL)
    ]
    try:
        cap = Capture("wide_L", "wide", WIDE, ("id",))
        conn.prepare(cap)
        result = conn.apply(cap, [WriteOp("I", (r[0],), dict(enumerate(r))) for r in rows])
        found = [(f.row, f.column) for f in result.failures]
        refused = [(1, "amount"), (2, "single"), (3, "big")]
        if app.name == "mysql":
            refused.append((4, "ubig"))
        assert found == refused, result.failures
        assert wide_rows(app)[1] == (1, 2**63 - 1, 2**63, Decimal(f"{digits}.23"), 0.5)
        assert set(wide_rows(app)) == {1} | ({5} if app.name == "postgresql" else set())
    finally:
        conn.close()


def test_mariadb_strict_mode_alone_still_changes_these_values(tmp_path: Path) -> None:
    """Why the MariaDB connector checks values before sending them: with the connector's
    own sql_mode (STRICT_ALL_TABLES), the server changes these without an error."""
    app = MysqlHarness(tmp_path)
    try:
        app.db.execute(f"SET SESSION sql_mode = '{SQL_MODE}'")
        app.db.execute(
            "CREATE TABLE t (id INT PRIMARY KEY, big BIGINT, n INT, d DECIMAL(12, 2), r DOUBLE,"
            " v VARCHAR(5), day DATE)"
        )
        app.db.execute(
            "INSERT INTO t VALUES (1, 9.223372036854776e18, 1.5e0, 1.255, 9007199254740993,"
            " 'ab      ', '2024-01-01 12:00:00')"
        )
        [row] = app.db.execute("SELECT big, n, d, r, v, day FROM t")
        assert row == (2**63 - 1, 2, Decimal("1.26"), 2.0**53, "ab   ", dt.date(2024, 1, 1))
    finally:
        app.close()
