"""The partition protocol, sans I/O: changes in, writes and log entries out.

Every test plays one history of the customers map. Values are in canonical field order
(account, name, credit_limit, phone); the left app is ``finance``, the right app ``crm``.
``confirm(side, writes, position, ...)`` plays the writer: ``position`` is the last change
sequence of that side's log that committed before our write. As the actor does, a batch's
writes to a side are confirmed before changes of that side to the same records are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from conflict import EXISTS, Origins, Register, Timestamp, pack
from engine.codec import SAME, UNSEEN
from engine.ids import Side
from engine.maps import CompiledMap, load_map
from engine.pipeline import (
    EXISTS_FIELD,
    Change,
    ConflictEntry,
    ErrorEntry,
    Outcome,
    PartitionLogic,
    Write,
)
from engine.records import Pending, Tracked

from conftest import CUSTOMERS

L, R = Side.LEFT, Side.RIGHT
KEY = ("A1",)
ROW = ("A1", "Acme", 500, "555")
FIELDS = ("account", "name", "credit_limit", "phone")
NOW = 99_000
ORIGINS = Origins(["finance", "crm"])
NOTHING = Outcome(([], []), [], [], [])


def compiled(conflict: Any = None, resolvers: dict[str, Any] | None = None) -> CompiledMap:
    data = dict(CUSTOMERS)
    if conflict is not None:
        data["conflict"] = conflict
    return load_map(data).compile(resolvers)


def fin(wall: int, counter: int = 0) -> int:
    """A stamp of finance's clock."""
    return pack(wall, counter, ORIGINS.rank("finance"))


def crm(wall: int, counter: int = 0) -> int:
    return pack(wall, counter, ORIGINS.rank("crm"))


def ts(stamp: int) -> Timestamp:
    return ORIGINS.timestamp(stamp)


def row(base: Sequence[Any] = ROW, **values: Any) -> list[Any]:
    """A fresh list: ``base`` with some fields replaced."""
    new = list(base)
    for name, value in values.items():
        new[FIELDS.index(name)] = value
    return new


def insert(seq: int, stamp: int, new: list[Any], key: tuple[Any, ...] = KEY) -> Change:
    return Change(seq, "I", key, stamp, None, new)


def update(seq: int, stamp: int, old: list[Any], new: list[Any]) -> Change:
    return Change(seq, "U", KEY, stamp, old, new)


def delete(seq: int, stamp: int, old: list[Any]) -> Change:
    return Change(seq, "D", KEY, stamp, old, None)


def synced(cmap: CompiledMap | None = None) -> PartitionLogic:
    """A1 created on the left (change 1) and written to the right, landing at position 10."""
    logic = PartitionLogic(cmap or compiled(), live=True)
    out = logic.ingest(L, [insert(1, fin(1_000), row())], NOW)
    assert logic.confirm(R, out.writes[R], 10, [], NOW) == []
    return logic


def tracked(logic: PartitionLogic, key: tuple[Any, ...] = KEY) -> Tracked:
    rec = logic.cache.get(key)
    assert isinstance(rec, Tracked)
    return rec


def merged_row(logic: PartitionLogic, key: tuple[Any, ...] = KEY) -> list[Any] | None:
    values = logic.values(key)
    assert not isinstance(values, tuple)
    return None if values is None else [values.get(name, UNSEEN) for name in FIELDS]


def held(logic: PartitionLogic, side: Side, key: tuple[Any, ...] = KEY) -> Any:
    """What the engine knows ``side`` holds of the record now."""
    return tracked(logic, key).holds(side, logic.map.key)


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
    logic = PartitionLogic(compiled(), live=True)
    out = logic.ingest(L, [insert(1, fin(1_000), row())], NOW)
    assert out.writes[R] == [Write("I", KEY, {0: "A1", 1: "Acme", 2: 500, 3: "555"})]
    assert out.writes[L] == []
    assert out.conflicts == [] and out.errors == [] and out.mail == []
    assert merged_row(logic) == list(ROW)
    assert_converged(logic)


def test_insert_on_the_right_leaves_out_the_field_the_left_owns() -> None:
    logic = PartitionLogic(compiled(), live=True)
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
    assert out == NOTHING


