"""``python -m bench e2e``: live sync between two SQLite apps against a raw copy.

Prints, each on its own line:

- the raw copy rate: one ``executemany`` upsert of every row of A into a copy of B's table
  (what the hardware and SQLite allow, the limit);
- the initial sync rate of the same rows through the engine;
- the live sync throughput: ``--changes`` updates committed in A as fast as possible, timed
  from the first commit until every one of them is visible in B;
- the commit-to-visible latency (p50, p99) at a steady ``--rate`` changes per second;
- the ratio of live throughput to the raw copy rate, and whether the targets were met.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TABLE = "items"
SCHEMA = (
    f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL,"
    " price REAL, stamp INTEGER NOT NULL DEFAULT 0)"
)
MAP = {
    "name": "items",
    "left": {"app": "a", "entity": TABLE, "key": ["id"]},
    "right": {"app": "b", "entity": TABLE, "key": ["id"]},
    "fields": [{"left": c, "right": c} for c in ("id", "name", "qty", "price", "stamp")],
}
TARGET_LIVE = 50_000  # changes/s, one way
TARGET_P99_MS = 100.0


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    return con


def _create(path: Path) -> sqlite3.Connection:
    con = _connect(path)
    con.execute(SCHEMA)
    con.execute(f"CREATE INDEX {TABLE}_stamp ON {TABLE} (stamp)")
    return con


def raw_copy(src: sqlite3.Connection, dst: sqlite3.Connection) -> float:
    """Rows per second of a plain read + executemany upsert, one transaction."""
    start = time.perf_counter()
    rows = src.execute(f"SELECT id, name, qty, price, stamp FROM {TABLE}").fetchall()
    dst.execute("BEGIN")
    dst.executemany(
        f"INSERT INTO {TABLE} (id, name, qty, price, stamp) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, qty = excluded.qty, "
        "price = excluded.price, stamp = excluded.stamp",
        rows,
    )
    dst.execute("COMMIT")
    return len(rows) / (time.perf_counter() - start)


def wait_for(predicate: Any, timeout: float, every: float = 0.005) -> float:
    """Poll ``predicate`` until true; return the perf_counter time it became true."""
    deadline = time.perf_counter() + timeout
    while True:
        if predicate():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not reached within {timeout} s")
        time.sleep(every)


def last_commit_when(con: sqlite3.Connection, done: Any, timeout: float) -> float:
    """The perf_counter time of the last commit into ``con``'s database before ``done()``.

    NOTE: polls ``PRAGMA data_version`` (free) every 2 ms and runs ``done()`` (a full count,
    not free) only once the database has been quiet for 50 ms, so that the measuring does
    not eat the CPU the engine is being measured on.
    """
    deadline = time.perf_counter() + timeout
    version = con.execute("PRAGMA data_version").fetchone()[0]
    last_change = time.perf_counter()
    while time.perf_counter() < deadline:
        now = con.execute("PRAGMA data_version").fetchone()[0]
        t = time.perf_counter()
        if now != version:
            version, last_change = now, t
        elif t - last_change >= 0.05 and done():
            return last_change
        time.sleep(0.002)
    raise TimeoutError(f"not reached within {timeout} s")


def live_throughput(a: sqlite3.Connection, b: sqlite3.Connection, n: int, rows: int) -> float:
    """Commit ``n`` updates into A (batches of 1,000 per transaction), time until all in B."""
    batch = 1000
    start = time.perf_counter()
    for lo in range(0, n, batch):
        a.execute("BEGIN")
        a.executemany(
            f"UPDATE {TABLE} SET qty = qty + 1 WHERE id = ?",
            [((i % rows) + 1,) for i in range(lo, min(n, lo + batch))],
        )
        a.execute("COMMIT")
    rounds = n // rows  # every row got this many updates, the first n % rows one more
    expected = f"SELECT count(*) FROM {TABLE} WHERE qty = ?"

    def done() -> bool:
        if n % rows:
            return b.execute(expected, (rounds + 1,)).fetchone()[0] == n % rows  # type: ignore[no-any-return]
        return b.execute(expected, (rounds,)).fetchone()[0] == rows  # type: ignore[no-any-return]

    end = last_commit_when(b, done, timeout=600)
    return n / (end - start)


def latency(
    a: sqlite3.Connection, b: sqlite3.Connection, rate: int, seconds: float, rows: int
) -> list[float]:
    """Commit ``rate`` changes/s into A for ``seconds``; return commit-to-visible ms.

    Each change stamps a row with its commit time (ns); a watcher thread polls B every ms for
    stamps it has not seen. Partitions write in parallel, so stamps need not appear in order:
    the watcher looks at a sliding window of the last 2 s of stamps.
    """
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    seen: dict[int, float] = {}
    stop = threading.Event()
    path = Path(b.execute("PRAGMA database_list").fetchone()[2])
    begin = time.time_ns()

    def watch() -> None:
        watcher = _connect(path)
        known: dict[int, int] = {}
        while not stop.is_set():
            low = max(begin, time.time_ns() - 2_000_000_000)
            found = watcher.execute(
                f"SELECT id, stamp FROM {TABLE} WHERE stamp > ?", (low,)
            ).fetchall()
            now = time.time_ns()
            for row_id, stamp in found:
                if known.get(row_id) != stamp:
                    known[row_id] = stamp
                    seen[stamp] = (now - stamp) / 1e6
            time.sleep(0.001)
        watcher.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    i = 0
    sent = 0
    start = time.perf_counter()
    next_tick = start
    while time.perf_counter() - start < seconds:
        a.execute("BEGIN")
        for _ in range(per_tick):
            a.execute(
                f"UPDATE {TABLE} SET stamp = ? WHERE id = ?", (time.time_ns(), (i % rows) + 1)
            )
            i += 1
        a.execute("COMMIT")
        sent += per_tick
        next_tick += tick
        time.sleep(max(0.0, next_tick - time.perf_counter()))
    try:
        wait_for(lambda: len(seen) >= sent, timeout=30)
    finally:
        stop.set()
        thread.join()
    return list(seen.values())


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench e2e", description=__doc__)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000, help="changes/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)

    from engine import SyncEngine

    with tempfile.TemporaryDirectory(prefix="dualsync-bench-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = args.changes
        a, b, copy = (_create(root / f"{n}.db") for n in ("a", "b", "copy"))
        a.execute("BEGIN")
        a.executemany(
            f"INSERT INTO {TABLE} (id, name, qty, price) VALUES (?, ?, 0, ?)",
            [(i, f"item {i}", i * 0.25) for i in range(1, rows + 1)],
        )
        a.execute("COMMIT")

        raw = raw_copy(a, copy)
        print(f"raw copy (executemany upsert A->B):    {raw:12,.0f} rows/s")

        eng = SyncEngine.start(state_dir=root / "state", partitions=args.partitions)
        try:
            eng.add_app("a", f"sqlite:///{root / 'a.db'}")
            eng.add_app("b", f"sqlite:///{root / 'b.db'}")
            eng.submit_map(MAP)
            start = time.perf_counter()
            eng.play("items")
            end = last_commit_when(
                b, lambda: b.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == rows, 600
            )
            initial = rows / (end - start)
            eng.wait_idle(timeout=600)
            print(f"initial sync (A->B, {rows:,} rows):   {initial:12,.0f} rows/s")

            live = live_throughput(a, b, args.changes, rows)
            eng.wait_idle(timeout=600)
            print(f"live sync A->B ({args.changes:,} changes):   {live:12,.0f} changes/s")

            lat = latency(a, b, args.rate, args.seconds, rows)
            p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
            print(
                f"latency at {args.rate:,} changes/s:        p50 {p50:7.1f} ms   p99 {p99:7.1f} ms"
                f"   ({len(lat):,} samples)"
            )
            print(f"ratio live/raw copy:                  {live / raw:12.3f}")
            ok_live, ok_lat = live >= TARGET_LIVE, p99 <= TARGET_P99_MS
            print(
                f"targets: live >= {TARGET_LIVE:,}/s {'met' if ok_live else 'MISSED'}; "
                f"p99 <= {TARGET_P99_MS:.0f} ms {'met' if ok_lat else 'MISSED'}"
            )
        finally:
            eng.stop()
    return 0 if ok_live and ok_lat else 1
