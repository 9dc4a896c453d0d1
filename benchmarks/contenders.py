"""The bulk-write contenders: the library and the ways to load the same rows without it.

Every contender writes the same rows (a prefix of one generated Parquet file) into a fresh
database file of its own, and only the write itself is timed: opening the store, starting the
run and reading the rows into Arrow happen before the timer starts, checking the row count
after it stops.

- ``library``: ``DuckDBStorageManager.write`` under a run of ``RunStore``. It gets the rows
  as a writer hands them, without ``run_id``, which it stamps, then conforms, validates and
  inserts them, and refreshes the run's heartbeat.
- ``raw_constrained`` (the limit): DuckDB's ``INSERT INTO documents BY NAME SELECT * FROM``
  the Arrow data, into the very table the library writes (created by the library's own
  migration, with the same run row). The rows carry ``run_id`` already.
- ``raw_floor``: the same insert into a table with the declared column types but no
  constraint at all (no primary key, foreign key, NOT NULL or CHECK). It is derived from the
  declaration rather than created ``AS SELECT * FROM arrow LIMIT 0``, which would store the
  uuid and json columns as VARCHAR and so measure another layout, not just the constraints.
- ``ibis_insert``: ``ibis.duckdb`` ``Backend.insert`` into the constrained table.
- ``pandas_to_sql``: ``DataFrame.to_sql`` through SQLAlchemy (duckdb-engine) into the
  constrained table; the DataFrame is built before the timer.
- ``dlt``: a dlt pipeline loading the Arrow rows into a DuckDB file, with its
  ``_dlt_load_id`` column; dlt creates its own table (NOT NULL only, no keys).

Modes: ``table`` (one Arrow table), ``stream`` (a RecordBatchReader over the Parquet file,
for sizes that should not be held in memory) and ``batches`` (many small writes, each its own
call and transaction: the enricher pattern).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from benchmarks import data
from benchmarks.measure import Window

TABLE = "documents"
_INCOMING = "incoming_rows"


@dataclass(frozen=True)
class WriteJob:
    """One timed write: ``rows`` rows of ``parquet`` into a fresh database in ``workdir``."""

    contender: str
    rows: int
    mode: str
    parquet: Path
    workdir: Path
    batch_rows: int

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WriteJob:
        """The job as the suite sends it."""
        return cls(
            contender=raw["contender"], rows=int(raw["rows"]), mode=raw["mode"],
            parquet=Path(raw["parquet"]), workdir=Path(raw["workdir"]),
            batch_rows=int(raw["batch_rows"]),
        )

    @property
    def db(self) -> Path:
        """The contender's database file."""
        return self.workdir / f"{self.contender}.duckdb"


@dataclass(frozen=True)
class Contender:
    """A way to write the rows: its runner, what it needs installed, and how far it goes.

    ``max_rows`` caps the sizes it runs at (``cap_reason`` says why), ``modes`` the ways it
    can take rows (``mode_reason`` says why not the others), and a ``slow`` contender is
    measured once per size above the smallest instead of once per repetition.
    """

    name: str
    label: str
    run: Callable[[WriteJob, Window], dict[str, Any]]
    requires: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("table", "stream", "batches")
    max_rows: int | None = None
    cap_reason: str = ""
    mode_reason: str = ""
    slow: bool = False

    def missing(self) -> list[str]:
        """The modules it needs that are not installed."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


# --- the rows as each contender receives them -----------------------------------------------


def _stamped_stream(
    job: WriteJob, run_id: str | None, counted: list[int]
) -> Iterator[pa.RecordBatch]:
    first = data.now_us()
    for batch in data.iter_batches(job.parquet, job.rows, batch_rows=job.batch_rows):
        stamped = data.stamp(batch, first + counted[0])
        counted[0] += batch.num_rows
        counted[1] += stamped.nbytes
        yield stamped if run_id is None else data.with_run_id(stamped, run_id)


def _input(job: WriteJob, run_id: str | None) -> tuple[Any, Callable[[], int]]:
    """The rows for ``job.mode`` and a function giving their Arrow bytes.

    The rows are a table, a reader, or a list of small tables. With ``run_id`` a ``run_id``
    column is added (raw inserts and peers), without it not (the library stamps it); the
    bytes are those of the documents alone, so that every contender reports the same size.
    ``created_at`` is stamped now, after the run started. A reader's bytes are counted as
    they stream.
    """
    if job.mode == "stream":
        counted = [0, 0]
        schema = data.documents_schema()
        if run_id is not None:
            schema = schema.append(pa.field("run_id", pa.string(), nullable=False))
        reader = pa.RecordBatchReader.from_batches(schema, _stamped_stream(job, run_id, counted))
        return reader, lambda: counted[1]
    table = data.stamp(data.load_table(job.parquet, job.rows), data.now_us())
    size = table.nbytes
    if run_id is not None:
        table = data.with_run_id(table, run_id)
    if job.mode == "batches":
        table = table.combine_chunks()
        parts = [table.slice(i, job.batch_rows) for i in range(0, job.rows, job.batch_rows)]
        return parts, lambda: size
    return table, lambda: size


# --- setup shared by the contenders that write the library's own table -----------------------


def _library_store(job: WriteJob) -> str:
    """Create the library's store in ``job.db`` with one RUNNING run; return its id."""
    from egregora.database import DuckDBStorageManager, RunStore

    with DuckDBStorageManager(job.db) as storage:
        return RunStore(storage).start_run("benchmark", config={"contender": job.contender}).run_id


