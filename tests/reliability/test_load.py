"""Load: many writers at once lose no row, repeat no key and raise nothing.

- DuckDB: 8 threads write 200 batches each through one manager on a file, while a reader
  thread counts the rows: every count it sees is a whole number of batches (no half-written
  batch is ever visible) and never goes down. Afterwards, and after reopening the file, the
  rows are exactly the planned ones, per run, and ``verify()`` is empty.
- PostgreSQL: 4 processes (two with a run of their own, two sharing one) start together and
  write their batches; the same exact counts hold.

The batches go to ``notes`` (a lineage table with a key and a body) so that the thousands
of writes measure the write path's concurrency, not the cost of wide rows.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ibis
import pytest
from tests import pg
from tests.reliability.forkserver import ForkServer
from tests.reliability.jobs import LOAD_CATALOG, note_batch
from tests.reliability.tally import Tally

from egregora.database import DuckDBStorageManager, RunStatus, RunStore, StorageManager

THREADS, THREAD_BATCHES = 8, 200
PROCESSES, PROCESS_BATCHES = 4, 100
ROWS = 5


def planned_ids(writer: int, batches: int) -> list[str]:
    return [i for b in range(batches) for i in note_batch(writer, b, ROWS)["id"].to_pylist()]


def rows_per_run(storage: StorageManager) -> dict[str, int]:
    notes = storage.table("notes")
    counts = storage.to_arrow(notes.group_by("run_id").aggregate(n=notes.count()))
    return {str(r["run_id"]): int(r["n"]) for r in counts.to_pylist()}


def stored_ids(storage: StorageManager) -> list[str]:
    return [str(i) for i in storage.to_arrow(storage.table("notes").select("id"))["id"].to_pylist()]


def check_rows(
    storage: StorageManager, expected: dict[str, list[str]], tally: Tally
) -> int:
    """The notes are exactly ``expected`` (ids per run): none lost, none repeated, none
    extra; returns the number of rows."""
    ids = stored_ids(storage)
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    assert not repeated, repeated[:5]
    wanted = {i for batch in expected.values() for i in batch}
    lost = wanted - set(ids)
    tally.rows_lost += len(lost)
    assert not lost, f"{len(lost)} rows lost"
    assert set(ids) == wanted, "rows that no writer wrote"
    assert rows_per_run(storage) == {run: len(batch) for run, batch in expected.items()}
    return len(ids)


@pytest.mark.slow
def test_eight_threads_write_through_one_duckdb_manager(tmp_path: Path, tally: Tally) -> None:
    path = tmp_path / "load.duckdb"
    storage = DuckDBStorageManager(path, catalog=LOAD_CATALOG)
    runs = RunStore(storage)
    shared = runs.start_run("shared")
    done = threading.Event()
    seen: list[int] = []

    def read() -> None:
        notes = storage.table("notes")
        # Paced: a reader in a tight loop would mostly measure the GIL.
        while not done.wait(0.02):
            seen.append(int(storage.to_arrow(notes.count().as_table())[0][0].as_py()))

    def write(writer: int) -> tuple[str, list[str]]:
        # Odd threads have a run of their own, even threads share one.
        run = runs.start_run(f"thread-{writer}") if writer % 2 else shared
        for batch in range(THREAD_BATCHES):
            written = storage.write("notes", note_batch(writer, batch, ROWS), run_id=run.run_id)
            assert written == ROWS
        if writer % 2:
            runs.end_run(run.run_id)
        return run.run_id, planned_ids(writer, THREAD_BATCHES)

    started = time.monotonic()
    reader = threading.Thread(target=read, name="counter")
    reader.start()
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(write, range(THREADS)))
    finally:
        done.set()
        reader.join(60)
    elapsed = time.monotonic() - started
    runs.end_run(shared.run_id)

    expected: dict[str, list[str]] = {}
    for run_id, ids in results:
        expected.setdefault(run_id, []).extend(ids)
    total = check_rows(storage, expected, tally)
    assert total == THREADS * THREAD_BATCHES * ROWS
    assert len(seen) > 1
    assert all(n % ROWS == 0 for n in seen), "a reader saw part of a batch"
    assert seen == sorted(seen), "a reader saw committed rows disappear"
    assert not storage.verify(), storage.verify()
    storage.close()

    with DuckDBStorageManager(path, catalog=LOAD_CATALOG) as reopened:
        assert check_rows(reopened, expected, tally) == total
        statuses = set(RunStore(reopened).list_runs().status.to_list())
        assert statuses == {RunStatus.COMPLETED}
        assert not reopened.verify()
    tally.notes.append(
        f"load duckdb: {THREADS} threads x {THREAD_BATCHES} batches x {ROWS} rows = {total} "
        f"rows in {elapsed:.1f} s ({THREADS * THREAD_BATCHES / elapsed:.0f} writes/s), "
        f"{len(seen)} concurrent counts, 0 errors, 0 duplicates"
    )


@pytest.fixture
def pg_schema_name() -> Any:
    """A schema of this test's own on the test server, dropped after the test."""
    pg.require_server()
    name = f"egregora_load_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        pg.drop_schema(name)


