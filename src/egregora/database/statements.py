"""The statements of the write path, built as sqlglot expressions (DDL lives in ``ddl``).

Identifiers are always quoted and values are bound as ``?`` parameters or come from a
registered Arrow batch, never from string formatting. Every backend renders these with its
own dialect, so the statements exist once.
"""

from __future__ import annotations

from typing import Literal

from sqlglot import exp

from egregora.database.ddl import column, column_type, ident
from egregora.database.model import RUN_ID, Catalog, ForeignKey, TableSchema

OnConflict = Literal["error", "ignore", "update"]
ON_CONFLICT_CHOICES: tuple[OnConflict, ...] = ("error", "ignore", "update")


def table_ref(name: str, alias: str | None = None) -> exp.Table:
    """A quoted table reference, optionally aliased."""
    node = exp.Table(this=ident(name))
    if alias:
        node.set("alias", exp.TableAlias(this=ident(alias)))
    return node


def qualified(alias: str, name: str) -> exp.Column:
    """``"alias"."name"``."""
    return exp.Column(this=ident(name), table=ident(alias))


def param() -> exp.Placeholder:
    """A positional ``?`` parameter."""
    return exp.Placeholder()


def updatable_columns(table: TableSchema, present: list[str]) -> list[str]:
    """The columns an ``on_conflict="update"`` may set: those present in the batch except
    key and reference columns.

    DuckDB performs an update of an indexed column (every primary and foreign key column) as
    delete+insert, which its foreign-key check rejects while any row references the parent
    (see the README's Decisions). So a row keeps its keys and the run that created it; its
    content changes.
    """
    fixed = set(table.primary_key) | {c for fk in table.foreign_keys for c in fk.columns}
    return [c for c in table.column_names if c in present and c not in fixed]


def insert_from(
    table: TableSchema,
    source: str,
    *,
    on_conflict: OnConflict,
    present: list[str],
    dialect: Literal["duckdb", "postgres"] = "duckdb",
) -> exp.Insert:
    """``INSERT INTO table (cols) SELECT CAST(cols) FROM source [ON CONFLICT ...]``."""
    cols = list(table.column_names)
    select = exp.select(
        *(
            exp.cast(column(c), column_type(table.schema[c].copy(nullable=True), dialect))
            .as_(ident(c))
            for c in cols
        )
    ).from_(table_ref(source))
    node = exp.Insert(
        this=exp.Schema(this=table_ref(table.name), expressions=[ident(c) for c in cols]),
        expression=select,
    )
    if on_conflict == "ignore":
        node.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING")))
    elif on_conflict == "update":
        sets = updatable_columns(table, present)
        keys = [exp.Ordered(this=column(c), nulls_first=False) for c in table.primary_key]
        if sets:
            node.set(
                "conflict",
                exp.OnConflict(
                    action=exp.var("DO UPDATE"),
                    conflict_keys=keys,
                    expressions=[
                        exp.EQ(this=column(c), expression=qualified("excluded", c).copy())
                        for c in sets
                    ],
                ),
            )
        else:
            node.set("conflict", exp.OnConflict(action=exp.var("DO NOTHING"), conflict_keys=keys))
    return node


def _join_condition(
    left: str, lcols: tuple[str, ...], right: str, rcols: tuple[str, ...]
) -> exp.Expr:
    return exp.and_(
        *(
            exp.EQ(this=qualified(left, a), expression=qualified(right, b))
            for a, b in zip(lcols, rcols, strict=True)
        )
    )


def orphans(table: TableSchema, fk: ForeignKey, source: str) -> exp.Select:
    """The rows of ``source`` (shaped like ``table``) whose non-NULL reference is missing
    from the parent, the rows a FOREIGN KEY would refuse: the reference's columns, then the
    row's primary key columns (those not already listed), ordered by reference then key."""
    parent_types = [column_type(table.schema[c].copy(nullable=True), "duckdb") for c in fk.columns]
    refs = [
        exp.cast(qualified("b", c), t).as_(ident(c))
        for c, t in zip(fk.columns, parent_types, strict=True)
    ]
    keys = [c for c in table.primary_key if c not in fk.columns]
    not_null = exp.and_(*(exp.Not(this=exp.Is(this=qualified("b", c), expression=exp.Null()))
                          for c in fk.columns))
    exists = (
        exp.select(exp.Literal.number(1))
        .from_(table_ref(fk.ref_table, "p"))
        .where(
            exp.and_(
                *(
                    exp.EQ(this=qualified("p", r), expression=exp.cast(qualified("b", c), t))
                    for c, r, t in zip(fk.columns, fk.ref_columns, parent_types, strict=True)
                )
            )
        )
    )
    return (
        exp.select(*refs, *(qualified("b", c).as_(ident(c)) for c in keys))
        .from_(table_ref(source, "b"))
        .where(exp.and_(not_null, exp.Not(this=exp.Exists(this=exists))))
        .order_by(*(exp.column(ident(c)) for c in (*fk.columns, *keys)))
    )


def existing_keys(table: TableSchema, source: str) -> exp.Select:
    """Keys of ``source`` that ``table`` already holds."""
    pk = table.primary_key
    return (
        exp.select(*(qualified("t", c) for c in pk))
        .from_(table_ref(table.name, "t"))
        .join(table_ref(source, "b"), on=_join_condition("t", pk, "b", pk), join_type="semi")
        .order_by(*(qualified("t", c) for c in pk))
    )


