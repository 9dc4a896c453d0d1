"""The schema model: valid declarations, malformed ones, catalogs, orders and checks.

Every malformed declaration must fail when it is declared, with a ``SchemaDefinitionError``
whose fields name the table and column and whose message repeats them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt_mod
from collections.abc import Callable, Sequence
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import pyarrow as pa
import pytest

from egregora.database import schemas
from egregora.database.checks import Check, NotBefore, NullWhen, OneOf, RequiredWhen
from egregora.database.errors import SchemaDefinitionError, StorageError, TableNotFoundError
from egregora.database.model import (
    RUN_ID,
    RUNS_TABLE,
    Catalog,
    ForeignKey,
    TableSchema,
    arrow_type,
    utc_now,
)

ALLOWED_TYPES = (
    "string",
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
    "boolean",
    "date",
    "timestamp('UTC')",
    "uuid",
    "json",
    "binary",
)


def widgets(**overrides: Any) -> TableSchema:
    """A valid user table; keyword arguments replace parts of its declaration."""
    spec: dict[str, Any] = {
        "schema": {"widget_id": "!uuid", "colour": "string", "size": "int32"},
        "primary_key": ("widget_id",),
    }
    spec.update(overrides)
    schema = spec.pop("schema")
    return TableSchema("widgets", schema, **spec)


def owners() -> TableSchema:
    return TableSchema(
        "owners", {"owner_key": "!int64", "label": "!string"}, primary_key=("owner_key",)
    )


def assert_names(error: SchemaDefinitionError, table: str, columns: Sequence[str] = ()) -> None:
    """The error's fields and its message name ``table`` and ``columns``."""
    assert isinstance(error, StorageError)
    assert isinstance(error, ValueError)
    assert error.table == table
    assert error.columns == tuple(columns)
    message = str(error)
    assert table in message
    for column in columns:
        assert column in message


# --- valid declarations ---------------------------------------------------------------------


def test_declare_valid_table() -> None:
    table = TableSchema(
        "widgets",
        ibis.schema({"widget_id": "!uuid", "colour": "string", "made_at": "!timestamp('UTC')"}),
        primary_key=("widget_id",),
        checks=(OneOf("colour", ("red", "blue")),),
        description="Things we make.",
    )
    assert table.name == "widgets"
    assert table.column_names == ("widget_id", "colour", "made_at")
    assert table.primary_key == ("widget_id",)
    assert table.required_columns == ("widget_id", "made_at")
    assert table.foreign_keys == ()
    assert table.checks == (OneOf("colour", ("red", "blue")),)
    assert table.lineage is False
    assert table.description == "Things we make."
    assert RUN_ID not in table.schema


def test_declaration_accepts_a_mapping_and_sequences() -> None:
    table = TableSchema(
        "widgets",
        {"a": "!int64", "b": "!string"},
        primary_key=["a", "b"],
        foreign_keys=[],
        checks=[],
    )
    assert table.schema == ibis.schema({"a": "!int64", "b": "!string"})
    assert table.primary_key == ("a", "b")
    assert isinstance(table.foreign_keys, tuple)
    assert isinstance(table.checks, tuple)


def test_table_schema_is_immutable() -> None:
    table = widgets()
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("type_name", ALLOWED_TYPES)
@pytest.mark.parametrize("required", [True, False], ids=["not_null", "nullable"])
def test_every_policy_type_is_accepted(type_name: str, required: bool) -> None:
    declared = ("!" if required else "") + type_name
    table = TableSchema("widgets", {"id": "!int64", "value": declared}, primary_key=("id",))
    assert table.schema["value"].nullable is not required
    assert ("value" in table.required_columns) is required


def test_keywords_and_mixed_case_are_valid_names() -> None:
    table = TableSchema("select", {"Order": "!int64", "from": "string"}, primary_key=("Order",))
    assert table.column_names == ("Order", "from")


# --- malformed declarations -----------------------------------------------------------------

