"""Opening a DuckDB file: one writing process per file, another's lock as StoreLockedError.

DuckDB admits one writing process per file, and no reader while a writer holds it; the
error names the holder's PID. :func:`open_file` retries for ``lock_timeout`` seconds, then
raises :class:`StoreLockedError` naming that PID; every other failure to open is a
:class:`ConnectionFailedError`.
"""

from __future__ import annotations

import re
import time

import duckdb

from egregora.database.errors import ConnectionFailedError, StoreLockedError

_LOCK_PID = re.compile(r"PID (\d+)")

#: What a caller told that the file is held should do, unless told otherwise.
LOCKED_ADVICE = (
    "DuckDB admits one writing process per file, and no reader while a writer holds it. "
    "Wait for that process to finish, close it, or use the PostgreSQL backend for "
    "concurrent writers. Never delete the .wal file."
)


def open_file(
    path: str,
    *,
    read_only: bool,
    lock_timeout: float = 0.0,
    advice: str = LOCKED_ADVICE,
) -> duckdb.DuckDBPyConnection:
    """A connection to the DuckDB file at ``path`` (or ``:memory:``).

    Args:
        path: The file.
        read_only: Open for reading only.
        lock_timeout: Seconds to keep retrying while another process holds the file.
        advice: The sentence that ends a StoreLockedError's message.

    Raises:
        StoreLockedError: another process holds the file beyond ``lock_timeout``.
        ConnectionFailedError: the file cannot be opened (not a DuckDB file, corrupt).
    """
    deadline = time.monotonic() + lock_timeout
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            text = str(exc)
            if "lock" not in text.lower():
                raise ConnectionFailedError(f"cannot open {path}: {text}") from exc
            if time.monotonic() >= deadline:
                match = _LOCK_PID.search(text)
                pid = int(match.group(1)) if match else None
                holder = f"process {pid}" if pid else "another process"
                waited = f" (waited {lock_timeout:g} s)" if lock_timeout else ""
                raise StoreLockedError(
                    f"{path} is held by {holder}{waited}; {advice}", path=path, holder_pid=pid
                ) from exc
            # Never sleep past the deadline: lock_timeout is a promise to the caller.
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, 0.5)
        except duckdb.Error as exc:
            raise ConnectionFailedError(f"cannot open {path}: {exc}") from exc
