"""Writer actor: applies write batches to one side of one map, one transaction per batch."""

from __future__ import annotations

import os
from typing import Any

from actors.tuning import tune_gc
from engine.codec import decode, encode
from engine.connectors import WriteOp, open_connector
from engine.ids import Side
from engine.maps import EntityMap


class Writer:
    def __init__(self, spec: dict[str, Any], side: int, app_url: str) -> None:
        tune_gc()
        self.side = Side(side)
        cmap = EntityMap.model_validate(spec).compile()
        self.capture = cmap.capture(self.side)
        self.connector = open_connector(cmap.apps[self.side], app_url)
        self.batches = 0
        self.records = 0
        self.failures = 0

    def ready(self) -> bool:
        return True

    def apply(self, payload: bytes) -> bytes:
        """Write one ``writes`` message; answer with a ``result`` message."""
        msg = decode(payload, "writes")
        ops = [WriteOp(op, tuple(key), values) for op, key, values in msg["rows"]]
        failures, position = self.connector.apply(self.capture, ops)
        columns = self.capture.columns
        self.batches += 1
        self.records += len(ops) - len(failures)
        self.failures += len(failures)
        return encode(
            "result",
            position=position,
            errors=[
                [f.row, None if f.column is None else columns.index(f.column), f.message]
                for f in failures
            ],
        )

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "batches": self.batches,
            "records": self.records,
            "failures": self.failures,
        }
