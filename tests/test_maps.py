"""Entity maps: loading from files and values, validation errors, compiling, schema checks."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conflict import LWW, Custom, LastWriterWins, Prefer, Register
from engine.connectors.base import Column, EntitySchema
from engine.demo import MAP_YAML
from engine.errors import MapError, SchemaError
from engine.ids import Side
from engine.maps import CompiledMap, EntityMap, check_schema, load_map

from conftest import CUSTOMERS

CUSTOMERS_YAML = MAP_YAML  # the map of the issue and of the demo


def customers(change: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    """A fresh copy of the customers map, changed by ``change``."""
    data = copy.deepcopy(CUSTOMERS)
    if change is not None:
        change(data)
    return data


def refused(data: Any) -> MapError:
    with pytest.raises(MapError) as info:
        load_map(data)
    return info.value


# -- loading -------------------------------------------------------------------------------


def assert_is_the_customers_map(emap: EntityMap) -> None:
    assert emap.name == "customers"
    assert (emap.left.app, emap.left.entity, emap.left.key) == ("finance", "customers", ["account"])
    assert (emap.right.app, emap.right.entity, emap.right.key) == (
        "crm",
        "accounts",
        ["account_number"],
    )
    assert [(f.left, f.right, f.direction.value) for f in emap.fields] == [
        ("account", "account_number", "both"),
        ("name", "name", "both"),
        ("credit_limit", "credit_limit", "left_to_right"),
        ("phone", "telephone", "both"),
    ]


def test_map_loads_from_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "customers.yaml"
    path.write_text(CUSTOMERS_YAML, encoding="utf-8")
    assert_is_the_customers_map(load_map(path))
    assert_is_the_customers_map(load_map(str(path)))


def test_map_loads_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "customers.json"
    path.write_text(json.dumps(CUSTOMERS), encoding="utf-8")
    assert_is_the_customers_map(load_map(path))


def test_map_loads_from_a_dict_and_from_an_entity_map() -> None:
    emap = load_map(customers())
    assert_is_the_customers_map(emap)
    assert load_map(emap) is emap


def test_yaml_json_and_dict_give_the_same_map(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(CUSTOMERS_YAML, encoding="utf-8")
    (tmp_path / "m.json").write_text(json.dumps(CUSTOMERS), encoding="utf-8")
    assert load_map(tmp_path / "m.yaml") == load_map(tmp_path / "m.json") == load_map(CUSTOMERS)


def test_customers_map_compiles_for_the_hot_path() -> None:
    cmap = load_map(customers()).compile()
    assert isinstance(cmap, CompiledMap)
    assert cmap.name == "customers"
    assert cmap.fields == ("account", "name", "credit_limit", "phone")
    assert cmap.apps == ("finance", "crm")
    assert cmap.entities == ("customers", "accounts")
    assert cmap.columns[Side.LEFT] == ("account", "name", "credit_limit", "phone")
    assert cmap.columns[Side.RIGHT] == ("account_number", "name", "credit_limit", "telephone")
    assert cmap.key == (0,)
    assert cmap.key_columns(Side.LEFT) == ("account",)
    assert cmap.key_columns(Side.RIGHT) == ("account_number",)
    # credit_limit (field 2) flows left to right only: edited on the left, received on the right
    assert cmap.sourced[Side.LEFT] == (0, 1, 2, 3)
    assert cmap.sourced[Side.RIGHT] == (0, 1, 3)
    assert cmap.targeted[Side.LEFT] == (0, 1, 3)
    assert cmap.targeted[Side.RIGHT] == (0, 1, 2, 3)
    assert cmap.both == (True, True, False, True)
    assert isinstance(cmap.policy, LastWriterWins)
    assert cmap.policy == LWW


def test_compiled_map_describes_what_each_side_captures() -> None:
    cmap = load_map(customers()).compile()
    left, right = cmap.capture(Side.LEFT), cmap.capture(Side.RIGHT)
    assert (left.name, left.entity, left.key) == ("customers_L", "customers", ("account",))
    assert (right.name, right.entity, right.key) == ("customers_R", "accounts", ("account_number",))
    assert right.columns == ("account_number", "name", "credit_limit", "telephone")
    assert right.key_index == (0,)


def test_a_single_key_column_may_be_written_as_a_string() -> None:
    emap = load_map(customers(lambda d: d["left"].update(key="account")))
    assert emap.left.key == ["account"]


def test_conflict_defaults_to_lww() -> None:
    emap = load_map(customers(lambda d: d.pop("conflict")))
    assert emap.conflict.policy == "lww"
    assert emap.compile().policy == LWW


# -- conflict shorthands -------------------------------------------------------------------


@pytest.mark.parametrize(
    "conflict",
    [
        {"prefer": "crm"},
        {"policy": "prefer:crm"},
        {"policy": "prefer", "app": "crm"},
        "prefer:crm",
    ],
    ids=["prefer-key", "policy-colon", "long-form", "bare-string"],
)
def test_prefer_shorthands_compile_to_prefer(conflict: Any) -> None:
    emap = load_map(customers(lambda d: d.update(conflict=conflict)))
    assert (emap.conflict.policy, emap.conflict.app) == ("prefer", "crm")
    policy = emap.compile().policy
    assert policy == Prefer("crm")
    assert policy.rule == "prefer:crm"


@pytest.mark.parametrize(
    "conflict",
    [
        {"custom": "longest"},
        {"policy": "custom:longest"},
        {"policy": "custom", "resolver": "longest"},
    ],
    ids=["custom-key", "policy-colon", "long-form"],
)
def test_custom_shorthands_compile_to_custom(conflict: Any) -> None:
    emap = load_map(customers(lambda d: d.update(conflict=conflict)))
    assert (emap.conflict.policy, emap.conflict.resolver) == ("custom", "longest")

    def longest(field: str, candidates: Any) -> Register:
        return max(candidates, key=lambda r: len(str(r.value)))

    policy = emap.compile({"longest": longest}).policy
    assert isinstance(policy, Custom)
    assert policy.rule == "custom:longest"
    assert policy.fn is longest


def test_custom_policy_may_name_a_module_function() -> None:
    emap = load_map(customers(lambda d: d.update(conflict={"policy": "custom:pkg.mod:fn"})))
    assert emap.conflict.resolver == "pkg.mod:fn"


# -- refused maps --------------------------------------------------------------------------


def test_key_column_that_no_field_maps_is_refused() -> None:
    err = refused(customers(lambda d: d["fields"].pop(0)))
    assert (err.map_name, err.field) == ("customers", "account")
    assert "left key column 'account' is not mapped by any field" in str(err)
    assert str(err).startswith("map 'customers', field 'account': ")


def test_two_fields_onto_one_right_column_are_refused() -> None:
    err = refused(customers(lambda d: d["fields"].append({"left": "fax", "right": "telephone"})))
    assert (err.map_name, err.field) == ("customers", "telephone")
    assert "two fields map onto right column 'telephone' (fields #4 and #5)" in str(err)


def test_two_fields_onto_one_left_column_are_refused() -> None:
    err = refused(customers(lambda d: d["fields"].append({"left": "phone", "right": "fax"})))
    assert (err.map_name, err.field) == ("customers", "phone")
    assert "two fields map onto left column 'phone'" in str(err)


def test_unknown_policy_is_refused_listing_the_known_ones() -> None:
    err = refused(customers(lambda d: d.update(conflict={"policy": "fifo"})))
    assert (err.map_name, err.field) == ("customers", "conflict.policy")
    assert "unknown policy 'fifo'; expected one of lww, prefer, custom" in str(err)


def test_prefer_naming_an_app_outside_the_map_is_refused() -> None:
    err = refused(customers(lambda d: d.update(conflict={"prefer": "hr"})))
    assert (err.map_name, err.field) == ("customers", "conflict.app")
    assert "prefer names app 'hr'" in str(err)
    assert "('finance', 'crm')" in str(err)


def test_prefer_without_an_app_is_refused() -> None:
    err = refused(customers(lambda d: d.update(conflict={"policy": "prefer"})))
    assert err.field == "conflict.app"
    assert "prefer names app None" in str(err)


def test_custom_policy_without_a_resolver_is_refused() -> None:
    err = refused(customers(lambda d: d.update(conflict={"policy": "custom"})))
    assert (err.map_name, err.field) == ("customers", "conflict.resolver")
    assert "custom policy needs a resolver name" in str(err)


def test_unknown_top_level_key_is_refused() -> None:
    err = refused(customers(lambda d: d.update(colour="red")))
    assert (err.map_name, err.field) == ("customers", "colour")
    assert "Extra inputs are not permitted" in str(err)


def test_unknown_key_in_a_field_is_refused_naming_the_field_by_its_left_column() -> None:
    err = refused(customers(lambda d: d["fields"][3].update(colour="red")))
    assert (err.map_name, err.field) == ("customers", "fields[phone].colour")
    assert "Extra inputs are not permitted" in str(err)


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "customers.yaml"
    path.write_text(CUSTOMERS_YAML + "colour: red\n", encoding="utf-8")
    err = refused(path)
    assert (err.map_name, err.field) == ("customers", "colour")
    assert str(path) in str(err)


@pytest.mark.parametrize(
    ("change", "field", "problem"),
    [
        (lambda d: d.update(partitions="many"), "partitions", "valid integer"),
        (lambda d: d.update(partitions=0), "partitions", "greater than or equal to 1"),
        (lambda d: d.update(fields="name"), "fields", "valid list"),
        (lambda d: d["left"].update(key=5), "left.key", "valid list"),
        (lambda d: d["fields"][0].update(direction="sideways"), "fields[account].direction", ""),
        (lambda d: d.pop("right"), "right", "Field required"),
        (lambda d: d.update(initial_sync="sometimes"), "initial_sync", "valid boolean"),
    ],
    ids=[
        "partitions-str",
        "partitions-zero",
        "fields-str",
        "key-int",
        "direction",
        "no-right",
        "initial-sync",
    ],
)
def test_wrong_types_are_refused_naming_the_field(
    change: Callable[[dict[str, Any]], object], field: str, problem: str
) -> None:
    err = refused(customers(change))
    assert (err.map_name, err.field) == ("customers", field)
    assert problem in err.problem


def test_wrong_type_of_a_left_column_names_the_entry_by_position() -> None:
    err = refused(customers(lambda d: d["fields"].__setitem__(1, {"left": 5, "right": "name"})))
    assert err.map_name == "customers"
    assert err.field == "fields[1].left"


@pytest.mark.parametrize("name", ["9customers", "cust-omers", "", "a" * 64, "cüstomers"])
def test_invalid_map_name_is_refused(name: str) -> None:
    err = refused(customers(lambda d: d.update(name=name)))
    assert err.map_name == name
    assert f"map name {name!r} must start with a letter" in err.problem


def test_map_without_a_string_name_is_refused_naming_the_name_field() -> None:
    err = refused(customers(lambda d: d.update(name=None)))
    assert (err.map_name, err.field) == (None, "name")
    assert str(err).startswith("map, field 'name': ")


def test_right_key_that_does_not_map_onto_the_left_key_is_refused() -> None:
    err = refused(customers(lambda d: d["right"].update(key=["name"])))
    assert err.map_name == "customers"
    assert "right key ['name'] does not map onto left key ['account']" in str(err)


def test_one_way_key_field_is_refused() -> None:
    err = refused(customers(lambda d: d["fields"][0].update(direction="left_to_right")))
    assert (err.map_name, err.field) == ("customers", "account")
    assert "key column 'account' must sync both ways, not left_to_right" in str(err)


def test_repeated_key_column_is_refused() -> None:
    err = refused(customers(lambda d: d["left"].update(key=["account", "account"])))
    assert err.map_name == "customers"
    assert "left key ['account', 'account'] repeats a column" in str(err)


def test_same_entity_on_both_sides_is_refused() -> None:
    def same(d: dict[str, Any]) -> None:
        d["right"] = dict(d["left"])
        d["fields"] = [{"left": "account", "right": "account"}, {"left": "name", "right": "name"}]

    err = refused(customers(same))
    assert (err.map_name, err.field) == ("customers", None)
    assert "left and right are the same entity of the same app" in str(err)


def test_same_entity_name_in_two_apps_is_fine() -> None:
    def twin(d: dict[str, Any]) -> None:
        d["right"] = {**d["left"], "app": "crm"}
        d["fields"] = [{"left": "account", "right": "account"}, {"left": "name", "right": "name"}]

    assert load_map(customers(twin)).right.entity == "customers"


def test_missing_map_file_is_refused(tmp_path: Path) -> None:
    err = refused(tmp_path / "nope.yaml")
    assert "cannot read map file" in str(err)
    assert "nope.yaml" in str(err)


def test_unparsable_files_are_refused(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [customers\n", encoding="utf-8")
    assert "bad.yaml is not valid yaml" in str(refused(bad_yaml))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{name: customers}", encoding="utf-8")
    assert "bad.json is not valid json" in str(refused(bad_json))


def test_a_map_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- customers\n", encoding="utf-8")
    err = refused(path)
    assert "expected a mapping" in str(err)
    assert "found list" in str(err)


# -- apps and schemas ----------------------------------------------------------------------


def test_check_apps_accepts_known_apps() -> None:
    load_map(customers()).check_apps({"finance": object(), "crm": object()})


def test_check_apps_refuses_an_unknown_left_app_naming_left_app() -> None:
    with pytest.raises(MapError) as info:
        load_map(customers()).check_apps({"crm": object(), "hr": object()})
    err = info.value
    assert (err.map_name, err.field) == ("customers", "left.app")
    assert "unknown app 'finance' (known: crm, hr)" in str(err)


def test_check_apps_refuses_an_unknown_right_app() -> None:
    with pytest.raises(MapError) as info:
        load_map(customers()).check_apps({"finance": object()})
    assert info.value.field == "right.app"


def test_check_apps_with_no_apps_says_none_are_added() -> None:
    with pytest.raises(MapError, match=r"unknown app 'finance' \(known: none added\)"):
        load_map(customers()).check_apps({})


def schema(entity: str, columns: list[str], unique: tuple[tuple[str, ...], ...]) -> EntitySchema:
    return EntitySchema(entity, {c: Column(c, "TEXT", True, False) for c in columns}, unique)


LEFT_COLUMNS = ["account", "name", "credit_limit", "phone", "created_at"]
RIGHT_COLUMNS = ["id", "account_number", "name", "credit_limit", "telephone"]


def test_check_schema_accepts_entities_with_the_columns_and_a_unique_key() -> None:
    emap = load_map(customers())
    check_schema(emap, Side.LEFT, schema("customers", LEFT_COLUMNS, (("account",),)))
    check_schema(
        emap, Side.RIGHT, schema("accounts", RIGHT_COLUMNS, (("id",), ("account_number",)))
    )


def test_check_schema_refuses_a_missing_table() -> None:
    with pytest.raises(SchemaError) as info:
        check_schema(load_map(customers()), Side.RIGHT, None)
    err = info.value
    assert isinstance(err, MapError)
    assert (err.map_name, err.field) == ("customers", None)
    assert "right entity 'accounts' does not exist in app 'crm'" in str(err)


def test_check_schema_refuses_a_missing_column() -> None:
    columns = [c for c in RIGHT_COLUMNS if c != "telephone"]
    with pytest.raises(SchemaError) as info:
        check_schema(load_map(customers()), Side.RIGHT, schema("accounts", columns, (("id",),)))
    err = info.value
    assert (err.map_name, err.field) == ("customers", "telephone")
    assert "right column 'telephone' does not exist in crm.accounts" in str(err)
    assert "(it has: id, account_number, name, credit_limit)" in str(err)


def test_check_schema_refuses_a_key_without_a_unique_index() -> None:
    with pytest.raises(SchemaError) as info:
        check_schema(
            load_map(customers()), Side.LEFT, schema("customers", LEFT_COLUMNS, (("name",),))
        )
    err = info.value
    assert err.map_name == "customers"
    assert "left key ['account'] of finance.customers is neither its primary key" in str(err)


def test_check_schema_wants_the_unique_index_on_exactly_the_key() -> None:
    wider = schema("customers", LEFT_COLUMNS, (("account", "name"),))
    with pytest.raises(SchemaError):
        check_schema(load_map(customers()), Side.LEFT, wider)


# -- column types ---------------------------------------------------------------------------


def _schema(entity: str, columns: dict[str, str], key: str) -> EntitySchema:
    return EntitySchema(
        entity, {c: Column(c, t, True, False) for c, t in columns.items()}, ((key,),)
    )


FINANCE_TYPES = {
    "account": "TEXT",
    "name": "TEXT",
    "credit_limit": "DECIMAL(12,2)",
    "phone": "TEXT",
}


@pytest.mark.parametrize(
    ("limit_type", "fits"),
    [
        ("numeric(14,2)", True),  # decimal into decimal
        ("integer", False),  # a decimal does not fit an integer
        ("text", False),
        ("timestamptz", False),
    ],
)
def test_a_column_that_cannot_hold_the_values_it_receives_refuses_the_map(
    limit_type: str, fits: bool
) -> None:
    from engine.maps import check_types

    emap = load_map(CUSTOMERS)
    left = _schema("customers", FINANCE_TYPES, "account")
    right = _schema(
        "accounts",
        {"account_number": "varchar(20)", "name": "text", "credit_limit": limit_type,
         "telephone": "text"},
        "account_number",
    )  # fmt: skip
    if fits:
        check_types(emap, left, right)
        return
    with pytest.raises(SchemaError) as info:
        check_types(emap, left, right)
    message = str(info.value)
    assert "'customers'" in message and "'credit_limit'" in message
    assert "finance.customers.credit_limit (DECIMAL(12,2): decimal) do not fit" in message


def test_a_one_way_field_only_needs_to_fit_the_way_it_flows() -> None:
    from engine.maps import check_types

    emap = load_map(CUSTOMERS)  # credit_limit flows finance -> crm only
    left = _schema("customers", {**FINANCE_TYPES, "credit_limit": "INTEGER"}, "account")
    right = _schema(
        "accounts",
        {"account_number": "text", "name": "text", "credit_limit": "numeric(14,2)",
         "telephone": "text"},
        "account_number",
    )  # fmt: skip
    check_types(emap, left, right)  # int -> decimal fits; the way back is never taken


def test_a_declared_field_type_must_match_the_columns() -> None:
    data = customers(lambda d: d["fields"][2].update(type="decimal"))
    emap = load_map(data)
    schema = _schema("customers", {**FINANCE_TYPES, "credit_limit": "DATE"}, "account")
    with pytest.raises(SchemaError, match="holds date"):
        check_schema(emap, Side.LEFT, schema)


def test_an_unknown_declared_type_is_refused() -> None:
    error = refused(customers(lambda d: d["fields"][1].update(type="string")))
    assert error.field == "name" and "unknown type 'string'" in str(error)


@pytest.mark.parametrize(
    ("declared", "kind"),
    [
        ("INTEGER", "int"), ("bigint", "int"), ("TINYINT(1)", "bool"), ("boolean", "bool"),
        ("numeric(12,2)", "decimal"), ("DECIMAL(12, 2)", "decimal"),
        ("double precision", "float"), ("REAL", "float"),
        ("timestamp with time zone", "timestamp"), ("timestamptz", "timestamp"),
        ("DATETIME(6)", "timestamp"), ("date", "date"), ("jsonb", "json"), ("JSON", "json"),
        ("bytea", "bytes"), ("VARBINARY(255)", "bytes"), ("uuid", "uuid"),
        ("character varying(40)", "text"), ("VARCHAR(40)", "text"), ("", None),
    ],
)  # fmt: skip
def test_sql_type_names_of_every_dialect_map_to_canonical_types(
    declared: str, kind: str | None
) -> None:
    from engine.values import kind_of

    assert kind_of(declared) == kind


def test_an_open_schema_accepts_fields_its_records_do_not_hold_yet() -> None:
    emap = load_map(CUSTOMERS)
    schema = EntitySchema(
        "accounts", {"account_number": Column("account_number", "", False, False)},
        (("account_number",),), open=True,
    )  # fmt: skip
    check_schema(emap, Side.RIGHT, schema)  # name, credit_limit, telephone: not seen yet
    closed = EntitySchema(schema.entity, schema.columns, schema.unique)
    with pytest.raises(SchemaError, match="'name' does not exist"):
        check_schema(emap, Side.RIGHT, closed)
