"""DuckDBStorageManager: the embedded store, the default backend.

The write path, migration, reads and ``verify`` are shared by every backend and live in
:class:`~egregora.database.backends.base.StorageManager`; this module gives them DuckDB's part:
its connection (one writing process per file), the insert of a chunk of Arrow rows in one
statement, and the translation and diagnosis of DuckDB's errors.

Facts that shape this module (measured on duckdb 1.5.6):

- An Ibis backend shared by two threads is not safe, so the write connection is used under a
  lock, and reads go through a per-thread cursor (a connection of its own to the same
  database) wrapped in its own Ibis backend.
- After a failed statement inside a transaction, ``COMMIT`` reports success and silently
  drops everything; the write path rolls back explicitly on any error.
- A violating INSERT names only the first bad key, so the error is diagnosed after the
  rollback with anti-joins that list every offending row. The happy path pays nothing.
- One process per file: another process's lock surfaces as :class:`StoreLockedError` with the
  holder's PID, after retrying for ``lock_timeout`` seconds.
- An Arrow batch ``register``-ed on a connection stays referenced until that connection's
  transaction ends, ``unregister`` or not (the dropped view is a catalog entry kept for the
  transaction): a streamed write would hold every chunk it inserted until its COMMIT, about
  1.6 GB per million documents. So nothing is registered on the write connection inside a
  write. The insert reads the chunk through DuckDB's replacement scan of a local variable of
  the calling frame, which references it for that statement only, and validation reads it on
  a cursor of its own in autocommit, where the registration ends with the statement.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import ibis
import pyarrow as pa

import duckdb
from egregora.database import ddl, statements
from egregora.database.backends.base import StorageManager
from egregora.database.backends.diagnosis import refuse_moved_references
from egregora.database.backends.duckdb.connection import open_file
from egregora.database.backends.duckdb.errors import (
    diagnose_delete_failure,
    diagnose_write_failure,
    translate_duckdb_error,
)
from egregora.database.backends.duckdb.legacy import upgrade_hint
from egregora.database.backends.duckdb.memory import MemoryBudget
from egregora.database.batches import DEFAULT_CHUNK_ROWS
from egregora.database.errors import ConnectionFailedError, SchemaMismatchError, StorageError
from egregora.database.migrations import ReflectedForeignKey, ReflectedTable, canonical_check
from egregora.database.model import Catalog, TableSchema
from egregora.database.relations import bound_table
from egregora.database.schemas import CATALOG, LAYOUT_TABLE
from egregora.database.statements import OnConflict

if TYPE_CHECKING:
    import ibis.expr.types as ir
    from sqlglot import exp

__all__ = ["DuckDBStorageManager"]

_BATCH_VIEW = "egregora_incoming_batch"

#: DuckDB's buffer memory for a writable store file (see ``memory_limit``).
DEFAULT_MEMORY_LIMIT = "512MB"

#: DuckDB memory a write needs per row it inserts, whatever the cache: the transaction's own
#: primary- and foreign-key indexes while inserting (~32 B per row of ``documents``), and at
#: COMMIT their merge into the table's. Measured on 10M keyed rows in one transaction: 320 MB
#: of index before COMMIT; the COMMIT failed under a 450 MB limit and passed under 700 MB.
_INSERT_BYTES_PER_ROW = 40
_COMMIT_BYTES_PER_ROW = 72
_LIMIT_STEP = 64 << 20


class DuckDBStorageManager(StorageManager):
    """The embedded store: one DuckDB file (or memory), owned by this manager.

    Args:
        path: A database file, or ``":memory:"``.
        read_only: Open for readers (notebooks): no migration, every write refused.
        lock_timeout: Seconds to keep retrying while another process holds the file.
        catalog: The declared tables (egregora's by default; extend it with your own).
        chunk_rows: Rows per insert of a streamed write (a ``RecordBatchReader`` or an Arrow
            C stream); bounds memory of a stream. A table or batch handed whole is inserted
            in one statement.
        memory_limit: DuckDB's buffer memory for this database file (``"512MB"``, ``"4GB"``),
            set while a writer holds it; ``None`` leaves it as it is (DuckDB's default: 80% of
            RAM). Managers of one file in one process share DuckDB's database and so its
            limit: the first to open the file sets it.
            A write's uncommitted rows are written to the file as they arrive and their
            blocks stay cached up to this limit, so without one a long streamed write grows
            the process by ~0.65 GB per million documents. A write of millions of rows
            raises it for its own duration to what its key indexes need (~40 B per row,
            ~72 B at COMMIT), which no cache can give back. Not applied to ``":memory:"``
            stores (their data has nowhere else to go) nor to read-only ones.
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

    dialect = "duckdb"
    driver_errors: ClassVar[tuple[type[BaseException], ...]] = (duckdb.Error,)
    whole_tables: ClassVar[bool] = True

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        read_only: bool = False,
        lock_timeout: float = 0.0,
        catalog: Catalog = CATALOG,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        heartbeat_timeout: timedelta = timedelta(minutes=10),
        memory_limit: str | None = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        super().__init__(
            read_only=read_only,
            catalog=catalog,
            chunk_rows=chunk_rows,
            heartbeat_timeout=heartbeat_timeout,
        )
        self.path = str(path)
        self._cursors: weakref.WeakSet[Any] = weakref.WeakSet()
        self._transaction_rows = 0
        if read_only and self.path == ":memory:":
            raise ConnectionFailedError("an in-memory store cannot be opened read-only")
        if read_only and not Path(self.path).exists():
            raise ConnectionFailedError(f"no store at {self.path} to open read-only")
        self._con = open_file(self.path, read_only=read_only, lock_timeout=lock_timeout)
        self._refuse_reserved_names()
        managed = memory_limit is not None and not read_only and self.path != ":memory:"
        try:
            self._memory = MemoryBudget(self._con, self.path, memory_limit if managed else None)
        except ValueError:
            self._con.close()
            raise
        self._ibis = ibis.duckdb.from_connection(self._con)
        # Ibis turns replacement scans off; the insert reads its chunk through one (see the
        # module's notes). Only the frame that calls execute is searched, and the library's
        # statements on this connection name declared tables only.
        self._con.execute("SET python_enable_replacements = true")
        self._con.execute("SET python_scan_all_frames = false")
        # Validation's connection: a batch registered here is released when its statement
        # ends, not when the write's transaction does (see the module's notes).
        self._check_con = self._con.cursor()
        self._check_ibis = ibis.duckdb.from_connection(self._check_con)
        self._open()

    @property
    def location(self) -> str:
        """The database file (or ``:memory:``)."""
        return self.path

    # --- opening -----------------------------------------------------------------------

    def _refuse_reserved_names(self) -> None:
        """Refuse a store holding a relation the insert's replacement scan would read instead
        of the batch being written."""
        found = self._con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE lower(table_name) = ? "
            "UNION ALL SELECT view_name FROM duckdb_views() WHERE lower(view_name) = ?",
            [_BATCH_VIEW, _BATCH_VIEW],
        ).fetchall()
        if found:
            self._con.close()
            raise SchemaMismatchError(
                [f"a table or view named {found[0][0]}: the library's name for the batch it "
                 "writes, which this relation would hide; drop or rename it"],
                table=str(found[0][0]),
            )

    def _fit_memory_limit(
        self, bytes_per_row: int, *, at_commit: bool = False, chunk_bytes: int = 0
    ) -> None:
        """Ask for the memory_limit this transaction needs.

        While inserting, the indexes may take half the base limit before it grows (about 6M
        rows for the default); beyond, the ask is what they need plus that half, for the
        cache, plus the Arrow size of a table handed whole: a caller who hands 1.6 GB of rows
        at once has that memory, and DuckDB inserts them ~20% faster when it may cache as
        much. At COMMIT the cache gives way
        to the indexes: what they need plus one step. Asks are in 64 MiB steps and only grow;
        what the limit gives, the cache may fill, until the COMMIT takes it.
        """
        base = self._memory.base
        if base is None:
            return
        slack = _LIMIT_STEP if at_commit else base // 2
        need = bytes_per_row * self._transaction_rows + slack + chunk_bytes
        if need > base:
            self._memory.ask(-(-need // _LIMIT_STEP) * _LIMIT_STEP)

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

    def _mismatch_hints(self) -> list[str]:
        return list(upgrade_hint(self._con, self.path))

    # --- transactions and raw execution (library-internal) -----------------------------

    def _lock_layout(self) -> None:
        """Nothing: DuckDB admits one writing process per file, which then migrates alone."""

    def _begin(self) -> None:
        self._transaction_rows = 0
        self._con.begin()

    def _commit(self) -> None:
        try:
            self._fit_memory_limit(_COMMIT_BYTES_PER_ROW, at_commit=True)
            self._con.commit()
        finally:
            self._memory.release()

    def _translate(
        self, exc: BaseException, *, table: str | None, run_id: str | None
    ) -> StorageError:
        assert isinstance(exc, duckdb.Error)
        return translate_duckdb_error(exc, table=table, run_id=run_id)

    def _rollback(self) -> None:
        """ROLLBACK, tolerating a transaction that DuckDB has already ended.

        A COMMIT can fail (another connection to the same database committed the same key
        first), and DuckDB then ends the transaction itself; any other failure propagates.
        """
        try:
            self._con.rollback()
        except duckdb.TransactionException as exc:
            if "no transaction is active" not in str(exc):
                raise
        finally:
            self._memory.release()

    def execute(self, statement: exp.Expression | str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one statement on the write connection and return its result as Arrow."""
        sql = statement if isinstance(statement, str) else ddl.to_sql(statement)
        with self.lock:
            self._check_open()
            try:
                return self._con.execute(sql, list(params)).to_arrow_table()
            except duckdb.Error as exc:
                raise translate_duckdb_error(exc, table=None, run_id=None) from exc

    @contextlib.contextmanager
    def _batch_view(self, batch: pa.Table) -> Iterator[ir.Table]:
        # On the validation cursor, in autocommit: validation reads only the batch.
        self._check_con.register(_BATCH_VIEW, batch)
        try:
            yield bound_table(self._check_ibis, _BATCH_VIEW, batch.schema)
        finally:
            self._check_con.unregister(_BATCH_VIEW)

    def _fetch_with_batch(self, statement: exp.Expression | str, batch: pa.Table) -> pa.Table:
        """Run ``statement`` on the write connection, its batch relation reading ``batch``.

        DuckDB resolves the relation's name (``egregora_incoming_batch``), found in no
        catalog, to the local variable of that name in this frame (its replacement scan):
        the batch is referenced for this statement only, not until the transaction ends.
        """
        sql = statement if isinstance(statement, str) else ddl.to_sql(statement)
        egregora_incoming_batch = batch  # noqa: F841 - read by name by DuckDB
        return self._con.execute(sql).to_arrow_table()

    def _load_chunk(
        self,
        schema: TableSchema,
        batch: pa.Table,
        *,
        present: list[str],
        on_conflict: OnConflict,
        run_id: str | None,
    ) -> int:
        if on_conflict == "update":
            refuse_moved_references(
                lambda query: self._fetch_with_batch(query, batch),
                schema,
                _BATCH_VIEW,
                run_id=run_id,
            )
        self._transaction_rows += batch.num_rows
        # A table handed whole brings its memory; a stream's chunks ask for none: a stream
        # is bounded by its chunk, not by what its chunks add up to.
        whole = batch.num_rows > self.chunk_rows
        self._fit_memory_limit(_INSERT_BYTES_PER_ROW, chunk_bytes=batch.nbytes if whole else 0)
        insert = self._sql(
            ("insert", schema, on_conflict, tuple(present)),
            lambda: statements.insert_from(
                schema, _BATCH_VIEW, on_conflict=on_conflict, present=present
            ),
        )
        found = self._fetch_with_batch(insert, batch)
        written = int(found.column(0)[0].as_py()) if found.num_rows else 0
        if on_conflict == "error" and written != batch.num_rows:
            # Every row is inserted or the statement fails: anything else means the insert
            # read another relation than the batch (one named like it, in the store).
            raise StorageError(
                f"inserting {batch.num_rows} rows into `{schema.name}` wrote {written}: the "
                f"store holds a relation named {_BATCH_VIEW}, the library's name for the "
                "batch being written; drop or rename it",
                table=schema.name, run_id=run_id,
            )
        return written

    def _diagnose(
        self, exc: BaseException, schema: TableSchema, chunk: pa.Table | None, *, run_id: str | None
    ) -> StorageError:
        assert isinstance(exc, duckdb.Error)
        return diagnose_write_failure(self._con, exc, schema, chunk, run_id=run_id)

    def _delete_keys(self, schema: TableSchema, keys: pa.Table) -> int:
        self._con.register(_BATCH_VIEW, keys)
        try:
            found = self._con.execute(ddl.to_sql(statements.delete_keys(schema, _BATCH_VIEW)))
            row = found.fetchone()
        except duckdb.Error as exc:
            # A failed statement in autocommit is rolled back; diagnose in a fresh one.
            raise diagnose_delete_failure(
                self._con, exc, schema, self.catalog, _BATCH_VIEW
            ) from exc
        finally:
            self._con.unregister(_BATCH_VIEW)
        return int(row[0]) if row else 0

    def backend(self) -> Any:
        """This thread's Ibis backend over the store, for reads and ad-hoc expressions."""
        self._check_open()
        backend = getattr(self._local, "backend", None)
        if backend is None:
            # Under the lock: close() must see every cursor, and none may open after it.
            with self.lock:
                self._check_open()
                cursor = self._con.cursor()
                self._cursors.add(cursor)
            backend = ibis.duckdb.from_connection(cursor)
            self._local.backend = backend
        return backend

    def _close_connections(self) -> None:
        self._memory.close()
        with contextlib.suppress(duckdb.Error):
            self._check_con.close()
        for cursor in list(self._cursors):
            with contextlib.suppress(duckdb.Error):
                cursor.close()
        self._con.close()
