"""The benchmark plan and its execution: which jobs run, in which order, how often.

Contenders are alternated (the order rotates with each repetition) and every figure is the
median of the repetitions, so that a machine shared with other work shifts all contenders
alike; the ratios between contenders are the result, absolute times only their context.
"""

from __future__ import annotations

import dataclasses
import datetime as dt_mod
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import data
from benchmarks.contenders import CONTENDERS, Contender

REPO = Path(__file__).resolve().parent.parent
LIBRARY = "library"
WORKLOADS = ("write", "small_batches", "validation", "lineage", "rollback", "postgres")
_JOB_TIMEOUT = 4 * 3600
_PACKAGES = ("egregora-database", "duckdb", "ibis-framework", "sqlglot", "pyarrow", "pandera",
             "pandas", "numpy", "dlt", "sqlalchemy", "duckdb-engine", "matplotlib", "psutil")


@dataclass(frozen=True)
class Plan:
    """What one invocation measures.

    Attributes:
        preset: The name of the size set.
        sizes: Row counts of the bulk-write workload.
        reps: Repetitions of every measurement below ``stream_from`` rows.
        stream_from: Sizes from this many rows are written as a stream of batches, and
            measured once (they take minutes).
        stream_batch_rows: Rows per batch of a stream read from the Parquet file.
        slow_reps: Repetitions of a slow peer (``Contender.slow``) above the smallest size.
        small_batches: (batches, rows per batch) of the many-small-batches workload.
        validation_rows: Rows of the batch whose validation is timed.
        lineage: (rows, runs) of the store the lineage queries run on.
        rollback: (rows per run, pairs of runs) of the rollback workload.
        postgres: Rows of the PostgreSQL workload: written by the library and by a binary
            COPY (``reps`` alternated repetitions), then by one process and by four.
        isolation: ``"process"`` (a fresh process per job, for honest RSS) or ``"inline"``
            (jobs in this process; for the smoke size, where start-up would dominate).
        repeats: Warm repetitions of a query or validation inside one process.
        small_batch_reps: Repetitions of the many-small-batches workload (the library's
            1,000 writes take minutes).
        caps: Row caps per contender overriding the contenders' own.
        ids: ``"v7"`` (time-ordered ids) or ``"random"``.
        contenders: Names of the contenders to run (all by default).
        workloads: Names of the workloads to run (all by default).
    """

    preset: str
    sizes: tuple[int, ...]
    reps: int
    stream_from: int
    small_batches: tuple[int, int]
    validation_rows: int
    lineage: tuple[int, int]
    rollback: tuple[int, int]
    postgres: int
    isolation: str = "process"
    repeats: int = 5
    small_batch_reps: int = 1
    stream_batch_rows: int = 50_000
    slow_reps: int = 1
    caps: dict[str, int | None] = field(default_factory=dict)
    ids: str = "v7"
    contenders: tuple[str, ...] = tuple(c.name for c in CONTENDERS)
    workloads: tuple[str, ...] = WORKLOADS

    @property
    def max_rows(self) -> int:
        """Rows the data file must hold."""
        return max(
            *self.sizes, self.small_batches[0] * self.small_batches[1], self.validation_rows,
            self.lineage[0], self.rollback[0] * self.rollback[1] * 2, self.postgres,
        )

    def reps_for(self, rows: int, contender: Contender) -> int:
        """Repetitions of ``contender`` at ``rows``."""
        if rows >= self.stream_from:
            return 1
        if contender.slow and rows > min(self.sizes):
            return min(self.slow_reps, self.reps)
        return self.reps

    def cap(self, contender: Contender) -> int | None:
        """The largest size ``contender`` runs at."""
        return self.caps.get(contender.name, contender.max_rows)


