"""A SQLite `finance` and a CRM behind a REST API (json-server, a real third-party server on
loopback) kept in sync by one map, on a real Ray."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Apps, next_ms, wait_until
from http_tools import JsonServer

pytestmark = pytest.mark.ray

MAP: dict[str, Any] = {
    "name": "customers",
    "left": {"app": "finance", "entity": "customers", "key": ["account"]},
    "right": {"app": "crm", "entity": "accounts", "key": ["id"]},
    "fields": [
        {"left": "account", "right": "id", "type": "text"},
        {"left": "name", "right": "name", "type": "text"},
        {"left": "credit_limit", "right": "creditLimit", "type": "float",
         "direction": "left_to_right"},
        {"left": "phone", "right": "telephone", "type": "text"},
    ],
}  # fmt: skip


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[JsonServer]:
    server = JsonServer(tmp_path / "crm", {"accounts": []})
    server.start()
    yield server
    server.stop()


def records(crm: JsonServer) -> dict[str, dict[str, Any]]:
    status, body = crm.request("GET", "/accounts")
    assert status == 200
    return {r["id"]: r for r in body}


def as_left(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["id"], record.get("name"), record.get("creditLimit"), record.get("telephone"))


def converged(apps: Apps, crm: JsonServer) -> bool:
    return apps.left() == {k: as_left(r) for k, r in records(crm).items()}


def test_sqlite_finance_and_a_rest_crm_converge_with_concurrent_edits(
    engine: Any, apps: Apps, crm: JsonServer, tmp_path: Path
) -> None:
    apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.5, '555-1')")
    crm.request("POST", "/accounts", {"id": "K1", "name": "Tailspin", "telephone": "555-9"})
    engine.add_app("finance", apps.urls["finance"])
    engine.add_app("crm", f"{crm.url}/?mode=poll&poll=0.1&inbox={tmp_path / 'inbox.sqlite'}")
    engine.submit_map(MAP)
    engine.play("customers")

    def synced() -> bool:
        engine.wait_idle(timeout=60)
        return converged(apps, crm)

    wait_until(synced, 60, "the initial sync")
    assert records(crm)["C1"]["creditLimit"] == 5000.5
    assert apps.left()["K1"] == ("K1", "Tailspin", None, "555-9")

    apps.finance.execute("UPDATE customers SET name = 'Contoso Ltd' WHERE account = 'C1'")
    crm.request("PATCH", "/accounts/K1", {"telephone": "555-0"})
    wait_until(synced, 60, "edits each way")
    assert records(crm)["C1"]["name"] == "Contoso Ltd"
    assert apps.left()["K1"][3] == "555-0"

    # Concurrent edits while paused: different fields both survive; the same field goes to
    # the later edit; a delete on one side removes the record on the other.
    engine.pause("customers")
    apps.finance.execute("UPDATE customers SET phone = 'fin' WHERE account = 'C1'")
    crm.request("PATCH", "/accounts/C1", {"name": "CRM name"})
    apps.finance.execute("UPDATE customers SET name = 'ERP' WHERE account = 'K1'")
    next_ms()
    crm.request("PATCH", "/accounts/K1", {"name": "CRM"})
    crm.request("DELETE", "/accounts/K1")
    crm.request("POST", "/accounts", {"id": "K2", "name": "New in CRM", "telephone": None})
    engine.play("customers")
    wait_until(synced, 60, "the concurrent edits to converge")
    left = apps.left()
    assert left["C1"] == ("C1", "CRM name", 5000.5, "fin")
    assert "K1" not in left
    assert left["K2"] == ("K2", "New in CRM", None, None)
    assert engine.errors("customers") == []

    # Nothing echoes: the CRM's inbox stops growing once both sides are quiet.
    sides = engine.status()["customers"]["sides"]
    head, polls = sides["right"]["reader"]["head"], sides["right"]["reader"]["polls"]
    wait_until(
        lambda: engine.status()["customers"]["sides"]["right"]["reader"]["polls"] >= polls + 10,
        30,
        "10 more polls of the CRM's inbox",
    )
    assert engine.status()["customers"]["sides"]["right"]["reader"]["head"] == head
    assert converged(apps, crm)