def _count(db: Path, table: str) -> int:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(exp.select("count(*)").from_(table).sql("duckdb")).fetchone()
    return int(row[0]) if row else 0


def _insert_by_name(target: str, source: str) -> str:
    """``INSERT INTO target BY NAME SELECT * FROM source``."""
    select = exp.select(exp.Star()).from_(exp.to_identifier(source, quoted=True))
    return exp.Insert(
        this=exp.Table(this=exp.to_identifier(target, quoted=True)), expression=select,
        by_name=True,
    ).sql("duckdb")


def floor_table_sql() -> str:
    """``CREATE TABLE documents`` with the declared column types and no constraint."""
    from egregora.database import ddl
    from egregora.database.schemas import DOCUMENTS_SCHEMA

    columns = [
        exp.ColumnDef(this=ddl.ident(name), kind=ddl.column_type(dtype, "duckdb"))
        for name, dtype in DOCUMENTS_SCHEMA.schema.items()
    ]
    schema = exp.Schema(this=exp.Table(this=ddl.ident(TABLE)), expressions=columns)
    return ddl.to_sql(exp.Create(this=schema, kind="TABLE"))


def _result(job: WriteJob, window: Window, nbytes: int, **extra: Any) -> dict[str, Any]:
    return {**window.as_dict(), "input_bytes": nbytes, **extra}


# --- the contenders --------------------------------------------------------------------------


