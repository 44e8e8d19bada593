"""``python -m bench memory [--rows 1000000,4000000]``: memory of the engine as tables grow.

For each size: a SQLite table A of that many rows (the 5-field ``items`` table of
``python -m bench e2e``) and an empty B; a fresh engine (embedded Ray) syncs A to B (the
initial sync), then ``--updates`` changes to rows spread over the whole table (so most find
their record on disk, not in the cache). Meanwhile the proportional set size (PSS: shared
pages counted once) of every engine process (Ray's own and every actor: all processes this
one started) is sampled. Prints, each on its own line:

- per size: the engine's idle PSS before the map plays (the baseline, measured in the same
  run: Ray's own processes and the idle actors, about 700 MiB here whatever the table), its
  peak, and bytes per record: what the peak adds to the baseline, over the records;
- the in-memory cost of one cached record, measured with tracemalloc on the same rows;
- the ratio of the peaks (largest size over smallest), and whether the targets were met:
  at most 800 bytes per record (peak above idle over records, every size) and the largest
  peak at most 1.3 times the smallest.

Bytes per record leave out the idle baseline: it is a constant of Ray, not a cost of the
records (peak over records is printed too: at 1M rows the baseline alone is 730 bytes).

Linux only (it reads /proc).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

TARGET_BYTES = 800
TARGET_GROWTH = 1.3
COLUMNS = ("id", "name", "qty", "price", "stamp")
MAP = {
    "name": "items",
    "left": {"app": "a", "entity": "items", "key": ["id"]},
    "right": {"app": "b", "entity": "items", "key": ["id"]},
    "fields": [{"left": c, "right": c} for c in COLUMNS],
}


def descendants(pid: int) -> list[int]:
    """Every process started (directly or not) by ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces: the parent pid follows its ")"
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue  # gone meanwhile
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


class Sampler:
    """Samples the PSS of this process's descendants every ``every`` s, keeps the peak."""

    def __init__(self, every: float = 0.25) -> None:
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        import os

        return pss_bytes(descendants(os.getpid()))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def make_table(path: Path, rows: int) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL,"
        " price REAL, stamp INTEGER NOT NULL DEFAULT 0)"
    )
    return con


def fill(con: sqlite3.Connection, rows: int) -> None:
    chunk = 100_000
    for lo in range(1, rows + 1, chunk):
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO items VALUES (?, ?, 0, ?, 0)",
            ((i, f"item {i}", i * 0.25) for i in range(lo, min(rows, lo + chunk - 1) + 1)),
        )
        con.execute("COMMIT")


def count(con: sqlite3.Connection) -> int:
    return int(con.execute("SELECT count(*) FROM items").fetchone()[0])


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.5)


def run_size(rows: int, updates: int, partitions: int, root: Path) -> tuple[int, int, float]:
    """(baseline PSS, peak PSS, seconds) of syncing a table of ``rows`` rows."""
    from engine import SyncEngine

    root.mkdir(parents=True, exist_ok=True)
    a = make_table(root / "a.db", rows)
    b = make_table(root / "b.db", rows)
    fill(a, rows)
    start = time.perf_counter()
    eng = SyncEngine.start(state_dir=root / "state", partitions=partitions)
    try:
        eng.add_app("a", f"sqlite:///{root / 'a.db'}")
        eng.add_app("b", f"sqlite:///{root / 'b.db'}")
        eng.submit_map(MAP)
        sampler = Sampler()
        baseline = sampler.now()
        with sampler:
            eng.play("items")
            wait_for(lambda: count(b) == rows, 3_600, "initial sync")
            eng.wait_idle(timeout=600)
            rng = random.Random(rows)
            picked = [(rng.randrange(1, rows + 1),) for _ in range(updates)]
            for lo in range(0, updates, 1_000):
                a.execute("BEGIN")
                a.executemany(
                    "UPDATE items SET qty = qty + 1 WHERE id = ?", picked[lo : lo + 1_000]
                )
                a.execute("COMMIT")
            total = sum(q for (q,) in a.execute("SELECT qty FROM items"))
            wait_for(
                lambda: b.execute("SELECT sum(qty) FROM items").fetchone()[0] == total,
                3_600,
                "live sync",
            )
            eng.wait_idle(timeout=600)
        return baseline, sampler.peak, time.perf_counter() - start
    finally:
        eng.stop()
        a.close()
        b.close()


def record_bytes(rows: int = 100_000) -> float:
    """Bytes one cached record costs in a partition (tracemalloc), for the bench table."""
    from conflict import BoundedClock, Origins
    from engine.ids import Side
    from engine.maps import load_map
    from engine.pipeline import Change, PartitionLogic

    cmap = load_map(MAP).compile()
    clock = BoundedClock(Origins(list(cmap.apps)).rank("a"))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    logic = PartitionLogic(cmap, live=True, cache_records=rows)
    for side in Side:  # both sides past an empty initial snapshot
        logic.ingest(side, [], 0, 0)
    batches = [
        [
            Change(
                i, "I", (i,), clock.now(1_700_000_000_000), None, [i, f"item {i}", 0, i * 0.25, 0]
            )
            for i in range(lo, lo + 5_000)
        ]
        for lo in range(1, rows + 1, 5_000)
    ]
    for batch in batches:
        out = logic.ingest(Side.LEFT, batch, 0, batch[-1].seq)
        logic.confirm(Side.RIGHT, out.writes[Side.RIGHT], 0, [], 0)
    del batches, batch, out
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(logic.cache) == rows
    return (after - before) / rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__)
    parser.add_argument("--rows", default="1000000,4000000", help="table sizes, comma separated")
    parser.add_argument("--updates", type=int, default=100_000, help="live changes per size")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.rows.split(",")]

    peaks: dict[int, int] = {}
    ok = True
    with tempfile.TemporaryDirectory(prefix="dualsync-memory-") as tmp:
        root = args.dir or Path(tmp)
        for rows in sizes:
            baseline, peak, seconds = run_size(
                rows, args.updates, args.partitions, root / str(rows)
            )
            peaks[rows] = peak
            per = (peak - baseline) / rows
            ok = ok and per <= TARGET_BYTES
            print(
                f"{rows:>10,} rows: engine idle {baseline / 2**20:7.1f} MiB, peak "
                f"{peak / 2**20:7.1f} MiB, {per:6.0f} bytes/record above idle "
                f"({peak / rows:5.0f} with it), {seconds:6.1f} s"
            )
    print(f"cached record in a partition (tracemalloc):   {record_bytes():6.0f} bytes")
    small, large = min(sizes), max(sizes)
    growth = peaks[large] / peaks[small]
    print(f"peak {large:,} / peak {small:,} rows:            {growth:6.2f}")
    ok_growth = growth <= TARGET_GROWTH
    print(
        f"targets: <= {TARGET_BYTES} bytes/record {'met' if ok else 'MISSED'}; "
        f"growth <= {TARGET_GROWTH} {'met' if ok_growth else 'MISSED'}"
    )
    return 0 if ok and ok_growth else 1
