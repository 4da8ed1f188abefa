"""`genforge rag ask` over the real Python documentation with its default model, as a user runs it:
a question the documents answer gets the right answer and the right citation, one they are not
about gets "I don't know" without the model being asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from components import require, require_module

from genforge.evals.everyday import PYDOCS
from genforge.rag.answer import NO_ANSWER

pytestmark = pytest.mark.slow  # Qwen2.5-Coder-0.5B, the default model of `rag ask`


@pytest.fixture(scope="module")
def pydocs_store(tmp_path_factory, qwen_path):  # qwen_path: the default model, pulled once
    require_module("apsw", "rag")
    require("pydocs", PYDOCS.is_dir(), f"the Python documentation ({PYDOCS})")
    db = tmp_path_factory.mktemp("pydocs") / "pydocs.sqlite"
    docs = [PYDOCS / "library/functools.rst.txt", PYDOCS / "tutorial/controlflow.rst.txt"]
    out = rag_cli("index", *docs, "--store", db, "--quiet")
    assert out.returncode == 0, out.stderr
    return db


def rag_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "genforge", "rag", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def ask(db, question: str) -> dict:
    out = rag_cli("ask", question, "--store", db, "--seed", "1", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_lru_cache_question_is_answered_and_cited_from_functools(pydocs_store):
    answer = ask(pydocs_store, "What does functools.lru_cache do?")
    assert "cach" in answer["answer"].lower() and answer["answer"] != NO_ANSWER
    cited = {c["source"].split("_sources/")[-1] for c in answer["citations"]}
    assert "library/functools.rst.txt" in cited, answer


def test_the_swallow_question_is_refused_without_the_model(pydocs_store):
    answer = ask(pydocs_store, "What is the airspeed velocity of an unladen swallow?")
    assert answer["answer"] == NO_ANSWER and not answer["citations"] and not answer["chunks"]