def _instrument() -> tuple[dict[str, float], Callable[[], None]]:
    """Time the library's phases by wrapping its steps in this process; returns the totals
    and a function undoing the wrapping.

    The steps are looked up where the write path is defined (the module and class of
    ``_write_locked``), so a moved write path is still timed; a step that no longer exists is
    left alone and its phase is absent from the results.
    """
    from egregora.database.backends.duckdb.manager import DuckDBStorageManager

    owner = next(
        (k for k in DuckDBStorageManager.__mro__ if "_write_locked" in vars(k)),
        DuckDBStorageManager,
    )
    write_module = sys.modules[owner.__module__]
    totals: dict[str, float] = defaultdict(float)
    undo: list[Callable[[], None]] = []

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - started

        return wrapper

    def timed_iter(name: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            it = fn(*args, **kwargs)
            while True:
                started = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    totals[name] += time.perf_counter() - started
                    return
                totals[name] += time.perf_counter() - started
                yield item

        return wrapper

    def patch(owner: Any, attr: str, phase: str, *, iterator: bool = False) -> None:
        original = getattr(owner, attr, None)
        if original is None:
            return
        setattr(owner, attr, (timed_iter if iterator else timed)(phase, original))
        undo.append(lambda: setattr(owner, attr, original))

    patch(write_module, "chunks", "read_and_regroup", iterator=True)
    patch(write_module, "conform", "conform")
    patch(write_module, "validate_batch", "validate")
    patch(DuckDBStorageManager, "_check_run", "check_run")
    patch(DuckDBStorageManager, "_load_chunk", "insert")
    patch(DuckDBStorageManager, "_commit", "commit")

    def restore() -> None:
        for step in reversed(undo):
            step()

    return totals, restore


def run_library(job: WriteJob, window: Window) -> dict[str, Any]:
    """The library's write path."""
    from egregora.database import DuckDBStorageManager, RunStore

    phases, undo = _instrument()
    storage = DuckDBStorageManager(job.db)
    try:
        runs = RunStore(storage)
        run = runs.start_run("benchmark", config={"contender": job.contender, "rows": job.rows})
        rows, size = _input(job, None)
        phases.clear()  # the run's own writes above are not part of the timed write
        with window:
            if job.mode == "batches":
                for batch in rows:
                    storage.write(TABLE, batch, run_id=run.run_id)
            else:
                storage.write(TABLE, rows, run_id=run.run_id)
        named = dict(phases)
        runs.end_run(run.run_id)
    finally:
        storage.close()
        undo()
    # What no step accounts for: the heartbeat, registering the batch, BEGIN.
    named["other"] = max(window.seconds - sum(named.values()), 0.0)
    return _result(job, window, size(), phases=dict(named), rows_written=_count(job.db, TABLE))


def _raw(job: WriteJob, window: Window, *, constrained: bool) -> dict[str, Any]:
    import duckdb

    if constrained:
        run_id = _library_store(job)
    else:
        from egregora.database.ids import new_id_str

        run_id = new_id_str()
    con = duckdb.connect(str(job.db))
    try:
        if not constrained:
            con.execute(floor_table_sql())
        rows, size = _input(job, run_id)
        insert = _insert_by_name(TABLE, _INCOMING)
        with window:
            for part in rows if job.mode == "batches" else [rows]:
                con.register(_INCOMING, part)
                con.execute(insert)
                con.unregister(_INCOMING)
    finally:
        con.close()
    return _result(job, window, size(),
                   rows_written=_count(job.db, TABLE))


def run_raw_constrained(job: WriteJob, window: Window) -> dict[str, Any]:
    """The limit: DuckDB's own insert into the library's constrained table."""
    return _raw(job, window, constrained=True)


def run_raw_floor(job: WriteJob, window: Window) -> dict[str, Any]:
    """The floor: the same insert into the same columns without constraints."""
    return _raw(job, window, constrained=False)


def run_ibis_insert(job: WriteJob, window: Window) -> dict[str, Any]:
    """Ibis ``insert`` into the constrained table."""
    import ibis

    run_id = _library_store(job)
    con = ibis.duckdb.connect(str(job.db))
    try:
        rows, size = _input(job, run_id)
        with window:
            for part in rows if job.mode == "batches" else [rows]:
                con.insert(TABLE, part)
    finally:
        con.disconnect()
    return _result(job, window, size(),
                   rows_written=_count(job.db, TABLE))


def run_pandas_to_sql(job: WriteJob, window: Window) -> dict[str, Any]:
    """pandas ``to_sql`` through SQLAlchemy into the constrained table."""
    import sqlalchemy

    run_id = _library_store(job)
    rows, size = _input(job, run_id)
    frame = rows.to_pandas()
    engine = sqlalchemy.create_engine(f"duckdb:///{job.db}")
    try:
        with window:
            frame.to_sql(TABLE, engine, if_exists="append", index=False)
    finally:
        engine.dispose()
    return _result(job, window, size(),
                   rows_written=_count(job.db, TABLE))


def run_dlt(job: WriteJob, window: Window) -> dict[str, Any]:
    """A dlt pipeline loading the Arrow rows into DuckDB, with ``_dlt_load_id``."""
    # dlt reads its configuration from the environment; no telemetry leaves the machine,
    # and Arrow rows get the load id column, which dlt adds to Arrow data only on request.
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    os.environ["NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID"] = "true"
    import dlt

    from egregora.database.ids import new_id_str

    pipeline = dlt.pipeline(
        pipeline_name="benchmark", destination=dlt.destinations.duckdb(str(job.db)),
        dataset_name="benchmark", pipelines_dir=str(job.workdir / "dlt"),
    )
    rows, size = _input(job, new_id_str())
    with window:
        pipeline.run(rows, table_name=TABLE, write_disposition="append")
    qualified = exp.table_(TABLE, db="benchmark").sql("duckdb")
    return _result(job, window, size(),
                   rows_written=_count(job.db, qualified))


CONTENDERS: tuple[Contender, ...] = (
    Contender("library", "egregora.database", run_library),
    Contender("raw_constrained", "raw INSERT, constrained (limit)", run_raw_constrained),
    Contender("raw_floor", "raw INSERT, no constraints (floor)", run_raw_floor),
    Contender(
        "ibis_insert", "Ibis insert", run_ibis_insert, modes=("table", "batches"),
        mode_reason="Ibis insert takes a whole table, not a stream",
        max_rows=1_000_000,
        cap_reason="Ibis insert takes a whole table (no stream), and 10M rows are ~16 GB "
        "of Arrow on a 24 GB machine",
    ),
    Contender(
        "pandas_to_sql", "pandas to_sql (SQLAlchemy)", run_pandas_to_sql,
        requires=("sqlalchemy", "duckdb_engine"), modes=("table",), slow=True,
        mode_reason="to_sql takes one DataFrame",
        max_rows=100_000,
        cap_reason="to_sql inserts through executemany, row by row (~218 s per 1M rows "
        "measured on this kind of machine); its cost per row is flat, so larger sizes add "
        "time, not information",
    ),
    Contender(
        "dlt", "dlt (DuckDB destination)", run_dlt, requires=("dlt",),
        modes=("table", "stream"),
        mode_reason="every dlt pipeline run is a load package of its own (extract, "
        "normalize, load, state), so 1,000 runs of 100 rows would time that machinery",
    ),
)
CONTENDER_NAMES = tuple(c.name for c in CONTENDERS)


def contender(name: str) -> Contender:
    """The contender called ``name``."""
    for found in CONTENDERS:
        if found.name == name:
            return found
    raise KeyError(f"no contender {name!r}; known: {', '.join(CONTENDER_NAMES)}")
