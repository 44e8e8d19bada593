"""``python -m bench merge``: field merges per second of the conflict core, next to pycrdt.

Workload: ``--records`` records of ``--fields`` fields; two replicas (``finance`` and ``crm``)
make ``--updates`` updates in total (half each, interleaved) to random (record, field) pairs
drawn from a seeded generator. Then replica B is merged into replica A.

- dualsync: each update is an `Edit` of one field stamped by the replica's `HybridClock`
  (it overwrites the replica's own previous assignment of that field; the replicas never saw
  each other's), applied with `Record.apply` to the replica's records; the merge joins every
  record of B into A's with `Record.join`.
- pycrdt (the reference): one `Doc` per replica with a root `Map` per record; the same updates
  are set in transactions of ``--txn`` updates; the merge is ``A.apply_update(B.get_update(
  A.get_state()))``.

Each phase runs ``--repeat`` times on fresh replicas and the best time counts. Prints, each on
its own line: the rate of each phase for both (apply: updates of both replicas per second;
merge: updates of B brought into A per second), the ratio dualsync/pycrdt for each phase, and
whether both converged (merging in the other order gives the same records). Returns 1 if
either did not converge.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable
from typing import Any

from conflict import BoundedClock, Edit, Origins, Record

ORIGINS = ("finance", "crm")
EPOCH_MS = 1_700_000_000_000

Update = tuple[int, int, int]
"""(record index, field index, value)."""


def workload(records: int, fields: int, updates: int, seed: int) -> tuple[list[Update], ...]:
    """The updates of each replica, in the order it made them (interleaved in time)."""
    rng = random.Random(seed)
    per_replica: tuple[list[Update], ...] = tuple([] for _ in ORIGINS)
    for k in range(updates):
        per_replica[k % len(ORIGINS)].append(
            (rng.randrange(records), rng.randrange(fields), rng.randrange(1_000_000))
        )
    return per_replica


def as_edits(origin: str, updates: list[Update]) -> list[tuple[int, Edit]]:
    """One `Edit` per update, stamped by the replica's clock. It saw nothing of the other
    replica (an empty view); its own earlier edits it always saw."""
    clock = BoundedClock(Origins(ORIGINS).rank(origin))
    edits = []
    for k, (record, field, value) in enumerate(updates):
        # the k-th update of each replica is stamped at ms k: the two replicas' stamps
        # interleave, and ties break on the origin
        ts = clock.now(EPOCH_MS + k)
        edits.append((record, Edit(ts, (), ((field, value),))))
    return edits


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` takes.

    NOTE: collects and freezes the heap first, as partitions do (`actors.tuning`), so that
    the collector does not walk the prepared workload over and over during the measurement.
    """
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.unfreeze()


def bench_dualsync(
    records: int, fields: int, edits: list[list[tuple[int, Edit]]]
) -> tuple[float, float, int, bool]:
    """(apply seconds, join seconds, fields holding concurrent values after it, converged)."""
    states = [[Record(fields, len(ORIGINS)) for _ in range(records)] for _ in ORIGINS]

    def apply_all() -> None:
        for replica, replica_edits in zip(states, edits, strict=True):
            for record, edit in replica_edits:
                replica[record].apply(edit)

    apply_s = timed(apply_all)
    a, b = states
    a_before = [s.copy() for s in a]

    def join_all() -> None:
        for mine, theirs in zip(a, b, strict=True):
            mine.join(theirs)

    join_s = timed(join_all)
    converged = True
    for joined, theirs, mine in zip(a, b, a_before, strict=True):
        other_way = theirs.copy()
        other_way.join(mine)
        if other_way != joined:
            converged = False
            break
    concurrent = sum(len(state.multi or ()) for state in a)
    return apply_s, join_s, concurrent, converged


