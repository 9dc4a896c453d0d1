"""Crash safety: writers killed with SIGKILL at random moments lose no acknowledged batch.

A child process writes planned batches of documents and annotations under a run of its own,
as streams of small record batches regrouped into chunks of ``chunk_rows`` rows, and appends
the ids of each batch to a side file (fsync'ed) once ``write`` has returned. The test kills it
with SIGKILL, then opens the store and checks that:

- the store opens, and the killed run is CRASHED, naming the dead process;
- every batch in the side file is present in full, and no batch is present in part: a batch
  is all there or not at all, and at most the one in flight when the kill came is there
  without being in the side file (its write may have committed before the side file knew);
- no row of the run is anything but a row of a planned batch, with its planned content;
- once the crashed run is rolled back (its rows are what ``verify`` reports of a crashed run,
  by design), ``verify()`` is empty: no orphan, duplicate or unfinished purge anywhere.

Three ways to choose the moment, each from a printed seed (``random.Random(seed)``):
``random`` (a delay from the fork: open, run start, mid-stream, commit, side file or idle),
``chunk`` (right after a chosen chunk of a multi-chunk stream was loaded, before its commit),
``commit`` (right as a chosen COMMIT starts, some with checkpoints inside commits).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pytest
from tests.reliability.forkserver import ForkServer
from tests.reliability.jobs import PlannedBatch, crash_plan, planned_rows
from tests.reliability.tally import Tally

from egregora.database import DuckDBStorageManager, RunStatus, RunStore

#: Kills per mode; three modes make the suite's 21 (EGREGORA_RELIABILITY_KILLS overrides).
KILLS_PER_MODE = int(os.environ.get("EGREGORA_RELIABILITY_KILLS", "7"))
BATCHES = 6
CONTENT_TABLES = ("documents", "annotations")


def read_side(side: Path) -> dict[int, list[str]]:
    """The batches the side file acknowledges: complete lines only (a kill may cut one)."""
    if not side.exists():
        return {}
    confirmed = {}
    for line in side.read_bytes().split(b"\n")[:-1]:
        entry = json.loads(line)
        confirmed[int(entry["batch"])] = list(entry["ids"])
    return confirmed


def stored_rows(storage: DuckDBStorageManager, table: str, run_id: str) -> pa.Table:
    t = storage.table(table)
    mine = t.filter(t.run_id == ibis.literal(run_id, type="uuid"))
    return storage.to_arrow(mine.select("id", "content"))


def ids_anywhere(storage: DuckDBStorageManager, table: str, ids: list[str]) -> int:
    t = storage.table(table)
    return int(storage.to_arrow(t.filter(t.id.cast("string").isin(ids)).count().as_table())[0][0]
               .as_py())


def landing(seen: list[dict[str, Any]], present: list[int], confirmed: dict[int, Any]) -> str:
    """Where the kill landed, from the last event the writer sent before it died."""
    if set(present) - set(confirmed):
        return "after a commit, before the side file"
    last = next((e for e in reversed(seen) if e.get("batch", 0) is not None), None)
    kind = None if last is None else last["event"]
    return {
        None: "while opening or starting the run",
        "run": "before the first chunk",
        "chunk": "mid-stream, between chunks",
        "commit": "during a commit (rolled back)",
        "committed": "after a commit, before the side file",
        "confirmed": "between batches",
        "done": "idle after the last batch",
    }.get(kind, str(kind))


class Cycle:
    """One writer, one kill, one check."""

    def __init__(self, tmp: Path, index: int, rng: random.Random, mode: str) -> None:
        self.index = index
        self.mode = mode
        self.path = tmp / "crash.duckdb"
        self.side = tmp / f"side-{index}.jsonl"
        self.plan_seed = rng.randrange(2**31)
        big = mode == "commit"
        self.rows = (200, 600) if big else (30, 160)
        self.plan = crash_plan(self.plan_seed, batches=BATCHES, rows=self.rows)
        self.chunk_rows = rng.choice([16, 40, 64]) if not big else rng.choice([100, 250])
        self.piece_rows = rng.choice([7, 25])
        self.checkpoint = rng.choice([None, "256KB"]) if big else None
        self.delay = rng.uniform(0.0, 0.9)
        self.target_batch = rng.randrange(0, 3)
        # An annotation batch has at most as many rows as the documents it annotates.
        rows = planned_rows(self.plan, self.target_batch).num_rows
        chunks = -(-rows // self.chunk_rows)
        self.target_chunk = rng.randrange(1, max(chunks, 2))
        self.commit_delay = rng.uniform(0.0, 0.002)

    def describe(self) -> str:
        return (
            f"cycle {self.index} ({self.mode}): plan seed {self.plan_seed}, rows {self.rows}, "
            f"chunk_rows {self.chunk_rows}, pieces of {self.piece_rows}, checkpoint "
            f"{self.checkpoint or 'default'}, delay {self.delay:.3f} s, target batch "
            f"{self.target_batch} chunk {self.target_chunk}, commit delay "
            f"{self.commit_delay * 1000:.2f} ms"
        )

    def start(self, server: ForkServer) -> int:
        return server.fork(
            "crash_writer", path=str(self.path), side=str(self.side), cycle=self.index,
            plan_seed=self.plan_seed, batches=BATCHES, rows=list(self.rows),
            chunk_rows=self.chunk_rows, piece_rows=self.piece_rows,
            checkpoint_threshold=self.checkpoint,
        )

    def kill_at_the_moment(self, server: ForkServer, pid: int) -> list[dict[str, Any]]:
        """Wait for this cycle's moment, SIGKILL the writer; the events it had sent."""
        try:
            seen = self._await_the_moment(server, pid)
        except BaseException:
            server.kill(pid)
            raise
        os.kill(pid, signal.SIGKILL)
        returncode = server.reap(pid)
        seen.extend(server.drain(pid))
        assert returncode == -signal.SIGKILL, (returncode, seen[-3:])
        return seen

    def _await_the_moment(self, server: ForkServer, pid: int) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        if self.mode == "random":
            deadline = time.monotonic() + self.delay
            while (left := deadline - time.monotonic()) > 0:
                event = server.event(pid, timeout=left)
                if event is not None:
                    seen.append(event)
        else:
            wanted = "chunk" if self.mode == "chunk" else "commit"
            while True:
                event = server.event(pid, timeout=60)
                assert event is not None, f"no event from the writer: {self.describe()}"
                seen.append(event)
                passed = event["event"] == "done" or (event.get("batch") or 0) > self.target_batch
                assert not passed, f"the moment never came: {self.describe()}"
                if event["event"] == wanted and event.get("batch") == self.target_batch and (
                    wanted == "commit" or event["chunk"] >= self.target_chunk
                ):
                    break
            if self.mode == "commit" and self.commit_delay:
                time.sleep(self.commit_delay)
        return seen

    def check(self, storage: DuckDBStorageManager, pid: int, seen: list[dict[str, Any]],
              tally: Tally) -> str:
        """Check the store after the kill; a word on where the kill landed."""
        confirmed = read_side(self.side)
        planned = {b.index: planned_rows(self.plan, b.index) for b in self.plan}
        for index, ids in confirmed.items():
            assert ids == planned[index]["id"].to_pylist(), f"side file of batch {index}"
        runs = RunStore(storage)
        named = runs.list_runs().filter(ibis._.name == f"crash-{self.index}")
        found = [str(r) for r in storage.to_arrow(named.select("run_id"))["run_id"].to_pylist()]
        reported = [e["run_id"] for e in seen if e["event"] == "run"]
        assert len(found) <= 1, found
        if reported:
            assert found == reported
        if not found:
            # Killed before its run was recorded: nothing of the cycle may be anywhere.
            assert not confirmed
            for batch in self.plan:
                ids = planned[batch.index]["id"].to_pylist()
                assert ids_anywhere(storage, batch.table, ids) == 0
            tally.batches_checked += len(self.plan)
            assert not storage.verify(), storage.verify()
            return "before the run was recorded"
        run = runs.get_run(found[0])
        assert run.status is RunStatus.CRASHED
        assert run.pid == pid
        assert f"process {pid}" in (run.error or "")
        present = self._present_batches(storage, run.run_id, planned, confirmed, tally)
        # A COMMIT that returned is durable, whether or not the side file heard of it.
        committed = {e["batch"] for e in seen if e["event"] == "committed"} - {None}
        lost = committed - set(present)
        tally.rows_lost += sum(planned[i].num_rows for i in lost - set(confirmed))
        assert not lost, f"committed batches missing: {sorted(lost)}; {self.describe()}"
        runs.rollback_run(run.run_id)
        assert not storage.verify(), storage.verify()
        assert runs.get_run(run.run_id).status is RunStatus.ROLLED_BACK
        return landing(seen, present, confirmed)

    def _present_batches(
        self,
        storage: DuckDBStorageManager,
        run_id: str,
        planned: dict[int, pa.Table],
        confirmed: dict[int, list[str]],
        tally: Tally,
    ) -> list[int]:
        """The planned batches in the store, each checked whole (all rows or none)."""
        stored = {t: stored_rows(storage, t, run_id) for t in CONTENT_TABLES}
        content = {
            t: dict(zip(map(str, rows["id"].to_pylist()), rows["content"].to_pylist(),
                        strict=True))
            for t, rows in stored.items()
        }
        present, accounted = [], dict.fromkeys(CONTENT_TABLES, 0)
        for batch in self.plan:
            rows = planned[batch.index]
            ids = rows["id"].to_pylist()
            there = [i for i in ids if i in content[batch.table]]
            tally.batches_checked += 1
            assert len(there) in (0, len(ids)), (
                f"batch {batch.index} present in part: {len(there)} of {len(ids)} rows; "
                f"{self.describe()}"
            )
            if not there:
                if batch.index in confirmed:
                    tally.rows_lost += len(ids)
                continue
            present.append(batch.index)
            accounted[batch.table] += len(ids)
            assert [content[batch.table][i] for i in ids] == rows["content"].to_pylist()
        for table in CONTENT_TABLES:
            # No row of the run that is not a row of a planned batch.
            assert stored[table].num_rows == accounted[table], table
        assert set(confirmed) <= set(present), (
            f"acknowledged batches missing: {sorted(set(confirmed) - set(present))}; "
            f"{self.describe()}"
        )
        next_one = max(confirmed, default=-1) + 1
        assert set(present) - set(confirmed) <= {next_one}, (present, sorted(confirmed))
        return present


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["random", "chunk", "commit"])
def test_killed_writers_lose_no_acknowledged_batch(
    mode: str,
    forkserver: ForkServer,
    tmp_path: Path,
    tally: Tally,
    seed_for: Callable[[str], int],
) -> None:
    seed = seed_for(mode)
    rng = random.Random(seed)
    landed: dict[str, int] = {}
    for index in range(KILLS_PER_MODE):
        cycle = Cycle(tmp_path, index, rng, mode)
        print(cycle.describe())
        pid = cycle.start(forkserver)
        seen = cycle.kill_at_the_moment(forkserver, pid)
        with DuckDBStorageManager(cycle.path, lock_timeout=10) as storage:
            where = cycle.check(storage, pid, seen, tally)
        landed[where] = landed.get(where, 0) + 1
        tally.kills += 1
    summary = ", ".join(f"{n} {where}" for where, n in sorted(landed.items()))
    tally.notes.append(f"crash[{mode}] seed {seed}: {KILLS_PER_MODE} kills, landed {summary}")


def test_the_plan_is_a_function_of_its_seed() -> None:
    # The check regenerates the rows the writer planned: same seed, same ids and content.
    plan = crash_plan(7, batches=BATCHES, rows=(5, 9))
    assert plan == crash_plan(7, batches=BATCHES, rows=(5, 9))
    assert [b.table for b in plan] == ["documents", "documents", "annotations"] * 2
    for batch in plan:
        a, b = planned_rows(plan, batch.index), planned_rows(plan, batch.index)
        assert a.select(["id", "content"]).equals(b.select(["id", "content"]))
    notes = planned_rows(plan, 2)
    assert set(notes["document_id"].to_pylist()) <= set(planned_rows(plan, 1)["id"].to_pylist())
    assert isinstance(plan[0], PlannedBatch)
