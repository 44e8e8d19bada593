"""The SQL text of the PostgreSQL connector, built without I/O.

It holds the quoting of identifiers and literals, the names of a capture's objects, the
catalog queries that describe a table, and the statements that write a batch.

Every identifier is quoted (`q`) and every literal spelled as an E'' string (`lit`), so the
text reads the same whatever ``standard_conforming_strings``. Names longer than PostgreSQL's
63 bytes are shortened with a hash (`ident`), never truncated by the server. A batch becomes
one statement per kind and column set: deletes first, then moves in the order given
(``UPDATE ... SET <key and every column> WHERE <key> = <old key>``), then updates and
upserts; values travel as parameters, converted by `engine.connectors.postgresql_types`, and
a record holding a value PostgreSQL would change silently is left out of the batch and
reported as a `WriteFailure`. Each `Statement` knows the captured column of each of its
placeholders, so an error the server reports for parameter ``$n`` names its column.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from engine.connectors.base import OP_ORDER, Capture, WriteFailure, WriteOp, move_problem
from engine.connectors.postgresql_types import Table, _writer

Rows = list[tuple[int, tuple[Any, ...]]]  # (index in the batch, statement parameters)

MAX_IDENT = 63  # PostgreSQL truncates longer identifiers (NAMEDATALEN - 1 bytes)
RECEIPTS = "_ds_receipts"  # (capture, writer) -> (number, position), in the schema


def q(name: str) -> str:
    """Quote an identifier."""
    return '"' + name.replace('"', '""') + '"'


def lit(text: str) -> str:
    """A string literal (an E'' literal reads the same whatever standard_conforming_strings)."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def ident(prefix: str, name: str) -> str:
    """``prefix + name``, shortened with a hash where PostgreSQL would truncate it."""
    full = prefix + name
    if len(full.encode()) <= MAX_IDENT:
        return full
    tag = f"_{zlib.crc32(full.encode()):08x}"
    return full.encode()[: MAX_IDENT - len(tag)].decode(errors="ignore") + tag


class Names(NamedTuple):
    """A capture's objects, quoted and schema-qualified (``channel`` as NOTIFY spells it)."""

    log: str
    gate: str
    seq: str
    fn: str
    channel: str
    triggers: tuple[str, str, str]  # insert, update, delete


def names_of(schema: str, capture: Capture) -> Names:
    """The objects of ``capture`` in ``schema``."""
    n = capture.name
    log, gate, seq, fn = (
        f"{q(schema)}.{q(ident(p, n))}" for p in ("_ds_log_", "_ds_gate_", "_ds_seq_", "_ds_fn_")
    )
    ins, upd, dele = (q(ident(f"_ds_{n}_", e)) for e in ("insert", "update", "delete"))
    return Names(log, gate, seq, fn, ident("ds_", n), (ins, upd, dele))


