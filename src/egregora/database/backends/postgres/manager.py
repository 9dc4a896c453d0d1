"""PostgresStorageManager: the store on a PostgreSQL server, for many writers at once.

The same tables (DDL in the ``postgres`` dialect, with real ``ON DELETE RESTRICT`` foreign
keys), the same Pandera validation, RunStore and lineage queries as the embedded store;
only connecting, bulk loading and error translation are PostgreSQL's own:

- One write connection per manager, in autocommit with explicit ``BEGIN``/``COMMIT``, used
  under the manager's lock. Reads go through a connection per thread wrapped in an Ibis
  backend. Every connection's ``search_path`` is the manager's ``schema``.
- A chunk is validated in a private in-memory DuckDB (the batch is on the client anyway, and
  Pandera then runs exactly as on the embedded store), then loaded with one binary ``COPY``
  straight into the table (:mod:`~egregora.database.backends.postgres.binary_copy`), inside
  the write's transaction. A chunk's COPY runs on a worker thread while the next chunk is
  conformed and validated (the connection is touched by one thread at a time: everything
  else waits for the COPY).
  ``on_conflict="ignore"``/``"update"`` copy into a temporary table and ``INSERT ... SELECT
  ... ON CONFLICT`` from it.
- PostgreSQL names only the first bad key of a refused COPY: after the ROLLBACK the chunk is
  copied into a temporary table and the same anti-joins as on DuckDB list every missing
  reference or repeated key.
- Many processes may write at once: their transactions touch different keys, and the
  heartbeat of a run is a row of its own. Migration takes an advisory lock, so that
  processes opening a fresh schema together create it once.
- Crash recovery across processes: opening a store marks CRASHED the RUNNING runs whose
  heartbeat is stale, and those of this host whose process is gone; a run of another host
  is judged by its heartbeat alone (a PID means nothing there).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import ibis
import ibis.expr.datatypes as dt
import psycopg
import pyarrow as pa
from ibis.backends.sql.datatypes import PostgresType
from psycopg.types.string import TextLoader
from sqlglot import exp

import duckdb
from egregora.database import ddl, statements
from egregora.database.backends.base import StorageManager
from egregora.database.backends.diagnosis import (
    duckdb_fetch,
    duplicate_error,
    invalid_values_error,
    orphan_error,
    referencing_error,
    refuse_moved_references_error,
)
from egregora.database.backends.postgres import binary_copy
from egregora.database.backends.postgres.errors import (
    first_line,
    redact,
    translate_postgres_error,
)
from egregora.database.batches import DEFAULT_CHUNK_ROWS, conform
from egregora.database.errors import (
    ConnectionFailedError,
    StorageError,
    ValidationError,
    key_text,
)
from egregora.database.migrations import ReflectedForeignKey, ReflectedTable, canonical_check
from egregora.database.model import Catalog, TableSchema
from egregora.database.schemas import CATALOG, LAYOUT_TABLE

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.statements import OnConflict

_STAGING = "egregora_incoming_batch"
_DETAIL_KEY = re.compile(r"Key \((.*)\)=\((.*)\) already exists")
#: Rows encoded per COPY piece: the next piece is encoded while the server takes this one.
_PIECE_ROWS = 25_000

_TABLES = """
SELECT c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
"""
_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND a.attnum > 0
  AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""
_CONSTRAINTS = """
SELECT c.relname, k.contype,
  ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(num, pos)
        JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.num ORDER BY u.pos),
  f.relname,
  ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(num, pos)
        JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.num ORDER BY u.pos),
  pg_get_constraintdef(k.oid)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class f ON f.oid = k.confrelid
