"""The row rules a table declares, each enforced twice from one definition: as a CHECK
constraint in the DDL (:func:`egregora.database.ddl.check_condition`) and by validation
before every insert (its :meth:`predicate`, an Ibis expression).

NULL passes every rule, as in a SQL CHECK; nullability is declared on the column's type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ibis.expr.types as ir


def _rule_name(column: str, values: tuple[Any, ...], verb: str) -> str:
    """``doc_type_post_requires``; many values are summarised by a digest so that names stay
    short (PostgreSQL cuts identifiers at 63 bytes) yet differ for different value sets."""
    joined = "_".join(str(v).lower() for v in values)
    if len(values) > 1 and len(joined) > 20:
        digest = hashlib.sha256(repr(values).encode()).hexdigest()[:8]
        joined = f"{str(values[0]).lower()}_{len(values) - 1}more_{digest}"
    return f"{column}_{joined}_{verb}"


@dataclass(frozen=True)
class OneOf:
    """The column's value is one of ``values`` (NULL passes; nullability is separate)."""

    column: str
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return f"{self.column}_one_of"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column,)

    def describe(self) -> str:
        return f"`{self.column}` in {list(self.values)}"

    def predicate(self, t: ir.Table) -> ir.BooleanValue:
        col = t[self.column]
        return col.isnull() | col.isin(list(self.values))


@dataclass(frozen=True)
class RequiredWhen:
    """When ``column`` is one of ``values``, every column of ``required`` is not NULL.

    This is how per-type rules of the unified documents table are declared (a post needs a
    title, a slug and a status), and how a finished run must carry ``ended_at``.
    """

    column: str
    values: tuple[Any, ...]
    required: tuple[str, ...]

    @property
    def name(self) -> str:
        return _rule_name(self.column, self.values, "requires")

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column, *self.required)

    def describe(self) -> str:
        return f"`{self.column}` in {list(self.values)} requires {', '.join(self.required)}"

    def predicate(self, t: ir.Table) -> ir.BooleanValue:
        ok: ir.BooleanValue = t[self.column].isnull() | ~t[self.column].isin(list(self.values))
        filled = t[self.required[0]].notnull()
        for name in self.required[1:]:
            filled = filled & t[name].notnull()
        return ok | filled


@dataclass(frozen=True)
class NullWhen:
    """When ``column`` is one of ``values``, every column of ``absent`` is NULL
    (a running run has no ``ended_at``)."""

    column: str
    values: tuple[Any, ...]
    absent: tuple[str, ...]

    @property
    def name(self) -> str:
        return _rule_name(self.column, self.values, "excludes")

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.column, *self.absent)

    def describe(self) -> str:
        return f"`{self.column}` in {list(self.values)} requires NULL {', '.join(self.absent)}"

    def predicate(self, t: ir.Table) -> ir.BooleanValue:
        ok: ir.BooleanValue = t[self.column].isnull() | ~t[self.column].isin(list(self.values))
        empty = t[self.absent[0]].isnull()
        for name in self.absent[1:]:
            empty = empty & t[name].isnull()
        return ok | empty


@dataclass(frozen=True)
class NotBefore:
    """``later`` is NULL, ``earlier`` is NULL, or ``later >= earlier`` (e.g. ends after starts)."""

    later: str
    earlier: str

    @property
    def name(self) -> str:
        return f"{self.later}_not_before_{self.earlier}"

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.later, self.earlier)

    def describe(self) -> str:
        return f"`{self.later}` >= `{self.earlier}`"

    def predicate(self, t: ir.Table) -> ir.BooleanValue:
        a, b = t[self.later], t[self.earlier]
        return a.isnull() | b.isnull() | (a >= b)


Check = OneOf | RequiredWhen | NullWhen | NotBefore
