"""The demo pipeline: exact counts, the failing and rolled-back runs, a sound store after it,
and data that depends on the seed alone."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from egregora.database import DuckDBStorageManager, RunStore, errors
from egregora.database.cli.demo import (
    AUTHORS,
    DOCUMENT_MIX,
    N_ANNOTATIONS,
    N_DOCUMENTS,
    N_MESSAGES,
    N_RETRY_DOCUMENTS,
    DemoSummary,
    build_demo_store,
    make_chat,
    make_documents,
    run_demo,
)
from egregora.database.model import utc_now
from egregora.database.runs.lineage import committed, parent_chain, rows_of_run


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoSummary]:
    path = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    return path, build_demo_store(path, seed=7)


@pytest.fixture
def storage(demo: tuple[Path, DemoSummary]) -> Iterator[DuckDBStorageManager]:
    with DuckDBStorageManager(demo[0], read_only=True) as store:
        yield store


def _count(storage: DuckDBStorageManager, expr: object) -> int:
    return int(storage.to_arrow(expr.count().as_table()).column(0)[0].as_py())  # type: ignore[attr-defined]


def test_demo_counts_are_exact(demo: tuple[Path, DemoSummary]) -> None:
    _, summary = demo
    assert (N_MESSAGES, N_DOCUMENTS, N_ANNOTATIONS) == (3000, 300, 150)
    assert summary.written == {"messages": 3000, "documents": 300, "annotations": 150}
    assert summary.totals == summary.written
    assert dict(summary.statuses) == {"COMPLETED": 3, "FAILED": 1, "ROLLED_BACK": 1}
    assert summary.rolled_back_rows == N_RETRY_DOCUMENTS == 60
    assert not summary.report
    assert summary.seconds < 60


def test_demo_store_is_sound_and_every_row_committed(storage: DuckDBStorageManager) -> None:
    assert not storage.verify()
    for table, n in {"messages": 3000, "documents": 300, "annotations": 150}.items():
        assert _count(storage, storage.table(table)) == n
        assert _count(storage, committed(storage, table)) == n


def test_demo_documents_mix_every_type(storage: DuckDBStorageManager) -> None:
    docs = storage.table("documents")
    by_type = storage.to_arrow(docs.group_by("doc_type").aggregate(n=docs.count())).to_pylist()
    assert {r["doc_type"]: r["n"] for r in by_type} == DOCUMENT_MIX
    lengths = storage.to_arrow(
        docs.aggregate(low=docs.content.length().min(), high=docs.content.length().max())
    ).to_pylist()[0]
    assert lengths["low"] >= 200
    assert lengths["high"] <= 2200  # whole sentences past a target of at most 2000


def test_demo_chat_has_twelve_authors_over_six_weeks(storage: DuckDBStorageManager) -> None:
    msgs = storage.table("messages")
    row = storage.to_arrow(msgs.aggregate(
        authors=msgs.author_uuid.nunique(), names=msgs.author_raw.nunique(),
        first=msgs.ts.min(), last=msgs.ts.max(), media=msgs.media_url.count(),
    )).to_pylist()[0]
    assert (row["authors"], row["names"]) == (len(AUTHORS), 12)
    assert (row["last"] - row["first"]).days in range(35, 42)
    assert row["media"] == N_MESSAGES // 25


def test_demo_runs_chain_and_configs(demo: tuple[Path, DemoSummary],
                                     storage: DuckDBStorageManager) -> None:
    ids = demo[1].run_ids
    runs = RunStore(storage)
    chain = storage.to_arrow(parent_chain(storage, ids["annotate"])).column("name").to_pylist()
    assert chain == ["annotate", "enrich-urls", "ingest-chat"]
    first, retry = runs.get_run(ids["enrich_urls"]), runs.get_run(ids["enrich_urls_retry"])
    assert first.name == retry.name == "enrich-urls"
    assert first.config_hash != retry.config_hash
    assert retry.status == "ROLLED_BACK"
    assert retry.purged_at is not None
    assert _count(storage, rows_of_run(storage, "documents", retry.run_id)) == 0
    # every annotation is on a document of the first enrichment
    notes, docs = storage.table("annotations"), rows_of_run(storage, "documents", first.run_id)
    assert _count(storage, notes.anti_join(docs, notes.document_id == docs.id)) == 0


def test_demo_failing_run_wrote_nothing_and_kept_its_error(
    demo: tuple[Path, DemoSummary], storage: DuckDBStorageManager
) -> None:
    failed = RunStore(storage).get_run(demo[1].run_ids["enrich_media"])
    assert failed.status == "FAILED"
    assert failed.error == demo[1].failed_error
    assert failed.error is not None
    assert failed.error.startswith("ValidationError: 4 rows of `documents` fail validation")
    for fragment in ("slug=NULL", "filename=NULL", "status='pending'"):
        assert fragment in failed.error
    assert _count(storage, rows_of_run(storage, "documents", failed.run_id)) == 0


def test_demo_summary_is_json(demo: tuple[Path, DemoSummary]) -> None:
    data = json.loads(json.dumps(demo[1].to_dict()))
    assert data["written"] == {"messages": 3000, "documents": 300, "annotations": 150}
    assert data["statuses"] == {"COMPLETED": 3, "FAILED": 1, "ROLLED_BACK": 1}
    assert data["problems"] == []
    assert set(data["run_ids"]) == {"ingest_chat", "enrich_urls", "annotate", "enrich_media",
                                    "enrich_urls_retry"}


def test_demo_data_depends_on_the_seed_only() -> None:
    now = utc_now()

    mix = {"enrichment": 5, "media": 5, "post": 5, "journal": 1, "profile": 2,
           "announcement": 1}

    def texts(seed: int) -> tuple[list[object], list[object]]:
        rng = random.Random(seed)
        chat = make_chat(rng, created_at=now, n=400)
        docs = make_documents(rng, chat, created_at=now, mix=mix)
        return chat.messages.column("text").to_pylist(), docs.column("content").to_pylist()

    assert texts(7) == texts(7)
    assert texts(7) != texts(8)


def test_demo_on_a_read_only_store_is_refused(demo: tuple[Path, DemoSummary]) -> None:
    with DuckDBStorageManager(demo[0], read_only=True) as storage, \
            pytest.raises(errors.ReadOnlyError):
        run_demo(storage)
