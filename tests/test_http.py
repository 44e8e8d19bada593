"""The HTTP connector beyond the contract: webhooks, retries, idempotency, refusals, echoes,
values over JSON, pagination and ``since`` polls.

`ShopApp` is a small application written here: an aiohttp app on loopback that stores
records, serves them over REST, refuses invalid ones (422 naming the field), honours
``Idempotency-Key`` (a key it has seen is answered from its record, never applied twice), can
fail the first attempts of a request on purpose, and POSTs signed change events (every
change, ours included, in order) to the connector's webhook endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import socket
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine.connectors import Capture, RawChange, Receipt, WriteOp, WriteReceipt, open_connector
from engine.connectors.http import SIGNATURE_HEADER, HttpConnector, sign
from engine.connectors.http_echo import ECHO_TTL_MS, Change, Written, decide
from engine.connectors.http_inbox import Inbox
from engine.errors import AppError, ConnectorError
from engine.values import Json

from conftest import wait_until
from contract_harness import COLUMNS, TYPES, as_tuple, sample
from http_tools import JsonServer, free_port

SECRET = b"webhook secret for tests"
SECRET_VAR = "DUALSYNC_TEST_WEBHOOK_SECRET"
NAME_MAX = 40
CAP = Capture("items_R", "items", ("id", "name", "qty"), ("id",), ("int", "text", "int"))
UTC = dt.UTC


class ShopApp:
    """A REST application with webhooks, on its own loop and thread (see the module doc)."""

    def __init__(self, *, send_old: bool = True) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.send_old = send_old
        self.hook: str | None = None  # where change events go
        self.fail_first: dict[tuple[str, str], list[tuple[int, dict[str, str]]]] = {}
        self.lose_answer: Counter[tuple[str, str]] = Counter()  # apply, then answer 503
        self.keys: list[tuple[str, str, str | None]] = []  # (method, id, Idempotency-Key)
        self.applied: Counter[str] = Counter()  # by Idempotency-Key
        self.answers: dict[str, tuple[int, Any]] = {}
        self.emitted = 0
        self.delivered = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self._call(self._start())

    # -- plumbing ------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> int:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.session = aiohttp.ClientSession()
        self.sender = asyncio.get_running_loop().create_task(self._send_events())
        app = web.Application()
        app.router.add_get("/items", self._list)
        app.router.add_get("/items/{id}", self._get)
        app.router.add_post("/items", self._post)
        app.router.add_patch("/items/{id}", self._patch)
        app.router.add_delete("/items/{id}", self._delete)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return int(self.runner.addresses[0][1])

    def close(self) -> None:
        async def stop() -> None:
            self.sender.cancel()
            await self.runner.cleanup()
            await self.session.close()

        self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold_events(self, hold: bool) -> None:
        """Hold the change events back (they queue, in order), or let them go."""
        flowing = self.flowing
        self.loop.call_soon_threadsafe(flowing.clear if hold else flowing.set)

    def settled(self) -> bool:
        """Every change event has been delivered (and acknowledged)."""
        return self.delivered == self.emitted

    # -- change events -------------------------------------------------------------------

    def _emit(self, op: str, record: dict[str, Any], old: dict[str, Any] | None) -> None:
        if self.hook is None:
            return
        event: dict[str, Any] = {"op": op, "record": record}
        if old is not None and self.send_old:
            event["old"] = old
        self.emitted += 1
        self.queue.put_nowait(event)

    async def _send_events(self) -> None:
        while True:
            event = await self.queue.get()
            await self.flowing.wait()
            body = json.dumps(event).encode()
            headers = {SIGNATURE_HEADER: sign(SECRET, body), "Content-Type": "application/json"}
            assert self.hook is not None
            while True:  # a webhook is delivered until it is acknowledged
                try:
                    async with self.session.post(self.hook, data=body, headers=headers) as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            self.delivered += 1

    def change(self, op: str, key: int, values: dict[str, Any] | None = None) -> None:
        """The app's own users change a record (not through the REST API)."""

        async def run() -> None:
            rid = str(key)
            old = self.records.get(rid)
            if op == "delete":
                del self.records[rid]
                self._emit("delete", old or {"id": key}, None)
                return
            new = {**(old or {"id": key}), **(values or {})}
            self.records[rid] = new
            self._emit("insert" if old is None else "update", dict(new), old)

        self._call(run())

    # -- the REST API --------------------------------------------------------------------

    async def _guard(self, request: web.Request, rid: str, apply: Any) -> web.Response:
        method = request.method
        key = request.headers.get("Idempotency-Key")
        self.keys.append((method, rid, key))
        planned = self.fail_first.get((method, rid))
        if planned:
            status, headers = planned.pop(0)
            return web.json_response({"error": "try later"}, status=status, headers=headers)
        if key is not None and key in self.answers:
            status, body = self.answers[key]  # seen: answered again, not applied again
            return web.json_response(body, status=status)
        status, body = await apply()
        if key is not None and status < 500:
            self.applied[key] += 1
            self.answers[key] = (status, body)
        if self.lose_answer[(method, rid)] > 0:
            self.lose_answer[(method, rid)] -= 1
            return web.json_response({"error": "answer lost"}, status=503)
        return web.json_response(body, status=status)

    @staticmethod
    def _invalid(record: dict[str, Any]) -> dict[str, Any] | None:
        name = record.get("name", "")
        if name is None:
            return {"errors": [{"field": "name", "message": "must not be null"}]}
        if isinstance(name, str) and len(name) > NAME_MAX:
            return {"errors": [{"field": "name", "message": f"longer than {NAME_MAX}"}]}
        return None

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.records.values()))

    async def _get(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        self.keys.append(("GET", rid, request.headers.get("Idempotency-Key")))
        if rid not in self.records:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(self.records[rid])

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        rid = str(body.get("id"))

        async def apply() -> tuple[int, Any]:
            if rid in self.records:
                return 409, {"error": "exists"}
            if problem := self._invalid(body):
                return 422, problem
            self.records[rid] = body
            self._emit("insert", dict(body), None)
            return 201, body

        return await self._guard(request, rid, apply)

    async def _patch(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]
        body = await request.json()

        async def apply() -> tuple[int, Any]:
            old = self.records.get(rid)
            if old is None:
                return 404, {"error": "not found"}
            new = {**old, **body}
            if problem := self._invalid(new):
                return 422, problem
            self.records[rid] = new
            self._emit("update", dict(new), old)
            return 200, new

        return await self._guard(request, rid, apply)

    async def _delete(self, request: web.Request) -> web.Response:
        rid = request.match_info["id"]

        async def apply() -> tuple[int, Any]:
            old = self.records.pop(rid, None)
            if old is None:
                return 404, {"error": "not found"}
            self._emit("delete", old, None)
            return 200, {}

        return await self._guard(request, rid, apply)


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def shop() -> Iterator[ShopApp]:
    app = ShopApp()
    yield app
    app.close()


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_VAR, SECRET.decode())


