"""How applications compare key values: the rules behind ``Column.compare``.

Two keys a map holds apart ('abc' and 'ABC', 'sp' and 'sp ') can be one key to an
application whose column compares loosely: MariaDB/MySQL ``_ci`` collations (case, and
mostly accents too) and PAD SPACE collations (trailing spaces; every MariaDB collation but
the ``_nopad_`` ones), PostgreSQL ``citext`` (case), ``character(n)`` (trailing spaces) and
nondeterministic collations, SQLite ``COLLATE NOCASE`` (ASCII case) and ``COLLATE RTRIM``.
Each function returns a description of what the column's comparison ignores, naming the
collation, or None where values compare exactly.
"""

from __future__ import annotations

__all__ = ["mysql_rule", "postgresql_rule", "sqlite_rule"]

MYSQL_TEXT = frozenset(
    {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}
)


def mysql_rule(collation: str | None, data_type: str) -> str | None:
    if not collation or data_type.lower() not in MYSQL_TEXT:
        return None
    name = collation.lower()
    ignored = []
    if name.endswith("_ci"):
        ignored.append("case")
        if "_as_" not in name:
            ignored.append("accents")
    elif "_ai_" in name or name.endswith("_ai"):
        ignored.append("accents")
    # MariaDB pads every collation but the _nopad_ ones; MySQL 8's utf8mb4_0900_* do not pad.
    if "_nopad_" not in name and "_0900_" not in name:
        ignored.append("trailing spaces")
    return _describe(ignored, f"collation {collation}")


def postgresql_rule(base_type: str, collation: str | None, deterministic: bool) -> str | None:
    if base_type == "citext":
        return _describe(["case"], "citext")
    if base_type == "bpchar":
        return _describe(["trailing spaces"], "character(n)")
    if collation and not deterministic:
        return f"compares by the nondeterministic collation {collation}"
    return None


def sqlite_rule(collation: str | None) -> str | None:
    name = (collation or "").upper()
    if name == "NOCASE":
        return _describe(["ASCII case"], "COLLATE NOCASE")
    if name == "RTRIM":
        return _describe(["trailing spaces"], "COLLATE RTRIM")
    return None


def _describe(ignored: list[str], what: str) -> str | None:
    if not ignored:
        return None
    listed = ignored[0] if len(ignored) == 1 else f"{', '.join(ignored[:-1])} and {ignored[-1]}"
    return f"ignores {listed} ({what})"
