"""Bringing a database to the declared layout: plan, never guess.

The storage backend reflects what the database holds (:class:`ReflectedTable`) and
:func:`plan_migration` compares it with the catalog. Missing tables are created in foreign-key
order and new nullable columns added; that is all a migration does on its own. Anything else
(a column missing that is NOT NULL, a type changed, a constraint missing or extra) is a
difference that cannot be migrated safely: the plan lists every one and the backend raises
:class:`~egregora.database.errors.SchemaMismatchError` before changing anything.

The applied layout version is recorded in the ``egregora_layout`` table, itself declared with
the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ibis
import ibis.expr.datatypes as dt
import sqlglot
from sqlglot import exp

from egregora.database import ddl
from egregora.database.model import Catalog, TableSchema
from egregora.database.schemas import LAYOUT_TABLE, LAYOUT_VERSION


@dataclass(frozen=True)
class ReflectedForeignKey:
    """A foreign key as the database reports it."""

    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass(frozen=True)
class ReflectedTable:
    """What a database holds for one table."""

    name: str
    schema: ibis.Schema
    primary_key: tuple[str, ...]
    foreign_keys: frozenset[ReflectedForeignKey]
    checks: frozenset[str]  # canonical SQL, see canonical_check


@dataclass
class MigrationPlan:
    """What opening a store will do: statements to run, or differences that stop it."""

    create: list[TableSchema] = field(default_factory=list)
    add_columns: list[tuple[TableSchema, str]] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.create or self.add_columns or self.differences)

    def describe(self) -> list[str]:
        """One line per change, for the CLI."""
        return [f"create table {t.name}" for t in self.create] + [
            f"add column {t.name}.{c} {t.schema[c]}" for t, c in self.add_columns
        ]


def canonical_check(condition: exp.Expr | str, dialect: ddl.Dialect = "duckdb") -> str:
    """A CHECK condition in a form that ignores parentheses, quoting and case of names.

    DuckDB and PostgreSQL store CHECK expressions re-parenthesised; comparing this form of
    the reflected text with that of the declared condition tells whether they are the same.
    """
    node = sqlglot.parse_one(condition, read=dialect) if isinstance(condition, str) else condition
    node = node.copy()
    while isinstance(node, exp.Paren):
        node = node.this
    for paren in list(node.find_all(exp.Paren)):
        paren.replace(paren.this)
    for ident in list(node.find_all(exp.Identifier)):
        ident.replace(exp.to_identifier(ident.name.lower()))
    for cast in list(node.find_all(exp.Cast)):
        # PostgreSQL reflects IN lists over text as ... = ANY (ARRAY[...]::text[]).
        cast.replace(cast.this)
    return node.transform(_canonical_in).sql(dialect="duckdb")


def _canonical_in(node: exp.Expr) -> exp.Expr:
    """``x = ANY (ARRAY[a, b])`` as ``x IN (a, b)``, and a one-value IN as ``=``, the forms
    in which PostgreSQL stores an IN list."""
    listed = node.expression.this if isinstance(node, exp.EQ) else None
    if isinstance(listed, exp.Array) and isinstance(node.expression, exp.Any):
        node = exp.In(this=node.this, expressions=list(listed.expressions))
    if isinstance(node, exp.In) and len(node.expressions) == 1:
        return exp.EQ(this=node.this, expression=node.expressions[0])
    return node


def declared_checks(table: TableSchema) -> frozenset[str]:
    """The canonical form of every CHECK declared on ``table``."""
    return frozenset(canonical_check(ddl.check_condition(c)) for c in table.checks)


def _compare_columns(table: TableSchema, found: ReflectedTable, plan: MigrationPlan) -> None:
    for name, declared in table.schema.items():
        if name not in found.schema:
            if declared.nullable:
                plan.add_columns.append((table, name))
            else:
                plan.differences.append(
                    f"{table.name}.{name}: column missing, and it is NOT NULL so it cannot be "
                    "added to existing rows"
                )
            continue
        actual = found.schema[name]
        if _same_type(actual, declared):
            if actual.nullable != declared.nullable:
                want = "NOT NULL" if not declared.nullable else "nullable"
                plan.differences.append(f"{table.name}.{name}: declared {want}, found {actual}")
        else:
            plan.differences.append(f"{table.name}.{name}: declared {declared}, found {actual}")
    for name in found.schema.names:
        if name not in table.schema:
            plan.differences.append(f"{table.name}.{name}: column not declared")


def _same_type(actual: dt.DataType, declared: dt.DataType) -> bool:
    a, d = actual.copy(nullable=True), declared.copy(nullable=True)
    if isinstance(a, dt.Timestamp) and isinstance(d, dt.Timestamp):
        return (a.timezone or "").upper() == (d.timezone or "").upper()
    return bool(a == d)


def _compare_constraints(table: TableSchema, found: ReflectedTable, plan: MigrationPlan) -> None:
    if found.primary_key != table.primary_key:
        plan.differences.append(
            f"{table.name}: primary key declared ({', '.join(table.primary_key)}), "
            f"found ({', '.join(found.primary_key) or 'none'})"
        )
    declared_fks = {
        ReflectedForeignKey(fk.columns, fk.ref_table, fk.ref_columns) for fk in table.foreign_keys
    }
    for fk in sorted(declared_fks - found.foreign_keys, key=str):
        plan.differences.append(
            f"{table.name}: FOREIGN KEY ({', '.join(fk.columns)}) REFERENCES "
            f"{fk.ref_table}({', '.join(fk.ref_columns)}) missing"
        )
    for fk in sorted(found.foreign_keys - declared_fks, key=str):
        plan.differences.append(
            f"{table.name}: FOREIGN KEY ({', '.join(fk.columns)}) REFERENCES "
            f"{fk.ref_table}({', '.join(fk.ref_columns)}) not declared"
        )
    want = declared_checks(table)
    for check in sorted(want - found.checks):
        plan.differences.append(f"{table.name}: CHECK ({check}) missing")
    for check in sorted(found.checks - want):
        plan.differences.append(f"{table.name}: CHECK ({check}) not declared")


def plan_migration(
    catalog: Catalog,
    reflected: dict[str, ReflectedTable],
    *,
    stored_version: int | None,
) -> MigrationPlan:
    """Compare the database with the catalog (plus the layout table).

    Args:
        catalog: The declared tables.
        reflected: What the database holds, by table name (other tables are ignored).
        stored_version: The highest version in ``egregora_layout``, or None if absent.
    """
    plan = MigrationPlan()
    if stored_version is not None and stored_version > LAYOUT_VERSION:
        plan.differences.append(
            f"the store has layout version {stored_version}, newer than this library's "
            f"{LAYOUT_VERSION}; upgrade egregora-database"
        )
    for table in (LAYOUT_TABLE, *catalog.creation_order()):
        found = reflected.get(table.name)
        if found is None:
            plan.create.append(table)
            continue
        _compare_columns(table, found, plan)
        _compare_constraints(table, found, plan)
    return plan
