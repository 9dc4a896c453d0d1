"""The benchmark suite at its smoke size, so that it never rots.

Runs the documented command (``python -m benchmarks run --sizes smoke``) and checks what it
promises: the three output files, every contender and workload either measured or skipped
with a reason, and every measured write complete; the PostgreSQL workload is measured when the
test server answers (it must under ``CI=true``) and leaves none of its schemas behind. No
timing is asserted: the machine is shared and the figures are the suite's business, not the
test's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.pg import unreachable as pg_unreachable
from tests.pg import url as pg_url

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ``benchmarks`` package, imported from the repository root."""
    monkeypatch.syspath_prepend(str(REPO))
    import benchmarks.contenders
    import benchmarks.data

    return benchmarks


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One smoke run of the suite: its output directory and its results."""
    out = tmp_path_factory.mktemp("bench-out")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--sizes", "smoke", "--out", str(out),
         "--data-dir", str(tmp_path_factory.mktemp("bench-data"))],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_smoke_writes_the_three_files(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# egregora.database benchmarks (smoke)")
    assert "## Targets" in markdown
    assert "## Bulk write, 1,000 rows (table)" in markdown
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "throughput.png").read_bytes().startswith(PNG_MAGIC)
    else:
        assert not (out / "throughput.png").exists()
        assert "matplotlib" in results["meta"]["plot"]
    assert results["meta"]["preset"] == "smoke"


def test_every_contender_ran_or_says_why_not(smoke: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke
    from_suite = {c["contender"] for c in results["write"]}
    assert from_suite == set(results["meta"]["plan"]["contenders"])
    assert {"library", "raw_constrained", "raw_floor", "ibis_insert", "pandas_to_sql",
            "dlt"} <= from_suite
    for cell in results["write"] + results["small_batches"]:
        assert cell["status"] in {"ok", "skipped"}, cell
        if cell["status"] == "skipped":
            assert cell["reason"], cell
        else:
            assert cell["reps"] == len(cell["runs"]) >= 1
            assert all(run["rows_written"] == cell["rows"] for run in cell["runs"])
            assert cell["median"]["rows_per_s"] > 0
            assert cell["median"]["peak_rss_mb"] > 0
    written = {c["contender"]: c for c in results["write"]}
    # The library and DuckDB's own inserts need nothing beyond the project's dependencies.
    for name in ("library", "raw_constrained", "raw_floor", "ibis_insert"):
        assert written[name]["status"] == "ok", written[name]
    for name, module in (("dlt", "dlt"), ("pandas_to_sql", "sqlalchemy")):
        if importlib.util.find_spec(module) is None:
            assert written[name]["reason"].startswith("not installed"), written[name]
        else:
            assert written[name]["status"] == "ok", written[name]
    assert set(written["library"]["median"]["phases"]) >= {"conform", "validate"}


def test_every_workload_ran_or_says_why_not(smoke: tuple[Path, dict[str, Any]]) -> None:
    _, results = smoke
    for name in ("validation", "lineage", "rollback"):
        assert results[name]["status"] == "ok", results[name]
    assert results["validation"]["median"]["validate_seconds"] > 0
    queries = results["lineage"]["median"]["queries"]
    assert set(queries) == {"rows_of_run_count", "rows_of_run_ids", "rows_of_run_fetch",
                            "provenance", "rows_per_run"}
    per_run = results["lineage"]["median"]["rows_per_run"]
    assert queries["rows_of_run_count"]["answer_rows"] == per_run
    assert queries["rows_of_run_fetch"]["answer_rows"] == per_run
    assert queries["provenance"]["answer_rows"] == 1
    # The smoke store holds one pair of runs: one rolled back, one deleted by raw SQL.
    rollback = results["rollback"]["median"]
    assert rollback["rows_left"] == 0
    verdicts = {t["verdict"] for t in results["targets"]}
    assert verdicts <= {"met", "missed", "not measured"}


def test_postgres_is_measured_when_the_server_answers(smoke: tuple[Path, dict[str, Any]]) -> None:
    out, results = smoke
    pg = results["postgres"]
    markdown = (out / "results.md").read_text()
    [target] = [t for t in results["targets"] if t["target"].startswith("PostgreSQL write")]
    reason = pg_unreachable()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the PostgreSQL workload must run)", pytrace=False)
        assert pg["status"] == "skipped", pg
        assert "unreachable" in pg["reason"]
        assert target["verdict"] == "not measured"
        assert f"## PostgreSQL\n\nskipped: {pg['reason']}" in markdown
        return
    assert pg["status"] == "ok", pg
    rows, reps = results["meta"]["plan"]["postgres"], results["meta"]["plan"]["reps"]
    copy, procs = pg["copy"], pg["concurrency"]
    assert copy["rows"] == procs["rows"] == rows == 2_000
    for path in ("library", "adbc_copy", "encoded_copy"):
        assert len(copy["seconds"][path]) == copy["repeats"] == reps
        assert copy["rows_per_second"][path] == pytest.approx(
            rows / copy["median_seconds"][path])
    assert copy["library_vs_adbc_copy"] == pytest.approx(
        copy["median_seconds"]["library"] / copy["median_seconds"]["adbc_copy"])
    one, four = procs["1_process"], procs["4_process"]
    assert (one["processes"], one["rows"], len(one["writer_seconds"])) == (1, rows, 1)
    assert (four["processes"], four["rows"], len(four["writer_seconds"])) == (4, rows, 4)
    assert four["rows_per_process"] == rows // 4
    assert procs["speedup"] == pytest.approx(four["rows_per_second"] / one["rows_per_second"])
    assert target["verdict"] in {"met", "missed"}
    assert target["target"] == f"PostgreSQL write {rows:,} rows"
    assert f"## PostgreSQL ({rows:,} rows;" in markdown
    assert f"4 processes vs 1: **{procs['speedup']:.2f}x**" in markdown
    # The schemas it worked in were dropped at its end.
    schemas = copy["schemas"] + procs["schemas"]
    assert len(set(schemas)) == 3
    with psycopg.connect(pg_url()) as con:
        left = con.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", [schemas]
        ).fetchall()
    assert left == []


def test_rows_are_reproducible_and_fit_the_declaration(bench: Any) -> None:
    data = bench.data
    corpus = data.make_corpus(7)
    first = data.generate_batch(3, seed=7, corpus=corpus, rows=500)
    again = data.generate_batch(3, seed=7, corpus=data.make_corpus(7), rows=500)
    assert first.equals(again)
    assert not first.equals(data.generate_batch(4, seed=7, corpus=corpus, rows=500))
    assert first.schema == data.documents_schema()
    lengths = first.column("content").to_pylist()
    assert all(200 <= len(text) <= 2000 for text in lengths)
    ids = first.column("id").to_pylist()
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(json.loads(v)["tokens"] >= 10 for v in first.column("extensions").to_pylist())


def test_the_floor_table_has_the_columns_but_no_constraint(bench: Any) -> None:
    from egregora.database.schemas import DOCUMENTS_SCHEMA

    sql = bench.contenders.floor_table_sql()
    for word in ("PRIMARY KEY", "FOREIGN KEY", "CHECK", "NOT NULL", "REFERENCES"):
        assert word not in sql
    assert all(f'"{name}"' in sql for name in DOCUMENTS_SCHEMA.column_names)
    assert '"id" UUID' in sql
    assert '"extensions" JSON' in sql


def test_merge_replaces_only_what_was_run_again(bench: Any) -> None:
    from benchmarks.__main__ import merge

    def cell(rows: int, name: str, seconds: float) -> dict[str, Any]:
        return {"rows": rows, "contender": name, "seconds": seconds}

    old = {"write": [cell(10, "library", 1.0), cell(10, "dlt", 2.0)],
           "lineage": {"status": "ok", "rows": 10}, "rollback": {"status": "ok"},
           "meta": {"preset": "default"}}
    new = {"write": [cell(10, "dlt", 3.0), cell(99, "library", 4.0)],
           "lineage": {"status": "ok", "rows": 99}, "rollback": {"status": "failed"},
           "meta": {"preset": "custom"}}
    merged = merge(old, new, ("write", "lineage"))
    assert merged["write"] == [cell(10, "library", 1.0), cell(10, "dlt", 3.0),
                               cell(99, "library", 4.0)]
    assert merged["lineage"]["rows"] == 99
    assert merged["rollback"] == {"status": "ok"}
    assert merged["meta"]["preset"] == "default"
    assert merged["meta"]["merged"] == [{"workloads": ["write", "lineage"], "preset": "custom"}]
