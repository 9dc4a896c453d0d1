"""egregora.database: the storage layer of egregora.

Tables are declared once (:mod:`egregora.database.schemas`); DDL, Arrow schemas, validators
and migrations are derived from the declarations. :class:`DuckDBStorageManager` owns the
connection and performs every write; :class:`RunStore` records pipeline runs; every content
row carries the ``run_id`` of the run that wrote it (:mod:`egregora.database.lineage`).
"""

from egregora.database import errors
from egregora.database.backend import StorageManager
from egregora.database.connect import connect
from egregora.database.ids import new_id
from egregora.database.model import (
    Catalog,
    ForeignKey,
    NotBefore,
    NullWhen,
    OneOf,
    RequiredWhen,
    TableSchema,
)
from egregora.database.run_store import Run, RunStatus, RunStore
from egregora.database.schemas import (
    ANNOTATIONS_SCHEMA,
    CATALOG,
    DOCUMENTS_SCHEMA,
    MESSAGES_SCHEMA,
    RUNS_SCHEMA,
)
from egregora.database.storage import DuckDBStorageManager

__all__ = [
    "ANNOTATIONS_SCHEMA",
    "CATALOG",
    "DOCUMENTS_SCHEMA",
    "MESSAGES_SCHEMA",
    "RUNS_SCHEMA",
    "Catalog",
    "DuckDBStorageManager",
    "ForeignKey",
    "NotBefore",
    "NullWhen",
    "OneOf",
    "RequiredWhen",
    "Run",
    "RunStatus",
    "RunStore",
    "StorageManager",
    "TableSchema",
    "connect",
    "errors",
    "new_id",
]
