"""DuckDB's errors translated into the library's, with every offending row.

DuckDB names only the first bad key of a refused INSERT. After the write path has rolled
back, :func:`diagnose_write_failure` re-examines the failing chunk with anti-joins (about
30 ms for 100k rows, DESIGN §3) and lists every missing reference or repeated key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import duckdb
import ibis.expr.datatypes as dt
import pyarrow as pa
from sqlglot import exp

from egregora.database import ddl, statements
from egregora.database.batches import conform, failures_table
from egregora.database.errors import (
    ConstraintViolationError,
    DiskFullError,
    DuplicateKeyError,
    ForeignKeyViolationError,
    StorageError,
    ValidationError,
)
from egregora.database.model import RUN_ID, Catalog, TableSchema

_SCRATCH_VIEW = "egregora_failed_batch"
_QUOTED_KEY = re.compile(r'key "([^"]*)"')
#: How the operating system's refusals of a write read in DuckDB's messages (ENOSPC, EFBIG,
#: EDQUOT).
_DISK_FULL = ("no space left on device", "file too large", "disk quota exceeded")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_constraint(exc: duckdb.Error) -> bool:
    # A key committed first by another connection to the same database surfaces at COMMIT,
    # as a TransactionException ("Failed to commit: PRIMARY KEY or UNIQUE constraint ...").
    if isinstance(exc, duckdb.TransactionException):
        return "constraint" in str(exc).lower()
    return isinstance(exc, duckdb.ConstraintException)


def translate_duckdb_error(
    exc: duckdb.Error, *, table: str | None, run_id: str | None
) -> StorageError:
    """The library error for a DuckDB error that needs no further diagnosis."""
    text = _first_line(exc)
    if _is_constraint(exc):
        kind: type[ConstraintViolationError] = ConstraintViolationError
        if "foreign key" in text.lower():
            kind = ForeignKeyViolationError
        elif "duplicate key" in text.lower():
            kind = DuplicateKeyError
        return kind(
            f"the database refused the change to `{table or '?'}`: {text}",
            table=table or "?",
            run_id=run_id,
            examples=_QUOTED_KEY.findall(text),
        )
    if isinstance(exc, duckdb.ConversionException):
        return ValidationError(f"a value could not be converted: {text}", table=table or "?")
    io_failure = isinstance(
        exc, (duckdb.IOException, duckdb.TransactionException, duckdb.FatalException)
    )
    if io_failure and any(cause in text.lower() for cause in _DISK_FULL):
        then = (
            "DuckDB has invalidated the database: close the store, free space and open it again"
            if isinstance(exc, duckdb.FatalException)
            else "free space and write again"
        )
        return DiskFullError(
            f"the disk refused a write{f' to `{table}`' if table else ''}: {text}. Nothing of "
            f"this call was written and what was committed before it is intact; {then}",
            table=table,
            run_id=run_id,
        )
    if isinstance(exc, duckdb.OutOfMemoryException) or "failed to pin block" in text.lower():
        return StorageError(
            f"DuckDB ran out of memory{f' writing `{table}`' if table else ''}: {text}. Nothing "
            "was written. Open the store with a larger memory_limit= (DuckDBStorageManager), "
            "or write the rows in several calls",
            table=table,
            run_id=run_id,
        )
    return StorageError(f"DuckDB failed: {text}", table=table, run_id=run_id)


def key_text(schema: TableSchema, row: dict[str, Any]) -> str:
    """A row's primary key as ``id='…'`` text."""
    return ", ".join(f"{c}={str(row[c])!r}" for c in schema.primary_key if c in row)


#: Runs one query of a diagnosis where the failed chunk is, and returns its rows as Arrow.
Fetch = Callable[[exp.Expression], pa.Table]


def _duckdb_fetch(con: duckdb.DuckDBPyConnection) -> Fetch:
    return lambda query: con.execute(ddl.to_sql(query)).to_arrow_table()


