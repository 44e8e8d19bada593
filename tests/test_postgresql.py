"""The PostgreSQL connector against a real server, beyond the contract suite.

Each test gets a fresh schema (`harness_postgresql.PostgresHarness`); "another program" is a
psycopg connection of its own. No fakes: triggers, row locks, LISTEN/NOTIFY and deadlock
detection are PostgreSQL's.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest

from engine.connectors import (
    Capture,
    Receipt,
    WriteFailure,
    WriteOp,
    WriteReceipt,
    open_connector,
)
from engine.connectors.postgresql import PostgresConnector, parse_url
from engine.errors import AppError, ConnectorError
from engine.values import Json

from conftest import wait_until
from contract_harness import COLUMNS, as_tuple, sample
from harness_postgresql import PostgresHarness, q, server_url, with_schema

LIMIT = 100_000


@pytest.fixture
def app(tmp_path: Path) -> Iterator[PostgresHarness]:
    harness = PostgresHarness(tmp_path)
    harness.create()
    yield harness
    harness.close()


@pytest.fixture
def cap() -> Capture:
    # A name of its own, so no other test's NOTIFY on this server can wake our waits.
    return Capture(f"items_{uuid.uuid4().hex[:8]}", "items", COLUMNS, ("id",))


@pytest.fixture
def conn(app: PostgresHarness, cap: Capture) -> Iterator[PostgresConnector]:
    connector = PostgresConnector("finance", app.url)
    connector.prepare(cap)
    yield connector
    connector.close()


def upsert(i: int, **overrides: Any) -> WriteOp:
    row = sample(i, **overrides)
    return WriteOp("I", (i,), {n: row[c] for n, c in enumerate(COLUMNS)})


def other_program() -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(parse_url(server_url())[0], autocommit=True)


# -- waiting -------------------------------------------------------------------------------


class Looks:
    """Counts the statements the connector's LISTEN connection runs (its looks at the head)."""

    def __init__(self, conn: PostgresConnector, monkeypatch: pytest.MonkeyPatch) -> None:
        listener = conn._listener
        assert listener is not None
        self.count = 0
        real = listener.execute

        def execute(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            self.count += 1  # counted once the look is done
            return result

        monkeypatch.setattr(listener, "execute", execute)


def test_wait_for_changes_sleeps_on_listen_and_a_commit_wakes_it(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = conn.head(cap)
    assert conn.wait_for_changes(cap, head, 0) is False  # opens the LISTEN connection
    looks = Looks(conn, monkeypatch)
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(conn.wait_for_changes(cap, head, 60)))
    waiter.start()
    try:
        wait_until(lambda: looks.count == 1, what="the waiter's first look at the head")
        app.insert([sample(1)])
        wait_until(lambda: outcome, what="the commit to wake the waiter")
    finally:
        waiter.join()
    assert outcome == [True]
    # One look before sleeping, one after the notification: nothing polled in between.
    assert looks.count == 2


def test_wait_for_changes_without_a_change_returns_false_at_its_timeout_without_polling(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.insert([sample(1)])
    head = conn.head(cap)
    assert conn.wait_for_changes(cap, head - 1, 0) is True  # a change already there: at once
    looks = Looks(conn, monkeypatch)
    app.update(1, {"note": "not captured"})  # logs nothing, so notifies nothing
    assert conn.wait_for_changes(cap, head, 0.3) is False
    assert looks.count == 1


# -- identifiers and URLs -------------------------------------------------------------------


def test_schema_table_and_columns_that_need_quoting_work_end_to_end(tmp_path: Path) -> None:
    app = PostgresHarness(tmp_path, schema=f'Sync "T" {uuid.uuid4().hex[:8]}')
    try:
        table = app.table("Order Lines")
        app.db.execute(
            f'CREATE TABLE {table} ("Line No" integer PRIMARY KEY, "q""ty" integer NOT NULL,'
            """ "it'em" text, "Doc" json)"""
        )
        capture = Capture(
            "order_lines_L", "Order Lines", ("Line No", 'q"ty', "it'em", "Doc"), ("Line No",)
        )
        connector = open_connector("shop", app.url)
        try:
            schema = connector.describe("Order Lines")
            assert schema is not None and schema.unique == (("Line No",),)
            assert list(schema.columns) == ["Line No", 'q"ty', "it'em", "Doc"]
            assert schema.columns['q"ty'].type == "integer" and not schema.columns['q"ty'].nullable

            connector.prepare(capture)
            app.db.execute(f"""INSERT INTO {table} VALUES (1, 3, 'bolt', '{{"a": 1}}')""")
            app.db.execute(f'UPDATE {table} SET "q""ty" = 4')
            app.db.execute(f"""UPDATE {table} SET "Doc" = '{{"a": 1}}'""")  # the same json
            changes = connector.read_changes(capture, 0, LIMIT)
            assert [(c.op, c.old, c.new) for c in changes] == [
                ("I", None, (1, 3, "bolt", Json({"a": 1}))),
                ("U", (1, 3, "bolt", Json({"a": 1})), (1, 4, "bolt", Json({"a": 1}))),
            ]
            result = connector.apply(
                capture,
                [
                    WriteOp("I", (2,), {0: 2, 1: 7, 2: "nut", 3: None}),
                    WriteOp("U", (1,), {1: 5}),
                    WriteOp("I", (3,), {0: 3, 1: None, 2: "washer", 3: None}),
                ],
            )
            assert [(f.row, f.column) for f in result.failures] == [(2, 'q"ty')]
            rows = app.db.execute(f'SELECT "Line No", "q""ty" FROM {table} ORDER BY 1')
            assert rows.fetchall() == [(1, 5), (2, 7)]
            assert len(connector.read_changes(capture, 0, LIMIT)) == 2  # ours not captured
            head, chunks = connector.snapshot(capture, 1)
            assert head == changes[-1].seq
            assert [row[:3] for chunk in chunks for row in chunk] == [(1, 5, "bolt"), (2, 7, "nut")]
            connector.release(capture)
            assert connector.describe("_ds_log_order_lines_L") is None
        finally:
            connector.close()
    finally:
        app.close()


def test_the_url_names_user_host_port_database_and_schema() -> None:
    conninfo, schema, query = parse_url(
        "postgresql://sync:s3cret@db.example:6543/erp?schema=Sales%20EU&sslmode=disable"
    )
    assert schema == "Sales EU"
    assert conninfo == "postgresql://sync:s3cret@db.example:6543/erp?sslmode=disable"
    assert query == {"sslmode": "disable"}
    assert parse_url("postgresql://sync@db.example/erp")[1] == "public"
    # a Unix socket, the libpq way
    assert parse_url("postgresql:///erp?host=/run/postgresql&schema=s")[:2] == (
        "postgresql:///erp?host=%2Frun%2Fpostgresql",
        "s",
    )


def test_a_connector_works_in_the_schema_its_url_names(app: PostgresHarness, cap: Capture) -> None:
    url = with_schema(server_url(), app.schema)
    assert f"schema={app.schema}" in url
    connector = open_connector("finance", url)
    try:
        assert isinstance(connector, PostgresConnector) and connector.schema == app.schema
        assert connector.describe("items") is not None
    finally:
        connector.close()
    public = open_connector("finance", server_url())
    try:
        assert public.describe("items") is None  # not in public
    finally:
        public.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgres://u@h/db", "expected a URL like postgresql://"),
        ("postgresql://u:pw@h:5432/", "names no database"),
        ("postgresql://u:pw@h:5432/db?schema=", "names an empty schema"),
    ],
)
def test_unusable_urls_are_refused_naming_the_app(url: str, problem: str) -> None:
    with pytest.raises(AppError) as info:
        PostgresConnector("finance", url)
    assert info.value.app == "finance" and problem in str(info.value)
    assert ":pw@" not in str(info.value)


