"""A small, realistic egregora pipeline over a store, for the quick start, notebooks and
benchmarks.

:func:`run_demo` plays five runs through the public API on an open store:

1. ``ingest-chat`` writes a WhatsApp-like group chat of :data:`N_MESSAGES` messages among
   twelve people over six weeks;
2. ``enrich-urls`` (child of the ingest) writes :data:`N_DOCUMENTS` documents of every type:
   link enrichments, media descriptions, posts, weekly journals, one profile per author and
   a few announcements;
3. ``annotate`` (child of the enrichment) writes :data:`N_ANNOTATIONS` notes on them;
4. ``enrich-media`` hands the store a stream whose last batch breaks the documents' rules (a
   post without its slug, a media document without its file name, an unknown status): the
   run ends FAILED and writes nothing;
5. ``enrich-urls`` again, with another config (so another config hash), writes
   :data:`N_RETRY_DOCUMENTS` documents and is then rolled back.

The data comes from ``random.Random(seed)``: the same seed gives the same texts, people,
times and counts. Row ids are fresh UUIDv7 (:func:`~egregora.database.ids.new_id`), the key
type the store indexes fastest, so the demo can be played again on the same store and only
adds runs. The store is left sound: ``verify()`` finds nothing.

``run_demo(storage)`` plays it on an open store and returns a :class:`DemoSummary`;
``build_demo_store(path)`` opens the file, plays it and closes it. The generators are usable
on their own:

Example:
    >>> from egregora.database.model import utc_now
    >>> chat = make_chat(random.Random(7), created_at=utc_now())
    >>> chat.messages.num_rows, len(chat.link_rows), len(chat.media_rows)
    (3000, 187, 120)
    >>> make_documents(random.Random(7), chat, created_at=utc_now()).num_rows
    300
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.text import Text

from egregora.database.backends.base import StorageManager
from egregora.database.backends.duckdb.manager import DuckDBStorageManager
from egregora.database.cli.output import report_table, runs_table, short_id, stdout
from egregora.database.errors import ValidationError
from egregora.database.ids import new_id_str
from egregora.database.model import utc_now
from egregora.database.runs.audit import IntegrityReport
from egregora.database.runs.lineage import lineage_tables, rows_of_run
from egregora.database.runs.store import Run, RunStore
from egregora.database.schemas import DOCUMENTS_SCHEMA, MESSAGES_SCHEMA

#: Messages of the demo chat.
N_MESSAGES = 3000
#: Documents the first enrichment writes, by type; they add up to :data:`N_DOCUMENTS`.
DOCUMENT_MIX = {
    "enrichment": 120, "media": 60, "post": 90, "journal": 6, "profile": 12, "announcement": 12,
}
N_DOCUMENTS = sum(DOCUMENT_MIX.values())
#: Annotations the annotation run writes on those documents.
N_ANNOTATIONS = 150
#: Documents of the enrichment that is rolled back.
N_RETRY_DOCUMENTS = 60
#: Documents the failing run hands over, of which :data:`N_INVALID` break the rules.
N_FAILED_BATCH = 60
N_INVALID = 4

#: Deterministic author ids: ``uuid5(DEMO_NAMESPACE, "author:<name>")``.
DEMO_NAMESPACE = uuid.UUID("6f1c2b52-8a4e-5c1d-9b7e-3d0f6a2e4c81")
AUTHORS = (
    "Ana", "Bruno", "Carla", "Davi", "Elisa", "Fabio",
    "Gabi", "Heitor", "Iris", "Joao", "Katia", "Lucas",
)
_PIPELINE_ORDER = ("messages", "documents", "annotations")
CHAT_START = datetime(2024, 3, 4, 8, 0, tzinfo=UTC)
CHAT_WEEKS = 6

_WORDS = (
    "the", "a", "we", "you", "they", "it", "this", "that", "weekend", "plan", "trip", "beach",
    "dinner", "recipe", "garden", "music", "photo", "video", "voice", "note", "link", "article",
    "read", "watch", "later", "tomorrow", "today", "tonight", "again", "thanks", "great", "idea",
    "maybe", "sure", "agree", "meeting", "school", "kids", "rain", "sun", "coffee", "bread",
    "market", "book", "film", "song", "concert", "park", "bike", "train", "ticket", "price",
    "cheap", "late", "early", "home", "work", "project", "draft", "summary", "question", "answer",
    "share", "group", "news", "story", "funny", "old", "new",
)
_LINK_TOPICS = (
    "recipes/sourdough", "travel/lisbon-guide", "music/new-album", "science/sleep-study",
    "city/bike-lanes", "books/summer-list", "garden/tomatoes", "film/festival-lineup",
)
_MEDIA = (("image", "jpg", "image/jpeg"), ("video", "mp4", "video/mp4"),
          ("audio", "opus", "audio/ogg"))


def author_uuid(name: str) -> str:
    """The stable id of a demo author.

    >>> author_uuid("Ana") == author_uuid("Ana")
    True
    """
    return str(uuid.uuid5(DEMO_NAMESPACE, f"author:{name}"))


def _sentence(rng: random.Random, low: int, high: int) -> str:
    words = rng.choices(_WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + "."


def _paragraphs(rng: random.Random, *, chars: int) -> str:
    """Text of about ``chars`` characters (whole sentences, at least ``chars``)."""
    parts: list[str] = []
    size = 0
    while size < chars:
        parts.append(_sentence(rng, 6, 18))
        size += len(parts[-1]) + 1
    return " ".join(parts)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Chat:
    """The generated chat: its messages and where its links and media are."""

    messages: pa.Table
    link_rows: tuple[int, ...]
    media_rows: tuple[int, ...]


def make_chat(rng: random.Random, *, created_at: datetime, n: int = N_MESSAGES) -> Chat:
    """``n`` messages of one WhatsApp group, in time order, with links and media."""
    offsets = sorted(rng.randrange(CHAT_WEEKS * 7 * 86_400) for _ in range(n))
    link_rows = tuple(sorted(rng.sample(range(n), n // 16)))
    media_rows = tuple(sorted(rng.sample(sorted(set(range(n)) - set(link_rows)), n // 25)))
    links, media = set(link_rows), set(media_rows)
    rows: list[dict[str, Any]] = []
    for i, offset in enumerate(offsets):
        author = rng.choice(AUTHORS)
        ts = CHAT_START + timedelta(seconds=offset)
        text: str | None = _sentence(rng, 3, 25)
        media_url = media_type = None
        if i in links:
            text = f"{text} https://example.org/{rng.choice(_LINK_TOPICS)}"
        if i in media:
            media_type, ext, _ = rng.choice(_MEDIA)
            media_url = f"media/{media_type.upper()[:3]}-{ts:%Y%m%d}-WA{i:04d}.{ext}"
            text = None if rng.random() < 0.5 else text
        reply = rows[rng.randrange(len(rows))]["msg_id"] if rows and rng.random() < 0.2 else None
        rows.append({
            "event_id": new_id_str(), "tenant_id": "demo", "source": "whatsapp",
            "thread_id": "family-group", "msg_id": f"{i:05d}", "ts": ts, "author_raw": author,
            "author_uuid": author_uuid(author), "text": text, "media_url": media_url,
            "media_type": media_type, "attrs": _json({"reply_to": reply}) if reply else None,
            "pii_flags": _json({"email": False, "phone": rng.random() < 0.01}),
            "created_at": created_at,
        })
    return Chat(_table(MESSAGES_SCHEMA.to_arrow(), rows), link_rows, media_rows)


def _table(schema: pa.Schema, rows: list[dict[str, Any]]) -> pa.Table:
    # Only the columns the rows use: the store fills the other nullable ones with NULL.
    used = [f for f in schema if f.name in rows[0]]
    return pa.Table.from_pylist(rows, schema=pa.schema(used))


def _document(
    rng: random.Random, doc_type: str, *, created_at: datetime, **values: Any
) -> dict[str, Any]:
    row = dict.fromkeys(DOCUMENTS_SCHEMA.column_names)
    row.pop("run_id", None)
    row.update(
        id=new_id_str(), doc_type=doc_type, created_at=created_at,
        content=_paragraphs(rng, chars=rng.randint(200, 2000)),
        source_checksum=f"sha256:{rng.getrandbits(128):032x}",
    )
    row.update(values)
    return row


def make_documents(
    rng: random.Random, chat: Chat, *, created_at: datetime, mix: dict[str, int] = DOCUMENT_MIX
) -> pa.Table:
    """Documents of every type drawn from ``chat``, each valid for its type's rules."""
    msgs = chat.messages.to_pylist()
    docs: list[dict[str, Any]] = []
    for row in rng.sample(chat.link_rows, mix["enrichment"]):
        url = str(msgs[row]["text"]).rsplit(" ", 1)[-1]
        docs.append(_document(rng, "enrichment", created_at=created_at,
                              title=f"Link: {url.rsplit('/', 1)[-1]}",
                              extensions=_json({"url": url, "msg_id": msgs[row]["msg_id"]})))
    for row in rng.sample(chat.media_rows, mix["media"]):
        msg = msgs[row]
        mime = next(m for kind, _, m in _MEDIA if kind == msg["media_type"])
        docs.append(_document(rng, "media", created_at=created_at,
                              filename=str(msg["media_url"]).rsplit("/", 1)[-1],
                              mime_type=mime, media_type=msg["media_type"],
                              phash=f"{rng.getrandbits(64):016x}"))
    for i in range(mix["post"]):
        title = _sentence(rng, 2, 6).rstrip(".")
        authors = sorted({author_uuid(a) for a in rng.sample(AUTHORS, rng.randint(1, 3))})
        docs.append(_document(
            rng, "post", created_at=created_at, title=title,
            slug=f"{'-'.join(title.lower().split()[:5])}-{i}",
            status=rng.choice(("draft", "published", "published", "archived")),
            date=(CHAT_START + timedelta(days=rng.randrange(CHAT_WEEKS * 7))).date(),
            summary=_sentence(rng, 8, 20), authors=_json(authors),
            tags=_json(sorted(set(rng.sample(_WORDS, 3)))),
        ))
    for week in range(mix["journal"]):
        start = CHAT_START + timedelta(weeks=week)
        docs.append(_document(rng, "journal", created_at=created_at,
                              title=f"Week of {start:%d %B %Y}",
                              window_start=start, window_end=start + timedelta(weeks=1)))
    docs.extend(
        _document(rng, "profile", created_at=created_at, title=name,
                  subject_uuid=author_uuid(name), alias=name.lower(),
                  avatar_url=f"https://example.org/avatars/{name.lower()}.png",
                  interests=_json(sorted(set(rng.sample(_WORDS, 4)))))
        for name in AUTHORS[: mix["profile"]]
    )
    docs.extend(
        _document(rng, "announcement", created_at=created_at,
                  title=_sentence(rng, 2, 5).rstrip("."), status="published")
        for _ in range(mix["announcement"])
    )
    return pa.Table.from_pylist(docs, schema=_document_schema())


