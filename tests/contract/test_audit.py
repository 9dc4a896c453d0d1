"""The integrity audit behind ``storage.verify()``: sound stores give an empty report, and each
kind of damage is found with its kind, table and row count.

How the damage is planted. DuckDB and PostgreSQL enforce every declared key on every write,
and a DuckDB store refuses to open when its tables lack a declared constraint
(``SchemaMismatchError``), so orphans, repeated keys and rows of missing runs cannot be
written into an intact store. They appear when someone rebuilds a table through a raw
connection of an open store, as ``CREATE TABLE copy AS SELECT ...`` does (it keeps the rows and
drops the keys), which :func:`drop_keys` does through the store's own reading connection, on
every kind of store. The lifecycle problems (rows of runs that never completed, unfinished
purges) need no rebuild: the run lifecycle or a raw ``UPDATE runs`` produces them.
"""

from __future__ import annotations

from typing import Any

from tests.helpers import make_annotations, make_documents, make_messages

import duckdb
from egregora.database import (
    CATALOG,
    DuckDBStorageManager,
    Run,
    RunStatus,
    RunStore,
    new_id,
)
from egregora.database.runs.audit import IntegrityReport

Found = set[tuple[str, str, int]]


def found(report: IntegrityReport) -> Found:
    """The report as (kind, table, count) triples."""
    return {(p.kind, p.table, p.count) for p in report.problems}


def write_run(
    runs: RunStore,
    name: str,
    *,
    documents: int = 0,
    messages: int = 0,
    annotate: list[str] | None = None,
    seed: int = 0,
    status: RunStatus | None = RunStatus.COMPLETED,
) -> tuple[Run, list[str]]:
    """A run that writes documents, messages and annotations on ``annotate``; ended with
    ``status`` (left RUNNING when None). Returns the run and its document ids."""
    store = runs.storage
    run = runs.start_run(name)
    docs = make_documents(documents, seed=seed)
    if documents:
        store.write("documents", docs, run_id=run.run_id)
    if messages:
        store.write("messages", make_messages(messages, seed=seed), run_id=run.run_id)
    if annotate:
        store.write("annotations", make_annotations(annotate, seed=seed), run_id=run.run_id)
    if status is not None:
        run = runs.end_run(run.run_id, status=status)
    return run, docs["id"].to_pylist()


class Raw:
    """The store's own reading connection, used as a raw connection: DuckDB's or psycopg's.

    Statements are written with ``?`` placeholders and ``gen_random_uuid()``, which both
    databases understand once psycopg's ``%s`` is put in.
    """

    def __init__(self, store: DuckDBStorageManager) -> None:
        self.con: Any = store.backend().con
        self.postgres = not isinstance(self.con, duckdb.DuckDBPyConnection)

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        self.con.execute(sql.replace("?", "%s") if self.postgres else sql, params)

    def copy_rows(
        self, table: str, *, replace: dict[str, str], where: str = "",
        params: list[Any] | None = None,
    ) -> None:
        """Insert copies of rows of ``table`` with some columns replaced by SQL expressions."""
        cols = ", ".join(replace.get(c, f'"{c}"') for c in CATALOG[table].column_names)
        self.execute(f'INSERT INTO "{table}" SELECT {cols} FROM "{table}" {where}', params)


def drop_keys(store: DuckDBStorageManager) -> Raw:
    """Rebuild every declared table without its constraints, children first (a parent
    cannot be dropped while a child's FOREIGN KEY points at it)."""
    raw = Raw(store)
    for table in store.catalog.deletion_order():
        raw.execute(f'CREATE TABLE "{table.name}_copy" AS SELECT * FROM "{table.name}"')
        raw.execute(f'DROP TABLE "{table.name}"')
        raw.execute(f'ALTER TABLE "{table.name}_copy" RENAME TO "{table.name}"')
    return raw


# --- sound stores ------------------------------------------------------------------------------


def test_fresh_store_is_sound(store: DuckDBStorageManager) -> None:
    report = store.verify()
    assert not report
    assert report.problems == ()
    assert str(report) == "integrity: sound (no problems found)"
    assert report.to_dicts() == []
    assert report.to_arrow().num_rows == 0


def test_store_with_finished_running_and_rolled_back_runs_is_sound(
    store: DuckDBStorageManager, runs: RunStore
) -> None:
    _, docs = write_run(runs, "ingest", documents=4, messages=3)
    write_run(runs, "enrich", annotate=docs[:2], seed=1)
    write_run(runs, "in-progress", documents=2, seed=2, status=None)
    failed, _ = write_run(runs, "failed", documents=2, seed=3, status=RunStatus.FAILED)
    runs.rollback_run(failed.run_id)
    write_run(runs, "empty-failure", status=RunStatus.CRASHED)

    assert store.verify().problems == ()


# --- the run lifecycle -------------------------------------------------------------------------


