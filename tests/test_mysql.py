"""The MariaDB/MySQL connector against a real server, beyond the contract suite.

Every test gets a fresh database (`MysqlHarness`); "another program" changes it through its
own connections (`Db`), the engine through the connector. No fakes: triggers, row locks and
strict mode are the server's.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncmy
import pytest

from engine.connectors import Capture, RawChange, Receipt, WriteOp, WriteReceipt, open_connector
from engine.connectors.mysql import Address, MysqlConnector, mysql_address
from engine.errors import AppError, ConnectorError

from conftest import wait_until
from contract_harness import COLUMNS, as_tuple, sample
from harness_mysql import Db, MysqlHarness, url_for

LIMIT = 100_000
QTY = COLUMNS.index("qty")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[MysqlHarness]:
    harness = MysqlHarness(tmp_path)
    harness.create()
    yield harness
    harness.close()


@pytest.fixture
def conn(app: MysqlHarness) -> Iterator[MysqlConnector]:
    connector = open_connector("shop", app.url)
    assert isinstance(connector, MysqlConnector)
    connector.prepare(app.capture())
    yield connector
    connector.close()


def upsert(i: int, **overrides: Any) -> WriteOp:
    row = sample(i, **overrides)
    return WriteOp("I", (i,), {n: row[c] for n, c in enumerate(COLUMNS)})


def test_values_too_long_or_out_of_range_are_refused_even_when_the_server_is_lenient(
    app: MysqlHarness,
) -> None:
    [(before,)] = app.db.execute("SELECT @@GLOBAL.sql_mode")
    app.db.execute("SET GLOBAL sql_mode = ''")
    try:
        conn = open_connector("shop", app.url)
        conn.prepare(app.capture())
    finally:
        app.db.execute("SET GLOBAL sql_mode = %s", (before,))
    try:
        app.insert([sample(9)])
        result = conn.apply(
            app.capture(),
            [
                upsert(1, name="x" * 41),  # VARCHAR(40)
                upsert(2, qty=2**31),  # INT
                upsert(3, price=Decimal("1.255")),  # DECIMAL(12, 2) would round it
                upsert(4, price=Decimal("12345678901.25")),  # 11 digits before the point
                upsert(5),
                WriteOp("U", (9,), {1: "y" * 41}),
                upsert(6, at=dt.datetime(2040, 1, 1, tzinfo=dt.UTC)),  # past TIMESTAMP's range
                upsert(7, ratio=float("inf")),
            ],
        )
        assert [(f.row, f.column) for f in result.failures] == [
            (0, "name"),
            (1, "qty"),
            (2, "price"),
            (3, "price"),
            (5, "name"),
            (6, "at"),
            (7, "ratio"),
        ]
        assert all(f.message for f in result.failures)
        assert app.rows() == {5: as_tuple(sample(5)), 9: as_tuple(sample(9))}
    finally:
        conn.close()


def test_tables_and_columns_that_need_backquotes_work_everywhere(app: MysqlHarness) -> None:
    app.db.execute(
        "CREATE TABLE `order lines` (`order id` INT, line INT, `q``ty` INT NOT NULL,"
        " `note %s` VARCHAR(20), PRIMARY KEY (`order id`, line))"
    )
    cap = Capture("lines_L", "order lines", ("order id", "line", "q`ty", "note %s"),
                  ("order id", "line"))  # fmt: skip
    conn = open_connector("shop", app.url)
    try:
        schema = conn.describe("order lines")
        assert schema is not None and schema.unique == (("order id", "line"),)
        assert list(schema.columns) == ["order id", "line", "q`ty", "note %s"]
        conn.prepare(cap)
        app.db.transaction(
            [("INSERT INTO `order lines` VALUES (1, 1, 5, 'a%s'), (1, 2, 6, NULL)", None)]
        )
        app.db.execute("UPDATE `order lines` SET `q``ty` = 7 WHERE `order id` = 1 AND line = 1")
        app.db.execute("DELETE FROM `order lines` WHERE `order id` = 1 AND line = 2")
        found = conn.read_changes(cap, 0, LIMIT)
        assert [(c.op, c.old, c.new) for c in found] == [
            ("I", None, (1, 1, 5, "a%s")),
            ("I", None, (1, 2, 6, None)),
            ("U", (1, 1, 5, "a%s"), (1, 1, 7, "a%s")),
            ("D", (1, 2, 6, None), None),
        ]
        head = conn.head(cap)
        result = conn.apply(
            cap,
            [
                WriteOp("I", (2, 1), {2: 3, 3: "x`%s'"}),
                WriteOp("U", (1, 1), {2: 8}),
                WriteOp("I", (2, 2), {2: None}),
                WriteOp("I", (10, 1), {2: 1}),
            ],
        )
        [failure] = result.failures
        assert failure.row == 2 and failure.column == "q`ty"
        assert conn.read_changes(cap, head, LIMIT) == []
        snap_head, chunks = conn.snapshot(cap, 1)
        assert snap_head == head
        assert [row for chunk in chunks for row in chunk] == [
            (1, 1, 8, "a%s"),
            (2, 1, 3, "x`%s'"),
            (10, 1, 1, None),
        ]
        conn.release(cap)
        assert app.db.execute("SHOW TRIGGERS") == []
        assert app.db.execute("SHOW TABLES LIKE '\\_ds\\_log%%'") == []
    finally:
        conn.close()


def test_every_change_is_captured_once_in_commit_order_around_concurrent_writes(
    app: MysqlHarness, conn: MysqlConnector
) -> None:
    """The property the engine relies on: a change committed before one of our writes has a
    seq <= its position, one committed after it a seq > its position; replaying the log and
    our writes in that order gives exactly what the table holds, old values included."""
    cap = app.capture()
    keys = list(range(1, 13))
    app.insert([sample(k) for k in keys])
    start = conn.head(cap)
    stop = threading.Event()
    committed: list[list[tuple[int, int, int, list[tuple[int, int]]]]] = [[] for _ in range(3)]

    def other_program(n: int) -> None:
        db, rnd = Db(database=app.database), random.Random(n)
        try:
            i = 0
            while not stop.is_set() or i == 0 or committed[n][-1][1] < stopped_at[0]:
                i += 1
                pair = sorted(rnd.sample(keys, 2))
                updates = [(k, 1_000_000 * (n + 1) + 10 * i + j) for j, k in enumerate(pair)]
                statements = [
                    ("UPDATE items SET qty = %s WHERE id = %s", (v, k)) for k, v in updates
                ]
                for _ in range(100):
                    begun = time.perf_counter_ns()
                    try:
                        db.transaction(statements)
                    except asyncmy.errors.OperationalError as exc:
                        if exc.args[0] != 1213:  # a deadlock: retried, as applications do
                            raise
                        continue
                    committed[n].append((begun, time.perf_counter_ns(), n, updates))
                    break
        finally:
            db.close()

    stopped_at = [0]
    threads = [threading.Thread(target=other_program, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    writes: list[tuple[int, int, int, list[WriteOp]]] = []
    try:
        wait_until(lambda: all(committed), what="every other program to commit once")
        rnd = random.Random(99)
        for b in range(20):
            ops = [
                WriteOp("U", (k,), {QTY: -(10 * b + j)}) for j, k in enumerate(rnd.sample(keys, 3))
            ]
            begun = time.perf_counter_ns()
            result = conn.apply(cap, ops)
            writes.append((begun, time.perf_counter_ns(), result.position, ops))
            assert result.failures == []
    finally:
        stopped_at[0] = time.perf_counter_ns()
        stop.set()
        for t in threads:
            t.join()

    changes = conn.read_changes(cap, start, LIMIT)
    transactions = [x for per_thread in committed for x in per_thread]
    # exactly once, and never one of ours
    assert Counter((c.new[0], c.new[QTY]) for c in changes if c.new) == Counter(
        u for x in transactions for u in x[3]
    )
    seq_of = {(c.new[0], c.new[QTY]): c.seq for c in changes if c.new}
    seqs = [[seq_of[u] for u in x[3]] for x in transactions]
    # a transaction's changes are consecutive, and transactions are numbered in commit order
    assert all(s == list(range(s[0], s[0] + len(s))) for s in seqs)
    for a, sa in zip(transactions, seqs, strict=True):
        for b, sb in zip(transactions, seqs, strict=True):
            if a[1] < b[0]:
                assert max(sa) < min(sb)
    # where each write landed
    for w_begun, w_done, position, _ in writes:
        for x, s in zip(transactions, seqs, strict=True):
            if x[1] < w_begun:
                assert max(s) <= position
            if x[0] > w_done:
                assert min(s) > position
    # replaying changes and writes in log order rebuilds the table, old values included
    held = {k: sample(k)["qty"] for k in keys}
    events: list[tuple[int, int, int, RawChange | list[WriteOp]]] = [
        (c.seq, 0, i, c) for i, c in enumerate(changes)
    ]
    events += [(position, 1, i, ops) for i, (_, _, position, ops) in enumerate(writes)]
    for _, _, _, event in sorted(events, key=lambda e: e[:3]):
        if isinstance(event, RawChange):
            assert event.old is not None and event.new is not None
            assert event.old[QTY] == held[event.old[0]]
            held[event.new[0]] = event.new[QTY]
        else:
            for op in event:
                held[op.key[0]] = op.values[QTY]
    assert held == {k: row[QTY] for k, row in app.rows().items()}


def test_a_captured_column_dropped_while_running_is_named_in_the_error(
    app: MysqlHarness, conn: MysqlConnector
) -> None:
    cap = app.capture()
    conn.apply(cap, [upsert(1)])
    app.db.execute("ALTER TABLE items DROP COLUMN qty")
    with pytest.raises(ConnectorError) as err:
        conn.apply(cap, [upsert(2), WriteOp("U", (1,), {QTY: 5})])
    assert err.value.app == "shop" and err.value.entity == "items"
    assert "qty" in err.value.problem
    with pytest.raises(ConnectorError, match="qty"):
        conn.prepare(cap)
    # a capture without the column works again, for the engine and the application
    columns = tuple(c for c in COLUMNS if c != "qty")
    again = Capture("items_L", "items", columns, ("id",))
    conn.prepare(again)
    head = conn.head(again)
    app.update(1, {"name": "theirs"})
    [change] = conn.read_changes(again, head, LIMIT)
    assert change.new is not None and change.new[1] == "theirs"
    assert conn.apply(again, [WriteOp("U", (1,), {1: "ours"})]).failures == []


def test_mysql_and_mariadb_urls_open_the_same_connector(app: MysqlHarness) -> None:
    for scheme in ("mysql", "mariadb"):
        conn = open_connector("shop", url_for(app.database, app.url, scheme))
        try:
            assert isinstance(conn, MysqlConnector)
            assert conn.describe("items") is not None
        finally:
            conn.close()
    assert mysql_address("mariadb://ana%40x:p%3Aw%2F@db.example:3307/shop") == Address(
        "db.example", 3307, "ana@x", "p:w/", "shop", None
    )
    assert mysql_address("mysql://localhost/shop?unix_socket=/run/mysqld.sock") == Address(
        "localhost", 3306, "root", "", "shop", "/run/mysqld.sock"
    )
    for bad in ("mysql://root@localhost/", "mysql://root@localhost:port/shop"):
        with pytest.raises(AppError) as err:
            open_connector("shop", bad)
        assert err.value.app == "shop" and "mysql://user[:password]@host[:port]/database" in str(
            err.value
        )


def test_driver_errors_become_connector_errors_naming_app_and_entity(app: MysqlHarness) -> None:
    unreachable = open_connector("shop", "mysql://root@127.0.0.1:1/nowhere")
    with pytest.raises(ConnectorError) as err:
        unreachable.describe("items")
    assert (err.value.app, err.value.entity) == ("shop", "items")
    unreachable.close()
    conn = open_connector("shop", app.url)
    try:
        with pytest.raises(ConnectorError) as err:
            conn.read_changes(app.capture(), 0, 10)  # never prepared: no change table
        assert (err.value.app, err.value.entity) == ("shop", "items")
        assert "_ds_log_items_L" in err.value.problem
        with pytest.raises(ConnectorError, match="not installed"):
            conn.head(app.capture())
        conn.prepare(app.capture())
        app.db.execute("DROP TABLE items")
        with pytest.raises(ConnectorError) as err:
            conn.apply(app.capture(), [upsert(1)])
        assert (err.value.app, err.value.entity) == ("shop", "items")
        assert conn.describe("items") is None  # the connection is still usable
    finally:
        conn.close()


def test_the_applications_last_insert_id_survives_the_capture_triggers(app: MysqlHarness) -> None:
    app.db.execute("CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT)")
    conn = open_connector("shop", app.url)
    try:
        conn.prepare(Capture("notes_L", "notes", ("id", "body"), ("id",)))
        for expected in (1, 2):
            [(got,)] = app.db.transaction(
                [("INSERT INTO notes (body) VALUES ('x')", None), ("SELECT LAST_INSERT_ID()", None)]
            )
            assert got == expected
    finally:
        conn.close()


def test_our_writes_are_captured_by_another_maps_capture_of_the_same_table(
    app: MysqlHarness, conn: MysqlConnector
) -> None:
    other = app.capture("items_X")
    conn.prepare(other)
    conn.apply(app.capture(), [upsert(1)])
    assert conn.read_changes(app.capture(), 0, LIMIT) == []
    [change] = conn.read_changes(other, 0, LIMIT)
    assert change.op == "I" and change.new == as_tuple(sample(1))


def test_an_upsert_never_overwrites_a_row_it_collides_with_on_another_unique_key(
    app: MysqlHarness,
) -> None:
    app.db.execute(
        "CREATE TABLE people (id INT PRIMARY KEY, email VARCHAR(40) NOT NULL UNIQUE, name TEXT)"
    )
    app.db.execute("INSERT INTO people VALUES (1, 'a@x', 'Ana'), (2, 'b@x', 'Bo')")
    cap = Capture("people_L", "people", ("id", "email", "name"), ("id",))
    conn = open_connector("shop", app.url)
    try:
        conn.prepare(cap)
        result = conn.apply(
            cap,
            [
                WriteOp("I", (3,), {1: "a@x", 2: "Cy"}),  # collides with 1 on email
                WriteOp("I", (2,), {1: "b2@x", 2: "Bob"}),  # exists: updated
                WriteOp("I", (4,), {1: "d@x", 2: "Di"}),  # new
            ],
        )
        [failure] = result.failures
        assert failure.row == 0 and failure.column == "email"
        assert app.db.execute("SELECT * FROM people ORDER BY id") == [
            (1, "a@x", "Ana"),
            (2, "b2@x", "Bob"),
            (4, "d@x", "Di"),
        ]
    finally:
        conn.close()


def test_a_change_of_case_only_is_a_change(app: MysqlHarness, conn: MysqlConnector) -> None:
    app.insert([sample(1, name="abc")])
    head = conn.head(app.capture())
    app.update(1, {"name": "ABC"})
    app.update(1, {"name": "ABC "})
    found = conn.read_changes(app.capture(), head, LIMIT)
    assert [c.new[1] for c in found if c.new] == ["ABC", "ABC "]


def test_a_connection_the_server_closed_is_opened_again(
    app: MysqlHarness, conn: MysqlConnector
) -> None:
    cap = app.capture()
    head = conn.head(cap)
    ours = app.db.execute(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID <> CONNECTION_ID()",
        (app.database,),
    )
    for (pid,) in ours:
        app.db.execute(f"KILL CONNECTION {int(pid)}")
    try:
        conn.head(cap)  # may learn of the loss only now
    except ConnectorError as exc:
        assert exc.app == "shop" and exc.entity == "items"
    assert conn.head(cap) == head
    app.insert([sample(1)])
    assert [c.op for c in conn.read_changes(cap, head, LIMIT)] == ["I"]


def test_a_move_updates_the_key_so_on_update_cascade_foreign_keys_follow(
    app: MysqlHarness,
) -> None:
    app.db.execute(
        "CREATE TABLE accounts (code VARCHAR(10) PRIMARY KEY, email VARCHAR(40) UNIQUE,"
        " name TEXT) ENGINE=InnoDB"
    )
    app.db.execute(
        "CREATE TABLE invoices (id INT PRIMARY KEY, account VARCHAR(10),"
        " FOREIGN KEY (account) REFERENCES accounts (code) ON UPDATE CASCADE) ENGINE=InnoDB"
    )
    accounts = Capture("accounts_L", "accounts", ("code", "email", "name"), ("code",))
    invoices = Capture("invoices_L", "invoices", ("id", "account"), ("id",))
    app.db.execute("INSERT INTO accounts VALUES ('A1', 'a@x', 'Contoso'), ('B1', 'b@x', 'Tail')")
    app.db.execute("INSERT INTO invoices VALUES (1, 'A1')")
    conn = open_connector("shop", app.url)
    try:
        conn.prepare(accounts)
        conn.prepare(invoices)  # another map's capture of the child table
        result = conn.apply(
            accounts,
            [
                WriteOp("M", ("A2",), {0: "A2", 1: "a@x", 2: "Contoso Ltd"}, ("A1",)),
                WriteOp("M", ("A2",), {0: "A2", 1: "b@x", 2: "Tail"}, ("B1",)),  # onto A2
                WriteOp("M", ("B2",), {0: "B2", 1: "a@x", 2: "Tail"}, ("B1",)),  # email taken
            ],
        )
        assert [(f.row, f.column) for f in result.failures] == [(1, "code"), (2, "email")]
        assert app.db.execute("SELECT * FROM accounts ORDER BY code") == [
            ("A2", "a@x", "Contoso Ltd"),
            ("B1", "b@x", "Tail"),
        ]
        assert app.db.execute("SELECT * FROM invoices") == [(1, "A2")]
        assert conn.read_changes(accounts, 0, LIMIT) == []  # our move: not captured
        # NOTE: MariaDB and MySQL fire no triggers for foreign key actions: the cascade is
        # not captured by the child table's capture (PostgreSQL's and SQLite's are).
        assert conn.read_changes(invoices, 0, LIMIT) == []
    finally:
        conn.close()


def test_receipts_live_in_the_database_and_commit_or_roll_back_with_their_batch(
    app: MysqlHarness, conn: MysqlConnector
) -> None:
    cap = app.capture()
    first = conn.apply(cap, [upsert(1)], Receipt("items/0", 1))
    assert app.db.execute("SELECT * FROM _ds_receipts") == [
        (cap.name, "items/0", 1, first.position, None)  # no refused record
    ]
    # a receipt that cannot be recorded (its table dropped behind our back) fails the batch
    # inside its transaction: nothing of it is written
    app.db.execute("DROP TABLE _ds_receipts")
    with pytest.raises(ConnectorError, match="_ds_receipts"):
        conn.apply(cap, [upsert(2)], Receipt("items/0", 2))
    assert sorted(app.rows()) == [1]
    assert conn.last_receipt(cap, "items/0") is None
    conn.prepare(cap)  # puts the table back
    again = conn.apply(cap, [upsert(2)], Receipt("items/0", 2))
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(2, again.position, [])


def test_a_receipts_table_of_the_previous_version_gets_its_failures_column_from_prepare(
    app: MysqlHarness, conn: MysqlConnector
) -> None:
    cap = app.capture()
    app.db.execute("DROP TABLE _ds_receipts")
    app.db.execute(
        "CREATE TABLE _ds_receipts (`capture` VARCHAR(64) NOT NULL,"
        " `writer` VARCHAR(100) NOT NULL, `number` BIGINT NOT NULL,"
        " `position` BIGINT NOT NULL, PRIMARY KEY (`capture`, `writer`))"
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )
    app.db.execute(f"INSERT INTO _ds_receipts VALUES ('{cap.name}', 'items/0', 1, 0)")
    conn.prepare(cap)
    conn.prepare(cap)  # once is enough
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(1, 0, [])  # kept, none refused
    result = conn.apply(cap, [upsert(1), upsert(2, name=None)], Receipt("items/0", 2))
    assert [(f.row, f.column) for f in result.failures] == [(1, "name")]
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(2, result.position, result.failures)
    [(stored,)] = app.db.execute("SELECT `failures` FROM _ds_receipts")
    assert stored.startswith("[[1,") and stored.endswith("]]")  # compact JSON
