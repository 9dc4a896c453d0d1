"""PostgreSQL write speed: the library against a plain binary COPY, and 1 against N processes.

Run: ``.venv/bin/python -m benchmarks.postgres --rows 1000000`` (server from
``EGREGORA_TEST_POSTGRES_URL``, default the local ``test`` database; it works in schemas of
its own, named uniquely per call and dropped at the end, also when a measurement fails). The
suite runs the same two comparisons as its workload 6 (:mod:`benchmarks.workload_postgres`), on
its own generated rows; run alone, this script generates simpler documents (:func:`documents`).

1. Library vs COPY, same process, alternating, medians. The library writes egregora-like
   documents (content of 200-2000 characters) through ``PostgresStorageManager.write``: conform,
   Pandera validation, COPY, heartbeat, one transaction. The baseline copies the same Arrow
   rows with ADBC's ``adbc_ingest`` (the PostgreSQL driver's binary COPY from Arrow) into an
   identically constrained table (the same DDL: primary key, foreign key to ``runs``, checks);
   its uuid and json columns are converted to ``arrow.uuid``/``arrow.json`` before the clock
   starts, so the baseline times the COPY alone. The target is library <= 1.25x baseline.
   The COPY of the library's own encoded stream, pre-encoded, is reported as the floor.
   Each timed call also records the growth of this process's resident memory over it.
2. Concurrency: the same total rows written by one process, then by N processes at once (each
   its own run), total rows/s of each and the peak RSS of the largest writer.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks import data
from benchmarks.measure import Window
from egregora.database import ddl
from egregora.database.backends.postgres import binary_copy as pgcopy
from egregora.database.backends.postgres.manager import PostgresStorageManager
from egregora.database.batches import conform
from egregora.database.model import utc_now
from egregora.database.runs.store import RunStore
from egregora.database.schemas import DOCUMENTS_SCHEMA, RUNS_SCHEMA

URL = os.environ.get("EGREGORA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
WORDS = np.array([
    "the", "of", "chat", "group", "message", "photo", "link", "summary", "note", "shared",
    "meeting", "weekend", "plan", "idea", "voice", "travel", "garden", "music", "recipe",
    "question", "answer", "thanks", "tomorrow", "today", "later", "again",
])
DOC_TYPES = ("post", "profile", "journal", "media", "enrichment")
#: Where ``created_at`` of the suite's rows is stamped: a day ahead, because a row may not
#: predate the run that writes it and the runs start after the rows are loaded.
_DAY_US = 86_400 * 1_000_000


def documents(n: int, *, seed: int) -> pa.Table:
    """``n`` valid egregora-like documents, every type's required columns filled."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(30, 300, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    words = pa.array(WORDS.tolist()).take(pa.array(rng.integers(0, len(WORDS), int(offsets[-1]))))
    content = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words), " ")
    # After every run the rows are written with (rows are made once, runs start later).
    later = utc_now() + timedelta(days=1)
    at = pa.array([later] * n, pa.timestamp("us", tz="UTC"))
    tags = pa.array(['["chat","weekend"]'] * n)
    return pa.table(
        {
            "id": data.uuids(n, rng),
            "doc_type": pa.array(np.array(DOC_TYPES)[np.arange(n) % len(DOC_TYPES)]),
            "content": content,
            "created_at": at,
            "title": pa.array([f"title {i}" for i in range(n)]),
            "slug": pa.array([f"slug-{i}" for i in range(n)]),
            "status": pa.array(["published"] * n),
            "subject_uuid": data.uuids(n, rng),
            "filename": pa.array(["photo.jpg"] * n),
            "window_start": at,
            "window_end": at,
            "tags": tags,
            "extensions": pa.array(['{"source":"bench"}'] * n),
        }
    )


def suite_rows(parquet: str | Path, rows: int, *, skip: int = 0) -> pa.Table:
    """Rows ``skip`` to ``skip + rows`` of the suite's Parquet file (:mod:`benchmarks.data`),
    ``created_at`` stamped a day ahead (rows are loaded before the runs that write them)."""
    table = data.load_table(Path(parquet), rows, skip=skip)
    return data.stamp(table, data.now_us() + _DAY_US)


def schema_name(role: str) -> str:
    """A schema name of this call's own, so that two runs on one server never share one."""
    return f"egregora_bench_{role}_{uuid.uuid4().hex[:10]}"


def _raw() -> psycopg.Connection[Any]:
    return psycopg.connect(URL, autocommit=True)


def _reset(schema: str) -> None:
    with _raw() as con:
        con.execute(f"DROP SCHEMA IF EXISTS {ddl.ident(schema).sql('postgres')} CASCADE")


@contextmanager
def dropped_after(*schemas: str) -> Iterator[None]:
    """Drop ``schemas`` (if they exist) when the block ends, whether it raised or not."""
    try:
        yield
    finally:
        for schema in schemas:
            _reset(schema)


