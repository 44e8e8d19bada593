"""The SQLite connector against real SQLite files: capture, snapshot, writes, errors.

Every test plays an application (another program with its own connection, ``app.db``) and the
engine's connector on the same file. No fakes: triggers, WAL and the write lock are SQLite's.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.connectors import open_connector
from engine.connectors.base import (
    Capture,
    Column,
    RawChange,
    Receipt,
    WriteFailure,
    WriteOp,
    WriteReceipt,
)
from engine.connectors.sqlite import CAPTURE_TRIGGERS, SqliteConnector
from engine.errors import AppError, ConnectorError

from conftest import connect

CUSTOMERS = Capture(
    name="customers_L",
    entity="customers",
    columns=("account", "name", "credit_limit", "phone"),
    key=("account",),
)
# ``phone`` has no declared type, so it keeps whatever SQLite type it is given; ``notes`` is
# not captured.
CUSTOMERS_SCHEMA = (
    "CREATE TABLE customers (account TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " credit_limit REAL CHECK (credit_limit >= 0), phone, notes TEXT)"
)
LINES = Capture(
    name="lines_L",
    entity="lines",
    columns=("order_id", "line", "qty", "item"),
    key=("order_id", "line"),
)
LINES_SCHEMA = (
    "CREATE TABLE lines (order_id INTEGER, line INTEGER, qty INTEGER NOT NULL DEFAULT 1,"
    " item TEXT, PRIMARY KEY (order_id, line))"
)
LIMIT = 10_000


@dataclass
class App:
    """A SQLite application: its file, its URL and another program's connection to it."""

    path: Path
    url: str
    db: sqlite3.Connection

    def rows(self, table: str = "customers") -> dict[Any, tuple[Any, ...]]:
        return {r[0]: r for r in self.db.execute(f'SELECT * FROM "{table}" ORDER BY 1')}

    def log_rows(self, capture: Capture = CUSTOMERS) -> int:
        table = f"_ds_log_{capture.name}"
        return int(self.db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    path = tmp_path / "finance.db"
    db = connect(path)
    db.execute(CUSTOMERS_SCHEMA)
    db.execute(LINES_SCHEMA)
    yield App(path, f"sqlite:///{path}", db)
    db.close()


@pytest.fixture
def conn(app: App) -> Iterator[SqliteConnector]:
    """The engine's connector on ``app``, with the customers capture prepared."""
    connector = SqliteConnector("finance", app.url)
    connector.prepare(CUSTOMERS)
    yield connector
    connector.close()


def changes(
    connector: SqliteConnector, after: int = 0, capture: Capture = CUSTOMERS
) -> list[RawChange]:
    return connector.read_changes(capture, after, LIMIT)


def upsert(account: str, name: Any, limit: Any = None, phone: Any = None) -> WriteOp:
    return WriteOp("I", (account,), {0: account, 1: name, 2: limit, 3: phone})


# -- describe ------------------------------------------------------------------------------


def test_describe_reports_columns_primary_unique_and_composite_keys(app: App) -> None:
    app.db.execute("CREATE UNIQUE INDEX customers_by_phone ON customers (phone)")
    app.db.execute("CREATE UNIQUE INDEX open_notes ON customers (notes) WHERE notes IS NOT NULL")
    connector = SqliteConnector("finance", app.url)
    try:
        customers = connector.describe("customers")
        lines = connector.describe("lines")
        missing = connector.describe("no_such_table")
    finally:
        connector.close()

    assert customers is not None and lines is not None
    assert list(customers.columns) == ["account", "name", "credit_limit", "phone", "notes"]
    assert customers.columns["name"] == Column("name", "TEXT", nullable=False, has_default=False)
    assert customers.columns["credit_limit"] == Column("credit_limit", "REAL", True, False)
    assert customers.columns["phone"] == Column("phone", "", True, False)
    # The primary key first; a partial unique index can't be upserted on, so it is left out.
    assert customers.unique == (("account",), ("phone",))
    assert lines.unique == (("order_id", "line"),)
    assert lines.columns["qty"] == Column("qty", "INTEGER", nullable=False, has_default=True)
    assert missing is None


def test_describe_reports_a_not_null_primary_key_as_not_nullable(app: App) -> None:
    app.db.execute("CREATE TABLE codes (code TEXT NOT NULL PRIMARY KEY, label TEXT)")
    connector = SqliteConnector("finance", app.url)
    try:
        schema = connector.describe("codes")
    finally:
        connector.close()
    assert schema is not None
    with pytest.raises(sqlite3.IntegrityError):
        app.db.execute("INSERT INTO codes VALUES (NULL, 'x')")  # SQLite refuses NULL here
    assert schema.columns["code"].nullable is False


def test_describe_leaves_out_unique_indexes_on_expressions(app: App) -> None:
    app.db.execute("CREATE UNIQUE INDEX customers_by_lower_name ON customers (lower(name))")
    connector = SqliteConnector("finance", app.url)
    try:
        schema = connector.describe("customers")
    finally:
        connector.close()
    assert schema is not None
    assert schema.unique == (("account",),)


# -- capture -------------------------------------------------------------------------------


def test_prepare_is_idempotent_and_puts_the_database_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    plain = sqlite3.connect(str(path), isolation_level=None)
    plain.execute(CUSTOMERS_SCHEMA)
    assert plain.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    plain.close()

    connector = SqliteConnector("finance", f"sqlite:///{path}")
    try:
        connector.prepare(CUSTOMERS)
        connector.prepare(CUSTOMERS)
        other = sqlite3.connect(str(path), isolation_level=None)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            triggers = other.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
            ).fetchone()[0]
            assert triggers == len(CAPTURE_TRIGGERS)
            other.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 10.0, '555-1', NULL)")
        finally:
            other.close()
        # Preparing twice installed each trigger once: one insert, one change.
        assert [(c.seq, c.op) for c in changes(connector)] == [(1, "I")]
    finally:
        connector.close()


