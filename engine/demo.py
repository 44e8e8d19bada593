"""``dualsync demo``: an ERP and a CRM on SQLite, kept in sync both ways.

Creates ``finance.db`` (customers) and ``crm.db`` (accounts, other column names), writes the
map file, syncs the existing rows, then edits both sides: a plain edit each way, concurrent
edits of different fields of one record, concurrent edits of the same field, a delete and a
one-way field. Prints what converged and how each conflict was resolved; the exit status is
non-zero if the two applications end up different.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from engine.api import SyncEngine

MAP_YAML = """\
name: customers
left:  {app: finance, entity: customers, key: [account]}
right: {app: crm, entity: accounts, key: [account_number]}
fields:
  - {left: account, right: account_number}
  - {left: name, right: name}
  - {left: credit_limit, right: credit_limit, direction: left_to_right}
  - {left: phone, right: telephone}
conflict: {policy: lww}
"""

FINANCE_ROWS = [
    ("C001", "Contoso Ltd", 5000.0, "555-0101"),
    ("C002", "Fabrikam Inc", 12000.0, "555-0102"),
    ("C003", "Northwind Traders", 7500.0, "555-0103"),
    ("C004", "Adventure Works", 3000.0, "555-0104"),
    ("C005", "Litware Inc", 1000.0, "555-0105"),
]
CRM_ROWS = [
    ("C006", "Tailspin Toys", None, "555-0106"),
    ("C007", "Wide World Importers", None, "555-0107"),
]
FILES = ("finance.db", "crm.db", "state", "maps")


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    con.execute("PRAGMA journal_mode = WAL")
    return con


def create_apps(folder: Path) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Fresh ``finance.db`` and ``crm.db`` in ``folder`` (earlier demo files are replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
        for path in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
            path.unlink(missing_ok=True)
    finance = _connect(folder / "finance.db")
    finance.execute(
        "CREATE TABLE customers (account TEXT PRIMARY KEY, name TEXT NOT NULL,"
        " credit_limit REAL, phone TEXT)"
    )
    finance.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", FINANCE_ROWS)
    crm = _connect(folder / "crm.db")
    crm.execute(
        "CREATE TABLE accounts (account_number TEXT PRIMARY KEY, name TEXT,"
        " credit_limit REAL, telephone TEXT)"
    )
    crm.executemany("INSERT INTO accounts VALUES (?, ?, ?, ?)", CRM_ROWS)
    (folder / "maps").mkdir()
    (folder / "maps" / "customers.yaml").write_text(MAP_YAML)
    return finance, crm


def snapshot(finance: sqlite3.Connection, crm: sqlite3.Connection) -> tuple[dict, dict]:  # type: ignore[type-arg]
    left = {r[0]: r for r in finance.execute("SELECT * FROM customers ORDER BY account")}
    right = {
        r[0]: r
        for r in crm.execute(
            "SELECT account_number, name, credit_limit, telephone FROM accounts ORDER BY 1"
        )
    }
    return left, right


def _next_ms() -> None:
    """Let the millisecond clock tick, so that the next commit is strictly later."""
    start = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 <= start:
        time.sleep(0.0005)


def run(folder: Path, out: TextIO, *, partitions: int = 2) -> int:
    started = time.perf_counter()
    finance, crm = create_apps(folder)

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say(f"dualsync demo in {folder}")
    say(f"  finance.db  customers(account, name, credit_limit, phone): {len(FINANCE_ROWS)} rows")
    say(
        f"  crm.db      accounts(account_number, name, credit_limit, telephone):"
        f" {len(CRM_ROWS)} rows"
    )
    say("  map maps/customers.yaml: finance.customers <-> crm.accounts, policy lww,")
    say("      credit_limit flows finance -> crm only")
    engine = SyncEngine.start(state_dir=folder / "state", partitions=partitions)
    try:
        engine.add_app("finance", f"sqlite:///{folder / 'finance.db'}")
        engine.add_app("crm", f"sqlite:///{folder / 'crm.db'}")
        engine.submit_map(folder / "maps" / "customers.yaml")
        engine.play("customers")

        def step(
            title: str, action: Callable[[], Any] | None = None, *, paused: bool = False
        ) -> None:
            say(f"\n{title}")
            if action is not None:
                if paused:
                    engine.pause("customers")
                action()
                if paused:
                    engine.play("customers")
            engine.wait_idle(timeout=60)

        step("[1] initial sync of the existing rows")
        left, right = snapshot(finance, crm)
        say(f"    finance holds {len(left)} customers, crm holds {len(right)} accounts")

        def plain() -> None:
            finance.execute("UPDATE customers SET name = 'Contoso Group' WHERE account = 'C001'")
            crm.execute("UPDATE accounts SET telephone = '555-0999' WHERE account_number = 'C002'")

        step("[2] a plain edit each way: finance renames C001, crm changes C002's phone", plain)
        left, right = snapshot(finance, crm)
        say(f"    crm C001 name      = {right['C001'][1]!r}")
        say(f"    finance C002 phone = {left['C002'][3]!r}")

        def different_fields() -> None:
            finance.execute("UPDATE customers SET name = 'Northwind Ltd' WHERE account = 'C003'")
            crm.execute("UPDATE accounts SET telephone = '555-0333' WHERE account_number = 'C003'")

        step(
            "[3] concurrent edits of different fields of C003 (the map is paused while both\n"
            "    sides edit): finance changes the name, crm the phone",
            different_fields,
            paused=True,
        )
        left, right = snapshot(finance, crm)
        say(f"    both survive: finance {left['C003']}, crm {right['C003']}")

        def same_field() -> None:
            finance.execute(
                "UPDATE customers SET name = 'Adventure Works (ERP)' WHERE account = 'C004'"
            )
            _next_ms()
            crm.execute(
                "UPDATE accounts SET name = 'Adventure Works (CRM)' WHERE account_number = 'C004'"
            )

        step(
            "[4] concurrent edits of the same field: finance, then crm, rename C004",
            same_field,
            paused=True,
        )
        for c in engine.conflicts("customers"):
            candidates = ", ".join(
                f"{x['origin']} {x['value']!r} at {x['ts'][0]}.{x['ts'][1]}"
                for x in c["candidates"]
            )
            winner = c["winner"]
            say(
                f"    conflict on {c['key']} {c['field']}: {candidates}"
                f" -> {winner['origin']} {winner['value']!r} wins ({c['rule']})"
            )

        step(
            "[5] a delete: finance deletes C005",
            lambda: finance.execute("DELETE FROM customers WHERE account = 'C005'"),
        )
        left, right = snapshot(finance, crm)
        say(f"    C005 in finance: {'C005' in left}, in crm: {'C005' in right}")

        step(
            "[6] a one-way field: finance raises C002's credit limit",
            lambda: finance.execute(
                "UPDATE customers SET credit_limit = 15000 WHERE account = 'C002'"
            ),
        )
        left, right = snapshot(finance, crm)
        say(f"    crm C002 credit_limit = {right['C002'][2]}")

        status = engine.status()["customers"]
        say(
            f"\nstatus: {status['records']} records, {status['conflicts']} conflicts, "
            f"{status['errors']} errors; writes to finance {status['sides']['left']['writes']}, "
            f"to crm {status['sides']['right']['writes']}"
        )
    finally:
        engine.stop()
    left, right = snapshot(finance, crm)
    elapsed = time.perf_counter() - started
    if left == right:
        say(f"\nCONVERGED: finance and crm hold the same {len(left)} records ({elapsed:.1f} s)")
        return 0
    say("\nDIVERGED: the two applications differ:")
    for key in sorted(set(left) | set(right)):
        if left.get(key) != right.get(key):
            say(f"    {key}: finance {left.get(key)} / crm {right.get(key)}")
    return 1