WHERE n.nspname = current_schema() AND k.contype IN ('p', 'f', 'c')
"""


def _to_arrow(cursor: psycopg.Cursor[Any]) -> pa.Table:
    if cursor.description is None:
        return pa.table({"Count": pa.array([max(cursor.rowcount, 0)], pa.int64())})
    names = [d.name for d in cursor.description]
    rows = cursor.fetchall()
    columns: list[list[Any]] = [[row[i] for row in rows] for i in range(len(names))]
    return pa.table([pa.array(c) for c in columns], names=names)


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    columns: list[list[Any]] = [c.to_pylist() for c in table.columns]
    return [tuple(row) for row in zip(*columns, strict=True)]


def _reflected_type(type_name: str, not_null: bool) -> dt.DataType:
    dtype = PostgresType.from_string(type_name, nullable=not not_null)
    # Declarations say json; the store keeps jsonb (binary, indexable): the same column.
    return dt.JSON(nullable=dtype.nullable) if isinstance(dtype, dt.JSON) else dtype


class PostgresStorageManager(StorageManager):
    """The store on a PostgreSQL server: the same contract as the embedded DuckDB store.

    Args:
        url: A libpq connection string (``postgresql://user@host:5432/db``).
        schema: The PostgreSQL schema holding the tables; created on first open.
        read_only: Open for readers: no migration, every write refused (and the sessions
            are read-only, so nothing else writes either).
        connect_timeout: Seconds to wait for the server.
        catalog: The declared tables (egregora's by default; extend it with your own).
        chunk_rows: Rows per COPY of a streamed write; bounds memory of a stream.
        heartbeat_timeout: A RUNNING run whose heartbeat is older than this when the store
            is opened is marked CRASHED (runs of dead processes of this host at once).

    Raises:
        ConnectionFailedError: the server cannot be reached or refuses the login.
        SchemaMismatchError: the schema's tables differ from the declaration in a way that
            cannot be migrated; nothing was changed.
    """

    dialect = "postgres"
    driver_errors: ClassVar[tuple[type[BaseException], ...]] = (
        psycopg.Error, binary_copy.InvalidUUIDText,
    )

    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        read_only: bool = False,
        connect_timeout: float = 10.0,
        catalog: Catalog = CATALOG,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        heartbeat_timeout: timedelta = timedelta(minutes=10),
    ) -> None:
        super().__init__(
            read_only=read_only, catalog=catalog, chunk_rows=chunk_rows,
            heartbeat_timeout=heartbeat_timeout,
        )
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self._readers: list[psycopg.Connection[Any]] = []
        self._con = self._connect()
        # The COPY of a chunk runs here while the next chunk is conformed and validated.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="egregora-copy")
        self._pending: Future[int] | None = None
        self._pending_batch: pa.Table | None = None
        self._refused_batch: pa.Table | None = None
        self._validator = duckdb.connect()
        self._validator_ibis = ibis.duckdb.from_connection(self._validator)
        self._open()

    @property
    def location(self) -> str:
        """The server and schema, without the password."""
        return f"{redact(self.url)} (schema {self.schema})"

    # --- connections -----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            con = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
            )
        except psycopg.Error as exc:
            raise ConnectionFailedError(
                f"cannot connect to {redact(self.url)}: {first_line(exc)}"
            ) from exc
        # The library's boundary has uuid and json as text (see model.arrow_type).
        for name in ("uuid", "json", "jsonb"):
            con.adapters.register_loader(name, TextLoader)
        settings = {"search_path": ddl.ident(self.schema), "timezone": exp.Literal.string("UTC")}
        if self.read_only:
            settings["default_transaction_read_only"] = exp.var("on")
        for name, value in settings.items():
            item = exp.SetItem(this=exp.EQ(this=exp.var(name), expression=value))
            con.execute(exp.Set(expressions=[item]).sql("postgres"))
        return con

    def backend(self) -> Any:
        """This thread's Ibis backend over the store, for reads and ad-hoc expressions."""
        self._check_open()
        backend = getattr(self._local, "backend", None)
        if backend is None:
            with self.lock:
                self._check_open()
                con = self._connect()
                self._readers.append(con)
            backend = ibis.postgres.from_connection(con)
            self._local.backend = backend
        return backend

    def _close_connections(self) -> None:
        self._loader.shutdown(wait=True)
        for con in [*self._readers, self._con]:
            with contextlib.suppress(psycopg.Error):
                con.close()
        self._validator.close()

    # --- transactions and execution --------------------------------------------------------

    def _begin(self) -> None:
        self._refused_batch = None
        self._con.execute("BEGIN")

    def _commit(self) -> None:
        self._finish_loads()
        self._con.execute("COMMIT")

    def _rollback(self) -> None:
        # A COPY still running must end before the connection takes another command; its
        # own error, if any, is part of what is being rolled back.
        with contextlib.suppress(*self.driver_errors):
            self._finish_loads()
        # A lost connection has no transaction left to roll back; the error that led here
        # is what the caller needs to see.
        with contextlib.suppress(psycopg.OperationalError):
            self._con.execute("ROLLBACK")

    def _finish_loads(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except BaseException:
            # The diagnosis needs the refused chunk, not the one the write path holds now.
            self._refused_batch = self._pending_batch
            raise
        finally:
            self._pending_batch = None

    def _translate(
        self, exc: BaseException, *, table: str | None, run_id: str | None
    ) -> StorageError:
        if isinstance(exc, binary_copy.InvalidUUIDText):
            return ValidationError(str(exc), table=table or "?", run_id=run_id)
        assert isinstance(exc, psycopg.Error)
        return translate_postgres_error(exc, table=table, run_id=run_id)

    def _run(self, statement: exp.Expression | str, params: Sequence[Any] = ()) -> pa.Table:
        sql = statement if isinstance(statement, str) else ddl.to_sql(statement, "postgres")
        with self._con.cursor() as cursor:
            cursor.execute(sql, list(params) or None)
            return _to_arrow(cursor)

    def execute(self, statement: exp.Expression | str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one statement on the write connection and return its result as Arrow."""
        with self.lock:
            self._check_open()
            try:
                return self._run(statement, params)
            except psycopg.Error as exc:
                raise translate_postgres_error(exc, table=None, run_id=None) from exc

    def _lock_layout(self) -> None:
        key = exp.select(exp.func("pg_advisory_xact_lock", exp.func("hashtext", exp.Placeholder())))
        self.execute(key, [f"egregora-layout:{self.schema}"])
        self.execute(exp.Create(this=exp.Table(this=ddl.ident(self.schema)), kind="SCHEMA",
                                 exists=True))

    def _reflect(self) -> dict[str, ReflectedTable]:
        names = {t.name for t in (LAYOUT_TABLE, *self.catalog.tables)}
        found = {r["relname"] for r in self.execute(_TABLES).to_pylist()} & names
        columns: dict[str, dict[str, dt.DataType]] = {name: {} for name in found}
        for table, column, type_name, not_null in _rows(self.execute(_COLUMNS)):
            if table in found:
                columns[table][column] = _reflected_type(type_name, not_null)
        constraints = [r for r in _rows(self.execute(_CONSTRAINTS)) if r[0] in found]
        reflected = {}
        for name in found:
            mine = [c for c in constraints if c[0] == name]
            pk = next((tuple(c[2]) for c in mine if c[1] == "p"), ())
            fks = frozenset(
                ReflectedForeignKey(tuple(c[2]), c[3], tuple(c[4])) for c in mine if c[1] == "f"
            )
            checks = frozenset(
                canonical_check(c[5].removeprefix("CHECK ").removesuffix(" NOT VALID"), "postgres")
                for c in mine
                if c[1] == "c"
            )
            reflected[name] = ReflectedTable(name, ibis.schema(columns[name]), pk, fks, checks)
        return reflected

    # --- the write path --------------------------------------------------------------------

    @contextlib.contextmanager
    def _batch_view(self, batch: pa.Table) -> Iterator[ir.Table]:
        self._validator.register(_STAGING, batch)
        try:
            yield self._validator_ibis.table(_STAGING)
        finally:
            self._validator.unregister(_STAGING)

    def _copy(self, target: str, columns: ibis.Schema, batch: pa.Table) -> int:
        """One binary COPY of ``batch`` into ``target``, encoding the next piece while the
        server takes the current one (the encoder releases the GIL in Arrow and numpy)."""
        statement = exp.Copy(
            this=exp.Schema(
                this=statements.table_ref(target), expressions=[ddl.ident(c) for c in columns.names]
            ),
            kind=True,
            files=[exp.var("STDIN")],
            params=[exp.CopyParameter(this=exp.var("FORMAT"), expression=exp.var("BINARY"))],
        )
        copy_sql = ddl.to_sql(statement, "postgres")
        pieces = [batch.slice(i, _PIECE_ROWS) for i in range(0, batch.num_rows, _PIECE_ROWS)]
        with ThreadPoolExecutor(1) as pool, self._con.cursor() as cursor:
            pending = pool.submit(binary_copy.encode, columns, pieces[0]) if pieces else None
            with cursor.copy(copy_sql) as copy:
                copy.write(binary_copy.HEADER)
                for i in range(len(pieces)):
                    assert pending is not None
                    encoded = pending.result()
                    if i + 1 < len(pieces):
                        pending = pool.submit(binary_copy.encode, columns, pieces[i + 1])
                    copy.write(encoded)
                copy.write(binary_copy.TRAILER)
            return max(cursor.rowcount, 0)

    @staticmethod
    def _staging_table(columns: ibis.Schema) -> exp.Create:
        definitions = [
            exp.ColumnDef(
                this=ddl.ident(name),
                kind=ddl.column_type(dtype.copy(nullable=True), "postgres"),
            )
            for name, dtype in columns.items()
        ]
        return exp.Create(
            this=exp.Schema(this=statements.table_ref(_STAGING), expressions=definitions),
            kind="TABLE",
            properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
        )

    def _load_chunk(
        self,
        schema: TableSchema,
        batch: pa.Table,
        *,
        present: list[str],
        on_conflict: OnConflict,
        run_id: str | None,
    ) -> int:
        self._finish_loads()
        if on_conflict == "error":
            # COPY inserts every row or fails: the count is known before it ends.
            self._pending_batch = batch
            self._pending = self._loader.submit(self._copy, schema.name, schema.schema, batch)
            return int(batch.num_rows)
        self._run(self._staging_table(schema.schema))
        self._copy(_STAGING, schema.schema, batch)
        if on_conflict == "update":
            self._refuse_moved_references(schema, run_id)
        insert = statements.insert_from(
            schema, _STAGING, on_conflict=on_conflict, present=present, dialect="postgres"
        )
        done = self._run(insert)
        self._run(exp.Drop(this=statements.table_ref(_STAGING), kind="TABLE"))
        return int(done.column(0)[0].as_py())

    def _refuse_moved_references(self, schema: TableSchema, run_id: str | None) -> None:
        found = self._run(statements.changed_references(schema, _STAGING))
        if found.num_rows:
            raise refuse_moved_references_error(schema, found, run_id=run_id)

    @contextlib.contextmanager
    def _staged(self, columns: ibis.Schema, batch: pa.Table) -> Iterator[None]:
        """The batch in a temporary table, in a transaction that is rolled back after."""
        self._begin()
        try:
            self._run(self._staging_table(columns))
            self._copy(_STAGING, columns, batch)
            yield
        finally:
            self._rollback()

    def _delete_keys(self, schema: TableSchema, keys: pa.Table) -> int:
        columns = ibis.schema({c: schema.schema[c] for c in schema.primary_key})
        self._begin()
        try:
            self._run(self._staging_table(columns))
            self._copy(_STAGING, columns, keys)
            done = self._run(statements.delete_keys(schema, _STAGING))
            self._run(exp.Drop(this=statements.table_ref(_STAGING), kind="TABLE"))
            self._commit()
        except binary_copy.InvalidUUIDText as exc:
            self._rollback()
            raise ValidationError(str(exc), table=schema.name, columns=schema.primary_key) from exc
        except psycopg.Error as exc:
            self._rollback()
            plain = translate_postgres_error(exc, table=schema.name, run_id=None)
            if exc.sqlstate != "23503":
                raise plain from exc
            try:
                with self._staged(columns, keys):
                    found = referencing_error(self._run, schema, self.catalog, _STAGING)
            except psycopg.Error:
                found = None
            raise (found or plain) from exc
        except BaseException:
            self._rollback()
            raise
        return int(done.column(0)[0].as_py())

    def _diagnose(
        self, exc: BaseException, schema: TableSchema, chunk: pa.Table | None, *, run_id: str | None
    ) -> StorageError:
        plain: StorageError
        if isinstance(exc, binary_copy.InvalidUUIDText):
            state, plain = "22P02", ValidationError(str(exc), table=schema.name, run_id=run_id)
        else:
            assert isinstance(exc, psycopg.Error)
            state = exc.sqlstate or ""
            plain = translate_postgres_error(exc, table=schema.name, run_id=run_id)
        refused, self._refused_batch = self._refused_batch, None
        if refused is None and chunk is not None:
            refused = conform(schema, chunk, run_id=run_id)
        if refused is None or (state not in {"23503", "23505"} and not state.startswith("22")):
            return plain
        batch = refused
        try:
            if state.startswith("22"):
                # uuid and json texts are checked where the batch is, in the private DuckDB.
                with self._batch_view(batch):
                    return invalid_values_error(
                        duckdb_fetch(self._validator), schema, _STAGING, run_id=run_id,
                        text=first_line(exc),
                    )
            with self._staged(schema.schema, batch):
                if state == "23503" or not isinstance(exc, psycopg.Error):
                    return orphan_error(self._run, schema, _STAGING, run_id=run_id) or plain
                return duplicate_error(
                    self._run, schema, _STAGING, run_id=run_id,
                    message_keys=self._detail_keys(schema, exc),
                )
        except (psycopg.Error, duckdb.Error):
            # The diagnosis only adds detail: if it fails, report what PostgreSQL said.
            return plain

    @staticmethod
    def _detail_keys(schema: TableSchema, exc: psycopg.Error) -> list[str]:
        match = _DETAIL_KEY.search(exc.diag.message_detail or "")
        if match is None:
            return []
        names, values = match.group(1).split(", "), match.group(2).split(", ")
        if len(names) != len(values):
            return [f"{match.group(1)}={match.group(2)!r}"]
        return [key_text(schema.primary_key, dict(zip(names, values, strict=True)))]

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"PostgresStorageManager({redact(self.url)!r}, schema={self.schema!r}, {mode})"