def _adbc_table(rows: pa.Table) -> pa.Table:
    """Conformed rows as ADBC's COPY wants them: uuid as ``arrow.uuid``, json as ``arrow.json``."""
    columns = []
    for name, dtype in DOCUMENTS_SCHEMA.schema.items():
        column = rows.column(name).combine_chunks()
        if dtype.is_uuid():
            raw, _ = pgcopy.uuid_bytes(column)
            validity = pc.is_valid(column).buffers()[1] if column.null_count else None
            storage = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), len(column), [validity, pa.py_buffer(raw)]
            )
            column = pa.ExtensionArray.from_storage(pa.uuid(), storage)
        elif dtype.is_json():
            column = pa.ExtensionArray.from_storage(pa.json_(), column)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=list(DOCUMENTS_SCHEMA.column_names))


class Baseline:
    """An identically constrained ``documents`` (and its ``runs``) in a schema of its own."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        _reset(schema)
        quoted = ddl.ident(schema).sql("postgres")
        self.run_id = str(uuid.uuid4())
        with _raw() as con:
            con.execute(f"CREATE SCHEMA {quoted}")
            con.execute(f"SET search_path = {quoted}")
            con.execute(ddl.create_table_sql(RUNS_SCHEMA, "postgres"))
            con.execute(ddl.create_table_sql(DOCUMENTS_SCHEMA, "postgres"))
            con.execute(
                "INSERT INTO runs (run_id, name, status, config, config_hash, code_version, "
                "host, pid, started_at, heartbeat_at) VALUES (%s, 'copy', 'RUNNING', '{}', '', "
                "'', '', 0, now() - interval '1 day', now())",
                [self.run_id],
            )

    def truncate(self) -> None:
        with _raw() as con:
            con.execute(f"TRUNCATE {ddl.ident(self.schema).sql('postgres')}.documents")

    def adbc_copy(self, table: pa.Table) -> Window:
        import adbc_driver_postgresql.dbapi as adbc

        with adbc.connect(URL) as con, con.cursor() as cursor:
            cursor.execute(f"SET search_path = {ddl.ident(self.schema).sql('postgres')}")
            with Window() as window:
                cursor.adbc_ingest("documents", table, mode="append")
                con.commit()
            return window

    def encoded_copy(self, stream: list[memoryview]) -> Window:
        columns = ", ".join(ddl.ident(c).sql("postgres") for c in DOCUMENTS_SCHEMA.column_names)
        with _raw() as con:
            con.execute(f"SET search_path = {ddl.ident(self.schema).sql('postgres')}")
            with Window() as window, con.transaction(), con.cursor() as cur, cur.copy(
                f"COPY documents ({columns}) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.write(pgcopy.HEADER)
                for piece in stream:
                    copy.write(piece)
                copy.write(pgcopy.TRAILER)
            return window


def library_write(storage: PostgresStorageManager, rows: pa.Table) -> Window:
    runs = RunStore(storage)
    run = runs.start_run("bench")
    with Window() as window:
        storage.write("documents", rows, run_id=run.run_id)
    runs.end_run(run.run_id)
    return window


def _truncate_library(schema: str) -> None:
    with _raw() as con:
        quoted = ddl.ident(schema).sql("postgres")
        con.execute(f"TRUNCATE {quoted}.annotations, {quoted}.documents")


def compare_with_copy(
    rows: int, repeats: int, *, table: pa.Table | None = None
) -> dict[str, Any]:
    """The library's write against the two COPYs, ``repeats`` times alternated, on ``table``
    (the suite's rows) or on :func:`documents`; the schemas are dropped at the end."""
    data = documents(rows, seed=1) if table is None else table.slice(0, rows)
    if data.num_rows != rows:
        raise ValueError(f"{rows} rows asked for, {data.num_rows} given")
    lib_schema, copy_schema = schema_name("library"), schema_name("copy")
    windows: dict[str, list[Window]] = {"library": [], "adbc_copy": [], "encoded_copy": []}
    with dropped_after(lib_schema, copy_schema):
        baseline = Baseline(copy_schema)
        conformed = conform(DOCUMENTS_SCHEMA, data, run_id=baseline.run_id)
        adbc_rows = _adbc_table(conformed)
        stream = [
            pgcopy.encode(DOCUMENTS_SCHEMA.schema, conformed.slice(i, 100_000))
            for i in range(0, rows, 100_000)
        ]
        with PostgresStorageManager(URL, schema=lib_schema) as storage:
            for _ in range(repeats):
                _truncate_library(lib_schema)
                windows["library"].append(library_write(storage, data))
                baseline.truncate()
                windows["adbc_copy"].append(baseline.adbc_copy(adbc_rows))
                baseline.truncate()
                windows["encoded_copy"].append(baseline.encoded_copy(stream))
            stored = _count(lib_schema), _count(copy_schema)
    if stored != (rows, rows):
        raise RuntimeError(f"library and COPY tables hold {stored} rows, not {rows} each")
    timings = {k: [w.seconds for w in v] for k, v in windows.items()}
    medians = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "rows": rows,
        "repeats": repeats,
        "schemas": [lib_schema, copy_schema],
        "seconds": timings,
        "median_seconds": medians,
        "rows_per_second": {k: rows / v for k, v in medians.items()},
        "median_cpu_seconds": {k: statistics.median(w.cpu for w in v)
                               for k, v in windows.items()},
        "median_peak_rss_mb": {k: statistics.median(w.peak / 2**20 for w in v)
                               for k, v in windows.items()},
        "median_rss_growth_mb": {k: statistics.median((w.peak - w.rss_start) / 2**20 for w in v)
                                 for k, v in windows.items()},
        "library_vs_adbc_copy": medians["library"] / medians["adbc_copy"],
        "library_vs_encoded_copy": medians["library"] / medians["encoded_copy"],
    }


