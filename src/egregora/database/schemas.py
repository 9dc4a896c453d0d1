"""The tables of egregora's store, each declared exactly once.

Key types (measured, see the README): every key is a native ``uuid``. Run ids are UUIDv7,
time-ordered, which DuckDB indexes about as fast as a sequential integer (1.19x the
unconstrained insert against 1.62x for random VARCHAR keys). Document, message and
annotation ids are whatever egregora's writers produce (deterministic UUIDs), written as
text or as ``arrow.uuid``; :func:`egregora.database.ids.new_id` gives a UUIDv7 for new ones.

``authors``, ``tags`` and ``interests`` of documents are ``json`` arrays rather than
``VARCHAR[]``: DuckDB turns an update of a list column into delete+insert, which its
foreign-key check then rejects on any document that an annotation references. JSON is a
scalar to DuckDB, so a document's tags can be updated while annotations point at it.
"""

from __future__ import annotations

import enum

import ibis

from egregora.database.checks import NotBefore, NullWhen, OneOf, RequiredWhen
from egregora.database.model import Catalog, ForeignKey, TableSchema

#: The layout version these declarations describe; migrations bring a store up to it.
LAYOUT_VERSION = 1


class RunStatus(enum.StrEnum):
    """Where a run stands.

    A run moves RUNNING -> COMPLETED | FAILED | CANCELLED | CRASHED, and any finished run may
    later be ROLLED_BACK. The groups below are derived from this one list; the ``runs`` CHECKs,
    the run services, lineage reads and the audit all use them.
    """

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    ROLLED_BACK = "ROLLED_BACK"


#: Every status but RUNNING: the run has ended (``ended_at`` is set).
FINISHED_STATUSES = tuple(s for s in RunStatus if s is not RunStatus.RUNNING)
#: The statuses ``RunStore.end_run`` may set (a rollback comes later, through ``rollback_run``).
END_STATUSES = tuple(s for s in FINISHED_STATUSES if s is not RunStatus.ROLLED_BACK)
#: The statuses whose rows committed reads show.
COMMITTED_STATUSES = (RunStatus.COMPLETED,)
#: Ended without success: their rows should not stay unless rolled back or kept on purpose.
UNFINISHED_STATUSES = tuple(s for s in END_STATUSES if s not in COMMITTED_STATUSES)
DOC_TYPES = ("post", "profile", "journal", "media", "enrichment", "announcement")
DOC_STATUSES = ("draft", "published", "archived")
MEDIA_TYPES = ("image", "video", "audio")

RUNS_SCHEMA = TableSchema(
    "runs",
    ibis.schema(
        {
            "run_id": "!uuid",
            "name": "!string",
            "status": "!string",
            "config": "!json",
            "config_hash": "!string",
            "parent_run_id": "uuid",
            "code_version": "!string",
            "host": "!string",
            "pid": "!int64",
            "started_at": "!timestamp('UTC')",
            "heartbeat_at": "!timestamp('UTC')",
            "ended_at": "timestamp('UTC')",
            "error": "string",
            "purged_at": "timestamp('UTC')",
        }
    ),
    primary_key=("run_id",),
    foreign_keys=(ForeignKey.to("parent_run_id", "runs", "run_id"),),
    checks=(
        OneOf("status", tuple(str(s) for s in RunStatus)),
        RequiredWhen("status", tuple(str(s) for s in FINISHED_STATUSES), ("ended_at",)),
        NullWhen("status", (str(RunStatus.RUNNING),), ("ended_at", "purged_at")),
        NotBefore("ended_at", "started_at"),
        NotBefore("heartbeat_at", "started_at"),
    ),
    description="One row per pipeline run: what ran, with which config, and how it ended.",
)

DOCUMENTS_SCHEMA = TableSchema(
    "documents",
    ibis.schema(
        {
            "id": "!uuid",
            "doc_type": "!string",
            "content": "!string",
            "created_at": "!timestamp('UTC')",
            "source_checksum": "string",
            "title": "string",
            "slug": "string",
            "date": "date",
            "summary": "string",
            "authors": "json",
            "tags": "json",
            "status": "string",
            "subject_uuid": "uuid",
            "alias": "string",
            "avatar_url": "string",
            "interests": "json",
            "filename": "string",
            "mime_type": "string",
            "media_type": "string",
            "phash": "string",
            "window_start": "timestamp('UTC')",
            "window_end": "timestamp('UTC')",
            "extensions": "json",
        }
    ),
    primary_key=("id",),
    checks=(
        OneOf("doc_type", DOC_TYPES),
        OneOf("status", DOC_STATUSES),
        OneOf("media_type", MEDIA_TYPES),
        RequiredWhen("doc_type", ("post",), ("title", "slug", "status")),
        RequiredWhen("doc_type", ("profile",), ("title", "subject_uuid")),
        RequiredWhen("doc_type", ("journal",), ("title", "window_start", "window_end")),
        RequiredWhen("doc_type", ("media",), ("filename",)),
        NotBefore("window_end", "window_start"),
    ),
    lineage=True,
    description="Every document the pipeline writes: posts, profiles, journals, media, ...",
)

MESSAGES_SCHEMA = TableSchema(
    "messages",
    ibis.schema(
        {
            "event_id": "!uuid",
            "tenant_id": "!string",
            "source": "!string",
            "thread_id": "!string",
            "msg_id": "!string",
            "ts": "!timestamp('UTC')",
            "author_raw": "!string",
            "author_uuid": "!uuid",
            "text": "string",
            "media_url": "string",
            "media_type": "string",
            "attrs": "json",
            "pii_flags": "json",
            "created_at": "!timestamp('UTC')",
        }
    ),
    primary_key=("event_id",),
    checks=(OneOf("media_type", MEDIA_TYPES),),
    lineage=True,
    description="Chat messages parsed from an export, one row per message.",
)

ANNOTATIONS_SCHEMA = TableSchema(
    "annotations",
    ibis.schema(
        {
            "id": "!uuid",
            "document_id": "!uuid",
            "content": "!string",
            "created_at": "!timestamp('UTC')",
            "source_checksum": "string",
            "author_id": "string",
        }
    ),
    primary_key=("id",),
    foreign_keys=(ForeignKey.to("document_id", "documents", "id"),),
    lineage=True,
    description="Notes attached to a document; the document must exist.",
)

CATALOG = Catalog((RUNS_SCHEMA, DOCUMENTS_SCHEMA, MESSAGES_SCHEMA, ANNOTATIONS_SCHEMA))


#: The library's own table: the layout versions applied to a store (not in any catalog).
LAYOUT_TABLE = TableSchema(
    "egregora_layout",
    ibis.schema(
        {
            "version": "!int64",
            "applied_at": "!timestamp('UTC')",
            "description": "!string",
            "package_version": "!string",
        }
    ),
    primary_key=("version",),
    description="The layout versions applied to this store, one row per version.",
)
