"""The merge laws of `conflict.record`, the concurrency cases, and the conflict policies.

Hypothesis simulates three origins ("crm", "finance", "hr"), each with a clock (a
`BoundedClock` fed with skewed commit times, or plain stamps from `pack`) and a knowledge
vector: per origin rank, the latest stamp it has seen. A step either has one origin edit the
record (its view is its knowledge, its stamp is later than everything it saw) or has one origin
learn what another knows (elementwise max). That gives causally consistent histories with a
known happens-before order: e1 -> e2 iff e2's author had seen e1 (its own earlier edits
included). Every delivery below is causal: an edit is applied after everything it saw.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conflict import (
    ABSENT,
    EXISTS,
    LWW,
    BoundedClock,
    Chooser,
    Conflict,
    Custom,
    Edit,
    Entry,
    Origins,
    Policy,
    Prefer,
    Record,
    Register,
    Timestamp,
    UnknownPolicy,
    latest,
    pack,
    register_resolver,
    resolve,
    resolver,
    stamp_after,
    unpack,
)

NAMES = ("crm", "finance", "hr")
ORIGINS = Origins(NAMES)
FIELDS = ("name", "phone", "city")
NAME, PHONE, CITY = range(len(FIELDS))
SLOTS = (EXISTS, *range(len(FIELDS)))
NOW = 1_700_000_000_000  # ms since the epoch
HOUR = 3_600_000
LAWS = settings(max_examples=200, deadline=None)


def new_record() -> Record:
    return Record(len(FIELDS), origins=len(NAMES))


def policy_chooser(policy: Policy) -> Chooser:
    """A record chooser that lets ``policy`` decide between concurrent entries, as the engine
    does."""

    def choose(slot: int, entries: Sequence[Entry]) -> Entry:
        registers = [Register(value, ORIGINS.timestamp(stamp)) for value, stamp in entries]
        winner, _ = resolve(FIELDS[slot], registers, policy)
        return entries[registers.index(winner)]

    return choose


def oldest(slot: int, entries: Sequence[Entry]) -> Entry:
    return entries[0]


CHOOSERS: dict[str, Chooser] = {
    "latest": latest,
    "oldest": oldest,
    "prefer crm": policy_chooser(Prefer("crm")),
}


def stamp_of(entry: Entry) -> int:
    return entry[1]


# -- the simulation ------------------------------------------------------------------------


class Made(NamedTuple):
    """One edit of a simulated history and what its author knew when it made it."""

    edit: Edit
    knew: tuple[int, ...]  # per origin rank, the latest stamp seen (its own earlier ones too)

    @property
    def ts(self) -> int:
        return self.edit.ts

    def assigned(self) -> dict[int, Any]:
        """The slots the edit assigns and their values, existence included."""
        if self.edit.delete:
            return {EXISTS: False}
        return {**dict(self.edit.assigns), EXISTS: True}


def saw(knew: Sequence[int], stamp: int) -> bool:
    rank = unpack(stamp)[2]
    return rank < len(knew) and stamp <= knew[rank]


def before(a: Made, b: Made) -> bool:
    """Happens-before: ``b``'s author had seen ``a``."""
    return saw(b.knew, a.ts)


VALUES = st.sampled_from(("a", "b", "c", None, 0))


@st.composite
def histories(draw: st.DrawFn, max_steps: int = 16) -> list[Made]:
    """Edits in the order they were made (one linear extension of happens-before)."""
    n = len(NAMES)
    raw = [draw(st.booleans()) for _ in range(n)]  # plain stamps from `pack`, or a clock
    clocks = [BoundedClock(rank, draw(st.sampled_from((0, 5, 1_000)))) for rank in range(n)]
    skews = [draw(st.sampled_from((-HOUR, -2_000, -3, 0, 4, 2_000, HOUR))) for _ in range(n)]
    knowledge = [[0] * n for _ in range(n)]
    made: list[Made] = []
    engine_ms = NOW
    for _ in range(draw(st.integers(1, max_steps))):
        o = draw(st.integers(0, n - 1))
        if made and draw(st.integers(0, 4)) < 2:
            p = draw(st.integers(0, n - 1))
            knowledge[o] = [max(a, b) for a, b in zip(knowledge[o], knowledge[p], strict=True)]
            continue
        engine_ms += draw(st.integers(0, 3))
        if raw[o]:
            own = pack(draw(st.integers(NOW - 3, engine_ms + 3)), draw(st.integers(0, 2)), o)
        else:
            earliest = engine_ms - draw(st.integers(0, 5))
            app_ms = engine_ms + skews[o] + draw(st.integers(-2, 2))
            own = clocks[o].stamp(app_ms, earliest, engine_ms)
        knew = tuple(knowledge[o])
        ts = stamp_after(own, max(knew))
        view = list(knew)
        if draw(st.integers(0, 3)) == 0:
            view[o] = 0  # its own earlier edits count as seen anyway
        while view and view[-1] == 0 and draw(st.booleans()):
            view.pop()  # a missing rank is the same as 0
        if draw(st.integers(0, 4)) == 0:
            edit = Edit(ts, tuple(view), (), True)
        else:
            slots = draw(st.lists(st.integers(0, len(FIELDS) - 1), unique=True))
            edit = Edit(ts, tuple(view), tuple((slot, draw(VALUES)) for slot in slots))
        knowledge[o][o] = ts
        made.append(Made(edit, knew))
    return made


