"""Ibis tables over relations of a DuckDB connection, without asking DuckDB for their columns
each time.

``backend.table(name)`` describes the relation first (about 4 ms); the write path names the
same relations again and again (the batch being written, the validation gate's view), with
the same columns every time, so their schemas are asked for once and remembered.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any

import ibis.expr.operations as ops
import ibis.expr.schema as sch
import ibis.expr.types as ir

_SCHEMAS: dict[tuple[str, Hashable], sch.Schema] = {}
_LOCK = threading.Lock()


def bound_table(backend: Any, name: str, shape: Hashable = None) -> ir.Table:
    """An Ibis table over the relation ``name`` of ``backend``'s connection.

    Args:
        backend: An Ibis DuckDB backend.
        name: A table or view of its connection (unqualified).
        shape: What fixes the relation's columns besides its name (the Arrow schema of a
            registered batch); relations of the same name and shape have the same columns.
    """
    key = (name, shape)
    schema = _SCHEMAS.get(key)
    if schema is None:
        schema = backend.get_schema(name)
        with _LOCK:
            _SCHEMAS[key] = schema
    return ops.DatabaseTable(
        name, schema=schema, source=backend, namespace=ops.Namespace(catalog=None, database=None)
    ).to_expr()
