"""StorageManager: what every backend of the store shares, written once.

A backend (:class:`~egregora.database.backends.duckdb.manager.DuckDBStorageManager`,
:class:`~egregora.database.backends.postgres.manager.PostgresStorageManager`) differs from
another only in how it connects, how it bulk-loads one conformed chunk, and how it turns its
driver's errors into the library's. Everything else lives here: opening (migration and crash
recovery), the write path (``write`` -> run check -> chunks -> conform -> validate -> load ->
heartbeat -> commit, or ROLLBACK and a diagnosis listing every offending row), reads through
Ibis, ``verify``.

The run services use a manager only through :class:`egregora.database.store.Store`:
``catalog``, ``read_only``, ``lock``, ``execute``, ``transaction``, ``write``, ``table`` and
``to_arrow``.
"""

from __future__ import annotations

import abc
import contextlib
import threading
import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self

import pyarrow as pa
from sqlglot import exp

from egregora.database import ddl, statements
from egregora.database.batches import DEFAULT_CHUNK_ROWS, chunks, conform, key_batch, to_reader
from egregora.database.errors import (
    ConnectionFailedError,
    Failure,
    LineageError,
    ReadOnlyError,
    RunNotRunningError,
    SchemaMismatchError,
    StorageError,
    UnknownRunError,
    ValidationError,
    failures_table,
)
from egregora.database.ids import canonical_uuid_text
from egregora.database.migrations import MigrationPlan, ReflectedTable, plan_migration
from egregora.database.model import RUN_ID, RUNS_TABLE, Catalog, TableSchema, utc_now
from egregora.database.runs.audit import IntegrityReport, audit
from egregora.database.runs.store import RunStore
from egregora.database.schemas import CATALOG, LAYOUT_TABLE, LAYOUT_VERSION, RunStatus
from egregora.database.statements import ON_CONFLICT_CHOICES, OnConflict
from egregora.database.validation import validate_batch
from egregora.database.version import package_version

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.ddl import Dialect


