"""Turning what writers hand us into Arrow batches of a table's declared shape.

Accepted inputs: a ``pyarrow.Table``, ``RecordBatch``, ``RecordBatchReader`` or anything with
the Arrow C stream interface (pandas and polars frames, DuckDB relations). Columns are matched
by name; missing nullable columns become NULL; unknown columns, missing NOT NULL columns and
types that cannot be cast without loss are refused, all problems of a batch in one error.

Everything here is vectorised Arrow (or, for the two conversions Arrow lacks, one DuckDB
statement on a private in-memory connection): no per-row Python.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import duckdb
import ibis.expr.datatypes as dt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from egregora.database.errors import Failure, LineageError, ValidationError, failures_table
from egregora.database.model import RUN_ID, TableSchema, arrow_type

#: Rows per chunk of a streamed write: bounds memory by the chunk, not by the stream (50k
#: documents: ~80 MB of Arrow).
DEFAULT_CHUNK_ROWS = 50_000

def to_reader(data: Any, *, table: str) -> pa.RecordBatchReader:
    """Any accepted input as a stream of record batches."""
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.Table):
        return data.to_reader()
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatchReader.from_batches(data.schema, [data])
    if hasattr(data, "__arrow_c_stream__"):
        return pa.RecordBatchReader.from_stream(data)
    raise ValidationError(
        f"cannot write a {type(data).__name__} to `{table}`: expected a pyarrow Table, "
        "RecordBatch or RecordBatchReader, or an object with the Arrow C stream interface "
        "(pandas, polars, DuckDB relation)",
        table=table,
    )


def key_batch(table: TableSchema, keys: Sequence[Any]) -> pa.Table:
    """Primary-key values as an Arrow table of the key's columns, in their boundary types.

    A single-column key takes plain values, a composite key tuples; ``uuid.UUID`` values are
    taken as their text.

    Raises:
        ValidationError: a key has the wrong number of parts or a value of the wrong type;
            ``failures`` lists each problem.
    """
    pk = table.primary_key
    rows = [key if isinstance(key, tuple) else (key,) for key in keys]
    problems: list[Failure] = [
        Failure(", ".join(pk), "key_parts", repr(key), None) for key in rows if len(key) != len(pk)
    ]
    columns: dict[str, pa.Array] = {}
    if not problems:
        for i, name in enumerate(pk):
            values = [str(key[i]) if isinstance(key[i], uuid.UUID) else key[i] for key in rows]
            try:
                columns[name] = pa.array(values, arrow_type(table.schema[name]))
            except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError) as exc:
                # A UnicodeEncodeError: text that is no Unicode (a lone surrogate).
                problems.append(Failure(name, "type", str(exc).splitlines()[0], None))
    if problems:
        raise ValidationError(
            f"the keys for `{table.name}` do not fit its primary key ({', '.join(pk)})",
            table=table.name,
            columns=sorted({p[0] for p in problems}),
            failures=failures_table(problems),
            examples=[f"{c}: {check} ({v})" for c, check, v, _ in problems],
        )
    return pa.table(columns, schema=pa.schema([(c, arrow_type(table.schema[c])) for c in pk]))


def chunks(
    reader: pa.RecordBatchReader, *, max_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[pa.Table]:
    """Regroup a stream into tables of at most ``max_rows`` rows (at least one, maybe empty).

    Small batches are merged so that many tiny batches cost one insert, large ones split so
    that memory stays bounded by ``max_rows``.
    """
    pending: list[pa.RecordBatch] = []
    size = 0
    yielded = False
    for batch in reader:
        offset = 0
        while offset < batch.num_rows:
            take = min(batch.num_rows - offset, max_rows - size)
            pending.append(batch.slice(offset, take))
            size += take
            offset += take
            if size == max_rows:
                yield pa.Table.from_batches(pending, schema=reader.schema)
                yielded = True
                pending, size = [], 0
    if pending or not yielded:
        yield pa.Table.from_batches(pending, schema=reader.schema)


def uuid_bytes_to_text(arr: pa.Array) -> pa.Array:
    """16-byte UUIDs (``arrow.uuid`` or fixed_size_binary(16)) as canonical text, vectorised."""
    # BaseExtensionType: pyarrow's canonical pa.uuid() is not a (Python) pa.ExtensionType.
    if isinstance(arr.type, pa.BaseExtensionType):
        arr = arr.storage
    n = len(arr)
    raw = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=16 * (n + arr.offset))
    raw = raw[16 * arr.offset :].reshape(n, 16)
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    text = np.empty((n, 32), dtype=np.uint8)
    text[:, 0::2] = hexdigits[raw >> 4]
    text[:, 1::2] = hexdigits[raw & 0x0F]
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    out = np.hstack([text[:, :8], dash, text[:, 8:12], dash, text[:, 12:16], dash,
                     text[:, 16:20], dash, text[:, 20:]])
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    validity = arr.buffers()[0] if arr.null_count else None
    if validity is not None and arr.offset:
        validity = pc.is_valid(arr).buffers()[1]
    return pa.Array.from_buffers(
        pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(out.tobytes())],
        null_count=arr.null_count,
    )


def _nested_to_json(arr: pa.Array) -> pa.Array:
    # Arrow has no JSON encoder; DuckDB's to_json is vectorised and exact for nested types.
    with duckdb.connect() as con:
        src = pa.table({"v": arr})
        con.register("src", src)
        out = con.execute("SELECT CAST(to_json(v) AS VARCHAR) AS v FROM src").to_arrow_table()
    return out.column("v").combine_chunks()


def _is_uuid_bytes(t: pa.DataType) -> bool:
    storage = t.storage_type if isinstance(t, pa.BaseExtensionType) else t
    return bool(pa.types.is_fixed_size_binary(storage) and storage.byte_width == 16)


def _cast(  # noqa: PLR0911, PLR0912 - one rule per kind of target type, read top to bottom
    column: pa.ChunkedArray, target_dtype: dt.DataType, target: pa.DataType
) -> pa.Array | pa.ChunkedArray | str:
    """The column cast to ``target``, or the reason it cannot be cast without loss.

    A column that already has its declared type is returned as is, chunks and buffers
    shared: conforming a well-typed batch copies nothing.
    """
    src = column.type
    if src == target:
        return column
    if pa.types.is_null(src):
        return pa.nulls(len(column), target)
    arr = column.combine_chunks()
    if pa.types.is_dictionary(src):
        return _cast(pa.chunked_array([arr.dictionary_decode()]), target_dtype, target)
    types = pa.types
    is_text = types.is_string(src) or types.is_large_string(src) or types.is_string_view(src)
    is_bytes = types.is_binary(src) or types.is_large_binary(src) or types.is_binary_view(src)
    ok = False
    if isinstance(target_dtype, dt.UUID) and _is_uuid_bytes(src):
        return uuid_bytes_to_text(arr)
    if isinstance(target_dtype, dt.JSON) and pa.types.is_nested(src):
        return _nested_to_json(arr)
    if pa.types.is_string(target):
        ok = is_text or is_bytes
    elif pa.types.is_integer(target):
        ok = pa.types.is_integer(src)
    elif pa.types.is_floating(target):
        ok = pa.types.is_integer(src) or pa.types.is_floating(src)
    elif pa.types.is_timestamp(target):
        if pa.types.is_timestamp(src) and src.tz is None:
            return "naive timestamp (no time zone); expected a timezone-aware UTC timestamp"
        ok = pa.types.is_timestamp(src)
    elif pa.types.is_date(target):
        ok = pa.types.is_date(src)
    elif pa.types.is_binary(target):
        ok = is_bytes
    if not ok:
        return f"type {src} cannot be cast safely to {target_dtype}"
    try:
        return pc.cast(arr, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        first = str(exc).splitlines()[0]
        return f"{src} -> {target_dtype} would lose data or is invalid ({first})"


def conform(table: TableSchema, data: pa.Table, *, run_id: str | None) -> pa.Table:
    """``data`` with the declared columns, order and Arrow types of ``table``.

    On a lineage table a missing ``run_id`` column is filled with ``run_id`` (stamping); a
    present one is kept as is, for validation to compare with the writing run.

    Raises:
        ValidationError: unknown or missing columns, or types that cannot be cast safely;
            ``failures`` lists each problem. A naive ``created_at`` raises LineageError.
    """
    problems: list[Failure] = []
    unknown = [c for c in data.column_names if c not in table.schema]
    problems += [
        Failure(c, "unknown_column", str(data.schema.field(c).type)) for c in unknown
    ]
    dupes = sorted({c for c in data.column_names if data.column_names.count(c) > 1})
    problems += [Failure(c, "duplicate_column", None, None) for c in dupes]
    columns: list[pa.Array | pa.ChunkedArray] = []
    lineage_problem = False
    for name, dtype in table.schema.items():
        target = arrow_type(dtype)
        if name not in data.column_names or name in dupes:
            if name == RUN_ID and table.lineage and run_id is not None:
                columns.append(pa.repeat(pa.scalar(run_id, pa.string()), data.num_rows))
            elif dtype.nullable:
                columns.append(pa.nulls(data.num_rows, target))
            elif name not in dupes:
                problems.append(Failure(name, "missing_column", None, None))
            continue
        cast = _cast(data.column(name), dtype, target)
        if isinstance(cast, str):
            problems.append(Failure(name, "type", cast, None))
            lineage_problem |= table.lineage and name in {RUN_ID, "created_at"}
            continue
        columns.append(cast)
    if problems:
        kind = LineageError if lineage_problem else ValidationError
        shown = [f"{c}: {check}" + (f" ({v})" if v else "") for c, check, v, _ in problems]
        raise kind(
            f"the batch for `{table.name}` does not fit its declared columns",
            table=table.name,
            columns=sorted({p[0] for p in problems}),
            run_id=run_id,
            failures=failures_table(problems),
            examples=shown,
        )
    return pa.table(columns, schema=table.to_arrow())