PRESETS: dict[str, Plan] = {
    "smoke": Plan(
        "smoke", sizes=(1_000,), reps=1, stream_from=10_000_000, small_batches=(5, 100),
        validation_rows=1_000, lineage=(1_000, 2), rollback=(250, 1), postgres=2_000,
        isolation="inline", repeats=1,
    ),
    "default": Plan(
        "default", sizes=(10_000, 100_000, 1_000_000), reps=3, stream_from=10_000_000,
        small_batches=(1_000, 100), validation_rows=1_000_000, lineage=(1_000_000, 10),
        rollback=(100_000, 2), postgres=100_000,
    ),
    "full": Plan(
        "full", sizes=(10_000, 100_000, 1_000_000, 10_000_000), reps=3,
        stream_from=10_000_000, small_batches=(1_000, 100), validation_rows=1_000_000,
        lineage=(10_000_000, 100), rollback=(100_000, 2), postgres=1_000_000,
    ),
}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Runner:
    """Runs jobs in fresh processes (or inline), each in a fresh work directory."""

    def __init__(self, plan: Plan, parquet: Path, work_root: Path) -> None:
        self.plan = plan
        self.parquet = parquet
        self.work_root = work_root

    def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run ``job`` and return its result (``status`` "ok" or "failed")."""
        workdir = Path(tempfile.mkdtemp(prefix=f"{job['kind']}-", dir=self.work_root))
        job = {**job, "parquet": str(self.parquet), "workdir": str(workdir)}
        try:
            if self.plan.isolation == "inline":
                return self._inline(job)
            return self._process(job, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    @staticmethod
    def _inline(job: dict[str, Any]) -> dict[str, Any]:
        from benchmarks.worker import run_job

        try:
            return {"status": "ok", **run_job(job)}
        except Exception as exc:
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}

    @staticmethod
    def _process(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
        job_file, result_file = workdir / "job.json", workdir / "result.json"
        job_file.write_text(json.dumps(job))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        )}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.worker", str(job_file), str(result_file)],
                capture_output=True, text=True, env=env, timeout=_JOB_TIMEOUT, check=False,
            )
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"timed out after {_JOB_TIMEOUT} s"}
        if result_file.exists():
            result: dict[str, Any] = json.loads(result_file.read_text())
            return result
        return {"status": "failed",
                "error": f"worker exited {done.returncode}: {done.stderr[-2000:]}"}


# --- the workloads ------------------------------------------------------------------------------


def _median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def summarise(rows: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the repetitions of one contender at one size."""
    seconds = _median_of(runs, "seconds")
    out: dict[str, Any] = {
        "seconds": seconds,
        "cpu_seconds": _median_of(runs, "cpu_seconds"),
        "rows_per_s": rows / seconds,
        "mb_per_s": _median_of(runs, "input_bytes") / 1e6 / seconds,
        "us_per_row": seconds / rows * 1e6,
        "peak_rss_mb": _median_of(runs, "peak_rss_mb"),
        "rss_growth_mb": _median_of(runs, "rss_growth_mb"),
        "input_mb": _median_of(runs, "input_bytes") / 1e6,
    }
    phases = [r["phases"] for r in runs if r.get("phases")]
    if phases:
        out["phases"] = {k: statistics.median(p.get(k, 0.0) for p in phases) for k in phases[0]}
    return out


def _skip_reason(plan: Plan, c: Contender, *, rows: int, mode: str) -> str | None:
    """Why ``c`` does not run at ``rows`` in ``mode``, or None."""
    missing = c.missing()
    cap = plan.cap(c)
    if missing:
        return f"not installed: {', '.join(missing)} (pip install 'egregora-database[bench]')"
    if mode not in c.modes:
        return f"no {mode} mode: {c.mode_reason or 'n/a'}"
    if cap is not None and rows > cap:
        return f"above its cap of {cap:,} rows: {c.cap_reason}"
    return None


