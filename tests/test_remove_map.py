"""`remove_map` and `dualsync maps remove`: a map's capture leaves both apps, its state goes.

`stop` keeps the capture (a restarted engine resumes from it); removing the map is what
uninstalls it. On a real Ray, real SQLite files and the PostgreSQL and MariaDB servers.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from engine import MapError
from engine.cli import main
from engine.maps import KeyComparisonWarning

from conftest import CUSTOMERS, Apps, start_sync, wait_until
from harness_mysql import MysqlHarness
from harness_postgresql import PostgresHarness

pytestmark = pytest.mark.ray


def sqlite_leftovers(con: sqlite3.Connection) -> list[str]:
    """The engine's objects of the customers map in a SQLite file: triggers and tables
    named after it, and its rows in the shared tables."""
    found = [
        f"{kind} {name}"
        for kind, name in con.execute("SELECT type, name FROM sqlite_master")
        if name.startswith("_ds_") and "customers" in name
    ]
    for table, column in (("_ds_session", "name"), ("_ds_receipts", "capture")):
        if con.execute(f"SELECT 1 FROM sqlite_master WHERE name = '{table}'").fetchone():
            found += [
                f"{table} row {r[0]}"
                for r in con.execute(f"SELECT {column} FROM {table} WHERE {column} LIKE 'cust%'")
            ]
    return found


def test_remove_map_uninstalls_capture_from_both_apps_and_drops_its_state(
    engine: Any, apps: Apps
) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 10.0, NULL)")
    start_sync(engine, apps)
    assert sqlite_leftovers(apps.finance) and sqlite_leftovers(apps.crm)
    state = engine.state_dir / "maps" / "customers"
    assert state.exists()

    engine.remove_map("customers")

    assert sqlite_leftovers(apps.finance) == []
    assert sqlite_leftovers(apps.crm) == []
    assert not state.exists()
    assert "customers" not in engine.status()
    with pytest.raises(MapError, match="no such map"):
        engine.play("customers")
    # The applications keep working, and nothing captures their changes any more.
    apps.finance.execute("INSERT INTO customers VALUES ('C2', 'Fabrikam', NULL, NULL)")
    apps.crm.execute("DELETE FROM accounts")
    assert sqlite_leftovers(apps.finance) == []


def test_a_removed_map_submitted_again_starts_from_scratch(engine: Any, apps: Apps) -> None:
    start_sync(engine, apps)
    engine.remove_map("customers")
    apps.finance.execute("INSERT INTO customers VALUES ('C9', 'New', NULL, '1')")
    start_sync(engine, apps)  # the initial sync copies what exists now
    assert apps.right()["C9"] == ("C9", "New", None, "1")
    apps.crm.execute("UPDATE accounts SET name = 'Newer' WHERE account_number = 'C9'")
    engine.wait_idle(timeout=60)
    assert apps.left()["C9"][1] == "Newer"


def test_removing_an_unknown_map_is_refused(engine: Any) -> None:
    with pytest.raises(MapError, match="no such map"):
        engine.remove_map("nope")


def test_stop_keeps_the_capture_so_a_restarted_engine_resumes(
    ray_runtime: None, apps: Apps, tmp_path: Path
) -> None:
    from engine import SyncEngine

    eng = SyncEngine.start(state_dir=tmp_path / "state")
    start_sync(eng, apps)
    eng.stop()
    assert sqlite_leftovers(apps.finance)  # still installed: changes queue meanwhile
    apps.finance.execute("INSERT INTO customers VALUES ('C3', 'While stopped', NULL, NULL)")
    eng = SyncEngine.start(state_dir=tmp_path / "state")
    try:
        eng.wait_idle(timeout=60)
        assert "C3" in apps.right()
    finally:
        eng.stop()


def test_cli_maps_remove_removes_a_map_of_a_stopped_engine(
    ray_runtime: None, apps: Apps, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine import SyncEngine

    eng = SyncEngine.start(state_dir=tmp_path / "state")
    start_sync(eng, apps)
    eng.stop()
    state = str(tmp_path / "state")
    assert main(["maps", "remove", "customers", "--state", state]) == 0
    assert "map 'customers' removed" in capsys.readouterr().out
    assert sqlite_leftovers(apps.finance) == sqlite_leftovers(apps.crm) == []
    assert main(["maps", "remove", "customers", "--state", state]) == 1
    assert "no such map" in capsys.readouterr().err


def test_remove_map_leaves_nothing_in_postgresql_and_mariadb(engine: Any, tmp_path: Path) -> None:
    pg, maria = PostgresHarness(tmp_path), MysqlHarness(tmp_path)
    try:
        pg.db.execute(
            f"CREATE TABLE {pg.table('customers')} (account varchar(20) PRIMARY KEY,"
            " name varchar(100) NOT NULL, credit_limit numeric(12, 2), phone text)"
        )
        maria.db.execute(
            "CREATE TABLE accounts (account_number VARCHAR(20) PRIMARY KEY,"
            " name VARCHAR(100), credit_limit DECIMAL(12, 2), telephone VARCHAR(40))"
        )
        engine.add_app("finance", pg.url)
        engine.add_app("crm", maria.url)
        with pytest.warns(KeyComparisonWarning, match="utf8mb4_general_ci"):
            engine.submit_map(CUSTOMERS)
        engine.play("customers")
        pg.db.execute(f"INSERT INTO {pg.table('customers')} VALUES ('C1', 'A', 1, NULL)")
        wait_until(lambda: maria.db.execute("SELECT count(*) FROM accounts")[0][0] == 1, 60, "C1")

        def pg_objects() -> list[Any]:
            return [
                *pg.db.execute(
                    "SELECT relname FROM pg_class WHERE relnamespace = %s::regnamespace"
                    " AND relname LIKE %s",
                    (pg.schema, "%customers%"),
                ).fetchall(),
                *pg.db.execute(
                    "SELECT tgname FROM pg_trigger WHERE tgname LIKE '\\_ds\\_%%'"
                    " AND tgrelid = %s::regclass",
                    (f"{pg.schema}.customers",),
                ).fetchall(),
                *pg.db.execute(
                    "SELECT proname FROM pg_proc WHERE pronamespace = %s::regnamespace",
                    (pg.schema,),
                ).fetchall(),
            ]

        def maria_objects() -> list[Any]:
            schema = maria.database
            found = maria.db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
                " AND table_name LIKE '\\_ds\\_log%%'",
                (schema,),
            )
            found += maria.db.execute(
                "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = %s",
                (schema,),
            )
            found += maria.db.execute("SELECT name FROM _ds_gate")
            return list(found)

        names = [r[0] for r in pg_objects()]
        assert any(n.startswith("_ds_") for n in names), names
        assert maria_objects()
        engine.remove_map("customers")
        assert sorted(r[0] for r in pg_objects()) == ["customers", "customers_pkey"]
        assert maria_objects() == []
    finally:
        pg.close()
        maria.close()
