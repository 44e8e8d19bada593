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

from engine.connectors import (
    Capture,
    Connector,
    RawChange,
    Receipt,
    WriteFailure,
    WriteOp,
    WriteReceipt,
)
from engine.errors import ConnectorError

from contract_harness import (
    COLUMNS,
    NAME_MAX,
    Harness,
    as_tuple,
    created,
    harnesses,
    prepared,
    sample,
    upsert,
)

HARNESSES = harnesses()
LIMIT = 10_000


def having(flag: str) -> list[str]:
    """The harnesses whose application has a capability (a parameter list, never a skip)."""
    return [name for name, cls in sorted(HARNESSES.items()) if getattr(cls, flag)]


@pytest.fixture(params=sorted(HARNESSES))
def app(request: Any, tmp_path: Path) -> Iterator[Harness]:
    with created(HARNESSES[request.param], tmp_path) as harness:
        yield harness


@pytest.fixture
def conn(app: Harness) -> Iterator[Connector]:
    with prepared(app) as connector:
        yield connector


def changes(app: Harness, conn: Connector, after: int = 0) -> list[RawChange]:
    return conn.read_changes(app.capture(), after, LIMIT)


def moved(old: int, new: int, **overrides: Any) -> dict[str, Any]:
    """Record ``old`` of `sample` as it is once moved to key ``new`` (with ``overrides``)."""
    return sample(old, **{"id": new, **overrides})


def move(old: int, new: int, **overrides: Any) -> WriteOp:
    """The move of record ``old`` to key ``new``: every column, as the engine sends it."""
    return WriteOp("M", (new,), dict(enumerate(as_tuple(moved(old, new, **overrides)))), (old,))


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


# -- moves ---------------------------------------------------------------------------------


def test_a_move_gives_the_row_its_new_key_and_values(app: Harness, conn: Connector) -> None:
    app.insert([sample(1), sample(2)])
    result = conn.apply(app.capture(), [move(1, 10, name="moved", qty=7)])
    assert result.failures == []
    assert app.rows() == {
        2: as_tuple(sample(2)),
        10: as_tuple(moved(1, 10, name="moved", qty=7)),
    }


def test_a_move_of_a_row_the_application_no_longer_holds_writes_nothing(
    app: Harness, conn: Connector
) -> None:
    cap = app.capture()
    app.insert([sample(1)])
    head = conn.head(cap)
    result = conn.apply(cap, [move(5, 6), upsert(2)])
    assert result.failures == []
    assert app.rows() == {1: as_tuple(sample(1)), 2: as_tuple(sample(2))}
    assert changes(app, conn, head) == []


def test_a_move_onto_an_existing_key_is_a_row_failure_and_the_rest_is_written(
    app: Harness, conn: Connector
) -> None:
    app.insert([sample(1), sample(2)])
    result = conn.apply(app.capture(), [move(1, 2), upsert(3)])
    [failure] = result.failures
    assert failure.row == 0 and failure.column == "id" and failure.message
    assert app.rows() == {i: as_tuple(sample(i)) for i in (1, 2, 3)}


def test_a_move_without_its_old_key_is_a_row_failure_and_the_rest_is_written(
    app: Harness, conn: Connector
) -> None:
    app.insert([sample(1)])
    no_old, short_old = move(1, 10)._replace(old=None), move(1, 11)._replace(old=())
    result = conn.apply(app.capture(), [no_old, short_old, upsert(2)])
    assert [(f.row, f.column) for f in result.failures] == [(0, None), (1, None)]
    assert all("old key" in f.message for f in result.failures)
    assert app.rows() == {1: as_tuple(sample(1)), 2: as_tuple(sample(2))}


@pytest.mark.parametrize("app", having("enforces_length"), indirect=True)
def test_a_move_with_a_value_the_column_cannot_hold_is_a_row_failure(
    app: Harness, conn: Connector
) -> None:
    app.insert([sample(1)])
    result = conn.apply(app.capture(), [move(1, 10, name="x" * (NAME_MAX + 1)), upsert(2)])
    [failure] = result.failures
    assert failure.row == 0 and failure.column == "name"
    assert app.rows() == {1: as_tuple(sample(1)), 2: as_tuple(sample(2))}


