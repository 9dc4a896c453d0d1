"""Bad input, generated with hypothesis against every declared table, is refused cleanly.

Every table of :data:`egregora.database.schemas.CATALOG` is tried with every kind of fault
that applies to it; columns, types, keys and references come from the declarations, never
from a list kept here. Each bad write must end in a typed subclass of StorageError (never a
raw duckdb, psycopg or pyarrow exception, never the bare root class), the error must name
what was wrong, nothing may be written (the row count of every table is unchanged) and
``verify()`` stays empty. Empty batches write 0 rows, as documented.

The kinds of fault: wrong types, missing and extra columns, NULLs in NOT NULL columns,
duplicate keys within a batch and against stored rows, unknown, finished and foreign run ids,
orphan foreign keys, naive timestamps, invalid UTF-8 in binary-to-string casts, table and
column names crafted as SQL, strings of 10 MB, empty batches.

Hypothesis is bounded and derandomized (``derandomize=True``, no example database), so a run
is reproducible; each store kind has its own number of examples per (fault, table).
"""

from __future__ import annotations

import datetime as dt_mod
import decimal
import hashlib
import os
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tests import pg
from tests.helpers import make_rows
from tests.reliability.tally import Tally

from egregora.database import DuckDBStorageManager, Run, RunStatus, RunStore, StorageManager
from egregora.database.backends.postgres.manager import PostgresStorageManager
from egregora.database.checks import NullWhen, OneOf
from egregora.database.errors import (
    DuplicateKeyError,
    ForeignKeyViolationError,
    LineageError,
    RunNotFoundError,
    RunNotRunningError,
    StorageError,
    TableNotFoundError,
    UnknownRunError,
    ValidationError,
    key_text,
)
from egregora.database.model import RUN_ID, TableSchema, arrow_type
from egregora.database.schemas import CATALOG, END_STATUSES

