"""The CRDT laws of `conflict.record`, the concurrency cases, and the conflict policies.

The merge must be a join: replicas that saw the same edits hold equal states whatever the
order, duplication or grouping of delivery. Hypothesis generates histories of edits by several
origins; each assignment names (``supersedes``) some of the assignments made before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conflict import (
    LWW,
    Assign,
    Conflict,
    Custom,
    Edit,
    FieldState,
    Prefer,
    RecordState,
    Register,
    Timestamp,
    UnknownPolicy,
    register_resolver,
    resolve,
    resolver,
)

ORIGINS = ("crm", "finance", "hr")
FIELDS = ("name", "phone", "city")

# -- generators ----------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn, max_edits: int = 8) -> list[Edit]:
    """Edits in the order they were made. Dots are ``(origin, n)`` with n counting per field
    and origin; an assignment supersedes any subset of the earlier assignments of its field."""
    counters: dict[tuple[str, str], int] = {}
    earlier: dict[str, list[tuple[str, int]]] = {f: [] for f in FIELDS}
    edits = []
    for _ in range(draw(st.integers(1, max_edits))):
        origin = draw(st.sampled_from(ORIGINS))
        ts = Timestamp(draw(st.integers(0, 20)), draw(st.integers(0, 2)), origin)
        if draw(st.integers(0, 4)) == 0:
            edits.append(Edit(ts, True))
            continue
        assigns = []
        for field in draw(st.lists(st.sampled_from(FIELDS), min_size=1, unique=True)):
            n = counters[field, origin] = counters.get((field, origin), 0) + 1
            supersedes = (
                draw(st.lists(st.sampled_from(earlier[field]), unique=True))
                if earlier[field]
                else []
            )
            value = draw(st.sampled_from(("a", "b", "c", None, 1)))
            assigns.append(Assign(field, Register(value, ts, (origin, n)), tuple(supersedes)))
        for assign in assigns:
            earlier[assign.field].append(assign.register.dot)
        edits.append(Edit(ts, False, tuple(assigns)))
    return edits


def applied(edits: Sequence[Edit]) -> RecordState:
    state = RecordState()
    for edit in edits:
        state.apply(edit)
    return state


def joined_in_tree(states: list[RecordState], picks: list[tuple[int, int]]) -> RecordState:
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
    result = RecordState()
    for state in states:
        result.join(state)
    return result


def ts(wall: int, origin: str, counter: int = 0) -> Timestamp:
    return Timestamp(wall, counter, origin)


def upsert(
    when: Timestamp, field: str, value: object, n: int, supersedes: Sequence[tuple[str, int]] = ()
) -> Edit:
    return Edit(
        when, False, (Assign(field, Register(value, when, (when.origin, n)), tuple(supersedes)),)
    )


# -- the laws ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(edits=histories(), data=st.data())
def test_applying_edits_in_any_order_gives_the_same_state(
    edits: list[Edit], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(edits))
    assert applied(shuffled) == applied(edits)


@settings(max_examples=200)
@given(edits=histories(), data=st.data())
def test_duplicated_deliveries_give_the_same_state(edits: list[Edit], data: st.DataObject) -> None:
    extra = data.draw(st.lists(st.sampled_from(edits), max_size=len(edits) * 2))
    delivered = data.draw(st.permutations(edits + extra))
    assert applied(delivered) == applied(edits)


@settings(max_examples=200)
@given(edits=histories(), data=st.data())
def test_grouped_deliveries_joined_in_any_tree_shape_give_the_same_state(
    edits: list[Edit], data: st.DataObject
) -> None:
    groups = data.draw(st.integers(1, 4))
    # every edit reaches at least one group, some reach several
    homes = data.draw(
        st.lists(
            st.sets(st.integers(0, groups - 1), min_size=1),
            min_size=len(edits),
            max_size=len(edits),
        )
    )
    parts: list[list[Edit]] = [[] for _ in range(groups)]
    for edit, home in zip(edits, homes, strict=True):
        for g in home:
            parts[g].append(edit)
    states = [applied(data.draw(st.permutations(part))) for part in parts]
    picks = data.draw(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), max_size=6))
    assert joined_in_tree(states, picks) == applied(edits)


@settings(max_examples=200)
@given(edits=histories(), data=st.data())
def test_join_is_commutative_associative_and_idempotent(
    edits: list[Edit], data: st.DataObject
) -> None:
    # Three overlapping parts of one history (parts of different histories could reuse dots).
    cut = sorted(data.draw(st.lists(st.integers(0, len(edits)), min_size=2, max_size=2)))
    x = applied(edits[: cut[1]])
    y = applied(edits[cut[0] :])
    z = applied(data.draw(st.lists(st.sampled_from(edits))))

    xy, yx = x.copy(), y.copy()
    xy.join(y)
    yx.join(x)
    assert xy == yx

    left = x.copy()
    left.join(y)
    left.join(z)
    yz = y.copy()
    yz.join(z)
    right = x.copy()
    right.join(yz)
    assert left == right

    again = x.copy()
    again.join(x)
    assert again == x


@settings(max_examples=200)
@given(edits=histories(), data=st.data())
def test_reapplying_a_seen_edit_changes_nothing(edits: list[Edit], data: st.DataObject) -> None:
    state = applied(edits)
    before = state.copy()
    state.apply(data.draw(st.sampled_from(edits)))
    assert state == before
    state.join(before)
    assert state == before


@settings(max_examples=200)
@given(edits=histories(), data=st.data())
def test_apply_equals_join_of_the_edit_as_a_state(edits: list[Edit], data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(edits) - 1))
    base = applied(edits[:cut])
    edit = edits[cut]
    by_apply, by_join = base.copy(), base.copy()
    by_apply.apply(edit)
    by_join.join(edit.as_state())
    assert by_apply == by_join


@settings(max_examples=200)
@given(edits=histories())
def test_field_assign_equals_join_of_the_one_entry_delta(edits: list[Edit]) -> None:
    # The last assignment of the history is the delta; the rest builds the field.
    *rest, last = edits
    if last.delete:
        return
    field, register, supersedes = last.assigns[0]
    base = applied(rest).fields.get(field, FieldState())
    # The delta built by hand, not through `assign`: one entry, context = supersedes + dot.
    delta = FieldState({register.dot: register}, cloud=[*supersedes, register.dot])
    by_assign, by_join = base.copy(), base.copy()
    by_assign.assign(register, supersedes)
    by_join.join(delta)
    assert by_assign == by_join


@settings(max_examples=200)
@given(edits=histories())
def test_every_surviving_value_is_one_nobody_overwrote(edits: list[Edit]) -> None:
    state = applied(edits)
    overwritten = {(a.field, dot) for e in edits for a in e.assigns for dot in a.supersedes}
    assigned = {(a.field, a.register.dot): a.register for e in edits for a in e.assigns}
    for field, fs in state.fields.items():
        expected = {
            dot: reg
            for (f, dot), reg in assigned.items()
            if f == field and (f, dot) not in overwritten
        }
        assert fs.entries == expected
    alive = [e.ts for e in edits if not e.delete]
    dead = [e.ts for e in edits if e.delete]
    assert state.alive == (max(alive) if alive else None)
    assert state.dead == (max(dead) if dead else None)


# -- the concurrency cases -----------------------------------------------------------------


def test_causally_newer_edit_overwrites_what_it_saw() -> None:
    first = upsert(ts(1_000, "crm"), "name", "Acme", 1)
    # finance saw crm's value (its dot) and overwrote it, even with a slower wall clock
    second = upsert(ts(900, "finance").after(ts(1_000, "crm")), "name", "Acme Ltd", 1, [("crm", 1)])
    for order in ([first, second], [second, first]):
        fs = applied(order).fields["name"]
        assert [r.value for r in fs.registers()] == ["Acme Ltd"]
        winner, conflict = resolve("name", fs, LWW)
        assert winner.value == "Acme Ltd"
        assert conflict is None


def test_concurrent_updates_of_same_field_keep_both_values_readable() -> None:
    base = upsert(ts(1_000, "crm"), "name", "Acme", 1)
    by_crm = upsert(ts(2_000, "crm"), "name", "Acme Inc", 2, [("crm", 1)])
    by_finance = upsert(ts(3_000, "finance"), "name", "Acme Ltd", 1, [("crm", 1)])
    a = applied([base, by_crm, by_finance])
    b = applied([base, by_finance, by_crm])
    assert a == b
    fs = a.fields["name"]
    assert [r.value for r in fs.registers()] == ["Acme Inc", "Acme Ltd"]
    winner, conflict = resolve("name", fs, LWW)
    assert winner.value == "Acme Ltd"
    assert conflict is not None
    assert [r.value for r in conflict.candidates] == ["Acme Inc", "Acme Ltd"]


def test_later_edit_that_saw_both_concurrent_values_resolves_the_conflict() -> None:
    base = upsert(ts(1_000, "crm"), "name", "Acme", 1)
    by_crm = upsert(ts(2_000, "crm"), "name", "Acme Inc", 2, [("crm", 1)])
    by_finance = upsert(ts(3_000, "finance"), "name", "Acme Ltd", 1, [("crm", 1)])
    settle = upsert(ts(4_000, "hr"), "name", "ACME", 1, [("crm", 2), ("finance", 1)])
    fs = applied([settle, by_finance, base, by_crm]).fields["name"]
    assert [r.value for r in fs.registers()] == ["ACME"]


def test_edit_that_saw_one_of_two_concurrent_values_stays_concurrent_with_the_other() -> None:
    base = upsert(ts(1_000, "crm"), "name", "Acme", 1)
    by_crm = upsert(ts(2_000, "crm"), "name", "Acme Inc", 2, [("crm", 1)])
    by_finance = upsert(ts(3_000, "finance"), "name", "Acme Ltd", 1, [("crm", 1)])
    on_crm = upsert(ts(4_000, "crm"), "name", "Acme Incorporated", 3, [("crm", 2)])
    fs = applied([base, by_crm, by_finance, on_crm]).fields["name"]
    assert [r.value for r in fs.registers()] == ["Acme Ltd", "Acme Incorporated"]


def test_concurrent_edits_to_different_fields_both_survive() -> None:
    when = ts(1_000, "crm")
    base = Edit(
        when,
        False,
        (
            Assign("name", Register("Acme", when, ("crm", 1)), ()),
            Assign("phone", Register("555", when, ("crm", 1)), ()),
        ),
    )
    name = upsert(ts(2_000, "finance"), "name", "Acme Ltd", 1, [("crm", 1)])
    phone = upsert(ts(2_000, "crm"), "phone", "999", 2, [("crm", 1)])
    for order in ([base, name, phone], [phone, base, name], [name, phone, base]):
        state = applied(order)
        values = {f: [r.value for r in fs.registers()] for f, fs in state.fields.items()}
        assert values == {"name": ["Acme Ltd"], "phone": ["999"]}


def test_delete_against_concurrent_update_the_later_wins() -> None:
    create = upsert(ts(1_000, "crm"), "name", "Acme", 1)
    update = upsert(ts(3_000, "finance"), "name", "Acme Ltd", 1, [("crm", 1)])
    early_delete = Edit(ts(2_000, "crm"), True)
    late_delete = Edit(ts(4_000, "crm"), True)

    survives = applied([create, early_delete, update])
    assert survives == applied([create, update, early_delete])
    assert survives.exists
    assert [r.value for r in survives.fields["name"].registers()] == ["Acme Ltd"]

    deleted = applied([create, late_delete, update])
    assert deleted == applied([update, late_delete, create])
    assert not deleted.exists


def test_delete_and_update_with_equal_timestamps_deletes() -> None:
    # alive > dead is needed to exist: a tie is not enough. Both replicas agree on it.
    create = upsert(ts(1_000, "crm"), "name", "Acme", 1)
    same = ts(2_000, "finance")
    update = upsert(same, "name", "Acme Ltd", 1, [("crm", 1)])
    delete = Edit(same, True)
    assert applied([create, update, delete]) == applied([create, delete, update])
    assert not applied([create, update, delete]).exists


def test_deleted_record_can_be_created_again() -> None:
    create = upsert(ts(1_000, "crm"), "name", "Acme", 1)
    delete = Edit(ts(2_000, "finance"), True)
    # the re-create saw the delete: its timestamp moves past it even with a slow wall clock
    again_at = ts(1_500, "crm").after(delete.ts)
    recreate = upsert(again_at, "name", "Acme Again", 2, [("crm", 1)])
    for order in ([create, delete, recreate], [recreate, delete, create]):
        state = applied(order)
        assert state.exists
        assert [r.value for r in state.fields["name"].registers()] == ["Acme Again"]


def test_a_record_never_written_does_not_exist() -> None:
    assert not RecordState().exists
    assert not applied([Edit(ts(1, "crm"), True)]).exists


def test_replicas_exchanging_states_converge() -> None:
    base = upsert(ts(1_000, "crm"), "name", "Acme", 1)
    crm, finance = applied([base]), applied([base])
    crm.apply(upsert(ts(2_000, "crm"), "name", "Acme Inc", 2, [("crm", 1)]))
    finance.apply(upsert(ts(2_000, "finance"), "name", "Acme Ltd", 1, [("crm", 1)]))
    finance.apply(Edit(ts(2_500, "finance"), True))
    crm_view, finance_view = crm.copy(), finance.copy()
    crm_view.join(finance)
    finance_view.join(crm)
    assert crm_view == finance_view
    assert not crm_view.exists  # the delete is the latest event
    assert len(crm_view.fields["name"].entries) == 2


# -- policies ------------------------------------------------------------------------------


def concurrent(*registers: Register) -> FieldState:
    fs = FieldState()
    for register in registers:
        fs.assign(register)
    return fs


def reg(value: object, wall: int, origin: str, n: int = 1, counter: int = 0) -> Register:
    return Register(value, Timestamp(wall, counter, origin), (origin, n))


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
    for fs in (concurrent(crm, finance), concurrent(finance, crm)):
        winner, _ = resolve("name", fs, LWW)
        assert winner == finance  # "finance" > "crm"


def test_lww_orders_on_the_counter_before_the_origin() -> None:
    crm = reg("Acme Inc", 2_000, "crm", counter=1)
    finance = reg("Acme Ltd", 2_000, "finance", counter=0)
    assert resolve("name", concurrent(finance, crm), LWW)[0] == crm


def test_prefer_picks_the_preferred_apps_value_even_when_older() -> None:
    crm = reg("Acme Inc", 1_000, "crm")
    crm_newer = reg("Acme Incorporated", 2_000, "crm", n=2)
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


def test_equal_concurrent_values_are_not_a_conflict() -> None:
    a, b = reg("Acme", 1_000, "crm"), reg("Acme", 2_000, "finance")
    winner, conflict = resolve("name", concurrent(b, a), LWW)
    assert conflict is None
    assert winner == b  # the latest carries the value


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


def test_resolver_can_be_named_by_module_and_function() -> None:
    import os.path

    assert resolver("os.path:join") is os.path.join


def test_custom_resolver_returning_a_non_candidate_raises() -> None:
    def invent(field: str, candidates: Sequence[Register]) -> Register:
        return reg("made up", 9_000, "hr")

    a, b = reg("x", 1_000, "crm"), reg("y", 2_000, "finance")
    with pytest.raises(ValueError, match="not one of its candidates"):
        resolve("name", concurrent(a, b), Custom("invent", invent))


registers = st.lists(
    st.builds(
        reg,
        st.sampled_from(("a", "b", "c")),
        st.integers(0, 5),
        st.sampled_from(ORIGINS),
        st.integers(1, 3),
        st.integers(0, 2),
    ),
    min_size=1,
    max_size=6,
    unique_by=(lambda r: r.dot, lambda r: r.ts),
)


@settings(max_examples=200)
@given(regs=registers, data=st.data())
def test_resolve_does_not_depend_on_insertion_order(
    regs: list[Register], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(regs))
    for policy in (LWW, Prefer("crm"), Custom("test_merge_laws.shortest")):
        assert resolve("name", concurrent(*regs), policy) == resolve(
            "name", concurrent(*shuffled), policy
        )
