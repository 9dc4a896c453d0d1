"""DuckDBStorageManager: errors, atomicity, conflicts, threads, processes, modes, migrations.

Error tests check the type, the structured fields and the message. Atomicity tests compare
the whole table before and after a refused write. Process tests run a second Python process,
because DuckDB's file lock is per process.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.conftest import OpenStore
from tests.helpers import make_annotations, make_documents, uuids

from egregora.database import (
    DuckDBStorageManager,
    Run,
    RunStore,
    new_id,
)
from egregora.database.errors import (
    ConnectionFailedError,
    ConstraintViolationError,
    DuplicateKeyError,
    ForeignKeyViolationError,
    RunNotFoundError,
    StorageError,
    TableNotFoundError,
    ValidationError,
)


def stored(store: DuckDBStorageManager, table: str) -> pa.Table:
    """Every row of ``table``, ordered by primary key."""
    key = [(c, "ascending") for c in store.catalog[table].primary_key]
    return store.to_arrow(store.table(table)).sort_by(key)


def count(store: DuckDBStorageManager, table: str) -> int:
    return int(store.table(table).count().execute())


def replace_column(table: pa.Table, name: str, values: list[object]) -> pa.Table:
    where = table.schema.get_field_index(name)
    return table.set_column(
        where, table.schema.field(where), pa.array(values, table.schema.field(where).type)
    )


def missing_ids(n: int, seed: int) -> list[str]:
    return uuids(n, np.random.default_rng(seed)).to_pylist()


# --- errors: type, fields, message -----------------------------------------------------


def test_foreign_key_error_lists_every_row(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(3, seed=1)
    store.write("documents", docs, run_id=run.run_id)
    missing = missing_ids(7, seed=2)
    # 8 offending rows: 7 distinct missing documents, one of them referenced twice.
    targets = [*docs["id"].to_pylist()[:2], *missing, missing[0]]
    notes = make_annotations(targets, seed=3)

    with pytest.raises(ForeignKeyViolationError) as caught:
        store.write("annotations", notes, run_id=run.run_id)

    err = caught.value
    assert isinstance(err, ConstraintViolationError | ValueError | StorageError)
    assert err.table == "annotations"
    assert err.columns == ("document_id",)
    assert err.run_id == run.run_id
    assert err.failures is not None
    assert err.failures.num_rows == 8
    assert set(err.failures["check"].to_pylist()) == {"foreign_key"}
    assert sorted(err.failures["value"].to_pylist()) == sorted([*missing, missing[0]])
    offenders = notes.filter(pc.is_in(notes["document_id"], pa.array(missing)))
    assert set(err.failures["key"].to_pylist()) == {
        f"id='{i}'" for i in offenders["id"].to_pylist()
    }
    message = str(err)
    assert message.startswith("8 rows of `annotations` reference missing `documents`.`id`")
    assert f"(run {run.run_id}), nothing written: " in message
    assert "and 2 more" in message  # 7 missing documents, 5 shown
    assert count(store, "annotations") == 0


def test_duplicate_key_error_lists_every_key(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(8, seed=4)
    store.write("documents", docs, run_id=run.run_id)
    again = pa.concat_tables([make_documents(8, seed=4), make_documents(2, seed=5)])

    with pytest.raises(DuplicateKeyError) as caught:
        store.write("documents", again, run_id=run.run_id)

    err = caught.value
    assert isinstance(err, ConstraintViolationError | ValueError)
    assert err.table == "documents"
    assert err.columns == ("id",)
    assert err.run_id == run.run_id
    assert err.failures is not None
    assert sorted(err.failures["key"].to_pylist()) == sorted(
        f"id='{i}'" for i in docs["id"].to_pylist()
    )
    assert str(err).startswith("8 rows of `documents` repeat a primary key already stored")
    assert "nothing written" in str(err)
    assert "and 3 more" in str(err)
    assert count(store, "documents") == 8


def test_validation_error_shows_five_then_and_n_more(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(8, seed=6)
    bad = replace_column(docs, "doc_type", ["memo"] * 8)

    with pytest.raises(ValidationError) as caught:
        store.write("documents", bad, run_id=run.run_id)

    err = caught.value
    assert err.table == "documents"
    assert err.columns == ("doc_type",)
    assert err.run_id == run.run_id
    assert err.failures is not None
    assert err.failures.num_rows == 8
    assert "nothing written" in str(err)
    assert "and 3 more" in str(err)
    assert "memo" in str(err)


def test_a_write_for_an_unknown_run_is_refused(store: DuckDBStorageManager) -> None:
    ghost = missing_ids(1, seed=7)[0]

    with pytest.raises(RunNotFoundError) as caught:
        store.write("documents", make_documents(1), run_id=ghost)

    assert isinstance(caught.value, LookupError)
    assert caught.value.run_id == ghost
    assert caught.value.table == "documents"
    with pytest.raises(RunNotFoundError):
        store.write("documents", make_documents(1), run_id="not-a-uuid")
    with pytest.raises(ValidationError, match="run_id"):
        store.write("documents", make_documents(1), run_id=None)
    assert count(store, "documents") == 0


@pytest.mark.parametrize(
    "name",
    ['x"; DROP TABLE runs; --', "runs; DROP TABLE documents", "documents--", "Documents", ""],
)
def test_table_names_that_look_like_sql_are_unknown_tables(
    store: DuckDBStorageManager, run: Run, name: str
) -> None:
    with pytest.raises(TableNotFoundError) as caught:
        store.write(name, make_documents(1), run_id=run.run_id)
    assert caught.value.table == name
    assert isinstance(caught.value, LookupError)
    with pytest.raises(TableNotFoundError):
        store.table(name)

    assert count(store, "runs") == 1
    assert count(store, "documents") == 0


def test_unknown_on_conflict_is_refused(store: DuckDBStorageManager, run: Run) -> None:
    with pytest.raises(ValidationError, match="on_conflict"):
        store.write("documents", make_documents(1), run_id=run.run_id, on_conflict="replace")  # type: ignore[arg-type]


# --- atomicity ------------------------------------------------------------------------


@pytest.fixture
def chunked(open_store: OpenStore) -> tuple[DuckDBStorageManager, Run, pa.Table]:
    """A store writing in chunks of 1000 rows, with 3000 documents and 1000 annotations."""
    store = open_store(chunk_rows=1000)
    run = RunStore(store).start_run("chunks")
    docs = make_documents(3000, seed=8)
    store.write("documents", docs, run_id=run.run_id)
    store.write("annotations", make_annotations(docs["id"][:1000], seed=9), run_id=run.run_id)
    return store, run, docs


def _five_chunks(docs: pa.Table, seed: int) -> pa.Table:
    return make_annotations(
        pa.concat_arrays([*docs["id"].chunks, *docs["id"].chunks])[:5000], seed=seed
    )


def _stream(table: pa.Table) -> pa.RecordBatchReader:
    batches = table.combine_chunks().to_batches(max_chunksize=1000)
    assert len(batches) == 5
    return pa.RecordBatchReader.from_batches(table.schema, batches)


@pytest.mark.parametrize("fault", ["foreign_key", "duplicate_in_call", "duplicate_stored"])
def test_a_failure_in_the_third_chunk_writes_nothing(
    chunked: tuple[DuckDBStorageManager, Run, pa.Table], fault: str
) -> None:
    store, run, docs = chunked
    before = stored(store, "annotations")
    notes = _five_chunks(docs, seed=10)
    ids, targets = notes["id"].to_pylist(), notes["document_id"].to_pylist()
    if fault == "foreign_key":
        ghosts = missing_ids(3, seed=11)
        targets[2500:2503] = ghosts
        notes = replace_column(notes, "document_id", targets)
    elif fault == "duplicate_in_call":
        ids[2100] = ids[10]
        notes = replace_column(notes, "id", ids)
    else:
        ids[2200] = before["id"][0].as_py()
        notes = replace_column(notes, "id", ids)

    with pytest.raises(ConstraintViolationError) as caught:
        store.write("annotations", _stream(notes), run_id=run.run_id)

    err = caught.value
    assert err.table == "annotations"
    assert err.failures is not None
    if fault == "foreign_key":
        assert isinstance(err, ForeignKeyViolationError)
        assert sorted(err.failures["value"].to_pylist()) == sorted(ghosts)
    elif fault == "duplicate_in_call":
        assert isinstance(err, DuplicateKeyError)
        assert err.failures["key"].to_pylist() == [f"id='{ids[10]}'"]
        assert "earlier in this call" in str(err)
    else:
        assert isinstance(err, DuplicateKeyError)
        assert err.failures["key"].to_pylist() == [f"id='{ids[2200]}'"]
        assert "already stored" in str(err)
    assert stored(store, "annotations").equals(before)
    # The connection is usable at once: the next write goes through.
    fresh = make_annotations(docs["id"][1000:1100], seed=12)
    assert store.write("annotations", fresh, run_id=run.run_id) == 100
    assert count(store, "annotations") == before.num_rows + 100


# --- on_conflict ----------------------------------------------------------------------


def test_on_conflict_ignore_keeps_stored_rows(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(5, seed=14)
    store.write("documents", docs, run_id=run.run_id)
    before = stored(store, "documents")
    changed = replace_column(make_documents(5, seed=14), "content", ["changed"] * 5).slice(0, 3)
    batch = pa.concat_tables([changed, make_documents(2, seed=15)])

    assert store.write("documents", batch, run_id=run.run_id, on_conflict="ignore") == 2

    after = stored(store, "documents")
    assert after.num_rows == 7
    kept = after.filter(pc.is_in(after["id"], before["id"]))
    assert kept.equals(before)


def test_on_conflict_update_sets_content_and_keeps_keys_and_run(
    store: DuckDBStorageManager, runs: RunStore, run: Run
) -> None:
    docs = make_documents(5, seed=16)
    store.write("documents", docs, run_id=run.run_id)
    # Annotations reference the documents: the update must happen in place (the README's
    # Decisions).
    store.write("annotations", make_annotations(docs["id"], seed=17), run_id=run.run_id)
    later = runs.start_run("edit")
    update = make_documents(5, seed=16).slice(0, 3)
    update = replace_column(update, "content", ["new 0", "new 1", "new 2"])
    update = replace_column(update, "tags", ['["x"]', '["y"]', "[]"])
    new_docs = make_documents(2, seed=18)
    batch = pa.concat_tables([update, new_docs])

    assert store.write("documents", batch, run_id=later.run_id, on_conflict="update") == 5

    after = {r["id"]: r for r in stored(store, "documents").to_pylist()}
    assert len(after) == 7
    for i, doc_id in enumerate(update["id"].to_pylist()):
        assert after[doc_id]["content"] == f"new {i}"
        assert after[doc_id]["run_id"] == run.run_id  # the creating run is kept
    assert [json.loads(after[d]["tags"]) for d in update["id"].to_pylist()] == [["x"], ["y"], []]
    for doc_id in docs["id"].to_pylist()[3:]:
        assert (
            after[doc_id]["content"]
            == docs.filter(pc.equal(docs["id"], doc_id))["content"][0].as_py()
        )
    for doc_id in new_docs["id"].to_pylist():
        assert after[doc_id]["run_id"] == later.run_id
    assert count(store, "annotations") == 5


def test_an_update_that_moves_a_reference_is_refused(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(4, seed=19)
    store.write("documents", docs, run_id=run.run_id)
    notes = make_annotations(docs["id"][:2], seed=20)
    store.write("annotations", notes, run_id=run.run_id)
    before = stored(store, "annotations")
    moved = replace_column(notes, "document_id", docs["id"].to_pylist()[2:4])

    with pytest.raises(ConstraintViolationError) as caught:
        store.write("annotations", moved, run_id=run.run_id, on_conflict="update")

    err = caught.value
    assert err.table == "annotations"
    assert err.columns == ("document_id",)
    assert err.failures is not None
    assert sorted(err.failures["key"].to_pylist()) == sorted(
        f"id='{i}'" for i in notes["id"].to_pylist()
    )
    assert "nothing written" in str(err)
    assert stored(store, "annotations").equals(before)
    # The same reference, new content: allowed.
    same = replace_column(notes, "content", ["edited", "edited"])
    assert store.write("annotations", same, run_id=run.run_id, on_conflict="update") == 2


# --- threads --------------------------------------------------------------------------


# --- processes ------------------------------------------------------------------------


# --- modes: read-only, closed, reopened -----------------------------------------------


def test_a_closed_store_refuses_everything(store: DuckDBStorageManager, run: Run) -> None:
    store.close()
    store.close()  # idempotent

    with pytest.raises(ConnectionFailedError, match="closed"):
        store.write("documents", make_documents(1), run_id=run.run_id)
    with pytest.raises(ConnectionFailedError, match="closed"):
        store.table("documents")


# --- lineage stamping -----------------------------------------------------------------


def test_the_run_id_may_be_given_in_any_case_or_as_a_uuid(
    store: DuckDBStorageManager, run: Run
) -> None:
    stamped = make_documents(2, seed=27, run_id=run.run_id)  # lower-case text in the batch

    store.write("documents", stamped, run_id=run.run_id.upper())
    store.write("documents", make_documents(2, seed=28), run_id=uuid.UUID(run.run_id))  # type: ignore[arg-type]

    assert set(stored(store, "documents")["run_id"].to_pylist()) == {run.run_id}


def test_a_clock_behind_the_run_start_does_not_fail_a_write(
    store: DuckDBStorageManager, runs: RunStore, run: Run
) -> None:
    # A run started by a host whose clock is ahead (or before this clock stepped back): the
    # heartbeat a write records must not predate the run (runs CHECK heartbeat_at >=
    # started_at), whatever this clock says.
    ahead = run.started_at + timedelta(hours=1)
    future = dataclasses.replace(run, run_id=str(new_id()), started_at=ahead, heartbeat_at=ahead)
    store.write("runs", future.to_arrow(), run_id=None)
    docs = make_documents(3, seed=29)
    docs = replace_column(docs, "created_at", [ahead + timedelta(minutes=1)] * 3)

    assert store.write("documents", docs, run_id=future.run_id) == 3

    assert runs.get_run(future.run_id).heartbeat_at == ahead


# --- migrations -----------------------------------------------------------------------


