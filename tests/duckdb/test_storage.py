"""DuckDBStorageManager: errors, atomicity, conflicts, threads, processes, modes, migrations.

Error tests check the type, the structured fields and the message. Atomicity tests compare
the whole table before and after a refused write. Process tests run a second Python process,
because DuckDB's file lock is per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.conftest import STORE_KINDS, StoreKind
from tests.helpers import make_annotations, make_documents, make_messages, make_rows, uuids

import duckdb
from egregora.database import (
    CATALOG,
    DuckDBStorageManager,
    RunStore,
    TableSchema,
    ddl,
)
from egregora.database.backends.duckdb.errors import translate_duckdb_error
from egregora.database.errors import (
    ConnectionFailedError,
    DiskFullError,
    DuplicateKeyError,
    ReadOnlyError,
    SchemaMismatchError,
    StorageError,
)
from egregora.database.model import utc_now
from egregora.database.schemas import (
    ANNOTATIONS_SCHEMA,
    DOCUMENTS_SCHEMA,
    MESSAGES_SCHEMA,
    RUNS_SCHEMA,
)

REPO = Path(__file__).resolve().parents[2]

#: A user table shaped like documents, small enough to make many writes cheap.
NOTES = TableSchema(
    "notes",
    {"id": "!uuid", "body": "!string", "created_at": "!timestamp('UTC')"},
    primary_key=("id",),
    lineage=True,
)
#: The same table one release later: one more nullable column (an additive migration).
NOTES_V2 = TableSchema(
    "notes",
    {"id": "!uuid", "body": "!string", "created_at": "!timestamp('UTC')", "mood": "string"},
    primary_key=("id",),
    lineage=True,
)


def stored(store: DuckDBStorageManager, table: str) -> pa.Table:
    """Every row of ``table``, ordered by primary key."""
    key = [(c, "ascending") for c in store.catalog[table].primary_key]
    return store.to_arrow(store.table(table)).sort_by(key)


def count(store: DuckDBStorageManager, table: str) -> int:
    return int(store.table(table).count().execute())


# --- errors: type, fields, message -----------------------------------------------------


# --- atomicity ------------------------------------------------------------------------


def test_a_key_committed_first_by_another_connection_is_a_duplicate(tmp_path: Path) -> None:
    # Two managers on one file in one process share DuckDB's database: the second COMMIT of
    # the same key fails, and must surface as a library error, not a raw TransactionException.
    path = tmp_path / "shared.duckdb"
    first = DuckDBStorageManager(path, chunk_rows=1)
    second = DuckDBStorageManager(path)
    try:
        run_a = RunStore(first).start_run("a")
        run_b = RunStore(second).start_run("b")
        docs = make_documents(2, seed=13)
        inserted, release = threading.Event(), threading.Event()

        def batches() -> Iterator[pa.RecordBatch]:
            yield docs.slice(0, 1).combine_chunks().to_batches()[0]
            inserted.set()
            release.wait(30)
            yield docs.slice(1, 1).combine_chunks().to_batches()[0]

        outcome: list[object] = []

        def write_first() -> None:
            try:
                outcome.append(
                    first.write(
                        "documents",
                        pa.RecordBatchReader.from_batches(docs.schema, batches()),
                        run_id=run_a.run_id,
                    )
                )
            except Exception as exc:
                outcome.append(exc)

        writer = threading.Thread(target=write_first)
        writer.start()
        assert inserted.wait(30)
        assert second.write("documents", docs.slice(0, 1), run_id=run_b.run_id) == 1
        release.set()
        writer.join(30)

        assert len(outcome) == 1
        err = outcome[0]
        assert isinstance(err, DuplicateKeyError), err
        assert err.failures is not None
        assert err.failures["key"].to_pylist() == [f"id='{docs['id'][0].as_py()}'"]
        assert "another connection" in str(err)
        assert first.write("documents", docs.slice(1, 1), run_id=run_a.run_id) == 1
        assert count(first, "documents") == 2
    finally:
        first.close()
        second.close()


# --- on_conflict ----------------------------------------------------------------------


# --- threads --------------------------------------------------------------------------


#: The thread test concerns DuckDB's one shared connection (the manager's module notes: an Ibis
#: backend shared by threads lost inserts), so it runs on the DuckDB kinds of store.
DUCKDB_KINDS = [kind for kind in STORE_KINDS if kind.name in {"memory", "file"}]


@pytest.mark.slow
@pytest.mark.parametrize("kind", DUCKDB_KINDS, ids=[kind.name for kind in DUCKDB_KINDS])
def test_eight_threads_write_through_one_manager(tmp_path: Path, kind: StoreKind) -> None:
    with kind.open(tmp_path, catalog=CATALOG.extend(NOTES)) as store:
        _write_from_eight_threads(store)


def _write_from_eight_threads(store: DuckDBStorageManager) -> None:
    runs = RunStore(store)
    shared = runs.start_run("shared")
    threads, batches, rows = 8, 25, 10

    def work(i: int) -> tuple[str, list[int]]:
        # Odd threads have a run of their own, even threads share one.
        run = runs.start_run(f"thread-{i}") if i % 2 else shared
        seen = []
        for j in range(batches):
            written = store.write(
                "notes", make_rows(NOTES, rows, seed=1000 * i + j), run_id=run.run_id
            )
            assert written == rows
            seen.append(int(store.table("notes").count().execute()))
        if i % 2:
            runs.end_run(run.run_id)
        return run.run_id, seen

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(work, range(threads)))

    assert count(store, "notes") == threads * batches * rows
    for _, seen in results:
        assert seen == sorted(seen)  # each thread sees committed rows only grow
        assert seen[-1] >= batches * rows
    by_run = pc.value_counts(stored(store, "notes")["run_id"]).to_pylist()
    counts = {r["values"]: r["counts"] for r in by_run}
    assert counts[shared.run_id] == 4 * batches * rows
    for run_id, _ in results[1::2]:
        assert counts[run_id] == batches * rows


# --- processes ------------------------------------------------------------------------

_LOCK_PROBE = textwrap.dedent(
    """
    import json, sys, time
    from egregora.database import DuckDBStorageManager
    from egregora.database.errors import StoreLockedError

    path = sys.argv[1]

    def attempt(**options):
        started = time.monotonic()
        try:
            with DuckDBStorageManager(path, **options) as storage:
                found = {"opened": True, "runs": int(storage.table("runs").count().execute())}
        except StoreLockedError as exc:
            found = {"opened": False, "path": exc.path, "holder_pid": exc.holder_pid,
                     "message": str(exc)}
        found["waited"] = time.monotonic() - started
        print(json.dumps(found), flush=True)

    attempt()
    attempt(lock_timeout=0.5)
    attempt(read_only=True)
    sys.stdin.readline()
    print(json.dumps({"trying": True}), flush=True)
    attempt(lock_timeout=30)
    """
)


def test_a_second_process_is_refused_while_a_writer_holds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "held.duckdb"
    holder = DuckDBStorageManager(path)
    RunStore(holder).start_run("holder")
    with subprocess.Popen(
        [sys.executable, "-c", _LOCK_PROBE, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    ) as probe:
        try:
            assert probe.stdout is not None
            assert probe.stdin is not None
            at_once, waiting, reader = (json.loads(probe.stdout.readline()) for _ in range(3))
            for refused in (at_once, waiting, reader):
                assert refused["opened"] is False, refused
                assert refused["path"] == str(path)
                assert refused["holder_pid"] == os.getpid()
                assert str(path) in refused["message"]
                assert f"process {os.getpid()}" in refused["message"]
            assert 0.5 <= waiting["waited"] < 3.0
            assert "waited 0.5 s" in waiting["message"]
            assert at_once["waited"] < waiting["waited"]

            probe.stdin.write("go\n")
            probe.stdin.flush()
            assert json.loads(probe.stdout.readline()) == {"trying": True}
            time.sleep(0.3)  # the probe is now waiting for the lock
            holder.close()
            released = json.loads(probe.stdout.readline())
            assert released["opened"] is True, released
            assert released["runs"] == 1
            assert probe.wait(30) == 0
        finally:
            holder.close()
            if probe.poll() is None:
                probe.kill()


# --- modes: read-only, closed, reopened -----------------------------------------------


def _filled_file(path: Path) -> tuple[str, dict[str, pa.Table]]:
    """A closed store file with rows in every table; returns the run and the rows."""
    with DuckDBStorageManager(path) as storage:
        runs = RunStore(storage)
        with runs.run("fill") as run:
            docs = make_documents(30, seed=21)
            storage.write("documents", docs, run_id=run.run_id)
            storage.write("messages", make_messages(20, seed=22), run_id=run.run_id)
            storage.write(
                "annotations", make_annotations(docs["id"][:10], seed=23), run_id=run.run_id
            )
        tables = {t: stored(storage, t) for t in ("runs", "documents", "messages", "annotations")}
    return run.run_id, tables


def test_reopening_a_file_returns_every_row(tmp_path: Path) -> None:
    path = tmp_path / "reopen.duckdb"
    run_id, before = _filled_file(path)

    with DuckDBStorageManager(path) as again:
        assert again.migration.is_empty
        for name, rows in before.items():
            assert stored(again, name).equals(rows), name
        assert RunStore(again).get_run(run_id).status == "COMPLETED"


def test_a_read_only_store_refuses_writes_and_does_not_migrate(tmp_path: Path) -> None:
    path = tmp_path / "readers.duckdb"
    run_id, before = _filled_file(path)

    with DuckDBStorageManager(path, read_only=True) as reader:
        assert reader.migration.is_empty
        assert stored(reader, "documents").equals(before["documents"])
        with pytest.raises(ReadOnlyError):
            reader.write("documents", make_documents(1, seed=24), run_id=run_id)
        with pytest.raises(ReadOnlyError):
            RunStore(reader).start_run("not allowed")
        # Two readers may share the file while no writer holds it.
        with DuckDBStorageManager(path, read_only=True) as other:
            assert count(other, "documents") == 30

    # A reader never migrates: a catalog that needs a new table is refused, nothing created.
    with pytest.raises(SchemaMismatchError, match="read-only"):
        DuckDBStorageManager(path, read_only=True, catalog=CATALOG.extend(NOTES))
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    finally:
        con.close()
    assert "notes" not in tables


def test_read_only_needs_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.duckdb"

    with pytest.raises(ConnectionFailedError, match="read-only"):
        DuckDBStorageManager(path, read_only=True)
    assert not path.exists()
    with pytest.raises(ConnectionFailedError):
        DuckDBStorageManager(":memory:", read_only=True)


def test_chunk_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        DuckDBStorageManager(":memory:", chunk_rows=0)


def _memory_limit(store: DuckDBStorageManager) -> str:
    found = store._con.execute("SELECT current_setting('memory_limit')").fetchone()
    assert found is not None
    return str(found[0])


def test_a_writable_file_store_bounds_duckdb_memory(tmp_path: Path) -> None:
    default = duckdb.connect().execute("SELECT current_setting('memory_limit')").fetchone()
    with DuckDBStorageManager(tmp_path / "a.duckdb") as store:
        assert _memory_limit(store) == "488.2 MiB"  # the default, "512MB"
    with DuckDBStorageManager(tmp_path / "b.duckdb", memory_limit="2GB") as store:
        assert _memory_limit(store) == "1.8 GiB"
    with DuckDBStorageManager(tmp_path / "c.duckdb", memory_limit=None) as store:
        assert default is not None
        assert _memory_limit(store) == default[0]
    # An in-memory store's rows have nowhere to be evicted to: DuckDB's default is kept.
    with DuckDBStorageManager(":memory:") as store:
        assert _memory_limit(store) == default[0]


def test_managers_of_one_file_share_its_memory_limit(tmp_path: Path) -> None:
    # One file in one process is one DuckDB database with one memory_limit: the first
    # manager sets it, and a write of one manager that needs more does not lose it to the
    # others opening, writing or closing.
    path = tmp_path / "shared.duckdb"
    first = DuckDBStorageManager(path, memory_limit="2GB")
    try:
        second = DuckDBStorageManager(path)  # would set 512MB on a file of its own
        third = DuckDBStorageManager(path, memory_limit=None)
        assert _memory_limit(first) == _memory_limit(second) == "1.8 GiB"
        first._memory.ask(3 << 30)
        assert _memory_limit(first) == "3.0 GiB"
        run = RunStore(second).start_run("w")
        second.write("documents", make_documents(10, seed=40), run_id=run.run_id)
        third.close()
        second.close()
        assert _memory_limit(first) == "3.0 GiB"
        first._memory.release()
        assert _memory_limit(first) == "1.8 GiB"
    finally:
        first.close()
    with DuckDBStorageManager(path) as alone:  # the file is nobody's: the default again
        assert _memory_limit(alone) == "488.2 MiB"


def test_a_table_handed_whole_asks_for_its_own_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DuckDBStorageManager(tmp_path / "s.duckdb", memory_limit="64MB", chunk_rows=1000) as store:
        sizes: list[int] = []
        fit = store._fit_memory_limit

        def recorded(bytes_per_row: int, *, at_commit: bool = False, chunk_bytes: int = 0) -> None:
            if not at_commit:
                sizes.append(chunk_bytes)
            fit(bytes_per_row, at_commit=at_commit, chunk_bytes=chunk_bytes)

        run = RunStore(store).start_run("whole")
        monkeypatch.setattr(store, "_fit_memory_limit", recorded)
        docs = make_documents(60_000, seed=42)  # one insert of ~40 MB
        store.write("documents", docs, run_id=run.run_id)
        assert len(sizes) == 1
        assert sizes[0] >= docs.nbytes  # the conformed batch: the rows and their run_id
        assert docs.nbytes > 32_000_000  # with half the base, over it: the limit was raised
        assert _memory_limit(store) == "61.0 MiB"  # and given back
        sizes.clear()
        stream = make_documents(5_000, seed=43).to_reader(max_chunksize=1000)
        store.write("documents", stream, run_id=run.run_id)
        assert sizes == [0] * 5  # a stream's chunks bring no memory of their own


def test_a_raised_memory_limit_stops_at_duckdbs_own_default(tmp_path: Path) -> None:
    default = duckdb.connect().execute("SELECT current_setting('memory_limit')").fetchone()
    assert default is not None
    with DuckDBStorageManager(tmp_path / "s.duckdb") as store:
        store._memory.ask(1 << 50)  # a petabyte
        assert _memory_limit(store) == default[0]
        store._memory.release()
        assert _memory_limit(store) == "488.2 MiB"


def test_a_large_write_raises_the_memory_limit_for_its_duration(tmp_path: Path) -> None:
    # 32 MB: the indexes (40 B a row while inserting, 72 B at COMMIT) may take half, 16 MB,
    # before the limit grows.
    store = DuckDBStorageManager(
        tmp_path / "s.duckdb", catalog=CATALOG.extend(NOTES), memory_limit="32MB",
        chunk_rows=60_000,
    )
    try:
        run = RunStore(store).start_run("large")
        n = 600_000
        notes = pa.table({
            "id": uuids(n, np.random.default_rng(32)),
            "body": pa.repeat(pa.scalar("a note", pa.string()), n),
            "created_at": pa.repeat(pa.scalar(utc_now(), pa.timestamp("us", "UTC")), n),
        })
        seen: list[str] = []

        def produce(table: pa.Table) -> pa.RecordBatchReader:
            def batches() -> Iterator[pa.RecordBatch]:
                for batch in table.combine_chunks().to_batches(max_chunksize=60_000):
                    seen.append(_memory_limit(store))
                    yield batch

            return pa.RecordBatchReader.from_batches(table.schema, batches())

        # A failed write restores it: 540k rows, then 60k repeating the first chunk's keys.
        clash = pa.concat_tables([notes.slice(0, 540_000), notes.slice(0, 60_000)])
        with pytest.raises(DuplicateKeyError, match="earlier in this call"):
            store.write("notes", produce(clash), run_id=run.run_id)
        assert seen[-1] == "64.0 MiB"
        assert _memory_limit(store) == "30.5 MiB"
        assert count(store, "notes") == 0

        seen.clear()
        assert store.write("notes", produce(notes), run_id=run.run_id) == n
        # Each insert of a stream asks for its rows' index (40 B a row) and half the base for
        # the cache: 360k rows ask 14.4 + 16 MB, under the base; 420k rows 16.8 + 16 MB,
        # over: 64 MiB from the 8th chunk on.
        assert seen == [*["30.5 MiB"] * 7, *["64.0 MiB"] * 3]
        assert _memory_limit(store) == "30.5 MiB"
        assert count(store, "notes") == n
    finally:
        store.close()


def test_running_out_of_memory_is_a_storage_error_that_says_what_to_do() -> None:
    exc = duckdb.OutOfMemoryException(
        "Out of Memory Error: failed to pin block of size 256.0 KiB (488.2 MiB/488.2 MiB used)"
    )
    err = translate_duckdb_error(exc, table="documents", run_id="r1")
    assert type(err) is StorageError
    assert (err.table, err.run_id) == ("documents", "r1")
    assert "ran out of memory writing `documents`" in str(err)
    assert "memory_limit=" in str(err)
    assert "Nothing was written" in str(err)


@pytest.mark.parametrize(
    "cause", ["No space left on device", "File too large", "Disk quota exceeded"]
)
def test_a_full_disk_is_a_disk_full_error(cause: str) -> None:
    exc = duckdb.IOException(f'Could not write file "/data/store.duckdb.wal": {cause}')
    err = translate_duckdb_error(exc, table="documents", run_id="r1")
    assert type(err) is DiskFullError
    assert (err.table, err.run_id) == ("documents", "r1")
    assert cause in str(err)
    assert "Nothing of this call was written" in str(err)
    assert "write again" in str(err)


def test_a_full_disk_that_invalidated_the_database_says_to_reopen_it() -> None:
    exc = duckdb.FatalException("could not write WAL: No space left on device")
    err = translate_duckdb_error(exc, table="documents", run_id=None)
    assert type(err) is DiskFullError
    assert "close the store, free space and open it again" in str(err)


def test_text_about_large_files_in_other_errors_is_no_full_disk() -> None:
    exc = duckdb.InvalidInputException("value 'File too large' is not a valid status")
    assert type(translate_duckdb_error(exc, table="documents", run_id=None)) is StorageError


def test_a_memory_limit_duckdb_cannot_read_is_refused_and_the_file_released(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.duckdb"
    with pytest.raises(ValueError, match="memory_limit='lots'"):
        DuckDBStorageManager(path, memory_limit="lots")
    with DuckDBStorageManager(path) as store:  # nothing holds the file
        assert not store.verify()


def test_a_store_holding_the_batchs_name_is_refused_and_kept(tmp_path: Path) -> None:
    # The insert reads its batch by that name; a relation of the store would be read instead.
    path = tmp_path / "store.duckdb"
    with DuckDBStorageManager(path) as store:
        store._con.execute("CREATE VIEW egregora_incoming_batch AS SELECT * FROM documents")
    with pytest.raises(SchemaMismatchError, match="egregora_incoming_batch"):
        DuckDBStorageManager(path)
    with duckdb.connect(str(path)) as con:  # nothing was changed, the file is free
        assert con.execute("SELECT count(*) FROM egregora_incoming_batch").fetchone() == (0,)


@pytest.mark.parametrize("kind", [k for k in STORE_KINDS if k.name != "postgres"],
                         ids=lambda k: k.name)
def test_a_relation_named_like_the_batch_made_later_fails_the_write(
    kind: StoreKind, tmp_path: Path
) -> None:
    # (A DuckDB store's insert reads its batch by name; PostgreSQL stages it in a table.)
    with kind.open(tmp_path) as store:
        run = RunStore(store).start_run("w")
        store._con.execute("CREATE TABLE egregora_incoming_batch AS SELECT * FROM documents")
        with pytest.raises(StorageError, match="wrote 0: the store holds a relation named"):
            store.write("documents", make_documents(3, seed=41), run_id=run.run_id)
        assert count(store, "documents") == 0


def test_a_file_that_is_not_a_database_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("these are not the rows you are looking for\n" * 50)

    with pytest.raises(ConnectionFailedError, match="not a valid DuckDB database"):
        DuckDBStorageManager(path)

    assert path.read_text().startswith("these are not")


# --- lineage stamping -----------------------------------------------------------------


# --- migrations -----------------------------------------------------------------------


def test_an_empty_database_gets_every_table(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    catalog = CATALOG.extend(NOTES)

    with DuckDBStorageManager(path, catalog=catalog) as storage:
        created = [t.name for t in storage.migration.create]
        assert created == ["egregora_layout", *(t.name for t in catalog.creation_order())]
        assert not storage.migration.add_columns
    with DuckDBStorageManager(path, catalog=catalog) as again:
        assert again.migration.is_empty
        layout = again.to_arrow(again.table("egregora_layout"))
        assert layout.num_rows == 1  # a reopen records nothing


def test_an_additive_migration_adds_the_column_and_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "grow.duckdb"
    with DuckDBStorageManager(path, catalog=CATALOG.extend(NOTES)) as storage:
        run = RunStore(storage).start_run("v1")
        storage.write("notes", make_rows(NOTES, 20, seed=25), run_id=run.run_id)
        before = stored(storage, "notes")

    with DuckDBStorageManager(path, catalog=CATALOG.extend(NOTES_V2)) as grown:
        assert [(t.name, c) for t, c in grown.migration.add_columns] == [("notes", "mood")]
        assert not grown.migration.create
        after = stored(grown, "notes")
        assert after.select(before.column_names).equals(before)
        assert after["mood"].null_count == 20
        run = RunStore(grown).start_run("v2")
        grown.write("notes", make_rows(NOTES_V2, 5, seed=26), run_id=run.run_id)
        assert count(grown, "notes") == 25
    with DuckDBStorageManager(path, catalog=CATALOG.extend(NOTES_V2)) as again:
        assert again.migration.is_empty


def test_drift_is_refused_with_every_difference_and_nothing_changed(tmp_path: Path) -> None:
    path = tmp_path / "drift.duckdb"
    drifted = TableSchema(
        "annotations",
        {
            "id": "!uuid",
            "document_id": "!uuid",
            "content": "!int64",  # type changed
            "created_at": "timestamp('UTC')",  # NOT NULL lost
            "source_checksum": "string",
            "author_id": "string",
        },
        primary_key=("id",),
        lineage=True,  # and no FOREIGN KEY to documents
    )
    con = duckdb.connect(str(path))
    for table in (RUNS_SCHEMA, DOCUMENTS_SCHEMA, MESSAGES_SCHEMA, drifted):
        con.execute(ddl.create_table_sql(table))
    con.close()

    with pytest.raises(SchemaMismatchError) as caught:
        DuckDBStorageManager(path)

    differences = caught.value.differences
    assert len(differences) == 3, differences
    assert any("annotations.content" in d and "string" in d and "int64" in d for d in differences)
    assert any("annotations.created_at" in d and "NOT NULL" in d for d in differences)
    assert any(
        "FOREIGN KEY (document_id) REFERENCES documents(id) missing" in d for d in differences
    )
    for line in differences:
        assert line in str(caught.value)
    assert "nothing was changed" in str(caught.value)
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = sorted(
            r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        )
        content_type = con.execute(
            "SELECT data_type FROM duckdb_columns() "
            "WHERE table_name = 'annotations' AND column_name = 'content'"
        ).fetchone()
    finally:
        con.close()
    assert tables == ["annotations", "documents", "messages", "runs"]  # no layout table added
    assert content_type == ("BIGINT",)
    assert ANNOTATIONS_SCHEMA.schema["content"].is_string()
