"""Upgrading a store of egregora's earlier layout to the declared one, explicitly and once.

Egregora's earlier DuckDB files hold ``documents`` without ``run_id`` (``authors``, ``tags``
and ``interests`` as ``VARCHAR[]`` lists, ids as UUID text), ``messages`` whose lineage is the
free text ``created_by_run`` ("adapter:whatsapp"), and ``annotations`` whose ``parent_id``
points at a document or, with ``parent_type = 'message'``, at a message, under no FOREIGN KEY.
There is no ``runs`` and no ``egregora_layout`` table. Opening such a file with
:class:`~egregora.database.DuckDBStorageManager` raises ``SchemaMismatchError`` (with a hint
naming this module); :func:`upgrade_legacy_store` brings it to the declared layout:

- every existing row is attributed to one synthetic run, ``legacy-import`` (COMPLETED), whose
  config names the source file;
- lists become JSON arrays, ids native UUIDs, and ``created_by_run`` moves into
  ``messages.attrs`` as ``{"created_by_run": ...}``;
- the tables are rebuilt from their declarations, FOREIGN KEYs included, because DuckDB cannot
  add a FOREIGN KEY with ALTER TABLE: the old tables are renamed aside (their secondary
  indexes dropped first, since DuckDB refuses to rename a table an index depends on), the
  declared tables created, the rows copied with casts and the old tables dropped. Renaming
  moves no data; the old tables hold no FOREIGN KEY, so nothing blocks the rename;
- an annotation whose parent is not a stored document (a message, a missing document, no
  parent at all) is an orphan. Orphans are never dropped silently: the upgrade refuses and
  lists them all, or, with ``quarantine_orphans=True``, moves them to
  ``annotations_quarantine`` (:data:`QUARANTINE_SCHEMA`) and reports how many.

Everything happens in one transaction on a connection of the upgrade's own, so the file must
not be open elsewhere. Any failure rolls back explicitly (after a failed statement DuckDB's
COMMIT would silently discard): a failed upgrade leaves the file as it was, byte
for byte (measured on duckdb 1.5.6).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import ibis.expr.datatypes as dt
import pyarrow as pa
from sqlglot import exp

from egregora.database import ddl, statements
from egregora.database.backends.duckdb.connection import open_file
from egregora.database.errors import (
    ConnectionFailedError,
    Failure,
    IntegrityError,
    SchemaMismatchError,
    StorageError,
    failures_table,
    format_examples,
)
from egregora.database.ids import new_id_str
from egregora.database.model import RUN_ID, TableSchema, utc_now
from egregora.database.runs.config import config_hash
from egregora.database.runs.store import Run
from egregora.database.schemas import (
    ANNOTATIONS_SCHEMA,
    CATALOG,
    DOCUMENTS_SCHEMA,
    LAYOUT_TABLE,
    LAYOUT_VERSION,
    MESSAGES_SCHEMA,
    RUNS_SCHEMA,
    RunStatus,
)
from egregora.database.statements import qualified, table_ref
from egregora.database.version import code_version, package_version

#: The name of the synthetic run that owns every row of an upgraded store.
LEGACY_RUN_NAME = "legacy-import"
#: The free-text lineage column of the earlier ``messages``, kept in ``attrs``.
MESSAGE_LINEAGE = "created_by_run"
#: The earlier reference of an annotation: an id, and what kind of row it names.
PARENT_ID, PARENT_TYPE = "parent_id", "parent_type"
#: The ``parent_type`` of an annotation on a document.
DOCUMENT_PARENT = "document"

#: The earlier tables are today's lineage tables, without ``run_id``.
LEGACY_TABLES: tuple[TableSchema, ...] = tuple(t for t in CATALOG.creation_order() if t.lineage)

_DOCUMENT_FK = next(
    fk for fk in ANNOTATIONS_SCHEMA.foreign_keys if fk.ref_table == DOCUMENTS_SCHEMA.name
)

QUARANTINE_SCHEMA = TableSchema(
    "annotations_quarantine",
    {
        **{
            name: dtype
            for name, dtype in ANNOTATIONS_SCHEMA.schema.items()
            if name not in _DOCUMENT_FK.columns
        },
        PARENT_ID: "string",
        PARENT_TYPE: "string",
        "reason": "!string",
    },
    primary_key=ANNOTATIONS_SCHEMA.primary_key,
    description=(
        "Annotations of an upgraded store that referenced no stored document, as they were "
        "found (parent_id, parent_type), with the reason and the import run; no foreign key."
    ),
)
"""Where ``quarantine_orphans=True`` moves orphan annotations: the columns of
``annotations`` except the document reference, which an orphan cannot honour, plus the earlier
``parent_id`` and ``parent_type`` and the ``reason``. ``run_id`` names the import run but has
no FOREIGN KEY. Not in the default catalog: read it with ``CATALOG.extend(QUARANTINE_SCHEMA)``.
"""

_SET_ASIDE = "_legacy"
_VIEW = "egregora_legacy_rows"
_ALIAS = "l"
_LOCK_HINT = (
    "close the program holding it (a DuckDBStorageManager, a notebook); the upgrade needs the "
    "file to itself"
)
_COLUMNS_QUERY = (
    "SELECT table_name, column_name, data_type FROM duckdb_columns() "
    "WHERE schema_name = 'main' ORDER BY table_name, column_index"
)
_INDEXES_QUERY = (
    "SELECT table_name, index_name FROM duckdb_indexes() WHERE schema_name = 'main' "
    "ORDER BY table_name, index_name"
)

TableColumns = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True)
class LegacyUpgradeReport:
    """What :func:`upgrade_legacy_store` did.

    Attributes:
        path: The upgraded file.
        run_id: The synthetic ``legacy-import`` run that owns every upgraded row.
        rows: Rows copied into each declared table.
        quarantined: Orphan annotations moved to ``annotations_quarantine``.
        dropped_indexes: Secondary indexes of the earlier tables, dropped with them (the
            declared layout has none: an index on a changing column breaks updates).
    """

    path: str
    run_id: str
    rows: Mapping[str, int]
    quarantined: int
    dropped_indexes: tuple[str, ...]

    def __str__(self) -> str:
        copied = ", ".join(f"{n} {t}" for t, n in self.rows.items())
        lines = [f"upgraded {self.path} to layout {LAYOUT_VERSION} as run {self.run_id}: {copied}"]
        if self.quarantined:
            lines.append(
                f"{self.quarantined} orphan annotations moved to `{QUARANTINE_SCHEMA.name}`"
            )
        if self.dropped_indexes:
            lines.append(f"dropped legacy indexes: {', '.join(self.dropped_indexes)}")
        return "\n".join(lines)


# --- reading the file ---------------------------------------------------------------------


def _connect(path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    if not path.is_file():
        raise ConnectionFailedError(f"no store at {path}")
    return open_file(str(path), read_only=read_only, advice=_LOCK_HINT)


def _table_columns(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for table, column, data_type in con.execute(_COLUMNS_QUERY).fetchall():
        found.setdefault(table, {})[column] = data_type
    return found


def _is_legacy(columns: TableColumns) -> bool:
    if LAYOUT_TABLE.name in columns:
        return False
    return any(t.name in columns and RUN_ID not in columns[t.name] for t in LEGACY_TABLES)


def detect_legacy_layout(path: str | Path) -> bool:
    """Whether the DuckDB file at ``path`` has egregora's earlier layout: no
    ``egregora_layout`` table, and one of ``documents``, ``messages``, ``annotations``
    without ``run_id``.

    Raises:
        ConnectionFailedError: no file at ``path``, or not a DuckDB file.
        StoreLockedError: another process holds the file.
    """
    con = _connect(Path(path), read_only=True)
    try:
        return _is_legacy(_table_columns(con))
    finally:
        con.close()


def upgrade_hint(con: duckdb.DuckDBPyConnection, path: str) -> list[str]:
    """A line for the ``SchemaMismatchError`` of a store opened in the earlier layout,
    naming the upgrade (empty for any other store)."""
    if not _is_legacy(_table_columns(con)):
        return []
    return [
        f"{path} has egregora's earlier layout (rows without run_id, no runs table): upgrade "
        "it once with `egregora-db migrate --legacy` or "
        "egregora.database.backends.duckdb.legacy.upgrade_legacy_store(path); pass "
        "--quarantine-orphans (quarantine_orphans=True) to keep annotations that reference no "
        "document aside"
    ]


def _source_columns(table: TableSchema) -> tuple[str, ...]:
    """The columns ``table`` had in the earlier layout."""
    names = [c for c in table.column_names if c != RUN_ID]
    if table.name == MESSAGES_SCHEMA.name:
        names.append(MESSAGE_LINEAGE)
    if table.name == ANNOTATIONS_SCHEMA.name:
        names = [c for c in names if c not in _DOCUMENT_FK.columns] + [PARENT_ID, PARENT_TYPE]
    return tuple(names)


def _differences(columns: TableColumns) -> list[str]:
    """What stops an upgrade before it starts: names already taken, and earlier tables
    whose columns the upgrade would lose or cannot fill."""
    found: list[str] = []
    taken = [RUNS_SCHEMA.name, QUARANTINE_SCHEMA.name] + [
        t.name + _SET_ASIDE for t in LEGACY_TABLES
    ]
    found += [f"{name}: a table of this name exists; the earlier layout had none" for name in
              taken if name in columns]
    for table in LEGACY_TABLES:
        have = columns.get(table.name)
        if have is None:
            continue
        known = _source_columns(table)
        found += [
            f"{table.name}.{name}: column unknown to the earlier layout; the upgrade would lose "
            "it" for name in have if name not in known
        ]
        found += [
            f"{table.name}.{name}: column missing, and it is NOT NULL"
            for name in known
            if name in table.schema and not table.schema[name].nullable and name not in have
        ]
    return found


# --- the statements of the upgrade --------------------------------------------------------


def _is_nested(data_type: str | None) -> bool:
    return data_type is not None and (
        data_type.endswith("]") or data_type.startswith(("STRUCT", "MAP", "UNION"))
    )


def _source(name: str, legacy: Mapping[str, str]) -> exp.Expression:
    # A nullable column the earlier table lacks reads as NULL (checked by _differences).
    return qualified(_ALIAS, name) if name in legacy else exp.Null()


def _json(name: str, legacy: Mapping[str, str]) -> exp.Expression:
    value = _source(name, legacy)
    if _is_nested(legacy.get(name)):
        return exp.cast(exp.func("to_json", value), ddl.column_type(dt.JSON(), "duckdb"))
    return exp.cast(value, ddl.column_type(dt.JSON(), "duckdb"))


def _attrs_with_lineage(name: str, legacy: Mapping[str, str]) -> exp.Expression:
    """``attrs`` with the earlier ``created_by_run`` added as a key; a non-object ``attrs``
    is kept under the key ``attrs``, so that nothing is lost."""
    attrs = _json(name, legacy)
    lineage = _source(MESSAGE_LINEAGE, legacy)
    tagged = exp.func("json_object", exp.Literal.string(MESSAGE_LINEAGE), lineage)
    return (
        exp.Case()
        .when(exp.Is(this=lineage, expression=exp.Null()), attrs)
        .when(exp.Is(this=attrs.copy(), expression=exp.Null()), tagged)
        .when(
            exp.EQ(
                this=exp.func("json_type", attrs.copy()), expression=exp.Literal.string("OBJECT")
            ),
            exp.func("json_merge_patch", attrs.copy(), tagged.copy()),
        )
        .else_(
            exp.func(
                "json_object", exp.Literal.string(name), attrs.copy(),
                exp.Literal.string(MESSAGE_LINEAGE), lineage.copy(),
            )
        )
    )


def _converted(table: TableSchema, name: str, legacy: Mapping[str, str]) -> exp.Expression:
    """The value of ``table.name`` computed from a row of the earlier table."""
    target = ddl.column_type(table.schema[name].copy(nullable=True), "duckdb")
    if name == RUN_ID:
        return exp.cast(statements.param(), target)
    if table.name == MESSAGES_SCHEMA.name and name == "attrs":
        return _attrs_with_lineage(name, legacy)
    if table.name == ANNOTATIONS_SCHEMA.name and name in _DOCUMENT_FK.columns:
        return exp.cast(_source(PARENT_ID, legacy), target)
    if table.name == QUARANTINE_SCHEMA.name and name == "reason":
        return _orphan_reason(legacy)
    if isinstance(table.schema[name], dt.JSON):
        return _json(name, legacy)
    return exp.cast(_source(name, legacy), target)


def _has_document(legacy: Mapping[str, str]) -> exp.Expression:
    """The annotation names a stored document: ``parent_type`` is 'document' (or absent)
    and ``parent_id`` is the id of a row of ``documents``, compared as UUIDs."""
    uuid = exp.DataType.build("UUID")
    parent_type = _source(PARENT_TYPE, legacy)
    is_document = exp.or_(
        exp.Is(this=parent_type, expression=exp.Null()),
        exp.EQ(this=parent_type.copy(), expression=exp.Literal.string(DOCUMENT_PARENT)),
    )
    (ref,) = _DOCUMENT_FK.ref_columns
    stored = (
        exp.select(exp.Literal.number(1))
        .from_(table_ref(_DOCUMENT_FK.ref_table, "d"))
        .where(
            exp.EQ(
                this=exp.TryCast(this=qualified("d", ref), to=uuid),
                expression=exp.TryCast(this=_source(PARENT_ID, legacy), to=uuid.copy()),
            )
        )
    )
    # Parenthesised: the condition is negated to find orphans, and NOT binds tighter than AND.
    return exp.Paren(this=exp.and_(exp.Paren(this=is_document), exp.Exists(this=stored)))


def _orphan_reason(legacy: Mapping[str, str]) -> exp.Expression:
    parent_type = _source(PARENT_TYPE, legacy)
    return (
        exp.Case()
        .when(
            exp.NEQ(this=parent_type, expression=exp.Literal.string(DOCUMENT_PARENT)),
            exp.DPipe(
                this=exp.Literal.string(f"{PARENT_TYPE} is '"),
                expression=exp.DPipe(
                    this=parent_type.copy(),
                    expression=exp.Literal.string("'; annotations reference documents only"),
                ),
            ),
        )
        .when(
            exp.Is(this=_source(PARENT_ID, legacy), expression=exp.Null()),
            exp.Literal.string(f"{PARENT_ID} is NULL"),
        )
        .else_(exp.Literal.string(f"no document has this {PARENT_ID}"))
    )


def _orphans_query(source: str, legacy: Mapping[str, str]) -> exp.Select:
    (key,) = ANNOTATIONS_SCHEMA.primary_key
    text = exp.DataType.build("VARCHAR")
    return (
        exp.select(
            exp.cast(qualified(_ALIAS, key), text).as_(key),
            exp.cast(_source(PARENT_ID, legacy), text.copy()).as_(PARENT_ID),
            exp.cast(_source(PARENT_TYPE, legacy), text.copy()).as_(PARENT_TYPE),
            _orphan_reason(legacy).as_("reason"),
        )
        .from_(table_ref(source, _ALIAS))
        .where(exp.Not(this=_has_document(legacy)))
        .order_by(exp.column(key))
    )


def _copy(
    target: TableSchema, source: str, legacy: Mapping[str, str], where: exp.Expression | None
) -> exp.Insert:
    select = exp.select(
        *(_converted(target, c, legacy).as_(ddl.ident(c)) for c in target.column_names)
    ).from_(table_ref(source, _ALIAS))
    if where is not None:
        select = select.where(where)
    return exp.Insert(
        this=exp.Schema(
            this=table_ref(target.name), expressions=[ddl.ident(c) for c in target.column_names]
        ),
        expression=select,
    )


def _count(con: duckdb.DuckDBPyConnection, statement: exp.Expression, run_id: str) -> int:
    row = con.execute(ddl.to_sql(statement), [run_id]).fetchone()
    return int(row[0]) if row else 0


def _append(con: duckdb.DuckDBPyConnection, table: TableSchema, data: pa.Table) -> None:
    con.register(_VIEW, data)
    try:
        con.execute(ddl.to_sql(statements.insert_from(
            table, _VIEW, on_conflict="error", present=data.column_names
        )))
    finally:
        con.unregister(_VIEW)


# --- the steps, in order, inside one transaction ------------------------------------------


def _set_aside(con: duckdb.DuckDBPyConnection, columns: TableColumns) -> tuple[str, ...]:
    """Drop the earlier tables' secondary indexes and rename the tables aside."""
    names = {t.name for t in LEGACY_TABLES if t.name in columns}
    indexes = [i for t, i in con.execute(_INDEXES_QUERY).fetchall() if t in names]
    for index in indexes:
        con.execute(ddl.to_sql(exp.Drop(this=exp.Table(this=ddl.ident(index)), kind="INDEX")))
    for table in LEGACY_TABLES:
        if table.name in names:
            rename = exp.AlterRename(this=exp.Table(this=ddl.ident(table.name + _SET_ASIDE)))
            con.execute(ddl.to_sql(exp.Alter(this=table_ref(table.name), kind="TABLE",
                                              actions=[rename])))
    return tuple(indexes)


