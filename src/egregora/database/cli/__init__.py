"""``egregora-db``, the command line over the public API: the commands (``commands``), how files are
read for ``ingest`` (``ingest``), what is printed (``output``), the reads it makes
(``queries``) and the demo pipeline (``demo``)."""

from egregora.database.cli.commands import app, main

__all__ = ["app", "main"]
