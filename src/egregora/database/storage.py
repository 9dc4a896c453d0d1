"""DuckDBStorageManager: the one owner of the connection and the bulk write path.

Every write of the library goes through :meth:`DuckDBStorageManager.write`: the batch is
conformed to its table's declaration, validated inside DuckDB, stamped with its run and
inserted from Arrow in one statement per chunk, all chunks of a call in one transaction.

Facts that shape this module (DESIGN §3, measured on duckdb 1.5.6):

- An Ibis backend shared by two threads is not safe, so the write connection is used under a
  lock, and reads go through a per-thread cursor (a connection of its own to the same
  database) wrapped in its own Ibis backend.
- After a failed statement inside a transaction, ``COMMIT`` reports success and silently
  drops everything; the write path rolls back explicitly on any error.
- A violating INSERT names only the first bad key, so the error is diagnosed after the
  rollback with anti-joins that list every offending row. The happy path pays nothing.
- One process per file: another process's lock surfaces as :class:`StoreLockedError` with the
  holder's PID, after retrying for ``lock_timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import ibis
import pyarrow as pa

from egregora.database import ddl, statements
from egregora.database.batches import DEFAULT_CHUNK_ROWS, chunks, conform, to_reader
from egregora.database.errors import (
    ConnectionFailedError,
    ReadOnlyError,
    RunNotFoundError,
    RunStateError,
    SchemaMismatchError,
    StorageError,
    StoreLockedError,
    TableNotFoundError,
    ValidationError,
)
from egregora.database.migrations import (
    LAYOUT_TABLE,
    MigrationPlan,
    ReflectedForeignKey,
    ReflectedTable,
    canonical_check,
    plan_migration,
)
from egregora.database.model import RUN_ID, RUNS_TABLE, Catalog, TableSchema, utc_now
from egregora.database.schemas import CATALOG, LAYOUT_VERSION
from egregora.database.statements import ON_CONFLICT_CHOICES, OnConflict
from egregora.database.translate import (
    diagnose_write_failure,
    refuse_moved_references,
    translate_duckdb_error,
)

if TYPE_CHECKING:
    import ibis.expr.types as ir
    from sqlglot import exp

    from egregora.database.audit import IntegrityReport

_BATCH_VIEW = "egregora_incoming_batch"
_LOCK_PID = re.compile(r"PID (\d+)")


def package_version() -> str:
    """The installed version of this package."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("egregora-database")
    except PackageNotFoundError:
        return "0+unknown"


