"""Opening a document store by location: both kinds of `Store` behind one call."""

from __future__ import annotations

from pathlib import Path

from genforge.rag.pgstore import PgStore
from genforge.rag.store import SQLiteStore, Store


def open_store(location: str | Path) -> Store:
    """A store by location: a PostgreSQL URL, or the path of a SQLite file (created when missing)."""
    location = str(location)
    if location.startswith(("postgresql://", "postgres://")):
        return PgStore(location)
    return SQLiteStore(Path(location))
