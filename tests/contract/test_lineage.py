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

from datetime import timedelta
from typing import Any

import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.helpers import make_annotations, make_documents, make_messages

from egregora.database import (
    DuckDBStorageManager,
    Run,
    RunStatus,
    RunStore,
    lineage,
    new_id,
)
from egregora.database.errors import (
    LineageError,
    RunNotFoundError,
    RunStateError,
    UnknownRunError,
)


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


def test_a_batch_without_run_id_is_stamped_with_the_writing_run(
    store: DuckDBStorageManager, run: Run
) -> None:
    docs = make_documents(5)
    assert "run_id" not in docs.column_names
    assert store.write("documents", docs, run_id=run.run_id) == 5
    assert column(store, store.table("documents"), "run_id") == [run.run_id] * 5


@pytest.mark.parametrize("as_type", [pa.string(), pa.uuid()], ids=["text", "arrow.uuid"])
def test_a_batch_carrying_the_writing_run_is_accepted(
    store: DuckDBStorageManager, run: Run, as_type: pa.DataType
) -> None:
    docs = make_documents(3, run_id=run.run_id)
    docs = with_column(docs, "run_id", pc.cast(docs["run_id"], pa.string()).combine_chunks())
    if as_type == pa.uuid():
        raw = [bytes.fromhex(v.replace("-", "")) for v in docs["run_id"].to_pylist()]
        docs = with_column(docs, "run_id", pa.array(raw, pa.uuid()))
    assert docs.schema.field("run_id").type == as_type
    assert store.write("documents", docs, run_id=run.run_id) == 3
    assert column(store, store.table("documents"), "run_id") == [run.run_id] * 3


# --- lineage failures -------------------------------------------------------------------------