def test_other_programs_inserts_updates_and_deletes_are_captured_in_order_with_their_types(
    app: App, conn: SqliteConnector
) -> None:
    before_ms = time.time() * 1000
    app.db.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 5000.5, 42, 'vip')")
    app.db.execute("UPDATE customers SET phone = X'00ff' WHERE account = 'C1'")
    app.db.execute("UPDATE customers SET credit_limit = NULL, name = 'Contoso Ltd'")
    app.db.execute("DELETE FROM customers WHERE account = 'C1'")
    after_ms = time.time() * 1000

    log = changes(conn)
    assert [c.op for c in log] == ["I", "U", "U", "D"]
    seqs = [c.seq for c in log]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert [(c.old, c.new) for c in log] == [
        (None, ("C1", "Contoso", 5000.5, 42)),
        (("C1", "Contoso", 5000.5, 42), ("C1", "Contoso", 5000.5, b"\x00\xff")),
        (("C1", "Contoso", 5000.5, b"\x00\xff"), ("C1", "Contoso Ltd", None, b"\x00\xff")),
        (("C1", "Contoso Ltd", None, b"\x00\xff"), None),
    ]
    inserted = log[0].new
    assert inserted is not None
    assert [type(v) for v in inserted] == [str, str, float, int]
    for change in log:
        assert isinstance(change.at_ms, int)
        # Commit times are wall-clock ms; the bound is generous (clock granularity, not speed).
        assert before_ms - 1000 <= change.at_ms <= after_ms + 1000
    assert changes(conn, after=seqs[1]) == log[2:]
    assert conn.read_changes(CUSTOMERS, 0, 2) == log[:2]


def test_updates_that_change_no_captured_value_are_not_logged(
    app: App, conn: SqliteConnector
) -> None:
    app.db.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 10.0, '555-1', 'a')")
    head = conn.head(CUSTOMERS)
    app.db.execute("UPDATE customers SET notes = 'b' WHERE account = 'C1'")  # not captured
    app.db.execute("UPDATE customers SET name = 'Contoso', phone = '555-1'")  # same values
    assert changes(conn, after=head) == []
    assert conn.head(CUSTOMERS) == head
    app.db.execute("UPDATE customers SET notes = 'c', phone = '555-2'")
    [change] = changes(conn, after=head)
    assert change.op == "U" and change.new == ("C1", "Contoso", 10.0, "555-2")


