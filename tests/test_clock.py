"""Clocks as plain values: HLC readings, vector clocks and dot contexts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conflict.clock import DotContext, HybridClock, Ordering, Timestamp, VectorClock

ORIGINS = ("crm", "finance", "hr")

# -- HybridClock ---------------------------------------------------------------------------


def test_now_is_strictly_increasing_when_physical_time_stands_still() -> None:
    clock = HybridClock("finance")
    readings = [clock.now(1_000) for _ in range(5)]
    assert readings == sorted(readings)
    assert len(set(readings)) == 5
    assert readings[0] == Timestamp(1_000, 0, "finance")
    assert readings[-1] == Timestamp(1_000, 4, "finance")


def test_now_follows_physical_time_when_it_moves_forward() -> None:
    clock = HybridClock("finance")
    clock.now(1_000)
    clock.now(1_000)
    assert clock.now(2_000) == Timestamp(2_000, 0, "finance")


def test_now_does_not_go_back_when_physical_time_does() -> None:
    clock = HybridClock("finance")
    first = clock.now(5_000)
    second = clock.now(1_000)  # the wall clock was set back
    assert second > first
    assert second == Timestamp(5_000, 1, "finance")


def test_observe_returns_a_reading_later_than_the_remote_one() -> None:
    clock = HybridClock("crm")
    clock.now(1_000)
    remote = Timestamp(9_000, 7, "finance")
    seen = clock.observe(remote, physical_ms=2_000)
    assert seen > remote
    assert seen == Timestamp(9_000, 8, "crm")
    # and every later local reading is later still, even with a slow local wall clock
    assert clock.now(3_000) > seen


def test_observe_of_an_older_remote_reading_keeps_the_local_clock_ahead() -> None:
    clock = HybridClock("crm")
    local = clock.now(5_000)
    seen = clock.observe(Timestamp(1_000, 3, "finance"), physical_ms=4_000)
    assert seen == Timestamp(5_000, 1, "crm")
    assert seen > local


def test_observe_with_equal_walls_takes_the_larger_counter_plus_one() -> None:
    clock = HybridClock("crm")
    clock.now(5_000)  # (5000, 0)
    seen = clock.observe(Timestamp(5_000, 6, "finance"), physical_ms=5_000)
    assert seen == Timestamp(5_000, 7, "crm")


def test_observe_uses_physical_time_when_it_is_ahead_of_both() -> None:
    clock = HybridClock("crm")
    clock.now(1_000)
    assert clock.observe(Timestamp(2_000, 5, "finance"), physical_ms=3_000) == Timestamp(
        3_000, 0, "crm"
    )


def test_clock_resumes_after_its_last_reading() -> None:
    last = Timestamp(7_000, 3, "finance")
    clock = HybridClock("finance", last)
    assert clock.last == last
    assert clock.now(6_000) == Timestamp(7_000, 4, "finance")


def test_timestamp_ties_break_on_the_origin_not_on_wall_time() -> None:
    a = Timestamp(1_000, 0, "crm")
    b = Timestamp(1_000, 0, "finance")
    assert a < b
    assert max(a, b) == max(b, a) == b


def test_after_keeps_a_timestamp_that_is_already_later() -> None:
    mine = Timestamp(5_000, 0, "crm")
    assert mine.after(Timestamp(4_000, 9, "finance")) is mine


def test_after_moves_an_earlier_timestamp_just_past_what_it_saw() -> None:
    seen = Timestamp(5_000, 2, "finance")
    mine = Timestamp(3_000, 0, "crm")  # the crm wall clock runs behind
    assert mine.after(seen) == Timestamp(5_000, 3, "crm")


def test_after_an_equal_wall_and_counter_from_a_larger_origin_moves_past_it() -> None:
    seen = Timestamp(5_000, 2, "finance")
    mine = Timestamp(5_000, 2, "crm")  # "crm" < "finance": a tie lost on the origin
    assert mine.after(seen) == Timestamp(5_000, 3, "crm")


timestamps = st.builds(Timestamp, st.integers(0, 50), st.integers(0, 5), st.sampled_from(ORIGINS))


@settings(max_examples=200)
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 50), timestamps), max_size=30))
def test_every_reading_of_a_clock_is_later_than_the_previous_one(
    steps: list[tuple[bool, int, Timestamp]],
) -> None:
    clock = HybridClock("hr")
    previous = clock.last
    for local, physical, remote in steps:
        reading = clock.now(physical) if local else clock.observe(remote, physical)
        assert reading > previous
        assert reading.origin == "hr"
        if not local:
            assert (reading.wall_ms, reading.counter) > (remote.wall_ms, remote.counter)
        assert reading.wall_ms >= physical
        assert clock.last == reading
        previous = reading


@settings(max_examples=200)
@given(mine=timestamps, seen=timestamps)
def test_after_is_later_than_what_it_saw_and_never_earlier_than_itself(
    mine: Timestamp, seen: Timestamp
) -> None:
    moved = mine.after(seen)
    assert moved > seen
    assert moved >= mine
    assert moved.origin == mine.origin


# -- VectorClock ---------------------------------------------------------------------------


def test_compare_orders_a_clock_before_its_successor() -> None:
    a = VectorClock({"crm": 1})
    b = a.increment("finance")
    assert a.compare(b) is Ordering.BEFORE
    assert b.compare(a) is Ordering.AFTER
    assert a.compare(VectorClock({"crm": 1})) is Ordering.EQUAL


def test_compare_returns_none_for_concurrent_clocks() -> None:
    a = VectorClock({"crm": 2, "finance": 1})
    b = VectorClock({"crm": 1, "finance": 2})
    assert a.compare(b) is None
    assert b.compare(a) is None


def test_merge_takes_the_largest_counter_of_each_origin() -> None:
    a = VectorClock({"crm": 2, "finance": 1})
    b = VectorClock({"finance": 3, "hr": 1})
    assert a.merge(b) == VectorClock({"crm": 2, "finance": 3, "hr": 1})
    # merging does not change the operands (clocks are values)
    assert a == VectorClock({"crm": 2, "finance": 1})


def test_covers_a_clock_and_a_single_dot() -> None:
    clock = VectorClock({"crm": 2})
    assert clock.covers(VectorClock({"crm": 1}))
    assert not clock.covers(VectorClock({"crm": 1, "hr": 1}))
    assert clock.covers(("crm", 2))
    assert not clock.covers(("crm", 3))
    assert not clock.covers(("finance", 1))


def test_increment_adds_one_event_of_that_origin_only() -> None:
    clock = VectorClock({"crm": 2}).increment("crm").increment("hr")
    assert clock.as_dict() == {"crm": 3, "hr": 1}
    assert clock["finance"] == 0


def test_zero_counters_are_the_same_as_missing_origins() -> None:
    assert VectorClock({"crm": 0}) == VectorClock()
    assert hash(VectorClock({"crm": 0, "hr": 1})) == hash(VectorClock({"hr": 1}))
    assert VectorClock().compare(VectorClock({"crm": 0})) is Ordering.EQUAL


vector_clocks = st.dictionaries(st.sampled_from(ORIGINS), st.integers(0, 4)).map(VectorClock)


@settings(max_examples=300)
@given(a=vector_clocks, b=vector_clocks, c=vector_clocks)
def test_vector_clock_merge_is_commutative_associative_and_idempotent(
    a: VectorClock, b: VectorClock, c: VectorClock
) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a
    # the merge is the least upper bound
    assert a.merge(b).covers(a) and a.merge(b).covers(b)
    if c.covers(a) and c.covers(b):
        assert c.covers(a.merge(b))


@settings(max_examples=300)
@given(a=vector_clocks, b=vector_clocks)
def test_vector_clock_compare_is_antisymmetric_and_agrees_with_covers(
    a: VectorClock, b: VectorClock
) -> None:
    mirror = {
        Ordering.BEFORE: Ordering.AFTER,
        Ordering.AFTER: Ordering.BEFORE,
        Ordering.EQUAL: Ordering.EQUAL,
        None: None,
    }
    order = a.compare(b)
    assert b.compare(a) is mirror[order]
    assert (order is Ordering.EQUAL) == (a == b)
    assert (order in (Ordering.AFTER, Ordering.EQUAL)) == a.covers(b)
    assert (order in (Ordering.BEFORE, Ordering.EQUAL)) == b.covers(a)
    assert a.increment("crm").compare(a) is Ordering.AFTER


# -- DotContext ----------------------------------------------------------------------------


def test_dots_in_order_stay_in_the_vector() -> None:
    ctx = DotContext()
    for n in (1, 2, 3):
        ctx.add(("crm", n))
    assert ctx.vv == {"crm": 3}
    assert ctx.cloud is None
    assert ctx.covers(("crm", 2))
    assert not ctx.covers(("crm", 4))


def test_out_of_order_dots_wait_in_the_cloud_then_compact_into_the_vector() -> None:
    ctx = DotContext()
    ctx.add(("crm", 3))
    ctx.add(("crm", 2))
    assert ctx.vv == {}
    assert ctx.cloud == {("crm", 2), ("crm", 3)}
    assert ctx.covers(("crm", 3))
    assert not ctx.covers(("crm", 1))
    ctx.add(("crm", 1))
    assert ctx.vv == {"crm": 3}
    assert ctx.cloud is None


def test_adding_a_dot_twice_changes_nothing() -> None:
    ctx = DotContext({"crm": 2}, [("crm", 5)])
    before = ctx.copy()
    ctx.add(("crm", 2))
    ctx.add(("crm", 5))
    assert ctx == before


def test_next_dot_is_past_everything_seen_of_that_origin() -> None:
    ctx = DotContext({"crm": 2}, [("crm", 7), ("finance", 4)])
    assert ctx.next_dot("crm") == ("crm", 8)
    assert ctx.next_dot("finance") == ("finance", 5)
    assert ctx.next_dot("hr") == ("hr", 1)


def test_merge_fills_a_gap_and_compacts() -> None:
    mine = DotContext({"crm": 1}, [("crm", 3), ("crm", 4)])
    theirs = DotContext({"crm": 2, "finance": 1})
    mine.merge(theirs)
    assert mine.vv == {"crm": 4, "finance": 1}
    assert mine.cloud is None
    assert theirs == DotContext({"crm": 2, "finance": 1})  # the argument is not changed


def test_merge_brings_over_the_other_cloud() -> None:
    mine = DotContext({"crm": 1})
    mine.merge(DotContext({}, [("crm", 3)]))
    assert mine.covers(("crm", 3))
    assert not mine.covers(("crm", 2))
    assert mine == DotContext({"crm": 1}, [("crm", 3)])


def test_copy_does_not_share_the_cloud() -> None:
    ctx = DotContext({}, [("crm", 3)])
    copy = ctx.copy()
    copy.add(("crm", 5))
    assert not ctx.covers(("crm", 5))


dots = st.tuples(st.sampled_from(ORIGINS), st.integers(1, 8))


@settings(max_examples=300)
@given(data=st.data(), added=st.lists(dots, max_size=25))
def test_dot_context_holds_exactly_the_dots_added_in_any_order(
    data: st.DataObject, added: list[tuple[str, int]]
) -> None:
    ctx = DotContext()
    for dot in added:
        ctx.add(dot)
    shuffled = DotContext()
    for dot in data.draw(st.permutations(added)):
        shuffled.add(dot)
    assert ctx == shuffled
    assert DotContext({}, added) == ctx
    for origin in ORIGINS:
        for n in range(1, 10):
            assert ctx.covers((origin, n)) == ((origin, n) in added)
        top = max([n for o, n in added if o == origin], default=0)
        assert ctx.next_dot(origin) == (origin, top + 1)
    # compact form: nothing in the cloud that the vector could hold
    for origin, n in ctx.cloud or ():
        assert n > ctx.vv.get(origin, 0) + 1


@settings(max_examples=300)
@given(a=st.lists(dots, max_size=15), b=st.lists(dots, max_size=15))
def test_dot_context_merge_is_the_union(a: list[tuple[str, int]], b: list[tuple[str, int]]) -> None:
    left, right = DotContext({}, a), DotContext({}, b)
    merged = left.copy()
    merged.merge(right)
    other_way = right.copy()
    other_way.merge(left)
    assert merged == other_way == DotContext({}, a + b)
    again = merged.copy()
    again.merge(right)
    assert again == merged


@pytest.mark.parametrize("origin", ORIGINS)
def test_empty_context_covers_nothing(origin: str) -> None:
    ctx = DotContext()
    assert not ctx.covers((origin, 1))
    assert ctx.next_dot(origin) == (origin, 1)
