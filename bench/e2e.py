"""``python -m bench e2e [--left URL] [--right URL]``: live sync against a raw copy.

Two applications A and B (two SQLite files by default; ``--left``/``--right`` take a
``postgresql://`` or ``mysql://`` server URL, where a fresh schema or database is used and
dropped). Prints, each on its own line:

- the raw copy rate: read every row of A and upsert it into a table of B with one
  ``executemany`` in one transaction (what the two databases allow: the limit);
- the initial sync rate of the same rows through the engine;
- the live sync throughput: ``--changes`` updates committed in A as fast as possible, timed
  from the first commit until every one of them is visible in B;
- the commit-to-visible latency (p50, p99) at a steady ``--rate`` changes per second;
- the ratio of live throughput to the raw copy rate, and whether the targets were met.

Raw copy (before the engine starts) and live sync are measured ``--runs`` times each; the
figures are the medians, and the ratio theirs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.apps import COLUMNS, TABLE, BenchApp, SqliteApp, open_app

MAP = {
    "name": "items",
    "left": {"app": "a", "entity": TABLE, "key": ["id"]},
    "right": {"app": "b", "entity": TABLE, "key": ["id"]},
    "fields": [{"left": c, "right": c} for c in COLUMNS],
}
TARGET_LIVE = 50_000  # changes/s, one way, on the SQLite pair
TARGET_P99_MS = 100.0


def raw_copy(a: BenchApp, b: BenchApp) -> float:
    """Rows per second of a plain read + executemany upsert, one transaction, into an
    emptied table."""
    b.execute(f"DELETE FROM {TABLE}_copy")
    start = time.perf_counter()
    rows = a.rows()
    b.upsert(rows, f"{TABLE}_copy")
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


def last_commit_when(app: BenchApp, done: Any, timeout: float) -> float:
    """The perf_counter time ``app`` reached ``done()``.

    NOTE: on SQLite, polls ``PRAGMA data_version`` (free) every 2 ms and runs ``done()`` (a
    count, not free) only once the database has been quiet for 50 ms, and answers with the
    time of the last commit, so that measuring does not eat the CPU being measured. A server
    is asked ``done()`` every 20 ms (an indexed count).
    """
    if not isinstance(app, SqliteApp):
        return wait_for(done, timeout, every=0.02)
    deadline = time.perf_counter() + timeout
    version = app.data_version()
    last_change = time.perf_counter()
    while time.perf_counter() < deadline:
        now = app.data_version()
        t = time.perf_counter()
        if now != version:
            version, last_change = now, t
        elif t - last_change >= 0.05 and done():
            return last_change
        time.sleep(0.002)
    raise TimeoutError(f"not reached within {timeout} s")


def live_throughput(a: BenchApp, b: BenchApp, n: int, rows: int, base: int = 0) -> float:
    """Commit ``n`` updates into A (batches of 1,000 per transaction), time until all in B.

    Every row holds qty ``base`` before (``n`` a multiple of ``rows`` after a first run)."""
    batch = 1000
    start = time.perf_counter()
    for lo in range(0, n, batch):
        a.bump([(i % rows) + 1 for i in range(lo, min(n, lo + batch))])
    rounds = base + n // rows  # every row got this many updates, the first n % rows one more

    def done() -> bool:
        if n % rows:
            return b.count_qty(rounds + 1) == n % rows
        return b.count_qty(rounds) == rows

    end = last_commit_when(b, done, timeout=600)
    return n / (end - start)


def latency(a: BenchApp, b: BenchApp, rate: int, seconds: float, rows: int) -> list[float]:
    """Commit ``rate`` changes/s into A for ``seconds``; return commit-to-visible ms.

    Each change stamps a row with its commit time (ns); a watcher thread polls B every ms for
    stamps it has not seen. Partitions write in parallel, so stamps need not appear in order:
    the watcher looks at a sliding window of the last 2 s of stamps.
    """
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    seen: dict[int, float] = {}
    stop = threading.Event()
    begin = time.time_ns()

    def watch() -> None:
        known: dict[int, int] = {}
        while not stop.is_set():
            found = b.stamps_since(max(begin, time.time_ns() - 2_000_000_000))
            now = time.time_ns()
            for row_id, stamp in found:
                if known.get(row_id) != stamp:
                    known[row_id] = stamp
                    seen[stamp] = (now - stamp) / 1e6
            time.sleep(0.001)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    i = 0
    sent = 0
    start = time.perf_counter()
    next_tick = start
    while time.perf_counter() - start < seconds:
        stamps = []
        for _ in range(per_tick):
            stamps.append((time.time_ns(), (i % rows) + 1))
            i += 1
        a.stamp(stamps)
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
    parser.add_argument("--left", default="sqlite", help="sqlite, or a server URL")
    parser.add_argument("--right", default="sqlite", help="sqlite, or a server URL")
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=1000, help="changes/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="raw copies and live runs (the medians count)",
    )
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)

    from engine import SyncEngine

    with tempfile.TemporaryDirectory(prefix="dualsync-bench-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = args.changes
        a = open_app(args.left, root, "a")
        b = open_app(args.right, root, "b")
        print(f"A: {a.url.split('?')[0]}  B: {b.url.split('?')[0]}")
        try:
            a.insert([(i, f"item {i}", 0, i * 0.25, 0) for i in range(1, rows + 1)])

            # NOTE: before the engine starts (its idle checkpoints would slow the copy down);
            # the median of several, as a shared machine's speed drifts.
            raws = [raw_copy(a, b) for _ in range(args.runs)]
            raw = statistics.median(raws)
            print(
                f"raw copy (read A + executemany upsert B): {raw:12,.0f} rows/s"
                f"   (median of {', '.join(f'{x:,.0f}' for x in raws)})"
            )

            eng = SyncEngine.start(state_dir=root / "state", partitions=args.partitions)
            try:
                eng.add_app("a", a.url)
                eng.add_app("b", b.url)
                eng.submit_map(MAP)
                start = time.perf_counter()
                eng.play("items")
                end = last_commit_when(b, lambda: len(b.rows()) == rows, 600)
                initial = rows / (end - start)
                eng.wait_idle(timeout=600)
                print(f"initial sync (A->B, {rows:,} rows):        {initial:12,.0f} rows/s")

                lives = []
                for r in range(args.runs):
                    lives.append(live_throughput(a, b, args.changes, rows, base=r))
                    eng.wait_idle(timeout=600)
                live = statistics.median(lives)
                ratio = live / raw
                print(
                    f"live sync A->B ({args.changes:,} changes):      {live:12,.0f} changes/s"
                    f"   (median of {', '.join(f'{x:,.0f}' for x in lives)})"
                )

                lat = latency(a, b, args.rate, args.seconds, rows)
                p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
                print(
                    f"latency at {args.rate:,} changes/s:          p50 {p50:7.1f} ms"
                    f"   p99 {p99:7.1f} ms   ({len(lat):,} samples)"
                )
                print(f"ratio live/raw copy:                     {ratio:12.3f}   (the medians')")
            finally:
                eng.stop()
        finally:
            a.close()
            b.close()
    ok_lat = p99 <= TARGET_P99_MS
    if args.left == args.right == "sqlite":
        ok_live = live >= TARGET_LIVE
        print(
            f"targets: live >= {TARGET_LIVE:,}/s {'met' if ok_live else 'MISSED'}; "
            f"p99 <= {TARGET_P99_MS:.0f} ms {'met' if ok_lat else 'MISSED'}"
        )
        return 0 if ok_live and ok_lat else 1
    print(f"target: p99 <= {TARGET_P99_MS:.0f} ms {'met' if ok_lat else 'MISSED'}")
    return 0 if ok_lat else 1
