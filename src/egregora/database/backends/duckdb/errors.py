"""DuckDB's errors translated into the library's, with every offending row.

DuckDB names only the first bad key of a refused INSERT. After the write path has rolled
back, :func:`diagnose_write_failure` re-examines the failing chunk with the anti-joins of
:mod:`egregora.database.backends.diagnosis` (about 30 ms for 100k rows) and lists every
missing reference or repeated key.
"""

from __future__ import annotations

import re

import duckdb
import pyarrow as pa

from egregora.database.backends.diagnosis import (
    duckdb_fetch,
    duplicate_error,
    invalid_values_error,
    orphan_error,
    referencing_error,
)
from egregora.database.batches import conform
from egregora.database.errors import (
    ConstraintViolationError,
    DiskFullError,
    DuplicateKeyError,
    ForeignKeyViolationError,
    StorageError,
    ValidationError,
    key_text,
)
from egregora.database.model import Catalog, TableSchema

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
        return key_text(schema.primary_key, {name: value for name, _, value in named})
    if len(parts) == len(schema.primary_key):
        return key_text(schema.primary_key, dict(zip(schema.primary_key, parts, strict=True)))
    return quoted


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
            return invalid_values_error(
                duckdb_fetch(con), schema, _SCRATCH_VIEW, run_id=run_id, text=text
            )
        if "foreign key" in text.lower():
            found = orphan_error(duckdb_fetch(con), schema, _SCRATCH_VIEW, run_id=run_id)
            if found is not None:
                return found
        if "duplicate key" in text.lower() or "unique" in text.lower():
            keys = [_key_from_message(schema, k) for k in _QUOTED_KEY.findall(text)]
            at_commit = isinstance(exc, duckdb.TransactionException)
            return duplicate_error(
                duckdb_fetch(con), schema, _SCRATCH_VIEW, run_id=run_id, message_keys=keys,
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
    found = referencing_error(duckdb_fetch(con), schema, catalog, source)
    return found or translate_duckdb_error(exc, table=schema.name, run_id=None)


