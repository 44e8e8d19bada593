"""The writes of the HTTP connector (documented in `engine.connectors.http`): a batch as
concurrent requests (deletes, then moves one by one, then updates and upserts), recorded in
the inbox before they are sent and marked when they complete, and the app's refusals as
`WriteFailure` naming the field its error body names. A value JSON would not carry exactly
(`http_values.to_json`) is refused before anything is sent, naming its field.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from engine.codec import pack
from engine.connectors.base import (
    OP_ORDER,
    Capture,
    Receipt,
    WriteFailure,
    WriteOp,
    WriteResult,
    move_problem,
)
from engine.connectors.http_client import Client, Response, text_of
from engine.connectors.http_inbox import Image, Inbox, key_bytes
from engine.connectors.http_options import Options
from engine.connectors.http_values import dumps, loads
from engine.errors import ConnectorError

__all__ = ["Writes"]


class _Todo(NamedTuple):
    """One record of a batch to send: its row, op, entries in the inbox and JSON fields."""

    row: int
    op: WriteOp
    entries: range  # its writes in `Inbox.begin_write` order (a move: new key, old key)
    fields: dict[str, Any] | None  # None for a delete


class Writes:
    """The write path of one HTTP connector; its coroutines run on the connector's loop.
    ``image`` reads a record as canonical values, ``json_of`` writes one value as JSON."""

    def __init__(
        self,
        app: str,
        options: Options,
        client: Client,
        inbox: Inbox,
        image: Callable[[Capture, dict[str, Any]], Image],
        json_of: Callable[[Capture, int, Any], Any],
    ) -> None:
        self.app = app
        self.options = options
        self.client = client
        self.inbox = inbox
        self._image = image
        self._json_of = json_of

    async def apply(
        self, capture: Capture, ops: Sequence[WriteOp], receipt: Receipt | None
    ) -> WriteResult:
        """`Connector.apply`: the receipt is recorded when the batch completes, if no
        request raised."""
        failures: dict[int, WriteFailure] = {}
        todo: list[_Todo] = []  # in the order they are written
        entries: list[tuple[bytes, str, dict[int, Any] | None]] = []
        key_index = capture.key_index
        for row in sorted(range(len(ops)), key=lambda r: OP_ORDER.get(ops[r].op, OP_ORDER["I"])):
            op = ops[row]
            if op.op == "M" and (problem := move_problem(capture, op)):
                failures[row] = WriteFailure(row, None, problem)
                continue
            values: dict[int, Any] = dict(zip(key_index, op.key, strict=True))
            values.update(op.values)
            if op.op == "M":
                values.update(zip(key_index, op.key, strict=True))  # the new key, whatever
            fields: dict[str, Any] | None = None
            if op.op != "D":
                fields = {}
                for i, v in (values if op.op in ("I", "M") else op.values).items():
                    try:
                        fields[capture.columns[i]] = self._json_of(capture, i, v)
                    except ValueError as exc:
                        name, kind = capture.columns[i], capture.type_of(i)
                        message = f"field {name!r}{f' ({kind})' if kind else ''}: {exc}"
                        failures[row] = WriteFailure(row, name, message)
                        break
                if row in failures:
                    continue
            first = len(entries)
            if op.op == "M":
                assert op.old is not None  # checked by `move_problem`
                entries.append((key_bytes(op.key), "I", values))
                entries.append((key_bytes(op.old), "D", None))
            else:
                entries.append((key_bytes(op.key), op.op, None if op.op == "D" else values))
            todo.append(_Todo(row, op, range(first, len(entries)), fields))
        batch = uuid.uuid4().hex
        seen = await asyncio.to_thread(self.inbox.begin_write, capture.name, batch, entries)
        gate = asyncio.Semaphore(self.options.concurrency)
        landed = [False] * len(entries)

        async def one(n: int) -> Any:
            t = todo[n]
            before = b"".join(seen[e] for e in t.entries)
            async with gate:
                if t.op.op == "M":
                    return await self._move_one(capture, t, before, landed)
                body = None if t.fields is None else dumps(t.fields)
                result = await self._write_one(capture, t.op, body, before, t.row)
                if result is True:
                    landed[t.entries[0]] = True
                return result

        # deletes, then moves one after the other, in order, then the rest together
        phases = [
            [n for n, t in enumerate(todo) if t.op.op == "D"],
            *([n] for n, t in enumerate(todo) if t.op.op == "M"),
            [n for n, t in enumerate(todo) if t.op.op not in ("D", "M")],
        ]
        results: list[Any] = [None] * len(todo)
        completed = False
        try:
            for phase in filter(None, phases):
                done = await asyncio.gather(*(one(n) for n in phase), return_exceptions=True)
                for n, result in zip(phase, done, strict=True):
                    results[n] = result
            completed = not any(isinstance(r, BaseException) for r in results)
        finally:
            for t, result in zip(todo, results, strict=True):
                if isinstance(result, WriteFailure):
                    failures[t.row] = result
            refused = [failures[r] for r in sorted(failures)]
            # Even when cancelled: what landed is marked completed, the rest forgotten; the
            # receipt, with the refused records, only if every request finished.
            position = await asyncio.to_thread(
                self.inbox.finish_write,
                capture.name,
                batch,
                [(k, hit) for (k, _, _), hit in zip(entries, landed, strict=True)],
                (receipt.writer, receipt.number) if receipt is not None and completed else None,
                refused,
            )
        for result in results:
            if isinstance(result, BaseException):
                if isinstance(result, ConnectorError):
                    raise result
                raise ConnectorError(
                    self.app, capture.entity, f"writing a batch: {type(result).__name__}: {result}"
                ) from result
        return WriteResult(refused, position)

    async def _move_one(
        self, capture: Capture, t: _Todo, seen: bytes, landed: list[bool]
    ) -> bool | WriteFailure:
        """Move one record (see the module docstring): True if it moved, False if the old
        record was gone, or the app's refusal. Marks in ``landed`` what it wrote."""
        op, row, entity = t.op, t.row, capture.entity
        assert op.old is not None and t.fields is not None
        old_url = self.client.record_url(entity, op.old)
        new_url = self.client.record_url(entity, op.key)
        created, deleted = t.entries

        def key(method: str) -> str:
            values = sorted(op.values.items())
            data = pack([capture.name, method, new_url, "M", list(op.key), list(op.old or ()),
                         values, seen])  # fmt: skip
            return hashlib.sha256(data).hexdigest()

        resp = await self.client.request("GET", old_url, entity)
        if resp.status in (404, 410):
            return False  # moved or deleted already: the change stream says which
        record = _record(resp.body) if resp.status < 300 else None
        if record is None:
            return self._failure(capture, row, "GET", old_url, resp)
        there = await self.client.request("GET", new_url, entity)
        if there.status < 300:
            held = _record(there.body)
            image = None if held is None else self._image(capture, held)
            wanted = dict(zip(capture.key_index, op.key, strict=True)) | op.values
            if image is None or any(image[i] != v for i, v in wanted.items()):
                return WriteFailure(
                    row,
                    capture.key[0],
                    f"cannot move {old_url} to {new_url}: a record is there already",
                )
            # else an earlier attempt of this move created it (the old one stayed): go on
        elif there.status in (404, 410):
            body = {k: v for k, v in record.items() if k != self.options.id_field} | t.fields
            post = self.client.entity_url(entity)
            resp = await self.client.request(
                "POST", post, entity, body=dumps(body), key=key("POST")
            )
            if resp.status >= 300:
                failure = self._failure(capture, row, "POST", post, resp)
                return failure._replace(column=capture.key[0]) if resp.status == 409 else failure
        else:
            return self._failure(capture, row, "GET", new_url, there)
        landed[created] = True
        resp = await self.client.request("DELETE", old_url, entity, key=key("DELETE"))
        if resp.status < 300 or resp.status in (404, 410):
            landed[deleted] = True
            return True
        failure = self._failure(capture, row, "DELETE", old_url, resp)
        return failure._replace(message=f"moved to {new_url}, the old one stays: {failure.message}")

    async def _write_one(
        self, capture: Capture, op: WriteOp, body: bytes | None, seen: bytes, row: int
    ) -> bool | WriteFailure:
        """Write one record: True if it landed, False if it was gone (an update), or the
        app's refusal."""
        entity = capture.entity
        url = self.client.record_url(entity, op.key)

        def key(method: str) -> str:
            values = sorted(op.values.items())
            data = pack([capture.name, method, url, op.op, list(op.key), values, seen])
            return hashlib.sha256(data).hexdigest()

        if op.op == "D":
            resp = await self.client.request("DELETE", url, entity, key=key("DELETE"))
            if resp.status < 300 or resp.status in (404, 410):
                return True
            return self._failure(capture, row, "DELETE", url, resp)
        resp = await self.client.request("PATCH", url, entity, body=body, key=key("PATCH"))
        if resp.status < 300:
            return True
        if resp.status in (404, 410):
            if op.op == "U":
                return False
            post = self.client.entity_url(entity)
            resp = await self.client.request("POST", post, entity, body=body, key=key("POST"))
            if resp.status < 300:
                return True
            if resp.status == 409:  # created meanwhile: update it
                resp = await self.client.request("PATCH", url, entity, body=body, key=key("PATCH2"))
                if resp.status < 300:
                    return True
            return self._failure(capture, row, "POST", post, resp)
        return self._failure(capture, row, "PATCH", url, resp)

    def _failure(
        self, capture: Capture, row: int, method: str, url: str, resp: Response
    ) -> WriteFailure:
        text = text_of(resp.body)
        return WriteFailure(
            row,
            _column_of(resp.body, capture),
            f"{method} {url} answered HTTP {resp.status}: {text}",
        )


