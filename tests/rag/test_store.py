"""Both stores (SQLite and PostgreSQL + pgvector) behave the same through the `Store` interface."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import pytest
from components import require_module

from genforge.errors import GenforgeError
from genforge.rag.store import query_terms
from genforge.rag.stores import open_store

DIMENSIONS = 8  # the `store` fixture's vectors
PATHS = [
    "/docs/a.md",
    "/docs/b.md",
    "/docs/guide/c.md",
    "/docs/readme.txt",
    "/src/b1.txt",
    "/src/b2.txt",
    "/src/bb.txt",
    "/lib/a1.txt",
    "/lib/ab.txt",
    "/notes/b9.txt",
]


@dataclass(frozen=True)
class Piece:
    """The fields of a chunk that a store reads (as genforge.rag.chunk.Chunk has them)."""

    text: str
    start: int = 1
    end: int = 1
    heading: str = ""
    unit: str = "line"


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIMENSIONS)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)  # (n, D)


def add(store, path: str, texts: list[str], vectors: np.ndarray, headings=None, sha="sha") -> None:
    headings = headings or [""] * len(texts)
    pieces = [
        Piece(t, i + 1, i + 1, h) for i, (t, h) in enumerate(zip(texts, headings, strict=True))
    ]
    store.add_file(path, sha, "text", pieces, [f"{path}#{t}" for t in texts], vectors)


def everything(store) -> dict[int, tuple]:
    """id -> (path, text) of every chunk; both stores number chunks 1, 2, ... as they are added."""
    found = store.get(list(range(1, 2000)))
    assert len(found) == store.stats()["chunks"]
    return {c.id: (c.source, c.text) for c in found}


@pytest.fixture
def filled(store):
    """`store` with 200 chunks spread over PATHS; returns (store, ids, paths, vectors) per chunk."""
    vectors = unit_vectors(200)
    for i, path in enumerate(PATHS):
        add(
            store, path, [f"chunk {j}" for j in range(i, 200, len(PATHS))], vectors[i :: len(PATHS)]
        )
    by_text = {text: (cid, path) for cid, (path, text) in everything(store).items()}
    ids, paths = zip(*(by_text[f"chunk {j}"] for j in range(200)), strict=True)
    return store, np.array(ids), list(paths), vectors


def brute_force(ids, vectors, query, k, keep=None) -> tuple[list[int], np.ndarray]:
    sims = vectors @ query / np.linalg.norm(query)
    order = [i for i in np.argsort(-sims, kind="stable") if keep is None or keep[i]][:k]
    return [int(ids[i]) for i in order], sims[order]


def sqlite_glob(path: str, glob: str) -> bool:
    """The reference: what SQLite's GLOB operator says."""
    with closing(sqlite3.connect(":memory:")) as db:
        return bool(db.execute("SELECT ? GLOB ?", (path, glob)).fetchone()[0])


def snapshot(store, queries: np.ndarray) -> tuple:
    return (
        store.files(),
        store.stats(),
        everything(store),
        [store.dense(q, 10) for q in queries],
        store.keyword(["chunk", "alpha"], 50),
        store.meta(),
    )


# -- dense search -------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [10, 600])  # 600: more than the HNSW search list allows, so exact
def test_dense_search_returns_the_exact_nearest_neighbours_in_order(filled, k):
    store, ids, _, vectors = filled
    for query in unit_vectors(6, seed=1):
        got = store.dense(query, k)
        want_ids, want_sims = brute_force(ids, vectors, query, k)
        assert [i for i, _ in got] == want_ids
        np.testing.assert_allclose([s for _, s in got], want_sims, atol=1e-5)


@pytest.mark.parametrize(
    "glob", ["/docs/*.md", "*/b?.txt", "/[ls]*/[ab]?.txt", "*[^a].md", "/nowhere/*"]
)
def test_a_glob_keeps_only_matching_paths_and_the_exact_top_k_among_them(filled, glob):
    store, ids, paths, vectors = filled
    keep = [sqlite_glob(p, glob) for p in paths]
    for query in unit_vectors(4, seed=2):
        got = store.dense(query, 10, glob)
        want_ids, want_sims = brute_force(ids, vectors, query, 10, keep)
        assert [i for i, _ in got] == want_ids
        np.testing.assert_allclose([s for _, s in got], want_sims, atol=1e-5)
    kept = {int(i) for i, k in zip(ids, keep, strict=True) if k}
    assert {i for i, _ in store.keyword(["chunk"], 500, glob)} == kept


