"""The benchmark's rows: egregora-like documents, generated once from a fixed seed.

Columns come from the declaration (:data:`~egregora.database.schemas.DOCUMENTS_SCHEMA`), not
from a list kept here; two columns get egregora's shape on top of their type: ``content`` is
200-2000 characters of text and ``extensions`` is a JSON metadata object. Declared checks are
honoured (``OneOf`` picks allowed values, ``NotBefore`` orders its pair, ``NullWhen`` empties),
and every nullable column is filled, which satisfies every ``RequiredWhen``.

Ids are time-ordered UUIDv7 values by default, as :func:`egregora.database.new_id` mints them
and as the library recommends for new rows; ``ids="random"`` gives random (v4-shaped) ids like
egregora's deterministic uuid5 ids, whose primary key costs more to index (see the README's
Decisions).

Rows are written to a Parquet file in batches, each batch a function of ``(seed, batch
index)``, so the first N rows of a larger file are the N rows of a smaller one: every size
reads a prefix of one file, and every contender reads the same rows.

``created_at`` is stamped when the rows are loaded, not when they are generated: a row may
not predate the run that writes it (a lineage check of the library), and the run starts after
the file was made. Loaders therefore take ``now`` and stamp ``now + i`` microseconds.
"""

from __future__ import annotations

import datetime as dt_mod
import json
from collections.abc import Iterator
from pathlib import Path

import ibis.expr.datatypes as dt
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from egregora.database.batches import uuid_bytes_to_text
from egregora.database.checks import NotBefore, NullWhen, OneOf
from egregora.database.model import RUN_ID, arrow_type
from egregora.database.schemas import DOCUMENTS_SCHEMA

#: Bump when the generated rows change, so that cached files are regenerated.
GENERATOR_VERSION = 1
#: Rows per generated batch (and Parquet row group).
GENERATE_BATCH = 50_000
#: The long text column and its length range in characters.
TEXT_COLUMN = "content"
TEXT_CHARS = (200, 2000)
#: The JSON metadata column.
METADATA_COLUMN = "extensions"
CREATED_AT = "created_at"

_EPOCH_US = int(dt_mod.datetime(2024, 1, 1, tzinfo=dt_mod.UTC).timestamp() * 1_000_000)
_YEAR_US = 365 * 86_400 * 1_000_000
_US = pa.timestamp("us", tz="UTC")
_CORPUS_BYTES = 8 << 20
_VOCABULARY = 4096
_SHORT_TEXT = 64


def documents_schema() -> pa.Schema:
    """The Arrow schema of the generated rows: the declared boundary shape without
    ``run_id``, which the writing run stamps."""
    schema = DOCUMENTS_SCHEMA.to_arrow()
    return schema.remove(schema.get_field_index(RUN_ID))


def make_corpus(seed: int) -> np.ndarray:
    """Some megabytes of space-separated pseudo-words, Zipf-distributed like real text, so
    that DuckDB's string compression sees neither noise nor a handful of repeated values."""
    rng = np.random.default_rng([seed, 0xC0])
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    weights = 1.0 / np.arange(1, len(letters) + 1)
    lengths = rng.integers(2, 11, size=_VOCABULARY)
    words = [
        rng.choice(letters, size=int(n), p=weights / weights.sum()).tobytes() for n in lengths
    ]
    zipf = 1.0 / np.arange(1, _VOCABULARY + 1)
    picks = rng.choice(_VOCABULARY, size=_CORPUS_BYTES // 6, p=zipf / zipf.sum())
    text = b" ".join(words[i] for i in picks)
    return np.frombuffer(text[:_CORPUS_BYTES], dtype=np.uint8)


def _long_text(n: int, rng: np.random.Generator, corpus: np.ndarray) -> pa.Array:
    """``n`` distinct texts of 200-2000 characters, cut from the corpus at random places."""
    return _cut(n, rng, corpus, TEXT_CHARS)


def _uuid_text(raw: np.ndarray) -> pa.Array:
    """16-byte rows as canonical UUID text (the library's own vectorised formatter)."""
    return uuid_bytes_to_text(
        pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(16), len(raw), [None, pa.py_buffer(raw.tobytes())]
        )
    )


