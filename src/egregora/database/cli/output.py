"""What ``egregora-db`` prints: Rich tables for people, plain dicts for ``--json``.

Consoles are made per call, so that they write to whatever ``sys.stdout`` is at that moment
(a test runner swaps it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.table import Table
from rich.text import Text

from egregora.database.errors import StorageError
from egregora.database.runs.audit import IntegrityReport
from egregora.database.runs.store import Run
from egregora.database.schemas import RunStatus

#: Failure rows shown under an error; the rest are counted.
SHOWN_FAILURES = 10

STATUS_STYLES = {
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
    RunStatus.CRASHED: "red",
    RunStatus.ROLLED_BACK: "magenta",
}


#: The width of tables written to a file or a pipe (Rich would use 80 columns).
PIPE_WIDTH = 120


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def stdout() -> Console:
    """A console on standard output."""
    return _console(stderr=False)


def stderr() -> Console:
    """A console on standard error."""
    return _console(stderr=True)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on standard output, unstyled."""
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def short_id(run_id: str) -> str:
    """The short form of a run id: its last 8 characters.

    Run ids are UUIDv7, whose leading characters are the start time, so runs started close
    together share their prefixes; the trailing characters are random.

    >>> short_id("01a217b1-a3e0-734f-824c-9ce9499b27f0")
    '499b27f0'
    """
    return run_id[-8:]


def format_time(at: datetime | None) -> str:
    """A UTC time to the second.

    >>> from datetime import UTC
    >>> format_time(datetime(2024, 3, 4, 8, 0, 5, 123, tzinfo=UTC))
    '2024-03-04 08:00:05'
    """
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M:%S")


def format_duration(duration: timedelta | None) -> str:
    """A duration for people.

    >>> format_duration(timedelta(seconds=0.4567))
    '0.46 s'
    >>> format_duration(timedelta(seconds=125))
    '2 min 5 s'
    """
    if duration is None:
        return "-"
    seconds = duration.total_seconds()
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def format_rows(rows: Mapping[str, int]) -> str:
    """Rows per table, one table a line.

    >>> print(format_rows({"messages": 3000, "documents": 12}))
    documents    12
    messages  3,000
    """
    if not rows:
        return "-"
    width = max(len(t) for t in rows)
    digits = max(len(f"{n:,}") for n in rows.values())
    return "\n".join(f"{t:<{width}} {n:>{digits},}" for t, n in sorted(rows.items()))


def status_text(status: RunStatus | str) -> Text:
    """A status, coloured."""
    return Text(str(status), style=STATUS_STYLES.get(RunStatus(status), ""))


def run_dict(run: Run, rows: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A run as JSON-ready values (``rows`` per table when given)."""
    out: dict[str, Any] = {
        "run_id": run.run_id, "name": run.name, "status": str(run.status),
        "config": dict(run.config), "config_hash": run.config_hash,
        "parent_run_id": run.parent_run_id, "code_version": run.code_version,
        "host": run.host, "pid": run.pid,
        "started_at": run.started_at.isoformat(),
        "ended_at": None if run.ended_at is None else run.ended_at.isoformat(),
        "duration_s": None if run.duration is None else run.duration.total_seconds(),
        "error": run.error,
        "purged_at": None if run.purged_at is None else run.purged_at.isoformat(),
    }
    if rows is not None:
        out["rows"] = dict(sorted(rows.items()))
    return out


def runs_table(runs: Sequence[Run], rows: Mapping[str, Mapping[str, int]], *, title: str) -> Table:
    """The runs, one a line: short id, name, parent, status, start, duration and rows per
    table."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("run")
    table.add_column("name")
    table.add_column("parent")
    table.add_column("status")
    table.add_column("started (UTC)")
    table.add_column("duration", justify="right")
    table.add_column("rows written")
    for run in runs:
        parent = "" if run.parent_run_id is None else short_id(run.parent_run_id)
        table.add_row(short_id(run.run_id), run.name, parent, status_text(run.status),
                      format_time(run.started_at), format_duration(run.duration),
                      format_rows(rows.get(run.run_id, {})))
    return table


def run_panel(run: Run, rows: Mapping[str, int] | None, chain: Sequence[Run]) -> Table:
    """One run in detail: identity, outcome, config, rows written (unless None) and parents."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("run id", run.run_id)
    table.add_row("name", run.name)
    table.add_row("status", status_text(run.status))
    table.add_row("started", format_time(run.started_at))
    table.add_row("ended", format_time(run.ended_at) or "-")
    table.add_row("duration", format_duration(run.duration))
    if run.purged_at is not None:
        table.add_row("purged", format_time(run.purged_at))
    table.add_row("config hash", run.config_hash)
    table.add_row("config", json.dumps(dict(run.config), indent=2, sort_keys=True))
    table.add_row("code", f"{run.code_version} on {run.host} (pid {run.pid})")
    if run.error:
        table.add_row("error", Text(run.error, style="red"))
    if rows is not None:
        table.add_row("rows written", format_rows(rows))
    table.add_row("parents", "\n".join(
        f"{'  ' * i}<- {p.name} {short_id(p.run_id)} ({p.status}, config {p.config_hash[:12]})"
        for i, p in enumerate(chain)
    ) or "-")
    return table


def report_table(report: IntegrityReport) -> Table | Text:
    """The integrity report: a green line when sound, else one line per problem."""
    if not report:
        return Text(str(report), style="green")
    table = Table(title="integrity: problems found", title_justify="left",
                  title_style="bold red", header_style="bold")
    for name in ("kind", "table", "count", "detail", "examples"):
        table.add_column(name, overflow="fold", justify="right" if name == "count" else "left")
    for problem in report.problems:
        table.add_row(problem.kind, problem.table, f"{problem.count:,}", problem.detail,
                      "\n".join(problem.examples))
    return table


def error_dict(exc: StorageError, exit_code: int) -> dict[str, Any]:
    """A library error as JSON-ready values, with its failure rows."""
    failures = exc.failures
    return {
        "error": {
            "type": type(exc).__name__, "message": str(exc), "table": exc.table,
            "columns": list(exc.columns), "run_id": exc.run_id,
            "failures": [] if failures is None else failures.to_pylist(),
        },
        "exit_code": exit_code,
    }


def failures_table(failures: pa.Table) -> Table:
    """At most :data:`SHOWN_FAILURES` rows of an error's ``failures``."""
    shown = failures.slice(0, SHOWN_FAILURES)
    table = Table(header_style="bold", title_justify="left",
                  title=f"offending rows ({failures.num_rows:,})")
    for name in shown.column_names:
        table.add_column(name, overflow="fold")
    for row in shown.to_pylist():
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    if failures.num_rows > SHOWN_FAILURES:
        table.caption = f"and {failures.num_rows - SHOWN_FAILURES:,} more"
    return table


def print_error(exc: StorageError) -> None:
    """A library error on standard error: red message, then its offending rows."""
    console = stderr()
    console.print(Text(f"error: {type(exc).__name__}: {exc}", style="red"), soft_wrap=True)
    if exc.failures is not None and exc.failures.num_rows:
        console.print(failures_table(exc.failures))