def test_several_changes_of_one_record_in_a_batch_make_one_write() -> None:
    logic = synced()
    first = row(name="Acme Corp")
    second = row(first, phone="777")
    out = logic.ingest(
        L, [update(2, fin(2_000), row(), first), update(3, fin(2_001), first, second)], NOW
    )
    assert out.writes[R] == [Write("U", KEY, {1: "Acme Corp", 3: "777"})]


def test_changes_of_several_records_in_a_batch_make_one_write_each() -> None:
    logic = PartitionLogic(compiled(), live=True)
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
            [("Left Co", "finance", ts(fin(2_000))), ("Right Co", "crm", ts(crm(3_000)))],
            ("Right Co", "crm", ts(crm(3_000))),
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
    assert conflict.winner == ("Right Co", "crm", ts(crm(3_000)))
    assert [c[0] for c in conflict.candidates] == ["Left Co", "Right Co"]
    # both sides hold the winner already (finance's value was overwritten by our write); crm
    # has not seen finance's edit, so it is written the winner again: its next edit of the
    # name is then made on top of both and overwrites them, with no conflict
    assert out.writes == ([], [Write("U", KEY, {1: "Right Co"})])
    assert_converged(logic)


def test_concurrent_edits_with_a_prefer_policy_the_preferred_app_wins_even_when_older() -> None:
    logic = synced(compiled({"prefer": "finance"}))
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co"))], NOW)
    logic.confirm(L, ours.writes[L], 2, [], NOW)
    out = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    assert out.writes == ([Write("U", KEY, {1: "Left Co"})], [Write("U", KEY, {1: "Left Co"})])
    [conflict] = out.conflicts
    assert conflict.winner == ("Left Co", "finance", ts(fin(2_000)))
    assert conflict.rule == "prefer:finance"
    assert merged_row(logic) == row(name="Left Co")


def test_equal_concurrent_edits_are_not_a_conflict() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Acme Corp"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Acme Corp"))], NOW)
    assert out.conflicts == []
    # finance holds the value already but has not seen crm's edit: written again
    assert out.writes == ([Write("U", KEY, {1: "Acme Corp"})], [])


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
    [(value, stamp)] = tracked(logic).entries(1)
    assert value == "Final"
    assert stamp > crm(3_000)  # raised past what it saw
    assert_converged(logic)


