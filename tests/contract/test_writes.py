"""What ``write`` accepts and how it conforms a batch to its table's declaration.

Every accepted input type round-trips; columns are matched by name; missing nullable columns
become NULL; unknown columns, missing NOT NULL columns and lossy casts are refused together,
in one ValidationError whose ``failures`` names each. UUIDs arrive as text or ``arrow.uuid``,
nested values for ``json`` columns become JSON text, and streams are written whole.
"""

from __future__ import annotations

import datetime as dt_mod
import json
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.conftest import OpenStore
from tests.helpers import make_documents, make_rows, uuids

import duckdb
from egregora.database import CATALOG, DuckDBStorageManager, Run, RunStore, TableSchema
from egregora.database.errors import LineageError, StorageError, ValidationError
from egregora.database.schemas import DOCUMENTS_SCHEMA

#: A user table with the types the egregora tables lack (integers, floats, a second time).
READINGS = TableSchema(
    "readings",
    {
        "id": "!uuid",
        "value": "!int64",
        "small": "int16",
        "ratio": "float64",
        "taken_at": "timestamp('UTC')",
        "payload": "json",
        "ok": "boolean",
    },
    primary_key=("id",),
    lineage=True,
)


def stored(store: DuckDBStorageManager, table: str) -> pa.Table:
    """Every row of ``table``, ordered by primary key."""
    key = [(c, "ascending") for c in store.catalog[table].primary_key]
    return store.to_arrow(store.table(table)).sort_by(key)


def expected(data: pa.Table, table: TableSchema, run: Run) -> pa.Table:
    """``data`` as the store returns it: declared columns and types, stamped with the run."""
    stamped = data.append_column("run_id", pa.array([run.run_id] * data.num_rows))
    key = [(c, "ascending") for c in table.primary_key]
    return stamped.select(list(table.column_names)).cast(table.to_arrow()).sort_by(key)


def duckdb_relation(table: pa.Table) -> Any:
    # A relation of another connection, as a caller holding its own DuckDB would pass it.
    con = duckdb.connect()
    con.register("incoming", table)
    return con.sql("SELECT * FROM incoming")


INPUTS: dict[str, Callable[[pa.Table], Any]] = {
    "arrow_table": lambda t: t,
    "record_batch": lambda t: t.combine_chunks().to_batches()[0],
    "record_batch_reader": lambda t: pa.RecordBatchReader.from_batches(
        t.schema, t.to_batches(max_chunksize=7)
    ),
    "pandas": lambda t: t.to_pandas(),
    "polars": pl.from_arrow,
    "duckdb_relation": duckdb_relation,
}


@pytest.mark.parametrize("kind", INPUTS)
def test_every_input_type_round_trips(store: DuckDBStorageManager, run: Run, kind: str) -> None:
    docs = make_documents(20, seed=3)
    data = INPUTS[kind](docs)

    assert store.write("documents", data, run_id=run.run_id) == 20

    got = stored(store, "documents")
    assert got.schema == DOCUMENTS_SCHEMA.to_arrow()
    assert got.equals(expected(docs, DOCUMENTS_SCHEMA, run))


def test_pandas_frame_with_a_filtered_index_writes_only_its_rows(
    store: DuckDBStorageManager, run: Run
) -> None:
    docs = make_documents(6, seed=4)
    frame = docs.to_pandas().iloc[[1, 3, 5]]

    assert store.write("documents", frame, run_id=run.run_id) == 3
    assert stored(store, "documents")["id"].to_pylist() == sorted(frame["id"])