def test_similarities_are_cosines_of_the_chunks_asked_for(filled):
    store, ids, _, vectors = filled
    query = unit_vectors(1, seed=3)[0] * 3.0  # not unit length: cosine must not care
    asked = [int(ids[5]), int(ids[17]), int(ids[199])]
    got = store.similarities([*asked, 99_999], query)
    assert sorted(got) == sorted(asked)
    for j, cid in zip([5, 17, 199], asked, strict=True):
        assert got[cid] == pytest.approx(float(vectors[j] @ query) / 3.0, abs=1e-5)
    assert store.similarities([], query) == {}


# -- keyword search -----------------------------------------------------------------------------------
def test_keyword_search_ranks_the_chunk_with_the_rare_terms_first(store):
    texts = [f"turn the compost heap in week {i} and keep it damp" for i in range(20)]
    texts.insert(7, "thermophilic bacteria heat the compost to sixty degrees")
    add(store, "/garden.txt", texts, unit_vectors(len(texts)))
    got = store.keyword(query_terms("How do thermophilic bacteria heat compost?"), 5)
    assert len(got) == 5 and got[0][1] > got[1][1]
    assert store.get([got[0][0]])[0].text.startswith("thermophilic")


def test_a_heading_match_beats_a_body_match(store):
    add(
        store,
        "/roses.md",
        ["cut just above an outward facing bud", "we talked about pruning among other things"],
        unit_vectors(2),
        headings=["Pruning roses", "Garden notes"],
    )
    got = store.keyword(["pruning"], 5)
    assert [store.get([i])[0].heading for i, _ in got] == ["Pruning roses", "Garden notes"]


ODD_QUERIES = [
    "the of and",  # stopwords only
    'he said "hi" (x:y) OR NOT * AND -z ^ NEAR(a b)',
    "it's a \\ back'slash; DROP TABLE genforge_chunks; --",
    "",
]


@pytest.mark.parametrize("query", ODD_QUERIES)
def test_user_text_never_breaks_keyword_search(store, query):
    add(store, "/a.txt", ["the cat said hi (quietly)", "a NOT so odd x:y line"], unit_vectors(2))
    for terms in (
        query_terms(query),
        query.split(),
        ['"', "'", "(", ")", ":", "*", "OR", "\\", ""],
    ):
        got = store.keyword(terms, 5)
        assert all(isinstance(i, int) and isinstance(s, float) for i, s in got)
        assert {i for i, _ in got} <= set(everything(store))
    assert store.stats()["chunks"] == 2
    assert store.keyword([], 5) == []


# -- writing --------------------------------------------------------------------------------------------
def test_add_file_replaces_the_old_chunks_of_the_file(store):
    old, new = unit_vectors(2, seed=4)
    add(store, "/f.txt", ["alpha old text", "more alpha"], np.stack([old, old]), sha="one")
    add(store, "/f.txt", ["beta new text"], new[None], sha="two")
    assert store.files() == {"/f.txt": "two"}
    assert store.stats() == {"files": 1, "chunks": 1}
    assert store.keyword(["alpha"], 10) == []
    [(cid, _)] = store.keyword(["beta"], 10)
    assert [i for i, _ in store.dense(old, 10)] == [cid]
    assert store.get([cid])[0].text == "beta new text"


def test_remove_file_takes_its_chunks_out_of_both_indexes(store):
    va, vb = unit_vectors(2, seed=5)
    add(store, "/a.txt", ["apple pie"], va[None])
    add(store, "/b.txt", ["banana bread"], vb[None])
    store.remove_file("/a.txt")
    assert store.files() == {"/b.txt": "sha"}
    assert store.keyword(["apple"], 10) == []
    assert [store.get([i])[0].source for i, _ in store.dense(va, 10)] == ["/b.txt"]
    assert store.vectors_by_hash(["/a.txt#apple pie"]) == {}
    store.remove_file("/not-there.txt")  # not an error
    assert store.stats() == {"files": 1, "chunks": 1}


