"""egregora.database: the storage layer of egregora."""