def apply_all(edits: Iterable[Made], choose: Chooser = latest) -> Record:
    record = new_record()
    for m in edits:
        record.apply(m.edit, choose)
    return record


def causal_order(data: st.DataObject, edits: Sequence[Made]) -> list[Made]:
    """A random linear extension of happens-before over ``edits``."""
    left = list(edits)
    order = []
    while left:
        ready = [m for m in left if not any(before(other, m) for other in left)]
        pick = ready[data.draw(st.integers(0, len(ready) - 1))]
        order.append(pick)
        left.remove(pick)
    return order


def closure(history: Sequence[Made], chosen: Iterable[Made]) -> list[Made]:
    """``chosen`` and everything they saw, in history order: a causally closed set."""
    chosen = list(chosen)
    return [m for m in history if any(m == c or before(m, c) for c in chosen)]


def closed_part(data: st.DataObject, history: Sequence[Made]) -> list[Made]:
    return closure(history, data.draw(st.lists(st.sampled_from(history), max_size=4)))


def joined_in_tree(states: list[Record], picks: list[tuple[int, int]]) -> Record:
    """Join ``states`` pairwise in the tree shape ``picks`` describes (indexes modulo the
    number of states left), then whatever is left from left to right."""
    states = [s.copy() for s in states]
    for a, b in picks:
        if len(states) < 2:
            break
        i = a % len(states)
        target = states.pop(i)
        other = states.pop(b % len(states))
        target.join(other)
        states.insert(i % (len(states) + 1), target)
    result = new_record()
    for state in states:
        result.join(state)
    return result


def survivors(history: Sequence[Made], slot: int) -> list[Entry]:
    """The assignments of ``slot`` that no edit which saw them overwrote, oldest first."""
    assigning = [m for m in history if slot in m.assigned()]
    return sorted(
        (
            (m.assigned()[slot], m.ts)
            for m in assigning
            if not any(before(m, later) for later in assigning)
        ),
        key=stamp_of,
    )


# -- the simulation is causal --------------------------------------------------------------


@LAWS
@given(history=histories())
def test_the_simulated_histories_are_causal(history: list[Made]) -> None:
    stamps = [m.ts for m in history]
    assert len(set(stamps)) == len(stamps)
    for i, m in enumerate(history):
        rank = unpack(m.ts)[2]
        assert m.ts > max(m.knew)  # later than everything its author saw
        # the view is the knowledge, with the own rank or trailing zeros possibly left out
        view = m.edit.view + (0,) * (len(NAMES) - len(m.edit.view))
        for r, (v, k) in enumerate(zip(view, m.knew, strict=True)):
            assert v == k or (r == rank and v == 0)
        for j, earlier in enumerate(history):
            if unpack(earlier.ts)[2] == rank and j < i:
                assert before(earlier, m)  # an origin sees its own earlier edits
            if before(earlier, m):
                assert j < i  # the history order is a linear extension
                assert earlier.ts < m.ts
                for first in history:  # happens-before is transitive
                    if before(first, earlier):
                        assert before(first, m)


# -- the laws ------------------------------------------------------------------------------


@LAWS
@given(history=histories(), data=st.data(), chooser=st.sampled_from(sorted(CHOOSERS)))
def test_every_delivery_order_consistent_with_causality_gives_the_same_record(
    history: list[Made], data: st.DataObject, chooser: str
) -> None:
    choose = CHOOSERS[chooser]
    assert apply_all(causal_order(data, history), choose) == apply_all(history, choose)


@LAWS
@given(history=histories(), data=st.data())
def test_duplicated_deliveries_change_nothing(history: list[Made], data: st.DataObject) -> None:
    record = new_record()
    delivered: list[Made] = []
    for m in causal_order(data, history):
        record.apply(m.edit)
        delivered.append(m)
        for again in data.draw(st.lists(st.sampled_from(delivered), max_size=2)):
            before_again = record.copy()
            assert record.apply(again.edit) == ()
            assert record == before_again
    assert record == apply_all(history)