def test_the_engines_own_writes_are_never_captured(app: App, conn: SqliteConnector) -> None:
    app.db.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 10.0, '555-1', NULL)")
    head = conn.head(CUSTOMERS)
    result = conn.apply(
        CUSTOMERS,
        [
            upsert("C2", "Tailspin", 1.0, "555-2"),
            WriteOp("U", ("C1",), {3: "555-9"}),
            WriteOp("D", ("C1",), {}),
        ],
    )
    assert result.failures == []
    assert set(app.rows()) == {"C2"}
    assert app.log_rows() == 1
    assert conn.head(CUSTOMERS) == head
    assert changes(conn, after=head) == []
    # The flag that silences the triggers is only ever set inside our write transaction.
    assert app.db.execute("SELECT writing FROM _ds_session").fetchall() == [(0,)]


def test_other_programs_writes_are_captured_while_the_engine_writes_concurrently(
    app: App, conn: SqliteConnector
) -> None:
    theirs = [f"X{i:02}" for i in range(40)]

    def other_program() -> None:
        db = connect(app.path)
        try:
            for account in theirs:
                db.execute(
                    "INSERT INTO customers VALUES (?, 'theirs', 1.0, NULL, NULL)", (account,)
                )
        finally:
            db.close()

    thread = threading.Thread(target=other_program)
    thread.start()
    try:
        for batch in range(20):
            ops = [upsert(f"E{batch:02}{i}", "ours", 2.0) for i in range(4)]
            assert conn.apply(CUSTOMERS, ops).failures == []
    finally:
        thread.join()

    log = changes(conn)
    assert [c.new[0] for c in log if c.new is not None] == theirs
    assert all(c.op == "I" for c in log)
    assert sum(1 for r in app.rows().values() if r[1] == "ours") == 80


# -- writes --------------------------------------------------------------------------------


def test_apply_upserts_updates_and_deletes_in_one_transaction(
    app: App, conn: SqliteConnector
) -> None:
    app.db.executemany(
        "INSERT INTO customers VALUES (?, ?, ?, ?, ?)",
        [
            ("C1", "Contoso", 10.0, "555-1", "n1"),
            ("C2", "Tailspin", 20.0, "555-2", "n2"),
            ("C3", "Fabrikam", 30.0, "555-3", "n3"),
        ],
    )
    statements: list[str] = []
    conn._con.set_trace_callback(statements.append)  # observe the transactions we make
    result = conn.apply(
        CUSTOMERS,
        [
            upsert("C4", "Northwind", 40.0, b"\x01"),
            upsert("C1", "Contoso Group", None, "555-11"),
            WriteOp("U", ("C2",), {3: "555-22"}),
            WriteOp("D", ("C3",), {}),
            WriteOp("U", ("C9",), {1: "nobody"}),  # no such record: nothing to update
        ],
    )
    conn._con.set_trace_callback(None)

    assert result.failures == []
    assert app.rows() == {
        # An upsert of an existing record writes every given value, not the uncaptured ones.
        "C1": ("C1", "Contoso Group", None, "555-11", "n1"),
        # An update writes only its given columns.
        "C2": ("C2", "Tailspin", 20.0, "555-22", "n2"),
        "C4": ("C4", "Northwind", 40.0, b"\x01", None),
    }
    begins = [s for s in statements if s.startswith("BEGIN")]
    commits = [s for s in statements if s == "COMMIT"]
    assert (len(begins), len(commits)) == (1, 1)


def test_apply_reports_where_the_write_landed_in_the_change_log(
    app: App, conn: SqliteConnector
) -> None:
    app.db.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 10.0, NULL, NULL)")
    app.db.execute("UPDATE customers SET phone = '555-1' WHERE account = 'C1'")
    position = conn.apply(CUSTOMERS, [upsert("C2", "Tailspin")]).position
    app.db.execute("UPDATE customers SET phone = '555-2' WHERE account = 'C1'")

    before, after = changes(conn)[:2], changes(conn)[2:]
    assert len(before) == 2 and len(after) == 1
    assert all(c.seq <= position for c in before)
    assert all(c.seq > position for c in after)
    assert position == before[-1].seq