def test_concurrent_inserts_of_the_same_key_are_a_conflict_decided_by_the_policy() -> None:
    logic = PartitionLogic(compiled(), live=True)
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
    assert out == NOTHING
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
    # the deleting side gets the record back whole, its own credit_limit included; crm,
    # which had not seen the delete, is told of it (its next edit is made on top of it)
    assert out.writes == (
        [Write("I", KEY, {0: "A1", 1: "Right Co", 2: 500, 3: "555"})],
        [Write("U", KEY, {0: "A1"})],
    )
    assert out.conflicts == [
        ConflictEntry(
            NOW,
            "customers",
            KEY,
            EXISTS_FIELD,
            [("deleted", "finance", ts(fin(2_000))), ("updated", "crm", ts(crm(3_000)))],
            ("updated", "crm", ts(crm(3_000))),
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
    # finance deleted without seeing crm's update; our update of it landed after the delete
    # (on no row), so finance has been told of it: nothing more to write there
    assert out.writes == ([], [Write("D", KEY, {})])
    [conflict] = out.conflicts
    assert conflict.field == EXISTS_FIELD
    assert conflict.winner == ("deleted", "finance", ts(fin(4_000)))
    assert conflict.candidates[0] == ("updated", "crm", ts(crm(3_000)))
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
    assert conflict.field == EXISTS_FIELD
    assert conflict.candidates[0] == ("deleted", "finance", ts(fin(2_000)))
    assert conflict.winner == ("updated", "crm", ts(crm(3_000)))
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
    logic = PartitionLogic(compiled(), live=True)
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
    logic = PartitionLogic(compiled(), live=True)
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
    assert tracked(logic).pending(R) == []
    assert out.writes == ([Write("U", KEY, {3: "999"})], [])
    assert out.conflicts == []


def test_a_write_is_kept_for_changes_up_to_its_position_only() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Acme Corp"))], NOW)
    logic.confirm(R, ours.writes[R], 12, [], NOW)
    # crm's change 12 is the last one committed before our write: the write applies on top
    logic.ingest(R, [update(12, crm(2_500), row(), row(phone="999"))], NOW)
    assert held(logic, R) == ["A1", "Acme Corp", 500, "999"]
    assert tracked(logic).pending(R) == [Pending(12, "U", KEY, {1: "Acme Corp"}, fin(2_000))]
    # crm's change 13 committed after it and shows it: the write is forgotten
    last = row(name="Acme Corp", phone="1")
    logic.ingest(R, [update(13, crm(2_600), row(name="Acme Corp", phone="999"), last)], NOW)
    assert tracked(logic).pending(R) == []
    assert held(logic, R) == last


def test_ingest_does_not_change_the_rows_it_is_given() -> None:
    logic = PartitionLogic(compiled(), live=True)
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
    assert [p.position for p in tracked(logic).pending(R)] == [10, 12, 15]
    logic.settle(R, 12)
    assert tracked(logic).pending(R) == [Pending(15, "U", KEY, {1: "C"}, fin(3_000))]
    logic.settle(R, 20)
    assert tracked(logic).pending(R) == []
    assert held(logic, R) == row(name="C")  # settling does not change what we know
    assert tracked(logic).seen[R] is SAME


# -- exact causality: what a change was made on top of comes from its side's history --------


def test_delete_then_same_value_reinsert_on_the_other_side_survives() -> None:
    # Paused: finance deletes A1; later crm deletes it and inserts it again with the same
    # values (a "save" that deletes and re-creates). Then play: finance's batch first.
    logic = synced()
    gone = logic.ingest(L, [delete(2, fin(2_000), row())], NOW)
    assert gone.writes == ([], [Write("D", KEY, {})])
    # crm's delete (11) and re-insert (12) were already in its log when our delete landed
    logic.confirm(R, gone.writes[R], 12, [], NOW)
    out = logic.ingest(R, [delete(11, crm(3_000), row()), insert(12, crm(3_001), row())], NOW)
    # crm's re-insert saw its own delete, not finance's: concurrent with it, and later
    assert merged_row(logic) == list(ROW)
    [conflict] = out.conflicts
    assert conflict.field == EXISTS_FIELD
    assert conflict.winner == ("updated", "crm", ts(crm(3_001)))
    assert [c[:2] for c in conflict.candidates] == [("deleted", "finance"), ("updated", "crm")]
    # both lack the row now (our delete landed after crm's re-insert): both get it back
    whole = Write("I", KEY, {0: "A1", 1: "Acme", 2: 500, 3: "555"})
    assert out.writes == ([whole], [whole])
    assert_converged(logic)


def test_delete_then_same_value_reinsert_on_the_other_side_survives_merged_the_other_way() -> None:
    # The same history, crm's batch merged first.
    logic = synced()
    out = logic.ingest(R, [delete(11, crm(3_000), row()), insert(12, crm(3_001), row())], NOW)
    assert out.conflicts == []
    # finance gets crm's values again (equal) so that it has seen crm's re-insert
    assert [w.op for w in out.writes[L]] == ["U"]
    logic.confirm(L, out.writes[L], 2, [], NOW)  # finance's delete (2) came before it
    late = logic.ingest(L, [delete(2, fin(2_000), row())], NOW)
    assert merged_row(logic) == list(ROW)
    [conflict] = late.conflicts
    assert conflict.winner == ("updated", "crm", ts(crm(3_001)))
    whole = Write("I", KEY, {0: "A1", 1: "Acme", 2: 500, 3: "555"})
    assert late.writes[L] == [whole]  # finance deleted the row: it gets it back
    assert_converged(logic)


def test_a_delete_made_after_seeing_a_reinsert_deletes_it_whatever_the_clocks() -> None:
    logic = synced()
    out = logic.ingest(R, [delete(11, crm(3_000), row()), insert(12, crm(9_000), row())], NOW)
    logic.confirm(L, out.writes[L], 2, [], NOW)
    # finance's clock is far behind crm's, but it deleted after our write landed (3 > 2)
    gone = logic.ingest(L, [delete(3, fin(2_000), row())], NOW)
    assert gone.conflicts == []
    assert merged_row(logic) is None
    assert gone.writes == ([], [Write("D", KEY, {})])


def test_replace_of_a_held_row_is_an_update_of_the_fields_it_changed() -> None:
    # SQLite INSERT OR REPLACE of a row finance holds is captured as an insert without an
    # old image; under prefer: crm, finance's own later edit must not be reverted
    logic = synced(compiled({"prefer": "crm"}))
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(phone="999"))], NOW)
    logic.confirm(L, ours.writes[L], 2, [], NOW)
    # finance REPLACEs the row it holds (with crm's phone, which it received) changing the name
    out = logic.ingest(L, [insert(3, fin(2_000), row(phone="999", name="Replaced"))], NOW)
    assert out.conflicts == []
    assert merged_row(logic) == row(phone="999", name="Replaced")
    assert out.writes == ([], [Write("U", KEY, {1: "Replaced"})])


