"""Pictures and scanned PDF pages in `genforge rag`: read by OCR with the ocr extra, skipped (or
left out, with a note) without it. The real embedder, SQLite store and RapidOCR models."""

from __future__ import annotations

from pathlib import Path

import pytest
from components import require, require_module
from text_pictures import png, require_ocr, scanned_pdf, words

require_module("apsw", "rag")
require_module("sqlite_vec", "rag")
require_module("pypdf", "rag")

from genforge.data import ocr  # noqa: E402
from genforge.rag import ingest  # noqa: E402
from genforge.rag.documents import DocumentError, read_blocks  # noqa: E402
from genforge.rag.embed import Embedder, available  # noqa: E402
from genforge.rag.retrieve import Retriever  # noqa: E402
from genforge.rag.stores import open_store  # noqa: E402

require("embedder", available(), "the embedding model (all-MiniLM-L6-v2)")
require_ocr()

WHITEBOARD = ["Standup moved to Thursdays at 9:30.", "Bring the quarterly llama census."]
SCAN = ["The lighthouse keeper refills", "the lamp with paraffin every dusk."]
MANUAL = "The boiler pressure must stay below two bar while the pump runs."
APPENDIX = ["Appendix: the emergency valve", "is painted bright orange."]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture
def docs(tmp_path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "whiteboard.png").write_bytes(png(WHITEBOARD))
    (root / "scan.pdf").write_bytes(scanned_pdf([SCAN]))  # a picture only: no text layer
    (root / "manual.pdf").write_bytes(scanned_pdf([MANUAL, APPENDIX]))  # text, then a scan
    (root / "notes.md").write_text("# Notes\n\nThe garden gate squeaks; oil its hinges.\n")
    return root


def run_index(paths, db, embedder) -> ingest.Report:
    with open_store(db) as store:
        return ingest.index([str(p) for p in paths], store, embedder=embedder, progress=False)


def best(db, embedder, query: str, mode: str = "hybrid"):
    with open_store(db) as store:
        return Retriever(store, embedder).search(query, k=3, mode=mode)[0]


def test_pictures_and_scanned_pages_are_indexed_and_found(docs, tmp_path, embedder):
    db = tmp_path / "index.sqlite"
    report = run_index([docs], db, embedder)
    assert sorted(Path(p).name for p in report.added) == [
        "manual.pdf",
        "notes.md",
        "scan.pdf",
        "whiteboard.png",
    ]
    assert not report.skipped and not report.notes, report.summary()
    cases = {  # the question, the file, the page and a word of the answer
        "when is the standup meeting now": ("whiteboard.png", 1, "thursdays"),
        "what does the lighthouse keeper fill the lamp with": ("scan.pdf", 1, "paraffin"),
        "what colour is the emergency valve": ("manual.pdf", 2, "orange"),  # its scanned page
        "maximum boiler pressure": ("manual.pdf", 1, "bar"),
    }
    for query, (name, page, word) in cases.items():
        for mode in ("dense", "bm25"):
            c = best(db, embedder, query, mode).chunk
            assert Path(c.source).name == name and c.unit == "page", (query, mode, c)
            assert c.start <= page <= c.end and word in words(c.text), (query, mode, c)
    hit = best(db, embedder, "llama census")
    assert words(" ".join(WHITEBOARD)) == words(hit.chunk.text), hit.chunk.text
    assert hit.where().endswith("whiteboard.png p. 1")


def test_without_the_extra_pictures_are_skipped_and_pages_noted(
    docs, tmp_path, embedder, monkeypatch
):
    db = tmp_path / "index.sqlite"
    monkeypatch.setattr(ocr, "available", lambda: False)
    report = run_index([docs], db, embedder)
    assert sorted(Path(p).name for p in report.added) == ["manual.pdf", "notes.md"]
    why = {Path(p).name: reason for p, reason in report.skipped}
    assert "pip install 'genforge[ocr]'" in why["whiteboard.png"]
    assert why["scan.pdf"].startswith("no text layer (scanned pages?)"), why
    assert [Path(p).name for p, _ in report.notes] == ["manual.pdf"]
    summary = report.summary(docs)
    assert "skipped 2" not in summary  # two different reasons, one line each
    assert "\n  partly read 1: pages without a text layer were not read; pip install " in summary
    assert summary.rstrip().endswith(": manual.pdf"), summary
    manual = best(db, embedder, "emergency valve colour").chunk
    assert (manual.start, manual.end) == (1, 1) and "orange" not in words(manual.text)

    # Installed later: the next run reads the pictures, and re-reads the PDFs for their scans.
    monkeypatch.undo()
    again = run_index([docs], db, embedder)
    assert sorted(Path(p).name for p in again.added) == ["scan.pdf", "whiteboard.png"]
    assert [Path(p).name for p in again.updated] == ["manual.pdf"]
    assert again.unchanged == 1 and not again.skipped and not again.notes
    manual = best(db, embedder, "what colour is the emergency valve").chunk
    assert manual.end == 2 and "orange" in words(manual.text)
    assert run_index([docs], db, embedder).unchanged == 4


def test_a_damaged_picture_is_skipped_with_a_reason():
    with pytest.raises(DocumentError, match="not a readable picture"):
        read_blocks(Path("logo.png"), b"\x89PNG\r\n\x1a\n" + bytes(100))
