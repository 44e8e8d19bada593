"""Keys as the applications compare them: each connector describes what its key columns'
comparison ignores, and a map whose two sides compare a key differently is accepted with a
`KeyComparisonWarning` naming both columns and the collation. On real SQLite files, the
PostgreSQL and MariaDB servers, and a real Ray for the map."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import KeyComparisonWarning
from engine.connectors import open_connector

from conftest import CUSTOMERS, Apps, connect
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
