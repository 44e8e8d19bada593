"""Partition actor: owns one hash range of a map's record keys.

A thin shell around `engine.partition.PartitionRunner` (the WAL, the replay, the receipts,
the checkpoints; see there): it reaches the writers through Ray, takes its lock for each
call, checkpoints when idle, and rebuilds the runner from the store when a call fails
midway (the next call finds it rebuilt, or rebuilds it).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from actors import ray_api
from actors.tuning import collect_all, settle_heap, tune_gc
from conflict import Resolver
from engine.ids import Side
from engine.maps import EntityMap
from engine.partition import PartitionRunner
from engine.pipeline import DEFAULT_CACHE_RECORDS
from engine.store import PartitionStore

CHECKPOINT_IDLE_S = 2.0  # a partition this long without a call checkpoints its WAL
CALL_TIMEOUT_S = 120.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class RayWriters:
    """The `engine.partition.WriterPort` of a partition: Ray calls to the writer actors."""

    def __init__(self, handles: list[Any]) -> None:
        self.handles = handles

    def submit(self, side: Side, payload: bytes) -> Any:
        return ray_api.call(self.handles[side], "apply", payload)

    def results(self, handles: list[Any]) -> list[bytes]:
        return ray_api.get(handles, timeout=CALL_TIMEOUT_S)  # type: ignore[no-any-return]

    def receipt(self, side: Side, writer: str, epoch: int) -> dict[str, Any] | None:
        return ray_api.get(  # type: ignore[no-any-return]
            ray_api.call(self.handles[side], "receipt", writer, epoch), timeout=CALL_TIMEOUT_S
        )


class Partition:
    def __init__(
        self,
        spec: dict[str, Any],
        index: int,
        partitions: int,
        state_path: str,
        writers: list[Any],
        resolvers: dict[str, Resolver] | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        tune_gc()
        options = options or {}
        self.index = index
        cmap = EntityMap.model_validate(spec).compile(resolvers)
        self.store = PartitionStore(Path(state_path))
        self.runner = PartitionRunner(
            cmap,
            index,
            partitions,
            self.store,
            RayWriters(writers),
            clock_ms=now_ms,
            cache_records=int(options.get("cache_records", DEFAULT_CACHE_RECORDS)),
            **{
                k: int(options[k])
                for k in ("checkpoint_changes", "checkpoint_dirty")
                if k in options
            },
        )
        self.broken: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_call = time.monotonic()
        self._rebuild()
        self._thread = threading.Thread(target=self._idle_checkpoints, daemon=True)
        self._thread.start()

    def _rebuild(self) -> None:
        """Rebuild from the store; a failure (a writer unreachable while finishing the last
        batch) is kept and retried by the next call."""
        try:
            self.runner.load()
        except Exception as exc:  # NOTE: the store holds everything; the next call retries.
            self.broken = f"{type(exc).__name__}: {exc}"
            return
        self.broken = None
        settle_heap()

    def _run(self, method: str, *args: Any) -> Any:
        with self._lock:
            self._last_call = time.monotonic()
            if self.broken is not None:
                self._rebuild()
                if self.broken is not None:
                    raise RuntimeError(f"partition {self.index} cannot recover: {self.broken}")
            try:
                result = getattr(self.runner, method)(*args)
            except BaseException:
                self._rebuild()
                raise
            settle_heap()
            return result

    # -- calls -----------------------------------------------------------------------------

    def ready(self) -> bool:
        return True

    def apply(self, side: int, payload: bytes) -> dict[str, Any]:
        return self._run("apply", Side(side), payload)  # type: ignore[no-any-return]

    def deliver(self, side: int, payload: bytes) -> dict[str, Any]:
        return self._run("deliver", Side(side), payload)  # type: ignore[no-any-return]

    def flush(self, side: int, acked: int = 0) -> dict[str, Any]:
        """Wait for the last batch's writes; answers the cursors and this side's clock."""
        answer = self._run("flush", Side(side), acked)
        answer["clock"] = self.runner.logic.clock[side]
        return answer  # type: ignore[no-any-return]

    def outbox(self, side: int) -> list[list[Any]]:
        return self._run("outbox_of", Side(side))  # type: ignore[no-any-return]

    def checkpoint(self) -> None:
        self._run("checkpoint")
        with self._lock:
            collect_all()

    def _idle_checkpoints(self) -> None:
        while not self._stop.wait(0.5):
            runner = self.runner
            if (
                runner.wal_changes or runner.logic.cache.dirty
            ) and time.monotonic() - self._last_call >= CHECKPOINT_IDLE_S:
                try:
                    self.checkpoint()
                except Exception:  # NOTE: the WAL still holds everything; retry next round.
                    pass

    # NOTE: the lock keeps these off the store connection while a checkpoint uses it.

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"pid": os.getpid(), "broken": self.broken, **self.runner.status()}

    def conflicts(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return self.store.conflicts(limit)

    def errors(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return self.store.errors(limit)

    def record(self, key: list[Any]) -> Any:
        """The merged values of one record (None if absent or deleted; ``["moved", key]``
        if it moved to another key)."""
        with self._lock:
            found = self.runner.record(tuple(key))
            return ["moved", list(found)] if isinstance(found, tuple) else found
