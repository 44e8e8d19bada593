"""The public surface: what `engine` and `conflict` export, the Ray boundary, the error tree and
the wire format's error reporting."""

from __future__ import annotations

import ast
import inspect
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import pytest

import conflict
import engine
from engine import codec, errors
from engine.codec import UNSEEN, decode, encode
from engine.errors import (
    AppError,
    CodecError,
    ConnectorError,
    DualsyncError,
    MapError,
    RecordError,
    SchemaError,
)

from conftest import CUSTOMERS

ROOT = Path(__file__).resolve().parent.parent

ENGINE_API = [
    "AppError",
    "CodecError",
    "ConflictSpec",
    "ConnectorError",
    "Direction",
    "DualsyncError",
    "EngineError",
    "EntityMap",
    "FieldMap",
    "KeyComparisonWarning",
    "MapError",
    "Mode",
    "RecordError",
    "SchemaError",
    "SideSpec",
    "SyncEngine",
    "SyncTimeout",
    "UniqueOrderWarning",
    "VerifyReport",
    "WorkerLost",
    "load_map",
    "register_resolver",
]
CONFLICT_API = [
    "ABSENT",
    "DEFAULT_TOLERANCE_MS",
    "EXISTS",
    "LWW",
    "BoundedClock",
    "Chooser",
    "Conflict",
    "Custom",
    "Edit",
    "Entry",
    "HybridClock",
    "LastWriterWins",
    "Ordering",
    "Origins",
    "Policy",
    "Prefer",
    "Record",
    "Register",
    "Resolver",
    "Timestamp",
    "UnknownPolicy",
    "VectorClock",
    "latest",
    "pack",
    "register_resolver",
    "resolve",
    "resolver",
    "stamp_after",
    "unpack",
]


# -- exports -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "expected"),
    [(engine, ENGINE_API), (conflict, CONFLICT_API)],
    ids=["engine", "conflict"],
)
def test_the_public_api_exports_exactly_what_users_need(module: Any, expected: list[str]) -> None:
    assert sorted(module.__all__) == sorted(expected)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert getattr(module, name, None) is not None, f"{module.__name__}.{name} is missing"


# -- the Ray boundary ----------------------------------------------------------------------


