"""The reads ``egregora-db`` makes, over the public lineage and run API.

Run ids are UUIDv7, whose leading characters are the start time: runs started within a
minute share them. The short id people see and type is therefore the trailing characters
(:func:`egregora.database.cli.output.short_id`), and :func:`resolve_run_id` accepts a unique
prefix or suffix.
"""

from __future__ import annotations

import contextlib
import re
import uuid

import ibis
import typer

from egregora.database.backends.base import StorageManager
from egregora.database.errors import RunNotFoundError
from egregora.database.model import RUN_ID, RUNS_TABLE
from egregora.database.runs.lineage import lineage_tables, parent_chain, rows_per_run
from egregora.database.runs.store import Run, RunStore
from egregora.database.schemas import RunStatus

#: The fewest characters of a run id that ``resolve_run_id`` looks up.
MIN_ABBREVIATION = 4


def resolve_run_id(storage: StorageManager, text: str) -> str:
    """The full run id that ``text`` names: a full id, or a unique prefix or suffix.

    Raises:
        RunNotFoundError: no run matches, or ``text`` cannot be a run id.
        typer.BadParameter: several runs match (a usage error).
    """
    text = text.strip().lower()
    with contextlib.suppress(ValueError):
        return str(uuid.UUID(text))
    if len(text) < MIN_ABBREVIATION or not re.fullmatch(r"[0-9a-f-]+", text):
        raise RunNotFoundError(
            f"{text!r} is not a run id: pass a UUID or the short id `runs` shows", run_id=text
        )
    runs = storage.table(RUNS_TABLE)
    ids = runs[RUN_ID].cast("string")
    found = storage.to_arrow(
        runs.filter(ids.startswith(text) | ids.endswith(text)).select(RUN_ID).limit(2)
    ).column(0).to_pylist()
    if not found:
        raise RunNotFoundError(f"no run id starts or ends with {text!r}", run_id=text)
    if len(found) > 1:
        raise typer.BadParameter(f"{text!r} matches several runs; give more characters")
    return str(found[0])


def rows_by_run(storage: StorageManager) -> dict[str, dict[str, int]]:
    """Rows each run wrote, per table (runs that wrote nothing are absent)."""
    counts: dict[str, dict[str, int]] = {}
    for row in storage.to_arrow(rows_per_run(storage)).to_pylist():
        counts.setdefault(str(row[RUN_ID]), {})[row["table"]] = int(row["rows"])
    return counts


def list_runs(
    storage: StorageManager,
    *,
    statuses: list[RunStatus] | None = None,
    name: str | None = None,
    limit: int = 20,
) -> list[Run]:
    """The newest runs, with the given statuses and name (``prefix*`` matches a prefix)."""
    expr = RunStore(storage).list_runs()
    if statuses:
        expr = expr.filter(expr.status.isin([str(s) for s in statuses]))
    if name:
        expr = expr.filter(
            expr.name.startswith(name[:-1]) if name.endswith("*") else expr.name == name
        )
    return [Run.from_row(r) for r in storage.to_arrow(expr.limit(limit)).to_pylist()]


def parents(storage: StorageManager, run_id: str) -> list[Run]:
    """The run's ancestors, nearest first."""
    chain = storage.to_arrow(parent_chain(storage, run_id).drop("depth")).to_pylist()
    return [Run.from_row(r) for r in chain][1:]


def children(storage: StorageManager, run_id: str) -> list[Run]:
    """The runs whose parent is the run, oldest first."""
    runs = storage.table(RUNS_TABLE)
    child = runs.filter(runs.parent_run_id == ibis.literal(run_id, type="uuid"))
    return [Run.from_row(r) for r in storage.to_arrow(child.order_by("started_at")).to_pylist()]


def table_counts(storage: StorageManager) -> dict[str, int]:
    """Rows in each lineage table."""
    return {
        t.name: int(storage.to_arrow(storage.table(t.name).count().as_table())[0][0].as_py())
        for t in lineage_tables(storage)
    }
