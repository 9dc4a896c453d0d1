"""The errors of ``egregora.database``: one root, structured fields, messages built from them.

Every error raised by the library is a :class:`StorageError`. Subclasses also inherit the
builtin a caller would naturally catch (``ValueError`` for bad input, ``LookupError`` for
something missing), so ``except ValueError`` keeps working for code that does not know us.

Each error keeps the facts as attributes (``table``, ``columns``, ``run_id`` and, for errors
about rows, a ``failures`` Arrow table with *every* offending row) and builds its message
from them, showing a few rows and then "and N more".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import pyarrow as pa

#: How many offending values a message shows before "and N more".
MESSAGE_EXAMPLES = 5


class Failure(NamedTuple):
    """One offending value of an error about rows: a row of its ``failures`` table.

    Attributes:
        column: The column (or ``table.column`` of another table) at fault.
        check: The rule it breaks (``not_null``, ``foreign_key``, a CHECK's name, ...).
        value: The offending value as text, when there is one.
        key: The offending row's primary key as ``id='…'`` text, when there is one.
    """

    column: str
    check: str
    value: str | None = None
    key: str | None = None


#: The columns of an error's ``failures`` table, one row per :class:`Failure`.
FAILURES_SCHEMA = pa.schema(
    [("column", pa.string()), ("check", pa.string()), ("value", pa.string()), ("key", pa.string())]
)


def failures_table(rows: Iterable[Failure]) -> pa.Table:
    """The ``failures`` table of an error: one row per :class:`Failure`.

    >>> failures_table([Failure("id", "not_null")]).to_pylist()
    [{'column': 'id', 'check': 'not_null', 'value': None, 'key': None}]
    """
    listed = list(rows)
    cols = list(zip(*listed, strict=True)) if listed else [(), (), (), ()]
    return pa.table([pa.array(c, pa.string()) for c in cols], schema=FAILURES_SCHEMA)


def _shown(value: Any) -> str:
    # Examples arrive pre-rendered ("document_id='d-17'"); long ones are cut.
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def format_examples(values: Sequence[Any], *, total: int | None = None) -> str:
    """Render at most :data:`MESSAGE_EXAMPLES` values, then "and N more".

    >>> format_examples(["id='a'", "id='b'"])
    "id='a', id='b'"
    >>> format_examples(list(range(8)))
    '0, 1, 2, 3, 4 and 3 more'
    """
    total = len(values) if total is None else total
    shown = ", ".join(_shown(v) for v in list(values)[:MESSAGE_EXAMPLES])
    rest = total - min(len(values), MESSAGE_EXAMPLES)
    return f"{shown} and {rest} more" if rest > 0 else shown


def key_text(primary_key: Sequence[str], row: Mapping[str, Any]) -> str:
    """A row's primary key as ``id='…'`` text (the ``key`` of a :class:`Failure`).

    >>> key_text(("id",), {"id": "d-17", "title": "x"})
    "id='d-17'"
    """
    return ", ".join(f"{c}={str(row[c])!r}" for c in primary_key if c in row)


class StorageError(Exception):
    """Root of every error raised by ``egregora.database``.

    Attributes:
        table: The table concerned, when there is one.
        columns: The columns concerned.
        run_id: The run on whose behalf the operation ran, when there is one.
        failures: For errors about rows, an Arrow table listing every offending row.
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        columns: Sequence[str] = (),
        run_id: str | None = None,
        failures: pa.Table | None = None,
    ) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.run_id = run_id
        self.failures = failures
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other constructor arguments than their message (differences, a
        # summary and examples): rebuild from the message and the fields as they are, so an
        # error sent to another process or kernel arrives equal, whatever its class.
        return (_rebuild, (type(self), str(self), dict(vars(self))))


def _rebuild(cls: type[StorageError], message: str, state: dict[str, Any]) -> StorageError:
    """An error of ``cls`` with ``message`` and ``state``, without calling its ``__init__``."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    vars(error).update(state)
    return error


class SchemaDefinitionError(StorageError, ValueError):
    """A table declaration is malformed (raised when it is declared, not when it is used)."""


class SchemaMismatchError(StorageError):
    """A database's tables differ from their declaration in a way that cannot be migrated.

    Attributes:
        differences: One human-readable line per difference.
    """

    def __init__(self, differences: Sequence[str], *, table: str | None = None) -> None:
        self.differences = tuple(differences)
        lines = "\n".join(f"  - {d}" for d in self.differences)
        super().__init__(
            f"the database does not match the declared layout; nothing was changed "
            f"({len(self.differences)} difference(s)):\n{lines}",
            table=table,
        )


class TableNotFoundError(StorageError, LookupError):
    """A table is not declared in the catalog (or not present in the database)."""


class RunNotFoundError(StorageError, LookupError):
    """No run has the given id."""


class RunStateError(StorageError, ValueError):
    """An operation is not allowed in the run's current status."""


class StoreLockedError(StorageError):
    """Another process holds the database file.

    Attributes:
        path: The database file.
        holder_pid: The PID of the process holding it, when DuckDB names it.
    """

    def __init__(self, message: str, *, path: str, holder_pid: int | None) -> None:
        self.path = path
        self.holder_pid = holder_pid
        super().__init__(message)


class ReadOnlyError(StorageError):
    """A write was attempted through a store opened read-only."""


class DiskFullError(StorageError):
    """The disk (or the process's file size limit) refused the store's file a write.

    Nothing of the refused call was written; what was committed before it is intact. Free
    space and write again.
    """


class RowError(StorageError):
    """An error about rows of a batch; ``failures`` lists every offending row."""

    def __init__(
        self,
        summary: str,
        *,
        table: str,
        columns: Sequence[str] = (),
        run_id: str | None = None,
        failures: pa.Table | None = None,
        examples: Sequence[Any] = (),
        total: int | None = None,
    ) -> None:
        total = len(examples) if total is None else total
        where = f" (run {run_id})" if run_id else ""
        detail = f": {format_examples(list(examples), total=total)}" if examples else ""
        super().__init__(
            f"{summary}{where}, nothing written{detail}",
            table=table,
            columns=columns,
            run_id=run_id,
            failures=failures,
        )


class ValidationError(RowError, ValueError):
    """A batch does not satisfy its table's declaration.

    ``failures`` has the columns ``column``, ``check``, ``value`` and ``key``, one row per
    offending value.
    """


class LineageError(ValidationError):
    """A batch's lineage columns are wrong: ``run_id`` missing, foreign, or ``created_at``
    naive or before the run started."""


class UnknownRunError(LineageError, RunNotFoundError):
    """A write to a lineage table names a run that does not exist. Every row of the batch is
    at fault: ``failures`` has one row for the batch (``key`` NULL)."""


class RunNotRunningError(LineageError, RunStateError):
    """A write to a lineage table names a run that has ended. Every row of the batch is at
    fault: ``failures`` has one row for the batch (``key`` NULL)."""


class ConstraintViolationError(RowError, ValueError):
    """The database refused rows because of a declared constraint."""


class ForeignKeyViolationError(ConstraintViolationError):
    """Rows reference parent keys that do not exist, or a parent is still referenced."""


class DuplicateKeyError(ConstraintViolationError):
    """Rows repeat a primary key, within the batch or against stored rows."""


class IntegrityError(StorageError):
    """An operation would break the store's integrity (e.g. a rollback whose rows are
    referenced by other runs)."""


class ConnectionFailedError(StorageError):
    """The database could not be opened or reached, or the driver failed unexpectedly."""
