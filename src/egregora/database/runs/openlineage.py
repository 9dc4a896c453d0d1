"""The runs of a store as OpenLineage run events, so that Marquez or any OpenLineage consumer
can show them.

Each run becomes a START event at ``started_at`` and, once it has ended, one end event at
``ended_at``:

============  ==========  ================================================================
run status    end event   why
============  ==========  ================================================================
RUNNING       (none)      still running: only START
COMPLETED     COMPLETE    with its output datasets and their row counts
FAILED        FAIL        with an ``errorMessage`` facet holding the recorded error
CRASHED       FAIL        likewise: the process died without ending the run
CANCELLED     ABORT       stopped on purpose
ROLLED_BACK   ABORT       its rows were removed: consumers must not count its outputs as
                          produced (the store no longer holds them), so it is reported as
                          a run that did not take effect
============  ==========  ================================================================

The job is ``(namespace "egregora", run name)``; ``run.runId`` is the run id (a UUID, as the
spec requires); a run with a parent carries the ``parent`` facet; each lineage table the run
wrote rows to is an output dataset with the ``outputStatistics`` facet (``rowCount``). The
dataset namespace names the store (``duckdb://<absolute path>``), the dataset name is the
table (``main.<table>``).

The event builders are pure functions of recorded runs; :func:`store_events` reads a store
through the public lineage queries and applies them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from egregora.database.model import RUN_ID
from egregora.database.runs.lineage import rows_per_run
from egregora.database.runs.store import Run, RunStore
from egregora.database.schemas import RunStatus
from egregora.database.version import package_version

if TYPE_CHECKING:
    from egregora.database.store import Store

#: The job namespace of every egregora run.
JOB_NAMESPACE = "egregora"
#: The OpenLineage spec the events follow.
SPEC_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
RUN_EVENT_SCHEMA_URL = f"{SPEC_URL}#/$defs/RunEvent"
_FACETS_URL = "https://openlineage.io/spec/facets"
PARENT_FACET_SCHEMA_URL = f"{_FACETS_URL}/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet"
ERROR_FACET_SCHEMA_URL = (
    f"{_FACETS_URL}/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet"
)
ENGINE_FACET_SCHEMA_URL = (
    f"{_FACETS_URL}/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet"
)
JOB_TYPE_FACET_SCHEMA_URL = f"{_FACETS_URL}/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet"
OUTPUT_STATISTICS_SCHEMA_URL = (
    f"{_FACETS_URL}/1-0-2/OutputStatisticsOutputDatasetFacet.json"
    "#/$defs/OutputStatisticsOutputDatasetFacet"
)

#: The end event of each finished status (RUNNING runs have none).
END_EVENT_TYPES: Mapping[RunStatus, str] = {
    RunStatus.COMPLETED: "COMPLETE",
    RunStatus.FAILED: "FAIL",
    RunStatus.CRASHED: "FAIL",
    RunStatus.CANCELLED: "ABORT",
    RunStatus.ROLLED_BACK: "ABORT",
}


def producer_url() -> str:
    """The ``producer`` URI of the events: this package at its version."""
    return f"https://pypi.org/project/egregora-database/{package_version()}/"


def dataset_namespace(path: str) -> str:
    """The OpenLineage dataset namespace of a store.

    >>> dataset_namespace(":memory:")
    'duckdb://:memory:'
    >>> dataset_namespace("postgresql://egregora@db:5433/test (schema public)")
    'postgres://db:5433'
    """
    if "://" in path:
        # OpenLineage names PostgreSQL datasets by server: postgres://{host}:{port}.
        server = urlsplit(path.split(" ", 1)[0])
        return f"postgres://{server.hostname or 'localhost'}:{server.port or 5432}"
    where = path if path == ":memory:" else str(Path(path).resolve())
    return f"duckdb://{where}"


def _facet(schema_url: str, producer: str, **fields: Any) -> dict[str, Any]:
    return {"_producer": producer, "_schemaURL": schema_url, **fields}


def _event(
    run: Run,
    event_type: str,
    at: datetime,
    *,
    run_facets: Mapping[str, Any],
    outputs: list[dict[str, Any]],
    job_namespace: str,
    producer: str,
) -> dict[str, Any]:
    return {
        "eventType": event_type,
        "eventTime": at.isoformat(),
        "producer": producer,
        "schemaURL": RUN_EVENT_SCHEMA_URL,
        "run": {"runId": run.run_id, "facets": dict(run_facets)},
        "job": {
            "namespace": job_namespace,
            "name": run.name,
            "facets": {"jobType": _facet(JOB_TYPE_FACET_SCHEMA_URL, producer,
                                         processingType="BATCH", integration="EGREGORA",
                                         jobType="JOB")},
        },
        "inputs": [],
        "outputs": outputs,
    }


def run_events(
    run: Run,
    *,
    rows: Mapping[str, int],
    parent_name: str | None = None,
    store_namespace: str,
    job_namespace: str = JOB_NAMESPACE,
    producer: str | None = None,
) -> list[dict[str, Any]]:
    """The events of one run: START, then its end event if it has ended.

    Args:
        run: The recorded run.
        rows: Rows the run wrote, per table (tables with no rows are left out).
        parent_name: The name of the parent run (required when the run has one).
        store_namespace: The dataset namespace (:func:`dataset_namespace`).
        job_namespace: The job namespace.
        producer: The producer URI (:func:`producer_url` by default).
    """
    producer = producer or producer_url()
    facets: dict[str, Any] = {
        "processing_engine": _facet(ENGINE_FACET_SCHEMA_URL, producer,
                                    name="egregora.database", version=run.code_version),
    }
    if run.parent_run_id is not None:
        if parent_name is None:
            msg = f"run {run.run_id} has a parent; pass parent_name"
            raise ValueError(msg)
        facets["parent"] = _facet(
            PARENT_FACET_SCHEMA_URL, producer,
            run={"runId": run.parent_run_id},
            job={"namespace": job_namespace, "name": parent_name},
        )
    events = [_event(run, "START", run.started_at, run_facets=facets, outputs=[],
                     job_namespace=job_namespace, producer=producer)]
    end_type = END_EVENT_TYPES.get(run.status)
    if end_type is None or run.ended_at is None:
        return events
    end_facets = dict(facets)
    if end_type == "FAIL":
        end_facets["errorMessage"] = _facet(ERROR_FACET_SCHEMA_URL, producer,
                                            message=run.error or str(run.status),
                                            programmingLanguage="PYTHON")
    outputs = [
        {
            "namespace": store_namespace,
            "name": f"main.{table}",
            "facets": {},
            "outputFacets": {"outputStatistics": _facet(OUTPUT_STATISTICS_SCHEMA_URL, producer,
                                                        rowCount=int(count))},
        }
        for table, count in sorted(rows.items())
        if count
    ]
    events.append(_event(run, end_type, run.ended_at, run_facets=end_facets, outputs=outputs,
                         job_namespace=job_namespace, producer=producer))
    return events


def store_events(
    storage: Store,
    run_ids: Sequence[str] | None = None,
    *,
    job_namespace: str = JOB_NAMESPACE,
) -> list[dict[str, Any]]:
    """The events of the given runs (every run when None), in event-time order.

    Raises:
        RunNotFoundError: a run id names no run.
    """
    runs = RunStore(storage)
    if run_ids is None:
        chosen = [Run.from_row(r) for r in storage.to_arrow(runs.list_runs()).to_pylist()]
    else:
        chosen = [runs.get_run(r) for r in run_ids]
    counts: dict[str, dict[str, int]] = {}
    for row in storage.to_arrow(rows_per_run(storage)).to_pylist():
        counts.setdefault(str(row[RUN_ID]), {})[row["table"]] = int(row["rows"])
    names = {r.run_id: r.name for r in chosen}
    producer = producer_url()
    namespace = dataset_namespace(storage.location)
    timed: list[tuple[datetime, int, dict[str, Any]]] = []
    for run in chosen:
        parent = run.parent_run_id
        if parent is not None and parent not in names:
            names[parent] = runs.get_run(parent).name
        for order, event in enumerate(run_events(
            run, rows=counts.get(run.run_id, {}),
            parent_name=None if parent is None else names[parent],
            store_namespace=namespace, job_namespace=job_namespace, producer=producer,
        )):
            at = run.started_at if order == 0 else run.ended_at
            timed.append((at or run.started_at, order, event))
    timed.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in timed]


def to_json_lines(events: Iterable[Mapping[str, Any]]) -> Iterator[str]:
    """Each event as one line of JSON (with its newline)."""
    for event in events:
        yield json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"