@LAWS
@given(history=histories(), data=st.data())
def test_causally_closed_parts_joined_in_any_tree_shape_equal_the_whole(
    history: list[Made], data: st.DataObject
) -> None:
    groups = data.draw(st.integers(1, 4))
    # every edit reaches at least one group, some reach several, each with its causal past
    homes = [data.draw(st.sets(st.integers(0, groups - 1), min_size=1)) for _ in history]
    parts = [
        closure(history, [m for m, home in zip(history, homes, strict=True) if g in home])
        for g in range(groups)
    ]
    states = [apply_all(causal_order(data, part)) for part in parts]
    picks = data.draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=6))
    assert joined_in_tree(states, picks) == apply_all(history)


@LAWS
@given(history=histories(), data=st.data(), chooser=st.sampled_from(sorted(CHOOSERS)))
def test_join_is_commutative_associative_idempotent_and_equals_applying_the_union(
    history: list[Made], data: st.DataObject, chooser: str
) -> None:
    choose = CHOOSERS[chooser]
    xs, ys, zs = (closed_part(data, history) for _ in range(3))
    x, y, z = (apply_all(part, choose) for part in (xs, ys, zs))

    xy, yx = x.copy(), y.copy()
    xy.join(y, choose)
    yx.join(x, choose)
    assert xy == yx
    assert xy == apply_all(closure(history, xs + ys), choose)

    left = xy.copy()
    left.join(z, choose)
    yz = y.copy()
    yz.join(z, choose)
    right = x.copy()
    right.join(yz, choose)
    assert left == right

    again = x.copy()
    again.join(x.copy(), choose)
    assert again == x
    empty = x.copy()
    empty.join(new_record(), choose)
    assert empty == x


@LAWS
@given(history=histories(), data=st.data())
def test_every_surviving_entry_is_maximal_and_every_maximal_assignment_survives(
    history: list[Made], data: st.DataObject
) -> None:
    record = apply_all(causal_order(data, history))
    for slot in SLOTS:
        expected = survivors(history, slot)
        assert record.entries(slot) == expected
        if expected:
            assert (record.values[slot], record.stamps[slot]) == expected[-1]
        else:
            assert (record.values[slot], record.stamps[slot]) == (ABSENT, 0)
        assert (slot in (record.multi or {})) == (len(expected) > 1)
    for rank in range(len(NAMES)):
        assert record.vv[rank] == max((m.ts for m in history if m.ts & 15 == rank), default=0)


@LAWS
@given(history=histories(), chooser=st.sampled_from(sorted(CHOOSERS)))
def test_existence_follows_later_wins_among_the_surviving_existence_entries(
    history: list[Made], chooser: str
) -> None:
    record = apply_all(history, CHOOSERS[chooser])
    entries = survivors(history, EXISTS)
    assert record.known
    assert record.values[EXISTS] is max(entries, key=stamp_of)[0]
    assert record.exists == max(entries, key=stamp_of)[0]


@LAWS
@given(history=histories())
def test_apply_returns_the_slots_it_assigned_that_are_left_concurrent(
    history: list[Made],
) -> None:
    record = new_record()
    for m in history:
        concurrent = record.apply(m.edit)
        expected = {slot for slot in m.assigned() if len(record.entries(slot)) > 1}
        assert sorted(concurrent) == sorted(expected)
        assert len(concurrent) == len(set(concurrent))


# -- the concurrency cases -----------------------------------------------------------------


def at(wall: int, origin: str, counter: int = 0) -> int:
    return pack(wall, counter, ORIGINS.rank(origin))


def view(*seen: int) -> tuple[int, ...]:
    """The view of an author that had seen the edits stamped ``seen``."""
    latest_seen = [0] * len(NAMES)
    for stamp in seen:
        rank = stamp & 15
        latest_seen[rank] = max(latest_seen[rank], stamp)
    return tuple(latest_seen)


def upsert(ts: int, seen: Sequence[int] = (), **fields: Any) -> Edit:
    return Edit(ts, view(*seen), tuple((FIELDS.index(f), v) for f, v in fields.items()))


def delete(ts: int, seen: Sequence[int] = ()) -> Edit:
    return Edit(ts, view(*seen), (), True)


def applied(*edits: Edit, choose: Chooser = latest) -> Record:
    record = new_record()
    for edit in edits:
        record.apply(edit, choose)
    return record


