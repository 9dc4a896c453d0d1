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

from typing import TYPE_CHECKING

import ibis
import pyarrow as pa

from egregora.database import statements
from egregora.database.batches import failures_table
from egregora.database.errors import IntegrityError, RunStateError
from egregora.database.lineage import lineage_tables
from egregora.database.model import RUN_ID, RUNS_TABLE, ForeignKey, TableSchema, utc_now

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.run_store import Run, RunStore
    from egregora.database.storage import DuckDBStorageManager

_SAMPLE = 20


def _references(storage: DuckDBStorageManager) -> list[tuple[TableSchema, ForeignKey]]:
    """(child, fk) pairs whose parent is a lineage table (rows a run can own)."""
    owners = {t.name for t in lineage_tables(storage)}
    return [
        (child, fk)
        for child in storage.catalog.deletion_order()
        for fk in child.foreign_keys
        if fk.ref_table in owners and fk.columns != (RUN_ID,)
    ]


def _dependents(
    storage: DuckDBStorageManager, child: TableSchema, fk: ForeignKey, run_id: str
) -> ir.Table:
    c = storage.table(child.name)
    p = storage.table(fk.ref_table)
    owned = p.filter(p[RUN_ID] == ibis.literal(run_id, type="uuid"))
    pred = [c[a] == owned[b] for a, b in zip(fk.columns, fk.ref_columns, strict=True)]
    rows = c.semi_join(owned, pred)
    if child.lineage:
        rows = rows.filter(rows[RUN_ID] != ibis.literal(run_id, type="uuid"))
    return rows


def find_dependents(storage: DuckDBStorageManager, run_id: str) -> list[tuple[str, str, str]]:
    """Rows of other runs that reference rows of ``run_id``: (table, key, reference) text."""
    found: list[tuple[str, str, str]] = []
    for child, fk in _references(storage):
        cols = [*child.primary_key, *fk.columns]
        rows = storage.to_arrow(_dependents(storage, child, fk, run_id).select(*cols)).to_pylist()
        for row in rows:
            key = ", ".join(f"{k}={row[k]!s}" for k in child.primary_key)
            ref = ", ".join(f"{k}={row[k]!s}" for k in fk.columns)
            found.append((child.name, key, ref))
    return found


def rollback_run(runs: RunStore, run_id: str, *, remove_dependents: bool = False) -> Run:
    """Mark a finished run ROLLED_BACK and remove every row it wrote, children first.

    Args:
        runs: The run store.
        run_id: A run that is not RUNNING (end it first). A ROLLED_BACK run whose purge was
            interrupted is purged to the end; a finished purge is a no-op.
        remove_dependents: Also remove rows of other runs that reference this run's rows
            (an annotation written later on a document of this run). Without it, such rows
            make the rollback refuse before anything changes.

    Raises:
        RunNotFoundError: no run has this id.
        RunStateError: the run is still RUNNING.
        IntegrityError: rows of other runs depend on this run's rows; ``failures`` lists them.
    """
    storage = runs.storage
    with storage._lock:  # noqa: SLF001 - the check and the mark must not interleave with writes
        run = runs.get_run(run_id)
        if run.status == "RUNNING":
            raise RunStateError(
                f"run {run_id} is RUNNING; end it before rolling it back",
                table=RUNS_TABLE, run_id=run.run_id,
            )
        if run.status == "ROLLED_BACK" and run.purged_at is not None:
            return run
        dependents = [] if remove_dependents else find_dependents(storage, run.run_id)
        if dependents:
            raise IntegrityError(
                f"{len(dependents)} rows of other runs reference rows of run {run.run_id}; "
                "nothing was changed. Roll those runs back first, or pass "
                "remove_dependents=True to remove these rows too: "
                + ", ".join(f"{t} {k} -> {r}" for t, k, r in dependents[:5])
                + (f" and {len(dependents) - 5} more" if len(dependents) > 5 else ""),
                table=dependents[0][0],
                run_id=run.run_id,
                failures=failures_table([(t, "dependent_row", r, k) for t, k, r in dependents]),
            )
        if run.status != "ROLLED_BACK":
            from egregora.database.run_store import RunStatus  # noqa: PLC0415

            run = runs._save(run, status=RunStatus.ROLLED_BACK,  # noqa: SLF001
                             ended_at=run.ended_at or max(utc_now(), run.started_at))
    for table in storage.catalog.deletion_order():
        purge_table(storage, table, run.run_id, remove_dependents=remove_dependents)
    with storage._lock:  # noqa: SLF001
        return runs._save(runs.get_run(run.run_id), purged_at=utc_now())  # noqa: SLF001


def purge_table(
    storage: DuckDBStorageManager, table: TableSchema, run_id: str, *, remove_dependents: bool
) -> int:
    """Remove from ``table``, in one transaction, the rows ``run_id`` wrote and, if asked,
    the rows that reference rows ``run_id`` wrote in parent tables. Returns the rows removed.

    Parents are purged in later calls: DuckDB refuses a parent delete in the transaction
    that deleted its children.
    """
    removed = 0
    with storage._transaction():  # noqa: SLF001
        if remove_dependents:
            for child, fk in _references(storage):
                if child.name == table.name:
                    done = storage._execute(statements.delete_referencing(child, fk), [run_id])  # noqa: SLF001
                    removed += _count(done)
        if table.lineage:
            done = storage._execute(statements.delete_where_equal(table.name, [RUN_ID]), [run_id])  # noqa: SLF001
            removed += _count(done)
    return removed


def _count(result: pa.Table) -> int:
    return int(result.column(0)[0].as_py()) if result.num_rows else 0
