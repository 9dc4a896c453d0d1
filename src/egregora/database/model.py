"""The schema model: a table is declared once, everything else is derived from it.

A :class:`TableSchema` is an :class:`ibis.Schema` (nullability lives on the type: ``!string``
is NOT NULL) plus its primary key, foreign keys and checks. With ``lineage=True`` the table
gains a ``run_id`` column with a FOREIGN KEY to ``runs(run_id)``. A :class:`Catalog` holds
tables, checks that every foreign key points at a declared table and key, and orders tables
for creation (parents first) and deletion (children first).

Nothing here opens a connection. DDL (``ddl``), the Arrow schema (:meth:`TableSchema.to_arrow`)
and the Pandera validators (``validation``) are derived from these objects.

Type policy. Columns may use these Ibis types, chosen because they round-trip exactly through
DuckDB, PostgreSQL, Arrow and Ibis reflection: ``string``, ``int16``/``int32``/``int64``,
``float32``/``float64``, ``boolean``, ``date``, ``timestamp('UTC')`` (stored with microsecond
precision; naive timestamps are refused: every time is UTC), ``uuid``, ``json`` and ``binary``.
Lists, maps and structs are refused: on a table that others reference, DuckDB turns an update
of such a column into delete+insert and then rejects it as "still referenced"; use ``json``.

Example:
    >>> import ibis
    >>> notes = TableSchema(
    ...     "notes",
    ...     ibis.schema({"id": "!uuid", "body": "!string", "kind": "string"}),
    ...     primary_key=("id",),
    ...     checks=(OneOf("kind", ("short", "long")),),
    ...     lineage=True,
    ... )
    >>> notes.column_names
    ('id', 'body', 'kind', 'run_id')
"""

from __future__ import annotations

import datetime as dt_mod
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import pyarrow as pa

from egregora.database.checks import Check, NotBefore, NullWhen, OneOf, RequiredWhen
from egregora.database.errors import SchemaDefinitionError, TableNotFoundError

RUNS_TABLE = "runs"
RUN_ID = "run_id"

_TIMESTAMP_SCALE = 6
_ALLOWED_TYPES: tuple[type[dt.DataType], ...] = (
    dt.String,
    dt.Int16,
    dt.Int32,
    dt.Int64,
    dt.Float32,
    dt.Float64,
    dt.Boolean,
    dt.Date,
    dt.Timestamp,
    dt.UUID,
    dt.JSON,
    dt.Binary,
)


def _normalise_type(table: str, column: str, dtype: dt.DataType) -> dt.DataType:
    if not isinstance(dtype, _ALLOWED_TYPES):
        allowed = ", ".join(sorted(t.__name__.lower() for t in _ALLOWED_TYPES))
        hint = " (declare it as json)" if dtype.is_nested() else ""
        raise SchemaDefinitionError(
            f"`{table}`.`{column}` has type {dtype}, which the type policy does not allow"
            f"{hint}; allowed: {allowed}",
            table=table,
            columns=[column],
        )
    if isinstance(dtype, dt.Timestamp):
        if dtype.timezone is None or dtype.timezone.upper() != "UTC":
            raise SchemaDefinitionError(
                f"`{table}`.`{column}` is a timestamp without the UTC time zone; "
                "declare it as timestamp('UTC')",
                table=table,
                columns=[column],
            )
        return dt.Timestamp(timezone="UTC", scale=_TIMESTAMP_SCALE, nullable=dtype.nullable)
    return dtype


def arrow_type(dtype: dt.DataType) -> pa.DataType:
    """The Arrow type of a declared column at the library's boundary.

    UUIDs are text at the boundary: Ibis 12 reads DuckDB's UUID as strings and cannot read
    Arrow's ``arrow.uuid`` extension, so text is what every reader gets back. Writers may
    also hand ``arrow.uuid`` columns, which DuckDB ingests without a cast.
    """
    if isinstance(dtype, (dt.UUID, dt.JSON)):
        return pa.string()
    if isinstance(dtype, dt.Timestamp):
        return pa.timestamp("us", tz="UTC")
    return dtype.to_pyarrow()


