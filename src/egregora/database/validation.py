"""Validation of a batch against its table's declaration, with Pandera running inside DuckDB.

The Pandera schema is derived from the :class:`~egregora.database.model.TableSchema`: one
column per declared column (its type as a conformed batch carries it through Arrow and Ibis,
its nullability from the declared type) and one dataframe check that holds the primary key's
uniqueness within the batch and every declared check (each through its own ``predicate``).
On lineage tables the check also holds, per call, that ``run_id`` is the writing run and that
``created_at`` is not before the run started.

Pandera is the gate: a valid batch costs one lazy Pandera pass whose single dataframe check
holds every rule (NOT NULLs included) in one aggregate query, answered by DuckDB over the
registered Arrow batch without copying it (about 0.4 s for 1M ``documents`` rows).
Pandera's failure cases do not make a report (Ibis expressions, scalars and frames, mixed,
in Pandera 0.35), so only once Pandera has refused a batch are the offending rows listed, by Ibis
filters built from the same predicates, into a ``failures`` Arrow table: ``column``,
``check``, ``value``, ``key``.

Pandera 0.35 facts this relies on: ``Column(unique=True)`` is silently ignored by the Ibis
backend; ``PANDERA_VALIDATION_DEPTH`` is read once, at import, and ``SCHEMA_ONLY`` silently
skips every data check, so the depth is pinned per call; every check is one query; and an
aggregate over an empty batch is NULL, which its NOT NULL check reads as a failure.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.datatypes as dt
import pandera.ibis as pandera_ibis
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from ibis.formats.pyarrow import PyArrowType
from pandera.config import ValidationDepth, config_context
from pandera.errors import SchemaErrorReason, SchemaErrors
from sqlglot import exp

from egregora.database.checks import Check, NullWhen, RequiredWhen
from egregora.database.errors import (
    FAILURES_SCHEMA,
    MESSAGE_EXAMPLES,
    LineageError,
    StorageError,
    ValidationError,
)
from egregora.database.model import RUN_ID, TableSchema, arrow_type
from egregora.database.relations import bound_table

if TYPE_CHECKING:
    import ibis.expr.types as ir

#: The lineage time column: on a lineage table no row may predate its writing run.
CREATED_AT = "created_at"
NOT_NULL = "not_null"
UNIQUE = "unique"
RUN_ID_MATCHES_RUN = "run_id_matches_run"
CREATED_AT_NOT_BEFORE_RUN_START = "created_at_not_before_run_start"

_GATE = "row_checks"
_INFER_STRING = r"The 'future\.infer_string' option is deprecated"
_FAIL = ("fails validation", "fail validation")
_SHOWN_VALUE_CHARS = 40

_Holds = Callable[["ir.Table"], "ir.BooleanValue"]
_Offends = Callable[["ir.Table", str], "ir.BooleanValue"]


@dataclass(frozen=True)
class _Rule:
    """One rule a batch must satisfy.

    ``holds(t)`` is one aggregate, true when the whole batch satisfies the rule (None for NOT
    NULL, which Pandera's ``nullable`` gates). ``offends(t, column)`` selects the rows at fault
    in ``column``: a post missing both title and slug yields two failures.
    """

    name: str
    columns: tuple[str, ...]
    offends: _Offends
    holds: _Holds | None = None
    lineage: bool = False
    phrase: tuple[str, str] = _FAIL


def _all(predicate: _Holds) -> _Holds:
    # NULL rows pass, as in a SQL CHECK; the NULL of an empty batch passes too.
    return lambda t: predicate(t).all().fill_null(True)


def _gate(rules: list[_Rule]) -> pandera_ibis.Check:
    """One Pandera check for all rules, answered by a single scan of the batch.

    Pandera runs a query per check; on a 1M-row ``documents`` batch its ten checks took 0.31
    CPU-seconds as ten queries and 0.20 as one. Which rule failed is asked only after the gate
    has refused a batch (:func:`_failed_rules`).
    """
    holds = [rule.holds for rule in rules if rule.holds is not None]
    return pandera_ibis.Check(
        lambda data: functools.reduce(operator.and_, (h(data.table) for h in holds)), name=_GATE
    )


@functools.lru_cache(maxsize=512)
def _gate_view(
    table: TableSchema, run_id: str | None, run_started_at: datetime | None, source: str
) -> tuple[str, str]:
    """The gate's aggregate over the batch relation ``source`` as a temporary view: its name
    and its ``CREATE TEMP VIEW IF NOT EXISTS`` statement, compiled once.

    Compiling the gate's Ibis expression took ~60-90 ms, more than scanning a 100-row batch;
    enrichers write many small batches under one run, so the SQL is compiled once per
    (table, run, relation) and reused.
    """
    rules = [*_table_rules(table).checked, *_lineage_rules(table, run_id, run_started_at)]
    holds = [rule.holds for rule in rules if rule.holds is not None]
    batch = ibis.table(
        {n: PyArrowType.to_ibis(arrow_type(t)) for n, t in table.schema.items()}, name=source
    )
    verdict = batch.aggregate(ok=functools.reduce(operator.and_, (h(batch) for h in holds)))
    query = sqlglot.parse_one(str(ibis.to_sql(verdict, dialect="duckdb")), read="duckdb")
    view = f"egregora_gate_{hashlib.sha256(query.sql('duckdb').encode()).hexdigest()[:16]}"
    create = exp.Create(
        this=exp.Table(this=exp.to_identifier(view, quoted=True)),
        kind="VIEW",
        exists=True,
        expression=query,
        properties=exp.Properties(expressions=[exp.TemporaryProperty()]),
    )
    return view, create.sql("duckdb")


def _compiled_gate(
    table: TableSchema, run_id: str | None, run_started_at: datetime | None
) -> pandera_ibis.Check:
    """The gate as a Pandera check whose condition is the precompiled :func:`_gate_view`."""

    def check(data: Any) -> ir.BooleanScalar:
        view, create = _gate_view(table, run_id, run_started_at, data.table.get_name())
        backend = data.table.get_backend()
        # A temporary view of the precompiled SQL: Ibis would re-parse raw SQL on every
        # execution (~40 ms), while a view is one name to it. The view reads the batch
        # relation by name, so it serves every batch of the run on this connection.
        backend.con.execute(create)
        verdict: ir.BooleanScalar = bound_table(backend, view).ok.all()
        return verdict

    return pandera_ibis.Check(check, name=_GATE)


def _not_null_rule(table: TableSchema, column: str) -> _Rule:
    def offends(t: ir.Table, col: str) -> ir.BooleanValue:
        # Pandera counts NaN as null in a non-nullable float column: list what it refused.
        missing: ir.BooleanValue = t[col].isnull()
        return missing | t[col].isnan() if t[col].type().is_floating() else missing

    holds = _all(lambda t: ~offends(t, column))
    if table.lineage and column == RUN_ID:
        phrase = ("carries no run_id", "carry no run_id")
        return _Rule(NOT_NULL, (column,), offends, holds=holds, lineage=True, phrase=phrase)
    return _Rule(NOT_NULL, (column,), offends, holds=holds)


def _declared_rule(table: TableSchema, check: Check) -> _Rule:
    def offends(t: ir.Table, col: str) -> ir.BooleanValue:
        broken: ir.BooleanValue = ~check.predicate(t)
        if isinstance(check, RequiredWhen):
            return broken & t[col].isnull()
        if isinstance(check, NullWhen):
            return broken & t[col].notnull()
        return broken

    columns = check.columns[:1]
    if isinstance(check, RequiredWhen):
        columns = check.required
    elif isinstance(check, NullWhen):
        columns = check.absent
    # Named as its CHECK constraint in the DDL, so that one name finds the rule anywhere.
    return _Rule(f"{table.name}_{check.name}", columns, offends, holds=_all(check.predicate))


def _unique_rule(table: TableSchema) -> _Rule:
    pk = table.primary_key

    def holds(t: ir.Table) -> ir.BooleanValue:
        # A hash aggregate, not Pandera's schema-level ``unique`` (a window over the key):
        # 0.14 against 0.30 CPU-seconds on 1M text keys. NULL keys are not_null's to report.
        if len(pk) == 1:
            return t[pk[0]].nunique() == t[pk[0]].count()
        return ibis.struct({c: t[c] for c in pk}).nunique() == t.count()

    def offends(t: ir.Table, col: str) -> ir.BooleanValue:
        return t[pk[0]].count().over(group_by=[t[c] for c in pk]) > 1

    return _Rule(UNIQUE, pk, offends, holds=holds)


@dataclass(frozen=True)
class _TableRules:
    not_null: dict[str, _Rule]
    checked: list[_Rule]


@functools.lru_cache(maxsize=256)
def _table_rules(table: TableSchema) -> _TableRules:
    return _TableRules(
        {c: _not_null_rule(table, c) for c in table.required_columns},
        [
            *(_not_null_rule(table, c) for c in table.required_columns),
            _unique_rule(table),
            *(_declared_rule(table, check) for check in table.checks),
        ],
    )


@functools.lru_cache(maxsize=256)
def pandera_schema(table: TableSchema) -> pandera_ibis.DataFrameSchema:
    """The Pandera (Ibis) schema derived from ``table``, cached per declaration.

    Column types are those of a conformed batch seen through Arrow and Ibis (uuid and json
    are strings, see :func:`~egregora.database.model.arrow_type`). One dataframe check holds
    the declared NOT NULLs, the primary key's uniqueness and the declared checks in a single
    scan; :func:`validate_batch` adds the run-dependent lineage checks per call. Pandera's own
    ``nullable=False`` would cost one query per NOT NULL column, which on small batches (the
    enricher pattern: many writes of 100 rows) dominated the cost of a write.

    Args:
        table: The declaration.
    """
    columns = {
        name: pandera_ibis.Column(
            PyArrowType.to_ibis(arrow_type(dtype)), nullable=True, name=name
        )
        for name, dtype in table.schema.items()
    }
    gate = _gate(_table_rules(table).checked)
    return pandera_ibis.DataFrameSchema(columns, checks=[gate], strict=True, name=table.name)


def _lineage_rules(
    table: TableSchema, run_id: str | None, run_started_at: datetime | None
) -> list[_Rule]:
    if not table.lineage:
        return []
    if run_id is None:
        raise LineageError(
            f"`{table.name}` records lineage: validating a batch needs the writing run's id",
            table=table.name,
        )
    # UUID text in any case names the same run (the store keeps it canonical, lower case),
    # as the run_id a write is given does; the writing run's id arrives canonical.
    run = ibis.literal(run_id.lower())
    rules = [
        _Rule(
            RUN_ID_MATCHES_RUN,
            (RUN_ID,),
            lambda t, c: t[c].notnull() & (t[c].lower() != run),
            # A NULL run_id is reported once, by the not_null rule.
            holds=_all(lambda t: t[RUN_ID].isnull() | (t[RUN_ID].lower() == run)),
            lineage=True,
            phrase=("carries a foreign run_id", "carry a foreign run_id"),
        )
    ]
    if CREATED_AT not in table.schema or not table.schema[CREATED_AT].is_timestamp():
        return rules
    if run_started_at is None or run_started_at.utcoffset() is None:
        raise LineageError(
            f"`{table.name}` records lineage: validating a batch needs the run's "
            f"timezone-aware start, got {run_started_at!r}",
            table=table.name,
            run_id=run_id,
        )
    started = ibis.literal(
        run_started_at.astimezone(UTC), type=dt.Timestamp(timezone="UTC", scale=6)
    )
    rules.append(
        _Rule(
            CREATED_AT_NOT_BEFORE_RUN_START,
            (CREATED_AT,),
            lambda t, c: t[c] < started,
            holds=_all(lambda t: t[CREATED_AT].isnull() | (t[CREATED_AT] >= started)),
            lineage=True,
            phrase=("predates its run", "predate their run"),
        )
    )
    return rules


def validate_batch(
    batch: ibis.Table,
    table: TableSchema,
    *,
    run_id: str | None,
    run_started_at: datetime | None,
) -> None:
    """Check one conformed batch against its declaration, inside DuckDB.

    Args:
        batch: An Ibis table over one conformed Arrow batch registered in DuckDB (every
            declared column, declared Arrow types, ``run_id`` filled).
        table: The declaration.
        run_id: The writing run, for lineage tables; None for tables without lineage.
        run_started_at: The writing run's timezone-aware start; None when there is no run.

    Raises:
        LineageError: when a row's ``run_id`` is NULL or not ``run_id``, or its
            ``created_at`` predates ``run_started_at`` (other failures are listed too), or
            when a lineage table is validated without a run.
        ValidationError: when rows break a NOT NULL, the primary key's uniqueness within
            the batch or a declared check; ``failures`` lists every offending value.
        StorageError: when a check cannot run at all.
    """
    lineage = _lineage_rules(table, run_id, run_started_at)
    checked = [*_table_rules(table).checked, *lineage]
    # The cached schema stays free of runs: a shallow copy gates this run's batch, in the
    # same single scan as the declared checks, through SQL compiled once per run.
    schema = copy.copy(pandera_schema(table))
    if _is_named_duckdb_relation(batch):
        schema.checks = [_compiled_gate(table, run_id, run_started_at)]
    elif lineage:
        schema.checks = [_gate(checked)]
    try:
        # Pinned per call: the environment must not be able to switch data checks off.
        with (
            config_context(
                validation_enabled=True, validation_depth=ValidationDepth.SCHEMA_AND_DATA
            ),
            warnings.catch_warnings(),
        ):
            # Pandera runs checks through Ibis' execute(), which reads a pandas 3 option that
            # warns; Pandera turns any exception, a warning made an error too, into a failed
            # check.
            warnings.filterwarnings("ignore", _INFER_STRING, DeprecationWarning)
            schema.validate(batch, lazy=True)
    except SchemaErrors as exc:
        failed = _failed_rules(exc, batch, table, checked)
    else:
        return
    parts = [(rule, _list_failures(batch, table, rule)) for rule in failed]
    parts = [(rule, part) for rule, part in parts if part.num_rows]
    # Pandera's NOT NULL check reads the NULL aggregate of an empty batch as a failure: only
    # rows that the listing finds count.
    if parts:
        raise _error(batch, table, run_id, parts)


def _is_named_duckdb_relation(batch: ir.Table) -> bool:
    try:
        return bool(batch.get_backend().name == "duckdb" and batch.get_name())
    except (AttributeError, TypeError, ValueError, ibis.common.exceptions.IbisError):
        return False


def _failed_rules(
    exc: SchemaErrors, batch: ir.Table, table: TableSchema, checked: list[_Rule]
) -> list[_Rule]:
    """The rules behind Pandera's refusal: lineage first, then in declaration order.

    Raises:
        StorageError: when a check could not run, or the batch lacks the declared columns or
            types (``batches.conform`` guarantees them, so that is a bug upstream).
    """
    null_columns: set[str] = set()
    gate_refused = False
    broken: list[str] = []
    for err in exc.schema_errors:
        if err.reason_code is SchemaErrorReason.SERIES_CONTAINS_NULLS:
            null_columns.add(err.schema.name)
        elif err.reason_code is SchemaErrorReason.DATAFRAME_CHECK and err.check.name == _GATE:
            gate_refused = True
        else:
            broken.append(str(err).strip().splitlines()[0])
    if broken:
        raise StorageError(
            f"validating a batch of `{table.name}` failed: {'; '.join(broken)}", table=table.name
        ) from exc
    failed = [rule for c, rule in _table_rules(table).not_null.items() if c in null_columns]
    if gate_refused:
        # The gate says only that one of its rules failed: one aggregate query tells which.
        holds = {f"r{i}": rule.holds(batch) for i, rule in enumerate(checked) if rule.holds}
        verdict = batch.aggregate(**holds).to_pyarrow().to_pylist()[0]
        failed += [rule for i, rule in enumerate(checked) if verdict.get(f"r{i}") is False]
    return sorted(failed, key=lambda rule: not rule.lineage)


def _text(values: pa.ChunkedArray, dtype: dt.DataType) -> pa.ChunkedArray:
    """Values as text, rendered by Arrow so that DuckDB's session time zone plays no part."""
    if dtype.is_binary():
        hexed = [None if v is None else v.hex() for v in values.to_pylist()]
        return pa.chunked_array([pa.array(hexed, pa.string())])
    return pc.cast(values, pa.string())


def _key_text(rows: pa.Table, table: TableSchema, names: list[str]) -> pa.ChunkedArray:
    """Each row's key as :func:`egregora.database.errors.key_text` writes it, whatever its
    type: ``id='…'``."""
    parts = []
    for name, column in zip(names, table.primary_key, strict=True):
        text = pc.replace_substring(_text(rows[name], table.schema[column]), "'", "\\'")
        quoted = pc.fill_null(pc.binary_join_element_wise("'", text, "'", ""), "NULL")
        parts.append(pc.binary_join_element_wise(f"{column}=", quoted, ""))
    return parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, ", ")