def url_of(base: str, tmp_path: Path, **options: Any) -> str:
    options.setdefault("inbox", tmp_path / "inbox.sqlite")
    options.setdefault("backoff", 0)
    return f"{base}?{urllib.parse.urlencode({k: str(v) for k, v in options.items()})}"


class Webhooked:
    """A webhook-mode connector of ``shop``, with the shop sending it events."""

    def __init__(self, shop: ShopApp, tmp_path: Path, capture: Capture = CAP, **options: Any):
        self.port = free_port()
        self.url = url_of(
            shop.url,
            tmp_path,
            mode="webhook",
            webhook=f"127.0.0.1:{self.port}",
            secret=SECRET_VAR,
            **options,
        )
        self.conn = HttpConnector("shop", self.url)
        self.conn.prepare(capture)
        self.hook = f"http://127.0.0.1:{self.port}/dualsync/{capture.name}"
        shop.hook = self.hook


@pytest.fixture
def hooked(shop: ShopApp, tmp_path: Path) -> Iterator[Webhooked]:
    side = Webhooked(shop, tmp_path)
    yield side
    side.conn.close()


def post(url: str, body: bytes, signature: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def changes(conn: HttpConnector, capture: Capture = CAP, after: int = 0) -> list[RawChange]:
    return conn.read_changes(capture, after, 10_000)


def upsert(key: int, name: str | None, qty: int = 1) -> WriteOp:
    return WriteOp("I", (key,), {0: key, 1: name, 2: qty})


# -- webhooks --------------------------------------------------------------------------------


def test_a_bad_or_missing_signature_is_refused_and_logged_and_a_good_one_is_captured(
    hooked: Webhooked, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"op": "insert", "record": {"id": 1, "name": "a", "qty": 2}}).encode()
    with caplog.at_level(logging.WARNING, logger="engine.connectors.http"):
        assert post(hooked.hook, body, sign(b"not the secret", body)) == 401
        assert post(hooked.hook, body, None) == 401
        assert post(hooked.hook, body + b" ", sign(SECRET, body)) == 401  # body tampered with
    refusals = [r.getMessage() for r in caplog.records if "refused a webhook" in r.getMessage()]
    assert len(refusals) == 3
    assert "bad signature" in refusals[0] and "missing signature" in refusals[1]
    assert changes(hooked.conn) == []

    assert post(hooked.hook, body, sign(SECRET, body)) == 200
    [change] = changes(hooked.conn)
    assert (change.op, change.old, change.new) == ("I", None, (1, "a", 2))


