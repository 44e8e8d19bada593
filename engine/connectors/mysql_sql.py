"""The SQL of the MariaDB / MySQL connector: its text, and the helpers that send it.

It holds the quoting of identifiers and literals (`lit` escapes with asyncmy's functions and
relies on backslash escapes, which the connector's sessions never disable), the names of the
change tables, keyset pagination for snapshots, and the statements that write a batch
(`_groups`: one `Group` per kind and column set, deletes first, then moves in the order
given, then updates and upserts). Nothing here keeps state or opens a connection: the
helpers that run statements take the cursor to run them on; `_many` and `_insert` send them
several per packet, each packet below `PACKET` characters.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from asyncmy.converters import escape_bytes_prefixed, escape_item, escape_string
from asyncmy.cursors import Cursor

from engine.connectors.base import (
    OP_ORDER,
    Capture,
    Receipt,
    WriteFailure,
    WriteOp,
    move_problem,
    pack_failures,
)
from engine.connectors.mysql_types import Plan, Refused

PACKET = 1 << 20  # characters of SQL per packet we send (well below max_allowed_packet)
LOCK_CHUNK = 500  # rows locked per statement before a batch is written


def q(name: str) -> str:
    """Quote an identifier."""
    return "`" + name.replace("`", "``") + "`"


def lit(value: Any) -> str:
    """A value as an SQL literal (backslash escapes: our sessions never disable them)."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + escape_string(value) + "'"
    if isinstance(value, bytes):
        return escape_bytes_prefixed(value)
    return str(escape_item(value, "utf8mb4"))


RECEIPTS = "_ds_receipts"  # (capture, writer) -> (number, position, failures), in the database


def receipt_sql(
    capture: Capture,
    receipt: Receipt,
    position: int,
    failures: Sequence[WriteFailure],
    alias: bool = False,
) -> str:
    """The statement that records ``receipt``: a batch of ``capture`` landed at ``position``,
    the application refusing ``failures`` (`pack_failures`: NULL when none), each value once
    in the text. ``alias``: ODKU reads the new row by alias (MySQL >= 8.0.19), not VALUES()."""
    columns = ("`number`", "`position`", "`failures`")
    new = "_ds_new.{}" if alias else "VALUES({})"
    sets = ", ".join(f"{c} = {new.format(c)}" for c in columns)
    return (
        f"INSERT INTO {q(RECEIPTS)} (`capture`, `writer`, {', '.join(columns)}) VALUES"
        f" ({lit(capture.name)}, {lit(receipt.writer)}, {int(receipt.number)}, {int(position)},"
        f" {lit(pack_failures(failures))}){' AS _ds_new' if alias else ''}"
        f" ON DUPLICATE KEY UPDATE {sets}"
    )


def log_table(capture: Capture) -> str:
    return f"_ds_log_{capture.name}"


def log_column(prefix: str, column: str) -> str:
    """``o:``/``n:`` + the column's name, shortened with a checksum past MySQL's 64."""
    name = prefix + column
    if len(name) <= 64:
        return name
    return f"{name[:54]}~{zlib.crc32(column.encode()):08x}"


def _keyset(key: Sequence[str], last: Sequence[Any]) -> str:
    """Rows after ``last`` in key order (NULLs sort first)."""
    ors = []
    for i, column in enumerate(key):
        eq = [f"{q(k)} IS NULL" if v is None else f"{q(k)} = {lit(v)}"
              for k, v in zip(key[:i], last[:i], strict=True)]  # fmt: skip
        v = last[i]
        gt = f"{q(column)} IS NOT NULL" if v is None else f"{q(column)} > {lit(v)}"
        ors.append("(" + " AND ".join([*eq, gt]) + ")")
    return " OR ".join(ors)


# -- SQL helpers -----------------------------------------------------------------------------


async def _results(cur: Cursor, sql: str) -> list[list[tuple[Any, ...]]]:
    """Run ``sql`` (one or more statements); the rows of each."""
    await cur.execute(sql)
    out = [list(await cur.fetchall())]
    while await cur.nextset():
        out.append(list(await cur.fetchall()))
    return out