def _create_declared(con: duckdb.DuckDBPyConnection, *, quarantine: bool) -> None:
    for table in (LAYOUT_TABLE, *CATALOG.creation_order()):
        con.execute(ddl.create_table_sql(table))
    if quarantine:
        con.execute(ddl.create_table_sql(QUARANTINE_SCHEMA))


def _record_run(con: duckdb.DuckDBPyConnection, path: Path, *, quarantine: bool) -> Run:
    config = {"source": "legacy-layout", "path": str(path), "quarantine_orphans": quarantine}
    now = utc_now()
    run = Run(
        run_id=new_id_str(), name=LEGACY_RUN_NAME, status=RunStatus.COMPLETED,
        config=config, config_hash=config_hash(config), parent_run_id=None,
        code_version=code_version(), host=socket.gethostname(), pid=os.getpid(),
        started_at=now, heartbeat_at=now, ended_at=now, error=None, purged_at=None,
    )
    _append(con, RUNS_SCHEMA, run.to_arrow())
    return run


def _copy_rows(
    con: duckdb.DuckDBPyConnection, columns: TableColumns, run_id: str
) -> dict[str, int]:
    """Copy every earlier table into its declared one (orphan annotations excepted)."""
    rows = {}
    for table in LEGACY_TABLES:
        legacy = columns.get(table.name)
        if legacy is None:
            rows[table.name] = 0
            continue
        only = _has_document(legacy) if table.name == ANNOTATIONS_SCHEMA.name else None
        rows[table.name] = _count(con, _copy(table, table.name + _SET_ASIDE, legacy, only), run_id)
    return rows


