"""DDL derived from the declarations: goldens, DuckDB round trips, enforcement, PostgreSQL.

Type policy under test. Columns may use only ``string``, ``int16``/``int32``/``int64``,
``float32``/``float64``, ``boolean``, ``date``, ``timestamp('UTC')`` (microseconds; naive
timestamps are refused because every time is UTC), ``uuid``, ``json`` and ``binary``: these
round-trip exactly through DuckDB, PostgreSQL, Arrow and Ibis reflection, which the property
test below checks for randomly generated tables. Lists, maps and structs are refused: on a
table that others reference, DuckDB performs an update of such a column as delete+insert and
then rejects it as "still referenced"; ``json`` holds such values instead.

Golden files live in ``tests/unit/golden/{table}.{dialect}.sql``. After an intended DDL change,
regenerate them with ``EGREGORA_UPDATE_GOLDEN=1 pytest tests/test_ddl.py`` and review the diff.

The PostgreSQL test reads ``EGREGORA_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); an unreachable server skips it locally and
fails it when ``CI=true``.
"""

from __future__ import annotations

import datetime as dt_mod
import os
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ibis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import duckdb
from egregora.database import ddl, schemas
from egregora.database.checks import Check, NotBefore, NullWhen, OneOf, RequiredWhen
from egregora.database.model import RUN_ID, Catalog, TableSchema

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("EGREGORA_UPDATE_GOLDEN") == "1"
POSTGRES_URL = os.environ.get(
    "EGREGORA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ANNOTATION_FK = 'FOREIGN KEY ("document_id") REFERENCES "documents" ("id")'

T0 = dt_mod.datetime(2024, 5, 1, 12, 0, tzinfo=dt_mod.UTC)
T1 = T0 + dt_mod.timedelta(hours=1)
RUN = str(uuid.UUID("0190a5d2-0000-7000-8000-000000000001"))
DOC = str(uuid.UUID("0190a5d2-0000-7000-8000-0000000000d1"))
OTHER = str(uuid.UUID("0190a5d2-0000-7000-8000-00000000000e"))
MISSING = str(uuid.UUID("0190a5d2-0000-7000-8000-0000000000ff"))


def flatten(sql: str) -> str:
    """``sql`` on one line, with pretty-printing's breaks inside parentheses removed."""
    sql = re.sub(r"\(\s+", "(", sql)
    sql = re.sub(r"\s+\)", ")", sql)
    return re.sub(r"\s+", " ", sql)


# --- golden DDL -----------------------------------------------------------------------------

GOLDEN_CASES = [
    pytest.param(name, dialect, id=f"{name}-{dialect}")
    for name in schemas.CATALOG.names
    for dialect in ddl.DIALECTS
]


@pytest.mark.parametrize(("name", "dialect"), GOLDEN_CASES)
def test_golden_ddl(name: str, dialect: ddl.Dialect) -> None:
    sql = ddl.create_table_sql(schemas.CATALOG[name], dialect, pretty=True) + "\n"
    path = GOLDEN_DIR / f"{name}.{dialect}.sql"
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(sql, encoding="utf-8")
    assert path.exists(), f"no golden file {path}; run with EGREGORA_UPDATE_GOLDEN=1"
    assert sql == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("dialect", ddl.DIALECTS)
def test_annotations_reference_documents(dialect: ddl.Dialect) -> None:
    table = schemas.CATALOG["annotations"]
    sql = ddl.create_table_sql(table, dialect)
    golden = flatten((GOLDEN_DIR / f"annotations.{dialect}.sql").read_text(encoding="utf-8"))
    for text in (sql, golden):
        assert f'CONSTRAINT "annotations_document_id_fkey" {ANNOTATION_FK}' in text
        assert 'FOREIGN KEY ("run_id") REFERENCES "runs" ("run_id")' in text
    if dialect == "postgres":
        assert f"{ANNOTATION_FK} ON DELETE RESTRICT" in sql
    else:
        # DuckDB rejects ON DELETE CASCADE / SET NULL and restricts by default.
        assert "ON DELETE" not in sql


@pytest.mark.parametrize(("name", "dialect"), GOLDEN_CASES)
def test_ddl_declares_every_constraint(name: str, dialect: ddl.Dialect) -> None:
    table = schemas.CATALOG[name]
    pretty = ddl.create_table_sql(table, dialect, pretty=True)
    lines = {
        m.group(1): m.group(0) for m in re.finditer(r'^  "(\w+)" [^\n]*$', pretty, re.MULTILINE)
    }
    assert tuple(lines) == table.column_names
    for column, dtype in table.schema.items():
        assert ("NOT NULL" in lines[column]) is (not dtype.nullable), lines[column]
    sql = flatten(pretty)
    key = ", ".join(f'"{c}"' for c in table.primary_key)
    assert f"PRIMARY KEY ({key})" in sql
    for fk in table.foreign_keys:
        cols = ", ".join(f'"{c}"' for c in fk.columns)
        refs = ", ".join(f'"{c}"' for c in fk.ref_columns)
        name_ = f"{table.name}_{'_'.join(fk.columns)}_fkey"
        reference = f'FOREIGN KEY ({cols}) REFERENCES "{fk.ref_table}" ({refs})'
        assert f'CONSTRAINT "{name_}" {reference}' in sql
    for check in table.checks:
        condition = flatten(ddl.to_sql(ddl.check_condition(check), dialect))
        assert f'CONSTRAINT "{table.name}_{check.name}" CHECK ({condition})' in sql
    assert sql.count(" CHECK (") == len(table.checks)


def test_duckdb_uuid_keys_are_stored_uncompressed() -> None:
    for table in schemas.CATALOG.tables:
        duck = ddl.create_table_sql(table, "duckdb", pretty=True)
        pg = ddl.create_table_sql(table, "postgres", pretty=True)
        assert "COMPRESSION" not in pg
        keys = set(table.primary_key) | {c for fk in table.foreign_keys for c in fk.columns}
        for column, dtype in table.schema.items():
            line = next(x for x in duck.splitlines() if x.startswith(f'  "{column}" '))
            expected = dtype.is_uuid() and column in keys
            assert ("USING COMPRESSION uncompressed" in line) is expected, line


# --- check conditions -----------------------------------------------------------------------

CONDITION_CASES: dict[str, tuple[Check, str]] = {
    "one_of": (OneOf("status", ("draft", "published")), "\"status\" IN ('draft', 'published')"),
    "one_of_numbers": (OneOf("n", (1, 2.5)), '"n" IN (1, 2.5)'),
    "one_of_booleans": (OneOf("flag", (True,)), '"flag" IN (TRUE)'),
    "one_of_quotes_values": (OneOf("name", ("it's",)), "\"name\" IN ('it''s')"),
    "one_of_quotes_keywords": (OneOf("order", ("a",)), "\"order\" IN ('a')"),
    "required_when": (
        RequiredWhen("doc_type", ("post",), ("title", "slug")),
        'NOT "doc_type" IN (\'post\') OR (NOT "title" IS NULL AND NOT "slug" IS NULL)',
    ),
    "null_when": (
        NullWhen("status", ("RUNNING", "QUEUED"), ("ended_at",)),
        "NOT \"status\" IN ('RUNNING', 'QUEUED') OR (\"ended_at\" IS NULL)",
    ),
    "not_before": (NotBefore("ended_at", "started_at"), '"ended_at" >= "started_at"'),
}


@pytest.mark.parametrize(("check", "sql"), CONDITION_CASES.values(), ids=CONDITION_CASES.keys())
def test_check_condition_sql(check: Check, sql: str) -> None:
    assert ddl.to_sql(ddl.check_condition(check), "duckdb") == sql


def test_check_condition_refuses_unknown_check() -> None:
    with pytest.raises(TypeError, match="unknown check"):
        ddl.check_condition("status IN ('x')")  # type: ignore[arg-type]


AGREEMENT_ROWS = """
    SELECT * FROM (VALUES
        (1, 'post', 'T', 's', 1, 0),
        (2, 'post', NULL, 's', 0, 1),
        (3, 'journal', NULL, NULL, NULL, 1),
        (4, NULL, NULL, NULL, 1, NULL),
        (5, 'media', 'T', NULL, NULL, NULL),
        (6, 'media', 'T', 's', NULL, NULL),
        (7, 'profile', NULL, NULL, NULL, NULL)
    ) AS v(i, kind, title, slug, ended_at, started_at)  -- times as hours
"""
AGREEMENT_CHECKS = [
    OneOf("kind", ("post", "media")),
    RequiredWhen("kind", ("post", "journal"), ("title", "slug")),
    NullWhen("kind", ("media",), ("slug", "ended_at")),
    NotBefore("ended_at", "started_at"),
]


@pytest.mark.parametrize("check", AGREEMENT_CHECKS, ids=lambda c: c.name)
def test_sql_check_agrees_with_ibis_predicate(check: Check) -> None:
    """A row passes the SQL CHECK (true or NULL) exactly when the Ibis predicate is true."""
    con = duckdb.connect()
    try:
        con.execute(f"CREATE TABLE v AS {AGREEMENT_ROWS}")
        condition = ddl.to_sql(ddl.check_condition(check), "duckdb")
        query = f"SELECT ({condition}) IS NOT FALSE FROM v ORDER BY i"
        by_sql = [r[0] for r in con.execute(query).fetchall()]
        backend = ibis.duckdb.from_connection(con)
        t = backend.table("v")
        expr = t.select("i", ok=check.predicate(t)).order_by("i")
        by_ibis = backend.to_pyarrow(expr)["ok"].to_pylist()
    finally:
        con.close()
    assert by_sql == by_ibis
    assert True in by_sql
    assert False in by_sql


# --- DuckDB ---------------------------------------------------------------------------------


def create_all(con: duckdb.DuckDBPyConnection, catalog: Catalog = schemas.CATALOG) -> None:
    for table in catalog.creation_order():
        con.execute(ddl.create_table_sql(table, "duckdb"))


def insert(con: Any, table: str, row: dict[str, Any], *, placeholder: str = "?") -> None:
    columns = ", ".join(f'"{c}"' for c in row)
    values = ", ".join([placeholder] * len(row))
    con.execute(f'INSERT INTO "{table}" ({columns}) VALUES ({values})', list(row.values()))


def run_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "run_id": RUN,
        "name": "test",
        "status": "RUNNING",
        "config": '{"model": "x"}',
        "config_hash": "abc",
        "code_version": "0.1.0",
        "host": "localhost",
        "pid": 1234,
        "started_at": T0,
        "heartbeat_at": T0,
    }
    return {**row, **overrides}