def test_rename_file_keeps_chunks_and_vectors_under_the_new_path(store):
    va, vb = unit_vectors(2, seed=6)
    add(store, "/old.txt", ["walnut cake"], va[None], sha="nut")
    add(store, "/taken.txt", ["stale text"], vb[None])
    [(cid, _)] = store.keyword(["walnut"], 10)
    store.rename_file("/old.txt", "/taken.txt")  # onto an indexed path: that file's chunks go
    assert store.files() == {"/taken.txt": "nut"}
    assert store.get([cid])[0].source == "/taken.txt"
    assert store.dense(va, 10, "/taken.txt")[0][0] == cid
    assert store.similarities([cid], va)[cid] == pytest.approx(1.0, abs=1e-5)
    assert store.keyword(["stale"], 10) == []
    assert store.dense(va, 10, "/old.txt") == []


def test_vectors_by_hash_returns_the_stored_float32_vectors_exactly(store):
    vectors = unit_vectors(3, seed=7)
    add(store, "/v.txt", ["one", "two", "three"], vectors)
    got = store.vectors_by_hash(["/v.txt#two", "/v.txt#three", "/v.txt#two", "unknown"])
    assert sorted(got) == ["/v.txt#three", "/v.txt#two"]
    assert got["/v.txt#two"].dtype == np.float32
    np.testing.assert_array_equal(got["/v.txt#two"], vectors[1])
    np.testing.assert_array_equal(got["/v.txt#three"], vectors[2])
    assert store.vectors_by_hash([]) == {}


def test_stats_files_and_get_keep_the_order_asked_for(store):
    assert store.stats() == {"files": 0, "chunks": 0}
    add(store, "/a.txt", ["first", "second", "third"], unit_vectors(3), sha="x")
    add(store, "/b.txt", ["fourth"], unit_vectors(1), sha="y")
    assert store.stats() == {"files": 2, "chunks": 4}
    assert store.files() == {"/a.txt": "x", "/b.txt": "y"}
    ids = {text: cid for cid, (_, text) in everything(store).items()}
    asked = [ids["third"], ids["fourth"], 99_999, ids["first"]]
    got = store.get(asked)
    assert [c.text for c in got] == ["third", "fourth", "first"]
    assert (got[0].source, got[0].start, got[0].end, got[0].unit) == ("/a.txt", 3, 3, "line")
    assert store.get([]) == []


def test_a_transaction_that_raises_leaves_the_store_as_it_was(filled):
    store, *_ = filled
    queries = unit_vectors(3, seed=8)
    before = snapshot(store, queries)
    with pytest.raises(RuntimeError, match="midway"), store.transaction():
        add(store, "/new.txt", ["alpha chunk"], queries[:1])
        store.remove_file(PATHS[0])
        store.rename_file(PATHS[1], "/renamed.md")
        store.set_meta({"embedder": "changed"})
        raise RuntimeError("midway")
    assert snapshot(store, queries) == before


def test_a_nested_transaction_rolls_back_alone(store):
    with store.transaction():
        add(store, "/kept.txt", ["kept"], unit_vectors(1))
        with pytest.raises(RuntimeError), store.transaction():
            add(store, "/dropped.txt", ["dropped"], unit_vectors(1))
            raise RuntimeError("inner")
    assert store.files() == {"/kept.txt": "sha"}
    assert store.keyword(["dropped"], 5) == []


def test_meta_persists_and_another_schema_version_is_refused(store):
    assert store.meta() == {"schema": "1"}
    store.set_meta({"embedder": "minilm", "dimensions": 8})
    store.set_meta({"embedder": "other"})
    location = store.location
    store.close()
    with open_store(location) as again:
        assert again.meta() == {"schema": "1", "embedder": "other", "dimensions": "8"}
        again.set_meta({"schema": "0"})
    with pytest.raises(GenforgeError, match="another genforge version"):
        open_store(location)


