"""Lock contention: while one process writes to a DuckDB file, another waits up to its
``lock_timeout`` and then fails with StoreLockedError naming the holder; a reader fails alike.

The holder is a child process (it started a run and wrote under it); the contender is this
process, so that the time it waited is measured without a process's start-up in it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from tests.reliability.forkserver import ForkServer
from tests.reliability.tally import Tally

from egregora.database import DuckDBStorageManager, RunStatus, RunStore
from egregora.database.errors import StorageError, StoreLockedError

#: How far past its lock_timeout a refused open may return: one more attempt to connect,
#: on a machine that is busy with other work.
SLACK = 0.75


def refused_after(path: Path, **options: float | bool) -> tuple[StoreLockedError, float]:
    started = time.monotonic()
    with pytest.raises(StoreLockedError) as caught:
        DuckDBStorageManager(path, **options)  # type: ignore[arg-type]
    return caught.value, time.monotonic() - started


def test_a_held_file_is_refused_after_the_lock_timeout_to_writers_and_readers(
    forkserver: ForkServer, tmp_path: Path, tally: Tally
) -> None:
    path = tmp_path / "held.duckdb"
    holder = forkserver.fork("hold_lock", path=str(path))
    try:
        run_id = forkserver.wait_for(holder, "holding")["run_id"]
        timings = []
        for mode, read_only, timeouts in (
            ("writer", False, (0.0, 0.4, 1.2)), ("reader", True, (0.0, 0.4))
        ):
            for timeout in timeouts:
                err, waited = refused_after(path, lock_timeout=timeout, read_only=read_only)
                assert isinstance(err, StorageError)
                assert err.holder_pid == holder
                assert err.path == str(path)
                message = str(err)
                assert f"{path} is held by process {holder}" in message
                assert "Never delete the .wal file" in message
                if timeout:
                    assert f"(waited {timeout:g} s)" in message
                assert timeout <= waited < timeout + SLACK, (mode, timeout, waited)
                timings.append(f"{mode} {timeout:g} s -> {waited:.2f} s")

        # A writer that may wait long enough gets in as soon as the holder lets go.
        release = threading.Timer(0.6, os.kill, args=(holder, signal.SIGUSR1))
        started = time.monotonic()
        release.start()
        try:
            with DuckDBStorageManager(path, lock_timeout=30) as storage:
                waited = time.monotonic() - started
                run = RunStore(storage).get_run(run_id)
                assert run.status is RunStatus.COMPLETED
                assert storage.table("documents").count().execute() == 20
                assert not storage.verify()
        finally:
            release.join()
        assert 0.6 <= waited < 0.6 + 2 * SLACK + 0.5, waited
        forkserver.wait_for(holder, "released")
        assert forkserver.reap(holder, timeout=30) == 0, "the lock holder did not end cleanly"
    finally:
        forkserver.kill(holder)  # only if a failure above left it holding the file
    timings.append(f"writer 30 s, holder released at 0.6 s -> opened at {waited:.2f} s")
    tally.notes.append(f"locks: holder pid named in every refusal; {'; '.join(timings)}")
