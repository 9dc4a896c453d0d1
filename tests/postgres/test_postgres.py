"""The PostgreSQL backend: what only it has (its URL, real foreign keys in the server, many
writing processes, crash recovery across processes, its error translation and COPY encoding).

The shared contract (writes, runs, lineage, integrity) runs on PostgreSQL through the
``postgres`` kind of the ``store`` fixture in ``conftest.py``. Tests here that need the server
are skipped with the reason printed when it is unreachable, and fail under ``CI=true``.
"""

from __future__ import annotations

import datetime as dt_mod
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ibis
import psycopg
import pyarrow as pa
import pytest
from tests import pg
from tests.helpers import make_annotations, make_documents

from egregora.database import (
    DuckDBStorageManager,
    RunStatus,
    RunStore,
    StorageManager,
    TableSchema,
    connect,
    ddl,
)
from egregora.database.backends.postgres.errors import redact
from egregora.database.backends.postgres.manager import PostgresStorageManager
from egregora.database.checks import OneOf, RequiredWhen
from egregora.database.errors import (
    ConnectionFailedError,
    DuplicateKeyError,
    ForeignKeyViolationError,
    ReadOnlyError,
    StorageError,
    ValidationError,
)
from egregora.database.migrations import canonical_check
from egregora.database.model import Catalog
from egregora.database.schemas import CATALOG, RUNS_SCHEMA

WRITERS = 4
BATCHES = 50
ROWS_PER_BATCH = 20


@pytest.fixture
def schema_name() -> Iterator[str]:
    """A schema of this test's own on the test server, dropped after the test."""
    pg.require_server()
    name = f"egregora_test_{os.urandom(6).hex()}"
    try:
        yield name
    finally:
        pg.drop_schema(name)


@pytest.fixture
def storage(schema_name: str) -> Iterator[PostgresStorageManager]:
    with pg.open_store(schema_name) as opened:
        yield opened


@pytest.fixture
def spawn(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A "spawn" multiprocessing context whose processes can import ``tests.pg`` (they get
    the parent's ``sys.path``, which pytest's importlib mode leaves without the root)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    return multiprocessing.get_context("spawn")


def raw(schema: str) -> psycopg.Connection[Any]:
    """A plain connection to the test server with ``schema`` first on its search path."""
    con = psycopg.connect(pg.url(), autocommit=True)
    con.execute(f"SET search_path = {ddl.ident(schema).sql('postgres')}")
    return con


# --- no server needed -------------------------------------------------------------------------


def test_connect_picks_the_backend_from_the_url(tmp_path: Any) -> None:
    with connect("duckdb:///:memory:") as memory:
        assert isinstance(memory, DuckDBStorageManager)
        assert isinstance(memory, StorageManager)
    with connect(f"duckdb:///{tmp_path / 'a.duckdb'}") as on_file:
        assert isinstance(on_file, DuckDBStorageManager)
        assert on_file.path == str(tmp_path / "a.duckdb")
    assert (tmp_path / "a.duckdb").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("duckdb://", "names no database file"),
        ("sqlite:///x.db", "cannot tell the backend"),
        ("store.duckdb", "cannot tell the backend"),
    ],
)
def test_connect_refuses_what_it_cannot_open(url: str, message: str) -> None:
    with pytest.raises(ConnectionFailedError, match=message):
        connect(url)


def test_unreachable_server_is_a_connection_error_without_the_password() -> None:
    # Port 1 on the loopback answers nothing: the refusal is immediate.
    url = "postgresql://someone:s3cret@127.0.0.1:1/nothing"
    with pytest.raises(ConnectionFailedError) as caught:
        connect(url, connect_timeout=2)
    assert "s3cret" not in str(caught.value)
    assert "someone:***@127.0.0.1:1" in str(caught.value)
    assert redact("host=db password=s3cret user=x") == "host=db password=*** user=x"


def test_postgres_check_forms_are_canonically_the_declared_ones() -> None:
    # What pg_get_constraintdef returns for an IN list and a one-value IN.
    one_of = ddl.check_condition(OneOf("status", ("a", "b")))
    assert canonical_check("(status = ANY (ARRAY['a'::text, 'b'::text]))", "postgres") == (
        canonical_check(one_of)
    )
    rule = ddl.check_condition(RequiredWhen("kind", ("post",), ("title",)))
    assert canonical_check(
        "((NOT (kind = 'post'::text)) OR (NOT (title IS NULL)))", "postgres"
    ) == canonical_check(rule)


# --- the schema -------------------------------------------------------------------------------


