"""egregora.database: the storage layer of egregora.

Tables are declared once (:mod:`egregora.database.schemas`); DDL, Arrow schemas, validators
and migrations are derived from the declarations. A storage manager
(:class:`DuckDBStorageManager`, embedded, the default; :class:`PostgresStorageManager`, for
many writers) owns the connection and performs every write; :class:`RunStore` records
pipeline runs; every content row carries the ``run_id`` of the run that wrote it
(:mod:`egregora.database.runs.lineage`, also importable as ``egregora.database.lineage``).

This module is the public API; ``tests/test_public_api.py`` pins ``__all__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from egregora.database import errors
from egregora.database.backends.base import StorageManager
from egregora.database.backends.duckdb.manager import DuckDBStorageManager
from egregora.database.checks import NotBefore, NullWhen, OneOf, RequiredWhen
from egregora.database.connect import connect
from egregora.database.errors import StorageError
from egregora.database.ids import new_id
from egregora.database.model import Catalog, ForeignKey, TableSchema
from egregora.database.runs import lineage
from egregora.database.runs.audit import IntegrityReport
from egregora.database.runs.store import Run, RunStore
from egregora.database.schemas import (
    ANNOTATIONS_SCHEMA,
    CATALOG,
    DOCUMENTS_SCHEMA,
    MESSAGES_SCHEMA,
    RUNS_SCHEMA,
    RunStatus,
)

if TYPE_CHECKING:
    from egregora.database.backends.postgres.manager import PostgresStorageManager

__all__ = [
    "ANNOTATIONS_SCHEMA",
    "CATALOG",
    "DOCUMENTS_SCHEMA",
    "MESSAGES_SCHEMA",
    "RUNS_SCHEMA",
    "Catalog",
    "DuckDBStorageManager",
    "ForeignKey",
    "IntegrityReport",
    "NotBefore",
    "NullWhen",
    "OneOf",
    "PostgresStorageManager",
    "RequiredWhen",
    "Run",
    "RunStatus",
    "RunStore",
    "StorageError",
    "StorageManager",
    "TableSchema",
    "connect",
    "errors",
    "lineage",
    "new_id",
]


def __getattr__(name: str) -> Any:
    # The PostgreSQL backend needs the `postgres` extra (psycopg): imported on first use, so
    # that the embedded store works without it.
    if name == "PostgresStorageManager":
        from egregora.database.backends.postgres.manager import (  # noqa: PLC0415
            PostgresStorageManager,
        )

        return PostgresStorageManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
