"""One job in a fresh process: ``python -m benchmarks.worker JOB.json RESULT.json``.

A fresh process per measurement keeps contenders from sharing caches, allocator arenas or
imported state, and makes its peak RSS its own. The result file holds ``status`` ("ok" or
"failed"), the measurements, and on failure the error and the end of its traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

from benchmarks.measure import Window, lifetime_peak_bytes


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job as described by the suite and return its measurements."""
    if job["kind"] == "write":
        from benchmarks.contenders import WriteJob, contender

        write = WriteJob.from_dict(job)
        return contender(write.contender).run(write, Window())
    from benchmarks.workloads import WORKLOADS

    return WORKLOADS[job["kind"]](job)


def main(argv: list[str]) -> int:
    """Read the job, run it, write the result; the exit code says whether it ran."""
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    try:
        result: dict[str, Any] = {"status": "ok", **run_job(job)}
    except Exception as exc:
        lines = traceback.format_exception(exc)
        result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                  "traceback": "".join(lines)[-4000:]}
    result["process_peak_rss_mb"] = lifetime_peak_bytes() / 2**20
    result_path.write_text(json.dumps(result, default=str))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