#: Examples per (fault, table), per kind of store; EGREGORA_RELIABILITY_EXAMPLES=N tries N
#: on the memory store (and a third of that on PostgreSQL) for a deeper run.
_DEEPER = int(os.environ.get("EGREGORA_RELIABILITY_EXAMPLES", "0"))
EXAMPLES = {"memory": _DEEPER or 4, "postgres": max(_DEEPER // 3, 2)}

#: Names that a careless layer would paste into SQL.
CRAFTED = [
    'x"; DROP TABLE runs; --',
    "runs; DROP TABLE documents",
    "'; DELETE FROM runs; --",
    "documents--",
    'a"b',
    "a'b",
    "Documents",
    "ID",
    "",
    " ",
    "id ",
    "\t",
    "🙂",
    "run_id\x00",
    "*",
    "select",
    "egregora_incoming_batch",
]
NAMES = st.one_of(st.sampled_from(CRAFTED), st.text(max_size=24))
#: Byte strings that are not UTF-8.
INVALID_UTF8 = [b"\xff", b"\xc3\x28", b"abc\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80",
                b"\xe2\x82", b"ok\xfe\xfeok"]

# --- wrong types, by the kind of the declared type ----------------------------------------

_NOW = dt_mod.datetime(2025, 1, 1, tzinfo=dt_mod.UTC)
SAMPLES: dict[str, Callable[[int], pa.Array]] = {
    "int64": lambda n: pa.array(range(n), pa.int64()),
    "float64": lambda n: pa.array([0.5] * n, pa.float64()),
    "bool": lambda n: pa.array([True] * n, pa.bool_()),
    "date32": lambda n: pa.array([dt_mod.date(2025, 1, 1)] * n, pa.date32()),
    "timestamp_tz": lambda n: pa.array([_NOW] * n, pa.timestamp("us", tz="UTC")),
    "string": lambda n: pa.array(["text"] * n, pa.string()),
    "list": lambda n: pa.array([["a"]] * n, pa.list_(pa.string())),
    "struct": lambda n: pa.array([{"a": 1}] * n),
    "time64": lambda n: pa.array([0] * n, pa.time64("us")),
    "decimal": lambda n: pa.array([decimal.Decimal("1.5")] * n, pa.decimal128(5, 2)),
    "duration": lambda n: pa.array([1] * n, pa.duration("s")),
}
_SCALARS = ["int64", "float64", "bool", "date32", "timestamp_tz", "time64", "decimal", "duration"]
_NESTED = ["list", "struct"]
#: What cannot be cast without loss to each kind of declared type (the documented casts:
#: same kind, integer to float, text from bytes, nested values to json, 16 bytes to uuid).
WRONG: dict[str, list[str]] = {
    "text": _SCALARS + _NESTED,
    "uuid": _SCALARS + _NESTED,
    "json": _SCALARS,
    "timestamp": ["string", "int64", "float64", "bool", "date32", "time64", "decimal",
                  "duration", *_NESTED],
    "date": ["string", "int64", "float64", "bool", "timestamp_tz", "time64", "decimal",
             "duration", *_NESTED],
    "integer": ["string", "float64", "bool", "date32", "timestamp_tz", "time64", "decimal",
                "duration", *_NESTED],
    "floating": ["string", "bool", "date32", "timestamp_tz", "time64", "duration", *_NESTED],
    "boolean": ["string", "int64", "float64", "date32", "timestamp_tz", "time64", *_NESTED],
    "binary": ["string", *_SCALARS, *_NESTED],
}


def kind_of(dtype: dt.DataType) -> str:
    kinds: list[tuple[type[dt.DataType], str]] = [
        (dt.UUID, "uuid"), (dt.JSON, "json"), (dt.String, "text"), (dt.Timestamp, "timestamp"),
        (dt.Date, "date"), (dt.Integer, "integer"), (dt.Floating, "floating"),
        (dt.Boolean, "boolean"), (dt.Binary, "binary"),
    ]
    return next(kind for cls, kind in kinds if isinstance(dtype, cls))


def text_columns(table: TableSchema) -> list[str]:
    """The columns that are text at the library's boundary (text, uuid, json)."""
    return [c for c, t in table.schema.items() if pa.types.is_string(arrow_type(t))]


def foreign_keys(table: TableSchema) -> list[Any]:
    """The table's foreign keys, but the lineage one (its run_id is the writing run's)."""
    return [fk for fk in table.foreign_keys if not (table.lineage and fk.columns == (RUN_ID,))]


# --- the store under attack ----------------------------------------------------------------


@dataclass
class Target:
    """A store with rows in every table, runs in every state, and its row counts."""

    kind: str
    store: StorageManager
    main: Run
    other: Run
    finished: list[Run]
    examples: int
    stored: dict[str, pa.Table] = field(default_factory=dict)
    baseline: dict[str, int] = field(default_factory=dict)

    def valid(self, table: TableSchema, n: int, seed: int) -> pa.Table:
        """``n`` rows that ``table`` accepts: its references point at stored rows."""
        rng = np.random.default_rng(seed)
        overrides: dict[str, list[Any]] = {}
        for fk in foreign_keys(table):
            parents = self.stored[fk.ref_table].select(list(fk.ref_columns)).to_pylist()
            picks = [parents[i] for i in rng.integers(0, len(parents), size=n)]
            for column, ref in zip(fk.columns, fk.ref_columns, strict=True):
                overrides[column] = [str(p[ref]) for p in picks]
        rows = make_rows(table, n, seed=seed, overrides=overrides)
        # make_rows (tests/helpers.py) orders a NotBefore pair after emptying it for a NullWhen
        # (a RUNNING run then gets an ended_at): empty those columns again.
        for check in table.checks:
            if isinstance(check, NullWhen):
                hit = pc.fill_null(pc.is_in(rows[check.column], pa.array(check.values)), False)
                for column in check.absent:
                    empty = pa.nulls(n, rows[column].type)
                    rows = with_column(rows, column, pc.if_else(hit, empty, rows[column]))
        return rows

    def counts(self) -> dict[str, int]:
        parts = [
            self.store.table(t.name).aggregate(
                name=ibis.literal(t.name), rows=self.store.table(t.name).count()
            )
            for t in CATALOG.tables
        ]
        found = self.store.to_arrow(ibis.union(*parts)).to_pylist()
        return {r["name"]: int(r["rows"]) for r in found}

    def run_for(self, table: TableSchema) -> str | None:
        return self.main.run_id if table.lineage else None

    def refuse(self, case: Case, tally: Tally) -> StorageError:
        """Attempt the bad write: a typed error, and nothing written."""
        tally.bad_inputs += 1
        with pytest.raises(StorageError) as caught:
            self.store.write(case.table, case.batch, run_id=case.run_id, **case.options)
        err = caught.value
        assert type(err) is not StorageError, f"the bare root class: {err}"
        assert isinstance(err, case.error), f"{type(err).__name__}, not {case.error.__name__}"
        assert self.counts() == self.baseline, "a refused write changed a table"
        return err


def open_kind(kind: str) -> tuple[StorageManager, Callable[[], None]]:
    if kind == "memory":
        store: StorageManager = DuckDBStorageManager(":memory:")
        return store, store.close
    pg.require_server()
    schema = f"egregora_bad_{uuid.uuid4().hex[:12]}"
    store = PostgresStorageManager(pg.url(), schema=schema)

    def close() -> None:
        store.close()
        pg.drop_schema(schema)

    return store, close


#: Seeds of the stored rows; the batches drawn by hypothesis use seeds below it.
STORED_SEED = 1 << 20


def seed_rows(target: Target) -> None:
    """Four stored rows in every lineage table, written under the main run."""
    store = target.store
    target.stored["runs"] = store.to_arrow(store.table("runs"))
    for n, table in enumerate(CATALOG.creation_order()):
        if table.lineage:
            rows = target.valid(table, 4, seed=STORED_SEED + n)
            store.write(table.name, rows, run_id=target.main.run_id)
            target.stored[table.name] = store.to_arrow(store.table(table.name))


@pytest.fixture(scope="module", params=list(EXAMPLES))
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    store, close = open_kind(request.param)
    try:
        runs = RunStore(store)
        finished = []
        for status in END_STATUSES:
            started = runs.start_run(f"ended {status}")
            finished.append(runs.end_run(started.run_id, status=status))
        started = runs.start_run("rolled back")
        runs.end_run(started.run_id, status=RunStatus.FAILED)
        finished.append(runs.rollback_run(started.run_id))
        other = runs.start_run("other")
        main = runs.start_run("main")
        found = Target(request.param, store, main, other, finished, EXAMPLES[request.param])
        seed_rows(found)
        found.baseline = found.counts()
        assert not store.verify(), store.verify()
        yield found
    finally:
        close()


# --- the faults ----------------------------------------------------------------------------


@dataclass
class Case:
    """One bad write and what its error must say."""

    table: str
    batch: Any
    run_id: Any  # text, or a uuid.UUID: write() takes either
    error: type[StorageError]
    #: How many rows of ``failures`` each (column, check) must have; None: not checked here.
    failures: Counter[tuple[str, str]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    check: Callable[[StorageError], None] | None = None


Draw = st.DataObject


def with_column(batch: pa.Table, name: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, values)
    return batch.append_column(name, values)


def some_rows(data: Draw, n: int) -> list[int]:
    return sorted(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n,
                                      unique=True)))


def base(t: Target, table: TableSchema, data: Draw, *, least: int = 1) -> pa.Table:
    n = data.draw(st.integers(least, max(least, 5)))
    return t.valid(table, n, seed=data.draw(st.integers(0, STORED_SEED - 1)))


def lineage_column(table: TableSchema, column: str) -> bool:
    return table.lineage and column in {RUN_ID, "created_at"}


def run_column(t: Target, batch: pa.Table) -> pa.Array:
    return pa.array([t.main.run_id] * batch.num_rows, pa.string())


def wrong_type(t: Target, table: TableSchema, data: Draw) -> Case:
    batch = base(t, table, data)
    column = data.draw(st.sampled_from(table.column_names))
    wrong = data.draw(st.sampled_from(WRONG[kind_of(table.schema[column])]))
    batch = with_column(batch, column, SAMPLES[wrong](batch.num_rows))
    kind = LineageError if lineage_column(table, column) else ValidationError
    return Case(table.name, batch, t.run_for(table), kind, Counter({(column, "type"): 1}))


def missing_columns(t: Target, table: TableSchema, data: Draw) -> Case:
    required = [c for c in table.required_columns if not (table.lineage and c == RUN_ID)]
    dropped = data.draw(st.lists(st.sampled_from(required), min_size=1, max_size=3, unique=True))
    batch = base(t, table, data).drop_columns(dropped)
    expected = Counter({(c, "missing_column"): 1 for c in dropped})
    return Case(table.name, batch, t.run_for(table), ValidationError, expected)


def extra_columns(t: Target, table: TableSchema, data: Draw) -> Case:
    names = data.draw(st.lists(NAMES.filter(lambda s: s not in table.schema), min_size=1,
                               max_size=3, unique=True))
    batch = base(t, table, data)
    for name in names:
        kind = data.draw(st.sampled_from(sorted(SAMPLES)))
        batch = batch.append_column(name, SAMPLES[kind](batch.num_rows))
    expected = Counter({(name, "unknown_column"): 1 for name in names})
    return Case(table.name, batch, t.run_for(table), ValidationError, expected)


def nulls_in_required(t: Target, table: TableSchema, data: Draw) -> Case:
    column = data.draw(st.sampled_from(table.required_columns))
    batch = base(t, table, data)
    if column not in batch.column_names:
        batch = with_column(batch, column, run_column(t, batch))
    rows = some_rows(data, batch.num_rows)
    mask = pa.array([i in rows for i in range(batch.num_rows)])
    values = pc.if_else(mask, pa.nulls(batch.num_rows, batch[column].type), batch[column])
    batch = with_column(batch, column, values)
    kind = LineageError if table.lineage and column == RUN_ID else ValidationError
    return Case(table.name, batch, t.run_for(table), kind,
                Counter({(column, "not_null"): len(rows)}))


def duplicate_keys_in_batch(t: Target, table: TableSchema, data: Draw) -> Case:
    batch = base(t, table, data, least=2)
    first, second = data.draw(st.lists(st.integers(0, batch.num_rows - 1), min_size=2,
                                       max_size=2, unique=True))
    # A UUID key repeated in another case is the same key to the store, not to a text
    # comparison: the store refuses it when it inserts, naming the key.
    in_case = all(isinstance(table.schema[c], dt.UUID) for c in table.primary_key) and \
        data.draw(st.booleans())
    for column in table.primary_key:
        values = batch[column].to_pylist()
        values[second] = values[first].upper() if in_case else values[first]
        batch = with_column(batch, column, pa.array(values, batch[column].type))
    if in_case:
        row = {c: batch[c][first].as_py() for c in table.primary_key}

        def check(err: StorageError) -> None:
            assert err.failures is not None
            assert err.failures["key"].to_pylist() == [key_text(table.primary_key, row)]

        return Case(table.name, batch, t.run_for(table), DuplicateKeyError, check=check)
    expected = Counter({(c, "unique"): 2 for c in table.primary_key})
    return Case(table.name, batch, t.run_for(table), ValidationError, expected)


def duplicate_keys_stored(t: Target, table: TableSchema, data: Draw) -> Case:
    batch = base(t, table, data)
    stored = t.stored[table.name].select(list(table.primary_key)).to_pylist()
    k = data.draw(st.integers(1, min(batch.num_rows, len(stored))))
    picks = data.draw(st.lists(st.sampled_from(stored), min_size=k, max_size=k,
                               unique_by=lambda r: tuple(map(str, r.values()))))
    for column in table.primary_key:
        values = batch[column].to_pylist()
        values[:k] = [str(p[column]) for p in picks]
        batch = with_column(batch, column, pa.array(values, batch[column].type))
    keys = {key_text(table.primary_key, p) for p in picks}

    def check(err: StorageError) -> None:
        assert err.failures is not None
        assert set(err.failures["check"].to_pylist()) == {"duplicate_key"}
        assert set(err.failures["key"].to_pylist()) == keys
        assert "already stored" in str(err)

    return Case(table.name, batch, t.run_for(table), DuplicateKeyError, check=check)


RUN_TEXT = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.text(max_size=40),
    st.sampled_from(["", "not-a-uuid", "x'; DROP TABLE runs; --", "00000000-0000-0000-0000",
                     "NULL", "{00000000-0000-0000-0000-000000000000}"]),
)