def changed_references(table: TableSchema, source: str) -> exp.Select:
    """Stored rows that an update from ``source`` would move to another parent (other than
    ``run_id``, which an update keeps)."""
    pk = table.primary_key
    refs = [c for fk in table.foreign_keys for c in fk.columns if c != RUN_ID]
    differs = exp.or_(
        *(
            exp.NullSafeNEQ(this=qualified("t", c), expression=qualified("b", c))
            for c in refs
        )
    ) if refs else exp.false()
    return (
        exp.select(*(qualified("t", c) for c in (*pk, *refs)))
        .from_(table_ref(table.name, "t"))
        .join(table_ref(source, "b"), on=_join_condition("t", pk, "b", pk))
        .where(differs)
        .order_by(*(qualified("t", c) for c in pk))
    )


def select_where_equal(table: str, columns: list[str], key: list[str]) -> exp.Select:
    """``SELECT columns FROM table WHERE key1 = ? AND ...``."""
    return exp.select(*(column(c) for c in columns)).from_(table_ref(table)).where(
        exp.and_(*(exp.EQ(this=column(k), expression=param()) for k in key))
    )


def update_where_equal(table: str, assignments: list[str], key: list[str]) -> exp.Update:
    """``UPDATE table SET a = ?, ... WHERE key1 = ? AND ...`` (parameters in that order)."""
    return exp.Update(
        this=table_ref(table),
        expressions=[exp.EQ(this=column(c), expression=param()) for c in assignments],
        where=exp.Where(
            this=exp.and_(*(exp.EQ(this=column(k), expression=param()) for k in key))
        ),
    )


def delete_where_equal(table: str, key: list[str]) -> exp.Delete:
    """``DELETE FROM table WHERE key1 = ? AND ...``."""
    return exp.Delete(
        this=table_ref(table),
        where=exp.Where(
            this=exp.and_(*(exp.EQ(this=column(k), expression=param()) for k in key))
        ),
    )


def purged_rows(catalog: Catalog, table: TableSchema, *, dependents: bool) -> exp.Condition | None:
    """The rows of ``table`` that purging a run removes, the run id bound at every ``?``.

    They are the rows the run wrote and, with ``dependents``, the rows that reference removed
    rows of other tables, transitively (an annotation of a later run on a document of the
    run, a reply to that annotation, ...). Parents are still present when a child table is
    purged (children go first), so each level is a subquery on its parent. None when no row
    of ``table`` can be concerned. Self-references are not followed.
    """
    parts: list[exp.Condition] = []
    if table.lineage:
        parts.append(exp.EQ(this=qualified(table.name, RUN_ID), expression=param()))
    for fk in table.foreign_keys if dependents else ():
        if fk.columns == (RUN_ID,) or fk.ref_table == table.name:
            continue
        parent = catalog[fk.ref_table]
        removed = purged_rows(catalog, parent, dependents=True)
        if removed is None:
            continue
        keys = (
            exp.select(*(qualified(parent.name, c) for c in fk.ref_columns))
            .from_(table_ref(parent.name))
            .where(removed)
        )
        target = (
            qualified(table.name, fk.columns[0])
            if len(fk.columns) == 1
            else exp.Tuple(expressions=[qualified(table.name, c) for c in fk.columns])
        )
        parts.append(exp.In(this=target, query=exp.Subquery(this=keys)))
    return exp.or_(*parts) if parts else None


def delete_where(table: str, condition: exp.Condition) -> exp.Delete:
    """``DELETE FROM table WHERE condition``."""
    return exp.Delete(this=table_ref(table), where=exp.Where(this=condition))


def _in_keys(
    table: TableSchema, columns: tuple[str, ...], source: str, keys: tuple[str, ...]
) -> exp.In:
    """``(columns) IN (SELECT CAST(keys AS type of columns) FROM source)``."""
    listed = exp.select(
        *(
            exp.cast(column(k), column_type(table.schema[c].copy(nullable=True), "duckdb"))
            for c, k in zip(columns, keys, strict=True)
        )
    ).from_(table_ref(source))
    target = (
        column(columns[0])
        if len(columns) == 1
        else exp.Tuple(expressions=[column(c) for c in columns])
    )
    return exp.In(this=target, query=exp.Subquery(this=listed))


def delete_keys(table: TableSchema, source: str) -> exp.Delete:
    """``DELETE FROM table WHERE (key) IN (SELECT key FROM source)``: the rows whose primary
    key ``source`` (a batch of key columns) lists."""
    pk = table.primary_key
    return exp.Delete(
        this=table_ref(table.name), where=exp.Where(this=_in_keys(table, pk, source, pk))
    )


def referencing_rows(child: TableSchema, fk: ForeignKey, source: str) -> exp.Select:
    """The key and reference of the rows of ``child`` whose ``fk`` points at a parent key
    listed in ``source`` (a batch of the parent's key columns): what a delete of those
    parents would leave dangling."""
    shown = dict.fromkeys((*child.primary_key, *fk.columns))
    return (
        exp.select(*(column(c) for c in shown))
        .from_(table_ref(child.name))
        .where(_in_keys(child, fk.columns, source, fk.ref_columns))
        .order_by(*(column(c) for c in child.primary_key))
    )
