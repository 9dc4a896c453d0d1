"""Validation of conformed batches: the derived Pandera schema, every failure listed.

Batches are Arrow tables registered on a plain DuckDB connection and read through Ibis, as
the storage manager hands them over; no store is involved. Error tests check the type, the
fields and the message.
"""

from __future__ import annotations

import datetime as dt_mod
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import ibis
import ibis.expr.types as ir
import pandera.config
import pandera.ibis as pandera_ibis
import pyarrow as pa
import pytest
from pandera.errors import SchemaErrors

import duckdb
from egregora.database import validation
from egregora.database.checks import OneOf
from egregora.database.errors import FAILURES_SCHEMA, LineageError, StorageError, ValidationError
from egregora.database.model import TableSchema
from egregora.database.schemas import DOCUMENTS_SCHEMA, RUNS_SCHEMA
from egregora.database.validation import pandera_schema, validate_batch

RUN = "0193a6f0-7c1e-7d2a-9b3e-1f2a3b4c5d6e"
OTHER_RUN = "0193a6f0-0000-7000-8000-000000000000"
STARTED = dt_mod.datetime(2025, 3, 1, 12, 0, tzinfo=dt_mod.UTC)
LATER = STARTED + dt_mod.timedelta(minutes=5)

Register = Callable[..., ir.Table]


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


@pytest.fixture
def register(con: duckdb.DuckDBPyConnection) -> Register:
    """Register rows as a conformed batch of a table and return it as an Ibis table."""
    backend = ibis.duckdb.from_connection(con)
    count = iter(range(1_000_000))

    def make(rows: list[dict[str, Any]], table: TableSchema = DOCUMENTS_SCHEMA) -> ir.Table:
        name = f"batch_{next(count)}"
        con.register(name, pa.Table.from_pylist(rows, schema=table.to_arrow()))
        return backend.table(name)

    return make


def doc(**overrides: Any) -> dict[str, Any]:
    """A valid post of the current run; keyword arguments replace its values."""
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "doc_type": "post",
        "content": "Hello",
        "created_at": LATER,
        "title": "Hello",
        "slug": "hello",
        "status": "draft",
        "tags": '["a"]',
        "run_id": RUN,
    }
    return row | overrides


def run_row(**overrides: Any) -> dict[str, Any]:
    """A valid running run."""
    row: dict[str, Any] = {
        "run_id": str(uuid.uuid4()),
        "name": "enrich",
        "status": "RUNNING",
        "config": "{}",
        "config_hash": "h",
        "code_version": "1",
        "host": "h",
        "pid": 1,
        "started_at": STARTED,
        "heartbeat_at": STARTED,
    }
    return row | overrides


def check_docs(batch: ir.Table, *, run_id: str = RUN, started: dt_mod.datetime = STARTED) -> None:
    validate_batch(batch, DOCUMENTS_SCHEMA, run_id=run_id, run_started_at=started)


def refused(call: Callable[[], None], kind: type[ValidationError] = ValidationError) -> Any:
    with pytest.raises(kind) as info:
        call()
    assert info.value.failures is not None
    assert info.value.failures.schema == FAILURES_SCHEMA
    return info.value


# --- valid batches --------------------------------------------------------------------------


def test_valid_batch_of_every_document_type_passes(register: Register) -> None:
    rows = [
        doc(),
        doc(doc_type="profile", slug=None, status=None, subject_uuid=str(uuid.uuid4())),
        doc(doc_type="journal", slug=None, status=None, window_start=STARTED, window_end=LATER),
        doc(doc_type="media", title=None, slug=None, status=None, filename="a.jpg"),
        doc(doc_type="enrichment", title=None, slug=None, status=None, media_type="image"),
    ]
    check_docs(register(rows))


def test_valid_batch_without_lineage_passes(register: Register) -> None:
    finished = run_row(status="COMPLETED", ended_at=LATER)
    batch = register([run_row(), finished], RUNS_SCHEMA)
    validate_batch(batch, RUNS_SCHEMA, run_id=None, run_started_at=None)


def test_empty_batch_passes(register: Register) -> None:
    # Pandera reads the NULL aggregate of an empty batch as a NOT NULL failure.
    check_docs(register([]))