def unknown_run(t: Target, table: TableSchema, data: Draw) -> Case:
    known = {str(r) for r in t.stored["runs"]["run_id"].to_pylist()}
    given = data.draw(st.one_of(RUN_TEXT, st.uuids()).filter(
        lambda v: str(v).lower().strip("{}") not in known))

    def check(err: StorageError) -> None:
        assert isinstance(err, RunNotFoundError | LookupError)
        assert err.table == table.name
        assert err.failures is not None
        assert err.failures["check"].to_pylist() == ["run_exists"]

    return Case(table.name, base(t, table, data), given, UnknownRunError, check=check)


def finished_run(t: Target, table: TableSchema, data: Draw) -> Case:
    run = data.draw(st.sampled_from(t.finished))

    def check(err: StorageError) -> None:
        assert err.run_id == run.run_id
        assert err.failures is not None
        assert err.failures["value"].to_pylist() == [str(run.status)]

    return Case(table.name, base(t, table, data), run.run_id, RunNotRunningError, check=check)


def foreign_run(t: Target, table: TableSchema, data: Draw) -> Case:
    batch = base(t, table, data)
    foreign = [t.other.run_id, *(r.run_id for r in t.finished)]
    rows = some_rows(data, batch.num_rows)
    values = [
        data.draw(st.one_of(st.sampled_from(foreign), st.uuids().map(str)))
        if i in rows else t.main.run_id
        for i in range(batch.num_rows)
    ]
    batch = with_column(batch, RUN_ID, pa.array(values, pa.string()))
    return Case(table.name, batch, t.main.run_id, LineageError,
                Counter({(RUN_ID, "run_id_matches_run"): len(rows)}))