def test_tables_are_created_in_the_schema_with_real_constraints(
    storage: PostgresStorageManager, schema_name: str
) -> None:
    assert storage.migration.describe()[0] == "create table egregora_layout"
    with raw(schema_name) as con:
        rows = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [schema_name],
        ).fetchall()
        deletes = con.execute(
            "SELECT DISTINCT confdeltype FROM pg_constraint WHERE contype = 'f' "
            "AND connamespace = %s::regnamespace",
            [schema_name],
        ).fetchall()
    assert {r[0] for r in rows} == {*CATALOG.names, "egregora_layout"}
    assert deletes == [("r",)]  # ON DELETE RESTRICT on every foreign key


def test_reopening_is_a_no_op_and_reflection_equals_the_declaration(
    storage: PostgresStorageManager, schema_name: str
) -> None:
    storage.close()
    with pg.open_store(schema_name) as again:
        assert again.migration.is_empty
        reflected = again._reflect()
    for table in CATALOG.tables:
        found = reflected[table.name]
        assert found.primary_key == table.primary_key
        assert {(fk.columns, fk.ref_table) for fk in found.foreign_keys} == {
            (fk.columns, fk.ref_table) for fk in table.foreign_keys
        }


def test_concurrent_opens_of_a_fresh_schema_create_it_once(schema_name: str, spawn: Any) -> None:
    with spawn.Pool(3) as pool:
        plans = pool.map(pg.open_and_describe, [schema_name] * 3)
    created = [p for p in plans if p]
    assert len(created) == 1, plans
    with raw(schema_name) as con:
        assert con.execute("SELECT count(*) FROM egregora_layout").fetchone() == (1,)


def test_the_database_itself_refuses_orphans_and_deletes_of_referenced_rows(
    storage: PostgresStorageManager, schema_name: str
) -> None:
    runs = RunStore(storage)
    with runs.run("docs") as run:
        docs = make_documents(2)
        storage.write("documents", docs, run_id=run.run_id)
        storage.write("annotations", make_annotations(docs["id"]), run_id=run.run_id)
    with raw(schema_name) as con:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            con.execute(
                "INSERT INTO annotations (id, document_id, content, created_at, run_id) "
                "VALUES (gen_random_uuid(), gen_random_uuid(), 'x', now(), %s)",
                [run.run_id],
            )
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="still referenced"):
            con.execute("DELETE FROM documents")


# --- writes and their errors ------------------------------------------------------------------


ALL_TYPES = TableSchema(
    "every_type",
    ibis.schema(
        {
            "id": "!uuid",
            "small": "int16",
            "medium": "int32",
            "large": "!int64",
            "single": "float32",
            "double": "float64",
            "flag": "boolean",
            "day": "date",
            "at": "timestamp('UTC')",
            "other": "uuid",
            "doc": "json",
            "blob": "binary",
            "text": "string",
        }
    ),
    primary_key=("id",),
    lineage=True,
)


def test_every_allowed_type_round_trips_through_copy(schema_name: str) -> None:
    catalog = Catalog((RUNS_SCHEMA, ALL_TYPES))
    at = dt_mod.datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt_mod.UTC)
    rows = pa.table(
        {
            "id": ["0193a5f0-0000-7000-8000-000000000001", "0193A5F0-0000-7000-8000-000000000002",
                   "{0193a5f0-0000-7000-8000-000000000003}"],
            "small": pa.array([-32768, None, 32767], pa.int16()),
            "medium": pa.array([-(2**31), 0, None], pa.int32()),
            "large": [-(2**63), 2**63 - 1, 0],
            "single": pa.array([1.5, None, -0.0], pa.float32()),
            "double": [float("inf"), -1e300, None],
            "flag": [True, False, None],
            "day": [dt_mod.date(1970, 1, 1), None, dt_mod.date(2000, 1, 1)],
            "at": pa.array([at, None, at + dt_mod.timedelta(microseconds=1)],
                           pa.timestamp("us", tz="UTC")),
            "other": [None, "0193a5f0-0000-7000-8000-00000000000a", None],
            "doc": ['{"a": [1, "é"]}', None, "[]"],
            "blob": [b"\x00\xff", None, b""],
            "text": ["tab\there", None, "ünïcode \\ \"quoted\""],
        }
    )
    with pg.open_store(schema_name, catalog=catalog) as storage:
        runs = RunStore(storage)
        with runs.run("types") as run:
            assert storage.write("every_type", rows, run_id=run.run_id) == 3
        back = storage.to_arrow(storage.table("every_type").order_by("id"))
    expected = rows.to_pylist()
    expected[1]["id"] = expected[1]["id"].lower()
    expected[2]["id"] = expected[2]["id"].strip("{}")
    got = back.to_pylist()
    for want, row in zip(expected, got, strict=True):
        assert row.pop("run_id") == run.run_id
        if want["doc"] is not None:
            assert pa.scalar(row.pop("doc")).as_py() is not None
            want.pop("doc")
        else:
            assert row.pop("doc") is None
            want.pop("doc")
        assert row == want