def _cells(
    plan: Plan, run: Callable[[dict[str, Any]], dict[str, Any]], *, rows: int, mode: str,
    batch_rows: int, contenders: Sequence[Contender], label: str,
) -> list[dict[str, Any]]:
    """Every contender at one size, alternated over the repetitions."""
    cells: dict[str, dict[str, Any]] = {
        c.name: {"rows": rows, "mode": mode, "contender": c.name, "label": c.label, "runs": []}
        for c in contenders
    }
    active = []
    for c in contenders:
        reason = _skip_reason(plan, c, rows=rows, mode=mode)
        if reason:
            cells[c.name].update(status="skipped", reason=reason)
        else:
            active.append(c)
    reps = max((plan.reps_for(rows, c) for c in active), default=0)
    for rep in range(reps):
        shift = rep % max(len(active), 1)
        for c in active[shift:] + active[:shift]:
            if rep >= plan.reps_for(rows, c):
                continue
            job = {"kind": "write", "contender": c.name, "rows": rows, "mode": mode,
                   "batch_rows": batch_rows}
            result = run(job)
            cells[c.name]["runs"].append(result)
            shown = (f"{result['seconds']:.2f} s, {rows / result['seconds']:,.0f} rows/s"
                     if result["status"] == "ok" else result.get("error", "failed"))
            log(f"{label} {rows:,} rep {rep + 1}/{reps} {c.name}: {shown}")
    for c in active:
        cell = cells[c.name]
        ok = [r for r in cell["runs"] if r["status"] == "ok"]
        wrong = [r for r in ok if r.get("rows_written") != rows]
        if not ok or wrong:
            failed = [r for r in cell["runs"] if r["status"] != "ok"]
            reason = (failed[0].get("error", "failed") if failed else
                      f"wrote {wrong[0].get('rows_written')} rows instead of {rows}")
            cell.update(status="failed", reason=reason)
            continue
        cell.update(status="ok", reps=len(ok), median=summarise(rows, ok))
    relate_to_library(list(cells.values()))
    return list(cells.values())


def relate_to_library(cells: list[dict[str, Any]]) -> None:
    """Set each ok cell's time and CPU ratios to the library's cell of the same size (and
    drop stale ones: results merged from two runs are related again)."""
    libraries = {c["rows"]: c for c in cells if c["contender"] == LIBRARY}
    for cell in cells:
        library = libraries.get(cell["rows"], {})
        for name in ("time", "cpu"):
            cell.pop(f"{name}_ratio_to_library", None)
            cell.pop(f"paired_{name}_ratio_to_library", None)
        if cell.get("status") != "ok" or library.get("status") != "ok":
            continue
        for key, name in (("seconds", "time"), ("cpu_seconds", "cpu")):
            mine, theirs = cell["median"][key], library["median"][key]
            cell[f"{name}_ratio_to_library"] = mine / theirs if theirs else None
            paired = [r[key] / lib[key]
                      for r, lib in zip(cell["runs"], library["runs"], strict=False)
                      if r["status"] == "ok" and lib["status"] == "ok" and lib[key]]
            cell[f"paired_{name}_ratio_to_library"] = (
                statistics.median(paired) if paired else None
            )


