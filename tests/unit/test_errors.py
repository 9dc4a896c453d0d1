"""Errors: every class pickles to an equal error (a worker process or a notebook kernel sends
them), and messages show a few rows, then "and N more"."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pyarrow as pa
import pytest

from egregora.database import errors
from egregora.database.errors import (
    Failure,
    RowError,
    SchemaMismatchError,
    StorageError,
    StoreLockedError,
    failures_table,
)

RUN = "0193a6f0-7c1e-7d2a-9b3e-1f2a3b4c5d6e"
FAILURES = failures_table([Failure("id", "not_null", None, "id='d-1'"), Failure("tags", "type")])

ERROR_CLASSES = sorted(
    (c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, StorageError)),
    key=lambda c: c.__name__,
)


def _example(cls: type[StorageError]) -> StorageError:
    """An instance of ``cls`` with every field it has set to a telling value."""
    if issubclass(cls, SchemaMismatchError):
        return cls(["documents.id: declared string, found uuid", "runs: CHECK missing"],
                   table="documents")
    if issubclass(cls, StoreLockedError):
        return cls("store.duckdb is held by process 42", path="store.duckdb", holder_pid=42)
    if issubclass(cls, RowError):
        return cls("2 rows of `documents` fail validation", table="documents",
                   columns=["id", "tags"], run_id=RUN, failures=FAILURES,
                   examples=["id=NULL at id='d-1' (not_null)"], total=2)
    return cls("the store is closed", table="runs", columns=["status"], run_id=RUN,
               failures=FAILURES)


def _fields(error: StorageError) -> dict[str, Any]:
    found = dict(vars(error))
    found.pop("failures", None)
    return found


def test_every_error_class_is_covered() -> None:
    assert len(ERROR_CLASSES) >= 18
    assert StorageError in ERROR_CLASSES


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_an_error_pickles_to_an_equal_error(cls: type[StorageError]) -> None:
    error = _example(cls)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert str(back) == str(error)
    assert back.args == error.args
    assert _fields(back) == _fields(error)
    if error.failures is None:
        assert back.failures is None
    else:
        assert isinstance(back.failures, pa.Table)
        assert back.failures.equals(error.failures)


def test_a_schema_mismatch_keeps_its_differences_whole() -> None:
    error = SchemaMismatchError(["a difference", "another"])
    back = pickle.loads(pickle.dumps(error))
    assert back.differences == ("a difference", "another")
    assert "(2 difference(s))" in str(back)


def test_a_row_error_message_shows_a_few_rows_then_the_count() -> None:
    error = errors.ValidationError(
        "8 rows of `documents` fail validation", table="documents", run_id=RUN,
        examples=[f"id='d-{i}'" for i in range(8)],
    )
    assert str(error) == (
        f"8 rows of `documents` fail validation (run {RUN}), nothing written: "
        "id='d-0', id='d-1', id='d-2', id='d-3', id='d-4' and 3 more"
    )


def test_failures_have_one_schema() -> None:
    assert FAILURES.schema == errors.FAILURES_SCHEMA
    assert failures_table([]).num_rows == 0
    assert FAILURES.to_pylist()[0] == {
        "column": "id", "check": "not_null", "value": None, "key": "id='d-1'"
    }
