"""Schema drift while a map plays: a dropped, renamed or re-created table or column on
either side puts the map in a drift state (status, errors, wait_idle raising); once the
schema fits again the engine reinstalls its capture and repairs, losing nothing the side
that kept its data holds. On a real Ray, SQLite files and the servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import SchemaError
from engine.maps import KeyComparisonWarning

from conftest import CRM_SCHEMA, CUSTOMERS, Apps, start_sync, wait_until
from harness_mysql import MysqlHarness
from harness_postgresql import PostgresHarness

pytestmark = pytest.mark.ray

TIMEOUT = 60


def health(engine: Any) -> dict[str, Any]:
    return engine.status()["customers"]["health"]  # type: ignore[no-any-return]


def drifting(engine: Any) -> bool:
    return health(engine)["state"] == "drift"


def healthy_again(engine: Any) -> bool:
    h = health(engine)
    return h["state"] == "ok" and h["last_repair"] is not None


def kinds(engine: Any) -> list[str]:
    return [e["kind"] for e in engine.errors("customers")]


def test_a_dropped_target_table_is_drift_and_once_recreated_is_repaired(
    engine: Any, apps: Apps
) -> None:
    apps.finance.execute(
        "INSERT INTO customers VALUES ('C1', 'Contoso', 10.0, '1'), ('C2', 'Fabrikam', NULL, '2')"
    )
    start_sync(engine, apps)
    apps.crm.execute("DROP TABLE accounts")

    wait_until(lambda: drifting(engine), TIMEOUT, "the drift to be seen")
    [problem] = health(engine)["problems"]
    assert problem["side"] == "right"
    assert "'accounts' does not exist in app 'crm'" in problem["message"]
    [entry] = [e for e in engine.errors("customers") if e["kind"] == "schema"]
    assert entry["app"] == "crm" and "does not exist" in entry["message"]
    with pytest.raises(SchemaError, match="does not exist in app 'crm'"):
        engine.wait_idle(timeout=5)

    # Meanwhile finance keeps working (its changes queue), and the table comes back empty,
    # with a row the application writes before the engine has reinstalled its capture.
    apps.finance.execute("UPDATE customers SET name = 'Contoso Ltd' WHERE account = 'C1'")
    apps.crm.execute(CRM_SCHEMA)
    apps.crm.execute("INSERT INTO accounts VALUES ('K3', 'Written while uncaptured', NULL, '3')")

    wait_until(lambda: healthy_again(engine), TIMEOUT, "the repair")
    engine.wait_idle(timeout=TIMEOUT)
    assert apps.converged(), (apps.left(), apps.right())
    assert apps.right()["C1"] == ("C1", "Contoso Ltd", 10.0, "1")
    assert apps.right()["C2"] == ("C2", "Fabrikam", None, "2")
    assert apps.left()["K3"] == ("K3", "Written while uncaptured", None, "3")
    assert engine.verify("customers").ok
    repair = health(engine)["last_repair"]
    assert repair["written"]["right"] == 2 and repair["recaptured"]["right"] == 1
    assert "repair" in kinds(engine)

    # Capture works again on the re-created table.
    apps.crm.execute("UPDATE accounts SET name = 'Fabrikam (CRM)' WHERE account_number = 'C2'")
    engine.wait_idle(timeout=TIMEOUT)
    assert apps.left()["C2"][1] == "Fabrikam (CRM)"


def test_a_renamed_source_column_is_drift_until_renamed_back(engine: Any, apps: Apps) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 10.0, '1')")
    start_sync(engine, apps)
    apps.finance.execute("ALTER TABLE customers RENAME COLUMN phone TO telephone_number")
    wait_until(lambda: drifting(engine), TIMEOUT, "the drift to be seen")
    [problem] = health(engine)["problems"]
    assert problem["side"] == "left" and problem["field"] == "phone"
    # The application keeps writing; its capture is suspended, nothing breaks.
    apps.finance.execute("INSERT INTO customers VALUES ('C2', 'New', NULL, '2')")
    apps.finance.execute("ALTER TABLE customers RENAME COLUMN telephone_number TO phone")
    wait_until(lambda: healthy_again(engine), TIMEOUT, "the repair")
    engine.wait_idle(timeout=TIMEOUT)
    assert apps.right()["C2"] == ("C2", "New", None, "2")
    assert apps.converged()


def test_a_table_dropped_and_created_again_between_two_looks_is_repaired(
    engine: Any, apps: Apps
) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 10.0, '1')")
    start_sync(engine, apps)
    # Dropped and re-created at once: the schema fits, but the capture triggers are gone.
    apps.crm.execute("DROP TABLE accounts")
    apps.crm.execute(CRM_SCHEMA)
    apps.crm.execute("INSERT INTO accounts VALUES ('K1', 'Uncaptured', NULL, NULL)")
    wait_until(lambda: healthy_again(engine), TIMEOUT, "the repair")
    engine.wait_idle(timeout=TIMEOUT)
    assert apps.right()["C1"] == ("C1", "Contoso", 10.0, "1")
    assert apps.left()["K1"] == ("K1", "Uncaptured", None, None)
    problems = [e for e in engine.errors("customers") if e["kind"] == "schema"]
    assert problems and "capture triggers" in problems[-1]["message"]


class Servers:
    """finance.customers on PostgreSQL, crm.accounts on MariaDB."""

    PG_DDL = (
        "CREATE TABLE {t} (account varchar(20) PRIMARY KEY, name varchar(100) NOT NULL,"
        " credit_limit numeric(12, 2), phone text)"
    )

    def __init__(self, tmp_path: Path) -> None:
        self.pg = PostgresHarness(tmp_path)
        self.maria = MysqlHarness(tmp_path)
        self.pg.db.execute(self.PG_DDL.format(t=self.pg.table("customers")))
        self.maria.db.execute(
            "CREATE TABLE accounts (account_number VARCHAR(20) PRIMARY KEY,"
            " name VARCHAR(100), credit_limit DECIMAL(12, 2), telephone VARCHAR(40))"
        )
        self.urls = {"finance": self.pg.url, "crm": self.maria.url}

    def finance(self, sql: str, *args: Any) -> None:
        self.pg.db.execute(sql.replace("customers", self.pg.table("customers")), args)

    def left(self) -> dict[str, tuple[Any, ...]]:
        rows = self.pg.db.execute(f"SELECT * FROM {self.pg.table('customers')}").fetchall()
        return {r[0]: tuple(r) for r in rows}

    def right(self) -> dict[str, tuple[Any, ...]]:
        rows = self.maria.db.execute(
            "SELECT account_number, name, credit_limit, telephone FROM accounts"
        )
        return {r[0]: tuple(r) for r in rows}

    def start(self, engine: Any) -> None:
        for name, url in self.urls.items():
            engine.add_app(name, url)
        with pytest.warns(KeyComparisonWarning, match="utf8mb4_general_ci"):
            engine.submit_map(CUSTOMERS)
        engine.play("customers")
        engine.wait_idle(timeout=TIMEOUT)

    def close(self) -> None:
        self.pg.close()
        self.maria.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    s.close()


def test_a_dropped_mariadb_column_never_breaks_the_applications_writes_and_is_repaired(
    engine: Any, servers: Servers
) -> None:
    servers.finance(
        "INSERT INTO customers VALUES ('C1', 'Contoso', 10, '555-1'),"
        " ('C2', 'Fabrikam', 2, '555-2')"
    )
    servers.start(engine)
    assert servers.right()["C1"][3] == "555-1"
    servers.maria.db.execute("ALTER TABLE accounts DROP COLUMN telephone")

    # Our triggers name the dropped column: MariaDB fails every write of the application
    # until the engine has taken them away.
    def crm_can_write() -> bool:
        try:
            servers.maria.db.execute(
                "INSERT INTO accounts (account_number, name) VALUES ('K1', 'While drifting')"
            )
        except Exception:
            return False
        return True

    wait_until(crm_can_write, TIMEOUT, "the application's writes to work again")
    wait_until(lambda: drifting(engine), TIMEOUT, "the drift to be seen")
    [problem] = health(engine)["problems"]
    assert problem["side"] == "right" and problem["field"] == "telephone"
    with pytest.raises(SchemaError, match="'telephone' does not exist"):
        engine.wait_idle(timeout=5)

    servers.maria.db.execute("ALTER TABLE accounts ADD COLUMN telephone VARCHAR(40)")
    wait_until(lambda: healthy_again(engine), TIMEOUT, "the repair")
    engine.wait_idle(timeout=TIMEOUT)
    right = servers.right()
    assert right["C1"][3] == "555-1" and right["C2"][3] == "555-2"  # restored from finance
    assert servers.left()["K1"][1] == "While drifting"  # recaptured, then synced
    assert servers.left() == right
    assert engine.verify("customers").ok


def test_a_dropped_postgresql_table_created_again_gets_its_records_back(
    engine: Any, servers: Servers
) -> None:
    servers.finance("INSERT INTO customers VALUES ('C1', 'Contoso', 10, '1')")
    servers.maria.db.execute("INSERT INTO accounts VALUES ('K1', 'Tailspin', NULL, '2')")
    servers.start(engine)
    servers.finance("DROP TABLE customers")
    wait_until(lambda: drifting(engine), TIMEOUT, "the drift to be seen")
    servers.maria.db.execute(
        "UPDATE accounts SET name = 'Tailspin Toys' WHERE account_number = 'K1'"
    )
    servers.finance(Servers.PG_DDL.replace("{t}", "customers"))
    servers.finance("INSERT INTO customers VALUES ('C9', 'Uncaptured', NULL, NULL)")
    wait_until(lambda: healthy_again(engine), TIMEOUT, "the repair")
    engine.wait_idle(timeout=TIMEOUT)
    left, right = servers.left(), servers.right()
    assert left == right
    assert set(left) == {"C1", "K1", "C9"}
    assert left["K1"][1] == "Tailspin Toys"
    assert engine.verify("customers").ok