def causal_orders(*edits: Edit) -> list[tuple[Edit, ...]]:
    """Every delivery order of ``edits`` in which each comes after what its author saw."""

    def saw_it(a: Edit, b: Edit) -> bool:
        rank = a.ts & 15
        own = rank == b.ts & 15 and a.ts < b.ts
        return own or (rank < len(b.view) and a.ts <= b.view[rank])

    return [
        order
        for order in itertools.permutations(edits)
        if all(not saw_it(b, a) for i, a in enumerate(order) for b in order[i + 1 :])
    ]


def converged(*edits: Edit, choose: Chooser = latest) -> Record:
    """The record every causal delivery order of ``edits`` gives (it checks they agree)."""
    orders = causal_orders(*edits)
    states = [applied(*order, choose=choose) for order in orders]
    assert len(orders) >= 1
    assert all(state == states[0] for state in states)
    return states[0]


def values(record: Record, slot: int) -> list[Any]:
    return [value for value, _ in record.entries(slot)]


def test_edit_made_after_seeing_a_value_overwrites_it_whatever_the_clocks() -> None:
    crm = upsert(at(NOW, "crm"), name="Acme")
    # finance's clock runs an hour behind: its stamp is lower, but it saw crm's value
    behind = upsert(at(NOW - HOUR, "finance"), [crm.ts], name="Acme Ltd")
    assert behind.ts < crm.ts
    for choose in CHOOSERS.values():  # whatever the policy, too: nothing is concurrent
        record = applied(crm, behind, choose=choose)
        assert record.entries(NAME) == [("Acme Ltd", behind.ts)]
        assert record.multi is None
    # the engine stamps such an edit past what it saw (the HLC receive rule)
    assert stamp_after(behind.ts, crm.ts) > crm.ts


def test_concurrent_edits_of_the_same_field_keep_both_until_one_that_saw_both() -> None:
    base = upsert(at(NOW, "crm"), name="Acme")
    by_crm = upsert(at(NOW + 1_000, "crm"), [base.ts], name="Acme Inc")
    by_finance = upsert(at(NOW + 2_000, "finance"), [base.ts], name="Acme Ltd")
    record = converged(base, by_crm, by_finance)
    assert record.entries(NAME) == [("Acme Inc", by_crm.ts), ("Acme Ltd", by_finance.ts)]
    assert record.values[NAME] == "Acme Ltd"  # the later, by default
    assert applied(base, by_crm).apply(by_finance) == [NAME, EXISTS]

    settle = upsert(at(NOW + 3_000, "hr"), [by_crm.ts, by_finance.ts], name="ACME")
    record = converged(base, by_crm, by_finance, settle)
    assert record.entries(NAME) == [("ACME", settle.ts)]
    assert record.entries(EXISTS) == [(True, settle.ts)]
    assert record.multi is None


def test_an_edit_that_saw_one_of_two_concurrent_values_stays_concurrent_with_the_other() -> None:
    base = upsert(at(NOW, "crm"), name="Acme")
    by_crm = upsert(at(NOW + 1_000, "crm"), [base.ts], name="Acme Inc")
    by_finance = upsert(at(NOW + 2_000, "finance"), [base.ts], name="Acme Ltd")
    on_crm = upsert(at(NOW + 3_000, "crm"), [by_crm.ts], name="Acme Incorporated")
    record = converged(base, by_crm, by_finance, on_crm)
    assert values(record, NAME) == ["Acme Ltd", "Acme Incorporated"]


def test_concurrent_edits_of_different_fields_both_survive() -> None:
    base = upsert(at(NOW, "crm"), name="Acme", phone="555")
    name = upsert(at(NOW + 1_000, "finance"), [base.ts], name="Acme Ltd")
    phone = upsert(at(NOW + 1_000, "crm"), [base.ts], phone="999")
    record = converged(base, name, phone)
    assert record.entries(NAME) == [("Acme Ltd", name.ts)]
    assert record.entries(PHONE) == [("999", phone.ts)]
    assert record.entries(CITY) == []
    assert set(record.multi or {}) == {EXISTS}  # both said "it exists": no field conflict
    assert record.exists


@pytest.mark.parametrize(("delete_at", "exists"), [(NOW + 2_000, True), (NOW + 4_000, False)])
def test_delete_against_a_concurrent_update_the_later_wins(delete_at: int, exists: bool) -> None:
    create = upsert(at(NOW, "crm"), name="Acme")
    update = upsert(at(NOW + 3_000, "finance"), [create.ts], name="Acme Ltd")
    gone = delete(at(delete_at, "crm"), [create.ts])
    for choose in CHOOSERS.values():  # existence ignores the field policy
        record = converged(create, update, gone, choose=choose)
        assert record.exists is exists
        assert record.entries(EXISTS) == sorted([(True, update.ts), (False, gone.ts)], key=stamp_of)
        assert record.entries(NAME) == [("Acme Ltd", update.ts)]  # a delete assigns no field


