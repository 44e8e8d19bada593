"""Application connectors, one module each, chosen by URL scheme.

Every connector implements `engine.connectors.base.Connector` and depends only on it.
"""

from __future__ import annotations

import importlib

from engine.connectors.base import (
    Capture,
    Column,
    Connector,
    EntitySchema,
    RawChange,
    Receipt,
    WriteFailure,
    WriteOp,
    WriteReceipt,
    WriteResult,
)
from engine.errors import AppError, ConnectorError
from engine.urls import redact, resolve, scrub

__all__ = [
    "Capture",
    "Column",
    "Connector",
    "EntitySchema",
    "RawChange",
    "Receipt",
    "WriteFailure",
    "WriteOp",
    "WriteReceipt",
    "WriteResult",
    "check_url",
    "connector_class",
    "open_connector",
]

# scheme -> "module:Class"; modules are imported only when an app uses them.
REGISTRY: dict[str, str] = {
    "sqlite": "engine.connectors.sqlite:SqliteConnector",
    "postgresql": "engine.connectors.postgresql:PostgresConnector",
    "mysql": "engine.connectors.mysql:MysqlConnector",
    "mariadb": "engine.connectors.mysql:MysqlConnector",
    "http": "engine.connectors.http:HttpConnector",
    "https": "engine.connectors.http:HttpConnector",
}


def connector_class(app: str, url: str) -> type[Connector]:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    target = REGISTRY.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(REGISTRY))
        raise AppError(app, f"no connector for URL {redact(url)!r} (supported: {known})")
    module, _, name = target.partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module), name)
    return cls


def open_connector(app: str, url: str) -> Connector:
    """A connector of ``url``, its ``${NAME}`` references resolved from the environment."""
    return connector_class(app, url)(app, resolve(app, url))


def check_url(app: str, url: str) -> None:
    """`Connector.check` of ``url`` (references resolved): `AppError` saying what is wrong,
    with no secret of the URL in it."""
    cls = connector_class(app, url)
    full = resolve(app, url)
    try:
        cls.check(app, full)
    except (AppError, ConnectorError) as exc:
        raise AppError(app, scrub(exc.problem, full)) from None
