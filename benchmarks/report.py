"""The outputs of a run: ``results.json``, ``results.md`` and ``throughput.png``.

Targets (from the benchmark's issue) are judged here, from the results alone, so that the
Markdown report and the JSON file say the same thing. A target that the run did not measure
(a size not run, a workload not selected) is "not measured", never "met".
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LIBRARY = "library"
LIMIT = "raw_constrained"
PEERS = ("ibis_insert", "pandas_to_sql", "dlt")
WRITE_TARGET = 1.15
VALIDATION_TARGET = 0.15
STREAM_RSS_TARGET_MB = 2048
LINEAGE_TARGET_S = 0.1
LINEAGE_TARGET_ROWS = 10_000_000
STREAM_TARGET_ROWS = 10_000_000
POSTGRES_TARGET = 1.25


def _target(
    name: str, goal: str, measured: str, met: bool | None, note: str = ""
) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured,
            "verdict": "not measured" if met is None else ("met" if met else "missed"),
            "note": note}


def _cells(results: dict[str, Any], workload: str = "write") -> list[dict[str, Any]]:
    found = results.get(workload)
    return found if isinstance(found, list) else []


def _by_size(cells: list[dict[str, Any]]) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for cell in cells:
        out.setdefault(cell["rows"], {})[cell["contender"]] = cell
    return out


def _ok(cell: dict[str, Any] | None) -> bool:
    return bool(cell) and cell.get("status") == "ok"  # type: ignore[union-attr]


def _ratio(mine: dict[str, Any] | None, theirs: dict[str, Any] | None, key: str) -> str:
    """``mine``'s median ``key`` over ``theirs``, as text ("-" when unknown)."""
    a = (mine or {}).get("median", {}).get(key)
    b = (theirs or {}).get("median", {}).get(key)
    return f"{a / b:.2f}x" if a and b else "-"


def _write_targets(results: dict[str, Any]) -> Iterator[dict[str, Any]]:
    sizes = _by_size(_cells(results))
    for rows, cells in sorted(sizes.items()):
        lib, limit = cells.get(LIBRARY), cells.get(LIMIT)
        if _ok(lib) and _ok(limit):
            ratio = lib["median"]["seconds"] / limit["median"]["seconds"]  # type: ignore[index]
            cpu = _ratio(lib, limit, "cpu_seconds")
            yield _target(f"write {rows:,} rows", f"library <= {WRITE_TARGET}x raw constrained",
                          f"{ratio:.2f}x wall ({cpu} CPU)", ratio <= WRITE_TARGET)
        else:
            yield _target(f"write {rows:,} rows", f"library <= {WRITE_TARGET}x raw constrained",
                          "-", None)
        for peer in PEERS:
            cell = cells.get(peer)
            if not (_ok(lib) and _ok(cell)):
                reason = (cell or {}).get("reason", "not run")
                yield _target(f"vs {peer} {rows:,} rows", "library faster", "-", None, reason)
                continue
            ratio = cell["time_ratio_to_library"]  # type: ignore[index]
            cpu = _ratio(cell, lib, "cpu_seconds")
            note = "" if ratio > 1 else f"{peer} is {1 / ratio:.2f}x faster"
            yield _target(f"vs {peer} {rows:,} rows", "library faster",
                          f"{peer} takes {ratio:.2f}x the library's time ({cpu} CPU)",
                          ratio > 1, note)