def test_insert_after_seeing_a_delete_creates_the_record_again() -> None:
    create = upsert(at(NOW, "crm"), name="Acme")
    gone = delete(at(NOW + 1_000, "finance"), [create.ts])
    # crm's clock is behind, but it saw the delete: it overwrites it
    again = upsert(at(NOW + 500, "crm"), [gone.ts], name="Acme Again")
    record = converged(create, gone, again)
    assert record.exists
    assert record.entries(EXISTS) == [(True, again.ts)]
    assert record.entries(NAME) == [("Acme Again", again.ts)]
    # and after its own delete, an origin's insert needs no view at all
    own_again = upsert(at(NOW + 2_000, "finance"), name="Acme Back")
    record = converged(create, gone, own_again)
    assert record.entries(EXISTS) == [(True, own_again.ts)]


@pytest.mark.parametrize(("x_delete_at", "exists"), [(NOW + 1_000, True), (NOW + 4_000, False)])
def test_a_delete_then_a_same_value_reinsert_by_another_origin_is_concurrent_with_the_first_delete(
    x_delete_at: int, exists: bool
) -> None:
    create = upsert(at(NOW, "crm"), name="Acme")
    x_delete = delete(at(x_delete_at, "finance"), [create.ts])
    # hr has not seen finance's delete: it deletes, then inserts the same values again
    y_delete = delete(at(NOW + 2_000, "hr"), [create.ts])
    y_insert = upsert(at(NOW + 3_000, "hr"), [create.ts, y_delete.ts], name="Acme")
    record = converged(create, x_delete, y_delete, y_insert)
    assert record.entries(EXISTS) == sorted(
        [(False, x_delete.ts), (True, y_insert.ts)], key=stamp_of
    )
    assert record.exists is exists
    assert record.entries(NAME) == [("Acme", y_insert.ts)]


def test_a_record_never_written_does_not_exist_and_is_not_known() -> None:
    assert not new_record().exists
    assert not new_record().known
    deleted = applied(delete(at(NOW, "crm")))
    assert deleted.known
    assert not deleted.exists


def test_a_delete_assigns_existence_and_nothing_else() -> None:
    create = upsert(at(NOW, "crm"), name="Acme")
    gone = Edit(at(NOW + 1, "crm"), view(create.ts), ((NAME, "ignored"),), True)
    record = applied(create, gone)
    assert record.entries(NAME) == [("Acme", create.ts)]
    assert record.entries(EXISTS) == [(False, gone.ts)]


def test_an_origins_later_edit_overwrites_its_earlier_ones_even_left_out_of_its_view() -> None:
    first = upsert(at(NOW, "crm"), name="Acme")
    other = upsert(at(NOW + 1, "finance"), name="Acme Ltd")
    second = upsert(at(NOW + 2, "crm"), name="Acme Inc")  # an empty view
    record = converged(first, other, second)
    assert values(record, NAME) == ["Acme Ltd", "Acme Inc"]


def test_a_short_view_has_seen_nothing_of_the_origins_it_leaves_out() -> None:
    hr = upsert(at(NOW, "hr"), name="Acme")
    crm = upsert(at(NOW, "crm"), name="ACME")
    finance = Edit(at(NOW + 1, "finance"), (crm.ts,), ((NAME, "Acme Ltd"),))
    record = converged(hr, crm, finance)
    assert values(record, NAME) == ["Acme", "Acme Ltd"]


def test_reapplying_an_applied_edit_changes_nothing_and_reports_nothing() -> None:
    a = upsert(at(NOW, "crm"), name="Acme")
    b = upsert(at(NOW, "finance"), name="Acme Ltd")
    record = applied(a, b)
    before_again = record.copy()
    assert record.apply(b) == ()
    assert record.apply(a) == ()
    assert record == before_again


def test_an_edit_older_than_one_merged_from_its_origin_is_taken_as_merged() -> None:
    # (what `apply` relies on causal delivery for; `add_concurrent` is for the rest)
    record = applied(upsert(at(NOW + 5, "crm"), name="new"))
    record.apply(upsert(at(NOW, "crm"), name="old"))
    assert values(record, NAME) == ["new"]


