"""RunStore: the life of a run, its illegal transitions, config hashing and crash recovery.

Crash tests use real processes: a child that is killed with SIGKILL leaves a RUNNING run,
which the next open marks CRASHED. Config hashing is checked with hypothesis.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from tests.helpers import make_documents

from egregora.database import DuckDBStorageManager, Run, RunStatus, RunStore, new_id
from egregora.database.errors import RunNotFoundError, RunStateError, ValidationError
from egregora.database.runs.config import config_hash
from egregora.database.version import package_version


def count(store: DuckDBStorageManager, table: str) -> int:
    return int(store.table(table).count().execute())


# --- the life of a run ----------------------------------------------------------------


def test_start_get_end_round_trip(runs: RunStore) -> None:
    config = {"model": "m-1", "temperature": 0.5, "steps": [1, 2]}
    run = runs.start_run("enrich-urls", config=config)

    assert run.status is RunStatus.RUNNING
    assert uuid.UUID(run.run_id).version == 7
    assert run.config == config
    assert run.ended_at is None
    assert run.error is None
    assert run.duration is None
    assert run.heartbeat_at == run.started_at
    assert run.started_at.utcoffset() == timedelta(0)
    assert runs.get_run(run.run_id) == run
    assert runs.find_run(run.run_id) == run

    ended = runs.end_run(run.run_id)

    assert ended.status is RunStatus.COMPLETED
    assert ended.ended_at is not None
    assert ended.ended_at >= run.started_at
    assert ended.duration is not None
    assert ended.duration >= timedelta(0)
    assert runs.get_run(run.run_id) == ended


def test_runs_are_listed_newest_first(store: DuckDBStorageManager, runs: RunStore) -> None:
    started = [runs.start_run(f"step-{i}").run_id for i in range(3)]

    listed = store.to_arrow(runs.list_runs())["run_id"].to_pylist()

    assert listed == started[::-1]


def test_runs_started_at_the_same_instant_are_listed_by_id(
    store: DuckDBStorageManager, runs: RunStore
) -> None:
    first = runs.start_run("first")
    # Recorded by hand with the very same start: only the (time-ordered) id can order them.
    twins = [dataclasses.replace(first, run_id=str(new_id()), name=f"twin-{i}") for i in range(3)]
    for twin in twins:
        store.write("runs", twin.to_arrow(), run_id=None)

    listed = store.to_arrow(runs.list_runs())["run_id"].to_pylist()

    assert listed == [t.run_id for t in reversed(twins)] + [first.run_id]


def test_provenance_is_recorded(runs: RunStore) -> None:
    config = {"b": 1.0, "a": [True, None]}

    run = runs.get_run(runs.start_run("provenance", config=config).run_id)

    assert run.code_version.startswith(package_version())
    assert run.host == socket.gethostname()
    assert run.pid == os.getpid()
    assert run.config_hash == config_hash(config)
    assert run.config == {"a": [True, None], "b": 1}


def test_the_context_manager_completes_the_run(runs: RunStore) -> None:
    with runs.run("ok", config={"x": 1}) as run:
        assert runs.get_run(run.run_id).status is RunStatus.RUNNING

    done = runs.get_run(run.run_id)
    assert done.status is RunStatus.COMPLETED
    assert done.error is None


def test_the_context_manager_records_a_failure_and_reraises(runs: RunStore) -> None:
    with pytest.raises(ZeroDivisionError, match="division by zero"), runs.run("fails") as run:
        _ = 1 / 0

    failed = runs.get_run(run.run_id)
    assert failed.status is RunStatus.FAILED
    assert failed.error == "ZeroDivisionError: division by zero"
    assert failed.ended_at is not None


def test_the_context_manager_cancels_on_keyboard_interrupt(runs: RunStore) -> None:
    with pytest.raises(KeyboardInterrupt), runs.run("interrupted") as run:
        raise KeyboardInterrupt

    assert runs.get_run(run.run_id).status is RunStatus.CANCELLED


def test_a_run_ended_inside_the_block_keeps_its_status(runs: RunStore) -> None:
    with runs.run("cancelled") as run:
        runs.end_run(run.run_id, status=RunStatus.CANCELLED, error="user stop")
    assert runs.get_run(run.run_id).status is RunStatus.CANCELLED

    # The block's own exception propagates, not a RunStateError about the run's status.
    started: list[str] = []

    def cancel_then_fail() -> None:
        with runs.run("then fails") as other:
            started.append(other.run_id)
            runs.end_run(other.run_id, status=RunStatus.CANCELLED)
            raise LookupError("original")

    with pytest.raises(LookupError, match="original"):
        cancel_then_fail()
    assert runs.get_run(started[0]).status is RunStatus.CANCELLED


# --- illegal transitions and unknown runs ---------------------------------------------


@pytest.mark.parametrize("first", ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"])
def test_a_finished_run_cannot_end_again_or_write(
    store: DuckDBStorageManager, runs: RunStore, first: str
) -> None:
    run = runs.start_run("once")
    ended = runs.end_run(
        run.run_id, status=RunStatus(first), error="why" if first != "COMPLETED" else None
    )

    for status in RunStatus:
        with pytest.raises(RunStateError) as caught:
            runs.end_run(run.run_id, status=status)
        assert caught.value.run_id == run.run_id
        assert caught.value.table == "runs"
    with pytest.raises(RunStateError) as caught:
        store.write("documents", make_documents(1), run_id=run.run_id)
    assert caught.value.run_id == run.run_id
    assert caught.value.table == "documents"
    assert first in str(caught.value)
    with pytest.raises(RunStateError):
        runs.heartbeat(run.run_id)

    assert runs.get_run(run.run_id) == ended
    assert count(store, "documents") == 0


@pytest.mark.parametrize("status", ["ROLLED_BACK", "RUNNING", "DONE"])
def test_end_run_refuses_a_status_that_does_not_end_a_run(runs: RunStore, status: str) -> None:
    run = runs.start_run("bad end")

    with pytest.raises(RunStateError) as caught:
        runs.end_run(run.run_id, status=status)  # type: ignore[arg-type]

    assert isinstance(caught.value, ValueError)
    assert status in str(caught.value)
    assert runs.get_run(run.run_id).status is RunStatus.RUNNING


def test_an_unknown_run_is_not_found(store: DuckDBStorageManager, runs: RunStore) -> None:
    ghost = str(uuid.uuid4())

    for call in (runs.get_run, runs.end_run, runs.heartbeat):
        with pytest.raises(RunNotFoundError) as caught:
            call(ghost)
        assert isinstance(caught.value, LookupError)
        assert caught.value.run_id == ghost
    assert runs.find_run(ghost) is None
    assert runs.find_run("not-a-uuid") is None
    with pytest.raises(RunNotFoundError):
        runs.get_run("not-a-uuid")
    with pytest.raises(RunNotFoundError) as caught:
        store.write("documents", make_documents(1), run_id=ghost)
    assert caught.value.run_id == ghost


def test_a_parent_run_must_exist(store: DuckDBStorageManager, runs: RunStore) -> None:
    ghost = str(uuid.uuid4())

    with pytest.raises(RunNotFoundError) as caught:
        runs.start_run("orphan", parent_run_id=ghost)

    assert caught.value.run_id == ghost
    assert count(store, "runs") == 0
    parent = runs.start_run("parent")
    child = runs.start_run("child", parent_run_id=parent.run_id)
    assert runs.get_run(child.run_id).parent_run_id == parent.run_id


# --- config hashing -------------------------------------------------------------------


class _Opaque:
    pass


NOT_JSON: dict[str, Any] = {
    "set": {"tags": {"a", "b"}},
    "object": {"model": _Opaque()},
    "nan": {"threshold": math.nan},
    "infinity": {"limit": math.inf},
    "negative_infinity": {"limit": -math.inf},
    "bytes": {"key": b"raw"},
    "nested_set": {"steps": [{"ids": {1, 2}}]},
    "non_string_key": {1: "one"},
    "lone_surrogate": {"name": "\ud800"},
    "a_list": ["model", "m"],
    "a_string": "model=m",
}


@pytest.mark.parametrize("case", NOT_JSON)
def test_a_config_that_is_not_json_is_refused(
    store: DuckDBStorageManager, runs: RunStore, case: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        runs.start_run("refused", config=NOT_JSON[case])

    assert caught.value.table == "runs"
    assert caught.value.columns == ("config",)
    with pytest.raises(ValidationError):
        config_hash(NOT_JSON[case])
    assert count(store, "runs") == 0


# --- crashes and heartbeats -----------------------------------------------------------


def test_writes_and_heartbeats_keep_a_run_alive(
    store: DuckDBStorageManager, runs: RunStore
) -> None:
    run = runs.start_run("busy")
    time.sleep(0.01)
    runs.heartbeat(run.run_id)
    beat = runs.get_run(run.run_id).heartbeat_at
    assert beat > run.started_at
    time.sleep(0.01)
    store.write("documents", make_documents(2), run_id=run.run_id)
    assert runs.get_run(run.run_id).heartbeat_at > beat

    assert runs.recover_crashed_runs(heartbeat_timeout=timedelta(hours=1)) == []
    marked = runs.recover_crashed_runs(heartbeat_timeout=timedelta(0))
    assert [m.run_id for m in marked] == [run.run_id]
    assert runs.get_run(run.run_id).status is RunStatus.CRASHED


def test_a_run_is_immutable(runs: RunStore) -> None:
    run: Run = runs.start_run("frozen")
    with pytest.raises(AttributeError):
        run.status = RunStatus.COMPLETED  # type: ignore[misc]
