"""Failures and restarts: nothing is lost, nothing is merged twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from recovery_harness import kill_while_streaming

from engine import SyncEngine

from conftest import CUSTOMERS, Apps, connect, start_sync, wait_until

pytestmark = pytest.mark.ray


def _partition_status(engine: Any) -> list[dict[str, Any]]:
    """Every partition's status, once all of them answer (a restarted one replays first)."""
    from actors import ray_api
    from engine import WorkerLost

    # NOTE: tests reach the partition actors through the coordinator to kill them.
    handles = engine._call("partitions", "customers")

    def answer() -> list[dict[str, Any]] | None:
        try:
            return ray_api.get([ray_api.call(h, "status") for h in handles], timeout=30)  # type: ignore[no-any-return]
        except WorkerLost:
            return None

    return wait_until(answer, 60, "every partition to answer")  # type: ignore[no-any-return]


def test_a_partition_killed_mid_stream_restarts_and_the_sides_converge(
    engine: Any, apps: Apps
) -> None:
    from actors import ray_api

    seeded, total = 500, 3000
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, NULL)",
        [(f"C{i:05}", f"name {i}", float(i)) for i in range(seeded)],
    )
    start_sync(engine, apps)

    def stream() -> None:
        # Other programs keep writing to both applications while the partition dies: new
        # customers in finance, new phone numbers for the old ones in crm.
        finance, crm = connect(apps.finance_path), connect(apps.crm_path)
        for lo in range(seeded, total, 20):
            finance.execute("BEGIN")
            finance.executemany(
                "INSERT INTO customers VALUES (?, ?, ?, NULL)",
                [(f"C{i:05}", f"name {i}", float(i)) for i in range(lo, lo + 20)],
            )
            finance.execute("COMMIT")
            old = (lo - seeded) // 20
            crm.execute(
                "UPDATE accounts SET telephone = ? WHERE account_number = ?",
                (f"tel {old}", f"C{old:05}"),
            )
        finance.close()
        crm.close()

    writer = threading.Thread(target=stream)
    writer.start()
    wait_until(lambda: len(apps.right()) >= seeded + 600, 60, "600 new records in crm")
    before = _partition_status(engine)
    victim = engine._call("partitions", "customers")[0]
    ray_api.kill(victim, restart=True)
    writer.join()
    engine.wait_idle(timeout=120)

    after = _partition_status(engine)
    assert after[0]["pid"] != before[0]["pid"], "the partition actor was restarted"
    left, right = apps.left(), apps.right()
    assert len(left) == total == len(right)
    assert left == right
    assert all(left[f"C{i:05}"][1:3] == (f"name {i}", float(i)) for i in range(total))
    updated = (total - seeded) // 20
    assert all(left[f"C{i:05}"][3] == f"tel {i}" for i in range(updated))
    assert engine.errors("customers") == []


def test_a_restarted_engine_resumes_where_it_stopped(ray_runtime: None, tmp_path: Path) -> None:
    apps = Apps(tmp_path)
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, 'n', 1.0, NULL)", [(f"C{i}",) for i in range(100)]
    )
    with SyncEngine.start(state_dir=tmp_path / "state") as engine:
        start_sync(engine, apps)
        assert len(apps.right()) == 100
    # While the engine is down, both applications keep changing.
    apps.finance.execute("UPDATE customers SET name = 'while down' WHERE account = 'C1'")
    apps.crm.execute("UPDATE accounts SET telephone = 'down too' WHERE account_number = 'C2'")
    apps.crm.execute("DELETE FROM accounts WHERE account_number = 'C3'")
    with SyncEngine.start(state_dir=tmp_path / "state") as engine:
        # The map, its apps and its mode (playing) were restored from the state directory.
        engine.wait_idle(timeout=60)
        assert apps.right()["C1"][1] == "while down"
        assert apps.left()["C2"][3] == "down too"
        assert "C3" not in apps.left()
        assert apps.converged()
        sides = engine.status()["customers"]["sides"]
        # Only what changed while down was written: no initial sync again, nothing twice.
        assert sides["right"]["writer"]["records"] == 1
        assert sides["left"]["writer"]["records"] == 2


@pytest.mark.parametrize("kind", ["reader", "writer", "coordinator"])
def test_a_killed_actor_restarts_and_nothing_is_lost(engine: Any, apps: Apps, kind: str) -> None:
    kill_while_streaming(engine, apps, kind)


def test_a_partition_killed_during_the_initial_sync_still_gets_every_row(
    engine: Any, apps: Apps
) -> None:
    from actors import ray_api

    total = 40_000
    apps.finance.executemany(
        "INSERT INTO customers VALUES (?, ?, 1.0, NULL)",
        [(f"C{i:05}", f"name {i}") for i in range(total)],
    )
    for name, url in apps.urls.items():
        engine.add_app(name, url)
    engine.submit_map(CUSTOMERS)
    engine.play("customers")
    wait_until(lambda: len(apps.right()) >= 2_000, 60, "the initial sync to be under way")
    ray_api.kill(engine._call("partitions", "customers")[0], restart=True)
    wait_until(lambda: len(apps.right()) == total, 180, "every row in crm")
    engine.wait_idle(timeout=120)
    assert apps.converged()
