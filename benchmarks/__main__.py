"""``python -m benchmarks run --sizes smoke|default|full --out benchmarks/results``.

Writes ``results.json``, ``results.md`` and ``throughput.png`` into ``--out``;
``python -m benchmarks report DIR`` rewrites the Markdown and the plot from a results file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.contenders import CONTENDER_NAMES
from benchmarks.suite import PRESETS, WORKLOADS, log, relate_to_library, run_suite


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "egregora-bench"


def _sizes(text: str) -> tuple[str, tuple[int, ...] | None]:
    if text in PRESETS:
        return text, None
    try:
        return "custom", tuple(int(s.replace("_", "")) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sizes takes {', '.join(PRESETS)} or row counts like 10000,100000"
        ) from None


def _cap(text: str) -> tuple[str, int | None]:
    name, _, rows = text.partition("=")
    if name not in CONTENDER_NAMES or not rows:
        raise argparse.ArgumentTypeError(
            f"--cap takes NAME=ROWS or NAME=none, NAME one of {', '.join(CONTENDER_NAMES)}"
        )
    return name, None if rows == "none" else int(rows)


def _pair(text: str) -> tuple[int, int]:
    try:
        rows, runs = (int(p.replace("_", "")) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected ROWS,RUNS such as 10000000,100") from None
    return rows, runs


def merge(old: dict[str, Any], new: dict[str, Any], workloads: tuple[str, ...]) -> dict[str, Any]:
    """``old`` results with those of ``new`` for ``workloads`` folded in."""
    merged = dict(old)
    for name in workloads:
        if isinstance(new.get(name), list) and isinstance(old.get(name), list):
            fresh = {(c["rows"], c["contender"]) for c in new[name]}
            kept = [c for c in old[name] if (c["rows"], c["contender"]) not in fresh]
            merged[name] = sorted(kept + new[name], key=lambda c: c["rows"])
            if name == "write":
                relate_to_library(merged[name])
        else:
            merged[name] = new[name]
    meta = dict(old.get("meta", {}))
    meta["merged"] = [*meta.get("merged", []), {"workloads": list(workloads), **new["meta"]}]
    merged["meta"] = meta
    return merged


def _names(known: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n for n in text.split(",") if n)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; known: {', '.join(known)}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmarks and write the results")
    run.add_argument("--sizes", type=_sizes, default=("default", None),
                     help="smoke (2k rows, seconds), default (10k,100k,1M), full (adds 10M, "
                     "streamed; tens of minutes), or row counts like 10000,50000")
    run.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    run.add_argument("--reps", type=int, help="repetitions per measurement (preset's by default)")
    run.add_argument("--data-dir", type=Path, default=_default_data_dir(),
                     help="where the generated Parquet rows are cached")
    run.add_argument("--work-dir", type=Path, help="where the databases are made (temp dir)")
    run.add_argument("--contenders", type=_names(CONTENDER_NAMES), help="subset, comma-separated")
    run.add_argument("--workloads", type=_names(WORKLOADS), help="subset, comma-separated")
    run.add_argument("--cap", type=_cap, action="append", default=[],
                     help="NAME=ROWS (or NAME=none) to change a peer's size cap")
    run.add_argument("--ids", choices=("v7", "random"), default="v7",
                     help="document ids: time-ordered UUIDv7 (default) or random")
    run.add_argument("--isolation", choices=("process", "inline"),
                     help="fresh process per job (default except smoke) or all inline")
    run.add_argument("--lineage", type=_pair, metavar="ROWS,RUNS",
                     help="size of the lineage store (preset's by default)")
    run.add_argument("--merge", action="store_true",
                     help="fold these results into --out's results.json: write cells replace "
                     "those of the same size and contender, other workloads replace theirs")
    again = sub.add_parser("report", help="rewrite results.md and throughput.png")
    again.add_argument("out", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    if args.command == "report":
        results = json.loads((args.out / "results.json").read_text())
        report.write_all(results, args.out)
        return 0
    preset, sizes = args.sizes
    plan = PRESETS["default" if preset == "custom" else preset]
    changes: dict[str, object] = {"caps": dict(args.cap), "ids": args.ids}
    if sizes is not None:
        changes.update(preset="custom", sizes=sizes)
    for name in ("reps", "contenders", "workloads", "isolation", "lineage"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    plan = dataclasses.replace(plan, **changes)  # type: ignore[arg-type]
    results = run_suite(plan, data_dir=args.data_dir, work_dir=args.work_dir)
    previous = args.out / "results.json"
    if args.merge and previous.exists():
        results = merge(json.loads(previous.read_text()), results, plan.workloads)
    paths = report.write_all(results, args.out)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    cells = [c for k in ("write", "small_batches") if isinstance(results[k], list)
             for c in results[k]]
    failed = [c for c in cells if c.get("status") == "failed"]
    failed += [results[k] for k in ("validation", "lineage", "rollback", "postgres")
               if isinstance(results.get(k), dict) and results[k].get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
