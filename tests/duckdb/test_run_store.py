"""RunStore: the life of a run, its illegal transitions, config hashing and crash recovery.

Crash tests use real processes: a child that is killed with SIGKILL leaves a RUNNING run,
which the next open marks CRASHED. Config hashing is checked with hypothesis.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from tests.helpers import CONFIGS, make_documents

from egregora.database import DuckDBStorageManager, RunStatus, RunStore
from egregora.database.runs.config import config_hash

REPO = Path(__file__).resolve().parents[2]


def count(store: DuckDBStorageManager, table: str) -> int:
    return int(store.table(table).count().execute())


# --- the life of a run ----------------------------------------------------------------


def test_runs_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.duckdb"
    with DuckDBStorageManager(path) as storage:
        runs = RunStore(storage)
        done = runs.end_run(
            runs.start_run("a", config={"k": 1}).run_id, status=RunStatus.FAILED, error="boom"
        )
        child = runs.start_run("b", parent_run_id=done.run_id)
        runs.end_run(child.run_id)
        open_run = runs.start_run("c")

    with DuckDBStorageManager(path) as again:
        runs = RunStore(again)
        assert runs.get_run(done.run_id) == done
        assert runs.get_run(child.run_id).parent_run_id == done.run_id
        # This process is alive and the heartbeat is fresh: the open run stays RUNNING.
        assert runs.get_run(open_run.run_id).status is RunStatus.RUNNING


# --- illegal transitions and unknown runs ---------------------------------------------


# --- config hashing -------------------------------------------------------------------


def test_a_stored_config_hashes_like_the_one_given() -> None:
    with DuckDBStorageManager(":memory:") as storage:
        runs = RunStore(storage)

        @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(CONFIGS)
        def check(config: dict[str, Any]) -> None:
            run = runs.get_run(runs.start_run("hashed", config=config).run_id)
            assert run.config_hash == config_hash(config)
            assert config_hash(run.config) == run.config_hash

        check()


# --- crashes and heartbeats -----------------------------------------------------------

_DOOMED = textwrap.dedent(
    """
    import sys, time
    from egregora.database import DuckDBStorageManager, RunStore
    from tests.helpers import make_documents

    storage = DuckDBStorageManager(sys.argv[1])
    run = RunStore(storage).start_run("doomed")
    storage.write("documents", make_documents(50, seed=1), run_id=run.run_id)
    print(run.run_id, flush=True)
    time.sleep(120)
    """
)


def test_a_killed_process_leaves_a_run_marked_crashed(tmp_path: Path) -> None:
    path = tmp_path / "crash.duckdb"
    with subprocess.Popen(
        [sys.executable, "-c", _DOOMED, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO
    ) as child:
        try:
            assert child.stdout is not None
            run_id = child.stdout.readline().strip()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert run_id

    with DuckDBStorageManager(path) as storage:
        run = RunStore(storage).get_run(run_id)
        assert run.status is RunStatus.CRASHED
        assert run.pid == child.pid
        assert run.error is not None
        assert f"process {child.pid}" in run.error
        assert run.ended_at is not None
        assert run.ended_at >= run.started_at
        # The rows the run wrote before it died are kept (the WAL was replayed).
        assert count(storage, "documents") == 50


def test_a_stale_heartbeat_marks_the_run_crashed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "stale.duckdb"
    with DuckDBStorageManager(path) as storage:
        run = RunStore(storage).start_run("left open")

    # This process is alive, so only the heartbeat can tell: fresh enough by default...
    with DuckDBStorageManager(path) as storage:
        assert RunStore(storage).get_run(run.run_id).status is RunStatus.RUNNING
    # ...and stale for a timeout of zero.
    time.sleep(0.01)
    with DuckDBStorageManager(path, heartbeat_timeout=timedelta(0)) as storage:
        crashed = RunStore(storage).get_run(run.run_id)

    assert crashed.status is RunStatus.CRASHED
    assert crashed.error is not None
    assert "no heartbeat since" in crashed.error


@pytest.mark.slow
def test_ending_a_run_that_100k_documents_reference(tmp_path: Path) -> None:
    # DuckDB's over-eager FK check rejects an update of a referenced row that it
    # performs as delete+insert; the status update of a run must stay an in-place update.
    with DuckDBStorageManager(tmp_path / "bulk.duckdb") as store:
        _end_a_heavily_referenced_run(store, RunStore(store))


def _end_a_heavily_referenced_run(store: DuckDBStorageManager, runs: RunStore) -> None:
    run = runs.start_run("bulk")
    store.write("documents", make_documents(100_000, seed=2), run_id=run.run_id)
    started = time.monotonic()

    runs.heartbeat(run.run_id)
    ended = runs.end_run(run.run_id)

    assert ended.status is RunStatus.COMPLETED
    assert runs.get_run(run.run_id) == ended
    assert time.monotonic() - started < 15
    assert count(store, "documents") == 100_000


