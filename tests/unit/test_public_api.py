"""The public API: what ``from egregora.database import ...`` offers, pinned."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import egregora.database as api

PUBLIC = [
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


def test_all_is_pinned() -> None:
    # A change here is a change of the public API: deliberate, and in the release notes.
    assert sorted(api.__all__) == sorted(PUBLIC)


def test_every_public_name_resolves() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name


def test_lineage_is_the_lineage_module() -> None:
    assert api.lineage is importlib.import_module("egregora.database.runs.lineage")
    from egregora.database import lineage  # the README's spelling

    assert lineage.committed is api.lineage.committed


def test_the_embedded_store_does_not_import_the_postgresql_driver() -> None:
    # The PostgreSQL backend needs the `postgres` extra; the package must import without it.
    code = (
        "import sys, egregora.database as d, egregora.database.cli; "
        "d.DuckDBStorageManager(':memory:').close(); "
        "print('psycopg' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_unknown_attributes_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        api.NoSuchThing  # noqa: B018