class DuckDBStorageManager:
    """The embedded store: owns the DuckDB connection and performs every write.

    Args:
        path: A database file, or ``":memory:"``.
        read_only: Open for readers (notebooks): no migration, every write refused.
        lock_timeout: Seconds to keep retrying while another process holds the file.
        catalog: The declared tables (egregora's by default; extend it with your own).
        chunk_rows: Rows per insert of a streamed write; bounds memory of a stream.
        heartbeat_timeout: A RUNNING run whose heartbeat is older than this when the store
            is opened is marked CRASHED (runs of dead local processes are marked at once).

    Raises:
        StoreLockedError: another process holds the file beyond ``lock_timeout``.
        SchemaMismatchError: the file's tables differ from the declaration in a way that
            cannot be migrated; nothing was changed.
        ConnectionFailedError: the file cannot be opened (missing for a reader, corrupt).

    Example:
        >>> with DuckDBStorageManager(":memory:") as storage:
        ...     sorted(storage.catalog.names)
        ['annotations', 'documents', 'messages', 'runs']
    """

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        read_only: bool = False,
        lock_timeout: float = 0.0,
        catalog: Catalog = CATALOG,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        heartbeat_timeout: timedelta = timedelta(minutes=10),
    ) -> None:
        self.path = str(path)
        self.read_only = read_only
        self.catalog = catalog
        self.chunk_rows = chunk_rows
        self.heartbeat_timeout = heartbeat_timeout
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cursors: weakref.WeakSet[Any] = weakref.WeakSet()
        self._closed = False
        if read_only and self.path == ":memory:":
            raise ConnectionFailedError("an in-memory store cannot be opened read-only")
        if read_only and not Path(self.path).exists():
            raise ConnectionFailedError(f"no store at {self.path} to open read-only")
        self._con = self._connect(lock_timeout)
        self._ibis = ibis.duckdb.from_connection(self._con)
        self.migration: MigrationPlan = MigrationPlan()
        try:
            self.migration = self._migrate()
            if not read_only:
                from egregora.database.run_store import RunStore  # noqa: PLC0415

                RunStore(self).recover_crashed_runs(heartbeat_timeout=heartbeat_timeout)
        except BaseException:
            self._con.close()
            raise

    # --- opening -----------------------------------------------------------------------

    def _connect(self, lock_timeout: float) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + lock_timeout
        delay = 0.05
        while True:
            try:
                return duckdb.connect(self.path, read_only=self.read_only)
            except duckdb.IOException as exc:
                text = str(exc)
                if "lock" not in text.lower():
                    raise ConnectionFailedError(f"cannot open {self.path}: {text}") from exc
                if time.monotonic() >= deadline:
                    match = _LOCK_PID.search(text)
                    pid = int(match.group(1)) if match else None
                    holder = f"process {pid}" if pid else "another process"
                    raise StoreLockedError(
                        f"{self.path} is held by {holder}"
                        + (f" (waited {lock_timeout:g} s)" if lock_timeout else "")
                        + "; DuckDB admits one writing process per file, and no reader "
                        "while a writer holds it. Wait for that process to finish, close it, "
                        "or use the PostgreSQL backend for concurrent writers. Never delete "
                        "the .wal file.",
                        path=self.path,
                        holder_pid=pid,
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except duckdb.Error as exc:
                raise ConnectionFailedError(f"cannot open {self.path}: {exc}") from exc

    def _reflect(self) -> dict[str, ReflectedTable]:
        names = [t.name for t in (LAYOUT_TABLE, *self.catalog.tables)]
        found = {
            r[0]
            for r in self._con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
            ).fetchall()
        }
        constraints = self._con.execute(
            "SELECT table_name, constraint_type, constraint_column_names, referenced_table, "
            "referenced_column_names, expression FROM duckdb_constraints() "
            "WHERE schema_name = 'main'"
        ).fetchall()
        reflected: dict[str, ReflectedTable] = {}
        for name in names:
            if name not in found:
                continue
            mine = [c for c in constraints if c[0] == name]
            pk = next((tuple(c[2]) for c in mine if c[1] == "PRIMARY KEY"), ())
            fks = frozenset(
                ReflectedForeignKey(tuple(c[2]), c[3], tuple(c[4]))
                for c in mine
                if c[1] == "FOREIGN KEY"
            )
            checks = frozenset(canonical_check(c[5]) for c in mine if c[1] == "CHECK")
            reflected[name] = ReflectedTable(name, self._ibis.get_schema(name), pk, fks, checks)
        return reflected

    def _stored_version(self) -> int | None:
        with contextlib.suppress(duckdb.CatalogException):
            row = self._con.execute(
                ddl.to_sql(
                    statements.exp.select(
                        statements.exp.Max(this=ddl.column("version"))
                    ).from_(statements.table_ref(LAYOUT_TABLE.name))
                )
            ).fetchone()
            return None if row is None else row[0]
        return None

    def _migrate(self) -> MigrationPlan:
        plan = plan_migration(
            self.catalog, self._reflect(), stored_version=self._stored_version()
        )
        if plan.differences:
            raise SchemaMismatchError(plan.differences)
        if self.read_only:
            if plan.create or plan.add_columns:
                raise SchemaMismatchError(
                    [f"read-only store needs migration: {line}" for line in plan.describe()]
                    + ["open it once for writing (egregora-db migrate) to upgrade it"]
                )
            return plan
        if plan.is_empty and self._stored_version() == LAYOUT_VERSION:
            return plan
        with self._transaction():
            for table in plan.create:
                self._con.execute(ddl.create_table_sql(table))
            for table, name in plan.add_columns:
                self._con.execute(ddl.to_sql(ddl.add_column(table, name)))
            if self._stored_version() != LAYOUT_VERSION:
                self._append(
                    LAYOUT_TABLE,
                    pa.table(
                        {
                            "version": [LAYOUT_VERSION],
                            "applied_at": pa.array([utc_now()], pa.timestamp("us", tz="UTC")),
                            "description": ["; ".join(plan.describe()) or "layout recorded"],
                            "package_version": [package_version()],
                        }
                    ),
                    on_conflict="error",
                )
        return plan

    # --- transactions and raw execution (library-internal) -----------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction on the write connection; ROLLBACK on any error (see module doc)."""
        with self._lock:
            self._check_open()
            self._con.begin()
            try:
                yield
            except BaseException:
                self._con.rollback()
                raise
            self._con.commit()

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionFailedError(f"the store {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(
                f"{self.path} was opened read-only; open it without read_only=True to write"
            )

    def _execute(self, statement: exp.Expression | str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one statement on the write connection and return its result as Arrow."""
        sql = statement if isinstance(statement, str) else ddl.to_sql(statement)
        with self._lock:
            self._check_open()
            try:
                return self._con.execute(sql, list(params)).to_arrow_table()
            except duckdb.Error as exc:
                raise translate_duckdb_error(exc, table=None, run_id=None) from exc

    def _append(self, table: TableSchema, data: pa.Table, *, on_conflict: OnConflict) -> int:
        self._con.register(_BATCH_VIEW, data)
        try:
            insert = statements.insert_from(
                table, _BATCH_VIEW, on_conflict=on_conflict, present=data.column_names
            )
            row = self._con.execute(ddl.to_sql(insert)).fetchone()
            return int(row[0]) if row else 0
        finally:
            self._con.unregister(_BATCH_VIEW)

    # --- the public API -------------------------------------------------------------------

    def write(
        self,
        table: str,
        data: Any,
        /,
        *,
        run_id: str | None,
        on_conflict: OnConflict = "error",
    ) -> int:
        """Write rows to a declared table, all or nothing.

        Args:
            table: The table's name.
            data: A pyarrow Table, RecordBatch or RecordBatchReader, or anything with the
                Arrow C stream interface. Columns are matched by name.
            run_id: The writing run; required for lineage tables, whose rows it stamps.
            on_conflict: ``"error"`` (a repeated key is a DuplicateKeyError), ``"ignore"``
                (keep the stored row) or ``"update"`` (set the batch's non-key columns on the
                stored row; keys, references and the creating run are kept).

        Returns:
            The number of rows inserted or updated.

        Raises:
            ValidationError: the batch does not fit the declaration (LineageError for
                lineage columns); ``failures`` lists every offending row.
            ForeignKeyViolationError, DuplicateKeyError: the database refused the rows;
                ``failures`` lists every missing reference or repeated key.
            RunNotFoundError, RunStateError: the run is unknown or not RUNNING.
            ReadOnlyError, TableNotFoundError.
        """
        schema = self.catalog[table]
        if on_conflict not in ON_CONFLICT_CHOICES:
            raise ValidationError(
                f"on_conflict must be one of {ON_CONFLICT_CHOICES}, not {on_conflict!r}",
                table=table,
            )
        run_key = None if run_id is None else str(run_id)
        reader = to_reader(data, table=table)
        with self._lock:
            self._check_writable()
            started_at = self._check_run(schema, run_key)
            return self._write_locked(schema, reader, run_key, started_at, on_conflict)

    def _check_run(self, schema: TableSchema, run_id: str | None) -> datetime | None:
        if not schema.lineage:
            return None
        if run_id is None:
            raise ValidationError(
                f"`{schema.name}` records lineage: pass run_id= of a RUNNING run",
                table=schema.name,
                columns=[RUN_ID],
            )
        query = statements.select_where_equal(RUNS_TABLE, ["status", "started_at"], [RUN_ID])
        try:
            # Arrow, not fetchone(): DuckDB's Python conversion of TIMESTAMPTZ needs pytz.
            found = self._con.execute(ddl.to_sql(query), [run_id]).to_arrow_table().to_pylist()
        except duckdb.ConversionException as exc:
            raise RunNotFoundError(
                f"{run_id!r} is not a run id (expected a UUID)", table=schema.name, run_id=run_id
            ) from exc
        row = (found[0]["status"], found[0]["started_at"]) if found else None
        if row is None:
            raise RunNotFoundError(
                f"no run {run_id}: start one with RunStore.start_run() before writing to "
                f"`{schema.name}`",
                table=schema.name,
                run_id=run_id,
            )
        status, started_at = row
        if status != "RUNNING":
            raise RunStateError(
                f"run {run_id} is {status}; only a RUNNING run can write to `{schema.name}`",
                table=schema.name,
                run_id=run_id,
            )
        return started_at  # type: ignore[no-any-return]

    def _write_locked(
        self,
        schema: TableSchema,
        reader: pa.RecordBatchReader,
        run_id: str | None,
        started_at: datetime | None,
        on_conflict: OnConflict,
    ) -> int:
        from egregora.database.validation import validate_batch  # noqa: PLC0415

        written = 0
        chunk: pa.Table | None = None
        self._con.begin()
        try:
            for chunk in chunks(reader, max_rows=self.chunk_rows):
                if chunk.num_rows == 0:
                    continue
                batch = conform(schema, chunk, run_id=run_id)
                self._con.register(_BATCH_VIEW, batch)
                try:
                    validate_batch(
                        self._ibis.table(_BATCH_VIEW), schema, run_id=run_id,
                        run_started_at=started_at,
                    )
                    if on_conflict == "update":
                        self._refuse_moved_references(schema, run_id)
                    insert = statements.insert_from(
                        schema, _BATCH_VIEW, on_conflict=on_conflict, present=chunk.column_names
                    )
                    row = self._con.execute(ddl.to_sql(insert)).fetchone()
                    written += int(row[0]) if row else 0
                finally:
                    self._con.unregister(_BATCH_VIEW)
            if schema.lineage and run_id is not None:
                self._con.execute(
                    ddl.to_sql(statements.update_where_equal(RUNS_TABLE, ["heartbeat_at"], [RUN_ID])),
                    [utc_now(), run_id],
                )
        except StorageError:
            self._con.rollback()
            raise
        except duckdb.Error as exc:
            self._con.rollback()
            raise diagnose_write_failure(self._con, exc, schema, chunk, run_id=run_id) from exc
        except BaseException:
            self._con.rollback()
            raise
        self._con.commit()
        return written

    def _refuse_moved_references(self, schema: TableSchema, run_id: str | None) -> None:
        refuse_moved_references(self._con, schema, _BATCH_VIEW, run_id=run_id)

    def table(self, name: str) -> ir.Table:
        """An Ibis expression over a table, for reads from this thread.

        Each thread reads through its own DuckDB cursor (an Ibis backend shared by threads
        is not safe); reads see committed data.
        """
        if name != LAYOUT_TABLE.name:
            self.catalog[name]
        return self.backend().table(name)

    def backend(self) -> Any:
        """This thread's Ibis backend over the store, for reads and ad-hoc expressions."""
        self._check_open()
        backend = getattr(self._local, "backend", None)
        if backend is None:
            with self._lock:
                cursor = self._con.cursor()
            backend = ibis.duckdb.from_connection(cursor)
            self._local.backend = backend
            self._cursors.add(cursor)
        return backend

    def to_arrow(self, expr: ir.Expr) -> pa.Table:
        """Execute an Ibis expression of this store and return an Arrow table."""
        return self.backend().to_pyarrow(expr)  # type: ignore[no-any-return]

    def verify(self) -> IntegrityReport:
        """The integrity audit: orphans, rows of missing or unfinished runs, unfinished
        purges, duplicate keys. An empty report means the store is sound."""
        from egregora.database.audit import audit  # noqa: PLC0415

        return audit(self)

    def close(self) -> None:
        """Close every connection of the manager; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for cursor in list(self._cursors):
                with contextlib.suppress(duckdb.Error):
                    cursor.close()
            self._con.close()

    def __enter__(self) -> DuckDBStorageManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"DuckDBStorageManager({self.path!r}, {mode})"

