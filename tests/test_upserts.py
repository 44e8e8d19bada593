"""Upserts the applications make are captured for what they do (issue: nothing lost at the edges).

An upsert of a row the application holds is an update of that row (with its old image); a row
an upsert displaces (REPLACE colliding on another UNIQUE column) is a delete. Each connector
and statement form is run by "another program" (the application's own connection) against a
table ``people (id primary key, email unique, name)`` whose capture is prepared by the
connector; the changes it reads back are compared with what the statement did. The last
tests run the issue's case through the engine and `verify` the two sides.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from engine import UniqueOrderWarning
from engine.connectors import Capture, Connector, WriteOp, open_connector

from harness_mysql import MysqlHarness
from harness_postgresql import PostgresHarness

CAP = Capture("people_L", "people", ("id", "email", "name"), ("id",))
ROWS = [(1, "u1@x", "one"), (2, "u2@x", "two"), (3, "u3@x", "three")]

Change = tuple[str, tuple[Any, ...] | None, tuple[Any, ...] | None]


def read(conn: Connector, after: int = 0) -> list[Change]:
    return [(c.op, c.old, c.new) for c in conn.read_changes(CAP, after, 10_000)]


def applied(changes: list[Change], start: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
    """The rows another side ends with when it applies ``changes`` to ``start``."""
    rows = dict(start)
    for op, old, new in changes:
        if old is not None and op in "UD":
            assert rows.pop(old[0], None) == old, f"{op} of a row the log never had: {old}"
        if new is not None:
            rows[new[0]] = new
    return rows


class App:
    """A table ``people`` changed through the application's own connection (``execute``),
    captured by the connector of ``url``."""

    def __init__(self, execute: Callable[[str], Any], url: str, rows: Callable[[], Any]) -> None:
        self.execute = execute
        self.conn = open_connector("app", url)
        self._rows = rows
        self.conn.prepare(CAP)

    def rows(self) -> dict[int, tuple[Any, ...]]:
        return {r[0]: tuple(r) for r in self._rows()}

    def run(self, *sql: str) -> list[Change]:
        """Run ``sql``; the changes captured, checked to bring a copy to the same rows."""
        before = self.rows()
        head = self.conn.head(CAP)
        for statement in sql:
            self.execute(statement)
        found = read(self.conn, head)
        assert applied(found, before) == self.rows()
        return found


# -- SQLite ---------------------------------------------------------------------------------


class SqliteApp(App):
    def __init__(self, tmp_path: Path, ddl: str) -> None:
        self.path = tmp_path / "app.db"
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.executescript(ddl)
        self.db.executemany("INSERT INTO people VALUES (?, ?, ?)", ROWS)
        super().__init__(
            self.db.execute,
            f"sqlite:///{self.path}",
            lambda: self.db.execute("SELECT id, email, name FROM people"),
        )


SQLITE_TABLES = {
    "rowid": "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT)",
    "text key": "CREATE TABLE people (id INT PRIMARY KEY, email TEXT UNIQUE, name TEXT)",
    "without rowid": "CREATE TABLE people (id INT PRIMARY KEY, email TEXT NOT NULL UNIQUE,"
    " name TEXT) WITHOUT ROWID",
    "nocase index": "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, name TEXT);"
    " CREATE UNIQUE INDEX people_email ON people (email COLLATE NOCASE)",
}


@pytest.fixture(params=sorted(SQLITE_TABLES))
def lite(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteApp]:
    app = SqliteApp(tmp_path, SQLITE_TABLES[request.param])
    yield app
    app.conn.close()
    app.db.close()


def test_sqlite_replace_of_a_held_row_is_an_update(lite: SqliteApp) -> None:
    found = lite.run("REPLACE INTO people VALUES (2, 'u2@x', 'two again')")
    assert found == [("U", (2, "u2@x", "two"), (2, "u2@x", "two again"))]
    assert lite.run("INSERT OR REPLACE INTO people VALUES (2, 'u2@x', 'two again')") == []


def test_sqlite_replace_colliding_on_another_unique_column_deletes_that_row(
    lite: SqliteApp,
) -> None:
    found = lite.run("REPLACE INTO people VALUES (2, 'u3@x', 'two')")
    assert found == [
        ("D", (3, "u3@x", "three"), None),
        ("U", (2, "u2@x", "two"), (2, "u3@x", "two")),
    ]
    found = lite.run("INSERT OR REPLACE INTO people VALUES (7, 'u1@x', 'seven')")
    assert found == [("D", (1, "u1@x", "one"), None), ("I", None, (7, "u1@x", "seven"))]


def test_sqlite_replace_of_many_rows_at_once(lite: SqliteApp) -> None:
    found = lite.run(
        "REPLACE INTO people VALUES (1, 'u2@x', 'a'), (2, 'u3@x', 'b'), (3, 'u9@x', 'c')"
    )
    assert lite.rows() == {1: (1, "u2@x", "a"), 2: (2, "u3@x", "b"), 3: (3, "u9@x", "c")}
    assert [op for op, _, _ in found].count("I") == 2  # 2 and 3 were displaced first


def test_sqlite_upsert_forms(lite: SqliteApp) -> None:
    assert lite.run(
        "INSERT INTO people VALUES (2, 'u2@x', 'new') ON CONFLICT (id) DO UPDATE"
        " SET name = excluded.name"
    ) == [("U", (2, "u2@x", "two"), (2, "u2@x", "new"))]
    assert lite.run("INSERT INTO people VALUES (2, 'u2@x', 'x') ON CONFLICT DO NOTHING") == []
    assert lite.run("INSERT OR IGNORE INTO people VALUES (9, 'u1@x', 'x')") == []
    # after statements that left rows in the pending table, a plain delete and update
    assert lite.run("DELETE FROM people WHERE id = 1") == [("D", (1, "u1@x", "one"), None)]
    assert lite.run("UPDATE people SET name = 'n' WHERE id = 3") == [
        ("U", (3, "u3@x", "three"), (3, "u3@x", "n"))
    ]


def test_sqlite_update_or_replace_deletes_the_row_it_collides_with(lite: SqliteApp) -> None:
    found = lite.run("UPDATE OR REPLACE people SET email = 'u1@x' WHERE id = 3")
    assert found == [
        ("D", (1, "u1@x", "one"), None),
        ("U", (3, "u3@x", "three"), (3, "u1@x", "three")),
    ]
    found = lite.run("UPDATE OR REPLACE people SET id = 2 WHERE id = 3")  # onto another key
    assert found == [
        ("D", (2, "u2@x", "two"), None),
        ("U", (3, "u1@x", "three"), (2, "u1@x", "three")),
    ]


def test_sqlite_replace_with_recursive_triggers_on_logs_each_row_once(lite: SqliteApp) -> None:
    lite.db.execute("PRAGMA recursive_triggers = ON")  # now REPLACE fires delete triggers
    found = lite.run("REPLACE INTO people VALUES (2, 'u3@x', 'two')")
    assert sorted(found, key=str) == sorted(
        [
            ("D", (2, "u2@x", "two"), None),
            ("D", (3, "u3@x", "three"), None),
            ("I", None, (2, "u3@x", "two")),
        ],
        key=str,
    )


def test_sqlite_a_constraint_that_replaces_on_plain_inserts(tmp_path: Path) -> None:
    app = SqliteApp(
        tmp_path,
        "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT UNIQUE ON CONFLICT REPLACE,"
        " name TEXT)",
    )
    found = app.run("INSERT INTO people VALUES (4, 'u2@x', 'four')")
    assert found == [("D", (2, "u2@x", "two"), None), ("I", None, (4, "u2@x", "four"))]
    app.conn.close()


# -- MariaDB --------------------------------------------------------------------------------


@pytest.fixture
def maria(tmp_path: Path) -> Iterator[App]:
    harness = MysqlHarness(tmp_path)
    db = harness.db
    try:  # the database goes even when the capture cannot be installed
        db.execute(
            "CREATE TABLE people (id INT PRIMARY KEY, email VARCHAR(40) UNIQUE, name VARCHAR(40))"
        )
        db.execute("INSERT INTO people VALUES (1, 'u1@x', 'one'), (2, 'u2@x', 'two'),"
                   " (3, 'u3@x', 'three')")  # fmt: skip
        app = App(db.execute, harness.url, lambda: db.execute("SELECT * FROM people"))
        yield app
        app.conn.close()
    finally:
        harness.close()


def test_mariadb_replace_of_a_held_row_is_an_update(maria: App) -> None:
    found = maria.run("REPLACE INTO people VALUES (2, 'u2@x', 'two again')")
    assert found == [("U", (2, "u2@x", "two"), (2, "u2@x", "two again"))]
    assert maria.run("REPLACE INTO people VALUES (2, 'u2@x', 'two again')") == []


def test_mariadb_replace_colliding_on_another_unique_column_deletes_that_row(
    maria: App,
) -> None:
    found = maria.run("REPLACE INTO people VALUES (2, 'u3@x', 'two')")
    assert found == [
        ("D", (3, "u3@x", "three"), None),
        ("U", (2, "u2@x", "two"), (2, "u3@x", "two")),
    ]
    found = maria.run("REPLACE INTO people VALUES (7, 'u1@x', 'seven')")
    assert found == [("D", (1, "u1@x", "one"), None), ("I", None, (7, "u1@x", "seven"))]
    found = maria.run(
        "REPLACE INTO people VALUES (2, 'u7@x', 'b'), (3, 'u1@x', 'c'), (7, 'u9@x', 'd')"
    )
    assert [op for op, _, _ in found] == ["U", "D", "I", "I"]  # 7 went with u1@x


def test_mariadb_on_duplicate_key_update_and_ignore(maria: App) -> None:
    assert maria.run(
        "INSERT INTO people VALUES (2, 'u2@x', 'new') ON DUPLICATE KEY UPDATE name = 'new'"
    ) == [("U", (2, "u2@x", "two"), (2, "u2@x", "new"))]
    # colliding on the other unique column updates the row holding it
    assert maria.run(
        "INSERT INTO people VALUES (9, 'u3@x', 'x') ON DUPLICATE KEY UPDATE name = 'by email'"
    ) == [("U", (3, "u3@x", "three"), (3, "u3@x", "by email"))]
    assert maria.run("INSERT IGNORE INTO people VALUES (9, 'u1@x', 'x')") == []
    assert maria.run("INSERT IGNORE INTO people VALUES (9, 'u9@x', 'nine')") == [
        ("I", None, (9, "u9@x", "nine"))
    ]
    # MariaDB fires AFTER UPDATE for the row UPDATE IGNORE skips: it must not be logged
    assert maria.run("UPDATE IGNORE people SET email = 'u1@x' WHERE id = 2") == []
    assert maria.run("UPDATE IGNORE people SET id = id + 1 ORDER BY id DESC") == [
        ("U", (9, "u9@x", "nine"), (10, "u9@x", "nine")),
        ("U", (3, "u3@x", "by email"), (4, "u3@x", "by email")),
        ("U", (2, "u2@x", "new"), (3, "u2@x", "new")),
        ("U", (1, "u1@x", "one"), (2, "u1@x", "one")),
    ]


def test_mariadb_delete_and_insert_of_a_key_stay_a_delete_and_an_insert(
    maria: App,
) -> None:
    """Only a REPLACE's own delete becomes an update: a delete and an insert are two
    changes, even in one transaction."""
    found = maria.run(
        "START TRANSACTION",
        "DELETE FROM people WHERE id = 2",
        "INSERT INTO people VALUES (2, 'u2@x', 'two')",
        "COMMIT",
    )
    assert found == [("D", (2, "u2@x", "two"), None), ("I", None, (2, "u2@x", "two"))]
    maria.execute("INSERT INTO people VALUES (5, 'u5@x', 'a') ON DUPLICATE KEY UPDATE name = 'b'")
    assert maria.run(
        "DELETE FROM people WHERE id = 5", "INSERT INTO people VALUES (6, 'u6@x', 'c')"
    ) == [
        ("D", (5, "u5@x", "a"), None),
        ("I", None, (6, "u6@x", "c")),
    ]


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[App]:
    harness = PostgresHarness(tmp_path)
    table = harness.table("people")
    db = harness.db
    db.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, email text UNIQUE, name text)")
    db.execute(f"INSERT INTO {table} VALUES (1, 'u1@x', 'one'), (2, 'u2@x', 'two'),"
               " (3, 'u3@x', 'three')")  # fmt: skip

    def execute(sql: str) -> None:
        db.execute(sql.replace("people", table))

    try:
        app = App(execute, harness.url, lambda: db.execute(f"SELECT * FROM {table}").fetchall())
        yield app
        app.conn.close()
    finally:
        harness.close()


def test_postgresql_on_conflict_forms(pg: App) -> None:
    assert pg.run(
        "INSERT INTO people VALUES (2, 'u2@x', 'new') ON CONFLICT (id) DO UPDATE"
        " SET name = excluded.name"
    ) == [("U", (2, "u2@x", "two"), (2, "u2@x", "new"))]
    assert pg.run(
        "INSERT INTO people VALUES (9, 'u3@x', 'x') ON CONFLICT (email) DO UPDATE"
        " SET name = 'by email'"
    ) == [("U", (3, "u3@x", "three"), (3, "u3@x", "by email"))]
    assert pg.run("INSERT INTO people VALUES (1, 'u1@x', 'x') ON CONFLICT DO NOTHING") == []
    assert pg.run(
        "INSERT INTO people VALUES (1, 'u1@x', 'one'), (8, 'u8@x', 'eight')"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name"
    ) == [("I", None, (8, "u8@x", "eight"))]


def test_postgresql_merge(pg: App) -> None:
    found = pg.run(
        "MERGE INTO people t USING (VALUES (1, 'u1@x', 'uno'), (3, 'u3@x', NULL),"
        " (4, 'u4@x', 'four')) AS s (id, email, name) ON t.id = s.id"
        " WHEN MATCHED AND s.name IS NULL THEN DELETE"
        " WHEN MATCHED THEN UPDATE SET name = s.name"
        " WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.email, s.name)"
    )
    assert sorted(found, key=str) == sorted(
        [
            ("U", (1, "u1@x", "one"), (1, "u1@x", "uno")),
            ("D", (3, "u3@x", "three"), None),
            ("I", None, (4, "u4@x", "four")),
        ],
        key=str,
    )


# -- through the engine ---------------------------------------------------------------------

PEOPLE: dict[str, Any] = {
    "name": "people",
    "left": {"app": "erp", "entity": "people", "key": ["id"]},
    "right": {"app": "crm", "entity": "people", "key": ["id"]},
    "fields": [{"left": c, "right": c} for c in ("id", "email", "name")],
    # one partition: a unique value moved between two records lands in one batch (see the
    # README on upserts for what several partitions do)
    "partitions": 1,
}


@pytest.mark.ray
def test_upserts_on_each_side_reach_the_other_and_the_sides_verify_equal(
    engine: Any, tmp_path: Path
) -> None:
    """The issue's case: a REPLACE in SQLite displacing row 3 left row 3 on the other side for
    good, and later writes failed there on the UNIQUE email."""
    erp = SqliteApp(tmp_path, SQLITE_TABLES["rowid"])
    harness = MysqlHarness(tmp_path)
    crm = harness.db
    try:
        crm.execute(
            "CREATE TABLE people (id INT PRIMARY KEY, email VARCHAR(40) UNIQUE, name VARCHAR(40))"
        )
        engine.add_app("erp", f"sqlite:///{erp.path}")
        engine.add_app("crm", harness.url)
        engine.submit_map(PEOPLE)
        engine.play("people")
        engine.wait_idle(timeout=60)

        def crm_rows() -> dict[int, tuple[Any, ...]]:
            return {r[0]: tuple(r) for r in crm.execute("SELECT * FROM people")}

        assert crm_rows() == erp.rows()
        erp.db.execute("REPLACE INTO people VALUES (2, 'u3@x', 'two')")  # displaces 3
        erp.db.execute("INSERT INTO people VALUES (4, 'u2@x', 'four')")  # 2's old email
        engine.wait_idle(timeout=60)
        assert [e["message"] for e in engine.errors("people")] == []
        assert crm_rows() == erp.rows() == {
            1: (1, "u1@x", "one"), 2: (2, "u3@x", "two"), 4: (4, "u2@x", "four")
        }  # fmt: skip

        crm.execute("REPLACE INTO people VALUES (5, 'u1@x', 'five')")  # displaces 1
        crm.execute(
            "INSERT INTO people VALUES (1, 'u9@x', 'one') ON DUPLICATE KEY UPDATE name = 'x'"
        )
        crm.execute("REPLACE INTO people VALUES (4, 'u4@x', 'four')")  # an update of 4
        engine.wait_idle(timeout=60)
        assert erp.rows() == crm_rows()
        assert erp.rows()[5] == (5, "u1@x", "five")
        assert erp.rows()[1] == (1, "u9@x", "one")
        assert engine.errors("people") == []
        assert engine.verify("people").ok
    finally:
        erp.conn.close()
        harness.close()


def _moved_value(conn: Connector) -> None:
    """A batch where one record takes the unique value another gives up, whatever the order
    the connector writes them in: both land (the refused one is written again after the
    rest), and a value nobody gives up is still refused."""
    ops = [
        WriteOp("I", (4,), {0: 4, 1: "u2@x", 2: "four"}),  # 2's email
        WriteOp("I", (5,), {0: 5, 1: "u1@x", 2: "five"}),  # 1 keeps it: refused
        WriteOp("U", (2,), {1: "u9@x"}),
    ]
    result = conn.apply(CAP, ops)
    assert [(f.row, f.column) for f in result.failures] == [(1, "email")]
    # refused on a duplicate: the engine writes it again later (another partition may free it)
    assert [f.duplicate for f in result.failures] == [True]


def test_sqlite_writes_a_unique_value_another_record_of_the_batch_frees(lite: SqliteApp) -> None:
    _moved_value(lite.conn)
    assert lite.rows()[4] == (4, "u2@x", "four") and lite.rows()[2][1] == "u9@x"


def test_mariadb_writes_a_unique_value_another_record_of_the_batch_frees(
    maria: App,
) -> None:
    _moved_value(maria.conn)
    assert maria.rows()[4] == (4, "u2@x", "four") and maria.rows()[2][1] == "u9@x"


def test_postgresql_writes_a_unique_value_another_record_of_the_batch_frees(
    pg: App,
) -> None:
    _moved_value(pg.conn)
    assert pg.rows()[4] == (4, "u2@x", "four") and pg.rows()[2][1] == "u9@x"


@contextlib.contextmanager
def two_apps(
    engine: Any, tmp_path: Path, crm_ddl: str, rows: Sequence[tuple[Any, ...]] = ()
) -> Iterator[tuple[SqliteApp, SqliteApp]]:
    """SQLite apps ``erp`` (`SQLITE_TABLES` rowid) and ``crm`` (``crm_ddl``), each holding
    `ROWS` and ``rows``, added to the engine; the maps they were given are removed after."""
    (tmp_path / "erp").mkdir()
    (tmp_path / "crm").mkdir()
    erp = SqliteApp(tmp_path / "erp", SQLITE_TABLES["rowid"])
    crm = SqliteApp(tmp_path / "crm", crm_ddl)
    for app in (erp, crm):
        app.db.executemany("INSERT INTO people VALUES (?, ?, ?)", rows)
    try:
        engine.add_app("erp", f"sqlite:///{erp.path}")
        engine.add_app("crm", f"sqlite:///{crm.path}")
        yield erp, crm
    finally:
        for name, spec in engine.status().items():
            if {spec["sides"]["left"]["app"], spec["sides"]["right"]["app"]} == {"erp", "crm"}:
                engine.remove_map(name)
        for app in (erp, crm):
            app.conn.close()
            app.db.close()


def ids_by_partition(count: int) -> tuple[list[int], list[int]]:
    """``count`` ids (from 10) owned by partition 0 of 2, and ``count`` owned by partition 1."""
    from engine.pipeline import partition_of

    by_part: list[list[int]] = [[], []]
    for i in range(10, 10_000):
        by_part[partition_of([i], 2)].append(i)
    return by_part[0][:count], by_part[1][:count]


@pytest.mark.ray
def test_a_map_on_several_partitions_over_a_unique_index_warns_naming_it(
    engine: Any, tmp_path: Path
) -> None:
    """Partitions write in parallel: a unique value moved between two records of different
    partitions may reach the target in the other order. The map is accepted with a warning
    naming the index on each side it writes, and status() lists it; on one partition (the
    test above, warnings being errors) there is none."""
    crm_ddl = (
        "CREATE TABLE people (id INT PRIMARY KEY, email TEXT, name TEXT, UNIQUE (name, email))"
    )
    with two_apps(engine, tmp_path, crm_ddl):
        spec = {**PEOPLE, "name": "people2", "partitions": 2}
        with pytest.warns(UniqueOrderWarning) as caught:
            engine.submit_map(spec)
        messages = sorted(str(w.message) for w in caught)
        assert len(messages) == 2, messages
        assert "crm.people has a unique index on (name, email) besides its key" in messages[0]
        assert "erp.people has a unique index on (email) besides its key" in messages[1]
        assert all("set partitions: 1" in m for m in messages)
        assert sorted(engine.status()["people2"]["warnings"]) == messages
        # one way into crm: only the side written is named
        one_way = {
            **spec,
            "name": "people3",
            "fields": [
                {"left": "id", "right": "id"},
                *({"left": c, "right": c, "direction": "left_to_right"} for c in ("email", "name")),
            ],
        }
        with pytest.warns(UniqueOrderWarning) as caught:
            engine.submit_map(one_way)
        assert [str(w.message).split(" has ")[0] for w in caught] == ["map 'people3': crm.people"]


@pytest.mark.ray
def test_rows_displaced_across_two_partitions_land_by_retrying(engine: Any, tmp_path: Path) -> None:
    """The issue's REPLACE, on a map with two partitions: one transaction in erp REPLACEs
    records with the email of a record of the other partition, in both directions (a of
    partition 0 takes b's, of partition 1, which it displaces, and c of partition 1 takes d's,
    of partition 0). Each partition's batch lands in a transaction of its own, so whichever
    lands first is refused on values the other's deletes free: those records are written
    again once it has. Both sides end equal, no error is logged, status() counts retries."""
    zero, one = ids_by_partition(10)
    moves = [*zip(zero[:5], one[:5], strict=True), *zip(one[5:], zero[5:], strict=True)]
    rows = [(i, f"e{i}@x", f"n{i}") for i in zero + one]
    with two_apps(engine, tmp_path, SQLITE_TABLES["rowid"], rows) as (erp, crm):
        with pytest.warns(UniqueOrderWarning):
            engine.submit_map({**PEOPLE, "name": "moves", "partitions": 2})
        engine.play("moves")
        engine.wait_idle(timeout=60)
        assert crm.rows() == erp.rows()
        erp.db.executescript(
            "BEGIN; "
            + " ".join(f"REPLACE INTO people VALUES ({a}, 'e{b}@x', 'took {b}');" for a, b in moves)
            + " COMMIT;"
        )
        assert all(b not in erp.rows() for _, b in moves)
        engine.wait_idle(timeout=60)
        assert [e["message"] for e in engine.errors("moves")] == []
        assert crm.rows() == erp.rows()
        assert engine.verify("moves").ok
        right = engine.status()["moves"]["sides"]["right"]
        assert right["retried"] > 0 and right["retrying"] == 0, right


@pytest.mark.ray
def test_a_chain_of_values_moved_across_two_partitions_lands_by_retrying(
    engine: Any, tmp_path: Path
) -> None:
    """One transaction moves unique values along a chain of 40 records alternating between
    two partitions, each taking the value the next one gives up. Every partition's batch is
    refused on values the other still holds, and only one link can land per round: retries
    go on while some of them land (the count of tries starts again), so the chain ends
    written, with no error."""
    chain = [x for pair in zip(*ids_by_partition(20), strict=True) for x in pair]
    rows = [(i, f"e{i}@x", f"n{i}") for i in chain]
    with two_apps(engine, tmp_path, SQLITE_TABLES["rowid"], rows) as (erp, crm):
        with pytest.warns(UniqueOrderWarning):
            engine.submit_map({**PEOPLE, "name": "chain", "partitions": 2})
        engine.play("chain")
        engine.wait_idle(timeout=60)
        statements = [f"UPDATE people SET email = 'fresh@x' WHERE id = {chain[-1]}"]
        statements += [
            f"UPDATE people SET email = 'e{b}@x' WHERE id = {a}"
            for a, b in zip(chain[-2::-1], chain[:0:-1], strict=True)
        ]
        erp.db.executescript("BEGIN; " + "; ".join(statements) + "; COMMIT;")
        assert erp.rows()[chain[0]][1] == f"e{chain[1]}@x"
        engine.wait_idle(timeout=120)
        assert [e["message"] for e in engine.errors("chain")] == []
        assert crm.rows() == erp.rows()
        assert engine.status()["chain"]["sides"]["right"]["retried"] > 0
