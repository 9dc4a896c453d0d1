"""Rolling back a run: hide its rows at once, then remove them, children first, resumably.

DuckDB has no cascading deletes and cannot delete child rows and then their parent in one
transaction: the parent still counts as referenced until the child delete has committed
(measured on duckdb 1.5.6; see the README's Decisions). So a rollback is:

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
from egregora.database.errors import (
    Failure,
    IntegrityError,
    failures_table,
    format_examples,
    key_text,
)
from egregora.database.model import RUN_ID, ForeignKey, TableSchema
from egregora.database.runs.lineage import lineage_tables

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.store import Store

def _references(storage: Store) -> list[tuple[TableSchema, ForeignKey]]:
    """(child, fk) pairs whose parent is a lineage table (rows a run can own)."""
    owners = {t.name for t in lineage_tables(storage)}
    return [
        (child, fk)
        for child in storage.catalog.deletion_order()
        for fk in child.foreign_keys
        if fk.ref_table in owners and fk.columns != (RUN_ID,)
    ]


def _dependents(
    storage: Store, child: TableSchema, fk: ForeignKey, run_id: str
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


def find_dependents(storage: Store, run_id: str) -> list[Dependent]:
    """Rows of other runs (or of tables without lineage) that reference rows of ``run_id``."""
    found: list[Dependent] = []
    for child, fk in _references(storage):
        cols = list(dict.fromkeys((*child.primary_key, *fk.columns)))
        rows = storage.to_arrow(_dependents(storage, child, fk, run_id).select(*cols)).to_pylist()
        found.extend((child.name, fk, row) for row in rows)
    return found


def dependents_error(
    storage: Store, run_id: str, found: list[Dependent]
) -> IntegrityError:
    rows: list[Failure] = []
    for table, fk, row in found:
        reference = ", ".join(f"{c}={str(row[c])!r}" for c in fk.columns)
        rows.append(Failure(f"{table}.{', '.join(fk.columns)}", "dependent_row", reference,
                     key_text(storage.catalog[table].primary_key, row)))
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


def purge_run(storage: Store, run_id: str, *, remove_dependents: bool) -> None:
    """Remove every row ``run_id`` wrote (and, if asked, the rows that depend on them), table
    by table, children first, each table in a transaction of its own."""
    for table in storage.catalog.deletion_order():
        purge_table(storage, table, run_id, remove_dependents=remove_dependents)


def purge_table(
    storage: Store, table: TableSchema, run_id: str, *, remove_dependents: bool
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
    with storage.transaction():
        done = storage.execute(delete, params)
    return int(done.column(0)[0].as_py()) if done.num_rows else 0
