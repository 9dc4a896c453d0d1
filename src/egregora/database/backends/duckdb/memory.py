"""DuckDB's ``memory_limit`` for a store file, shared by the managers of a process that hold it.

DuckDB gives every connection to one file in a process the same database, and
``memory_limit`` belongs to that database. So the limit is kept here, per file: the first
manager to open a file sets its base (later ones on the same file keep it), each write that
needs more for its key indexes asks for it, and the limit is the largest of the base and what
the writes in progress asked for, never above DuckDB's own default (80% of RAM): beyond that,
DuckDB's clean out-of-memory error is better than the operating system's kill.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

import duckdb

__all__ = ["MemoryBudget", "parse_size"]

_UNITS = {"bytes": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_size(text: str) -> int | None:
    """Bytes of a size as DuckDB shows it (``"488.2 MiB"``), rounded up to what it cut off.

    >>> parse_size("488.2 MiB") >= 512_000_000
    True
    >>> parse_size("lots") is None
    True
    """
    number, _, unit = text.strip().partition(" ")
    try:
        value = float(number)
    except ValueError:
        return None
    scale = _UNITS.get(unit)
    if scale is None:
        return None
    # DuckDB shows one decimal, cut rather than rounded (512MB is "488.2 MiB", 488.28
    # exactly): the size is below value + 0.1 units.
    return int((value + 0.1) * scale) if scale > 1 else int(value)


def _current(con: duckdb.DuckDBPyConnection) -> int | None:
    found = con.execute("SELECT current_setting('memory_limit')").fetchone()
    return parse_size(str(found[0])) if found else None


@dataclass
class _File:
    base: int
    base_text: str
    ceiling: int
    holders: set[int] = field(default_factory=set)
    asks: dict[int, int] = field(default_factory=dict)
    current: int = 0


_FILES: dict[str, _File] = {}
_LOCK = threading.Lock()


class MemoryBudget:
    """One manager's share of its file's ``memory_limit``.

    Args:
        con: The manager's connection to the file.
        path: The file.
        limit: The base limit the manager was opened with (``"512MB"``); ``None`` leaves the
            limit as it is and asks for nothing more.

    Raises:
        ValueError: ``limit`` is not a size DuckDB reads.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str, limit: str | None) -> None:
        self._con = con
        self._key = os.path.realpath(path)
        self._me = id(self)
        self._file: _File | None = None
        if limit is None:
            return
        with _LOCK:
            found = _FILES.get(self._key)
            if found is None:
                ceiling = _current(con) or 0
                try:
                    con.execute("SET memory_limit = ?", [limit])
                except duckdb.Error as exc:
                    raise ValueError(
                        f"memory_limit={limit!r} is not a DuckDB memory size such as '512MB' "
                        f"or '4GB': {str(exc).splitlines()[0]}"
                    ) from exc
                base = _current(con) or 0
                found = _File(base=base, base_text=limit, ceiling=max(ceiling, base),
                              current=base)
                _FILES[self._key] = found
            found.holders.add(self._me)
            self._file = found

    @property
    def base(self) -> int | None:
        """The file's base limit in bytes, when the library manages it."""
        return None if self._file is None else self._file.base

    def ask(self, wanted: int) -> None:
        """Ask for ``wanted`` bytes of limit for this manager's write in progress."""
        file = self._file
        if file is None or wanted <= max(file.base, file.asks.get(self._me, 0)):
            return
        with _LOCK:
            file.asks[self._me] = wanted
            self._apply(file)

    def release(self) -> None:
        """The write has ended: give back what it asked for (best effort)."""
        file = self._file
        if file is None or self._me not in file.asks:
            return
        with _LOCK:
            file.asks.pop(self._me, None)
            self._apply(file)

    def close(self) -> None:
        """The manager closes: it holds no share any more."""
        self.release()
        file = self._file
        if file is None:
            return
        with _LOCK:
            file.holders.discard(self._me)
            if not file.holders and _FILES.get(self._key) is file:
                del _FILES[self._key]
        self._file = None

    def _apply(self, file: _File) -> None:
        wanted = min(max(file.base, *file.asks.values(), 0), max(file.ceiling, file.base))
        if wanted == file.current:
            return
        # Lowering can be refused while DuckDB cannot evict down to it yet (right after a
        # large ROLLBACK): the limit then stays, and is lowered at the next change.
        with contextlib.suppress(duckdb.Error):
            if wanted == file.base:
                self._con.execute("SET memory_limit = ?", [file.base_text])
            else:
                self._con.execute("SET memory_limit = ?", [f"{wanted}B"])
            file.current = wanted
