"""Where an index lives: chunks, their full-text index and their vectors, behind one interface.

`SQLiteStore` keeps everything in one file: chunks in a table, BM25 through FTS5 (kept in step by
triggers), vectors in a sqlite-vec `vec0` table. The stdlib `sqlite3` of many Pythons cannot load
extensions, so the file is opened with apsw, which can and which brings a current SQLite with FTS5.
`PgStore` (genforge/rag/pgstore.py) is the same interface over PostgreSQL + pgvector;
`genforge.rag.stores.open_store` opens either by location.

Writes happen inside `transaction()`: a crash mid-ingest rolls back to the last committed batch, so
the index is always usable and a rerun picks up where it stopped (unchanged files are skipped).
"""

from __future__ import annotations

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from genforge.errors import GenforgeError

if TYPE_CHECKING:
    from genforge.rag.chunk import Chunk

SCHEMA_VERSION = "1"

# Words too common to help a keyword query; dropping them keeps BM25 from scoring every chunk.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


def query_terms(query: str) -> list[str]:
    """The words of a user's query for keyword search (never raw query syntax: it cannot fail)."""
    words = [w.lower() for w in re.findall(r"\w+", query)]
    kept = [w for w in words if w not in STOPWORDS]
    return list(dict.fromkeys(kept or words))


@dataclass(frozen=True)
class StoredChunk:
    id: int
    source: str  # the file's path
    start: int  # first line (or page)
    end: int  # last line (or page), inclusive
    unit: str  # "line" or "page"
    heading: str
    text: str


