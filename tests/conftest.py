"""Shared fixtures: one local Ray per test session, SQLite apps, condition waits."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# NOTE: set before the session's Ray starts, so that the engine's processes inherit it: the
# tests of ${NAME} references in app URLs (tests/test_apps.py) use it as a password.
SECRET_ENV = "DUALSYNC_TEST_SECRET"
os.environ.setdefault(SECRET_ENV, "pw-" + os.urandom(6).hex())

CUSTOMERS: dict[str, Any] = {
    "name": "customers",
    "left": {"app": "finance", "entity": "customers", "key": ["account"]},
    "right": {"app": "crm", "entity": "accounts", "key": ["account_number"]},
    "fields": [
        {"left": "account", "right": "account_number"},
        {"left": "name", "right": "name"},
        {"left": "credit_limit", "right": "credit_limit", "direction": "left_to_right"},
        {"left": "phone", "right": "telephone"},
    ],
    "conflict": {"policy": "lww"},
}

FINANCE_SCHEMA = (
    "CREATE TABLE customers (account TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " credit_limit REAL, phone TEXT)"
)
CRM_SCHEMA = (
    "CREATE TABLE accounts (account_number TEXT PRIMARY KEY, name TEXT,"
    " credit_limit REAL, telephone TEXT)"
)


def connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
    con.execute("PRAGMA journal_mode = WAL")
    return con


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def next_ms() -> None:
    """Wait for the millisecond clock to tick, so the next commit is strictly later."""
    start = time.time_ns() // 1_000_000
    wait_until(lambda: time.time_ns() // 1_000_000 > start, 1, "the clock to tick")


class Apps:
    """The finance (ERP) and crm (CRM) SQLite applications of a test."""

    def __init__(self, folder: Path, crm_schema: str = CRM_SCHEMA) -> None:
        self.folder = folder
        self.finance_path = folder / "finance.db"
        self.crm_path = folder / "crm.db"
        self.finance = connect(self.finance_path)
        self.finance.execute(FINANCE_SCHEMA)
        self.crm = connect(self.crm_path)
        self.crm.execute(crm_schema)

    @property
    def urls(self) -> dict[str, str]:
        return {
            "finance": f"sqlite:///{self.finance_path}",
            "crm": f"sqlite:///{self.crm_path}",
        }

    def left(self) -> dict[str, tuple[Any, ...]]:
        return {r[0]: r for r in self.finance.execute("SELECT * FROM customers")}

    def right(self) -> dict[str, tuple[Any, ...]]:
        return {
            r[0]: r
            for r in self.crm.execute(
                "SELECT account_number, name, credit_limit, telephone FROM accounts"
            )
        }

    def converged(self) -> bool:
        return self.left() == self.right()

    def log_rows(self) -> tuple[int, int]:
        """Rows waiting in the two change tables."""
        return (
            self.finance.execute('SELECT count(*) FROM "_ds_log_customers_L"').fetchone()[0],
            self.crm.execute('SELECT count(*) FROM "_ds_log_customers_R"').fetchone()[0],
        )


@pytest.fixture(scope="session", autouse=True)
def no_leftovers_on_the_servers() -> Iterator[None]:
    """At the end of the session: no schema or database a harness made is left on the
    shared servers, and no ``_ds_`` object in their shared schema / database."""
    yield
    problems: list[str] = []
    for module in ("harness_postgresql", "harness_mysql"):
        if module in sys.modules:  # only servers this session used
            problems += sys.modules[module].leftovers()
    assert not problems, f"the tests left objects on the shared servers: {problems}"


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    """One local Ray for the whole session (starting one takes seconds)."""
    from actors import ray_api

    started = ray_api.init(None, "dualsync")
    yield
    if started:
        ray_api.shutdown()


@pytest.fixture
def apps(tmp_path: Path) -> Apps:
    return Apps(tmp_path)


@pytest.fixture
def engine(ray_runtime: None, tmp_path: Path) -> Iterator[Any]:
    from engine import SyncEngine

    eng = SyncEngine.start(state_dir=tmp_path / "state")
    yield eng
    eng.stop()


def start_sync(engine: Any, apps: Apps, spec: dict[str, Any] | None = None) -> None:
    """Add both apps, submit the map (the customers map by default), play and wait."""
    for name, url in apps.urls.items():
        engine.add_app(name, url)
    engine.submit_map(spec or CUSTOMERS)
    engine.play((spec or CUSTOMERS)["name"])
    engine.wait_idle(timeout=60)
