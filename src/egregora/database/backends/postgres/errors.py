"""PostgreSQL's errors translated into the library's, and connection strings made safe to
print."""

from __future__ import annotations

import re

import psycopg

from egregora.database.errors import (
    ConnectionFailedError,
    ConstraintViolationError,
    DuplicateKeyError,
    ForeignKeyViolationError,
    ReadOnlyError,
    StorageError,
    ValidationError,
)

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@|(password\s*=\s*)\S+")


def redact(url: str) -> str:
    """A connection string without its password, for messages.

    >>> redact("postgresql://app:s3cret@db:5432/egregora")
    'postgresql://app:***@db:5432/egregora'
    """
    return _PASSWORD.sub(lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", url)


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def translate_postgres_error(
    exc: psycopg.Error, *, table: str | None, run_id: str | None
) -> StorageError:
    """The library error for a PostgreSQL error that needs no further diagnosis.

    SQLSTATE decides: 23503 is a ForeignKeyViolationError, 23505 a DuplicateKeyError, other
    integrity violations (23xxx: NOT NULL, CHECK) a ConstraintViolationError, data exceptions
    (22xxx: a text that is no UUID or no JSON) a ValidationError, as is a value psycopg
    refuses to send (a ``DataError`` without SQLSTATE: a NUL in text), 25006 a ReadOnlyError
    and a lost connection (08xxx) a ConnectionFailedError.
    """
    state = exc.sqlstate or ""
    text = first_line(exc)
    detail = exc.diag.message_detail
    if state.startswith("23"):
        kinds: dict[str, type[ConstraintViolationError]] = {
            "23503": ForeignKeyViolationError,
            "23505": DuplicateKeyError,
        }
        return kinds.get(state, ConstraintViolationError)(
            f"the database refused the change to `{table or '?'}`: {text}",
            table=table or "?",
            run_id=run_id,
            examples=[detail] if detail else [],
        )
    if state.startswith("22") or (not state and isinstance(exc, psycopg.DataError)):
        # No SQLSTATE: psycopg refused the value before sending it (a NUL in text).
        return ValidationError(f"a value could not be converted: {text}", table=table or "?")
    if state == "25006":
        return ReadOnlyError(f"the store is read-only: {text}", table=table, run_id=run_id)
    if state.startswith("08") or (not state and isinstance(exc, psycopg.OperationalError)):
        return ConnectionFailedError(f"the connection to PostgreSQL failed: {text}", table=table)
    return StorageError(f"PostgreSQL failed: {text}", table=table, run_id=run_id)