def run_write(plan: Plan, run: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """Workload 1: bulk writes at every size."""
    chosen = [c for c in CONTENDERS if c.name in plan.contenders]
    out: list[dict[str, Any]] = []
    for rows in plan.sizes:
        mode = "stream" if rows >= plan.stream_from else "table"
        out += _cells(plan, run, rows=rows, mode=mode, batch_rows=plan.stream_batch_rows,
                      contenders=chosen, label="write")
    return out


def run_small_batches(
    plan: Plan, run: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Workload 2: many small writes under one run."""
    batches, batch_rows = plan.small_batches
    chosen = [c for c in CONTENDERS if c.name in plan.contenders]
    no_caps = dataclasses.replace(plan, caps={c.name: None for c in chosen},
                                  reps=plan.small_batch_reps)
    cells = _cells(no_caps, run, rows=batches * batch_rows, mode="batches",
                   batch_rows=batch_rows, contenders=chosen, label="batches")
    for cell in cells:
        cell["batches"], cell["batch_rows"] = batches, batch_rows
        if cell["status"] == "ok":
            cell["median"]["ms_per_batch"] = cell["median"]["seconds"] / batches * 1e3
    return cells


def _repeated(
    plan: Plan, run: Callable[[dict[str, Any]], dict[str, Any]], job: dict[str, Any], reps: int
) -> dict[str, Any]:
    runs = []
    for rep in range(reps):
        result = run(job)
        runs.append(result)
        log(f"{job['kind']} rep {rep + 1}/{reps}: "
            + ("ok" if result["status"] == "ok" else result.get("error", "failed")))
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        return {"status": "failed", "reason": runs[0].get("error", "failed"), "runs": runs}
    numeric = {k for k, v in ok[0].items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    median = {k: statistics.median(r[k] for r in ok) for k in sorted(numeric)}
    return {"status": "ok", "reps": len(ok), "median": median, "runs": runs}


def run_validation(plan: Plan, run: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Workload 3: validation against the insert it guards."""
    job = {"kind": "validation", "rows": plan.validation_rows, "repeats": plan.repeats}
    return _repeated(plan, run, job, plan.reps)


def run_lineage(plan: Plan, run: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Workload 4: lineage queries on a store of many runs (built once)."""
    rows, runs = plan.lineage
    job = {"kind": "lineage", "rows": rows, "runs": runs, "repeats": plan.repeats}
    result = _repeated(plan, run, job, 1)
    if result["status"] == "ok":
        result["median"]["queries"] = result["runs"][0]["queries"]
    return result


def run_rollback(plan: Plan, run: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Workload 5: rollback of a run against a raw delete of the same size; the pairs of
    runs alternate inside one process, on one store."""
    run_rows, pairs = plan.rollback
    job = {"kind": "rollback", "run_rows": run_rows, "pairs": pairs}
    return _repeated(plan, run, job, 1)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def run_suite(plan: Plan, *, data_dir: Path, work_dir: Path | None = None) -> dict[str, Any]:
    """Generate (or reuse) the rows, run every workload of ``plan``, return the results."""
    from benchmarks.workload_postgres import run_postgres

    started = time.time()
    load_before = os.getloadavg()
    log(f"data: {plan.max_rows:,} rows (seed 0, ids {plan.ids}) in {data_dir}")
    parquet = data.ensure_dataset(data_dir, plan.max_rows, seed=0, ids=plan.ids)
    work_root = Path(tempfile.mkdtemp(prefix="egregora-bench-", dir=work_dir))
    run = Runner(plan, parquet, work_root)
    results: dict[str, Any] = {}
    steps: dict[str, Callable[[], Any]] = {
        "write": lambda: run_write(plan, run),
        "small_batches": lambda: run_small_batches(plan, run),
        "validation": lambda: run_validation(plan, run),
        "lineage": lambda: run_lineage(plan, run),
        "rollback": lambda: run_rollback(plan, run),
        "postgres": lambda: run_postgres(plan, parquet),
    }
    try:
        for name, step in steps.items():
            if name in plan.workloads:
                log(f"workload {name}")
                results[name] = step()
            else:
                results[name] = {"status": "skipped", "reason": "not selected (--workloads)"}
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    results["meta"] = {
        "preset": plan.preset,
        "plan": dataclasses.asdict(plan),
        "started_at": dt_mod.datetime.fromtimestamp(started, dt_mod.UTC).isoformat(),
        "seconds": time.time() - started,
        "seed": 0,
        "data_file": parquet.name,
        "rows_in_file": json.loads(parquet.with_suffix(".json").read_text())["rows"],
        "machine": {
            "cpus": os.cpu_count(), "memory_gb": _memory_gb(), "platform": platform.platform(),
            "python": platform.python_version(), "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "versions": _versions(),
        "commit": _commit(),
    }
    return results
