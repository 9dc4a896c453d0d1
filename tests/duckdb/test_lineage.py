"""Lineage end to end: stamping, every lineage failure of a write, the lineage queries and the
committed reads.

- Stamping: a batch without ``run_id`` is stamped with the writing run; a batch with one must
  carry the writing run on every row. In the database ``run_id`` is NOT NULL with a FOREIGN
  KEY to ``runs``.
- Each lineage failure raises a LineageError (a ValidationError) naming the table, the column
  and the run, with a ``failures`` row per offending row, and writes nothing, even when only
  some rows of a batch are at fault.
- The queries of ``egregora.database.runs.lineage`` are Ibis expressions over a store holding
  several runs; committed reads hide the rows of runs that did not complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pytest
from tests.conftest import STORE_KINDS, StoreKind
from tests.helpers import make_annotations, make_documents, make_messages

import duckdb
from egregora.database import (
    RUNS_SCHEMA,
    Catalog,
    DuckDBStorageManager,
    RunStatus,
    RunStore,
    TableSchema,
    lineage,
    new_id,
)
from egregora.database.errors import (
    LineageError,
    RunNotFoundError,
    TableNotFoundError,
)
from egregora.database.schemas import CATALOG


def column(store: DuckDBStorageManager, expr: ir.Table, name: str) -> list[Any]:
    return [None if v is None else str(v) for v in store.to_arrow(expr)[name].to_pylist()]


def with_column(
    batch: pa.Table, name: str, values: pa.Array | pa.ChunkedArray | list[Any]
) -> pa.Table:
    where = batch.schema.get_field_index(name)
    field = batch.schema.field(where)
    array = (
        values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, field.type)
    )
    return batch.set_column(where, pa.field(name, array.type), array)


def key(doc_id: str) -> str:
    return f"id={doc_id!r}"


# --- stamping -------------------------------------------------------------------------------


def test_run_id_is_not_null_with_a_foreign_key_in_the_database(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    with DuckDBStorageManager(path) as store:
        run = RunStore(store).start_run("writer")
        store.write("documents", make_documents(1), run_id=run.run_id)
    lineage_tables = sorted(t.name for t in CATALOG.tables if t.lineage)
    with duckdb.connect(str(path)) as con:
        constraints = con.execute(
            "SELECT table_name, constraint_type, constraint_column_names, referenced_table "
            "FROM duckdb_constraints() WHERE list_contains(constraint_column_names, 'run_id') "
            "AND table_name <> 'runs'"
        ).fetchall()
        for name in lineage_tables:
            assert (name, "NOT NULL", ["run_id"], None) in constraints
            assert (name, "FOREIGN KEY", ["run_id"], "runs") in constraints
        copy = "INSERT INTO documents SELECT * REPLACE (uuid() AS id, {} AS run_id) FROM documents"
        with pytest.raises(duckdb.ConstraintException, match="NOT NULL"):
            con.execute(copy.format("NULL"))
        with pytest.raises(duckdb.ConstraintException, match="foreign key"):
            con.execute(copy.format("uuid()"))
        assert con.execute("SELECT count(*) FROM documents").fetchone() == (1,)


# --- lineage failures -------------------------------------------------------------------------


def test_a_stream_whose_later_chunk_is_invalid_writes_nothing(tmp_path: Path) -> None:
    with DuckDBStorageManager(tmp_path / "s.duckdb", chunk_rows=4) as store:
        runs = RunStore(store)
        run = runs.start_run("stream")
        good = make_documents(8, seed=1, run_id=run.run_id)
        bad = with_column(make_documents(4, seed=2, run_id=run.run_id), "run_id", [None] * 4)
        stream = pa.concat_tables([good.cast(bad.schema), bad]).to_reader(max_chunksize=4)
        with pytest.raises(LineageError, match="4 rows of `documents` carry no run_id"):
            store.write("documents", stream, run_id=run.run_id)
        assert store.table("documents").count().execute() == 0


# --- lineage queries on a store with several runs ------------------------------------------------


@pytest.fixture(scope="module", params=STORE_KINDS, ids=[kind.name for kind in STORE_KINDS])
def history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Built once per kind of store (the queries only read):

    - ``ingest`` (COMPLETED): 5 documents, 4 messages;
    - ``enrich`` (COMPLETED, child of ingest): 3 annotations on ingest's documents, 2 documents;
    - ``retry`` (FAILED, child of enrich): 1 document;
    - ``idle`` (COMPLETED): wrote nothing;
    - ``live`` (RUNNING): 2 messages.
    """
    kind: StoreKind = request.param
    store = kind.open(tmp_path_factory.mktemp(kind.name))
    runs = RunStore(store)
    ingest = runs.start_run("ingest", config={"source": "whatsapp", "batch": 5})
    docs = make_documents(5, seed=1)
    msgs = make_messages(4, seed=1)
    store.write("documents", docs, run_id=ingest.run_id)
    store.write("messages", msgs, run_id=ingest.run_id)
    runs.end_run(ingest.run_id)
    enrich = runs.start_run("enrich", config={"model": "m1"}, parent_run_id=ingest.run_id)
    notes = make_annotations(docs["id"].to_pylist()[:3], seed=2)
    enriched = make_documents(2, seed=2)
    store.write("annotations", notes, run_id=enrich.run_id)
    store.write("documents", enriched, run_id=enrich.run_id)
    runs.end_run(enrich.run_id)
    retry = runs.start_run("retry", parent_run_id=enrich.run_id)
    retried = make_documents(1, seed=3)
    store.write("documents", retried, run_id=retry.run_id)
    runs.end_run(retry.run_id, status=RunStatus.FAILED, error="boom")
    idle = runs.start_run("idle")
    runs.end_run(idle.run_id)
    live = runs.start_run("live")
    live_msgs = make_messages(2, seed=4)
    store.write("messages", live_msgs, run_id=live.run_id)
    yield {
        "store": store,
        "runs": {r.name: runs.get_run(r.run_id) for r in (ingest, enrich, retry, idle, live)},
        "documents": {
            "ingest": docs["id"].to_pylist(), "enrich": enriched["id"].to_pylist(),
            "retry": retried["id"].to_pylist(),
        },
        "messages": {
            "ingest": msgs["event_id"].to_pylist(), "live": live_msgs["event_id"].to_pylist()
        },
        "annotations": {"enrich": notes["id"].to_pylist()},
    }
    store.close()


