"""Rolling back a run: marked ROLLED_BACK at once, its rows then purged table by table,
children first; refused when other runs' rows depend on them unless those go too; and a purge
interrupted between tables is reported by ``verify`` and finished by the next rollback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from tests.helpers import make_annotations, make_documents, make_messages, make_rows

from egregora.database import (
    ANNOTATIONS_SCHEMA,
    CATALOG,
    DuckDBStorageManager,
    ForeignKey,
    RunStatus,
    RunStore,
    TableSchema,
    errors,
    lineage,
)
from egregora.database.runs import rollback


def ids(store: DuckDBStorageManager, table: str, column: str = "id") -> set[str]:
    return {str(v) for v in store.to_arrow(store.table(table).select(column))[column].to_pylist()}


def found(store: DuckDBStorageManager) -> set[tuple[str, str, int]]:
    return {(p.kind, p.table, p.count) for p in store.verify().problems}


def test_dependents_are_removed_transitively(tmp_path: Path) -> None:
    """A reply (a user table) of run c on an annotation of run b on a document of run a:
    removing a's dependents removes b's annotation and c's reply, children first."""
    replies = TableSchema(
        "replies",
        ibis.schema({"id": "!uuid", "annotation_id": "!uuid", "body": "!string"}),
        primary_key=("id",),
        foreign_keys=(ForeignKey.to("annotation_id", ANNOTATIONS_SCHEMA.name, "id"),),
        lineage=True,
    )
    with DuckDBStorageManager(tmp_path / "s.duckdb", catalog=CATALOG.extend(replies)) as store:
        runs = RunStore(store)
        with runs.run("a") as a:
            docs = make_documents(2, seed=1)
            store.write("documents", docs, run_id=a.run_id)
        with runs.run("b") as b:
            notes = make_annotations(docs["id"].to_pylist(), seed=2)
            store.write("annotations", notes, run_id=b.run_id)
        with runs.run("c") as c:
            first = notes["id"].to_pylist()[:1]
            reply = make_rows(replies, 1, seed=3, overrides={"annotation_id": first})
            store.write("replies", reply, run_id=c.run_id)

        with pytest.raises(errors.IntegrityError) as caught:
            runs.rollback_run(a.run_id)
        assert caught.value.failures is not None
        assert caught.value.failures.num_rows == 2  # b's annotations; the reply is not direct
        assert runs.get_run(a.run_id).status is RunStatus.COMPLETED

        runs.rollback_run(a.run_id, remove_dependents=True)

        for table in ("documents", "annotations", "replies"):
            assert store.table(table).count().execute() == 0, table
        assert runs.get_run(c.run_id).status is RunStatus.COMPLETED
        assert store.verify().problems == ()


# --- an interrupted purge --------------------------------------------------------------------


