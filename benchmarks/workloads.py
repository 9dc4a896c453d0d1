"""The workloads beyond bulk writes: validation cost, lineage queries and rollback.

Each runs in a fresh process of its own (see :mod:`benchmarks.worker`) on a fresh database
file, built through the library's public API, and times its operations against a raw
baseline measured in the same process on the same store:

- ``validation``: ``validate_batch`` on one conformed batch registered in DuckDB, against
  the insert statement it guards (the library's own, on the same batch); conform is timed
  too. The first validation of a process builds and caches the Pandera schema: it is
  reported apart from the warm median.
- ``lineage``: a store of ``rows`` documents written by ``runs`` runs, then the lineage
  queries (:mod:`egregora.database.runs.lineage`) executed to Arrow, cold (first after reopening
  the store) and warm (median), each next to the hand-written SQL that answers the same
  question.
- ``rollback``: ``RunStore.rollback_run`` of a run against a raw ``DELETE ... WHERE run_id``
  of another run of the same size in the same store, alternated.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from benchmarks import data
from benchmarks.measure import Window

TABLE = "documents"
_VIEW = "benchmark_batch"


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _stream(parquet: Path, rows: int, skip: int, batch_rows: int) -> pa.RecordBatchReader:
    first = data.now_us()
    read = data.iter_batches(parquet, rows, batch_rows=batch_rows, skip=skip)
    batches = (data.stamp(batch, first + i * batch_rows) for i, batch in enumerate(read))
    return pa.RecordBatchReader.from_batches(data.documents_schema(), batches)


# --- validation ------------------------------------------------------------------------------


def run_validation(job: dict[str, Any]) -> dict[str, Any]:
    """Conform, validate (cold, then warm repeats) and insert one batch of ``rows``."""
    from egregora.database import DuckDBStorageManager, RunStore, ddl, statements
    from egregora.database.batches import conform
    from egregora.database.validation import validate_batch

    rows, repeats = int(job["rows"]), int(job["repeats"])
    db = Path(job["workdir"]) / "validation.duckdb"
    with DuckDBStorageManager(db) as storage:
        runs = RunStore(storage)
        run = runs.start_run("benchmark-validation", config={"rows": rows})
        schema = storage.catalog[TABLE]
        table = data.stamp(data.load_table(Path(job["parquet"]), rows), data.now_us())
        conform_s, batch = _timed(lambda: conform(schema, table, run_id=run.run_id))
        backend = storage.backend()
        backend.con.register(_VIEW, batch)
        view = backend.table(_VIEW)

        def validate() -> None:
            validate_batch(view, schema, run_id=run.run_id, run_started_at=run.started_at)

        cold_s, _ = _timed(validate)
        warm = [_timed(validate)[0] for _ in range(repeats)]
        insert = statements.insert_from(
            schema, _VIEW, on_conflict="error", present=list(table.column_names)
        )
        window = Window()
        with window:
            backend.con.execute(ddl.to_sql(insert))
        backend.con.unregister(_VIEW)
        runs.end_run(run.run_id)
        written = storage.to_arrow(storage.table(TABLE).count())
    validate_s = statistics.median(warm)
    return {
        "rows": rows,
        "conform_seconds": conform_s,
        "validate_cold_seconds": cold_s,
        "validate_seconds": validate_s,
        "validate_runs": warm,
        "insert_seconds": window.seconds,
        "validate_to_insert": validate_s / window.seconds,
        "conform_to_insert": conform_s / window.seconds,
        "rows_written": written.as_py(),
    }


# --- lineage ---------------------------------------------------------------------------------


def _fetch(cursor: Any, sql: str, params: tuple[Any, ...]) -> pa.Table:
    return cursor.execute(sql, list(params)).to_arrow_table()


def _sql(query: exp.Expression) -> str:
    return query.sql("duckdb")


def _raw_queries() -> dict[str, str]:
    """Hand-written SQL answering each lineage question, for comparison."""
    docs = exp.to_identifier(TABLE, quoted=True)
    return {
        "rows_of_run_count": _sql(
            exp.select("count(*)").from_(docs).where("run_id = CAST(? AS UUID)")
        ),
        "rows_of_run_ids": _sql(exp.select("id").from_(docs).where("run_id = CAST(? AS UUID)")),
        "rows_of_run_fetch": _sql(exp.select("*").from_(docs).where("run_id = CAST(? AS UUID)")),
        "provenance": _sql(
            exp.select("*").from_("runs").where(
                "run_id IN (SELECT run_id FROM documents WHERE id = CAST(? AS UUID))"
            )
        ),
        "rows_per_run": _sql(
            exp.select("run_id", "count(*) AS n").from_(docs).group_by("run_id")
        ),
    }


def run_lineage(job: dict[str, Any]) -> dict[str, Any]:
    """Build a store of ``rows`` rows in ``runs`` runs, then time the lineage queries."""
    from egregora.database import DuckDBStorageManager, RunStore
    from egregora.database.runs.lineage import provenance, rows_of_run, rows_per_run

    rows, n_runs, repeats = int(job["rows"]), int(job["runs"]), int(job["repeats"])
    parquet, per_run = Path(job["parquet"]), int(job["rows"]) // int(job["runs"])
    db = Path(job["workdir"]) / "lineage.duckdb"
    run_ids: list[str] = []
    build = Window()
    with build, DuckDBStorageManager(db) as storage:
        runs = RunStore(storage)
        for k in range(n_runs):
            with runs.run(f"ingest-{k}", config={"part": k}) as run:
                storage.write(TABLE, _stream(parquet, per_run, k * per_run, 50_000),
                              run_id=run.run_id)
            run_ids.append(run.run_id)
    middle = n_runs // 2
    target_run = run_ids[middle]
    target_row = middle * per_run + per_run // 2
    target_doc = data.load_table(parquet, 1, skip=target_row)["id"][0].as_py()
    queries: dict[str, tuple[Callable[[Any], Any], tuple[Any, ...]]] = {
        "rows_of_run_count": (lambda s: s.to_arrow(rows_of_run(s, TABLE, target_run).count()),
                              (target_run,)),
        "rows_of_run_ids": (lambda s: s.to_arrow(rows_of_run(s, TABLE, target_run).select("id")),
                            (target_run,)),
        "rows_of_run_fetch": (lambda s: s.to_arrow(rows_of_run(s, TABLE, target_run)),
                              (target_run,)),
        "provenance": (lambda s: s.to_arrow(provenance(s, TABLE, target_doc)), (target_doc,)),
        "rows_per_run": (lambda s: s.to_arrow(rows_per_run(s)), ()),
    }
    raw = _raw_queries()
    results: dict[str, Any] = {}
    with DuckDBStorageManager(db) as storage:
        cursor = storage.backend().con
        for name, (query, params) in queries.items():
            library = functools.partial(query, storage)
            by_hand = functools.partial(_fetch, cursor, raw[name], params)
            cold, answer = _timed(library)
            warm = [_timed(library)[0] for _ in range(repeats)]
            raw_cold = _timed(by_hand)[0]
            raw_warm = [_timed(by_hand)[0] for _ in range(repeats)]
            size = answer.num_rows if isinstance(answer, pa.Table) else answer.as_py()
            results[name] = {
                "cold_seconds": cold, "seconds": statistics.median(warm),
                "raw_cold_seconds": raw_cold, "raw_seconds": statistics.median(raw_warm),
                "answer_rows": size,
            }
        rollback = RunStore(storage)
        rollback_s, _ = _timed(lambda: rollback.rollback_run(target_run))
    return {
        "rows": rows, "runs": n_runs, "rows_per_run": per_run,
        "build_seconds": build.seconds, "build_peak_rss_mb": build.peak / 2**20,
        "queries": results,
        "rollback_seconds": rollback_s,
        "db_mb": db.stat().st_size / 2**20,
    }


# --- rollback --------------------------------------------------------------------------------


def run_rollback(job: dict[str, Any]) -> dict[str, Any]:
    """Roll back runs of ``run_rows`` rows through the library and delete as many with raw
    SQL, alternating, in one store of ``pairs * 2`` runs."""
    from egregora.database import DuckDBStorageManager, RunStore

    run_rows, pairs = int(job["run_rows"]), int(job["pairs"])
    parquet = Path(job["parquet"])
    db = Path(job["workdir"]) / "rollback.duckdb"
    library_s: list[float] = []
    raw_s: list[float] = []
    delete = _sql(exp.delete(exp.to_identifier(TABLE, quoted=True)).where(
        "run_id = CAST(? AS UUID)"
    ))
    with DuckDBStorageManager(db) as storage:
        runs = RunStore(storage)
        ids = []
        for k in range(2 * pairs):
            with runs.run(f"ingest-{k}") as run:
                storage.write(TABLE, _stream(parquet, run_rows, k * run_rows, 50_000),
                              run_id=run.run_id)
            ids.append(run.run_id)
        cursor = storage.backend().con
        for pair in range(pairs):
            first, second = ids[2 * pair], ids[2 * pair + 1]
            library_first = pair % 2 == 0
            mine, theirs = (first, second) if library_first else (second, first)
            steps = [
                (library_s, lambda rid=mine: runs.rollback_run(rid)),
                (raw_s, lambda rid=theirs: cursor.execute(delete, [rid]).fetchall()),
            ]
            for into, step in steps if library_first else steps[::-1]:
                into.append(_timed(step)[0])
        left = storage.to_arrow(storage.table(TABLE).count()).as_py()
    return {
        "run_rows": run_rows, "pairs": pairs,
        "rollback_seconds": statistics.median(library_s),
        "raw_delete_seconds": statistics.median(raw_s),
        "rollback_runs": library_s, "raw_delete_runs": raw_s,
        "rows_left": left,
    }


WORKLOADS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "validation": run_validation,
    "lineage": run_lineage,
    "rollback": run_rollback,
}
