"""Realistic rows for tests, generated from the table declarations.

Every generator returns an Arrow table in the declared boundary shape of its table
(:meth:`TableSchema.to_arrow`), deterministic for a given ``seed``, built with numpy so that
100k rows take a fraction of a second. Columns come from the declaration, not from a list
kept here: a new column in ``schemas.py`` is generated without a change to this module.

- :func:`make_rows` fills any declared table: every column gets a plausible value of its type,
  then the declared checks are honoured (``OneOf`` picks allowed values, ``NullWhen`` empties,
  ``NotBefore`` orders the pair). ``created_at`` is "now", so it never predates the run.
- :func:`make_documents`, :func:`make_messages` and :func:`make_annotations` add what makes
  egregora's rows realistic: text of a few hundred characters, per-type documents, message
  threads, annotations pointing at given documents.

``run_id`` stamps the rows when given; when omitted the column is left out, and the store
stamps it with the writing run.
"""

from __future__ import annotations

import datetime as dt_mod
from collections.abc import Mapping, Sequence
from typing import Any

import ibis.expr.datatypes as dt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import strategies as st

from egregora.database.batches import uuid_bytes_to_text
from egregora.database.checks import NotBefore, NullWhen, OneOf
from egregora.database.model import RUN_ID, TableSchema, utc_now
from egregora.database.schemas import ANNOTATIONS_SCHEMA, DOCUMENTS_SCHEMA, MESSAGES_SCHEMA

__all__ = [
    "CONFIGS",
    "make_annotations",
    "make_documents",
    "make_messages",
    "make_rows",
    "uuids",
]

_WORDS = pa.array(
    [
        "the",
        "of",
        "chat",
        "group",
        "message",
        "photo",
        "link",
        "summary",
        "note",
        "shared",
        "meeting",
        "weekend",
        "plan",
        "idea",
        "voice",
        "travel",
        "garden",
        "music",
        "recipe",
        "question",
        "answer",
        "thanks",
        "tomorrow",
        "today",
        "later",
        "again",
        "profile",
        "journal",
        "window",
        "media",
        "image",
        "video",
        "audio",
        "enrichment",
        "post",
        "draft",
        "archive",
    ]
)
_EPOCH = dt_mod.datetime(2024, 1, 1, tzinfo=dt_mod.UTC)
_US = pa.timestamp("us", tz="UTC")


