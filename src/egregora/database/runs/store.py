"""RunStore: every pipeline execution as a durable, queryable record in ``runs``.

Runs are written as Arrow batches through the storage manager's write path, like any other
table. A run moves RUNNING -> COMPLETED | FAILED | CANCELLED | CRASHED, and any finished run
may later be ROLLED_BACK; every other transition raises :class:`RunStateError`.

Crash recovery needs no daemon: a RUNNING run refreshes ``heartbeat_at`` with every write,
and opening a store marks CRASHED the runs whose local process is gone or whose heartbeat is
older than the timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import ibis
import pyarrow as pa

from egregora.database import statements
from egregora.database.errors import RunNotFoundError, RunStateError
from egregora.database.ids import canonical_uuid, new_id_str
from egregora.database.model import RUN_ID, RUNS_TABLE, utc_now
from egregora.database.runs.config import canonical_json, checked_text, config_hash, storable_text
from egregora.database.runs.rollback import dependents_error, find_dependents, purge_run
from egregora.database.schemas import END_STATUSES, RUNS_SCHEMA, RunStatus
from egregora.database.version import code_version

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.store import Store


@dataclass(frozen=True)
class Run:
    """One pipeline run, as recorded. Immutable: operations return a new value."""

    run_id: str
    name: str
    status: RunStatus
    config: Mapping[str, Any]
    config_hash: str
    parent_run_id: str | None
    code_version: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    ended_at: datetime | None
    error: str | None
    purged_at: datetime | None

    @property
    def duration(self) -> timedelta | None:
        """How long the run took, once it has ended."""
        return None if self.ended_at is None else self.ended_at - self.started_at

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Run:
        """A run from a row of ``runs`` as returned by Arrow."""
        values = dict(row)
        values["run_id"] = str(values["run_id"])
        if values["parent_run_id"] is not None:
            values["parent_run_id"] = str(values["parent_run_id"])
        values["status"] = RunStatus(values["status"])
        values["config"] = json.loads(values["config"])
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def to_arrow(self) -> pa.Table:
        """This run as a one-row Arrow table of ``runs``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["status"] = str(self.status)
        values["config"] = canonical_json(self.config)
        return pa.Table.from_pylist([values], schema=RUNS_SCHEMA.to_arrow())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunStore:
    """The runs of a store.

    Args:
        storage: The storage manager to record runs in.

    Example:
        >>> from egregora.database import DuckDBStorageManager
        >>> with DuckDBStorageManager(":memory:") as storage:
        ...     runs = RunStore(storage)
        ...     with runs.run("enrich-urls", config={"model": "m"}) as run:
        ...         pass
        ...     runs.get_run(run.run_id).status
        <RunStatus.COMPLETED: 'COMPLETED'>
    """

    def __init__(self, storage: Store) -> None:
        self.storage = storage

    def start_run(
        self,
        name: str,
        *,
        config: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> Run:
        """Record a new RUNNING run and return it.

        Raises:
            ValidationError: the config is not a mapping, or not JSON.
            RunNotFoundError: ``parent_run_id`` names no run.
        """
        checked_text(name, "name", column="name")
        digest = config_hash({} if config is None else config)
        config = dict(config or {})
        if parent_run_id is not None:
            self.get_run(parent_run_id)
        now = utc_now()
        run = Run(
            run_id=new_id_str(), name=name, status=RunStatus.RUNNING,
            config=json.loads(canonical_json(config)), config_hash=digest,
            parent_run_id=None if parent_run_id is None else str(parent_run_id),
            code_version=code_version(), host=socket.gethostname(), pid=os.getpid(),
            started_at=now, heartbeat_at=now, ended_at=None, error=None, purged_at=None,
        )
        self.storage.write(RUNS_TABLE, run.to_arrow(), run_id=None)
        return run

    def find_run(self, run_id: str) -> Run | None:
        """The run, or None when no run has this id."""
        key = canonical_uuid(run_id)
        if key is None:
            return None
        query = statements.select_where_equal(RUNS_TABLE, list(RUNS_SCHEMA.column_names), [RUN_ID])
        rows = self.storage.execute(query, [key]).to_pylist()
        return Run.from_row(rows[0]) if rows else None

    def get_run(self, run_id: str) -> Run:
        """The run.

        Raises:
            RunNotFoundError: no run has this id.
        """
        run = self.find_run(run_id)
        if run is None:
            raise RunNotFoundError(f"no run {run_id}", table=RUNS_TABLE, run_id=str(run_id))
        return run

    def list_runs(self) -> ir.Table:
        """An Ibis expression over ``runs``, newest first."""
        # run_id breaks ties of started_at: UUIDv7 ids of one process are strictly increasing.
        return self.storage.table(RUNS_TABLE).order_by(
            [ibis.desc("started_at"), ibis.desc("run_id")]
        )

    def end_run(
        self,
        run_id: str,
        *,
        status: RunStatus = RunStatus.COMPLETED,
        error: str | None = None,
    ) -> Run:
        """End a RUNNING run with ``status`` (COMPLETED by default) and an optional error.

        Raises:
            RunNotFoundError: no run has this id.
            RunStateError: the run is not RUNNING, or ``status`` is not an end status.
        """
        try:
            status = RunStatus(status)
        except ValueError as exc:
            raise RunStateError(
                f"end_run cannot set {status!r}: not a run status; use one of "
                f"{', '.join(END_STATUSES)}",
                table=RUNS_TABLE, run_id=str(run_id),
            ) from exc
        if status not in END_STATUSES:
            raise RunStateError(
                f"end_run cannot set {status}; use one of {', '.join(END_STATUSES)}"
                + (" (rollback_run rolls back)" if status is RunStatus.ROLLED_BACK else ""),
                table=RUNS_TABLE, run_id=str(run_id),
            )
        if error is not None:
            checked_text(error, "error", column="error")
        with self.storage.lock:
            run = self.get_run(run_id)
            if run.status is not RunStatus.RUNNING:
                raise RunStateError(
                    f"run {run_id} is already {run.status}; only a RUNNING run can end",
                    table=RUNS_TABLE, run_id=str(run_id),
                )
            now = max(utc_now(), run.started_at)
            return self._save(run, status=status, ended_at=now, heartbeat_at=now, error=error)

    def _save(self, run: Run, **changes: Any) -> Run:
        updated = replace(run, **changes)
        self.storage.write(RUNS_TABLE, updated.to_arrow(), run_id=None, on_conflict="update")
        return updated

    def heartbeat(self, run_id: str) -> None:
        """Tell the store the run is alive (writes do this on their own)."""
        with self.storage.lock:
            run = self.get_run(run_id)
            if run.status is not RunStatus.RUNNING:
                raise RunStateError(
                    f"run {run_id} is {run.status}", table=RUNS_TABLE, run_id=run_id
                )
            self._save(run, heartbeat_at=max(utc_now(), run.started_at))

    @contextlib.contextmanager
    def run(
        self,
        name: str,
        *,
        config: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> Iterator[Run]:
        """Start a run, and end it COMPLETED on exit or FAILED with the exception's type and
        message (CANCELLED on KeyboardInterrupt). The exception propagates.

        A run that the block ended itself (``end_run(..., status=CANCELLED)``) keeps the
        status it was given, and the block's exception is not hidden by a RunStateError.
        """
        run = self.start_run(name, config=config, parent_run_id=parent_run_id)
        try:
            yield run
        except KeyboardInterrupt:
            self._end_if_running(run.run_id, status=RunStatus.CANCELLED, error="KeyboardInterrupt")
            raise
        except BaseException as exc:
            error = storable_text(f"{type(exc).__name__}: {exc}")
            self._end_if_running(run.run_id, status=RunStatus.FAILED, error=error)
            raise
        self._end_if_running(run.run_id, status=RunStatus.COMPLETED, error=None)

    def _end_if_running(self, run_id: str, *, status: RunStatus, error: str | None) -> None:
        # Under the lock: the check and the end must not interleave with another end.
        with self.storage.lock:
            if self.get_run(run_id).status is RunStatus.RUNNING:
                self.end_run(run_id, status=status, error=error)

    def recover_crashed_runs(self, *, heartbeat_timeout: timedelta) -> list[Run]:
        """Mark CRASHED the RUNNING runs whose process is gone or whose heartbeat is stale.

        A run of this host whose PID is not alive crashed for certain; any run whose heartbeat
        is older than ``heartbeat_timeout`` is presumed crashed. Returns the runs marked.
        """
        columns = list(RUNS_SCHEMA.column_names)
        query = statements.select_where_equal(RUNS_TABLE, columns, ["status"])
        running = [Run.from_row(r) for r in self.storage.execute(query, ["RUNNING"]).to_pylist()]
        host, me, now = socket.gethostname(), os.getpid(), utc_now()
        marked = []
        for run in running:
            if run.host == host and run.pid != me and not _pid_alive(run.pid):
                reason = f"process {run.pid} on {host} ended without ending the run"
            elif now - run.heartbeat_at > heartbeat_timeout:
                reason = (
                    f"no heartbeat since {run.heartbeat_at.isoformat()} "
                    f"(timeout {heartbeat_timeout})"
                )
            else:
                continue
            ended = max(now, run.heartbeat_at)
            marked.append(self._save(run, status=RunStatus.CRASHED, ended_at=ended,
                                     error=f"crashed: {reason}"))
        return marked

    def rollback_run(self, run_id: str, *, remove_dependents: bool = False) -> Run:
        """Mark a finished run ROLLED_BACK and remove every row it wrote, children first.

        Committed reads stop showing the run's rows as soon as it is marked; the rows are
        then removed table by table (see :mod:`egregora.database.runs.rollback`).

        Args:
            run_id: A run that is not RUNNING (end it first). A ROLLED_BACK run is purged
                again: an interrupted purge is finished, a finished one removes nothing.
            remove_dependents: Also remove rows of other runs that reference this run's rows
                (an annotation written later on a document of this run), and the rows that
                reference those, transitively. Without it, such rows make the rollback refuse
                before anything changes. Resume an interrupted purge with the same setting.

        Raises:
            RunNotFoundError: no run has this id.
            RunStateError: the run is still RUNNING.
            IntegrityError: rows of other runs depend on this run's rows; ``failures`` lists
                every one (``column`` is ``table.reference``, ``key`` the dependent row's key).
        """
        storage = self.storage
        # The check and the mark must not interleave with writes of other threads.
        with storage.lock:
            run = self.get_run(run_id)
            if run.status is RunStatus.RUNNING:
                raise RunStateError(
                    f"run {run_id} is RUNNING; end it before rolling it back",
                    table=RUNS_TABLE, run_id=run.run_id,
                )
            dependents = [] if remove_dependents else find_dependents(storage, run.run_id)
            if dependents:
                raise dependents_error(storage, run.run_id, dependents)
            if run.status is not RunStatus.ROLLED_BACK:
                run = self._save(run, status=RunStatus.ROLLED_BACK)
        purge_run(storage, run.run_id, remove_dependents=remove_dependents)
        with storage.lock:
            run = self.get_run(run.run_id)
            return run if run.purged_at is not None else self._save(run, purged_at=utc_now())
