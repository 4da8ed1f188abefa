"""Opening a document store by location: both kinds of `Store` behind one call."""

from __future__ import annotations

from pathlib import Path

from genforge.rag.pgstore import PgStore
from genforge.rag.store import SQLiteStore, Store


def open_store(location: str | Path, create: bool = True) -> Store:
    """A store by location: a PostgreSQL URL, or the path of a SQLite file, made when missing only
    with `create` (a PostgreSQL database must exist already)."""
    location = str(location)
    if location.startswith(("postgresql://", "postgres://")):
        return PgStore(location)
    return SQLiteStore(Path(location), create=create)