def test_an_edit_made_on_top_of_our_write_wins_under_a_policy_preferring_the_other_side() -> None:
    logic = synced(compiled({"prefer": "crm"}))
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Crm Name"))], NOW)
    logic.confirm(L, ours.writes[L], 2, [], NOW)
    # finance renames it after our write landed (its change 3 > 2): made on top of it
    out = logic.ingest(L, [update(3, fin(1_000), row(name="Crm Name"), row(name="Mine"))], NOW)
    assert out.conflicts == []
    assert merged_row(logic) == row(name="Mine")


def test_an_edit_made_before_our_write_landed_is_concurrent_with_what_it_carried() -> None:
    logic = synced(compiled({"prefer": "crm"}))
    ours = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Crm Name"))], NOW)
    logic.confirm(L, ours.writes[L], 5, [], NOW)
    # finance renamed it at 4, before our write landed at 5: concurrent, and crm preferred
    out = logic.ingest(L, [update(4, fin(9_000), row(), row(name="Mine"))], NOW)
    [conflict] = out.conflicts
    assert conflict.winner == ("Crm Name", "crm", ts(crm(3_000)))
    assert merged_row(logic) == row(name="Crm Name")


def test_same_value_history_on_one_side_is_not_taken_for_having_seen_the_other() -> None:
    # A-B-A: crm changes the phone and back; finance, not having seen either, changes it
    logic = synced(compiled({"prefer": "crm"}))
    out = logic.ingest(
        R,
        [
            update(11, crm(3_000), row(), row(phone="777")),
            update(12, crm(3_001), row(phone="777"), row()),
        ],
        NOW,
    )
    logic.confirm(L, out.writes[L], 5, [], NOW)
    theirs = logic.ingest(L, [update(4, fin(9_000), row(), row(phone="111"))], NOW)
    # finance's old value equals the merged one, yet it had not seen crm's edits
    [conflict] = theirs.conflicts
    assert conflict.winner == ("555", "crm", ts(crm(3_001)))


def test_the_conflict_log_has_one_entry_per_field_still_in_conflict_after_a_batch() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="L1"))], NOW)
    logic.confirm(R, ours.writes[R], 20, [], NOW)
    # crm edits the name five times before our write lands: one conflict, not five
    changes = []
    name = "Acme"
    for i in range(5):
        changes.append(update(11 + i, crm(3_000 + i), row(name=name), row(name=f"R{i}")))
        name = f"R{i}"
    out = logic.ingest(R, changes, NOW)
    [conflict] = out.conflicts
    assert [c[0] for c in conflict.candidates] == ["L1", "R4"]


def test_a_conflict_resolved_in_the_same_batch_is_not_logged() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="L1"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(
        R,
        [
            update(11, crm(3_000), row(), row(name="R1")),  # concurrent with L1
            update(12, crm(3_001), row(name="L1"), row(name="R2")),  # made on top of both
        ],
        NOW,
    )
    assert out.conflicts == []
    assert merged_row(logic) == row(name="R2")


def test_a_delete_and_recreate_loop_of_one_side_logs_no_conflict() -> None:
    logic = synced()
    changes = []
    for i in range(4):
        changes.append(delete(2 + 2 * i, fin(2_000 + 2 * i), row()))
        changes.append(insert(3 + 2 * i, fin(2_001 + 2 * i), row()))
    out = logic.ingest(L, changes, NOW)
    assert out.conflicts == []
    assert merged_row(logic) == list(ROW)
    assert tracked(logic).multi is None


def test_concurrent_edits_of_different_fields_keep_no_register_objects() -> None:
    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="N"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    logic.ingest(R, [update(11, crm(2_001), row(), row(phone="9"))], NOW)
    rec = tracked(logic)
    # one value and one stamp per field, nothing more (the two upserts are concurrent, so
    # existence holds both until an edit that saw both)
    assert set(rec.multi or ()) <= {EXISTS}
    assert rec.values == ["A1", "N", 500, "9", True]


# -- snapshots ---------------------------------------------------------------------------------


