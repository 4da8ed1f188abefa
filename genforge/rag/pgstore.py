"""`PgStore`: the `Store` interface over PostgreSQL + pgvector, for an index that a team shares.

Design choices:
- Three tables named `genforge_meta`, `genforge_files` and `genforge_chunks` in the connection's
  default schema, so that an index can live in a user's own database without cluttering it.
- Full text is a generated `tsv` column (heading weighted A, text B) under a GIN index. Its ranking,
  `ts_rank_cd` with a mild length normalisation, is NOT BM25: there is no inverse document
  frequency, so a rare term counts no more than a common one. Scores are comparable within one
  query only, which is all that rank fusion needs; expect orderings that differ from SQLiteStore's.
- Vectors are a `vector(D)` column under an HNSW cosine index. A search without a path filter uses
  the index (approximate, `hnsw.ef_search` = max(40, 2k)); a filtered one scans every chunk that the
  filter keeps, because an index scan filtered afterwards can return fewer than k rows. pgvector
  cannot index more than 2000 dimensions: wider vectors get no index, and every search is exact.
- Vectors travel without the `pgvector` Python package: they are sent in the text form `[0.1,...]`
  (each float32 as its float64 repr, which pgvector's strtof reads back exactly) and read back in
  pgvector's binary form (big-endian float32s after a 4-byte header), so they round-trip exactly.
- A path filter is a SQLite GLOB (`*`, `?`, `[...]`), translated to an anchored regular expression
  that matches the same paths, so that both stores take the same `--path` argument.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from genforge.errors import GenforgeError
from genforge.rag.store import SCHEMA_VERSION, Store, StoredChunk

HNSW_MAX_DIMENSIONS = 2000  # pgvector's limit for an HNSW index on `vector`
HNSW_MAX_EF_SEARCH = 1000  # pgvector's limit for hnsw.ef_search; larger k searches exactly
SCHEMA_LOCK = 7_236_561_003  # advisory lock key: two processes setting up one database take turns

_TABLES = """
CREATE TABLE IF NOT EXISTS genforge_meta(key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS genforge_files(
    path text PRIMARY KEY, sha256 text NOT NULL, kind text NOT NULL, chunks integer NOT NULL);
CREATE TABLE IF NOT EXISTS genforge_chunks(
    id bigserial PRIMARY KEY,
    path text NOT NULL REFERENCES genforge_files(path) ON UPDATE CASCADE ON DELETE CASCADE,
    start integer NOT NULL, "end" integer NOT NULL, unit text NOT NULL,
    heading text NOT NULL, text text NOT NULL, hash text NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', heading), 'A') || setweight(to_tsvector('english', text), 'B')
    ) STORED);
CREATE INDEX IF NOT EXISTS genforge_chunks_path ON genforge_chunks(path);
CREATE INDEX IF NOT EXISTS genforge_chunks_hash ON genforge_chunks(hash);
CREATE INDEX IF NOT EXISTS genforge_chunks_tsv ON genforge_chunks USING gin(tsv);
"""


def glob_regex(glob: str) -> str:
    """A PostgreSQL regular expression matching exactly the strings that SQLite's GLOB `glob` does.

    `*` is any run of characters (`/` included), `?` one character, `[...]` one character of a set
    (`[^...]` negated; a `]` first is literal; `a-z` a range; a `-` first or last is literal).
    Case matters. A `[` without its `]` matches nothing, as in SQLite.
    """
    out, i = ["^"], 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            bracket, i = _glob_set(glob, i)
            if bracket is None:
                return "(?!)"  # never matches
            out.append(bracket)
            continue
        else:
            out.append(_literal(c))
        i += 1
    return "".join(out) + "$"


def _glob_set(glob: str, i: int) -> tuple[str | None, int]:
    """The bracket expression for the GLOB set that opens at glob[i], and where the set ends.

    Mirrors SQLite's patternCompare: a `-` makes a range only between a previous single character
    and a following character other than `]`; a reversed range (z-a) matches nothing.
    """
    j, n = i + 1, len(glob)
    negate = j < n and glob[j] == "^"
    j += negate
    items: list[str] = []
    if j < n and glob[j] == "]":
        items.append(_literal("]"))
        j += 1
    prior: str | None = None
    while j < n and glob[j] != "]":
        if glob[j] == "-" and prior is not None and j + 1 < n and glob[j + 1] != "]":
            if prior <= glob[j + 1]:  # the range takes the place of its first character
                items[-1] = f"{_literal(prior)}-{_literal(glob[j + 1])}"
            prior, j = None, j + 2
        else:
            prior = glob[j]
            items.append(_literal(prior))
            j += 1
    if j >= n:
        return None, n
    return "[" + "^" * negate + "".join(items) + "]", j + 1


def _literal(c: str) -> str:
    # In PostgreSQL's advanced regexes a backslash before a non-alphanumeric character, inside
    # brackets too, makes it literal; a backslash before a letter would start an escape instead.
    return c if c.isalnum() or not c.isascii() else "\\" + c


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).ravel().tolist())) + "]"


def _vector_from_binary(data: bytes) -> np.ndarray:
    # pgvector's binary form: int16 dimensions, int16 unused, then big-endian float32s
    return np.frombuffer(data, dtype=">f4", offset=4).astype(np.float32)


def redact(url: str) -> str:
    """`url` without its password (the location goes into messages and logs)."""
    url = re.sub(r"^(\w+://[^:@/?#]*):[^@/?#]*@", r"\1@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def _where(info: dict) -> str:
    host = info.get("host") or info.get("hostaddr") or "localhost"
    database = info.get("dbname") or info.get("user") or "postgres"
    return f"{host}:{info.get('port') or 5432}/{database}"


def _reason(error: Exception, info: dict) -> str:
    """The first line of a driver error, scrubbed of the password should the driver quote it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = (lines[0] if lines else type(error).__name__).rstrip(".")
    reason = reason.removeprefix("connection failed: ").removeprefix("connection is bad: ")
    password = info.get("password")
    return reason.replace(password, "***") if password else reason


