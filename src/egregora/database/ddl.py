"""DDL derived from table declarations, built as sqlglot expressions for each dialect.

Pure: nothing here opens a connection. Every identifier is quoted; values appear only as
literals of declared checks. Two dialects are supported, ``"duckdb"`` and ``"postgres"``.

DuckDB specifics (measured on duckdb 1.5.6; see the README's Decisions): foreign keys carry
no ``ON DELETE`` clause (DuckDB rejects CASCADE and SET NULL, and restricts by default), and
uuid key columns are stored ``USING COMPRESSION uncompressed``: DuckDB bit-packs sorted UUIDv7
values, and removing their keys from the index then reads them back slowly (a 1M-row delete
by run took ~80 s compressed, ~1.2 s uncompressed, at no measurable insert cost).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import ibis.expr.datatypes as dt
from ibis.backends.sql.datatypes import DuckDBType, PostgresType
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB

from egregora.database.checks import Check, NotBefore, NullWhen, OneOf, RequiredWhen
from egregora.database.model import ForeignKey, TableSchema

Dialect = Literal["duckdb", "postgres"]
DIALECTS: tuple[Dialect, ...] = ("duckdb", "postgres")


class UsingCompression(exp.Expression, exp.ColumnConstraintKind):
    """DuckDB's ``USING COMPRESSION <method>`` column option."""

    arg_types: ClassVar[dict[str, bool]] = {"this": True}


_DuckDBGenerator: Any = DuckDB.Generator


class _DuckDBWithCompression(DuckDB):
    class Generator(_DuckDBGenerator):  # type: ignore[misc]
        TRANSFORMS = {  # noqa: RUF012 - sqlglot's generator API is a class-level mapping
            **DuckDB.Generator.TRANSFORMS,
            UsingCompression: lambda self, e: f"USING COMPRESSION {self.sql(e, 'this')}",
        }


def _dialect(dialect: Dialect) -> Any:
    return _DuckDBWithCompression() if dialect == "duckdb" else dialect


def ident(name: str) -> exp.Identifier:
    """A quoted identifier."""
    return exp.to_identifier(name, quoted=True)


def column(name: str) -> exp.Column:
    """A quoted column reference."""
    return exp.column(ident(name))


def column_type(dtype: dt.DataType, dialect: Dialect) -> exp.DataType:
    """The SQL type of a declared column."""
    if dialect == "postgres":
        if isinstance(dtype, dt.JSON):
            return exp.DataType.build("JSONB")
        if isinstance(dtype, dt.String):
            return exp.DataType.build("TEXT")
        mapper: Any = PostgresType
    else:
        mapper = DuckDBType
    return mapper.from_ibis(dtype)  # type: ignore[no-any-return]


def literal(value: Any) -> exp.Expression:
    """A SQL literal for a declared check value."""
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    return exp.Literal.string(str(value))


def _not_null(name: str) -> exp.Expr:
    return exp.Not(this=exp.Is(this=column(name), expression=exp.Null()))


def check_condition(check: Check) -> exp.Expr:
    """The SQL condition of a declared check (NULL passes, as in every SQL CHECK)."""
    if isinstance(check, OneOf):
        return exp.In(this=column(check.column), expressions=[literal(v) for v in check.values])
    if isinstance(check, (RequiredWhen, NullWhen)):
        if isinstance(check, RequiredWhen):
            tests = [_not_null(c) for c in check.required]
        else:
            tests = [exp.Is(this=column(c), expression=exp.Null()) for c in check.absent]
        outside = exp.Not(
            this=exp.In(this=column(check.column), expressions=[literal(v) for v in check.values])
        )
        return exp.or_(outside, exp.Paren(this=exp.and_(*tests)))
    if isinstance(check, NotBefore):
        return exp.GTE(this=column(check.later), expression=column(check.earlier))
    raise TypeError(f"unknown check {check!r}")


def _is_key(table: TableSchema, name: str) -> bool:
    return name in table.primary_key or any(name in fk.columns for fk in table.foreign_keys)


def column_def(table: TableSchema, name: str, dialect: Dialect) -> exp.ColumnDef:
    """The definition of one column, with NOT NULL when declared so."""
    dtype = table.schema[name]
    constraints: list[exp.ColumnConstraint] = []
    if dialect == "duckdb" and isinstance(dtype, dt.UUID) and _is_key(table, name):
        constraints.append(exp.ColumnConstraint(kind=UsingCompression(this=exp.var("uncompressed"))))
    if not dtype.nullable:
        constraints.append(exp.ColumnConstraint(kind=exp.NotNullColumnConstraint()))
    return exp.ColumnDef(
        this=ident(name), kind=column_type(dtype, dialect), constraints=constraints
    )


def foreign_key(table: TableSchema, fk: ForeignKey, dialect: Dialect) -> exp.Constraint:
    """A named FOREIGN KEY; PostgreSQL gets an explicit ON DELETE RESTRICT."""
    options = ["ON DELETE RESTRICT"] if dialect == "postgres" else []
    node = exp.ForeignKey(
        expressions=[ident(c) for c in fk.columns],
        reference=exp.Reference(
            this=exp.Schema(
                this=exp.Table(this=ident(fk.ref_table)),
                expressions=[ident(c) for c in fk.ref_columns],
            ),
            options=options,
        ),
    )
    name = f"{table.name}_{'_'.join(fk.columns)}_fkey"
    return exp.Constraint(this=ident(name), expressions=[node])


def check_constraint(table: TableSchema, check: Check) -> exp.Constraint:
    """A named CHECK constraint."""
    return exp.Constraint(
        this=ident(f"{table.name}_{check.name}"),
        expressions=[exp.CheckColumnConstraint(this=check_condition(check))],
    )


def create_table(table: TableSchema, dialect: Dialect = "duckdb") -> exp.Create:
    """The ``CREATE TABLE`` expression of a declared table."""
    parts: list[exp.Expression] = [column_def(table, c, dialect) for c in table.column_names]
    parts.append(exp.PrimaryKey(expressions=[ident(c) for c in table.primary_key]))
    parts.extend(foreign_key(table, fk, dialect) for fk in table.foreign_keys)
    parts.extend(check_constraint(table, c) for c in table.checks)
    return exp.Create(
        this=exp.Schema(this=exp.Table(this=ident(table.name)), expressions=parts),
        kind="TABLE",
    )


def add_column(table: TableSchema, name: str, dialect: Dialect = "duckdb") -> exp.Alter:
    """``ALTER TABLE ... ADD COLUMN`` for an additive (nullable) column."""
    return exp.Alter(
        this=exp.Table(this=ident(table.name)),
        kind="TABLE",
        actions=[column_def(table, name, dialect)],
    )


def to_sql(expression: exp.Expr, dialect: Dialect = "duckdb", *, pretty: bool = False) -> str:
    """Render an expression of this module in ``dialect``."""
    return expression.sql(dialect=_dialect(dialect), pretty=pretty)


def create_table_sql(
    table: TableSchema, dialect: Dialect = "duckdb", *, pretty: bool = False
) -> str:
    """The ``CREATE TABLE`` statement of a declared table, as text."""
    return to_sql(create_table(table, dialect), dialect, pretty=pretty)