def test_the_apps_changes_arrive_in_order_with_their_old_images(
    shop: ShopApp, hooked: Webhooked
) -> None:
    shop.change("insert", 1, {"name": "a", "qty": 1})
    shop.change("update", 1, {"qty": 5, "note": "not mapped"})
    shop.change("update", 1, {"note": "only an unmapped field"})
    shop.change("delete", 1)
    wait_until(shop.settled, what="the shop's events to be delivered")
    found = [(c.op, c.old, c.new) for c in changes(hooked.conn)]
    assert found == [
        ("I", None, (1, "a", 1)),
        ("U", (1, "a", 1), (1, "a", 5)),
        ("D", (1, "a", 5), None),
    ]


def test_an_event_is_in_the_inbox_before_it_is_acknowledged(shop: ShopApp, tmp_path: Path) -> None:
    side = Webhooked(shop, tmp_path)
    shop.change("insert", 7, {"name": "durable", "qty": 1})
    wait_until(shop.settled, what="the event to be acknowledged")
    side.conn.close()
    # another connector of the same app, on the same inbox, in poll mode
    other = HttpConnector("shop", url_of(shop.url, tmp_path))
    try:
        [change] = changes(other)
        assert change.new == (7, "durable", 1)
    finally:
        other.close()


def test_a_malformed_event_is_refused_and_nothing_is_stored(hooked: Webhooked) -> None:
    for event in ({"op": "upsert", "record": {"id": 1}}, {"op": "insert"}, [1], {"op": "update",
                  "record": {"name": "no key"}}):  # fmt: skip
        body = json.dumps(event).encode()
        assert post(hooked.hook, body, sign(SECRET, body)) == 400
    body = b"{not json"
    assert post(hooked.hook, body, sign(SECRET, body)) == 400
    assert changes(hooked.conn) == []


# -- echo suppression ------------------------------------------------------------------------


def test_our_writes_never_come_back_as_changes_in_webhook_mode(
    shop: ShopApp, hooked: Webhooked
) -> None:
    conn = hooked.conn
    shop.change("insert", 1, {"name": "theirs", "qty": 1})
    wait_until(shop.settled)
    head = conn.head(CAP)
    result = conn.apply(CAP, [upsert(1, "ours", 2), upsert(2, "new", 3), upsert(3, "gone", 1)])
    assert result.failures == [] and result.position == head
    conn.apply(CAP, [WriteOp("U", (2,), {1: "renamed"}), WriteOp("D", (3,), {})])
    wait_until(shop.settled, what="the echoes of our writes to be delivered")
    assert changes(conn, after=head) == []
    shop.change("update", 2, {"qty": 9})
    wait_until(shop.settled)
    [theirs] = changes(conn, after=head)
    assert (theirs.op, theirs.old, theirs.new) == ("U", (2, "renamed", 3), (2, "renamed", 9))


