"""Lineage queries: which run wrote what, as Ibis expressions that compose.

Every row of a lineage table (documents, messages, annotations, and any user table declared
with ``lineage=True``) carries the ``run_id`` of the run that wrote it. These functions
return Ibis expressions over a store, so a notebook can filter, join and plot them further;
nothing runs until the expression is executed.

Example:
    >>> from egregora.database import DuckDBStorageManager, RunStore
    >>> with DuckDBStorageManager(":memory:") as storage:
    ...     with RunStore(storage).run("ingest") as run:
    ...         pass
    ...     rows_per_run(storage).count().execute()
    0
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ibis

from egregora.database.errors import RunNotFoundError, TableNotFoundError
from egregora.database.model import RUN_ID, RUNS_TABLE, TableSchema

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.store import Store

#: The statuses whose rows committed reads show.
COMMITTED_STATUSES = ("COMPLETED",)


def lineage_tables(storage: Store) -> tuple[TableSchema, ...]:
    """The store's tables whose rows carry a ``run_id``, parents first."""
    return tuple(t for t in storage.catalog.creation_order() if t.lineage)


def _lineage_table(storage: Store, name: str) -> TableSchema:
    schema = storage.catalog[name]
    if not schema.lineage:
        raise TableNotFoundError(
            f"`{name}` does not record lineage; lineage tables: "
            f"{', '.join(t.name for t in lineage_tables(storage))}",
            table=name,
        )
    return schema


def _canonical_uuid(value: Any) -> str | None:
    """``value`` as canonical UUID text, or None when it is not a UUID (no row can hold it)."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def _equals_uuid(column: ir.Value, value: Any) -> ir.BooleanValue:
    # A literal that is not a UUID would fail only when the expression runs; nothing can
    # equal it, so the predicate is simply false.
    text = _canonical_uuid(value)
    if text is None:
        return ibis.literal(False)
    return column == ibis.literal(text, type="uuid")


def rows_of_run(storage: Store, table: str, run_id: str) -> ir.Table:
    """The rows that run ``run_id`` wrote in ``table``."""
    _lineage_table(storage, table)
    t = storage.table(table)
    return t.filter(_equals_uuid(t[RUN_ID], run_id))


def committed(storage: Store, table: str) -> ir.Table:
    """The rows of ``table`` written by runs that completed.

    Rows of runs still running, failed, cancelled, crashed or rolled back are hidden, so
    notebooks and enrichers never consume half-done output. A rollback hides its run's rows
    at once, before the purge has removed them.
    """
    _lineage_table(storage, table)
    t = storage.table(table)
    runs = storage.table(RUNS_TABLE)
    done = runs.filter(runs.status.isin(COMMITTED_STATUSES)).select(RUN_ID)
    return t.semi_join(done, t[RUN_ID] == done[RUN_ID])


def _key_predicate(schema: TableSchema, t: ir.Table, key: Any) -> ir.BooleanValue:
    pk = schema.primary_key
    if isinstance(key, Mapping):
        values: Mapping[str, Any] = key
    elif len(pk) == 1:
        values = {pk[0]: key}
    else:
        values = {}
    if set(values) != set(pk):
        raise TableNotFoundError(
            f"`{schema.name}` is keyed by ({', '.join(pk)}): pass "
            + ("the key value or " if len(pk) == 1 else "")
            + f"a mapping of exactly those columns; got {key!r}",
            table=schema.name,
            columns=pk,
        )
    preds = [
        _equals_uuid(t[c], values[c]) if schema.schema[c].is_uuid() else t[c] == values[c]
        for c in pk
    ]
    pred = preds[0]
    for p in preds[1:]:
        pred = pred & p
    return pred


def provenance(storage: Store, table: str, key: Any) -> ir.Table:
    """The run (with its config) that wrote the row of ``table`` whose primary key is ``key``.

    Args:
        storage: The store.
        table: A lineage table.
        key: The primary-key value, or a mapping of key columns to values.

    Returns:
        One row of ``runs`` (none if no such row exists).
    """
    schema = _lineage_table(storage, table)
    t = storage.table(table)
    row = t.filter(_key_predicate(schema, t, key)).select(RUN_ID)
    runs = storage.table(RUNS_TABLE)
    return runs.semi_join(row, runs[RUN_ID] == row[RUN_ID])


def rows_per_run(storage: Store) -> ir.Table:
    """Per run and lineage table, how many rows the run wrote: ``run_id``, ``name``,
    ``status``, ``table``, ``rows``, ``started_at``, oldest run first (runs that wrote
    nothing do not appear)."""
    runs = storage.table(RUNS_TABLE).select(RUN_ID, "name", "status", "started_at")
    parts = []
    for schema in lineage_tables(storage):
        t = storage.table(schema.name)
        parts.append(
            t.group_by(RUN_ID)
            .aggregate(rows=t.count())
            .mutate(table=ibis.literal(schema.name))
            .select(RUN_ID, "table", "rows")
        )
    if not parts:
        # A catalog of user tables only: the same columns, no rows.
        return runs.filter(ibis.literal(False)).select(
            RUN_ID, "name", "status", table=ibis.literal("", type="string"),
            rows=ibis.literal(0, type="int64"), started_at=runs.started_at,
        )
    counts = ibis.union(*parts) if len(parts) > 1 else parts[0]
    return (
        counts.join(runs, RUN_ID)
        .select(RUN_ID, "name", "status", "table", "rows", "started_at")
        .order_by(["started_at", RUN_ID, "table"])
    )


def parent_chain(storage: Store, run_id: str) -> ir.Table:
    """The run and its ancestors, nearest first, with ``depth`` (0 for the run itself).

    The chain is followed one run at a time (Ibis has no recursive query), so this costs one
    small query per ancestor; pipelines nest runs a few levels deep.

    Raises:
        RunNotFoundError: no run has this id.
    """
    runs = storage.table(RUNS_TABLE)
    chain: list[str] = []
    current = _canonical_uuid(run_id)
    while current is not None and current not in chain:
        found = storage.to_arrow(
            runs.filter(_equals_uuid(runs[RUN_ID], current)).select("parent_run_id")
        ).to_pylist()
        if not found:
            break
        chain.append(current)
        parent = found[0]["parent_run_id"]
        current = None if parent is None else str(parent)
    if not chain:
        raise RunNotFoundError(f"no run {run_id}", table=RUNS_TABLE, run_id=str(run_id))
    literals = [ibis.literal(r, type="uuid") for r in chain]
    depth = ibis.cases(*((runs[RUN_ID] == r, i) for i, r in enumerate(literals)), else_=len(chain))
    return runs.filter(runs[RUN_ID].isin(literals)).mutate(depth=depth).order_by("depth")