def orphan_references(t: Target, table: TableSchema, data: Draw) -> Case:
    batch = base(t, table, data)
    fk = data.draw(st.sampled_from(foreign_keys(table)))
    rows = some_rows(data, batch.num_rows)
    orphans: list[str] = []
    for column in fk.columns:
        values = batch[column].to_pylist()
        for i in rows:
            values[i] = str(data.draw(st.uuids()))
            orphans.append(values[i])
        batch = with_column(batch, column, pa.array(values, batch[column].type))

    def check(err: StorageError) -> None:
        assert err.failures is not None
        assert set(err.failures["check"].to_pylist()) == {"foreign_key"}
        assert sorted(err.failures["value"].to_pylist()) == sorted(orphans)
        assert err.columns == fk.columns

    return Case(table.name, batch, t.run_for(table), ForeignKeyViolationError, check=check)


def naive_timestamps(t: Target, table: TableSchema, data: Draw) -> Case:
    columns = [c for c, dtype in table.schema.items() if isinstance(dtype, dt.Timestamp)]
    column = data.draw(st.sampled_from(columns))
    batch = base(t, table, data)
    unit = data.draw(st.sampled_from(["s", "ms", "us", "ns"]))
    naive = pa.array([dt_mod.datetime(2025, 1, 1, 12)] * batch.num_rows, pa.timestamp(unit))
    batch = with_column(batch, column, naive)
    kind = LineageError if lineage_column(table, column) else ValidationError
    return Case(table.name, batch, t.run_for(table), kind, Counter({(column, "type"): 1}))