def test_refused_rows_are_reported_by_index_and_column_and_the_rest_is_written(
    app: App, conn: SqliteConnector
) -> None:
    result = conn.apply(
        CUSTOMERS,
        [
            upsert("C1", "Contoso", 10.0),
            upsert("C2", None, 20.0),  # NOT NULL name
            upsert("C3", "Fabrikam", 30.0),
            upsert("C4", "Northwind", -1.0),  # CHECK credit_limit >= 0
            WriteOp("U", ("C1",), {2: -5.0}),  # CHECK again, on an update
            upsert("C5", "Litware", 50.0),
        ],
    )

    assert sorted(result.failures) == [
        WriteFailure(1, "name", "NOT NULL constraint failed: customers.name"),
        WriteFailure(3, "credit_limit", "CHECK constraint failed: credit_limit >= 0"),
        WriteFailure(4, "credit_limit", "CHECK constraint failed: credit_limit >= 0"),
    ]
    assert app.rows() == {
        "C1": ("C1", "Contoso", 10.0, None, None),
        "C3": ("C3", "Fabrikam", 30.0, None, None),
        "C5": ("C5", "Litware", 50.0, None, None),
    }
    assert app.log_rows() == 0  # the retried batch is still ours: nothing captured


def test_a_composite_key_entity_is_captured_and_written(app: App, conn: SqliteConnector) -> None:
    conn.prepare(LINES)
    app.db.execute("INSERT INTO lines VALUES (7, 1, 3, 'bolt')")
    [change] = changes(conn, capture=LINES)
    assert change.new == (7, 1, 3, "bolt")

    result = conn.apply(
        LINES,
        [
            WriteOp("I", (7, 2), {0: 7, 1: 2, 2: 5, 3: "nut"}),
            WriteOp("U", (7, 1), {2: 4}),
            WriteOp("I", (8, 1), {0: 8, 1: 1, 2: None, 3: "washer"}),  # NOT NULL qty
            WriteOp("I", (7, 2), {0: 7, 1: 2, 2: 6, 3: "nut"}),  # the same key upserted again
        ],
    )
    assert result.failures == [
        WriteFailure(2, "qty", "NOT NULL constraint failed: lines.qty"),
    ]
    assert sorted(app.db.execute("SELECT * FROM lines")) == [(7, 1, 4, "bolt"), (7, 2, 6, "nut")]
    conn.apply(LINES, [WriteOp("D", (7, 1), {})])
    assert sorted(app.db.execute("SELECT * FROM lines")) == [(7, 2, 6, "nut")]
    assert app.log_rows(LINES) == 1


def test_a_move_of_a_composite_key_record_updates_its_key_in_place(
    app: App, conn: SqliteConnector
) -> None:
    conn.prepare(LINES)
    app.db.execute("INSERT INTO lines VALUES (7, 1, 3, 'bolt'), (7, 2, 1, 'nut')")
    head = conn.head(LINES)
    result = conn.apply(
        LINES,
        [
            WriteOp("M", (7, 3), {0: 7, 1: 3, 2: 1, 3: "nut"}, (7, 2)),  # frees (7, 2)...
            WriteOp("M", (7, 2), {0: 7, 1: 2, 2: 3, 3: "bolt"}, (7, 1)),  # ...for this one
            WriteOp("M", (8, 1), {0: 8, 1: 1, 2: 9, 3: "gone"}, (9, 9)),  # nothing at (9, 9)
            WriteOp("M", (7, 3), {0: 7, 1: 3}, None),  # no old key: refused, not guessed
        ],
    )
    assert [(f.row, f.column) for f in result.failures] == [(3, None)]
    assert sorted(app.db.execute("SELECT * FROM lines")) == [(7, 2, 3, "bolt"), (7, 3, 1, "nut")]
    assert changes(conn, head, LINES) == []


ACCOUNTS = Capture("accounts_L", "accounts", ("code", "name"), ("code",))
INVOICES = Capture("invoices_L", "invoices", ("id", "account"), ("id",))


def test_a_move_updates_the_key_so_on_update_cascade_foreign_keys_follow(
    app: App, conn: SqliteConnector
) -> None:
    app.db.execute("CREATE TABLE accounts (code TEXT PRIMARY KEY, name TEXT)")
    app.db.execute(
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY,"
        " account TEXT REFERENCES accounts (code) ON UPDATE CASCADE)"
    )
    conn.prepare(ACCOUNTS)
    conn.prepare(INVOICES)  # another map's capture of the child table
    app.db.execute("INSERT INTO accounts VALUES ('A1', 'Contoso')")
    app.db.execute("INSERT INTO invoices VALUES (1, 'A1')")
    heads = conn.head(ACCOUNTS), conn.head(INVOICES)

    result = conn.apply(ACCOUNTS, [WriteOp("M", ("A2",), {0: "A2", 1: "Contoso"}, ("A1",))])
    assert result.failures == []
    assert list(app.db.execute("SELECT * FROM accounts")) == [("A2", "Contoso")]
    assert list(app.db.execute("SELECT * FROM invoices")) == [(1, "A2")]
    assert changes(conn, heads[0], ACCOUNTS) == []  # our move: not captured
    # the cascade is the application's change of the child: its capture sees it
    [cascaded] = changes(conn, heads[1], INVOICES)
    assert (cascaded.op, cascaded.old, cascaded.new) == ("U", (1, "A1"), (1, "A2"))

    # batches without moves keep the connection's setting: foreign keys unenforced
    assert conn.apply(ACCOUNTS, [WriteOp("D", ("A2",), {})]).failures == []


