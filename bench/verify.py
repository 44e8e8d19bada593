"""``python -m bench verify [--rows 1000000] [--left sqlite] [--right sqlite]``: `verify` speed.

Two applications hold the same ``items`` table (the 5-field table of ``python -m bench e2e``)
of ``--rows`` rows, except for a few differences made by hand: rows missing on each side and
rows with a field changed. `engine.verify.verify` compares them through the map (no Ray:
the comparison runs in this process, as ``dualsync verify`` does). Prints, one a line:

- the baseline, measured in the same run: a plain read of both tables (``SELECT *`` through
  the bench's own connections, rows kept), in rows per second (rows of one side);
- verify's rate in records per second and its time, with the ratio to the baseline;
- whether it found exactly the differences made, and whether the target was met: 1M rows
  verify in at most `TARGET_SECONDS` (and every difference is found).

``--runs`` repeats both measurements; the medians count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.apps import TABLE, BenchApp, open_app
from bench.e2e import MAP

TARGET_SECONDS = 5.0  # for 1,000,000 rows on this 2-core machine
CHUNK = 100_000


def fill(app: BenchApp, rows: int, skip: set[int]) -> None:
    for lo in range(1, rows + 1, CHUNK):
        app.insert(
            [
                (i, f"item {i}", 0, i * 0.25, 0)
                for i in range(lo, min(rows, lo + CHUNK - 1) + 1)
                if i not in skip
            ]
        )


def raw_read(a: BenchApp, b: BenchApp) -> float:
    start = time.perf_counter()
    left, right = a.rows(), b.rows()
    seconds = time.perf_counter() - start
    assert left and right
    return len(left) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench verify", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--left", default="sqlite", help="sqlite, or a server URL")
    parser.add_argument("--right", default="sqlite", help="sqlite, or a server URL")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)

    from engine.connectors import open_connector
    from engine.ids import Side
    from engine.maps import load_map
    from engine.verify import verify

    rows = args.rows
    only_a = {rows // 3, rows // 2}
    only_b = {rows // 5}
    changed = {rows // 7, rows // 11 + 1, rows - 1}
    cmap = load_map(MAP).compile()
    with tempfile.TemporaryDirectory(prefix="dualsync-verify-") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        a = open_app(args.left, root, "a")
        b = open_app(args.right, root, "b")
        print(f"A: {a.url.split('?')[0]}  B: {b.url.split('?')[0]}  {rows:,} rows")
        try:
            fill(a, rows, only_b)
            fill(b, rows, only_a)
            for i in changed:
                b.execute(f"UPDATE {TABLE} SET name = {b.mark} WHERE id = {b.mark}", ("x", i))
            left = open_connector("a", a.url)
            right = open_connector("b", b.url)
            left.prepare(cmap.capture(Side.LEFT))
            right.prepare(cmap.capture(Side.RIGHT))
            raws, times, reports = [], [], []
            for _ in range(args.runs):
                raws.append(raw_read(a, b))
                report = verify(cmap, left, right)
                times.append(report.seconds)
                reports.append(report)
            left.close()
            right.close()
        finally:
            a.close()
            b.close()
    raw = statistics.median(raws)
    seconds = statistics.median(times)
    rate = rows / seconds
    print(
        f"raw read of both tables (baseline):  {raw:12,.0f} rows/s"
        f"   (median of {', '.join(f'{x:,.0f}' for x in raws)})"
    )
    print(
        f"verify:                              {rate:12,.0f} records/s  {seconds:6.2f} s"
        f"   ratio {rate / raw:5.2f}   (median of {', '.join(f'{t:.2f}' for t in times)} s)"
    )
    report = reports[-1]
    found = (
        {k[0] for k in report.only_left} == only_a
        and {k[0] for k in report.only_right} == only_b
        and {d.key[0] for d in report.differing} == changed
        and all(set(d.fields) == {"name"} for d in report.differing)
    )
    print(
        f"differences found: {report.only_left_count} only in A, {report.only_right_count}"
        f" only in B, {report.differing_count} differing: {'exact' if found else 'WRONG'}"
    )
    budget = TARGET_SECONDS * rows / 1_000_000
    ok = found and seconds <= budget
    print(f"target: {rows:,} rows in <= {budget:.1f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1