def uuids(n: int, rng: np.random.Generator) -> pa.Array:
    """``n`` random version-4 UUIDs as canonical text (the boundary type of ``uuid``)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return uuid_bytes_to_text(
        pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(raw.tobytes())])
    )


def _word_lists(n: int, rng: np.random.Generator, *, words: tuple[int, int]) -> pa.ListArray:
    lengths = rng.integers(words[0], words[1] + 1, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    picks = _WORDS.take(pa.array(rng.integers(0, len(_WORDS), size=int(offsets[-1]))))
    return pa.ListArray.from_arrays(pa.array(offsets), picks)


def _text(n: int, rng: np.random.Generator, *, words: tuple[int, int]) -> pa.Array:
    return pc.binary_join(_word_lists(n, rng, words=words), " ")


def _json_values(name: str, n: int, rng: np.random.Generator) -> pa.Array:
    if name in {"attrs", "extensions", "pii_flags"}:
        numbers = pa.array(rng.integers(0, 100, size=n)).cast(pa.string())
        return pc.binary_join_element_wise('{"k": ', numbers, "}", "")
    # authors, tags, interests: JSON arrays of words
    inner = pc.binary_join(_word_lists(n, rng, words=(1, 3)), '", "')
    return pc.binary_join_element_wise('["', inner, '"]', "")


def _column(name: str, dtype: dt.DataType, n: int, rng: np.random.Generator) -> pa.Array:  # noqa: PLR0911 - one branch per declared type
    if isinstance(dtype, dt.UUID):
        return uuids(n, rng)
    if isinstance(dtype, dt.JSON):
        return _json_values(name, n, rng)
    if isinstance(dtype, dt.Timestamp):
        if name == "created_at":
            # "now": rows must not predate the run that writes them
            start = int(utc_now().timestamp() * 1_000_000)
            return pa.array(start + np.arange(n), pa.int64()).cast(_US)
        offsets = rng.integers(0, 365 * 86_400 * 1_000_000, size=n)
        return pa.array(int(_EPOCH.timestamp() * 1_000_000) + offsets, pa.int64()).cast(_US)
    if isinstance(dtype, dt.Date):
        return pa.array(rng.integers(19_700, 20_100, size=n).astype(np.int32), pa.int32()).cast(
            pa.date32()
        )
    if isinstance(dtype, dt.Boolean):
        return pa.array(rng.integers(0, 2, size=n).astype(bool))
    if isinstance(dtype, dt.Integer):
        return pa.array(rng.integers(0, 10_000, size=n)).cast(dtype.to_pyarrow())
    if isinstance(dtype, dt.Floating):
        return pa.array(rng.random(size=n)).cast(dtype.to_pyarrow())
    if isinstance(dtype, dt.Binary):
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(8), n, [None, pa.py_buffer(rng.bytes(8 * n))]
        ).cast(pa.binary())
    return _text(n, rng, words=(1, 4))


def _apply_checks(
    table: TableSchema, columns: dict[str, pa.Array], n: int, rng: np.random.Generator
) -> None:
    for check in table.checks:
        if isinstance(check, OneOf) and check.column in columns:
            picks = rng.integers(0, len(check.values), size=n)
            values = pa.array(check.values)
            columns[check.column] = pc.take(values, pa.array(picks)).cast(
                columns[check.column].type
            )
    for check in table.checks:
        if isinstance(check, NotBefore) and check.later in columns and check.earlier in columns:
            gap = pa.array(rng.integers(0, 7 * 86_400 * 1_000_000, size=n), pa.duration("us"))
            earlier = columns[check.earlier]
            if pa.types.is_timestamp(earlier.type):
                columns[check.later] = pc.add(earlier, gap)
    # Last: a NotBefore fills its later column, which a NullWhen may have to empty again
    # (a RUNNING run has no ended_at).
    for check in table.checks:
        if isinstance(check, NullWhen) and check.column in columns:
            hit = pc.fill_null(pc.is_in(columns[check.column], pa.array(check.values)), False)
            for col in check.absent:
                columns[col] = pc.if_else(hit, pa.nulls(n, columns[col].type), columns[col])


def make_rows(
    table: TableSchema,
    n: int,
    *,
    seed: int = 0,
    run_id: str | None = None,
    overrides: Mapping[str, Sequence[Any] | pa.Array] | None = None,
) -> pa.Table:
    """``n`` rows of any declared table that satisfy its declared checks.

    Args:
        table: The declaration.
        n: How many rows.
        seed: The rows are a function of the seed (except ``created_at``, which is "now").
        run_id: Stamps the rows of a lineage table; None leaves ``run_id`` out.
        overrides: Column values to use instead of generated ones (checks are applied
            before, so an override may break them on purpose).
    """
    rng = np.random.default_rng(seed)
    columns = {
        name: _column(name, dtype, n, rng)
        for name, dtype in table.schema.items()
        if not (table.lineage and name == RUN_ID)
    }
    _apply_checks(table, columns, n, rng)
    if table.lineage and run_id is not None:
        columns[RUN_ID] = pa.array([str(run_id)] * n, pa.string())
    for name, values in (overrides or {}).items():
        target = table.to_arrow().field(name).type
        columns[name] = (
            values.cast(target) if isinstance(values, pa.Array) else pa.array(values, target)
        )
    fields = [table.to_arrow().field(name) for name in columns]
    return pa.table(list(columns.values()), schema=pa.schema(fields))


def make_documents(n: int, *, seed: int = 0, run_id: str | None = None) -> pa.Table:
    """``n`` documents of every type, each valid for its type's rules, with content of a
    few hundred characters."""
    rng = np.random.default_rng(seed + 1)
    return make_rows(
        DOCUMENTS_SCHEMA,
        n,
        seed=seed,
        run_id=run_id,
        overrides={"content": _text(n, rng, words=(20, 60))},
    )


def make_messages(n: int, *, seed: int = 0, run_id: str | None = None) -> pa.Table:
    """``n`` chat messages spread over a few threads of one tenant, in time order."""
    rng = np.random.default_rng(seed + 2)
    table = make_rows(MESSAGES_SCHEMA, n, seed=seed, run_id=run_id)
    threads = pa.array([f"thread-{i}" for i in rng.integers(0, 5, size=n)], pa.string())
    ts = pc.sort_indices(table["ts"])
    return (
        table.take(ts)
        .set_column(table.schema.get_field_index("tenant_id"), "tenant_id", pa.array(["t1"] * n))
        .set_column(table.schema.get_field_index("thread_id"), "thread_id", threads)
        .set_column(table.schema.get_field_index("text"), "text", _text(n, rng, words=(3, 30)))
    )


def make_annotations(
    document_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    *,
    seed: int = 0,
    run_id: str | None = None,
) -> pa.Table:
    """One annotation per entry of ``document_ids``, pointing at it."""
    ids = (
        document_ids
        if isinstance(document_ids, pa.Array | pa.ChunkedArray)
        else pa.array(list(document_ids), pa.string())
    )
    n = len(ids)
    table = make_rows(ANNOTATIONS_SCHEMA, n, seed=seed, run_id=run_id)
    where = table.schema.get_field_index("document_id")
    return table.set_column(where, table.schema.field(where), ids.cast(pa.string()))


#: Run configs: JSON-like mappings, nested, of every scalar kind.
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)


CONFIG_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


CONFIGS = st.dictionaries(st.text(max_size=8), CONFIG_VALUES, max_size=6)
