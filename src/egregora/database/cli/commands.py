"""``egregora-db``: a store from the command line, a thin layer over the public API.

Commands: ``init`` and ``migrate`` (create or upgrade a store), ``ingest`` (a Parquet, CSV or
JSON lines file as one run), ``runs`` and ``show`` (what ran), ``lineage`` (which run wrote a
row), ``verify`` (the integrity report), ``rollback`` (remove a run's rows),
``export-openlineage`` (runs as OpenLineage events) and ``demo`` (a small pipeline on a new
store). Each has ``--help``.

Every command takes ``--db``: a DuckDB file, by default ``$EGREGORA_DB`` or else
``egregora.duckdb`` in the working directory. Commands that only read (``runs``, ``show``,
``lineage``, ``verify``, ``export-openlineage``) open the store read-only: they run beside
other readers, but, DuckDB admitting one process per file, not while a writer holds it.
``--json`` prints, instead of tables, JSON for scripts; an error is then printed as JSON too.

Exit codes:

- 0: success.
- 1: the store or the data is not right: integrity problems found, rows refused (the run
  ended FAILED and wrote nothing), an operation refused (a rollback declined or blocked).
- 2: usage: bad arguments or options.
- 3: the store is unavailable: held by another process (the message names its PID), not
  openable, or a URL scheme this build does not support.
- 4: not found: no such run, table or row.

Library errors print their message (and up to 10 offending rows) without a traceback; any
other exception is a bug and shows its traceback.
"""

from __future__ import annotations

import contextlib
import enum
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.text import Text

from egregora.database.backends.base import StorageManager
from egregora.database.backends.duckdb.legacy import detect_legacy_layout, upgrade_legacy_store
from egregora.database.backends.duckdb.manager import DuckDBStorageManager
from egregora.database.cli import output as out
from egregora.database.cli import queries as q
from egregora.database.cli.ingest import FORMATS, SourceError, find_files, ingest_files
from egregora.database.connect import connect
from egregora.database.errors import (
    ConnectionFailedError,
    StorageError,
    StoreLockedError,
)
from egregora.database.runs.lineage import lineage_tables, provenance
from egregora.database.runs.openlineage import store_events, to_json_lines
from egregora.database.runs.store import Run, RunStore
from egregora.database.schemas import LAYOUT_VERSION, RunStatus