def snapshot(stamp: int, new: list[Any], key: tuple[Any, ...] = KEY) -> Change:
    return Change(0, "S", key, stamp, None, new)


def test_a_snapshot_row_equal_to_the_merged_one_writes_nothing_and_counts_as_seen() -> None:
    logic = PartitionLogic(compiled())
    logic.ingest(L, [snapshot(fin(1_000), row())], NOW, None)
    out = logic.ingest(R, [snapshot(crm(1_001), row())], NOW, None)
    assert out.writes == ([], []) and out.conflicts == []
    rec = tracked(logic)
    assert rec.seen == [SAME, SAME]
    # crm's next edit is made on top of finance's values: no conflict
    later = logic.ingest(R, [update(11, crm(2_000), row(), row(name="New"))], NOW)
    assert later.conflicts == []


def test_a_snapshot_row_that_differs_is_concurrent_in_the_fields_that_differ() -> None:
    logic = PartitionLogic(compiled())
    logic.ingest(L, [snapshot(fin(1_000), row())], NOW, None)
    out = logic.ingest(R, [snapshot(crm(1_001), row(name="Crm"))], NOW, None)
    [conflict] = out.conflicts
    assert conflict.field == "name"
    assert conflict.winner == ("Crm", "crm", ts(crm(1_001)))
    assert out.writes == ([Write("U", KEY, {1: "Crm"})], [])


# -- keys that change ----------------------------------------------------------------------


def move(seq: int, stamp: int, old: list[Any], new: list[Any]) -> Change:
    return Change(seq, "M", (old[0],), stamp, old, new)


def keys_in(partitions: int, owner: int, n: int) -> list[str]:
    """``n`` account numbers partition ``owner`` of ``partitions`` owns."""
    from engine.pipeline import partition_of

    found = []
    i = 0
    while len(found) < n:
        i += 1
        if partition_of([f"K{i}"], partitions) == owner:
            found.append(f"K{i}")
    return found


def test_a_key_change_moves_the_record_and_writes_a_move_to_the_other_side() -> None:
    logic = synced()
    out = logic.ingest(L, [move(2, fin(2_000), row(), row(account="A2"))], NOW)
    assert logic.values(KEY) == ("A2",)  # a redirect is left behind
    assert merged_row(logic, ("A2",)) == row(account="A2")
    assert out.writes[R] == [Write("M", ("A2",), {0: "A2", 1: "Acme", 2: 500, 3: "555"}, ("A1",))]
    assert out.writes[L] == []
    assert (logic.records, logic.deleted) == (1, 0)


def test_a_concurrent_edit_at_the_old_key_follows_the_record_to_the_new_key() -> None:
    logic = synced()
    moved = logic.ingest(L, [move(2, fin(2_000), row(), row(account="A2"))], NOW)
    logic.confirm(R, moved.writes[R], 11, [], NOW)  # crm's edit (11) came before our move
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(phone="999"))], NOW)
    # the change arrived at A1, which the record left: it is forwarded (same partition here)
    assert out.writes == ([], []) and [m.kind for m in out.mail] == ["forward"]
    took, _ = logic.deliver(R, out.mail, NOW)
    assert merged_row(logic, ("A2",)) == row(account="A2", phone="999")
    # finance gets the phone; crm's row moved to A2 with the old phone by our move: fixed
    assert took.writes == (
        [Write("U", ("A2",), {3: "999"})],
        [Write("U", ("A2",), {3: "999"})],
    )
    assert logic.values(("A1",)) == ("A2",)


def test_a_record_moving_to_another_partition_is_mailed_and_adopted_there() -> None:
    [old] = keys_in(2, 0, 1)
    [new] = keys_in(2, 1, 1)
    first = PartitionLogic(compiled(), index=0, partitions=2, live=True)
    second = PartitionLogic(compiled(), index=1, partitions=2, live=True)
    out = first.ingest(L, [insert(1, fin(1_000), row(account=old), key=(old,))], NOW)
    first.confirm(R, out.writes[R], 10, [], NOW)
    moved = first.ingest(L, [move(2, fin(2_000), row(account=old), row(account=new))], NOW)
    assert moved.writes == ([], [])
    [mail] = moved.mail
    assert (mail.kind, mail.key) == ("adopt", (new,))
    assert first.values((old,)) == (new,)
    assert (first.records, second.records) == (0, 0)
    took, _ = second.deliver(L, [mail], NOW)
    assert took.writes[R] == [Write("M", (new,), {0: new, 1: "Acme", 2: 500, 3: "555"}, (old,))]
    assert second.values((new,)) == dict(zip(FIELDS, row(account=new), strict=True))
    assert (first.records, second.records) == (0, 1)