MALFORMED: dict[str, tuple[Callable[[], TableSchema], tuple[str, ...]]] = {
    "list_type": (
        lambda: widgets(schema={"widget_id": "!uuid", "tags": "array<string>"}),
        ("tags",),
    ),
    "struct_type": (
        lambda: widgets(schema={"widget_id": "!uuid", "dims": "struct<w: int64, h: int64>"}),
        ("dims",),
    ),
    "map_type": (
        lambda: widgets(schema={"widget_id": "!uuid", "attrs": "map<string, string>"}),
        ("attrs",),
    ),
    "decimal_type": (
        lambda: widgets(schema={"widget_id": "!uuid", "price": "decimal(10, 2)"}),
        ("price",),
    ),
    "int8_type": (
        lambda: widgets(schema={"widget_id": "!uuid", "tiny": "int8"}),
        ("tiny",),
    ),
    "naive_timestamp": (
        lambda: widgets(schema={"widget_id": "!uuid", "made_at": "timestamp"}),
        ("made_at",),
    ),
    "non_utc_timestamp": (
        lambda: widgets(schema={"widget_id": "!uuid", "made_at": "timestamp('Europe/Paris')"}),
        ("made_at",),
    ),
    "nullable_primary_key": (
        lambda: widgets(schema={"widget_id": "uuid", "colour": "string"}),
        ("widget_id",),
    ),
    "primary_key_names_missing_column": (
        lambda: widgets(primary_key=("widget_code",)),
        ("widget_code",),
    ),
    "foreign_key_on_missing_column": (
        lambda: widgets(foreign_keys=(ForeignKey.to("owner_key", "owners", "owner_key"),)),
        ("owner_key",),
    ),
    "foreign_key_arity": (
        lambda: widgets(foreign_keys=(ForeignKey(("colour", "size"), "owners", ("owner_key",)),)),
        ("colour", "size"),
    ),
    "one_of_on_missing_column": (
        lambda: widgets(checks=(OneOf("shade", ("red",)),)),
        ("shade",),
    ),
    "required_when_requires_missing_column": (
        lambda: widgets(checks=(RequiredWhen("colour", ("red",), ("shade",)),)),
        ("shade",),
    ),
    "null_when_on_missing_column": (
        lambda: widgets(checks=(NullWhen("shade", ("red",), ("size",)),)),
        ("shade",),
    ),
    "not_before_on_missing_column": (
        lambda: widgets(checks=(NotBefore("size", "weight"),)),
        ("weight",),
    ),
    "run_id_declared_on_lineage_table": (
        lambda: widgets(schema={"widget_id": "!uuid", "run_id": "!uuid"}, lineage=True),
        ("run_id",),
    ),
    "empty_one_of": (
        lambda: widgets(checks=(OneOf("colour", ()),)),
        ("colour",),
    ),
    "empty_required_when": (
        lambda: widgets(checks=(RequiredWhen("colour", (), ("size",)),)),
        ("colour",),
    ),
    "empty_null_when": (
        lambda: widgets(checks=(NullWhen("colour", (), ("size",)),)),
        ("colour",),
    ),
    "invalid_column_name": (
        lambda: widgets(schema={"widget_id": "!uuid", "two words": "string"}),
        ("two words",),
    ),
    "no_primary_key": (
        lambda: widgets(primary_key=()),
        (),
    ),
}