# -- PostgreSQL only ------------------------------------------------------------------------------------
GLOB_CASES = [
    "*",
    "?",
    "a*",
    "*.md",
    "a?b",
    "[ab]",
    "[^ab]",
    "[!a]",
    "[a-c]",
    "[c-a]",
    "[a-]",
    "[-a]",
    "[]a]",
    "[^]a]",
    "[a-c-e]",
    "[",
    "a[b",
    "[]",
    "[[]",
    "[\\]",
    "a.b",
    "a+b",
    "(x)",
    "\\",
    "$^",
    "x{1}",
    "%_",
    "é*",
    "*[é]",
    "[a-c]*[!x]",
]
GLOB_STRINGS = [
    "",
    "a",
    "b",
    "c",
    "d",
    "e",
    "-",
    "]",
    "[",
    "!",
    "^",
    "\\",
    "x",
    "ab",
    "axb",
    "aab",
    "a.b",
    "a+b",
    "(x)",
    "$^",
    "x{1}",
    "xx",
    "%_",
    "a%",
    "é",
    "éa",
    "aé",
    "/docs/a.md",
    "a\nb",
]


def test_glob_regex_matches_what_sqlite_glob_matches(postgres_url):
    import psycopg

    from genforge.rag.pgstore import glob_regex

    cases = [(s, g) for g in GLOB_CASES for s in GLOB_STRINGS]
    with psycopg.connect(postgres_url) as conn:
        got = conn.execute(
            "SELECT s ~ r FROM unnest(%s::text[], %s::text[]) AS t(s, r)",
            ([s for s, _ in cases], [glob_regex(g) for _, g in cases]),
        ).fetchall()
    mismatched = [(s, g) for (s, g), (m,) in zip(cases, got, strict=True) if m != sqlite_glob(s, g)]
    assert mismatched == []


def test_glob_regex_escapes_everything_but_the_wildcards():
    from genforge.rag.pgstore import glob_regex

    assert glob_regex("/docs/*.md") == r"^\/docs\/.*\.md$"
    assert glob_regex("b?[^a-c\\].txt") == r"^b.[^a-c\\]\.txt$"
    assert glob_regex("a[b") == "(?!)"


def test_a_server_that_is_not_there_is_a_one_sentence_error_without_the_password():
    require_module("psycopg", "postgres")
    url = "postgresql://bob:s3cret-pw@127.0.0.1:1/notes"
    with pytest.raises(GenforgeError) as caught:
        open_store(url)
    message = str(caught.value)
    assert message.startswith("could not connect to PostgreSQL at 127.0.0.1:1/notes: ")
    assert message.endswith("is the server running?") and "\n" not in message
    assert "s3cret" not in message


def test_the_location_of_a_postgres_store_hides_the_password():
    from genforge.rag.pgstore import redact

    assert (
        redact("postgresql://bob:pw@db:5432/x?sslmode=require")
        == "postgresql://bob@db:5432/x?sslmode=require"
    )
    assert (
        redact("postgres://db/x?password=pw&sslmode=require")
        == "postgres://db/x?password=***&sslmode=require"
    )
    assert redact("postgresql://db:5432/x?host=/tmp/a@b") == "postgresql://db:5432/x?host=/tmp/a@b"


def test_a_user_who_cannot_create_the_extension_is_told_who_can(postgres_url):
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from genforge.rag.pgstore import PgStore

    with psycopg.connect(postgres_url, autocommit=True) as conn:  # both go with the server
        conn.execute("CREATE ROLE genforge_plain LOGIN")
        conn.execute("CREATE DATABASE genforge_no_vector OWNER genforge_plain")
    info = {
        **conninfo_to_dict(postgres_url),
        "user": "genforge_plain",
        "dbname": "genforge_no_vector",
    }
    with pytest.raises(GenforgeError, match="have a superuser run CREATE EXTENSION vector"):
        PgStore(make_conninfo(**info))
