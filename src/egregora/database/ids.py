"""Identifiers: time-ordered ids (UUIDv7, RFC 9562) and the one canonical text of a UUID.

DuckDB indexes keys that arrive in order far faster than random ones (a primary key on
UUIDv7 costs 1.19x the unconstrained insert, VARCHAR uuid4 1.62x; see the README's
Decisions), so every id the library mints is a UUIDv7, and writers are encouraged to use
:func:`new_id` for new rows.

A UUID is text at the library's boundary, in one canonical form (lower case, hyphenated):
:func:`canonical_uuid` turns whatever a caller hands (a :class:`uuid.UUID`, text in any case
or with braces) into it, so that equal ids compare equal as text.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last = [0, 0]  # (unix ms, 12-bit sequence) of the previous id, for monotonicity


def new_id() -> uuid.UUID:
    """A new UUIDv7: 48 bits of Unix milliseconds, a sequence, then random bits.

    Ids minted by one process are strictly increasing, even within one millisecond.

    >>> a, b = new_id(), new_id()
    >>> a.version, a < b
    (7, True)
    """
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last[0]:
            ms = _last[0]
            seq = _last[1] + 1
            if seq > 0xFFF:
                ms, seq = ms + 1, 0
        else:
            seq = int.from_bytes(os.urandom(2), "big") & 0x7FF
        _last[0], _last[1] = ms, seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    return uuid.UUID(int=value)


def new_id_str() -> str:
    """:func:`new_id` as canonical text."""
    return str(new_id())


def canonical_uuid(value: object) -> str | None:
    """``value`` as canonical UUID text, or None when it is no UUID (no row can hold it).

    Checked before any query: text that is no UUID (or not even Unicode, such as a lone
    surrogate) would otherwise reach the driver, which fails on it in its own way.

    >>> canonical_uuid("0193AB00-0000-7000-8000-00000000000A")
    '0193ab00-0000-7000-8000-00000000000a'
    >>> canonical_uuid("not-a-uuid") is None
    True
    """
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def canonical_uuid_text(value: object) -> str:
    """:func:`canonical_uuid`, keeping text that is no UUID as it is (for a lookup to refuse).

    >>> canonical_uuid_text("not-a-uuid")
    'not-a-uuid'
    """
    found = canonical_uuid(value)
    return str(value) if found is None else found
