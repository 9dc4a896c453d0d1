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
import enum
import hashlib
import json
import math
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

import ibis
import pyarrow as pa

from egregora.database import statements
from egregora.database.errors import RunNotFoundError, RunStateError, ValidationError
from egregora.database.ids import new_id_str
from egregora.database.model import RUN_ID, RUNS_TABLE, utc_now
from egregora.database.schemas import RUNS_SCHEMA

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.backend import StorageManager


class RunStatus(enum.StrEnum):
    """Where a run stands."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    ROLLED_BACK = "ROLLED_BACK"


#: The statuses ``end_run`` may set.
END_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.CRASHED)


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


def _checked_text(value: str, path: str, *, column: str = "config") -> str:
    # A lone surrogate is a Python str but not Unicode text: JSON, hashing, Arrow and the
    # store would all fail on it later, with less helpful errors (or none of the library's).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = f"config text at {path}" if column == "config" else f"the run's {column}"
        raise ValidationError(
            f"{where} is not valid Unicode ({exc.reason})",
            table=RUNS_TABLE,
            columns=[column],
        ) from exc
    return value


def _storable(text: str) -> str:
    """An exception's text as every store can keep it: lone surrogates (not Unicode) and NUL
    (which PostgreSQL text refuses) escaped. Recording a failure must not fail in its turn
    and hide the exception it records."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _run_key(run_id: object) -> str | None:
    """A run id as canonical UUID text, or None when it is no UUID (no run can have it).

    Checked here, before any query: text that is no UUID (or not even Unicode, such as a
    lone surrogate) would otherwise reach the driver, which fails on it in its own way.
    """
    try:
        return str(run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id)))
    except ValueError:
        return None


def _normalise(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return _checked_text(value, path)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(
                f"config value at {path} is {value}, which JSON cannot represent",
                table=RUNS_TABLE,
                columns=["config"],
            )
        # 1 and 1.0 are the same setting: hash them the same.
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    f"config key {key!r} at {path} is not a string", table=RUNS_TABLE,
                    columns=["config"],
                )
            out[_checked_text(key, path)] = _normalise(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValidationError(
        f"config value at {path} is a {type(value).__name__}, which is not JSON; convert it "
        "to a string, number, boolean, list or mapping",
        table=RUNS_TABLE,
        columns=["config"],
    )


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of a config: sorted keys, no spaces, 1.0 written as 1.

    >>> canonical_json({"b": 1.0, "a": [True, None]})
    '{"a":[true,null],"b":1}'

    Raises:
        ValidationError: the config is not a mapping, or holds something JSON cannot
            represent.
    """
    if not isinstance(config, Mapping):
        raise ValidationError(
            f"config must be a mapping of setting names to values, not a "
            f"{type(config).__name__}",
            table=RUNS_TABLE,
            columns=["config"],
        )
    return json.dumps(
        _normalise(config, "config"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of :func:`canonical_json`: equal settings hash equal, whatever their spelling.

    Raises:
        ValidationError: the config holds something JSON cannot represent.
    """
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


@cache
def code_version() -> str:
    """The package version and, when the working directory is a git checkout, its commit."""
    from egregora.database.storage import package_version  # noqa: PLC0415

    version = package_version()
    commit = os.environ.get("EGREGORA_CODE_COMMIT")
    if commit is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607
                capture_output=True, text=True, timeout=2, check=False,
            )
            commit = done.stdout.strip() if done.returncode == 0 else None
    return f"{version}+g{commit}" if commit else version


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

    def __init__(self, storage: StorageManager) -> None:
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
        _checked_text(name, "name", column="name")
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
        key = _run_key(run_id)
        if key is None:
            return None
        query = statements.select_where_equal(RUNS_TABLE, list(RUNS_SCHEMA.column_names), [RUN_ID])
        rows = self.storage._execute(query, [key]).to_pylist()
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
            _checked_text(error, "error", column="error")
        with self.storage._lock:
            run = self.get_run(run_id)
            if run.status is not RunStatus.RUNNING:
                raise RunStateError(
                    f"run {run_id} is already {run.status}; only a RUNNING run can end",
                    table=RUNS_TABLE, run_id=str(run_id),
                )
            now = max(utc_now(), run.started_at)
            return self._save(run, status=status, ended_at=now, heartbeat_at=now, error=error)

    def _save(self, run: Run, **changes: Any) -> Run:
        from dataclasses import replace  # noqa: PLC0415

        updated = replace(run, **changes)
        self.storage.write(RUNS_TABLE, updated.to_arrow(), run_id=None, on_conflict="update")
        return updated

    def heartbeat(self, run_id: str) -> None:
        """Tell the store the run is alive (writes do this on their own)."""
        with self.storage._lock:
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
            error = _storable(f"{type(exc).__name__}: {exc}")
            self._end_if_running(run.run_id, status=RunStatus.FAILED, error=error)
            raise
        self._end_if_running(run.run_id, status=RunStatus.COMPLETED, error=None)

    def _end_if_running(self, run_id: str, *, status: RunStatus, error: str | None) -> None:
        # Under the lock: the check and the end must not interleave with another end.
        with self.storage._lock:
            if self.get_run(run_id).status is RunStatus.RUNNING:
                self.end_run(run_id, status=status, error=error)

    def recover_crashed_runs(self, *, heartbeat_timeout: timedelta) -> list[Run]:
        """Mark CRASHED the RUNNING runs whose process is gone or whose heartbeat is stale.

        A run of this host whose PID is not alive crashed for certain; any run whose heartbeat
        is older than ``heartbeat_timeout`` is presumed crashed. Returns the runs marked.
        """
        columns = list(RUNS_SCHEMA.column_names)
        query = statements.select_where_equal(RUNS_TABLE, columns, ["status"])
        running = [Run.from_row(r) for r in self.storage._execute(query, ["RUNNING"]).to_pylist()]
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
        """Mark a finished run ROLLED_BACK at once, then remove every row it wrote.

        See :func:`egregora.database.rollback.rollback_run`.
        """
        from egregora.database.rollback import rollback_run  # noqa: PLC0415

        return rollback_run(self, run_id, remove_dependents=remove_dependents)
