"""Fixtures shared by the storage tests: one store per test, on every kind of store.

``store`` (and ``open_store``, for tests that need options such as a catalog or a small
``chunk_rows``) run on every entry of :data:`STORE_KINDS`. A kind is a name (the test id)
and a function ``open(tmp_path, **options)``; a PostgreSQL store is added by appending its
kind here once its manager exists, and every test that takes ``store`` then runs on it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from tests.pg import open_temporary_store

from egregora.database import DuckDBStorageManager, Run, RunStore


class StoreKind(NamedTuple):
    """One kind of store the fixtures run on."""

    name: str
    open: Callable[..., Any]


#: Every kind of store the ``store`` and ``open_store`` fixtures run on.
STORE_KINDS: list[StoreKind] = [
    StoreKind("memory", lambda tmp_path, **options: DuckDBStorageManager(":memory:", **options)),
    StoreKind(
        "file",
        lambda tmp_path, **options: DuckDBStorageManager(tmp_path / "store.duckdb", **options),
    ),
    # A schema of its own on the test server; skipped (failed under CI=true) without one.
    StoreKind("postgres", open_temporary_store),
]

OpenStore = Callable[..., DuckDBStorageManager]


@pytest.fixture(params=STORE_KINDS, ids=[kind.name for kind in STORE_KINDS])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a store of each kind with the given options (``catalog=``, ``chunk_rows=``...);
    every store it opened is closed after the test."""
    kind: StoreKind = request.param
    opened: list[DuckDBStorageManager] = []

    def open_(**options: Any) -> DuckDBStorageManager:
        storage = kind.open(tmp_path, **options)
        opened.append(storage)
        return storage

    yield open_
    for storage in opened:
        storage.close()


@pytest.fixture
def store(open_store: OpenStore) -> DuckDBStorageManager:
    """A fresh, migrated store of each kind (one connection, closed after the test)."""
    return open_store()


@pytest.fixture
def runs(store: DuckDBStorageManager) -> RunStore:
    """The runs of ``store``."""
    return RunStore(store)


@pytest.fixture
def run(runs: RunStore) -> Run:
    """A RUNNING run of ``store``, to write content rows with."""
    return runs.start_run("test", config={"fixture": True})
