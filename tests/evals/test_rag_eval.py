"""`genforge eval rag`: the question sets, the hit rule, and the metrics on a real (small) index."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from components import require_module
from tqdm import tqdm

from genforge.evals import harness, rag

require_module("apsw", "rag")


def test_question_sets_point_at_their_paragraph_lines(tmp_path):
    for task in rag.RAG_TASKS:
        files, items = task.load()
        where = rag.write_corpus(tmp_path / task.name, files)
        assert len(items) == {"rag_squad": 1000, "rag_boolq": 3270}[task.name]
        for item in items[:: len(items) // 50]:
            path, line = where[(item.extra["file"], item.extra["paragraph"])]
            text = Path(path).read_text().splitlines()[line - 1]
            assert text == files[item.extra["file"]][item.extra["paragraph"]]
            if task.answer_in_chunk:
                assert any(rag._fold(a) in rag._fold(text) for a in item.extra["answers"])


def test_rag_expands_to_both_question_sets():
    assert [t.name for t in harness.resolve("rag")] == ["rag_squad", "rag_boolq"]


class CitingLLM:
    """Answers with the first source's first words and cites it: faithful whenever retrieval is."""

    name = "scripted"
    marker = " [1]"

    def chat(self, messages, stream=False, **sampling):
        first = re.search(r'<source id="1"[^>]*>\n(.*?)\n</source>', messages[-1]["content"], re.S)
        return iter([" ".join(first.group(1).split()[:40]) + self.marker])


class QuotingLLM(CitingLLM):
    """The same answers without the marker: every citation is attributed by word overlap."""

    marker = ""


def _run_small(tmp_path, llm):
    files, items = rag.squad()
    keep = list(files)[:3]
    small = ({k: files[k] for k in keep}, [i for i in items if i.extra["file"] in keep])
    task = rag.Retrieval("tiny", "three SQuAD articles", lambda: small, answer_in_chunk=True)
    with tqdm(disable=True) as bar:
        return rag.run(
            llm,
            task,
            limit=30,
            shots=0,
            seed=0,
            chat=False,
            bar=bar,
            workers=1,
            home=tmp_path,
        )


def test_metrics_on_a_small_real_index(tmp_path):
    summary, records = _run_small(tmp_path, CitingLLM())
    m = summary["metrics"]
    assert len(records) == 30
    for mode in rag.MODES:
        assert 0 <= m[f"{mode} recall@1"] <= m[f"{mode} recall@5"] <= m[f"{mode} recall@10"] <= 1
        assert m[f"{mode} mrr@10"] >= m[f"{mode} recall@1"]
        assert m[f"{mode} recall@10"] > 0.6  # three articles: retrieval must mostly work
    answered = [r for r in records if r["citations"]]  # the rest: nothing similar enough, no answer
    assert m["cited"] == pytest.approx(len(answered) / len(records)) and m["cited"] > 0.8
    # The scripted answer cites source 1 (the best hybrid hit similar enough to the question): a
    # faithful answer means retrieval found a hit, and a hit ranked first is mostly cited faithfully.
    assert all(
        r["rank"]["hybrid"] is not None and r["rank"]["hybrid"] <= 4
        for r in answered
        if r["faithful"]
    )
    top = [r for r in answered if r["rank"]["hybrid"] == 1]
    assert sum(r["faithful"] for r in top) >= 0.8 * len(top) > 0
    assert m["faithfulness"] == pytest.approx(sum(r["faithful"] for r in records) / len(records))
    # Every citation was written by the model: none is counted as inferred.
    assert m["cited_inferred"] == m["faithfulness_inferred"] == 0
    assert not any(r["inferred_citations"] for r in records)


def test_inferred_citations_are_counted_apart(tmp_path):
    """An answer without markers is attributed to its source, but only in the inferred columns."""
    summary, records = _run_small(tmp_path, QuotingLLM())
    m = summary["metrics"]
    assert m["cited"] == m["faithfulness"] == 0
    assert not any(r["citations"] or r["faithful"] for r in records)
    attributed = [r for r in records if r["inferred_citations"]]
    assert m["cited_inferred"] == pytest.approx(len(attributed) / len(records))
    assert m["cited_inferred"] > 0.8
    # The answer quotes source 1 word for word, so it is attributed to source 1, and a hit ranked
    # first is mostly an inferred faithful citation.
    assert all(r["inferred_citations"] == [1] for r in attributed)
    top = [r for r in attributed if r["rank"]["hybrid"] == 1]
    assert sum(r["faithful_inferred"] for r in top) >= 0.8 * len(top) > 0
    assert m["faithfulness_inferred"] == pytest.approx(
        sum(r["faithful_inferred"] for r in records) / len(records)
    )
