"""Rolling back a run: hide its rows at once, then remove them, children first, resumably.

DuckDB has no cascading deletes and cannot delete child rows and then their parent in one
transaction: the parent still counts as referenced until the child delete has committed
(DESIGN §3, measured on 1.5.6). So a rollback is:

1. refuse, before changing anything, if rows of other runs reference the run's rows (unless
   told to remove those too);
2. mark the run ROLLED_BACK: committed reads stop showing its rows immediately;
3. delete its rows table by table, children first, each table in a transaction of its own;
4. record ``purged_at``.

If the purge is interrupted, the run stays ROLLED_BACK with ``purged_at`` NULL, ``verify``
reports the unfinished purge, and calling ``rollback_run`` again finishes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ibis
from sqlglot import exp

from egregora.database import statements
from egregora.database.batches import failures_table
from egregora.database.errors import IntegrityError, RunStateError, format_examples
from egregora.database.lineage import lineage_tables
from egregora.database.model import RUN_ID, RUNS_TABLE, ForeignKey, TableSchema, utc_now
from egregora.database.translate import key_text

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.backend import StorageManager
    from egregora.database.run_store import Run, RunStore

def _references(storage: StorageManager) -> list[tuple[TableSchema, ForeignKey]]:
    """(child, fk) pairs whose parent is a lineage table (rows a run can own)."""
    owners = {t.name for t in lineage_tables(storage)}
    return [
        (child, fk)
        for child in storage.catalog.deletion_order()
        for fk in child.foreign_keys
        if fk.ref_table in owners and fk.columns != (RUN_ID,)
    ]


def _dependents(
    storage: StorageManager, child: TableSchema, fk: ForeignKey, run_id: str
) -> ir.Table:
    c = storage.table(child.name)
    p = storage.table(fk.ref_table)
    owned = p.filter(p[RUN_ID] == ibis.literal(run_id, type="uuid"))
    pred = [c[a] == owned[b] for a, b in zip(fk.columns, fk.ref_columns, strict=True)]
    rows = c.semi_join(owned, pred)
    if child.lineage:
        rows = rows.filter(rows[RUN_ID] != ibis.literal(run_id, type="uuid"))
    return rows


#: A dependent row: its table, the foreign key through which it depends, its key and reference.
Dependent = tuple[str, ForeignKey, dict[str, Any]]


def find_dependents(storage: StorageManager, run_id: str) -> list[Dependent]:
    """Rows of other runs (or of tables without lineage) that reference rows of ``run_id``."""
    found: list[Dependent] = []
    for child, fk in _references(storage):
        cols = list(dict.fromkeys((*child.primary_key, *fk.columns)))
        rows = storage.to_arrow(_dependents(storage, child, fk, run_id).select(*cols)).to_pylist()
        found.extend((child.name, fk, row) for row in rows)
    return found


def _dependents_error(
    storage: StorageManager, run_id: str, found: list[Dependent]
) -> IntegrityError:
    rows: list[tuple[str, str, str | None, str | None]] = []
    for table, fk, row in found:
        reference = ", ".join(f"{c}={str(row[c])!r}" for c in fk.columns)
        rows.append((f"{table}.{', '.join(fk.columns)}", "dependent_row", reference,
                     key_text(storage.catalog[table], row)))
    tables = list(dict.fromkeys(t for t, _, _ in found))
    examples = [f"{col.split('.')[0]} {key} -> {ref}" for col, _, ref, key in rows]
    return IntegrityError(
        f"{len(rows)} rows of {', '.join(f'`{t}`' for t in tables)} written by other runs "
        f"reference rows of run {run_id}; nothing was changed. Roll those runs back first, "
        "or pass remove_dependents=True to remove these rows too: "
        + format_examples(examples),
        table=tables[0],
        run_id=run_id,
        failures=failures_table(rows),
    )


def rollback_run(runs: RunStore, run_id: str, *, remove_dependents: bool = False) -> Run:
    """Mark a finished run ROLLED_BACK and remove every row it wrote, children first.

    Args:
        runs: The run store.
        run_id: A run that is not RUNNING (end it first). A ROLLED_BACK run is purged again:
            an interrupted purge is finished, a finished one removes nothing.
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
    storage = runs.storage
    # The check and the mark must not interleave with writes of other threads.
    with storage._lock:
        run = runs.get_run(run_id)
        if run.status == "RUNNING":
            raise RunStateError(
                f"run {run_id} is RUNNING; end it before rolling it back",
                table=RUNS_TABLE, run_id=run.run_id,
            )
        dependents = [] if remove_dependents else find_dependents(storage, run.run_id)
        if dependents:
            raise _dependents_error(storage, run.run_id, dependents)
        if run.status != "ROLLED_BACK":
            from egregora.database.run_store import RunStatus  # noqa: PLC0415

            run = runs._save(run, status=RunStatus.ROLLED_BACK)
    for table in storage.catalog.deletion_order():
        purge_table(storage, table, run.run_id, remove_dependents=remove_dependents)
    with storage._lock:
        run = runs.get_run(run.run_id)
        return run if run.purged_at is not None else runs._save(run, purged_at=utc_now())


def purge_table(
    storage: StorageManager, table: TableSchema, run_id: str, *, remove_dependents: bool
) -> int:
    """Remove from ``table``, in one transaction, the rows ``run_id`` wrote and, if asked,
    the rows that reference removed rows of its parent tables (see
    :func:`~egregora.database.statements.purged_rows`). Returns the rows removed.

    Parents are purged in later calls: DuckDB refuses a parent delete in the transaction
    that deleted its children.
    """
    condition = statements.purged_rows(storage.catalog, table, dependents=remove_dependents)
    if condition is None:
        return 0
    delete = statements.delete_where(table.name, condition)
    params = [run_id] * len(list(delete.find_all(exp.Placeholder)))
    with storage._transaction():
        done = storage._execute(delete, params)
    return int(done.column(0)[0].as_py()) if done.num_rows else 0
