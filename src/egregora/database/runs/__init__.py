"""The services over a store: runs (``store``), their rollback (``rollback``), lineage queries
(``lineage``), the integrity audit (``audit``) and the OpenLineage export (``openlineage``).

They use a storage manager only through its public surface (:class:`egregora.database.store.Store`):
``catalog``, ``lock``, ``execute``, ``transaction``, ``write``, ``table`` and ``to_arrow``.
"""