class ExitCode(enum.IntEnum):
    """The exit status of every command (see the module docstring)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNAVAILABLE = 3
    NOT_FOUND = 4


EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 integrity problems, rows refused or operation refused; "
    "2 usage error; 3 store unavailable (held by another process, not openable, unsupported "
    "URL); 4 run, table or row not found."
)
DB_ENV = "EGREGORA_DB"
DEFAULT_DB = "egregora.duckdb"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

app = typer.Typer(
    name="egregora-db",
    help="Inspect and maintain an egregora store: runs, lineage, integrity.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

Db = Annotated[str, typer.Option(
    "--db", envvar=DB_ENV, show_envvar=True,
    help="The store: a DuckDB file path, or a URL (postgresql://user@host/db?schema=name, "
    "duckdb:///path).",
)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
RunIdArg = Annotated[str, typer.Argument(
    metavar="RUN_ID", help="A run id, or the short id `runs` shows (its last characters).",
)]


def exit_code_for(exc: StorageError) -> ExitCode:
    """The exit status of a library error."""
    if isinstance(exc, StoreLockedError | ConnectionFailedError):
        return ExitCode.UNAVAILABLE
    if isinstance(exc, LookupError):
        return ExitCode.NOT_FOUND
    return ExitCode.FAILED


def open_store(url: str, *, read_only: bool) -> StorageManager:
    """Open the store ``--db`` names; the one place that turns a ``--db`` into a store.

    A plain path is a DuckDB file; a URL (``postgresql://...``, ``duckdb:///path``) goes
    through :func:`egregora.database.connect`.

    Raises:
        ConnectionFailedError: the URL's scheme is unknown or the server cannot be reached.
        StoreLockedError: another process holds the file.
    """
    if _URL.match(url) is not None:
        return connect(url, read_only=read_only)
    return DuckDBStorageManager(url, read_only=read_only)


def _fail(message: str, code: ExitCode, *, json_output: bool) -> NoReturn:
    if json_output:
        out.print_json({"error": {"type": code.name, "message": message}, "exit_code": int(code)})
    out.stderr().print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _reported(*, json_output: bool) -> Iterator[None]:
    """Turn a library error into its message, its offending rows and an exit status."""
    try:
        yield
    except StorageError as exc:
        code = exit_code_for(exc)
        if json_output:
            out.print_json(out.error_dict(exc, int(code)))
        out.print_error(exc)
        raise typer.Exit(code) from exc


def _exists(db: str) -> bool:
    return db != ":memory:" and _URL.match(db) is None and Path(db).exists()


# --- creating and upgrading ---------------------------------------------------------------


def _open_and_report(db: str, *, json_output: bool, extra: dict[str, Any]) -> None:
    existed = _exists(db)
    with _reported(json_output=json_output), open_store(db, read_only=False) as storage:
        changes = storage.migration.describe()
    if json_output:
        out.print_json({"db": db, "created": not existed, "layout_version": LAYOUT_VERSION,
                        "changes": changes, **extra})
        return
    console = out.stdout()
    verb = "created" if not existed else ("upgraded" if changes else "checked")
    console.print(f"{verb} store {db} (layout {LAYOUT_VERSION})"
                  + ("" if changes else ": up to date, nothing changed"))
    for line in changes:
        console.print(f"  - {line}")


@app.command(epilog=EXIT_CODES_HELP)
def init(db: Db = DEFAULT_DB, json_output: Json = False) -> None:
    """Create a store with every declared table (an existing one is brought up to date)."""
    _open_and_report(db, json_output=json_output, extra={})


@app.command(epilog=EXIT_CODES_HELP)
def migrate(
    db: Db = DEFAULT_DB,
    legacy: Annotated[bool, typer.Option(
        "--legacy", help="Upgrade a store of egregora's earlier layout (rows without run_id) "
        "first; every existing row is attributed to one `legacy-import` run.",
    )] = False,
    quarantine_orphans: Annotated[bool, typer.Option(
        "--quarantine-orphans", help="With --legacy: move annotations that reference no "
        "document to `annotations_quarantine` instead of refusing the upgrade.",
    )] = False,
    json_output: Json = False,
) -> None:
    """Bring a store to the declared layout, printing what changed."""
    if quarantine_orphans and not legacy:
        raise typer.BadParameter("--quarantine-orphans goes with --legacy")
    extra: dict[str, Any] = {}
    if legacy:
        if _URL.match(db) is not None:
            _fail("--legacy upgrades DuckDB files only", ExitCode.USAGE, json_output=json_output)
        with _reported(json_output=json_output):
            is_legacy = detect_legacy_layout(db)
            report = (upgrade_legacy_store(db, quarantine_orphans=quarantine_orphans)
                      if is_legacy else None)
        if report is None:
            extra["legacy"] = None
            if not json_output:
                out.stdout().print(f"{db} is not in the earlier layout: no legacy upgrade needed")
        else:
            extra["legacy"] = {"run_id": report.run_id, "rows": dict(report.rows),
                               "quarantined": report.quarantined,
                               "dropped_indexes": list(report.dropped_indexes)}
            if not json_output:
                out.stdout().print(str(report))
    _open_and_report(db, json_output=json_output, extra=extra)


# --- ingesting ----------------------------------------------------------------------------


class ConflictChoice(enum.StrEnum):
    """What ``ingest`` does with a row whose key is already stored."""

    error = "error"
    ignore = "ignore"
    update = "update"


class FileFormat(enum.StrEnum):
    """The formats ``ingest`` reads."""

    parquet = "parquet"
    csv = "csv"
    json = "json"


def _parse_config(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--config") from exc
    if not isinstance(config, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--config")
    return config


@app.command(epilog=EXIT_CODES_HELP)
def ingest(
    *,
    path: Annotated[Path, typer.Argument(
        exists=True, metavar="PATH",
        help="A Parquet, CSV or JSON lines file, or a directory of them.",
    )],
    table: Annotated[str, typer.Option("--table", "-t", help="The table to write.")],
    run_name: Annotated[str, typer.Option("--run-name", "-n", help="The run's name.")],
    config: Annotated[str | None, typer.Option(
        help="The run's config as a JSON object (the source file is added under `ingest`).",
    )] = None,
    parent: Annotated[str | None, typer.Option(help="The parent run's id.")] = None,
    file_format: Annotated[FileFormat | None, typer.Option(
        "--format", help=f"Read as this format ({', '.join(FORMATS)}); default: by suffix.",
    )] = None,
    on_conflict: Annotated[ConflictChoice, typer.Option(
        "--on-conflict", help="A row whose key is already stored: error (refuse the run), "
        "ignore (keep the stored row) or update (overwrite its columns).",
    )] = ConflictChoice.error,
    stamp_created_at: Annotated[bool, typer.Option(
        "--stamp-created-at", help="Set created_at to the time of the write, replacing the "
        "file's values (a row may not predate its run). Without it, a file lacking created_at "
        "is stamped and one holding it is kept.",
    )] = False,
    db: Db = DEFAULT_DB,
    json_output: Json = False,
) -> None:
    """Load a file as one run, streamed in batches: all rows are written, or none.

    A bad file ends the run FAILED, writes nothing, and prints the offending rows.
    """
    user_config = _parse_config(config)
    with _reported(json_output=json_output), open_store(db, read_only=False) as storage:
        schema = storage.catalog[table]
        if not schema.lineage:
            names = ", ".join(t.name for t in lineage_tables(storage))
            _fail(f"`{table}` records no lineage; ingest writes one of: {names}",
                  ExitCode.USAGE, json_output=json_output)
        try:
            files, fmt = find_files(
                path, file_format=None if file_format is None else str(file_format)
            )
        except SourceError as exc:
            _fail(str(exc), ExitCode.USAGE, json_output=json_output)
        parent_id = None if parent is None else q.resolve_run_id(storage, parent)
        run_config = {**user_config, "ingest": {
            "path": str(path.resolve()), "format": fmt, "table": table,
        }}
        done, written = ingest_files(
            storage, files, fmt, table=schema, run_name=run_name, config=run_config,
            parent_run_id=parent_id, on_conflict=on_conflict.value, restamp=stamp_created_at,
            progress_console=None if json_output else out.stderr(),
        )
    if json_output:
        out.print_json({**out.run_dict(done, {table: written}),
                        "files": [str(f) for f in files]})
        return
    console = out.stdout()
    console.print(Text.assemble(
        f"run {done.name} {out.short_id(done.run_id)} ", out.status_text(done.status),
        f" in {out.format_duration(done.duration)}: {written:,} rows written to {table} "
        f"from {len(files)} {fmt} file(s)",
    ))
    console.print(f"  run id {done.run_id}, config hash {done.config_hash[:12]}")


# --- reading ------------------------------------------------------------------------------


@app.command(name="runs", epilog=EXIT_CODES_HELP)
def list_runs(
    status: Annotated[list[RunStatus] | None, typer.Option(
        "--status", "-s", case_sensitive=False, help="Only runs with this status (repeatable).",
    )] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Only runs of this name (`enrich-*`: names starting with `enrich-`).",
    )] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs, newest first.")] = 20,
    db: Db = DEFAULT_DB,
    json_output: Json = False,
) -> None:
    """Recent runs: status, start, duration and rows written per table."""
    with _reported(json_output=json_output), open_store(db, read_only=True) as storage:
        runs = q.list_runs(storage, statuses=status or [], name=name, limit=limit)
        if json_output:
            rows = q.rows_by_run(storage)
            out.print_json([out.run_dict(r, rows.get(r.run_id, {})) for r in runs])
            return
        table = out.runs_table(runs, q.rows_by_run(storage), title=f"runs of {db} (newest first)")
        out.stdout().print(table)


@app.command(epilog=EXIT_CODES_HELP)
def show(run_id: RunIdArg, db: Db = DEFAULT_DB, json_output: Json = False) -> None:
    """One run: config, outcome, error, rows written and parent chain."""
    with _reported(json_output=json_output), open_store(db, read_only=True) as storage:
        run = RunStore(storage).get_run(q.resolve_run_id(storage, run_id))
        chain = q.parents(storage, run.run_id)
        rows = q.rows_by_run(storage).get(run.run_id, {})
        children = q.children(storage, run.run_id)
    if json_output:
        out.print_json({**out.run_dict(run, rows), "parents": [out.run_dict(p) for p in chain],
                        "children": [out.run_dict(c) for c in children]})
        return
    console = out.stdout()
    console.print(f"run {run.name}", style="bold")
    console.print(out.run_panel(run, rows, chain))
    if children:
        console.print("children: " + ", ".join(
            f"{c.name} {out.short_id(c.run_id)} ({c.status})" for c in children))


@app.command(epilog=EXIT_CODES_HELP)
def lineage(
    table: Annotated[str, typer.Argument(help="A lineage table: documents, messages, ...")],
    key: Annotated[str, typer.Argument(help="The row's primary-key value.")],
    db: Db = DEFAULT_DB,
    json_output: Json = False,
) -> None:
    """Which run wrote a row: the run, its config hash and its parents."""
    with _reported(json_output=json_output), open_store(db, read_only=True) as storage:
        found = storage.to_arrow(provenance(storage, table, key)).to_pylist()
        if not found:
            _fail(f"no row of `{table}` has key {key}", ExitCode.NOT_FOUND,
                  json_output=json_output)
        run = Run.from_row(found[0])
        chain = q.parents(storage, run.run_id)
    committed = run.status is RunStatus.COMPLETED
    if json_output:
        out.print_json({"table": table, "key": key, "committed": committed,
                        "run": out.run_dict(run), "parents": [out.run_dict(p) for p in chain]})
        return
    visibility = "committed: visible to committed reads" if committed else (
        f"not committed: the run is {run.status}, committed reads hide the row")
    console = out.stdout()
    console.print(f"{table} {key} was written by run {run.name} ({visibility})",
                  soft_wrap=True)
    console.print(out.run_panel(run, None, chain))


@app.command(epilog=EXIT_CODES_HELP)
def verify(db: Db = DEFAULT_DB, json_output: Json = False) -> None:
    """The integrity report; exits 1 when anything is wrong."""
    with _reported(json_output=json_output), open_store(db, read_only=True) as storage:
        report = storage.verify()
    if json_output:
        out.print_json({"sound": not report, "problems": report.to_dicts()})
    else:
        out.stdout().print(out.report_table(report))
    if report:
        raise typer.Exit(ExitCode.FAILED)


# --- changing -----------------------------------------------------------------------------


@app.command(epilog=EXIT_CODES_HELP)
def rollback(
    run_id: RunIdArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    remove_dependents: Annotated[bool, typer.Option(
        "--remove-dependents",
        help="Also remove rows of other runs that reference this run's rows.",
    )] = False,
    db: Db = DEFAULT_DB,
    json_output: Json = False,
) -> None:
    """Mark a finished run ROLLED_BACK and remove every row it wrote."""
    with _reported(json_output=json_output), open_store(db, read_only=False) as storage:
        runs = RunStore(storage)
        run = runs.get_run(q.resolve_run_id(storage, run_id))
        own = q.rows_by_run(storage).get(run.run_id, {})
        if not yes:
            summary = ", ".join(f"{n:,} {t}" for t, n in sorted(own.items())) or "no rows"
            question = (f"Roll back run {run.name} {out.short_id(run.run_id)} ({run.status}, "
                        f"started {out.format_time(run.started_at)}) and remove {summary}"
                        + (" and the rows of other runs that reference them"
                           if remove_dependents else "") + "?")
            if not typer.confirm(question, default=False, err=True):
                _fail("rollback declined; nothing changed", ExitCode.FAILED,
                      json_output=json_output)
        before = q.table_counts(storage)
        done = runs.rollback_run(run.run_id, remove_dependents=remove_dependents)
        after = q.table_counts(storage)
    removed = {t: before[t] - after[t] for t in before if before[t] != after[t]}
    if json_output:
        out.print_json({**out.run_dict(done), "removed": removed})
        return
    text = ", ".join(f"{n:,} {t}" for t, n in sorted(removed.items())) or "no rows"
    out.stdout().print(Text.assemble(
        f"run {done.name} {out.short_id(done.run_id)} is ", out.status_text(done.status),
        f"; removed {text}",
    ))


@app.command(name="export-openlineage", epilog=EXIT_CODES_HELP)
def export_openlineage(
    run_ids: Annotated[list[str] | None, typer.Argument(
        help="Runs to export (full or short ids); default: every run.", show_default=False,
    )] = None,
    out_path: Annotated[Path, typer.Option(
        "--out", "-o", help="The JSON lines file to write; `-` for standard output.",
    )] = Path("-"),
    db: Db = DEFAULT_DB,
    json_output: Json = False,
) -> None:
    """The runs as OpenLineage run events (START, then COMPLETE, FAIL or ABORT), in JSON lines."""
    with _reported(json_output=json_output), open_store(db, read_only=True) as storage:
        chosen = None if not run_ids else [q.resolve_run_id(storage, r) for r in run_ids]
        events = store_events(storage, chosen)
    lines = "".join(to_json_lines(events))
    n_runs = len({e["run"]["runId"] for e in events})
    if str(out_path) == "-":
        print(lines, end="")
        return
    try:
        out_path.write_text(lines, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {out_path}: {exc.strerror or exc}", ExitCode.USAGE,
              json_output=json_output)
    if json_output:
        out.print_json({"out": str(out_path), "events": len(events), "runs": n_runs})
    else:
        out.stdout().print(f"wrote {len(events)} OpenLineage events of {n_runs} runs to {out_path}")


@app.command(epilog=EXIT_CODES_HELP)
def demo(
    db: Db = DEFAULT_DB,
    force: Annotated[bool, typer.Option(
        "--force", help="Add the demo's runs to an existing store (nothing is deleted).",
    )] = False,
    seed: Annotated[int, typer.Option(help="The seed the demo data comes from.")] = 7,
    json_output: Json = False,
) -> None:
    """Build a demo store: a small egregora pipeline, then its runs and integrity report.

    Five runs through the public API, from a fixed seed: a chat of 3,000 messages ingested,
    an enrichment writing 300 documents, 150 annotations on them, a run that fails
    validation and writes nothing, and a run that is rolled back.
    """
    # Only this command loads the demo's data generators.
    from egregora.database.cli.demo import print_demo, run_demo  # noqa: PLC0415

    if _exists(db) and not force:
        _fail(f"{db} already exists; pass --force to add the demo's runs to it (nothing is "
              "deleted), or choose another --db", ExitCode.USAGE, json_output=json_output)
    with _reported(json_output=json_output), open_store(db, read_only=False) as storage:
        with out.stderr().status("playing the demo pipeline...", spinner="dots") if not \
                json_output else contextlib.nullcontext():
            summary = run_demo(storage, seed=seed)
        if json_output:
            out.print_json(summary.to_dict())
        else:
            store = RunStore(storage)
            runs = sorted((store.get_run(r) for r in summary.run_ids.values()),
                          key=lambda r: r.started_at, reverse=True)
            print_demo(summary, runs, q.rows_by_run(storage), db=db)
    if summary.report:
        raise typer.Exit(ExitCode.FAILED)


def main() -> None:
    """The console script."""
    app()