# -- helpers -------------------------------------------------------------------------------


def _record(body: bytes) -> dict[str, Any] | None:
    """The JSON object an answer holds (None if it holds something else)."""
    try:
        data = loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


_FIELD_KEYS = ("field", "column", "attribute", "property", "param", "path", "loc", "pointer")


def _column_of(body: bytes, capture: Capture) -> str | None:
    """The captured field an app's error body names, if it names one."""
    columns = capture.columns
    try:
        data = loads(body)
    except ValueError:
        data = None

    def named(value: Any) -> str | None:
        if isinstance(value, str):
            leaf = re.split(r"[./\[\]]+", value.strip("/$"))
            for part in [value, *reversed(leaf)]:
                if part in columns:
                    return part
        if isinstance(value, list):
            for part in reversed(value):
                if isinstance(part, str) and part in columns:
                    return part
        return None

    def search(node: Any) -> str | None:
        if isinstance(node, dict):
            for k in _FIELD_KEYS:
                if k in node and (found := named(node[k])):
                    return found
            for k, v in node.items():
                if k in columns and k not in capture.key and isinstance(v, (list, str, dict)):
                    return str(k)
            for v in node.values():
                if found := search(v):
                    return found
        elif isinstance(node, list):
            for v in node:
                if found := search(v):
                    return found
        return None

    found = search(data)
    if found:
        return found
    text = body.decode("utf-8", "replace")
    for column in columns:
        if re.search(rf"\b{re.escape(column)}\b", text):
            return column
    return None
