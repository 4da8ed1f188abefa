"""Ingest: files and folders -> chunks -> vectors -> a store, incrementally.

Each file's content hash decides its fate: unchanged files are skipped, changed ones re-chunked, a
new path whose content matches a vanished one is a rename (its chunks move, nothing is embedded),
files gone from an indexed folder are removed. Chunks whose text the store already holds reuse their
vectors, so an edit re-embeds only the chunks it touched. Files are written in batches, one
transaction each: a crash loses at most the batch in flight, and a rerun skips what was committed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genforge.data import ocr
from genforge.data.files import Unreadable, read_regular, walk, why_not_regular
from genforge.errors import GenforgeError
from genforge.rag.chunk import Chunk, chunk_blocks
from genforge.rag.documents import DocumentError, kind_of, read_blocks
from genforge.rag.embed import NAME, Embedder
from genforge.rag.store import Store

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 50 * 2**20
# Bumped whenever reading or chunking changes what a file becomes: stores built before re-chunk
# every file on their next index run (unchanged chunk texts keep their vectors).
CHUNKING = "1"
# Added to it once a store is indexed with the ocr extra: the first such run re-reads its PDFs,
# whose pages without a text layer were left out before. (A later run without the extra re-reads
# nothing, but reads changed PDFs without OCR.)
OCR = "+ocr"

SKIPPED_NAMED = 5  # files named per reason in the summary; Report.skipped has them all


@dataclass
class Settings:
    """How an index is built; fixed when the store is created (a query must embed the same way)."""

    embedder: str = (
        NAME  # the embedding model: the packaged default or a sentence-transformers folder
    )
    max_tokens: int = 200  # chunk size bound, in the embedder's tokens
    overlap: int = 32  # tokens of whole lines repeated from the previous chunk of a section

    def as_meta(self) -> dict[str, str]:
        return {
            "embedder": self.embedder,
            "max_tokens": str(self.max_tokens),
            "overlap": str(self.overlap),
        }


@dataclass
class Report:
    """What an ingest did, for the summary line and for tests."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (path, what was not read of it)
    chunks: int = 0  # chunks written
    embedded: int = 0  # of which newly embedded (the rest reused stored vectors)
    seconds: float = 0.0

    def summary(self, relative_to: Path | None = None) -> str:
        """One line of counts, then a line per reason files were skipped (or indexed in part: PDF
        pages left out), naming the files (the first SKIPPED_NAMED of them; paths under
        `relative_to` are shown relative to it)."""
        parts = [f"{len(self.added)} added", f"{len(self.updated)} updated"]
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed")
        parts += [
            f"{len(self.removed)} removed",
            f"{self.unchanged} unchanged",
            f"{len(self.skipped)} skipped",
        ]
        line = (
            ", ".join(parts) + f"; {self.chunks} chunks written ({self.embedded} embedded) "
            f"in {self.seconds:.1f}s"
        )
        lines = [line]
        for label, items in (("skipped", self.skipped), ("partly read", self.notes)):
            by_reason: dict[str, list[str]] = {}
            for path, why in items:
                by_reason.setdefault(why, []).append(_shown(path, relative_to))
            for why, paths in sorted(by_reason.items(), key=lambda item: -len(item[1])):
                named = ", ".join(paths[:SKIPPED_NAMED])
                if len(paths) > SKIPPED_NAMED:
                    named += f" and {len(paths) - SKIPPED_NAMED} more"
                lines.append(f"  {label} {len(paths)}: {why}: {named}")
        return "\n".join(lines)


def _shown(path: str, relative_to: Path | None) -> str:
    if relative_to is not None and path.startswith(str(relative_to) + os.sep):
        return os.path.relpath(path, relative_to)
    return path


def embed_text(chunk: Chunk) -> str:
    """What is embedded for a chunk: its section's heading gives a short passage its context."""
    return f"{chunk.heading}\n{chunk.text}" if chunk.heading else chunk.text


def chunk_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def prepare(store: Store, settings: Settings | None, embedder: Embedder | None = None) -> Embedder:
    """Check (or, for a new store, record) the settings; returns the store's embedder."""
    meta = store.meta()
    if "embedder" in meta:
        built = Settings(meta["embedder"], int(meta["max_tokens"]), int(meta["overlap"]))
        if settings is not None and settings != built:
            raise GenforgeError(
                f"{store.location} was built with embedder {built.embedder}, {built.max_tokens}-token "
                f"chunks and {built.overlap} overlap; index into a new store to change them."
            )
        settings = built
    settings = settings or Settings()
    if not settings.max_tokens >= 16 or not 0 <= settings.overlap < settings.max_tokens // 2:
        raise GenforgeError("chunk tokens must be at least 16 and overlap less than half of them.")
    embedder = embedder or Embedder(settings.embedder)
    if "embedder" not in meta:
        store.create_vectors(embedder.dimensions)
        store.set_meta(
            {**settings.as_meta(), "dimensions": str(embedder.dimensions), "chunking": CHUNKING}
        )
    return embedder