def _document_schema() -> pa.Schema:
    return pa.schema([f for f in DOCUMENTS_SCHEMA.to_arrow() if f.name != "run_id"])


def make_annotations(
    rng: random.Random, documents: pa.Table, *, created_at: datetime, n: int = N_ANNOTATIONS
) -> pa.Table:
    """``n`` notes by the chat's members on ``documents``."""
    ids = documents.column("id").to_pylist()
    rows = [
        {"id": new_id_str(), "document_id": rng.choice(ids), "content": _sentence(rng, 5, 30),
         "created_at": created_at, "source_checksum": None,
         "author_id": author_uuid(rng.choice(AUTHORS))}
        for _ in range(n)
    ]
    return pa.Table.from_pylist(rows)


def _invalid_stream(
    rng: random.Random, chat: Chat, *, created_at: datetime
) -> pa.RecordBatchReader:
    """Good media documents, then a batch where :data:`N_INVALID` rows break the rules."""
    mix = dict.fromkeys(DOCUMENT_MIX, 0) | {"media": N_FAILED_BATCH}
    good = make_documents(rng, chat, created_at=created_at, mix=mix)
    rows = good.slice(N_FAILED_BATCH - 20).to_pylist()
    rows[3].update(filename=None)  # a media document needs its file name
    rows[7].update(doc_type="post", title="Beach trip", slug=None, status="draft")
    rows[11].update(doc_type="post", title="Market day", slug=None, status="published")
    rows[15].update(doc_type="post", title="Old photos", slug="old-photos", status="pending")
    bad = pa.Table.from_pylist(rows, schema=good.schema)
    batches = [*good.slice(0, N_FAILED_BATCH - 20).to_batches(max_chunksize=20), *bad.to_batches()]
    return pa.RecordBatchReader.from_batches(good.schema, batches)


