"""Retrieve: dense (vectors), BM25 (keywords) or hybrid (both, fused by reciprocal rank), with an
optional cross-encoder reranker and a path filter.

Reciprocal-rank fusion (Cormack et al., 2009) needs no score calibration between the two lists:
a chunk's fused score is the sum of 1 / (60 + rank) over the lists it appears in. Every hit also
carries its cosine similarity to the query, whatever the mode, so that "nothing relevant" has one
meaning for the answerer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from genforge.errors import GenforgeError
from genforge.rag.embed import Embedder
from genforge.rag.store import Store, StoredChunk, query_terms

MODES = ("hybrid", "dense", "bm25")
RRF_K = 60
CANDIDATES = 50  # chunks taken from each list before fusion or reranking


@dataclass
class Hit:
    chunk: StoredChunk
    score: float  # the mode's own score: fused RRF, cosine similarity, BM25, or the reranker's
    similarity: float  # cosine similarity of the chunk to the query

    def to_dict(self) -> dict:
        c = self.chunk
        return {
            "source": c.source,
            "start_line": c.start,
            "end_line": c.end,
            "unit": c.unit,
            "heading": c.heading,
            "score": round(self.score, 6),
            "similarity": round(self.similarity, 6),
            "text": c.text,
        }

    def where(self, relative_to: Path | None = None) -> str:
        """`path:12-30` (lines) or `path p. 3-4` (PDF pages), relative to a folder when inside it."""
        c, source = self.chunk, self.chunk.source
        if relative_to is not None and source.startswith(str(relative_to) + os.sep):
            source = os.path.relpath(source, relative_to)
        span = str(c.start) if c.start == c.end else f"{c.start}-{c.end}"
        return f"{source} p. {span}" if c.unit == "page" else f"{source}:{span}"


def fuse(ranked_lists: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion of lists of ids (best first) -> (id, fused score), best first."""
    scores: dict[int, float] = {}
    for ranked in ranked_lists:
        for rank, i in enumerate(ranked, start=1):
            scores[i] = scores.get(i, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


class Retriever:
    """Searches one store with the embedder it was built with."""

    def __init__(self, store: Store, embedder: Embedder | None = None, reranker: str | None = None):
        meta = store.meta()
        if "embedder" not in meta:
            raise GenforgeError(
                f"{store.location} holds no index yet; run genforge rag index first."
            )
        self.store = store
        self.embedder = embedder or Embedder(meta["embedder"])
        self.reranker_path = reranker

    @cached_property
    def reranker(self):
        if self.reranker_path is None:
            return None
        path = Path(self.reranker_path).expanduser()
        if not (path / "config.json").is_file():
            raise GenforgeError(
                f"reranker {self.reranker_path} is not a cross-encoder model folder (no config.json)."
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        return CrossEncoder(str(path), device="cpu", local_files_only=True)

    def search(
        self,
        query: str,
        k: int = 5,
        mode: str = "hybrid",
        path: str | None = None,
        candidates: int | None = None,
    ) -> list[Hit]:
        """The k best chunks for `query`. path: a glob on the source path (`*/docs/*.md`)."""
        if mode not in MODES:
            raise GenforgeError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
        if k < 1:
            raise GenforgeError(f"k must be at least 1, got {k}.")
        if not query.strip():
            raise GenforgeError("the query is empty; ask something.")
        # A fixed depth, not one that grows with k: the top 3 are the same whether 3 or 10 are asked for.
        n = max(candidates or CANDIDATES, k)
        vector = self.embedder.encode([query])[0]
        dense: list[tuple[int, float]] = []
        if mode != "bm25":
            dense = self.store.dense(vector, n, path)
        if mode == "dense":
            ranked = dense
        else:
            keyword = self.store.keyword(query_terms(query), n, path)
            ranked = (
                keyword
                if mode == "bm25"
                else fuse([[i for i, _ in dense], [i for i, _ in keyword]])[:n]
            )
        if self.reranker is None:
            ranked = ranked[:k]
        ids = [i for i, _ in ranked]
        chunks = {c.id: c for c in self.store.get(ids)}
        sims = dict(dense)  # the dense list already has them: only BM25-only hits are looked up
        sims.update(self.store.similarities([i for i in ids if i not in sims], vector))
        hits = [Hit(chunks[i], s, sims.get(i, 0.0)) for i, s in ranked if i in chunks]
        if self.reranker is not None and hits:
            scores = self.reranker.predict(
                [(query, h.chunk.text) for h in hits], show_progress_bar=False
            )
            for h, s in zip(hits, scores, strict=True):
                h.score = float(s)
            hits = sorted(hits, key=lambda h: -h.score)[:k]
        return hits
