"""Opening a store from a URL: the scheme picks the backend.

- ``duckdb:///relative/path.duckdb``, ``duckdb:////absolute/path.duckdb`` (SQLAlchemy's
  convention: the path is what follows the third slash) and ``duckdb:///:memory:``.
- ``postgresql://user@host:5432/db`` (or ``postgres://``), any libpq URL; the PostgreSQL
  driver (the ``postgres`` extra) is imported only then.

A URL without a path is refused rather than read as an in-memory store: a store that
silently forgets everything on close is the mistake this guards against.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from egregora.database.backends.base import StorageManager
from egregora.database.backends.duckdb.manager import DuckDBStorageManager
from egregora.database.errors import ConnectionFailedError

DUCKDB_SCHEMES = ("duckdb",)
POSTGRES_SCHEMES = ("postgresql", "postgres")


def connect(url: str, /, **options: Any) -> StorageManager:
    """Open the store that ``url`` names.

    Args:
        url: ``duckdb:///path``, ``duckdb:///:memory:`` or ``postgresql://...`` (with an
            optional ``?schema=name`` query parameter, default ``public``).
        **options: Passed to the backend's manager: ``read_only``, ``catalog``,
            ``chunk_rows``, ``heartbeat_timeout`` for both; ``lock_timeout`` for DuckDB;
            ``schema`` and ``connect_timeout`` for PostgreSQL.

    Raises:
        ConnectionFailedError: the scheme is unknown, the URL names no database, or the
            database cannot be opened.

    Example:
        >>> with connect("duckdb:///:memory:") as storage:
        ...     type(storage).__name__
        'DuckDBStorageManager'
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if sep and scheme in DUCKDB_SCHEMES:
        path = rest.removeprefix("/")
        if not path:
            raise ConnectionFailedError(
                f"{url!r} names no database file; write duckdb:///path/to/store.duckdb, or "
                "duckdb:///:memory: for a store that lives only as long as the process"
            )
        return DuckDBStorageManager(path, **options)
    if sep and scheme in POSTGRES_SCHEMES:
        # Only now: the PostgreSQL backend needs the `postgres` extra (psycopg).
        from egregora.database.backends.postgres.manager import (  # noqa: PLC0415
            PostgresStorageManager,
        )

        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = [v for k, v in query if k == "schema"]
        if schema:
            # ``?schema=name`` selects the PostgreSQL schema; the driver must not see it.
            options.setdefault("schema", schema[-1])
            rest_query = urlencode([(k, v) for k, v in query if k != "schema"])
            url = urlunsplit(parts._replace(query=rest_query))
        return PostgresStorageManager(url, **options)
    known = ", ".join(f"{s}://" for s in (*DUCKDB_SCHEMES, *POSTGRES_SCHEMES))
    raise ConnectionFailedError(f"cannot tell the backend of {url!r}: expected one of {known}")