def _list_failures(batch: ir.Table, table: TableSchema, rule: _Rule) -> pa.Table:
    """Every value at fault under ``rule``, in batch order (key order for duplicates)."""
    pk = table.primary_key
    key_names = [f"__key{i}" for i in range(len(pk))]
    parts = []
    for column in rule.columns:
        rows = batch.filter(rule.offends(batch, column)).select(
            __value=batch[column], **{n: batch[k] for n, k in zip(key_names, pk, strict=True)}
        )
        if rule.name == UNIQUE:
            # A window yields no particular order; keep the report stable.
            rows = rows.order_by(key_names)
        got = rows.to_pyarrow()
        n = got.num_rows
        columns = [pa.repeat(column, n), pa.repeat(rule.name, n)]
        columns += [_text(got["__value"], table.schema[column]), _key_text(got, table, key_names)]
        parts.append(pa.table(columns, schema=FAILURES_SCHEMA))
    return pa.concat_tables(parts)


def _rows(n: int, phrase: tuple[str, str], table: str | None = None) -> str:
    of = f" of `{table}`" if table else ""
    return f"{n} row{'s' if n != 1 else ''}{of} {phrase[n != 1]}"


def _example(row: dict[str, Any]) -> str:
    value, most = row["value"], _SHOWN_VALUE_CHARS
    shown = (
        "NULL"
        if value is None
        else repr(value if len(value) <= most else value[: most - 3] + "...")
    )
    return f"{row['column']}={shown} at {row['key']} ({row['check']})"