@pytest.mark.parametrize(("declare", "columns"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_declaration_names_table_and_column(
    declare: Callable[[], TableSchema], columns: tuple[str, ...]
) -> None:
    with pytest.raises(SchemaDefinitionError) as info:
        declare()
    assert_names(info.value, "widgets", columns)


def test_refused_nested_type_suggests_json() -> None:
    with pytest.raises(SchemaDefinitionError, match=r"declare it as json"):
        widgets(schema={"widget_id": "!uuid", "tags": "array<string>"})


def test_duplicate_check_names_are_refused() -> None:
    with pytest.raises(SchemaDefinitionError, match="two checks with the same name") as info:
        widgets(checks=(OneOf("colour", ("red",)), OneOf("colour", ("blue",))))
    assert info.value.table == "widgets"
    assert "widgets" in str(info.value)


def test_duplicate_check_error_names_check_and_column() -> None:
    with pytest.raises(SchemaDefinitionError) as info:
        widgets(checks=(OneOf("colour", ("red",)), OneOf("colour", ("blue",))))
    assert info.value.columns == ("colour",)
    assert "colour_one_of" in str(info.value)


@pytest.mark.parametrize(
    "name", ["", "1widgets", "_widgets", "two words", 'w"; DROP TABLE runs; --', "wid-gets"]
)
def test_bad_table_name(name: str) -> None:
    with pytest.raises(SchemaDefinitionError) as info:
        TableSchema(name, {"id": "!int64"}, primary_key=("id",))
    assert info.value.table == name
    assert info.value.columns == ()
    assert repr(name) in str(info.value)


# Declarations the model accepts although neither DuckDB nor (for some) PostgreSQL can create
# them; they should fail at declaration like every other malformed table.
def test_columns_differing_only_in_case_are_refused() -> None:
    with pytest.raises(SchemaDefinitionError):
        widgets(schema={"widget_id": "!uuid", "colour": "string", "Colour": "string"})


def test_run_id_in_other_case_on_lineage_table_is_refused() -> None:
    with pytest.raises(SchemaDefinitionError):
        widgets(schema={"widget_id": "!uuid", "Run_Id": "string"}, lineage=True)


def test_primary_key_repeating_a_column_is_refused() -> None:
    with pytest.raises(SchemaDefinitionError):
        widgets(primary_key=("widget_id", "widget_id"))


# --- lineage --------------------------------------------------------------------------------


def test_lineage_adds_run_id_with_foreign_key_to_runs() -> None:
    table = widgets(lineage=True)
    assert table.lineage is True
    assert table.column_names[-1] == RUN_ID
    assert table.schema[RUN_ID] == dt.UUID(nullable=False)
    assert str(table.schema[RUN_ID]) == "!uuid"
    assert RUN_ID in table.required_columns
    assert table.foreign_keys == (ForeignKey.to(RUN_ID, RUNS_TABLE, RUN_ID),)


def test_lineage_keeps_declared_foreign_keys_first() -> None:
    fk = ForeignKey.to("size", "owners", "owner_key")
    table = widgets(foreign_keys=(fk,), lineage=True)
    assert table.foreign_keys == (fk, ForeignKey.to(RUN_ID, RUNS_TABLE, RUN_ID))


@pytest.mark.parametrize("name", ["documents", "messages", "annotations"])
def test_egregora_tables_carry_lineage(name: str) -> None:
    table = schemas.CATALOG[name]
    assert table.lineage is True
    assert table.schema[RUN_ID] == dt.UUID(nullable=False)
    assert ForeignKey.to(RUN_ID, RUNS_TABLE, RUN_ID) in table.foreign_keys


def test_runs_is_not_a_lineage_table() -> None:
    runs = schemas.CATALOG["runs"]
    assert runs.lineage is False
    assert runs.column_names[0] == RUN_ID
    assert runs.primary_key == (RUN_ID,)


def test_annotations_reference_documents_strictly() -> None:
    annotations = schemas.CATALOG["annotations"]
    assert ForeignKey.to("document_id", "documents", "id") in annotations.foreign_keys
    assert annotations.schema["document_id"] == dt.UUID(nullable=False)


# --- catalog --------------------------------------------------------------------------------


def test_catalog_lookup() -> None:
    catalog = schemas.CATALOG
    assert catalog.names == ("runs", "documents", "messages", "annotations")
    assert catalog["documents"] is schemas.DOCUMENTS_SCHEMA
    assert "runs" in catalog
    assert "nope" not in catalog
    assert 42 not in catalog


def test_catalog_unknown_table_raises_table_not_found() -> None:
    with pytest.raises(TableNotFoundError) as info:
        schemas.CATALOG["nope"]
    assert isinstance(info.value, LookupError)
    assert isinstance(info.value, StorageError)
    assert info.value.table == "nope"
    message = str(info.value)
    assert "nope" in message
    for name in schemas.CATALOG.names:
        assert name in message


@pytest.mark.parametrize("name", ["egregora_incoming_batch", "Egregora_layout", "egregora_x"])
def test_catalog_refuses_the_librarys_own_names(name: str) -> None:
    table = TableSchema(name, {"id": "!uuid"}, primary_key=("id",))
    with pytest.raises(SchemaDefinitionError, match="the library's own") as info:
        Catalog((table,))
    assert info.value.table == name


def test_catalog_foreign_key_to_undeclared_table() -> None:
    child = widgets(
        schema={"widget_id": "!uuid", "owner_ref": "int64"},
        foreign_keys=(ForeignKey.to("owner_ref", "owners", "owner_key"),),
    )
    with pytest.raises(SchemaDefinitionError, match="undeclared table `owners`") as info:
        Catalog((child,))
    assert_names(info.value, "widgets", ("owner_ref",))


def test_catalog_foreign_key_not_to_primary_key() -> None:
    child = widgets(
        schema={"widget_id": "!uuid", "owner_label": "string"},
        foreign_keys=(ForeignKey.to("owner_label", "owners", "label"),),
    )
    with pytest.raises(SchemaDefinitionError, match="primary key of `owners`") as info:
        Catalog((owners(), child))
    assert_names(info.value, "widgets", ("owner_label",))


def test_catalog_foreign_key_type_mismatch() -> None:
    child = widgets(
        schema={"widget_id": "!uuid", "owner_ref": "int32"},
        foreign_keys=(ForeignKey.to("owner_ref", "owners", "owner_key"),),
    )
    with pytest.raises(SchemaDefinitionError) as info:
        Catalog((owners(), child))
    assert_names(info.value, "widgets", ("owner_ref",))
    assert "int32" in str(info.value)
    assert "int64" in str(info.value)


def test_catalog_nullable_foreign_key_to_not_null_key_is_fine() -> None:
    child = widgets(
        schema={"widget_id": "!uuid", "owner_ref": "int64"},
        foreign_keys=(ForeignKey.to("owner_ref", "owners", "owner_key"),),
    )
    assert Catalog((owners(), child)).names == ("owners", "widgets")


def test_catalog_duplicate_table_names() -> None:
    with pytest.raises(SchemaDefinitionError, match="declared twice") as info:
        Catalog((widgets(), owners(), widgets()))
    assert_names(info.value, "widgets")


def test_catalog_cycle_between_two_tables() -> None:
    hens = TableSchema(
        "hens",
        {"hen_id": "!int64", "egg_id": "int64"},
        primary_key=("hen_id",),
        foreign_keys=(ForeignKey.to("egg_id", "eggs", "egg_id"),),
    )
    eggs = TableSchema(
        "eggs",
        {"egg_id": "!int64", "hen_id": "int64"},
        primary_key=("egg_id",),
        foreign_keys=(ForeignKey.to("hen_id", "hens", "hen_id"),),
    )
    with pytest.raises(SchemaDefinitionError, match="cycle") as info:
        Catalog((hens, eggs))
    assert info.value.table in {"hens", "eggs"}
    assert "hens" in str(info.value)
    assert "eggs" in str(info.value)


def test_self_reference_is_allowed() -> None:
    runs = schemas.CATALOG["runs"]
    assert ForeignKey.to("parent_run_id", "runs", "run_id") in runs.foreign_keys
    catalog = Catalog((runs,))
    assert catalog.creation_order() == (runs,)
    assert catalog.deletion_order() == (runs,)
    assert (runs, runs.foreign_keys[0]) in runs.referenced_by(catalog)


def _position(order: Sequence[TableSchema]) -> dict[str, int]:
    return {t.name: i for i, t in enumerate(order)}


def test_egregora_creation_and_deletion_order() -> None:
    created = _position(schemas.CATALOG.creation_order())
    deleted = _position(schemas.CATALOG.deletion_order())
    assert created["runs"] < created["documents"] < created["annotations"]
    assert created["runs"] < created["messages"]
    assert deleted["annotations"] < deleted["documents"] < deleted["runs"]
    assert deleted["messages"] < deleted["runs"]
    assert [t.name for t in schemas.CATALOG.deletion_order()] == [
        t.name for t in reversed(schemas.CATALOG.creation_order())
    ]


def test_egregora_creation_order_puts_every_parent_first() -> None:
    created = _position(schemas.CATALOG.creation_order())
    for table in schemas.CATALOG.tables:
        for fk in table.foreign_keys:
            if fk.ref_table != table.name:
                assert created[fk.ref_table] < created[table.name], fk.describe()


def _chain() -> tuple[TableSchema, TableSchema, TableSchema]:
    """grandchildren -> children -> parents, declared child first."""
    parents = TableSchema("parents", {"parent_id": "!int64"}, primary_key=("parent_id",))
    children = TableSchema(
        "children",
        {"child_id": "!int64", "parent_id": "!int64"},
        primary_key=("child_id",),
        foreign_keys=(ForeignKey.to("parent_id", "parents", "parent_id"),),
    )
    grandchildren = TableSchema(
        "grandchildren",
        {"grandchild_id": "!int64", "child_id": "int64"},
        primary_key=("grandchild_id",),
        foreign_keys=(ForeignKey.to("child_id", "children", "child_id"),),
    )
    return grandchildren, children, parents


def test_user_chain_order() -> None:
    catalog = Catalog(_chain())
    assert [t.name for t in catalog.creation_order()] == ["parents", "children", "grandchildren"]
    assert [t.name for t in catalog.deletion_order()] == ["grandchildren", "children", "parents"]


def test_creation_order_ties_keep_declaration_order() -> None:
    a = TableSchema("a", {"id": "!int64"}, primary_key=("id",))
    b = TableSchema("b", {"id": "!int64"}, primary_key=("id",))
    assert [t.name for t in Catalog((b, a)).creation_order()] == ["b", "a"]


def test_catalog_extend_with_user_table() -> None:
    notes = TableSchema(
        "notes",
        {"note_id": "!uuid", "document_id": "uuid", "body": "!string"},
        primary_key=("note_id",),
        foreign_keys=(ForeignKey.to("document_id", "documents", "id"),),
        lineage=True,
    )
    extended = schemas.CATALOG.extend(notes)
    assert extended.names == (*schemas.CATALOG.names, "notes")
    assert "notes" not in schemas.CATALOG
    assert extended["notes"] is notes
    created = _position(extended.creation_order())
    assert created["runs"] < created["documents"] < created["notes"]
    deleted = _position(extended.deletion_order())
    assert deleted["notes"] < deleted["documents"]
    documents = extended["documents"]
    assert {child.name for child, _ in documents.referenced_by(extended)} == {
        "annotations",
        "notes",
    }


def test_catalog_extend_validates_the_new_table() -> None:
    orphan = widgets(
        schema={"widget_id": "!uuid", "owner_ref": "int64"},
        foreign_keys=(ForeignKey.to("owner_ref", "owners", "owner_key"),),
    )
    with pytest.raises(SchemaDefinitionError) as info:
        schemas.CATALOG.extend(orphan)
    assert_names(info.value, "widgets", ("owner_ref",))
    with pytest.raises(SchemaDefinitionError, match="declared twice"):
        schemas.CATALOG.extend(TableSchema("runs", {"x": "!int64"}, primary_key=("x",)))


def test_referenced_by() -> None:
    catalog = schemas.CATALOG
    by_runs = {(child.name, fk.columns) for child, fk in catalog["runs"].referenced_by(catalog)}
    assert by_runs == {
        ("runs", ("parent_run_id",)),
        ("documents", ("run_id",)),
        ("messages", ("run_id",)),
        ("annotations", ("run_id",)),
    }
    assert catalog["annotations"].referenced_by(catalog) == ()


# --- Arrow and types ------------------------------------------------------------------------


def test_to_arrow_types_and_nullability() -> None:
    table = TableSchema(
        "widgets",
        {
            "widget_id": "!uuid",
            "attrs": "json",
            "made_at": "!timestamp('UTC')",
            "seen_at": "timestamp('UTC', 9)",
            "name": "!string",
            "small": "int16",
            "medium": "!int32",
            "large": "int64",
            "ratio": "float32",
            "weight": "!float64",
            "active": "boolean",
            "day": "date",
            "blob": "binary",
        },
        primary_key=("widget_id",),
        lineage=True,
    )
    assert table.to_arrow() == pa.schema(
        [
            pa.field("widget_id", pa.string(), nullable=False),
            pa.field("attrs", pa.string(), nullable=True),
            pa.field("made_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("seen_at", pa.timestamp("us", tz="UTC"), nullable=True),
            pa.field("name", pa.string(), nullable=False),
            pa.field("small", pa.int16(), nullable=True),
            pa.field("medium", pa.int32(), nullable=False),
            pa.field("large", pa.int64(), nullable=True),
            pa.field("ratio", pa.float32(), nullable=True),
            pa.field("weight", pa.float64(), nullable=False),
            pa.field("active", pa.bool_(), nullable=True),
            pa.field("day", pa.date32(), nullable=True),
            pa.field("blob", pa.binary(), nullable=True),
            pa.field("run_id", pa.string(), nullable=False),
        ]
    )


@pytest.mark.parametrize("name", schemas.CATALOG.names)
def test_to_arrow_matches_declaration(name: str) -> None:
    table = schemas.CATALOG[name]
    arrow = table.to_arrow()
    assert arrow.names == list(table.column_names)
    for column, dtype in table.schema.items():
        assert arrow.field(column).nullable is dtype.nullable
        assert arrow.field(column).type == arrow_type(dtype)


@pytest.mark.parametrize(
    "declared",
    ["timestamp('UTC')", "timestamp('UTC', 0)", "timestamp('UTC', 3)", "timestamp('UTC', 9)"],
)
@pytest.mark.parametrize("required", [True, False], ids=["not_null", "nullable"])
def test_timestamp_scale_is_normalised_to_microseconds(declared: str, required: bool) -> None:
    table = TableSchema(
        "widgets",
        {"id": "!int64", "at": ("!" if required else "") + declared},
        primary_key=("id",),
    )
    assert table.schema["at"] == dt.Timestamp(timezone="UTC", scale=6, nullable=not required)
    assert table.to_arrow().field("at").type == pa.timestamp("us", tz="UTC")


def test_declared_egregora_timestamps_are_utc_microseconds() -> None:
    for table in schemas.CATALOG.tables:
        for column, dtype in table.schema.items():
            if dtype.is_timestamp():
                assert dtype.timezone == "UTC", (table.name, column)
                assert dtype.scale == 6, (table.name, column)


def test_utc_now_is_aware_utc() -> None:
    now = utc_now()
    assert now.tzinfo is not None
    assert now.utcoffset() == dt_mod.timedelta(0)


# --- checks ---------------------------------------------------------------------------------


def test_check_names_columns_and_descriptions() -> None:
    one_of = OneOf("status", ("draft", "published"))
    required = RequiredWhen("doc_type", ("post",), ("title", "slug"))
    null_when = NullWhen("status", ("RUNNING",), ("ended_at", "purged_at"))
    not_before = NotBefore("ended_at", "started_at")
    assert one_of.name == "status_one_of"
    assert one_of.columns == ("status",)
    assert one_of.describe() == "`status` in ['draft', 'published']"
    assert required.name == "doc_type_post_requires"
    assert required.columns == ("doc_type", "title", "slug")
    assert required.describe() == "`doc_type` in ['post'] requires title, slug"
    assert null_when.name == "status_running_excludes"
    assert null_when.columns == ("status", "ended_at", "purged_at")
    assert not_before.name == "ended_at_not_before_started_at"
    assert not_before.columns == ("ended_at", "started_at")
    assert not_before.describe() == "`ended_at` >= `started_at`"


def _t(hour: int) -> dt_mod.datetime:
    return dt_mod.datetime(2024, 1, 1, hour, tzinfo=dt_mod.UTC)


# Each case: a check, the rows it is evaluated on, and whether each row passes.
PREDICATE_CASES: dict[str, tuple[Check, dict[str, list[Any]], list[bool]]] = {
    "one_of": (
        OneOf("status", ("draft", "published")),
        {"status": ["draft", "published", "bogus", None]},
        [True, True, False, True],
    ),
    "one_of_ints": (
        OneOf("n", (1, 2)),
        {"n": [1, 3, None]},
        [True, False, True],
    ),
    "required_when": (
        RequiredWhen("doc_type", ("post", "journal"), ("title", "slug")),
        {
            "doc_type": ["post", "post", "post", "journal", "profile", None],
            "title": ["T", None, "T", "T", None, None],
            "slug": ["s", "s", None, "s", None, None],
        },
        [True, False, False, True, True, True],
    ),
    "null_when": (
        NullWhen("status", ("RUNNING",), ("ended_at", "purged_at")),
        {
            "status": ["RUNNING", "RUNNING", "RUNNING", "COMPLETED", None],
            "ended_at": [None, _t(2), None, _t(2), _t(2)],
            "purged_at": [None, None, _t(3), _t(3), None],
        },
        [True, False, False, True, True],
    ),
    "not_before": (
        NotBefore("ended_at", "started_at"),
        {
            "ended_at": [_t(2), _t(1), _t(0), None, _t(1), None],
            "started_at": [_t(1), _t(1), _t(1), _t(1), None, None],
        },
        [True, True, False, True, True, True],
    ),
}


@pytest.mark.parametrize(
    ("check", "columns", "expected"), PREDICATE_CASES.values(), ids=PREDICATE_CASES.keys()
)
def test_check_predicate_on_duckdb(
    check: Check, columns: dict[str, list[Any]], expected: list[bool]
) -> None:
    rows = pa.table({"i": list(range(len(expected))), **columns})
    con = ibis.duckdb.connect()
    try:
        t = ibis.memtable(rows)
        result = con.to_pyarrow(t.select("i", ok=check.predicate(t)).order_by("i"))
    finally:
        con.disconnect()
    assert result["ok"].to_pylist() == expected


@pytest.mark.parametrize("name", schemas.CATALOG.names)
def test_declared_check_names_are_unique_and_resolve(name: str) -> None:
    table = schemas.CATALOG[name]
    names = [c.name for c in table.checks]
    assert len(names) == len(set(names))
    for check in table.checks:
        for column in check.columns:
            assert column in table.schema
