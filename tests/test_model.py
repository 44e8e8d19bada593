"""The partition against a reference model of what really happened.

A hypothesis state machine plays two applications (``finance`` and ``crm``) and one partition
(`engine.partition.PartitionRunner`, with its real SQLite store and WAL, a tiny record cache
so that records go to disk and come back, and writers that are plain objects). Rules: an
application inserts, edits any subset of fields, deletes, inserts again with the same or
other values, or REPLACEs a row it holds (captured as an insert without an old image); the
reader delivers some of a side's changes (or none for a while: a pause); a write batch lands
on its application at any point relative to the application's own edits; the partition
flushes, checkpoints, or restarts from its store (with writes in flight, landed or not).

Next to it a reference model tracks the true happened-before order: every synced change is
an event that has seen its application's earlier events and whatever our writes that landed
on the application before it carried (the events merged when the write was made). After each
run everything is delivered and landed, and:

- both applications converge, to the partition's merged records;
- every field's value comes from an assignment no later assignment has seen (no assignment
  is undone by one that came before it), and among the concurrent ones the policy chose it
  (``prefer``: the preferred application's; ``lww``: the later stamp, each stamp raised past
  what its change had seen);
- a record exists exactly when the later of its concurrent last upserts and deletes is an
  upsert.

Examples hypothesis once found failing are kept below as explicit regression cases.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter, deque
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from conflict import Origins, pack, stamp_after
from engine.codec import decode, encode
from engine.ids import Side
from engine.maps import load_map
from engine.partition import PartitionRunner
from engine.store import PartitionStore

from conftest import CUSTOMERS

L, R = Side.LEFT, Side.RIGHT
APPS = ("finance", "crm")
FIELDS = ("account", "name", "credit_limit", "phone")
KEYS = ("A1", "B2")
VALUES = {1: ("n1", "n2", "n3"), 2: (100, 200), 3: ("p1", "p2", "p3")}
ORIGINS = Origins(list(APPS))
SEEN: Counter[str] = Counter()  # what the runs exercised (checked at the end of the test)


class Event(NamedTuple):
    """A synced change as the reference model sees it."""

    id: int
    side: Side
    key: str
    exists: bool  # an upsert (True) or a delete (False)
    assigns: dict[int, Any]
    stamp: int  # raised past everything it saw, as the engine does
    past: frozenset[int]


class App:
    """One application: rows, a change log without our writes, receipts of our batches."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.rows: dict[str, list[Any]] = {}
        self.log: list[list[Any]] = []  # [seq, op, key, stamp, old, new]
        self.receipts: dict[str, dict[str, Any]] = {}
        self.queue: deque[tuple[int, bytes, list[frozenset[int]]]] = deque()
        self.fences: dict[str, int] = {}

    def land(self) -> None:
        """Apply the oldest write batch sent here, as a connector does."""
        epoch, payload, _ = self.queue[0]
        msg = decode(payload, "writes")
        if epoch < self.fences.get(msg["writer"], 0):
            self.queue.popleft()  # fenced: a restarted partition decided it never landed
            return
        self.queue.popleft()
        position = len(self.log)
        for op, key, values, old in sorted(msg["rows"], key=lambda r: "DMUI".index(r[0])):
            k = key[0]
            if op == "D":
                self.rows.pop(k, None)
            elif op == "M":
                held = self.rows.pop(old[0], None)
                if held is not None:
                    self.rows[k] = [values.get(i) for i in range(len(FIELDS))]
            elif k in self.rows:
                for i, value in values.items():
                    self.rows[k][i] = value
            elif op == "I":
                self.rows[k] = [values.get(i) for i in range(len(FIELDS))]
        self.receipts[msg["writer"]] = {"number": msg["number"], "position": position, "errors": []}