def interrupt_after_first_table(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the purge fail after its first table, as a killed process would; returns the
    tables purged."""
    real = rollback.purge_table
    purged: list[str] = []

    def purge_table(
        storage: DuckDBStorageManager, table: TableSchema, run_id: str, **kw: Any
    ) -> int:
        if purged:
            raise KeyboardInterrupt
        purged.append(table.name)
        return real(storage, table, run_id, **kw)

    monkeypatch.setattr(rollback, "purge_table", purge_table)
    return purged


def test_interrupted_purge_survives_a_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store.duckdb"
    store = DuckDBStorageManager(path)
    runs = RunStore(store)
    run = runs.start_run("a")
    store.write("documents", make_documents(3), run_id=run.run_id)
    store.write("messages", make_messages(2), run_id=run.run_id)
    runs.end_run(run.run_id)
    purged = interrupt_after_first_table(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        runs.rollback_run(run.run_id)
    store.close()
    monkeypatch.undo()
    assert purged == ["annotations"]

    with DuckDBStorageManager(path) as reopened:
        assert found(reopened) == {
            ("unfinished_purge", "runs", 1),
            ("unfinished_purge", "documents", 3),
            ("unfinished_purge", "messages", 2),
        }
        assert lineage.committed(reopened, "documents").count().execute() == 0
        done = RunStore(reopened).rollback_run(run.run_id)
        assert done.purged_at is not None
        assert reopened.table("documents").count().execute() == 0
        assert reopened.verify().problems == ()


# --- a property: any history of runs, writes and rollbacks leaves the store sound -----------------


@dataclass(frozen=True)
class PipelineRun:
    """A run: writes ``documents`` new documents, annotates stored documents (indexes into
    the sorted ids, their own run's or others'), then ends with ``outcome``."""

    documents: int
    annotate: tuple[int, ...]
    outcome: RunStatus


@dataclass(frozen=True)
class Rollback:
    """Roll back the ``pick``-th run not yet rolled back (modulo their number)."""

    pick: int
    remove_dependents: bool


class History:
    """A store and a model of which run owns which row, driven step by step."""

    def __init__(self) -> None:
        self.store = DuckDBStorageManager(":memory:")
        self.runs = RunStore(self.store)
        self.status: dict[str, RunStatus] = {}
        self.docs: dict[str, str] = {}  # document id -> run id
        self.notes: dict[str, tuple[str, str]] = {}  # annotation id -> (run id, document id)

    def apply(self, step: PipelineRun | Rollback) -> None:
        if isinstance(step, PipelineRun):
            self.pipeline_run(step)
        else:
            self.roll_back(step)

    def pipeline_run(self, step: PipelineRun) -> None:
        seed = 10 * len(self.status)
        run_id = self.runs.start_run(f"run-{len(self.status)}").run_id
        self.status[run_id] = RunStatus.RUNNING
        stored = sorted(self.docs)
        if step.documents:
            docs = make_documents(step.documents, seed=seed)
            assert self.store.write("documents", docs, run_id=run_id) == step.documents
            self.docs.update(dict.fromkeys(docs["id"].to_pylist(), run_id))
        if step.annotate and stored:
            targets = [stored[i % len(stored)] for i in step.annotate]
            notes = make_annotations(targets, seed=seed + 1)
            assert self.store.write("annotations", notes, run_id=run_id) == len(targets)
            self.notes.update(
                zip(notes["id"].to_pylist(), [(run_id, d) for d in targets], strict=True)
            )
        assert self.runs.end_run(run_id, status=step.outcome).status is step.outcome
        self.status[run_id] = step.outcome

    def roll_back(self, step: Rollback) -> None:
        done = sorted(r for r, s in self.status.items() if s is not RunStatus.ROLLED_BACK)
        if not done:
            return
        run_id = done[step.pick % len(done)]
        owned = {d for d, r in self.docs.items() if r == run_id}
        dependents = {n for n, (r, d) in self.notes.items() if d in owned and r != run_id}
        if dependents:
            # Without removal it must refuse and change nothing, whatever the step asks.
            with pytest.raises(errors.IntegrityError) as caught:
                self.runs.rollback_run(run_id)
            assert caught.value.failures is not None
            assert caught.value.failures.num_rows == len(dependents)
            assert self.runs.get_run(run_id).status is self.status[run_id]
            if not step.remove_dependents:
                event("rollback", "refused")
                return
        event("rollback", "removing dependents" if dependents else "alone")
        rolled = self.runs.rollback_run(run_id, remove_dependents=step.remove_dependents)
        assert (rolled.status, rolled.purged_at is not None) == (RunStatus.ROLLED_BACK, True)
        self.status[run_id] = RunStatus.ROLLED_BACK
        self.docs = {d: r for d, r in self.docs.items() if r != run_id}
        self.notes = {
            n: (r, d) for n, (r, d) in self.notes.items() if r != run_id and d not in owned
        }

    def check(self) -> None:
        """The store holds the model's rows per run and table, committed reads show the
        completed runs' documents, and verify reports the failed runs' rows only."""
        store = self.store
        expected: dict[tuple[str, str], int] = {}
        for table, owners in (
            ("documents", list(self.docs.values())),
            ("annotations", [r for r, _ in self.notes.values()]),
        ):
            for run_id in owners:
                expected[run_id, table] = expected.get((run_id, table), 0) + 1
        per_run = store.to_arrow(lineage.rows_per_run(store)).to_pylist()
        assert {(str(r["run_id"]), r["table"]): r["rows"] for r in per_run} == expected
        unfinished: dict[str, int] = {}
        for (run_id, table), n in expected.items():
            if self.status[run_id] is RunStatus.FAILED:
                unfinished[table] = unfinished.get(table, 0) + n
        assert {(p.kind, p.table, p.count) for p in store.verify().problems} == {
            ("unfinished_run_rows", table, n) for table, n in unfinished.items()
        }
        completed = {d for d, r in self.docs.items() if self.status[r] is RunStatus.COMPLETED}
        shown = store.to_arrow(lineage.committed(store, "documents").select("id"))
        assert {str(v) for v in shown["id"].to_pylist()} == completed


outcomes = st.sampled_from([RunStatus.COMPLETED, RunStatus.FAILED])
pipeline_runs = st.builds(
    PipelineRun,
    documents=st.integers(0, 2),
    annotate=st.lists(st.integers(0, 99), max_size=2).map(tuple),
    outcome=outcomes,
)
rollbacks = st.builds(Rollback, pick=st.integers(0, 9), remove_dependents=st.booleans())


# Each step costs a few validated writes, hence few examples. Every history starts with a run
# whose documents a second run annotates, and ends with a rollback, so that rollbacks with
# dependents come up in most examples.
@settings(max_examples=10, deadline=None)
@given(
    documents=st.integers(1, 3),
    annotate=st.lists(st.integers(0, 99), min_size=1, max_size=2).map(tuple),
    outcome=outcomes,
    steps=st.lists(st.one_of(pipeline_runs, rollbacks), max_size=3),
    last=rollbacks,
)
def test_any_history_of_runs_and_rollbacks_leaves_the_store_sound(
    documents: int,
    annotate: tuple[int, ...],
    outcome: RunStatus,
    steps: list[PipelineRun | Rollback],
    last: Rollback,
) -> None:
    history = History()
    try:
        history.pipeline_run(PipelineRun(documents, (), RunStatus.COMPLETED))
        history.pipeline_run(PipelineRun(0, annotate, outcome))
        for step in [*steps, last]:
            history.apply(step)
        history.check()
    finally:
        history.store.close()