def test_columns_are_matched_by_name_not_position(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(10, seed=5)
    shuffled = docs.select(list(np.random.default_rng(1).permutation(docs.column_names)))
    assert shuffled.column_names != docs.column_names

    store.write("documents", shuffled, run_id=run.run_id)

    assert stored(store, "documents").equals(expected(docs, DOCUMENTS_SCHEMA, run))


def test_missing_nullable_columns_are_null(store: DuckDBStorageManager, run: Run) -> None:
    required = [c for c in DOCUMENTS_SCHEMA.required_columns if c != "run_id"]
    docs = make_documents(5, seed=6).select(required)
    # enrichment: the one document type that requires no optional column
    where = docs.schema.get_field_index("doc_type")
    docs = docs.set_column(where, "doc_type", pa.array(["enrichment"] * 5))

    store.write("documents", docs, run_id=run.run_id)

    got = stored(store, "documents")
    optional = [
        c for c in DOCUMENTS_SCHEMA.column_names if c not in DOCUMENTS_SCHEMA.required_columns
    ]
    assert optional
    for name in optional:
        assert got[name].null_count == 5, name
    assert got.select(required).equals(docs.sort_by("id").cast(got.select(required).schema))


def test_every_problem_of_a_batch_is_refused_together(open_store: OpenStore) -> None:
    store = open_store(catalog=CATALOG.extend(READINGS))
    run = RunStore(store).start_run("refusals")
    batch = pa.table(
        {
            "id": uuids(2, np.random.default_rng(0)),
            "bogus": [1, 2],  # unknown column
            # "value" (NOT NULL) missing
            "small": ["1", "2"],  # string -> int
            "ratio": [0.5, 1.5],  # fine
            "taken_at": pa.array([dt_mod.datetime(2024, 1, 1)] * 2),  # naive
        }
    )

    with pytest.raises(ValidationError) as caught:
        store.write("readings", batch, run_id=run.run_id)

    err = caught.value
    assert err.table == "readings"
    assert err.run_id == run.run_id
    assert set(err.columns) == {"bogus", "value", "small", "taken_at"}
    assert err.failures is not None
    problems = set(
        zip(err.failures["column"].to_pylist(), err.failures["check"].to_pylist(), strict=True)
    )
    assert problems == {
        ("bogus", "unknown_column"),
        ("value", "missing_column"),
        ("small", "type"),
        ("taken_at", "type"),
    }
    reasons = dict(
        zip(err.failures["column"].to_pylist(), err.failures["value"].to_pylist(), strict=True)
    )
    assert "naive" in reasons["taken_at"]
    assert "string" in reasons["small"]
    assert "nothing written" in str(err)
    for name in ("bogus", "value", "small", "taken_at"):
        assert name in str(err)
    assert stored(store, "readings").num_rows == 0


UNSAFE = {
    "string_to_int": ("value", pa.array(["1", "2"])),
    "float_to_int": ("value", pa.array([1.0, 2.5])),
    "int_overflow": ("small", pa.array([1, 70_000])),
    "int_to_bool": ("ok", pa.array([1, 0])),
    "naive_timestamp": ("taken_at", pa.array([dt_mod.datetime(2024, 1, 1)] * 2)),
    "float_to_json": ("payload", pa.array([1.0, 2.0])),
}


def test_each_unsafe_cast_is_refused(open_store: OpenStore) -> None:
    store = open_store(catalog=CATALOG.extend(READINGS))
    run = RunStore(store).start_run("casts")
    ids = uuids(2, np.random.default_rng(1))
    for case, (column, values) in UNSAFE.items():
        batch = {"id": ids, "value": pa.array([1, 2]), column: values}

        with pytest.raises(ValidationError) as caught:
            store.write("readings", pa.table(batch), run_id=run.run_id)

        assert type(caught.value) is ValidationError, case
        assert caught.value.columns == (column,), case
        assert caught.value.failures is not None
        assert caught.value.failures["check"].to_pylist() == ["type"], case
    assert stored(store, "readings").num_rows == 0


def test_safe_casts_are_accepted(open_store: OpenStore) -> None:
    store = open_store(catalog=CATALOG.extend(READINGS))
    run = RunStore(store).start_run("casts")
    paris = pa.array(
        [dt_mod.datetime(2024, 1, 1, 12, tzinfo=dt_mod.UTC)], pa.timestamp("ns", tz="Europe/Paris")
    )
    batch = pa.table(
        {
            "id": pa.array([str(uuid.uuid4())], pa.large_string()),
            "value": pa.array([7], pa.int8()),
            "small": pa.array([300], pa.int64()),
            "ratio": pa.array([2], pa.int32()),
            "taken_at": paris,
            "payload": pa.array(['{"a": 1}']).dictionary_encode(),
        }
    )

    store.write("readings", batch, run_id=run.run_id)

    row = stored(store, "readings").to_pylist()[0]
    assert (row["value"], row["small"], row["ratio"]) == (7, 300, 2.0)
    assert row["taken_at"] == dt_mod.datetime(2024, 1, 1, 12, tzinfo=dt_mod.UTC)
    assert json.loads(row["payload"]) == {"a": 1}


def test_naive_created_at_is_a_lineage_error(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(2, seed=7)
    naive = docs.set_column(
        docs.schema.get_field_index("created_at"),
        "created_at",
        docs["created_at"].cast(pa.timestamp("us")),
    )

    with pytest.raises(LineageError) as caught:
        store.write("documents", naive, run_id=run.run_id)

    assert caught.value.columns == ("created_at",)


def _uuid_extension(texts: list[str | None]) -> pa.ExtensionArray:
    raw = pa.array([None if t is None else uuid.UUID(t).bytes for t in texts], pa.binary(16))
    return pa.ExtensionArray.from_storage(pa.uuid(), raw)


def test_uuids_as_text_and_as_arrow_uuid(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(40, seed=8)
    docs = docs.filter(pc.equal(docs["doc_type"], "post")).slice(0, 6)
    subjects = [str(uuid.uuid4()) if i % 2 else None for i in range(6)]
    ext = docs.set_column(0, "id", _uuid_extension(docs["id"].to_pylist())).set_column(
        docs.schema.get_field_index("subject_uuid"), "subject_uuid", _uuid_extension(subjects)
    )
    # A slice: the extension array's offset must be honoured, nulls included.
    store.write("documents", ext.slice(1, 4), run_id=run.run_id)
    # Text in upper case is the same UUID.
    upper = make_documents(1, seed=9)
    upper = upper.set_column(0, "id", pc.utf8_upper(upper["id"]))
    store.write("documents", upper, run_id=run.run_id)

    got = stored(store, "documents")
    by_id = {r["id"]: r["subject_uuid"] for r in got.to_pylist()}
    want = dict(zip(docs["id"].to_pylist()[1:5], subjects[1:5], strict=True))
    want[upper["id"][0].as_py().lower()] = make_documents(1, seed=9)["subject_uuid"][0].as_py()
    assert by_id == want


def test_nested_values_become_json_text(open_store: OpenStore) -> None:
    store = open_store(catalog=CATALOG.extend(READINGS))
    run = RunStore(store).start_run("json")
    tags = pa.array([["a", "b"], [], None, ['quote"d']], pa.list_(pa.string()))
    ids = sorted(uuids(4, np.random.default_rng(2)).to_pylist())
    store.write(
        "readings", pa.table({"id": ids, "value": [1, 2, 3, 4], "payload": tags}), run_id=run.run_id
    )
    struct = pa.array([{"k": 1, "v": "x"}])
    more = str(uuid.UUID(int=2**128 - 1))
    store.write(
        "readings", pa.table({"id": [more], "value": [5], "payload": struct}), run_id=run.run_id
    )

    payload = {r["id"]: r["payload"] for r in stored(store, "readings").to_pylist()}
    assert [json.loads(p) if p is not None else None for p in (payload[i] for i in ids)] == [
        ["a", "b"],
        [],
        None,
        ['quote"d'],
    ]
    assert json.loads(payload[more]) == {"k": 1, "v": "x"}


def test_documents_list_columns_are_json_arrays(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(3, seed=10)
    lists = pa.array([["ann", "bo"], ["cy"], []], pa.list_(pa.string()))
    docs = docs.set_column(docs.schema.get_field_index("tags"), "tags", lists)

    store.write("documents", docs, run_id=run.run_id)

    got = {r["id"]: json.loads(r["tags"]) for r in stored(store, "documents").to_pylist()}
    assert got == dict(zip(docs["id"].to_pylist(), lists.to_pylist(), strict=True))


def test_a_stream_larger_than_a_chunk_is_written_whole(open_store: OpenStore) -> None:
    store = open_store(chunk_rows=1000)
    run = RunStore(store).start_run("stream")
    docs = make_documents(5000, seed=11)
    # Uneven batches: chunks are regrouped across batch boundaries.
    sizes = [700, 1300, 1000, 1500, 500]
    offsets = np.cumsum([0, *sizes])
    batches = [
        docs.slice(int(o), s).combine_chunks().to_batches()[0]
        for o, s in zip(offsets, sizes, strict=False)
    ]
    reader = pa.RecordBatchReader.from_batches(docs.schema, batches)

    assert store.write("documents", reader, run_id=run.run_id) == 5000

    assert stored(store, "documents").equals(expected(docs, DOCUMENTS_SCHEMA, run))


def test_an_empty_batch_writes_nothing(store: DuckDBStorageManager, run: Run) -> None:
    empty = make_documents(0)

    assert store.write("documents", empty, run_id=run.run_id) == 0
    assert (
        store.write(
            "documents", pa.RecordBatchReader.from_batches(empty.schema, []), run_id=run.run_id
        )
        == 0
    )
    assert stored(store, "documents").num_rows == 0



@pytest.mark.parametrize("fault", ["unknown_column", "missing_column", "wrong_type"])
def test_an_empty_batch_of_the_wrong_shape_is_refused(
    store: DuckDBStorageManager, run: Run, fault: str
) -> None:
    empty = make_documents(0)
    if fault == "unknown_column":
        empty = empty.append_column("bogus", pa.array([], pa.string()))
    elif fault == "missing_column":
        empty = empty.drop_columns(["content"])
    else:
        empty = empty.set_column(
            empty.schema.get_field_index("content"), "content", pa.array([], pa.int64())
        )
    with pytest.raises(ValidationError, match="does not fit its declared columns") as caught:
        store.write("documents", empty, run_id=run.run_id)
    assert caught.value.failures is not None
    assert caught.value.failures["check"].to_pylist() == [fault.replace("wrong_", "")]


def test_bad_uuid_text_lists_every_row(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(8, seed=12)
    ids = docs["id"].to_pylist()
    ids[2], ids[5] = "not-a-uuid", "1234"
    bad = docs.set_column(0, "id", pa.array(ids))

    with pytest.raises(ValidationError) as caught:
        store.write("documents", bad, run_id=run.run_id)

    err = caught.value
    assert err.table == "documents"
    assert err.columns == ("id",)
    assert err.failures is not None
    assert sorted(err.failures["value"].to_pylist()) == ["1234", "not-a-uuid"]
    assert "not-a-uuid" in str(err)
    assert "nothing written" in str(err)
    assert stored(store, "documents").num_rows == 0


def test_malformed_json_text_is_a_validation_error(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(4, seed=13)
    bad_tags = ['["ok"]', "{not json", None, "['single quotes']"]
    bad = docs.set_column(docs.schema.get_field_index("tags"), "tags", pa.array(bad_tags))

    with pytest.raises(ValidationError) as caught:
        store.write("documents", bad, run_id=run.run_id)

    err = caught.value
    assert err.columns == ("tags",)
    assert err.failures is not None
    assert sorted(err.failures["value"].to_pylist()) == sorted(["{not json", "['single quotes']"])
    want_keys = {f"id='{docs['id'][i].as_py()}'" for i in (1, 3)}
    assert set(err.failures["key"].to_pylist()) == want_keys
    assert stored(store, "documents").num_rows == 0


@pytest.mark.parametrize(
    "data", [[{"id": 1}], {"id": [1]}, "documents"], ids=["list", "dict", "str"]
)
def test_other_inputs_are_refused(store: DuckDBStorageManager, run: Run, data: object) -> None:
    with pytest.raises(ValidationError, match="expected a pyarrow Table") as caught:
        store.write("documents", data, run_id=run.run_id)

    assert caught.value.table == "documents"


def test_rows_of_any_declared_table_can_be_written(open_store: OpenStore) -> None:
    store = open_store(catalog=CATALOG.extend(READINGS))
    run = RunStore(store).start_run("generic")
    rows = make_rows(READINGS, 50, seed=14)

    store.write("readings", rows, run_id=run.run_id)

    assert stored(store, "readings").equals(expected(rows, READINGS, run))


def test_refused_batches_raise_library_errors_only(store: DuckDBStorageManager, run: Run) -> None:
    # A batch that breaks several things at once still surfaces as one library error.
    docs = make_documents(3, seed=15)
    ids = docs["id"].to_pylist()
    ids[0] = "zzz"
    bad = docs.set_column(0, "id", pa.array(ids)).set_column(
        docs.schema.get_field_index("extensions"), "extensions", pa.array(["{", "[", "x"])
    )

    with pytest.raises(StorageError) as caught:
        store.write("documents", bad, run_id=run.run_id)

    err = caught.value
    assert isinstance(err, ValidationError)
    assert err.failures is not None
    listed = set(
        zip(err.failures["column"].to_pylist(), err.failures["value"].to_pylist(), strict=True)
    )
    assert listed == {("id", "zzz"), ("extensions", "{"), ("extensions", "["), ("extensions", "x")}


def test_polars_and_pandas_nulls_and_timestamps(store: DuckDBStorageManager, run: Run) -> None:
    docs = make_documents(4, seed=16)
    frame = pl.from_arrow(docs)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.with_columns(pl.lit(None, dtype=pl.Utf8).alias("summary"))
    store.write("documents", frame, run_id=run.run_id)
    more = make_documents(4, seed=17).to_pandas()
    more["created_at"] = pd.to_datetime(more["created_at"], utc=True).astype("datetime64[ns, UTC]")
    store.write("documents", more, run_id=run.run_id)

    got = stored(store, "documents")
    assert got.num_rows == 8
    ids = set(docs["id"].to_pylist())
    assert all(r["summary"] is None for r in got.to_pylist() if r["id"] in ids)


def test_a_table_handed_whole_is_one_insert_on_duckdb(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chunk_rows bounds what a stream holds; a table is already held, and DuckDB inserts it
    # faster in one statement. PostgreSQL chunks it to overlap COPY with the next checks.
    store = open_store(chunk_rows=1000)
    run = RunStore(store).start_run("whole")
    loads: list[int] = []
    load = store._load_chunk

    def counted(schema: TableSchema, batch: pa.Table, **kwargs: Any) -> int:
        loads.append(batch.num_rows)
        return load(schema, batch, **kwargs)

    monkeypatch.setattr(store, "_load_chunk", counted)
    docs = make_documents(2500, seed=12)
    assert store.write("documents", docs, run_id=run.run_id) == 2500
    assert loads == ([2500] if store.whole_tables else [1000, 1000, 500])
    loads.clear()
    more = make_documents(2500, seed=13)
    assert store.write("documents", more.to_reader(max_chunksize=700), run_id=run.run_id) == 2500
    assert loads == [1000, 1000, 500]


def test_a_stream_holds_one_chunk_at_a_time_not_the_stream(open_store: OpenStore) -> None:
    # Arrow memory in use while a 30-chunk stream is written: DuckDB once kept every chunk
    # it had inserted referenced until COMMIT, which grew with the stream.
    store = open_store(chunk_rows=2000)
    run = RunStore(store).start_run("stream")
    batches = 30
    in_use: list[int] = []
    sizes: list[int] = []

    def produce() -> Any:
        for i in range(batches):
            in_use.append(pa.total_allocated_bytes())
            batch = make_documents(2000, seed=1000 + i).combine_chunks().to_batches()[0]
            sizes.append(batch.nbytes)
            yield batch

    schema = make_documents(0).schema
    reader = pa.RecordBatchReader.from_batches(schema, produce())

    assert store.write("documents", reader, run_id=run.run_id) == batches * 2000
    chunk = max(sizes)
    # A chunk, its conformed copy and the next being read; never the stream (30 chunks).
    assert max(in_use[5:]) - in_use[1] < 4 * chunk, (in_use, chunk)
