"""Entity maps: which entity on each side, keys, field mappings, conflict policy.

User-facing models are pydantic (`EntityMap`, `SideSpec`, `FieldMap`, `ConflictSpec`);
`EntityMap.compile()` turns one into a `CompiledMap`, a plain frozen value the hot path uses.

Canonical field names are the left column names: the merged state, the conflict log and the
record keys all speak them. A record key is the tuple of key values in left key order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from conflict import LWW, Custom, Policy, Prefer, Resolver
from engine.connectors.base import Capture, EntitySchema
from engine.errors import MapError, SchemaError
from engine.ids import Direction, Side, check_name
from engine.values import TYPES, carries, kind_of

__all__ = [
    "CompiledMap",
    "ConflictSpec",
    "EntityMap",
    "FieldMap",
    "KeyComparisonWarning",
    "SideSpec",
    "UniqueOrderWarning",
    "check_schema",
    "check_types",
    "key_warnings",
    "load_map",
    "unique_warnings",
]

POLICIES = ("lww", "prefer", "custom")


class SideSpec(BaseModel):
    """One side of a map: the app, the entity (table) and its key columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: str
    entity: str
    key: list[str] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _key_as_list(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("key"), str):
            data = {**data, "key": [data["key"]]}
        return data


class FieldMap(BaseModel):
    """A left column, the right column it maps to, and which way edits flow.

    ``type`` (optional) names the field's canonical type (see `engine.values`): connectors
    whose applications do not declare column types (HTTP) need it; the others check it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    left: str
    right: str
    direction: Direction = Direction.BOTH
    type: str | None = None


class ConflictSpec(BaseModel):
    """How concurrent edits of one field are decided.

    Forms accepted: ``{policy: lww}``, ``{policy: prefer, app: crm}`` (or ``{prefer: crm}``,
    ``{policy: "prefer:crm"}``), ``{policy: custom, resolver: name}`` (or ``{custom: name}``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = "lww"
    app: str | None = None
    resolver: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"policy": data}
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        if "prefer" in data:
            data.setdefault("policy", "prefer")
            data["app"] = data.pop("prefer")
        if "custom" in data:
            data.setdefault("policy", "custom")
            data["resolver"] = data.pop("custom")
        policy = data.get("policy")
        if isinstance(policy, str) and ":" in policy and policy.split(":", 1)[0] in POLICIES:
            name, _, arg = policy.partition(":")
            data["policy"] = name
            data["app" if name == "prefer" else "resolver"] = arg
        return data