def test_a_schema_that_does_not_exist_is_refused() -> None:
    with pytest.raises(AppError) as info:
        PostgresConnector("finance", with_schema(server_url(), "no_such_schema_ds"))
    assert "schema 'no_such_schema_ds' does not exist" in str(info.value)


# -- concurrency ---------------------------------------------------------------------------


class Span(NamedTuple):
    """When a transaction ran, in ticks of one shared counter: ``begin`` before it started,
    ``end`` after its commit returned. ``a.end < b.begin``: a committed before b began."""

    begin: int
    end: int


def test_concurrent_writers_are_captured_once_in_commit_order_around_our_positions(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    app.insert([sample(0)])  # the hot row everyone updates
    base = conn.head(cap)
    ticks, tick_lock = itertools.count(), threading.Lock()
    table = app.table("items")

    def tick() -> int:
        with tick_lock:
            return next(ticks)

    # marker -> span: an insert's id, or the ratio an update of the hot row set
    theirs: dict[float, Span] = {}
    together: list[list[float]] = []  # markers written by one transaction
    hot: list[float] = []  # markers of the hot row's updates
    errors: list[BaseException] = []

    def external(thread: int) -> None:
        db = other_program()
        try:
            for k in range(24):
                marker = thread * 1000 + k + 1000
                begin = tick()
                with db.transaction():
                    if k % 3 == 0:  # two rows in one transaction: consecutive sequences
                        db.execute(f"INSERT INTO {table} (id, name) VALUES (%s, 'a')", (marker,))
                        db.execute(f"INSERT INTO {table} (id, name) VALUES (%s, 'b')", (-marker,))
                        together.append([marker, -marker])
                    elif k % 3 == 1:
                        db.execute(f"UPDATE {table} SET ratio = %s WHERE id = 0", (marker,))
                        hot.append(marker)
                    else:
                        db.execute(f"INSERT INTO {table} (id, name) VALUES (%s, 'c')", (marker,))
                span = Span(begin, tick())
                theirs[marker] = span
                if k % 3 == 0:
                    theirs[-marker] = span
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=external, args=(t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    ours: list[tuple[Span, int]] = []
    try:
        for batch in range(16):
            ops = [upsert(batch * 4 + i + 1) for i in range(4)]
            ops.append(WriteOp("U", (0,), {1: f"ours {batch}"}))  # the hot row, too
            begin = tick()
            result = conn.apply(cap, ops)
            ours.append((Span(begin, tick()), result.position))
            assert result.failures == []
    finally:
        for thread in threads:
            thread.join()
    assert errors == []

    log = conn.read_changes(cap, base, LIMIT)
    markers = [c.new[0] if c.op == "I" else c.new[COLUMNS.index("ratio")] for c in log if c.new]
    # Every external change exactly once, and nothing of ours.
    assert Counter(markers) == Counter(list(theirs))
    seq = {marker: change.seq for marker, change in zip(markers, log, strict=True)}
    for a, b in itertools.permutations(theirs, 2):
        if theirs[a].end < theirs[b].begin:
            assert seq[a] < seq[b], f"{a} committed before {b} began"
    for pair in together:
        assert abs(seq[pair[0]] - seq[pair[1]]) == 1  # nobody logged in between
    for span, position in ours:
        for marker, their in theirs.items():
            if their.end < span.begin:
                assert seq[marker] <= position, f"{marker} committed before our write"
            if span.end < their.begin:
                assert seq[marker] > position, f"{marker} began after our write committed"
    # The hot row holds the value of its last update in sequence order: commit order.
    assert app.rows()[0][COLUMNS.index("ratio")] == max(hot, key=seq.__getitem__)


def test_a_deadlock_with_an_application_transaction_is_broken_and_our_write_retried(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    app.insert([sample(1), sample(2)])
    db = other_program()
    table = app.table("items")
    outcome: list[Any] = []
    assert conn._con is not None
    writing_pid = conn._con.info.backend_pid
    try:
        db.execute("BEGIN")
        db.execute(f"UPDATE {table} SET qty = 7 WHERE id = 2")  # logged: holds the gate
        writer = threading.Thread(
            target=lambda: outcome.append(conn.apply(cap, [WriteOp("U", (1,), {2: 99})]))
        )
        writer.start()
        try:
            # Our write holds row 1 and waits for the gate...
            wait_until(
                lambda: (
                    # NOTE: not on ``db``: a transaction sees pg_stat_activity frozen
                    app.db.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                        (writing_pid,),
                    ).fetchone()
                    == ("Lock",)
                ),
                what="our write to wait for the gate",
            )
            # ...which the application holds, while it now wants row 1: a deadlock.
            try:
                db.execute(f"UPDATE {table} SET qty = 8 WHERE id = 1")
                db.execute("COMMIT")
                committed = True
            except psycopg.errors.DeadlockDetected:
                db.execute("ROLLBACK")
                committed = False
        finally:
            writer.join()
    finally:
        db.close()
    [result] = outcome
    assert result.failures == []
    changes = conn.read_changes(cap, 2, LIMIT)
    # Whichever PostgreSQL chose to break, the write landed after what committed before it.
    assert all(c.seq <= result.position for c in changes)
    assert app.rows()[1][COLUMNS.index("qty")] == 99
    assert len(changes) == (2 if committed else 0)


def test_repeatable_read_applications_get_no_serialization_failure_from_the_gate(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    first, second = other_program(), other_program()
    try:
        first.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        first.execute(f"SELECT count(*) FROM {app.table('items')}")  # its snapshot
        second.execute(f"INSERT INTO {app.table('items')} (id, name) VALUES (2, 'b')")
        first.execute(f"INSERT INTO {app.table('items')} (id, name) VALUES (1, 'a')")
        first.execute("COMMIT")
    finally:
        first.close()
        second.close()
    assert [c.new[0] for c in conn.read_changes(cap, 0, LIMIT) if c.new] == [2, 1]


def test_a_second_capture_of_the_same_table_sees_the_first_ones_writes(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    other = Capture(cap.name + "_b", "items", ("id", "name"), ("id",))
    conn.prepare(other)
    conn.apply(cap, [upsert(1)])
    assert conn.read_changes(cap, 0, LIMIT) == []  # no echo for the writer's capture
    [change] = conn.read_changes(other, 0, LIMIT)
    assert change.new == (1, sample(1)["name"])
    conn.apply(other, [WriteOp("U", (1,), {1: "b"})])
    [change] = conn.read_changes(cap, 0, LIMIT)
    assert change.op == "U" and change.new is not None and change.new[1] == "b"


def test_an_application_with_a_role_of_its_own_needs_no_rights_on_the_change_tables(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    role = f"ds_app_{uuid.uuid4().hex[:8]}"
    app.db.execute(f"CREATE ROLE {role} LOGIN")
    try:
        app.db.execute(f"GRANT USAGE ON SCHEMA {q(app.schema)} TO {role}")
        app.db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {app.table('items')} TO {role}")
        with psycopg.connect(parse_url(server_url())[0], user=role, autocommit=True) as db:
            db.execute(f"INSERT INTO {app.table('items')} (id, name) VALUES (1, 'a')")
            db.execute(f"UPDATE {app.table('items')} SET name = 'b'")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute(f"SELECT * FROM {app.table('_ds_log_' + cap.name)}")
    finally:
        app.db.execute(f"DROP OWNED BY {role}")
        app.db.execute(f"DROP ROLE {role}")
    assert [c.op for c in conn.read_changes(cap, 0, LIMIT)] == ["I", "U"]


def test_prepare_refuses_a_declared_type_the_column_cannot_hold(
    app: PostgresHarness, conn: PostgresConnector
) -> None:
    declared = ("int", "int", "int", "decimal", "timestamp", "date", "json", "bytes", "uuid")
    wrong = Capture("typed_L", "items", COLUMNS, ("id",), (*declared, "bool", "float"))
    with pytest.raises(ConnectorError) as info:
        conn.prepare(wrong)  # name is varchar(40): text, not int
    assert "column 'name' (character varying(40)) holds text, not the declared int" in str(
        info.value
    )
    # A uuid column can be mapped as text: every uuid is one.
    conn.prepare(Capture("typed_L", "items", ("id", "ref"), ("id",), ("int", "text")))


# -- schema changes and errors -------------------------------------------------------------


def test_a_captured_column_dropped_while_running_turns_writes_naming_it_into_row_failures(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    app.insert([sample(1), sample(2)])
    # PostgreSQL refuses while the triggers need the column...
    with pytest.raises(psycopg.errors.DependentObjectsStillExist):
        app.db.execute(f"ALTER TABLE {app.table('items')} DROP COLUMN qty")
    # ...and CASCADE drops them with it.
    app.db.execute(f"ALTER TABLE {app.table('items')} DROP COLUMN qty CASCADE")
    result = conn.apply(
        cap,
        [
            upsert(3),  # names qty
            WriteOp("U", (1,), {1: "renamed"}),
            WriteOp("U", (2,), {2: 5}),  # qty
            WriteOp("D", (4,), {}),
        ],
    )
    assert [(f.row, f.column) for f in result.failures] == [(0, "qty"), (2, "qty")]
    assert all("qty" in f.message for f in result.failures)
    names = app.db.execute(f"SELECT id, name FROM {app.table('items')} ORDER BY id").fetchall()
    assert names == [(1, "renamed"), (2, sample(2)["name"])]
    # The changes logged before the drop can still be read.
    assert [c.op for c in conn.read_changes(cap, 0, LIMIT)] == ["I", "I"]
    with pytest.raises(ConnectorError) as info:
        conn.prepare(cap)
    assert "'qty'" in str(info.value) and info.value.entity == "items"


def test_driver_errors_become_connector_errors_naming_app_and_entity(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    conn.apply(cap, [upsert(1)])
    app.db.execute(f"DROP TABLE {app.table('items')} CASCADE")  # behind the connector's back
    with pytest.raises(ConnectorError) as info:
        conn.apply(cap, [upsert(2)])
    assert (info.value.app, info.value.entity) == ("finance", "items")
    assert "app 'finance', entity 'items': writing a batch failed" in str(info.value)
    assert "does not exist" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)

    app.db.execute(f"DROP TABLE {app.table('_ds_log_' + cap.name)}")
    with pytest.raises(ConnectorError) as info:
        conn.read_changes(cap, 0, LIMIT)
    assert (info.value.app, info.value.entity) == ("finance", "items")
    assert f"change capture {cap.name!r} is not prepared" in str(info.value)
    for call in (
        lambda: conn.wait_for_changes(cap, 0, 0),
        lambda: conn.ack(cap, 1),
        lambda: conn.head(cap),
    ):
        with pytest.raises(ConnectorError) as info:
            call()
        assert (info.value.app, info.value.entity) == ("finance", "items")
        assert isinstance(info.value.__cause__, psycopg.Error)


def test_an_unreachable_server_is_a_connector_error_without_the_password() -> None:
    with pytest.raises(ConnectorError) as info:
        PostgresConnector("finance", "postgresql://postgres:s3cret@127.0.0.1:1/test")
    assert info.value.app == "finance" and "connecting failed" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.OperationalError)


def test_values_postgresql_would_round_or_truncate_are_refused_naming_the_column(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    result = conn.apply(
        cap,
        [
            upsert(1, price=sample(1)["price"] + sample(1)["price"] / 1000),  # 3 decimals
            upsert(2, price=10**10 * sample(2)["price"]),  # past numeric(12, 2)
            upsert(3, qty=2**31),  # past integer
            upsert(4, name="trailing spaces" + " " * 40),  # varchar(40) would drop them
            upsert(5, name="nul \x00 inside"),
            upsert(6),
        ],
    )
    assert [(f.row, f.column) for f in result.failures] == [
        (0, "price"),
        (1, "price"),
        (2, "qty"),
        (3, "name"),
        (4, "name"),
    ]
    assert app.rows() == {6: as_tuple(sample(6))}


def test_refused_records_are_found_in_savepoints_and_the_rest_is_written(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    app.db.execute(f"ALTER TABLE {app.table('items')} ADD CHECK (qty >= 0)")
    app.db.execute(f"CREATE UNIQUE INDEX items_ref ON {app.table('items')} (ref)")
    app.insert([sample(1000)])
    ops = [upsert(i) for i in range(1, 201)]
    ops[17] = upsert(18, qty=-1)  # the check constraint
    ops[120] = upsert(121, ref=sample(1000)["ref"])  # the unique index
    ops[199] = upsert(200, name=None)  # not null
    result = conn.apply(cap, ops)
    assert [(f.row, f.column) for f in result.failures] == [
        (17, "qty"),
        (120, "ref"),
        (199, "name"),
    ]
    assert result.failures == sorted(result.failures)
    assert isinstance(result.failures[0], WriteFailure) and "check" in result.failures[0].message
    assert len(app.rows()) == 1 + 200 - 3
    assert len(conn.read_changes(cap, 0, LIMIT)) == 1  # the retried batch is still ours


def test_a_move_updates_the_key_so_on_update_cascade_foreign_keys_follow(
    app: PostgresHarness,
) -> None:
    app.db.execute(f"CREATE TABLE {app.table('accounts')} (code text PRIMARY KEY, name text)")
    app.db.execute(
        f"CREATE TABLE {app.table('invoices')} (id integer PRIMARY KEY,"
        f" account text REFERENCES {app.table('accounts')} (code) ON UPDATE CASCADE)"
    )
    accounts = Capture("accounts_L", "accounts", ("code", "name"), ("code",))
    invoices = Capture("invoices_L", "invoices", ("id", "account"), ("id",))
    app.db.execute(f"INSERT INTO {app.table('accounts')} VALUES ('A1', 'Contoso'), ('B1', 'Tail')")
    app.db.execute(f"INSERT INTO {app.table('invoices')} VALUES (1, 'A1')")
    conn = PostgresConnector("finance", app.url)
    try:
        conn.prepare(accounts)
        conn.prepare(invoices)  # another map's capture of the child table
        result = conn.apply(
            accounts,
            [
                WriteOp("M", ("A2",), {0: "A2", 1: "Contoso Ltd"}, ("A1",)),
                WriteOp("M", ("A2",), {0: "A2", 1: "Tail"}, ("B1",)),  # onto A2: refused
            ],
        )
        assert [(f.row, f.column) for f in result.failures] == [(1, "code")]
        rows = app.db.execute(f"SELECT * FROM {app.table('accounts')} ORDER BY 1").fetchall()
        assert rows == [("A2", "Contoso Ltd"), ("B1", "Tail")]
        assert app.db.execute(f"SELECT * FROM {app.table('invoices')}").fetchall() == [(1, "A2")]
        assert conn.read_changes(accounts, 0, LIMIT) == []  # our move: not captured
        # the cascade is the application's change of the child: its capture sees it
        [cascaded] = conn.read_changes(invoices, 0, LIMIT)
        assert (cascaded.op, cascaded.old, cascaded.new) == ("U", (1, "A1"), (1, "A2"))
    finally:
        conn.close()


def test_receipts_live_in_the_connectors_schema_and_commit_or_roll_back_with_their_batch(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    first = conn.apply(cap, [upsert(1)], Receipt("items/0", 1))
    rows = app.db.execute(f"SELECT * FROM {app.table('_ds_receipts')}").fetchall()
    assert rows == [(cap.name, "items/0", 1, first.position, None)]  # no refused record
    # a receipt that cannot be recorded (its table dropped behind our back) fails the batch
    # inside its transaction: nothing of it is written
    app.db.execute(f"DROP TABLE {app.table('_ds_receipts')}")
    with pytest.raises(ConnectorError, match="_ds_receipts"):
        conn.apply(cap, [upsert(2)], Receipt("items/0", 2))
    assert sorted(app.rows()) == [1]
    assert conn.last_receipt(cap, "items/0") is None
    conn.prepare(cap)  # puts the table back
    again = conn.apply(cap, [upsert(2)], Receipt("items/0", 2))
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(2, again.position, [])


def test_a_receipts_table_of_the_previous_version_gets_its_failures_column_from_prepare(
    app: PostgresHarness, conn: PostgresConnector, cap: Capture
) -> None:
    table = app.table("_ds_receipts")
    app.db.execute(f"DROP TABLE {table}")
    app.db.execute(
        f"CREATE TABLE {table} (capture text NOT NULL, writer varchar(100) NOT NULL,"
        " number bigint NOT NULL, position bigint NOT NULL, PRIMARY KEY (capture, writer))"
    )
    app.db.execute(f"INSERT INTO {table} VALUES (%s, 'items/0', 1, 0)", (cap.name,))
    conn.prepare(cap)
    conn.prepare(cap)  # once is enough
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(1, 0, [])  # kept, none refused
    result = conn.apply(cap, [upsert(1), upsert(2, name=None)], Receipt("items/0", 2))
    assert [(f.row, f.column) for f in result.failures] == [(1, "name")]
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(2, result.position, result.failures)
    [(stored,)] = app.db.execute(f"SELECT failures FROM {table}").fetchall()
    assert stored.startswith("[[1,") and stored.endswith("]]")  # compact JSON