def test_a_move_the_foreign_keys_forbid_is_a_row_failure_and_the_rest_is_written(
    app: App, conn: SqliteConnector
) -> None:
    app.db.execute("CREATE TABLE accounts (code TEXT PRIMARY KEY, name TEXT)")
    app.db.execute(
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, account TEXT REFERENCES accounts)"
    )
    conn.prepare(ACCOUNTS)
    app.db.execute("INSERT INTO accounts VALUES ('A1', 'Contoso'), ('B1', 'Fabrikam')")
    app.db.execute("INSERT INTO invoices VALUES (1, 'A1')")
    result = conn.apply(
        ACCOUNTS,
        [
            WriteOp("M", ("A2",), {0: "A2", 1: "Contoso"}, ("A1",)),  # A1 has an invoice
            WriteOp("M", ("B2",), {0: "B2", 1: "Fabrikam"}, ("B1",)),
        ],
    )
    assert [f.row for f in result.failures] == [0]
    assert "FOREIGN KEY" in result.failures[0].message
    assert sorted(app.db.execute("SELECT * FROM accounts")) == [
        ("A1", "Contoso"),
        ("B2", "Fabrikam"),
    ]


def test_receipts_live_in_the_application_file_and_release_drops_only_their_capture(
    app: App, conn: SqliteConnector
) -> None:
    conn.prepare(LINES)
    conn.apply(CUSTOMERS, [upsert("C1", "Contoso")], Receipt("customers/0", 4))
    conn.apply(LINES, [], Receipt("lines/0", 8))
    assert sorted(app.db.execute("SELECT capture, writer, number FROM _ds_receipts")) == [
        ("customers_L", "customers/0", 4),
        ("lines_L", "lines/0", 8),
    ]
    conn.release(CUSTOMERS)
    assert list(app.db.execute("SELECT capture FROM _ds_receipts")) == [("lines_L",)]
    fresh = SqliteConnector("finance", app.url)  # nothing prepared: no table needed to ask
    try:
        assert fresh.last_receipt(CUSTOMERS, "customers/0") is None
    finally:
        fresh.close()
    other = app.path.with_name("empty.db")
    connect(other).close()
    empty = SqliteConnector("empty", f"sqlite:///{other}")
    try:
        assert empty.last_receipt(CUSTOMERS, "customers/0") is None  # never prepared
    finally:
        empty.close()


def test_a_receipt_holds_the_refused_records_and_an_older_table_gets_the_column(
    app: App, conn: SqliteConnector
) -> None:
    app.db.execute("DROP TABLE _ds_receipts")
    app.db.execute(  # as the previous version made it
        "CREATE TABLE _ds_receipts (capture TEXT NOT NULL, writer TEXT NOT NULL, number INTEGER"
        " NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (capture, writer)) WITHOUT ROWID"
    )
    app.db.execute("INSERT INTO _ds_receipts VALUES ('customers_L', 'customers/0', 1, 0)")
    conn.prepare(CUSTOMERS)
    conn.prepare(CUSTOMERS)  # once is enough
    assert conn.last_receipt(CUSTOMERS, "customers/0") == WriteReceipt(1, 0, [])
    ops = [upsert("C1", "Contoso"), upsert("C2", None), upsert("C3", "Tail", limit=-1)]
    result = conn.apply(CUSTOMERS, ops, Receipt("customers/0", 2))
    assert [(f.row, f.column) for f in result.failures] == [(1, "name"), (2, "credit_limit")]
    receipt = conn.last_receipt(CUSTOMERS, "customers/0")
    assert receipt == WriteReceipt(2, result.position, result.failures)
    [(stored,)] = app.db.execute("SELECT failures FROM _ds_receipts")
    assert stored.startswith('[[1,"name","') and ',[2,"credit_limit","' in stored  # compact
    conn.apply(CUSTOMERS, [upsert("C4", "Fabrikam")], Receipt("customers/0", 3))
    assert list(app.db.execute("SELECT failures FROM _ds_receipts")) == [(None,)]  # none: NULL