RELATION_SQL = """SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'f', 'm')"""
COLUMNS_SQL = """SELECT a.attname, format_type(a.atttypid, a.atttypmod), b.typname,
  format_type(b.oid, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END),
  CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
  NOT a.attnotnull, a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""
COLLATIONS_SQL = """SELECT a.attname, c.collname, c.collisdeterministic FROM pg_attribute a
JOIN pg_collation c ON c.oid = a.attcollation
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped"""
# Keys an upsert can name: no expression, no predicate, not deferrable; the primary key first.
UNIQUE_SQL = """SELECT array(SELECT a.attname
    FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(num, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num
    WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
FROM pg_index i WHERE i.indrelid = %s AND i.indisunique AND i.indimmediate AND i.indisvalid
  AND i.indexprs IS NULL AND i.indpred IS NULL ORDER BY i.indisprimary DESC, i.indexrelid"""
CONSTRAINT_COLUMNS_SQL = """SELECT a.attname FROM pg_attribute a
WHERE a.attrelid = %(rel)s AND a.attnum = ANY(coalesce(
  (SELECT conkey FROM pg_constraint WHERE conrelid = %(rel)s AND conname = %(name)s),
  (SELECT i.indkey::int2[] FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
   WHERE i.indrelid = %(rel)s AND c.relname = %(name)s))) ORDER BY a.attnum"""


class Statement(NamedTuple):
    """One statement of a batch, its rows, and the captured column of each placeholder (so
    an error naming ``$n`` names its column)."""

    sql: str
    rows: Rows
    columns: tuple[int, ...]


def _plan(
    qualified: str, capture: Capture, table: Table, ops: Sequence[WriteOp]
) -> tuple[list[WriteFailure], list[Statement]]:
    """The records refused before sending (a column that is gone, a value PostgreSQL
    would truncate, round or convert), and one statement per kind and column set with its
    rows. ``qualified``: the entity's name, quoted and schema-qualified."""
    found = [table.columns.get(c) for c in capture.columns]
    writers = [_writer(c) if c else None for c in found]
    key_index = capture.key_index
    failures: list[WriteFailure] = []
    # (kind, columns, run) -> rows; moves keep the order given (a new run where the columns
    # change)
    groups: dict[tuple[str, tuple[int, ...], int], Rows] = {}
    placeholders: dict[tuple[str, tuple[int, ...], int], tuple[int, ...]] = {}
    run, last_move = 0, None
    for index, op in enumerate(ops):
        if op.op == "M":
            problem = move_problem(capture, op)
            if problem or op.old is None:
                failures.append(WriteFailure(index, None, problem or ""))
                continue
            new = {**op.values, **dict(zip(key_index, op.key, strict=True))}
            cols = tuple(sorted(new))
            if cols != last_move:
                run, last_move = run + 1, cols
            pairs = [(i, new[i]) for i in cols] + list(zip(key_index, op.old, strict=True))
        else:
            cols = () if op.op == "D" else tuple(sorted(op.values))
            if op.op == "U" and not cols:
                continue  # nothing to write
            # the parameters in the order of `_write_sql`'s placeholders
            pairs = list(zip(key_index, op.key, strict=True))
            if op.op == "I":
                pairs += [(i, op.values[i]) for i in cols if i not in key_index]
            elif op.op == "U":
                pairs = [(i, op.values[i]) for i in cols] + pairs
        params: list[Any] = []
        for i, value in pairs:
            writer, column = writers[i], capture.columns[i]
            converted, problem = (
                writer(value) if writer else (None, f"no such column in {capture.entity!r}")
            )
            if problem:
                declared = f" ({c.declared})" if (c := found[i]) else ""
                failures.append(
                    WriteFailure(index, column, f"column {column!r}{declared}: {problem}")
                )
                break
            params.append(converted)
        else:
            group = (op.op, cols, run if op.op == "M" else 0)
            groups.setdefault(group, []).append((index, tuple(params)))
            placeholders.setdefault(group, tuple(i for i, _ in pairs))
    # deletes first (they free unique values for the rest), then moves (they free their old
    # keys for the inserts), updates, upserts; sorted() is stable: moves keep their order
    order = {**OP_ORDER, "I": OP_ORDER["I"] + 1}
    return failures, [
        Statement(_write_sql(qualified, capture, group[0], group[1]), rows, placeholders[group])
        for group, rows in sorted(groups.items(), key=lambda g: order.get(g[0][0], 9))
    ]


def _write_sql(table: str, capture: Capture, kind: str, cols: tuple[int, ...]) -> str:
    """The statement of one kind and column set; ``table`` quoted and schema-qualified."""
    where = " AND ".join(f"{q(k)} = %s" for k in capture.key)
    if kind == "D":
        return f"DELETE FROM {table} WHERE {where}"
    names = [capture.columns[i] for i in cols]
    if kind in ("U", "M"):  # a move sets the key too: ``cols`` holds it
        return f"UPDATE {table} SET {', '.join(f'{q(c)} = %s' for c in names)} WHERE {where}"
    updates = [c for c in names if c not in capture.key]
    targets = [*capture.key, *updates]
    action = (
        "DO UPDATE SET " + ", ".join(f"{q(c)} = EXCLUDED.{q(c)}" for c in updates)
        if updates
        else "DO NOTHING"
    )
    return (
        f"INSERT INTO {table} ({', '.join(map(q, targets))})"
        f" VALUES ({', '.join('%s' for _ in targets)})"
        f" ON CONFLICT ({', '.join(map(q, capture.key))}) {action}"
    )
