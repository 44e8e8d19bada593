"""`verify`: the two applications of a map compared record by record, through the map.

The comparison itself runs on real SQLite, PostgreSQL and MariaDB connectors; the engine's
`SyncEngine.verify` and `dualsync verify` on a real Ray.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.connectors import open_connector
from engine.ids import Side
from engine.maps import load_map
from engine.verify import verify

from conftest import CUSTOMERS, Apps, start_sync
from harness_mysql import MysqlHarness
from harness_postgresql import PostgresHarness


def prepared(urls: dict[str, str]) -> tuple[Any, Any, Any]:
    """The customers map compiled, and connectors of both apps with capture installed."""
    cmap = load_map(CUSTOMERS).compile()
    left = open_connector("finance", urls["finance"])
    right = open_connector("crm", urls["crm"])
    left.prepare(cmap.capture(Side.LEFT))
    right.prepare(cmap.capture(Side.RIGHT))
    return cmap, left, right


def fill(apps: Apps, n: int) -> None:
    rows = [(f"C{i:05d}", f"name {i}", i * 1.5, f"555-{i}") for i in range(n)]
    apps.finance.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", rows)
    apps.crm.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?)", rows)


def test_equal_sides_verify_ok(apps: Apps) -> None:
    fill(apps, 500)
    cmap, left, right = prepared(apps.urls)
    report = verify(cmap, left, right)
    assert report.ok
    assert (report.left, report.right) == (500, 500)
    assert report.differing == report.only_left == report.only_right == []


def test_missing_extra_and_differing_records_are_named_with_their_fields(apps: Apps) -> None:
    fill(apps, 100)
    apps.crm.execute("DELETE FROM accounts WHERE account_number IN ('C00007', 'C00042')")
    apps.crm.execute("INSERT INTO accounts VALUES ('K1', 'only in crm', NULL, NULL)")
    apps.crm.execute("UPDATE accounts SET name = 'Name 3' WHERE account_number = 'C00003'")
    apps.finance.execute(
        "UPDATE customers SET credit_limit = 1, phone = NULL WHERE account = 'C00009'"
    )
    cmap, left, right = prepared(apps.urls)
    report = verify(cmap, left, right)
    assert not report.ok
    assert report.only_left == [("C00007",), ("C00042",)]
    assert report.only_right == [("K1",)]
    assert {d.key: d.fields for d in report.differing} == {
        ("C00003",): {"name": ("name 3", "Name 3")},
        ("C00009",): {"credit_limit": (1.0, 13.5), "phone": (None, "555-9")},
    }
    assert (report.only_left_count, report.only_right_count, report.differing_count) == (2, 1, 2)
    assert (report.left, report.right) == (100, 99)


def test_text_is_compared_exactly_case_and_trailing_spaces_included(apps: Apps) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('a', 'Ann', NULL, 'x')")
    apps.crm.execute("INSERT INTO accounts VALUES ('a', 'ann', NULL, 'x ')")
    cmap, left, right = prepared(apps.urls)
    [difference] = verify(cmap, left, right).differing
    assert difference.fields == {"name": ("Ann", "ann"), "phone": ("x", "x ")}


def test_lists_are_capped_but_counts_are_exact(apps: Apps) -> None:
    fill(apps, 300)
    apps.crm.execute("DELETE FROM accounts")
    cmap, left, right = prepared(apps.urls)
    report = verify(cmap, left, right, limit=5)
    assert report.only_left_count == 300
    assert report.only_left == [(f"C{i:05d}",) for i in range(5)]


def test_a_table_larger_than_max_keys_is_verified_in_hash_range_passes(apps: Apps) -> None:
    fill(apps, 1000)
    apps.crm.execute("DELETE FROM accounts WHERE account_number = 'C00500'")
    apps.crm.execute("UPDATE accounts SET name = 'changed' WHERE account_number = 'C00900'")
    cmap, left, right = prepared(apps.urls)
    whole = verify(cmap, left, right)
    split = verify(cmap, left, right, max_keys=300)
    assert (whole.passes, split.passes) == (1, 4)
    assert split.only_left == whole.only_left == [("C00500",)]
    assert [d.key for d in split.differing] == [d.key for d in whole.differing] == [("C00900",)]
    assert (split.left, split.right) == (whole.left, whole.right) == (1000, 999)


def test_numbers_compare_by_value_across_postgresql_numeric_and_mariadb_decimal(
    tmp_path: Path,
) -> None:
    pg, maria = PostgresHarness(tmp_path), MysqlHarness(tmp_path)
    try:
        pg.db.execute(
            f"CREATE TABLE {pg.table('customers')} (account varchar(20) PRIMARY KEY,"
            " name varchar(100) NOT NULL, credit_limit numeric(12, 2), phone text)"
        )
        maria.db.execute(
            "CREATE TABLE accounts (account_number VARCHAR(20) PRIMARY KEY,"
            " name VARCHAR(100), credit_limit DECIMAL(12, 3), telephone VARCHAR(40))"
        )
        pg.db.execute(
            f"INSERT INTO {pg.table('customers')} VALUES ('C1', 'A', 5000.50, NULL),"
            " ('C2', 'B', 1.25, NULL)"
        )
        maria.db.execute(
            "INSERT INTO accounts VALUES ('C1', 'A', 5000.500, NULL), ('C2', 'B', 1.251, NULL)"
        )
        cmap, left, right = prepared({"finance": pg.url, "crm": maria.url})
        try:
            report = verify(cmap, left, right)
        finally:
            left.close()
            right.close()
        assert [(d.key, d.fields) for d in report.differing] == [
            (("C2",), {"credit_limit": (Decimal("1.25"), Decimal("1.251"))})
        ]
    finally:
        pg.close()
        maria.close()


# -- through the engine, on a real Ray -------------------------------------------------------


@pytest.mark.ray
def test_engine_verify_is_ok_after_sync_and_names_a_difference_made_by_hand(
    engine: Any, apps: Apps
) -> None:
    fill(apps, 50)
    apps.finance.execute("INSERT INTO customers VALUES ('L1', 'left only', NULL, NULL)")
    start_sync(engine, apps)
    assert engine.verify("customers").ok
    engine.pause("customers")
    apps.crm.execute("UPDATE accounts SET telephone = 'by hand' WHERE account_number = 'L1'")
    report = engine.verify("customers")
    assert not report.ok
    assert [(d.key, d.fields) for d in report.differing] == [
        (("L1",), {"phone": (None, "by hand")})
    ]


@pytest.mark.ray
def test_cli_verify_exits_0_in_sync_and_1_on_a_difference(
    engine: Any, apps: Apps, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(apps, 20)
    start_sync(engine, apps)
    state = str(engine.state_dir)
    assert main(["verify", "customers", "--state", state]) == 0
    out = capsys.readouterr().out
    assert "map 'customers': finance.customers (20 records) <-> crm.accounts (20 records)" in out
    assert "in sync in " in out
    engine.pause("customers")
    apps.finance.execute("DELETE FROM customers WHERE account = 'C00004'")
    apps.crm.execute("UPDATE accounts SET name = 'x' WHERE account_number = 'C00005'")
    assert main(["verify", "customers", "--state", state]) == 1
    out = capsys.readouterr().out
    assert "2 differences" in out
    assert "only in crm: 1: 'C00004'" in out
    assert "'C00005': name: 'name 5' in finance, 'x' in crm" in out


def test_cli_verify_of_an_unknown_map_or_state_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", "customers", "--state", str(tmp_path / "nowhere")]) == 2
    assert "no engine state in" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