def _quarantine(con: duckdb.DuckDBPyConnection, columns: TableColumns, run_id: str) -> int:
    legacy = columns[ANNOTATIONS_SCHEMA.name]
    orphans = exp.Not(this=_has_document(legacy))
    source = ANNOTATIONS_SCHEMA.name + _SET_ASIDE
    return _count(con, _copy(QUARANTINE_SCHEMA, source, legacy, orphans), run_id)


def _check_complete(
    con: duckdb.DuckDBPyConnection, columns: TableColumns, rows: Mapping[str, int], quarantined: int
) -> None:
    """Every row of the earlier tables is in a declared table or in the quarantine: the last
    guard against a row lost on the way."""
    for table in LEGACY_TABLES:
        if table.name not in columns:
            continue
        count = exp.select(exp.Count(this=exp.Star())).from_(table_ref(table.name + _SET_ASIDE))
        found = con.execute(ddl.to_sql(count)).fetchone()
        before = int(found[0]) if found else 0
        after = rows[table.name] + (quarantined if table.name == ANNOTATIONS_SCHEMA.name else 0)
        if after != before:
            raise IntegrityError(
                f"the upgrade would keep {after} of the {before} rows of `{table.name}`; it was "
                "rolled back and the file is as it was",
                table=table.name,
            )


