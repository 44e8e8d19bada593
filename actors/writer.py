"""Writer actor: applies write batches to one side of one map, one transaction per batch.

Each batch comes from one partition (``writer``, e.g. ``customers/0``), with the partition's
incarnation (``epoch``) and the batch's number; the connector records the number, where the
batch landed and what it refused in the same transaction (a receipt). A restarted partition
asks for its last receipt (`Writer.receipt`), which also fences its earlier incarnation: a
batch of an older epoch still on its way is refused, so it cannot land after the restarted
partition decided it had not.
"""

from __future__ import annotations

import os
from typing import Any

from actors.tuning import tune_gc
from engine.codec import decode, encode
from engine.connectors import Receipt, WriteOp, open_connector
from engine.errors import EngineError
from engine.ids import Side
from engine.maps import EntityMap


class Writer:
    def __init__(self, spec: dict[str, Any], side: int, app_url: str) -> None:
        tune_gc()
        self.side = Side(side)
        cmap = EntityMap.model_validate(spec).compile()
        self.capture = cmap.capture(self.side)
        self.connector = open_connector(cmap.apps[self.side], app_url)
        self.fences: dict[str, int] = {}  # per partition: the lowest epoch still accepted
        self.batches = 0
        self.records = 0
        self.failures = 0

    def ready(self) -> bool:
        return True

    def apply(self, payload: bytes) -> bytes:
        """Write one ``writes`` message; answer with a ``result`` message."""
        msg = decode(payload, "writes")
        writer, epoch = msg["writer"], msg["epoch"]
        if epoch < self.fences.get(writer, 0):
            raise EngineError(
                f"refused a batch of {writer} epoch {epoch}: that partition restarted "
                f"(epoch {self.fences[writer]})"
            )
        make = tuple.__new__  # NOTE: not WriteOp._make: a Python-level call less per record
        ops = [
            make(WriteOp, (op, tuple(key), values, old if old is None else tuple(old)))
            for op, key, values, old in msg["rows"]
        ]
        failures, position = self.connector.apply(self.capture, ops, Receipt(writer, msg["number"]))
        self.batches += 1
        self.records += len(ops) - len(failures)
        self.failures += len(failures)
        return encode("result", position=position, errors=self._errors(failures))

    def receipt(self, writer: str, epoch: int) -> dict[str, Any] | None:
        """The last batch ``writer`` applied here (its number, position and refused rows);
        from now on batches of ``writer`` older than ``epoch`` are refused."""
        self.fences[writer] = max(self.fences.get(writer, 0), epoch)
        found = self.connector.last_receipt(self.capture, writer)
        if found is None:
            return None
        return {
            "number": found.number,
            "position": found.position,
            "errors": self._errors(found.failures),
        }

    def _errors(self, failures: Any) -> list[list[Any]]:
        columns = self.capture.columns
        return [
            [f.row, None if f.column is None else columns.index(f.column), f.message]
            + ([True] if f.duplicate else [])
            for f in failures
        ]

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "batches": self.batches,
            "records": self.records,
            "failures": self.failures,
        }