@dataclass(frozen=True)
class DemoSummary:
    """What :func:`run_demo` did.

    Attributes:
        path: The store.
        seed: The seed the data came from.
        run_ids: The run of each step, by step name (``ingest_chat``, ``enrich_urls``,
            ``annotate``, ``enrich_media``, ``enrich_urls_retry``).
        written: Rows of this demo that remain, per lineage table.
        totals: Rows in the store, per lineage table (equal to ``written`` on a new store).
        statuses: How this demo's runs ended.
        failed_error: The error recorded on the failing run.
        rolled_back_rows: Rows the rolled-back run had written, now removed.
        report: The store's integrity report after the demo.
        seconds: How long the demo took.
    """

    path: str
    seed: int
    run_ids: dict[str, str]
    written: dict[str, int]
    totals: dict[str, int]
    statuses: Counter[str]
    failed_error: str
    rolled_back_rows: int
    report: IntegrityReport
    seconds: float = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready values."""
        return {
            "path": self.path, "seed": self.seed, "run_ids": dict(self.run_ids),
            "written": dict(self.written), "totals": dict(self.totals),
            "statuses": dict(self.statuses), "failed_error": self.failed_error,
            "rolled_back_rows": self.rolled_back_rows, "problems": self.report.to_dicts(),
            "seconds": round(self.seconds, 3),
        }


def _count(storage: StorageManager, expr: Any) -> int:
    return int(storage.to_arrow(expr.count().as_table()).column(0)[0].as_py())


def run_demo(storage: StorageManager, *, seed: int = 7) -> DemoSummary:
    """Play the demo pipeline on an open, writable store (see the module docstring).

    Raises:
        StorageError: any step failed other than the one meant to fail.
    """
    began = time.perf_counter()
    rng = random.Random(seed)  # noqa: S311 - reproducible demo data, not secrets
    runs = RunStore(storage)
    ids: dict[str, str] = {}
    with runs.run("ingest-chat", config={"source": "whatsapp", "export": "family-group.zip",
                                         "tenant": "demo", "seed": seed}) as run:
        chat = make_chat(rng, created_at=utc_now())
        storage.write("messages", chat.messages, run_id=run.run_id)
        ids["ingest_chat"] = run.run_id
    with runs.run("enrich-urls", config={"model": "summarizer-small", "prompt_version": 3,
                                         "max_chars": 2000}, parent_run_id=run.run_id) as run:
        documents = make_documents(rng, chat, created_at=utc_now())
        storage.write("documents", documents, run_id=run.run_id)
        ids["enrich_urls"] = run.run_id
    with runs.run("annotate", config={"annotator": "curators", "per_document": 1},
                  parent_run_id=run.run_id) as run:
        notes = make_annotations(rng, documents.filter(
            pc.is_in(documents["doc_type"], pa.array(["post", "enrichment", "journal"]))
        ), created_at=utc_now())
        storage.write("annotations", notes, run_id=run.run_id)
        ids["annotate"] = run.run_id
    failed_error = ""
    try:
        with runs.run("enrich-media", config={"model": "captioner", "batch_size": 20},
                      parent_run_id=ids["ingest_chat"]) as run:
            ids["enrich_media"] = run.run_id
            stream = _invalid_stream(rng, chat, created_at=utc_now())
            storage.write("documents", stream, run_id=run.run_id)
    except ValidationError:
        failed_error = runs.get_run(ids["enrich_media"]).error or ""
    else:  # pragma: no cover - the declared rules refuse the batch
        raise AssertionError("the invalid batch was accepted")
    with runs.run("enrich-urls", config={"model": "summarizer-large", "prompt_version": 4,
                                         "max_chars": 2000},
                  parent_run_id=ids["ingest_chat"]) as run:
        mix = dict.fromkeys(DOCUMENT_MIX, 0) | {"enrichment": N_RETRY_DOCUMENTS}
        retry = make_documents(rng, chat, created_at=utc_now(), mix=mix)
        rolled_back_rows = storage.write("documents", retry, run_id=run.run_id)
        ids["enrich_urls_retry"] = run.run_id
    runs.rollback_run(ids["enrich_urls_retry"])
    # The order the pipeline writes them in, then any table a user catalog adds.
    tables = sorted((t.name for t in lineage_tables(storage)),
                    key=lambda t: (_PIPELINE_ORDER.index(t) if t in _PIPELINE_ORDER else 99, t))
    written = {
        t: sum(_count(storage, rows_of_run(storage, t, r)) for r in ids.values()) for t in tables
    }
    return DemoSummary(
        path=storage.location, seed=seed, run_ids=ids, written=written,
        totals={t: _count(storage, storage.table(t)) for t in tables},
        statuses=Counter(str(runs.get_run(r).status) for r in ids.values()),
        failed_error=failed_error, rolled_back_rows=rolled_back_rows,
        report=storage.verify(), seconds=time.perf_counter() - began,
    )


def build_demo_store(path: str | Path, *, seed: int = 7) -> DemoSummary:
    """Open (creating if needed) the store at ``path``, play the demo on it and close it.

    A store that already exists keeps everything it holds: the demo only adds runs.
    """
    with DuckDBStorageManager(path) as storage:
        return run_demo(storage, seed=seed)


__all__ = [
    "DOCUMENT_MIX",
    "N_ANNOTATIONS",
    "N_DOCUMENTS",
    "N_MESSAGES",
    "DemoSummary",
    "build_demo_store",
    "make_annotations",
    "make_chat",
    "make_documents",
    "run_demo",
]


def print_demo(
    summary: DemoSummary, runs: Sequence[Run], rows: Mapping[str, Mapping[str, int]], *, db: str
) -> None:
    """What the demo did: counts, its runs, the failed and rolled-back runs, the report."""
    console = stdout()
    written = ", ".join(f"{n:,} {t}" for t, n in summary.written.items())
    console.print(f"demo store {db} (seed {summary.seed}, {summary.seconds:.1f} s): {written}",
                  soft_wrap=True)
    console.print(runs_table(runs, rows, title="runs (newest first)"))
    failed = short_id(summary.run_ids["enrich_media"])
    console.print(Text(
        f"enrich-media {failed} failed validation as intended and wrote nothing: "
        f"{summary.failed_error.split(' (run ')[0]} (egregora-db show {failed})",
        style="yellow"), soft_wrap=True)
    console.print(f"enrich-urls {short_id(summary.run_ids['enrich_urls_retry'])} was rolled "
                  f"back: its {summary.rolled_back_rows} documents are gone", soft_wrap=True)
    console.print(report_table(summary.report))