# -- snapshot, ack, head -------------------------------------------------------------------


def test_snapshot_returns_every_row_in_key_order_consistent_with_its_head(
    app: App, conn: SqliteConnector
) -> None:
    accounts = ["C5", "C2", "C7", "C1", "C4", "C3", "C6"]
    for account in accounts:
        app.db.execute(
            "INSERT INTO customers VALUES (?, ?, 1.0, NULL, 'x')", (account, f"n{account}")
        )
    head, chunks = conn.snapshot(CUSTOMERS, 3)
    assert head == conn.head(CUSTOMERS) == len(accounts)

    # Another program writes after the snapshot was taken, before its rows are read.
    app.db.execute("INSERT INTO customers VALUES ('C8', 'n8', 1.0, NULL, NULL)")
    app.db.execute("UPDATE customers SET name = 'renamed' WHERE account = 'C2'")
    app.db.execute("DELETE FROM customers WHERE account = 'C1'")

    got = list(chunks)
    assert [len(c) for c in got] == [3, 3, 1]
    assert [row for chunk in got for row in chunk] == [
        (a, f"n{a}", 1.0, None) for a in sorted(accounts)
    ]
    later = changes(conn, after=head)
    assert [(c.op, (c.new or c.old or ())[0]) for c in later] == [
        ("I", "C8"),
        ("U", "C2"),
        ("D", "C1"),
    ]
    assert all(c.seq > head for c in later)


def test_ack_drops_changes_and_sequences_are_never_reused(app: App, conn: SqliteConnector) -> None:
    for account in ("C1", "C2", "C3"):
        app.db.execute("INSERT INTO customers VALUES (?, 'n', 1.0, NULL, NULL)", (account,))
    assert [c.seq for c in changes(conn)] == [1, 2, 3]

    conn.ack(CUSTOMERS, 2)
    assert [c.seq for c in changes(conn)] == [3]
    conn.ack(CUSTOMERS, 3)
    assert app.log_rows() == 0
    assert conn.head(CUSTOMERS) == 3  # the last sequence ever assigned, not the log's last row

    app.db.execute("UPDATE customers SET name = 'm' WHERE account = 'C3'")
    [change] = changes(conn)
    assert change.seq == 4
    assert conn.head(CUSTOMERS) == 4


# -- waiting -------------------------------------------------------------------------------


def test_wait_for_changes_returns_once_another_program_commits(
    app: App, conn: SqliteConnector
) -> None:
    started = threading.Event()

    def commit_soon() -> None:
        db = connect(app.path)
        try:
            started.wait(10)
            db.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 1.0, NULL, NULL)")
        finally:
            db.close()

    thread = threading.Thread(target=commit_soon)
    thread.start()
    try:
        started.set()
        assert conn.wait_for_changes(CUSTOMERS, 0, timeout=30) is True
    finally:
        thread.join()
    assert [c.op for c in changes(conn)] == ["I"]
    # A change committed before the call is found at once.
    app.db.execute("UPDATE customers SET name = 'x'")
    assert conn.wait_for_changes(CUSTOMERS, 1, timeout=30) is True


def test_wait_for_changes_times_out_when_nothing_is_captured(
    app: App, conn: SqliteConnector
) -> None:
    app.db.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 1.0, NULL, NULL)")
    head = conn.head(CUSTOMERS)
    assert conn.wait_for_changes(CUSTOMERS, head, timeout=0.05) is False
    # A commit that changes nothing captured wakes the poller but is no change.
    app.db.execute("UPDATE customers SET notes = 'n'")
    assert conn.wait_for_changes(CUSTOMERS, head, timeout=0.05) is False


def test_wait_for_changes_sees_a_pending_change_of_a_second_capture(
    app: App, conn: SqliteConnector
) -> None:
    conn.prepare(LINES)
    app.db.execute("INSERT INTO lines VALUES (1, 1, 1, 'bolt')")
    assert conn.wait_for_changes(CUSTOMERS, 0, timeout=0.05) is False  # nothing for customers
    assert changes(conn, capture=LINES) != []
    assert conn.wait_for_changes(LINES, 0, timeout=0.05) is True


