"""Rolling back a run: marked ROLLED_BACK at once, its rows then purged table by table,
children first; refused when other runs' rows depend on them unless those go too; and a purge
interrupted between tables is reported by ``verify`` and finished by the next rollback."""

from __future__ import annotations

from typing import Any

import pytest
from tests.helpers import make_annotations, make_documents, make_messages

from egregora.database import (
    CATALOG,
    DuckDBStorageManager,
    Run,
    RunStatus,
    RunStore,
    TableSchema,
    errors,
    lineage,
    new_id,
)
from egregora.database.runs import rollback


def ids(store: DuckDBStorageManager, table: str, column: str = "id") -> set[str]:
    return {str(v) for v in store.to_arrow(store.table(table).select(column))[column].to_pylist()}


def counts(store: DuckDBStorageManager) -> dict[tuple[str, str], int]:
    """(run name, table) -> rows, from the lineage query."""
    rows = store.to_arrow(lineage.rows_per_run(store)).to_pylist()
    return {(r["name"], r["table"]): r["rows"] for r in rows}


def found(store: DuckDBStorageManager) -> set[tuple[str, str, int]]:
    return {(p.kind, p.table, p.count) for p in store.verify().problems}


@pytest.fixture
def two_runs(store: DuckDBStorageManager, runs: RunStore) -> dict[str, Any]:
    """Run ``a`` wrote 4 documents, 3 messages and 1 annotation on its own document; run
    ``b`` later annotated two of a's documents and one document of its own."""
    a = runs.start_run("a")
    a_docs = make_documents(4, seed=1)
    store.write("documents", a_docs, run_id=a.run_id)
    store.write("messages", make_messages(3, seed=1), run_id=a.run_id)
    a_notes = make_annotations(a_docs["id"].to_pylist()[3:], seed=1)
    store.write("annotations", a_notes, run_id=a.run_id)
    runs.end_run(a.run_id)
    b = runs.start_run("b", parent_run_id=a.run_id)
    b_docs = make_documents(1, seed=2)
    store.write("documents", b_docs, run_id=b.run_id)
    b_notes = make_annotations([*a_docs["id"].to_pylist()[:2], b_docs["id"][0].as_py()], seed=2)
    store.write("annotations", b_notes, run_id=b.run_id)
    runs.end_run(b.run_id)
    return {
        "a": runs.get_run(a.run_id), "b": runs.get_run(b.run_id),
        "a_docs": set(a_docs["id"].to_pylist()), "b_docs": set(b_docs["id"].to_pylist()),
        "a_notes": set(a_notes["id"].to_pylist()), "b_notes": b_notes["id"].to_pylist(),
    }


def test_rollback_removes_every_row_of_the_run_and_nothing_else(
    store: DuckDBStorageManager, runs: RunStore
) -> None:
    a = runs.start_run("a", config={"k": 1})
    docs = make_documents(4, seed=1)
    store.write("documents", docs, run_id=a.run_id)
    store.write("messages", make_messages(3, seed=1), run_id=a.run_id)
    notes = make_annotations(docs["id"].to_pylist()[:2], seed=1)
    store.write("annotations", notes, run_id=a.run_id)
    a = runs.end_run(a.run_id)
    b = runs.start_run("b")
    b_docs = make_documents(2, seed=2)
    store.write("documents", b_docs, run_id=b.run_id)
    store.write("annotations", make_annotations(b_docs["id"].to_pylist(), seed=2), run_id=b.run_id)
    runs.end_run(b.run_id)

    rolled = runs.rollback_run(a.run_id)

    assert rolled.status is RunStatus.ROLLED_BACK
    assert rolled.purged_at is not None
    assert rolled.purged_at >= rolled.ended_at  # type: ignore[operator]
    assert (rolled.ended_at, rolled.config, rolled.name) == (a.ended_at, {"k": 1}, "a")
    assert runs.get_run(a.run_id) == rolled  # the run's record stays, as history
    assert ids(store, "documents") == set(b_docs["id"].to_pylist())
    assert store.table("messages").count().execute() == 0
    assert store.table("annotations").count().execute() == 2
    assert counts(store) == {("b", "documents"): 2, ("b", "annotations"): 2}
    assert runs.get_run(b.run_id).status is RunStatus.COMPLETED
    assert store.verify().problems == ()
    # Once purged, rolling back again changes nothing.
    assert runs.rollback_run(a.run_id) == rolled


def test_rollback_of_a_failed_run_clears_what_verify_reported(
    store: DuckDBStorageManager, runs: RunStore
) -> None:
    started: list[Run] = []

    def enrich() -> None:
        with runs.run("enrich") as run:
            started.append(run)
            store.write("documents", make_documents(3), run_id=run.run_id)
            raise RuntimeError("enricher broke")

    with pytest.raises(RuntimeError, match="enricher broke"):
        enrich()
    assert found(store) == {("unfinished_run_rows", "documents", 3)}
    assert runs.rollback_run(started[0].run_id).error == "RuntimeError: enricher broke"
    assert store.verify().problems == ()
    assert store.table("documents").count().execute() == 0


