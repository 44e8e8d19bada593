"""Clocks as plain values: HLC readings, vector clocks, stamps, origins and bounded clocks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conflict.clock import (
    DEFAULT_TOLERANCE_MS,
    LIVE_WINDOW_MS,
    MAX_COUNTER,
    MAX_ORIGINS,
    MAX_WALL_MS,
    BoundedClock,
    HybridClock,
    Ordering,
    Origins,
    Timestamp,
    VectorClock,
    pack,
    stamp_after,
    unpack,
)

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


# -- stamps --------------------------------------------------------------------------------

# Whole ranges, and small parts so that equal walls and counters (the ties) come up often.
stamp_parts = st.one_of(
    st.tuples(
        st.integers(0, MAX_WALL_MS), st.integers(0, MAX_COUNTER), st.integers(0, MAX_ORIGINS - 1)
    ),
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
)


@settings(max_examples=300)
@given(a=stamp_parts, b=stamp_parts)
def test_stamps_compare_exactly_as_wall_counter_rank_tuples(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    assert (pack(*a) < pack(*b)) == (a < b)
    assert (pack(*a) == pack(*b)) == (a == b)


@settings(max_examples=300)
@given(parts=stamp_parts)
def test_pack_and_unpack_round_trip(parts: tuple[int, int, int]) -> None:
    stamp = pack(*parts)
    assert unpack(stamp) == parts
    assert 0 <= stamp < 1 << 64


def test_the_largest_stamp_fits_an_unsigned_64_bit_int() -> None:
    assert pack(MAX_WALL_MS, MAX_COUNTER, MAX_ORIGINS - 1) == (1 << 64) - 1
    assert pack(0, 0, 0) == 0
    assert MAX_WALL_MS > 4_102_444_800_000  # 2100-01-01T00:00Z still packs


@pytest.mark.parametrize(
    ("wall", "counter", "rank"),
    [
        (-1, 0, 0),
        (MAX_WALL_MS + 1, 0, 0),
        (0, -1, 0),
        (0, MAX_COUNTER + 1, 0),
        (0, 0, -1),
        (0, 0, MAX_ORIGINS),
    ],
)
def test_pack_refuses_out_of_range_parts(wall: int, counter: int, rank: int) -> None:
    with pytest.raises(ValueError, match=f"wall {wall} ms, counter {counter}, rank {rank}"):
        pack(wall, counter, rank)


@settings(max_examples=300)
@given(mine=stamp_parts, seen=stamp_parts)
def test_stamp_after_is_later_than_what_it_saw_and_keeps_its_own_origin(
    mine: tuple[int, int, int], seen: tuple[int, int, int]
) -> None:
    stamp, other = pack(*mine), pack(*seen)
    moved = stamp_after(stamp, other)
    assert moved > other
    assert moved >= stamp
    assert unpack(moved)[2] == mine[2]
    if stamp > other:
        assert moved == stamp
    if seen[0] < MAX_WALL_MS:
        assert pack(*unpack(moved)) == moved  # still a valid stamp


@settings(max_examples=300)
@given(mine=timestamps, seen=timestamps)
def test_stamp_after_agrees_with_timestamp_after(mine: Timestamp, seen: Timestamp) -> None:
    origins = Origins(ORIGINS)
    moved = stamp_after(origins.stamp(mine), origins.stamp(seen))
    assert origins.timestamp(moved) == mine.after(seen)


def test_stamp_after_a_tie_lost_on_the_origin_moves_one_counter_past_it() -> None:
    assert stamp_after(pack(5_000, 2, 0), pack(5_000, 2, 1)) == pack(5_000, 3, 0)
    # a tie won on the origin is already later
    assert stamp_after(pack(5_000, 2, 1), pack(5_000, 2, 0)) == pack(5_000, 2, 1)


def test_stamp_after_a_full_counter_borrows_the_next_millisecond() -> None:
    assert stamp_after(pack(4_000, 7, 1), pack(5_000, MAX_COUNTER, 2)) == pack(5_001, 0, 1)


# -- Origins -------------------------------------------------------------------------------


def test_origins_are_ranked_by_sorted_name_whatever_order_they_are_given_in() -> None:
    origins = Origins(["hr", "crm", "finance", "crm"])
    assert origins.names == ("crm", "finance", "hr")
    assert [origins.rank(name) for name in ("crm", "finance", "hr")] == [0, 1, 2]
    assert len(origins) == 3
    assert Origins(("finance", "hr", "crm")).ranks == origins.ranks
    assert repr(origins) == "Origins(['crm', 'finance', 'hr'])"


def test_origins_name_the_origin_of_a_stamp_by_its_rank() -> None:
    origins = Origins(ORIGINS)
    assert origins.name(pack(1_000, 3, 2)) == "hr"
    assert origins.timestamp(pack(1_000, 3, 2)) == Timestamp(1_000, 3, "hr")
    assert origins.stamp(Timestamp(1_000, 3, "hr")) == pack(1_000, 3, 2)


def test_origin_stamps_break_ties_on_the_name_as_timestamps_do() -> None:
    origins = Origins(["finance", "crm"])
    crm, finance = Timestamp(1_000, 0, "crm"), Timestamp(1_000, 0, "finance")
    assert crm < finance
    assert origins.stamp(crm) < origins.stamp(finance)


def test_an_unknown_origin_is_refused_naming_the_known_ones() -> None:
    origins = Origins(ORIGINS)
    with pytest.raises(KeyError, match=r"unknown origin 'erp' \(known: crm, finance, hr\)"):
        origins.rank("erp")
    with pytest.raises(KeyError, match="erp"):
        origins.stamp(Timestamp(1_000, 0, "erp"))


@pytest.mark.parametrize("count", [0, MAX_ORIGINS + 1])
def test_origins_refuse_no_names_or_more_than_a_stamp_can_rank(count: int) -> None:
    with pytest.raises(ValueError, match=f"between 1 and {MAX_ORIGINS} origins, found {count}"):
        Origins([f"app{i:02}" for i in range(count)])


def test_as_many_origins_as_a_stamp_can_rank_are_accepted() -> None:
    origins = Origins([f"app{i:02}" for i in range(MAX_ORIGINS)])
    assert origins.rank(f"app{MAX_ORIGINS - 1:02}") == MAX_ORIGINS - 1


wide_timestamps = timestamps | st.builds(
    Timestamp, st.integers(0, MAX_WALL_MS), st.integers(0, MAX_COUNTER), st.sampled_from(ORIGINS)
)


@settings(max_examples=300)
@given(a=wide_timestamps, b=wide_timestamps)
def test_origins_round_trip_timestamps_and_stamps_keeping_their_order(
    a: Timestamp, b: Timestamp
) -> None:
    origins = Origins(ORIGINS)
    sa, sb = origins.stamp(a), origins.stamp(b)
    assert origins.timestamp(sa) == a
    assert origins.name(sa) == a.origin
    assert (sa < sb) == (a < b)
    assert (sa == sb) == (a == b)


# -- BoundedClock --------------------------------------------------------------------------

NOW = 1_700_000_000_000  # the engine's clock, ms since the epoch
HOUR = 3_600_000
FINANCE = Origins(ORIGINS).rank("finance")
CRM = Origins(ORIGINS).rank("crm")


def wall(stamp: int) -> int:
    return unpack(stamp)[0]


def test_a_new_bounded_clock_has_no_skew_and_stamps_above_zero() -> None:
    clock = BoundedClock(FINANCE)
    assert clock.tolerance_ms == DEFAULT_TOLERANCE_MS == 1_000
    assert clock.skew_ms == 0
    assert not clock.skewed
    assert clock.last == pack(0, 0, FINANCE)
    assert unpack(clock.now(0)) == (0, 1, FINANCE)


def test_a_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0 ms, found -1"):
        BoundedClock(FINANCE, tolerance_ms=-1)


def test_an_application_clock_an_hour_ahead_is_corrected_by_its_offset() -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    earliest, latest = NOW - 500, NOW
    assert unpack(clock.stamp(latest + HOUR, earliest, latest)) == (latest, 0, FINANCE)
    assert clock.skew_ms == HOUR == clock.offset_ms
    assert clock.skewed
    # its next changes in the same window: one counter apart, no further ahead
    assert unpack(clock.stamp(latest + HOUR + 5, earliest, latest)) == (latest, 1, FINANCE)


def test_the_offset_learnt_live_corrects_a_backlog_read_after_a_pause() -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    clock.stamp(NOW + HOUR, NOW - 50, NOW)  # live: an hour ahead
    # paused for a minute; a change made 30 s into the pause, read when it ends
    backlog = clock.stamp(NOW + 30_000 + HOUR, NOW, NOW + 60_000)
    assert wall(backlog) == NOW + 30_000
    assert clock.skew_ms == HOUR  # a wide window shows less of it: the live measure stays


def test_a_backlog_read_first_shows_at_least_how_far_ahead_a_clock_is() -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    clock.stamp(NOW, NOW - 50, NOW)  # live and right
    # paused for a minute, during which the clock jumped an hour ahead
    first = clock.stamp(NOW + 30_000 + HOUR, NOW, NOW + 60_000)
    assert clock.skew_ms == HOUR - 30_000 == clock.offset_ms  # at least that
    assert wall(first) == NOW + 60_000  # corrected: no later than the look that saw it


def test_an_offset_is_dropped_as_soon_as_a_live_look_finds_the_clock_right() -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    clock.stamp(NOW + HOUR, NOW - 50, NOW)
    assert wall(clock.stamp(NOW + 20, NOW, NOW + 40)) == NOW + 20
    assert (clock.skew_ms, clock.offset_ms, clock.skewed) == (0, 0, False)


def test_without_a_live_look_a_clock_an_hour_ahead_is_corrected_to_the_look_that_saw_it() -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    # a first read of a backlog: it is at least an hour ahead of the look that saw it
    assert unpack(clock.stamp(NOW + HOUR, 0, NOW)) == (NOW, 0, FINANCE)
    assert clock.skew_ms == HOUR


def test_an_application_clock_an_hour_behind_is_corrected_into_the_window() -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    earliest, latest = NOW - 500, NOW
    assert unpack(clock.stamp(earliest - HOUR, earliest, latest)) == (earliest, 0, FINANCE)
    assert clock.skew_ms == -HOUR
    assert clock.skewed


def test_inside_the_window_stamps_follow_the_applications_commit_times() -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    stamps = [clock.stamp(t, NOW - 500, NOW) for t in (NOW - 500, NOW - 250, NOW - 250, NOW)]
    assert [unpack(s) for s in stamps] == [
        (NOW - 500, 0, FINANCE),
        (NOW - 250, 0, FINANCE),
        (NOW - 250, 1, FINANCE),
        (NOW, 0, FINANCE),
    ]
    assert clock.skew_ms == 0
    assert not clock.skewed


@pytest.mark.parametrize(
    ("app_ms", "skew_ms", "stamped_ms"),
    [
        (NOW - 200, 0, NOW - 200),
        (NOW - 100, 0, NOW - 100),
        (NOW, 0, NOW),
        (NOW + 1_000, 1_000, NOW + 1_000),  # ahead, within the tolerance: kept
        (NOW + 1_001, 1_001, NOW),  # past it: corrected by the offset, and skewed
        (NOW - 1_200, -1_000, NOW - 1_200),
        (NOW - 1_201, -1_001, NOW - 200),
    ],
)
def test_skew_is_the_offset_beyond_the_window_ahead_positive_behind_negative_zero_inside(
    app_ms: int, skew_ms: int, stamped_ms: int
) -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    assert wall(clock.stamp(app_ms, NOW - 200, NOW)) == stamped_ms  # a live look
    assert clock.skew_ms == skew_ms
    assert clock.skewed == (abs(skew_ms) > 1_000)


def test_the_skew_reported_is_that_of_the_last_stamped_change() -> None:
    clock = BoundedClock(FINANCE, tolerance_ms=1_000)
    clock.stamp(NOW + HOUR, NOW - 500, NOW)
    assert clock.skewed
    clock.stamp(NOW + 10, NOW, NOW + 20)
    assert clock.skew_ms == 0
    assert not clock.skewed


def test_a_clock_that_ran_ahead_and_is_corrected_stops_winning_within_the_tolerance() -> None:
    tolerance = 1_000
    app = BoundedClock(FINANCE, tolerance)
    ahead = app.stamp(NOW + HOUR, NOW - 10, NOW)
    assert wall(ahead) == NOW
    previous = ahead
    for t in range(NOW + 100, NOW + 3 * tolerance, 100):
        stamp = app.stamp(t, t - 10, t)  # its clock is right again
        assert stamp > previous
        assert wall(stamp) <= t + tolerance
        if t > NOW + tolerance:
            assert unpack(stamp) == (t, 0, FINANCE)  # past the clipped value: follows it again
        previous = stamp
    # a change the engine stamps from a right clock more than the tolerance later wins
    right = BoundedClock(CRM, tolerance)
    assert right.stamp(NOW + tolerance + 1, NOW + tolerance, NOW + tolerance + 1) > ahead


def test_a_clock_resumed_from_its_last_stamp_never_stamps_lower() -> None:
    before = BoundedClock(FINANCE)
    for t in (NOW, NOW, NOW + 5):
        before.stamp(t + HOUR, t - 10, t)
    last = before.last
    resumed = BoundedClock(FINANCE, last=last)
    assert resumed.last == last
    first = resumed.stamp(NOW, NOW - 10, NOW)
    assert first > last
    assert unpack(first) == (unpack(last)[0], unpack(last)[1] + 1, FINANCE)
    assert resumed.now(0) > first
    # without ``last`` the same change would have been stamped lower
    assert BoundedClock(FINANCE).stamp(NOW, NOW - 10, NOW) < last


def test_bounded_clock_now_never_goes_back_when_physical_time_does() -> None:
    clock = BoundedClock(FINANCE)
    first = clock.now(5_000)
    assert unpack(clock.now(1_000)) == (5_000, 1, FINANCE)
    assert clock.last > first


def test_a_full_counter_borrows_the_next_millisecond_and_stays_increasing() -> None:
    clock = BoundedClock(FINANCE, last=pack(NOW, MAX_COUNTER - 1, FINANCE))
    stamps = [clock.now(NOW) for _ in range(3)]
    assert [unpack(s) for s in stamps] == [
        (NOW, MAX_COUNTER, FINANCE),
        (NOW + 1, 0, FINANCE),
        (NOW + 1, 1, FINANCE),
    ]
    # the borrowed millisecond is not handed out again when physical time reaches it
    assert unpack(clock.stamp(NOW + 1, NOW, NOW + 1)) == (NOW + 1, 2, FINANCE)
    assert unpack(clock.now(NOW + 2)) == (NOW + 2, 0, FINANCE)


def test_a_whole_millisecond_of_stamps_then_one_more_borrows_the_next() -> None:
    clock = BoundedClock(FINANCE)
    stamps = [clock.now(NOW) for _ in range(MAX_COUNTER + 2)]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert unpack(stamps[-2]) == (NOW, MAX_COUNTER, FINANCE)
    assert unpack(stamps[-1]) == (NOW + 1, 0, FINANCE)


clock_steps = st.lists(
    st.one_of(
        st.tuples(st.just("now"), st.integers(0, 60)),
        # (app_ms, earliest_ms, window width)
        st.tuples(st.just("stamp"), st.integers(0, 90), st.integers(0, 60), st.integers(0, 10)),
    ),
    max_size=30,
)


@settings(max_examples=300)
@given(
    rank=st.integers(0, MAX_ORIGINS - 1),
    tolerance=st.integers(0, 20),
    last_wall=st.integers(0, 60),
    last_counter=st.sampled_from([0, 1, MAX_COUNTER - 1, MAX_COUNTER]),
    steps=clock_steps,
)
def test_bounded_clock_stamps_strictly_increase_for_any_inputs(
    rank: int,
    tolerance: int,
    last_wall: int,
    last_counter: int,
    steps: list[tuple[str, int] | tuple[str, int, int, int]],
) -> None:
    previous = pack(last_wall, last_counter, rank)
    clock = BoundedClock(rank, tolerance, previous)
    for step in steps:
        if step[0] == "now":
            physical = step[1]
            stamp = clock.now(physical)
        else:
            _, app_ms, earliest, width = step  # type: ignore[misc]
            latest = earliest + width
            stamp = clock.stamp(app_ms, earliest, latest)
            corrected = app_ms - clock.offset_ms
            physical = min(max(corrected, earliest - tolerance), latest + tolerance)
            if earliest > 0 and width <= LIVE_WINDOW_MS:  # a live look measures the skew
                assert clock.skewed == (not earliest - tolerance <= app_ms <= latest + tolerance)
                assert (clock.skew_ms == 0) == (earliest <= app_ms <= latest)
                assert (clock.skew_ms > 0) == (app_ms > latest)
        w, c, r = unpack(stamp)
        pw, pc, _ = unpack(previous)
        assert stamp > previous
        assert r == rank
        assert clock.last == stamp
        assert w >= physical
        # never ahead of its physical time unless an earlier stamp pushed it
        if physical > pw:
            assert (w, c) == (physical, 0)
        elif pc < MAX_COUNTER:
            assert (w, c) == (pw, pc + 1)
        else:
            assert (w, c) == (pw + 1, 0)
        previous = stamp


@settings(max_examples=300, deadline=None)
@given(
    offsets=st.lists(st.integers(-5_000, 5_000), max_size=30),
    windows=st.lists(
        st.tuples(st.integers(0, 2_000), st.integers(0, 400), st.integers(0, 3)), min_size=1
    ),
    tolerance=st.sampled_from([0, 50, 1_000]),
)
def test_stamping_a_batch_gives_what_stamping_each_change_gives(
    offsets: list[int], windows: list[tuple[int, int, int]], tolerance: int
) -> None:
    one, many = BoundedClock(FINANCE, tolerance), BoundedClock(FINANCE, tolerance)
    now = 1_700_000_000_000
    for gap, width, count in windows:
        earliest = 0 if gap == 0 else now + gap
        latest = now + gap + width
        now = latest
        times = [
            latest - width // 2 + offsets[i % len(offsets)] if offsets else latest
            for i in range(count + len(offsets))
        ]
        expected = [one.stamp(t, earliest, latest) for t in times]
        assert many.stamp_many(times, earliest, latest) == expected
        assert (many.last, many.skew_ms, many.offset_ms) == (one.last, one.skew_ms, one.offset_ms)
