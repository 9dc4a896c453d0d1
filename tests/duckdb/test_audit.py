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

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from tests.helpers import make_annotations, make_documents, make_messages

import duckdb
from egregora.database import (
    CATALOG,
    DuckDBStorageManager,
    Run,
    RunStatus,
    RunStore,
    errors,
)
from egregora.database.runs.audit import IntegrityReport, Problem

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


# --- the run lifecycle -------------------------------------------------------------------------


def test_failed_run_marked_through_a_raw_connection(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    with DuckDBStorageManager(path) as store:
        run, _ = write_run(RunStore(store), "ingest", documents=3, messages=2)
        assert not store.verify()
    with duckdb.connect(str(path)) as con:
        con.execute("UPDATE runs SET status = 'FAILED' WHERE run_id = ?", [run.run_id])
    with DuckDBStorageManager(path) as store:
        assert found(store.verify()) == {
            ("unfinished_run_rows", "documents", 3),
            ("unfinished_run_rows", "messages", 2),
        }


def test_rolled_back_run_whose_rows_remain_is_an_unfinished_purge(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    with DuckDBStorageManager(path) as store:
        keep, _ = write_run(RunStore(store), "keep", documents=1)
        run, docs = write_run(RunStore(store), "ingest", documents=3, messages=2, seed=1)
        write_run(RunStore(store), "annotate own", annotate=docs[:1], seed=2)
    with duckdb.connect(str(path)) as con:
        # What an interrupted purge leaves: the mark is written, the rows are not yet gone.
        con.execute("UPDATE runs SET status = 'ROLLED_BACK' WHERE run_id = ?", [run.run_id])
    with DuckDBStorageManager(path) as store:
        report = store.verify()
        assert found(report) == {
            ("unfinished_purge", "runs", 1),
            ("unfinished_purge", "documents", 3),
            ("unfinished_purge", "messages", 2),
        }
        assert str(report).startswith("integrity: problems found\n  - ")
        runs_problem = next(p for p in report.problems if p.table == "runs")
        assert runs_problem.examples == (f"run_id={run.run_id}",)
        # rollback_run finishes it, removing the annotation that depends on the run's rows.
        RunStore(store).rollback_run(run.run_id, remove_dependents=True)
        assert store.verify().problems == ()
        assert store.table("documents").count().execute() == 1
        assert RunStore(store).get_run(keep.run_id).status is RunStatus.COMPLETED


# --- damage through a raw connection -------------------------------------------------------------


def test_a_store_damaged_in_its_keys_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    with DuckDBStorageManager(path) as store:
        write_run(RunStore(store), "a", documents=1)
        drop_keys(store)
    with pytest.raises(errors.SchemaMismatchError, match=r"(PRIMARY KEY|primary key)"):
        DuckDBStorageManager(path)


def test_examples_are_capped_and_the_rest_counted() -> None:
    problem = Problem("orphan_rows", "annotations", 9, "x", tuple(f"id={i}" for i in range(5)))
    assert str(problem) == (
        "orphan_rows: 9 in `annotations` (x): id=0; id=1; id=2; id=3; id=4 and 4 more"
    )
    per_run = Problem("unfinished_run_rows", "documents", 40, "y", ("run r: 40 rows",), items=1)
    assert str(per_run) == "unfinished_run_rows: 40 in `documents` (y): run r: 40 rows"
    report = IntegrityReport((problem,))
    assert report
    assert report.to_arrow().column("examples").to_pylist() == [list(problem.examples)]
    assert isinstance(report.to_arrow(), pa.Table)


def test_crashed_run_left_by_a_dead_writer_is_reported_until_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    with DuckDBStorageManager(path) as store:
        run, _ = write_run(RunStore(store), "ingest", documents=2, status=None)
        assert not store.verify()  # a RUNNING run's rows are work in progress
    # Reopened after the heartbeat went stale: the run is marked CRASHED at open.
    with DuckDBStorageManager(path, heartbeat_timeout=timedelta(0)) as store:
        runs = RunStore(store)
        assert runs.get_run(run.run_id).status is RunStatus.CRASHED
        assert found(store.verify()) == {("unfinished_run_rows", "documents", 2)}
        runs.rollback_run(run.run_id)
        assert not store.verify()
