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

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import STORE_KINDS
from tests.fixtures.legacy import CREATED_BY_RUN, build_legacy_store, table_counts
from tests.helpers import make_annotations, make_documents, uuids

import duckdb
from egregora.database import DuckDBStorageManager, Run, RunStore, errors
from egregora.database.backends.duckdb import legacy
from egregora.database.backends.duckdb.legacy import (
    LEGACY_RUN_NAME,
    QUARANTINE_SCHEMA,
    detect_legacy_layout,
    upgrade_legacy_store,
)
from egregora.database.schemas import CATALOG

#: The kinds of store of the DuckDB backend.
DUCKDB_KINDS = [kind for kind in STORE_KINDS if kind.name != "postgres"]

# --- the constraint in the database ----------------------------------------------------------


def _stored(store: DuckDBStorageManager, table: str) -> int:
    return int(store.to_arrow(store.table(table).count().as_table()).column(0)[0].as_py())


def _raw_annotation_insert(con: duckdb.DuckDBPyConnection, document_id: str, run_id: str) -> None:
    con.execute(
        "INSERT INTO annotations (id, document_id, content, created_at, run_id) "
        "VALUES (uuid(), ?, 'a note', now(), ?)",
        [document_id, run_id],
    )


def test_raw_connection_cannot_insert_an_orphan_annotation(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    with DuckDBStorageManager(path) as store:
        run = RunStore(store).start_run("writer")
        docs = make_documents(1, run_id=run.run_id)
        store.write("documents", docs, run_id=run.run_id)
    document_id = docs["id"][0].as_py()
    missing = uuids(1, np.random.default_rng(7))[0].as_py()
    with duckdb.connect(str(path)) as con:
        _raw_annotation_insert(con, document_id, run.run_id)  # the same insert, valid: accepted
        with pytest.raises(duckdb.ConstraintException, match="does not exist in the referenced"):
            _raw_annotation_insert(con, missing, run.run_id)
        rows = con.execute("SELECT CAST(document_id AS VARCHAR) FROM annotations").fetchall()
    assert rows == [(document_id,)]


def _documents_with_annotations(
    store: DuckDBStorageManager, run: Run, notes: int
) -> tuple[list[str], list[str]]:
    docs = make_documents(2, run_id=run.run_id)
    store.write("documents", docs, run_id=run.run_id)
    doc_ids = docs["id"].to_pylist()
    batch = make_annotations([doc_ids[0]] * notes, run_id=run.run_id)
    store.write("annotations", batch, run_id=run.run_id)
    return doc_ids, batch["id"].to_pylist()


@pytest.fixture(params=DUCKDB_KINDS, ids=[kind.name for kind in DUCKDB_KINDS])
def duckdb_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[DuckDBStorageManager]:
    """A fresh store of each DuckDB kind: ``delete_rows`` and its diagnosis are DuckDB's
    (PostgreSQL restricts deletes with ON DELETE RESTRICT and translates its own errors)."""
    storage = request.param.open(tmp_path)
    try:
        yield storage
    finally:
        storage.close()


def test_delete_of_a_referenced_document_is_refused_naming_the_annotations(
    duckdb_store: DuckDBStorageManager,
) -> None:
    store = duckdb_store
    run = RunStore(store).start_run("writer")
    doc_ids, note_ids = _documents_with_annotations(store, run, notes=3)

    with pytest.raises(errors.ForeignKeyViolationError) as caught:
        store.delete_rows("documents", doc_ids)

    err = caught.value
    assert err.table == "documents"
    assert err.failures is not None
    assert sorted(err.failures["key"].to_pylist()) == sorted(f"id={n!r}" for n in note_ids)
    assert set(err.failures["column"].to_pylist()) == {"annotations.document_id"}
    assert set(err.failures["value"].to_pylist()) == {f"document_id={doc_ids[0]!r}"}
    assert "3 rows of `annotations` still reference" in str(err)
    assert all(n in str(err) for n in note_ids)
    # all or nothing: the unreferenced document was not deleted either
    assert _stored(store, "documents") == 2

    assert store.delete_rows("annotations", note_ids) == 3
    assert store.delete_rows("documents", doc_ids) == 2
    assert _stored(store, "documents") == 0


def test_delete_rows_checks_its_keys(duckdb_store: DuckDBStorageManager) -> None:
    store = duckdb_store
    doc_ids, _ = _documents_with_annotations(store, RunStore(store).start_run("w"), notes=0)
    with pytest.raises(errors.ValidationError, match="do not fit its primary key") as caught:
        store.delete_rows("documents", [(doc_ids[1], "extra")])
    assert caught.value.failures is not None
    assert caught.value.failures["check"].to_pylist() == ["key_parts"]
    with pytest.raises(errors.ValidationError, match="do not fit its primary key") as caught:
        store.delete_rows("documents", ["\ud800"])  # no Unicode text: cannot be a key
    assert caught.value.failures is not None
    assert caught.value.failures["check"].to_pylist() == ["type"]
    unknown = uuids(1, np.random.default_rng(1))[0].as_py()
    assert store.delete_rows("documents", [unknown]) == 0
    assert store.delete_rows("documents", [doc_ids[1]]) == 1


# --- updates of referenced rows ------------------------------------------------------------


def test_duckdb_refuses_a_list_update_on_a_referenced_row() -> None:
    # The fact behind the policy and behind JSON tags (the README's Decisions): if DuckDB ever
    # updates a list of a referenced row in place, this fails and the policy can be widened.
    con = duckdb.connect()
    con.execute("CREATE TABLE p (id INTEGER PRIMARY KEY, tags VARCHAR[], j JSON)")
    con.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, p_id INTEGER REFERENCES p (id))")
    con.execute("INSERT INTO p VALUES (1, ['a'], '[\"a\"]')")
    con.execute("INSERT INTO c VALUES (1, 1)")
    with pytest.raises(duckdb.ConstraintException, match="still referenced"):
        con.execute("UPDATE p SET tags = ['a', 'b']")
    con.execute("UPDATE p SET j = '[\"a\", \"b\"]'")
    assert con.execute("SELECT j FROM p").fetchall() == [('["a", "b"]',)]
    con.close()


