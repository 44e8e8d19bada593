"""The partition runner and its store: records live on disk, a restart does not load them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conflict import Origins, pack
from engine.codec import decode, encode
from engine.ids import Side
from engine.maps import load_map
from engine.partition import PartitionRunner
from engine.store import PartitionStore

from conftest import CUSTOMERS

L, R = Side.LEFT, Side.RIGHT
ORIGINS = Origins(["finance", "crm"])
RECORDS = 3_000


class Landing:
    """A `WriterPort` whose batches land at once, at the next position of their side."""

    def __init__(self) -> None:
        self.receipts: dict[Side, dict[str, Any]] = {}
        self.rows: dict[Side, dict[Any, dict[int, Any]]] = {L: {}, R: {}}

    def submit(self, side: Side, payload: bytes) -> Any:
        msg = decode(payload, "writes")
        for _op, key, values, _old in msg["rows"]:
            self.rows[side].setdefault(key[0], {}).update(values)
        self.receipts[side] = {"number": msg["number"], "position": 0, "errors": []}
        return side

    def results(self, handles: list[Any]) -> list[bytes]:
        return [encode("result", position=0, errors=[]) for _ in handles]

    def receipt(self, side: Side, writer: str, epoch: int) -> dict[str, Any] | None:
        return self.receipts.get(side)


def message(runner: PartitionRunner, side: Side, rows: list[Any], to: int, **kw: Any) -> bytes:
    return encode(
        "changes",
        side=int(side),
        snap=kw.get("snap", False),
        final=kw.get("final", False),
        to=to,
        rows=rows,
        errors=[],
        notes=[],
        acked=0,
        **{"from": runner.cursors[side]},
    )


def runner(path: Path, writers: Landing, cache: int) -> PartitionRunner:
    r = PartitionRunner(
        load_map(CUSTOMERS).compile(),
        0,
        1,
        PartitionStore(path),
        writers,
        clock_ms=lambda: 2_000_000,
        cache_records=cache,
    )
    r.load()
    return r


def test_a_restarted_partition_loads_only_the_records_a_batch_touches(tmp_path: Path) -> None:
    path = tmp_path / "partition.sqlite"
    writers = Landing()
    first = runner(path, writers, cache=RECORDS)
    for side in Side:
        first.apply(side, message(first, side, [], 0, snap=True, final=True))
    rows = [
        [
            i,
            "I",
            [f"K{i}"],
            pack(1_000 + i, 0, ORIGINS.rank("finance")),
            None,
            [f"K{i}", f"name {i}", i, None],
        ]
        for i in range(1, RECORDS + 1)
    ]
    first.apply(L, message(first, L, rows, RECORDS))
    first.flush(L)
    first.checkpoint()
    assert len(writers.rows[R]) == RECORDS

    second = runner(path, writers, cache=10)
    # the checkpoint holds every record; none is in memory after the restart
    assert len(second.logic.cache) == 0
    assert second.logic.records == RECORDS
    edit = [
        [
            RECORDS + 1,
            "U",
            ["K7"],
            pack(9_000, 0, ORIGINS.rank("finance")),
            ["K7", "name 7", 7, None],
            ["K7", "renamed", 7, None],
        ]
    ]
    second.apply(L, message(second, L, edit, RECORDS + 1))
    second.flush(L)
    # the batch fetched its one record from the store, merged on top of it, wrote the change
    assert len(second.logic.cache) == 1
    assert writers.rows[R]["K7"][1] == "renamed"
    assert second.logic.values(("K7",)) == {
        "account": "K7",
        "name": "renamed",
        "credit_limit": 7,
        "phone": None,
    }
    # a record the batch did not touch is still read from disk when asked for
    assert second.logic.values(("K9",))["name"] == "name 9"  # type: ignore[index]