def discover(paths: list[str | Path], report: Report) -> tuple[list[Path], list[Path]]:
    """(the files to index, the roots they came from); unsupported files go to `report.skipped`."""
    files, roots = [], []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise GenforgeError(f"{p} does not exist; give files or folders to index.")
        path = path.resolve()
        roots.append(path)
        if path.is_dir():
            candidates = walk(path, lambda f, why: report.skipped.append((str(f), why)))
        elif why := why_not_regular(path):
            report.skipped.append((str(path), why))
            continue
        else:
            candidates = [path]
        for f in candidates:
            if kind_of(f) is None:
                report.skipped.append((str(f), f"unsupported type ({f.suffix or 'no suffix'})"))
            else:
                files.append(f)
    return list(dict.fromkeys(files)), roots


def _chunking() -> str:
    """What reading and chunking are here: with the ocr extra, pictures are read too."""
    return CHUNKING + OCR if ocr.available() else CHUNKING


def _under(path: str, roots: list[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r) + os.sep) for r in roots)


@dataclass
class _Pending:
    path: str
    sha256: str
    kind: str
    chunks: list[Chunk]
    new: bool


def index(
    paths: list[str | Path],
    store: Store,
    settings: Settings | None = None,
    *,
    embedder: Embedder | None = None,
    progress: bool = True,
    batch_chunks: int = 256,
) -> Report:
    """Bring `store` up to date with the files under `paths`; returns what was done."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    report = Report()
    embedder = prepare(store, settings, embedder)
    meta = store.meta()
    max_tokens, overlap = int(meta["max_tokens"]), int(meta["overlap"])
    files, roots = discover(paths, report)
    stored = store.files()
    built, chunking = store.meta().get("chunking"), _chunking()
    if built not in (CHUNKING, CHUNKING + OCR):
        stored = {p: "" for p in stored}  # every file counts as changed
    elif built != chunking and chunking == CHUNKING + OCR:  # OCR is new: PDFs may have scans
        stored = {p: "" if kind_of(Path(p)) == "pdf" else h for p, h in stored.items()}
    gone = {p: h for p, h in stored.items() if _under(p, roots) and not Path(p).is_file()}
    gone_by_hash = {h: p for p, h in gone.items()}
    pending: list[_Pending] = []
    bar = tqdm(files, desc="index", unit="file", disable=not progress, leave=False)
    for f in bar:
        path = str(f)
        try:
            data = read_regular(f, MAX_FILE_BYTES)
        except Unreadable as e:
            report.skipped.append((path, str(e)))
            continue
        sha = hashlib.sha256(data).hexdigest()
        if stored.get(path) == sha:
            report.unchanged += 1
            continue
        if path not in stored and sha in gone_by_hash:
            old = gone_by_hash.pop(sha)
            del gone[old]
            store.rename_file(old, path)
            report.renamed.append((old, path))
            continue
        notes: list[str] = []
        try:
            blocks = read_blocks(f, data, notes)
            chunks = chunk_blocks(blocks, embedder.count_tokens, max_tokens, overlap)
        except DocumentError as e:
            report.skipped.append((path, str(e)))
            continue
        report.notes += [(path, note) for note in notes]
        if not chunks:
            report.skipped.append((path, "no text to index"))
            continue
        pending.append(_Pending(path, sha, kind_of(f), chunks, path not in stored))
        if sum(len(p.chunks) for p in pending) >= batch_chunks:
            _write(pending, store, embedder, report)
            bar.set_postfix(chunks=report.chunks)
            pending = []
    _write(pending, store, embedder, report)
    bar.close()
    for path in gone:
        store.remove_file(path)
        report.removed.append(path)
    store.set_meta({"chunking": CHUNKING + OCR if OCR in (built or "") else chunking})
    report.seconds = time.perf_counter() - t0
    return report


def _write(pending: list[_Pending], store: Store, embedder: Embedder, report: Report) -> None:
    """Embed what the store lacks and write these files in one transaction."""
    if not pending:
        return
    texts = [embed_text(c) for p in pending for c in p.chunks]
    hashes = [chunk_hash(t) for t in texts]
    known = store.vectors_by_hash(hashes)
    todo = list(dict.fromkeys(h for h in hashes if h not in known))
    if todo:
        first = {h: t for t, h in zip(texts, hashes, strict=True)}
        fresh = embedder.encode([first[h] for h in todo])
        known.update(zip(todo, fresh, strict=True))
    vectors = np.stack([known[h] for h in hashes])
    at = 0
    with store.transaction():
        for p in pending:
            n = len(p.chunks)
            store.add_file(
                p.path, p.sha256, p.kind, p.chunks, hashes[at : at + n], vectors[at : at + n]
            )
            at += n
    for p in pending:
        (report.added if p.new else report.updated).append(p.path)
    report.chunks += len(texts)
    report.embedded += len(todo)