def orphan_error(
    fetch: Fetch, schema: TableSchema, source: str, *, run_id: str | None
) -> StorageError | None:
    """Every row of ``source`` (a refused chunk shaped like ``schema``) whose reference is
    missing, as one error; None when there is none. Shared by every backend."""
    # One failure per offending row (its key, the missing reference); the message shows each
    # missing reference once, however many rows point at it.
    rows: list[tuple[str, str, str | None, str | None]] = []
    missing: dict[str, None] = {}
    columns: list[str] = []
    parents: list[str] = []
    for fk in schema.foreign_keys:
        found = fetch(statements.orphans(schema, fk, source)).to_pylist()
        for row in found:
            shown = ", ".join(str(row[c]) for c in fk.columns)
            rows.append((", ".join(fk.columns), "foreign_key", shown, key_text(schema, row)))
            missing[", ".join(f"{c}={str(row[c])!r}" for c in fk.columns)] = None
        if found:
            columns.extend(fk.columns)
            parents.append(f"`{fk.ref_table}`.`{', '.join(fk.ref_columns)}`")
    if not rows:
        return None
    return ForeignKeyViolationError(
        f"{len(rows)} row{'s' if len(rows) != 1 else ''} of `{schema.name}` reference missing "
        f"{' and '.join(parents)}",
        table=schema.name,
        columns=columns,
        run_id=run_id,
        failures=failures_table(rows),
        examples=list(missing),
        total=len(missing),
    )


def _key_from_message(schema: TableSchema, quoted: str) -> str:
    """The key DuckDB quotes in a duplicate-key message, as :func:`key_text` writes it.

    DuckDB writes ``"id: 0193…"`` against stored rows but only ``"0193…"`` against rows of
    the same transaction; a value that itself holds ", " is shown as DuckDB wrote it.
    """
    parts = quoted.split(", ")
    named = [part.partition(": ") for part in parts]
    if len(parts) == len(schema.primary_key) and all(
        sep and name == col for (name, sep, _), col in zip(named, schema.primary_key, strict=True)
    ):
        return key_text(schema, {name: value for name, _, value in named})
    if len(parts) == len(schema.primary_key):
        return key_text(schema, dict(zip(schema.primary_key, parts, strict=True)))
    return quoted


def duplicate_error(
    fetch: Fetch,
    schema: TableSchema,
    source: str,
    *,
    run_id: str | None,
    message_keys: list[str],
    message_where: str = "already written earlier in this call",
) -> StorageError:
    """Every key of ``source`` (a refused chunk) that ``schema`` already holds, as one error.

    When no stored row repeats a key, the repeat is of a row written earlier in the same call
    (another chunk of a stream), which the rollback removed again: ``message_keys``, the keys
    the database's own message names (written as :func:`key_text` writes them), are reported,
    with ``message_where`` saying where the repeated row came from.
    """
    found = fetch(statements.existing_keys(schema, source))
    keys = [key_text(schema, r) for r in found.to_pylist()]
    where = "already stored"
    if not keys:
        keys = message_keys
        where = message_where
    rows: list[tuple[str, str, str | None, str | None]] = [
        (", ".join(schema.primary_key), "duplicate_key", None, k) for k in keys
    ]
    return DuplicateKeyError(
        f"{len(keys)} row{'s' if len(keys) != 1 else ''} of `{schema.name}` repeat"
        f"{'s' if len(keys) == 1 else ''} a primary key {where}"
        " (use on_conflict='ignore' or 'update' to allow it)",
        table=schema.name,
        columns=schema.primary_key,
        run_id=run_id,
        failures=failures_table(rows),
        examples=keys,
        total=len(keys),
    )


