"""A fork server: one Python process that has imported the library, forking a child per job.

The crash, lock and disk-fault tests need many short-lived writer processes: a fresh
interpreter takes 1-2 s to import pyarrow, DuckDB, Ibis and Pandera, a fork of one that has
already done so (and written once, so that lazy imports and caches are warm) about 0.2 s to
open a store and write. The server holds no database open when it forks.

Run as ``python -m tests.reliability.forkserver`` from the repository root. It speaks JSON
lines: commands on stdin (``fork`` a job of :data:`tests.reliability.jobs.JOBS` with its
arguments, ``reap`` a child, ``exit``), events on stdout, each tagged with the ``pid`` of the
process that emits it: the server's own replies (``ready``, ``forked``, ``reaped``) and the
events of the jobs. A job that raises emits ``error`` with its traceback and exits with 70.

:class:`ForkServer` is the tests' side: it starts the server, forks jobs, waits for their
events, and reaps them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]

#: Exit status of a child whose job raised.
JOB_FAILED = 70


def emit(event: str, **fields: Any) -> None:
    """Write one event line to stdout, tagged with this process's pid.

    ``os.write`` of a line shorter than PIPE_BUF (4 KiB) is atomic, so lines of concurrent
    children never interleave; longer ones are cut.
    """
    line = json.dumps({"event": event, "pid": os.getpid(), **fields}, default=str)
    if len(line) > 3800:
        line = json.dumps(
            {"event": event, "pid": os.getpid(), "cut": line[:3000]}, default=str
        )
    data = (line + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _warm_up() -> None:
    """Write once in memory: lazy imports and compiled statements are then shared by forks."""
    import gc

    from tests.helpers import make_annotations, make_documents, make_messages

    from egregora.database import DuckDBStorageManager, RunStore

    with DuckDBStorageManager(":memory:", chunk_rows=5) as storage:
        runs = RunStore(storage)
        with runs.run("warm-up") as run:
            docs = make_documents(12, seed=1)
            storage.write("documents", docs, run_id=run.run_id)
            storage.write("annotations", make_annotations(docs["id"][:3]), run_id=run.run_id)
            storage.write("messages", make_messages(4), run_id=run.run_id)
        storage.verify()
    gc.collect()


def _child(job: str, args: dict[str, Any]) -> None:
    """The body of a forked child: run the job, report, and leave without cleanup."""
    import ctypes

    from tests.reliability.jobs import JOBS

    code = 0
    try:
        # Never outlive the server: a test run that dies must not leave writers behind.
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        JOBS[job](**args)
    except BaseException as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        code = JOB_FAILED
    finally:
        os._exit(code)


def serve() -> None:
    """The server's loop (the body of ``python -m tests.reliability.forkserver``)."""
    import tests.reliability.jobs  # noqa: F401 - imported before any fork

    _warm_up()
    emit("ready")
    children: set[int] = set()
    for raw in sys.stdin.buffer:
        command = json.loads(raw)
        if command["cmd"] == "fork":
            pid = os.fork()
            if pid == 0:
                _child(command["job"], command["args"])
            children.add(pid)
            emit("forked", child=pid)
        elif command["cmd"] == "reap":
            _, status = os.waitpid(command["child"], 0)
            children.discard(command["child"])
            emit("reaped", child=command["child"], returncode=os.waitstatus_to_exitcode(status))
        else:
            break
    # Asked to stop, or the tests went away (end of input): no child outlives the server.
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


class JobFailedError(AssertionError):
    """A job raised in its child process (the message holds its traceback)."""


class ForkServer:
    """The tests' side of the fork server.

    Args:
        timeout: Seconds to wait for the server to be ready.
    """

    def __init__(self, *, timeout: float = 60.0) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.forkserver"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pid = self._proc.pid
        self._queues: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._guard = threading.Lock()
        self._commands = threading.RLock()
        self._live: set[int] = set()
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout,), name="forkserver-events", daemon=True
        )
        self._reader.start()
        self._reply("ready", timeout=timeout)

    def _queue(self, pid: int) -> queue.Queue[dict[str, Any]]:
        with self._guard:
            return self._queues.setdefault(pid, queue.Queue())

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                message = json.loads(raw)
                pid = int(message["pid"])
            except (ValueError, KeyError, TypeError):
                continue  # a library printing to stdout: not an event
            self._queue(pid).put(message)

    def _send(self, command: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(command).encode() + b"\n")
        self._proc.stdin.flush()

    def _reply(self, event: str, *, timeout: float) -> dict[str, Any]:
        try:
            message = self._queue(self.pid).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the fork server sent no {event!r} in {timeout} s") from None
        assert message["event"] == event, message
        return message

    def fork(self, job: str, **args: Any) -> int:
        """Fork a child running ``job(**args)``; returns its pid."""
        with self._commands:
            self._send({"cmd": "fork", "job": job, "args": args})
            pid = int(self._reply("forked", timeout=30)["child"])
            self._live.add(pid)
            return pid

    def kill(self, pid: int) -> int | None:
        """SIGKILL the child and reap it, unless it was reaped already (its pid may be
        another process's by now); its return code, or None."""
        with self._commands:
            if pid not in self._live:
                return None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return self.reap(pid)

    def event(self, pid: int, *, timeout: float) -> dict[str, Any] | None:
        """The child's next event, or None if it sent none within ``timeout`` seconds.

        Raises:
            JobFailedError: the job raised.
        """
        try:
            message = self._queue(pid).get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if message["event"] == "error":
            raise JobFailedError(f"job of child {pid} failed:\n{message.get('traceback')}")
        return message

    def wait_for(self, pid: int, event: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """The child's first event named ``event`` (earlier events are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.event(pid, timeout=deadline - time.monotonic())
            if message is None:
                raise AssertionError(f"child {pid} sent no {event!r} in {timeout} s")
            if message["event"] == event:
                return message

    def drain(self, pid: int) -> list[dict[str, Any]]:
        """Every event the child has sent and no one has read yet."""
        found = []
        while (message := self.event(pid, timeout=0)) is not None:
            found.append(message)
        return found

    def reap(self, pid: int, *, timeout: float = 60.0) -> int:
        """Wait for the child to end; its return code (``-signal`` when a signal ended it)."""
        with self._commands:
            self._send({"cmd": "reap", "child": pid})
            try:
                return int(self._reply("reaped", timeout=timeout)["returncode"])
            except AssertionError:
                # Do not leave a hung child behind: end it, and let the server reap it.
                os.kill(pid, signal.SIGKILL)
                self._reply("reaped", timeout=30)
                raise
            finally:
                self._live.discard(pid)

    def close(self) -> None:
        """Stop the server, after killing and reaping any child a failed test left."""
        for pid in list(self._live):
            self.kill(pid)
        if self._proc.poll() is None:
            with self._commands:
                self._send({"cmd": "exit"})
            self._proc.wait(30)
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._reader.join(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


if __name__ == "__main__":
    serve()