def test_the_engine_core_and_the_merge_core_never_load_ray() -> None:
    code = textwrap.dedent(
        f"""
        import json, sys
        import conflict, engine, engine.maps, engine.pipeline, engine.store, engine.codec
        import engine.partition, engine.records
        import engine.connectors.sqlite, engine.cli, engine.demo
        from engine.maps import EntityMap
        from engine.pipeline import PartitionLogic

        emap = EntityMap.model_validate(json.loads({json.dumps(CUSTOMERS)!r}))
        logic = PartitionLogic(emap.compile())
        loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "actors")))
        print(json.dumps({{"map": emap.name, "loaded": loaded}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"map": "customers", "loaded": []}


def _imports(tree: ast.AST) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """The import statements of a module: (module level, inside functions)."""
    top: list[ast.stmt] = []
    nested: list[ast.stmt] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (nested if in_function else top).append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return top, nested


def _imported(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.Import):
        return [alias.name for alias in stmt.names]
    assert isinstance(stmt, ast.ImportFrom)
    return [stmt.module or ""] if stmt.level == 0 else []


def _is(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_only_the_actors_package_imports_ray() -> None:
    files = sorted(p for d in ("conflict", "engine", "bench") for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 10
    offenders: list[str] = []
    lazy: dict[str, list[str]] = {}
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        top, nested = _imports(ast.parse(path.read_text(encoding="utf-8"), rel))
        for stmt in top:
            for name in _imported(stmt):
                if _is(name, "ray") or _is(name, "actors"):
                    offenders.append(f"{rel}:{stmt.lineno} imports {name} at module level")
        for stmt in nested:
            for name in _imported(stmt):
                if _is(name, "ray"):
                    offenders.append(f"{rel}:{stmt.lineno} imports {name}")
                if _is(name, "actors"):
                    lazy.setdefault(rel, []).append(name)
    assert offenders == []
    # The engine reaches the actors lazily, and only from its API module.
    assert set(lazy) == {"engine/api.py"}


# -- the error tree ------------------------------------------------------------------------


def _error_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
    ]


def test_every_error_is_a_dualsync_error_and_exported() -> None:
    classes = _error_classes()
    assert {c.__name__ for c in classes} == set(errors.__all__)
    assert all(issubclass(c, DualsyncError) for c in classes)
    assert issubclass(SchemaError, MapError)
    assert issubclass(errors.SyncTimeout, errors.EngineError)
    assert issubclass(errors.WorkerLost, errors.EngineError)


EXAMPLES: list[tuple[DualsyncError, str, dict[str, Any]]] = [
    (
        MapError("customers", "phone", "two fields map onto it"),
        "map 'customers', field 'phone': two fields map onto it",
        {"map_name": "customers", "field": "phone", "problem": "two fields map onto it"},
    ),
    (
        MapError(None, None, "expected a mapping, found list"),
        "map: expected a mapping, found list",
        {"map_name": None, "field": None},
    ),
    (
        SchemaError("customers", "telephone", "no such column"),
        "map 'customers', field 'telephone': no such column",
        {"map_name": "customers", "field": "telephone"},
    ),
    (
        RecordError("customers", ("C1",), "name", "NULL refused", app="crm"),
        "map 'customers', record ('C1',), field 'name', app 'crm': NULL refused",
        {"map_name": "customers", "key": ("C1",), "field": "name", "app": "crm"},
    ),
    (
        AppError("crm", "no connector for URL 'ftp://x'"),
        "app 'crm': no connector for URL 'ftp://x'",
        {"app": "crm", "problem": "no connector for URL 'ftp://x'"},
    ),
    (
        ConnectorError("crm", "accounts", "reading changes failed: disk I/O error"),
        "app 'crm', entity 'accounts': reading changes failed: disk I/O error",
        {"app": "crm", "entity": "accounts"},
    ),
    (CodecError("expected 'writes', found 'result'"), "expected 'writes', found 'result'", {}),
    (errors.EngineError("the engine is not running"), "the engine is not running", {}),
    (errors.SyncTimeout("not idle after 5 s"), "not idle after 5 s", {}),
    (errors.WorkerLost("reader of customers died"), "reader of customers died", {}),
]


@pytest.mark.parametrize(
    ("error", "message", "attributes"), EXAMPLES, ids=[type(e[0]).__name__ for e in EXAMPLES]
)
def test_errors_say_where_and_survive_pickling(
    error: DualsyncError, message: str, attributes: dict[str, Any]
) -> None:
    assert str(error) == message
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == message
    for name, value in attributes.items():
        assert getattr(error, name) == value
        assert getattr(copy, name) == value


def test_every_error_class_has_a_pickled_example() -> None:
    assert {type(e[0]) for e in EXAMPLES} == set(_error_classes()) - {DualsyncError}


# -- the wire format -----------------------------------------------------------------------


def test_a_message_round_trips_with_its_type_and_version() -> None:
    rows = [["I", ["C1"], {0: "C1", 1: b"\x00\xff", 2: None, 3: UNSEEN, 4: 1.5, 5: 2**40}]]
    data = encode("writes", rows=rows)
    body = decode(data, "writes")
    assert body == {"t": "writes", "v": codec.VERSION, "rows": rows}
    assert body["rows"][0][2][3] is UNSEEN
    # Tuples travel as lists.
    assert decode(encode("result", position=3, errors=[(0, None, "x")]), "result")["errors"] == [
        [0, None, "x"]
    ]


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (encode("result", position=1, errors=[]), f"found 'result' version {codec.VERSION}"),
        (msgpack.packb({"t": "writes", "v": codec.VERSION + 1}), f"version {codec.VERSION + 1}"),
        (msgpack.packb({"rows": []}), "found None version None"),
        (msgpack.packb([1, 2]), "found list"),
        (b"\x92\x01", "undecodable bytes"),
        (b"\xd9\x02\xff\xfe", "undecodable bytes"),
        (b"", "undecodable bytes"),
    ],
    ids=["other-type", "other-version", "untagged", "not-a-map", "truncated", "bad-utf8", "empty"],
)
def test_decoding_the_wrong_message_says_what_was_expected_and_found(
    data: bytes, found: str
) -> None:
    with pytest.raises(CodecError) as info:
        decode(data, "writes")
    assert "expected" in str(info.value) and "'writes'" in str(info.value)
    assert found in str(info.value)


def test_an_unknown_extension_type_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="ext type 42"):
        decode(msgpack.packb({"t": "writes", "v": 1, "x": msgpack.ExtType(42, b"")}), "writes")


def test_garbage_bytes_that_parse_into_an_unhashable_key_are_a_codec_error() -> None:
    with pytest.raises(CodecError, match="expected a msgpack 'writes' message"):
        decode(b"\x81\x90\x01", "writes")
