"""HTTP/REST connector: ``http://host:port/base-path?options`` (or ``https://``).

An entity is a collection under the base path (entity ``accounts`` is ``/base-path/accounts``),
a record is a JSON object there, addressed as ``/base-path/accounts/<key>`` by its key
field(s) (the capture's key; several are joined with ``,``). Values are canonical per the
map's declared field types (`engine.connectors.http_values`): maps of HTTP apps should declare
every field's ``type``, since JSON does not say that ``"12.50"`` is a decimal.

Options (query parameters of the URL; anything else is refused):

``mode=poll|webhook``  how changes are captured (default ``poll``).
``poll=<seconds>``     the polling interval (default 5).
``since=<param>``      a query parameter that asks for records modified since a value (e.g.
                       ``updatedAt_gte`` at json-server); the value sent is the largest
                       ``modified`` field seen. Use a "greater or equal" filter: records
                       modified at the watermark itself are fetched again, never missed.
                       Deletes only show in full listings, taken every ``full`` polls.
``modified=<field>``   the record field ``since`` compares (default ``updatedAt``).
``full=<n>``           with ``since``: every n-th poll lists everything (default 10).
``webhook=<host:port>`` where the connector's own webhook endpoint listens (webhook mode);
                       events are POSTed to ``/dualsync/<capture name>``.
``secret=<ENV_VAR>``   the name of the environment variable holding the webhook's HMAC
                       secret (never the secret itself). Required in webhook mode.
``token=<ENV_VAR>``    an environment variable holding a bearer token, sent as
                       ``Authorization: Bearer ...`` on every request.
``inbox=<path>``       the durable inbox file (default
                       ``~/.dualsync/http/<host>_<port>_<base path>.sqlite``).
``id=<field>``         the field records are identified by (default ``id``): ``describe``
                       reports it as the unique key.
``ids=text|native``    ``text``: the app keeps ids as JSON strings (json-server 1.x does):
                       key values are sent as text and read back into their declared type.
``pagesize=<n>``       list collections page by page, ``n`` records at a time, with the
                       query parameters ``page=<param>`` (default ``_page``) and
                       ``per_page=<param>`` (default ``_per_page``). Whatever the option,
                       a ``Link: <...>; rel="next"`` header or an envelope's ``next`` (a URL
                       or a page number) is followed.
``concurrency=<n>``    requests in flight per batch (default 16).
``timeout=<seconds>``  per request (default 30).
``retries=<n>``        attempts per request on 429, 5xx and connection errors (default 6),
``backoff=<seconds>``  with exponential backoff from this base (default 0.5; doubling, with
                       jitter, at most 30 s), or the ``Retry-After`` the app sends (at most
                       120 s).

Change capture goes through a durable inbox (`engine.connectors.http_inbox`), a local SQLite
file that plays the change table: `read_changes`, `head`, `ack` and `wait_for_changes` read
it like the SQLite connector's. In poll mode, `prepare` takes a baseline listing (what exists
is not a change) and a background thread lists the collection every ``poll`` seconds and
logs the differences: what happens between two polls is seen as its net effect. One poller
per capture is expected (the engine's reader). In webhook mode, `prepare` starts an aiohttp
server that takes events ``{"op": "insert|update|delete", "record": {...}, "old": {...}}``
(or a list of them; ``"at"`` optional, ms since the epoch or ISO 8601) signed with
``X-Dualsync-Signature: sha256=<hex HMAC-SHA256 of the raw body>``: a bad signature gets 401
and a log line, nothing is stored; a good event is in the inbox before the app gets its 200.
The app must report changes in the order they happen, ours included. If the port is taken
(another process of the same app serves it: they share the inbox), the server tries again
every second.

Writes: a batch's requests go concurrently over one session (``concurrency`` at a time): a
REST app has no batch endpoint, so one request per record, but never one at a time.

- ``I`` (upsert): ``PATCH /entity/<key>`` with every value; on 404, ``POST /entity``. PATCH
  rather than PUT: a PUT replaces the whole record and would wipe the fields the map does
  not carry. Deciding by the response code costs a second request only for new records.
- ``U``: ``PATCH /entity/<key>`` with the given fields; 404 means the record is gone: nothing.
- ``D``: ``DELETE /entity/<key>``; 404 is fine (gone already).
- ``M`` (a move: the record's key changed): a REST API usually cannot change a record's id,
  so ``GET /entity/<old>`` (404: gone, nothing to do, no failure), ``GET /entity/<key>`` (a
  record there is a failure naming the key field, unless it already holds exactly the moved
  values: an earlier attempt of this move), ``POST /entity`` with the old record's fields
  and ours on top (the fields the map does not carry move along), then ``DELETE
  /entity/<old>``. NOTE: not atomic, as nothing over several requests is: a crash or a
  failure between the POST and the DELETE leaves both records (the batch raises, or the
  DELETE's refusal is the record's failure); the engine sends the move again and it
  completes (the record at the new key is recognised as ours). Meanwhile others see the
  record at both keys (never at neither). Moves go one after the other, four requests each.

A batch goes deletes first, then moves in the order given, then updates and upserts
(concurrently within each; a batch of upserts and updates alone is one concurrent round).

Each request carries an ``Idempotency-Key``: a hash of the capture, method, record, values
and what the record held before, so a retried request cannot apply twice at an app that
honours it (and a later identical write is still a new request). A 4xx other than 429 is a
`WriteFailure` for that record (naming the field if the app's error body does); the rest of
the batch is written. 429, 5xx and connection errors are retried; if they persist, the batch
raises `ConnectorError` after every other request finished (the engine sends it again; PATCH
first makes that safe).

Echo suppression: before sending, what we write is recorded in the inbox (a move as the
create at its new key and the delete at its old one); a poll or event that shows a record
holding what we wrote is our echo and is not logged. A write's ``position`` is the inbox
head when the batch completes (see `http_inbox` for why this is exact).

Receipts: HTTP has no transactions. A batch's `Receipt` is recorded in the inbox (the
engine's side, a table ``receipts`` there, with the batch's refused records) in the
transaction that marks the batch completed, once every request of the batch has finished,
and only if none raised: a crash mid-batch leaves the previous receipt, though some of the
batch's requests may have landed (the engine sends it again; PATCH first and the idempotency
keys make that safe). `last_receipt` reads the inbox, so it answers on the machine whose
inbox the writer used.

``describe`` lists the collection's first page: its columns are the fields seen. An empty
collection shows none: then it reports the columns of the captures prepared on it, and
accepts any other name (the schema check cannot be made; a field the app refuses shows up
as row errors). Every aiohttp, socket and inbox error becomes a `ConnectorError`.

Modules: ``http_options`` (the URL), ``http_client`` (requests, retries, pages),
``http_values`` (JSON forms), ``http_inbox`` (the inbox), ``http_echo`` (what is a change,
what is our echo: sans I/O), ``http_webhook`` (the endpoint), ``http_writes`` (the writes).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import aiohttp

from engine.connectors.base import (
    Capture,
    Column,
    Connector,
    EntitySchema,
    RawChange,
    Receipt,
    WriteOp,
    WriteReceipt,
    WriteResult,
)
from engine.connectors.http_client import Client
from engine.connectors.http_inbox import Image, Inbox, key_bytes, now_ms
from engine.connectors.http_options import parse_url
from engine.connectors.http_values import reader, to_json
from engine.connectors.http_webhook import SIGNATURE_HEADER, WebhookServer, sign
from engine.connectors.http_writes import Writes
from engine.errors import AppError, ConnectorError
from engine.values import Convert

__all__ = ["SIGNATURE_HEADER", "HttpConnector", "parse_url", "sign"]

log = logging.getLogger(__name__)

T = TypeVar("T")
WAIT_INTERVAL_S = 0.01  # between looks at the inbox head while waiting for changes
STALE_RETRIES = 5  # a snapshot's listing overtaken by another poller's: list again


class HttpConnector(Connector):
    def __init__(
        self,
        app: str,
        url: str,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """``sleep`` waits between retries (injected by tests to record the delays)."""
        super().__init__(app, url)
        self.options = parse_url(app, url)
        try:
            self.inbox = Inbox(self.options.inbox)
        except (sqlite3.Error, OSError) as exc:
            raise ConnectorError(
                app, None, f"opening the inbox {self.options.inbox}: {exc}"
            ) from exc
        self._captures: dict[str, Capture] = {}  # prepared on this connector
        self._readers: dict[str, list[Convert]] = {}
        self._state = threading.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # owned by the loop's thread:
        self.client = Client(app, self.options, sleep or asyncio.sleep)
        self._writes = Writes(
            app, self.options, self.client, self.inbox, self._image, self._json_of
        )
        self._poller: asyncio.Task[None] | None = None
        self._webhook: WebhookServer | None = None
        self._poll_locks: dict[str, asyncio.Lock] = {}
        self._polls: dict[str, int] = {}

    @classmethod
    def check(cls, app: str, url: str) -> None:
        """The URL's options parse and its server accepts a connection (no request is
        made: the app's base path need not answer GET)."""
        options = parse_url(app, url)
        parts = urllib.parse.urlsplit(options.base)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=10).close()
        except OSError as exc:
            raise AppError(app, f"{parts.hostname}:{port} cannot be reached: {exc}") from None

    # -- the event loop --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _run(self, entity: str | None, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the connector's loop (started on first use) and wait for it."""
        with self._state:
            if self._closed:
                coro.close()
                raise ConnectorError(self.app, entity, "the connector is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"dualsync-http-{self.app}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            loop = self._loop
        try:
            return asyncio.run_coroutine_threadsafe(coro, loop).result()
        except ConnectorError:
            raise
        except (aiohttp.ClientError, OSError, sqlite3.Error, ValueError) as exc:
            raise ConnectorError(self.app, entity, f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Stop the poller, the webhook server, the session, the loop and its thread."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
            except Exception as exc:  # closing must go on whatever happened
                log.warning("app %r: closing the HTTP connector: %s", self.app, exc)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
        self.inbox.close()

    async def _shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._webhook is not None:
            await self._webhook.stop()
        await self.client.close()
        await asyncio.get_running_loop().shutdown_default_executor()

    # -- records -----------------------------------------------------------------------

    def _readers_of(self, capture: Capture) -> list[Convert]:
        readers = self._readers.get(capture.name)
        if readers is None:
            readers = [reader(capture.type_of(i)) for i in range(len(capture.columns))]
            self._readers[capture.name] = readers
        return readers

    def _image(self, capture: Capture, record: dict[str, Any]) -> Image:
        readers = self._readers_of(capture)
        return tuple(read(record.get(c)) for c, read in zip(capture.columns, readers, strict=True))

    def _json_of(self, capture: Capture, column: int, value: Any) -> Any:
        text_id = self.options.text_ids and column in capture.key_index
        if text_id and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # as text: no double rounds it
        out = to_json(value)
        if text_id and out is not None:
            return str(out)
        return out

    # -- schema ------------------------------------------------------------------------

    def describe(self, entity: str) -> EntitySchema | None:
        """The fields the first page of records holds. JSON records are open (`open=True`): a
        field none of them holds yet can still be written and read back."""
        records = self._run(entity, self.client.list(entity, first_page=True))
        if records is None:
            return None
        id_field = self.options.id_field
        objects = [r for r in records if isinstance(r, dict)]
        columns = {id_field: Column(id_field, "", False, False)}
        for record in objects:
            for name in record:
                columns.setdefault(name, Column(name, "", True, False))
        keyed = all(id_field in r for r in objects)
        return EntitySchema(entity, columns, ((id_field,),) if keyed else (), open=True)

    # -- capture -----------------------------------------------------------------------

    def prepare(self, capture: Capture) -> None:
        try:
            needs_baseline = self.inbox.prepare(capture)
        except sqlite3.Error as exc:
            raise ConnectorError(self.app, capture.entity, f"preparing the inbox: {exc}") from exc
        self._captures[capture.name] = capture
        self._readers.pop(capture.name, None)
        if self.options.mode == "poll":
            if needs_baseline:
                self._run(capture.entity, self._poll(capture))
            self._run(capture.entity, self._start_poller())
        else:
            self._run(capture.entity, self._start_webhook())

    async def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def _start_webhook(self) -> None:
        if self._webhook is None:
            opts = self.options
            assert opts.webhook is not None and opts.secret is not None
            self._webhook = WebhookServer(
                self.app, opts.webhook, opts.secret, self.inbox, self._capture_named, self._image
            )
        await self._webhook.start()

    async def _capture_named(self, name: str) -> Capture | None:
        return self._captures.get(name) or await asyncio.to_thread(self.inbox.capture, name)

    def release(self, capture: Capture) -> None:
        self._captures.pop(capture.name, None)
        try:
            self.inbox.release(capture.name)
        except sqlite3.Error as exc:
            raise ConnectorError(self.app, capture.entity, f"removing capture: {exc}") from exc

    def poll_now(self, capture: Capture | None = None) -> None:
        """Poll now, in the calling thread, every capture prepared here (or ``capture``):
        when it returns, what the app held when the listing was fetched is in the inbox.
        Nothing to do in webhook mode or once closed."""
        if self._closed or self.options.mode != "poll":
            return
        for cap in [capture] if capture else list(self._captures.values()):
            self._run(cap.entity, self._poll(cap))

    async def _poll_loop(self) -> None:
        """The background poller: never dies; a failed poll is logged and tried again."""
        while True:
            await asyncio.sleep(self.options.poll)
            for capture in list(self._captures.values()):
                try:
                    await self._poll(capture)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("app %r, entity %r: poll failed: %s", self.app, capture.entity, exc)

    async def _poll(
        self, capture: Capture, *, complete: bool = False
    ) -> tuple[int, list[Image]] | None:
        """Fetch the collection (or what changed since the watermark) and log the
        differences; returns the inbox head right after and the images listed (None if the
        capture was released meanwhile)."""
        opts = self.options
        name = capture.name
        lock = self._poll_locks.setdefault(name, asyncio.Lock())
        async with lock:
            for _ in range(STALE_RETRIES):
                count = self._polls.get(name, 0)
                mark = await asyncio.to_thread(self.inbox.watermark, name) if opts.since else None
                partial = opts.since is not None and mark is not None and not complete
                partial = partial and count % opts.full != 0
                ticket = await asyncio.to_thread(self.inbox.take_ticket)
                params = {opts.since: str(mark)} if partial and opts.since else None
                records = await self.client.list(capture.entity, params=params)
                if records is None:
                    raise ConnectorError(
                        self.app, capture.entity, "the collection answers 404: it does not exist"
                    )
                listing: dict[bytes, Image] = {}
                newest: Any = None
                for record in records:
                    if not isinstance(record, dict):
                        log.warning("app %r: skipping a non-object record %r", self.app, record)
                        continue
                    image = self._image(capture, record)
                    listing[key_bytes([image[i] for i in capture.key_index])] = image
                    if opts.since:
                        newest = _later(newest, record.get(opts.modified))
                try:
                    head = await asyncio.to_thread(
                        self.inbox.apply_listing,
                        name,
                        ticket,
                        listing,
                        complete=not partial,
                        at_ms=now_ms(),
                        watermark=newest,
                    )
                except KeyError:
                    return None  # released
                self._polls[name] = count + 1
                if head is not None:
                    return head, list(listing.values())
        raise ConnectorError(
            self.app, capture.entity, "another poller kept overtaking this one's listings"
        )

    def head(self, capture: Capture) -> int:
        return self._inbox(capture, "reading the change head", self.inbox.head, capture.name)

    def read_changes(self, capture: Capture, after: int, limit: int) -> list[RawChange]:
        return self._inbox(
            capture, "reading changes", self.inbox.read_changes, capture.name, after, limit
        )

    def ack(self, capture: Capture, upto: int) -> None:
        self._inbox(capture, "trimming the inbox", self.inbox.ack, capture.name, upto)

    def wait_for_changes(self, capture: Capture, after: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.head(capture) > after:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_INTERVAL_S)

    def _inbox(self, capture: Capture, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise ConnectorError(self.app, capture.entity, f"{what} failed: {exc}") from exc

    def snapshot(self, capture: Capture, chunk: int) -> tuple[int, Iterator[list[tuple[Any, ...]]]]:
        if self.options.mode == "poll":
            # The listing is a poll: the head right after its diff is exactly consistent.
            polled = self._run(capture.entity, self._poll(capture, complete=True))
            if polled is None:
                raise ConnectorError(self.app, capture.entity, "snapshot of a released capture")
            head, images = polled
        else:
            head = self.head(capture)  # before the listing: what changes during it comes after
            records = self._run(capture.entity, self.client.list(capture.entity))
            if records is None:
                raise ConnectorError(self.app, capture.entity, "the collection answers 404")
            images = [self._image(capture, r) for r in records if isinstance(r, dict)]
        key_index = capture.key_index
        try:
            images.sort(key=lambda image: [_order(image[i]) for i in key_index])
        except TypeError:
            pass  # keys of mixed types: listing order

        def chunks() -> Iterator[list[tuple[Any, ...]]]:
            for start in range(0, len(images), max(chunk, 1)):
                yield images[start : start + chunk]

        return head, chunks()

    # -- writes --------------------------------------------------------------------------

    def apply(
        self, capture: Capture, ops: Sequence[WriteOp], receipt: Receipt | None = None
    ) -> WriteResult:
        self._check_receipt(capture, receipt)
        return self._run(capture.entity, self._writes.apply(capture, ops, receipt))

    def last_receipt(self, capture: Capture, writer: str) -> WriteReceipt | None:
        return self._inbox(
            capture, "reading a receipt", self.inbox.last_receipt, capture.name, writer
        )


# -- helpers -------------------------------------------------------------------------------


def _later(a: Any, b: Any) -> Any:
    """The later of two watermark values (numbers or text); None is the earliest."""
    if b is None or isinstance(b, bool):
        return a
    if a is None:
        return b
    try:
        return b if b > a else a
    except TypeError:
        return a


def _order(value: Any) -> tuple[int, Any]:
    return (0, 0) if value is None else (1, value)