def test_a_running_run_cannot_be_rolled_back(store: DuckDBStorageManager, run: Run) -> None:
    store.write("documents", make_documents(2), run_id=run.run_id)
    runs = RunStore(store)
    with pytest.raises(errors.RunStateError, match="is RUNNING; end it") as caught:
        runs.rollback_run(run.run_id)
    assert (caught.value.run_id, caught.value.table) == (run.run_id, "runs")
    assert runs.get_run(run.run_id).status is RunStatus.RUNNING
    assert store.table("documents").count().execute() == 2


@pytest.mark.parametrize("run_id", [str(new_id()), "adapter:whatsapp"])
def test_rollback_of_an_unknown_run(runs: RunStore, run_id: str) -> None:
    with pytest.raises(errors.RunNotFoundError) as caught:
        runs.rollback_run(run_id)
    assert caught.value.run_id == run_id


def test_rollback_refuses_while_later_runs_reference_its_rows(
    store: DuckDBStorageManager, runs: RunStore, two_runs: dict[str, Any]
) -> None:
    a, b = two_runs["a"], two_runs["b"]
    before = {t: store.table(t).count().execute() for t in CATALOG.names}

    with pytest.raises(errors.IntegrityError) as caught:
        runs.rollback_run(a.run_id)

    err = caught.value
    assert (err.table, err.run_id) == ("annotations", a.run_id)
    assert err.failures is not None
    listed = err.failures.to_pylist()
    notes = two_runs["b_notes"][:2]  # b's annotations on a's documents, not on its own
    assert sorted(r["key"] for r in listed) == sorted(f"id={n!r}" for n in notes)
    assert {r["column"] for r in listed} == {"annotations.document_id"}
    assert {r["check"] for r in listed} == {"dependent_row"}
    assert all(r["value"].startswith("document_id='") for r in listed)
    message = str(err)
    assert "2 rows of `annotations` written by other runs reference rows of run" in message
    assert "nothing was changed" in message
    assert "remove_dependents=True" in message
    # nothing changed
    assert runs.get_run(a.run_id) == a
    assert {t: store.table(t).count().execute() for t in CATALOG.names} == before
    assert runs.get_run(b.run_id).status is RunStatus.COMPLETED
    assert store.verify().problems == ()


def test_rollback_with_remove_dependents_removes_the_referencing_rows_too(
    store: DuckDBStorageManager, runs: RunStore, two_runs: dict[str, Any]
) -> None:
    a, b = two_runs["a"], two_runs["b"]

    runs.rollback_run(a.run_id, remove_dependents=True)

    assert ids(store, "documents") == two_runs["b_docs"]
    assert ids(store, "annotations") == {two_runs["b_notes"][2]}  # b's note on its own doc
    assert store.table("messages").count().execute() == 0
    assert runs.get_run(b.run_id).status is RunStatus.COMPLETED
    assert counts(store) == {("b", "documents"): 1, ("b", "annotations"): 1}
    assert store.verify().problems == ()


def test_rolling_back_the_later_run_first_needs_no_removal(
    store: DuckDBStorageManager, runs: RunStore, two_runs: dict[str, Any]
) -> None:
    runs.rollback_run(two_runs["b"].run_id)
    runs.rollback_run(two_runs["a"].run_id)
    assert all(store.table(t).count().execute() == 0 for t in ("documents", "annotations"))
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


def check_half_purged(store: DuckDBStorageManager, run_id: str, two_runs: dict[str, Any]) -> None:
    runs = RunStore(store)
    assert runs.get_run(run_id).status is RunStatus.ROLLED_BACK
    assert runs.get_run(run_id).purged_at is None
    # annotations went first; a's documents and messages are still stored ...
    assert ids(store, "documents") == two_runs["a_docs"] | two_runs["b_docs"]
    assert store.table("messages").count().execute() == 3
    assert ids(store, "annotations") == {two_runs["b_notes"][2]}
    # ... but committed reads no longer show them
    committed_docs = store.to_arrow(lineage.committed(store, "documents").select("id"))
    assert set(committed_docs["id"].to_pylist()) == two_runs["b_docs"]
    assert lineage.committed(store, "messages").count().execute() == 0
    assert found(store) == {
        ("unfinished_purge", "runs", 1),
        ("unfinished_purge", "documents", 4),
        ("unfinished_purge", "messages", 3),
    }


def check_finished(store: DuckDBStorageManager, run_id: str, two_runs: dict[str, Any]) -> None:
    assert RunStore(store).get_run(run_id).purged_at is not None
    assert ids(store, "documents") == two_runs["b_docs"]
    assert store.table("messages").count().execute() == 0
    assert store.verify().problems == ()


def test_interrupted_purge_is_reported_and_finished_by_the_next_rollback(
    store: DuckDBStorageManager, runs: RunStore, two_runs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = two_runs["a"]
    purged = interrupt_after_first_table(monkeypatch)

    with pytest.raises(KeyboardInterrupt):
        runs.rollback_run(a.run_id, remove_dependents=True)

    assert purged == ["annotations"]
    check_half_purged(store, a.run_id, two_runs)
    monkeypatch.undo()
    # b's annotations on a's documents are gone already: no remove_dependents needed now.
    runs.rollback_run(a.run_id)
    check_finished(store, a.run_id, two_runs)


# --- a property: any history of runs, writes and rollbacks leaves the store sound -----------------