class EntityMap(BaseModel):
    """An entity map, as written in a map file.

    Invalid maps are refused with a `MapError` that names the map, the field and the problem.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    left: SideSpec
    right: SideSpec
    fields: list[FieldMap] = Field(min_length=1)
    conflict: ConflictSpec = ConflictSpec()
    partitions: int | None = Field(default=None, ge=1, le=256)
    initial_sync: bool = True
    """Copy the records that exist when the map first plays (both ways)."""

    @model_validator(mode="after")
    def _check(self) -> EntityMap:
        name = self.name
        problem = check_name("map", name)
        if problem:
            raise MapError(name, None, problem)
        if self.left.app == self.right.app and self.left.entity == self.right.entity:
            raise MapError(name, None, "left and right are the same entity of the same app")
        for side, spec in (("left", self.left), ("right", self.right)):
            seen: dict[str, int] = {}
            for i, fm in enumerate(self.fields):
                column = getattr(fm, side)
                if column in seen:
                    raise MapError(
                        name,
                        column,
                        f"two fields map onto {side} column {column!r} "
                        f"(fields #{seen[column] + 1} and #{i + 1})",
                    )
                seen[column] = i
            if len(set(spec.key)) != len(spec.key):
                raise MapError(name, None, f"{side} key {spec.key} repeats a column")
            for column in spec.key:
                if column not in seen:
                    raise MapError(
                        name, column, f"{side} key column {column!r} is not mapped by any field"
                    )
                fm = self.fields[seen[column]]
                if fm.direction is not Direction.BOTH:
                    raise MapError(
                        name,
                        column,
                        f"key column {column!r} must sync both ways, not {fm.direction.value}",
                    )
        for fm in self.fields:
            if fm.type is not None and fm.type not in TYPES:
                raise MapError(
                    name,
                    fm.left,
                    f"unknown type {fm.type!r}; expected one of {', '.join(TYPES)}",
                )
        left_of = {fm.right: fm.left for fm in self.fields}
        if {left_of[c] for c in self.right.key} != set(self.left.key):
            raise MapError(
                name,
                None,
                f"right key {self.right.key} does not map onto left key {self.left.key}",
            )
        policy = self.conflict.policy
        if policy not in POLICIES:
            raise MapError(
                name,
                "conflict.policy",
                f"unknown policy {policy!r}; expected one of {', '.join(POLICIES)}",
            )
        if policy == "prefer" and self.conflict.app not in (self.left.app, self.right.app):
            raise MapError(
                name,
                "conflict.app",
                f"prefer names app {self.conflict.app!r}, which is neither side of the map "
                f"({self.left.app!r}, {self.right.app!r})",
            )
        if policy == "custom" and not self.conflict.resolver:
            raise MapError(name, "conflict.resolver", "custom policy needs a resolver name")
        return self

    def side(self, side: Side) -> SideSpec:
        return self.left if side is Side.LEFT else self.right

    def check_apps(self, known: Mapping[str, Any]) -> None:
        for label, spec in (("left", self.left), ("right", self.right)):
            if spec.app not in known:
                names = ", ".join(sorted(known)) or "none added"
                raise MapError(
                    self.name, f"{label}.app", f"unknown app {spec.app!r} (known: {names})"
                )

    def policy(self, resolvers: Mapping[str, Resolver] | None = None) -> Policy:
        spec = self.conflict
        if spec.policy == "prefer":
            assert spec.app is not None
            return Prefer(spec.app)
        if spec.policy == "custom":
            assert spec.resolver is not None
            return Custom(spec.resolver, (resolvers or {}).get(spec.resolver))
        return LWW

    def compile(self, resolvers: Mapping[str, Resolver] | None = None) -> CompiledMap:
        fields = tuple(fm.left for fm in self.fields)
        index = {name: i for i, name in enumerate(fields)}
        sources = tuple(fm.direction.sources() for fm in self.fields)
        targeted = tuple(
            tuple(i for i, s in enumerate(sources) if side.other in s) for side in Side
        )
        return CompiledMap(
            name=self.name,
            fields=fields,
            apps=(self.left.app, self.right.app),
            entities=(self.left.entity, self.right.entity),
            columns=(fields, tuple(fm.right for fm in self.fields)),
            key=tuple(index[c] for c in self.left.key),
            sourced=tuple(tuple(i for i, s in enumerate(sources) if side in s) for side in Side),
            targeted=targeted,
            owned=tuple(tuple(i for i, s in enumerate(sources) if s == (side,)) for side in Side),
            targeted_set=tuple(frozenset(t) for t in targeted),
            both=tuple(fm.direction is Direction.BOTH for fm in self.fields),
            policy=self.policy(resolvers),
            types=tuple(fm.type for fm in self.fields),
        )


@dataclass(frozen=True)
class CompiledMap:
    """A validated map in the shape the hot path wants. Field ``i`` is ``fields[i]``.

    ``columns[side][i]`` is field i's column on that side; ``key`` lists the canonical key
    field indices; ``sourced[side]`` the fields whose edits on that side are synced;
    ``targeted[side]`` the fields that side receives; ``owned[side]`` those only that side
    sets (one-way from it); ``both[i]`` whether field i syncs both ways.
    """

    name: str
    fields: tuple[str, ...]
    apps: tuple[str, str]
    entities: tuple[str, str]
    columns: tuple[tuple[str, ...], tuple[str, ...]]
    key: tuple[int, ...]
    sourced: tuple[tuple[int, ...], ...]
    targeted: tuple[tuple[int, ...], ...]
    owned: tuple[tuple[int, ...], ...]
    targeted_set: tuple[frozenset[int], ...]
    both: tuple[bool, ...]
    policy: Policy
    types: tuple[str | None, ...]

    def key_columns(self, side: Side) -> tuple[str, ...]:
        return tuple(self.columns[side][i] for i in self.key)

    def capture(self, side: Side) -> Capture:
        """What the connector of ``side`` captures and writes for this map."""
        return Capture(
            name=f"{self.name}_{'L' if side is Side.LEFT else 'R'}",
            entity=self.entities[side],
            columns=self.columns[side],
            key=self.key_columns(side),
            types=self.types,
        )


def check_schema(emap: EntityMap, side: Side, schema: EntitySchema | None) -> None:
    """Refuse the map if ``side``'s entity lacks a mapped column or an upsert key, or if a
    column's type cannot hold the type the map declares for its field."""
    spec = emap.side(side)
    label = side.label
    where = f"{spec.app}.{spec.entity}"
    if schema is None:
        raise SchemaError(
            emap.name, None, f"{label} entity {spec.entity!r} does not exist in app {spec.app!r}"
        )
    for fm in emap.fields:
        column = getattr(fm, label)
        if column not in schema.columns and schema.open:
            continue  # a field records may hold without any of them holding it yet
        if column not in schema.columns:
            have = ", ".join(schema.columns)
            raise SchemaError(
                emap.name,
                column,
                f"{label} column {column!r} does not exist in {where} (it has: {have})",
            )
        declared = fm.type
        held = kind_of(schema.columns[column].type)
        if declared and held and declared != held and not carries(held, declared):
            raise SchemaError(
                emap.name,
                column,
                f"{label} column {column!r} of {where} holds {held} "
                f"({schema.columns[column].type}), not the declared {declared}",
            )
    if not any(set(unique) == set(spec.key) for unique in schema.unique):
        raise SchemaError(
            emap.name,
            None,
            f"{label} key {spec.key} of {where} is neither its primary key nor a unique index;"
            " one is needed to write records idempotently",
        )


