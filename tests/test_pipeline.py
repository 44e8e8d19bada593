"""The partition protocol, sans I/O: changes in, writes and log entries out.

Every test plays one history of the customers map. Values are in canonical field order
(account, name, credit_limit, phone); the left app is ``finance``, the right app ``crm``.
``confirm(side, writes, position, ...)`` plays the writer: ``position`` is the last change
sequence of that side's log that committed before our write. As the actor does, a batch's
writes to a side are confirmed before changes of that side to the same records are merged.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conflict import FieldState, HybridClock, Register, Timestamp
from engine.codec import UNSEEN
from engine.ids import Side
from engine.maps import CompiledMap, load_map
from engine.pipeline import (
    EXISTS,
    Change,
    ConflictEntry,
    ErrorEntry,
    Outcome,
    PartitionLogic,
    Tracked,
    Write,
    decode_record,
    encode_record,
)

from conftest import CUSTOMERS

L, R = Side.LEFT, Side.RIGHT
KEY = ("A1",)
ROW = ("A1", "Acme", 500, "555")
FIELDS = ("account", "name", "credit_limit", "phone")
NOW = 99_000


def compiled(conflict: Any = None, resolvers: dict[str, Any] | None = None) -> CompiledMap:
    data = dict(CUSTOMERS)
    if conflict is not None:
        data["conflict"] = conflict
    return load_map(data).compile(resolvers)


def fin(wall: int, counter: int = 0) -> Timestamp:
    return Timestamp(wall, counter, "finance")


def crm(wall: int, counter: int = 0) -> Timestamp:
    return Timestamp(wall, counter, "crm")


def row(base: Sequence[Any] = ROW, **values: Any) -> list[Any]:
    """A fresh list: ``base`` with some fields replaced."""
    new = list(base)
    for name, value in values.items():
        new[FIELDS.index(name)] = value
    return new


def insert(seq: int, ts: Timestamp, new: list[Any], key: tuple[Any, ...] = KEY) -> Change:
    return Change(seq, "I", key, ts, None, new)


def update(seq: int, ts: Timestamp, old: list[Any], new: list[Any]) -> Change:
    return Change(seq, "U", KEY, ts, old, new)


def delete(seq: int, ts: Timestamp, old: list[Any]) -> Change:
    return Change(seq, "D", KEY, ts, old, None)


def synced(cmap: CompiledMap | None = None) -> PartitionLogic:
    """A1 created on the left (change 1) and written to the right, landing at position 10."""
    logic = PartitionLogic(cmap or compiled())
    out = logic.ingest(L, [insert(1, fin(1_000), row())], NOW)
    assert logic.confirm(R, out.writes[R], 10, [], NOW) == []
    return logic


def merged_row(logic: PartitionLogic, key: tuple[Any, ...] = KEY) -> list[Any] | None:
    values = logic.values(key)
    return None if values is None else [values.get(name, UNSEEN) for name in FIELDS]


def held(logic: PartitionLogic, side: Side, key: tuple[Any, ...] = KEY) -> Any:
    """What the engine knows ``side`` holds of the record."""
    return logic.records[key].seen[side]


def assert_converged(logic: PartitionLogic, key: tuple[Any, ...] = KEY) -> None:
    """Each side holds the merged value of every field it receives."""
    merged = merged_row(logic, key)
    for side in Side:
        seen = held(logic, side, key)
        if merged is None:
            assert seen is None, f"{side.label} still holds {seen}"
            continue
        assert isinstance(seen, list), f"{side.label} holds {seen}"
        for i in logic.map.targeted[side]:
            assert seen[i] == merged[i], f"{side.label} holds {FIELDS[i]}={seen[i]!r}"


# -- one side edits ------------------------------------------------------------------------


def test_insert_on_the_left_writes_the_whole_record_to_the_right() -> None:
    logic = PartitionLogic(compiled())
    out = logic.ingest(L, [insert(1, fin(1_000), row())], NOW)
    assert out.writes[R] == [Write("I", KEY, {0: "A1", 1: "Acme", 2: 500, 3: "555"})]
    assert out.writes[L] == []
    assert out.conflicts == [] and out.errors == []
    assert merged_row(logic) == list(ROW)
    assert_converged(logic)


def test_insert_on_the_right_leaves_out_the_field_the_left_owns() -> None:
    logic = PartitionLogic(compiled())
    out = logic.ingest(R, [insert(1, crm(1_000), row())], NOW)
    # credit_limit flows left to right only: a right-side value is never merged nor sent left
    assert out.writes[L] == [Write("I", KEY, {0: "A1", 1: "Acme", 3: "555"})]
    assert logic.values(KEY) == {"account": "A1", "name": "Acme", "phone": "555"}


def test_update_of_one_field_writes_just_that_field_and_nothing_back_to_its_source() -> None:
    logic = synced()
    out = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Acme Corp"))], NOW)
    assert out.writes[R] == [Write("U", KEY, {1: "Acme Corp"})]
    assert out.writes[L] == []
    assert out.conflicts == []
    assert_converged(logic)


def test_update_that_changes_nothing_writes_nothing() -> None:
    logic = synced()
    out = logic.ingest(L, [update(2, fin(2_000), row(), row())], NOW)
    assert out == Outcome(([], []), [], [])


def test_several_changes_of_one_record_in_a_batch_make_one_write() -> None:
    logic = synced()
    first = row(name="Acme Corp")
    second = row(first, phone="777")
    out = logic.ingest(
        L, [update(2, fin(2_000), row(), first), update(3, fin(2_001), first, second)], NOW
    )
    assert out.writes[R] == [Write("U", KEY, {1: "Acme Corp", 3: "777"})]


def test_changes_of_several_records_in_a_batch_make_one_write_each() -> None:
    logic = PartitionLogic(compiled())
    out = logic.ingest(
        L,
        [
            insert(1, fin(1_000), row(), key=("A1",)),
            insert(2, fin(1_001), row(account="B2"), key=("B2",)),
        ],
        NOW,
    )
    assert [(w.op, w.key) for w in out.writes[R]] == [("I", ("A1",)), ("I", ("B2",))]


# -- concurrent edits ----------------------------------------------------------------------


def test_concurrent_edits_to_different_fields_both_survive() -> None:
    logic = synced()
    by_finance = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Acme Corp"))], NOW)
    assert by_finance.writes == ([], [Write("U", KEY, {1: "Acme Corp"})])
    # crm changed the phone at 11 (not having seen the new name); our write landed after it
    logic.confirm(R, by_finance.writes[R], 11, [], NOW)
    by_crm = logic.ingest(R, [update(11, crm(2_001), row(), row(phone="999"))], NOW)
    # the left gets the phone; the right holds both edits already
    assert by_crm.writes == ([Write("U", KEY, {3: "999"})], [])
    assert by_finance.conflicts == by_crm.conflicts == []
    assert merged_row(logic) == ["A1", "Acme Corp", 500, "999"]
    assert held(logic, R) == ["A1", "Acme Corp", 500, "999"]
    assert_converged(logic)


def test_concurrent_edits_of_the_same_field_the_later_wins_and_is_written_to_the_loser() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)  # landed on top of crm's edit at 11
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    # crm's later edit wins: finance (the loser) gets it, and so does crm, whose edit our
    # write of finance's value overwrote
    assert out.writes == (
        [Write("U", KEY, {1: "Right Co"})],
        [Write("U", KEY, {1: "Right Co"})],
    )
    assert out.conflicts == [
        ConflictEntry(
            NOW,
            "customers",
            KEY,
            "name",
            [("Left Co", "finance", fin(2_000)), ("Right Co", "crm", crm(3_000))],
            ("Right Co", "crm", crm(3_000)),
            "lww",
        )
    ]
    assert merged_row(logic) == row(name="Right Co")
    assert_converged(logic)


def test_concurrent_edits_of_the_same_field_the_earlier_loses_even_when_merged_last() -> None:
    logic = synced()
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    logic.confirm(L, ours.writes[L], 2, [], NOW)  # landed on top of finance's edit at 2
    out = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    [conflict] = out.conflicts
    assert conflict.winner == ("Right Co", "crm", crm(3_000))
    assert [c[0] for c in conflict.candidates] == ["Left Co", "Right Co"]
    # both sides hold the winner already (finance's value was overwritten by our write)
    assert out.writes == ([], [])
    assert_converged(logic)


def test_concurrent_edits_with_a_prefer_policy_the_preferred_app_wins_even_when_older() -> None:
    logic = synced(compiled({"prefer": "finance"}))
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    logic.confirm(L, ours.writes[L], 2, [], NOW)
    out = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    assert out.writes == ([Write("U", KEY, {1: "Left Co"})], [Write("U", KEY, {1: "Left Co"})])
    [conflict] = out.conflicts
    assert conflict.winner == ("Left Co", "finance", fin(2_000))
    assert conflict.rule == "prefer:finance"
    assert merged_row(logic) == row(name="Left Co")


def test_equal_concurrent_edits_are_not_a_conflict() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Acme Corp"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Acme Corp"))], NOW)
    assert out.conflicts == []
    assert out.writes == ([], [])


def test_edit_made_on_top_of_the_merged_value_overwrites_without_conflict() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    logic.confirm(L, out.writes[L], 2, [], NOW)
    logic.confirm(R, out.writes[R], 11, [], NOW)
    # finance edits the merged value; its wall clock runs behind crm's, yet its edit wins
    on_top = logic.ingest(L, [update(3, fin(2_500), row(name="Right Co"), row(name="Final"))], NOW)
    assert on_top.conflicts == []
    assert on_top.writes == ([], [Write("U", KEY, {1: "Final"})])
    fs = logic.records[KEY].state.fields["name"]
    assert [r.value for r in fs.registers()] == ["Final"]
    assert fs.registers()[0].ts > crm(3_000)
    assert_converged(logic)


def test_concurrent_inserts_of_the_same_key_are_a_conflict_decided_by_the_policy() -> None:
    logic = PartitionLogic(compiled())
    ours = logic.ingest(L, [insert(1, fin(2_000), row(name="Fin"))], NOW)
    # crm inserted the same account at 11, before our upsert of finance's row landed
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(R, [insert(11, crm(1_000), row(name="Crm"))], NOW)
    assert [c.field for c in out.conflicts] == ["name"]
    assert logic.values(KEY)["name"] == "Fin"  # finance's insert is the later one


# -- one-way fields ------------------------------------------------------------------------


def test_right_side_edit_of_a_left_to_right_field_is_neither_merged_nor_reverted() -> None:
    logic = synced()
    out = logic.ingest(R, [update(11, crm(2_000), row(), row(credit_limit=900))], NOW)
    assert out == Outcome(([], []), [], [])
    assert logic.values(KEY)["credit_limit"] == 500
    assert held(logic, R)[2] == 900
    # a later right-side edit of another field does not revert it either
    later = logic.ingest(
        R, [update(12, crm(3_000), row(credit_limit=900), row(credit_limit=900, phone="999"))], NOW
    )
    assert later.writes == ([Write("U", KEY, {3: "999"})], [])
    assert held(logic, R)[2] == 900


def test_left_side_edit_of_a_left_to_right_field_is_written_to_the_right() -> None:
    logic = synced()
    logic.ingest(R, [update(11, crm(2_000), row(), row(credit_limit=900))], NOW)
    out = logic.ingest(L, [update(2, fin(3_000), row(), row(credit_limit=700))], NOW)
    assert out.writes == ([], [Write("U", KEY, {2: 700})])
    assert out.conflicts == []


# -- deletes -------------------------------------------------------------------------------


def test_delete_propagates_as_a_delete() -> None:
    logic = synced()
    out = logic.ingest(L, [delete(2, fin(2_000), row())], NOW)
    assert out.writes == ([], [Write("D", KEY, {})])
    assert out.conflicts == []
    assert logic.values(KEY) is None
    logic.confirm(R, out.writes[R], 11, [], NOW)
    assert held(logic, R) is None
    assert_converged(logic)


def test_delete_against_concurrent_later_update_the_update_wins() -> None:
    logic = synced()
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    logic.confirm(L, ours.writes[L], 2, [], NOW)  # our update found no row: finance deleted it
    out = logic.ingest(L, [delete(2, fin(2_000), row())], NOW)
    assert logic.values(KEY) is not None
    # the deleting side gets the record back whole, its own credit_limit included
    assert out.writes == ([Write("I", KEY, {0: "A1", 1: "Right Co", 2: 500, 3: "555"})], [])
    assert out.conflicts == [
        ConflictEntry(
            NOW,
            "customers",
            KEY,
            EXISTS,
            [("deleted", "finance", fin(2_000)), ("updated", "crm", crm(3_000))],
            ("updated", "crm", crm(3_000)),
            "later-wins",
        )
    ]
    assert_converged(logic)


def test_delete_against_concurrent_earlier_update_the_delete_wins() -> None:
    logic = synced()
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    logic.confirm(L, ours.writes[L], 2, [], NOW)
    out = logic.ingest(L, [delete(2, fin(4_000), row())], NOW)
    assert logic.values(KEY) is None
    assert out.writes == ([], [Write("D", KEY, {})])
    [conflict] = out.conflicts
    assert conflict.field == EXISTS
    assert conflict.winner == ("deleted", "finance", fin(4_000))
    assert conflict.candidates[0] == ("updated", "crm", crm(3_000))
    # our update that landed after finance's delete did not bring the row back
    assert held(logic, L) is None


def test_update_arriving_after_a_concurrent_earlier_delete_revives_the_record() -> None:
    logic = synced()
    gone = logic.ingest(L, [delete(2, fin(2_000), row())], NOW)
    logic.confirm(R, gone.writes[R], 11, [], NOW)  # our delete landed after crm's update
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    assert merged_row(logic) == row(name="Right Co")
    whole = Write("I", KEY, {0: "A1", 1: "Right Co", 2: 500, 3: "555"})
    assert out.writes == ([whole], [whole])  # both lack the row now
    [conflict] = out.conflicts
    assert conflict.field == EXISTS
    assert conflict.candidates[0] == ("deleted", "finance", fin(2_000))
    assert conflict.winner == ("updated", "crm", crm(3_000))
    assert_converged(logic)


def test_deleted_record_can_be_created_again() -> None:
    logic = synced()
    gone = logic.ingest(L, [delete(2, fin(2_000), row())], NOW)
    logic.confirm(R, gone.writes[R], 10, [], NOW)
    again = row(name="Acme Again")
    # finance's wall clock is behind its own delete: the re-create still wins
    out = logic.ingest(L, [insert(3, fin(1_500), again)], NOW)
    assert out.writes == ([], [Write("I", KEY, {0: "A1", 1: "Acme Again", 2: 500, 3: "555"})])
    assert out.conflicts == []
    assert merged_row(logic) == again
    assert_converged(logic)


def test_update_landing_after_a_delete_does_not_bring_the_record_back() -> None:
    logic = synced()
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    logic.confirm(L, ours.writes[L], 2, [], NOW)  # UPDATE of a row finance deleted at 2
    gone = logic.ingest(L, [delete(2, fin(4_000), row())], NOW)
    logic.confirm(R, gone.writes[R], 11, [], NOW)
    assert held(logic, L) is None
    # crm creates the account again: the left lacks the row, so it gets an insert
    out = logic.ingest(R, [insert(12, crm(5_000), row(name="Reborn"))], NOW)
    assert [w.op for w in out.writes[L]] == ["I"]
    assert out.writes[L][0].values[1] == "Reborn"


# -- failed writes -------------------------------------------------------------------------


def test_failed_write_is_logged_with_its_payload_and_rewritten_whole_on_the_next_change() -> None:
    logic = PartitionLogic(compiled())
    out = logic.ingest(L, [insert(1, fin(1_000), row())], NOW)
    errors = logic.confirm(R, out.writes[R], 10, [(0, 2, "credit_limit out of range")], NOW + 1)
    assert errors == [
        ErrorEntry(
            NOW + 1,
            "customers",
            "crm",
            KEY,
            "credit_limit",
            "write",
            "credit_limit out of range",
            {
                "side": "right",
                "op": "I",
                "key": ["A1"],
                "values": {"account": "A1", "name": "Acme", "credit_limit": 500, "phone": "555"},
            },
        )
    ]
    assert held(logic, R) is UNSEEN
    nxt = logic.ingest(L, [update(2, fin(2_000), row(), row(phone="777"))], NOW)
    assert nxt.writes[R] == [Write("I", KEY, {0: "A1", 1: "Acme", 2: 500, 3: "777"})]


def test_failed_write_without_a_field_names_none() -> None:
    logic = synced()
    out = logic.ingest(L, [update(2, fin(2_000), row(), row(name="X"))], NOW)
    [error] = logic.confirm(R, out.writes[R], 11, [(0, None, "refused")], NOW)
    assert (error.map, error.app, error.key, error.field, error.kind) == (
        "customers",
        "crm",
        KEY,
        None,
        "write",
    )
    assert error.payload == {"side": "right", "op": "U", "key": ["A1"], "values": {"name": "X"}}


def test_only_the_refused_record_of_a_batch_is_reported() -> None:
    logic = PartitionLogic(compiled())
    out = logic.ingest(
        L,
        [
            insert(1, fin(1_000), row(), key=("A1",)),
            insert(2, fin(1_000), row(account="B2"), key=("B2",)),
        ],
        NOW,
    )
    [error] = logic.confirm(R, out.writes[R], 10, [(1, 1, "name too long")], NOW)
    assert (error.key, error.field) == (("B2",), "name")
    assert held(logic, R, ("A1",)) == list(ROW)
    assert held(logic, R, ("B2",)) is UNSEEN


def test_failing_custom_resolver_falls_back_to_lww_and_is_reported() -> None:
    def broken(field: str, candidates: Sequence[Register]) -> Register:
        raise RuntimeError("resolver bug")

    logic = synced(compiled({"custom": "broken"}, {"broken": broken}))
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    assert logic.values(KEY)["name"] == "Right Co"
    [conflict] = out.conflicts
    assert conflict.rule == "lww (custom:broken failed)"
    assert out.errors
    for error in out.errors:
        assert (error.key, error.field, error.kind) == (KEY, "name", "resolve")
        assert "RuntimeError: resolver bug" in error.message


def test_failing_custom_resolver_is_reported_once_per_change() -> None:
    def broken(field: str, candidates: Sequence[Register]) -> Register:
        raise RuntimeError("resolver bug")

    logic = synced(compiled({"custom": "broken"}, {"broken": broken}))
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    assert len(out.errors) == 1


def test_resolver_failure_met_while_reading_is_not_blamed_on_the_next_record() -> None:
    def broken(field: str, candidates: Sequence[Register]) -> Register:
        raise RuntimeError("resolver bug")

    logic = synced(compiled({"custom": "broken"}, {"broken": broken}))
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    assert logic.values(KEY)["name"] == "Right Co"  # a read that calls the resolver
    other = logic.ingest(L, [insert(3, fin(4_000), row(account="B2"), key=("B2",))], NOW)
    assert other.errors == []


# -- our writes racing the applications' edits ---------------------------------------------


def test_change_made_before_our_write_landed_is_seen_with_our_write_on_top() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Acme Corp"))], NOW)
    logic.confirm(R, ours.writes[R], 12, [], NOW)
    # crm changed the phone at 11, before our write (position 12) landed; we read it only now
    out = logic.ingest(R, [update(11, crm(2_500), row(), row(phone="999"))], NOW)
    assert held(logic, R) == ["A1", "Acme Corp", 500, "999"]
    assert out.writes == ([Write("U", KEY, {3: "999"})], [])  # nothing to add on the right
    assert_converged(logic)


def test_change_made_before_our_write_landed_is_rewritten_when_it_differs_from_the_merge() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    logic.confirm(R, ours.writes[R], 12, [], NOW)
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    # our write overwrote crm's edit, which wins: the right must get crm's value back
    assert Write("U", KEY, {1: "Right Co"}) in out.writes[R]
    assert_converged(logic)


def test_change_made_after_our_write_landed_is_taken_as_is() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Acme Corp"))], NOW)
    logic.confirm(R, ours.writes[R], 12, [], NOW)
    after = row(name="Acme Corp", phone="999")
    out = logic.ingest(R, [update(13, crm(2_500), row(name="Acme Corp"), after)], NOW)
    assert held(logic, R) == after
    assert logic.records[KEY].pending[R] == []
    assert out.writes == ([Write("U", KEY, {3: "999"})], [])
    assert out.conflicts == []


def test_a_write_is_kept_for_changes_up_to_its_position_only() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Acme Corp"))], NOW)
    logic.confirm(R, ours.writes[R], 12, [], NOW)
    # crm's change 12 is the last one committed before our write: the write applies on top
    logic.ingest(R, [update(12, crm(2_500), row(), row(phone="999"))], NOW)
    assert held(logic, R) == ["A1", "Acme Corp", 500, "999"]
    assert logic.records[KEY].pending[R] == [(12, "U", {1: "Acme Corp"})]
    # crm's change 13 committed after it and shows it: the write is forgotten
    last = row(name="Acme Corp", phone="1")
    logic.ingest(R, [update(13, crm(2_600), row(name="Acme Corp", phone="999"), last)], NOW)
    assert logic.records[KEY].pending[R] == []
    assert held(logic, R) == last


def test_ingest_does_not_change_the_rows_it_is_given() -> None:
    logic = PartitionLogic(compiled())
    new = row()
    first = logic.ingest(L, [insert(1, fin(1_000), new)], NOW)
    logic.confirm(R, first.writes[R], 10, [], NOW)
    logic.ingest(R, [update(11, crm(2_000), row(), row(phone="999"))], NOW)
    assert new == list(ROW)


def test_settle_drops_pending_writes_up_to_the_position() -> None:
    logic = synced()
    first = logic.ingest(L, [update(2, fin(2_000), row(), row(name="B"))], NOW)
    logic.confirm(R, first.writes[R], 12, [], NOW)
    second = logic.ingest(L, [update(3, fin(3_000), row(name="B"), row(name="C"))], NOW)
    logic.confirm(R, second.writes[R], 15, [], NOW)
    assert [p[0] for p in logic.records[KEY].pending[R]] == [10, 12, 15]
    logic.settle(R, 12)
    assert logic.records[KEY].pending[R] == [(15, "U", {1: "C"})]
    logic.settle(R, 20)
    assert logic.records[KEY].pending[R] == []
    assert held(logic, R) == row(name="C")  # settling does not change what we know


# -- persistence and determinism -----------------------------------------------------------


def test_encode_and_decode_round_trip_a_tracked_record_exactly() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co", phone="0"))], NOW)
    logic.confirm(L, out.writes[L], 2, [], NOW)
    logic.confirm(R, out.writes[R], 11, [], NOW)
    rec = logic.records[KEY]
    rec.seen[L] = ["A1", UNSEEN, None, 1.5]
    rec.state.fields["name"].assign(Register("Other", fin(2_500), ("finance", 9)))
    # a field with a gap in its dots (a cloud) and a deleted record's timestamps
    rec.state.fields["extra"] = FieldState(cloud=[("crm", 3), ("finance", 1)])
    rec.state.dead = fin(2_500)
    assert len(rec.state.fields["name"].entries) == 3  # two concurrent values and "Other"
    assert rec.state.fields["name"].cloud == {("finance", 9)}
    assert rec.pending[R] and rec.pending[L]

    back = decode_record(encode_record(rec))
    assert isinstance(back, Tracked)
    assert back.state == rec.state
    assert back.seen == rec.seen
    assert back.seen[L][1] is UNSEEN
    assert back.pending == rec.pending
    assert back.last == rec.last
    assert encode_record(back) == encode_record(rec)


def test_decoded_records_carry_on_the_protocol_like_the_originals() -> None:
    logic = synced()
    copy = PartitionLogic(
        logic.map, {k: decode_record(encode_record(v)) for k, v in logic.records.items()}
    )
    assert copy.ingest(R, [update(11, crm(2_000), row(), row(phone="9"))], NOW) == logic.ingest(
        R, [update(11, crm(2_000), row(), row(phone="9"))], NOW
    )


def random_script(seed: int) -> list[tuple[str, Side, Any]]:
    """A seeded script of batches and write outcomes over a few records."""
    rng = random.Random(seed)
    steps: list[tuple[str, Side, Any]] = []
    seq = [0, 100]
    rows: dict[tuple[Any, ...], list[Any] | None] = {}
    for step in range(60):
        side = Side(rng.randrange(2))
        batch = []
        for _ in range(rng.randrange(1, 4)):
            key = (f"A{rng.randrange(4)}",)
            seq[side] += 1
            wall = 1_000 + step * 10 + rng.randrange(30)
            ts = Timestamp(wall, rng.randrange(2), ("finance", "crm")[side])
            old = rows.get(key)
            if old is None:
                new = [key[0], f"n{rng.randrange(3)}", rng.randrange(3), f"p{rng.randrange(3)}"]
                batch.append(Change(seq[side], "I", key, ts, None, new))
            elif rng.random() < 0.1:
                new = None
                batch.append(Change(seq[side], "D", key, ts, list(old), None))
            else:
                new = list(old)
                new[rng.randrange(1, 4)] = f"v{rng.randrange(4)}"
                batch.append(Change(seq[side], "U", key, ts, list(old), list(new)))
            rows[key] = new
        steps.append(("ingest", side, batch))
        for target in Side:
            steps.append(("confirm", target, seq[target] + rng.randrange(2)))
    return steps


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_batches_give_the_same_writes_and_records(seed: int) -> None:
    def play() -> tuple[list[Any], dict[Any, bytes]]:
        logic = PartitionLogic(compiled())
        log: list[Any] = []
        last = Outcome(([], []), [], [])
        for kind, side, arg in random_script(seed):
            if kind == "ingest":
                last = logic.ingest(side, arg, NOW)
                log.append(last)
            else:
                failures = [(0, 1, "nope")] if arg % 5 == 0 and last.writes[side] else []
                log.append(logic.confirm(side, last.writes[side], arg, failures, NOW))
        return log, {k: encode_record(v) for k, v in sorted(logic.records.items())}

    first, second = play(), play()
    assert first == second
    outcomes = [o for o in first[0] if isinstance(o, Outcome)]
    assert any(o.conflicts for o in outcomes)
    assert any(o.writes[L] for o in outcomes) and any(o.writes[R] for o in outcomes)
    assert len(first[1]) == 4


# -- two applications, played in the actor's order of calls --------------------------------


class FakeApp:
    """One application: its rows, a change log that never records our writes (no echo) and
    an HLC reading a wall clock that is ``skew`` ms off."""

    def __init__(self, side: Side, skew: int) -> None:
        self.clock = HybridClock(("finance", "crm")[side])
        self.skew = skew
        self.rows: dict[tuple[Any, ...], list[Any]] = {}
        self.log: list[Change] = []

    def edit(self, key: tuple[Any, ...], i: int, value: Any, now: int) -> None:
        old = self.rows.get(key)
        new = [key[0], "n", 0, "p"] if old is None else list(old)
        new[i] = value
        if new == old:
            return
        ts = self.clock.now(now + self.skew)
        seq = len(self.log) + 1
        if old is None:
            self.log.append(Change(seq, "I", key, ts, None, list(new)))
        else:
            self.log.append(Change(seq, "U", key, ts, list(old), list(new)))
        self.rows[key] = new

    def delete(self, key: tuple[Any, ...], now: int) -> None:
        old = self.rows.pop(key, None)
        if old is not None:
            ts = self.clock.now(now + self.skew)
            self.log.append(Change(len(self.log) + 1, "D", key, ts, old, None))

    def apply(self, writes: Sequence[Write]) -> int:
        """Our writes, as the connector makes them (``U`` of a missing row does nothing)."""
        position = len(self.log)
        for write in writes:
            current = self.rows.get(write.key)
            if write.op == "D":
                self.rows.pop(write.key, None)
            elif current is not None:
                for i, value in write.values.items():
                    current[i] = value
            elif write.op == "I":
                new = [None] * len(FIELDS)
                for i, value in write.values.items():
                    new[i] = value
                self.rows[write.key] = new
        return position


class Actor:
    """The partition actor's order of calls: a batch is merged while the previous batch's
    writes are under way, then that batch is confirmed; a batch touching a record with a write
    in flight to its side confirms that write first."""

    def __init__(self, skews: tuple[int, int]) -> None:
        self.logic = PartitionLogic(compiled())
        self.apps = (FakeApp(L, skews[0]), FakeApp(R, skews[1]))
        self.delivered = [0, 0]
        self.inflight: Outcome | None = None
        self.landed: list[int | None] = [None, None]

    def land(self, side: Side) -> None:
        if self.inflight is not None and self.landed[side] is None:
            self.landed[side] = self.apps[side].apply(self.inflight.writes[side])

    def finish(self) -> None:
        if self.inflight is None:
            return
        for side in Side:
            self.land(side)
            position = self.landed[side]
            assert position is not None
            self.logic.confirm(side, self.inflight.writes[side], position, [], NOW)
        self.inflight, self.landed = None, [None, None]

    def deliver(self, side: Side, n: int) -> None:
        start = self.delivered[side]
        changes = self.apps[side].log[start : start + n]
        if not changes:
            return
        self.delivered[side] += len(changes)
        if self.inflight is not None:
            written = {w.key for w in self.inflight.writes[side]}
            if any(c.key in written for c in changes):
                self.finish()
        out = self.logic.ingest(side, changes, NOW)
        self.finish()
        self.inflight = out

    def drain(self) -> None:
        for side in Side:
            self.deliver(side, len(self.apps[side].log))
        self.finish()


KEYS = [("A1",), ("B2",)]
app_edits = st.tuples(
    st.just("edit"),
    st.sampled_from(Side),
    st.sampled_from(KEYS),
    st.sampled_from([1, 2, 3]),
    st.sampled_from(["x", "y", "z"]),
)
app_steps = st.lists(
    st.one_of(
        app_edits,
        app_edits,  # edits twice as often as the rest: more of them run concurrently
        st.tuples(st.just("delete"), st.sampled_from(Side), st.sampled_from(KEYS)),
        st.tuples(st.just("deliver"), st.sampled_from(Side), st.integers(1, 3)),
        st.tuples(st.just("land"), st.sampled_from(Side)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(steps=app_steps, skews=st.tuples(st.integers(-20, 20), st.integers(-20, 20)))
def test_both_applications_converge_to_the_merged_records(
    steps: list[tuple[Any, ...]], skews: tuple[int, int]
) -> None:
    actor = Actor(skews)
    for n, (kind, side, *args) in enumerate(steps):
        now = 1_000 + 10 * n
        if kind == "edit":
            actor.apps[side].edit(args[0], args[1], args[2], now)
        elif kind == "delete":
            actor.apps[side].delete(args[0], now)
        elif kind == "deliver":
            actor.deliver(side, args[0])
        else:
            actor.land(side)
    actor.drain()
    left, right = actor.apps
    for key in KEYS:
        merged = actor.logic.values(key)
        mine, theirs = left.rows.get(key), right.rows.get(key)
        if merged is None:
            assert mine is None and theirs is None, (key, mine, theirs)
            continue
        assert mine is not None and theirs is not None, (key, mine, theirs, merged)
        for i, name in enumerate(FIELDS):
            if actor.logic.map.both[i]:
                assert mine[i] == theirs[i] == merged[name], (key, name, mine, theirs, merged)