def test_replicas_exchanging_states_converge() -> None:
    base = upsert(at(NOW, "crm"), name="Acme")
    crm, finance = applied(base), applied(base)
    crm.apply(upsert(at(NOW + 2_000, "crm"), [base.ts], name="Acme Inc"))
    mine = upsert(at(NOW + 2_000, "finance"), [base.ts], name="Acme Ltd")
    finance.apply(mine)
    finance.apply(delete(at(NOW + 2_500, "finance"), [base.ts, mine.ts]))
    crm_view, finance_view = crm.copy(), finance.copy()
    crm_view.join(finance)
    finance_view.join(crm)
    assert crm_view == finance_view
    assert not crm_view.exists  # the delete is the latest event
    assert values(crm_view, NAME) == ["Acme Inc", "Acme Ltd"]


def test_records_of_different_shapes_do_not_join() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        new_record().join(Record(len(FIELDS) + 1, origins=len(NAMES)))
    with pytest.raises(ValueError, match="different shapes"):
        new_record().join(Record(len(FIELDS), origins=2))


def test_a_copy_shares_no_entries_with_its_original() -> None:
    base = upsert(at(NOW, "crm"), name="Acme")
    record = applied(base, upsert(at(NOW, "finance"), name="Acme Ltd"))
    original = record.copy()
    record.apply(upsert(at(NOW, "hr"), name="ACME"))
    assert values(original, NAME) == ["Acme", "Acme Ltd"]
    assert record != original


def test_resolve_picks_the_winner_again_but_existence_stays_later_wins() -> None:
    record = applied(
        upsert(at(NOW, "crm"), name="Acme"),
        delete(at(NOW + 1, "finance")),
        upsert(at(NOW + 2, "hr"), name="ACME"),
    )
    assert record.values[NAME] == "ACME"
    record.resolve(NAME, oldest)
    assert (record.values[NAME], record.stamps[NAME]) == ("Acme", at(NOW, "crm"))
    record.resolve(EXISTS, oldest)
    assert record.exists
    record.resolve(PHONE, oldest)  # no concurrent entries: nothing to pick
    assert record.entries(PHONE) == []


def test_equal_concurrent_values_are_not_a_conflict() -> None:
    crm = upsert(at(NOW, "crm"), name="Acme")
    finance = upsert(at(NOW + 1, "finance"), name="Acme")
    record = converged(crm, finance)
    assert record.entries(NAME) == [("Acme", crm.ts), ("Acme", finance.ts)]  # still concurrent
    registers = [Register(v, ORIGINS.timestamp(s)) for v, s in record.entries(NAME)]
    winner, conflict = resolve("name", registers, LWW)
    assert conflict is None
    assert winner == registers[-1]  # the latest carries the value


# -- add_concurrent ------------------------------------------------------------------------


def test_add_concurrent_loses_to_a_later_entry_of_its_own_origin() -> None:
    record = applied(upsert(at(NOW + 10, "crm"), name="newer"))
    before_add = record.copy()
    assert record.add_concurrent(NAME, "older", at(NOW, "crm")) is False
    assert record == before_add


def test_add_concurrent_overwrites_an_earlier_entry_of_its_own_origin() -> None:
    record = applied(upsert(at(NOW, "crm"), name="older"))
    assert record.add_concurrent(NAME, "newer", at(NOW + 10, "crm")) is False
    assert record.entries(NAME) == [("newer", at(NOW + 10, "crm"))]


def test_add_concurrent_overwrites_what_its_view_covers_and_is_concurrent_with_the_rest() -> None:
    crm = upsert(at(NOW, "crm"), name="Acme")
    finance = upsert(at(NOW + 1, "finance"), name="Acme Ltd")
    record = applied(crm, finance)
    stamp = at(NOW + 2, "hr")
    assert record.add_concurrent(NAME, "ACME", stamp, latest, view(crm.ts)) is True
    assert record.entries(NAME) == [("Acme Ltd", finance.ts), ("ACME", stamp)]
    assert (record.values[NAME], record.stamps[NAME]) == ("ACME", stamp)


def test_add_concurrent_covering_every_entry_leaves_one_and_no_conflict() -> None:
    crm = upsert(at(NOW, "crm"), name="Acme")
    finance = upsert(at(NOW + 1, "finance"), name="Acme Ltd")
    record = applied(crm, finance)
    stamp = at(NOW + 2, "hr")
    assert record.add_concurrent(NAME, "ACME", stamp, latest, view(crm.ts, finance.ts)) is False
    assert record.entries(NAME) == [("ACME", stamp)]
    assert set(record.multi or {}) == {EXISTS}


def test_add_concurrent_not_own_keeps_the_entries_of_its_origin() -> None:
    # a record merged into another: the same origin's entries there are not its history
    record = applied(upsert(at(NOW, "crm"), name="here"))
    assert record.add_concurrent(NAME, "moved", at(NOW + 10, "crm"), own=False) is True
    assert values(record, NAME) == ["here", "moved"]
    assert record.add_concurrent(NAME, "older", at(NOW - 10, "crm"), own=False) is True
    assert values(record, NAME) == ["older", "here", "moved"]


