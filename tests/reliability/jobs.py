"""What the fork server's children do, and the plans that the tests and the children share.

Each job runs in a child forked by :mod:`tests.reliability.forkserver`, reports with
:func:`~tests.reliability.forkserver.emit`, and ends however the test decides: killed with
SIGKILL, released with SIGUSR1, or on its own. The rows a job writes are a function of the
seeds it is given, so that the test can regenerate every row it planned to write.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import resource
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tests.helpers import make_annotations, make_documents, make_rows
from tests.reliability.forkserver import emit

from egregora.database import CATALOG, DuckDBStorageManager, RunStore, TableSchema
from egregora.database.backends.postgres.manager import PostgresStorageManager
from egregora.database.errors import StorageError

#: The load tests' table: lineage, a key and a body, so that thousands of writes stay cheap.
NOTES = TableSchema(
    "notes",
    {"id": "!uuid", "body": "!string", "created_at": "!timestamp('UTC')"},
    primary_key=("id",),
    lineage=True,
)
LOAD_CATALOG = CATALOG.extend(NOTES)


def note_batch(writer: int, batch: int, rows: int) -> pa.Table:
    """Batch ``batch`` of writer ``writer`` of the load tests (ids differ across both)."""
    return make_rows(NOTES, rows, seed=1_000_000 + writer * 10_000 + batch)


# --- crash writer --------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedBatch:
    """One write a crash writer makes: documents, or annotations of the documents before."""

    index: int
    table: str
    rows: int
    seed: int


def crash_plan(seed: int, *, batches: int, rows: tuple[int, int]) -> list[PlannedBatch]:
    """The writes of one crash writer: every third batch annotates the batch before it."""
    rng = random.Random(seed)
    plan = []
    for index in range(batches):
        table = "annotations" if index % 3 == 2 else "documents"
        plan.append(PlannedBatch(index, table, rng.randint(*rows), seed * 100 + index))
    return plan


def planned_rows(plan: list[PlannedBatch], index: int) -> pa.Table:
    """The rows of batch ``index`` of ``plan`` (``created_at`` is "now"; the rest is fixed)."""
    batch = plan[index]
    if batch.table == "documents":
        return make_documents(batch.rows, seed=batch.seed)
    parents = planned_rows(plan, index - 1)["id"]
    return make_annotations(parents[: batch.rows], seed=batch.seed)


def crash_writer(
    *,
    path: str,
    side: str,
    cycle: int,
    plan_seed: int,
    batches: int,
    rows: tuple[int, int],
    chunk_rows: int,
    piece_rows: int,
    checkpoint_threshold: str | None,
) -> None:
    """Write the planned batches under a run of its own, then wait to be killed.

    After each ``write`` returns, the batch's ids are appended to ``side`` and fsync'ed: the
    side file lists every batch the store has acknowledged. Events: ``run`` once the run is
    recorded, ``chunk`` after each chunk is loaded, ``commit`` and ``committed`` around each
    COMMIT, ``confirmed`` once a batch is in the side file, ``done`` after the last.
    """
    plan = crash_plan(plan_seed, batches=batches, rows=tuple(rows))  # type: ignore[arg-type]
    storage = DuckDBStorageManager(path, chunk_rows=chunk_rows, lock_timeout=30)
    if checkpoint_threshold is not None:
        # Checkpoints inside commits: a kill may then land while the file is rewritten.
        storage._con.execute(f"SET checkpoint_threshold = '{checkpoint_threshold}'")
    current: list[int | None] = [None]
    loaded = [0]
    load_chunk, commit = storage._load_chunk, storage._commit

    def counted_load(*args: Any, **kwargs: Any) -> int:
        written = load_chunk(*args, **kwargs)
        loaded[0] += 1
        emit("chunk", batch=current[0], chunk=loaded[0])
        return written

    def announced_commit() -> None:
        emit("commit", batch=current[0])
        commit()
        emit("committed", batch=current[0])

    vars(storage)["_load_chunk"] = counted_load
    vars(storage)["_commit"] = announced_commit
    run = RunStore(storage).start_run(f"crash-{cycle}")
    emit("run", run_id=run.run_id)
    with open(side, "ab") as log:
        for batch in plan:
            current[0], loaded[0] = batch.index, 0
            data = planned_rows(plan, batch.index)
            stream = pa.RecordBatchReader.from_batches(
                data.schema, data.to_batches(max_chunksize=piece_rows)
            )
            written = storage.write(batch.table, stream, run_id=run.run_id)
            assert written == data.num_rows, (written, data.num_rows)
            line = {"batch": batch.index, "table": batch.table, "ids": data["id"].to_pylist()}
            log.write(json.dumps(line).encode() + b"\n")
            log.flush()
            os.fsync(log.fileno())
            emit("confirmed", batch=batch.index)
    emit("done")
    while True:
        signal.pause()


# --- lock holder ---------------------------------------------------------------------------


def hold_lock(*, path: str) -> None:
    """Open the store, write under a run, and hold the file until SIGUSR1; then end the run,
    close, and report ``released``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    storage = DuckDBStorageManager(path)
    runs = RunStore(storage)
    run = runs.start_run("holder")
    storage.write("documents", make_documents(20, seed=31), run_id=run.run_id)
    emit("holding", run_id=run.run_id)
    signal.sigwait({signal.SIGUSR1})
    runs.end_run(run.run_id)
    storage.close()
    emit("released")


# --- PostgreSQL writer ---------------------------------------------------------------------