def bench_pycrdt(
    records: int, names: list[str], per_replica: tuple[list[Update], ...], txn: int
) -> tuple[float, float, bool]:
    """(apply seconds, merge seconds, converged)."""
    from pycrdt import Doc, Map

    # NOTE: a root Map per record, not a Map of Maps: two replicas that each create the
    # nested Map of a record would make concurrent values of the outer key, and one replica's
    # whole record would be lost. Root types of the same name are the same shared type.
    docs: list[Any] = [Doc(client_id=i + 1) for i in range(len(ORIGINS))]
    maps = [[doc.get(f"r{r}", type=Map) for r in range(records)] for doc in docs]

    def apply_all() -> None:
        for doc, replica_maps, updates in zip(docs, maps, per_replica, strict=True):
            for lo in range(0, len(updates), txn):
                with doc.transaction():
                    for record, field, value in updates[lo : lo + txn]:
                        replica_maps[record][names[field]] = value

    apply_s = timed(apply_all)
    a, b = docs

    def merge() -> None:
        a.apply_update(b.get_update(a.get_state()))

    merge_s = timed(merge)
    b.apply_update(a.get_update(b.get_state()))
    converged = all(
        mine.to_py() == theirs.to_py() for mine, theirs in zip(maps[0], maps[1], strict=True)
    )
    return apply_s, merge_s, converged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench merge", description=__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--updates", type=int, default=200_000, help="in total, both replicas")
    parser.add_argument("--txn", type=int, default=1_000, help="pycrdt updates per transaction")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best time counts")
    args = parser.parse_args(argv)
    if min(args.records, args.fields, args.updates, args.txn, args.repeat) < 1:
        parser.error("--records, --fields, --updates, --txn and --repeat must be at least 1")

    names = [f"f{i}" for i in range(args.fields)]
    per_replica = workload(args.records, args.fields, args.updates, args.seed)
    merged = len(per_replica[1])  # the updates of B that the merge brings into A
    print(
        f"workload: {args.records:,} records x {args.fields} fields, {args.updates:,} updates "
        f"({', '.join(f'{o} {len(u):,}' for o, u in zip(ORIGINS, per_replica, strict=True))}), "
        f"seed {args.seed}"
    )

    edits = [as_edits(o, u) for o, u in zip(ORIGINS, per_replica, strict=True)]
    # Best of --repeat runs: the machine may be busy with other work.
    d_apply = d_join = p_apply = p_merge = float("inf")
    for _ in range(args.repeat):
        apply_s, join_s, d_concurrent, d_ok = bench_dualsync(args.records, args.fields, edits)
        d_apply, d_join = min(d_apply, apply_s), min(d_join, join_s)
        apply_s, merge_s, p_ok = bench_pycrdt(args.records, names, per_replica, args.txn)
        p_apply, p_merge = min(p_apply, apply_s), min(p_merge, merge_s)
        if not (d_ok and p_ok):
            break

    figures = [
        ("dualsync apply (Record.apply)", args.updates / d_apply, "field merges/s"),
        ("dualsync merge (Record.join)", merged / d_join, "field merges/s"),
        ("pycrdt apply (Map set, transactions)", args.updates / p_apply, "updates/s"),
        ("pycrdt merge (get_update/apply_update)", merged / p_merge, "updates/s"),
    ]
    for label, rate, unit in figures:
        print(f"{label + ':':42} {rate:12,.0f} {unit}")
    # Equal counts on both sides: the ratio of rates is the inverse ratio of times.
    print(f"{'ratio apply dualsync/pycrdt:':42} {p_apply / d_apply:12.2f}")
    print(f"{'ratio merge dualsync/pycrdt:':42} {p_merge / d_join:12.2f}")
    print(f"{'fields left with concurrent values:':42} {d_concurrent:12,}")
    print(f"{'converged:':42} dualsync {'yes' if d_ok else 'NO'}, pycrdt {'yes' if p_ok else 'NO'}")
    return 0 if d_ok and p_ok else 1
