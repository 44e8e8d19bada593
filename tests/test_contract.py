"""The connector contract, run unchanged against every connector's harness.

See `tests/contract_harness.py`: each connector adds one ``tests/harness_<name>.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.connectors import Connector, RawChange, WriteOp

from contract_harness import COLUMNS, NAME_MAX, Harness, as_tuple, harnesses, sample

HARNESSES = harnesses()
LIMIT = 10_000


def having(flag: str) -> list[str]:
    """The harnesses whose application has a capability (a parameter list, never a skip)."""
    return [name for name, cls in sorted(HARNESSES.items()) if getattr(cls, flag)]


@pytest.fixture(params=sorted(HARNESSES))
def app(request: Any, tmp_path: Path) -> Iterator[Harness]:
    harness = HARNESSES[request.param](tmp_path)
    harness.create()
    yield harness
    harness.close()


@pytest.fixture
def conn(app: Harness) -> Iterator[Connector]:
    connector = app.connector()
    connector.prepare(app.capture())
    yield connector
    connector.close()


def changes(app: Harness, conn: Connector, after: int = 0) -> list[RawChange]:
    return conn.read_changes(app.capture(), after, LIMIT)


def upsert(i: int, **overrides: Any) -> WriteOp:
    row = sample(i, **overrides)
    return WriteOp("I", (i,), {n: row[c] for n, c in enumerate(COLUMNS)})


def test_describe_reports_the_columns_and_the_key(app: Harness, conn: Connector) -> None:
    app.insert([sample(1)])  # JSON records (open schemas) show the fields they hold
    schema = conn.describe("items")
    assert schema is not None
    assert set(COLUMNS) <= set(schema.columns)
    assert ("id",) in schema.unique
    assert conn.describe("no_such_entity") is None


def test_prepare_twice_changes_nothing(app: Harness, conn: Connector) -> None:
    conn.prepare(app.capture())
    app.insert([sample(1)])
    assert [c.op for c in changes(app, conn)] == ["I"]


def test_another_programs_inserts_updates_and_deletes_are_captured_in_order(
    app: Harness, conn: Connector
) -> None:
    before_ms = time.time() * 1000
    app.insert([sample(1), sample(2)])
    app.update(1, {"name": "renamed", "price": sample(1)["price"] + 1})
    app.delete(2)
    found = changes(app, conn)
    assert [(c.op, (c.new or c.old or ())[0]) for c in found] == [
        ("I", 1),
        ("I", 2),
        ("U", 1),
        ("D", 2),
    ]
    seqs = [c.seq for c in found]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    assert all(before_ms - 60_000 <= c.at_ms <= time.time() * 1000 + 60_000 for c in found)
    assert found[0].new == as_tuple(sample(1)) and found[0].old is None
    assert found[2].old == as_tuple(sample(1))
    assert found[2].new == as_tuple(sample(1, name="renamed", price=sample(1)["price"] + 1))
    assert found[3].old == as_tuple(sample(2)) and found[3].new is None


def test_an_update_that_changes_no_captured_value_is_not_captured(
    app: Harness, conn: Connector
) -> None:
    app.insert([sample(1)])
    head = conn.head(app.capture())
    app.update(1, {"note": "not mapped"})
    app.update(1, {"name": sample(1)["name"]})
    assert changes(app, conn, head) == []


def test_the_engines_own_writes_are_never_captured(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    head = conn.head(cap)
    conn.apply(cap, [upsert(1), upsert(2)])
    conn.apply(cap, [WriteOp("U", (1,), {1: "ours"}), WriteOp("D", (2,), {})])
    assert changes(app, conn, head) == []
    assert conn.head(cap) == head
    assert sorted(app.rows()) == [1]
    app.update(1, {"name": "theirs"})
    [theirs] = changes(app, conn, head)
    assert theirs.old is not None and theirs.old[1] == "ours"


def test_apply_writes_a_batch_and_says_where_it_landed(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    app.insert([sample(1)])
    [before] = changes(app, conn)
    result = conn.apply(
        cap,
        [
            upsert(1, name="upserted"),  # a row that exists: updated whole
            upsert(2),  # a new row
            WriteOp("U", (3,), {1: "nobody"}),  # a row that does not exist: nothing
        ],
    )
    assert result.failures == []
    assert before.seq <= result.position
    rows = app.rows()
    assert rows[1] == as_tuple(sample(1, name="upserted")) and rows[2] == as_tuple(sample(2))
    assert 3 not in rows
    conn.apply(cap, [WriteOp("U", (2,), {2: 99}), WriteOp("D", (1,), {})])
    assert app.rows() == {2: as_tuple(sample(2, qty=99))}
    app.update(2, {"qty": 100})
    [after] = changes(app, conn, before.seq)
    assert after.seq > result.position


def test_every_canonical_type_round_trips_exactly(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    nulls = {c: None for c in COLUMNS[2:]}
    written = [
        sample(1),
        sample(2, name=""),  # empty text is not NULL
        sample(3, **nulls),  # NULL in every type
        sample(4, price=sample(4)["price"] * -1, qty=-(2**31), ratio=-0.5),
    ]
    conn.apply(cap, [WriteOp("I", (r["id"],), dict(enumerate(as_tuple(r)))) for r in written])
    expected = {r["id"]: as_tuple(r) for r in written}
    assert app.rows() == expected
    head, chunks = conn.snapshot(cap, 2)
    assert {row[0]: row for chunk in chunks for row in chunk} == expected
    app.insert([sample(5)])
    [change] = changes(app, conn, head)
    assert change.new == as_tuple(sample(5))


@pytest.mark.parametrize("app", having("enforces_not_null"), indirect=True)
def test_a_record_the_application_refuses_is_a_row_failure_and_the_rest_is_written(
    app: Harness, conn: Connector
) -> None:
    result = conn.apply(app.capture(), [upsert(1), upsert(2, name=None), upsert(3)])
    [failure] = result.failures
    assert failure.row == 1 and failure.column == "name" and failure.message
    assert sorted(app.rows()) == [1, 3]


@pytest.mark.parametrize("app", having("enforces_length"), indirect=True)
def test_a_value_too_long_is_refused_never_truncated(app: Harness, conn: Connector) -> None:
    long_name = "x" * (NAME_MAX + 1)
    result = conn.apply(app.capture(), [upsert(1, name=long_name), upsert(2)])
    [failure] = result.failures
    assert failure.row == 0 and failure.column == "name"
    assert sorted(app.rows()) == [2]


def test_the_snapshot_is_consistent_with_its_head(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    app.insert([sample(i) for i in range(1, 8)])
    head, chunks = conn.snapshot(cap, 3)
    app.insert([sample(100)])  # after the snapshot began: a change past its head
    app.update(1, {"qty": 5})
    seen = [row for chunk in chunks for row in chunk]
    assert [row[0] for row in seen] == list(range(1, 8))
    assert seen[0] == as_tuple(sample(1))
    later = changes(app, conn, head)
    assert [(c.op, (c.new or ())[0]) for c in later] == [("I", 100), ("U", 1)]


def test_acknowledged_changes_go_and_sequences_are_never_reused(
    app: Harness, conn: Connector
) -> None:
    cap = app.capture()
    app.insert([sample(1), sample(2)])
    first = changes(app, conn)
    conn.ack(cap, first[-1].seq)
    assert changes(app, conn) == []
    assert conn.head(cap) == first[-1].seq
    app.delete(1)
    [again] = changes(app, conn)
    assert again.seq > first[-1].seq


def test_wait_for_changes_wakes_for_another_programs_commit(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    head = conn.head(cap)
    assert conn.wait_for_changes(cap, head, 0.05) is False
    timer = threading.Timer(0.2, lambda: app.insert([sample(1)]))
    timer.start()
    try:
        assert conn.wait_for_changes(cap, head, 30) is True
    finally:
        timer.join()
    assert [c.op for c in changes(app, conn, head)] == ["I"]


def test_release_stops_capturing(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    conn.release(cap)
    app.insert([sample(1)])
    fresh = app.connector()
    try:
        fresh.prepare(cap)
        assert fresh.read_changes(cap, 0, LIMIT) == []
    finally:
        fresh.close()
