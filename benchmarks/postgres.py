"""Workload 6, PostgreSQL: the suite's extension point for the PostgreSQL backend.

The suite does not measure PostgreSQL yet. Two comparisons belong here, on the rows of
:mod:`benchmarks.data`, against the server of the test suite:

- the library's write into the declared ``documents`` table against a plain binary
  ``COPY documents FROM STDIN (FORMAT binary)`` of the same rows into the same table (the
  limit, as the raw constrained insert is for DuckDB);
- one writer process against four, each writing its own run, to show how far concurrent
  writers scale where DuckDB admits only one writing process per file.

:func:`run_postgres` is what the suite calls. Until it measures, it returns a skipped result
with its reason, so the report says so instead of leaving the workload out; where the
stand-alone script ``benchmarks/bench_postgres.py`` is present, the reason points to it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

REASON = "not measured by this suite: the PostgreSQL backend's benchmark is not wired in yet"
SCRIPT = "benchmarks.bench_postgres"


def run_postgres() -> dict[str, Any]:
    """The PostgreSQL workload's result: skipped, with the reason."""
    reason = REASON
    if importlib.util.find_spec(SCRIPT) is not None:
        reason += (f"; run `python -m {SCRIPT}` (needs the server) for library vs COPY and "
                   "1 vs N writers")
    return {"status": "skipped", "reason": reason}
