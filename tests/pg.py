"""PostgreSQL for the tests: the server's URL, a fresh schema per test, and what to do when
there is no server.

The server is ``EGREGORA_TEST_POSTGRES_URL`` (default: a local server's ``test`` database).
When it cannot be reached, the tests that need it are skipped with the reason printed, except
under ``CI=true``, where a missing server is a failure: CI must prove the PostgreSQL backend.
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlglot import exp

from egregora.database import ddl
from egregora.database.backends.postgres.manager import PostgresStorageManager

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def url() -> str:
    """The test server's URL."""
    return os.environ.get("EGREGORA_TEST_POSTGRES_URL", DEFAULT_URL)


@functools.cache
def unreachable() -> str | None:
    """Why the test server cannot be used, or None when it answers."""
    try:
        with psycopg.connect(url(), connect_timeout=3) as con:
            con.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL test server {url()} unreachable: {str(exc).strip().splitlines()[0]}"
    return None


def require_server() -> None:
    """Skip (fail under ``CI=true``) when the test server cannot be reached."""
    reason = unreachable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run)", pytrace=False)
    print(f"\nskipping: {reason}")
    pytest.skip(reason)


def drop_schema(name: str) -> None:
    """Drop a test schema and everything in it."""
    drop = exp.Drop(this=exp.Table(this=ddl.ident(name)), kind="SCHEMA", exists=True,
                    cascade=True)
    with psycopg.connect(url(), autocommit=True) as con:
        con.execute(drop.sql("postgres"))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema name of this test's own, dropped after it (the server must be reachable)."""
    require_server()
    name = f"egregora_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        drop_schema(name)


def open_store(schema: str, **options: Any) -> PostgresStorageManager:
    """A store in ``schema`` of the test server."""
    return PostgresStorageManager(url(), schema=schema, **options)


_OPEN: Counter[str] = Counter()


class TemporaryStore(PostgresStorageManager):
    """A store in a test schema of its own, dropped when the last store open on it closes
    (so that a test may open the same schema twice, e.g. read-only beside a writer)."""

    def __init__(self, schema: str, **options: Any) -> None:
        self._test_schema = schema
        _OPEN[schema] += 1
        try:
            super().__init__(url(), schema=schema, **options)
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._release()

    def _release(self) -> None:
        _OPEN[self._test_schema] -= 1
        if _OPEN[self._test_schema] == 0:
            drop_schema(self._test_schema)


def open_temporary_store(tmp_path: Path, **options: Any) -> TemporaryStore:
    """The ``postgres`` kind of the ``store`` fixture: a schema named after the test's
    ``tmp_path``, so that every store a test opens is in the same schema."""
    require_server()
    digest = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    return TemporaryStore(f"egregora_test_{digest}", **options)


# --- what the processes of the many-process tests run (importable, for "spawn") -----------


def open_and_describe(schema: str) -> list[str]:
    """Open a store in ``schema`` and say what its opening created."""
    with open_store(schema) as opened:
        return opened.migration.describe()


def write_batches(
    schema: str, seed: int, start: Any, batches: int, rows: int
) -> tuple[str, int]:
    """One writer of the concurrency test: wait for the others, then write ``batches``
    batches of documents, two annotations and a batch of messages in a run of its own.
    Returns the run and the process id."""
    from tests.helpers import make_annotations, make_documents, make_messages

    from egregora.database import RunStore

    start.wait()
    with open_store(schema) as storage:
        runs = RunStore(storage)
        with runs.run(f"writer-{seed}") as run:
            for batch in range(batches):
                docs = make_documents(rows, seed=seed * 10_000 + batch)
                storage.write("documents", docs, run_id=run.run_id)
            # The children last: each writer's annotations reference its own documents.
            notes = make_annotations(docs["id"][:2], seed=seed)
            storage.write("annotations", notes, run_id=run.run_id)
            storage.write("messages", make_messages(rows, seed=seed), run_id=run.run_id)
        return run.run_id, os.getpid()


def write_then_hang(schema: str, ready: Any) -> None:
    """Start a run, write to it, report it, then wait to be killed with the run RUNNING."""
    import signal

    from tests.helpers import make_documents

    from egregora.database import RunStore

    storage = open_store(schema)
    run = RunStore(storage).start_run("doomed")
    storage.write("documents", make_documents(3, seed=7), run_id=run.run_id)
    ready.put(run.run_id)
    signal.pause()
