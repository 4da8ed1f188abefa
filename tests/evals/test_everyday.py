"""`genforge eval everyday` and `rag_pydocs`: the scorers, and the runner with a scripted model.

The model is not what is under test here (the scoring is): a scripted model gives known answers
with known finish reasons, and each verdict must come out as written. One slow test runs the real
SmolLM2 on a chat and a JSON item.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from tqdm import tqdm

from genforge.errors import GenforgeError
from genforge.evals import everyday, harness
from genforge.evals.everyday_prompts import PROMPTS
from genforge.generate.llm import ChatPrompt, Completion
from genforge.rag.answer import NO_ANSWER

# -- the loop detector ---------------------------------------------------------------------------

LOOPING = "The cache is implemented by the decorator. " * 5
PROSE = (
    "The lru_cache decorator wraps a function with a memoizing callable that saves up to maxsize "
    "of the most recent calls. It can save time when an expensive function is called again with "
    "the same arguments."
)


def test_a_repeated_line_loops_and_prose_does_not():
    assert everyday.max_repeats(LOOPING) == 5
    assert everyday.loops(LOOPING)
    assert everyday.max_repeats(PROSE) == 1
    assert not everyday.loops(PROSE)


def test_loops_count_words_case_folded_without_punctuation():
    # The same four words three times, in other cases and punctuation: a loop.
    assert everyday.loops("Ha ha ha ha! HA, ha ha ha. ha ha; ha ha")
    assert everyday.max_repeats("one two three", n=4) == 0  # fewer words than a run
    assert not everyday.loops("a b c d a b c d")  # twice is not yet a loop
    assert everyday.loops("a b c d a b c d a b c d")
    assert everyday.loops("a b a b a b", n=2)


# -- correctness, refusals, JSON -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expect", "right"),
    [
        ("7 times 8 is 56.", ["56"], True),
        ("The answer is 156.", ["56"], False),
        ("It is 5.6", ["56"], False),
        ("about 56,000", ["56"], False),
        ("The capital of France is paris", ["Paris"], True),
        ("Parisian food", ["Paris"], False),
        ("It caches results.", ["cache"], False),
        ("It caches results.", ["cach*"], True),
        ("Memoization", ["memoiz*"], True),
        ("a dememoizer", ["memoiz*"], False),
        ("Use set() for an empty set.", ["set()"], True),
        ("one thousand grams", ["1000", "one thousand"], True),
        ("It is 1,000 grams.", ["1000", "1,000"], True),
        ("Brasília", ["Brasília", "Brasilia"], True),
        ("", ["56"], False),
    ],
)
def test_mentions(text, expect, right):
    assert everyday.mentions(text, expect) is right


@pytest.mark.parametrize(
    ("text", "said_no"),
    [
        (NO_ANSWER, True),
        ("I don't know.", True),
        ("The sources do not contain the answer.", True),
        ("The airspeed is approximately 125.17 meters per second.", False),
        ("The know-how of caching is described in functools.", False),
    ],
)
def test_refused(text, said_no):
    assert everyday.refused(text) is said_no


JSON_SCHEMAS = [p["schema"] for p in PROMPTS if p["kind"] == "json"]


@pytest.mark.parametrize(
    "value",
    [
        {"name": "Ann", "age": 30, "email": "a@b.c"},
        {"name": "Ann", "age": 30},
        {"name": "Ann", "age": "30", "email": "a@b.c"},
        {"name": "Ann", "age": 30.5, "email": "a@b.c"},
        {"name": "Ann", "age": True, "email": "a@b.c"},
        {"name": "Ann", "age": 30, "email": "a@b.c", "extra": 1},
        {"colors": ["red", "green", "blue"]},
        {"colors": ["red", 2]},
        {"sentiment": "positive"},
        {"sentiment": "happy"},
        {"meters": 5000},
        {"meters": 5000.0},
        {"task": "milk", "done": False},
        {"task": "milk", "done": 0},
        [],
        "text",
    ],
)
def test_conforms_agrees_with_jsonschema_on_the_prompts_schemas(value):
    jsonschema = pytest.importorskip("jsonschema")
    for schema in JSON_SCHEMAS:
        expected = jsonschema.Draft202012Validator(schema).is_valid(value)
        assert everyday.conforms(value, schema) is expected, (value, schema)


def test_json_verdicts():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    expect = {"name": "Alice", "age": 30}
    assert everyday.json_verdict('{"name": "alice", "age": 30}', schema, expect) == (
        True,
        True,
        True,
    )
    assert everyday.json_verdict('{"name": "Bob", "age": 30}', schema, expect) == (
        True,
        True,
        False,
    )
    # cut off at the token cap: does not parse
    assert everyday.json_verdict('{"name": "Alice", "ag', schema, expect) == (False, False, False)
    assert everyday.json_verdict('{"name": "Alice", "ag', schema, {}) == (False, False, None)
    # a key twice parses (the last wins) but an extra key is not valid
    assert everyday.json_verdict('{"name": "A", "age": 1, "x": 2}', schema, {}) == (
        True,
        False,
        None,
    )
    # true is not the number 1
    assert everyday.json_verdict('{"answer": true}', {}, {"answer": 1})[2] is False


def test_score_per_kind():
    chat = {"kind": "chat", "prompt": "What is 7 times 8?", "expect": ["56"]}
    v = everyday.score(chat, "56", "stop")
    assert v["ended"] and v["correct"] and not v["loops"]
    assert v["json_valid"] is None and v["cited_right"] is None and v["refused"] is None
    v = everyday.score(chat, LOOPING, "length")
    assert not v["ended"] and v["loops"] and not v["correct"]
    open_chat = {"kind": "chat", "prompt": "Tell me a joke", "expect": []}
    assert everyday.score(open_chat, "No.", "stop")["correct"] is None

    rag = {
        "kind": "rag",
        "prompt": "What does functools.lru_cache do?",
        "source": "library/functools.rst.txt",
        "expect": ["cach*"],
    }
    cited = ["/usr/share/doc/python3.11/html/_sources/library/functools.rst.txt"]
    v = everyday.score(rag, "It caches results [1].", "stop", cited)
    assert v["cited_right"] and v["correct"] and v["false_refusal"] is False
    v = everyday.score(rag, "It caches results.", "stop", ["/x/library/itertools.rst.txt"])
    assert not v["cited_right"] and v["correct"]
    v = everyday.score(rag, NO_ANSWER, "stop", [])
    assert v["false_refusal"] and not v["correct"] and not v["cited_right"]

    swallow = {"kind": "rag_unanswerable", "prompt": "Swallow?", "expect": []}
    v = everyday.score(swallow, NO_ANSWER, "stop")
    assert v["refused"] and v["correct"] and v["false_refusal"] is None
    v = everyday.score(swallow, "Approximately 125.17 meters per second.", "stop")
    assert v["refused"] is False and v["correct"] is False


def test_summarize_counts_each_verdict_over_the_items_it_applies_to():
    records = [
        {"ended": True, "loops": False, "correct": True, "json_valid": None, "tokens": 10},
        {"ended": False, "loops": True, "correct": None, "json_valid": None, "tokens": 30},
        {"ended": True, "loops": False, "correct": False, "json_valid": True, "tokens": 20},
    ]
    for r in records:
        r.update(json_parses=r["json_valid"], cited_right=None, refused=None, false_refusal=None)
        r["seconds"] = 1.5
    summary = everyday.summarize(records)
    m, n = summary["metrics"], summary["counts"]
    assert m["ended"] == pytest.approx(2 / 3) and n["ended"] == 3
    assert m["loops"] == pytest.approx(1 / 3)
    assert m["correct"] == 0.5 and n["correct"] == 2
    assert m["json_valid"] == 1.0 and n["json_valid"] == 1
    assert "cited_right" not in m and "refused" not in m
    assert m["mean_tokens"] == 20 and m["mean_seconds"] == 1.5


def test_the_table_shows_how_many_items_each_metric_counts():
    records = [
        {"kind": "chat", "ended": True, "loops": False, "correct": True, "json_parses": None},
        {"kind": "json", "ended": True, "loops": False, "correct": None, "json_parses": True},
    ]
    for r in records:
        r.update(json_valid=r["json_parses"], cited_right=None, refused=None, false_refusal=None)
        r.update(tokens=4, seconds=0.5)
    task = {"n": 2, **everyday.summarize(records)}
    table = harness.markdown_table({"tasks": {"everyday": task}})
    assert "| everyday | ended | 1.0000 | 0.0000 | 2 |" in table
    assert "| everyday | json_valid | 1.0000 |  | 1 |" in table
    assert "| everyday | mean_tokens | 4.0000 |  | 2 |" in table


# -- the data ------------------------------------------------------------------------------------


def test_the_prompts_are_a_hundred_and_ten_of_each_kind_with_what_scoring_needs():
    kinds = Counter(p["kind"] for p in PROMPTS)
    assert sum(kinds.values()) == 110
    assert set(kinds) == {"chat", "json", "rag", "rag_unanswerable", "rag_beyond"}
    for p in PROMPTS:
        assert p["prompt"].strip()
        if p["kind"] == "json":
            assert p["schema"]["type"] == "object"
            assert all(everyday._same(v, v) for v in p["expect"].values())
        if p["kind"] == "rag":
            assert p["expect"] and p["source"].endswith(".rst.txt")
            assert p["source"].split("/")[0] == "tutorial" or p["source"] in [
                f for f in everyday.PYDOCS_FILES
            ]
    assert any(p.get("system") for p in PROMPTS)  # "Tell me a joke" as "You are terse."


def test_limit_takes_the_first_of_each_kind():
    items = harness.TASKS["everyday"].items(limit=2)
    assert [i["kind"] for i in items] == ["chat", "chat", "json", "json"]
    assert len(harness.TASKS["rag_pydocs"].items()) == 35
    assert len(harness.TASKS["rag_pydocs_beyond"].items()) == 10
    assert len({i["id"] for i in everyday.EVERYDAY_TASKS[0].items()}) == 65


# -- the runner with a scripted model ------------------------------------------------------------


class ScriptedLLM:
    """Answers by the first word of the last user message; records what it was asked with."""

    name = "scripted"

    def __init__(self, answers: dict[str, tuple[str, str]]):
        self.answers = answers
        self.asked = []  # (messages, json_schema, sampling)

    def chat_prompt(self, messages, json_schema=None, **_):
        self.asked.append([messages, json_schema, None])
        return ChatPrompt(ids=[len(self.asked) - 1], grammar=None)

    def complete(self, prompt_ids, *, grammar=None, **sampling):
        messages = self.asked[prompt_ids[0]][0]
        self.asked[prompt_ids[0]][2] = sampling
        question = messages[-1]["content"]
        for start, (text, finish) in self.answers.items():
            if start in question:
                return Completion(text, finish, 5, len(text.split()))
        return Completion("", "stop", 5, 0)


def _run(llm, task, limit=None, **kwargs):
    with tqdm(disable=True) as bar:
        return everyday.run(
            llm, task, limit=limit, shots=0, seed=7, chat=True, bar=bar, workers=1, **kwargs
        )


def test_runner_scores_each_answer_and_passes_the_settings_under_test():
    llm = ScriptedLLM(
        {
            "7 times 8": ("It is 56.", "stop"),
            "15 plus 27": (LOOPING, "length"),
            "Invent a user": ('{"name": "Ann", "age": 3', "length"),
            "Invent a city": (
                '{"name": "X", "country": "Y", "population": 5, "description": ""}',
                "stop",
            ),
        }
    )
    task = everyday.EVERYDAY_TASKS[0]
    summary, records = _run(llm, task, limit=2)
    assert [r["prompt"] for r in records] == [
        "What is 7 times 8?",
        "What is 15 plus 27?",
        "Invent a user.",
        "Invent a city.",
    ]
    first, second, user, city = records
    assert first["ended"] and first["correct"] and not first["loops"]
    assert not second["ended"] and second["loops"] and not second["correct"]
    assert user["json_parses"] is False and not user["ended"]
    assert city["json_valid"] and city["correct"] is None
    m = summary["metrics"]
    assert (
        m["ended"] == 0.5 and m["loops"] == 0.25 and m["correct"] == 0.5 and m["json_valid"] == 0.5
    )
    # the schema goes to the chat prompt; the default cap and the seed to the sampler
    assert llm.asked[2][1] == PROMPTS[50]["schema"]
    assert llm.asked[0][2] == {"max_tokens": everyday.DEFAULT_MAX_TOKENS, "seed": 7}

    from dataclasses import replace

    tuned = replace(task, sampling={"max_tokens": 64, "repetition_penalty": 1.2})
    _run(llm := ScriptedLLM({}), tuned, limit=1)
    assert llm.asked[0][2] == {"max_tokens": 64, "seed": 7, "repetition_penalty": 1.2}


def test_the_system_prompt_goes_first():
    llm = ScriptedLLM({})
    task = everyday.Everyday("t", "t", ("chat",))
    _run(llm, task)
    joke = next(m for m, _, _ in llm.asked if m[-1]["content"] == "Tell me a joke")
    assert joke == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me a joke"},
    ]


def test_sampling_settings_reach_the_task_and_bad_ones_are_one_sentence():
    with pytest.raises(GenforgeError, match="temperature must be"):
        harness.evaluate(object(), "everyday", sampling={"temperature": -1})
    with pytest.raises(GenforgeError, match="unknown sampling option 'dry'"):
        harness.evaluate(object(), "everyday", sampling={"dry": 1})


def test_missing_docs_name_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(everyday, "PYDOCS", tmp_path / "nowhere")
    with pytest.raises(GenforgeError, match="apt-get install python3.11-doc"):
        _run(ScriptedLLM({}), everyday.EVERYDAY_TASKS[1], limit=1, home=tmp_path)
    with pytest.raises(GenforgeError, match="apt-get install python3.11-doc"):
        harness.resolve("everyday,rag_pydocs")  # before the CLI loads a model
    assert [t.name for t in harness.resolve("everyday")] == ["everyday"]


def test_rag_refusals_and_citations_on_a_small_index(monkeypatch, tmp_path):
    pytest.importorskip("apsw")
    docs = tmp_path / "docs"
    (docs / "library").mkdir(parents=True)
    (docs / "tutorial").mkdir()
    (docs / "library" / "functools.rst.txt").write_text(
        "functools\n=========\n\n.. decorator:: lru_cache(maxsize=128)\n\n   " + PROSE + "\n"
    )
    (docs / "tutorial" / "controlflow.rst.txt").write_text(
        "for Statements\n==============\n\nA loop's else clause runs when no break occurs.\n"
    )
    monkeypatch.setattr(everyday, "PYDOCS", docs)
    monkeypatch.setattr(everyday, "PYDOCS_FILES", ("tutorial", "library/functools.rst.txt"))
    llm = ScriptedLLM({"lru_cache": ("It wraps a function with a memoizing cache [1].", "stop")})
    summary, records = _run(llm, everyday.EVERYDAY_TASKS[1], limit=1, home=tmp_path / "home")
    lru, swallow = records
    assert lru["kind"] == "rag" and lru["cited_right"] and lru["correct"]
    assert lru["citations"][0].endswith("library/functools.rst.txt")
    assert lru["false_refusal"] is False and lru["tokens"] == 9  # the scripted model counts words
    # nothing about swallows is similar enough: the answer is the refusal, the model is not asked
    assert swallow["output"] == NO_ANSWER and swallow["refused"] and swallow["ended"]
    assert swallow["tokens"] == 0 and len(llm.asked) == 1
    m = summary["metrics"]
    assert m["cited_right"] == 1.0 and m["refused"] == 1.0 and m["false_refusal"] == 0.0


def test_cli_refuses_bad_settings_before_loading_a_model():
    proc = subprocess.run(
        [sys.executable, "-m", "genforge", "eval", "everyday", "--repetition-penalty", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "repetition_penalty must be" in proc.stderr and "Traceback" not in proc.stderr


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_on_a_chat_and_a_json_item(smollm2_path, tmp_path):
    out = tmp_path / "everyday.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "genforge",
            "eval",
            "everyday",
            "--limit",
            "1",
            "-m",
            str(smollm2_path),
            "--max-tokens",
            "48",
            "--temperature",
            "0",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| everyday | ended |" in proc.stdout
    assert "| everyday | json_valid |" in proc.stdout
    res = json.loads(out.read_text())
    assert res["settings"]["sampling"] == {"max_tokens": 48, "temperature": 0.0}
    records = res["items"]["everyday"]
    assert [r["kind"] for r in records] == ["chat", "json"]
    for r in records:
        assert r["tokens"] <= 48
        assert r["ended"] == (r["finish_reason"] == "stop")
    # "What is 7 times 8?" has a checkable answer; the JSON answer is decoded under its schema
    assert records[0]["correct"] is not None
    assert records[1]["json_parses"] == records[1]["ended"]