def _count(schema: str) -> int:
    with _raw() as con:
        found = con.execute(
            f"SELECT count(*) FROM {ddl.ident(schema).sql('postgres')}.documents"
        ).fetchone()
    return int(found[0]) if found else 0


def _process_writer(job: dict[str, Any], start: Any) -> dict[str, float]:
    """Writer ``job["index"]``: its ``job["rows"]`` rows (the index-th share of the suite's
    file when ``job["parquet"]`` is set, else generated), a run of its own, then its writes
    of ``job["batch"]`` rows each, once every writer is ready (``start``, a barrier)."""
    index, rows, batch = int(job["index"]), int(job["rows"]), int(job["batch"])
    data = (documents(rows, seed=100 + index) if job["parquet"] is None
            else suite_rows(job["parquet"], rows, skip=index * rows))
    with PostgresStorageManager(URL, schema=job["schema"]) as storage:
        runs = RunStore(storage)
        run = runs.start_run(f"writer-{index}")
        start.wait()
        with Window() as window:
            for offset in range(0, rows, batch):
                storage.write("documents", data.slice(offset, batch), run_id=run.run_id)
        runs.end_run(run.run_id)
    return {"seconds": window.seconds, "peak_rss_mb": window.peak / 2**20}


def compare_processes(
    rows: int, processes: int, batch: int, *, parquet: str | Path | None = None
) -> dict[str, Any]:
    """``rows`` written by one process, then split over ``processes`` writing at once, each
    in ``batch``-row writes under a run of its own; the schema is dropped at the end."""
    schema = schema_name("processes")
    result: dict[str, Any] = {"rows": rows, "batch_rows": batch, "schemas": [schema]}
    context = multiprocessing.get_context("spawn")
    source = None if parquet is None else str(parquet)
    with dropped_after(schema):
        for count in (1, processes):
            _reset(schema)
            PostgresStorageManager(URL, schema=schema).close()
            share = rows // count
            with context.Manager() as manager, context.Pool(count) as pool:
                start = manager.Barrier(count)
                writers = pool.starmap(
                    _process_writer,
                    [({"schema": schema, "rows": share, "index": i, "batch": batch,
                       "parquet": source}, start) for i in range(count)],
                )
            # From the common start (a barrier, after each process made its rows and opened
            # the store) to the last process done.
            wall = max(w["seconds"] for w in writers)
            stored = _count(schema)
            if stored != share * count:
                raise RuntimeError(f"{count} writer(s) stored {stored} rows, not {share * count}")
            result[f"{count}_process"] = {
                "processes": count, "rows": stored, "rows_per_process": share,
                "wall_seconds": wall, "rows_per_second": stored / wall,
                "writer_seconds": [w["seconds"] for w in writers],
                "max_writer_peak_rss_mb": max(w["peak_rss_mb"] for w in writers),
            }
    result["speedup"] = (
        result[f"{processes}_process"]["rows_per_second"] / result["1_process"]["rows_per_second"]
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--process-rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    copy = compare_with_copy(args.rows, args.repeats)
    print(f"{'path':<14}{'median s':>10}{'rows/s':>12}")
    for name, seconds in copy["median_seconds"].items():
        print(f"{name:<14}{seconds:>10.2f}{copy['rows_per_second'][name]:>12,.0f}")
    print(f"library / ADBC COPY: {copy['library_vs_adbc_copy']:.2f}x (target <= 1.25x)")
    print(f"library / COPY of the pre-encoded stream: {copy['library_vs_encoded_copy']:.2f}x")

    procs = compare_processes(args.process_rows, args.processes, args.batch_rows)
    for count in (1, args.processes):
        figures = procs[f"{count}_process"]
        print(f"{count} process(es): {figures['rows_per_second']:,.0f} rows/s total "
              f"({figures['wall_seconds']:.1f} s for {args.process_rows:,} rows)")
    print(f"{args.processes} processes vs 1: {procs['speedup']:.2f}x")

    results = {"copy": copy, "processes": procs, "cores": os.cpu_count()}
    if args.out:
        with open(args.out, "w") as out:
            json.dump(results, out, indent=2)
    else:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