def test_rows_of_run(history: dict[str, Any]) -> None:
    store, runs = history["store"], history["runs"]
    keys = {"documents": "id", "messages": "event_id", "annotations": "id"}
    for table, pk in keys.items():
        for name, run in runs.items():
            expr = lineage.rows_of_run(store, table, run.run_id)
            assert isinstance(expr, ir.Table)
            assert sorted(column(store, expr, pk)) == sorted(history[table].get(name, []))
    # an expression: it composes with anything else
    ingest = lineage.rows_of_run(store, "documents", runs["ingest"].run_id)
    notes = store.table("annotations")
    annotated = ingest.semi_join(notes, ingest.id == notes.document_id)
    assert sorted(column(store, annotated, "id")) == sorted(history["documents"]["ingest"][:3])


@pytest.mark.parametrize("run_id", [str(new_id()), "adapter:whatsapp"])
def test_rows_of_an_unknown_run_are_none(history: dict[str, Any], run_id: str) -> None:
    assert lineage.rows_of_run(history["store"], "documents", run_id).count().execute() == 0


@pytest.mark.parametrize("table", ["runs", "egregora_layout", "posts"])
def test_lineage_queries_refuse_tables_without_lineage(history: dict[str, Any], table: str) -> None:
    store = history["store"]
    with pytest.raises(TableNotFoundError) as caught:
        lineage.rows_of_run(store, table, history["runs"]["ingest"].run_id)
    assert caught.value.table == table
    with pytest.raises(TableNotFoundError):
        lineage.committed(store, table)


def test_provenance_of_a_row(history: dict[str, Any]) -> None:
    store, runs = history["store"], history["runs"]
    cases = [
        ("documents", history["documents"]["enrich"][1], "enrich"),
        ("documents", history["documents"]["retry"][0], "retry"),
        ("messages", history["messages"]["live"][0], "live"),
        ("annotations", history["annotations"]["enrich"][2], "enrich"),
    ]
    for table, row_key, name in cases:
        [found] = store.to_arrow(lineage.provenance(store, table, row_key)).to_pylist()
        assert str(found["run_id"]) == runs[name].run_id
        assert found["name"] == name
    pk = "id"
    [found] = store.to_arrow(
        lineage.provenance(store, "documents", {pk: history["documents"]["ingest"][0]})
    ).to_pylist()
    assert (found["name"], found["status"]) == ("ingest", "COMPLETED")
    assert json.loads(found["config"]) == {"source": "whatsapp", "batch": 5}
    assert found["config_hash"] == runs["ingest"].config_hash


