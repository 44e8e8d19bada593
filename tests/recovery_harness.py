"""A kill scenario shared by the recovery tests and the stress tests."""

from __future__ import annotations

import threading
from typing import Any

from conftest import Apps, connect, start_sync, wait_until


def kill_while_streaming(engine: Any, apps: Apps, kind: str, total: int = 2000) -> None:
    """Stream ``total`` inserts into finance, kill the map's actors of ``kind`` (or the
    coordinator, and with it every actor) once 300 reached crm, and check that every record
    arrives on both sides, with no error logged."""
    from actors import ray_api
    from engine import WorkerLost

    start_sync(engine, apps)

    def stream() -> None:
        finance = connect(apps.finance_path)
        for lo in range(0, total, 20):
            finance.executemany(
                "INSERT INTO customers VALUES (?, ?, 1.0, NULL)",
                [(f"C{i:05}", f"name {i}") for i in range(lo, lo + 20)],
            )
        finance.close()

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        wait_until(lambda: len(apps.right()) >= 300, 60, "300 records in crm")
        if kind == "coordinator":
            # Its actors die with it (Ray fate-sharing); the restarted one rebuilds them all
            # from the registry and their stores.
            ray_api.kill(engine._coordinator, restart=True)
        else:
            victims = engine._call("actors", "customers")[kind]
            for victim in victims:
                ray_api.kill(victim, restart=True)
    finally:
        writer.join()

    def synced() -> bool:
        try:
            engine.wait_idle(timeout=60)
        except WorkerLost:
            return False  # the coordinator is still coming back
        return True

    wait_until(synced, 180, "the map to be in sync again")
    assert len(apps.left()) == total == len(apps.right())
    assert apps.converged()
    report = engine.verify("customers")
    assert report.ok, report.as_dict()
    assert engine.errors("customers") == []