def test_our_writes_never_come_back_as_changes_in_poll_mode(shop: ShopApp, tmp_path: Path) -> None:
    # the background poller lists every 10 ms, racing with our writes
    conn = HttpConnector("shop", url_of(shop.url, tmp_path, poll=0.01))
    try:
        shop.change("insert", 1, {"name": "theirs", "qty": 1})
        conn.prepare(CAP)  # the baseline: what exists is not a change
        head = conn.head(CAP)
        for round_ in range(5):
            conn.apply(CAP, [upsert(k, f"ours {round_}", k) for k in range(1, 20)])
            conn.apply(CAP, [WriteOp("U", (k,), {2: round_}) for k in range(1, 20, 2)])
        conn.apply(CAP, [WriteOp("D", (k,), {}) for k in range(10, 20)])
        conn.poll_now()
        assert changes(conn, after=head) == []
        shop.change("update", 3, {"name": "theirs again"})
        conn.poll_now()
        [theirs] = changes(conn, after=head)
        assert theirs.old == (3, "ours 4", 4) and theirs.new == (3, "theirs again", 4)
    finally:
        conn.close()


def test_an_edit_the_app_reports_before_the_echo_of_our_write_is_logged_with_our_write_on_top(
    shop: ShopApp, tmp_path: Path
) -> None:
    side = Webhooked(shop, tmp_path)
    conn = side.conn
    try:
        shop.change("insert", 1, {"name": "a", "qty": 1})
        wait_until(shop.settled)
        head = conn.head(CAP)
        shop.hold_events(True)  # late webhooks: their edit is reported after our write
        shop.change("update", 1, {"name": "theirs", "qty": 2})  # before our write lands
        conn.apply(CAP, [WriteOp("U", (1,), {1: "ours"})])
        shop.hold_events(False)
        wait_until(shop.settled)
        # the app holds name=ours (our write came last) and qty=2 (theirs)
        assert shop.records["1"] == {"id": 1, "name": "ours", "qty": 2}
        found = [(c.old, c.new) for c in changes(conn, after=head)]
        assert found == [((1, "ours", 1), (1, "ours", 2))]
    finally:
        conn.close()


# -- writes: retries, idempotency, refusals --------------------------------------------------


def test_429_and_5xx_are_retried_with_exponential_backoff_honouring_retry_after(
    shop: ShopApp, tmp_path: Path
) -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:  # records the waits instead of making them
        delays.append(seconds)

    conn = HttpConnector("shop", url_of(shop.url, tmp_path, backoff=0.1), sleep=sleep)
    try:
        shop.change("insert", 1, {"name": "a", "qty": 1})
        shop.fail_first[("PATCH", "1")] = [
            (429, {"Retry-After": "3"}),
            (503, {}),
            (502, {}),
            (500, {}),
        ]
        result = conn.apply(CAP, [upsert(1, "b", 2), upsert(2, "c", 3)])
        assert result.failures == []
        assert shop.records["1"]["name"] == "b" and shop.records["2"]["name"] == "c"
        assert delays[0] == 3.0  # what the app asked for
        for attempt, delay in enumerate(delays[1:], start=1):
            assert 0.1 * 2**attempt / 2 <= delay <= 0.1 * 2**attempt  # doubling, with jitter
        assert len(delays) == 4
    finally:
        conn.close()


def test_requests_that_keep_failing_raise_a_connector_error_after_the_rest_is_written(
    shop: ShopApp, tmp_path: Path
) -> None:
    conn = HttpConnector("shop", url_of(shop.url, tmp_path, retries=3))
    try:
        shop.fail_first[("PATCH", "1")] = [(503, {})] * 3
        with pytest.raises(ConnectorError, match="503 3 times"):
            conn.apply(CAP, [upsert(1, "never", 1), upsert(2, "written", 2)])
        assert "1" not in shop.records and shop.records["2"]["name"] == "written"
    finally:
        conn.close()


def test_a_retried_request_carries_the_same_idempotency_key_and_applies_once(
    shop: ShopApp, tmp_path: Path
) -> None:
    conn = HttpConnector("shop", url_of(shop.url, tmp_path))
    try:
        shop.change("insert", 1, {"name": "a", "qty": 1})
        shop.lose_answer[("PATCH", "1")] = 1  # applied, but the answer is lost: retried
        assert conn.apply(CAP, [WriteOp("U", (1,), {2: 5})]).failures == []
        first, retried = [k for m, rid, k in shop.keys if (m, rid) == ("PATCH", "1")]
        assert first is not None and first == retried
        assert shop.applied[first] == 1
        assert shop.records["1"]["qty"] == 5
        # a later write of the same values is a new request, not a replay
        conn.apply(CAP, [WriteOp("U", (1,), {2: 6})])
        conn.apply(CAP, [WriteOp("U", (1,), {2: 5})])
        keys = [k for m, rid, k in shop.keys if (m, rid) == ("PATCH", "1")]
        assert len(set(keys)) == 3 and shop.records["1"]["qty"] == 5
    finally:
        conn.close()