def _drop_legacy(con: duckdb.DuckDBPyConnection, columns: TableColumns) -> None:
    for table in LEGACY_TABLES:
        if table.name in columns:
            name = ddl.ident(table.name + _SET_ASIDE)
            con.execute(ddl.to_sql(exp.Drop(this=exp.Table(this=name), kind="TABLE")))


def _record_layout(con: duckdb.DuckDBPyConnection, run: Run, rows: Mapping[str, int]) -> None:
    copied = ", ".join(f"{n} {t}" for t, n in rows.items())
    _append(con, LAYOUT_TABLE, pa.Table.from_pylist(
        [{
            "version": LAYOUT_VERSION,
            "applied_at": utc_now(),
            "description": f"upgraded from egregora's earlier layout by run {run.run_id}: {copied}",
            "package_version": package_version(),
        }],
        schema=LAYOUT_TABLE.to_arrow(),
    ))


def _finish_run(con: duckdb.DuckDBPyConnection, run: Run) -> None:
    # ended_at and heartbeat_at are plain columns: DuckDB updates them in place although the
    # run is now referenced by every upgraded row.
    now = max(utc_now(), run.started_at)
    update = statements.update_where_equal(RUNS_SCHEMA.name, ["ended_at", "heartbeat_at"], [RUN_ID])
    con.execute(ddl.to_sql(update), [now, now, run.run_id])