class Writers:
    """The partition's `engine.partition.WriterPort`: batches queue at their application
    until the test lands them (or the partition waits for them)."""

    def __init__(self, machine: Model) -> None:
        self.machine = machine

    def submit(self, side: Side, payload: bytes) -> Any:
        app = self.machine.apps[side]
        msg = decode(payload, "writes")
        # what the write carries: the events merged for its records when it was made
        carried = [frozenset(self.machine.merged.get(key[0], ())) for _, key, _, _ in msg["rows"]]
        app.queue.append((msg["epoch"], payload, carried))
        self.machine.carried[(side, msg["number"])] = dict(
            zip((k[0] for _, k, _, _ in msg["rows"]), carried, strict=True)
        )
        return (side, msg["number"])

    def results(self, handles: list[Any]) -> list[bytes]:
        """The partition waits for its batches: they land now, after what queued before."""
        out = []
        for side, number in handles:
            app = self.machine.apps[side]
            while app.receipts.get(self.machine.writer, {}).get("number") != number:
                assert app.queue, f"batch {number} to {APPS[side]} was never sent"
                self.machine.land(side)
            receipt = app.receipts[self.machine.writer]
            out.append(encode("result", position=receipt["position"], errors=[]))
        return out

    def receipt(self, side: Side, writer: str, epoch: int) -> dict[str, Any] | None:
        app = self.machine.apps[side]
        app.fences[writer] = max(app.fences.get(writer, 0), epoch)
        return app.receipts.get(writer)