class StorageManager(abc.ABC):
    """The public contract of a store, and the behaviour every backend shares.

    Subclasses connect in their ``__init__``, then call :meth:`_open`, and implement the
    abstract methods below: the transaction verbs, ``_execute``, reflection, the bulk load
    of one chunk, the diagnosis of a refused chunk, and the per-thread Ibis backend.

    Args:
        read_only: Open for readers (notebooks): no migration, every write refused.
        catalog: The declared tables (egregora's by default; extend it with your own).
        chunk_rows: Rows per load of a streamed write; bounds memory of a stream.
        heartbeat_timeout: A RUNNING run whose heartbeat is older than this when the store
            is opened is marked CRASHED (runs of dead local processes are marked at once).
    """

    #: The SQL dialect statements are rendered in.
    dialect: ClassVar[Dialect]
    #: The driver's error classes that the write path diagnoses after a rollback.
    driver_errors: ClassVar[tuple[type[BaseException], ...]]
    #: Whether a table handed whole (not a stream) is inserted in one statement rather than
    #: in chunks of ``chunk_rows``: for DuckDB one insert is cheaper (~20% at 1M documents),
    #: PostgreSQL overlaps the COPY of a chunk with the checks of the next.
    whole_tables: ClassVar[bool] = False

    def __init__(
        self,
        *,
        read_only: bool = False,
        catalog: Catalog = CATALOG,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        heartbeat_timeout: timedelta = timedelta(minutes=10),
    ) -> None:
        if chunk_rows < 1:
            # chunks() could never fill a chunk of 0 rows, and would loop forever.
            raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
        self.read_only = read_only
        self.catalog = catalog
        self.chunk_rows = chunk_rows
        self.heartbeat_timeout = heartbeat_timeout
        self.lock = threading.RLock()
        self._local = threading.local()
        self._closed = False
        self.migration: MigrationPlan = MigrationPlan()
        self._statements: dict[Hashable, str] = {}

    # --- what a backend provides ---------------------------------------------------------

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the store lives, for messages (a path, or a URL without its password)."""

    @abc.abstractmethod
    def _begin(self) -> None:
        """Start a transaction on the write connection."""

    @abc.abstractmethod
    def _commit(self) -> None:
        """Commit the write connection's transaction; a refusal raises the driver's error
        (a COMMIT can fail: a key committed first by another connection)."""

    @abc.abstractmethod
    def _rollback(self) -> None:
        """Roll back the write connection's transaction, tolerating one the database has
        already ended."""

    @abc.abstractmethod
    def _translate(
        self, exc: BaseException, *, table: str | None, run_id: str | None
    ) -> StorageError:
        """The library error for a driver error that needs no further diagnosis."""

    def _sql(self, key: Hashable, build: Callable[[], exp.Expression]) -> str:
        """The SQL of a statement the write path runs again and again, generated once.

        Generating SQL from a sqlglot expression costs about 2 ms, as much as inserting a
        100-row batch; enrichers write thousands of such batches.
        """
        sql = self._statements.get(key)
        if sql is None:
            sql = self._statements[key] = ddl.to_sql(build(), self.dialect)
        return sql

    @abc.abstractmethod
    def execute(self, statement: exp.Expression | str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one statement on the write connection and return its result as Arrow.

        ``?`` placeholders take ``params`` in order; a statement without a result set returns
        one row with the count of rows it changed. Driver errors come out translated.
        """

    @abc.abstractmethod
    def _reflect(self) -> dict[str, ReflectedTable]:
        """What the database holds for the declared tables (and the layout table)."""

    @abc.abstractmethod
    def _batch_view(self, batch: pa.Table) -> contextlib.AbstractContextManager[ir.Table]:
        """An Ibis table over a conformed batch, for Pandera to validate inside DuckDB."""

    @abc.abstractmethod
    def _load_chunk(
        self,
        schema: TableSchema,
        batch: pa.Table,
        *,
        present: list[str],
        on_conflict: OnConflict,
        run_id: str | None,
    ) -> int:
        """Insert one conformed, validated batch inside the open transaction.

        Args:
            schema: The table.
            batch: The rows, conformed to the declaration (every column, declared types).
            present: The columns the writer handed (an update sets only those).
            on_conflict: What a repeated key does.
            run_id: The writing run.

        Returns:
            The rows inserted or updated.
        """

    @abc.abstractmethod
    def _diagnose(
        self, exc: BaseException, schema: TableSchema, chunk: pa.Table | None, *, run_id: str | None
    ) -> StorageError:
        """The library error for a driver error of the write path, after the rollback.

        Args:
            exc: What the driver raised (one of :attr:`driver_errors`).
            schema: The table written to.
            chunk: The raw chunk whose load failed (None if the failure came before one).
            run_id: The writing run.
        """

    @abc.abstractmethod
    def backend(self) -> Any:
        """This thread's Ibis backend over the store, for reads and ad-hoc expressions."""

    @abc.abstractmethod
    def _close_connections(self) -> None:
        """Close every connection; called once."""

    @abc.abstractmethod
    def _delete_keys(self, schema: TableSchema, keys: pa.Table) -> int:
        """Delete the rows whose primary key ``keys`` lists, in one transaction of its own;
        a refusal because rows still reference them lists every such row."""

    def _finish_loads(self) -> None:  # noqa: B027 - a hook, empty for foreground loads
        """Wait for chunks that ``_load_chunk`` still loads in the background, raising the
        driver's error of a refused one; a backend that loads in the foreground has none."""

    def _mismatch_hints(self) -> list[str]:
        """Lines added to a SchemaMismatchError (how to upgrade what the database holds)."""
        return []

    @abc.abstractmethod
    def _lock_layout(self) -> None:
        """Keep other processes from migrating at the same time (inside the migration's
        transaction)."""

    # --- opening ---------------------------------------------------------------------------

    def _open(self) -> None:
        """Migrate (or check, read-only) and recover crashed runs; close on failure."""
        try:
            self.migration = self._migrate()
            if not self.read_only:
                RunStore(self).recover_crashed_runs(heartbeat_timeout=self.heartbeat_timeout)
        except BaseException:
            self._closed = True
            self._close_connections()
            raise

    def _stored_version(self, reflected: dict[str, ReflectedTable]) -> int | None:
        if LAYOUT_TABLE.name not in reflected:
            return None
        query = exp.select(exp.Max(this=ddl.column("version"))).from_(
            statements.table_ref(LAYOUT_TABLE.name)
        )
        found = self.execute(query)
        value = found.column(0)[0].as_py() if found.num_rows else None
        return None if value is None else int(value)

    def _plan(self) -> tuple[MigrationPlan, int | None]:
        reflected = self._reflect()
        stored = self._stored_version(reflected)
        plan = plan_migration(self.catalog, reflected, stored_version=stored)
        if plan.differences:
            raise SchemaMismatchError([*plan.differences, *self._mismatch_hints()])
        return plan, stored

    def _migrate(self) -> MigrationPlan:
        plan, stored = self._plan()
        if self.read_only:
            if plan.create or plan.add_columns:
                raise SchemaMismatchError(
                    [f"read-only store needs migration: {line}" for line in plan.describe()]
                    + ["open it once for writing (egregora-db migrate) to upgrade it"]
                )
            return plan
        if plan.is_empty and stored == LAYOUT_VERSION:
            return plan
        with self.transaction():
            self._lock_layout()
            # Another process may have migrated while this one waited for the lock.
            plan, stored = self._plan()
            for table in plan.create:
                self.execute(ddl.create_table(table, self.dialect))
            for table, name in plan.add_columns:
                self.execute(ddl.add_column(table, name, self.dialect))
            if stored != LAYOUT_VERSION:
                row = pa.table(
                    {
                        "version": [LAYOUT_VERSION],
                        "applied_at": pa.array([utc_now()], pa.timestamp("us", tz="UTC")),
                        "description": ["; ".join(plan.describe()) or "layout recorded"],
                        "package_version": [package_version()],
                    },
                    schema=LAYOUT_TABLE.to_arrow(),
                )
                try:
                    self._load_chunk(
                        LAYOUT_TABLE, row, present=row.column_names, on_conflict="error",
                        run_id=None,
                    )
                except self.driver_errors as exc:
                    raise self._diagnose(exc, LAYOUT_TABLE, None, run_id=None) from exc
        return plan

    # --- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction on the write connection; ROLLBACK on any error.

        The rollback is explicit: after a failed statement DuckDB's ``COMMIT`` reports
        success and silently drops everything (measured on duckdb 1.5.6).
        """
        with self.lock:
            self._check_open()
            self._begin()
            try:
                yield
                self._commit()
            except self.driver_errors as exc:
                self._rollback()
                raise self._translate(exc, table=None, run_id=None) from exc
            except BaseException:
                self._rollback()
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionFailedError(f"the store {self.location} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(
                f"{self.location} was opened read-only; open it without read_only=True to write"
            )

    # --- the public API --------------------------------------------------------------------

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
            UnknownRunError, RunNotRunningError: the run is unknown or not RUNNING (both
                LineageErrors, and a RunNotFoundError and a RunStateError respectively).
            ReadOnlyError, TableNotFoundError.
        """
        schema = self.catalog[table]
        if on_conflict not in ON_CONFLICT_CHOICES:
            raise ValidationError(
                f"on_conflict must be one of {ON_CONFLICT_CHOICES}, not {on_conflict!r}",
                table=table,
            )
        run_key = None if run_id is None else canonical_uuid_text(run_id)
        reader = to_reader(data, table=table)
        # Rows already in memory gain nothing from chunks where one insert is cheaper.
        whole = self.whole_tables and isinstance(data, pa.Table | pa.RecordBatch)
        max_rows = max(self.chunk_rows, data.num_rows) if whole else self.chunk_rows
        with self.lock:
            self._check_writable()
            started_at = self._check_run(schema, run_key)
            return self._write_locked(
                schema, reader, run_key, started_at, on_conflict, max_rows=max_rows
            )

    def _check_run(self, schema: TableSchema, run_id: str | None) -> datetime | None:
        if not schema.lineage:
            return None
        if run_id is None:
            raise LineageError(
                f"`{schema.name}` records lineage: pass run_id= of a RUNNING run",
                table=schema.name,
                columns=[RUN_ID],
                failures=failures_table([Failure(RUN_ID, "not_null", None, None)]),
            )
        try:
            uuid.UUID(run_id)
        except ValueError:
            # Before any query: a text that is no UUID (a lone surrogate, a NUL) may not even
            # be sendable to the database.
            shown = run_id.encode("utf-8", "backslashreplace").decode()
            raise UnknownRunError(
                f"{shown!r} is not a run id (expected a UUID) for `{schema.name}`",
                table=schema.name, columns=[RUN_ID], run_id=shown,
                failures=failures_table([Failure(RUN_ID, "run_exists", shown, None)]),
            ) from None
        query = self._sql(
            "run_state",
            lambda: statements.select_where_equal(RUNS_TABLE, ["status", "started_at"], [RUN_ID]),
        )
        # A lineage check like the per-row ones, but every row of the batch fails it: the
        # errors are LineageErrors (and RunNotFoundError / RunStateError) with one failure.
        found = self.execute(query, [run_id]).to_pylist()
        if not found:
            raise UnknownRunError(
                f"no run {run_id} to write `{schema.name}` with: start one with "
                "RunStore.start_run() first",
                table=schema.name, columns=[RUN_ID], run_id=run_id,
                failures=failures_table([Failure(RUN_ID, "run_exists", run_id, None)]),
            )
        status, started_at = found[0]["status"], found[0]["started_at"]
        if status != RunStatus.RUNNING:
            raise RunNotRunningError(
                f"run {run_id} is {status}; only a RUNNING run can write to `{schema.name}`",
                table=schema.name, columns=[RUN_ID], run_id=run_id,
                failures=failures_table([Failure(RUN_ID, "run_is_running", status, None)]),
            )
        return started_at  # type: ignore[no-any-return]

    def _write_locked(
        self,
        schema: TableSchema,
        reader: pa.RecordBatchReader,
        run_id: str | None,
        started_at: datetime | None,
        on_conflict: OnConflict,
        *,
        max_rows: int,
    ) -> int:
        written = 0
        chunk: pa.Table | None = None
        self._begin()
        try:
            for chunk in chunks(reader, max_rows=max_rows):
                # Conformed even when empty: an empty batch of the wrong shape is refused.
                batch = conform(schema, chunk, run_id=run_id)
                if batch.num_rows == 0:
                    continue
                with self._batch_view(batch) as view:
                    validate_batch(view, schema, run_id=run_id, run_started_at=started_at)
                written += self._load_chunk(
                    schema, batch, present=chunk.column_names, on_conflict=on_conflict,
                    run_id=run_id,
                )
                # Not held while the next chunk is read: a stream holds one chunk at a time
                # (the last raw chunk is kept for the diagnosis of a failed COMMIT).
                del batch
            self._finish_loads()
            if schema.lineage and run_id is not None:
                # Never before the start: a clock stepped back would break the runs CHECK
                # (heartbeat_at >= started_at) and fail a write that is otherwise sound.
                now = utc_now() if started_at is None else max(utc_now(), started_at)
                heartbeat = self._sql(
                    "heartbeat",
                    lambda: statements.update_where_equal(RUNS_TABLE, ["heartbeat_at"], [RUN_ID]),
                )
                self.execute(heartbeat, [now, run_id])
            # Inside the try: a COMMIT can fail too, and must be diagnosed.
            self._commit()
        except StorageError:
            self._rollback()
            raise
        except self.driver_errors as exc:
            self._rollback()
            raise self._diagnose(exc, schema, chunk, run_id=run_id) from exc
        except BaseException:
            self._rollback()
            raise
        return written

    def delete_rows(self, table: str, keys: Sequence[Any], /) -> int:
        """Delete the rows of a declared table whose primary key is in ``keys``, all or
        nothing, in one statement of its own transaction.

        Neither backend cascades (PostgreSQL's foreign keys are ON DELETE RESTRICT; DuckDB
        has no cascade and refuses a parent delete in the transaction that deleted its
        children): delete children first, in an earlier call.

        Args:
            table: The table's name.
            keys: Primary-key values (tuples for a composite key); a key that names no row
                deletes nothing.

        Returns:
            The number of rows deleted.

        Raises:
            ForeignKeyViolationError: rows of other tables still reference some of the rows;
                nothing was deleted. ``failures`` has one row per referencing row:
                ``column`` is the child table and its reference (``annotations.document_id``),
                ``key`` the child row's key and ``value`` the reference.
            ValidationError: a key does not fit the primary key's declared type.
            ReadOnlyError, TableNotFoundError.
        """
        schema = self.catalog[table]
        batch = key_batch(schema, keys)
        with self.lock:
            self._check_writable()
            return self._delete_keys(schema, batch)

    def table(self, name: str) -> ir.Table:
        """An Ibis expression over a table, for reads from this thread.

        Each thread reads through a connection of its own (an Ibis backend shared by threads
        is not safe); reads see committed data.
        """
        if name != LAYOUT_TABLE.name:
            self.catalog[name]
        return self.backend().table(name)

    def to_arrow(self, expr: ir.Expr) -> pa.Table:
        """Execute an Ibis expression of this store and return an Arrow table."""
        return self.backend().to_pyarrow(expr)

    def verify(self) -> IntegrityReport:
        """The integrity audit: orphans, rows of missing or unfinished runs, unfinished
        purges, duplicate keys. An empty report means the store is sound."""
        return audit(self)

    def close(self) -> None:
        """Close every connection of the manager; idempotent."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            self._close_connections()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"{type(self).__name__}({self.location!r}, {mode})"