def test_concurrent_renames_of_one_record_end_with_one_record_the_policy_picks() -> None:
    logic = synced()
    mine = logic.ingest(L, [move(2, fin(2_000), row(), row(account="AL"))], NOW)
    logic.confirm(R, mine.writes[R], 11, [], NOW)  # crm renamed it at 11, before our move
    theirs = logic.ingest(R, [move(11, crm(3_000), row(), row(account="AR"))], NOW)
    rounds = 0
    mail = theirs.mail
    writes: list[list[Write]] = [list(theirs.writes[0]), list(theirs.writes[1])]
    while mail:
        rounds += 1
        out, taken = logic.deliver(R, mail, NOW)
        assert taken == len(mail)
        mail = out.mail
        for side in Side:
            writes[side] += out.writes[side]
    # lww: crm's rename is the later one: the record lives at AR, finance is moved there
    assert merged_row(logic, ("AR",)) == row(account="AR")
    assert logic.values(("AL",)) == ("AR",)
    assert Write("M", ("AR",), {0: "AR", 1: "Acme", 2: 500, 3: "555"}, ("AL",)) in writes[L]
    assert logic.records == 1


def test_a_rename_onto_a_key_another_record_holds_merges_them_and_says_so() -> None:
    logic = synced()
    out = logic.ingest(
        R, [insert(11, crm(1_500), row(account="B2", name="Other"), key=("B2",))], NOW
    )
    logic.confirm(L, out.writes[L], 1, [], NOW)
    moved = logic.ingest(L, [move(2, fin(2_000), row(), row(account="B2"))], NOW)
    [error] = moved.errors
    assert error.kind == "collision" and "('A1',)" in error.message
    assert [c.field for c in moved.conflicts] == ["name"]
    assert logic.records == 1


# -- persistence and determinism -----------------------------------------------------------


def test_encode_and_decode_round_trip_a_tracked_record_exactly() -> None:
    from engine.records import decode_record, encode_record

    logic = synced()
    ours = logic.ingest(L, [update(2, fin(2_000), row(), row(name="Left Co"))], NOW)
    logic.confirm(R, ours.writes[R], 11, [], NOW)
    out = logic.ingest(R, [update(11, crm(3_000), row(), row(name="Right Co", phone="0"))], NOW)
    rec = tracked(logic)
    rec.held[L] = ["A1", UNSEEN, None, 1.5]
    assert rec.multi and out.writes[L] and rec.pending(R)
    back = decode_record(encode_record(rec))
    assert isinstance(back, Tracked)
    assert back == rec
    assert back.seen == rec.seen and back.seen[L][1] is UNSEEN
    assert back.base == rec.base
    assert back.pending(L) == rec.pending(L) and back.pending(R) == rec.pending(R)
    assert encode_record(back) == encode_record(rec)


def test_a_partition_reads_the_records_a_batch_touches_from_its_store_in_one_load() -> None:
    from engine.records import encode_record

    logic = synced()
    stored = {key: encode_record(rec) for key, rec in logic.cache.items()}
    loads: list[list[Any]] = []

    def load(keys: list[Any]) -> dict[Any, bytes]:
        loads.append(keys)
        return {k: stored[k] for k in keys if k in stored}

    fresh = PartitionLogic(logic.map, load=load, live=True)
    fresh.restore(logic.meta())
    batch = [
        update(11, crm(2_000), row(), row(phone="9")),
        insert(12, crm(2_001), row(account="B2"), key=("B2",)),
    ]
    assert fresh.ingest(R, batch, NOW) == logic.ingest(R, batch, NOW)
    assert loads == [[("A1",), ("B2",)]]


def test_the_cache_keeps_changed_records_and_at_most_its_size_of_the_others() -> None:
    from engine.records import RecordCache, encode_record

    stored = {(f"K{i}",): encode_record(Tracked(1)) for i in range(10)}
    cache = RecordCache(3, lambda keys: {k: stored[k] for k in keys if k in stored})
    cache.fetch([(f"K{i}",) for i in range(6)])
    assert len(cache.clean) == 3
    cache.put(("K9",), Tracked(1))
    cache.put(("K8",), Tracked(1))
    assert set(cache.dirty) == {("K9",), ("K8",)}
    cache.checkpointed()
    assert len(cache) == 3 and not cache.dirty