def invalid_utf8(t: Target, table: TableSchema, data: Draw) -> Case:
    column = data.draw(st.sampled_from(text_columns(table)))
    batch = base(t, table, data)
    if column not in batch.column_names:
        batch = with_column(batch, column, run_column(t, batch))
    rows = some_rows(data, batch.num_rows)
    values = [
        data.draw(st.sampled_from(INVALID_UTF8)) if i in rows
        else (None if v is None else str(v).encode())
        for i, v in enumerate(batch[column].to_pylist())
    ]
    binary = data.draw(st.sampled_from([pa.binary(), pa.large_binary()]))
    batch = with_column(batch, column, pa.array(values, binary))
    kind = LineageError if lineage_column(table, column) else ValidationError

    def check(err: StorageError) -> None:
        assert err.failures is not None
        assert "invalid" in err.failures["value"][0].as_py().lower()

    return Case(table.name, batch, t.run_for(table), kind, Counter({(column, "type"): 1}),
                check=check)


@dataclass(frozen=True)
class Fault:
    make: Callable[[Target, TableSchema, Draw], Case]
    applies: Callable[[TableSchema], bool] = lambda table: True


FAULTS: dict[str, Fault] = {
    "wrong_type": Fault(wrong_type),
    "missing_columns": Fault(
        missing_columns, lambda t: any(c != RUN_ID for c in t.required_columns)
    ),
    "extra_columns": Fault(extra_columns),
    "nulls_in_not_null": Fault(nulls_in_required, lambda t: bool(t.required_columns)),
    "duplicate_keys_in_batch": Fault(duplicate_keys_in_batch),
    "duplicate_keys_stored": Fault(duplicate_keys_stored),
    "unknown_run": Fault(unknown_run, lambda t: t.lineage),
    "finished_run": Fault(finished_run, lambda t: t.lineage),
    "foreign_run_id": Fault(foreign_run, lambda t: t.lineage),
    "orphan_references": Fault(orphan_references, lambda t: bool(foreign_keys(t))),
    "naive_timestamps": Fault(
        naive_timestamps, lambda t: any(isinstance(d, dt.Timestamp) for d in t.schema.types)
    ),
    "invalid_utf8": Fault(invalid_utf8, lambda t: bool(text_columns(t))),
}


