"""The surface of a store that the run services and extensions use: :class:`Store`.

:class:`~egregora.database.backends.base.StorageManager` implements it; the services over a
store (:mod:`egregora.database.runs`) are typed against this protocol, so they import no
backend and reach into nothing private. Statements are sqlglot expressions from
:mod:`egregora.database.statements` with ``?`` placeholders, which each backend renders in
its own dialect.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import ibis.expr.types as ir
    import pyarrow as pa
    from sqlglot import exp

    from egregora.database.model import Catalog
    from egregora.database.statements import OnConflict


class Store(Protocol):
    """What a service may do with a store."""

    @property
    def catalog(self) -> Catalog:
        """The declared tables."""
        ...

    @property
    def read_only(self) -> bool:
        """Whether every write is refused."""
        ...

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """A re-entrant lock serialising use of the write connection; hold it across a check
        and the change that depends on it (a run's status, then its end)."""
        ...

    @property
    def location(self) -> str:
        """Where the store lives, for messages (a path, or a URL without its password)."""
        ...

    def execute(self, statement: exp.Expression | str, params: Sequence[Any] = ()) -> pa.Table:
        """Run one statement on the write connection; its result (or the count of rows it
        changed) as Arrow. Driver errors come out as the library's errors."""
        ...

    def transaction(self) -> AbstractContextManager[Any]:
        """One transaction on the write connection: committed at the end of the block,
        rolled back on any error."""
        ...

    def write(
        self, table: str, data: Any, /, *, run_id: str | None, on_conflict: OnConflict = "error"
    ) -> int:
        """Write rows to a declared table, all or nothing (see ``StorageManager.write``)."""
        ...

    def table(self, name: str) -> ir.Table:
        """An Ibis expression over a table, for reads from this thread."""
        ...

    def to_arrow(self, expr: ir.Expr) -> pa.Table:
        """Execute an Ibis expression of this store and return an Arrow table."""
        ...
