"""The backends of the store: what they share (``base``, ``diagnosis``), the embedded DuckDB
store (``duckdb``) and the PostgreSQL store (``postgres``)."""
