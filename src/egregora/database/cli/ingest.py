"""Reading files for ``egregora-db ingest``: Parquet, CSV or JSON lines, one file or a
directory of them, as one stream of Arrow record batches.

Parquet keeps its types. CSV and JSON lines carry no types, and Arrow's guesses would lose the
time zone (its JSON reader turns ``+02:00`` into a naive time) or read a numeric-looking id as
an integer, so their declared columns are read as text and cast here to the declared type.
A time without a zone offset is refused with the rows that carry it, rather than guessed.

``created_at`` is when the store received a row, and a row may not predate the run that
writes it: a file without that column gets the time of the write, and a file whose own
``created_at`` is older can be re-stamped on request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis.expr.datatypes as dt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.dataset as ds
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from egregora.database.backends.base import StorageManager
from egregora.database.errors import Failure, ValidationError, failures_table
from egregora.database.model import TableSchema, arrow_type, utc_now
from egregora.database.runs.store import Run, RunStore
from egregora.database.statements import OnConflict
from egregora.database.validation import CREATED_AT

#: File name suffixes of each readable format.
SUFFIXES = {
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "json", ".ndjson": "json", ".json": "json",
}
FORMATS = ("parquet", "csv", "json")
_ZONE = r"(Z|z|[+-]\d\d(:?\d\d)?)$"


class SourceError(ValueError):
    """The files cannot be ingested as asked (no files, mixed formats, unknown format)."""


def find_files(path: Path, *, file_format: str | None) -> tuple[list[Path], str]:
    """The files to read and their format.

    Raises:
        SourceError: no readable file, several formats in a directory, or an unknown suffix
            without ``file_format``.
    """
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if file_format is None:
            files = [p for p in files if p.suffix.lower() in SUFFIXES]
            found = sorted({SUFFIXES[p.suffix.lower()] for p in files})
            if len(found) > 1:
                msg = f"{path} holds {', '.join(found)} files; pick one with --format"
                raise SourceError(msg)
            file_format = found[0] if found else None
        else:
            files = [p for p in files if SUFFIXES.get(p.suffix.lower()) == file_format]
        if not files or file_format is None:
            msg = f"{path} holds no Parquet, CSV or JSON lines file"
            raise SourceError(msg)
        return files, file_format
    if file_format is None:
        file_format = SUFFIXES.get(path.suffix.lower())
        if file_format is None:
            msg = f"cannot tell the format of {path.name}; pass --format ({', '.join(FORMATS)})"
            raise SourceError(msg)
    return [path], file_format


def _file_format(fmt: str) -> ds.FileFormat | str:
    if fmt != "csv":
        return fmt
    # An empty field is NULL (what writers emit for a missing value); "" stays an empty text.
    return ds.CsvFileFormat(convert_options=pcsv.ConvertOptions(
        strings_can_be_null=True, quoted_strings_can_be_null=False,
    ))


def _read_type(dtype: dt.DataType) -> pa.DataType:
    # Times and dates come in as text and are cast by _cast_temporal, which names bad rows.
    return pa.string() if dtype.is_temporal() else arrow_type(dtype)


@dataclass
class Source:
    """Files opened as one Arrow dataset, typed for ``table``.

    Attributes:
        stamp: Whether :meth:`batches` sets ``created_at`` to the time of the write: when the
            files have no ``created_at``, or when asked to replace theirs. A lineage row may
            not predate its run, so a file's older creation times would be refused.
    """

    table: TableSchema
    files: list[Path]
    file_format: str
    dataset: ds.Dataset
    stamp: bool

    @classmethod
    def open(
        cls,
        files: list[Path],
        file_format: str,
        *,
        table: TableSchema,
        restamp: bool = False,
        run_id: str | None = None,
    ) -> Source:
        """Discover the columns of ``files`` (see :func:`find_files`).

        Args:
            files: The files, all of ``file_format``.
            file_format: ``parquet``, ``csv`` or ``json``.
            table: The table they are for.
            restamp: Replace the files' ``created_at`` with the time of the write.
            run_id: The run reading them, named in errors.

        Raises:
            ValidationError: a file cannot be read at all.
        """
        names = [str(f) for f in files]
        try:
            found = ds.dataset(names, format=_file_format(file_format)).schema
            if file_format != "parquet":
                fields = []
                for f in found:
                    dtype = table.schema.get(f.name)
                    if dtype is None or (file_format == "json" and dtype.is_json()):
                        fields.append(f)  # unknown (refused later) or nested JSON: keep
                    else:
                        fields.append(pa.field(f.name, _read_type(dtype)))
                found = pa.schema(fields)
            dataset = ds.dataset(names, format=_file_format(file_format), schema=found)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise _unreadable(files, file_format, exc, table=table.name, run_id=run_id) from exc
        stamp = table.lineage and CREATED_AT in table.schema and (
            restamp or CREATED_AT not in found.names
        )
        return cls(table, files, file_format, dataset, stamp)

    def count_rows(self) -> int | None:
        """The number of rows when it is cheap to know (Parquet metadata), else None."""
        return self.dataset.count_rows() if self.file_format == "parquet" else None

    def output_schema(self) -> pa.Schema:
        """The schema of :meth:`batches`."""
        fields = []
        for f in self.dataset.schema:
            dtype = self.table.schema.get(f.name)
            if self.stamp and f.name == CREATED_AT:
                continue
            if self.file_format != "parquet" and dtype is not None and dtype.is_temporal():
                fields.append(pa.field(f.name, arrow_type(dtype)))
            else:
                fields.append(f)
        if self.stamp:
            fields.append(pa.field(CREATED_AT, arrow_type(self.table.schema[CREATED_AT])))
        return pa.schema(fields)

    def batches(
        self, *, run_id: str, on_batch: Callable[[int], None] = lambda _: None
    ) -> Iterator[pa.RecordBatch]:
        """The rows as record batches of :meth:`output_schema`.

        Raises:
            ValidationError: a file is malformed, or a time has no zone offset.
        """
        schema = self.output_schema()
        try:
            for batch in self.dataset.to_batches():
                out = self._conformed(batch, schema, run_id=run_id)
                on_batch(out.num_rows)
                yield out
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
            raise _unreadable(self.files, self.file_format, exc, table=self.table.name,
                              run_id=run_id) from exc

    def _conformed(
        self, batch: pa.RecordBatch, schema: pa.Schema, *, run_id: str
    ) -> pa.RecordBatch:
        columns = []
        problems: list[Failure] = []
        for f, col in zip(batch.schema, batch.columns, strict=True):
            dtype = self.table.schema.get(f.name)
            if self.stamp and f.name == CREATED_AT:
                continue
            if self.file_format == "parquet" or dtype is None or not dtype.is_temporal():
                columns.append(col)
                continue
            cast = self._cast_time(batch, f.name, dtype, problems)
            columns.append(pa.nulls(len(col), arrow_type(dtype)) if cast is None else cast)
        if problems:
            raise ValidationError(
                f"{len(problems)} value(s) of `{self.table.name}` are not valid times "
                "(a time needs its zone offset, e.g. 2024-03-04T10:00:00Z)",
                table=self.table.name, columns=sorted({p[0] for p in problems}), run_id=run_id,
                failures=failures_table(problems),
                examples=[f"{c}={v!r}" + (f" at {k}" if k else "") for c, _, v, k in problems],
            )
        if self.stamp:
            target = arrow_type(self.table.schema[CREATED_AT])
            columns.append(pa.repeat(pa.scalar(utc_now(), target), batch.num_rows))
        return pa.RecordBatch.from_arrays(columns, schema=schema)

    def _cast_time(
        self,
        batch: pa.RecordBatch,
        name: str,
        dtype: dt.DataType,
        problems: list[Failure],
    ) -> pa.Array | None:
        """A text column cast to its declared time type, or None with ``problems`` filled."""
        col = batch.column(name)
        key = self.table.primary_key[0] if len(self.table.primary_key) == 1 else None
        if dtype.is_timestamp():
            naive = pc.invert(pc.match_substring_regex(col, _ZONE))
            if pc.any(naive).as_py():
                keys = batch.column(key).filter(naive) if key in batch.schema.names else None
                for i, value in enumerate(col.filter(naive).to_pylist()):
                    problems.append(Failure(name, "timezone", value,
                                     None if keys is None else f"{key}={keys[i].as_py()}"))
                return None
        try:
            return pc.cast(col, arrow_type(dtype))
        except pa.ArrowInvalid as exc:
            problems.append(Failure(name, "type", str(exc).splitlines()[0], None))
            return None


def _unreadable(
    files: list[Path], fmt: str, exc: Exception, *, table: str, run_id: str | None
) -> ValidationError:
    what = str(files[0]) if len(files) == 1 else f"{len(files)} files under {files[0].parent}"
    text = str(exc).strip()
    # Arrow wraps the parser's words in "Error creating dataset ...: Invalid: <words>".
    detail = text.rsplit("Invalid: ", 1)[-1].splitlines()[0] if text else type(exc).__name__
    return ValidationError(f"{what} cannot be read as {fmt}: {detail}", table=table, run_id=run_id)


def ingest_files(
    storage: StorageManager,
    files: list[Path],
    file_format: str,
    *,
    table: TableSchema,
    run_name: str,
    config: Mapping[str, Any],
    parent_run_id: str | None = None,
    on_conflict: OnConflict = "error",
    restamp: bool = False,
    progress_console: Console | None = None,
) -> tuple[Run, int]:
    """Write ``files`` to ``table`` as one run, in one streamed write: all rows or none.

    Returns:
        The ended run and the number of rows written.

    Raises:
        StorageError: the run ended FAILED (a file unreadable, rows refused); nothing was
            written.
    """
    runs = RunStore(storage)
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed:,} rows"), TimeElapsedColumn(),
                        console=progress_console, disable=progress_console is None)
    with progress, runs.run(run_name, config=config, parent_run_id=parent_run_id) as run:
        # Inside the run: a file that cannot even be opened ends the run FAILED too.
        source = Source.open(files, file_format, table=table, restamp=restamp,
                             run_id=run.run_id)
        task = progress.add_task(f"{run_name} -> {table.name}", total=source.count_rows())
        batches = source.batches(run_id=run.run_id, on_batch=lambda n: progress.advance(task, n))
        reader = pa.RecordBatchReader.from_batches(source.output_schema(), batches)
        written = storage.write(table.name, reader, run_id=run.run_id, on_conflict=on_conflict)
    return runs.get_run(run.run_id), written
