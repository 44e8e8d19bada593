"""Requests to one HTTP application: one aiohttp session, retries, listings page by page.

Retries: 429, 5xx and connection errors are tried again, up to ``retries`` attempts, after the
``Retry-After`` the application sends (seconds or an HTTP date; at most `MAX_RETRY_AFTER_S`),
else after an exponential backoff with jitter: attempt *n* waits between half and all of
``backoff * 2**n`` seconds (at most `MAX_BACKOFF_S`). When they persist, `ConnectorError`;
every other answer (a 4xx included) is returned to the caller to judge.

Listings follow, whichever the application uses: a ``Link: <...>; rel="next"`` header, an
envelope's ``next`` (a URL or a page number), or with ``pagesize``, page numbers until a short
page. An envelope is an object holding the records under ``data``, ``items``, ``results`` or
``records``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import aiohttp

from engine.connectors.http_options import Options
from engine.connectors.http_values import loads, to_json
from engine.errors import ConnectorError

__all__ = ["Client", "Response", "text_of"]

MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0
ERROR_BODY_CHARS = 500
ENVELOPE_KEYS = ("data", "items", "results", "records")


class Response(NamedTuple):
    status: int
    body: bytes
    next_url: str | None  # a Link header's rel="next"


def text_of(body: bytes) -> str:
    """An answer's body for a message (cut at `ERROR_BODY_CHARS`)."""
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= ERROR_BODY_CHARS else text[:ERROR_BODY_CHARS] + "..."


class Client:
    """The requests of one connector; every coroutine runs on the connector's loop."""

    def __init__(
        self, app: str, options: Options, sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        self.app = app
        self.options = options
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Accept": "application/json"}
            if self.options.token:
                headers["Authorization"] = f"Bearer {self.options.token}"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.options.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.options.timeout),
                headers=headers,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retrying attempt ``attempt`` (0 is the first)."""
        if retry_after:
            try:
                seconds = float(retry_after)
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(retry_after)
                    seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
                except (TypeError, ValueError):
                    seconds = -1
            if seconds >= 0:
                return min(seconds, MAX_RETRY_AFTER_S)
        cap = min(self.options.backoff * 2.0**attempt, MAX_BACKOFF_S)
        return cap / 2 + random.random() * cap / 2

    async def request(
        self,
        method: str,
        url: str,
        entity: str,
        *,
        body: bytes | None = None,
        key: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Response:
        """One request (``key``: its Idempotency-Key), retried as the module says."""
        session = await self._http()
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        attempts = self.options.retries
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                async with session.request(
                    method, url, data=body, headers=headers, params=params
                ) as resp:
                    data = await resp.read()
                    if resp.status == 429 or resp.status >= 500:
                        if last:
                            raise ConnectorError(
                                self.app,
                                entity,
                                f"{method} {url} answered HTTP {resp.status} {attempts} times: "
                                f"{text_of(data)}",
                            )
                        await self._sleep(self.delay(attempt, resp.headers.get("Retry-After")))
                        continue
                    link = resp.links.get("next")
                    return Response(resp.status, data, str(link.get("url")) if link else None)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if last:
                    raise ConnectorError(
                        self.app,
                        entity,
                        f"{method} {url} failed {attempts} times: {type(exc).__name__}: {exc}",
                    ) from exc
                await self._sleep(self.delay(attempt, None))
        raise AssertionError("unreachable")

    def entity_url(self, entity: str) -> str:
        return f"{self.options.base}/{entity.strip('/')}"

    def record_url(self, entity: str, key: Sequence[Any]) -> str:
        text = ",".join(str(to_json(v)) for v in key)
        return f"{self.entity_url(entity)}/{urllib.parse.quote(text, safe='')}"

    async def list(
        self, entity: str, *, first_page: bool = False, params: dict[str, str] | None = None
    ) -> list[Any] | None:
        """The records of a collection, page after page (None if it answers 404)."""
        opts = self.options
        url: str | None = self.entity_url(entity)
        query = dict(params or {})
        page = 1
        if opts.pagesize:
            query.update({opts.page: "1", opts.per_page: str(opts.pagesize)})
        records: list[Any] = []
        previous: Any = None
        while url is not None:
            resp = await self.request("GET", url, entity, params=query or None)
            if resp.status == 404 and page == 1:
                return None
            if resp.status >= 400:
                raise ConnectorError(
                    self.app, entity, f"GET {url} answered HTTP {resp.status}: {text_of(resp.body)}"
                )
            try:
                body = loads(resp.body)
            except ValueError as exc:
                raise ConnectorError(
                    self.app, entity, f"GET {url} answered something that is not JSON: {exc}"
                ) from exc
            items, nxt = _page(body)
            if not isinstance(items, list):
                raise ConnectorError(
                    self.app,
                    entity,
                    f"GET {url}: expected a JSON array of records, found {type(body).__name__}",
                )
            if page > 1 and items and items[:1] == previous:
                break  # the app ignores the page parameters: this page is the first again
            previous = items[:1]
            records.extend(items)
            if first_page:
                break
            page += 1
            if resp.next_url:
                url, query = resp.next_url, {}
            elif isinstance(nxt, str) and nxt:
                url, query = urllib.parse.urljoin(url, nxt), {}
            elif isinstance(nxt, int) and not isinstance(nxt, bool) and opts.pagesize:
                query[opts.page] = str(nxt)
            elif opts.pagesize and isinstance(body, list) and len(items) >= opts.pagesize:
                query[opts.page] = str(page)
            else:
                url = None
        return records


def _page(body: Any) -> tuple[Any, Any]:
    """The records of a listing and its envelope's ``next`` (None for a plain array)."""
    if isinstance(body, dict):
        for name in ENVELOPE_KEYS:
            if isinstance(body.get(name), list):
                return body[name], body.get("next")
    return body, None