def test_add_concurrent_leaves_the_context_to_the_caller() -> None:
    record = applied(upsert(at(NOW, "crm"), name="Acme"))
    vv = list(record.vv)
    record.add_concurrent(NAME, "Acme Ltd", at(NOW + 1, "finance"))
    assert record.vv == vv


def test_add_concurrent_on_existence_the_later_wins_whatever_the_chooser() -> None:
    record = applied(upsert(at(NOW, "crm"), name="Acme"))
    gone = at(NOW + 1, "finance")
    assert record.add_concurrent(EXISTS, False, gone, oldest) is True
    assert record.entries(EXISTS) == [(True, at(NOW, "crm")), (False, gone)]
    assert not record.exists


# Regression: add_concurrent(own=False) of an entry the slot held added it a second time.
def test_add_concurrent_of_an_entry_the_slot_already_holds_changes_nothing() -> None:
    record = applied(upsert(at(NOW, "crm"), name="here"))
    stamp = at(NOW, "finance")
    record.add_concurrent(NAME, "moved", stamp, own=False)
    once = record.copy()
    record.add_concurrent(NAME, "moved", stamp, own=False)
    assert record.entries(NAME) == [("here", at(NOW, "crm")), ("moved", stamp)]
    assert record == once


# Regression: join matched entries by (value, stamp): a NaN (unequal to itself) both sides
# held, as distinct objects, was taken as overwritten on both and dropped.
def test_join_keeps_a_concurrent_nan_both_replicas_hold() -> None:
    def replica() -> Record:
        return applied(
            upsert(at(NOW, "crm"), name=float("nan")),  # a new float object each time
            upsert(at(NOW, "finance"), name="Acme"),
        )

    mine = replica()
    mine.join(replica())
    assert [stamp for _, stamp in mine.entries(NAME)] == [at(NOW, "crm"), at(NOW, "finance")]


# -- policies ------------------------------------------------------------------------------


def reg(value: object, wall: int, origin: str, counter: int = 0) -> Register:
    return Register(value, Timestamp(wall, counter, origin))


def concurrent(*registers: Register) -> list[Register]:
    """Candidates as a record hands them to a policy: oldest first."""
    return sorted(registers, key=lambda r: r.ts)


def test_a_register_names_its_origin() -> None:
    assert reg("Acme", 1_000, "hr").origin == "hr"


def test_single_value_is_not_a_conflict() -> None:
    only = reg("Acme", 1_000, "crm")
    assert resolve("name", concurrent(only), LWW) == (only, None)


def test_lww_picks_the_later_timestamp() -> None:
    old, new = reg("Acme Inc", 2_000, "finance"), reg("Acme Ltd", 3_000, "crm")
    winner, conflict = resolve("name", concurrent(new, old), LWW)
    assert winner == new
    assert conflict == Conflict("name", (old, new), new, "lww")


def test_lww_breaks_a_timestamp_tie_on_the_origin() -> None:
    crm, finance = reg("Acme Inc", 2_000, "crm"), reg("Acme Ltd", 2_000, "finance")
    assert resolve("name", concurrent(finance, crm), LWW)[0] == finance  # "finance" > "crm"


def test_lww_orders_on_the_counter_before_the_origin() -> None:
    crm = reg("Acme Inc", 2_000, "crm", counter=1)
    finance = reg("Acme Ltd", 2_000, "finance", counter=0)
    assert resolve("name", concurrent(finance, crm), LWW)[0] == crm


def test_prefer_picks_the_preferred_apps_value_even_when_older() -> None:
    crm = reg("Acme Inc", 1_000, "crm")
    crm_newer = reg("Acme Incorporated", 2_000, "crm")
    finance = reg("Acme Ltd", 3_000, "finance")
    winner, conflict = resolve("name", concurrent(finance, crm, crm_newer), Prefer("crm"))
    assert winner == crm_newer
    assert conflict is not None
    assert conflict.rule == "prefer:crm"
    assert conflict.candidates == (crm, crm_newer, finance)


def test_prefer_falls_back_to_lww_without_a_value_of_that_app() -> None:
    finance, hr = reg("Acme Ltd", 3_000, "finance"), reg("ACME", 2_000, "hr")
    winner, conflict = resolve("name", concurrent(finance, hr), Prefer("crm"))
    assert winner == finance
    assert conflict is not None and conflict.winner == finance