def test_valid_batch_costs_one_pandera_pass(
    register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    def listing(*args: Any) -> None:
        raise AssertionError("a valid batch must not be listed")

    monkeypatch.setattr(validation, "_failed_rules", listing)
    monkeypatch.setattr(validation, "_list_failures", listing)
    check_docs(register([doc() for _ in range(10)]))


# --- the derived Pandera schema -------------------------------------------------------------


def test_pandera_schema_is_derived_and_cached() -> None:
    schema = pandera_schema(DOCUMENTS_SCHEMA)
    assert pandera_schema(DOCUMENTS_SCHEMA) is schema
    assert tuple(schema.columns) == DOCUMENTS_SCHEMA.column_names
    # NOT NULL is held by the single gate check (one scan), not per column by Pandera.
    assert all(column.nullable for column in schema.columns.values())
    assert [c.name for c in schema.checks] == ["row_checks"]
    assert str(schema.columns["id"].dtype) == "string"  # uuid is text at the Arrow boundary
    assert str(schema.columns["created_at"].dtype) == "timestamp('UTC', 6)"


def test_lineage_checks_leave_the_cached_schema_alone(register: Register) -> None:
    checks = list(pandera_schema(DOCUMENTS_SCHEMA).checks)
    refused(lambda: check_docs(register([doc()]), run_id=OTHER_RUN), LineageError)
    assert pandera_schema(DOCUMENTS_SCHEMA).checks == checks


def test_pandera_ignores_column_level_unique(register: Register) -> None:
    """The Pandera 0.35 fact (validation's module notes) that rules out
    ``Column(unique=True)``; revisit if this fails."""
    schema = pandera_ibis.DataFrameSchema({"id": pandera_ibis.Column(str, unique=True)})
    batch = register([doc(id="a"), doc(id="a")])
    assert schema.validate(batch.select("id"), lazy=True) is not None


# --- one failure per kind of rule -----------------------------------------------------------

ID = "11111111-1111-4111-8111-111111111111"
WINDOW_END = STARTED - dt_mod.timedelta(hours=1)


@pytest.mark.parametrize(
    ("row", "column", "check", "value"),
    [
        pytest.param(
            doc(doc_type="blog"), "doc_type", "documents_doc_type_one_of", "blog", id="one-of"
        ),
        pytest.param(
            doc(title=None), "title", "documents_doc_type_post_requires", None, id="required-when"
        ),
        pytest.param(
            doc(doc_type="journal", window_start=STARTED, window_end=WINDOW_END, slug=None),
            "window_end",
            "documents_window_end_not_before_window_start",
            "2025-03-01 11:00:00.000000Z",
            id="not-before",
        ),
        pytest.param(doc(content=None), "content", "not_null", None, id="not-null"),
    ],
)
def test_each_rule_names_column_check_value_and_key(
    register: Register, row: dict[str, Any], column: str, check: str, value: str | None
) -> None:
    error = refused(lambda: check_docs(register([doc(), row | {"id": ID}, doc()])))
    assert type(error) is ValidationError
    assert error.failures is not None
    assert error.failures.to_pylist() == [
        {"column": column, "check": check, "value": value, "key": f"id='{ID}'"}
    ]
    assert error.columns == (column,)


def test_null_when_names_the_column_that_must_be_null(register: Register) -> None:
    bad = run_row(run_id=ID, ended_at=LATER)
    batch = register([run_row(), bad], RUNS_SCHEMA)
    error = refused(lambda: validate_batch(batch, RUNS_SCHEMA, run_id=None, run_started_at=None))
    assert error.failures.to_pylist() == [
        {
            "column": "ended_at",
            "check": "runs_status_running_excludes",
            "value": "2025-03-01 12:05:00.000000Z",
            "key": f"run_id='{ID}'",
        }
    ]
    assert error.run_id is None


def test_a_row_missing_two_required_columns_yields_two_failures(register: Register) -> None:
    error = refused(lambda: check_docs(register([doc(id=ID, title=None, slug=None)])))
    assert [(f["column"], f["value"]) for f in error.failures.to_pylist()] == [
        ("title", None),
        ("slug", None),
    ]
    assert str(error).startswith("1 row of `documents` fails validation")


def test_duplicate_keys_within_the_batch_are_all_listed(register: Register) -> None:
    rows = [doc(id=ID), doc(), doc(id=ID), doc(id=ID)]
    error = refused(lambda: check_docs(register(rows)))
    assert (
        error.failures.to_pylist()
        == [{"column": "id", "check": "unique", "value": ID, "key": f"id='{ID}'"}] * 3
    )
    assert str(error).startswith("3 rows of `documents` fail validation")


def test_duplicate_composite_keys_are_listed_per_key_column(register: Register) -> None:
    pairs = TableSchema("pairs", {"a": "!string", "b": "!int64"}, primary_key=("a", "b"))
    batch = register([{"a": "x", "b": 1}, {"a": "x", "b": 2}, {"a": "x", "b": 1}], pairs)
    error = refused(lambda: validate_batch(batch, pairs, run_id=None, run_started_at=None))
    assert {(f["column"], f["value"], f["key"]) for f in error.failures.to_pylist()} == {
        ("a", "x", "a='x', b='1'"),
        ("b", "1", "a='x', b='1'"),
    }
    assert len(error.failures) == 4
    assert str(error).startswith("2 rows of `pairs` fail validation")


def test_nan_in_a_not_null_float_column_is_listed(register: Register) -> None:
    # Pandera counts NaN as null; the listing must find what Pandera refused.
    sizes = TableSchema("sizes", {"id": "!int64", "size": "!float64"}, primary_key=("id",))
    batch = register([{"id": 1, "size": 1.5}, {"id": 2, "size": float("nan")}], sizes)
    error = refused(lambda: validate_batch(batch, sizes, run_id=None, run_started_at=None))
    assert error.failures.to_pylist() == [
        {"column": "size", "check": "not_null", "value": "nan", "key": "id='2'"}
    ]


def test_key_text_quotes_and_escapes(register: Register) -> None:
    notes = TableSchema(
        "notes",
        {"id": "!string", "kind": "string"},
        primary_key=("id",),
        checks=(OneOf("kind", ("a",)),),
    )
    batch = register([{"id": "it's", "kind": "b"}], notes)
    error = refused(lambda: validate_batch(batch, notes, run_id=None, run_started_at=None))
    assert error.failures["key"].to_pylist() == ["id='it\\'s'"]


# --- lineage --------------------------------------------------------------------------------


def test_null_run_id_is_a_lineage_error(register: Register) -> None:
    error = refused(lambda: check_docs(register([doc(), doc(id=ID, run_id=None)])), LineageError)
    assert error.failures.to_pylist() == [
        {"column": "run_id", "check": "not_null", "value": None, "key": f"id='{ID}'"}
    ]
    assert str(error).startswith(f"1 row of `documents` carries no run_id (run {RUN})")


def test_foreign_run_id_is_a_lineage_error(register: Register) -> None:
    rows = [doc(), doc(id=ID, run_id=OTHER_RUN), doc(run_id=OTHER_RUN)]
    error = refused(lambda: check_docs(register(rows)), LineageError)
    assert error.failures["check"].to_pylist() == ["run_id_matches_run"] * 2
    assert error.failures.to_pylist()[0] == {
        "column": "run_id",
        "check": "run_id_matches_run",
        "value": OTHER_RUN,
        "key": f"id='{ID}'",
    }
    assert str(error).startswith("2 rows of `documents` carry a foreign run_id")
    assert error.run_id == RUN


def test_created_at_before_the_run_started_is_a_lineage_error(
    register: Register, con: duckdb.DuckDBPyConnection
) -> None:
    # The session time zone must not shift the comparison or the rendered value.
    con.execute("SET TimeZone = 'America/New_York'")
    just_before = STARTED - dt_mod.timedelta(microseconds=1)
    rows = [doc(created_at=STARTED), doc(id=ID, created_at=just_before)]
    started = STARTED.astimezone(dt_mod.timezone(dt_mod.timedelta(hours=2)))
    error = refused(lambda: check_docs(register(rows), started=started), LineageError)
    assert error.failures.to_pylist() == [
        {
            "column": "created_at",
            "check": "created_at_not_before_run_start",
            "value": "2025-03-01 11:59:59.999999Z",
            "key": f"id='{ID}'",
        }
    ]
    assert "predates its run" in str(error)


def test_lineage_and_other_failures_raise_lineage_error_listing_both(register: Register) -> None:
    rows = [doc(run_id=OTHER_RUN), doc(doc_type="blog"), doc(title=None)]
    error = refused(lambda: check_docs(register(rows)), LineageError)
    assert error.failures["check"].to_pylist() == [
        "run_id_matches_run",
        "documents_doc_type_one_of",
        "documents_doc_type_post_requires",
    ]
    assert str(error).startswith(
        "1 row of `documents` carries a foreign run_id and 2 rows fail validation"
    )


@pytest.mark.parametrize(
    ("run_id", "started"),
    [(None, STARTED), (RUN, None), (RUN, dt_mod.datetime(2025, 3, 1))],
    ids=["no-run", "no-start", "naive-start"],
)
def test_lineage_table_needs_the_run(
    register: Register, run_id: str | None, started: dt_mod.datetime | None
) -> None:
    batch = register([doc()])
    with pytest.raises(LineageError, match="records lineage"):
        validate_batch(batch, DOCUMENTS_SCHEMA, run_id=run_id, run_started_at=started)


# --- many rows, the error's fields and message ----------------------------------------------


def test_seven_bad_rows_of_a_hundred_are_all_listed(register: Register) -> None:
    rows = [doc() for _ in range(100)]
    bad = [3, 11, 20, 42, 57, 80, 99]
    for i in bad:
        rows[i]["title"] = None
    error = refused(lambda: check_docs(register(rows)))
    assert isinstance(error, ValueError)
    assert isinstance(error, ValidationError)
    assert error.table == "documents"
    assert error.columns == ("title",)
    assert error.run_id == RUN
    assert error.failures is not None
    assert error.failures.num_rows == 7
    assert error.failures["key"].to_pylist() == [f"id='{rows[i]['id']}'" for i in bad]
    message = str(error)
    assert message.startswith(
        f"7 rows of `documents` fail validation (run {RUN}), nothing written: "
        f"title=NULL at id='{rows[3]['id']}"
    )
    assert message.endswith(" and 2 more")
    assert message.count("title=NULL at id=") == 5


def test_long_values_are_cut_in_examples_but_whole_in_failures(register: Register) -> None:
    long_type = "x" * 300
    error = refused(lambda: check_docs(register([doc(id="k", doc_type=long_type)])))
    assert error.failures["value"].to_pylist() == [long_type]
    assert "doc_type='xxxxxxxx" in str(error)
    assert long_type not in str(error)


def test_batch_without_the_declared_types_is_a_storage_error(
    con: duckdb.DuckDBPyConnection,
) -> None:
    # batches.conform guarantees the declared columns and types: a batch without them is a
    # bug upstream, not rows to list.
    con.register("odd", pa.table({"id": ["a"], "doc_type": [1]}))
    batch = ibis.duckdb.from_connection(con).table("odd")
    with pytest.raises(StorageError, match="validating a batch of `documents` failed") as info:
        check_docs(batch)
    assert not isinstance(info.value, ValidationError)
    assert "doc_type" in str(info.value)


class _Exploding(OneOf):
    def predicate(self, t: ir.Table) -> ir.BooleanValue:
        raise RuntimeError("boom")


def test_a_check_that_cannot_run_is_a_storage_error(register: Register) -> None:
    broken = TableSchema(
        "broken",
        {"id": "!int64", "a": "string"},
        primary_key=("id",),
        checks=(_Exploding("a", ("x",)),),
    )
    batch = register([{"id": 1, "a": "x"}], broken)
    with pytest.raises(StorageError, match="validating a batch of `broken` failed") as info:
        validate_batch(batch, broken, run_id=None, run_started_at=None)
    assert not isinstance(info.value, ValidationError)


# --- the environment cannot switch data checks off ------------------------------------------


def test_schema_only_depth_from_the_environment_is_overridden(
    register: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PANDERA_VALIDATION_DEPTH", "SCHEMA_ONLY")
    monkeypatch.setenv("PANDERA_VALIDATION_ENABLED", "False")
    # Pandera reads the environment once, at import: load it as a fresh import would.
    pandera.config.reset_config_context(pandera.config._config_from_env_vars())
    try:
        batch = register([doc(title=None)])
        # The environment is in force: plain Pandera now skips its data checks.
        plain = pandera_ibis.DataFrameSchema({"title": pandera_ibis.Column(str, nullable=False)})
        plain.validate(batch.select("title"), lazy=True)
        error = refused(lambda: check_docs(batch))
        assert error.failures["check"].to_pylist() == ["documents_doc_type_post_requires"]
    finally:
        pandera.config.reset_config_context(pandera.config.get_config_global())


SCRIPT = """
import datetime as d, duckdb, ibis, pyarrow as pa
import pandera.ibis as pandera_ibis
from egregora.database.errors import ValidationError
from egregora.database.schemas import DOCUMENTS_SCHEMA as T
from egregora.database.validation import validate_batch
con = duckdb.connect()
row = dict(id="a", doc_type="post", content="c", created_at=d.datetime(2025, 1, 1, tzinfo=d.UTC),
           title="t", slug="s", status="nope", run_id="r")
con.register("b", pa.Table.from_pylist([row], schema=T.to_arrow()))
batch = ibis.duckdb.from_connection(con).table("b")
draft_only = pandera_ibis.Column(str, pandera_ibis.Check.isin(["draft"]))
plain = pandera_ibis.DataFrameSchema({"status": draft_only})
plain.validate(batch.select("status"))  # skipped: the environment is in force
try:
    validate_batch(batch, T, run_id="r", run_started_at=d.datetime(2025, 1, 1, tzinfo=d.UTC))
except ValidationError as exc:
    print(exc.failures["check"].to_pylist())
"""


@pytest.mark.slow  # a fresh interpreter: the only way to set the environment before import
def test_schema_only_depth_set_before_import_is_overridden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PANDERA_VALIDATION_DEPTH", "SCHEMA_ONLY")
    monkeypatch.setenv("PANDERA_VALIDATION_ENABLED", "False")
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['documents_status_one_of']"


def test_derived_schema_alone_refuses_a_bad_batch(register: Register) -> None:
    """The refusal that ``validate_batch`` reads: lazy Pandera raises one SchemaErrors."""
    with pytest.raises(SchemaErrors):
        pandera_schema(DOCUMENTS_SCHEMA).validate(register([doc(title=None)]), lazy=True)