@dataclass(frozen=True)
class ForeignKey:
    """``columns`` of this table reference ``ref_columns`` of ``ref_table``."""

    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]

    @classmethod
    def to(cls, column: str, ref_table: str, ref_column: str) -> ForeignKey:
        """A single-column foreign key."""
        return cls((column,), ref_table, (ref_column,))

    def describe(self) -> str:
        return (
            f"({', '.join(self.columns)}) -> {self.ref_table}({', '.join(self.ref_columns)})"
        )


# --- tables ---------------------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class TableSchema:
    """One table, declared once.

    Args:
        name: The table's name.
        schema: The columns as an Ibis schema; nullability lives on the type.
        primary_key: The key's columns; they must be NOT NULL.
        foreign_keys: References to other tables (or to this one).
        checks: Row rules, enforced as CHECK constraints and by validation.
        lineage: Add ``run_id`` (NOT NULL, uuid) with a FOREIGN KEY to ``runs(run_id)``.
        description: One line for documentation and the CLI.

    Raises:
        SchemaDefinitionError: naming the table and column, when the declaration is malformed.
    """

    name: str
    schema: ibis.Schema
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...]
    checks: tuple[Check, ...]
    lineage: bool
    description: str = field(default="")

    def __init__(
        self,
        name: str,
        schema: ibis.Schema | Mapping[str, Any],
        *,
        primary_key: Sequence[str],
        foreign_keys: Iterable[ForeignKey] = (),
        checks: Iterable[Check] = (),
        lineage: bool = False,
        description: str = "",
    ) -> None:
        if not name or not name.isidentifier() or name.startswith("_"):
            raise SchemaDefinitionError(
                f"table name {name!r} must be a Python-style identifier not starting with '_'",
                table=name,
            )
        base = ibis.schema(schema)
        if lineage and RUN_ID in {c.lower() for c in base.names}:
            raise SchemaDefinitionError(
                f"`{name}`.`{RUN_ID}` is added by lineage=True; do not declare it",
                table=name,
                columns=[RUN_ID],
            )
        types = {col: _normalise_type(name, col, t) for col, t in base.items()}
        fks = tuple(foreign_keys)
        if lineage:
            types[RUN_ID] = dt.UUID(nullable=False)
            fks = (*fks, ForeignKey.to(RUN_ID, RUNS_TABLE, RUN_ID))
        seen: dict[str, str] = {}
        for col in types:
            if not col.isidentifier():
                raise SchemaDefinitionError(
                    f"`{name}`.{col!r} is not a valid column name", table=name, columns=[col]
                )
            if col.lower() in seen:
                # SQL folds identifiers' case when comparing names: these would collide.
                raise SchemaDefinitionError(
                    f"`{name}`.`{col}` differs from `{seen[col.lower()]}` only in case",
                    table=name,
                    columns=[col],
                )
            seen[col.lower()] = col
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "schema", ibis.schema(types))
        object.__setattr__(self, "primary_key", tuple(primary_key))
        object.__setattr__(self, "foreign_keys", fks)
        object.__setattr__(self, "checks", tuple(checks))
        object.__setattr__(self, "lineage", lineage)
        object.__setattr__(self, "description", description)
        self._validate()

    def _require(self, columns: Iterable[str], what: str) -> None:
        for col in columns:
            if col not in self.schema:
                raise SchemaDefinitionError(
                    f"`{self.name}`: {what} names `{col}`, which is not a column",
                    table=self.name,
                    columns=[col],
                )

    def _validate(self) -> None:
        if not self.primary_key:
            raise SchemaDefinitionError(
                f"`{self.name}` declares no primary key", table=self.name
            )
        self._require(self.primary_key, "the primary key")
        repeated = sorted({c for c in self.primary_key if self.primary_key.count(c) > 1})
        if repeated:
            raise SchemaDefinitionError(
                f"`{self.name}`: the primary key names `{repeated[0]}` more than once",
                table=self.name,
                columns=repeated,
            )
        for col in self.primary_key:
            if self.schema[col].nullable:
                raise SchemaDefinitionError(
                    f"`{self.name}`.`{col}` is in the primary key but nullable; declare it "
                    f"as '!{self.schema[col]}'",
                    table=self.name,
                    columns=[col],
                )
        for fk in self.foreign_keys:
            self._require(fk.columns, f"foreign key {fk.describe()}")
            if len(fk.columns) != len(fk.ref_columns):
                raise SchemaDefinitionError(
                    f"`{self.name}`: foreign key {fk.describe()} has "
                    f"{len(fk.columns)} column(s) but references {len(fk.ref_columns)}",
                    table=self.name,
                    columns=fk.columns,
                )
        for check in self.checks:
            self._require(check.columns, f"check {check.name}")
            if isinstance(check, (OneOf, RequiredWhen, NullWhen)) and not check.values:
                raise SchemaDefinitionError(
                    f"`{self.name}`.`{check.column}`: {type(check).__name__} needs at least "
                    "one value",
                    table=self.name,
                    columns=[check.column],
                )
        seen: dict[str, Check] = {}
        for check in self.checks:
            if check.name in seen:
                raise SchemaDefinitionError(
                    f"`{self.name}` declares two checks with the same name "
                    f"`{check.name}` ({seen[check.name].describe()}; {check.describe()}); "
                    "merge them",
                    table=self.name,
                    columns=check.columns[:1],
                )
            seen[check.name] = check
            self._check_types(check)
            if len(f"{self.name}_{check.name}") > 63:
                raise SchemaDefinitionError(
                    f"`{self.name}`: constraint name `{self.name}_{check.name}` is longer than "
                    "PostgreSQL's 63-byte limit; shorten the table or column name",
                    table=self.name,
                    columns=check.columns[:1],
                )

    def _check_types(self, check: Check) -> None:
        """A check's values and columns must fit the column types (SQL would refuse the DDL)."""
        if isinstance(check, NotBefore):
            a, b = (self.schema[c].copy(nullable=True) for c in check.columns)
            comparable = a == b or (a.is_numeric() and b.is_numeric())
            if not comparable:
                raise SchemaDefinitionError(
                    f"`{self.name}`: NotBefore compares `{check.later}` ({a}) with "
                    f"`{check.earlier}` ({b}); they must have the same type",
                    table=self.name,
                    columns=check.columns,
                )
            return
        dtype = self.schema[check.column]
        for value in check.values:
            ok = (
                isinstance(value, str) if dtype.is_string()
                else isinstance(value, bool) if dtype.is_boolean()
                else isinstance(value, int) and not isinstance(value, bool) if dtype.is_integer()
                else isinstance(value, (int, float)) and not isinstance(value, bool)
                if dtype.is_floating()
                else False
            )
            if not ok:
                raise SchemaDefinitionError(
                    f"`{self.name}`.`{check.column}` is {dtype}, but {check.name} lists "
                    f"{value!r}; checks with values apply to string, integer, float and "
                    "boolean columns, with values of that type",
                    table=self.name,
                    columns=[check.column],
                )

    @property
    def column_names(self) -> tuple[str, ...]:
        """The columns in declaration order (``run_id`` last on lineage tables)."""
        return tuple(self.schema.names)

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The NOT NULL columns."""
        return tuple(c for c, t in self.schema.items() if not t.nullable)

    def to_arrow(self) -> pa.Schema:
        """The Arrow schema of the table at the library's boundary (see :func:`arrow_type`)."""
        return _arrow_schema(self)

    def referenced_by(self, catalog: Catalog) -> tuple[tuple[TableSchema, ForeignKey], ...]:
        """The (child table, foreign key) pairs of ``catalog`` that reference this table."""
        return tuple(
            (child, fk)
            for child in catalog.tables
            for fk in child.foreign_keys
            if fk.ref_table == self.name
        )


