"""A tiny corpus, tokenizer and prepared data folder, made once per test session."""

from __future__ import annotations

import random

import pytest

from genforge.data.shards import prepare
from genforge.tokenizer import bpe

WORDS = (
    "model",
    "data",
    "token",
    "layer",
    "train",
    "loss",
    "value",
    "graph",
    "tensor",
    "batch",
    "step",
    "window",
    "cache",
    "function",
    "class",
    "module",
    "return",
    "import",
    "print",
    "list",
    "dict",
    "string",
    "number",
    "queue",
    "socket",
    "thread",
    "buffer",
    "parser",
)


def tiny_corpus_texts(n_docs: int = 400, seed: int = 0) -> list[str]:
    """Documents with learnable structure: templated sentences over a small vocabulary."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        lines = []
        for _ in range(rng.randint(3, 8)):
            a, b, c = rng.sample(WORDS, 3)
            lines.append(f"The {a} of the {b} returns a {c}.")
        docs.append(f"Section {i}.\n" + "\n".join(lines) + "\n")
    return docs


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared data folder (vocab 384) over ~300 small documents."""
    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus"
    corpus.mkdir()
    texts = tiny_corpus_texts()
    for i, text in enumerate(texts):
        (corpus / f"doc{i:03d}.txt").write_text(text)
    tok = bpe.save(bpe.train_bpe(texts, 384), root / "tokenizer")
    prepare([str(corpus)], root / "data", tok, val_fraction=0.05, progress=False)
    return root / "data"