def check_types(emap: EntityMap, left: EntitySchema | None, right: EntitySchema | None) -> None:
    """Refuse the map if a field's values cannot travel the way it syncs: each source
    column's type must fit the target column (a text into an integer, a timestamp into a
    date, a decimal into an integer are refused; an integer into a decimal is fine)."""
    if left is None or right is None:
        return
    schemas = (left, right)
    for fm in emap.fields:
        names = (fm.left, fm.right)
        found = [schemas[s].columns.get(names[s]) for s in Side]
        if found[0] is None or found[1] is None:
            continue
        kinds = [kind_of(column.type) for column in found if column is not None]
        where = [
            f"{emap.side(s).app}.{emap.side(s).entity}.{names[s]} ({column.type}: {kinds[s]})"
            for s, column in zip(Side, found, strict=True)
            if column is not None
        ]
        for src in fm.direction.sources():
            if not carries(kinds[src], kinds[src.other]):
                raise SchemaError(
                    emap.name, fm.left, f"values of {where[src]} do not fit {where[src.other]}"
                )


class KeyComparisonWarning(UserWarning):
    """A map's key column compares differently on its two sides (see `key_warnings`)."""


def key_warnings(
    emap: EntityMap, left: EntitySchema | None, right: EntitySchema | None
) -> list[str]:
    """One message per key field whose columns compare differently on the two sides (one
    ignores case or trailing spaces, the other does not): keys one side holds apart are one
    key on the other. The map is accepted; records whose keys collide under the target's
    rules become row-level errors there, naming both keys."""
    if left is None or right is None:
        return []
    schemas = (left, right)
    out = []
    for i in emap.compile().key:
        fm = emap.fields[i]
        names = (fm.left, fm.right)
        found = [schemas[s].columns.get(names[s]) for s in Side]
        rules = [c.compare if c is not None else None for c in found]
        if rules[0] == rules[1]:
            continue
        where = [
            f"{emap.side(s).app}.{emap.side(s).entity}.{names[s]} {rules[s] or 'compares exactly'}"
            for s in Side
        ]
        out.append(
            f"map {emap.name!r}, key field {fm.left!r}: {where[0]}, but {where[1]}; records"
            " whose keys collide under a side's rules are refused there (row errors naming"
            " both keys)"
        )
    return out


class UniqueOrderWarning(UserWarning):
    """A map's target has a unique index besides the key and the map runs on several
    partitions (see `unique_warnings`)."""


def unique_warnings(
    emap: EntityMap, left: EntitySchema | None, right: EntitySchema | None, partitions: int
) -> list[str]:
    """One message per unique index besides the key, on a side the map writes some of its
    columns to, when the map runs on more than one partition: partitions write in parallel,
    so a value that moves from one record to another in one transaction (a REPLACE that
    displaces a row) can reach the target's index in the other order and be refused there
    as a duplicate: the partition writes the record again a few times, a little later each
    time (`engine.pipeline.RETRY_ATTEMPTS`), and then logs a row error with its payload.
    One partition keeps such moves in the order they were made."""
    if partitions <= 1:
        return []
    cmap = emap.compile()
    out = []
    for side, schema in zip(Side, (left, right), strict=True):
        if schema is None:
            continue
        spec = emap.side(side)
        written = {(emap.fields[i].left, emap.fields[i].right)[side] for i in cmap.targeted[side]}
        for cols in schema.unique:
            if set(cols) == set(spec.key) or not written & set(cols):
                continue
            out.append(
                f"map {emap.name!r}: {spec.app}.{spec.entity} has a unique index on"
                f" ({', '.join(cols)}) besides its key, and the map runs on {partitions}"
                " partitions: a value moved from one record to another in one transaction (a"
                " REPLACE that displaces a row) can reach it out of order; the refused record"
                " is written again for a few seconds, then is a row error; set partitions: 1"
                " on the map to keep such moves in order"
            )
    return out


def load_map(source: str | Path | Mapping[str, Any] | EntityMap) -> EntityMap:
    """Load a map from a YAML or JSON file path, a dict or an `EntityMap`.

    Every problem becomes a `MapError` naming the map (when it has a name), the field and
    what is wrong.
    """
    if isinstance(source, EntityMap):
        return source
    origin = ""
    if isinstance(source, (str, Path)):
        path = Path(source)
        origin = f" (from {path})"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MapError(None, None, f"cannot read map file {path}: {exc}") from exc
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            kind = path.suffix[1:] or "YAML"
            raise MapError(None, None, f"{path} is not valid {kind}: {exc}") from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise MapError(None, None, f"expected a mapping{origin}, found {type(data).__name__}")
    name = data.get("name") if isinstance(data.get("name"), str) else None
    try:
        return EntityMap.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _describe_loc(data, err["loc"])
        raise MapError(name, loc or None, f"{err['msg']}{origin}") from None


def _describe_loc(data: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location; a field entry is named by its left column."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            entry = node[item]
            label = entry.get("left") if isinstance(entry, Mapping) else None
            parts.append(f"[{label}]" if isinstance(label, str) and label else f"[{item}]")
            node = entry
        else:
            parts.append(f".{item}" if parts else str(item))
            node = node.get(item) if isinstance(node, Mapping) else None
    return "".join(parts)
