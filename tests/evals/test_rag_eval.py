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

    def chat(self, messages, stream=False, **sampling):
        first = re.search(r'<source id="1"[^>]*>\n(.*?)\n</source>', messages[-1]["content"], re.S)
        return iter([" ".join(first.group(1).split()[:40]) + " [1]"])


def test_metrics_on_a_small_real_index(tmp_path):
    files, items = rag.squad()
    keep = list(files)[:3]
    small = ({k: files[k] for k in keep}, [i for i in items if i.extra["file"] in keep])
    task = rag.Retrieval("tiny", "three SQuAD articles", lambda: small, answer_in_chunk=True)
    with tqdm(disable=True) as bar:
        summary, records = rag.run(
            CitingLLM(),
            task,
            limit=30,
            shots=0,
            seed=0,
            chat=False,
            bar=bar,
            workers=1,
            home=tmp_path,
        )
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