def random_script(seed: int) -> list[tuple[str, Side, Any]]:
    """A seeded script of batches and write outcomes over a few records."""
    import random

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
            stamp = pack(wall, seq[side], ORIGINS.rank(("finance", "crm")[side]))
            old = rows.get(key)
            if old is None:
                new = [key[0], f"n{rng.randrange(3)}", rng.randrange(3), f"p{rng.randrange(3)}"]
                batch.append(Change(seq[side], "I", key, stamp, None, new))
            elif rng.random() < 0.1:
                new = None
                batch.append(Change(seq[side], "D", key, stamp, list(old), None))
            else:
                new = list(old)
                new[rng.randrange(1, 4)] = f"v{rng.randrange(4)}"
                batch.append(Change(seq[side], "U", key, stamp, list(old), list(new)))
            rows[key] = new
        steps.append(("ingest", side, batch))
        for target in Side:
            steps.append(("confirm", target, seq[target] + rng.randrange(2)))
    return steps


def test_same_batches_give_the_same_writes_and_records() -> None:
    from engine.records import encode_record

    def play(seed: int, quick: bool = True) -> tuple[list[Any], dict[Any, bytes]]:
        logic = PartitionLogic(compiled(), live=True)
        logic.quick = quick
        log: list[Any] = []
        last = NOTHING
        for kind, side, arg in random_script(seed):
            if kind == "ingest":
                last = logic.ingest(side, arg, NOW)
                log.append(last)
            else:
                failures = [(0, 1, "nope")] if arg % 5 == 0 and last.writes[side] else []
                log.append(logic.confirm(side, last.writes[side], arg, failures, NOW))
        return log, {k: encode_record(v) for k, v in sorted(logic.cache.items())}

    for seed in (1, 2, 3):
        first, second = play(seed), play(seed)
        assert first == second
        # the quick path for plain updates ends exactly where the general one does
        assert play(seed, quick=False) == first
        outcomes = [o for o in first[0] if isinstance(o, Outcome)]
        assert any(o.conflicts for o in outcomes)
        assert any(o.writes[L] for o in outcomes) and any(o.writes[R] for o in outcomes)
        assert len(first[1]) == 4


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(Side),
            st.lists(
                st.tuples(
                    st.sampled_from(["A1", "B2", "C3"]),
                    st.sampled_from([1, 2, 3]),
                    st.sampled_from(["x", "y", "z"]),
                ),
                min_size=1,
                max_size=4,
            ),
        ),
        max_size=25,
    )
)
def test_the_quick_path_for_plain_updates_matches_the_general_one(
    steps: list[tuple[Side, list[tuple[str, int, str]]]],
) -> None:
    from engine.records import encode_record

    logics = [PartitionLogic(compiled(), live=True) for _ in range(2)]
    logics[1].quick = False
    rows = [{k: row(account=k) for k in ("A1", "B2", "C3")} for _ in Side]
    seq = [0, 0]
    wall = 1_000
    for lg in logics:
        for side in Side:
            lg.ingest(side, [], NOW, 0)
    # every record created on the left and written to the right first
    first = [insert(i + 1, fin(999, i), rows[L][k], key=(k,)) for i, k in enumerate(rows[L])]
    seq[L] = len(first)
    for lg in logics:
        out = lg.ingest(L, first, NOW, seq[L])
        lg.confirm(R, out.writes[R], 0, [], NOW)
    for side, edits in steps:
        batch = []
        for key, field, value in edits:
            old = rows[side][key]
            new = list(old)
            new[field] = value
            if new == old:
                continue
            seq[side] += 1
            wall += 1
            stamp = pack(wall, 0, ORIGINS.rank(("finance", "crm")[side]))
            batch.append(Change(seq[side], "U", (key,), stamp, list(old), list(new)))
            rows[side][key] = new
        if not batch:
            continue
        outs = [lg.ingest(side, batch, NOW, seq[side]) for lg in logics]
        # the same writes (in another order: records the quick path gave back come last)
        assert [sorted(o.writes[s], key=repr) for s in Side for o in outs[:1]] == [
            sorted(o.writes[s], key=repr) for s in Side for o in outs[1:]
        ]
        assert outs[0].conflicts == outs[1].conflicts == []
        target = side.other
        # our writes land now, before anything the target does next
        results = [
            lg.confirm(target, o.writes[target], seq[target], [], NOW)
            for lg, o in zip(logics, outs, strict=True)
        ]
        assert results[0] == results[1]
        for w in outs[0].writes[target]:
            for i, v in w.values.items():
                rows[target][w.key[0]][i] = v
        states = [{k: encode_record(r) for k, r in lg.cache.items()} for lg in logics]
        assert states[0] == states[1]


