"""Two SQLite applications kept in sync by the engine on a real (session) Ray."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from engine import MapError, SchemaError

from conftest import CUSTOMERS, Apps, next_ms, start_sync, wait_until

pytestmark = pytest.mark.ray


def test_existing_rows_are_copied_both_ways_at_initial_sync(engine: Any, apps: Apps) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    apps.crm.execute("INSERT INTO accounts VALUES ('K1', 'Tailspin', NULL, '555-2')")
    start_sync(engine, apps)
    assert apps.right()["C1"] == ("C1", "Contoso", 5000.0, "555-1")
    # credit_limit flows finance -> crm only: the crm record arrives without one.
    assert apps.left()["K1"] == ("K1", "Tailspin", None, "555-2")
    assert apps.converged()
    assert engine.verify("customers").ok


def test_edits_flow_left_to_right_and_right_to_left(engine: Any, apps: Apps) -> None:
    start_sync(engine, apps)
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    apps.crm.execute("INSERT INTO accounts VALUES ('K1', 'Tailspin', NULL, '555-2')")
    engine.wait_idle(timeout=30)
    apps.finance.execute("UPDATE customers SET phone = '555-9' WHERE account = 'K1'")
    apps.crm.execute("UPDATE accounts SET name = 'Contoso Group' WHERE account_number = 'C1'")
    engine.wait_idle(timeout=30)
    assert apps.left() == {
        "C1": ("C1", "Contoso Group", 5000.0, "555-1"),
        "K1": ("K1", "Tailspin", None, "555-9"),
    }
    assert apps.converged()
    assert engine.verify("customers").ok
    assert engine.record("customers", "C1") == {
        "account": "C1",
        "name": "Contoso Group",
        "credit_limit": 5000.0,
        "phone": "555-1",
    }


def _concurrently(engine: Any, *edits: tuple[Any, str, Sequence[Any]]) -> None:
    """Make ``edits`` while the map is paused, one strictly after the other, then sync."""
    engine.pause("customers")
    for con, sql, params in edits:
        next_ms()
        con.execute(sql, params)
    engine.play("customers")
    engine.wait_idle(timeout=30)


def test_concurrent_edits_to_different_fields_both_survive(engine: Any, apps: Apps) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    start_sync(engine, apps)
    _concurrently(
        engine,
        (apps.finance, "UPDATE customers SET name = ? WHERE account = 'C1'", ["Contoso Ltd"]),
        (apps.crm, "UPDATE accounts SET telephone = ? WHERE account_number = 'C1'", ["555-7"]),
    )
    assert apps.left()["C1"] == ("C1", "Contoso Ltd", 5000.0, "555-7")
    assert apps.converged()
    assert engine.conflicts("customers") == []


def test_concurrent_edits_to_same_field_the_later_wins_and_both_are_logged(
    engine: Any, apps: Apps
) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    start_sync(engine, apps)
    _concurrently(
        engine,
        (apps.finance, "UPDATE customers SET name = ? WHERE account = 'C1'", ["From ERP"]),
        (apps.crm, "UPDATE accounts SET name = ? WHERE account_number = 'C1'", ["From CRM"]),
    )
    assert apps.left()["C1"][1] == "From CRM"
    assert apps.converged()
    [conflict] = engine.conflicts("customers")
    assert conflict["key"] == ("C1",) and conflict["field"] == "name"
    assert [(c["origin"], c["value"]) for c in conflict["candidates"]] == [
        ("finance", "From ERP"),
        ("crm", "From CRM"),
    ]
    assert conflict["winner"]["value"] == "From CRM"
    assert conflict["rule"] == "lww"
    assert conflict["candidates"][0]["ts"] < conflict["candidates"][1]["ts"]


def test_prefer_policy_lets_its_app_win_same_field_conflicts(engine: Any, apps: Apps) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    start_sync(engine, apps, {**CUSTOMERS, "conflict": {"prefer": "finance"}})
    _concurrently(
        engine,
        (apps.finance, "UPDATE customers SET name = ? WHERE account = 'C1'", ["From ERP"]),
        (apps.crm, "UPDATE accounts SET name = ? WHERE account_number = 'C1'", ["From CRM"]),
    )
    assert apps.right()["C1"][1] == "From ERP"
    assert apps.converged()
    assert engine.conflicts("customers")[0]["rule"] == "prefer:finance"


def test_custom_resolver_registered_by_name_decides(engine: Any, apps: Apps) -> None:
    def longest(field: str, candidates: Sequence[Any]) -> Any:
        return max(candidates, key=lambda r: (len(str(r.value)), r.ts))

    engine.register_resolver("longest", longest)
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    start_sync(engine, apps, {**CUSTOMERS, "conflict": {"custom": "longest"}})
    _concurrently(
        engine,
        (apps.finance, "UPDATE customers SET name = ? WHERE account = 'C1'", ["A longer name"]),
        (apps.crm, "UPDATE accounts SET name = ? WHERE account_number = 'C1'", ["Short"]),
    )
    assert apps.left()["C1"][1] == "A longer name"
    assert apps.converged()
    assert engine.conflicts("customers")[0]["rule"] == "custom:longest"


def test_an_edit_made_after_seeing_the_other_side_wins_without_conflict(
    engine: Any, apps: Apps
) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    start_sync(engine, apps, {**CUSTOMERS, "conflict": {"prefer": "crm"}})
    # finance edits on top of what it has seen: causally newer, so it wins even though the
    # policy prefers crm.
    apps.finance.execute("UPDATE customers SET name = 'Contoso Ltd' WHERE account = 'C1'")
    engine.wait_idle(timeout=30)
    assert apps.right()["C1"][1] == "Contoso Ltd"
    assert engine.conflicts("customers") == []


def test_delete_propagates_and_the_record_can_be_created_again(engine: Any, apps: Apps) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    start_sync(engine, apps)
    apps.crm.execute("DELETE FROM accounts WHERE account_number = 'C1'")
    engine.wait_idle(timeout=30)
    assert "C1" not in apps.left()
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso II', 100.0, NULL)")
    engine.wait_idle(timeout=30)
    assert apps.right()["C1"] == ("C1", "Contoso II", 100.0, None)
    assert apps.converged()


def test_delete_against_a_concurrent_update_the_later_wins(engine: Any, apps: Apps) -> None:
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, ?, 1.0, NULL)", [("C1", "One"), ("C2", "Two")]
    )
    start_sync(engine, apps)
    _concurrently(
        engine,
        # C1: the delete is later, so the record goes.
        (apps.crm, "UPDATE accounts SET name = ? WHERE account_number = ?", ["One!", "C1"]),
        (apps.finance, "DELETE FROM customers WHERE account = ?", ["C1"]),
        # C2: the update is later, so the record stays, with the update.
        (apps.finance, "DELETE FROM customers WHERE account = ?", ["C2"]),
        (apps.crm, "UPDATE accounts SET name = ? WHERE account_number = ?", ["Two!", "C2"]),
    )
    assert sorted(apps.left()) == ["C2"]
    assert apps.left()["C2"] == ("C2", "Two!", 1.0, None)
    assert apps.converged()
    fields = {(c["key"], c["field"]) for c in engine.conflicts("customers")}
    assert {(("C1",), "$exists"), (("C2",), "$exists")} <= fields


def test_one_way_field_flows_only_from_its_source(engine: Any, apps: Apps) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    start_sync(engine, apps)
    apps.crm.execute("UPDATE accounts SET credit_limit = 1.0 WHERE account_number = 'C1'")
    engine.wait_idle(timeout=30)
    assert apps.left()["C1"][2] == 5000.0  # not synced back ...
    assert apps.right()["C1"][2] == 1.0  # ... and not reverted either
    apps.finance.execute("UPDATE customers SET credit_limit = 7000.0 WHERE account = 'C1'")
    engine.wait_idle(timeout=30)
    assert apps.right()["C1"][2] == 7000.0


def test_no_echo_loop_once_both_sides_are_quiet(engine: Any, apps: Apps) -> None:
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, ?, 1.0, NULL)", [(f"C{i}", f"n{i}") for i in range(50)]
    )
    start_sync(engine, apps)
    apps.crm.execute("UPDATE accounts SET name = 'x' WHERE account_number = 'C7'")
    apps.finance.execute("UPDATE customers SET phone = 'y' WHERE account = 'C8'")
    engine.wait_idle(timeout=30)

    def quiet_state() -> tuple[Any, ...]:
        sides = engine.status()["customers"]["sides"]
        return (
            sides["left"]["reader"]["head"],  # the last change sequence ever logged
            sides["right"]["reader"]["head"],
            sides["left"]["writer"]["records"],  # records written by the engine
            sides["right"]["writer"]["records"],
            apps.left(),
            apps.right(),
        )

    def polls() -> int:
        sides = engine.status()["customers"]["sides"]
        return min(sides["left"]["reader"]["polls"], sides["right"]["reader"]["polls"])

    before, polled, logged = quiet_state(), polls(), apps.log_rows()
    # Both readers look at their change tables many more times...
    wait_until(lambda: polls() >= polled + 20, 30, "20 more polls by each reader")
    # ... and find nothing: no change was logged, nothing was written anywhere.
    assert quiet_state() == before
    assert all(now <= then for now, then in zip(apps.log_rows(), logged, strict=True))
    assert apps.converged()


def test_pause_queues_changes_durably_and_play_catches_up(engine: Any, apps: Apps) -> None:
    start_sync(engine, apps)
    engine.pause("customers")
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, 'n', 1.0, NULL)", [(f"C{i}",) for i in range(300)]
    )
    apps.finance.execute("UPDATE customers SET name = 'last' WHERE account = 'C5'")
    assert apps.right() == {}
    assert apps.log_rows()[0] == 301  # queued at the source
    assert engine.status()["customers"]["mode"] == "pause"
    engine.play("customers")
    engine.wait_idle(timeout=30)
    assert len(apps.right()) == 300 and apps.right()["C5"][1] == "last"
    assert apps.converged()


def test_a_null_key_becomes_a_row_error_and_the_rest_still_syncs(engine: Any, apps: Apps) -> None:
    start_sync(engine, apps)
    # SQLite lets a TEXT primary key be NULL: a record the engine cannot identify.
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, ?, 1.0, NULL)",
        [("C1", "ok"), (None, "no key"), ("C2", "ok too")],
    )
    engine.wait_idle(timeout=30)
    assert sorted(apps.right()) == ["C1", "C2"]
    [error] = engine.errors("customers")
    assert error["kind"] == "read" and error["app"] == "finance"
    assert error["field"] == "account" and "NULL" in error["message"]
    assert error["payload"]["row"]["values"]["name"] == "no key"


def test_a_value_the_target_refuses_becomes_a_row_error_kept_for_retry(
    ray_runtime: None, tmp_path: Any
) -> None:
    from engine import SyncEngine

    apps = Apps(tmp_path, CRM_STRICT)
    with SyncEngine.start(state_dir=tmp_path / "state") as engine:
        start_sync(engine, apps)
        apps.finance.executemany(
            "INSERT INTO customers VALUES (?, ?, 1.0, NULL)",
            [("C1", "Short"), ("C2", "A name far too long for the CRM"), ("C3", "Fine")],
        )
        engine.wait_idle(timeout=30)
        assert sorted(apps.right()) == ["C1", "C3"]
        [error] = engine.errors("customers")
        assert error["kind"] == "write" and error["app"] == "crm"
        assert error["key"] == ("C2",) and error["field"] == "name"
        assert "CHECK" in error["message"]
        assert error["payload"]["values"]["name"] == "A name far too long for the CRM"
        # Fixing the record at its source syncs it.
        apps.finance.execute("UPDATE customers SET name = 'Shorter' WHERE account = 'C2'")
        engine.wait_idle(timeout=30)
        assert apps.right()["C2"] == ("C2", "Shorter", 1.0, None)


CRM_STRICT = (
    "CREATE TABLE accounts (account_number TEXT PRIMARY KEY,"
    " name TEXT CHECK (length(name) <= 20), credit_limit REAL, telephone TEXT)"
)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"left": {"app": "erp", "entity": "customers", "key": ["account"]}},
         MapError, ["'customers'", "left.app", "unknown app 'erp'"]),
        ({"right": {"app": "crm", "entity": "contacts", "key": ["account_number"]}},
         SchemaError, ["'customers'", "entity 'contacts' does not exist"]),
        ({"fields": [*CUSTOMERS["fields"][:3], {"left": "phone", "right": "mobile"}]},
         SchemaError, ["'customers'", "'mobile'", "does not exist in crm.accounts"]),
    ],
)  # fmt: skip
def test_a_bad_map_is_refused_naming_map_field_and_problem(
    engine: Any, apps: Apps, change: dict[str, Any], error: type[Exception], words: list[str]
) -> None:
    for name, url in apps.urls.items():
        engine.add_app(name, url)
    with pytest.raises(error) as raised:
        engine.submit_map({**CUSTOMERS, **change})
    for word in words:
        assert word in str(raised.value)


def test_a_key_without_unique_index_is_refused(ray_runtime: None, tmp_path: Any) -> None:
    from engine import SyncEngine

    apps = Apps(tmp_path, "CREATE TABLE accounts (account_number TEXT, name TEXT,"
                          " credit_limit REAL, telephone TEXT)")  # fmt: skip
    with SyncEngine.start(state_dir=tmp_path / "state") as engine:
        for name, url in apps.urls.items():
            engine.add_app(name, url)
        with pytest.raises(SchemaError, match="neither its primary key nor a unique index"):
            engine.submit_map(CUSTOMERS)


def test_status_reports_mode_counts_and_lag(engine: Any, apps: Apps) -> None:
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, 'n', 1.0, NULL)", [(f"C{i}",) for i in range(20)]
    )
    start_sync(engine, apps)
    status = engine.status()["customers"]
    assert status["mode"] == "play"
    assert status["records"] == 20
    assert status["sides"]["right"]["writes"] == 20
    assert status["sides"]["left"]["lag"] == 0 and status["sides"]["right"]["lag"] == 0
    assert status["errors"] == 0 and status["conflicts"] == 0


def test_a_resolver_registered_in_this_process_is_shipped_with_the_map(
    engine: Any, apps: Apps
) -> None:
    from engine import register_resolver

    @register_resolver("shortest_for_test")
    def shortest(field: str, candidates: Sequence[Any]) -> Any:
        return min(candidates, key=lambda r: (len(str(r.value)), r.ts))

    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.0, '555-1')")
    start_sync(engine, apps, {**CUSTOMERS, "conflict": {"custom": "shortest_for_test"}})
    _concurrently(
        engine,
        (apps.finance, "UPDATE customers SET name = ? WHERE account = 'C1'", ["Short"]),
        (apps.crm, "UPDATE accounts SET name = ? WHERE account_number = 'C1'", ["Much longer"]),
    )
    assert apps.right()["C1"][1] == "Short"
    assert apps.converged()


def test_two_maps_between_the_same_databases_sync_independently(engine: Any, apps: Apps) -> None:
    apps.finance.execute("CREATE TABLE vendors (code TEXT PRIMARY KEY, title TEXT)")
    apps.crm.execute("CREATE TABLE suppliers (id TEXT PRIMARY KEY, label TEXT)")
    vendors = {
        "name": "vendors",
        "left": {"app": "finance", "entity": "vendors", "key": "code"},
        "right": {"app": "crm", "entity": "suppliers", "key": "id"},
        "fields": [{"left": "code", "right": "id"}, {"left": "title", "right": "label"}],
    }
    start_sync(engine, apps)
    engine.submit_map(vendors)
    engine.play("vendors")
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 1.0, NULL)")
    apps.crm.execute("INSERT INTO suppliers VALUES ('V1', 'Litware')")
    engine.wait_idle(timeout=30)
    assert apps.right()["C1"][1] == "Contoso"
    assert apps.finance.execute("SELECT * FROM vendors").fetchall() == [("V1", "Litware")]
    engine.pause("customers")
    apps.finance.execute("UPDATE customers SET name = 'paused' WHERE account = 'C1'")
    apps.finance.execute("UPDATE vendors SET title = 'Litware Inc' WHERE code = 'V1'")
    engine.wait_idle(timeout=30)  # waits for the playing map only
    assert apps.right()["C1"][1] == "Contoso"
    assert apps.crm.execute("SELECT label FROM suppliers").fetchall() == [("Litware Inc",)]
    assert set(engine.status()) == {"customers", "vendors"}