# -- release -------------------------------------------------------------------------------


def test_release_removes_the_triggers_and_the_change_table(app: App, conn: SqliteConnector) -> None:
    app.db.execute("INSERT INTO customers VALUES ('C1', 'Contoso', 1.0, NULL, NULL)")
    conn.release(CUSTOMERS)
    conn.release(CUSTOMERS)  # idempotent

    names = {r[0] for r in app.db.execute("SELECT name FROM sqlite_master")}
    assert not {n for n in names if n.startswith("_ds_customers_L") or n == "_ds_log_customers_L"}
    assert app.db.execute("SELECT count(*) FROM _ds_session").fetchone()[0] == 0
    # Writes work and are no longer captured.
    app.db.execute("UPDATE customers SET name = 'Contoso Ltd'")
    app.db.execute("INSERT INTO customers VALUES ('C2', 'Tailspin', 1.0, NULL, NULL)")
    assert len(app.rows()) == 2
    with pytest.raises(ConnectorError):
        changes(conn)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite:///", "names no database file"),
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite:///{tmp}/missing/app.db", "does not exist"),
    ],
)
def test_unusable_urls_are_refused_naming_the_app(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(AppError) as info:
        SqliteConnector("finance", url.format(tmp=tmp_path))
    assert info.value.app == "finance"
    assert "'finance'" in str(info.value)
    assert problem in str(info.value)


def test_unknown_url_schemes_are_refused_listing_the_supported_ones() -> None:
    with pytest.raises(AppError) as info:
        open_connector("x", "ftp://example.com/app")
    message = str(info.value)
    assert info.value.app == "x"
    assert "ftp://example.com/app" in message
    assert "supported:" in message
    for scheme in ("sqlite://", "postgresql://", "mysql://", "mariadb://", "http://"):
        assert scheme in message


def test_driver_errors_become_connector_errors_naming_app_and_entity(
    app: App, conn: SqliteConnector
) -> None:
    app.db.execute('DROP TABLE "_ds_log_customers_L"')  # behind the connector's back
    with pytest.raises(ConnectorError) as info:
        changes(conn)
    assert (info.value.app, info.value.entity) == ("finance", "customers")
    assert "app 'finance', entity 'customers'" in str(info.value)
    assert "no such table" in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error)

    app.db.execute('DROP TRIGGER "_ds_customers_L_insert"')
    app.db.execute("DROP TABLE customers")
    with pytest.raises(ConnectorError) as info:
        conn.apply(CUSTOMERS, [upsert("C1", "Contoso")])
    assert (info.value.app, info.value.entity) == ("finance", "customers")
    assert "writing a batch failed" in str(info.value)


def test_identifiers_that_need_quoting_work_end_to_end(app: App, conn: SqliteConnector) -> None:
    app.db.execute(
        'CREATE TABLE "order lines" ("line no" INTEGER PRIMARY KEY, "q""ty" INTEGER NOT NULL,'
        ' "it\'em" TEXT)'
    )
    capture = Capture("order_lines_L", "order lines", ("line no", 'q"ty', "it'em"), ("line no",))
    schema = conn.describe("order lines")
    assert schema is not None
    assert list(schema.columns) == ["line no", 'q"ty', "it'em"] and schema.unique == (("line no",),)

    conn.prepare(capture)
    app.db.execute("""INSERT INTO "order lines" VALUES (1, 3, 'bolt')""")
    app.db.execute("""UPDATE "order lines" SET "q""ty" = 4""")
    assert [(c.op, c.old, c.new) for c in changes(conn, capture=capture)] == [
        ("I", None, (1, 3, "bolt")),
        ("U", (1, 3, "bolt"), (1, 4, "bolt")),
    ]
    result = conn.apply(
        capture,
        [
            WriteOp("I", (2,), {0: 2, 1: 7, 2: "nut"}),
            WriteOp("U", (1,), {1: 5}),
            WriteOp("I", (3,), {0: 3, 1: None, 2: "washer"}),
        ],
    )
    assert [(f.row, f.column) for f in result.failures] == [(2, 'q"ty')]
    assert sorted(app.db.execute('SELECT * FROM "order lines"')) == [(1, 5, "bolt"), (2, 7, "nut")]
    assert len(changes(conn, capture=capture)) == 2  # our writes were not captured
    conn.release(capture)
    assert conn.describe("_ds_log_order_lines_L") is None