def test_equal_concurrent_values_are_not_a_conflict_via_resolve() -> None:
    a, b = reg("Acme", 1_000, "crm"), reg("Acme", 2_000, "finance")
    for policy in (LWW, Prefer("crm")):
        winner, conflict = resolve("name", concurrent(b, a), policy)
        assert conflict is None
        assert winner == b  # the latest carries the value


def test_policies_compare_by_rule() -> None:
    assert Prefer("crm") == Prefer("crm") != Prefer("hr")
    assert hash(Prefer("crm")) == hash(Prefer("crm"))
    assert LWW == type(LWW)()
    assert LWW != Prefer("crm")


@register_resolver("test_merge_laws.shortest")
def _shortest(field: str, candidates: Sequence[Register]) -> Register:
    return min(candidates, key=lambda r: (len(str(r.value)), r.ts))


def _first(field: str, candidates: Sequence[Register]) -> Register:
    return candidates[0]


def test_custom_resolver_is_registered_by_name_and_decides() -> None:
    assert resolver("test_merge_laws.shortest") is _shortest
    long, short = reg("Acme Limited", 3_000, "finance"), reg("Acme", 1_000, "crm")
    winner, conflict = resolve("name", concurrent(long, short), Custom("test_merge_laws.shortest"))
    assert winner == short
    assert conflict is not None
    assert conflict.rule == "custom:test_merge_laws.shortest"


def test_custom_resolver_can_be_given_directly() -> None:
    a, b = reg("x", 1_000, "crm"), reg("y", 2_000, "finance")
    assert resolve("name", concurrent(a, b), Custom("first", _first))[0] == a


def test_registering_the_same_resolver_twice_is_harmless_but_a_different_one_is_refused() -> None:
    register_resolver("test_merge_laws.shortest", _shortest)
    with pytest.raises(ValueError, match="already registered"):
        register_resolver("test_merge_laws.shortest", _first)
    assert resolver("test_merge_laws.shortest") is _shortest


def test_unknown_resolver_name_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UnknownPolicy, match=r"test_merge_laws\.nope.*test_merge_laws\.shortest"):
        resolver("test_merge_laws.nope")
    with pytest.raises(UnknownPolicy, match="cannot import"):
        resolver("no_such_module_anywhere:fn")
    with pytest.raises(UnknownPolicy, match="not callable"):
        resolver("math:pi")


def test_unknown_custom_policy_is_refused_when_first_used() -> None:
    policy = Custom("test_merge_laws.not_registered")
    with pytest.raises(UnknownPolicy, match=r"test_merge_laws\.not_registered"):
        resolve("name", concurrent(reg("x", 1, "crm"), reg("y", 2, "hr")), policy)


def test_resolver_can_be_named_by_module_and_function() -> None:
    import os.path

    assert resolver("os.path:join") is os.path.join


def test_custom_resolver_returning_a_non_candidate_raises() -> None:
    def invent(field: str, candidates: Sequence[Register]) -> Register:
        return reg("made up", 9_000, "hr")

    a, b = reg("x", 1_000, "crm"), reg("y", 2_000, "finance")
    with pytest.raises(ValueError, match="not one of its candidates"):
        resolve("name", concurrent(a, b), Custom("invent", invent))


POLICIES: dict[str, Policy] = {
    "lww": LWW,
    "prefer crm": Prefer("crm"),
    "shortest": Custom("test_merge_laws.shortest"),
}

# One concurrent edit per origin at most: an origin's later edit overwrites its earlier one.
concurrent_edits = st.lists(
    st.tuples(
        st.sampled_from(NAMES),
        st.integers(0, 5),
        st.integers(0, 2),
        st.sampled_from(("a", "bb", "c")),
    ),
    min_size=1,
    max_size=len(NAMES),
    unique_by=lambda e: e[0],
)


@LAWS
@given(edits=concurrent_edits, policy=st.sampled_from(sorted(POLICIES)))
def test_a_policy_picks_the_same_winner_whatever_order_concurrent_edits_arrive_in(
    edits: list[tuple[str, int, int, str]], policy: str
) -> None:
    choose = policy_chooser(POLICIES[policy])
    made = [upsert(at(NOW + wall, origin, counter), name=v) for origin, wall, counter, v in edits]
    registers = concurrent(
        *(reg(v, NOW + wall, origin, counter) for origin, wall, counter, v in edits)
    )
    winner, _ = resolve("name", registers, POLICIES[policy])
    for order in itertools.permutations(made):
        record = applied(*order, choose=choose)
        assert ORIGINS.timestamp(record.stamps[NAME]) == winner.ts
        assert record.values[NAME] == winner.value
        assert values(record, NAME) == [r.value for r in registers]