@pytest.mark.parametrize("row_key", [str(new_id()), "not-a-uuid"])
def test_provenance_of_a_missing_row_is_empty(history: dict[str, Any], row_key: str) -> None:
    assert lineage.provenance(history["store"], "documents", row_key).count().execute() == 0


def test_provenance_needs_the_primary_key(history: dict[str, Any]) -> None:
    with pytest.raises(TableNotFoundError, match=r"keyed by \(id\)") as caught:
        lineage.provenance(history["store"], "documents", {"slug": "x"})
    assert caught.value.columns == ("id",)


def test_rows_per_run(history: dict[str, Any]) -> None:
    store, runs = history["store"], history["runs"]
    rows = store.to_arrow(lineage.rows_per_run(store)).to_pylist()
    assert [(r["name"], r["status"], r["table"], r["rows"]) for r in rows] == [
        ("ingest", "COMPLETED", "documents", 5),
        ("ingest", "COMPLETED", "messages", 4),
        ("enrich", "COMPLETED", "annotations", 3),
        ("enrich", "COMPLETED", "documents", 2),
        ("retry", "FAILED", "documents", 1),
        ("live", "RUNNING", "messages", 2),
    ]
    assert [str(r["run_id"]) for r in rows][:2] == [runs["ingest"].run_id] * 2
    per_table = (
        lineage.rows_per_run(store).group_by("table").aggregate(n=ibis._.rows.sum()).order_by("table")
    )
    assert store.to_arrow(per_table).to_pylist() == [
        {"table": "annotations", "n": 3}, {"table": "documents", "n": 8},
        {"table": "messages", "n": 6},
    ]


def test_parent_chain(history: dict[str, Any]) -> None:
    store, runs = history["store"], history["runs"]
    chain = store.to_arrow(lineage.parent_chain(store, runs["retry"].run_id)).to_pylist()
    assert [(r["name"], r["depth"]) for r in chain] == [("retry", 0), ("enrich", 1), ("ingest", 2)]
    assert json.loads(chain[1]["config"]) == {"model": "m1"}
    alone = store.to_arrow(lineage.parent_chain(store, runs["idle"].run_id)).to_pylist()
    assert [(r["name"], r["depth"]) for r in alone] == [("idle", 0)]


@pytest.mark.parametrize("run_id", [str(new_id()), "adapter:whatsapp"])
def test_parent_chain_of_an_unknown_run(history: dict[str, Any], run_id: str) -> None:
    with pytest.raises(RunNotFoundError) as caught:
        lineage.parent_chain(history["store"], run_id)
    assert caught.value.run_id == run_id


def test_committed_reads_show_only_rows_of_completed_runs(history: dict[str, Any]) -> None:
    store = history["store"]
    docs = lineage.committed(store, "documents")
    assert sorted(column(store, docs, "id")) == sorted(
        history["documents"]["ingest"] + history["documents"]["enrich"]
    )  # not the failed retry's
    msgs = lineage.committed(store, "messages")
    assert sorted(column(store, msgs, "event_id")) == sorted(history["messages"]["ingest"])
    # the raw table still has everything
    assert store.table("documents").count().execute() == 8
    assert store.table("messages").count().execute() == 6
    # composes: committed annotations joined to committed documents
    notes = lineage.committed(store, "annotations")
    joined = notes.join(docs, notes.document_id == docs.id).select(notes.id)
    assert sorted(column(store, joined, "id")) == sorted(history["annotations"]["enrich"])


def test_rows_per_run_of_a_catalog_without_lineage_tables(tmp_path: Path) -> None:
    settings = TableSchema(
        "settings", ibis.schema({"key": "!string", "value": "string"}), primary_key=("key",)
    )
    catalog = Catalog((RUNS_SCHEMA, settings))
    with DuckDBStorageManager(tmp_path / "s.duckdb", catalog=catalog) as store:
        with RunStore(store).run("configure"):
            store.write("settings", pa.table({"key": ["a"], "value": ["1"]}), run_id=None)
        per_run = store.to_arrow(lineage.rows_per_run(store))
        assert per_run.num_rows == 0
        assert per_run.column_names == ["run_id", "name", "status", "table", "rows", "started_at"]
