"""Referential integrity: ``annotations.document_id`` references ``documents(id)`` in the
database itself, for new stores and for stores upgraded from egregora's earlier layout.

- the FOREIGN KEY holds against a raw DuckDB connection, not only through the library;
- the library lists every missing document of a refused batch, and every annotation that
  blocks the delete of a document;
- the update policy: a referenced document's content can change, a reference cannot;
- the upgrade of an earlier-layout file: with and without orphans (refused, quarantined), and
  a failure in the middle leaving the file exactly as it was.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from tests.helpers import make_annotations, make_documents, uuids

from egregora.database import DuckDBStorageManager, Run, errors, statements

# --- the constraint in the database ----------------------------------------------------------


def _stored(store: DuckDBStorageManager, table: str) -> int:
    return int(store.to_arrow(store.table(table).count().as_table()).column(0)[0].as_py())


def test_write_lists_every_missing_document_and_writes_nothing(
    store: DuckDBStorageManager, run: Run
) -> None:
    docs = make_documents(2, run_id=run.run_id)
    store.write("documents", docs, run_id=run.run_id)
    missing = sorted(uuids(3, np.random.default_rng(3)).to_pylist())
    batch = make_annotations([*docs["id"].to_pylist(), *missing], run_id=run.run_id)

    with pytest.raises(errors.ForeignKeyViolationError) as caught:
        store.write("annotations", batch, run_id=run.run_id)

    err = caught.value
    assert err.table == "annotations"
    assert err.columns == ("document_id",)
    assert err.run_id == run.run_id
    assert err.failures is not None
    assert sorted(err.failures["value"].to_pylist()) == missing
    assert set(err.failures["column"].to_pylist()) == {"document_id"}
    assert "3 rows of `annotations` reference missing `documents`.`id`" in str(err)
    assert "nothing written" in str(err)
    assert all(m in str(err) for m in missing)
    assert _stored(store, "annotations") == 0


def _documents_with_annotations(
    store: DuckDBStorageManager, run: Run, notes: int
) -> tuple[list[str], list[str]]:
    docs = make_documents(2, run_id=run.run_id)
    store.write("documents", docs, run_id=run.run_id)
    doc_ids = docs["id"].to_pylist()
    batch = make_annotations([doc_ids[0]] * notes, run_id=run.run_id)
    store.write("annotations", batch, run_id=run.run_id)
    return doc_ids, batch["id"].to_pylist()


def test_raw_delete_through_the_library_is_a_foreign_key_error(
    store: DuckDBStorageManager, run: Run
) -> None:
    doc_ids, _ = _documents_with_annotations(store, run, notes=1)
    delete = statements.delete_where_equal("documents", ["id"])
    with pytest.raises(errors.ForeignKeyViolationError, match="still referenced"):
        store.execute(delete, [doc_ids[0]])
    assert _stored(store, "documents") == 2


# --- updates of referenced rows ------------------------------------------------------------


def test_update_of_a_referenced_documents_content_is_allowed(
    store: DuckDBStorageManager, run: Run
) -> None:
    doc_ids, note_ids = _documents_with_annotations(store, run, notes=2)
    d = store.table("documents")
    stored = store.to_arrow(d.filter(d.id == doc_ids[0]))
    changed = stored.drop_columns(["run_id"])
    changed = changed.set_column(changed.schema.get_field_index("content"), "content",
                                 pa.array(["rewritten"]))
    changed = changed.set_column(changed.schema.get_field_index("tags"), "tags",
                                 pa.array(['["edited", "again"]']))

    assert store.write("documents", changed, run_id=run.run_id, on_conflict="update") == 1

    t = store.table("documents")
    row = store.to_arrow(t.filter(t.id == doc_ids[0])).to_pylist()[0]
    assert row["content"] == "rewritten"
    assert json.loads(row["tags"]) == ["edited", "again"]
    a = store.table("annotations")
    assert sorted(store.to_arrow(a.filter(a.document_id == doc_ids[0]).id).to_pylist()) == sorted(
        note_ids
    )


def test_update_that_moves_an_annotation_is_refused_with_the_reason(
    store: DuckDBStorageManager, run: Run
) -> None:
    doc_ids, note_ids = _documents_with_annotations(store, run, notes=1)
    moved = make_annotations([doc_ids[1]], run_id=run.run_id)
    moved = moved.set_column(moved.schema.get_field_index("id"), "id", pa.array(note_ids))

    with pytest.raises(errors.ConstraintViolationError) as caught:
        store.write("annotations", moved, run_id=run.run_id, on_conflict="update")

    err = caught.value
    assert not isinstance(err, errors.ForeignKeyViolationError)
    assert err.columns == ("document_id",)
    assert err.failures is not None
    assert err.failures["key"].to_pylist() == [f"id={note_ids[0]!r}"]
    assert "delete+insert" in str(err)
    assert "Write a new row instead" in str(err)
    a = store.table("annotations")
    assert store.to_arrow(a.document_id).to_pylist() == [doc_ids[0]]


# --- upgrading an earlier-layout store -----------------------------------------------------


