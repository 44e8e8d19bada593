"""The HTTP connector's webhook endpoint: signed change events into the durable inbox.

``POST /dualsync/<capture name>`` takes an event ``{"op": "insert|update|delete", "record":
{...}, "old": {...}}`` (``old`` optional; ``"at"`` optional: ms since the epoch or ISO 8601),
or a list of them, signed with ``X-Dualsync-Signature: sha256=<hex HMAC-SHA256 of the raw
body>``. Answers:

- 401: a bad or missing signature. Logged (a warning naming the capture and the sender);
  nothing is stored.
- 400: not an event (logged); 404: no such capture; 503: the inbox could not store it (the
  application sends it again).
- 200: every event of the body is in the inbox, on disk (durable before acknowledged).

Events of a capture prepared by another process of the same application are stored too:
they share the inbox, which knows every capture's columns.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from aiohttp import web

from engine.connectors.base import Capture
from engine.connectors.http_inbox import Image, Inbox, key_bytes, now_ms
from engine.connectors.http_values import loads

__all__ = ["SIGNATURE_HEADER", "WebhookServer", "sign"]

log = logging.getLogger("engine.connectors.http")

SIGNATURE_HEADER = "X-Dualsync-Signature"
BIND_RETRY_S = 1.0

Event = tuple[bytes, Image | None, Image | None, Image | None, int]


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value of a webhook body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookServer:
    """The endpoint of one connector, on the connector's loop."""

    def __init__(
        self,
        app: str,
        address: tuple[str, int],
        secret: bytes,
        inbox: Inbox,
        capture_of: Callable[[str], Awaitable[Capture | None]],
        image: Callable[[Capture, dict[str, Any]], Image],
    ) -> None:
        self.app = app
        self.address = address
        self.secret = secret
        self.inbox = inbox
        self.capture_of = capture_of
        self.image = image
        self._runner: web.AppRunner | None = None
        self._binding: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (idempotent). NOTE: if the port is taken, another process of the same app
        may serve it (it shares our inbox): try again every `BIND_RETRY_S`, to take over."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post("/dualsync/{capture}", self._on_event)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runner = runner
        if not await self._bind(warn=True):
            self._binding = asyncio.get_running_loop().create_task(self._bind_loop())

    async def stop(self) -> None:
        if self._binding is not None:
            self._binding.cancel()
            await asyncio.gather(self._binding, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _bind(self, warn: bool = False) -> bool:
        assert self._runner is not None
        host, port = self.address
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as exc:
            if warn:
                log.warning(
                    "app %r: webhook endpoint %s:%s not available (%s); trying every %s s",
                    self.app, host, port, exc, BIND_RETRY_S,
                )  # fmt: skip
            return False
        log.info("app %r: webhook endpoint listening on %s:%s", self.app, host, port)
        return True

    async def _bind_loop(self) -> None:
        while not await self._bind():
            await asyncio.sleep(BIND_RETRY_S)

    async def _on_event(self, request: web.Request) -> web.Response:
        body = await request.read()
        name = request.match_info["capture"]
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not hmac.compare_digest(signature.encode(), sign(self.secret, body).encode()):
            log.warning(
                "app %r: refused a webhook event for %r from %s: %s signature",
                self.app, name, request.remote, "bad" if signature else "missing",
            )  # fmt: skip
            return web.json_response({"error": "bad or missing signature"}, status=401)
        capture = await self.capture_of(name)
        if capture is None:
            return web.json_response({"error": f"no capture {name!r}"}, status=404)
        try:
            events = self.events(capture, loads(body))
        except ValueError as exc:
            log.warning("app %r: refused a malformed webhook event for %r: %s", self.app, name, exc)
            return web.json_response({"error": str(exc)}, status=400)
        try:
            head = await asyncio.to_thread(self.inbox.apply_events, name, events)
        except KeyError:
            return web.json_response({"error": f"no capture {name!r}"}, status=404)
        except sqlite3.Error as exc:
            log.error("app %r: could not store a webhook event for %r: %s", self.app, name, exc)
            return web.json_response({"error": "not stored; send it again"}, status=503)
        return web.json_response({"stored": len(events), "head": head})

    def events(self, capture: Capture, payload: Any) -> list[Event]:
        """Events in the inbox's form; ValueError saying what is wrong."""
        items = payload if isinstance(payload, list) else [payload]
        out = []
        received = now_ms()
        for event in items:
            if not isinstance(event, dict):
                raise ValueError(f"expected an event object, found {type(event).__name__}")
            op = event.get("op")
            record = event.get("record")
            old = event.get("old")
            if op not in ("insert", "update", "delete"):
                raise ValueError(f"expected op insert, update or delete, found {op!r}")
            if not isinstance(record, dict) or not (old is None or isinstance(old, dict)):
                raise ValueError("expected record (and old, if given) to be JSON objects")
            if any(k not in record for k in capture.key):
                raise ValueError(f"the record lacks its key field(s) {list(capture.key)}")
            image = self.image(capture, record)
            out.append(
                (
                    key_bytes([image[i] for i in capture.key_index]),
                    None if op == "delete" else image,
                    None if old is None else self.image(capture, old),
                    image if op == "delete" else None,
                    _at_ms(event.get("at"), received),
                )
            )
        return out


def _at_ms(at: Any, default: int) -> int:
    if isinstance(at, (int, float, Decimal)) and not isinstance(at, bool):
        return int(at)
    if isinstance(at, str):
        try:
            when = dt.datetime.fromisoformat(at)
        except ValueError:
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return int(when.timestamp() * 1000)
    return default