def test_null_run_id(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(4, run_id=run.run_id)
    docs = with_column(docs, "run_id", [run.run_id, None, run.run_id, None])
    ids = docs["id"].to_pylist()

    with pytest.raises(LineageError) as caught:
        store.write("documents", docs, run_id=run.run_id)

    err = caught.value
    assert (err.table, err.columns, err.run_id) == ("documents", ("run_id",), run.run_id)
    assert err.failures is not None
    assert err.failures.to_pylist() == [
        {"column": "run_id", "check": "not_null", "value": None, "key": key(ids[1])},
        {"column": "run_id", "check": "not_null", "value": None, "key": key(ids[3])},
    ]
    assert str(err).startswith(
        f"2 rows of `documents` carry no run_id (run {run.run_id}), nothing written: "
        f"run_id=NULL at {key(ids[1])}"
    )
    assert store.table("documents").count().execute() == 0


def test_no_run_given_for_a_lineage_table(store: DuckDBStorageManager) -> None:
    with pytest.raises(LineageError, match="records lineage: pass run_id= of a RUNNING") as caught:
        store.write("messages", make_messages(2), run_id=None)
    assert (caught.value.table, caught.value.columns) == ("messages", ("run_id",))
    assert caught.value.failures is not None
    assert caught.value.failures.to_pylist() == [
        {"column": "run_id", "check": "not_null", "value": None, "key": None}
    ]


def test_foreign_run_id(store: DuckDBStorageManager, runs: RunStore, run: Run) -> None:
    other = runs.start_run("other")  # RUNNING too: only the writing run may be named
    docs = make_documents(3, run_id=run.run_id)
    docs = with_column(docs, "run_id", [other.run_id, run.run_id, other.run_id])
    ids = docs["id"].to_pylist()

    with pytest.raises(LineageError) as caught:
        store.write("documents", docs, run_id=run.run_id)

    err = caught.value
    assert (err.table, err.columns, err.run_id) == ("documents", ("run_id",), run.run_id)
    assert err.failures is not None
    assert err.failures.to_pylist() == [
        {"column": "run_id", "check": "run_id_matches_run", "value": other.run_id, "key": key(i)}
        for i in (ids[0], ids[2])
    ]
    assert str(err).startswith(f"2 rows of `documents` carry a foreign run_id (run {run.run_id})")
    assert store.table("documents").count().execute() == 0


@pytest.mark.parametrize("run_id", [str(new_id()), "adapter:whatsapp"], ids=["uuid", "text"])
def test_unknown_run(store: DuckDBStorageManager, run_id: str) -> None:
    with pytest.raises(LineageError) as caught:
        store.write("documents", make_documents(2), run_id=run_id)
    err = caught.value
    # Also what a caller looking runs up would catch.
    assert isinstance(err, RunNotFoundError)
    assert isinstance(err, LookupError)
    assert (err.table, err.columns, err.run_id) == ("documents", ("run_id",), run_id)
    assert err.failures is not None
    assert err.failures.to_pylist() == [
        {"column": "run_id", "check": "run_exists", "value": run_id, "key": None}
    ]
    assert "nothing written" in str(err)
    assert store.table("documents").count().execute() == 0


@pytest.mark.parametrize("run_id", ["\ud800", "run\x00id"], ids=["lone_surrogate", "nul"])
def test_a_run_id_that_cannot_be_sent_is_an_unknown_run(
    store: DuckDBStorageManager, run_id: str
) -> None:
    # Refused before any query: neither DuckDB nor PostgreSQL could be handed it.
    with pytest.raises(UnknownRunError) as caught:
        store.write("documents", make_documents(2), run_id=run_id)
    shown = run_id.encode("utf-8", "backslashreplace").decode()
    assert caught.value.run_id == shown
    assert caught.value.failures is not None
    assert caught.value.failures["value"].to_pylist() == [shown]
    assert "is not a run id (expected a UUID)" in str(caught.value)
    assert store.table("documents").count().execute() == 0


@pytest.mark.parametrize(
    "status",
    [RunStatus.COMPLETED, RunStatus.CRASHED, RunStatus.ROLLED_BACK],
)
def test_finished_run(store: DuckDBStorageManager, runs: RunStore, status: RunStatus) -> None:
    run = runs.start_run("finished")
    if status is RunStatus.ROLLED_BACK:
        runs.end_run(run.run_id)
        runs.rollback_run(run.run_id)
    else:
        runs.end_run(run.run_id, status=status)

    with pytest.raises(LineageError) as caught:
        store.write("annotations", make_annotations([str(new_id())]), run_id=run.run_id)

    err = caught.value
    assert isinstance(err, RunStateError)
    assert (err.table, err.columns, err.run_id) == ("annotations", ("run_id",), run.run_id)
    assert err.failures is not None
    assert err.failures.to_pylist() == [
        {"column": "run_id", "check": "run_is_running", "value": str(status), "key": None}
    ]
    assert f"is {status}; only a RUNNING run can write to `annotations`" in str(err)


def test_naive_created_at(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(3)
    docs = with_column(docs, "created_at", pc.cast(docs["created_at"], pa.timestamp("us")))

    with pytest.raises(LineageError) as caught:
        store.write("documents", docs, run_id=run.run_id)

    err = caught.value
    assert (err.table, err.columns, err.run_id) == ("documents", ("created_at",), run.run_id)
    assert err.failures is not None
    [failure] = err.failures.to_pylist()  # a type: every row is at fault, one failure says it
    assert (failure["column"], failure["check"], failure["key"]) == ("created_at", "type", None)
    assert failure["value"].startswith("naive timestamp")
    assert "created_at: type (naive timestamp" in str(err)
    assert store.table("documents").count().execute() == 0


def test_created_at_before_the_run_started(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(3)
    early = run.started_at - timedelta(seconds=1)
    docs = with_column(
        docs, "created_at", pa.array([early, run.started_at, early], pa.timestamp("us", tz="UTC"))
    )
    ids = docs["id"].to_pylist()

    with pytest.raises(LineageError) as caught:
        store.write("documents", docs, run_id=run.run_id)

    err = caught.value
    assert (err.table, err.columns, err.run_id) == ("documents", ("created_at",), run.run_id)
    assert err.failures is not None
    listed = err.failures.to_pylist()
    assert [(f["check"], f["key"]) for f in listed] == [
        ("created_at_not_before_run_start", key(ids[0])),
        ("created_at_not_before_run_start", key(ids[2])),
    ]
    assert "2 rows of `documents` predate their run" in str(err)


def test_a_batch_mixing_valid_and_invalid_rows_writes_nothing(
    store: DuckDBStorageManager, runs: RunStore, run: Run
) -> None:
    store.write("documents", make_documents(2, seed=9), run_id=run.run_id)
    other = runs.start_run("other")
    docs = make_documents(20, run_id=run.run_id)
    run_ids: list[str | None] = [run.run_id] * 20
    run_ids[3], run_ids[11] = other.run_id, None
    docs = with_column(docs, "run_id", run_ids)
    # one more row breaks a declared check (a post needs a title) besides the lineage rows
    doc_type = ["post"] * 20
    title = docs["title"].to_pylist()
    title[7] = None
    docs = with_column(with_column(docs, "doc_type", doc_type), "title", title)
    heartbeat = runs.get_run(run.run_id).heartbeat_at

    with pytest.raises(LineageError) as caught:
        store.write("documents", docs, run_id=run.run_id)

    assert caught.value.failures is not None
    checks = sorted(caught.value.failures["check"].to_pylist())
    assert checks == ["documents_doc_type_post_requires", "not_null", "run_id_matches_run"]
    assert str(caught.value).startswith("2 rows of `documents` fail lineage checks and 1 row fails")
    assert store.table("documents").count().execute() == 2
    assert runs.get_run(run.run_id).heartbeat_at == heartbeat


# --- lineage queries on a store with several runs ------------------------------------------------


def test_committed_reads_hide_rows_of_runs_that_did_not_complete(
    store: DuckDBStorageManager, runs: RunStore
) -> None:
    with runs.run("good") as good:
        kept = make_documents(2, seed=1)
        store.write("documents", kept, run_id=good.run_id)
    endings = ["failed", "crashed", "rolled back"]
    started = {}
    for seed, ending in enumerate(endings, start=2):
        started[ending] = runs.start_run(ending)
        store.write("documents", make_documents(1, seed=seed), run_id=started[ending].run_id)
    runs.end_run(started["failed"].run_id, status=RunStatus.FAILED, error="boom")
    runs.end_run(started["rolled back"].run_id)
    # what opening a store does to RUNNING runs whose heartbeat went stale
    crashed = runs.recover_crashed_runs(heartbeat_timeout=timedelta(0))
    assert [r.run_id for r in crashed] == [started["crashed"].run_id]
    live = runs.start_run("live")
    store.write("documents", make_documents(1, seed=10), run_id=live.run_id)
    assert lineage.committed(store, "documents").count().execute() == 3  # good + rolled back

    runs.rollback_run(started["rolled back"].run_id)

    shown = lineage.committed(store, "documents")
    assert sorted(column(store, shown, "id")) == sorted(kept["id"].to_pylist())
    assert store.table("documents").count().execute() == 2 + 3  # all but the rolled back one


