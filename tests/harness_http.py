"""The contract harness of the HTTP connector: json-server, a real REST server, per test.

The harness is "another program": it changes records with plain HTTP requests to json-server
and reads them back as canonical values, with its own conversions (json-server keeps ids as
strings, decimals as strings, timestamps as ISO 8601 text, bytes as base64).

NOTE: a polling connector sees what an application holds when it lists it, so changes closer
together than a poll are seen as their net effect. The contract counts every change, so after
each change the harness has every connector it opened poll once (`HttpConnector.poll_now`):
the changes of "another program" that are at least one poll apart. The connectors' own
background pollers run as well (every 0.5 s), racing with the harness's writes.
"""

from __future__ import annotations

import base64
import datetime as dt
import urllib.parse
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.connectors import Connector
from engine.values import Json

from contract_harness import COLUMNS, TYPES, Harness
from http_tools import JsonServer

UTC = dt.UTC

TO_APP: dict[str, Callable[[Any], Any]] = {
    "decimal": str,
    "timestamp": lambda v: v.astimezone(UTC).isoformat(),
    "date": lambda v: v.isoformat(),
    "json": lambda v: v.value,
    "bytes": lambda v: base64.b64encode(v).decode(),
    "uuid": str,
}
FROM_APP: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "decimal": Decimal,
    "float": float,
    "timestamp": lambda v: dt.datetime.fromisoformat(v).astimezone(UTC),
    "date": dt.date.fromisoformat,
    "json": Json,
    "bytes": base64.b64decode,
    "uuid": uuid.UUID,
}
KIND = dict(zip(COLUMNS, TYPES, strict=True))


def to_app(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column == "id":
        return str(value)  # json-server 1.x keeps ids as strings
    convert = TO_APP.get(KIND.get(column, ""))
    return convert(value) if convert else value


def from_app(column: str, value: Any) -> Any:
    if value is None:
        return None
    convert = FROM_APP.get(KIND[column])
    return convert(value) if convert else value


class HttpHarness(Harness):
    name = "http"
    typed_capture = True
    enforces_not_null = False  # json-server stores any JSON: it refuses nothing
    enforces_length = False
    missing_entity_raises = False  # a collection that is gone answers 404: row failures

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.server = JsonServer(tmp_path / "json-server")
        self.inbox = tmp_path / "inbox.sqlite"
        self._opened: list[Any] = []

    @property
    def url(self) -> str:
        inbox = urllib.parse.quote(str(self.inbox))
        return f"{self.server.url}?ids=text&poll=0.5&inbox={inbox}"

    def connector(self, app: str = "app") -> Connector:
        conn = super().connector(app)
        self._opened.append(conn)
        return conn

    def _settle(self) -> None:
        """Every open connector polls once: it has seen this change before the next."""
        for conn in self._opened:
            if not conn.closed:
                conn.poll_now()

    def _check(self, status: int, body: Any, what: str) -> None:
        if status >= 300:
            raise AssertionError(f"{what}: json-server answered {status}: {body}")

    def create(self, entity: str = "items") -> None:
        self.server.add(entity)

    def insert(self, rows: list[dict[str, Any]], entity: str = "items") -> None:
        for row in rows:
            body = {c: to_app(c, v) for c, v in row.items()}
            self._check(*self.server.request("POST", f"/{entity}", body), "insert")
        self._settle()

    def update(self, key: int, values: dict[str, Any], entity: str = "items") -> None:
        body = {c: to_app(c, v) for c, v in values.items()}
        self._check(*self.server.request("PATCH", f"/{entity}/{key}", body), "update")
        self._settle()

    def delete(self, key: int, entity: str = "items") -> None:
        self._check(*self.server.request("DELETE", f"/{entity}/{key}"), "delete")
        self._settle()

    def rows(self, entity: str = "items") -> dict[int, tuple[Any, ...]]:
        status, records = self.server.request("GET", f"/{entity}")
        self._check(status, records, "rows")
        return {int(r["id"]): tuple(from_app(c, r.get(c)) for c in COLUMNS) for r in records}

    def close(self) -> None:
        self.server.stop()


HARNESS = HttpHarness