def test_a_record_the_app_refuses_is_a_row_failure_naming_the_field_and_the_rest_is_written(
    shop: ShopApp, hooked: Webhooked
) -> None:
    conn = hooked.conn
    shop.change("insert", 4, {"name": "exists", "qty": 1})
    result = conn.apply(
        CAP,
        [
            upsert(1, "fine"),
            upsert(2, None),  # refused: name must not be null
            upsert(3, "also fine"),
            WriteOp("U", (4,), {1: "x" * (NAME_MAX + 1)}),  # refused: too long
            WriteOp("U", (5,), {1: "nobody"}),  # gone: nothing, and no failure
            WriteOp("D", (6,), {}),  # gone already: fine
        ],
    )
    assert [(f.row, f.column) for f in result.failures] == [(1, "name"), (3, "name")]
    assert "422" in result.failures[0].message and "must not be null" in result.failures[0].message
    assert sorted(shop.records) == ["1", "3", "4"] and shop.records["4"]["name"] == "exists"
    wait_until(shop.settled)
    assert [c.op for c in changes(conn)] == ["I"]  # the app's own insert of 4; no echoes


def test_a_value_json_cannot_hold_is_a_row_failure(shop: ShopApp, tmp_path: Path) -> None:
    capture = Capture("items_R", "items", ("id", "ratio"), ("id",), ("int", "float"))
    conn = HttpConnector("shop", url_of(shop.url, tmp_path))
    try:
        result = conn.apply(
            capture, [WriteOp("I", (1,), {1: float("nan")}), WriteOp("I", (2,), {1: 0.5})]
        )
        [failure] = result.failures
        assert failure.row == 0 and failure.column == "ratio"
        assert sorted(shop.records) == ["2"]
    finally:
        conn.close()


# -- moves and receipts ----------------------------------------------------------------------


def move(old: int, new: int, name: str, qty: int = 1) -> WriteOp:
    return WriteOp("M", (new,), {0: new, 1: name, 2: qty}, (old,))


def test_a_move_is_a_post_at_the_new_key_and_a_delete_of_the_old_and_never_echoes(
    shop: ShopApp, hooked: Webhooked
) -> None:
    conn = hooked.conn
    shop.change("insert", 1, {"name": "a", "qty": 1, "note": "not mapped"})
    wait_until(shop.settled)
    head = conn.head(CAP)
    shop.keys.clear()
    result = conn.apply(CAP, [move(1, 5, "moved", 2), move(7, 8, "nobody")])
    assert result.failures == []
    # the fields the map does not carry move along
    assert shop.records == {"5": {"id": 5, "name": "moved", "qty": 2, "note": "not mapped"}}
    assert [(m, rid) for m, rid, _ in shop.keys] == [
        ("GET", "1"), ("GET", "5"), ("POST", "5"), ("DELETE", "1"), ("GET", "7"),
    ]  # fmt: skip
    assert all(k is not None for m, _, k in shop.keys if m != "GET")
    wait_until(shop.settled, what="the echoes of the move to be delivered")
    assert changes(conn, after=head) == []
    shop.change("update", 5, {"qty": 9})
    wait_until(shop.settled)
    [theirs] = changes(conn, after=head)
    assert (theirs.op, theirs.old, theirs.new) == ("U", (5, "moved", 2), (5, "moved", 9))


