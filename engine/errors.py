"""The one exception tree of dualsync.

    DualsyncError                    anything dualsync raises on purpose
    ├── MapError                     a map is refused: names the map, the field and the problem
    │   └── SchemaError              the map does not fit an application's schema
    │                                (missing table or column, no unique key to upsert on)
    ├── AppError                     an application is unknown or its URL is unusable
    ├── ConnectorError               talking to an application failed (driver errors are
    │                                translated into this at the connector boundary)
    ├── CodecError                   a wire message is not what was expected
    ├── EngineError                  the engine is not running, or a call on it failed
    │   ├── SyncTimeout              wait_idle() ran out of time before both sides were in sync
    │   └── WorkerLost               an actor died or restarted during a call; callers retry
    │                                from durable cursors
    └── RecordError                  one record cannot be synced (a NULL key, a value the target
                                     refuses); normally logged as a row-level error, not raised

Messages say where (map, app, record key, field), what was expected and what was found.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AppError",
    "CodecError",
    "ConnectorError",
    "DualsyncError",
    "EngineError",
    "MapError",
    "RecordError",
    "SchemaError",
    "SyncTimeout",
    "WorkerLost",
]


class DualsyncError(Exception):
    """Base of every error dualsync raises on purpose."""


class MapError(DualsyncError):
    """An entity map is invalid. ``field`` is None when the problem is the whole map."""

    def __init__(self, map_name: str | None, field: str | None, problem: str) -> None:
        self.map_name, self.field, self.problem = map_name, field, problem
        where = f"map {map_name!r}" if map_name else "map"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> Any:
        return (type(self), (self.map_name, self.field, self.problem))


class SchemaError(MapError):
    """The map does not fit the schema of one of its applications."""


class AppError(DualsyncError):
    def __init__(self, app: str | None, problem: str) -> None:
        self.app, self.problem = app, problem
        super().__init__(f"app {app!r}: {problem}" if app else problem)

    def __reduce__(self) -> Any:
        return (type(self), (self.app, self.problem))


class ConnectorError(DualsyncError):
    def __init__(self, app: str, entity: str | None, problem: str) -> None:
        self.app, self.entity, self.problem = app, entity, problem
        where = f"app {app!r}" + (f", entity {entity!r}" if entity else "")
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> Any:
        return (type(self), (self.app, self.entity, self.problem))


class CodecError(DualsyncError):
    pass


class EngineError(DualsyncError):
    pass


class SyncTimeout(EngineError):
    pass


class WorkerLost(EngineError):
    pass


class RecordError(DualsyncError):
    def __init__(
        self,
        map_name: str,
        key: Any,
        field: str | None,
        problem: str,
        app: str | None = None,
    ) -> None:
        self.map_name, self.key, self.field, self.problem, self.app = (
            map_name,
            key,
            field,
            problem,
            app,
        )
        where = f"map {map_name!r}, record {key!r}"
        if field:
            where += f", field {field!r}"
        if app:
            where += f", app {app!r}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> Any:
        return (type(self), (self.map_name, self.key, self.field, self.problem, self.app))
