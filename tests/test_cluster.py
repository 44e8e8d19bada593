"""The engine joins an existing Ray cluster (two nodes) instead of starting its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

SCRIPT = textwrap.dedent(
    """
    import sqlite3, sys
    from pathlib import Path
    from ray.cluster_utils import Cluster

    sys.path.insert(0, {tests!r})
    from conftest import CUSTOMERS, Apps

    folder = Path({folder!r})
    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
    cluster.add_node(num_cpus=1)
    try:
        from engine import SyncEngine

        apps = Apps(folder)
        apps.finance.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 1.0, NULL)")
        eng = SyncEngine.start(state_dir=folder / "state", address=cluster.address)
        try:
            for name, url in apps.urls.items():
                eng.add_app(name, url)
            eng.submit_map(CUSTOMERS)
            eng.play("customers")
            eng.wait_idle(timeout=60)
            apps.crm.execute("UPDATE accounts SET name = 'via cluster' WHERE account_number = 'C1'")
            eng.wait_idle(timeout=60)
            import ray
            print("nodes", len([n for n in ray.nodes() if n["Alive"]]))
            print("synced", apps.left()["C1"][1], apps.converged())
        finally:
            eng.stop()
    finally:
        cluster.shutdown()
    """
)


def test_the_engine_joins_an_existing_two_node_cluster(tmp_path: Path) -> None:
    tests = str(Path(__file__).resolve().parent)
    script = SCRIPT.format(tests=tests, folder=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "nodes 2" in done.stdout
    assert "synced via cluster True" in done.stdout
