"""The embedded store: its manager, its connection (one writing process per file), the
translation of DuckDB's errors, its memory budget and the upgrade of egregora's earlier files."""