def _error(
    batch: ir.Table, table: TableSchema, run_id: str | None, parts: list[tuple[_Rule, pa.Table]]
) -> ValidationError:
    lineage = [rule for rule, _ in parts if rule.lineage]
    other = [rule for rule, _ in parts if not rule.lineage]

    def any_of(rules: list[_Rule]) -> ir.IntegerValue:
        hits = [r.offends(batch, c) for r in rules for c in r.columns]
        return functools.reduce(operator.or_, hits, ibis.literal(False)).cast("int64")

    # The summary counts rows, not failures: a row may break several rules, and rows with a
    # duplicated key share their key text. One query, on the failure path only.
    flags = batch.select(lineage=any_of(lineage), other=any_of(other))
    counts = flags.aggregate(lineage=flags.lineage.sum(), other=flags.other.sum())
    n_lineage, n_other = (v or 0 for v in counts.to_pyarrow().to_pylist()[0].values())
    if lineage:
        phrases = {rule.phrase for rule in lineage}
        both = ("fails lineage checks", "fail lineage checks")
        summary = _rows(n_lineage, phrases.pop() if len(phrases) == 1 else both, table.name)
        summary += f" and {_rows(n_other, _FAIL)}" if n_other else ""
    else:
        summary = _rows(n_other, _FAIL, table.name)
    failures = pa.concat_tables([part for _, part in parts])
    return (LineageError if lineage else ValidationError)(
        summary,
        table=table.name,
        columns=pc.unique(failures["column"]).to_pylist(),
        run_id=run_id,
        failures=failures,
        examples=[_example(row) for row in failures.slice(0, MESSAGE_EXAMPLES).to_pylist()],
        total=failures.num_rows,
    )