def _postgres_target(results: dict[str, Any]) -> dict[str, Any]:
    pg = results.get("postgres", {})
    goal = f"library <= {POSTGRES_TARGET}x binary COPY"
    if pg.get("status") != "ok":
        return _target("PostgreSQL write", goal, "-", None,
                       f"{pg.get('status', 'not run')}: {pg.get('reason', '')}")
    copy = pg["copy"]
    ratio = copy["library_vs_adbc_copy"]
    cpu = copy["median_cpu_seconds"]
    cpu_ratio = (f"{cpu['library'] / cpu['adbc_copy']:.2f}x"
                 if cpu.get("adbc_copy") else "-")
    return _target(f"PostgreSQL write {copy['rows']:,} rows", goal,
                   f"{ratio:.2f}x wall ({cpu_ratio} client CPU)", ratio <= POSTGRES_TARGET,
                   "COPY through ADBC adbc_ingest into an identically constrained table")


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its verdict."""
    out = list(_write_targets(results))
    validation = results.get("validation", {})
    if validation.get("status") == "ok":
        share = validation["median"]["validate_to_insert"]
        rows = validation["median"]["rows"]
        out.append(_target(f"validation, {rows:,.0f} rows",
                           f"<= {VALIDATION_TARGET:.0%} of the insert it guards",
                           f"{share:.1%}", share <= VALIDATION_TARGET))
    else:
        out.append(_target("validation", f"<= {VALIDATION_TARGET:.0%} of the insert", "-", None,
                           validation.get("reason", "")))
    streamed = [c for c in _cells(results) if c["contender"] == LIBRARY and c["mode"] == "stream"
                and c["rows"] >= STREAM_TARGET_ROWS]
    if streamed and _ok(streamed[0]):
        peak = streamed[0]["median"]["peak_rss_mb"]
        out.append(_target(f"streaming {streamed[0]['rows']:,} rows", "peak RSS < 2 GB",
                           f"{peak:,.0f} MB", peak < STREAM_RSS_TARGET_MB))
    else:
        out.append(_target("streaming 10M rows", "peak RSS < 2 GB", "-", None,
                           "run --sizes full to measure"))
    lineage = results.get("lineage", {})
    if lineage.get("status") == "ok":
        rows = int(lineage["median"]["rows"])
        at_target = rows >= LINEAGE_TARGET_ROWS
        for name, query in lineage["median"]["queries"].items():
            seconds = query["seconds"]
            out.append(_target(
                f"lineage {name}, {rows:,} rows", f"< {LINEAGE_TARGET_S * 1e3:.0f} ms",
                f"{seconds * 1e3:.1f} ms", (seconds < LINEAGE_TARGET_S) if at_target else None,
                "" if at_target else "target applies to a 10M-row store (--sizes full)",
            ))
    out.append(_postgres_target(results))
    return out


# --- Markdown --------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _write_table(cells: list[dict[str, Any]]) -> list[str]:
    rows = []
    for cell in cells:
        if cell["status"] != "ok":
            rows.append([cell["label"], cell["status"], "", "", "", "", "", "", "",
                         cell.get("reason", "")])
            continue
        m = cell["median"]
        ratio, cpu = cell.get("time_ratio_to_library"), cell.get("cpu_ratio_to_library")
        rows.append([
            cell["label"], _fmt(m["rows_per_s"]), _fmt(m["mb_per_s"], ",.1f"),
            _fmt(m["us_per_row"], ",.1f"), _fmt(m["peak_rss_mb"]), _fmt(m["rss_growth_mb"]),
            "-" if ratio is None else f"{ratio:.2f}x", _fmt(m.get("cpu_seconds"), ",.2f"),
            "-" if cpu is None else f"{cpu:.2f}x", f"{cell['reps']} rep(s)",
        ])
    return _table(["contender", "rows/s", "MB/s", "µs/row", "peak RSS MB", "RSS growth MB",
                   "time vs library", "CPU s", "CPU vs library", "note"], rows)


_PHASES = ("read_and_regroup", "check_run", "conform", "validate", "insert", "commit", "other")


def _phases(cells: list[dict[str, Any]]) -> list[str]:
    rows = []
    for cell in cells:
        if cell["contender"] != LIBRARY or cell["status"] != "ok" or "phases" not in cell["median"]:
            continue
        total = cell["median"]["seconds"]
        phases = cell["median"]["phases"]
        shown = [f"{phases[k]:.3f} s ({phases[k] / total:.0%})" if k in phases else "-"
                 for k in _PHASES]
        rows.append([f"{cell['rows']:,}" + (f" in {cell['batches']:,} writes"
                                             if "batches" in cell else ""),
                     f"{total:.3f} s", *shown])
    if not rows:
        return []
    return ["", "Where the library's time goes (medians of wall time per phase; 'other' is "
            "the heartbeat, registering the batch and BEGIN):", "",
            *_table(["rows", "total", *(k.replace("_", " ") for k in _PHASES)], rows)]


def _scaling(cells: list[dict[str, Any]]) -> list[str]:
    by_contender: dict[str, list[tuple[int, float]]] = {}
    for cell in cells:
        if cell["status"] == "ok":
            by_contender.setdefault(cell["label"], []).append(
                (cell["rows"], cell["median"]["us_per_row"]))
    rows = []
    for label, points in by_contender.items():
        points.sort()
        if len(points) > 1:
            growth = points[-1][1] / points[0][1]
            rows.append([label, " → ".join(f"{us:.1f}" for _, us in points), f"{growth:.2f}x"])
    if not rows:
        return []
    sizes = sorted({c["rows"] for c in cells})
    return ["", f"Cost per row (µs) over {', '.join(f'{s:,}' for s in sizes)} rows:", "",
            *_table(["contender", "µs/row by size", "largest/smallest"], rows)]


def _small(results: dict[str, Any]) -> list[str]:
    cells = _cells(results, "small_batches")
    if not cells:
        return []
    first = cells[0]
    rows = []
    for cell in cells:
        if cell["status"] != "ok":
            rows.append([cell["label"], cell["status"], "", "", "", "", cell.get("reason", "")])
            continue
        m, ratio = cell["median"], cell.get("time_ratio_to_library")
        cpu = cell.get("cpu_ratio_to_library")
        rows.append([cell["label"], _fmt(m["rows_per_s"]), _fmt(m["ms_per_batch"], ".2f"),
                     "-" if ratio is None else f"{ratio:.2f}x",
                     _fmt(m.get("cpu_seconds", 0) / cell["batches"] * 1e3, ".1f"),
                     "-" if cpu is None else f"{cpu:.2f}x", f"{cell['reps']} rep(s)"])
    return ["", f"## Many small batches ({first['batches']:,} batches of "
            f"{first['batch_rows']} rows, one run; each write its own call and transaction)", "",
            *_table(["contender", "rows/s", "ms/batch", "time vs library", "CPU ms/batch",
                     "CPU vs library", "note"], rows),
            *_phases(cells)]


def _validation(results: dict[str, Any]) -> list[str]:
    v = results.get("validation", {})
    if v.get("status") != "ok":
        return ["", "## Validation", "", f"{v.get('status', 'not run')}: {v.get('reason', '')}"]
    m = v["median"]
    return ["", f"## Validation cost ({m['rows']:,.0f} rows, one batch, medians of "
            f"{v['reps']} process(es))", "",
            *_table(["step", "seconds", "share of the insert"], [
                ["insert (the library's statement)", f"{m['insert_seconds']:.3f}", "100%"],
                ["validate_batch (warm)", f"{m['validate_seconds']:.3f}",
                 f"{m['validate_to_insert']:.1%}"],
                ["validate_batch (first in process)", f"{m['validate_cold_seconds']:.3f}",
                 f"{m['validate_cold_seconds'] / m['insert_seconds']:.1%}"],
                ["conform", f"{m['conform_seconds']:.3f}", f"{m['conform_to_insert']:.1%}"],
            ])]


def _lineage(results: dict[str, Any]) -> list[str]:
    v = results.get("lineage", {})
    if v.get("status") != "ok":
        return ["", "## Lineage queries", "",
                f"{v.get('status', 'not run')}: {v.get('reason', '')}"]
    m = v["median"]
    rows = [[name, f"{q['answer_rows']:,}", f"{q['cold_seconds'] * 1e3:.1f}",
             f"{q['seconds'] * 1e3:.1f}", f"{q['raw_seconds'] * 1e3:.1f}"]
            for name, q in m["queries"].items()]
    return ["", f"## Lineage queries ({m['rows']:,.0f} rows in {m['runs']:.0f} runs of "
            f"{m['rows_per_run']:,.0f}; store built in {m['build_seconds']:.1f} s, "
            f"{m['db_mb']:,.0f} MB on disk)", "",
            *_table(["query", "answer rows", "cold ms", "warm ms (median)", "raw SQL warm ms"],
                    rows),
            "", f"Rollback of one {m['rows_per_run']:,.0f}-row run on this store: "
            f"{m['rollback_seconds']:.2f} s."]


def _rollback(results: dict[str, Any]) -> list[str]:
    v = results.get("rollback", {})
    if v.get("status") != "ok":
        return ["", "## Rollback", "", f"{v.get('status', 'not run')}: {v.get('reason', '')}"]
    m = v["median"]
    return ["", f"## Rollback of a {m['run_rows']:,.0f}-row run", "",
            *_table(["operation", "seconds (median)"], [
                ["RunStore.rollback_run", f"{m['rollback_seconds']:.3f}"],
                ["raw DELETE ... WHERE run_id = ?", f"{m['raw_delete_seconds']:.3f}"],
            ])]


_PG_PATHS = (
    ("library", "egregora.database (PostgresStorageManager.write)"),
    ("adbc_copy", "binary COPY via ADBC adbc_ingest (baseline)"),
    ("encoded_copy", "binary COPY of the library's pre-encoded stream (floor)"),
)


def _postgres(results: dict[str, Any]) -> list[str]:
    pg = results.get("postgres", {})
    if pg.get("status") != "ok":
        return ["", "## PostgreSQL", "", f"{pg.get('status', 'not run')}: {pg.get('reason', '')}"]
    copy, procs = pg["copy"], pg["concurrency"]
    medians, cpu = copy["median_seconds"], copy["median_cpu_seconds"]
    paths = [
        [label, f"{medians[key]:.3f}", _fmt(copy["rows_per_second"][key]),
         f"{medians[key] / medians['adbc_copy']:.2f}x", f"{cpu[key]:.3f}",
         _fmt(copy["median_peak_rss_mb"][key]), _fmt(copy["median_rss_growth_mb"][key])]
        for key, label in _PG_PATHS
    ]
    ratio = copy["library_vs_adbc_copy"]
    verdict = "met" if ratio <= POSTGRES_TARGET else "missed"
    one = procs["1_process"]
    writers = [
        [str(figures["processes"]), f"{figures['rows_per_process']:,}",
         f"{figures['wall_seconds']:.3f}", _fmt(figures["rows_per_second"]),
         f"{figures['rows_per_second'] / one['rows_per_second']:.2f}x",
         _fmt(figures["max_writer_peak_rss_mb"])]
        for figures in (one, procs[f"{pg['processes']}_process"])
    ]
    peak = pg.get("process_peak_rss_mb")
    return [
        "", f"## PostgreSQL ({copy['rows']:,} rows; server {pg['server_version']}, "
        f"{pg['server']})", "",
        f"Library vs COPY: medians of {copy['repeats']} alternated repetition(s) in one "
        "process, each into a freshly truncated table with the declared constraints; CPU is "
        "the client's (the server's work is not in it); RSS growth is over the timed call"
        + (f"; the measuring process peaked at {peak:,.0f} MB." if peak else "."), "",
        *_table(["path", "median s", "rows/s", "vs COPY", "client CPU s", "peak RSS MB",
                 "RSS growth MB"], paths),
        "", f"Library / COPY: **{ratio:.2f}x** (target library <= {POSTGRES_TARGET}x COPY: "
        f"{verdict}); library / pre-encoded COPY: {copy['library_vs_encoded_copy']:.2f}x.",
        "", f"Concurrent writers: {procs['rows']:,} rows written by 1 process, then split over "
        f"{pg['processes']} processes writing at once (each its own run, in writes of at "
        f"most {procs['batch_rows']:,} rows), timed from a common start to the last one done, on "
        f"{pg['cpus']} CPUs shared with the server:", "",
        *_table(["processes", "rows each", "wall s", "total rows/s", "vs 1 process",
                 "largest writer's peak RSS MB"], writers),
        "", f"{pg['processes']} processes vs 1: **{procs['speedup']:.2f}x** total rows/s.",
    ]


def markdown(results: dict[str, Any]) -> str:
    """The report as Markdown."""
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    versions = meta.get("versions", {})
    lines = [
        f"# egregora.database benchmarks ({meta.get('preset', '?')})", "",
        f"Run at {meta.get('started_at', '?')} in {meta.get('seconds', 0):.0f} s on "
        f"{machine.get('cpus')} CPUs / {_fmt(machine.get('memory_gb'), '.0f')} GB "
        f"(load {_fmt((machine.get('load_before') or [None])[0], '.1f')} before, "
        f"{_fmt((machine.get('load_after') or [None])[0], '.1f')} after), commit "
        f"{meta.get('commit')}; duckdb {versions.get('duckdb')}, ibis "
        f"{versions.get('ibis-framework')}, pyarrow {versions.get('pyarrow')}, dlt "
        f"{versions.get('dlt')}, SQLAlchemy {versions.get('sqlalchemy')}.",
        "",
        "Times are medians of alternated repetitions, each contender in a fresh process and "
        "database file; 'time vs library' is the contender's wall time over the library's "
        "(above 1 the library is faster), 'CPU vs library' the same for CPU time (user + "
        "system, all threads), which other work on a shared machine disturbs far less. MB/s "
        "counts the Arrow bytes of the documents handed over. Target verdicts use wall time.",
        *[f"\nMerged in: {', '.join(m['workloads'])} from a run at "
          f"{m['started_at']} ({m['seconds']:.0f} s, load "
          f"{_fmt((m['machine'].get('load_before') or [None])[0], '.1f')})."
          for m in meta.get("merged", [])],
        "", "## Targets", "",
        *_table(["target", "goal", "measured", "verdict", "note"],
                [[t["target"], t["goal"], t["measured"], t["verdict"], t["note"]]
                 for t in results.get("targets", [])]),
    ]
    cells = _cells(results)
    for rows, by_name in sorted(_by_size(cells).items()):
        mode = next(iter(by_name.values()))["mode"]
        lines += ["", f"## Bulk write, {rows:,} rows ({mode})", "",
                  *_write_table(list(by_name.values()))]
    lines += _phases(cells) + _scaling(cells)
    lines += _small(results) + _validation(results) + _lineage(results) + _rollback(results)
    lines += _postgres(results)
    return "\n".join(lines) + "\n"


# --- the plot --------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and cost per row against rows, one line per contender, log-x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = {}
    for cell in _cells(results):
        if cell["status"] == "ok":
            m = cell["median"]
            series.setdefault(cell["label"], []).append(
                (cell["rows"], m["rows_per_s"], m["us_per_row"]))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 9), sharex=True)
    for label, points in series.items():
        points.sort()
        xs = [p[0] for p in points]
        style = {"linewidth": 2.5, "color": "black"} if label == "egregora.database" else {}
        top.plot(xs, [p[1] for p in points], marker="o", label=label, **style)
        bottom.plot(xs, [p[2] for p in points], marker="o", label=label, **style)
    top.set(xscale="log", yscale="log", ylabel="rows per second",
            title="Bulk write of egregora documents (DuckDB file)")
    bottom.set(xscale="log", yscale="log", xlabel="rows written", ylabel="µs per row")
    for ax in (top, bottom):
        ax.grid(True, which="both", alpha=0.3)
    if series:
        top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Judge the targets and write the three files into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "throughput.png"}
    if importlib.util.find_spec("matplotlib") is None:
        results.setdefault("meta", {})["plot"] = (
            "not written: matplotlib is not installed (pip install 'egregora-database[bench]')"
        )
        del paths["png"]
    else:
        results.setdefault("meta", {})["plot"] = paths["png"].name
        plot(results, paths["png"])
    paths["json"].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(results))
    return paths
