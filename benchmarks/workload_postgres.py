"""Workload 6, PostgreSQL: the library's write against a plain binary COPY, and 1 writer
process against 4, on the server of the test suite.

The server is ``EGREGORA_TEST_POSTGRES_URL`` (default: the local ``test`` database). When it
does not answer, the workload is skipped with the reason, so the report says so instead of
leaving it out. When it answers, two comparisons of :mod:`benchmarks.postgres` run on
the first ``plan.postgres`` rows of the suite's Parquet file (:mod:`benchmarks.data`), with
``created_at`` stamped a day ahead (a row may not predate the run that writes it):

- ``copy``: ``PostgresStorageManager.write`` into the declared ``documents`` table against a
  binary COPY of the same rows (ADBC's ``adbc_ingest``) into an identically constrained
  table, and against the COPY of the library's own pre-encoded stream (the floor); ``reps``
  alternated repetitions, medians. The target is library <= 1.25x the ADBC COPY.
- ``concurrency``: the same rows written by one process, then split over four processes
  writing at once (each its own run, writes of :data:`BATCH_ROWS` rows), total rows/s each.

Each comparison works in schemas of its own, named uniquely and dropped at its end, also when
it fails. With ``plan.isolation == "process"`` the measurement runs in a fresh process
(``python -m benchmarks.workload_postgres``), whose peak RSS is then its own; inline otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from benchmarks.measure import lifetime_peak_bytes
from benchmarks.suite import REPO, log

if TYPE_CHECKING:
    from benchmarks.suite import Plan

URL = os.environ.get("EGREGORA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: Writer processes set against one.
PROCESSES = 4
#: Rows per write of each writer process.
BATCH_ROWS = 10_000
_TIMEOUT = 4 * 3600


def _redacted() -> str:
    from egregora.database.backends.postgres.errors import redact

    return redact(URL)


def unreachable() -> str | None:
    """Why the server cannot be used, or None when it answers."""
    try:
        with psycopg.connect(URL, connect_timeout=3) as con:
            con.execute("SELECT 1")
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"PostgreSQL server {_redacted()} unreachable: {first}"
    return None


def _server_version() -> str:
    with psycopg.connect(URL, connect_timeout=3) as con:
        found = con.execute("SHOW server_version").fetchone()
    return str(found[0]) if found else "?"


def measure(parquet: Path, rows: int, reps: int) -> dict[str, Any]:
    """Both comparisons on the first ``rows`` rows of ``parquet``: the workload's figures."""
    from benchmarks.postgres import compare_processes, compare_with_copy, suite_rows

    started = time.perf_counter()
    log(f"postgres: library vs COPY, {rows:,} rows, {reps} rep(s)")
    copy = compare_with_copy(rows, reps, table=suite_rows(parquet, rows))
    shown = ", ".join(f"{name} {rate:,.0f} rows/s" for name, rate in
                      copy["rows_per_second"].items())
    log(f"postgres: {shown}; library / COPY {copy['library_vs_adbc_copy']:.2f}x")
    log(f"postgres: {rows:,} rows by 1 process, then by {PROCESSES}")
    concurrency = compare_processes(rows, PROCESSES, BATCH_ROWS, parquet=parquet)
    log(f"postgres: {PROCESSES} processes vs 1: {concurrency['speedup']:.2f}x")
    return {
        "server": _redacted(),
        "server_version": _server_version(),
        "cpus": os.cpu_count(),
        "rows": rows,
        "reps": reps,
        "processes": PROCESSES,
        "batch_rows": BATCH_ROWS,
        "rows_from": "benchmarks.data (the suite's Parquet file), created_at a day ahead",
        "copy": copy,
        "concurrency": concurrency,
        "library_vs_copy": copy["library_vs_adbc_copy"],
        "speedup": concurrency["speedup"],
        "seconds": time.perf_counter() - started,
    }


def _failed(exc: BaseException) -> dict[str, Any]:
    return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}


def _in_process(parquet: Path, rows: int, reps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="postgres-") as work:
        result_file = Path(work) / "result.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.workload_postgres", str(parquet), str(rows),
                 str(reps), str(result_file)],
                stdout=subprocess.PIPE, text=True, env=env, timeout=_TIMEOUT, check=False,
            )  # its stderr (progress, errors) goes to ours
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"timed out after {_TIMEOUT} s"}
        if result_file.exists():
            result: dict[str, Any] = json.loads(result_file.read_text())
            return result
        return {"status": "failed", "reason": f"exited {done.returncode} without a result "
                f"(see its error output above): {done.stdout[-2000:]}"}


def run_postgres(plan: Plan, parquet: Path) -> dict[str, Any]:
    """The PostgreSQL workload's result: ``ok`` with its figures, ``skipped`` with the reason
    when the server does not answer, or ``failed`` with the error."""
    reason = unreachable()
    if reason is not None:
        log(f"postgres: skipped, {reason}")
        return {"status": "skipped", "reason": reason}
    if plan.isolation == "process":
        result = _in_process(parquet, plan.postgres, plan.reps)
    else:
        try:
            result = {"status": "ok", **measure(parquet, plan.postgres, plan.reps)}
        except Exception as exc:
            result = _failed(exc)
    if result["status"] != "ok":
        log(f"postgres: failed, {result['reason']}")
    return result


def main(argv: list[str]) -> int:
    """``python -m benchmarks.workload_postgres PARQUET ROWS REPS RESULT.json``: the measurement
    in a process of its own; the result file holds its figures and peak RSS, or the error."""
    parquet, rows, reps, result_path = Path(argv[0]), int(argv[1]), int(argv[2]), Path(argv[3])
    try:
        result = {"status": "ok", **measure(parquet, rows, reps)}
    except Exception as exc:
        result = _failed(exc)
    result["process_peak_rss_mb"] = lifetime_peak_bytes() / 2**20
    result_path.write_text(json.dumps(result, default=str))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
