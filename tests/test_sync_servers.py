"""A PostgreSQL `finance` and a MariaDB `crm` kept in sync by one map, on a real Ray.

The servers come from DUALSYNC_PG_URL and DUALSYNC_MYSQL_URL (this machine's by default);
each test gets a fresh schema and database, dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.maps import KeyComparisonWarning

from conftest import CUSTOMERS, next_ms, wait_until
from harness_mysql import MysqlHarness
from harness_postgresql import PostgresHarness

pytestmark = pytest.mark.ray


class Servers:
    """finance.customers on PostgreSQL, crm.accounts on MariaDB, changed as other programs."""

    def __init__(self, tmp_path: Path) -> None:
        self.pg = PostgresHarness(tmp_path)
        self.maria = MysqlHarness(tmp_path)
        self.pg.db.execute(
            f"CREATE TABLE {self.pg.table('customers')} (account varchar(20) PRIMARY KEY,"
            " name varchar(100) NOT NULL, credit_limit numeric(12, 2), phone text)"
        )
        self.maria.db.execute(
            "CREATE TABLE accounts (account_number VARCHAR(20) PRIMARY KEY,"
            " name VARCHAR(100), credit_limit DECIMAL(12, 2), telephone VARCHAR(40))"
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
        self.urls = {"finance": self.pg.url, "crm": self.maria.url}

    def finance(self, sql: str, *args: Any) -> None:
        self.pg.db.execute(sql.replace("customers", self.pg.table("customers")), args)

    def crm(self, sql: str, *args: Any) -> None:
        self.maria.db.execute(sql, args)

    def left(self) -> dict[str, tuple[Any, ...]]:
        rows = self.pg.db.execute(f"SELECT * FROM {self.pg.table('customers')}").fetchall()
        return {r[0]: tuple(r) for r in rows}

    def right(self) -> dict[str, tuple[Any, ...]]:
        rows = self.maria.db.execute(
            "SELECT account_number, name, credit_limit, telephone FROM accounts"
        )
        return {r[0]: tuple(r) for r in rows}

    def close(self) -> None:
        self.pg.close()
        self.maria.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    s.close()


def test_postgresql_finance_and_mariadb_crm_converge_with_concurrent_edits(
    engine: Any, servers: Servers
) -> None:
    servers.finance(
        "INSERT INTO customers VALUES (%s, %s, %s, %s), (%s, %s, %s, %s)",
        "C1", "Contoso", Decimal("5000.00"), "555-1",
        "C2", "Fabrikam", Decimal("12000.50"), "555-2",
    )  # fmt: skip
    servers.crm("INSERT INTO accounts VALUES ('K1', 'Tailspin ü', NULL, '555-9')")
    for name, url in servers.urls.items():
        engine.add_app(name, url)
    with pytest.warns(KeyComparisonWarning, match="utf8mb4_general_ci"):
        engine.submit_map(CUSTOMERS)
    engine.play("customers")
    engine.wait_idle(timeout=60)
    assert servers.right()["C2"] == ("C2", "Fabrikam", Decimal("12000.50"), "555-2")
    assert servers.left()["K1"] == ("K1", "Tailspin ü", None, "555-9")

    # Each way, while the other side also edits.
    servers.finance("UPDATE customers SET name = 'Contoso Ltd' WHERE account = 'C1'")
    servers.crm("UPDATE accounts SET telephone = '555-7' WHERE account_number = 'C2'")
    engine.wait_idle(timeout=60)
    assert servers.right()["C1"][1] == "Contoso Ltd"
    assert servers.left()["C2"][3] == "555-7"

    # Concurrent edits, made while the map is paused: different fields both survive, the
    # same field goes to the later edit (lww), a delete against an earlier update wins.
    engine.pause("customers")
    servers.finance("UPDATE customers SET name = 'From ERP', phone = '1' WHERE account = 'C1'")
    servers.crm("UPDATE accounts SET telephone = '2' WHERE account_number = 'K1'")
    servers.finance("UPDATE customers SET name = 'Tailspin Toys' WHERE account = 'K1'")
    servers.crm("UPDATE accounts SET name = 'Fabrikam (CRM)' WHERE account_number = 'C2'")
    next_ms()
    servers.crm("UPDATE accounts SET name = 'From CRM' WHERE account_number = 'C1'")
    servers.finance("DELETE FROM customers WHERE account = 'C2'")
    engine.play("customers")
    engine.wait_idle(timeout=60)

    left, right = servers.left(), servers.right()
    assert left == right
    assert engine.verify("customers").ok
    assert left["C1"] == ("C1", "From CRM", Decimal("5000.00"), "1")
    assert left["K1"] == ("K1", "Tailspin Toys", None, "2")
    assert "C2" not in left
    conflicts = {(c["key"], c["field"]): c for c in engine.conflicts("customers")}
    assert conflicts[(("C1",), "name")]["winner"]["value"] == "From CRM"
    assert (("C2",), "$exists") in conflicts

    # Nothing echoes: once quiet, neither change log grows.
    sides = engine.status()["customers"]["sides"]
    heads = (sides["left"]["reader"]["head"], sides["right"]["reader"]["head"])
    polls = min(sides[s]["reader"]["polls"] for s in ("left", "right"))

    def polled_again() -> bool:
        now = engine.status()["customers"]["sides"]
        return min(now[s]["reader"]["polls"] for s in ("left", "right")) >= polls + 10

    wait_until(polled_again, 30, "10 more polls on each side")
    now = engine.status()["customers"]["sides"]
    assert (now["left"]["reader"]["head"], now["right"]["reader"]["head"]) == heads
    assert engine.errors("customers") == []


def test_a_value_the_target_cannot_hold_is_a_row_error_not_a_truncation(
    engine: Any, servers: Servers
) -> None:
    for name, url in servers.urls.items():
        engine.add_app(name, url)
    with pytest.warns(KeyComparisonWarning, match="utf8mb4_general_ci"):
        engine.submit_map(CUSTOMERS)
    engine.play("customers")
    engine.wait_idle(timeout=60)
    servers.finance(
        "INSERT INTO customers VALUES ('C1', 'ok', 1, NULL), ('C2', 'ok', 1, %s)", "x" * 41
    )
    engine.wait_idle(timeout=60)
    assert sorted(servers.right()) == ["C1"]  # telephone is VARCHAR(40) in crm
    [error] = engine.errors("customers")
    assert error["key"] == ("C2",) and error["field"] == "phone" and error["app"] == "crm"
    assert error["payload"]["values"]["phone"] == "x" * 41