class Store(ABC):
    """An index's storage; every method is safe to call from several threads."""

    location: str

    # -- settings the index was built with (embedding model, chunking) --------------------------
    @abstractmethod
    def meta(self) -> dict[str, str]: ...

    @abstractmethod
    def set_meta(self, values: dict[str, str]) -> None: ...

    @abstractmethod
    def create_vectors(self, dimensions: int) -> None:
        """Make the vector table for `dimensions`-long vectors (once, when the store is new)."""

    # -- writing (inside `transaction()`) -----------------------------------------------------------
    @abstractmethod
    def transaction(self): ...

    @abstractmethod
    def files(self) -> dict[str, str]:
        """path -> sha256 of every indexed file."""

    @abstractmethod
    def add_file(
        self,
        path: str,
        sha256: str,
        kind: str,
        chunks: list[Chunk],
        hashes: list[str],
        vectors: np.ndarray,
    ) -> None:
        """Index `path` as these chunks (with their text hashes and vectors), replacing any old ones."""

    @abstractmethod
    def remove_file(self, path: str) -> None: ...

    @abstractmethod
    def rename_file(self, old: str, new: str) -> None: ...

    @abstractmethod
    def vectors_by_hash(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """Stored vectors of chunks with these text hashes: an edited file re-embeds only what changed."""

    # -- reading ------------------------------------------------------------------------------------
    @abstractmethod
    def dense(self, vector: np.ndarray, k: int, glob: str | None = None) -> list[tuple[int, float]]:
        """The k chunks nearest `vector`: (chunk id, cosine similarity), best first."""

    @abstractmethod
    def keyword(self, terms: list[str], k: int, glob: str | None = None) -> list[tuple[int, float]]:
        """The k best chunks for any of `terms` by full-text rank: (chunk id, score), best first."""

    @abstractmethod
    def similarities(self, ids: list[int], vector: np.ndarray) -> dict[int, float]:
        """Cosine similarity of `vector` to each of these chunks."""

    @abstractmethod
    def get(self, ids: list[int]) -> list[StoredChunk]:
        """The chunks with these ids, in the same order."""

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """{"files": n, "chunks": n}."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _glob_sql(glob: str | None) -> str:
    return "" if glob is None else " AND c.path GLOB ?"


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


class SQLiteStore(Store):
    def __init__(self, path: Path, create: bool = True):
        """Open the index in the file `path`; a missing file is made only with `create` (indexing),
        so that reading from a mistyped name leaves nothing behind."""
        try:
            import apsw
            import sqlite_vec
        except ImportError:
            raise GenforgeError(
                "a SQLite index needs apsw and sqlite-vec; pip install 'genforge[rag]'."
            ) from None
        path = Path(path).expanduser()
        if path.is_dir():
            raise GenforgeError(
                f"--store {path} is a folder; give a file name such as docs.sqlite."
            )
        if not path.parent.is_dir():
            raise GenforgeError(f"the folder of --store {path} does not exist; create it first.")
        if not create and not path.exists():
            raise GenforgeError(
                f"--store {path} does not exist, so it holds no index yet; create it with "
                f"`genforge rag index PATH... --store {path}`."
            )
        self.location = str(path)
        self._lock = threading.RLock()
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
        try:
            self.db = apsw.Connection(str(path), flags=flags)
            self.db.enable_load_extension(True)
            self.db.load_extension(sqlite_vec.loadable_path())
            self.db.enable_load_extension(False)
            for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=10000"):
                self.db.execute(f"PRAGMA {pragma}").fetchall()  # one at a time: a row pauses apsw
            self._create()
        except apsw.NotADBError:
            raise GenforgeError(
                f"--store {path} is not a genforge index (not a SQLite file)."
            ) from None
        except apsw.CantOpenError:  # e.g. removed since the check above, or not readable
            raise GenforgeError(
                f"--store {path} cannot be opened; check that it exists and that you may read it."
            ) from None

    def _create(self) -> None:
        with self.db:
            self.db.execute("""
            CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS files(
                path TEXT PRIMARY KEY, sha256 TEXT NOT NULL, kind TEXT NOT NULL, chunks INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS chunks(
                id INTEGER PRIMARY KEY, path TEXT NOT NULL REFERENCES files(path)
                    ON UPDATE CASCADE ON DELETE CASCADE,
                start INTEGER NOT NULL, "end" INTEGER NOT NULL, unit TEXT NOT NULL,
                heading TEXT NOT NULL, text TEXT NOT NULL, hash TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS chunks_path ON chunks(path);
            CREATE INDEX IF NOT EXISTS chunks_hash ON chunks(hash);
            CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
                heading, text, content='chunks', content_rowid='id', tokenize='porter unicode61');
            CREATE TRIGGER IF NOT EXISTS chunks_added AFTER INSERT ON chunks BEGIN
                INSERT INTO chunks_fts(rowid, heading, text) VALUES (new.id, new.heading, new.text);
            END;
            CREATE TRIGGER IF NOT EXISTS chunks_removed AFTER DELETE ON chunks BEGIN
                INSERT INTO chunks_fts(chunks_fts, rowid, heading, text)
                    VALUES ('delete', old.id, old.heading, old.text);
                DELETE FROM chunks_vec WHERE rowid = old.id;
            END;
            """)
            if not self.meta():
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        if self.meta().get("schema") != SCHEMA_VERSION:
            self.db.close()
            raise GenforgeError(
                f"--store {self.location} was written by another genforge version; index into a new file."
            )

    def create_vectors(self, dimensions: int) -> None:
        with self._lock, self.db:
            self.db.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vec USING vec0("
                f"embedding float[{int(dimensions)}] distance_metric=cosine)"
            )

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self.db.execute("SELECT key, value FROM meta"))

    def set_meta(self, values: dict[str, str]) -> None:
        with self._lock, self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(k, str(v)) for k, v in values.items()],
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock, self.db:
            yield

    def files(self) -> dict[str, str]:
        with self._lock:
            return dict(self.db.execute("SELECT path, sha256 FROM files"))

    def add_file(self, path, sha256, kind, chunks, hashes, vectors) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM files WHERE path = ?", (path,))
            self.db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?)", (path, sha256, kind, len(chunks))
            )
            for c, h, v in zip(chunks, hashes, vectors, strict=True):
                self.db.execute(
                    'INSERT INTO chunks(path, start, "end", unit, heading, text, hash) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (path, c.start, c.end, c.unit, c.heading, c.text, h),
                )
                rowid = self.db.last_insert_rowid()
                self.db.execute(
                    "INSERT INTO chunks_vec(rowid, embedding) VALUES (?, ?)", (rowid, _blob(v))
                )

    def remove_file(self, path: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM files WHERE path = ?", (path,))

    def rename_file(self, old: str, new: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM files WHERE path = ?", (new,))
            self.db.execute("UPDATE files SET path = ? WHERE path = ?", (new, old))

    def vectors_by_hash(self, hashes: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(hashes), 500):
                part = list(dict.fromkeys(hashes[i : i + 500]))
                marks = ",".join("?" * len(part))
                rows = self.db.execute(
                    f"SELECT c.hash, v.embedding FROM chunks c JOIN chunks_vec v ON v.rowid = c.id "
                    f"WHERE c.hash IN ({marks})",
                    part,
                )
                for h, blob in rows:
                    out[h] = np.frombuffer(blob, dtype=np.float32)
        return out

    def dense(self, vector, k, glob=None) -> list[tuple[int, float]]:
        with self._lock:
            if glob is None:  # the vec0 index's own k-nearest search
                rows = self.db.execute(
                    "SELECT rowid, distance FROM chunks_vec WHERE embedding MATCH ? AND k = ? "
                    "ORDER BY distance",
                    (_blob(vector), int(k)),
                )
            else:  # a filter: exact search over the chunks it keeps
                rows = self.db.execute(
                    "SELECT c.id, vec_distance_cosine(v.embedding, ?) AS d FROM chunks c "
                    "JOIN chunks_vec v ON v.rowid = c.id WHERE 1"
                    + _glob_sql(glob)
                    + " ORDER BY d LIMIT ?",
                    (_blob(vector), glob, int(k)),
                )
            return [(int(i), 1.0 - float(d)) for i, d in rows]

    def keyword(self, terms, k, glob=None) -> list[tuple[int, float]]:
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        args: list = [match] + ([glob] if glob is not None else []) + [int(k)]
        with self._lock:
            rows = self.db.execute(
                # bm25() is lower-is-better; a heading hit counts twice a body hit.
                "SELECT f.rowid, -bm25(chunks_fts, 2.0, 1.0) AS s FROM chunks_fts f "
                "JOIN chunks c ON c.id = f.rowid WHERE chunks_fts MATCH ?"
                + _glob_sql(glob)
                + " ORDER BY bm25(chunks_fts, 2.0, 1.0) LIMIT ?",
                args,
            )
            return [(int(i), float(s)) for i, s in rows]

    def similarities(self, ids, vector) -> dict[int, float]:
        # Point lookups by rowid: `rowid IN (...)` makes vec0 scan every vector (5x slower at 100k).
        q = np.asarray(vector, dtype=np.float32)
        q = q / (np.linalg.norm(q) or 1.0)
        out = {}
        with self._lock:
            for i in ids:
                row = self.db.execute(
                    "SELECT embedding FROM chunks_vec WHERE rowid = ?", (i,)
                ).fetchone()
                if row is not None:
                    v = np.frombuffer(row[0], dtype=np.float32)
                    out[int(i)] = float(v @ q) / float(np.linalg.norm(v) or 1.0)
        return out

    def get(self, ids) -> list[StoredChunk]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self.db.execute(
                f'SELECT id, path, start, "end", unit, heading, text FROM chunks WHERE id IN ({marks})',
                list(ids),
            )
            found = {r[0]: StoredChunk(*r) for r in rows}
        return [found[i] for i in ids if i in found]

    def stats(self) -> dict[str, int]:
        with self._lock:
            (files,) = self.db.execute("SELECT count(*) FROM files").fetchone()
            (chunks,) = self.db.execute("SELECT count(*) FROM chunks").fetchone()
        return {"files": files, "chunks": chunks}

    def close(self) -> None:
        with self._lock:
            self.db.close()
