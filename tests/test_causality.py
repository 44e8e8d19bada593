"""Causality, clocks and keys on a real Ray with real applications.

The cases the merge core was redone for: a delete against a same-value re-insert on the
other side (in both orders), a REPLACE of a row the application holds, an application clock
an hour ahead then corrected, a key change racing an edit, concurrent renames.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.maps import KeyComparisonWarning
from engine.pipeline import partition_of

from conftest import CUSTOMERS, Apps, next_ms, start_sync, wait_until
from harness_mysql import MysqlHarness

pytestmark = pytest.mark.ray


def paused(engine: Any, *edits: tuple[Any, str, tuple[Any, ...]]) -> None:
    """Make ``edits`` while the map is paused, one strictly after the other, then sync."""
    engine.pause("customers")
    for con, sql, params in edits:
        next_ms()
        con.execute(sql, params)
    engine.play("customers")
    engine.wait_idle(timeout=60)


def later_by(ms: int) -> None:
    """Let the wall clock move on by ``ms`` (the next edit is made that much later)."""
    start = time.time_ns() // 1_000_000
    wait_until(lambda: time.time_ns() // 1_000_000 >= start + ms, 5, f"{ms} ms to pass")


ROW = ("C1", "Contoso", 5000.0, "555-1")


def test_delete_then_same_value_reinsert_on_the_other_side_survives(
    engine: Any, apps: Apps
) -> None:
    apps.finance.execute("INSERT INTO customers VALUES (?, ?, ?, ?)", ROW)
    start_sync(engine, apps)
    paused(
        engine,
        (apps.finance, "DELETE FROM customers WHERE account = ?", ("C1",)),
        (apps.crm, "DELETE FROM accounts WHERE account_number = ?", ("C1",)),
        (apps.crm, "INSERT INTO accounts VALUES (?, ?, ?, ?)", ROW),
    )
    # crm's re-insert is the later of it and finance's concurrent delete: it stays
    assert apps.left() == apps.right() == {"C1": ROW}
    [conflict] = engine.conflicts("customers")
    assert conflict["field"] == "$exists"
    assert conflict["winner"]["origin"] == "crm"
    assert [c["value"] for c in conflict["candidates"]] == ["deleted", "updated"]


def test_delete_then_same_value_reinsert_survives_the_other_way_round(
    engine: Any, apps: Apps
) -> None:
    apps.finance.execute("INSERT INTO customers VALUES (?, ?, ?, ?)", ROW)
    start_sync(engine, apps)
    paused(
        engine,
        (apps.crm, "DELETE FROM accounts WHERE account_number = ?", ("C1",)),
        (apps.finance, "DELETE FROM customers WHERE account = ?", ("C1",)),
        (apps.finance, "INSERT INTO customers VALUES (?, ?, ?, ?)", ROW),
    )
    assert apps.left() == apps.right() == {"C1": ROW}
    [conflict] = engine.conflicts("customers")
    assert conflict["winner"]["origin"] == "finance"


def test_a_replace_of_a_held_row_is_an_edit_on_top_of_it(engine: Any, apps: Apps) -> None:
    apps.finance.execute("INSERT INTO customers VALUES (?, ?, ?, ?)", ROW)
    spec = {**CUSTOMERS, "conflict": {"prefer": "crm"}}
    start_sync(engine, apps, spec)
    # SQLite captures INSERT OR REPLACE of a row it holds as an insert, without an old image
    apps.finance.execute(
        "INSERT OR REPLACE INTO customers VALUES (?, ?, ?, ?)", ("C1", "Replaced", 5000.0, "555-1")
    )
    engine.wait_idle(timeout=30)
    # made on top of what finance held: it wins, even though the policy prefers crm
    assert apps.right()["C1"][1] == "Replaced"
    assert apps.converged()
    assert engine.conflicts("customers") == []


def test_a_key_change_racing_an_edit_ends_with_one_record_holding_both(
    ray_runtime: None, tmp_path: Path
) -> None:
    from engine import SyncEngine

    apps = Apps(tmp_path)
    # the new key lives in the other partition: the record moves between partitions
    old = "C1"
    new = next(f"N{i}" for i in range(100) if partition_of([f"N{i}"], 2) != partition_of([old], 2))
    apps.finance.execute("INSERT INTO customers VALUES (?, ?, ?, ?)", ROW)
    with SyncEngine.start(state_dir=tmp_path / "state", partitions=2) as engine:
        start_sync(engine, apps)
        paused(
            engine,
            (apps.finance, "UPDATE customers SET account = ? WHERE account = ?", (new, old)),
            (apps.crm, "UPDATE accounts SET telephone = ? WHERE account_number = ?", ("9", old)),
        )
        expected = {new: (new, "Contoso", 5000.0, "9")}
        assert apps.left() == apps.right() == expected
        assert engine.record("customers", new) == dict(
            zip(("account", "name", "credit_limit", "phone"), expected[new], strict=True)
        )
        assert engine.record("customers", old) == engine.record("customers", new)
        status = engine.status()["customers"]
        assert status["records"] == 1
        assert status["sides"]["left"]["reader"]["moves"] == 1
        assert engine.errors("customers") == []


def test_two_sides_renaming_one_record_concurrently_end_with_one_record(
    engine: Any, apps: Apps
) -> None:
    apps.finance.execute("INSERT INTO customers VALUES (?, ?, ?, ?)", ROW)
    start_sync(engine, apps)
    paused(
        engine,
        (apps.finance, "UPDATE customers SET account = 'F1' WHERE account = 'C1'", ()),
        (apps.crm, "UPDATE accounts SET account_number = 'R1' WHERE account_number = 'C1'", ()),
    )
    # lww: crm's rename is the later one; finance is moved there too
    renamed = ("R1", "Contoso", 5000.0, "555-1")
    assert apps.left() == apps.right() == {"R1": renamed}
    [conflict] = engine.conflicts("customers")
    assert conflict["field"] == "account"
    assert conflict["winner"]["value"] == "R1"
    assert engine.status()["customers"]["records"] == 1


# -- application clocks ------------------------------------------------------------------------

CRM_DDL = (
    "CREATE TABLE accounts (account_number VARCHAR(20) PRIMARY KEY, name VARCHAR(100),"
    " credit_limit DOUBLE, telephone VARCHAR(40)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
)
HOUR_MS = 3_600_000


@pytest.fixture
def maria(tmp_path: Path) -> Iterator[MysqlHarness]:
    harness = MysqlHarness(tmp_path)
    harness.db.execute(CRM_DDL)
    yield harness
    harness.close()


def test_an_application_clock_an_hour_ahead_loses_to_later_edits_and_recovers(
    ray_runtime: None, tmp_path: Path, maria: MysqlHarness
) -> None:
    """crm's MariaDB session sets its own clock (@@timestamp) an hour ahead, then back."""
    from engine import SyncEngine

    apps = Apps(tmp_path)  # finance: SQLite; crm: MariaDB
    db = maria.db

    def crm(sql: str, *args: Any, skew_ms: int = 0) -> None:
        if skew_ms:
            at = (time.time_ns() // 1_000_000 + skew_ms) / 1000
            db.execute(f"SET timestamp = {at:.3f}")
        else:
            db.execute("SET timestamp = DEFAULT")
        db.execute(sql, args)

    def crm_name() -> str:
        return str(db.execute("SELECT name FROM accounts WHERE account_number = 'C1'")[0][0])

    def finance_name() -> str:
        return str(apps.left()["C1"][1])

    apps.finance.execute("INSERT INTO customers VALUES (?, ?, ?, ?)", ROW)
    with SyncEngine.start(state_dir=tmp_path / "state", clock_tolerance_ms=200) as engine:
        engine.add_app("finance", apps.urls["finance"])
        engine.add_app("crm", maria.url)
        with pytest.warns(KeyComparisonWarning, match="utf8mb4_general_ci"):
            engine.submit_map(CUSTOMERS)
        engine.play("customers")
        engine.wait_idle(timeout=60)

        def right() -> dict[str, Any]:
            return engine.status()["customers"]["sides"]["right"]  # type: ignore[no-any-return]

        # live: crm's changes show its clock an hour ahead
        crm("UPDATE accounts SET telephone = '1' WHERE account_number = 'C1'", skew_ms=HOUR_MS)
        engine.wait_idle(timeout=30)
        assert HOUR_MS - 5_000 < right()["skew_ms"] <= HOUR_MS
        assert right()["clock_tolerance_ms"] == 200
        [note] = [e for e in engine.errors("customers") if e["kind"] == "clock"]
        assert "ahead" in note["message"] and note["app"] == "crm"

        # paused: crm renames C1, and finance half a second later: finance's is the later
        engine.pause("customers")
        crm("UPDATE accounts SET name = 'Crm' WHERE account_number = 'C1'", skew_ms=HOUR_MS)
        later_by(500)
        apps.finance.execute("UPDATE customers SET name = 'Fin' WHERE account = 'C1'")
        engine.play("customers")
        engine.wait_idle(timeout=30)
        assert crm_name() == finance_name() == "Fin"
        [conflict] = [c for c in engine.conflicts("customers") if c["field"] == "name"]
        assert conflict["winner"]["origin"] == "finance"

        # crm's clock is right again: the next live look says so, and logs it
        crm("UPDATE accounts SET telephone = '2' WHERE account_number = 'C1'")
        engine.wait_idle(timeout=30)
        assert abs(right()["skew_ms"]) <= 200
        notes = [e for e in engine.errors("customers") if e["kind"] == "clock"]
        assert len(notes) == 2 and "back within" in notes[0]["message"]  # newest first

        # and crm wins a conflict it makes later, like anyone
        engine.pause("customers")
        apps.finance.execute("UPDATE customers SET name = 'Fin2' WHERE account = 'C1'")
        later_by(500)
        crm("UPDATE accounts SET name = 'Crm2' WHERE account_number = 'C1'")
        engine.play("customers")
        engine.wait_idle(timeout=30)
        assert crm_name() == finance_name() == "Crm2"


def test_a_restarted_reader_resumes_its_clock_after_its_last_stamp(engine: Any, apps: Apps) -> None:
    from actors import ray_api

    start_sync(engine, apps)
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, 'n', 1.0, NULL)", [(f"C{i}",) for i in range(50)]
    )
    engine.wait_idle(timeout=30)

    def left() -> dict[str, Any]:
        return engine.status()["customers"]["sides"]["left"]["reader"]  # type: ignore[no-any-return]

    before = left()
    assert before["clock"][0] > 0
    [reader, _] = engine._call("actors", "customers")["reader"]
    ray_api.kill(reader, restart=True)

    def restarted() -> bool:
        now = left()  # "unavailable" while it restarts
        return isinstance(now, dict) and now["pid"] != before["pid"]

    wait_until(restarted, 60, "the reader to restart")
    engine.wait_idle(timeout=60)
    assert tuple(left()["clock"]) >= tuple(before["clock"])