def document_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": DOC,
        "doc_type": "post",
        "content": "hello",
        "created_at": T0,
        "title": "Hello",
        "slug": "hello",
        "status": "draft",
        "tags": '["a", "b"]',
        "run_id": RUN,
    }
    return {**row, **overrides}


def annotation_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": str(uuid.uuid4()),
        "document_id": DOC,
        "content": "a note",
        "created_at": T0,
        "run_id": RUN,
    }
    return {**row, **overrides}


def message_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "event_id": str(uuid.uuid4()),
        "tenant_id": "t",
        "source": "whatsapp",
        "thread_id": "th",
        "msg_id": "m1",
        "ts": T0,
        "author_raw": "Alice",
        "author_uuid": str(uuid.uuid4()),
        "created_at": T0,
        "run_id": RUN,
    }
    return {**row, **overrides}


@pytest.fixture
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the catalog, one run and one document."""
    con = duckdb.connect()
    try:
        create_all(con)
        insert(con, "runs", run_row())
        insert(con, "documents", document_row())
        yield con
    finally:
        con.close()


def test_duckdb_ddl_reflects_to_declared_schema() -> None:
    con = duckdb.connect()
    try:
        create_all(con)
        backend = ibis.duckdb.from_connection(con)
        for table in schemas.CATALOG.tables:
            assert backend.get_schema(table.name) == table.schema, table.name
            kinds = [
                r[0]
                for r in con.execute(
                    "SELECT constraint_type FROM duckdb_constraints() WHERE table_name = ?",
                    [table.name],
                ).fetchall()
            ]
            assert kinds.count("CHECK") == len(table.checks)
            assert kinds.count("FOREIGN KEY") == len(table.foreign_keys)
            assert kinds.count("PRIMARY KEY") == 1
            assert kinds.count("NOT NULL") == len(table.required_columns)
    finally:
        con.close()


def test_duckdb_accepts_valid_rows(duck: duckdb.DuckDBPyConnection) -> None:
    insert(duck, "annotations", annotation_row())
    insert(duck, "messages", message_row(media_type="image", attrs='{"k": 1}'))
    insert(duck, "runs", run_row(run_id=str(uuid.uuid4()), parent_run_id=RUN))
    insert(duck, "runs", run_row(run_id=str(uuid.uuid4()), status="COMPLETED", ended_at=T1))
    insert(
        duck,
        "documents",
        document_row(
            id=str(uuid.uuid4()),
            doc_type="journal",
            window_start=T0,
            window_end=T1,
            slug=None,
            status=None,
        ),
    )
    insert(
        duck,
        "documents",
        document_row(id=str(uuid.uuid4()), doc_type="media", filename="a.png", media_type="image"),
    )
    counts = {
        t: duck.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]  # type: ignore[index]
        for t in schemas.CATALOG.names
    }
    assert counts == {"runs": 3, "documents": 3, "messages": 1, "annotations": 1}


def test_duckdb_json_column_of_referenced_document_can_be_updated(
    duck: duckdb.DuckDBPyConnection,
) -> None:
    """Why tags are json: an update of a referenced row must not become delete+insert."""
    insert(duck, "annotations", annotation_row())
    duck.execute("UPDATE documents SET tags = ?, title = ? WHERE id = ?", ['["c"]', "New", DOC])
    assert duck.execute("SELECT tags FROM documents").fetchone() == ('["c"]',)


ROWS = {
    "runs": run_row,
    "documents": document_row,
    "annotations": annotation_row,
    "messages": message_row,
}
# Each case: the table, how the row differs from its valid default, the constraint violated.
VIOLATIONS: dict[str, tuple[str, dict[str, Any], str]] = {
    "null_in_not_null": ("documents", {"id": OTHER, "content": None}, "NOT NULL"),
    "null_run_id": ("annotations", {"run_id": None}, "NOT NULL"),
    "doc_type_bogus": ("documents", {"id": OTHER, "doc_type": "bogus"}, "CHECK"),
    "post_without_title": ("documents", {"id": OTHER, "title": None}, "CHECK"),
    "journal_without_window": (
        "documents",
        {"id": OTHER, "doc_type": "journal", "window_start": T0},
        "CHECK",
    ),
    "window_ends_before_start": (
        "documents",
        {"id": OTHER, "window_start": T1, "window_end": T0},
        "CHECK",
    ),
    "media_type_bogus": ("messages", {"media_type": "gif"}, "CHECK"),
    "run_status_bogus": ("runs", {"run_id": OTHER, "status": "DONE"}, "CHECK"),
    "running_run_with_end": ("runs", {"run_id": OTHER, "ended_at": T1}, "CHECK"),
    "finished_run_without_end": ("runs", {"run_id": OTHER, "status": "FAILED"}, "CHECK"),
    "run_ends_before_start": (
        "runs",
        {
            "run_id": OTHER,
            "status": "COMPLETED",
            "started_at": T1,
            "heartbeat_at": T1,
            "ended_at": T0,
        },
        "CHECK",
    ),
    "orphan_annotation": ("annotations", {"document_id": MISSING}, "foreign key"),
    "document_of_unknown_run": ("documents", {"id": OTHER, "run_id": MISSING}, "foreign key"),
    "unknown_parent_run": ("runs", {"run_id": OTHER, "parent_run_id": MISSING}, "foreign key"),
    "duplicate_document_id": ("documents", {}, "primary key"),
    "duplicate_run_id": ("runs", {}, "primary key"),
}


@pytest.mark.parametrize(("table", "overrides", "kind"), VIOLATIONS.values(), ids=VIOLATIONS)
def test_duckdb_enforces_constraints(
    duck: duckdb.DuckDBPyConnection, table: str, overrides: dict[str, Any], kind: str
) -> None:
    row = ROWS[table](**overrides)
    with pytest.raises(duckdb.ConstraintException, match=f"(?i){kind}"):
        insert(duck, table, row)


def test_duckdb_restricts_delete_of_referenced_document(
    duck: duckdb.DuckDBPyConnection,
) -> None:
    insert(duck, "annotations", annotation_row())
    with pytest.raises(duckdb.ConstraintException, match="still referenced"):
        duck.execute("DELETE FROM documents WHERE id = ?", [DOC])


# --- property: declared == reflected --------------------------------------------------------

POLICY_TYPES = (
    "string",
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
    "boolean",
    "date",
    "timestamp('UTC')",
    "timestamp('UTC', 3)",
    "timestamp('UTC', 9)",
    "uuid",
    "json",
    "binary",
)
SQL_KEYWORDS = (
    "select",
    "order",
    "from",
    "where",
    "group",
    "table",
    "user",
    "limit",
    "default",
    "check",
    "primary",
    "key",
    "references",
    "Select",
    "ORDER",
    "From",
    "Null",
    "not",
)
names = st.one_of(
    st.sampled_from(SQL_KEYWORDS),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,14}", fullmatch=True),
)
# DuckDB folds identifiers case-insensitively even when quoted, so names must differ in
# more than case; `run_id` is the lineage column's name.
column_names = names.filter(lambda n: n.lower() != RUN_ID)


@st.composite
def table_schemas(draw: st.DrawFn) -> TableSchema:
    cols = draw(st.lists(column_names, min_size=1, max_size=8, unique_by=str.lower))
    key_size = draw(st.integers(min_value=1, max_value=min(2, len(cols))))
    key = draw(st.permutations(cols))[:key_size]
    schema = {}
    for col in cols:
        not_null = col in key or draw(st.booleans())
        schema[col] = ("!" if not_null else "") + draw(st.sampled_from(POLICY_TYPES))
    name = draw(names.filter(lambda n: n.lower() != "runs"))
    return TableSchema(name, schema, primary_key=tuple(key), lineage=draw(st.booleans()))


@settings(max_examples=40, deadline=None)
@given(table=table_schemas())
def test_generated_schema_round_trips_through_duckdb(table: TableSchema) -> None:
    con = duckdb.connect()
    try:
        create_all(con, Catalog((schemas.CATALOG["runs"], table)))
        reflected = ibis.duckdb.from_connection(con).get_schema(table.name)
    finally:
        con.close()
    assert reflected == table.schema


# --- PostgreSQL -----------------------------------------------------------------------------


def connect_postgres() -> Any:
    """A psycopg connection, or skip (locally) / fail (in CI) naming the reason."""
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}"
        print(reason)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.postgres
def test_postgres_ddl_executes_and_enforces() -> None:
    conn = connect_postgres()
    from psycopg import errors, sql

    schema = f"egregora_test_{secrets.token_hex(6)}"
    try:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for table in schemas.CATALOG.creation_order():
            conn.execute(ddl.create_table_sql(table, "postgres"))

        fks = conn.execute(
            """
            SELECT c.conrelid::regclass::text, c.conname, c.confdeltype
            FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
            WHERE n.nspname = %s AND c.contype = 'f'
            """,
            [schema],
        ).fetchall()
        expected = {
            (t.name, f"{t.name}_{'_'.join(fk.columns)}_fkey")
            for t in schemas.CATALOG.tables
            for fk in t.foreign_keys
        }
        assert {(table, name) for table, name, _ in fks} == expected
        assert {rule for _, _, rule in fks} == {"r"}  # ON DELETE RESTRICT

        checks = conn.execute(
            """
            SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
            WHERE n.nspname = %s AND c.contype = 'c'
            """,
            [schema],
        ).fetchone()[0]
        assert checks == sum(len(t.checks) for t in schemas.CATALOG.tables)
        nullability = dict(
            conn.execute(
                """
                SELECT table_name || '.' || column_name, is_nullable = 'YES'
                FROM information_schema.columns WHERE table_schema = %s
                """,
                [schema],
            ).fetchall()
        )
        assert nullability == {
            f"{t.name}.{c}": d.nullable for t in schemas.CATALOG.tables for c, d in t.schema.items()
        }

        insert(conn, "runs", run_row(), placeholder="%s")
        insert(conn, "documents", document_row(), placeholder="%s")
        insert(conn, "annotations", annotation_row(), placeholder="%s")
        with pytest.raises(errors.ForeignKeyViolation) as info:
            insert(
                conn, "annotations", annotation_row(document_id=str(uuid.uuid4())), placeholder="%s"
            )
        assert info.value.diag.constraint_name == "annotations_document_id_fkey"
        with pytest.raises(errors.CheckViolation) as check_info:
            insert(
                conn, "documents", document_row(id=str(uuid.uuid4()), title=None), placeholder="%s"
            )
        assert check_info.value.diag.constraint_name == "documents_doc_type_post_requires"
        with pytest.raises(errors.ForeignKeyViolation):
            conn.execute("DELETE FROM documents WHERE id = %s", [DOC])
    finally:
        try:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        finally:
            conn.close()