# --- upgrading an earlier-layout store -----------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_untouched(path: Path, digest: str, counts: dict[str, int]) -> None:
    assert _digest(path) == digest
    assert not path.with_name(path.name + ".wal").exists()
    assert table_counts(path) == counts
    assert detect_legacy_layout(path)


def test_detect_legacy_layout(tmp_path: Path) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb", documents=2, messages=2, annotations=2)
    assert detect_legacy_layout(built.path)
    DuckDBStorageManager(tmp_path / "new.duckdb").close()
    assert not detect_legacy_layout(tmp_path / "new.duckdb")
    with pytest.raises(errors.ConnectionFailedError, match="no store at"):
        detect_legacy_layout(tmp_path / "absent.duckdb")


def test_opening_a_legacy_store_names_the_upgrade_and_changes_nothing(tmp_path: Path) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb", documents=3, messages=2, annotations=2)
    digest, counts = _digest(built.path), table_counts(built.path)
    with pytest.raises(errors.SchemaMismatchError) as caught:
        DuckDBStorageManager(built.path)
    assert "egregora-db migrate --legacy" in str(caught.value)
    assert "upgrade_legacy_store" in str(caught.value)
    assert "documents.run_id: column missing" in str(caught.value)
    _assert_untouched(built.path, digest, counts)


def test_upgrade_without_orphans(tmp_path: Path) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb")
    before = table_counts(built.path)

    report = upgrade_legacy_store(built.path)

    assert dict(report.rows) == built.rows == {t: before[t] for t in built.rows}
    assert report.quarantined == 0
    assert report.dropped_indexes == ("documents_doc_type",)
    assert not detect_legacy_layout(built.path)
    assert QUARANTINE_SCHEMA.name not in table_counts(built.path)
    with DuckDBStorageManager(built.path) as store:
        assert store.migration.is_empty
        assert not store.verify()
        import_run = RunStore(store).get_run(report.run_id)
        assert (import_run.name, import_run.status) == (LEGACY_RUN_NAME, "COMPLETED")
        assert import_run.config["source"] == "legacy-layout"
        assert import_run.config["path"] == str(built.path.resolve())
        assert import_run.ended_at is not None
        for table in built.rows:
            t = store.table(table)
            owners = store.to_arrow(t.run_id.name("run_id").as_table().distinct()).column(0)
            assert owners.to_pylist() == [report.run_id]
        a = store.table("annotations")
        assert sorted(store.to_arrow(a.id).to_pylist()) == sorted(built.kept)
        m = store.table("messages")
        attrs = {
            r["event_id"]: json.loads(r["attrs"]) if r["attrs"] else None
            for r in store.to_arrow(m.select("event_id", "attrs")).to_pylist()
        }
        assert attrs[built.non_object_attrs] == {
            "attrs": ["forwarded"], "created_by_run": CREATED_BY_RUN
        }
        tagged = [v for v in attrs.values() if v and v.get("created_by_run") == CREATED_BY_RUN]
        assert len(tagged) == built.with_lineage
        d = store.table("documents")
        tags = store.to_arrow(d.tags).to_pylist()
        assert all(isinstance(json.loads(t), list) for t in tags if t is not None)
        document_id = store.to_arrow(d.id.min().name("id").as_table()).column(0)[0].as_py()
    with duckdb.connect(str(built.path)) as con:
        _raw_annotation_insert(con, document_id, report.run_id)
        with pytest.raises(duckdb.ConstraintException, match="does not exist in the referenced"):
            _raw_annotation_insert(con, "00000000-0000-4000-8000-000000000000", report.run_id)