def _invalid_values(name: str, dtype: dt.DataType) -> tuple[exp.Expression, str] | None:
    col = ddl.column(name)
    if isinstance(dtype, dt.UUID):
        bad: exp.Expression = exp.Is(
            this=exp.TryCast(this=col, to=exp.DataType.build("UUID")), expression=exp.Null()
        )
        return bad, "uuid_text"
    if isinstance(dtype, dt.JSON):
        return exp.Not(this=exp.func("json_valid", col)), "json_text"
    return None


def invalid_values_error(
    con: duckdb.DuckDBPyConnection, schema: TableSchema, source: str, *, run_id: str | None,
    text: str,
) -> StorageError:
    """Every uuid or json text of ``source`` (a refused chunk registered in DuckDB) that is
    not valid for its column, as one error."""
    rows: list[tuple[str, str, str | None, str | None]] = []
    for name, dtype in schema.schema.items():
        test = _invalid_values(name, dtype)
        if test is None:
            continue
        condition, check = test
        query = (
            exp.select(ddl.column(name), *(ddl.column(c) for c in schema.primary_key))
            .from_(statements.table_ref(source))
            .where(exp.and_(exp.Not(this=exp.Is(this=ddl.column(name), expression=exp.Null())),
                            condition))
        )
        for value, *key in con.execute(ddl.to_sql(query)).fetchall():
            row = dict(zip(schema.primary_key, key, strict=True))
            rows.append((name, check, str(value)[:200], key_text(schema, row)))
    if not rows:
        return ValidationError(
            f"a value could not be converted: {text}", table=schema.name, run_id=run_id
        )
    return ValidationError(
        f"{len(rows)} values of `{schema.name}` are not valid for their declared type",
        table=schema.name,
        columns=sorted({r[0] for r in rows}),
        run_id=run_id,
        failures=failures_table(rows),
        examples=[f"{c}={v!r} at {k}" for c, _, v, k in rows],
        total=len(rows),
    )


def diagnose_write_failure(
    con: duckdb.DuckDBPyConnection,
    exc: duckdb.Error,
    schema: TableSchema,
    chunk: pa.Table | None,
    *,
    run_id: str | None,
) -> StorageError:
    """The library error for a failed write, after the transaction was rolled back.

    Args:
        con: The write connection, outside any transaction.
        exc: What DuckDB raised.
        schema: The table written to.
        chunk: The raw chunk whose insert failed (None if the failure came before one).
        run_id: The writing run.
    """
    text = _first_line(exc)
    if chunk is None or not (_is_constraint(exc) or isinstance(exc, duckdb.ConversionException)):
        return translate_duckdb_error(exc, table=schema.name, run_id=run_id)
    batch = conform(schema, chunk, run_id=run_id)
    con.register(_SCRATCH_VIEW, batch)
    try:
        if isinstance(exc, duckdb.ConversionException):
            return invalid_values_error(con, schema, _SCRATCH_VIEW, run_id=run_id, text=text)
        if "foreign key" in text.lower():
            found = orphan_error(_duckdb_fetch(con), schema, _SCRATCH_VIEW, run_id=run_id)
            if found is not None:
                return found
        if "duplicate key" in text.lower() or "unique" in text.lower():
            keys = [_key_from_message(schema, k) for k in _QUOTED_KEY.findall(text)]
            at_commit = isinstance(exc, duckdb.TransactionException)
            return duplicate_error(
                _duckdb_fetch(con), schema, _SCRATCH_VIEW, run_id=run_id, message_keys=keys,
                message_where=(
                    "committed first by another connection to this database"
                    if at_commit
                    else "already written earlier in this call"
                ),
            )
        return translate_duckdb_error(exc, table=schema.name, run_id=run_id)
    except duckdb.Error:
        # The diagnosis only adds detail: if it fails, report what DuckDB said, translated.
        return translate_duckdb_error(exc, table=schema.name, run_id=run_id)
    finally:
        con.unregister(_SCRATCH_VIEW)