class PgStore(Store):
    def __init__(self, url: str):
        try:
            import psycopg
        except ImportError:
            raise GenforgeError(
                "a PostgreSQL index needs psycopg; pip install 'genforge[pgvector]'."
            ) from None
        self.location = redact(url)
        self._lock = threading.RLock()
        try:
            info = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error:
            raise GenforgeError(
                f"{self.location} is not a valid PostgreSQL URL; "
                "write it as postgresql://user:password@host:port/database."
            ) from None
        self._where = _where(info)
        timeout = {} if "connect_timeout" in info else {"connect_timeout": 10}
        try:
            self.conn = psycopg.connect(url, autocommit=True, **timeout)
        except psycopg.Error as e:
            raise GenforgeError(
                f"could not connect to PostgreSQL at {self._where}: {_reason(e, info)}; "
                "is the server running?"
            ) from None
        try:
            self._create(info)
        except BaseException:
            self.conn.close()
            raise

    def _enable_pgvector(self, info: dict) -> None:
        import psycopg

        row = self.conn.execute(
            "SELECT installed_version FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        if row is None:
            raise GenforgeError(
                f"the PostgreSQL server at {self._where} lacks the pgvector extension; install "
                "pgvector on it (https://github.com/pgvector/pgvector) or use a SQLite --store."
            )
        if row[0] is not None:
            return
        try:
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as e:
            raise GenforgeError(
                f"could not enable the pgvector extension in PostgreSQL at {self._where}: "
                f"{_reason(e, info)}; have a superuser run CREATE EXTENSION vector in that database."
            ) from None

    def _create(self, info: dict) -> None:
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._enable_pgvector(info)
            self.conn.execute(_TABLES)
            if not self.meta():
                self.conn.execute(
                    "INSERT INTO genforge_meta VALUES ('schema', %s)", (SCHEMA_VERSION,)
                )
        if self.meta().get("schema") != SCHEMA_VERSION:
            raise GenforgeError(
                f"the genforge index in PostgreSQL at {self._where} was written by another genforge "
                "version; index into a new database."
            )

    def create_vectors(self, dimensions: int) -> None:
        dimensions = int(dimensions)
        with self.transaction():
            self.conn.execute(
                f"ALTER TABLE genforge_chunks ADD COLUMN IF NOT EXISTS embedding vector({dimensions})"
            )
            if dimensions <= HNSW_MAX_DIMENSIONS:
                self.conn.execute(
                    "CREATE INDEX IF NOT EXISTS genforge_chunks_embedding ON genforge_chunks "
                    "USING hnsw (embedding vector_cosine_ops)"
                )

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self.conn.execute("SELECT key, value FROM genforge_meta").fetchall())

    def set_meta(self, values: dict[str, str]) -> None:
        with self.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO genforge_meta VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, str(v)) for k, v in values.items()],
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock, self.conn.transaction():  # a nested call is a savepoint
            yield

    def files(self) -> dict[str, str]:
        with self._lock:
            return dict(self.conn.execute("SELECT path, sha256 FROM genforge_files").fetchall())

    def add_file(self, path, sha256, kind, chunks, hashes, vectors) -> None:
        with self.transaction(), self.conn.cursor() as cur:
            cur.execute("DELETE FROM genforge_files WHERE path = %s", (path,))
            cur.execute(
                "INSERT INTO genforge_files VALUES (%s, %s, %s, %s)",
                (path, sha256, kind, len(chunks)),
            )
            with cur.copy(
                'COPY genforge_chunks(path, start, "end", unit, heading, text, hash, embedding) '
                "FROM STDIN"
            ) as copy:
                for c, h, v in zip(chunks, hashes, vectors, strict=True):
                    # PostgreSQL text cannot hold NUL, which SQLite keeps; it carries no meaning.
                    heading, text = c.heading.replace("\0", ""), c.text.replace("\0", "")
                    copy.write_row(
                        (path, c.start, c.end, c.unit, heading, text, h, _vector_text(v))
                    )

    def remove_file(self, path: str) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM genforge_files WHERE path = %s", (path,))

    def rename_file(self, old: str, new: str) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM genforge_files WHERE path = %s", (new,))
            self.conn.execute("UPDATE genforge_files SET path = %s WHERE path = %s", (new, old))

    def vectors_by_hash(self, hashes: list[str]) -> dict[str, np.ndarray]:
        if not hashes:
            return {}
        with self._lock:
            rows = self.conn.execute(
                "SELECT hash, embedding FROM genforge_chunks WHERE hash = ANY(%s)",
                (list(dict.fromkeys(hashes)),),
                binary=True,
            ).fetchall()
        return {h: _vector_from_binary(v) for h, v in rows if v is not None}

    def dense(self, vector, k, glob=None) -> list[tuple[int, float]]:
        k, query = int(k), _vector_text(vector)
        with self.transaction():
            if glob is None and 2 * k <= HNSW_MAX_EF_SEARCH:  # the HNSW index's k-nearest search
                self.conn.execute(f"SET LOCAL hnsw.ef_search = {max(40, 2 * k)}")
                rows = self.conn.execute(
                    "SELECT id, embedding <=> %s::vector AS d FROM genforge_chunks ORDER BY d LIMIT %s",
                    (query, k),
                ).fetchall()
            else:  # exact: a materialized scan gives the planner no index order to use
                where, args = ("", []) if glob is None else ("WHERE path ~ %s", [glob_regex(glob)])
                rows = self.conn.execute(
                    "WITH scored AS MATERIALIZED (SELECT id, embedding <=> %s::vector AS d "
                    f"FROM genforge_chunks {where}) SELECT id, d FROM scored ORDER BY d LIMIT %s",
                    [query, *args, k],
                ).fetchall()
        return [(int(i), 1.0 - float(d)) for i, d in rows]

    def keyword(self, terms, k, glob=None) -> list[tuple[int, float]]:
        if not terms:
            return []
        # Each term is a bound parameter (never tsquery syntax); a term that is a stopword for
        # PostgreSQL becomes an empty query, which `||` drops.
        match = " || ".join(["phraseto_tsquery('english', %s)"] * len(terms))
        where, args = ("", []) if glob is None else (" AND path ~ %s", [glob_regex(glob)])
        with self._lock:
            rows = self.conn.execute(
                # normalisation 1: divide by 1 + log(words), so long chunks do not win by length
                f"SELECT id, ts_rank_cd(tsv, q, 1) AS s FROM genforge_chunks, (SELECT {match} AS q) m "
                f"WHERE tsv @@ q{where} ORDER BY s DESC, id LIMIT %s",
                [*terms, *args, int(k)],
            ).fetchall()
        return [(int(i), float(s)) for i, s in rows]

    def similarities(self, ids, vector) -> dict[int, float]:
        if not ids:
            return {}
        with self._lock:
            rows = self.conn.execute(
                "SELECT id, embedding <=> %s::vector FROM genforge_chunks WHERE id = ANY(%s)",
                (_vector_text(vector), list(ids)),
            ).fetchall()
        return {int(i): 1.0 - float(d) for i, d in rows}

    def get(self, ids) -> list[StoredChunk]:
        if not ids:
            return []
        with self._lock:
            rows = self.conn.execute(
                'SELECT id, path, start, "end", unit, heading, text FROM genforge_chunks '
                "WHERE id = ANY(%s)",
                (list(ids),),
            ).fetchall()
        found = {r[0]: StoredChunk(*r) for r in rows}
        return [found[i] for i in ids if i in found]

    def stats(self) -> dict[str, int]:
        with self._lock:
            files, chunks = self.conn.execute(
                "SELECT (SELECT count(*) FROM genforge_files), (SELECT count(*) FROM genforge_chunks)"
            ).fetchone()
        return {"files": files, "chunks": chunks}

    def close(self) -> None:
        with self._lock:
            self.conn.close()
