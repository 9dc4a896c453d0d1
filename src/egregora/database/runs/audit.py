"""The integrity audit behind ``storage.verify()``: an empty report means the store is sound.

The database enforces keys on every write; the audit finds what got past it anyway (a table
altered through a raw connection, a store upgraded from an older layout) and what the run
lifecycle left behind: rows of runs that never completed and purges that did not finish.
Each check is an Ibis expression, so the same audit runs on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ibis
import pyarrow as pa

from egregora.database.model import RUN_ID, RUNS_TABLE, ForeignKey, TableSchema

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from egregora.database.store import Store

#: Runs whose rows should not stay in a sound store unless rolled back or kept on purpose.
UNFINISHED_STATUSES = ("FAILED", "CANCELLED", "CRASHED")
_SAMPLE = 5


@dataclass(frozen=True)
class Problem:
    """One kind of problem in one table.

    Attributes:
        kind: ``orphan_rows``, ``missing_run``, ``duplicate_key``, ``unfinished_run_rows`` or
            ``unfinished_purge``.
        table: The table where it was found.
        count: How many rows it concerns.
        detail: What exactly, in words.
        examples: A few offending keys or values.
        items: How many items the examples are drawn from: rows when None, runs for the
            per-run kinds, repeated keys for ``duplicate_key``.
    """

    kind: str
    table: str
    count: int
    detail: str
    examples: tuple[str, ...] = ()
    items: int | None = None

    def __str__(self) -> str:
        # "; ": an example may itself list several columns ("id=…, document_id=…").
        shown = "; ".join(self.examples)
        items = self.count if self.items is None else self.items
        more = f" and {items - len(self.examples)} more" if items > len(self.examples) else ""
        return f"{self.kind}: {self.count} in `{self.table}` ({self.detail})" + (
            f": {shown}{more}" if shown else ""
        )


@dataclass(frozen=True)
class IntegrityReport:
    """What :func:`audit` found; falsy when the store is sound."""

    problems: tuple[Problem, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __str__(self) -> str:
        if not self.problems:
            return "integrity: sound (no problems found)"
        return "\n".join(["integrity: problems found"] + [f"  - {p}" for p in self.problems])

    def to_dicts(self) -> list[dict[str, Any]]:
        """The problems as plain dicts (for ``--json``)."""
        return [
            {"kind": p.kind, "table": p.table, "count": p.count, "detail": p.detail,
             "examples": list(p.examples), "items": p.count if p.items is None else p.items}
            for p in self.problems
        ]

    def to_arrow(self) -> pa.Table:
        """The problems as an Arrow table."""
        rows = self.to_dicts()
        for row in rows:
            row["examples"] = list(row["examples"])
        schema = pa.schema([("kind", pa.string()), ("table", pa.string()), ("count", pa.int64()),
                            ("detail", pa.string()), ("examples", pa.list_(pa.string())),
                            ("items", pa.int64())])
        return pa.Table.from_pylist(rows, schema=schema)


def _count_and_sample(
    storage: Store, expr: ir.Table, cols: list[str]
) -> tuple[int, tuple[str, ...]]:
    count = int(storage.to_arrow(expr.count().as_table()).column(0)[0].as_py())
    if not count:
        return 0, ()
    rows = storage.to_arrow(expr.select(*cols).limit(_SAMPLE)).to_pylist()
    return count, tuple(", ".join(f"{c}={r[c]!s}" for c in cols) for r in rows)


def _orphans(storage: Store, schema: TableSchema, fk: ForeignKey) -> Problem | None:
    child = storage.table(schema.name)
    # .view(): a self-reference (runs.parent_run_id) needs two distinct relations to join.
    parent = storage.table(fk.ref_table).view()
    pred = [child[c] == parent[r] for c, r in zip(fk.columns, fk.ref_columns, strict=True)]
    refs = child
    for c in fk.columns:
        # A NULL in a nullable reference points nowhere on purpose; in a NOT NULL one (a
        # run_id above all) it is a row whose parent is missing, and the anti-join keeps it.
        if schema.schema[c].nullable:
            refs = refs.filter(refs[c].notnull())
    missing = refs.anti_join(parent, pred)
    count, examples = _count_and_sample(storage, missing, [*schema.primary_key, *fk.columns])
    if not count:
        return None
    kind = "missing_run" if fk.columns == (RUN_ID,) else "orphan_rows"
    return Problem(kind, schema.name, count, f"{fk.describe()} points at no row", examples)


def _duplicates(storage: Store, schema: TableSchema) -> Problem | None:
    t = storage.table(schema.name)
    pk = list(schema.primary_key)
    dupes = t.group_by(pk).aggregate(copies=t.count()).filter(ibis._.copies > 1)
    found = storage.to_arrow(
        dupes.aggregate(keys=dupes.count(), rows=dupes.copies.sum())
    ).to_pylist()[0]
    if not found["keys"]:
        return None
    sample = storage.to_arrow(dupes.order_by(pk).limit(_SAMPLE)).to_pylist()
    examples = tuple(
        ", ".join(f"{c}={r[c]!s}" for c in pk) + f" ({r['copies']} copies)" for r in sample
    )
    # count: the rows that share a key (what a repair must look at); items: the keys.
    return Problem("duplicate_key", schema.name, int(found["rows"]),
                   f"primary key ({', '.join(pk)}) repeated", examples, items=int(found["keys"]))


def _rows_of_runs(
    storage: Store, schema: TableSchema, runs: ir.Table, kind: str, detail: str
) -> Problem | None:
    t = storage.table(schema.name)
    rows = t.semi_join(runs, t[RUN_ID] == runs[RUN_ID])
    per_run = rows.group_by(RUN_ID).aggregate(rows=rows.count())
    count = int(storage.to_arrow(rows.count().as_table()).column(0)[0].as_py())
    if not count:
        return None
    n_runs = int(storage.to_arrow(per_run.count().as_table()).column(0)[0].as_py())
    sample = storage.to_arrow(per_run.order_by(ibis.desc("rows")).limit(_SAMPLE)).to_pylist()
    examples = tuple(f"run {r[RUN_ID]}: {r['rows']} rows" for r in sample)
    return Problem(kind, schema.name, count, detail, examples, items=n_runs)


def audit(storage: Store) -> IntegrityReport:
    """Check every declared table of the store; see :class:`Problem` for the kinds."""
    problems: list[Problem | None] = []
    runs = storage.table(RUNS_TABLE)
    unfinished = runs.filter(runs.status.isin(UNFINISHED_STATUSES)).select(RUN_ID)
    rolled_back = runs.filter(runs.status == "ROLLED_BACK").select(RUN_ID)
    for schema in storage.catalog.creation_order():
        problems.append(_duplicates(storage, schema))
        problems.extend(_orphans(storage, schema, fk) for fk in schema.foreign_keys)
        if schema.lineage:
            problems.append(_rows_of_runs(
                storage, schema, unfinished, "unfinished_run_rows",
                "rows of failed, cancelled or crashed runs: roll the runs back or keep them "
                "on purpose",
            ))
            problems.append(_rows_of_runs(
                storage, schema, rolled_back, "unfinished_purge",
                "rows of rolled-back runs still present: run rollback_run again to finish",
            ))
    pending = runs.filter((runs.status == "ROLLED_BACK") & runs.purged_at.isnull())
    count, examples = _count_and_sample(storage, pending, [RUN_ID])
    if count:
        problems.append(Problem("unfinished_purge", RUNS_TABLE, count,
                                "rolled-back runs whose purge has not finished", examples))
    return IntegrityReport(tuple(p for p in problems if p is not None))