#: Names of the library's own relations start with this: no declared table may.
RESERVED_PREFIX = "egregora_"


@dataclass(frozen=True, init=False)
class Catalog:
    """A set of tables whose foreign keys all resolve inside the set.

    Raises:
        SchemaDefinitionError: when a foreign key points at an undeclared table, at columns
            that are not that table's primary key, or with a type that differs; or when two
            tables share a name; or when the references form a cycle between tables.
    """

    tables: tuple[TableSchema, ...]

    def __init__(self, tables: Iterable[TableSchema]) -> None:
        object.__setattr__(self, "tables", tuple(tables))
        self._validate()

    def _validate(self) -> None:
        names = [t.name for t in self.tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaDefinitionError(f"tables declared twice: {dupes}", table=dupes[0])
        reserved = [n for n in names if n.lower().startswith(RESERVED_PREFIX)]
        if reserved:
            raise SchemaDefinitionError(
                f"`{reserved[0]}`: table names starting with {RESERVED_PREFIX!r} are the "
                "library's own (its layout table, the batch being written)",
                table=reserved[0],
            )
        by_name = {t.name: t for t in self.tables}
        for table in self.tables:
            for fk in table.foreign_keys:
                parent = by_name.get(fk.ref_table)
                if parent is None:
                    raise SchemaDefinitionError(
                        f"`{table.name}`: foreign key {fk.describe()} references the "
                        f"undeclared table `{fk.ref_table}`",
                        table=table.name,
                        columns=fk.columns,
                    )
                if fk.ref_columns != parent.primary_key:
                    raise SchemaDefinitionError(
                        f"`{table.name}`: foreign key {fk.describe()} must reference the "
                        f"primary key of `{parent.name}` ({', '.join(parent.primary_key)})",
                        table=table.name,
                        columns=fk.columns,
                    )
                for col, ref in zip(fk.columns, fk.ref_columns, strict=True):
                    a, b = table.schema[col], parent.schema[ref]
                    if a.copy(nullable=True) != b.copy(nullable=True):
                        raise SchemaDefinitionError(
                            f"`{table.name}`.`{col}` is {a} but references "
                            f"`{parent.name}`.`{ref}` of type {b}",
                            table=table.name,
                            columns=[col],
                        )
        self.creation_order()

    def __getitem__(self, name: str) -> TableSchema:
        for table in self.tables:
            if table.name == name:
                return table
        raise TableNotFoundError(
            f"no table `{name}` is declared; declared: {', '.join(self.names)}", table=name
        )

    def __contains__(self, name: object) -> bool:
        return any(t.name == name for t in self.tables)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tables)

    def extend(self, *tables: TableSchema) -> Catalog:
        """A new catalog with user-declared ``tables`` added."""
        return Catalog((*self.tables, *tables))

    def creation_order(self) -> tuple[TableSchema, ...]:
        """Parents before children (self-references ignored); ties keep declaration order."""
        done: list[TableSchema] = []
        pending = list(self.tables)
        while pending:
            ready = [
                t
                for t in pending
                if all(
                    fk.ref_table == t.name or fk.ref_table in {d.name for d in done}
                    for fk in t.foreign_keys
                )
            ]
            if not ready:
                cycle = ", ".join(t.name for t in pending)
                raise SchemaDefinitionError(
                    f"foreign keys form a cycle between tables: {cycle}", table=pending[0].name
                )
            done.extend(ready)
            pending = [t for t in pending if t not in ready]
        return tuple(done)

    def deletion_order(self) -> tuple[TableSchema, ...]:
        """Children before parents: the order in which rows can be removed."""
        return tuple(reversed(self.creation_order()))


@functools.lru_cache(maxsize=256)
def _arrow_schema(table: TableSchema) -> pa.Schema:
    # Asked for on every write (conform, run records); derived once per declaration.
    return pa.schema(
        [pa.field(c, arrow_type(t), nullable=t.nullable) for c, t in table.schema.items()]
    )


def utc_now() -> dt_mod.datetime:
    """The current time, timezone-aware UTC."""
    return dt_mod.datetime.now(dt_mod.UTC)