def test_rows_of_runs_that_never_completed(store: DuckDBStorageManager, runs: RunStore) -> None:
    write_run(runs, "good", documents=3, messages=2)
    failed, _ = write_run(runs, "failed", documents=2, messages=4, seed=1, status=RunStatus.FAILED)
    cancelled, _ = write_run(runs, "cancelled", messages=1, seed=2, status=RunStatus.CANCELLED)
    crashed, _ = write_run(runs, "crashed", documents=1, seed=3, status=RunStatus.CRASHED)

    report = store.verify()

    assert found(report) == {
        ("unfinished_run_rows", "documents", 3),
        ("unfinished_run_rows", "messages", 5),
    }
    messages = next(p for p in report.problems if p.table == "messages")
    assert messages.items == 2  # two runs
    assert messages.examples == (
        f"run {failed.run_id}: 4 rows", f"run {cancelled.run_id}: 1 rows"
    )
    for run in (failed, cancelled, crashed):
        runs.rollback_run(run.run_id)
    assert store.verify().problems == ()


def test_rolled_back_run_marked_purged_with_rows_left_is_still_reported(
    store: DuckDBStorageManager, runs: RunStore
) -> None:
    run, _ = write_run(runs, "ingest", documents=2)
    Raw(store).execute(
        "UPDATE runs SET status = 'ROLLED_BACK', purged_at = now() WHERE run_id = ?",
        [run.run_id],
    )
    assert found(store.verify()) == {("unfinished_purge", "documents", 2)}
    # A purge already recorded as finished is run again, so the advice of the report works.
    runs.rollback_run(run.run_id)
    assert store.verify().problems == ()


# --- damage through a raw connection -------------------------------------------------------------


def test_every_kind_of_damage_is_found(store: DuckDBStorageManager, runs: RunStore) -> None:
    a, a_docs = write_run(runs, "a", documents=4, messages=3)
    write_run(runs, "a-notes", annotate=a_docs[:2], seed=1)
    b, _ = write_run(runs, "b", documents=2, seed=2)
    write_run(runs, "c", messages=2, seed=3, status=RunStatus.FAILED)
    d, _ = write_run(runs, "d", documents=1, seed=4)
    assert found(store.verify()) == {("unfinished_run_rows", "messages", 2)}

    raw = drop_keys(store)
    # orphans: two annotations point at no document, one at NULL (document_id is NOT NULL)
    raw.copy_rows("annotations", replace={"id": "gen_random_uuid()",
                                          "document_id": "gen_random_uuid()"})
    raw.copy_rows("annotations", replace={"id": "gen_random_uuid()", "document_id": "NULL"},
                  where="LIMIT 1")
    # repeated keys: one document of run a twice more, another once more (5 rows, 2 keys)
    for doc_id in (a_docs[0], a_docs[0], a_docs[1]):
        raw.copy_rows("documents", replace={}, where="WHERE id = ? LIMIT 1", params=[doc_id])
    # rows whose run is missing: run b's row deleted; one message stamped with no run
    raw.execute("DELETE FROM runs WHERE run_id = ?", [b.run_id])
    raw.copy_rows("messages", replace={"event_id": "gen_random_uuid()", "run_id": "NULL"},
                  where="LIMIT 1")
    # a run whose parent run is missing
    raw.execute("UPDATE runs SET parent_run_id = ? WHERE run_id = ?", [str(new_id()), a.run_id])
    # a rollback marked but not purged
    raw.execute("UPDATE runs SET status = 'ROLLED_BACK' WHERE run_id = ?", [d.run_id])

    report = store.verify()

    assert found(report) == {
        ("orphan_rows", "runs", 1),
        ("duplicate_key", "documents", 5),
        ("missing_run", "documents", 2),
        ("missing_run", "messages", 1),
        ("unfinished_run_rows", "messages", 2),
        ("unfinished_purge", "runs", 1),
        ("unfinished_purge", "documents", 1),
        ("orphan_rows", "annotations", 3),
    }
    dupes = next(p for p in report.problems if p.kind == "duplicate_key")
    assert dupes.items == 2
    assert dupes.examples == tuple(
        f"id={key} ({n} copies)" for key, n in sorted([(a_docs[0], 3), (a_docs[1], 2)])
    )
    [null_ref] = [p for p in report.problems if (p.kind, p.table) == ("missing_run", "messages")]
    assert null_ref.examples[0].endswith("run_id=None")
    text = str(report)
    assert "duplicate_key: 5 in `documents` (primary key (id) repeated)" in text
    assert (
        "orphan_rows: 3 in `annotations` ((document_id) -> documents(id) points at no row)" in text
    )
    table = report.to_arrow()
    assert table.num_rows == len(report.problems)
    assert table.schema.names == ["kind", "table", "count", "detail", "examples", "items"]
    assert report.to_dicts()[0].keys() == {"kind", "table", "count", "detail", "examples", "items"}