class Model(RuleBasedStateMachine):
    policy: Any = {"prefer": "finance"}

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="dualsync-model-")
        self.path = Path(self.tmp.name) / "partition.sqlite"
        spec = dict(CUSTOMERS)
        spec["conflict"] = self.policy
        self.cmap = load_map(spec).compile()
        self.writer = f"{self.cmap.name}/0"
        self.apps = (App(L), App(R))
        self.now = 1_000
        self.delivered = [0, 0]
        self.events: list[Event] = []
        # per side and key: the events that side has seen
        self.past: list[dict[str, set[int]]] = [{}, {}]
        self.merged: dict[str, set[int]] = {}  # events the partition merged, per key
        self.carried: dict[tuple[Side, int], dict[str, frozenset[int]]] = {}
        self.pending_events: list[list[int | None]] = [[], []]  # per logged change: its event
        self.store = PartitionStore(self.path)
        self.runner = self._runner()

    def _runner(self) -> PartitionRunner:
        runner = PartitionRunner(
            self.cmap,
            0,
            1,
            self.store,
            Writers(self),
            clock_ms=lambda: self.now,
            cache_records=1,
            checkpoint_changes=9,
            checkpoint_dirty=3,
        )
        runner.load()
        return runner

    def teardown(self) -> None:
        try:
            self.drain()
            self.check()
            SEEN["runs"] += 1
            SEEN["events"] += len(self.events)
        finally:
            self.store.close()
            self.tmp.cleanup()

    # -- the applications ---------------------------------------------------------------

    def land(self, side: Side) -> None:
        app = self.apps[side]
        epoch, payload, _ = app.queue[0]
        msg = decode(payload, "writes")
        fenced = epoch < app.fences.get(msg["writer"], 0)
        if len(app.log) > self.runner.cursors[side]:
            SEEN["write landing after an unread change"] += 1
        SEEN["fenced write" if fenced else "write landed"] += 1
        app.land()
        if not fenced:
            for key, events in self.carried[(side, msg["number"])].items():
                self.past[side].setdefault(key, set()).update(events)

    def _log(self, side: Side, op: str, key: str, old: Any, new: Any) -> None:
        """A change of ``side``'s application: logged, and an event if the map syncs it."""
        app = self.apps[side]
        other = [e for e in self.events if e.key == key and e.side != side]
        if other and other[-1].id not in self.past[side].get(key, set()):
            SEEN["concurrent change"] += 1
        self.now += 1
        raw = pack(self.now + (0 if side is L else 3), 0, ORIGINS.rank(APPS[side]))
        sourced = self.cmap.sourced[side]
        if op == "D":
            assigns: dict[int, Any] | None = {}
        elif old is None:
            assigns = {i: new[i] for i in sourced}
        else:
            assigns = {i: new[i] for i in sourced if old[i] != new[i]}
            if not assigns:
                assigns = None  # nothing the map syncs changed: no event
        event_id = None
        if assigns is not None:
            past = frozenset(self.past[side].setdefault(key, set()))
            seen = [self.events[e].stamp for e in past if self.events[e].key == key]
            stamp = stamp_after(raw, max(seen)) if seen else raw
            event_id = len(self.events)
            self.events.append(Event(event_id, side, key, op != "D", assigns, stamp, past))
            self.past[side][key].add(event_id)
        app.log.append([len(app.log) + 1, op, [key], raw, old, new])
        self.pending_events[side].append(event_id)

    @initialize()
    def start(self) -> None:
        for side in Side:  # both sides past an (empty) initial snapshot
            self.runner.apply(side, self._message(side, [], snap=True, final=True, to=0))

    @rule(side=st.sampled_from(Side), key=st.sampled_from(KEYS), data=st.data())
    def insert(self, side: Side, key: str, data: st.DataObject) -> None:
        app = self.apps[side]
        old = app.rows.get(key)
        new = [key, *(data.draw(st.sampled_from(VALUES[i])) for i in (1, 2, 3))]
        # no row: an insert; a row held: a REPLACE (captured as an insert, no old image)
        SEEN["replace" if old is not None else "insert"] += 1
        app.rows[key] = new
        self._log(side, "I", key, old, list(new))

    @rule(side=st.sampled_from(Side), key=st.sampled_from(KEYS), data=st.data())
    def edit(self, side: Side, key: str, data: st.DataObject) -> None:
        app = self.apps[side]
        old = app.rows.get(key)
        if old is None:
            return
        new = list(old)
        for i in data.draw(st.sets(st.sampled_from((1, 2, 3)), min_size=1)):
            new[i] = data.draw(st.sampled_from(VALUES[i]))
        if new == old:
            return
        app.rows[key] = new
        self._log(side, "U", key, list(old), list(new))

    @rule(side=st.sampled_from(Side), key=st.sampled_from(KEYS))
    def delete(self, side: Side, key: str) -> None:
        app = self.apps[side]
        old = app.rows.pop(key, None)
        if old is not None:
            self._log(side, "D", key, list(old), None)

    # -- the engine ---------------------------------------------------------------------

    def _message(self, side: Side, rows: list[Any], **batch: Any) -> bytes:
        return encode(
            "changes",
            side=int(side),
            snap=batch.get("snap", False),
            final=batch.get("final", False),
            to=batch["to"],
            rows=rows,
            errors=[],
            notes=[],
            acked=0,
            **{"from": self.runner.cursors[side]},
        )

    @rule(side=st.sampled_from(Side), n=st.integers(1, 4))
    def deliver(self, side: Side, n: int) -> None:
        app = self.apps[side]
        start = self.runner.cursors[side]
        rows = app.log[start : start + n]
        if not rows:
            return
        for row in rows:
            event = self.pending_events[side][row[0] - 1]
            if event is not None:
                self.merged.setdefault(row[2][0], set()).add(event)
        self.runner.apply(side, self._message(side, rows, to=rows[-1][0]))

    @precondition(lambda self: self.apps[0].queue or self.apps[1].queue)
    @rule(side=st.sampled_from(Side))
    def land_writes(self, side: Side) -> None:
        if self.apps[side].queue:
            self.land(side)

    @rule(side=st.sampled_from(Side))
    def flush(self, side: Side) -> None:
        self.runner.flush(side)

    @rule()
    def checkpoint(self) -> None:
        self.runner.checkpoint()

    @rule()
    def restart(self) -> None:
        """The partition dies (its writes in flight stay queued; some may land later, unless
        fenced) and a new incarnation rebuilds from the store. Every batch it merged is in
        its WAL: it merges nothing again and loses nothing."""
        SEEN["restart with writes in flight" if self.runner.inflight else "restart"] += 1
        self.runner = self._runner()

    @precondition(lambda self: self.runner.inflight is not None)
    @rule()
    def crash_while_writing(self) -> None:
        """The partition dies while its last batch's writes are under way."""
        self.restart()

    # -- the end ------------------------------------------------------------------------

    def drain(self) -> None:
        for _ in range(50):
            moved = False
            for side in Side:
                start = self.runner.cursors[side]
                if start < len(self.apps[side].log):
                    self.deliver(side, len(self.apps[side].log) - start)
                    moved = True
            for side in Side:
                self.runner.flush(side)
                while self.apps[side].queue:
                    self.land(side)
                    moved = True
            if not moved:
                return
        raise AssertionError("the partition never went quiet")

    def check(self) -> None:
        left, right = (app.rows for app in self.apps)
        for key in KEYS:
            merged = self.runner.record((key,))
            expected = self.expected(key)
            if expected is None:
                assert merged is None, (key, merged)
                assert key not in left and key not in right, (key, left, right)
                continue
            assert merged is not None, (key, expected)
            for i, name in enumerate(FIELDS):
                if i in expected:
                    assert merged.get(name) == expected[i], (key, name, merged, expected)
            assert key in left and key in right, (key, left, right)
            rows = (left[key], right[key])
            for i, name in enumerate(FIELDS):
                if name not in merged:
                    continue
                if self.cmap.both[i]:
                    assert rows[0][i] == rows[1][i] == merged[name], (key, name, rows, merged)
                else:  # its source holds it; the other side keeps an edit of its own
                    for side in Side:
                        if i in self.cmap.sourced[side]:
                            assert rows[side][i] == merged[name], (key, name, rows, merged)

    def expected(self, key: str) -> dict[int, Any] | None:
        """What the reference model says the record must be (None: deleted)."""
        events = [e for e in self.events if e.key == key]
        if not events:
            return None

        def maximal(candidates: list[Event]) -> list[Event]:
            return [e for e in candidates if not any(e.id in o.past for o in candidates)]

        last = maximal(events)
        if not max(last, key=lambda e: e.stamp).exists:
            return None
        values: dict[int, Any] = {}
        for i in range(len(FIELDS)):
            assigned = maximal([e for e in events if i in e.assigns])
            if assigned:
                values[i] = self.choose(i, assigned).assigns[i]
        return values

    def choose(self, field: int, concurrent: list[Event]) -> Event:
        """The policy's pick among concurrent assignments (at most one per application)."""
        latest = max(concurrent, key=lambda e: e.stamp)
        if len({repr(e.assigns[field]) for e in concurrent}) == 1:
            return latest
        prefer = self.policy.get("prefer")
        preferred = [e for e in concurrent if APPS[e.side] == prefer]
        return preferred[0] if preferred else latest