def uuids(n: int, rng: np.random.Generator, *, first: int | None = None) -> pa.Array:
    """Random v4-shaped UUIDs, or with ``first`` (a row number) UUIDv7 values whose 48-bit
    time prefix counts rows, so that ids increase through the whole file."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    version = 0x40
    if first is not None:
        ms = (_EPOCH_US // 1000 + first + np.arange(n, dtype=np.int64)).astype(">u8")
        raw[:, :6] = ms.view(np.uint8).reshape(n, 8)[:, 2:]
        version = 0x70
    raw[:, 6] = (raw[:, 6] & 0x0F) | version
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return _uuid_text(raw)


def _words(
    n: int, rng: np.random.Generator, corpus: np.ndarray, chars: tuple[int, int]
) -> pa.Array:
    return pc.utf8_trim_whitespace(_cut(n, rng, corpus, chars))


def _cut(n: int, rng: np.random.Generator, corpus: np.ndarray, chars: tuple[int, int]) -> pa.Array:
    """``n`` slices of the corpus, each of ``chars[0]``-``chars[1]`` characters."""
    lengths = rng.integers(chars[0], chars[1] + 1, size=n)
    starts = rng.integers(0, len(corpus) - chars[1], size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if chars[1] <= _SHORT_TEXT:
        # Short texts: a window matrix, cut to each row's length by one boolean mask.
        windows = np.lib.stride_tricks.sliding_window_view(corpus, chars[1])[starts]
        data = windows[np.arange(chars[1]) < lengths[:, None]].tobytes()
    else:
        # Long texts: a join of memoryview slices copies each text once.
        view = corpus.data
        pairs = zip(starts.tolist(), lengths.tolist(), strict=True)
        data = b"".join([view[s : s + k] for s, k in pairs])
    return pa.Array.from_buffers(
        pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    ).cast(pa.string())


def _metadata(n: int, rng: np.random.Generator) -> pa.Array:
    """A JSON object per row, as an enricher records it: source, model, tokens, score."""
    sources = pa.array(['"whatsapp"', '"telegram"', '"slack"', '"signal"'])
    models = pa.array(['"gemini-2.5-flash"', '"gemini-2.5-pro"', '"local-7b"'])
    tokens = pa.array(rng.integers(10, 4000, size=n)).cast(pa.string())
    score = pc.round(pa.array(rng.random(size=n)), 3).cast(pa.string())
    return pc.binary_join_element_wise(
        '{"source": ', sources.take(pa.array(rng.integers(0, len(sources), size=n))),
        ', "model": ', models.take(pa.array(rng.integers(0, len(models), size=n))),
        ', "tokens": ', tokens, ', "score": ', score, "}", "",
    )


def _json_list(n: int, rng: np.random.Generator, corpus: np.ndarray) -> pa.Array:
    """A JSON array of one to three short words per row (authors, tags, interests)."""
    words = pc.split_pattern(_words(n, rng, corpus, (3, 24)), " ", max_splits=2)
    inner = pc.binary_join(words, '", "')
    return pc.binary_join_element_wise('["', inner, '"]', "")


def _column(  # noqa: PLR0911 - one return per declared type
    name: str, dtype: dt.DataType, n: int, *, first: int, rng: np.random.Generator,
    corpus: np.ndarray, ids: str,
) -> pa.Array:
    if name == TEXT_COLUMN:
        return _long_text(n, rng, corpus)
    if name == METADATA_COLUMN:
        return _metadata(n, rng)
    if isinstance(dtype, dt.UUID):
        key = name in DOCUMENTS_SCHEMA.primary_key and ids == "v7"
        return uuids(n, rng, first=first if key else None)
    if isinstance(dtype, dt.JSON):
        return _json_list(n, rng, corpus)
    if isinstance(dtype, dt.Timestamp):
        # created_at is restamped at load (see the module doc); the others lie in 2024.
        return pa.array(_EPOCH_US + rng.integers(0, _YEAR_US, size=n), pa.int64()).cast(_US)
    if isinstance(dtype, dt.Date):
        days = rng.integers(19_700, 20_100, size=n).astype(np.int32)
        return pa.array(days, pa.int32()).cast(pa.date32())
    if isinstance(dtype, dt.Boolean):
        return pa.array(rng.integers(0, 2, size=n).astype(bool))
    if isinstance(dtype, dt.Integer):
        return pa.array(rng.integers(0, 10_000, size=n)).cast(arrow_type(dtype))
    if isinstance(dtype, dt.Floating):
        return pa.array(rng.random(size=n)).cast(arrow_type(dtype))
    if isinstance(dtype, dt.Binary):
        return pa.array([rng.bytes(8) for _ in range(n)], pa.binary())
    return _words(n, rng, corpus, (4, 40))


def _honour_checks(columns: dict[str, pa.Array], n: int, rng: np.random.Generator) -> None:
    for check in DOCUMENTS_SCHEMA.checks:
        if isinstance(check, OneOf):
            picks = pa.array(rng.integers(0, len(check.values), size=n))
            columns[check.column] = pa.array(check.values).take(picks).cast(
                columns[check.column].type
            )
    for check in DOCUMENTS_SCHEMA.checks:
        if isinstance(check, NullWhen):
            hit = pc.fill_null(pc.is_in(columns[check.column], pa.array(check.values)), False)
            for col in check.absent:
                columns[col] = pc.if_else(hit, pa.nulls(n, columns[col].type), columns[col])
        elif isinstance(check, NotBefore) and pa.types.is_timestamp(columns[check.earlier].type):
            gap = pa.array(rng.integers(0, 7 * 86_400 * 1_000_000, size=n), pa.duration("us"))
            columns[check.later] = pc.add(columns[check.earlier], gap)


def generate_batch(
    index: int, *, seed: int, corpus: np.ndarray, rows: int = GENERATE_BATCH, ids: str = "v7"
) -> pa.RecordBatch:
    """Batch ``index`` of the file: rows ``index * GENERATE_BATCH`` onwards."""
    rng = np.random.default_rng([seed, index])
    first = index * GENERATE_BATCH
    schema = documents_schema()
    columns = {
        field.name: _column(
            field.name, DOCUMENTS_SCHEMA.schema[field.name], rows, first=first, rng=rng,
            corpus=corpus, ids=ids,
        )
        for field in schema
    }
    _honour_checks(columns, rows, rng)
    return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)


def dataset_path(directory: Path, rows: int, *, seed: int, ids: str) -> Path:
    """Where the file of ``rows`` rows lives, reusing any larger file of the same seed."""
    stem = f"documents-v{GENERATOR_VERSION}-seed{seed}-{ids}-"
    found = sorted(
        (int(p.stem.removeprefix(stem)), p)
        for p in directory.glob(f"{stem}*.parquet")
        if p.stem.removeprefix(stem).isdigit()
    )
    for size, path in found:
        if size >= rows:
            return path
    return directory / f"{stem}{rows}.parquet"


def ensure_dataset(directory: Path, rows: int, *, seed: int, ids: str = "v7") -> Path:
    """A Parquet file holding at least ``rows`` generated rows (made once, then cached)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = dataset_path(directory, rows, seed=seed, ids=ids)
    if path.exists():
        return path
    corpus = make_corpus(seed)
    partial = path.with_suffix(".partial")
    batches = -(-rows // GENERATE_BATCH)
    # A file smaller than one batch (the smoke size) is cut short; larger files hold whole
    # batches, so that a smaller size reads a prefix of the same rows.
    size = min(rows, GENERATE_BATCH)
    with pq.ParquetWriter(partial, documents_schema(), compression="snappy") as writer:
        for index in range(batches):
            batch = generate_batch(index, seed=seed, corpus=corpus, rows=size, ids=ids)
            writer.write_batch(batch, row_group_size=GENERATE_BATCH)
    partial.replace(path)
    meta = {"rows": batches * size, "seed": seed, "ids": ids,
            "generator_version": GENERATOR_VERSION}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def stamp(batch: pa.RecordBatch | pa.Table, first_us: int) -> pa.RecordBatch | pa.Table:
    """``batch`` with ``created_at`` set to ``first_us`` + row number microseconds."""
    n = batch.num_rows
    values = pa.array(first_us + np.arange(n, dtype=np.int64), pa.int64()).cast(_US)
    where = batch.schema.get_field_index(CREATED_AT)
    return batch.set_column(where, batch.schema.field(where), values)


def now_us() -> int:
    """Now, in microseconds since the epoch (UTC)."""
    return int(dt_mod.datetime.now(dt_mod.UTC).timestamp() * 1_000_000)


def with_run_id(batch: pa.RecordBatch | pa.Table, run_id: str) -> pa.RecordBatch | pa.Table:
    """``batch`` with a ``run_id`` column, as the raw inserts and peers receive it."""
    values = pa.array([run_id], pa.string()).take(np.zeros(batch.num_rows, dtype=np.int64))
    return batch.append_column(pa.field(RUN_ID, pa.string(), nullable=False), values)


def iter_batches(
    path: Path, rows: int, *, batch_rows: int, skip: int = 0
) -> Iterator[pa.RecordBatch]:
    """Rows ``skip`` to ``skip + rows`` of the file, as batches of ``batch_rows``."""
    # pre_buffer (Arrow's default) caches every byte range read until the file is closed:
    # memory would grow with the rows read, which is what a stream must not do.
    file = pq.ParquetFile(path, pre_buffer=False)
    left = rows
    to_skip = skip
    for read in file.iter_batches(batch_size=batch_rows):
        if to_skip >= read.num_rows:
            to_skip -= read.num_rows
            continue
        batch = read.slice(to_skip) if to_skip else read
        to_skip = 0
        if left <= 0:
            return
        yield batch.slice(0, left) if batch.num_rows > left else batch
        left -= batch.num_rows
    if left > 0:
        raise ValueError(f"{path} holds fewer than {skip + rows} rows")


def load_table(path: Path, rows: int, *, skip: int = 0) -> pa.Table:
    """Rows ``skip`` to ``skip + rows`` of the file as one Arrow table (unstamped)."""
    batches = list(iter_batches(path, rows, batch_rows=GENERATE_BATCH, skip=skip))
    return pa.Table.from_batches(batches, schema=documents_schema())
