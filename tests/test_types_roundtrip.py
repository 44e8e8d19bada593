"""Every canonical type travels SQLite -> PostgreSQL -> MariaDB -> HTTP -> SQLite unchanged.

Each hop reads the previous application's rows through its connector's snapshot and writes
them through the next connector, as the engine does; the values must come back equal.
"""

from __future__ import annotations

from pathlib import Path

from engine.connectors import WriteOp
from engine.values import Json

from contract_harness import COLUMNS, as_tuple, harnesses, sample

CHAIN = ("sqlite", "postgresql", "mysql", "http", "sqlite")


def test_every_type_survives_a_trip_through_every_connector(tmp_path: Path) -> None:
    nulls = {c: None for c in COLUMNS[2:]}
    rows = [
        sample(1),
        sample(2, name="", doc=Json(["a", 1, None, {"k": "ü😀"}])),
        sample(3, **nulls),
        sample(4, qty=-(2**31), price=sample(4)["price"] * -1, ratio=1e-300),
    ]
    found = harnesses()
    current = [as_tuple(r) for r in rows]
    opened = []
    try:
        for hop, name in enumerate(CHAIN):
            folder = tmp_path / f"{hop}-{name}"
            folder.mkdir()
            app = found[name](folder)
            opened.append(app)
            app.create()
            conn = app.connector(f"hop{hop}")
            try:
                cap = app.capture()
                conn.prepare(cap)
                ops = [WriteOp("I", (row[0],), dict(enumerate(row))) for row in current]
                assert conn.apply(cap, ops).failures == []
                _, chunks = conn.snapshot(cap, 3)
                current = sorted((row for chunk in chunks for row in chunk), key=lambda r: r[0])
            finally:
                conn.close()
            assert current == [as_tuple(r) for r in rows], f"changed by {name} (hop {hop})"
    finally:
        for app in opened:
            app.close()
