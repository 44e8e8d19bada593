"""dualsync's engine: the public API.

Ray is never imported by ``import engine``; it loads when `SyncEngine.start` runs.
"""

from conflict import register_resolver
from engine.api import SyncEngine
from engine.errors import (
    AppError,
    CodecError,
    ConnectorError,
    DualsyncError,
    EngineError,
    MapError,
    RecordError,
    SchemaError,
    SyncTimeout,
    WorkerLost,
)
from engine.ids import Direction, Mode
from engine.maps import (
    ConflictSpec,
    EntityMap,
    FieldMap,
    KeyComparisonWarning,
    SideSpec,
    UniqueOrderWarning,
    load_map,
)
from engine.verify import VerifyReport

__all__ = [
    "AppError",
    "CodecError",
    "ConflictSpec",
    "ConnectorError",
    "Direction",
    "DualsyncError",
    "EngineError",
    "EntityMap",
    "FieldMap",
    "KeyComparisonWarning",
    "MapError",
    "Mode",
    "RecordError",
    "SchemaError",
    "SideSpec",
    "SyncEngine",
    "SyncTimeout",
    "UniqueOrderWarning",
    "VerifyReport",
    "WorkerLost",
    "load_map",
    "register_resolver",
]
