"""A run's config as canonical JSON and its hash: equal settings hash equal, whatever their
spelling (key order, ``1`` or ``1.0``)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from egregora.database.errors import ValidationError
from egregora.database.model import RUNS_TABLE


def checked_text(value: str, path: str, *, column: str = "config") -> str:
    # A lone surrogate is a Python str but not Unicode text: JSON, hashing, Arrow and the
    # store would all fail on it later, with less helpful errors (or none of the library's).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = f"config text at {path}" if column == "config" else f"the run's {column}"
        raise ValidationError(
            f"{where} is not valid Unicode ({exc.reason})",
            table=RUNS_TABLE,
            columns=[column],
        ) from exc
    return value


def storable_text(text: str) -> str:
    """An exception's text as every store can keep it: lone surrogates (not Unicode) and NUL
    (which PostgreSQL text refuses) escaped. Recording a failure must not fail in its turn
    and hide the exception it records."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _normalise(value: Any, path: str) -> Any:
    if isinstance(value, str):
        return checked_text(value, path)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(
                f"config value at {path} is {value}, which JSON cannot represent",
                table=RUNS_TABLE,
                columns=["config"],
            )
        # 1 and 1.0 are the same setting: hash them the same.
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    f"config key {key!r} at {path} is not a string", table=RUNS_TABLE,
                    columns=["config"],
                )
            out[checked_text(key, path)] = _normalise(item, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_normalise(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValidationError(
        f"config value at {path} is a {type(value).__name__}, which is not JSON; convert it "
        "to a string, number, boolean, list or mapping",
        table=RUNS_TABLE,
        columns=["config"],
    )


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of a config: sorted keys, no spaces, 1.0 written as 1.

    >>> canonical_json({"b": 1.0, "a": [True, None]})
    '{"a":[true,null],"b":1}'

    Raises:
        ValidationError: the config is not a mapping, or holds something JSON cannot
            represent.
    """
    if not isinstance(config, Mapping):
        raise ValidationError(
            f"config must be a mapping of setting names to values, not a "
            f"{type(config).__name__}",
            table=RUNS_TABLE,
            columns=["config"],
        )
    return json.dumps(
        _normalise(config, "config"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of :func:`canonical_json`: equal settings hash equal, whatever their spelling.

    Raises:
        ValidationError: the config holds something JSON cannot represent.
    """
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()