def settle(t: Target) -> settings:
    return settings(
        max_examples=t.examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def try_fault(target: Target, table: TableSchema, fault: Fault, tally: Tally) -> None:
    """Hypothesis draws bad batches of ``table`` with ``fault``; each must be refused."""

    @settle(target)
    @given(data=st.data())
    def attempt(data: Draw) -> None:
        case = fault.make(target, table, data)
        err = target.refuse(case, tally)
        assert err.table == table.name
        assert "nothing written" in str(err)
        if case.failures is not None:
            assert err.failures is not None
            found = Counter(zip(err.failures["column"].to_pylist(),
                                err.failures["check"].to_pylist(), strict=True))
            assert found == case.failures, str(err)
            assert set(err.columns) == {c for c, _ in case.failures}
        if case.check is not None:
            case.check(err)

    attempt()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_batches_are_refused_with_nothing_written(
    target: Target, fault: str, tally: Tally
) -> None:
    kind = FAULTS[fault]
    tables = [table for table in CATALOG.tables if kind.applies(table)]
    assert tables, f"no declared table to try {fault} on"
    for table in tables:
        try_fault(target, table, kind, tally)
    # Cumulative: a fault that had broken something would still show.
    assert not target.store.verify(), target.store.verify()
    tally.add(f"bad input [{target.kind}], faults tried on every table they apply to",
              f"{fault} ({len(tables)})")


# --- names crafted as SQL, empty batches, strings of 10 MB ------------------------------


def test_table_names_crafted_as_sql_are_unknown_tables(target: Target, tally: Tally) -> None:
    docs = target.valid(CATALOG["documents"], 2, seed=1)
    declared = {t.name for t in CATALOG.tables}

    @settle(target)
    @given(name=NAMES.filter(lambda s: s not in declared))
    def attempt(name: str) -> None:
        case = Case(name, docs, target.main.run_id, TableNotFoundError)
        err = target.refuse(case, tally)
        assert err.table == name
        assert isinstance(err, LookupError)
        with pytest.raises(TableNotFoundError):
            target.store.table(name)

    attempt()
    for name in CRAFTED:
        if name not in declared:
            target.refuse(Case(name, docs, target.main.run_id, TableNotFoundError), tally)
    assert not target.store.verify()


def test_column_names_crafted_as_sql_are_unknown_columns(target: Target, tally: Tally) -> None:
    for n, table in enumerate(CATALOG.tables):
        batch = target.valid(table, 2, seed=10 + n)
        crafted = [name for name in CRAFTED if name not in table.schema]
        for name in crafted:
            batch = batch.append_column(name, SAMPLES["string"](batch.num_rows))
        case = Case(table.name, batch, target.run_for(table), ValidationError,
                    Counter({(name, "unknown_column"): 1 for name in crafted}))
        err = target.refuse(case, tally)
        assert err.failures is not None
        found = Counter(zip(err.failures["column"].to_pylist(),
                            err.failures["check"].to_pylist(), strict=True))
        assert found == case.failures
    assert not target.store.verify()


def test_an_unknown_on_conflict_is_refused(target: Target, tally: Tally) -> None:
    docs = target.valid(CATALOG["documents"], 2, seed=2)
    for choice in ["replace", "", "IGNORE", "ignore; DROP TABLE runs"]:
        case = Case("documents", docs, target.main.run_id, ValidationError,
                    options={"on_conflict": choice})
        assert "on_conflict" in str(target.refuse(case, tally))


def test_empty_batches_write_nothing(target: Target, tally: Tally) -> None:
    # Documented: an empty batch writes 0 rows; its run is checked all the same.
    for table in CATALOG.tables:
        empty = target.valid(table, 0, seed=3)
        run_id = target.run_for(table)
        assert target.store.write(table.name, empty, run_id=run_id) == 0
        stream = pa.RecordBatchReader.from_batches(empty.schema, [])
        assert target.store.write(table.name, stream, run_id=run_id) == 0
        assert target.counts() == target.baseline
        tally.bad_inputs += 2
        if table.lineage:
            ghost = str(uuid.uuid4())
            target.refuse(Case(table.name, empty, ghost, UnknownRunError), tally)
            ended = target.finished[0].run_id
            target.refuse(Case(table.name, empty, ended, RunNotRunningError), tally)
    assert not target.store.verify()


BIG = 10 * 1024 * 1024


def refused_as_big_text(table: TableSchema, column: str) -> tuple[type[StorageError], str] | None:
    """How the store refuses 10 MB of text in ``column``, or None if it is ordinary text
    that the declaration accepts."""
    dtype = table.schema[column]
    if table.lineage and column == RUN_ID:
        return LineageError, "run_id_matches_run"
    if isinstance(dtype, dt.UUID):
        return ValidationError, "uuid_text"
    if isinstance(dtype, dt.JSON):
        return ValidationError, "json_text"
    for check in table.checks:
        if isinstance(check, OneOf) and check.column == column:
            return ValidationError, f"{table.name}_{check.name}"
    return None


def test_strings_of_ten_megabytes(
    target: Target, tally: Tally, seed_for: Callable[[str], int]
) -> None:
    # One column for each way the declarations refuse 10 MB of text, and one per table that
    # takes it, drawn from a printed seed (at 10 MB a write, every column would be too slow).
    rng = random.Random(seed_for("columns"))
    big = "x" * BIG
    by_refusal: dict[str, list[tuple[TableSchema, str]]] = {}
    accepted: list[tuple[TableSchema, str]] = []
    for table in CATALOG.tables:
        free = [c for c in text_columns(table) if refused_as_big_text(table, c) is None]
        if free and table.lineage:
            accepted.append((table, rng.choice(free)))
        for column in text_columns(table):
            refusal = refused_as_big_text(table, column)
            if refusal is not None:
                # OneOf checks are named per column; one 10 MB write stands for them all.
                kind = "one_of" if refusal[1].endswith("_one_of") else refusal[1]
                by_refusal.setdefault(kind, []).append((table, column))
    tried = []
    for _, candidates in sorted(by_refusal.items()):
        table, column = rng.choice(candidates)
        refusal = refused_as_big_text(table, column)
        assert refusal is not None
        tried.append(f"{table.name}.{column}")
        batch = target.valid(table, 2, seed=4)
        rest = batch[column].to_pylist()[1:] if column in batch.column_names else [
            target.main.run_id]
        batch = with_column(batch, column, pa.array([big, *rest], pa.string()))
        error, check = refusal
        err = target.refuse(Case(table.name, batch, target.run_for(table), error), tally)
        assert err.failures is not None, str(err)
        assert (column, check) in set(zip(err.failures["column"].to_pylist(),
                                          err.failures["check"].to_pylist(),
                                          strict=True)), str(err)
        assert len(str(err)) < 5_000, "the message repeats the 10 MB value"
    assert not target.store.verify()
    assert accepted
    # Ordinary text of 10 MB is accepted whole, in a store of its own.
    with DuckDBStorageManager(":memory:") as scratch:
        run = RunStore(scratch).start_run("big text")
        scratch_target = Target("scratch", scratch, run, run, [], 1)
        scratch_target.stored["runs"] = scratch.to_arrow(scratch.table("runs"))
        for table, column in accepted:
            scratch_target.stored["documents"] = scratch.to_arrow(scratch.table("documents"))
            batch = with_column(scratch_target.valid(table, 1, seed=5), column,
                                pa.array([big], pa.string()))
            assert scratch.write(table.name, batch, run_id=run.run_id) == 1
            key = batch[table.primary_key[0]][0].as_py()
            rows = scratch.table(table.name)
            got = scratch.to_arrow(rows.filter(rows[table.primary_key[0]].cast("string") == key)
                                   .select(column))[column][0].as_py()
            assert hashlib.sha256(got.encode()).digest() == hashlib.sha256(
                big.encode()).digest(), f"{table.name}.{column}"
            tried.append(f"{table.name}.{column} (accepted)")
    tally.notes.append(f"10 MB strings [{target.kind}]: {', '.join(tried)}")


# --- run ids and run texts -------------------------------------------------------------------

#: Run ids that name no run: text that is no UUID, text a driver cannot send as is (NUL),
#: SQL, and UUIDs in forms that parse but are not stored.
NO_RUN_IDS = [
    "", " ", "not-a-uuid", "a\x00b", "x'; DROP TABLE runs; --", "0193", "NULL",
    "ffffffff-ffff-ffff-ffff-ffffffffffff", "{00000000-0000-0000-0000-000000000000}",
    "urn:uuid:00000000-0000-0000-0000-000000000001",
]


def test_run_ids_that_name_no_run_are_not_found(target: Target, tally: Tally) -> None:
    runs = RunStore(target.store)
    calls: list[Callable[[str], object]] = [
        runs.get_run,
        runs.end_run,
        runs.heartbeat,
        runs.rollback_run,
        lambda run_id: runs.start_run("child", parent_run_id=run_id),
    ]
    for run_id in [*NO_RUN_IDS, "\ud800"]:
        assert runs.find_run(run_id) is None
        for call in calls:
            tally.bad_inputs += 1
            with pytest.raises(RunNotFoundError):
                call(run_id)
    assert target.counts() == target.baseline


def test_writes_under_run_ids_that_name_no_run_are_refused(target: Target, tally: Tally) -> None:
    for table in CATALOG.tables:
        if not table.lineage:
            continue
        batch = target.valid(table, 2, seed=6)
        for run_id in NO_RUN_IDS:
            err = target.refuse(Case(table.name, batch, run_id, UnknownRunError), tally)
            assert err.failures is not None
            assert err.failures["check"].to_pylist() == ["run_exists"]
    assert not target.store.verify()


def test_run_texts_that_are_not_unicode_are_refused(target: Target, tally: Tally) -> None:
    runs = RunStore(target.store)
    tally.bad_inputs += 3
    with pytest.raises(ValidationError, match="name is not valid Unicode"):
        runs.start_run("half a pair \ud800")
    with pytest.raises(ValidationError, match=r"config text at config\.k is not valid Unicode"):
        runs.start_run("run", config={"k": "\udfff"})
    with pytest.raises(ValidationError, match="error is not valid Unicode"):
        runs.end_run(target.main.run_id, status=RunStatus.FAILED, error="\ud800")
    assert runs.get_run(target.main.run_id).status is RunStatus.RUNNING
    assert target.counts() == target.baseline


@pytest.fixture(params=list(EXAMPLES))
def fresh(request: pytest.FixtureRequest) -> Iterator[StorageManager]:
    """An empty store of each kind, for tests that write."""
    store, close = open_kind(request.param)
    try:
        yield store
    finally:
        close()


def test_a_run_that_fails_with_a_message_no_store_can_keep_is_still_recorded(
    fresh: StorageManager,
) -> None:
    runs = RunStore(fresh)
    with pytest.raises(ValueError, match="bad") as caught, runs.run("doomed") as run:
        raise ValueError("bad \ud800 text \x00 here")
    assert "\ud800" in str(caught.value)  # the exception itself is untouched
    failed = runs.get_run(run.run_id)
    assert failed.status is RunStatus.FAILED
    assert failed.error == "ValueError: bad \\ud800 text \\x00 here"


def test_a_run_id_column_names_the_writing_run_in_any_case(fresh: StorageManager) -> None:
    run = RunStore(fresh).start_run("upper")
    docs = make_rows(CATALOG["documents"], 3, seed=7, run_id=run.run_id.upper())
    assert docs["run_id"][0].as_py() != run.run_id

    assert fresh.write("documents", docs, run_id=run.run_id) == 3

    stored = fresh.to_arrow(fresh.table("documents").select("run_id"))["run_id"].to_pylist()
    assert [str(r) for r in stored] == [run.run_id] * 3
    assert not fresh.verify()


def accepted_as_is(target: Target, table: TableSchema) -> None:
    """Hypothesis draws unbroken batches of ``table``; each must be written whole."""
    used: set[int] = set()

    @settle(target)
    @given(n=st.integers(1, 5), seed=st.integers(0, STORED_SEED - 1))
    def accepted(n: int, seed: int) -> None:
        assume(seed not in used)  # the same seed draws the same keys
        used.add(seed)
        rows = target.valid(table, n, seed)
        assert target.store.write(table.name, rows, run_id=target.run_for(table)) == n

    accepted()


def test_the_batches_that_faults_start_from_are_accepted() -> None:
    # Every fault above breaks one thing in a batch that is otherwise sound: prove it is.
    with DuckDBStorageManager(":memory:") as store:
        main = RunStore(store).start_run("main")
        target = Target("scratch", store, main, main, [], 8)
        seed_rows(target)
        for table in CATALOG.tables:
            accepted_as_is(target, table)
