"""The PostgreSQL store: its manager, the translation of PostgreSQL's errors and the binary COPY
encoder. Importing it needs the ``postgres`` extra (psycopg)."""