def pg_writer(
    *, url: str, schema: str, writer: int, run_id: str | None, batches: int, rows: int
) -> None:
    """Open the PostgreSQL store, report ``ready``, wait for SIGUSR1, then write ``batches``
    batches of notes under ``run_id`` (or a run of its own) and report ``wrote``."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    with PostgresStorageManager(url, schema=schema, catalog=LOAD_CATALOG) as storage:
        runs = RunStore(storage)
        own = run_id is None
        run = runs.start_run(f"pg-writer-{writer}") if own else runs.get_run(str(run_id))
        emit("ready", run_id=run.run_id)
        signal.sigwait({signal.SIGUSR1})
        written = 0
        for batch in range(batches):
            written += storage.write("notes", note_batch(writer, batch, rows), run_id=run.run_id)
        if own:
            runs.end_run(run.run_id)
    emit("wrote", run_id=run.run_id, rows=written)


# --- disk faults ---------------------------------------------------------------------------

#: Rows of one batch of the disk-fault jobs (about 1 KB each).
FAULT_ROWS = 300


def fault_batch(index: int) -> pa.Table:
    """Batch ``index`` of a disk-fault job."""
    return make_documents(FAULT_ROWS, seed=5_000 + index)


def _refusal(exc: BaseException) -> dict[str, Any]:
    cause = exc.__cause__
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "mro": [c.__name__ for c in type(exc).__mro__],
        "message": str(exc).splitlines()[0] if str(exc) else "",
        "cause": None if cause is None else f"{type(cause).__module__}.{type(cause).__name__}",
    }


def _write_until_refused(storage: DuckDBStorageManager, run_id: str, first: int) -> int:
    """Write fault batches from ``first`` on until one is refused; report and return it."""
    for index in range(first, first + 200):
        try:
            storage.write("documents", fault_batch(index), run_id=run_id)
        except StorageError as exc:
            emit("refused", batch=index, **_refusal(exc))
            return index
        except BaseException as exc:
            emit("refused", batch=index, **_refusal(exc))
            raise
        emit("committed", batch=index)
    raise AssertionError("200 batches fitted: the disk never filled up")


def _mount_tmpfs(where: str, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``where`` in a mount namespace of this process's
    own (gone with the process, invisible to every other one); None, or why it failed."""
    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, ms_rec, ms_private = 0x00020000, 0x4000, 0x40000
    steps: list[tuple[str, Callable[[], int]]] = [
        ("unshare(CLONE_NEWNS)", lambda: libc.unshare(clone_newns)),
        ("make / private", lambda: libc.mount(b"none", b"/", None, ms_rec | ms_private, None)),
        ("mount tmpfs", lambda: libc.mount(b"tmpfs", where.encode(), b"tmpfs", 0,
                                           f"size={size}".encode())),
    ]
    for name, step in steps:
        if step() != 0:
            return f"{name}: {os.strerror(ctypes.get_errno())}"
    return None


def _fill(directory: str, *, leave: int) -> Path:
    """A ballast file taking all the free space of ``directory``'s filesystem but ``leave``
    bytes."""
    ballast = Path(directory) / "ballast"
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    with open(ballast, "wb") as out:
        remaining = max(free - leave, 0)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= out.write(block[: min(len(block), remaining)])
    return ballast


def fill_disk(*, method: str, directory: str, copy_to: str, committed: int) -> None:
    """Write ``committed`` batches, run out of space, and report the refusal.

    ``method``:

    - ``tmpfs``: the store lives on a small tmpfs in a mount namespace of this process's own;
      a ballast file fills it, so that the next commit fails with ENOSPC. The ballast is then
      removed, the run ended and the store closed, and its files are copied to ``copy_to``
      for the test to open (the tmpfs disappears with this process).
    - ``rlimit``: RLIMIT_FSIZE (SIGXFSZ ignored) stops the store's files from growing, so
      that the next commit fails with EFBIG. The limit is then lifted, one more batch
      written, the run ended, and the process leaves without closing the store (the test's
      open replays the WAL).

    Events: ``committed`` per batch written, ``refused`` with the error's type, ``after``
    once the store took a write again, ``finished``.
    """
    if method == "tmpfs":
        why = _mount_tmpfs(directory, 8 << 20)
        if why is not None:
            emit("no_tmpfs", reason=why)
            return
    path = str(Path(directory) / "store.duckdb")
    storage = DuckDBStorageManager(path)
    runs = RunStore(storage)
    run = runs.start_run(f"disk-{method}")
    emit("run", run_id=run.run_id)
    for index in range(committed):
        storage.write("documents", fault_batch(index), run_id=run.run_id)
        emit("committed", batch=index)
    ballast: Path | None = None
    if method == "tmpfs":
        ballast = _fill(directory, leave=96 << 10)
    else:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        grown = max(p.stat().st_size for p in Path(directory).iterdir())
        resource.setrlimit(resource.RLIMIT_FSIZE, (grown + (96 << 10), hard))
    refused = _write_until_refused(storage, run.run_id, committed)
    emit("still_reads", rows=int(storage.table("documents").count().execute()))
    if ballast is not None:
        ballast.unlink()
    else:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    storage.write("documents", fault_batch(refused + 1), run_id=run.run_id)
    emit("after", batch=refused + 1)
    runs.end_run(run.run_id)
    if method == "tmpfs":
        storage.close()
        for name in os.listdir(directory):
            shutil.copy2(Path(directory) / name, Path(copy_to) / name)
    emit("finished")


#: The jobs the fork server runs, by name.
JOBS: dict[str, Callable[..., None]] = {
    "crash_writer": crash_writer,
    "hold_lock": hold_lock,
    "pg_writer": pg_writer,
    "fill_disk": fill_disk,
}