def test_our_moves_are_never_captured(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    app.insert([sample(1), sample(2)])
    head = conn.head(cap)
    conn.apply(cap, [move(1, 10, name="ours"), move(2, 20)])
    assert changes(app, conn, head) == []
    assert conn.head(cap) == head
    app.update(10, {"name": "theirs"})
    [theirs] = changes(app, conn, head)
    assert theirs.op == "U"
    assert theirs.old == as_tuple(moved(1, 10, name="ours"))
    assert theirs.new == as_tuple(moved(1, 10, name="theirs"))


def test_a_move_comes_before_an_insert_at_its_old_key_in_one_batch(
    app: Harness, conn: Connector
) -> None:
    cap = app.capture()
    app.insert([sample(1), sample(2)])
    head = conn.head(cap)
    # given in the "wrong" order: the connector moves first, whatever the order of the batch
    result = conn.apply(cap, [upsert(1, name="a new one"), move(3, 30), move(2, 3), move(1, 2)])
    assert result.failures == []
    assert app.rows() == {
        1: as_tuple(sample(1, name="a new one")),
        2: as_tuple(moved(1, 2)),
        3: as_tuple(moved(2, 3)),
    }
    app.update(1, {"qty": 5})  # the next change is theirs: nothing of ours was captured
    assert [(c.op, c.old) for c in changes(app, conn, head)] == [
        ("U", as_tuple(sample(1, name="a new one")))
    ]


# -- receipts ------------------------------------------------------------------------------


def test_a_receipt_is_recorded_with_its_batch_and_read_back_by_another_connector(
    app: Harness, conn: Connector
) -> None:
    cap = app.capture()
    assert conn.last_receipt(cap, "items/0") is None
    app.insert([sample(1)])
    result = conn.apply(cap, [upsert(2), move(1, 3)], Receipt("items/0", 41))
    assert result.failures == []
    # a batch with no refused record records an empty list of them
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(41, result.position, [])
    conn.close()  # the writer is gone; another process asks
    other = app.connector("another")
    try:
        assert other.last_receipt(cap, "items/0") == WriteReceipt(41, result.position, [])
        assert other.last_receipt(cap, "items/1") is None
        assert other.last_receipt(app.capture("items_R"), "items/0") is None
    finally:
        other.close()


def test_receipts_are_kept_per_writer_and_the_last_one_wins(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    first = conn.apply(cap, [upsert(1)], Receipt("items/0", 1))
    second = conn.apply(cap, [upsert(2)], Receipt("items/1", 7))
    app.insert([sample(3)])  # the application moves on: the next batch lands after it
    [theirs] = changes(app, conn, second.position)
    third = conn.apply(cap, [], Receipt("items/0", 2))  # empty: recorded all the same
    assert first.position <= second.position < theirs.seq <= third.position
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(2, third.position, [])
    assert conn.last_receipt(cap, "items/1") == WriteReceipt(7, second.position, [])
    conn.apply(cap, [upsert(4)])  # no receipt: none changes
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(2, third.position, [])
    writer = "w" * 100  # the longest a writer may be
    last = conn.apply(cap, [WriteOp("D", (4,), {})], Receipt(writer, 2**62))
    assert conn.last_receipt(cap, writer) == WriteReceipt(2**62, last.position, [])


def test_a_batch_with_refused_records_still_records_its_receipt(
    app: Harness, conn: Connector
) -> None:
    cap = app.capture()
    app.insert([sample(1), sample(2)])
    # a move the application refuses (its target is taken), and one no application can
    # write, its message long and full of what a stored list must keep whole
    odd = "é'\"\\\x00\n😀 " * 5_000
    malformed = WriteOp("M", (4,), move(1, 4).values, (odd, "two values"))
    result = conn.apply(cap, [move(1, 2), upsert(3), malformed], Receipt("items/0", 5))
    assert [f.row for f in result.failures] == [0, 2]
    assert result.failures[0].column == "id"
    assert repr(odd) in result.failures[1].message  # named in full
    assert 3 in app.rows()
    receipt = conn.last_receipt(cap, "items/0")
    assert receipt == WriteReceipt(5, result.position, result.failures)
    assert receipt is not None and all(type(f) is WriteFailure for f in receipt.failures)
    other = app.connector("another")  # another process, after a crash, learns the same
    try:
        assert other.last_receipt(cap, "items/0") == receipt
    finally:
        other.close()
    # the writer's next batch, refused nothing, replaces them: an empty list
    clean = conn.apply(cap, [upsert(4)], Receipt("items/0", 6))
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(6, clean.position, [])


@pytest.mark.parametrize("app", having("enforces_length"), indirect=True)
def test_a_receipt_records_the_records_the_application_refuses_among_many(
    app: Harness, conn: Connector
) -> None:
    cap = app.capture()
    long_name = "x" * (NAME_MAX + 1)
    ops = [upsert(i, name=long_name) if i % 7 == 3 else upsert(i) for i in range(1, 60)]
    result = conn.apply(cap, ops, Receipt("items/0", 1))
    assert [f.row for f in result.failures] == [i - 1 for i in range(1, 60) if i % 7 == 3]
    assert {f.column for f in result.failures} == {"name"}
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(1, result.position, result.failures)
    assert len(app.rows()) == 59 - len(result.failures)


@pytest.mark.parametrize("app", having("missing_entity_raises"), indirect=True)
def test_a_batch_that_raises_records_no_receipt(app: Harness, conn: Connector) -> None:
    cap = app.capture()
    before = conn.apply(cap, [upsert(1)], Receipt("items/0", 1))
    gone = Capture(cap.name, "no_such_entity", cap.columns, cap.key, cap.types)
    with pytest.raises(ConnectorError):
        conn.apply(gone, [upsert(2)], Receipt("items/0", 2))
    assert conn.last_receipt(cap, "items/0") == WriteReceipt(1, before.position, [])


def test_a_receipt_no_table_can_hold_is_refused_before_anything_is_written(
    app: Harness, conn: Connector
) -> None:
    cap = app.capture()
    for receipt in (Receipt("w" * 101, 1), Receipt("", 1), Receipt("items/0", 2**63)):
        with pytest.raises(ConnectorError):
            conn.apply(cap, [upsert(1)], receipt)
    assert app.rows() == {}


def test_release_drops_the_receipts(app: Harness, conn: Connector) -> None:
    cap, other = app.capture(), app.capture("items_R")
    conn.prepare(other)
    conn.apply(cap, [upsert(1)], Receipt("items/0", 3))
    kept = conn.apply(other, [upsert(2)], Receipt("items/0", 9))
    conn.release(cap)
    fresh = app.connector()
    try:
        fresh.prepare(cap)
        assert fresh.last_receipt(cap, "items/0") is None
        assert fresh.last_receipt(other, "items/0") == WriteReceipt(9, kept.position, [])
    finally:
        fresh.close()