@settings(max_examples=300)
@given(
    key=st.lists(
        st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=12)), min_size=1, max_size=3
    ),
    partitions=st.integers(1, 64),
)
def test_the_readers_partitioner_routes_every_key_as_partition_of(
    key: list[Any], partitions: int
) -> None:
    """The reader's per-batch router must agree with `partition_of` (state is stored by it)."""
    from engine.pipeline import partition_of, partitioner

    owner = partitioner(partitions)
    assert owner(key) == owner(tuple(key)) == partition_of(key, partitions)
    assert 0 <= owner(key) < partitions


def test_a_write_refused_on_a_duplicate_value_is_tried_again_with_backoff_then_logged() -> None:
    """A value moved between records of two partitions can reach the target's unique index
    in the other order: the refused record is written again, whole, a little later each
    time, and only logged (with its payload, saying how often it was tried) if it never
    lands; a retry that lands clears it, and the state survives a restart (meta)."""
    from engine.pipeline import RETRY_ATTEMPTS, RETRY_BASE_MS

    logic = PartitionLogic(compiled(), live=True)
    out = logic.ingest(L, [insert(1, fin(1_000), row())], NOW)
    dup = [(0, 1, "UNIQUE constraint failed: accounts.name", True)]
    assert logic.confirm(R, out.writes[R], 10, dup, NOW) == []
    assert held(logic, R) is UNSEEN
    assert logic.retries_due(R, NOW + RETRY_BASE_MS - 1) == []
    assert logic.retries_due(R, NOW + RETRY_BASE_MS) == [KEY]
    whole = Write("I", KEY, {0: "A1", 1: "Acme", 2: 500, 3: "555"})
    errors: list[Any] = []
    now = NOW
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        now += RETRY_BASE_MS * 2 ** (attempt - 1)
        assert logic.retries_due(R, now - 1) == []  # each wait twice as long as the last
        assert logic.retries_due(R, now) == [KEY]
        again = logic.retry(R, [KEY], now)
        assert again.writes[R] == [whole] and again.writes[L] == []
        errors = logic.confirm(R, again.writes[R], 10, dup, now)
        if attempt < RETRY_ATTEMPTS:
            assert errors == []
    [error] = errors
    assert error.kind == "write" and error.field == "name" and error.key == KEY
    assert error.message.endswith(f"(tried {RETRY_ATTEMPTS + 1} times)")
    assert error.payload["values"] == {"account": "A1", "name": "Acme", "credit_limit": 500,
                                       "phone": "555"}  # fmt: skip
    assert logic.retrying == [{}, {}] and logic.retries_due(R, now + 10**9) == []

    # refused once, then freed: the retry lands and nothing is logged
    out = logic.ingest(L, [update(2, fin(2_000), row(), row(phone="777"))], NOW)
    assert logic.confirm(R, out.writes[R], 10, dup, NOW) == []
    restored = PartitionLogic(compiled(), live=True, load=None)
    restored.restore(logic.meta())
    assert restored.retrying == logic.retrying == [{}, {KEY: 1}]
    assert restored.retries_due(R, 0) == [KEY]  # due at once after a restart
    again = logic.retry(R, logic.retries_due(R, NOW + RETRY_BASE_MS), NOW + RETRY_BASE_MS)
    assert logic.confirm(R, again.writes[R], 10, [], NOW + RETRY_BASE_MS) == []
    assert logic.retrying == [{}, {}]
    assert_converged(logic)


def test_a_write_refused_for_another_reason_is_not_tried_again() -> None:
    logic = PartitionLogic(compiled(), live=True)
    out = logic.ingest(L, [insert(1, fin(1_000), row())], NOW)
    [error] = logic.confirm(R, out.writes[R], 10, [(0, 2, "out of range", False)], NOW)
    assert error.message == "out of range"
    assert logic.retrying == [{}, {}] and logic.retries_due(R, NOW + 10**9) == []