def machine(policy: Any) -> type[RuleBasedStateMachine]:
    return type(f"Model_{policy}", (Model,), {"policy": policy})


MODEL_SETTINGS = settings(
    # CI runs a bounded number; DUALSYNC_MODEL_EXAMPLES=5000 searches longer by hand
    max_examples=int(os.environ.get("DUALSYNC_MODEL_EXAMPLES", "150")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize(
    "policy", [{"prefer": "finance"}, {"prefer": "crm"}, {"policy": "lww"}], ids=str
)
def test_both_sides_converge_to_what_really_happened(policy: Any) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    SEEN.clear()
    run_state_machine_as_test(machine(policy), settings=MODEL_SETTINGS)
    # the runs exercised what they are about
    for case in (
        "concurrent change",
        "replace",
        "restart with writes in flight",
        "write landing after an unread change",
    ):
        assert SEEN[case] >= 5, (case, sorted(SEEN.items()))


class _Draws:
    """Replays the values a hypothesis ``data()`` drew."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def draw(self, strategy: Any) -> Any:
        return self.values.pop(0)


def test_regression_a_write_landing_after_a_delete_then_an_identical_replace() -> None:
    """Found by hypothesis (lww) on 2026-12-04; replayed step by step. Our upsert lands on
    crm after crm's own delete, then crm REPLACEs the row with the same values: the merged
    record is deleted (crm's delete is the later), and crm, holding a row of the deleted
    record's values, must be written the delete (it was taken for holding the merged record)."""
    state = machine({"policy": "lww"})()
    state.start()
    state.insert(side=R, key="A1", data=_Draws("n1", 100, "p1"))
    state.delete(side=R, key="A1")
    state.insert(side=L, key="A1", data=_Draws("n1", 100, "p1"))
    state.insert(side=R, key="A1", data=_Draws("n1", 100, "p2"))
    state.delete(side=R, key="A1")
    state.deliver(n=1, side=L)
    state.deliver(n=3, side=R)
    state.checkpoint()
    state.insert(side=R, key="A1", data=_Draws("n1", 100, "p2"))
    state.teardown()