def test_upgrade_compares_parent_ids_as_uuids(tmp_path: Path) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb", documents=5, annotations=5)
    upgrade_legacy_store(built.path)
    with DuckDBStorageManager(built.path, read_only=True) as store:
        a = store.table("annotations")
        note_id, document_id = built.upper_case_parent
        kept = store.to_arrow(a.filter(a.id == note_id).document_id).to_pylist()
        assert kept == [document_id]


def test_upgrade_refuses_orphans_listing_every_one(tmp_path: Path) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb", orphans=True)
    digest, counts = _digest(built.path), table_counts(built.path)

    with pytest.raises(errors.IntegrityError) as caught:
        upgrade_legacy_store(built.path)

    err = caught.value
    assert err.table == "annotations"
    assert err.failures is not None
    assert sorted(err.failures["key"].to_pylist()) == sorted(f"id={i!r}" for i in built.orphans)
    reasons = dict(zip(err.failures["key"].to_pylist(), err.failures["check"].to_pylist(),
                       strict=True))
    for orphan, fragment in built.orphans.items():
        assert fragment in reasons[f"id={orphan!r}"]
    assert "4 annotations" in str(err)
    assert "nothing was changed" in str(err)
    assert "quarantine_orphans=True" in str(err)
    _assert_untouched(built.path, digest, counts)


def test_upgrade_quarantines_orphans_when_asked(tmp_path: Path) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb", orphans=True)

    report = upgrade_legacy_store(built.path, quarantine_orphans=True)

    assert report.quarantined == len(built.orphans) == 4
    assert report.rows["annotations"] == built.rows["annotations"] - 4
    assert "4 orphan annotations moved to `annotations_quarantine`" in str(report)
    catalog = CATALOG.extend(QUARANTINE_SCHEMA)
    with DuckDBStorageManager(built.path, catalog=catalog) as store:
        assert not store.verify()
        q = store.to_arrow(store.table(QUARANTINE_SCHEMA.name)).to_pylist()
        assert sorted(r["id"] for r in q) == sorted(built.orphans)
        assert {r["run_id"] for r in q} == {report.run_id}
        by_id = {r["id"]: r for r in q}
        for orphan, fragment in built.orphans.items():
            assert fragment in by_id[orphan]["reason"]
        assert sorted(r["parent_type"] for r in q) == ["document", "document", "message", "message"]
        assert _stored(store, "annotations") == len(built.kept)


def test_a_failure_midway_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb", orphans=True)
    digest, counts = _digest(built.path), table_counts(built.path)
    reached: list[str] = []

    def fail(con: duckdb.DuckDBPyConnection, columns: object) -> None:
        # Everything before is done: tables renamed, declared ones created, rows copied.
        reached.extend(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()")
                       .fetchall())
        raise RuntimeError("disk full")

    monkeypatch.setattr(legacy, "_drop_legacy", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        upgrade_legacy_store(built.path, quarantine_orphans=True)

    assert {"documents_legacy", "runs", "annotations_quarantine"} <= set(reached)
    _assert_untouched(built.path, digest, counts)
    monkeypatch.undo()
    assert upgrade_legacy_store(built.path, quarantine_orphans=True).quarantined == 4


def test_a_value_that_does_not_convert_rolls_the_upgrade_back(tmp_path: Path) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb", documents=3, messages=3, annotations=2)
    with duckdb.connect(str(built.path)) as con:
        con.execute("UPDATE messages SET author_uuid = 'not-a-uuid' WHERE event_id = "
                    "(SELECT min(event_id) FROM messages)")
    digest, counts = _digest(built.path), table_counts(built.path)

    with pytest.raises(errors.StorageError, match="while copying the rows") as caught:
        upgrade_legacy_store(built.path)

    assert "file is as it was" in str(caught.value)
    assert "not-a-uuid" in str(caught.value)
    _assert_untouched(built.path, digest, counts)


def test_upgrade_refuses_what_it_would_lose(tmp_path: Path) -> None:
    built = build_legacy_store(tmp_path / "legacy.duckdb", documents=2, messages=2, annotations=2)
    with duckdb.connect(str(built.path)) as con:
        con.execute("ALTER TABLE documents ADD COLUMN word_count INTEGER")
    digest, counts = _digest(built.path), table_counts(built.path)
    with pytest.raises(errors.SchemaMismatchError, match=r"documents\.word_count: column unknown"):
        upgrade_legacy_store(built.path)
    _assert_untouched(built.path, digest, counts)


def test_upgrade_refuses_a_store_in_the_declared_layout(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    DuckDBStorageManager(path).close()
    with pytest.raises(errors.SchemaMismatchError, match="not in egregora's earlier layout"):
        upgrade_legacy_store(path)