def test_a_refused_copy_lists_every_offending_row(storage: PostgresStorageManager) -> None:
    runs = RunStore(storage)
    run = runs.start_run("errors")
    missing = ["0193a5f0-0000-7000-8000-00000000000a", "0193a5f0-0000-7000-8000-00000000000b"]
    notes = make_annotations([missing[0], missing[1], missing[0]])
    with pytest.raises(ForeignKeyViolationError) as caught:
        storage.write("annotations", notes, run_id=run.run_id)
    err = caught.value
    assert isinstance(err.__cause__, psycopg.errors.ForeignKeyViolation)
    assert err.failures is not None
    assert sorted(err.failures["value"].to_pylist()) == sorted([missing[0], missing[0], missing[1]])

    docs = make_documents(5)
    storage.write("documents", docs.slice(0, 3), run_id=run.run_id)
    with pytest.raises(DuplicateKeyError) as dup:
        storage.write("documents", docs, run_id=run.run_id)
    assert dup.value.failures is not None
    assert dup.value.failures.num_rows == 3
    assert "already stored" in str(dup.value)
    assert storage.to_arrow(storage.table("documents").count().as_table()).column(0)[0].as_py() == 3


def test_a_write_of_many_chunks_is_one_transaction(schema_name: str) -> None:
    with pg.open_store(schema_name, chunk_rows=4) as storage:
        runs = RunStore(storage)
        run = runs.start_run("chunks")
        before = runs.get_run(run.run_id).heartbeat_at
        docs = make_documents(10, seed=3)
        stream = pa.concat_tables([docs, docs.slice(1, 1)])  # the last chunk repeats a key
        with pytest.raises(DuplicateKeyError, match="earlier in this call"):
            storage.write("documents", stream, run_id=run.run_id)
        assert storage.table("documents").count().execute() == 0
        assert runs.get_run(run.run_id).heartbeat_at == before
        assert storage.write("documents", docs, run_id=run.run_id) == 10


def test_a_chunk_refused_while_the_next_is_validated_is_the_one_diagnosed(
    schema_name: str,
) -> None:
    # A chunk's COPY runs while the next chunk is conformed and validated; its refusal
    # surfaces later, and must still name the rows of the refused chunk.
    with pg.open_store(schema_name, chunk_rows=3) as storage:
        runs = RunStore(storage)
        run = runs.start_run("stream")
        docs = make_documents(3, seed=8)
        storage.write("documents", docs, run_id=run.run_id)
        missing = ["0193a5f0-0000-7000-8000-0000000000a1", "0193a5f0-0000-7000-8000-0000000000a2"]
        notes = make_annotations([missing[0], missing[1], missing[0], *docs["id"].to_pylist()])
        with pytest.raises(ForeignKeyViolationError) as caught:
            storage.write("annotations", notes, run_id=run.run_id)
        assert caught.value.failures is not None
        assert sorted(caught.value.failures["value"].to_pylist()) == sorted(
            [missing[0], missing[0], missing[1]]
        )
        assert storage.table("annotations").count().execute() == 0
        assert storage.write("annotations", notes.slice(3), run_id=run.run_id) == 3


def test_text_that_is_no_uuid_or_json_is_a_validation_error(
    storage: PostgresStorageManager,
) -> None:
    run = RunStore(storage).start_run("bad text")
    docs = make_documents(3, seed=4)
    ids = docs["id"].to_pylist()
    ids[1] = "not-a-uuid"
    bad = docs.set_column(0, "id", pa.array(ids))
    where = docs.schema.get_field_index("extensions")
    with pytest.raises(ValidationError) as caught:
        storage.write("documents", bad.set_column(where, "extensions", pa.array(["{", None, "[]"])),
                      run_id=run.run_id)
    assert caught.value.failures is not None
    assert set(caught.value.failures["check"].to_pylist()) == {"uuid_text", "json_text"}
    with pytest.raises(ValidationError, match="not valid for their declared type") as json_only:
        storage.write("documents", docs.set_column(where, "extensions", pa.array(["x", "{}", "1"])),
                      run_id=run.run_id)
    assert isinstance(json_only.value.__cause__, psycopg.errors.InvalidTextRepresentation)