def refuse_moved_references(
    fetch: Fetch, schema: TableSchema, source: str, *, run_id: str | None
) -> None:
    """Refuse an update that would point stored rows at another parent.

    DuckDB performs such an update as delete+insert and rejects it while the row is
    referenced; rather than fail on some rows and not others, the library refuses every
    change of a reference column through ``on_conflict="update"``: write a new row instead.
    """
    refs = [c for fk in schema.foreign_keys for c in fk.columns if c != RUN_ID]
    if not refs:
        return
    found = fetch(statements.changed_references(schema, source))
    if found.num_rows == 0:
        return
    raise refuse_moved_references_error(schema, found, run_id=run_id)


def refuse_moved_references_error(
    schema: TableSchema, found: pa.Table, *, run_id: str | None
) -> ConstraintViolationError:
    """The error for stored rows (``found``, their keys) that an update would point at
    another parent; every backend refuses it alike (see :func:`refuse_moved_references`)."""
    refs = [c for fk in schema.foreign_keys for c in fk.columns if c != RUN_ID]
    keys = [key_text(schema, r) for r in found.to_pylist()]
    return ConstraintViolationError(
        f"{len(keys)} rows of `{schema.name}` would change their reference "
        f"({', '.join(refs)}) through on_conflict='update'; a reference column is part of an "
        "index, which DuckDB updates as delete+insert and refuses while the row is referenced."
        " Write a new row instead",
        table=schema.name,
        columns=refs,
        run_id=run_id,
        failures=failures_table([(", ".join(refs), "reference_changed", None, k) for k in keys]),
        examples=keys,
        total=len(keys),
    )


def diagnose_delete_failure(
    con: duckdb.DuckDBPyConnection,
    exc: duckdb.Error,
    schema: TableSchema,
    catalog: Catalog,
    source: str,
) -> StorageError:
    """The library error for a refused delete of the keys that ``source`` lists.

    DuckDB refuses to delete a parent that rows still reference and names one of them; this
    lists every referencing row of every child table (one query per foreign key, after the
    failed statement has been rolled back).

    Args:
        con: The write connection, outside any transaction.
        exc: What DuckDB raised.
        schema: The table the rows were to be deleted from.
        catalog: The declared tables, to find the children of ``schema``.
        source: A registered batch of the keys to delete.
    """
    text = _first_line(exc)
    if not (isinstance(exc, duckdb.ConstraintException) and "still referenced" in text):
        return translate_duckdb_error(exc, table=schema.name, run_id=None)
    found = referencing_error(_duckdb_fetch(con), schema, catalog, source)
    return found or translate_duckdb_error(exc, table=schema.name, run_id=None)


def referencing_error(
    fetch: Fetch, schema: TableSchema, catalog: Catalog, source: str
) -> StorageError | None:
    """Every row of every child table that references a key of ``source`` (the keys a
    refused delete named), as one error; None when there is none. Shared by every backend."""
    rows: list[tuple[str, str, str | None, str | None]] = []
    examples: list[str] = []
    children: list[str] = []
    for child, fk in schema.referenced_by(catalog):
        found = fetch(statements.referencing_rows(child, fk, source))
        for row in found.to_pylist():
            reference = ", ".join(f"{c}={str(row[c])!r}" for c in fk.columns)
            rows.append(
                (f"{child.name}.{', '.join(fk.columns)}", "still_referenced", reference,
                 key_text(child, row))
            )
            examples.append(f"{child.name} {key_text(child, row)} -> {reference}")
            if child.name not in children:
                children.append(child.name)
    if not rows:
        return None
    return ForeignKeyViolationError(
        f"cannot delete from `{schema.name}`: {len(rows)} rows of "
        f"{', '.join(f'`{c}`' for c in children)} still reference the rows to delete. "
        "Delete those first, in an earlier call (DuckDB has no cascade and refuses a parent "
        "delete in the transaction that deleted its children)",
        table=schema.name,
        columns=sorted({r[0] for r in rows}),
        failures=failures_table(rows),
        examples=examples,
        total=len(rows),
    )
