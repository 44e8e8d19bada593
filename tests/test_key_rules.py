"""Keys as the applications compare them: each connector describes what its key columns'
comparison ignores, and a map whose two sides compare a key differently is accepted with a
`KeyComparisonWarning` naming both columns and the collation. On real SQLite files, the
PostgreSQL and MariaDB servers, and a real Ray for the map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import KeyComparisonWarning
from engine.connectors import Capture, WriteOp, open_connector

from conftest import CUSTOMERS, Apps, connect, wait_until
from harness_mysql import MysqlHarness
from harness_postgresql import PostgresHarness


def compare_of(url: str, entity: str, column: str) -> str | None:
    connector = open_connector("app", url)
    try:
        schema = connector.describe(entity)
        assert schema is not None
        return schema.columns[column].compare
    finally:
        connector.close()


def test_sqlite_describes_nocase_and_rtrim_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    con = connect(path)
    con.execute("CREATE TABLE a (k TEXT PRIMARY KEY COLLATE NOCASE, v TEXT)")
    con.execute("CREATE TABLE b (k TEXT COLLATE RTRIM, v TEXT, UNIQUE (k))")
    con.execute("CREATE TABLE c (k TEXT PRIMARY KEY, v TEXT COLLATE NOCASE)")
    url = f"sqlite:///{path}"
    assert compare_of(url, "a", "k") == "ignores ASCII case (COLLATE NOCASE)"
    assert compare_of(url, "b", "k") == "ignores trailing spaces (COLLATE RTRIM)"
    assert compare_of(url, "c", "k") is None
    assert compare_of(url, "c", "v") is None  # no unique index: its comparison keys nothing


def test_mariadb_describes_its_collations(tmp_path: Path) -> None:
    maria = MysqlHarness(tmp_path)
    try:
        maria.db.execute(
            "CREATE TABLE t (ci VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY,"
            " bin VARCHAR(20) COLLATE utf8mb4_bin, nopad VARCHAR(20) COLLATE utf8mb4_nopad_bin,"
            " n INT)"
        )
        url = maria.url
        assert compare_of(url, "t", "ci") == (
            "ignores case, accents and trailing spaces (collation utf8mb4_general_ci)"
        )
        assert compare_of(url, "t", "bin") == "ignores trailing spaces (collation utf8mb4_bin)"
        assert compare_of(url, "t", "nopad") is None
        assert compare_of(url, "t", "n") is None
    finally:
        maria.close()


def test_postgresql_describes_citext_and_character(tmp_path: Path) -> None:
    pg = PostgresHarness(tmp_path)
    try:
        pg.db.execute("CREATE EXTENSION IF NOT EXISTS citext SCHEMA public")
        pg.db.execute(
            f"CREATE TABLE {pg.table('t')} (a public.citext PRIMARY KEY, b character(8),"
            " c text, d integer)"
        )
        url = pg.url
        assert compare_of(url, "t", "a") == "ignores case (citext)"
        assert compare_of(url, "t", "b") == "ignores trailing spaces (character(n))"
        assert compare_of(url, "t", "c") is None
        assert compare_of(url, "t", "d") is None
    finally:
        pg.close()


@pytest.mark.ray
def test_a_map_whose_key_compares_differently_is_accepted_with_a_warning(
    engine: Any, tmp_path: Path
) -> None:
    apps = Apps(
        tmp_path,
        crm_schema=(
            "CREATE TABLE accounts (account_number TEXT PRIMARY KEY COLLATE NOCASE, name TEXT,"
            " credit_limit REAL, telephone TEXT)"
        ),
    )
    for name, url in apps.urls.items():
        engine.add_app(name, url)
    with pytest.warns(KeyComparisonWarning) as caught:
        engine.submit_map(CUSTOMERS)
    [warning] = [str(w.message) for w in caught]
    assert "key field 'account'" in warning
    assert "finance.customers.account compares exactly" in warning
    assert "crm.accounts.account_number ignores ASCII case (COLLATE NOCASE)" in warning
    assert engine.status()["customers"]["warnings"] == [warning]


@pytest.mark.ray
def test_a_map_whose_keys_compare_alike_has_no_warning(engine: Any, apps: Apps) -> None:
    for name, url in apps.urls.items():
        engine.add_app(name, url)
    engine.submit_map(CUSTOMERS)  # warnings are errors in this suite: none may be raised
    assert engine.status()["customers"]["warnings"] == []


# -- collisions under the target's rules are row errors -----------------------------------------


def nocase_app(tmp_path: Path) -> tuple[Any, Any, Any]:
    path = tmp_path / "crm.db"
    con = connect(path)
    con.execute("CREATE TABLE accounts (k TEXT PRIMARY KEY COLLATE NOCASE, name TEXT)")
    connector = open_connector("crm", f"sqlite:///{path}")
    capture = Capture("m_R", "accounts", ("k", "name"), ("k",))
    connector.prepare(capture)
    return con, connector, capture


def test_sqlite_refuses_keys_that_collide_under_nocase_naming_both(tmp_path: Path) -> None:
    con, connector, capture = nocase_app(tmp_path)
    result = connector.apply(
        capture,
        [WriteOp("I", ("abc",), {1: "lower"}), WriteOp("I", ("ABC",), {1: "upper"})],
    )
    [failure] = result.failures
    assert failure.row == 1 and failure.column == "k"
    assert "key 'ABC' collides with 'abc' (another record of the same batch)" in failure.message
    assert "ignores ASCII case (COLLATE NOCASE)" in failure.message
    assert con.execute("SELECT k, name FROM accounts").fetchall() == [("abc", "lower")]

    # Against a record the table holds: an upsert, an update and a delete of 'Abc' would
    # all land on 'abc'; each is refused and 'abc' is left alone.
    result = connector.apply(
        capture,
        [
            WriteOp("I", ("Abc",), {1: "x"}),
            WriteOp("U", ("aBc",), {1: "y"}),
            WriteOp("D", ("ABC",), {}),
            WriteOp("I", ("other",), {1: "fine"}),
        ],
    )
    assert [f.row for f in result.failures] == [0, 1, 2]
    assert all("(a record it holds)" in f.message for f in result.failures)
    assert dict(con.execute("SELECT k, name FROM accounts").fetchall()) == {
        "abc": "lower",
        "other": "fine",
    }
    # The record itself is still written by its own key, and may be renamed to another case.
    assert connector.apply(capture, [WriteOp("U", ("abc",), {1: "again"})]).failures == []
    moved = connector.apply(capture, [WriteOp("M", ("ABC",), {0: "ABC", 1: "moved"}, ("abc",))])
    assert moved.failures == []
    assert dict(con.execute("SELECT k, name FROM accounts").fetchall()) == {
        "ABC": "moved",
        "other": "fine",
    }
    connector.close()


@pytest.mark.ray
def test_records_whose_keys_collide_in_the_target_become_row_errors_not_merges(
    engine: Any, tmp_path: Path
) -> None:
    apps = Apps(
        tmp_path,
        crm_schema=(
            "CREATE TABLE accounts (account_number TEXT PRIMARY KEY COLLATE NOCASE, name TEXT,"
            " credit_limit REAL, telephone TEXT)"
        ),
    )
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, ?, NULL, NULL)",
        [("abc", "lower"), ("ABC", "upper"), ("x", "plain")],
    )
    for name, url in apps.urls.items():
        engine.add_app(name, url)
    with pytest.warns(KeyComparisonWarning):
        engine.submit_map(CUSTOMERS)
    engine.play("customers")
    wait_until(lambda: engine.errors("customers"), 60, "the collision to be logged")
    engine.wait_idle(timeout=60)
    crm = dict(apps.crm.execute("SELECT account_number, name FROM accounts").fetchall())
    assert crm in ({"abc": "lower", "x": "plain"}, {"ABC": "upper", "x": "plain"})
    [error] = engine.errors("customers")
    assert error["kind"] == "write" and error["app"] == "crm"
    refused = error["key"][0]
    assert refused in ("abc", "ABC") and refused not in crm
    assert "collides with" in error["message"]
    assert error["payload"]["values"]["name"] in ("lower", "upper")
    report = engine.verify("customers")
    assert report.only_left == [(refused,)]


def test_mariadb_refuses_keys_that_collide_under_its_collation_naming_both(
    tmp_path: Path,
) -> None:
    maria = MysqlHarness(tmp_path)
    try:
        maria.db.execute(
            "CREATE TABLE accounts (k VARCHAR(20) COLLATE utf8mb4_general_ci PRIMARY KEY,"
            " name VARCHAR(20))"
        )
        connector = open_connector("crm", maria.url)
        capture = Capture("m_R", "accounts", ("k", "name"), ("k",))
        connector.prepare(capture)
        try:
            result = connector.apply(
                capture,
                [
                    WriteOp("I", ("abc",), {1: "lower"}),
                    WriteOp("I", ("ABC",), {1: "upper"}),
                    WriteOp("I", ("sp",), {1: "bare"}),
                    WriteOp("I", ("sp ",), {1: "padded"}),
                    WriteOp("I", ("é",), {1: "accent"}),
                    WriteOp("I", ("e",), {1: "plain"}),
                ],
            )
            assert [f.row for f in result.failures] == [1, 3, 5]
            assert "key 'ABC' collides with 'abc' (another record of the same batch)" in (
                result.failures[0].message
            )
            assert "utf8mb4_general_ci" in result.failures[0].message
            rows = dict(maria.db.execute("SELECT k, name FROM accounts"))
            assert rows == {"abc": "lower", "sp": "bare", "é": "accent"}
            result = connector.apply(
                capture,
                [
                    WriteOp("U", ("ABC",), {1: "x"}),
                    WriteOp("D", ("SP",), {}),
                    WriteOp("I", ("E",), {1: "y"}),
                ],
            )
            assert [f.row for f in result.failures] == [0, 1, 2]
            assert all("(a record it holds)" in f.message for f in result.failures)
            assert dict(maria.db.execute("SELECT k, name FROM accounts")) == rows
            moved = connector.apply(
                capture, [WriteOp("M", ("ABC",), {0: "ABC", 1: "moved"}, ("abc",))]
            )
            assert moved.failures == []
            assert ("ABC", "moved") in maria.db.execute("SELECT k, name FROM accounts")
        finally:
            connector.close()
    finally:
        maria.close()


@pytest.mark.ray
def test_sqlite_keys_differing_in_case_and_padding_into_mariadb_are_errors_not_merges(
    engine: Any, tmp_path: Path
) -> None:
    apps = Apps(tmp_path)
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, ?, NULL, NULL)",
        [("abc", "a1"), ("ABC", "a2"), ("sp", "s1"), ("sp ", "s2"), ("z", "z1")],
    )
    maria = MysqlHarness(tmp_path)
    try:
        maria.db.execute(
            "CREATE TABLE accounts (account_number VARCHAR(20) PRIMARY KEY, name VARCHAR(100),"
            " credit_limit DOUBLE, telephone VARCHAR(40))"
        )  # the server's default collation: utf8mb4_general_ci, PAD SPACE
        engine.add_app("finance", apps.urls["finance"])
        engine.add_app("crm", maria.url)
        with pytest.warns(KeyComparisonWarning, match="utf8mb4_general_ci"):
            engine.submit_map(CUSTOMERS)
        engine.play("customers")
        wait_until(lambda: len(engine.errors("customers")) >= 2, 60, "both collisions")
        engine.wait_idle(timeout=60)
        crm = {r[0] for r in maria.db.execute("SELECT account_number FROM accounts")}
        assert len(crm) == 3 and "z" in crm
        errors = engine.errors("customers")
        refused = {e["key"][0] for e in errors}
        assert len(errors) == 2 and refused == {"abc", "ABC", "sp", "sp "} - crm
        assert all("collides with" in e["message"] and e["app"] == "crm" for e in errors)
        assert engine.status()["customers"]["errors"] == 2
    finally:
        maria.close()


def test_postgresql_refuses_keys_that_collide_under_citext_naming_both(tmp_path: Path) -> None:
    pg = PostgresHarness(tmp_path)
    try:
        pg.db.execute("CREATE EXTENSION IF NOT EXISTS citext SCHEMA public")
        pg.db.execute(
            f"CREATE TABLE {pg.table('accounts')} (k public.citext PRIMARY KEY, name text)"
        )
        connector = open_connector("crm", pg.url)
        capture = Capture("m_R", "accounts", ("k", "name"), ("k",))
        connector.prepare(capture)
        try:
            result = connector.apply(
                capture,
                [WriteOp("I", ("abc",), {1: "lower"}), WriteOp("I", ("ABC",), {1: "upper"})],
            )
            [failure] = result.failures
            assert failure.row == 1 and failure.column == "k"
            assert "key 'ABC' collides with 'abc' (another record of the same batch)" in (
                failure.message
            )
            assert "ignores case (citext)" in failure.message
            result = connector.apply(
                capture,
                [WriteOp("U", ("aBc",), {1: "x"}), WriteOp("D", ("ABC",), {}),
                 WriteOp("I", ("new",), {1: "fine"})],
            )  # fmt: skip
            assert [f.row for f in result.failures] == [0, 1]
            rows = dict(pg.db.execute(f"SELECT k::text, name FROM {pg.table('accounts')}"))
            assert rows == {"abc": "lower", "new": "fine"}
        finally:
            connector.close()
    finally:
        pg.close()