def test_updates_keep_references_as_on_duckdb(storage: PostgresStorageManager) -> None:
    run = RunStore(storage).start_run("updates")
    docs = make_documents(2, seed=5)
    storage.write("documents", docs, run_id=run.run_id)
    notes = make_annotations([docs["id"][0].as_py()])
    storage.write("annotations", notes, run_id=run.run_id)
    moved = notes.set_column(1, "document_id", pa.array([docs["id"][1].as_py()]))
    with pytest.raises(StorageError, match="would change their reference"):
        storage.write("annotations", moved, run_id=run.run_id, on_conflict="update")
    edited = notes.set_column(2, "content", pa.array(["edited"]))
    assert storage.write("annotations", edited, run_id=run.run_id, on_conflict="update") == 1
    assert storage.write("annotations", notes, run_id=run.run_id, on_conflict="ignore") == 0
    assert storage.table("annotations").content.to_list() == ["edited"]


def test_read_only_store_refuses_writes_in_the_library_and_the_session(
    storage: PostgresStorageManager, schema_name: str
) -> None:
    with pg.open_store(schema_name, read_only=True) as reader:
        with pytest.raises(ReadOnlyError):
            reader.write("documents", make_documents(1), run_id=None)
        with pytest.raises(ReadOnlyError):
            reader.execute("CREATE TABLE sneaky (a int)")
        assert reader.verify().problems == ()


# --- many processes -------------------------------------------------------------------------


@pytest.mark.slow
def test_concurrent_writers_lose_no_row_and_break_no_key(schema_name: str, spawn: Any) -> None:
    start = spawn.Manager().Barrier(WRITERS)
    with spawn.Pool(WRITERS) as pool:
        done = pool.starmap(
            pg.write_batches,
            [(schema_name, seed, start, BATCHES, ROWS_PER_BATCH) for seed in range(1, WRITERS + 1)],
        )
    assert len({pid for _, pid in done}) == WRITERS
    with pg.open_store(schema_name) as storage:
        docs = storage.table("documents")
        counts = storage.to_arrow(docs.group_by("run_id").aggregate(n=docs.count()))
        per_run = {row["run_id"]: row["n"] for row in counts.to_pylist()}
        assert per_run == {run_id: BATCHES * ROWS_PER_BATCH for run_id, _ in done}
        assert storage.table("annotations").count().execute() == WRITERS * 2
        assert storage.table("messages").count().execute() == WRITERS * ROWS_PER_BATCH
        statuses = RunStore(storage).list_runs().status.to_list()
        assert statuses == [RunStatus.COMPLETED] * WRITERS
        assert storage.verify().problems == ()


def test_a_killed_writer_s_run_is_marked_crashed_by_the_next_open(
    schema_name: str, spawn: Any
) -> None:
    pg.open_store(schema_name).close()
    ready = spawn.Queue()
    writer = spawn.Process(target=pg.write_then_hang, args=(schema_name, ready))
    writer.start()
    try:
        run_id = ready.get(timeout=60)
    finally:
        os.kill(writer.pid or 0, signal.SIGKILL)
        writer.join()
    with pg.open_store(schema_name) as storage:
        runs = RunStore(storage)
        crashed = runs.get_run(run_id)
        assert crashed.status is RunStatus.CRASHED
        assert f"process {writer.pid}" in (crashed.error or "")
        assert [p.kind for p in storage.verify().problems] == ["unfinished_run_rows"]
        runs.rollback_run(run_id)
        assert storage.verify().problems == ()


def test_a_run_of_another_host_is_judged_by_its_heartbeat(schema_name: str) -> None:
    with pg.open_store(schema_name) as storage:
        run = RunStore(storage).start_run("elsewhere")
    with raw(schema_name) as con:
        con.execute(
            "UPDATE runs SET host = 'another-host', pid = 1, "
            "started_at = started_at - interval '1 hour', "
            "heartbeat_at = heartbeat_at - interval '30 minutes' WHERE run_id = %s",
            [run.run_id],
        )
    with pg.open_store(schema_name, heartbeat_timeout=dt_mod.timedelta(hours=1)) as storage:
        assert RunStore(storage).get_run(run.run_id).status is RunStatus.RUNNING
    with pg.open_store(schema_name, heartbeat_timeout=dt_mod.timedelta(minutes=10)) as storage:
        found = RunStore(storage).get_run(run.run_id)
    assert found.status is RunStatus.CRASHED
    assert "no heartbeat since" in (found.error or "")