async def _rows(cur: Cursor, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` (one or more statements); the rows of the last one."""
    return (await _results(cur, sql))[-1]


async def _many(cur: Cursor, statements: Sequence[str]) -> list[int]:
    """Run statements several per packet; their affected (UPDATE: matched) row counts."""
    counts: list[int] = []
    start = 0
    while start < len(statements):
        end, size = start, 0
        while end < len(statements) and (end == start or size + len(statements[end]) < PACKET):
            size += len(statements[end]) + 1
            end += 1
        counts.append(int(await cur.execute(";".join(statements[start:end]))))
        while await cur.nextset():
            counts.append(int(cur.rowcount))  # type: ignore[call-overload]
        start = end
    return counts


async def _insert(cur: Cursor, head: str, rows: Sequence[str], tail: str) -> None:
    """``head`` + rows + ``tail``: multi-row INSERT statements of at most `PACKET` chars."""
    start = 0
    while start < len(rows):
        end, size = start, len(head) + len(tail)
        while end < len(rows) and (end == start or size + len(rows[end]) < PACKET):
            size += len(rows[end]) + 1
            end += 1
        await cur.execute(head + ",".join(rows[start:end]) + tail)
        start = end


class Batch(NamedTuple):
    groups: list[Group]
    locks: list[str]  # SELECT ... FOR UPDATE of the batch's rows


class Group(NamedTuple):
    """Records of one kind and column set, as SQL: per record a statement (update, delete,
    or for a keyed upsert the update by key) and for upserts a VALUES tuple."""

    kind: str
    rows: list[int]  # their indexes in the batch
    statements: list[str]
    tuples: list[str]
    head: str  # upserts: "INSERT INTO t (...) VALUES "
    tail: str  # upserts by ODKU: " ON DUPLICATE KEY UPDATE ..."; keyed upserts: ""

    async def run(self, cur: Cursor, sel: Sequence[int]) -> None:
        if self.kind != "I":
            await _many(cur, [self.statements[i] for i in sel])
        elif self.tail:
            await _insert(cur, self.head, [self.tuples[i] for i in sel], self.tail)
        else:
            matched = await _many(cur, [self.statements[i] for i in sel])
            new = [self.tuples[i] for i, n in zip(sel, matched, strict=True) if n == 0]
            await _insert(cur, self.head, new, "")


# -- writes -----------------------------------------------------------------------------------


def _groups(
    capture: Capture,
    plan: Plan,
    ops: Sequence[WriteOp],
    failures: list[WriteFailure],
    alias: bool,
) -> Batch:
    """The batch as SQL, grouped by kind and columns; values refused here are failures.
    ``alias``: ODKU reads the new row by alias (MySQL >= 8.0.19), not by VALUES()."""
    table, writes = q(capture.entity), plan.writes
    key_index = capture.key_index
    keys = set(key_index)
    # (kind, columns, run) -> group; moves keep the order given (a new run where the columns
    # change)
    groups: dict[tuple[str, tuple[int, ...], int], Group] = {}
    run, last_move = 0, None
    wheres: list[str] = []

    def match(key: Sequence[str]) -> str:
        return " AND ".join(f"{q(capture.key[n])} = {v}" for n, v in enumerate(key))

    for row, op in enumerate(ops):
        if op.op == "M" and (problem := move_problem(capture, op)):
            failures.append(WriteFailure(row, None, problem))
            continue
        column = key_index[0]
        try:
            key = []
            for column, v in zip(key_index, op.key, strict=True):
                key.append(lit(writes[column](v)))
            old = []
            if op.op == "M" and op.old is not None:
                for column, v in zip(key_index, op.old, strict=True):
                    old.append(lit(writes[column](v)))
            cols = () if op.op == "D" else tuple(i for i in sorted(op.values) if i not in keys)
            values = []
            for column in cols:
                values.append(lit(writes[column](op.values[column])))
        except Refused as exc:
            name = capture.columns[column]
            info = plan.table.columns.get(name)
            declared = f" ({info.type})" if info else ""
            failures.append(WriteFailure(row, name, f"column {name!r}{declared}: {exc}"))
            continue
        where = match(key)
        wheres.append(f"(SELECT 1 FROM {table} WHERE {where} FOR UPDATE)")
        sets = ", ".join(
            f"{q(capture.columns[i])} = {v}" for i, v in zip(cols, values, strict=True)
        )
        if op.op == "M":
            wheres.append(f"(SELECT 1 FROM {table} WHERE {match(old)} FOR UPDATE)")
            if cols != last_move:
                run, last_move = run + 1, cols
        group_key = (op.op, cols, run if op.op == "M" else 0)
        group = groups.get(group_key)
        if group is None:
            group = groups[group_key] = _group(capture, plan, op.op, cols, alias)
        group.rows.append(row)
        if op.op == "D":
            group.statements.append(f"DELETE FROM {table} WHERE {where}")
        elif op.op == "M":
            moved = ", ".join(f"{q(k)} = {v}" for k, v in zip(capture.key, key, strict=True))
            group.statements.append(
                f"UPDATE {table} SET {', '.join(filter(None, (moved, sets)))} WHERE {match(old)}"
            )
        elif op.op == "U":
            if cols:
                group.statements.append(f"UPDATE {table} SET {sets} WHERE {where}")
            else:
                group.rows.pop()
        else:
            group.tuples.append("(" + ", ".join(key + values) + ")")
            if not plan.odku:
                touch = sets or ", ".join(f"{q(k)} = {q(k)}" for k in capture.key)
                group.statements.append(f"UPDATE {table} SET {touch} WHERE {where}")
    # NOTE: one primary-key lookup per row: an OR or IN list may be read by a scan of
    # the whole table, which would wait for every row anyone has locked.
    locks = [
        " UNION ALL ".join(wheres[i : i + LOCK_CHUNK]) for i in range(0, len(wheres), LOCK_CHUNK)
    ]
    # deletes, then moves (in the order given: sorted() is stable), then updates and upserts
    ordered = sorted(groups.values(), key=lambda g: OP_ORDER.get(g.kind, OP_ORDER["I"]))
    return Batch([g for g in ordered if g.rows], locks)


def _group(capture: Capture, plan: Plan, kind: str, cols: tuple[int, ...], alias: bool) -> Group:
    if kind != "I":
        return Group(kind, [], [], [], "", "")
    names = [*capture.key, *(capture.columns[i] for i in cols)]
    head = f"INSERT INTO {q(capture.entity)} ({', '.join(q(c) for c in names)}) VALUES "
    if not plan.odku:
        return Group(kind, [], [], [], head, "")
    updates = [q(capture.columns[i]) for i in cols] or [q(capture.key[0])]
    if alias:
        head_alias = " AS _ds_new"
        sets = ", ".join(f"{c} = _ds_new.{c}" for c in updates)
    else:
        head_alias = ""
        sets = ", ".join(f"{c} = VALUES({c})" for c in updates)
    return Group(kind, [], [], [], head, f"{head_alias} ON DUPLICATE KEY UPDATE {sets}")
