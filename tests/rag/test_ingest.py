"""Ingest and retrieval end to end with the real all-MiniLM-L6-v2 embedder and a real SQLite index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from components import require, require_module

require_module("apsw", "rag")
require_module("sqlite_vec", "rag")

from genforge.errors import GenforgeError  # noqa: E402
from genforge.rag import ingest  # noqa: E402
from genforge.rag.embed import Embedder, available  # noqa: E402
from genforge.rag.retrieve import Retriever  # noqa: E402
from genforge.rag.stores import open_store  # noqa: E402

require("embedder", available(), "the embedding model (all-MiniLM-L6-v2)")

DOCS = {
    "garden/tomatoes.md": """\
        # Growing tomatoes

        Tomatoes need six to eight hours of direct sun each day and deep, infrequent watering.

        ## Pruning

        Pinch off the suckers that grow between the main stem and the branches so the plant
        puts its energy into fruit.
        """,
    "garden/compost.txt": """\
        A compost heap turns kitchen scraps and leaves into humus.

        Keep the heap as damp as a wrung-out sponge and turn it every two weeks to let air in.
        """,
    "code/geometry.py": '''\
        """Shapes."""

        import math


        def circle_area(radius: float) -> float:
            """The area of a circle."""
            return math.pi * radius**2


        class Rectangle:
            def __init__(self, width, height):
                self.width, self.height = width, height

            def area(self):
                return self.width * self.height
        ''',
    "notes/trains.md": """\
        # Railway history

        The Liverpool and Manchester Railway opened in 1830 as the first inter-city line worked
        entirely by steam locomotives.
        """,
}


@pytest.fixture(scope="session")
def embedder():
    return Embedder()


def write_docs(root: Path, docs: dict[str, str] = DOCS) -> Path:
    for name, text in docs.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def corpus(tmp_path):
    return write_docs(tmp_path / "docs")


def run_index(paths, store_path, embedder, **kw):
    with open_store(store_path) as store:
        return ingest.index([str(p) for p in paths], store, embedder=embedder, progress=False, **kw)


def search(store_path, embedder, query, **kw):
    with open_store(store_path) as store:
        return Retriever(store, embedder).search(query, **kw)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_each_mode_finds_the_passage_a_question_is_about(corpus, location, embedder, mode):
    db = location
    report = run_index([corpus], db, embedder)
    assert len(report.added) == 4 and not report.skipped
    cases = {
        "How many hours of sun do tomato plants need?": ("tomatoes.md", 3),
        "how often should I turn my compost heap": ("compost.txt", 3),
        "area of a circle from its radius": ("geometry.py", 6),
        "When did the first steam railway between cities open?": ("trains.md", 3),
    }
    for query, (name, line) in cases.items():
        best = search(db, embedder, query, k=3, mode=mode)[0]
        assert Path(best.chunk.source).name == name, (query, best.chunk)
        assert best.chunk.start <= line <= best.chunk.end


def test_search_json_shape_and_path_filter(corpus, location, embedder):
    db = location
    run_index([corpus], db, embedder)
    hits = search(db, embedder, "plants and soil", k=10, path="*/garden/*")
    assert hits and all("/garden/" in h.chunk.source for h in hits)
    record = hits[0].to_dict()
    assert {"source", "start_line", "end_line", "score", "text"} <= set(record)
    lines = Path(record["source"]).read_text().splitlines()
    passage = "\n".join(lines[record["start_line"] - 1 : record["end_line"]])
    assert record["text"].split()[0] in passage and record["text"].split()[-1] in passage


def test_reindexing_is_incremental_edit_delete_rename(corpus, location, embedder):
    db = location
    first = run_index([corpus], db, embedder)
    again = run_index([corpus], db, embedder)
    assert again.unchanged == 4 and again.chunks == 0 and again.embedded == 0

    tomatoes = corpus / "garden/tomatoes.md"
    tomatoes.write_text(
        tomatoes.read_text() + "\n## Harvest\n\nPick tomatoes when fully red and slightly soft.\n"
    )
    (corpus / "garden/compost.txt").unlink()
    (corpus / "notes/trains.md").rename(corpus / "notes/railways.md")
    report = run_index([corpus], db, embedder)
    assert report.updated == [str(tomatoes)]
    assert report.removed == [str(corpus / "garden/compost.txt")]
    assert report.renamed == [(str(corpus / "notes/trains.md"), str(corpus / "notes/railways.md"))]
    assert report.unchanged == 1 and not report.added
    # Only the edited section's new chunk is embedded; the tomato chunks that did not change reuse vectors.
    assert 1 <= report.embedded < report.chunks <= first.chunks + 1

    with open_store(db) as store:
        assert sorted(Path(p).name for p in store.files()) == [
            "geometry.py",
            "railways.md",
            "tomatoes.md",
        ]
    for mode in ("dense", "bm25"):
        hits = search(db, embedder, "turn the compost heap every two weeks", k=10, mode=mode)
        assert hits or mode == "bm25"  # dense search returns its nearest chunks, whatever they are
        assert all("compost" not in h.chunk.source for h in hits)
    best = search(db, embedder, "first inter-city steam railway", k=1)[0]
    assert best.chunk.source.endswith("railways.md")
    best = search(db, embedder, "when to pick tomatoes", k=1, mode="bm25")[0]
    assert "fully red" in best.chunk.text


def test_only_folders_that_are_indexed_lose_their_deleted_files(corpus, tmp_path, embedder):
    db = tmp_path / "index.sqlite"
    run_index([corpus / "garden", corpus / "code"], db, embedder)
    (corpus / "garden/compost.txt").unlink()
    report = run_index([corpus / "code"], db, embedder)  # garden is not looked at: compost stays
    assert not report.removed
    with open_store(db) as store:
        assert any(p.endswith("compost.txt") for p in store.files())


def test_skipped_files_are_reported_with_a_reason(corpus, tmp_path, embedder):
    (corpus / "slides.pptx").write_bytes(b"PK\x03\x04" + bytes(100))
    (corpus / "blank.md").write_text("   \n\n")
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    report = run_index([corpus], tmp_path / "index.sqlite", embedder)
    why = {Path(p).name: reason for p, reason in report.skipped}
    assert set(why) == {"slides.pptx", "blank.md", "latin1.txt"}
    assert "unsupported" in why["slides.pptx"]
    assert "skipped 1: unsupported type (.pptx)" in report.summary()
    assert len(report.added) == 4


def test_index_cli_names_every_skipped_file(corpus, tmp_path):
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (corpus / "slides.pptx").write_bytes(b"PK\x03\x04" + bytes(100))
    out = rag_cli("index", corpus, "--store", tmp_path / "index.sqlite", "--quiet")
    assert out.returncode == 0, out.stderr
    skips = [line for line in out.stdout.splitlines() if line.lstrip().startswith("skipped")]
    assert len(skips) == 2, out.stdout
    assert any("not UTF-8 text" in line and "latin1.txt" in line for line in skips), skips
    assert any("(.pptx)" in line and "slides.pptx" in line for line in skips), skips


def test_a_summary_names_the_first_skipped_files_of_each_reason(tmp_path):
    report = ingest.Report(
        skipped=[(str(tmp_path / f"img{i}.png"), "unsupported") for i in range(7)]
    )
    report.skipped.append(("/elsewhere/notes.txt", "not UTF-8 text (byte 3)"))
    lines = report.summary(tmp_path).splitlines()[1:]
    shown = ", ".join(f"img{i}.png" for i in range(ingest.SKIPPED_NAMED))
    more = 7 - ingest.SKIPPED_NAMED
    assert lines == [
        f"  skipped 7: unsupported: {shown} and {more} more",
        "  skipped 1: not UTF-8 text (byte 3): /elsewhere/notes.txt",
    ]


def test_a_fifo_is_reported_and_never_opened(corpus, tmp_path, embedder, fifo):
    """Reading a FIFO waits for a writer (forever, if none comes): in a folder or named alone,
    one is skipped with its reason and the run finishes."""
    db = tmp_path / "index.sqlite"
    with fifo(corpus / "garden" / "feed.md") as feed:
        skipped = [(str(feed.resolve()), "not a regular file (a FIFO)")]
        report = run_index([corpus], db, embedder)
        assert report.skipped == skipped and len(report.added) == 4
        alone = run_index([feed], db, embedder)
        assert alone.skipped == skipped and not alone.added
    assert "skipped 1: not a regular file (a FIFO)" in report.summary()


def test_bad_paths_and_changed_settings_are_one_sentence_errors(corpus, tmp_path, embedder):
    db = tmp_path / "index.sqlite"
    with pytest.raises(GenforgeError, match="does not exist"):
        run_index([tmp_path / "nowhere"], db, embedder)
    run_index([corpus], db, embedder)
    with pytest.raises(GenforgeError, match="index into a new store"):
        run_index([corpus], db, embedder, settings=ingest.Settings(max_tokens=100))
    with pytest.raises(GenforgeError, match="is a folder"):
        open_store(tmp_path)
    (tmp_path / "not-an-index.sqlite").write_text("hello " * 200)
    with pytest.raises(GenforgeError, match="not a genforge index"):
        open_store(tmp_path / "not-an-index.sqlite")


def test_an_error_mid_ingest_keeps_the_committed_batches_and_a_rerun_finishes(
    corpus, tmp_path, embedder, monkeypatch
):
    db = tmp_path / "index.sqlite"
    run_index([corpus / "garden"], db, embedder)  # the index as it was before the failing run
    calls = {"n": 0}
    real = Embedder.encode

    def failing(self, texts, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("power cut")
        return real(self, texts, **kw)

    monkeypatch.setattr(Embedder, "encode", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        run_index([corpus], db, embedder, batch_chunks=1)
    monkeypatch.setattr(Embedder, "encode", real)
    with open_store(db) as store:
        stored = store.files()
        assert len(stored) == 3  # garden's two files + the first batch of the failed run
    assert search(db, embedder, "tomatoes sun", k=1)[0].chunk.source.endswith("tomatoes.md")
    report = run_index([corpus], db, embedder)
    assert report.unchanged == 3 and len(report.added) == 1


def test_a_process_killed_inside_a_write_leaves_the_previous_index(corpus, tmp_path, embedder):
    """SIGKILL while a batch's transaction is open: the file on disk keeps the last commit."""
    db = tmp_path / "index.sqlite"
    run_index([corpus / "garden"], db, embedder)
    script = textwrap.dedent(f"""
        import os, signal
        from genforge.rag import ingest
        from genforge.rag.store import SQLiteStore
        from genforge.rag.stores import open_store
        real, calls = SQLiteStore.add_file, []
        def add_file(self, *a, **kw):
            calls.append(1)
            real(self, *a, **kw)
            if len(calls) == 2:  # inside the second batch's transaction, after a write
                os.kill(os.getpid(), signal.SIGKILL)
        SQLiteStore.add_file = add_file
        store = open_store({str(db)!r})
        ingest.index([{str(corpus)!r}], store, progress=False, batch_chunks=1)
        """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with open_store(db) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        files = store.files()
        n_chunks = store.stats()["chunks"]
        (fts,) = store.db.execute("SELECT count(*) FROM chunks_fts").fetchone()
        (vec,) = store.db.execute("SELECT count(*) FROM chunks_vec").fetchone()
    assert (
        len(files) == 3 and fts == vec == n_chunks
    )  # garden + the first batch; nothing half-written
    report = run_index([corpus], db, embedder)
    assert report.unchanged == 3 and len(report.added) == 1
    with open_store(db) as store:
        assert len(store.files()) == 4


def rag_cli(*args) -> subprocess.CompletedProcess:
    """`genforge rag ARGS...` in a fresh process, as a user would run it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "genforge", "rag", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_search_cli_prints_json(corpus, tmp_path):
    db = tmp_path / "index.sqlite"
    out = rag_cli("index", corpus, "--store", db, "--quiet")
    assert out.returncode == 0, out.stderr
    assert "4 added" in out.stdout and "4 files" in out.stdout
    out = rag_cli("search", "pruning tomato suckers", "--store", db, "--json", "-k", "2")
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert len(hits) == 2 and hits[0]["source"].endswith("tomatoes.md")
    assert "suckers" in hits[0]["text"]
    out = rag_cli("search", "x", "--store", tmp_path / "empty.sqlite")
    assert (
        out.returncode == 1 and "holds no index yet" in out.stderr and "Traceback" not in out.stderr
    )


def test_reading_a_missing_store_creates_no_file(tmp_path):
    """Only `rag index` makes a store: a mistyped --store for search or ask leaves nothing behind."""
    missing = tmp_path / "mistyped.sqlite"
    for argv in (["search", "x"], ["ask", "What is x?"]):
        out = rag_cli(*argv, "--store", missing)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "does not exist" in out.stderr and "genforge rag index" in out.stderr
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(GenforgeError, match="does not exist"):
        open_store(missing, create=False)
    assert not missing.exists()


def test_token_counts_are_not_padded_or_cut(embedder):
    assert embedder.count_tokens("hello world") == 2
    assert embedder.count_tokens("word " * 500) == 500


def test_a_store_built_by_an_older_chunker_is_rechunked(corpus, tmp_path, embedder, monkeypatch):
    db = tmp_path / "index.sqlite"
    first = run_index([corpus], db, embedder)
    monkeypatch.setattr(ingest, "CHUNKING", "next")
    report = run_index([corpus], db, embedder)
    assert len(report.updated) == 4 and report.unchanged == 0
    assert report.chunks == first.chunks and report.embedded == 0  # same texts: vectors reused
    assert run_index([corpus], db, embedder).unchanged == 4


def test_ask_cli_answers_with_sources_or_says_it_does_not_know(corpus, tmp_path, smollm2_path):
    db = tmp_path / "index.sqlite"
    out = rag_cli("index", corpus, "--store", db, "--quiet")
    assert out.returncode == 0, out.stderr
    ask = ["ask", "--store", db, "-m", smollm2_path, "-k", "2", "--max-tokens", "40"]
    out = rag_cli(*ask, "How many hours of sun do tomatoes need?", "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["answer"].strip() and answer["chunks"][0]["source"].endswith("tomatoes.md")
    sources = {c["source"] for c in answer["chunks"]}
    assert all(c["source"] in sources for c in answer["citations"])
    out = rag_cli(*ask, "What is the airspeed of an unladen swallow?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("I don't know") and "Sources:" not in out.stdout


def test_rerank_orders_candidates_by_the_cross_encoder(corpus, tmp_path, embedder):
    """No cross-encoder ships with genforge: a BERT folder with a fresh scoring head stands in, so
    this checks the plumbing (candidates scored by the model, re-sorted, cut to k), not relevance."""
    from genforge.rag.embed import model_dir

    db = tmp_path / "index.sqlite"
    run_index([corpus], db, embedder)
    with open_store(db) as store:
        retriever = Retriever(store, embedder, reranker=str(model_dir()))
        hits = retriever.search("tomato pruning", k=3)
        plain = Retriever(store, embedder).search("tomato pruning", k=10)
        assert len(hits) == 3 and [h.score for h in hits] == sorted(
            (h.score for h in hits), reverse=True
        )
        assert {h.chunk.id for h in hits} <= {h.chunk.id for h in plain}
        scores = retriever.reranker.predict([("tomato pruning", h.chunk.text) for h in plain])
        best = sorted(zip(scores, (h.chunk.id for h in plain), strict=True), reverse=True)[:3]
        assert [h.chunk.id for h in hits] == [i for _, i in best]
        with pytest.raises(GenforgeError, match="not a cross-encoder"):
            Retriever(store, embedder, reranker=str(tmp_path)).search("tomato", k=1)