# --- the upgrade ----------------------------------------------------------------------------


def _orphans(con: duckdb.DuckDBPyConnection, columns: TableColumns) -> list[dict[str, Any]]:
    """Every annotation of the earlier file that references no stored document."""
    legacy = columns.get(ANNOTATIONS_SCHEMA.name)
    if legacy is None:
        return []
    query = _orphans_query(ANNOTATIONS_SCHEMA.name, legacy)
    return con.execute(ddl.to_sql(query)).to_arrow_table().to_pylist()  # type: ignore[no-any-return]


def _orphan_error(path: Path, orphans: list[dict[str, Any]]) -> IntegrityError:
    (key,) = ANNOTATIONS_SCHEMA.primary_key
    rows: list[Failure] = [
        Failure(
            PARENT_ID,
            r["reason"],
            f"{PARENT_TYPE}={r[PARENT_TYPE]!r}, {PARENT_ID}={r[PARENT_ID]!r}",
            f"{key}={r[key]!r}",
        )
        for r in orphans
    ]
    shown = format_examples([f"{k} ({reason})" for _, reason, _, k in rows], total=len(rows))
    return IntegrityError(
        f"{len(rows)} annotations of {path} reference no stored document, so no FOREIGN KEY can "
        f"hold them; nothing was changed. Pass quarantine_orphans=True (egregora-db migrate "
        f"--legacy --quarantine-orphans) to move them to `{QUARANTINE_SCHEMA.name}`: {shown}",
        table=ANNOTATIONS_SCHEMA.name,
        columns=[PARENT_ID, PARENT_TYPE],
        failures=failures_table(rows),
    )