@pytest.mark.slow
def test_four_processes_write_to_postgres_at_once(
    forkserver: ForkServer, pg_schema_name: str, tally: Tally
) -> None:
    with pg.open_store(pg_schema_name, catalog=LOAD_CATALOG) as storage:
        shared = RunStore(storage).start_run("shared")
    writers = []
    try:
        for writer in range(PROCESSES):
            # Writers 0 and 1 share the run started here; 2 and 3 start their own.
            run_id = shared.run_id if writer < 2 else None
            writers.append(forkserver.fork(
                "pg_writer", url=pg.url(), schema=pg_schema_name, writer=writer,
                run_id=run_id, batches=PROCESS_BATCHES, rows=ROWS,
            ))
        run_of = {
            pid: forkserver.wait_for(pid, "ready", timeout=60)["run_id"] for pid in writers
        }
        started = time.monotonic()
        for pid in writers:
            os.kill(pid, signal.SIGUSR1)
        wrote = [forkserver.wait_for(pid, "wrote", timeout=120) for pid in writers]
        elapsed = time.monotonic() - started
        codes = [forkserver.reap(pid) for pid in writers]
    finally:
        for pid in writers:
            forkserver.kill(pid)  # only those a failure above left waiting
    assert codes == [0] * PROCESSES
    assert [w["rows"] for w in wrote] == [PROCESS_BATCHES * ROWS] * PROCESSES
    assert len(set(run_of.values())) == 3

    expected: dict[str, list[str]] = {}
    for writer, pid in enumerate(writers):
        expected.setdefault(run_of[pid], []).extend(planned_ids(writer, PROCESS_BATCHES))
    with pg.open_store(pg_schema_name, catalog=LOAD_CATALOG) as storage:
        runs = RunStore(storage)
        runs.end_run(shared.run_id)
        total = check_rows(storage, expected, tally)
        assert total == PROCESSES * PROCESS_BATCHES * ROWS
        notes = storage.table("notes")
        heartbeats = storage.to_arrow(
            runs.list_runs().filter(ibis._.run_id == ibis.literal(shared.run_id, type="uuid"))
        )
        assert heartbeats["heartbeat_at"][0].as_py() > shared.started_at
        assert storage.to_arrow(notes.count().as_table())[0][0].as_py() == total
        assert set(runs.list_runs().status.to_list()) == {RunStatus.COMPLETED}
        assert not storage.verify(), storage.verify()
    tally.notes.append(
        f"load postgres: {PROCESSES} processes x {PROCESS_BATCHES} batches x {ROWS} rows = "
        f"{total} rows in {elapsed:.1f} s, 0 errors, 0 duplicates"
    )