def test_an_inbox_of_the_previous_version_gets_the_receipts_failures_column(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old-inbox.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE receipts (capture TEXT NOT NULL, writer TEXT NOT NULL,"
        " number INTEGER NOT NULL, position INTEGER NOT NULL,"
        " PRIMARY KEY (capture, writer)) WITHOUT ROWID"
    )
    old.execute("INSERT INTO receipts VALUES ('items_L', 'items/0', 3, 7)")
    old.commit()
    old.close()
    inbox = Inbox(path)
    try:
        assert inbox.last_receipt("items_L", "items/0") == WriteReceipt(3, 7, [])
    finally:
        inbox.close()
    Inbox(path).close()  # once is enough


def test_a_move_cut_before_its_delete_keeps_the_last_receipt_and_completes_when_resent(
    shop: ShopApp, tmp_path: Path
) -> None:
    conn = HttpConnector("shop", url_of(shop.url, tmp_path, retries=2))
    try:
        shop.change("insert", 1, {"name": "a", "qty": 1})
        shop.change("insert", 5, {"name": "in the way", "qty": 1})
        conn.prepare(CAP)
        head = conn.head(CAP)
        first = conn.apply(CAP, [move(1, 5, "moved")], Receipt("items/0", 1))
        assert [(f.row, f.column) for f in first.failures] == [(0, "id")]  # 5 is taken
        assert conn.last_receipt(CAP, "items/0") == WriteReceipt(1, first.position, first.failures)
        shop.change("delete", 5)
        conn.poll_now()
        [gone] = changes(conn, after=head)
        assert gone.op == "D"

        shop.fail_first[("DELETE", "1")] = [(503, {})] * 2  # the old one cannot be deleted
        with pytest.raises(ConnectorError, match="503 2 times"):
            conn.apply(CAP, [move(1, 5, "moved")], Receipt("items/0", 2))
        assert sorted(shop.records) == ["1", "5"]  # not atomic: both, for now
        assert conn.last_receipt(CAP, "items/0") == WriteReceipt(  # the previous one
            1, first.position, first.failures
        )

        again = conn.apply(CAP, [move(1, 5, "moved")], Receipt("items/0", 2))  # resent
        assert again.failures == []
        assert shop.records == {"5": {"id": 5, "name": "moved", "qty": 1}}
        assert conn.last_receipt(CAP, "items/0") == WriteReceipt(2, again.position, [])
        conn.poll_now()
        assert changes(conn, after=gone.seq) == []  # none of it echoes
    finally:
        conn.close()


# -- values over JSON ------------------------------------------------------------------------

TYPED = Capture("items_R", "items", COLUMNS, ("id",), TYPES)


def test_every_canonical_type_round_trips_exactly_through_json(
    shop: ShopApp, tmp_path: Path
) -> None:
    side = Webhooked(shop, tmp_path, TYPED)
    conn = side.conn
    try:
        nulls = {c: None for c in COLUMNS[2:]}
        written = [sample(1), sample(2, name=""), sample(3, **nulls), sample(4, ratio=-0.5)]
        ops = [WriteOp("I", (r["id"],), dict(enumerate(as_tuple(r)))) for r in written]
        assert conn.apply(TYPED, ops).failures == []
        stored = shop.records["1"]
        assert stored["price"] == "1.25"  # a decimal is a string: exact
        assert stored["at"] == "2024-02-29T12:30:01.123456+00:00"  # ISO 8601, UTC
        assert stored["day"] == "2024-01-02"
        assert stored["doc"] == {"n": 1, "tags": ["a", "b"], "ok": True, "none": None}
        assert base64.b64decode(stored["data"]) == bytes([0, 255, 1])
        assert stored["ref"] == str(uuid.UUID(int=1)) and stored["flag"] is False
        assert shop.records["3"] == {"id": 3, "name": "item 3 ü😀", **nulls}  # NULL is null
        head, chunks = conn.snapshot(TYPED, 3)
        assert [row for chunk in chunks for row in chunk] == [as_tuple(r) for r in written]
        wait_until(shop.settled)
        assert changes(conn, TYPED, head) == []  # our echoes
        # the app's own forms: another offset, a decimal as a JSON number, text ids
        shop.change(
            "insert",
            5,
            {"name": "x", "price": 1.25, "at": "2024-02-29T14:30:01.5+02:00", "qty": 3,
             "ratio": 2, "doc": [1, 2.5], "flag": True},
        )  # fmt: skip
        wait_until(shop.settled)
        [change] = changes(conn, TYPED, head)
        row = dict(zip(COLUMNS, change.new or (), strict=True))
        assert row["price"] == Decimal("1.25") and isinstance(row["price"], Decimal)
        assert row["at"] == dt.datetime(2024, 2, 29, 12, 30, 1, 500000, tzinfo=UTC)
        assert row["at"].utcoffset() == dt.timedelta(0)
        assert row["ratio"] == 2.0 and isinstance(row["ratio"], float)
        assert row["doc"] == Json([1, 2.5]) and row["flag"] is True
    finally:
        conn.close()


def test_a_value_that_does_not_parse_is_kept_as_it_is(shop: ShopApp, tmp_path: Path) -> None:
    side = Webhooked(shop, tmp_path, TYPED)
    try:
        shop.change(
            "insert",
            1,
            {"price": "a lot", "day": "someday", "data": "not base64!", "ref": "r-1",
             "qty": "many", "at": 12},
        )  # fmt: skip
        wait_until(shop.settled)
        [change] = changes(side.conn, TYPED)
        row = dict(zip(COLUMNS, change.new or (), strict=True))
        assert row["price"] == "a lot" and row["day"] == "someday" and row["qty"] == "many"
        assert row["data"] == "not base64!" and row["ref"] == "r-1" and row["at"] == 12
    finally:
        side.conn.close()


# -- the capture rules, sans I/O ----------------------------------------------------------


def test_a_listing_fetched_before_our_write_completed_leaves_the_record_alone() -> None:
    ours = Written("U", {0: 1, 1: "ours"}, 7, 1_000, "b")  # completed at ticket 7
    change, follow, pending = decide((1, "a", 1), (1, "theirs", 1), [ours], width=3,
                                     now_ms=2_000, ticket=6)  # fmt: skip
    assert (change, follow, pending) == (None, False, [ours])
    change, follow, pending = decide((1, "a", 1), (1, "theirs", 1), [ours], width=3,
                                     now_ms=2_000, ticket=8)  # fmt: skip
    assert change == Change("U", (1, "ours", 1), (1, "theirs", 1)) and pending == []


def test_a_state_we_wrote_is_our_echo_and_only_what_else_changed_is_logged() -> None:
    first = Written("I", {0: 1, 1: "x", 2: 1}, 3, 1_000, "b1")
    second = Written("U", {0: 1, 1: "y"}, None, 1_000, "b2")
    # the event of the first write: settles it; the second is still coming
    change, _, pending = decide(None, (1, "x", 1), [first, second], width=3, now_ms=1_500)
    assert change is None and pending == [second]
    # then a listing holds the second write, and a qty the app changed meanwhile
    change, _, pending = decide((1, "x", 1), (1, "y", 5), [second], width=3,
                                now_ms=1_500, ticket=9)  # fmt: skip
    assert change == Change("U", (1, "y", 1), (1, "y", 5)) and pending == []


def test_an_event_before_the_echo_of_a_completed_write_gets_our_write_on_top() -> None:
    ours = Written("U", {0: 1, 1: "ours"}, 4, 1_000, "b")
    change, _, pending = decide((1, "a", 1), (1, "theirs", 2), [ours], width=3, now_ms=1_500)
    assert change == Change("U", (1, "ours", 1), (1, "ours", 2)) and pending == [ours]
    # once the application has had ECHO_TTL_MS to report our write, it no longer counts
    late = 1_000 + ECHO_TTL_MS + 1
    change, _, pending = decide((1, "a", 1), (1, "theirs", 2), [ours], width=3, now_ms=late)
    assert change == Change("U", (1, "a", 1), (1, "theirs", 2)) and pending == []


# -- json-server: pagination, since, describe ------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[JsonServer]:
    srv = JsonServer(tmp_path / "json-server", {"items": [], "empty": []})
    srv.start()
    yield srv
    srv.stop()


def test_a_paginated_collection_is_listed_page_by_page(server: JsonServer, tmp_path: Path) -> None:
    for i in range(1, 8):
        server.request("POST", "/items", {"id": str(i), "name": f"n{i}", "qty": i})
    conn = HttpConnector("js", url_of(server.url, tmp_path, ids="text", pagesize=3))
    try:
        conn.prepare(CAP)
        head, chunks = conn.snapshot(CAP, 100)
        assert [row for chunk in chunks for row in chunk] == [(i, f"n{i}", i) for i in range(1, 8)]
        server.request("DELETE", "/items/7")
        conn.poll_now()
        [gone] = changes(conn, after=head)
        assert (gone.op, gone.old) == ("D", (7, "n7", 7))
    finally:
        conn.close()


def test_since_fetches_what_changed_and_full_listings_find_the_rest(
    server: JsonServer, tmp_path: Path
) -> None:
    for i, stamp in ((1, 5), (2, 1)):
        server.request("POST", "/items", {"id": str(i), "name": "a", "qty": 0, "updatedAt": stamp})
    url = url_of(server.url, tmp_path, ids="text", since="updatedAt_gte", full=3, poll=3600)
    conn = HttpConnector("js", url)
    try:
        conn.prepare(CAP)  # the baseline: a full listing (poll 1 of 3)
        server.request("PATCH", "/items/1", {"qty": 1, "updatedAt": 200})
        server.request("PATCH", "/items/2", {"qty": 2})  # modified, but not stamped
        conn.poll_now()  # since 5 (the largest updatedAt seen): sees 1
        assert [(c.op, c.new) for c in changes(conn)] == [("U", (1, "a", 1))]
        server.request("DELETE", "/items/1")
        conn.poll_now()  # poll 3 of 3: since 200: sees nothing
        assert len(changes(conn)) == 1
        conn.poll_now()  # a full listing: the delete, and the unstamped change
        found = [(c.op, (c.new or c.old or ())[0]) for c in changes(conn)]
        assert found == [("U", 1), ("U", 2), ("D", 1)]
    finally:
        conn.close()


def test_describe_reports_the_fields_seen_and_none_for_a_missing_entity(
    server: JsonServer, tmp_path: Path
) -> None:
    server.request("POST", "/items", {"id": "1", "name": "a"})
    server.request("POST", "/items", {"id": "2", "qty": 2})
    conn = HttpConnector("js", url_of(server.url, tmp_path, ids="text"))
    try:
        schema = conn.describe("items")
        assert schema is not None and list(schema.columns) == ["id", "name", "qty"]
        assert schema.unique == (("id",),)
        assert schema.open  # JSON records may hold fields none of them holds yet
        assert conn.describe("nothing_here") is None
        empty = conn.describe("empty")
        assert empty is not None and list(empty.columns) == ["id"] and empty.open
    finally:
        conn.close()


# -- errors, options, shutdown ---------------------------------------------------------------


def test_network_errors_become_connector_errors(tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    conn = HttpConnector("down", url_of(nobody, tmp_path, retries=2))
    try:
        with pytest.raises(ConnectorError, match="failed 2 times") as info:
            conn.describe("items")
        assert info.value.app == "down" and info.value.entity == "items"
        with pytest.raises(ConnectorError):
            conn.apply(CAP, [upsert(1, "a")])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"colour": "blue"}, "unknown URL option 'colour'"),
        ({"mode": "push"}, "mode='push'"),
        ({"mode": "webhook", "secret": SECRET_VAR}, "webhook=<host:port>"),
        ({"mode": "webhook", "webhook": "127.0.0.1:1"}, "secret="),
        ({"mode": "webhook", "webhook": "127.0.0.1:1", "secret": "NO_SUCH_VAR_X"}, "not set"),
        ({"poll": "often"}, "not a number"),
    ],
)
def test_bad_url_options_are_refused_naming_the_problem(
    tmp_path: Path, options: dict[str, str], problem: str
) -> None:
    with pytest.raises(AppError, match=problem.replace("[", r"\[").replace("(", r"\(")):
        open_connector("app", url_of("http://127.0.0.1:1", tmp_path, **options))


def test_close_stops_the_loop_the_poller_and_the_webhook_server(
    shop: ShopApp, tmp_path: Path
) -> None:
    before = set(threading.enumerate())
    side = Webhooked(shop, tmp_path)
    poller = HttpConnector("shop", url_of(shop.url, tmp_path / "other", poll=0.01))
    poller.prepare(CAP)
    ours = [t for t in set(threading.enumerate()) - before if t.name.startswith("dualsync-http")]
    assert len(ours) == 2
    side.conn.close()
    poller.close()
    assert not any(t.is_alive() for t in ours)
    with socket.socket() as s:  # the webhook port is free again
        s.bind(("127.0.0.1", side.port))
    with pytest.raises(ConnectorError, match="closed"):
        poller.describe("items")