def upgrade_legacy_store(
    path: str | Path, *, quarantine_orphans: bool = False
) -> LegacyUpgradeReport:
    """Bring a file of egregora's earlier layout to the declared layout, in one transaction.

    Args:
        path: The DuckDB file; no other connection may hold it.
        quarantine_orphans: Move annotations that reference no stored document to
            ``annotations_quarantine`` instead of refusing the upgrade.

    Returns:
        What was done: rows per table, the import run, orphans quarantined.

    Raises:
        IntegrityError: orphan annotations and ``quarantine_orphans`` is False; ``failures``
            lists every one (``key`` the annotation, ``check`` the reason). Nothing changed.
        SchemaMismatchError: the file is not in the earlier layout, or has columns or
            tables the upgrade would lose or overwrite. Nothing changed.
        StorageError: a step failed (a value that does not convert, say); the upgrade was
            rolled back and the file is as it was.
        ConnectionFailedError, StoreLockedError: the file cannot be opened for writing.
    """
    path = Path(path).resolve()
    con = _connect(path, read_only=False)
    try:
        return _upgrade(con, path, quarantine_orphans=quarantine_orphans)
    finally:
        con.close()


def _upgrade(
    con: duckdb.DuckDBPyConnection, path: Path, *, quarantine_orphans: bool
) -> LegacyUpgradeReport:
    columns = _table_columns(con)
    if not _is_legacy(columns):
        raise SchemaMismatchError(
            [f"{path} is not in egregora's earlier layout (it has `{LAYOUT_TABLE.name}`, or no "
             "table without run_id); nothing to upgrade: open it with DuckDBStorageManager"]
        )
    differences = _differences(columns)
    if differences:
        raise SchemaMismatchError(differences)
    # A naive time of the earlier layout is read as UTC, the library's only time zone.
    con.execute(ddl.to_sql(exp.Set(expressions=[exp.SetItem(this=exp.EQ(
        this=exp.column("TimeZone"), expression=exp.Literal.string("UTC")))])))
    orphans = _orphans(con, columns)
    if orphans and not quarantine_orphans:
        raise _orphan_error(path, orphans)
    stage = "starting"
    con.begin()
    try:
        stage = "setting the earlier tables aside"
        dropped = _set_aside(con, columns)
        stage = "creating the declared tables"
        _create_declared(con, quarantine=bool(orphans))
        stage = "recording the import run"
        run = _record_run(con, path, quarantine=quarantine_orphans)
        stage = "copying the rows"
        rows = _copy_rows(con, columns, run.run_id)
        quarantined = _quarantine(con, columns, run.run_id) if orphans else 0
        _check_complete(con, columns, rows, quarantined)
        stage = "dropping the earlier tables"
        _drop_legacy(con, columns)
        stage = "recording the layout"
        _record_layout(con, run, rows)
        _finish_run(con, run)
        con.commit()
    except duckdb.Error as exc:
        con.rollback()
        raise StorageError(
            f"upgrading {path} failed while {stage}; it was rolled back and the file is as it "
            f"was: {str(exc).strip().splitlines()[0]}",
            table=None,
        ) from exc
    except BaseException:
        con.rollback()
        raise
    return LegacyUpgradeReport(
        path=str(path), run_id=run.run_id, rows=rows, quarantined=quarantined,
        dropped_indexes=dropped,
    )
